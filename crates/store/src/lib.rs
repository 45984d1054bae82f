//! Ushuru's durable state, behind one API over two backends: SQLite (one file, the embedded
//! default) and PostgreSQL (production, several replicas). Both run the same migrations in
//! their own dialect and pass the same conformance tests (`tests/conformance.rs`).
//!
//! Every tenant-owned row carries its tenant and branch, and every query on them runs in a
//! transaction scoped to one [`Scope`]; on PostgreSQL the scope is also set with
//! `set_config('ushuru.tenant_id', …, true)` for row-level security.
//!
//! This is the foundation of the signing pipeline: tenants and branches, gap-free invoice
//! numbering with the outbox row written in the same transaction (phase 1), claiming the
//! branch's next row under a lease (phase 2), and recording the receipt under
//! `UNIQUE(sdc_id, rcpt_no)` (phase 3).

mod model;
mod postgres;
mod signer;
mod sqlite;

use std::time::Duration;

use chrono::{DateTime, Utc};

pub use model::*;
/// Phase 3's look at a device's latest receipt on PostgreSQL, for the test that checks its
/// plan stays one index probe as history grows.
#[doc(hidden)]
pub use postgres::LATEST_RECEIPT_SQL;
pub use postgres::{PostgresStore, SharedRelayCounts};
pub use sqlite::SqliteStore;
pub use ushuru_vault::SealedCmcKey;

/// What can go wrong, in the store's own terms.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("receipt {rcpt_no} of control unit {sdc_id} is already recorded for another sale")]
    DuplicateReceipt { sdc_id: String, rcpt_no: u64 },
    #[error("{0}")]
    Conflict(String),
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("the outbox payload could not be built: {0}")]
    Payload(String),
    #[error("a stored value does not read back: {0}")]
    Corrupt(String),
    /// Another process serves this database (SQLite: one process per database file).
    #[error("{0}")]
    InUse(String),
    #[error("unsupported database URL {0:?}: use a file path, sqlite://PATH or postgres://…")]
    Url(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Builds an outbox payload once the invoice number is known.
pub type PayloadBuilder = Box<dyn FnOnce(u64) -> std::result::Result<OutboxPayload, String> + Send>;

/// The store: one of the two backends.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Sqlite($store) => $call.await,
            Store::Postgres($store) => $call.await,
        }
    };
}

mod security;
pub use security::*;

