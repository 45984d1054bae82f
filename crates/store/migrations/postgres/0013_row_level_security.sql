-- Row-level security: the database itself keeps each tenant, and each branch, to its own
-- rows (issue 5). See docs/architecture.md, "Row-level security (PostgreSQL)".
--
-- * `ushuru_app` is the role the service acts as. It owns nothing, cannot log in, and has
--   no BYPASSRLS. Ushuru's pool always acts as it (`SET ROLE` at connection start), whatever
--   the login; the strongest set-up logs in as a role of its own that is only a member of
--   `ushuru_app`, and runs `ushuru migrate` as the owner.
-- * Every tenant-owned table has ENABLE and FORCE ROW LEVEL SECURITY and one policy: a row
--   is visible and writable only while the transaction's `ushuru.tenant_id` (and, when set,
--   `ushuru.branch_id`) name its tenant (and branch). The store sets both per transaction
--   with `set_config(…, true)`. With no tenant set, nothing is visible.
-- * What must act across tenants (finding a request's tenant from its key, listing the
--   tenants for an operator, purging expired records) goes through the narrow SECURITY
--   DEFINER functions below. Each turns `ushuru.system` on and runs as the owner: the one
--   case the policies let through. The service's role can set `ushuru.system` too (and it
--   stays on to the end of a transaction that called one of these), but it is never the
--   owner, so the setting alone opens nothing. The owner's own sessions see nothing
--   either unless they turn it on themselves (a backup: see docs/architecture.md).

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ushuru_app') THEN
        BEGIN
            CREATE ROLE ushuru_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'the role ushuru_app does not exist, and % may not create it', current_user
                USING HINT = format('as a superuser run: CREATE ROLE ushuru_app NOLOGIN; GRANT ushuru_app TO %I; then migrate again', current_user);
        END;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'ushuru_app' AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'the role ushuru_app must not be a superuser or have BYPASSRLS: row-level security would not apply to it';
    END IF;
    -- The owner's own connections (migrations, `ushuru admin` with the owner's URL) act
    -- as ushuru_app too, which needs the membership.
    IF NOT pg_has_role(current_user, 'ushuru_app', 'MEMBER') THEN
        BEGIN
            EXECUTE format('GRANT ushuru_app TO %I', current_user);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION '% is not a member of ushuru_app and may not make itself one', current_user
                USING HINT = format('as a superuser run: GRANT ushuru_app TO %I; then migrate again', current_user);
        END;
    END IF;
END
$roles$;

DO $policies$
DECLARE
    scoped RECORD;
    -- Read per row, plainly: wrapping each in a scalar subquery (once per statement) made
    -- every one of the hot path's small statements carry init plans, and measured slower.
    tenant_is TEXT := $$NULLIF(current_setting('ushuru.tenant_id', true), '')::bigint$$;
    branch_is TEXT := $$NULLIF(current_setting('ushuru.branch_id', true), '')::bigint$$;
    -- The owner is read from the catalogue, not written in here: a renamed owner, or a
    -- restore under another role, keeps the definer functions working. (Only evaluated
    -- when the tenant test fails.)
    system TEXT := format(
        $$(current_setting('ushuru.system', true) = 'on'
           AND current_user = (SELECT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c
                               WHERE c.oid = %L::regclass))$$,
        format('%I.tenants', current_schema()));
    rule TEXT;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ushuru_app', current_schema());
    -- Nobody else may create objects in the schema (PostgreSQL 14 and earlier let PUBLIC
    -- create in `public`): nothing can stand in for a function or an operator the
    -- definer functions use.
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    FOR scoped IN
        SELECT * FROM (VALUES
            ('tenants', 'id', NULL),
            ('branches', 'tenant_id', 'id'),
            ('sales', 'tenant_id', 'branch_id'),
            ('sale_lines', 'tenant_id', 'branch_id'),
            ('credit_notes', 'tenant_id', 'branch_id'),
            ('outbox', 'tenant_id', 'branch_id'),
            ('receipts', 'tenant_id', 'branch_id'),
            ('exchanges', 'tenant_id', 'branch_id'),
            ('sequence_findings', 'tenant_id', 'branch_id'),
            ('api_keys', 'tenant_id', 'branch_id'),
            ('idempotency_keys', 'tenant_id', NULL),
            ('registered_items', 'tenant_id', 'branch_id'),
            ('operations', 'tenant_id', 'branch_id'),
            ('oauth_clients', 'tenant_id', 'branch_id'),
            ('oauth_tokens', 'tenant_id', 'branch_id')
        ) AS t (name, tenant_column, branch_column)
    LOOP
        rule := format('%I = %s', scoped.tenant_column, tenant_is);
        IF scoped.branch_column IS NOT NULL THEN
            rule := format('%s AND (%s IS NULL OR %I = %s)', rule, branch_is, scoped.branch_column, branch_is);
        END IF;
        rule := format('(%s) OR %s', rule, system);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', scoped.name);
        EXECUTE format('CREATE POLICY %I ON %I USING (%s) WITH CHECK (%s)',
                       scoped.name || '_scope', scoped.name, rule, rule);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO ushuru_app', scoped.name);
    END LOOP;
