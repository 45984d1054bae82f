-- The hot path's ordered looks filter by tenant as well as by branch or device, and the
-- indexes that served them did not lead with the tenant. With the tenant filter outside the
-- index, and its selectivity guessed (no statistics yet on a new table, a tenant that is a
-- small share of a shared one, or row-level security adding the filter), the planner chose a
-- bitmap scan of every entry under the branch or device and a sort, instead of one ordered
-- probe. Measured on a 15 s benchmark database with generic plans:
--   * the sequence auditor's look at a device's latest receipt read all 3,620 receipts of
--     the device (1.9 ms), growing with every receipt; now one backward probe (0.08 ms);
--   * the relay's claim of its branch's oldest pending sale visited 7,928 index entries of
--     rows no longer pending (a bitmap scan cannot mark them dead, so they stay until
--     vacuum: 9.9 ms); now an ordered index scan that stops at the first live row and marks
--     the dead ones it passes (0.05 ms).
CREATE INDEX receipts_scope_sdc_rcpt_idx ON receipts (tenant_id, sdc_id, rcpt_no);
CREATE INDEX outbox_pending_scope_idx ON outbox (tenant_id, branch_id, invc_no) WHERE state = 'PENDING';
DROP INDEX outbox_pending_idx;
CREATE INDEX operations_pending_scope_idx ON operations (tenant_id, branch_id, id) WHERE state = 'PENDING';
DROP INDEX operations_pending_idx;

-- Each of these tables also references its sale or its branch by (…, tenant_id), and that
-- row references the tenant, so these foreign keys checked nothing the composite ones do
-- not. They did cost: every insert took a KEY SHARE lock on the one tenants row, so the
-- concurrent transactions of all of a taxpayer's branches contended for it (multixacts).
ALTER TABLE sales DROP CONSTRAINT sales_tenant_fk;
ALTER TABLE outbox DROP CONSTRAINT outbox_tenant_fk;
ALTER TABLE receipts DROP CONSTRAINT receipts_tenant_fk;
ALTER TABLE exchanges DROP CONSTRAINT exchanges_tenant_fk;
ALTER TABLE sequence_findings DROP CONSTRAINT sequence_findings_tenant_fk;
