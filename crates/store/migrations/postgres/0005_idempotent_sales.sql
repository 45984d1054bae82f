-- The sale an idempotent request accepted, written in the sale's own transaction (phase 1).
-- If the process dies before answering, a retry with the key finds the sale instead of
-- accepting it a second time.
ALTER TABLE idempotency_keys ADD COLUMN sale_id BIGINT;
