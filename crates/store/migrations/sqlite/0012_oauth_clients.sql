-- OAuth 2.0 client credentials (taxid-api.md 1.4): a client acts for one branch, like a
-- branch key. Its secret and its tokens are kept only as SHA-256 hashes; a token dies
-- when it expires or when its client is revoked (the lookup joins the client).
CREATE TABLE oauth_clients (
    id            INTEGER PRIMARY KEY,
    tenant_id     INTEGER NOT NULL,
    branch_id     INTEGER NOT NULL,
    client_id     TEXT NOT NULL CONSTRAINT oauth_clients_client_id_unique UNIQUE,
    secret_sha256 TEXT NOT NULL,
    name          TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    revoked_at    TEXT,
    CONSTRAINT oauth_clients_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id)
);

CREATE TABLE oauth_tokens (
    token_sha256 TEXT CONSTRAINT oauth_tokens_pk PRIMARY KEY,
    client       INTEGER NOT NULL REFERENCES oauth_clients (id),
    tenant_id    INTEGER NOT NULL,
    branch_id    INTEGER NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX oauth_tokens_expiry_idx ON oauth_tokens (expires_at);