END
$policies$;

-- Not tenant-owned: operators' keys (no tenant), the audit log (read by operators only,
-- append-only, never a secret) and the migrations' ledger (read to see nothing is pending).
GRANT SELECT, INSERT, UPDATE ON operator_keys TO ushuru_app;
GRANT SELECT, INSERT ON audit_events TO ushuru_app;
GRANT SELECT ON schema_migrations TO ushuru_app;

-- The cross-tenant functions. Each does one thing and returns no secret: a branch's sealed
-- cmcKey is read only in its own tenant's transaction. Each gets its own search_path below
-- (pg_catalog first, then this schema, then pg_temp), so that no object of a caller's can
-- stand in for a table, a function or an operator.
SELECT set_config('search_path', format('%I, pg_catalog, pg_temp', current_schema()), true);

-- How a request finds its tenant: the key with this hash, if it is live.
CREATE FUNCTION ushuru_api_key_by_hash(key_hash TEXT)
RETURNS TABLE (id BIGINT, tenant_id BIGINT, branch_id BIGINT, prefix TEXT, name TEXT, last_used_at TIMESTAMPTZ)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      SELECT k.id, k.tenant_id, k.branch_id, k.prefix, k.name, k.last_used_at
      FROM api_keys k WHERE k.key_sha256 = key_hash AND k.revoked_at IS NULL $$;