impl Store {
    /// Opens the store a URL names: `postgres://…` (or `postgresql://…`), else an SQLite
    /// file (`sqlite://PATH` or a plain path). Runs no migrations: see [`Store::migrate`].
    pub async fn connect(url: &str) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PostgresStore::connect(url).await?))
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or((!url.contains("://")).then_some(url))
        {
            Ok(Store::Sqlite(SqliteStore::open(path.as_ref()).await?))
        } else {
            Err(StoreError::Url(url.to_owned()))
        }
    }

    /// Applies the migrations not applied yet; safe to run from several processes at once.
    pub async fn migrate(&self) -> Result<Vec<&'static str>> {
        dispatch!(self, s => s.migrate())
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Creates a tenant (an operator's action: not scoped).
    pub async fn create_tenant(&self, tin: &str, name: &str) -> Result<Tenant> {
        dispatch!(self, s => s.create_tenant(tin, name))
    }

    pub async fn create_branch(&self, tenant: TenantId, bhf_id: &str) -> Result<Branch> {
        dispatch!(self, s => s.create_branch(tenant, bhf_id))
    }

    pub async fn branch(&self, scope: Scope) -> Result<Option<Branch>> {
        dispatch!(self, s => s.branch(scope))
    }

    /// The tenant with this PIN (an operator's lookup: not scoped).
    pub async fn tenant_by_tin(&self, tin: &str) -> Result<Option<Tenant>> {
        dispatch!(self, s => s.tenant_by_tin(tin))
    }

    /// The tenant's branch with this KRA branch id.
    pub async fn branch_by_id(&self, tenant: TenantId, bhf_id: &str) -> Result<Option<Branch>> {
        dispatch!(self, s => s.branch_by_id(tenant, bhf_id))
    }

    /// Keeps the branch's control unit and device.
    pub async fn save_device(&self, scope: Scope, device: &DeviceRecord) -> Result<()> {
        dispatch!(self, s => s.save_device(scope, device))
    }

    pub async fn device(&self, scope: Scope) -> Result<Option<DeviceRecord>> {
        dispatch!(self, s => s.device(scope))
    }

    /// The cmcKeys a database written before the vault (migration 0010) still holds in
    /// plain text, every tenant's: `serve` seals them at start.
    pub async fn plaintext_cmc_keys(&self) -> Result<Vec<PlaintextCmcKey>> {
        dispatch!(self, s => s.plaintext_cmc_keys())
    }

    /// Replaces a branch's plaintext cmcKey by its sealed form, in one update; false if
    /// the branch holds no plaintext key (any more).
    pub async fn seal_plaintext_cmc_key(
        &self,
        scope: Scope,
        sealed: &SealedCmcKey,
    ) -> Result<bool> {
        dispatch!(self, s => s.seal_plaintext_cmc_key(scope, sealed))
    }

    /// Queues a control-unit operation (phase 1): in one transaction, its `sarNo` if it is
    /// numbered, its payload and its hash. A key used before answers what it queued then.
    pub async fn enqueue_operation(
        &self,
        scope: Scope,
        operation: NewOperation,
    ) -> Result<Enqueued> {
        dispatch!(self, s => s.enqueue_operation(scope, operation))
    }

    /// The branch's operation of this kind with this key.
    pub async fn operation(
        &self,
        scope: Scope,
        kind: OperationKind,
        key: &str,
    ) -> Result<Option<OperationRecord>> {
        dispatch!(self, s => s.operation(scope, kind, key))
    }

    pub async fn operation_by_id(
        &self,
        scope: Scope,
        id: OperationId,
    ) -> Result<Option<OperationRecord>> {
        dispatch!(self, s => s.operation_by_id(scope, id))
    }

    /// Claims the branch's oldest pending operation under a lease (phase 2), as
    /// [`Store::claim_next`] claims a sale.
    pub async fn claim_next_operation(
        &self,
        scope: Scope,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<OperationClaim>> {
        dispatch!(self, s => s.claim_next_operation(scope, owner, lease, now))
    }

    /// Gives a claimed operation back, to be tried again from `retry_at`.
    pub async fn release_operation(
        &self,
        claim: &OperationClaim,
        retry_at: DateTime<Utc>,
    ) -> Result<()> {
        dispatch!(self, s => s.release_operation(claim, retry_at))
    }

    /// Records a claimed operation's end (phase 3): SYNCED, or REJECTED with KRA's code.
    pub async fn settle_operation(
        &self,
        claim: &OperationClaim,
        rejected: Option<(&str, &str)>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        dispatch!(self, s => s.settle_operation(claim, rejected, now))
    }

    /// Keeps a call made for an operation in the exchange journal.
    pub async fn record_operation_exchange(
        &self,
        scope: Scope,
        operation: OperationId,
        exchange: &ExchangeRecord,
        now: DateTime<Utc>,
    ) -> Result<()> {
        dispatch!(self, s => s.record_operation_exchange(scope, operation, exchange, now))
    }

    /// The calls made for an operation, oldest first.
    pub async fn operation_exchanges(
        &self,
        scope: Scope,
        operation: OperationId,
    ) -> Result<Vec<ExchangeRecord>> {
        dispatch!(self, s => s.operation_exchanges(scope, operation))
    }

    /// Every branch, of every tenant, whose device is initialised, in branch order: the
    /// branches this service signs for. A service-level read (not tenant-scoped): it runs
    /// once at start, before any request.
    pub async fn initialised_branches(&self) -> Result<Vec<InitialisedBranch>> {
        dispatch!(self, s => s.initialised_branches())
    }

    /// Stores a key chosen by the operator (`USHURU_BOOTSTRAP_API_KEY`) for a branch, as
    /// a hash like any other; nothing if it is stored already.
    pub async fn ensure_api_key(&self, scope: Scope, key: &str, name: &str) -> Result<ApiKey> {
        if let Some(existing) = self.authenticate(key, Utc::now()).await? {
            if existing.scope != scope {
                return Err(StoreError::Conflict(
                    "that API key belongs to another branch".into(),
                ));
            }
            return Ok(existing);
        }
        // A revoked key stays revoked: it is never brought back by being given again.
        if dispatch!(self, s => s.api_key_known(&key_sha256(key)))? {
            return Err(StoreError::Conflict(
                "that API key was revoked: choose another one".into(),
            ));
        }
        dispatch!(self, s => s.insert_api_key(scope, name, &key_prefix(key), &key_sha256(key)))
    }

    /// Phase 1: in one transaction, the branch's next invoice number, the sale and its
    /// outbox row with the payload `build` makes for that number. If anything fails —
    /// `build` included — nothing is written and the number stays free.
    pub async fn accept_sale(
        &self,
        scope: Scope,
        sale: NewSale,
        build: PayloadBuilder,
    ) -> Result<AcceptedSale> {
        dispatch!(self, s => s.accept_sale(scope, sale, build))
    }

    /// Phase 2: claims the branch's oldest pending outbox row for `owner` until
    /// `now + lease`. Only that row can be claimed, in invoice order, and only by the
    /// branch's signer: the claim first takes (or confirms) the branch's lock for `owner`
    /// (see `signer.rs`); without it the answer is `None` and the relay stands by. The
    /// holder takes over a lease issued under any other hold at once, live or not, and waits
    /// for a live lease of its own hold (the last-resort bound). The claim carries a lease
    /// token that later calls on the row must present.
    pub async fn claim_next(
        &self,
        scope: Scope,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Claim>> {
        dispatch!(self, s => s.claim_next(scope, owner, lease, now))
    }

    /// Takes the database for this process to serve, before anything else: on SQLite an
    /// exclusive lock on `<database>.lock`, refused with [`StoreError::InUse`] while another
    /// process (or another open store) holds it; on PostgreSQL it opens the connection that
    /// will hold the branch locks, so that a database that cannot give one fails at start.
    pub async fn lock_for_serving(&self) -> Result<()> {
        dispatch!(self, s => s.lock_for_serving())
    }

    /// Gives up `owner`'s hold of the branch (nothing if it holds none), so that another
    /// relay or process can become its signer without waiting for this one to end.
    pub async fn let_go_branch(&self, scope: Scope, owner: &str) -> Result<()> {
        dispatch!(self, s => s.let_go_branch(scope, owner))
    }

    /// Phase 3: in one transaction, the receipt into the sale (SIGNED), the outbox row
    /// done, and the receipt number under `UNIQUE(sdc_id, rcpt_no)`. A receipt number
    /// already recorded for another sale is [`StoreError::DuplicateReceipt`] and changes
    /// nothing. A receipt number that is not the control unit's previous + 1 is kept, with a
    /// GAP finding in the same transaction (the sequence auditor).
    pub async fn record_receipt(
        &self,
        claim: &Claim,
        receipt: &Receipt,
        now: DateTime<Utc>,
    ) -> Result<()> {
        dispatch!(self, s => s.record_receipt(claim, receipt, None, now, None)).map(|_| ())
    }

    /// [`Store::record_receipt`], with the call that brought the receipt written to the
    /// exchange journal in the same transaction (one commit instead of two per sale), and,
    /// when `next` names the relay (`owner`) and its lease, the branch's next sale claimed
    /// in that transaction too, exactly as [`Store::claim_next`] would claim it. Returns
    /// the signed sale and that claim.
    pub async fn record_and_claim_next(
        &self,
        claim: &Claim,
        receipt: &Receipt,
        exchange: Option<&ExchangeRecord>,
        now: DateTime<Utc>,
        next: Option<(&str, Duration)>,
    ) -> Result<Recorded> {
        dispatch!(self, s => s.record_receipt(claim, receipt, exchange, now, next))
    }

    /// The branch's latest sale carrying the POS's own reference.
    pub async fn sale_by_client_reference(
        &self,
        scope: Scope,
        reference: &str,
    ) -> Result<Option<SaleRecord>> {
        match dispatch!(self, s => s.latest_sale_id_by_reference(scope, reference))? {
            Some(id) => self.sale(scope, id).await,
            None => Ok(None),
        }
    }

    /// Accepts a credit note against `original` (phase 1 for a credit note): in one
    /// transaction, which also holds the branch's numbering lock so that two notes against
    /// one sale cannot both see the same remainder, the planner is shown the original, its
    /// lines and what earlier notes (not FAILED) reversed, and either refuses (nothing is
    /// written, no number is used) or returns the note to store with its exact payload.
    pub async fn accept_credit_note<R: Send + 'static>(
        &self,
        scope: Scope,
        original: SaleId,
        plan: CreditPlanner<R>,
    ) -> Result<CreditOutcome<R>> {
        dispatch!(self, s => s.accept_credit_note(scope, original, plan))
    }

    /// The sale a credit note reverses; `None` for a sale or an unknown id.
    pub async fn credit_note_original(&self, scope: Scope, note: SaleId) -> Result<Option<SaleId>> {
        dispatch!(self, s => s.credit_note_original(scope, note))
    }

    /// A sale's lines in `itemSeq` order; empty for an unknown sale or another scope's.
    pub async fn sale_lines(&self, scope: Scope, sale: SaleId) -> Result<Vec<SaleLine>> {
        dispatch!(self, s => s.sale_lines(scope, sale))
    }

    pub async fn sale(&self, scope: Scope, id: SaleId) -> Result<Option<SaleRecord>> {
        dispatch!(self, s => s.sale(scope, id))
    }

    /// Gives a claimed row back: not before `retry_at`, and with `maybe_sent` as the call
    /// left it (false again after a call that provably never left). The sale's status
    /// becomes `status` (PENDING_SYNC, or OUTCOME_UNKNOWN after an ambiguous call).
    pub async fn release(
        &self,
        claim: &Claim,
        retry_at: DateTime<Utc>,
        maybe_sent: bool,
        status: SaleStatus,
    ) -> Result<()> {
        dispatch!(self, s => s.release(claim, retry_at, maybe_sent, status))
    }

    /// Ends a claimed row without a receipt (see [`Settlement`]).
    pub async fn settle(&self, claim: &Claim, settlement: &Settlement) -> Result<()> {
        dispatch!(self, s => s.settle(claim, settlement))
    }

    /// Keeps a call to the control unit in the exchange journal.
    pub async fn record_exchange(
        &self,
        scope: Scope,
        exchange: &ExchangeRecord,
        now: DateTime<Utc>,
    ) -> Result<()> {
        dispatch!(self, s => s.record_exchange(scope, exchange, now))
    }

    /// The journal of a sale, oldest first.
    pub async fn exchanges(&self, scope: Scope, sale: SaleId) -> Result<Vec<ExchangeRecord>> {
        dispatch!(self, s => s.exchanges(scope, sale))
    }

    pub async fn record_finding(
        &self,
        scope: Scope,
        finding: &SequenceFinding,
        now: DateTime<Utc>,
    ) -> Result<()> {
        dispatch!(self, s => s.record_finding(scope, finding, now))
    }

    /// The branch's sequence findings, oldest first.
    pub async fn findings(&self, scope: Scope) -> Result<Vec<SequenceFinding>> {
        dispatch!(self, s => s.findings(scope))
    }

    /// Issues an API key for a branch. The key is returned once; only its SHA-256 and its
    /// first characters are stored.
    pub async fn create_api_key(&self, scope: Scope, name: &str) -> Result<(String, ApiKey)> {
        let key = new_api_key()?;
        let record = dispatch!(self, s => s.insert_api_key(scope, name, &key_prefix(&key), &key_sha256(&key)))?;
        Ok((key, record))
    }

    /// The live key a caller presents, with its branch; `None` for an unknown or revoked key.
    pub async fn authenticate(&self, key: &str, now: DateTime<Utc>) -> Result<Option<ApiKey>> {
        dispatch!(self, s => s.authenticate(&key_sha256(key), now))
    }

    pub async fn revoke_api_key(&self, scope: Scope, id: i64, now: DateTime<Utc>) -> Result<()> {
        dispatch!(self, s => s.revoke_api_key(scope, id, now))
    }

    /// Starts a request under an Idempotency-Key of the tenant (see [`IdempotencyStart`]).
    /// A first request that has not answered within `in_flight_for` is taken as dead and
    /// may run again; an answer is kept until `now + keep`.
    pub async fn begin_idempotent(
        &self,
        tenant: TenantId,
        key: &str,
        request_sha256: &str,
        now: DateTime<Utc>,
        in_flight_for: Duration,
        keep: Duration,
    ) -> Result<IdempotencyStart> {
        dispatch!(self, s => s.begin_idempotent(tenant, key, request_sha256, now, in_flight_for, keep))
    }

    /// [`Store::begin_idempotent`] and [`Store::accept_sale`] in one transaction: the key's
    /// record is written with the sale it accepts (one commit instead of two), or the key's
    /// earlier use decides and nothing is accepted.
    pub async fn accept_sale_once(
        &self,
        scope: Scope,
        request: IdempotentRequest,
        sale: NewSale,
        build: PayloadBuilder,
    ) -> Result<IdempotentAccept> {
        dispatch!(self, s => s.accept_sale_once(scope, request, sale, build))
    }

    /// Records the answer of a request started with [`Store::begin_idempotent`].
    pub async fn finish_idempotent(
        &self,
        tenant: TenantId,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        dispatch!(self, s => s.finish_idempotent(tenant, key, status, body))
    }

    /// Forgets a started request that produced no answer to keep (it may run again).
    pub async fn abandon_idempotent(&self, tenant: TenantId, key: &str) -> Result<()> {
        dispatch!(self, s => s.abandon_idempotent(tenant, key))
    }

    /// Whether the branch's control unit knows the item (saveItem done).
    pub async fn item_registered(&self, scope: Scope, item_cd: &str) -> Result<bool> {
        dispatch!(self, s => s.item_registered(scope, item_cd))
    }

    /// Records that the branch's control unit knows the item.
    pub async fn mark_item_registered(
        &self,
        scope: Scope,
        item_cd: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        dispatch!(self, s => s.mark_item_registered(scope, item_cd, now))
    }

    /// Deletes the records kept past their time; returns how many.
    pub async fn purge_idempotency(&self, now: DateTime<Utc>) -> Result<u64> {
        dispatch!(self, s => s.purge_idempotency(now))
    }

    /// Gathers planner statistics for each table that holds at least `min_rows` rows and
    /// was never analysed, and returns the tables' names (PostgreSQL, migration 0015: plans
    /// made on near-empty tables are kept by every connection until statistics arrive,
    /// and autovacuum brings the first ones only after its naptime). A table another
    /// `ANALYZE` holds is left for the next call. SQLite plans without statistics, so
    /// there it has nothing to do.
    pub async fn analyze_new_tables(&self, min_rows: u64) -> Result<Vec<String>> {
        match self {
            Store::Sqlite(_) => Ok(Vec::new()),
            Store::Postgres(store) => store.analyze_new_tables(min_rows).await,
        }
    }
}

/// A new API key: `ush_` and 32 random bytes in lower-case hex.
fn new_api_key() -> Result<String> {
    let mut random = [0u8; 32];
    // Without the operating system's randomness no key may be issued at all.
    getrandom::fill(&mut random)
        .map_err(|e| StoreError::Database(format!("no randomness for an API key: {e}")))?;
    Ok(format!("ush_{}", data_encoding::HEXLOWER.encode(&random)))
}

/// The first characters of a key, kept to tell keys apart in listings (and to count
/// authentication failures per key).
pub fn key_prefix(key: &str) -> String {
    key.chars().take(12).collect()
}

pub(crate) fn key_sha256(key: &str) -> String {
    use sha2::Digest;
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(key.as_bytes()))
}

