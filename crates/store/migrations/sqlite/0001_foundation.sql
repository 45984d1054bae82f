-- The same schema as migrations/postgres/0001_foundation.sql, in SQLite's types:
-- timestamps as ISO-8601 text (UTC), amounts as exact decimal text.

CREATE TABLE tenants (
    id          INTEGER CONSTRAINT tenants_pk PRIMARY KEY AUTOINCREMENT,
    tin         TEXT NOT NULL CONSTRAINT tenants_tin_unique UNIQUE,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE branches (
    id               INTEGER CONSTRAINT branches_pk PRIMARY KEY AUTOINCREMENT,
    tenant_id        INTEGER NOT NULL CONSTRAINT branches_tenant_fk REFERENCES tenants (id),
    bhf_id           TEXT NOT NULL,
    last_invc_no     INTEGER NOT NULL DEFAULT 0 CONSTRAINT branches_last_invc_no_check CHECK (last_invc_no >= 0),
    -- The branch's control unit and the device initialised on it. The cmcKey is held in
    -- plain text until the key vault (issue 5) seals it.
    control_unit_url     TEXT,
    control_unit_profile TEXT,
    sdc_id               TEXT,
    mrc_no               TEXT,
    cmc_key              TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT branches_tenant_bhf_unique UNIQUE (tenant_id, bhf_id),
    -- Referenced with the tenant by every branch-owned row, so that no row can pair one
    -- tenant with another tenant's branch: the database itself refuses it.
    CONSTRAINT branches_id_tenant_unique UNIQUE (id, tenant_id)
);

CREATE TABLE sales (
    id                INTEGER CONSTRAINT sales_pk PRIMARY KEY AUTOINCREMENT,
    tenant_id         INTEGER NOT NULL CONSTRAINT sales_tenant_fk REFERENCES tenants (id),
    branch_id         INTEGER NOT NULL,
    invc_no           INTEGER NOT NULL,
    client_reference  TEXT,
    status            TEXT NOT NULL CONSTRAINT sales_status_check
                      CHECK (status IN ('PENDING_SYNC', 'SIGNED', 'FAILED', 'OUTCOME_UNKNOWN', 'RECONCILIATION_REQUIRED')),
    tot_amt           TEXT NOT NULL,
    cur_rcpt_no       INTEGER,
    tot_rcpt_no       INTEGER,
    intrl_data        TEXT,
    rcpt_sign         TEXT,
    sdc_date_time     TEXT,
    sdc_id            TEXT,
    mrc_no            TEXT,
    -- Why the control unit refused it (FAILED), or what is unresolved.
    failure_code      TEXT,
    failure_message   TEXT,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    signed_at         TEXT,
    CONSTRAINT sales_branch_invc_unique UNIQUE (branch_id, invc_no),
    CONSTRAINT sales_id_scope_unique UNIQUE (id, tenant_id, branch_id),
    CONSTRAINT sales_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id)
);

