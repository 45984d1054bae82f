-- PostgreSQL only (roles and row-level security policies). On SQLite, one process owns the
-- file, and the repository layer scopes every query by tenant and branch.
SELECT 1;