/// The decision on an existing idempotency record.
pub(crate) fn idempotency_decision(
    stored_sha256: &str,
    request_sha256: &str,
    answer: Option<(u16, String)>,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
    in_flight_for: Duration,
    accepted: Option<AcceptedUnderKey>,
) -> Option<IdempotencyStart> {
    if stored_sha256 != request_sha256 {
        return Some(IdempotencyStart::Mismatch);
    }
    let running_until = chrono::Duration::from_std(in_flight_for)
        .ok()
        .and_then(|d| started.checked_add_signed(d));
    let sale_answer = |accepted: AcceptedUnderKey, status: u16| {
        let id = if accepted.rcpt_ty_cd == "R" {
            "creditNoteId"
        } else {
            "purchaseId"
        };
        IdempotencyStart::Replay {
            status,
            body: format!("{{\"{id}\":{}}}", accepted.sale),
        }
    };
    match answer {
        Some((status, body)) => Some(IdempotencyStart::Replay { status, body }),
        // A settled sale is its own answer (a signed sale's answer is not written under
        // its key: the sale says it all).
        None if accepted.as_ref().is_some_and(|a| a.settled) => {
            accepted.map(|a| sale_answer(a, 200))
        }
        None if running_until.is_none_or(|until| until > now) => Some(IdempotencyStart::InFlight),
        // The first request died after its sale was accepted: that sale is the answer
        // (202 until its status says more), never a second sale. If it died before
        // accepting anything (None), the request may run again.
        None => accepted.map(|a| sale_answer(a, 202)),
    }
}

