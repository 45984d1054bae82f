-- PostgreSQL only: an index for the sequence auditor's look that names tenant, branch and
-- device. SQLite answers that look with one backward probe of UNIQUE (sdc_id, rcpt_no).
SELECT 1;
