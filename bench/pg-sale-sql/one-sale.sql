-- The database work of one signed sale as ushuru's PostgreSQL store does it one sale per
-- transaction (commit 4677af6): phase 1 in one transaction, the claim and phase 3 in
-- another. (In the closed-loop benchmark the service claims in a transaction of its own,
-- so this script is, if anything, cheaper than the service's database work.) The
-- statements are the store's own (crates/store/src/postgres.rs), with values of the
-- benchmark's sizes: one line, a 1,213-byte payload, a 217-byte answer. Each pgbench
-- client is one branch (client_id + 1), as each load client is in bench/pipeline.
-- Run on a database that `ushuru serve` created with 50 branches (bench/pipeline's, or
-- any), as the postgres user:
--   pgbench -n -M prepared -c 50 -j 2 -T 15 -f one-sale.sql DATABASE
-- and compare with `pgbench -N -c 50 -j 2 -T 15` in the same minutes (BENCHMARKS.md).
\set branch :client_id + 1
\set key random(1, 9000000000000000)
BEGIN;
SELECT set_config('ushuru.tenant_id', '1', true);
WITH recorded AS (
    INSERT INTO idempotency_keys (tenant_id, key, request_sha256, created_at, expires_at)
    VALUES (1, 'pgb-' || :key, repeat('a', 64), now(), now() + interval '1 day')
    ON CONFLICT (tenant_id, key) DO NOTHING RETURNING 1),
 numbered AS (
    UPDATE branches SET last_invc_no = last_invc_no + 1
    WHERE id = :branch AND tenant_id = 1 AND EXISTS (SELECT 1 FROM recorded)
    RETURNING last_invc_no)
SELECT EXISTS (SELECT 1 FROM recorded), (SELECT last_invc_no FROM numbered) AS invc_no \gset
WITH sale AS (
    INSERT INTO sales (tenant_id, branch_id, invc_no, client_reference, status, tot_amt, rcpt_ty_cd)
    VALUES (1, :branch, :invc_no, 'ref', 'PENDING_SYNC', '116.00'::text::numeric, 'S') RETURNING id),
 lines AS (
    INSERT INTO sale_lines (tenant_id, branch_id, sale_id, item_seq, item_cd, item_nm, tax_ty_cd,
                            qty, uprc, dc_amt, taxbl_amt, tax_amt, tot_amt, original_item_seq)
    SELECT 1, :branch, sale.id, l.item_seq, l.item_cd, l.item_nm, l.tax_ty_cd, l.qty::numeric, l.uprc::numeric,
           l.dc_amt::numeric, l.taxbl_amt::numeric, l.tax_amt::numeric, l.tot_amt::numeric, l.original_item_seq
    FROM sale, unnest('{1}'::int4[], '{KE1NTXU0000001}'::text[], '{Soda}'::text[], '{B}'::text[], '{1}'::text[],
                      '{116.00}'::text[], '{0.00}'::text[], '{100.00}'::text[], '{16.00}'::text[], '{116.00}'::text[],
                      '{NULL}'::int4[])
         AS l(item_seq, item_cd, item_nm, tax_ty_cd, qty, uprc, dc_amt, taxbl_amt, tax_amt, tot_amt, original_item_seq)),
 queued AS (
    INSERT INTO outbox (tenant_id, branch_id, sale_id, invc_no, payload, payload_sha256)
    SELECT 1, :branch, sale.id, :invc_no, repeat('p', 1213), repeat('b', 64) FROM sale),
 keyed AS (
    UPDATE idempotency_keys SET sale_id = (SELECT id FROM sale) WHERE tenant_id = 1 AND key = 'pgb-' || :key)
SELECT id FROM sale;
COMMIT;
BEGIN;
SELECT set_config('ushuru.tenant_id', '1', true);
SELECT id AS outbox_id FROM outbox WHERE tenant_id = 1 AND branch_id = :branch AND state = 'PENDING'
ORDER BY invc_no LIMIT 1 FOR UPDATE \gset
UPDATE outbox SET lease_owner = 'relay', lease_expires_at = now() + interval '30 s', attempts = attempts + 1,
                  maybe_sent = TRUE
WHERE id = :outbox_id RETURNING attempts;
WITH done AS (
    UPDATE outbox SET state = 'DONE', lease_owner = NULL, lease_expires_at = NULL
    WHERE id = :outbox_id AND tenant_id = 1 AND branch_id = :branch AND state = 'PENDING' AND lease_owner = 'relay'
    RETURNING sale_id),
 previous AS (SELECT rcpt_no FROM receipts WHERE tenant_id = 1 AND sdc_id = 'PGB' || :branch
                  ORDER BY rcpt_no DESC LIMIT 1),
 receipt AS (
    INSERT INTO receipts (tenant_id, branch_id, sdc_id, rcpt_no, sale_id)
    SELECT 1, :branch, 'PGB' || :branch, :invc_no, sale_id FROM done),
 signed AS (
    UPDATE sales SET status = 'SIGNED', cur_rcpt_no = :invc_no, tot_rcpt_no = :invc_no, intrl_data = repeat('i', 26),
                     rcpt_sign = repeat('s', 16), sdc_date_time = '20261122023326', sdc_id = 'PGB' || :branch,
                     mrc_no = 'WIS00000001', signed_at = now()
    WHERE id = (SELECT sale_id FROM done) AND tenant_id = 1 AND branch_id = :branch
    RETURNING id, invc_no, client_reference, status, tot_amt, cur_rcpt_no, tot_rcpt_no, intrl_data, rcpt_sign,
              sdc_date_time, sdc_id, mrc_no, signed_at),
 journal AS (
    INSERT INTO exchanges (tenant_id, branch_id, sale_id, operation_id, endpoint, attempt, request_body,
                           response_body, http_status, outcome, elapsed_ms, created_at)
    SELECT 1, :branch, sale_id, NULL, 'saveTrnsSalesOsdc', 1, repeat('p', 1213), repeat('r', 217), 200, 'ok', 1,
           now() FROM done)
SELECT signed.*, (SELECT rcpt_no FROM previous) FROM signed;
COMMIT;