-- Whether any key, live or revoked, has this hash (the throttle's "known key" test).
CREATE FUNCTION ushuru_api_key_known(key_hash TEXT) RETURNS BOOLEAN
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      SELECT EXISTS (SELECT 1 FROM api_keys k WHERE k.key_sha256 = key_hash) $$;

-- The tenant and branch a key id belongs to (an operator revokes by id).
CREATE FUNCTION ushuru_api_key_scope(key_id BIGINT)
RETURNS TABLE (tenant_id BIGINT, branch_id BIGINT)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      SELECT k.tenant_id, k.branch_id FROM api_keys k WHERE k.id = key_id $$;

-- An OAuth client by its public client_id, with its secret's hash, if it is live.
CREATE FUNCTION ushuru_oauth_client_by_client_id(wanted TEXT)
RETURNS TABLE (id BIGINT, tenant_id BIGINT, branch_id BIGINT, client_id TEXT, name TEXT, secret_sha256 TEXT)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      SELECT c.id, c.tenant_id, c.branch_id, c.client_id, c.name, c.secret_sha256
      FROM oauth_clients c WHERE c.client_id = wanted AND c.revoked_at IS NULL $$;

-- The live client a bearer token with this hash acts for.
CREATE FUNCTION ushuru_oauth_token(token_hash TEXT, at TIMESTAMPTZ)
RETURNS TABLE (id BIGINT, tenant_id BIGINT, branch_id BIGINT, client_id TEXT, name TEXT)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      SELECT c.id, c.tenant_id, c.branch_id, c.client_id, c.name
      FROM oauth_tokens t JOIN oauth_clients c ON c.id = t.client
      WHERE t.token_sha256 = token_hash AND t.expires_at > at AND c.revoked_at IS NULL $$;

-- The tenant and branch an OAuth client id belongs to (an operator revokes by id).
CREATE FUNCTION ushuru_oauth_client_scope(wanted BIGINT)
RETURNS TABLE (tenant_id BIGINT, branch_id BIGINT)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      SELECT c.tenant_id, c.branch_id FROM oauth_clients c WHERE c.id = wanted $$;

-- A taxpayer by PIN, and a new one.
CREATE FUNCTION ushuru_tenant_by_tin(wanted TEXT) RETURNS TABLE (id BIGINT, name TEXT)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      SELECT t.id, t.name FROM tenants t WHERE t.tin = wanted $$;

CREATE FUNCTION ushuru_create_tenant(new_tin TEXT, new_name TEXT) RETURNS BIGINT
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      INSERT INTO tenants (tin, name) VALUES (new_tin, new_name) RETURNING id $$;

-- The operator's overview: tenants and branches, with a branch's device identity (public
-- on every receipt) once its cmcKey is sealed; never key material.
CREATE FUNCTION ushuru_tenants_overview()
RETURNS TABLE (tenant_id BIGINT, tin TEXT, tenant_name TEXT, branch_id BIGINT, bhf_id TEXT, sdc_id TEXT, mrc_no TEXT)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      SELECT t.id, t.tin, t.name, b.id, b.bhf_id,
             CASE WHEN b.cmc_key_sealed IS NOT NULL THEN b.sdc_id END,
             CASE WHEN b.cmc_key_sealed IS NOT NULL THEN b.mrc_no END
      FROM tenants t LEFT JOIN branches b ON b.tenant_id = t.id
      ORDER BY t.id, b.id $$;

-- The branches a relay serves (sealed cmcKey) and those still holding a plaintext one:
-- who they are, not their keys, which the service reads in each tenant's transaction.
CREATE FUNCTION ushuru_initialised_branches()
RETURNS TABLE (tenant_id BIGINT, branch_id BIGINT, tin TEXT, bhf_id TEXT)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      SELECT b.tenant_id, b.id, t.tin, b.bhf_id
      FROM branches b JOIN tenants t ON t.id = b.tenant_id
      WHERE b.cmc_key_sealed IS NOT NULL ORDER BY b.id $$;

CREATE FUNCTION ushuru_plaintext_key_branches() RETURNS TABLE (tenant_id BIGINT, branch_id BIGINT)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      SELECT b.tenant_id, b.id FROM branches b WHERE b.cmc_key IS NOT NULL ORDER BY b.id $$;

-- Expired records of every tenant.
CREATE FUNCTION ushuru_purge_idempotency(at TIMESTAMPTZ) RETURNS BIGINT
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      WITH gone AS (DELETE FROM idempotency_keys WHERE expires_at <= at RETURNING 1)
      SELECT count(*) FROM gone $$;

CREATE FUNCTION ushuru_purge_oauth_tokens(at TIMESTAMPTZ) RETURNS BIGINT
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$ SELECT set_config('ushuru.system', 'on', true);
      WITH gone AS (DELETE FROM oauth_tokens WHERE expires_at <= at RETURNING 1)
      SELECT count(*) FROM gone $$;

-- Each function's search_path, and who may call it: functions are executable by PUBLIC
-- unless revoked, and only the service's role may call these.
DO $grants$
DECLARE
    f RECORD;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure AS signature FROM pg_proc p
        WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE 'ushuru\_%'
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp',
                       f.signature, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f.signature);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO ushuru_app', f.signature);
    END LOOP;
END
$grants$;
