-- PostgreSQL only: a function that gathers planner statistics for tables that grew before
-- anything analysed them. SQLite's planner does not look at a table's size without
-- ANALYZE, which the store never runs there, so it plans alike for an empty table and a
-- large one.
SELECT 1;