/// The sale a key's first request accepted, as the key's record finds it.
pub(crate) struct AcceptedUnderKey {
    pub sale: i64,
    pub rcpt_ty_cd: String,
    /// SIGNED, FAILED or RECONCILIATION_REQUIRED: its answer will not change.
    pub settled: bool,
}

/// SQL for whether a sale (aliased `s`) is settled, for [`AcceptedUnderKey::settled`].
pub(crate) const SALE_SETTLED_SQL: &str =
    "s.status IN ('SIGNED', 'FAILED', 'RECONCILIATION_REQUIRED')";

/// A migration: its version, name and SQL for each backend.
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_foundation",
        sqlite: include_str!("../migrations/sqlite/0001_foundation.sql"),
        postgres: include_str!("../migrations/postgres/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "0002_sale_search",
        sqlite: include_str!("../migrations/sqlite/0002_sale_search.sql"),
        postgres: include_str!("../migrations/postgres/0002_sale_search.sql"),
    },
    Migration {
        version: 3,
        name: "0003_sale_lines",
        sqlite: include_str!("../migrations/sqlite/0003_sale_lines.sql"),
        postgres: include_str!("../migrations/postgres/0003_sale_lines.sql"),
    },
    Migration {
        version: 4,
        name: "0004_credit_notes",
        sqlite: include_str!("../migrations/sqlite/0004_credit_notes.sql"),
        postgres: include_str!("../migrations/postgres/0004_credit_notes.sql"),
    },
    Migration {
        version: 5,
        name: "0005_idempotent_sales",
        sqlite: include_str!("../migrations/sqlite/0005_idempotent_sales.sql"),
        postgres: include_str!("../migrations/postgres/0005_idempotent_sales.sql"),
    },
    Migration {
        version: 6,
        name: "0006_operations",
        sqlite: include_str!("../migrations/sqlite/0006_operations.sql"),
        postgres: include_str!("../migrations/postgres/0006_operations.sql"),
    },
    Migration {
        version: 7,
        name: "0007_released_numbers",
        sqlite: include_str!("../migrations/sqlite/0007_released_numbers.sql"),
        postgres: include_str!("../migrations/postgres/0007_released_numbers.sql"),
    },
    Migration {
        version: 8,
        name: "0008_room_for_updates",
        sqlite: include_str!("../migrations/sqlite/0008_room_for_updates.sql"),
        postgres: include_str!("../migrations/postgres/0008_room_for_updates.sql"),
    },
    Migration {
        version: 9,
        name: "0009_scope_led_indexes",
        sqlite: include_str!("../migrations/sqlite/0009_scope_led_indexes.sql"),
        postgres: include_str!("../migrations/postgres/0009_scope_led_indexes.sql"),
    },
    Migration {
        version: 10,
        name: "0010_sealed_cmc_keys",
        sqlite: include_str!("../migrations/sqlite/0010_sealed_cmc_keys.sql"),
        postgres: include_str!("../migrations/postgres/0010_sealed_cmc_keys.sql"),
    },
    Migration {
        version: 11,
        name: "0011_operators_and_audit",
        sqlite: include_str!("../migrations/sqlite/0011_operators_and_audit.sql"),
        postgres: include_str!("../migrations/postgres/0011_operators_and_audit.sql"),
    },
    Migration {
        version: 12,
        name: "0012_oauth_clients",
        sqlite: include_str!("../migrations/sqlite/0012_oauth_clients.sql"),
        postgres: include_str!("../migrations/postgres/0012_oauth_clients.sql"),
    },
    Migration {
        version: 13,
        name: "0013_row_level_security",
        sqlite: include_str!("../migrations/sqlite/0013_row_level_security.sql"),
        postgres: include_str!("../migrations/postgres/0013_row_level_security.sql"),
    },
    Migration {
        version: 14,
        name: "0014_receipt_look_by_branch",
        sqlite: include_str!("../migrations/sqlite/0014_receipt_look_by_branch.sql"),
        postgres: include_str!("../migrations/postgres/0014_receipt_look_by_branch.sql"),
    },
    Migration {
        version: 15,
        name: "0015_statistics_for_new_tables",
        sqlite: include_str!("../migrations/sqlite/0015_statistics_for_new_tables.sql"),
        postgres: include_str!("../migrations/postgres/0015_statistics_for_new_tables.sql"),
    },
];

