-- PostgreSQL only: indexes that lead with the tenant for the hot path's ordered looks, and
-- dropping tenant foreign keys that the composite ones imply (they cost row locks there).
-- SQLite answers the same looks with one probe on the existing indexes (measured constant at
-- 200,000 receipts for one device) and takes no row locks.
SELECT 1;
