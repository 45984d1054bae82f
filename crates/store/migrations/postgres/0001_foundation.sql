-- Tenants, branches, sales, the outbox and receipts: the signing pipeline's durable state.
-- Every tenant-owned row carries tenant_id (and branch_id where it belongs to a branch):
-- row-level security goes on exactly these columns.

CREATE TABLE tenants (
    id          BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT tenants_pk PRIMARY KEY,
    tin         TEXT NOT NULL CONSTRAINT tenants_tin_unique UNIQUE,
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE branches (
    id               BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT branches_pk PRIMARY KEY,
    tenant_id        BIGINT NOT NULL CONSTRAINT branches_tenant_fk REFERENCES tenants (id),
    bhf_id           TEXT NOT NULL,
    -- The last invcNo handed out; the next sale takes last_invc_no + 1 (gap-free, §6).
    last_invc_no     BIGINT NOT NULL DEFAULT 0 CONSTRAINT branches_last_invc_no_check CHECK (last_invc_no >= 0),
    -- The branch's control unit and the device initialised on it. The cmcKey is held in
    -- plain text until the key vault (issue 5) seals it.
    control_unit_url     TEXT,
    control_unit_profile TEXT,
    sdc_id               TEXT,
    mrc_no               TEXT,
    cmc_key              TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT branches_tenant_bhf_unique UNIQUE (tenant_id, bhf_id),
    -- Referenced with the tenant by every branch-owned row, so that no row can pair one
    -- tenant with another tenant's branch: the database itself refuses it.
    CONSTRAINT branches_id_tenant_unique UNIQUE (id, tenant_id)
);

CREATE TABLE sales (
    id                BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT sales_pk PRIMARY KEY,
    tenant_id         BIGINT NOT NULL CONSTRAINT sales_tenant_fk REFERENCES tenants (id),
    branch_id         BIGINT NOT NULL,
    invc_no           BIGINT NOT NULL,
    client_reference  TEXT,
    status            TEXT NOT NULL CONSTRAINT sales_status_check
                      CHECK (status IN ('PENDING_SYNC', 'SIGNED', 'FAILED', 'OUTCOME_UNKNOWN', 'RECONCILIATION_REQUIRED')),
    tot_amt           NUMERIC(24, 2) NOT NULL,
    cur_rcpt_no       BIGINT,
    tot_rcpt_no       BIGINT,
    intrl_data        TEXT,
    rcpt_sign         TEXT,
    sdc_date_time     TEXT,
    sdc_id            TEXT,
    mrc_no            TEXT,
    -- Why the control unit refused it (FAILED), or what is unresolved.
    failure_code      TEXT,
    failure_message   TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    signed_at         TIMESTAMPTZ,
    CONSTRAINT sales_branch_invc_unique UNIQUE (branch_id, invc_no),
    CONSTRAINT sales_id_scope_unique UNIQUE (id, tenant_id, branch_id),
    CONSTRAINT sales_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id)
);