/// A lease expiry, `now + lease`, within [`clamp_time`]'s range.
pub(crate) fn lease_until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    clamp_time(
        chrono::Duration::from_std(lease)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

/// Times both backends store alike: up to the end of year 9999 (RFC 3339 has four-digit
/// years), to the microsecond (PostgreSQL's precision).
pub(crate) fn clamp_time(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{TimeZone, Timelike};
    let latest = Utc
        .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let at = at.min(latest);
    at.with_nanosecond(at.nanosecond() / 1_000 * 1_000)
        .unwrap_or(at)
}

/// A lease token: the owner's name and a random part, unique to one claim. Recording,
/// settling and releasing need the token, so a relay whose lease ran out and was taken over
/// can no longer touch the row, even one with the same name.
pub(crate) fn lease_token(owner: &str) -> String {
    let mut random = [0u8; 8];
    if getrandom::fill(&mut random).is_err() {
        random = Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .to_le_bytes();
    }
    format!(
        "{owner}#{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Runs a payload builder; a panic in it is an error like any other (nothing is written).
/// Runs a credit-note planner, turning a panic into an error rather than a dead connection.
pub(crate) fn plan_credit_note<R>(
    plan: CreditPlanner<R>,
    context: &CreditContext,
    invc_no: u64,
) -> Result<std::result::Result<NewCreditNote, R>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan(context, invc_no)))
        .map_err(|_| StoreError::Payload("the credit-note planner panicked".into()))
}

