-- PostgreSQL only (fillfactor for heap-only updates); SQLite's B-trees update in place.
SELECT 1;