CREATE TABLE outbox (
    id                INTEGER CONSTRAINT outbox_pk PRIMARY KEY AUTOINCREMENT,
    tenant_id         INTEGER NOT NULL CONSTRAINT outbox_tenant_fk REFERENCES tenants (id),
    branch_id         INTEGER NOT NULL,
    sale_id           INTEGER NOT NULL CONSTRAINT outbox_sale_unique UNIQUE,
    invc_no           INTEGER NOT NULL,
    payload           TEXT NOT NULL,
    payload_sha256    TEXT NOT NULL,
    state             TEXT NOT NULL DEFAULT 'PENDING' CONSTRAINT outbox_state_check
                      CHECK (state IN ('PENDING', 'DONE', 'FAILED', 'QUARANTINED', 'RECONCILIATION_REQUIRED')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_expires_at  TEXT,
    -- Not before this time (backoff after a call that was not sent).
    next_attempt_at   TEXT,
    -- True once a call with this payload may have reached the control unit: from then on
    -- the row is reconciled (selectInvoiceDetails) before it is sent again.
    maybe_sent        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT outbox_branch_invc_unique UNIQUE (branch_id, invc_no),
    CONSTRAINT outbox_sale_fk FOREIGN KEY (sale_id, tenant_id, branch_id) REFERENCES sales (id, tenant_id, branch_id)
);
CREATE INDEX outbox_pending_idx ON outbox (branch_id, invc_no) WHERE state = 'PENDING';

CREATE TABLE receipts (
    tenant_id   INTEGER NOT NULL CONSTRAINT receipts_tenant_fk REFERENCES tenants (id),
    branch_id   INTEGER NOT NULL,
    sdc_id      TEXT NOT NULL,
    rcpt_no     INTEGER NOT NULL,
    sale_id     INTEGER NOT NULL,
    CONSTRAINT receipts_sdc_rcpt_unique UNIQUE (sdc_id, rcpt_no),
    CONSTRAINT receipts_sale_fk FOREIGN KEY (sale_id, tenant_id, branch_id) REFERENCES sales (id, tenant_id, branch_id)
);

-- Every call to the control unit, kept for KRA support and auditors: the exact bodies, never
-- the headers (they carry the cmcKey).
CREATE TABLE exchanges (
    id             INTEGER CONSTRAINT exchanges_pk PRIMARY KEY AUTOINCREMENT,
    tenant_id      INTEGER NOT NULL CONSTRAINT exchanges_tenant_fk REFERENCES tenants (id),
    branch_id      INTEGER NOT NULL,
    sale_id        INTEGER,
    endpoint       TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    request_body   TEXT NOT NULL,
    response_body  TEXT,
    http_status    INTEGER,
    outcome        TEXT NOT NULL,
    elapsed_ms     INTEGER NOT NULL,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT exchanges_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id),
    CONSTRAINT exchanges_sale_fk FOREIGN KEY (sale_id, tenant_id, branch_id) REFERENCES sales (id, tenant_id, branch_id)
);
CREATE INDEX exchanges_sale_idx ON exchanges (sale_id);

-- Gaps and duplicates in a control unit's receipt numbers, found as receipts are recorded.
CREATE TABLE sequence_findings (
    id          INTEGER CONSTRAINT sequence_findings_pk PRIMARY KEY AUTOINCREMENT,
    tenant_id   INTEGER NOT NULL CONSTRAINT sequence_findings_tenant_fk REFERENCES tenants (id),
    branch_id   INTEGER NOT NULL,
    sdc_id      TEXT NOT NULL,
    kind        TEXT NOT NULL CONSTRAINT sequence_findings_kind_check CHECK (kind IN ('GAP', 'DUPLICATE')),
    expected    INTEGER,
    found       INTEGER NOT NULL,
    sale_id     INTEGER,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT sequence_findings_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id),
    CONSTRAINT sequence_findings_sale_fk FOREIGN KEY (sale_id, tenant_id, branch_id) REFERENCES sales (id, tenant_id, branch_id)
);

-- API keys: only a SHA-256 of the key is kept, with its first characters to find it by.
CREATE TABLE api_keys (
    id          INTEGER CONSTRAINT api_keys_pk PRIMARY KEY AUTOINCREMENT,
    tenant_id   INTEGER NOT NULL,
    branch_id   INTEGER NOT NULL,
    prefix      TEXT NOT NULL,
    key_sha256  TEXT NOT NULL CONSTRAINT api_keys_sha256_unique UNIQUE,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    revoked_at  TEXT,
    last_used_at TEXT,
    CONSTRAINT api_keys_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id)
);
CREATE INDEX api_keys_prefix_idx ON api_keys (prefix);

-- Idempotency-Key records, per tenant: the request's hash, and once done the answer.
CREATE TABLE idempotency_keys (
    tenant_id        INTEGER NOT NULL CONSTRAINT idempotency_keys_tenant_fk REFERENCES tenants (id),
    key              TEXT NOT NULL,
    request_sha256   TEXT NOT NULL,
    -- NULL while the first request with the key is still running.
    response_status  INTEGER,
    response_body    TEXT,
    created_at       TEXT NOT NULL,
    expires_at       TEXT NOT NULL,
    CONSTRAINT idempotency_keys_pk PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expiry_idx ON idempotency_keys (expires_at);

-- Items the branch's control unit knows (saveItem done): a sale may only name these.
CREATE TABLE registered_items (
    tenant_id      INTEGER NOT NULL,
    branch_id      INTEGER NOT NULL,
    item_cd        TEXT NOT NULL,
    registered_at  TEXT NOT NULL,
    CONSTRAINT registered_items_pk PRIMARY KEY (branch_id, item_cd),
    CONSTRAINT registered_items_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id)
);