pub(crate) fn build_payload(build: PayloadBuilder, invc_no: u64) -> Result<OutboxPayload> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build(invc_no)))
        .map_err(|_| StoreError::Payload("the payload builder panicked".into()))?
        .map_err(StoreError::Payload)
}

/// An operation's payload and its SHA-256, from its builder (which must not panic the store).
pub(crate) fn build_operation_payload(
    build: OperationPayloadBuilder,
    sar_no: Option<u64>,
) -> Result<OutboxPayload> {
    let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build(sar_no)))
        .map_err(|_| StoreError::Payload("the payload builder panicked".into()))?
        .map_err(StoreError::Payload)?;
    let sha256 =
        data_encoding::HEXLOWER.encode(&<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
    Ok(OutboxPayload { body, sha256 })
}

/// A pending sale queued behind a number being given back.
pub(crate) struct Behind {
    pub outbox_id: i64,
    pub sale_id: i64,
    pub invc_no: u64,
    pub payload: String,
}

/// What becomes of a sale queued behind a released number.
pub(crate) enum Fate {
    /// It moves down to `invc_no`, its payload rewritten to match.
    Renumber {
        outbox_id: i64,
        sale_id: i64,
        invc_no: u64,
        payload: OutboxPayload,
    },
    /// A credit note of a sale whose number was released: it fails with its original, and
    /// gives its own number back too.
    Fail {
        outbox_id: i64,
        sale_id: i64,
        invc_no: u64,
        message: String,
    },
}

