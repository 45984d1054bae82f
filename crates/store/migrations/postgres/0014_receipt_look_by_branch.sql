-- The sequence auditor's look at a device's latest receipt (phase 3) names the branch as
-- well as the tenant and the device: the relays' shared transactions enter the tenant only,
-- so each statement names its own scope. The index of 0009 left the branch outside, and with
-- statistics the planner then chose, as its generic plan, a bitmap scan of every receipt of
-- the device and a sort: 1.5 ms at 312 receipts, and growing with every receipt the device
-- ever signed. An index holding every column the look names, in that order, answers it with
-- one backward probe whatever the statistics say.
CREATE INDEX receipts_scope_branch_sdc_rcpt_idx ON receipts (tenant_id, branch_id, sdc_id, rcpt_no);
DROP INDEX receipts_scope_sdc_rcpt_idx;
