-- Operators: keys that act on no branch (the admin routes), kept like branch keys, only as
-- a SHA-256 with a short prefix for listings.
CREATE TABLE operator_keys (
    id           INTEGER PRIMARY KEY,
    prefix       TEXT NOT NULL,
    key_sha256   TEXT NOT NULL CONSTRAINT operator_keys_sha256_unique UNIQUE,
    name         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT,
    last_used_at TEXT
);

-- The security audit log: provisioning, keys issued and revoked, rotations, throttling.
-- Append-only: the database itself refuses to change or remove a row. Never a secret:
-- keys appear by prefix and id only.
CREATE TABLE audit_events (
    id         INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    tenant_id  INTEGER,
    branch_id  INTEGER,
    detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_tenant_idx ON audit_events (tenant_id, id);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
