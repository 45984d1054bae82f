-- OAuth 2.0 client credentials (taxid-api.md 1.4): a client acts for one branch, like a
-- branch key. Its secret and its tokens are kept only as SHA-256 hashes; a token dies
-- when it expires or when its client is revoked (the lookup joins the client).
CREATE TABLE oauth_clients (
    id            BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT oauth_clients_pk PRIMARY KEY,
    tenant_id     BIGINT NOT NULL,
    branch_id     BIGINT NOT NULL,
    client_id     TEXT NOT NULL CONSTRAINT oauth_clients_client_id_unique UNIQUE,
    secret_sha256 TEXT NOT NULL,
    name          TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at    TIMESTAMPTZ,
    CONSTRAINT oauth_clients_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id),
    CONSTRAINT oauth_clients_id_scope_unique UNIQUE (id, tenant_id, branch_id)
);

CREATE TABLE oauth_tokens (
    token_sha256 TEXT CONSTRAINT oauth_tokens_pk PRIMARY KEY,
    client       BIGINT NOT NULL,
    tenant_id    BIGINT NOT NULL,
    branch_id    BIGINT NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    CONSTRAINT oauth_tokens_client_fk FOREIGN KEY (client, tenant_id, branch_id)
        REFERENCES oauth_clients (id, tenant_id, branch_id)
);
CREATE INDEX oauth_tokens_expiry_idx ON oauth_tokens (expires_at);
