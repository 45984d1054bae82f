-- The same database work as one-sale.sql for :n sales at once (set with -D n=…): each
-- statement carries the rows of all :n sales (generate_series standing in for unnest of
-- the batch's arrays). One pgbench transaction here is :n sales:
--   pgbench -n -M prepared -c 5 -j 2 -T 15 -D n=10 -f batch-sale.sql DATABASE
-- (5 clients × 10 sales = the 50 sales in flight of the one-sale run). An estimate of what
-- batching can buy, not the store's own statements (those are in postgres/accept_batch.rs).
\set branch :client_id + 1
\set key random(1, 9000000000000000)
BEGIN;
SELECT set_config('ushuru.tenant_id', '1', true);
WITH recorded AS (
    INSERT INTO idempotency_keys (tenant_id, key, request_sha256, created_at, expires_at)
    SELECT 1, 'pgb-' || :key || '-' || g, repeat('a', 64), now(), now() + interval '1 day'
    FROM generate_series(1, :n) g
    ON CONFLICT (tenant_id, key) DO NOTHING RETURNING 1),
 numbered AS (
    UPDATE branches SET last_invc_no = last_invc_no + (SELECT count(*) FROM recorded)
    WHERE id = :branch AND tenant_id = 1
    RETURNING last_invc_no)
SELECT (SELECT last_invc_no FROM numbered) - :n AS base \gset
\set top :base + :n
WITH sale AS (
    INSERT INTO sales (tenant_id, branch_id, invc_no, client_reference, status, tot_amt, rcpt_ty_cd)
    SELECT 1, :branch, :base + g, 'ref', 'PENDING_SYNC', '116.00'::text::numeric, 'S'
    FROM generate_series(1, :n) g RETURNING id, invc_no),
 lines AS (
    INSERT INTO sale_lines (tenant_id, branch_id, sale_id, item_seq, item_cd, item_nm, tax_ty_cd,
                            qty, uprc, dc_amt, taxbl_amt, tax_amt, tot_amt, original_item_seq)
    SELECT 1, :branch, sale.id, 1, 'KE1NTXU0000001', 'Soda', 'B', '1'::numeric, '116.00'::numeric,
           '0.00'::numeric, '100.00'::numeric, '16.00'::numeric, '116.00'::numeric, NULL
    FROM sale),
 queued AS (
    INSERT INTO outbox (tenant_id, branch_id, sale_id, invc_no, payload, payload_sha256)
    SELECT 1, :branch, sale.id, sale.invc_no, repeat('p', 1213), repeat('b', 64) FROM sale),
 keyed AS (
    UPDATE idempotency_keys k SET sale_id = sale.id FROM sale
    WHERE k.tenant_id = 1 AND k.key = 'pgb-' || :key || '-' || (sale.invc_no - :base))
SELECT count(*) FROM sale;
COMMIT;
BEGIN;
SELECT set_config('ushuru.tenant_id', '1', true);
WITH heads AS (
    SELECT id FROM outbox WHERE tenant_id = 1 AND branch_id = :branch AND state = 'PENDING'
    ORDER BY invc_no LIMIT :n FOR UPDATE)
UPDATE outbox o SET lease_owner = 'relay', lease_expires_at = now() + interval '30 s', attempts = attempts + 1,
                    maybe_sent = TRUE
FROM heads WHERE o.id = heads.id RETURNING attempts;
WITH done AS (
    UPDATE outbox SET state = 'DONE', lease_owner = NULL, lease_expires_at = NULL
    WHERE tenant_id = 1 AND branch_id = :branch AND state = 'PENDING' AND lease_owner = 'relay'
          AND invc_no > :base AND invc_no <= :top
    RETURNING sale_id, invc_no),
 previous AS (SELECT rcpt_no FROM receipts WHERE tenant_id = 1 AND sdc_id = 'PGB' || :branch
                  ORDER BY rcpt_no DESC LIMIT 1),
 receipt AS (
    INSERT INTO receipts (tenant_id, branch_id, sdc_id, rcpt_no, sale_id)
    SELECT 1, :branch, 'PGB' || :branch, invc_no, sale_id FROM done),
 signed AS (
    UPDATE sales s SET status = 'SIGNED', cur_rcpt_no = done.invc_no, tot_rcpt_no = done.invc_no,
                       intrl_data = repeat('i', 26), rcpt_sign = repeat('s', 16), sdc_date_time = '20261122023326',
                       sdc_id = 'PGB' || :branch, mrc_no = 'WIS00000001', signed_at = now()
    FROM done WHERE s.id = done.sale_id
    RETURNING s.id, s.invc_no, client_reference, status, tot_amt, cur_rcpt_no, tot_rcpt_no, intrl_data, rcpt_sign,
              sdc_date_time, s.sdc_id, mrc_no, signed_at),
 journal AS (
    INSERT INTO exchanges (tenant_id, branch_id, sale_id, operation_id, endpoint, attempt, request_body,
                           response_body, http_status, outcome, elapsed_ms, created_at)
    SELECT 1, :branch, sale_id, NULL, 'saveTrnsSalesOsdc', 1, repeat('p', 1213), repeat('r', 217), 200, 'ok', 1,
           now() FROM done)
SELECT signed.*, (SELECT rcpt_no FROM previous) FROM signed;
COMMIT;
