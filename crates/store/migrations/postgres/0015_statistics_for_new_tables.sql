-- Planner statistics for tables that have grown before anything analysed them.
--
-- A new database (or a restored one: pg_restore gathers no statistics) has none until
-- autovacuum's first pass, up to a minute after the first rows (its naptime). Plans made
-- in that time are kept: the store's prepared statements and PostgreSQL's own
-- foreign-key checks cache a generic plan per connection, made while the tables were
-- near empty, when every index that starts with (tenant_id, branch_id) looked as cheap as
-- the primary key. Kept as the tables grow, such a plan reads a branch's whole range of
-- an index to find one row (measured: the pipeline's rate fell from about 1,400 to 1,160
-- signed sales/s between a 15 s and a 32 s run on a new database, and stayed at 1,380
-- with one ANALYZE early in the 32 s run). ANALYZE invalidates those plans, and they are
-- made again with statistics.
--
-- The service calls this every few seconds. It analyses each of the schema's tables that
-- has never been analysed (by anyone, autovacuum included) and holds at least min_rows
-- rows, and returns their names. After that, autovacuum keeps the statistics current.
-- Only the tables' owner may ANALYZE them, hence SECURITY DEFINER; it reads and returns
-- no tenant's rows, only table names.
CREATE FUNCTION ushuru_analyze_new_tables(min_rows BIGINT) RETURNS SETOF TEXT
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
AS $$
DECLARE
    table_oid OID;
BEGIN
    -- One caller at a time, across replicas: the others find the work done or under way.
    -- (The one-key form, numbered after the migrations' 7020301 and the security events'
    -- 7020302; the branch signers' locks use the two-key form, which cannot collide.)
    IF NOT pg_try_advisory_xact_lock(7020303) THEN
        RETURN;
    END IF;
    -- A table another ANALYZE (autovacuum's) is on is left for the next call, not waited for.
    PERFORM set_config('lock_timeout', '100ms', true);
    FOR table_oid IN
        SELECT s.relid FROM pg_stat_user_tables s
        JOIN pg_class c ON c.oid = s.relid
        -- The function's own schema: search_path resolves 'tenants' there.
        WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'tenants'::regclass)
          AND c.relkind = 'r'
          AND s.last_analyze IS NULL AND s.last_autoanalyze IS NULL
          AND s.n_live_tup >= min_rows
        ORDER BY s.relname
    LOOP
        BEGIN
            EXECUTE format('ANALYZE %s', table_oid::regclass);
            RETURN NEXT table_oid::regclass::text;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
END
$$;
-- As migration 0013 does for each of its functions: pg_catalog first, and only the
-- service's role may call it.
DO $pin$ BEGIN
    EXECUTE format('ALTER FUNCTION ushuru_analyze_new_tables(BIGINT) SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
END $pin$;
REVOKE ALL ON FUNCTION ushuru_analyze_new_tables(BIGINT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ushuru_analyze_new_tables(BIGINT) TO ushuru_app;
