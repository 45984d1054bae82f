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
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT branches_tenant_bhf_unique UNIQUE (tenant_id, bhf_id)
);

CREATE TABLE sales (
    id                INTEGER CONSTRAINT sales_pk PRIMARY KEY AUTOINCREMENT,
    tenant_id         INTEGER NOT NULL CONSTRAINT sales_tenant_fk REFERENCES tenants (id),
    branch_id         INTEGER NOT NULL CONSTRAINT sales_branch_fk REFERENCES branches (id),
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
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    signed_at         TEXT,
    CONSTRAINT sales_branch_invc_unique UNIQUE (branch_id, invc_no)
);

CREATE TABLE outbox (
    id                INTEGER CONSTRAINT outbox_pk PRIMARY KEY AUTOINCREMENT,
    tenant_id         INTEGER NOT NULL CONSTRAINT outbox_tenant_fk REFERENCES tenants (id),
    branch_id         INTEGER NOT NULL CONSTRAINT outbox_branch_fk REFERENCES branches (id),
    sale_id           INTEGER NOT NULL CONSTRAINT outbox_sale_fk REFERENCES sales (id) CONSTRAINT outbox_sale_unique UNIQUE,
    invc_no           INTEGER NOT NULL,
    payload           TEXT NOT NULL,
    payload_sha256    TEXT NOT NULL,
    state             TEXT NOT NULL DEFAULT 'PENDING' CONSTRAINT outbox_state_check
                      CHECK (state IN ('PENDING', 'DONE', 'QUARANTINED')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_expires_at  TEXT,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT outbox_branch_invc_unique UNIQUE (branch_id, invc_no)
);
CREATE INDEX outbox_pending_idx ON outbox (branch_id, invc_no) WHERE state = 'PENDING';

CREATE TABLE receipts (
    tenant_id   INTEGER NOT NULL CONSTRAINT receipts_tenant_fk REFERENCES tenants (id),
    branch_id   INTEGER NOT NULL CONSTRAINT receipts_branch_fk REFERENCES branches (id),
    sdc_id      TEXT NOT NULL,
    rcpt_no     INTEGER NOT NULL,
    sale_id     INTEGER NOT NULL CONSTRAINT receipts_sale_fk REFERENCES sales (id),
    CONSTRAINT receipts_sdc_rcpt_unique UNIQUE (sdc_id, rcpt_no)
);