CREATE TABLE outbox (
    id                BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT outbox_pk PRIMARY KEY,
    tenant_id         BIGINT NOT NULL CONSTRAINT outbox_tenant_fk REFERENCES tenants (id),
    branch_id         BIGINT NOT NULL,
    sale_id           BIGINT NOT NULL CONSTRAINT outbox_sale_unique UNIQUE,
    invc_no           BIGINT NOT NULL,
    -- The exact KRA payload and its SHA-256, checked again before every send.
    payload           TEXT NOT NULL,
    payload_sha256    TEXT NOT NULL,
    state             TEXT NOT NULL DEFAULT 'PENDING' CONSTRAINT outbox_state_check
                      CHECK (state IN ('PENDING', 'DONE', 'FAILED', 'QUARANTINED', 'RECONCILIATION_REQUIRED')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_expires_at  TIMESTAMPTZ,
    -- Not before this time (backoff after a call that was not sent).
    next_attempt_at   TIMESTAMPTZ,
    -- True once a call with this payload may have reached the control unit: from then on
    -- the row is reconciled (selectInvoiceDetails) before it is sent again.
    maybe_sent        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT outbox_branch_invc_unique UNIQUE (branch_id, invc_no),
    CONSTRAINT outbox_sale_fk FOREIGN KEY (sale_id, tenant_id, branch_id) REFERENCES sales (id, tenant_id, branch_id)
);
CREATE INDEX outbox_pending_idx ON outbox (branch_id, invc_no) WHERE state = 'PENDING';

-- One row per receipt the control unit issued: the duplicate detector is the constraint.
CREATE TABLE receipts (
    tenant_id   BIGINT NOT NULL CONSTRAINT receipts_tenant_fk REFERENCES tenants (id),
    branch_id   BIGINT NOT NULL,
    sdc_id      TEXT NOT NULL,
    rcpt_no     BIGINT NOT NULL,
    sale_id     BIGINT NOT NULL,
    CONSTRAINT receipts_sdc_rcpt_unique UNIQUE (sdc_id, rcpt_no),
    CONSTRAINT receipts_sale_fk FOREIGN KEY (sale_id, tenant_id, branch_id) REFERENCES sales (id, tenant_id, branch_id)
);

-- Every call to the control unit, kept for KRA support and auditors: the exact bodies, never
-- the headers (they carry the cmcKey).
CREATE TABLE exchanges (
    id             BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT exchanges_pk PRIMARY KEY,
    tenant_id      BIGINT NOT NULL CONSTRAINT exchanges_tenant_fk REFERENCES tenants (id),
    branch_id      BIGINT NOT NULL,
    sale_id        BIGINT,
    endpoint       TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    request_body   TEXT NOT NULL,
    response_body  TEXT,
    http_status    INTEGER,
    outcome        TEXT NOT NULL,
    elapsed_ms     BIGINT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT exchanges_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id),
    CONSTRAINT exchanges_sale_fk FOREIGN KEY (sale_id, tenant_id, branch_id) REFERENCES sales (id, tenant_id, branch_id)
);
CREATE INDEX exchanges_sale_idx ON exchanges (sale_id);

-- Gaps and duplicates in a control unit's receipt numbers, found as receipts are recorded.
CREATE TABLE sequence_findings (
    id          BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT sequence_findings_pk PRIMARY KEY,
    tenant_id   BIGINT NOT NULL CONSTRAINT sequence_findings_tenant_fk REFERENCES tenants (id),
    branch_id   BIGINT NOT NULL,
    sdc_id      TEXT NOT NULL,
    kind        TEXT NOT NULL CONSTRAINT sequence_findings_kind_check CHECK (kind IN ('GAP', 'DUPLICATE')),
    expected    BIGINT,
    found       BIGINT NOT NULL,
    sale_id     BIGINT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT sequence_findings_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id),
    CONSTRAINT sequence_findings_sale_fk FOREIGN KEY (sale_id, tenant_id, branch_id) REFERENCES sales (id, tenant_id, branch_id)
);

-- API keys: only a SHA-256 of the key is kept, with its first characters to find it by.
CREATE TABLE api_keys (
    id          BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT api_keys_pk PRIMARY KEY,
    tenant_id   BIGINT NOT NULL,
    branch_id   BIGINT NOT NULL,
    prefix      TEXT NOT NULL,
    key_sha256  TEXT NOT NULL CONSTRAINT api_keys_sha256_unique UNIQUE,
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    CONSTRAINT api_keys_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id)
);
CREATE INDEX api_keys_prefix_idx ON api_keys (prefix);

-- Idempotency-Key records, per tenant: the request's hash, and once done the answer.
CREATE TABLE idempotency_keys (
    tenant_id        BIGINT NOT NULL CONSTRAINT idempotency_keys_tenant_fk REFERENCES tenants (id),
    key              TEXT NOT NULL,
    request_sha256   TEXT NOT NULL,
    -- NULL while the first request with the key is still running.
    response_status  INTEGER,
    response_body    TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    expires_at       TIMESTAMPTZ NOT NULL,
    CONSTRAINT idempotency_keys_pk PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expiry_idx ON idempotency_keys (expires_at);

-- Items the branch's control unit knows (saveItem done): a sale may only name these.
CREATE TABLE registered_items (
    tenant_id      BIGINT NOT NULL,
    branch_id      BIGINT NOT NULL,
    item_cd        TEXT NOT NULL,
    registered_at  TIMESTAMPTZ NOT NULL,
    CONSTRAINT registered_items_pk PRIMARY KEY (branch_id, item_cd),
    CONSTRAINT registered_items_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id)
);