/// Plans giving `released` back: every later pending row (all never claimed, since only
/// the head of a branch is ever claimed) moves down past the numbers released before it,
/// and a credit note of a released sale fails with it. Payloads are JSON with exact
/// numbers (serde_json's arbitrary_precision and preserve_order), so only `invcNo` and
/// `orgInvcNo` change.
pub(crate) fn plan_release(released: u64, behind: Vec<Behind>) -> Result<Vec<Fate>> {
    let mut gone = vec![released];
    let mut fates = Vec::with_capacity(behind.len());
    for row in behind {
        let mut payload: serde_json::Value = serde_json::from_str(&row.payload).map_err(|e| {
            StoreError::Corrupt(format!("outbox payload of sale {}: {e}", row.sale_id))
        })?;
        let original = payload
            .get("orgInvcNo")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if original != 0 && gone.contains(&original) {
            gone.push(row.invc_no);
            fates.push(Fate::Fail {
                outbox_id: row.outbox_id,
                sale_id: row.sale_id,
                invc_no: row.invc_no,
                message: format!(
                    "the sale it credits (invoice {original}) was refused by the control unit"
                ),
            });
            continue;
        }
        let below =
            |number: u64| u64::try_from(gone.iter().filter(|g| **g < number).count()).unwrap_or(0);
        let invc_no = row.invc_no - below(row.invc_no);
        payload["invcNo"] = serde_json::json!(invc_no);
        if original > released {
            payload["orgInvcNo"] = serde_json::json!(original - below(original));
        }
        let body = serde_json::to_string(&payload).map_err(|e| {
            StoreError::Corrupt(format!("outbox payload of sale {}: {e}", row.sale_id))
        })?;
        let sha256 = data_encoding::HEXLOWER
            .encode(&<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
        fates.push(Fate::Renumber {
            outbox_id: row.outbox_id,
            sale_id: row.sale_id,
            invc_no,
            payload: OutboxPayload { body, sha256 },
        });
    }
    Ok(fates)
}

/// Whether settling this claim gives its number back: the sale was refused (or
/// quarantined) and no earlier claim can have put it on the wire. After an ambiguous call
/// KRA might hold the number even though this attempt was refused, so it is kept.
pub(crate) fn gives_number_back(claim: &Claim, settlement: &Settlement) -> bool {
    !claim.maybe_sent
        && matches!(
            settlement,
            Settlement::Failed { .. } | Settlement::Quarantined { .. }
        )
}

/// How many numbers a plan gives back: the released one and its failed credit notes.
pub(crate) fn released_count(fates: &[Fate]) -> i64 {
    1 + i64::try_from(
        fates
            .iter()
            .filter(|f| matches!(f, Fate::Fail { .. }))
            .count(),
    )
    .unwrap_or(0)
}

/// Whether a key's last-used time should be written now. It is kept to the minute: writing
/// it on every request would add a commit to each one.
pub(crate) fn last_used_is_stale(last_used: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last_used.is_none_or(|at| now - at >= chrono::Duration::seconds(60))
}

/// A journal attempt number as both backends store it.
pub(crate) fn attempt_number(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

/// Money in the store's text form, and back.
pub(crate) fn money_text(money: ushuru_tax::Money) -> String {
    money.to_string()
}

pub(crate) fn quantity_from_text(text: &str) -> Result<ushuru_tax::Quantity> {
    ushuru_tax::Quantity::parse(text, ushuru_tax::Rounding::Exact)
        .map_err(|e| StoreError::Corrupt(format!("quantity {text:?} {e}")))
}

pub(crate) fn money_from_text(text: &str) -> Result<ushuru_tax::Money> {
    ushuru_tax::Money::parse(text, ushuru_tax::Rounding::Exact)
        .map_err(|e| StoreError::Corrupt(format!("amount {text:?} {e}")))
}

/// The sale status that goes with an outbox end state.
pub(crate) fn sale_status_of(outbox_state: &str) -> &'static str {
    match outbox_state {
        "FAILED" => "FAILED",
        _ => "RECONCILIATION_REQUIRED",
    }
}

pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is negative")))
}

pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| StoreError::Conflict(format!("{what} {value} is beyond the store's range")))
}
