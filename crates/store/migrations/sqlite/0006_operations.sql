-- Control-unit operations other than sales (stock in/out, stock master, items, customers),
-- queued in one transaction like a sale's outbox row and sent by the branch's relay, so
-- that each branch still has one call in flight at a time and nothing is lost in a crash.
ALTER TABLE branches ADD COLUMN last_sar_no INTEGER NOT NULL DEFAULT 0
    CONSTRAINT branches_last_sar_no_check CHECK (last_sar_no >= 0);

CREATE TABLE operations (
    id                INTEGER CONSTRAINT operations_pk PRIMARY KEY AUTOINCREMENT,
    tenant_id         INTEGER NOT NULL,
    branch_id         INTEGER NOT NULL,
    kind              TEXT NOT NULL CONSTRAINT operations_kind_check
                      CHECK (kind IN ('STOCK_ADJUSTMENT', 'STOCK_MASTER', 'ITEM', 'CUSTOMER')),
    -- The caller's key (Idempotency-Key) or one derived from what the operation names.
    operation_key     TEXT NOT NULL,
    request_sha256    TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    -- The exact KRA payload and its SHA-256, checked again before every send.
    payload           TEXT NOT NULL,
    payload_sha256    TEXT NOT NULL,
    -- insertStockIO's sarNo: gap-free per branch, like invcNo (an invalid request uses none).
    sar_no            INTEGER,
    -- What the API reports besides the state (JSON).
    summary           TEXT NOT NULL,
    state             TEXT NOT NULL DEFAULT 'PENDING' CONSTRAINT operations_state_check
                      CHECK (state IN ('PENDING', 'SYNCED', 'REJECTED')),
    result_code       TEXT,
    result_message    TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_expires_at  TEXT,
    next_attempt_at   TEXT,
    created_at        TEXT NOT NULL,
    done_at           TEXT,
    CONSTRAINT operations_key_unique UNIQUE (branch_id, kind, operation_key),
    CONSTRAINT operations_sar_unique UNIQUE (branch_id, sar_no),
    CONSTRAINT operations_id_scope_unique UNIQUE (id, tenant_id, branch_id),
    CONSTRAINT operations_branch_fk FOREIGN KEY (branch_id, tenant_id) REFERENCES branches (id, tenant_id)
);
CREATE INDEX operations_pending_idx ON operations (branch_id, id) WHERE state = 'PENDING';

-- The exchange journal links an operation's calls to it, as it links a sale's.
ALTER TABLE exchanges ADD COLUMN operation_id INTEGER
    CONSTRAINT exchanges_operation_fk REFERENCES operations (id);
CREATE INDEX exchanges_operation_idx ON exchanges (operation_id);
