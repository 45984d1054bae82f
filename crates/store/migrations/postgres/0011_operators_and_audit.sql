-- Operators: keys that act on no branch (the admin routes), kept like branch keys, only as
-- a SHA-256 with a short prefix for listings.
CREATE TABLE operator_keys (
    id           BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT operator_keys_pk PRIMARY KEY,
    prefix       TEXT NOT NULL,
    key_sha256   TEXT NOT NULL CONSTRAINT operator_keys_sha256_unique UNIQUE,
    name         TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);

-- The security audit log: provisioning, keys issued and revoked, rotations, throttling.
-- Append-only: the database itself refuses to change or remove a row. Never a secret:
-- keys appear by prefix and id only.
CREATE TABLE audit_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT audit_events_pk PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    tenant_id  BIGINT,
    branch_id  BIGINT,
    detail     JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_tenant_idx ON audit_events (tenant_id, id);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
