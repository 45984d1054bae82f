//! The PostgreSQL backend: a connection pool shared by any number of processes. Invoice
//! numbers are allocated under the branch row's lock, and the branch's head outbox row is
//! claimed under `FOR UPDATE`, so replicas serialise per branch in the database itself.
//!
//! Which replica claims for a branch is decided by a session-level advisory lock per branch,
//! `(SIGNER_LOCKS, branch id)`, all of a process's branches held on one dedicated connection
//! outside the pool (50 branches pin one connection, not 50). PostgreSQL drops the locks the
//! moment that session ends, so a killed replica's branches are free for another at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::signer::Hold;
use crate::{
    AcceptedSale, AcceptedUnderKey, ApiKey, Behind, Branch, BranchId, Claim, CreditContext,
    CreditOutcome, CreditPlanner, DeviceRecord, ExchangeRecord, Fate, FindingKind,
    IdempotencyStart, IdempotentAccept, IdempotentRequest, InitialisedBranch, MIGRATIONS, NewSale,
    OutboxPayload, PayloadBuilder, PlaintextCmcKey, Receipt, Recorded, Result, SALE_SETTLED_SQL,
    SaleId, SaleLine, SaleRecord, SaleStatus, Scope, SealedColumns, SequenceFinding, Settlement,
    StoreError, Tenant, TenantId, attempt_number, build_payload, clamp_time, gives_number_back,
    idempotency_decision, last_used_is_stale, lease_until, money_from_text, money_text,
    plan_credit_note, plan_release, quantity_from_text, released_count, sale_status_of, to_i64,
    to_u64,
};
use ushuru_vault::SealedCmcKey;

/// The advisory-lock namespace (first key) of the branch signer locks ("USHR"); the second
/// key is the branch id. The migration lock uses the one-key form, which cannot collide.
const SIGNER_LOCKS: i32 = 0x5553_4852;

/// How long a query on the lock connection may take before the connection is taken as dead:
/// every relay of the process waits on it, so it must not hang on a broken network.
const LOCK_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// The serving connections' configuration: they act as [`SERVICE_ROLE`].
    config: Arc<tokio_postgres::Config>,
    /// The login's own configuration, for migrations (which need the tables' owner).
    login: Arc<tokio_postgres::Config>,
    signers: Arc<tokio::sync::Mutex<Signers>>,
    /// Where concurrent idempotent sales queue for phase 1, started with the first.
    accepts: Arc<std::sync::OnceLock<accept_batch::Queue>>,
    /// Where the relays' claims and receipts queue, started with the first.
    relays: Arc<std::sync::OnceLock<relay_batch::Queue>>,
}

/// The process's branch locks: the connection holding them, and which relay holds which.
#[derive(Default)]
struct Signers {
    session: Option<LockSession>,
    holds: HashMap<BranchId, Hold>,
}

/// How long the server's word that the lock session holds its locks is taken as current.
/// Every claim needs it; asking `pg_locks` on every claim was the most expensive statement
/// of a sale (it copies the server's whole lock table), so one look serves all branches
/// for this long. A lock lost in between is no different from one lost just after a look:
/// the successor finds the row leased, takes it over, and a second send of the same
/// invoice is answered as a duplicate and its receipt adopted (kra-protocol.md §6).
const LOCK_CHECK_FRESH: Duration = Duration::from_millis(100);

struct LockSession {
    client: tokio_postgres::Client,
    pid: i32,
    /// The branch locks the server last showed this session holding, and when.
    seen: Option<(std::time::Instant, std::collections::HashSet<i32>)>,
}

impl Signers {
    /// Forgets the session and every hold on it: closing the connection (dropping its
    /// client) makes PostgreSQL release whatever locks it may still hold.
    fn drop_session(&mut self, why: &str) {
        if self.session.take().is_some() && !self.holds.is_empty() {
            tracing::warn!(
                reason = why,
                branches = self.holds.len(),
                "branch locks lost: their relays stop claiming until they take them again"
            );
        }
        self.holds.clear();
    }

    /// A query on the lock connection that failed (`Some`) or did not answer in time
    /// (`None`): the session is given up, its locks with it, and the reason returned.
    fn lock_query_failed(&mut self, failure: Option<tokio_postgres::Error>) -> StoreError {
        match failure {
            Some(e) => {
                self.drop_session("a query on the lock connection failed");
                query_error(e)
            }
            None => {
                self.drop_session("the lock connection did not answer");
                StoreError::Database("the branch-lock connection did not answer within 5 s".into())
            }
        }
    }
}

fn database(error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(error.to_string())
}

/// A PostgreSQL error with the server's own words (its `Display` says only "db error").
fn query_error(error: tokio_postgres::Error) -> StoreError {
    match error.as_db_error() {
        Some(db) if db.code() == &SqlState::FOREIGN_KEY_VIOLATION => {
            StoreError::NotFound("branch or sale of this scope")
        }
        Some(db) => StoreError::Database(match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.code().code(), db.message()),
            None => format!("{}: {}", db.code().code(), db.message()),
        }),
        None => database(error),
    }
}

/// The constraint a unique violation broke, by its explicit name in the migration.
fn violated_constraint(error: &tokio_postgres::Error) -> Option<&str> {
    let db = error.as_db_error()?;
    (db.code() == &SqlState::UNIQUE_VIOLATION)
        .then(|| db.constraint())
        .flatten()
}

/// The role every pooled connection acts as (`SET ROLE` at connection start, whatever the
/// login): it owns nothing and cannot bypass row-level security (migration 0013).
pub const SERVICE_ROLE: &str = "ushuru_app";

/// The statement that sets a transaction's tenant and branch for row-level security,
/// effective to the end of the transaction only (`set_config(…, true)`). An empty branch
/// leaves every branch of the tenant visible.
const ENTER_SQL: &str =
    "SELECT set_config('ushuru.tenant_id', $1, true), set_config('ushuru.branch_id', $2, true)";

/// The values [`ENTER_SQL`] sets: the tenant, and the branch or nothing.
fn scope_settings(tenant: TenantId, branch: Option<BranchId>) -> [String; 2] {
    [
        tenant.0.to_string(),
        branch.map(|b| b.0.to_string()).unwrap_or_default(),
    ]
}

async fn enter_with(
    tx: &Transaction<'_>,
    sql: &str,
    tenant: TenantId,
    branch: Option<BranchId>,
) -> Result<()> {
    let [tenant, branch] = scope_settings(tenant, branch);
    tx.execute(
        &tx.prepare_cached(sql).await.map_err(query_error)?,
        &[&tenant, &branch],
    )
    .await
    .map_err(query_error)?;
    Ok(())
}

/// Enters the tenant for row-level security: its rows of every branch are visible.
async fn enter(tx: &Transaction<'_>, tenant: TenantId) -> Result<()> {
    enter_with(tx, ENTER_SQL, tenant, None).await
}

/// Enters one branch of a tenant: only that branch's rows (and the tenant's own row) are
/// visible. Everything a branch's client or relay does runs like this.
async fn enter_scope(tx: &Transaction<'_>, scope: Scope) -> Result<()> {
    enter_with(tx, ENTER_SQL, scope.tenant, Some(scope.branch)).await
}

/// [`enter`], with this transaction's commit not waiting for the WAL flush. Only for
/// writes whose loss in a database crash is harmless: the Idempotency-Key bookkeeping
/// around a sale. A later synchronous commit (the sale's own, phase 1) flushes the WAL up
/// to it anyway, and a lost answer record falls back to the sale it points at.
async fn enter_relaxed(tx: &Transaction<'_>, tenant: TenantId) -> Result<()> {
    enter_with(
        tx,
        "SELECT set_config('ushuru.tenant_id', $1, true), set_config('ushuru.branch_id', $2, true),
                set_config('synchronous_commit', 'off', true)",
        tenant,
        None,
    )
    .await
}

impl PostgresStore {
    pub async fn connect(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Url(format!("{url}: {e}")))?;
        // Fail now, with the reason, rather than on the first query. This connection is the
        // login's own: before the first migration the service role may not exist yet.
        let (client, connection) = config.connect(NoTls).await.map_err(|e| {
            StoreError::Database(format!("cannot connect to PostgreSQL: {}", query_error(e)))
        })?;
        let connection = tokio::spawn(connection);
        drop(client);
        // Ends once the client is gone; how it ended does not matter.
        let _ = connection.await;
        let mut serving = config.clone();
        let options = match config.get_options() {
            Some(given) => format!("{given} -c role={SERVICE_ROLE}"),
            None => format!("-c role={SERVICE_ROLE}"),
        };
        serving.options(&options);
        let manager = Manager::from_config(
            serving.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(32)
            .build()
            .map_err(database)?;
        Ok(PostgresStore {
            pool,
            config: Arc::new(serving),
            login: Arc::new(config),
            signers: Arc::default(),
            accepts: Arc::default(),
            relays: Arc::default(),
        })
    }

    /// Refuses to serve when the pool's connections do not act as [`SERVICE_ROLE`] (a
    /// connection pooler that drops the `-c role=…` startup option would leave them acting
    /// as the login), and warns when the login could leave that role: row-level security
    /// then guards against Ushuru's own mistakes, not against a process someone took over.
    async fn check_serving_role(&self) -> Result<()> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT current_user::text, session_user::text,
                        r.rolsuper OR r.rolbypassrls
                          OR EXISTS (SELECT 1 FROM pg_class c
                                     WHERE c.relowner = r.oid AND c.relname = 'tenants')
                 FROM pg_roles r WHERE r.rolname = session_user",
                &[],
            )
            .await
            .map_err(query_error)?;
        let (acting, login, powerful): (String, String, bool) =
            (row.get(0), row.get(1), row.get(2));
        if acting != SERVICE_ROLE {
            return Err(StoreError::Database(format!(
                "the serving connections act as {acting}, not {SERVICE_ROLE}: something between \
                 Ushuru and PostgreSQL (a connection pooler?) dropped the startup option \
                 `-c role={SERVICE_ROLE}`, and row-level security would not apply"
            )));
        }
        if powerful {
            tracing::warn!(
                login,
                "serving as {SERVICE_ROLE} through a login that owns the tables or bypasses \
                 row-level security: it guards against Ushuru's own mistakes, but a process \
                 someone took over could leave the role. Serve with a login that is only a \
                 member of {SERVICE_ROLE} (docs/architecture.md, \"Running it with a separate owner\")"
            );
        }
        Ok(())
    }

    /// Opens the lock connection now, so that serving fails at start if it cannot; and
    /// checks that the serving connections act as [`SERVICE_ROLE`].
    pub async fn lock_for_serving(&self) -> Result<()> {
        self.check_serving_role().await?;
        let mut signers = self.signers.lock().await;
        if signers
            .session
            .as_ref()
            .is_none_or(|s| s.client.is_closed())
        {
            signers.drop_session("the lock connection closed");
            signers.session = Some(self.lock_session().await?);
        }
        Ok(())
    }

    /// A connection of its own (not from the pool, whose connections are recycled), whose
    /// session holds this process's branch locks for as long as it lives.
    async fn lock_session(&self) -> Result<LockSession> {
        let connected = tokio::time::timeout(LOCK_QUERY_TIMEOUT, async {
            let (client, connection) = self.config.connect(NoTls).await.map_err(query_error)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "the connection holding the branch locks failed");
                }
            });
            let pid: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .map_err(query_error)?
                .get(0);
            Ok::<_, StoreError>(LockSession {
                client,
                pid,
                seen: None,
            })
        })
        .await;
        connected.unwrap_or_else(|_| {
            Err(StoreError::Database(
                "the branch-lock connection was not open within 5 s".into(),
            ))
        })
    }

    /// `owner`'s hold of the branch: confirmed if it has it, taken if the branch is free in
    /// this process and `pg_try_advisory_lock` gets it, else `None` (another relay or
    /// replica signs for the branch: stand by).
    async fn hold(&self, scope: Scope, owner: &str) -> Result<Option<Hold>> {
        let key = lock_key(scope)?;
        let mut signers = self.signers.lock().await;
        if signers
            .session
            .as_ref()
            .is_some_and(|s| s.client.is_closed())
        {
            signers.drop_session("the lock connection closed");
        }
        if let Some(hold) = signers.holds.get(&scope.branch) {
            return Ok((hold.owner == owner).then(|| hold.clone()));
        }
        let session = match signers.session.take() {
            Some(session) => session,
            None => self.lock_session().await?,
        };
        let locked = tokio::time::timeout(
            LOCK_QUERY_TIMEOUT,
            session.client.query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&SIGNER_LOCKS, &key],
            ),
        )
        .await;
        let pid = session.pid;
        signers.session = Some(session);
        match locked {
            Ok(Ok(row)) if row.get::<_, bool>(0) => {
                // The server just said so: the last look at its locks is updated, not
                // discarded.
                if let Some((_, held)) = signers.session.as_mut().and_then(|s| s.seen.as_mut()) {
                    held.insert(key);
                }
                let hold = Hold::new(owner, Some(pid));
                signers.holds.insert(scope.branch, hold.clone());
                tracing::info!(branch = scope.branch.0, owner, "now signing for the branch");
                Ok(Some(hold))
            }
            Ok(Ok(_)) => Ok(None),
            Ok(Err(e)) => Err(signers.lock_query_failed(Some(e))),
            Err(_) => Err(signers.lock_query_failed(None)),
        }
    }

    /// Whether the hold's lock session still holds the branch's advisory lock as the server
    /// sees it (within [`LOCK_CHECK_FRESH`]): one look at `pg_locks`, on the lock
    /// connection, for all of this process's branches. When it does not, that session is
    /// gone (or going) and is given up here, with every hold on it.
    pub(super) async fn still_held(&self, hold: &Hold, scope: Scope) -> Result<bool> {
        let key = lock_key(scope)?;
        let mut signers = self.signers.lock().await;
        // Not this hold's session (it was given up and replaced): nothing more to give up.
        let Some(session) = signers
            .session
            .as_mut()
            .filter(|s| Some(s.pid) == hold.session_pid)
        else {
            return Ok(false);
        };
        let held = if session.client.is_closed() {
            false
        } else if let Some((at, seen)) = &session.seen
            && at.elapsed() < LOCK_CHECK_FRESH
        {
            seen.contains(&key)
        } else {
            let looked = tokio::time::timeout(
                LOCK_QUERY_TIMEOUT,
                session.client.query(
                    "SELECT objid::int8 FROM pg_locks
                     WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
                       AND classid = $1::int4::oid AND objsubid = 2",
                    &[&SIGNER_LOCKS],
                ),
            )
            .await;
            match looked {
                Ok(Ok(rows)) => {
                    let seen: std::collections::HashSet<i32> = rows
                        .iter()
                        .filter_map(|row| i32::try_from(row.get::<_, i64>(0)).ok())
                        .collect();
                    let held = seen.contains(&key);
                    session.seen = Some((std::time::Instant::now(), seen));
                    held
                }
                Ok(Err(e)) => return Err(signers.lock_query_failed(Some(e))),
                Err(_) => return Err(signers.lock_query_failed(None)),
            }
        };
        if !held {
            signers.drop_session("the server no longer shows the lock connection's locks");
        }
        Ok(held)
    }

    pub async fn let_go_branch(&self, scope: Scope, owner: &str) -> Result<()> {
        let key = lock_key(scope)?;
        let mut signers = self.signers.lock().await;
        if signers
            .holds
            .get(&scope.branch)
            .is_none_or(|hold| hold.owner != owner)
        {
            return Ok(());
        }
        signers.holds.remove(&scope.branch);
        if let Some((_, held)) = signers.session.as_mut().and_then(|s| s.seen.as_mut()) {
            held.remove(&key);
        }
        let unlocked = match &signers.session {
            Some(session) => {
                tokio::time::timeout(
                    LOCK_QUERY_TIMEOUT,
                    session
                        .client
                        .execute("SELECT pg_advisory_unlock($1, $2)", &[&SIGNER_LOCKS, &key]),
                )
                .await
            }
            None => return Ok(()),
        };
        // A lock that cannot be given back is given back by closing its session.
        if !matches!(unlocked, Ok(Ok(_))) {
            signers.drop_session("the lock could not be released");
        }
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(database)
    }

    /// One statement in the tenant's transaction (one of its branches, or all), sent in one
    /// round trip with the transaction around it.
    pub(crate) async fn scoped_query(
        &self,
        tenant: TenantId,
        branch: Option<BranchId>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(query_error)?;
        one_round_trip_in(&client, tenant, branch, async {
            client.query(&statement, params).await.map_err(query_error)
        })
        .await
    }

    /// [`Self::scoped_query`] for a statement whose row count is the answer.
    pub(crate) async fn scoped_execute(
        &self,
        tenant: TenantId,
        branch: Option<BranchId>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(query_error)?;
        one_round_trip_in(&client, tenant, branch, async {
            client
                .execute(&statement, params)
                .await
                .map_err(query_error)
        })
        .await
    }

    pub async fn migrate(&self) -> Result<Vec<&'static str>> {
        // A service login (a member of the service role that owns nothing) may start with
        // nothing to migrate; only pending migrations need the owner.
        if self.pending_migrations().await?.is_empty() {
            return Ok(Vec::new());
        }
        let (mut client, connection) = self.login.connect(NoTls).await.map_err(query_error)?;
        let connection = tokio::spawn(connection);
        let applied = migrate_on(&mut client).await;
        drop(client);
        let _ = connection.await;
        applied.map_err(|e| match e {
            StoreError::Database(why) if why.starts_with("42501") => StoreError::Database(format!(
                "{why}. Migrations need the owner of Ushuru's tables: run `ushuru migrate \
                 --database-url <the owner's URL>` once, then serve with this one"
            )),
            other => other,
        })
    }

    /// The migrations this database has not applied yet (none: nothing needs the owner).
    async fn pending_migrations(&self) -> Result<Vec<i64>> {
        let (client, connection) = self.login.connect(NoTls).await.map_err(query_error)?;
        let connection = tokio::spawn(connection);
        let applied = async {
            let exists: bool = client
                .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
                .await
                .map_err(query_error)?
                .get(0);
            if !exists {
                return Ok(Vec::new());
            }
            let rows = client
                .query("SELECT version FROM schema_migrations", &[])
                .await
                .map_err(query_error)?;
            Ok::<_, StoreError>(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
        }
        .await;
        drop(client);
        let _ = connection.await;
        let applied = applied?;
        Ok(MIGRATIONS
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect())
    }
}

/// Applies the pending migrations in one transaction, on the owner's connection.
async fn migrate_on(client: &mut tokio_postgres::Client) -> Result<Vec<&'static str>> {
    let tx = client.transaction().await.map_err(query_error)?;
    // Replicas starting together migrate one at a time.
    tx.execute("SELECT pg_advisory_xact_lock(7020301)", &[])
        .await
        .map_err(query_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    BIGINT CONSTRAINT schema_migrations_pk PRIMARY KEY,
                name       TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
    )
    .await
    .map_err(query_error)?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        let done = tx
            .query_opt(
                &tx.prepare("SELECT version FROM schema_migrations WHERE version = $1")
                    .await
                    .map_err(query_error)?,
                &[&migration.version],
            )
            .await
            .map_err(query_error)?;
        if done.is_none() {
            tx.batch_execute(migration.postgres)
                .await
                .map_err(query_error)?;
            tx.execute(
                &tx.prepare("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
                    .await
                    .map_err(query_error)?,
                &[&migration.version, &migration.name],
            )
            .await
            .map_err(query_error)?;
            applied.push(migration.name);
        }
    }
    tx.commit().await.map_err(query_error)?;
    Ok(applied)
}

impl PostgresStore {
    pub async fn create_tenant(&self, tin: &str, name: &str) -> Result<Tenant> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached("SELECT ushuru_create_tenant($1, $2)")
                    .await
                    .map_err(query_error)?,
                &[&tin, &name],
            )
            .await
            .map_err(|e| match violated_constraint(&e) {
                Some("tenants_tin_unique") => {
                    StoreError::Conflict(format!("a tenant with PIN {tin} exists"))
                }
                _ => query_error(e),
            })?;
        Ok(Tenant {
            id: TenantId(row.get(0)),
            tin: tin.to_owned(),
            name: name.to_owned(),
        })
    }

    pub async fn create_branch(&self, tenant: TenantId, bhf_id: &str) -> Result<Branch> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter(&tx, tenant).await?;
        let row = tx
            .query_one(
                &tx.prepare_cached(
                    "INSERT INTO branches (tenant_id, bhf_id) VALUES ($1, $2) RETURNING id",
                )
                .await
                .map_err(query_error)?,
                &[&tenant.0, &bhf_id],
            )
            .await
            .map_err(|e| {
                match (
                    violated_constraint(&e),
                    e.as_db_error().map(|d| d.code().clone()),
                ) {
                    (Some("branches_tenant_bhf_unique"), _) => {
                        StoreError::Conflict(format!("branch {bhf_id} exists for this tenant"))
                    }
                    (_, Some(SqlState::FOREIGN_KEY_VIOLATION)) => StoreError::NotFound("tenant"),
                    _ => database(e),
                }
            })?;
        tx.commit().await.map_err(query_error)?;
        Ok(Branch {
            id: BranchId(row.get(0)),
            tenant,
            bhf_id: bhf_id.to_owned(),
            last_invc_no: 0,
        })
    }

    pub async fn branch(&self, scope: Scope) -> Result<Option<Branch>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let row = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT bhf_id, last_invc_no FROM branches WHERE id = $1 AND tenant_id = $2",
                )
                .await
                .map_err(query_error)?,
                &[&scope.branch.0, &scope.tenant.0],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        row.map(|r| {
            Ok(Branch {
                id: scope.branch,
                tenant: scope.tenant,
                bhf_id: r.get(0),
                last_invc_no: to_u64(r.get(1), "last_invc_no")?,
            })
        })
        .transpose()
    }

    pub async fn accept_sale(
        &self,
        scope: Scope,
        sale: NewSale,
        build: PayloadBuilder,
    ) -> Result<AcceptedSale> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let invc_no = next_invc_no(&tx, scope).await?;
        let payload = build_payload(build, invc_no)?;
        let sale_id = insert_sale(&tx, scope, invc_no, &sale, &payload, "S").await?;
        tx.commit().await.map_err(query_error)?;
        Ok(AcceptedSale {
            sale: SaleId(sale_id),
            invc_no,
        })
    }

    pub async fn accept_credit_note<R: Send + 'static>(
        &self,
        scope: Scope,
        original: SaleId,
        plan: CreditPlanner<R>,
    ) -> Result<CreditOutcome<R>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        // The branch row's lock first: notes against one sale, from any replica, are
        // decided one after the other, each seeing what the previous one reversed.
        let invc_no = next_invc_no(&tx, scope).await?;
        let Some(original_sale) = read_sale(&tx, scope, original)
            .await?
            .filter(|s| s.rcpt_ty_cd == "S")
        else {
            return Ok(CreditOutcome::NoSuchSale);
        };
        let original_payload: String = tx.query_one(
&tx.prepare_cached("SELECT payload FROM outbox WHERE sale_id = $1 AND tenant_id = $2 AND branch_id = $3").await.map_err(query_error)?,
                &[&original.0, &scope.tenant.0, &scope.branch.0],
            )
            .await
            .map_err(query_error)?
            .get(0);
        let note_ids: Vec<i64> = tx
            .query(
                &tx.prepare_cached(
                    "SELECT c.sale_id FROM credit_notes c JOIN sales s ON s.id = c.sale_id
                 WHERE c.original_sale_id = $1 AND c.tenant_id = $2 AND c.branch_id = $3
                   AND s.status <> 'FAILED'
                 ORDER BY c.sale_id",
                )
                .await
                .map_err(query_error)?,
                &[&original.0, &scope.tenant.0, &scope.branch.0],
            )
            .await
            .map_err(query_error)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut credit_notes = Vec::new();
        let mut reversed_lines = Vec::new();
        for id in note_ids {
            if let Some(note) = read_sale(&tx, scope, SaleId(id)).await? {
                credit_notes.push(note);
            }
            reversed_lines.extend(read_lines(&tx, scope, SaleId(id)).await?);
        }
        let context = CreditContext {
            original_lines: read_lines(&tx, scope, original).await?,
            original: original_sale,
            original_payload,
            credit_notes,
            reversed_lines,
        };
        let note = match plan_credit_note(plan, &context, invc_no)? {
            Ok(note) => note,
            // Dropping the transaction rolls the number back: a refusal uses none.
            Err(refusal) => return Ok(CreditOutcome::Refused(refusal)),
        };
        let sale_id = insert_sale(&tx, scope, invc_no, &note.sale, &note.payload, "R").await?;
        tx.execute(
&tx.prepare_cached("INSERT INTO credit_notes (sale_id, tenant_id, branch_id, original_sale_id, rfd_rsn_cd, reason)
             VALUES ($1, $2, $3, $4, $5, $6)").await.map_err(query_error)?,
            &[&sale_id, &scope.tenant.0, &scope.branch.0, &original.0, &note.rfd_rsn_cd, &note.reason],
        )
        .await
        .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        Ok(CreditOutcome::Accepted(AcceptedSale {
            sale: SaleId(sale_id),
            invc_no,
        }))
    }

    pub async fn claim_next(
        &self,
        scope: Scope,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Claim>> {
        let Some(hold) = self.hold(scope, owner).await? else {
            return Ok(None); // another relay or replica signs for this branch
        };
        if !self.still_held(&hold, scope).await? {
            return Ok(None);
        }
        let params = ClaimParams::new(scope, &hold, lease, now);
        self.relays
            .get_or_init(|| relay_batch::start(self.pool.clone()))
            .claim(scope, params)
            .await
    }

    pub async fn record_receipt(
        &self,
        claim: &Claim,
        receipt: &Receipt,
        exchange: Option<&ExchangeRecord>,
        now: DateTime<Utc>,
        next: Option<(&str, Duration)>,
    ) -> Result<Recorded> {
        let scope = claim.scope;
        // The next claim's hold, known before the transaction (it may open the lock
        // connection).
        let hold = match next {
            Some((owner, _)) => match self.hold(scope, owner).await? {
                Some(hold) if self.still_held(&hold, scope).await? => Some(hold),
                _ => None,
            },
            None => None,
        };
        let record = RecordParams::new(claim, receipt, exchange, now)?;
        let next = match (&hold, next) {
            (Some(hold), Some((_, lease))) => Some(ClaimParams::new(scope, hold, lease, now)),
            _ => None,
        };
        self.relays
            .get_or_init(|| relay_batch::start(self.pool.clone()))
            .record(scope, record, next)
            .await
    }

    /// How the relays' shared transactions fared since this store started.
    pub fn shared_relay_counts(&self) -> SharedRelayCounts {
        self.relays
            .get()
            .map(relay_batch::Queue::counts)
            .unwrap_or_default()
    }

    pub async fn latest_sale_id_by_reference(
        &self,
        scope: Scope,
        reference: &str,
    ) -> Result<Option<SaleId>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let row = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT id FROM sales
                 WHERE tenant_id = $1 AND branch_id = $2 AND client_reference = $3
                 ORDER BY id DESC LIMIT 1",
                )
                .await
                .map_err(query_error)?,
                &[&scope.tenant.0, &scope.branch.0, &reference],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        Ok(row.map(|r| SaleId(r.get(0))))
    }

    pub async fn credit_note_original(&self, scope: Scope, note: SaleId) -> Result<Option<SaleId>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let row = tx.query_opt(
&tx.prepare_cached("SELECT original_sale_id FROM credit_notes WHERE sale_id = $1 AND tenant_id = $2 AND branch_id = $3").await.map_err(query_error)?,
                &[&note.0, &scope.tenant.0, &scope.branch.0],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        Ok(row.map(|r| SaleId(r.get(0))))
    }

    pub async fn sale_lines(&self, scope: Scope, sale: SaleId) -> Result<Vec<SaleLine>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let lines = read_lines(&tx, scope, sale).await?;
        tx.commit().await.map_err(query_error)?;
        Ok(lines)
    }

    pub async fn sale(&self, scope: Scope, id: SaleId) -> Result<Option<SaleRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let sale = read_sale(&tx, scope, id).await?;
        tx.commit().await.map_err(query_error)?;
        Ok(sale)
    }

    pub async fn release(
        &self,
        claim: &Claim,
        retry_at: DateTime<Utc>,
        maybe_sent: bool,
        status: SaleStatus,
    ) -> Result<()> {
        let scope = claim.scope;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let released = tx.execute(
&tx.prepare_cached("UPDATE outbox SET lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = $1, maybe_sent = $2
                 WHERE id = $3 AND tenant_id = $4 AND branch_id = $5 AND state = 'PENDING' AND lease_owner = $6").await.map_err(query_error)?,
                &[&clamp_time(retry_at), &maybe_sent, &claim.outbox_id, &scope.tenant.0, &scope.branch.0, &claim.owner],
            )
            .await
            .map_err(query_error)?;
        if released == 0 {
            return Err(StoreError::NotFound("claimed outbox row"));
        }
        tx.execute(
            &tx.prepare_cached(
                "UPDATE sales SET status = $1 WHERE id = $2 AND tenant_id = $3 AND branch_id = $4",
            )
            .await
            .map_err(query_error)?,
            &[
                &status.as_str(),
                &claim.sale.0,
                &scope.tenant.0,
                &scope.branch.0,
            ],
        )
        .await
        .map_err(query_error)?;
        tx.commit().await.map_err(query_error)
    }

    pub async fn settle(&self, claim: &Claim, settlement: &Settlement) -> Result<()> {
        let scope = claim.scope;
        let (state, code, message) = match settlement {
            Settlement::Failed { code, message } => {
                ("FAILED", Some(code.as_str()), message.as_str())
            }
            Settlement::Quarantined { message } => {
                ("QUARANTINED", Some("PAYLOAD_MISMATCH"), message.as_str())
            }
            Settlement::Unresolved { message } => {
                ("RECONCILIATION_REQUIRED", None, message.as_str())
            }
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let give_back = gives_number_back(claim, settlement);
        if give_back {
            // The branch row first, as phase 1 takes it: no sale is numbered meanwhile.
            tx.execute(
                &tx.prepare_cached(
                    "SELECT last_invc_no FROM branches WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
                )
                .await
                .map_err(query_error)?,
                &[&scope.branch.0, &scope.tenant.0],
            )
            .await
            .map_err(query_error)?;
        }
        let settled = tx.execute(
&tx.prepare_cached("UPDATE outbox SET state = $1, lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = $2 AND tenant_id = $3 AND branch_id = $4 AND state = 'PENDING' AND lease_owner = $5").await.map_err(query_error)?,
                &[&state, &claim.outbox_id, &scope.tenant.0, &scope.branch.0, &claim.owner],
            )
            .await
            .map_err(query_error)?;
        if settled == 0 {
            return Err(StoreError::NotFound("pending outbox row"));
        }
        tx.execute(
&tx.prepare_cached("UPDATE sales SET status = $1, failure_code = $2, failure_message = $3 WHERE id = $4 AND tenant_id = $5 AND branch_id = $6").await.map_err(query_error)?,
                        &[&sale_status_of(state), &code, &message, &claim.sale.0, &scope.tenant.0, &scope.branch.0],
        )
        .await
        .map_err(query_error)?;
        if give_back {
            release_number(&tx, scope, claim.sale.0, claim.invc_no).await?;
        }
        tx.commit().await.map_err(query_error)
    }

    pub async fn record_exchange(
        &self,
        scope: Scope,
        exchange: &ExchangeRecord,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.insert_exchange(scope, exchange, None, now).await
    }

    pub async fn exchanges(&self, scope: Scope, sale: SaleId) -> Result<Vec<ExchangeRecord>> {
        self.read_exchanges(scope, "sale_id", sale.0, Some(sale))
            .await
    }

    /// Keeps a call in the journal, linked to its sale (if any) or its operation.
    pub(crate) async fn insert_exchange(
        &self,
        scope: Scope,
        exchange: &ExchangeRecord,
        operation: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        insert_exchange_in(&tx, scope, exchange, operation, now).await?;
        tx.commit().await.map_err(query_error)
    }

    /// The calls of one sale or operation (`column` is `sale_id` or `operation_id`),
    /// oldest first.
    pub(crate) async fn read_exchanges(
        &self,
        scope: Scope,
        column: &str,
        id: i64,
        sale: Option<SaleId>,
    ) -> Result<Vec<ExchangeRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT endpoint, attempt, request_body, response_body, http_status, outcome, elapsed_ms
                     FROM exchanges WHERE tenant_id = $1 AND branch_id = $2 AND {column} = $3 ORDER BY id"
                ),
                &[&scope.tenant.0, &scope.branch.0, &id],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        Ok(rows
            .iter()
            .map(|r| ExchangeRecord {
                sale,
                endpoint: r.get(0),
                attempt: u32::try_from(r.get::<_, i32>(1)).unwrap_or(0),
                request_body: r.get(2),
                response_body: r.get(3),
                http_status: r
                    .get::<_, Option<i32>>(4)
                    .and_then(|s| u16::try_from(s).ok()),
                outcome: r.get(5),
                elapsed_ms: u64::try_from(r.get::<_, i64>(6)).unwrap_or(0),
            })
            .collect())
    }

    pub async fn record_finding(
        &self,
        scope: Scope,
        finding: &SequenceFinding,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let expected = finding
            .expected
            .map(|e| to_i64(e, "expected"))
            .transpose()?;
        tx.execute(
&tx.prepare_cached("INSERT INTO sequence_findings (tenant_id, branch_id, sdc_id, kind, expected, found, sale_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)").await.map_err(query_error)?,
            &[
                &scope.tenant.0,
                &scope.branch.0,
                &finding.sdc_id,
                &finding.kind.as_str(),
                &expected,
                &to_i64(finding.found, "found")?,
                &finding.sale.map(|s| s.0),
                &now,
            ],
        )
        .await
        .map_err(query_error)?;
        tx.commit().await.map_err(query_error)
    }

    pub async fn findings(&self, scope: Scope) -> Result<Vec<SequenceFinding>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let rows = tx
            .query(
                &tx.prepare_cached(
                    "SELECT sdc_id, kind, expected, found, sale_id FROM sequence_findings
                 WHERE tenant_id = $1 AND branch_id = $2 ORDER BY id",
                )
                .await
                .map_err(query_error)?,
                &[&scope.tenant.0, &scope.branch.0],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        rows.iter()
            .map(|r| {
                let kind: String = r.get(1);
                Ok(SequenceFinding {
                    sdc_id: r.get(0),
                    kind: FindingKind::parse(&kind)
                        .ok_or_else(|| StoreError::Corrupt(format!("finding kind {kind:?}")))?,
                    expected: r
                        .get::<_, Option<i64>>(2)
                        .map(|e| to_u64(e, "expected"))
                        .transpose()?,
                    found: to_u64(r.get(3), "found")?,
                    sale: r.get::<_, Option<i64>>(4).map(SaleId),
                })
            })
            .collect()
    }
}

impl PostgresStore {
    pub async fn insert_api_key(
        &self,
        scope: Scope,
        name: &str,
        prefix: &str,
        sha256: &str,
    ) -> Result<ApiKey> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let id: i64 = tx.query_one(
&tx.prepare_cached("INSERT INTO api_keys (tenant_id, branch_id, prefix, key_sha256, name) VALUES ($1, $2, $3, $4, $5) RETURNING id").await.map_err(query_error)?,
                &[&scope.tenant.0, &scope.branch.0, &prefix, &sha256, &name],
            )
            .await
            .map_err(query_error)?
            .get(0);
        tx.commit().await.map_err(query_error)?;
        Ok(ApiKey {
            id,
            scope,
            prefix: prefix.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Looks a key up by its hash, across tenants: this is how a request finds its tenant.
    /// Row-level security hides every tenant's keys until then, so the lookup is the narrow
    /// definer function `ushuru_api_key_by_hash` (migration 0013).
    pub async fn authenticate(&self, sha256: &str, now: DateTime<Utc>) -> Result<Option<ApiKey>> {
        let row = {
            let client = self.client().await?;
            client
                .query_opt(
                    &client
                        .prepare_cached(
                            "SELECT id, tenant_id, branch_id, prefix, name, last_used_at
                             FROM ushuru_api_key_by_hash($1)",
                        )
                        .await
                        .map_err(query_error)?,
                    &[&sha256],
                )
                .await
                .map_err(query_error)?
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let key = ApiKey {
            id: row.get(0),
            scope: Scope {
                tenant: TenantId(row.get(1)),
                branch: BranchId(row.get(2)),
            },
            prefix: row.get(3),
            name: row.get(4),
        };
        if last_used_is_stale(row.get(5), now) {
            self.scoped_execute(
                key.scope.tenant,
                Some(key.scope.branch),
                "UPDATE api_keys SET last_used_at = $1 WHERE id = $2",
                &[&clamp_time(now), &key.id],
            )
            .await?;
        }
        Ok(Some(key))
    }

    pub async fn revoke_api_key(&self, scope: Scope, id: i64, now: DateTime<Utc>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let revoked = tx.execute(
&tx.prepare_cached("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND tenant_id = $3 AND branch_id = $4 AND revoked_at IS NULL").await.map_err(query_error)?,
                &[&now, &id, &scope.tenant.0, &scope.branch.0],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        if revoked == 0 {
            Err(StoreError::NotFound("live API key"))
        } else {
            Ok(())
        }
    }

    pub async fn begin_idempotent(
        &self,
        tenant: TenantId,
        key: &str,
        request_sha256: &str,
        now: DateTime<Utc>,
        in_flight_for: Duration,
        keep: Duration,
    ) -> Result<IdempotencyStart> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_relaxed(&tx, tenant).await?;
        let start = begin_in(&tx, tenant, key, request_sha256, now, in_flight_for, keep).await?;
        tx.commit().await.map_err(query_error)?;
        Ok(start)
    }

    /// Phase 1 of an idempotent sale. Concurrent calls are accepted together, several
    /// sales to one transaction ([`accept_batch`]); the accepted sale, its number and its
    /// key's record are exactly what one transaction per sale would write.
    pub async fn accept_sale_once(
        &self,
        scope: Scope,
        request: IdempotentRequest,
        sale: NewSale,
        build: PayloadBuilder,
    ) -> Result<IdempotentAccept> {
        self.accepts
            .get_or_init(|| accept_batch::start(self.pool.clone()))
            .accept(scope, request, sale, build)
            .await
    }
}

/// [`PostgresStore::accept_sale_once`] in a transaction of its own.
async fn accept_one(
    pool: &Pool,
    scope: Scope,
    request: IdempotentRequest,
    mut sale: NewSale,
    build: PayloadBuilder,
) -> Result<IdempotentAccept> {
    let mut client = pool.get().await.map_err(database)?;
    let tx = client.transaction().await.map_err(query_error)?;
    // The whole tenant: an Idempotency-Key is the tenant's, and its earlier use may have
    // accepted a sale of another of the tenant's branches (`begin_in` must see it).
    enter(&tx, scope.tenant).await?;
    // The usual case in one statement: a key not used before, recorded, and the
    // branch's next number taken.
    let expires = lease_until(request.now, request.keep);
    let first_use = tx
            .query_one(
                &tx.prepare_cached(
                    "WITH recorded AS (
                        INSERT INTO idempotency_keys (tenant_id, key, request_sha256, created_at, expires_at)
                        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, key) DO NOTHING RETURNING 1),
                     numbered AS (
                        UPDATE branches SET last_invc_no = last_invc_no + 1
                        WHERE id = $6 AND tenant_id = $1 AND EXISTS (SELECT 1 FROM recorded)
                        RETURNING last_invc_no)
                     SELECT EXISTS (SELECT 1 FROM recorded), (SELECT last_invc_no FROM numbered)",
                )
                .await
                .map_err(query_error)?,
                &[
                    &scope.tenant.0,
                    &request.key,
                    &request.request_sha256,
                    &request.now,
                    &expires,
                    &scope.branch.0,
                ],
            )
            .await
            .map_err(query_error)?;
    let invc_no = match (
        first_use.get::<_, bool>(0),
        first_use.get::<_, Option<i64>>(1),
    ) {
        (true, Some(number)) => to_u64(number, "invc_no")?,
        (true, None) => return Err(StoreError::NotFound("branch")),
        // Used before: the key's earlier use decides, or (expired, or its first request
        // died before accepting anything) the request runs again.
        (false, _) => {
            let start = begin_in(
                &tx,
                scope.tenant,
                &request.key,
                &request.request_sha256,
                request.now,
                request.in_flight_for,
                request.keep,
            )
            .await?;
            if start != IdempotencyStart::Started {
                tx.commit().await.map_err(query_error)?;
                return Ok(IdempotentAccept::Decided(start));
            }
            next_invc_no(&tx, scope).await?
        }
    };
    sale.idempotency_key = Some(request.key);
    let payload = build_payload(build, invc_no)?;
    let sale_id = insert_sale(&tx, scope, invc_no, &sale, &payload, "S").await?;
    tx.commit().await.map_err(query_error)?;
    Ok(IdempotentAccept::Accepted(AcceptedSale {
        sale: SaleId(sale_id),
        invc_no,
    }))
}

impl PostgresStore {
    pub async fn finish_idempotent(
        &self,
        tenant: TenantId,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_relaxed(&tx, tenant).await?;
        let finished = tx
            .execute(
                &tx.prepare_cached(
                    "UPDATE idempotency_keys SET response_status = $1, response_body = $2
                 WHERE tenant_id = $3 AND key = $4 AND response_status IS NULL",
                )
                .await
                .map_err(query_error)?,
                &[&i32::from(status), &body, &tenant.0, &key],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        if finished == 0 {
            Err(StoreError::NotFound("running idempotent request"))
        } else {
            Ok(())
        }
    }

    pub async fn abandon_idempotent(&self, tenant: TenantId, key: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter(&tx, tenant).await?;
        tx.execute(
&tx.prepare_cached("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND response_status IS NULL").await.map_err(query_error)?, &[&tenant.0, &key])
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)
    }

    pub async fn purge_idempotency(&self, now: DateTime<Utc>) -> Result<u64> {
        let client = self.client().await?;
        let purged: i64 = client
            .query_one(
                &client
                    .prepare_cached("SELECT ushuru_purge_idempotency($1)")
                    .await
                    .map_err(query_error)?,
                &[&now],
            )
            .await
            .map_err(query_error)?
            .get(0);
        to_u64(purged, "purged records")
    }

    pub async fn analyze_new_tables(&self, min_rows: u64) -> Result<Vec<String>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached("SELECT ushuru_analyze_new_tables($1)")
                    .await
                    .map_err(query_error)?,
                &[&to_i64(min_rows, "min_rows")?],
            )
            .await
            .map_err(query_error)?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

impl PostgresStore {
    pub async fn item_registered(&self, scope: Scope, item_cd: &str) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let found = tx.query_opt(
&tx.prepare_cached("SELECT 1 FROM registered_items WHERE tenant_id = $1 AND branch_id = $2 AND item_cd = $3").await.map_err(query_error)?,
                &[&scope.tenant.0, &scope.branch.0, &item_cd],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        Ok(found.is_some())
    }

    pub async fn mark_item_registered(
        &self,
        scope: Scope,
        item_cd: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        tx.execute(
&tx.prepare_cached("INSERT INTO registered_items (tenant_id, branch_id, item_cd, registered_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (branch_id, item_cd) DO NOTHING").await.map_err(query_error)?,
            &[&scope.tenant.0, &scope.branch.0, &item_cd, &now],
        )
        .await
        .map_err(query_error)?;
        tx.commit().await.map_err(query_error)
    }
}

impl PostgresStore {
    pub async fn tenant_by_tin(&self, tin: &str) -> Result<Option<Tenant>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT id, name FROM ushuru_tenant_by_tin($1)")
                    .await
                    .map_err(query_error)?,
                &[&tin],
            )
            .await
            .map_err(query_error)?;
        Ok(row.map(|r| Tenant {
            id: TenantId(r.get(0)),
            tin: tin.to_owned(),
            name: r.get(1),
        }))
    }

    pub async fn branch_by_id(&self, tenant: TenantId, bhf_id: &str) -> Result<Option<Branch>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter(&tx, tenant).await?;
        let row = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT id, last_invc_no FROM branches WHERE tenant_id = $1 AND bhf_id = $2",
                )
                .await
                .map_err(query_error)?,
                &[&tenant.0, &bhf_id],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        row.map(|r| {
            Ok(Branch {
                id: BranchId(r.get(0)),
                tenant,
                bhf_id: bhf_id.to_owned(),
                last_invc_no: to_u64(r.get(1), "last_invc_no")?,
            })
        })
        .transpose()
    }

    pub async fn save_device(&self, scope: Scope, device: &DeviceRecord) -> Result<()> {
        let key = SealedColumns::of(&device.cmc_key);
        let data_key_version = to_i32(key.data_key_version, "data_key_version")?;
        let master_key_version = to_i32(key.master_key_version, "master_key_version")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let saved = tx.execute(
&tx.prepare_cached("UPDATE branches SET control_unit_url = $1, control_unit_profile = $2, sdc_id = $3, mrc_no = $4,
                        cmc_key = NULL, cmc_key_nonce = $5, cmc_key_sealed = $6, data_key_version = $7,
                        data_key_nonce = $8, data_key_wrapped = $9, master_key_version = $10
                 WHERE id = $11 AND tenant_id = $12").await.map_err(query_error)?,
                &[&device.control_unit_url, &device.profile, &device.sdc_id, &device.mrc_no,
                  &key.nonce, &key.sealed, &data_key_version, &key.data_key_nonce, &key.data_key_wrapped,
                  &master_key_version, &scope.branch.0, &scope.tenant.0],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        if saved == 0 {
            Err(StoreError::NotFound("branch"))
        } else {
            Ok(())
        }
    }

    pub async fn device(&self, scope: Scope) -> Result<Option<DeviceRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let row = tx
            .query_opt(
                &tx.prepare_cached(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM branches b WHERE id = $1 AND tenant_id = $2"
                ))
                .await
                .map_err(query_error)?,
                &[&scope.branch.0, &scope.tenant.0],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        // Every column may still be NULL (a branch whose device is not initialised yet).
        Ok(row.and_then(|r| device_from_row(&r, 0)))
    }

    /// The branches with a sealed cmcKey: who they are comes from the definer function
    /// `ushuru_initialised_branches` (it returns no key material); each device is then read
    /// in its own tenant's transaction.
    pub async fn initialised_branches(&self) -> Result<Vec<InitialisedBranch>> {
        let rows = {
            let client = self.client().await?;
            client
                .query(
                    "SELECT tenant_id, branch_id, tin, bhf_id FROM ushuru_initialised_branches()",
                    &[],
                )
                .await
                .map_err(query_error)?
        };
        let mut branches = Vec::with_capacity(rows.len());
        for row in &rows {
            let scope = Scope {
                tenant: TenantId(row.get(0)),
                branch: BranchId(row.get(1)),
            };
            if let Some(device) = self.device(scope).await? {
                branches.push(InitialisedBranch {
                    device,
                    scope,
                    tin: row.get(2),
                    bhf_id: row.get(3),
                });
            }
        }
        Ok(branches)
    }

    pub async fn plaintext_cmc_keys(&self) -> Result<Vec<PlaintextCmcKey>> {
        let rows = {
            let client = self.client().await?;
            client
                .query(
                    "SELECT tenant_id, branch_id FROM ushuru_plaintext_key_branches()",
                    &[],
                )
                .await
                .map_err(query_error)?
        };
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let scope = Scope {
                tenant: TenantId(row.get(0)),
                branch: BranchId(row.get(1)),
            };
            let plaintext = self
                .scoped_query(
                    scope.tenant,
                    Some(scope.branch),
                    "SELECT cmc_key FROM branches WHERE id = $1 AND cmc_key IS NOT NULL",
                    &[&scope.branch.0],
                )
                .await?;
            if let Some(found) = plaintext.first() {
                keys.push(PlaintextCmcKey {
                    scope,
                    cmc_key: zeroize::Zeroizing::new(found.get(0)),
                });
            }
        }
        Ok(keys)
    }

    pub async fn seal_plaintext_cmc_key(
        &self,
        scope: Scope,
        sealed: &SealedCmcKey,
    ) -> Result<bool> {
        let key = SealedColumns::of(sealed);
        let data_key_version = to_i32(key.data_key_version, "data_key_version")?;
        let master_key_version = to_i32(key.master_key_version, "master_key_version")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let sealed_now = tx
            .execute(
                "UPDATE branches SET cmc_key = NULL, cmc_key_nonce = $1, cmc_key_sealed = $2,
                        data_key_version = $3, data_key_nonce = $4, data_key_wrapped = $5,
                        master_key_version = $6
                 WHERE id = $7 AND tenant_id = $8 AND cmc_key IS NOT NULL",
                &[
                    &key.nonce,
                    &key.sealed,
                    &data_key_version,
                    &key.data_key_nonce,
                    &key.data_key_wrapped,
                    &master_key_version,
                    &scope.branch.0,
                    &scope.tenant.0,
                ],
            )
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        Ok(sealed_now == 1)
    }
}

/// The device columns [`device_from_row`] reads, in its order (`b` is `branches`).
const DEVICE_COLUMNS: &str = "b.control_unit_url, b.control_unit_profile, b.sdc_id, b.mrc_no,
    b.cmc_key_nonce, b.cmc_key_sealed, b.data_key_version, b.data_key_nonce, b.data_key_wrapped,
    b.master_key_version";

fn to_i32(value: i64, what: &'static str) -> Result<i32> {
    i32::try_from(value)
        .map_err(|_| StoreError::Conflict(format!("{what} {value} is out of range")))
}

/// The branch's advisory-lock key (PostgreSQL's two-key form takes 32-bit keys).
fn lock_key(scope: Scope) -> Result<i32> {
    i32::try_from(scope.branch.0).map_err(|_| {
        StoreError::Conflict(format!(
            "branch id {} is beyond the range of the branch locks",
            scope.branch.0
        ))
    })
}

/// The device columns ([`DEVICE_COLUMNS`]) from `first` on; None while any is NULL (not
/// initialised).
fn device_from_row(r: &tokio_postgres::Row, first: usize) -> Option<DeviceRecord> {
    let text = |i: usize| r.get::<_, Option<String>>(first + i);
    let bytes = |i: usize| r.get::<_, Option<Vec<u8>>>(first + i);
    let version = |i: usize| r.get::<_, Option<i32>>(first + i).map(i64::from);
    Some(DeviceRecord {
        control_unit_url: text(0)?,
        profile: text(1)?,
        sdc_id: text(2)?,
        mrc_no: text(3)?,
        cmc_key: SealedColumns {
            nonce: bytes(4)?,
            sealed: bytes(5)?,
            data_key_version: version(6)?,
            data_key_nonce: bytes(7)?,
            data_key_wrapped: bytes(8)?,
            master_key_version: version(9)?,
        }
        .into_key()?,
    })
}

/// One sale of a scope, read inside the caller's transaction.
/// The columns [`sale_from_row`] reads, in its order.
const SALE_COLUMNS: &str =
    "COALESCE(refused_invc_no, invc_no), client_reference, status, tot_amt::text, sdc_id, mrc_no,
    cur_rcpt_no, tot_rcpt_no, intrl_data, rcpt_sign, sdc_date_time, rcpt_ty_cd";

async fn read_sale(tx: &Transaction<'_>, scope: Scope, id: SaleId) -> Result<Option<SaleRecord>> {
    let row = tx
        .query_opt(
            &tx.prepare_cached(&format!(
                "SELECT {SALE_COLUMNS} FROM sales WHERE id = $1 AND tenant_id = $2 AND branch_id = $3"
            ))
            .await
            .map_err(query_error)?,
            &[&id.0, &scope.tenant.0, &scope.branch.0],
        )
        .await
        .map_err(query_error)?;
    row.map(|row| sale_from_row(&row, id, scope)).transpose()
}

/// A sale from a row of [`SALE_COLUMNS`].
fn sale_from_row(row: &tokio_postgres::Row, id: SaleId, scope: Scope) -> Result<SaleRecord> {
    sale_from_row_at(row, 0, id, scope)
}

/// A sale from [`SALE_COLUMNS`] starting at column `at` of the row.
fn sale_from_row_at(
    row: &tokio_postgres::Row,
    at: usize,
    id: SaleId,
    scope: Scope,
) -> Result<SaleRecord> {
    let status: String = row.get(at + 2);
    let receipt = match (
        row.get::<_, Option<String>>(at + 4),
        row.get::<_, Option<i64>>(at + 6),
        row.get::<_, Option<i64>>(at + 7),
        row.get::<_, Option<String>>(at + 8),
        row.get::<_, Option<String>>(at + 9),
        row.get::<_, Option<String>>(at + 10),
    ) {
        (
            Some(sdc_id),
            Some(cur),
            Some(tot),
            Some(intrl_data),
            Some(rcpt_sign),
            Some(sdc_date_time),
        ) => Some(Receipt {
            sdc_id,
            mrc_no: row.get(at + 5),
            cur_rcpt_no: to_u64(cur, "cur_rcpt_no")?,
            tot_rcpt_no: to_u64(tot, "tot_rcpt_no")?,
            intrl_data,
            rcpt_sign,
            sdc_date_time,
        }),
        _ => None,
    };
    Ok(SaleRecord {
        id,
        scope,
        invc_no: to_u64(row.get(at), "invc_no")?,
        client_reference: row.get(at + 1),
        status: SaleStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("sale status {status:?}")))?,
        tot_amt: money_from_text(row.get::<_, &str>(at + 3))?,
        receipt,
        rcpt_ty_cd: row.get(at + 11),
    })
}

/// The claim of a branch's next sale, in one statement. It locks the head row (not
/// skipping it), so that a second claimer waits for the first to commit its lease and then
/// sees it: only the head is ever eligible, so order holds. The head is leased unless the
/// sale is backing off after a call that was not sent, or holds a live lease issued under
/// this very hold (`$6` is the hold's token prefix): the rule of [`Hold::may_claim`], in SQL.
/// Returns the sale's `maybe_sent` as it was before this claim, and the lease it replaced.
const CLAIM_SQL: &str = "WITH head AS (
        SELECT id, lease_owner, lease_expires_at, next_attempt_at, maybe_sent
        FROM outbox WHERE tenant_id = $1 AND branch_id = $2 AND state = 'PENDING'
        ORDER BY invc_no LIMIT 1 FOR UPDATE)
    UPDATE outbox o SET lease_owner = $3, lease_expires_at = $4, attempts = o.attempts + 1, maybe_sent = TRUE
    FROM head
    WHERE o.id = head.id
      AND (head.next_attempt_at IS NULL OR head.next_attempt_at <= $5)
      AND NOT (head.lease_owner IS NOT NULL AND head.lease_expires_at > $5
               AND starts_with(head.lease_owner, $6))
    RETURNING o.id, o.sale_id, o.invc_no, o.payload, o.payload_sha256, o.attempts, head.maybe_sent,
              head.lease_owner, head.lease_expires_at";

/// The parameters of [`CLAIM_SQL`] for one claim under `hold`.
struct ClaimParams {
    tenant: i64,
    branch: i64,
    token: String,
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
    issued_prefix: String,
}

impl ClaimParams {
    fn new(scope: Scope, hold: &Hold, lease: Duration, now: DateTime<Utc>) -> Self {
        ClaimParams {
            tenant: scope.tenant.0,
            branch: scope.branch.0,
            token: hold.lease_token(),
            expires: lease_until(now, lease),
            now,
            issued_prefix: hold.issued_prefix(),
        }
    }

    fn as_params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 6] {
        [
            &self.tenant,
            &self.branch,
            &self.token,
            &self.expires,
            &self.now,
            &self.issued_prefix,
        ]
    }

    /// The claim [`CLAIM_SQL`] returned, if any.
    fn claim(self, scope: Scope, row: Option<tokio_postgres::Row>) -> Result<Option<Claim>> {
        let Some(row) = row else {
            return Ok(None);
        };
        let previous: Option<String> = row.get(7);
        let previous_until: Option<DateTime<Utc>> = row.get(8);
        if let Some(previous) = &previous
            && previous_until.is_some_and(|until| until > self.now)
        {
            tracing::info!(
                previous = previous.as_str(),
                "taking over a live lease: its holder no longer holds the branch lock"
            );
        }
        let attempts: i32 = row.get(5);
        Ok(Some(Claim {
            outbox_id: row.get(0),
            scope,
            sale: SaleId(row.get(1)),
            invc_no: to_u64(row.get(2), "invc_no")?,
            payload: OutboxPayload {
                body: row.get(3),
                sha256: row.get(4),
            },
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            maybe_sent: row.get(6),
            owner: self.token,
            lease_expires_at: self.expires,
        }))
    }
}

/// Phase 3 for one receipt, one statement: only the holder of the claim's lease may finish
/// the row (no row, nothing written); the sequence auditor's look at the control unit's
/// previous receipt (the snapshot before this one's insert), and a gap after it stored as a
/// finding; the receipt under its UNIQUE constraint; the sale, returned as it now is; and,
/// with `journal`, the call that brought it. Parameters: [`RecordParams::as_params`].
fn record_sql(journal: bool) -> &'static str {
    static WITH_JOURNAL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| record_sql_text(true));
    static WITHOUT_JOURNAL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| record_sql_text(false));
    if journal {
        &WITH_JOURNAL
    } else {
        &WITHOUT_JOURNAL
    }
}

/// The sequence auditor's look at the device's latest receipt, as phase 3 runs it
/// ([`record_sql`]'s `$2` tenant, `$3` branch, `$5` device). It names every column of
/// `receipts_scope_branch_sdc_rcpt_idx` (migration 0014), so that its generic plan is one
/// backward probe whatever the statistics; with a column outside the index, the planner
/// read every receipt the device ever signed and sorted them.
pub const LATEST_RECEIPT_SQL: &str = "SELECT rcpt_no FROM receipts
    WHERE tenant_id = $2 AND branch_id = $3 AND sdc_id = $5 ORDER BY rcpt_no DESC LIMIT 1";

/// [`record_sql`]'s text, built once per form.
///
/// The sale is updated by its id alone. `done` found the outbox row by tenant and branch,
/// and the outbox's foreign key `(sale_id, tenant_id, branch_id)` makes its sale one of
/// that tenant and branch, so naming them again checks nothing. Naming them did cost:
/// before a table's first ANALYZE the planner cannot tell the indexes that lead with
/// `(tenant_id, branch_id)` from the primary key, and the generic plan it kept scanned
/// the branch's whole range of `sales_by_client_reference` for the one sale (1.6 ms in a
/// 15 s run, and growing with the branch's history until statistics arrived).
fn record_sql_text(journal: bool) -> String {
    let journal = if journal {
        ", journal AS (INSERT INTO exchanges (tenant_id, branch_id, sale_id, operation_id, endpoint, attempt,
                            request_body, response_body, http_status, outcome, elapsed_ms, created_at)
             SELECT $2, $3, sale_id, NULL, $13, $14, $15, $16, $17, $18, $19, $12 FROM done)"
    } else {
        ""
    };
    format!(
        "WITH done AS (
            UPDATE outbox SET state = 'DONE', lease_owner = NULL, lease_expires_at = NULL
            WHERE id = $1 AND tenant_id = $2 AND branch_id = $3 AND state = 'PENDING' AND lease_owner = $4
            RETURNING sale_id),
         previous AS ({LATEST_RECEIPT_SQL}),
         receipt AS (
            INSERT INTO receipts (tenant_id, branch_id, sdc_id, rcpt_no, sale_id)
            SELECT $2, $3, $5, $6, sale_id FROM done),
         gap AS (
            INSERT INTO sequence_findings (tenant_id, branch_id, sdc_id, kind, expected, found, sale_id)
            SELECT $2, $3, $5, 'GAP', previous.rcpt_no + 1, $6, done.sale_id
            FROM done, previous WHERE $6 > previous.rcpt_no + 1),
         signed AS (
            UPDATE sales SET status = 'SIGNED', cur_rcpt_no = $7, tot_rcpt_no = $6, intrl_data = $8,
                             rcpt_sign = $9, sdc_date_time = $10, sdc_id = $5, mrc_no = $11, signed_at = $12
            WHERE id = (SELECT sale_id FROM done)
            RETURNING id, {SALE_COLUMNS}){journal}
         SELECT signed.*, (SELECT rcpt_no FROM previous) FROM signed"
    )
}

/// The parameters of [`record_sql`] for one receipt, owned, so that it can wait in the
/// relays' queue.
struct RecordParams {
    outbox_id: i64,
    scope: Scope,
    tenant: i64,
    branch: i64,
    owner: String,
    sdc_id: String,
    rcpt_no: i64,
    cur_rcpt_no: i64,
    intrl_data: String,
    rcpt_sign: String,
    sdc_date_time: String,
    mrc_no: Option<String>,
    now: DateTime<Utc>,
    journal: Option<JournalParams>,
}

/// The journal entry's part of [`RecordParams`].
struct JournalParams {
    endpoint: String,
    attempt: i32,
    request_body: String,
    response_body: Option<String>,
    http_status: Option<i32>,
    outcome: String,
    elapsed_ms: i64,
}

impl RecordParams {
    fn new(
        claim: &Claim,
        receipt: &Receipt,
        exchange: Option<&ExchangeRecord>,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        let journal = exchange
            .map(|e| {
                Ok::<_, StoreError>(JournalParams {
                    endpoint: e.endpoint.clone(),
                    attempt: attempt_number(e.attempt),
                    request_body: e.request_body.clone(),
                    response_body: e.response_body.clone(),
                    http_status: e.http_status.map(i32::from),
                    outcome: e.outcome.clone(),
                    elapsed_ms: to_i64(e.elapsed_ms, "elapsed_ms")?,
                })
            })
            .transpose()?;
        Ok(RecordParams {
            outbox_id: claim.outbox_id,
            scope: claim.scope,
            tenant: claim.scope.tenant.0,
            branch: claim.scope.branch.0,
            owner: claim.owner.clone(),
            sdc_id: receipt.sdc_id.clone(),
            rcpt_no: to_i64(receipt.tot_rcpt_no, "rcpt_no")?,
            cur_rcpt_no: to_i64(receipt.cur_rcpt_no, "cur_rcpt_no")?,
            intrl_data: receipt.intrl_data.clone(),
            rcpt_sign: receipt.rcpt_sign.clone(),
            sdc_date_time: receipt.sdc_date_time.clone(),
            mrc_no: receipt.mrc_no.clone(),
            now: clamp_time(now),
            journal,
        })
    }

    fn as_params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &self.outbox_id,
            &self.tenant,
            &self.branch,
            &self.owner,
            &self.sdc_id,
            &self.rcpt_no,
            &self.cur_rcpt_no,
            &self.intrl_data,
            &self.rcpt_sign,
            &self.sdc_date_time,
            &self.mrc_no,
            &self.now,
        ];
        if let Some(j) = &self.journal {
            params.extend_from_slice(&[
                &j.endpoint,
                &j.attempt,
                &j.request_body,
                &j.response_body,
                &j.http_status,
                &j.outcome,
                &j.elapsed_ms,
            ]);
        }
        params
    }

    /// The statement's error as the caller should see it: the receipt's number taken
    /// already is [`StoreError::DuplicateReceipt`].
    fn error(&self, error: tokio_postgres::Error) -> StoreError {
        match violated_constraint(&error) {
            Some("receipts_sdc_rcpt_unique") => StoreError::DuplicateReceipt {
                sdc_id: self.sdc_id.clone(),
                rcpt_no: u64::try_from(self.rcpt_no).unwrap_or_default(),
            },
            _ => database(error),
        }
    }

    /// The signed sale [`record_sql`] returned; no row means the lease was no longer this
    /// claim's, and nothing was written.
    fn signed(&self, row: Option<tokio_postgres::Row>) -> Result<SaleRecord> {
        let signed = row.ok_or(StoreError::NotFound("pending outbox row under this lease"))?;
        let sale_id: i64 = signed.get(0);
        let previous: Option<i64> = signed.get(13);
        if let Some(previous) = previous
            && self.rcpt_no > previous + 1
        {
            tracing::error!(sdc_id = %self.sdc_id, expected = previous + 1, found = self.rcpt_no, "receipt numbers skipped a number");
        }
        sale_from_row_at(&signed, 1, SaleId(sale_id), self.scope)
    }
}

/// Runs `work` as one transaction of the tenant in a single round trip: `BEGIN`, the
/// tenant's `set_config`, `work`'s statements and `COMMIT` are all sent before any answer
/// is awaited (tokio-postgres pipelines requests polled together, in the order polled). A
/// statement that fails aborts the transaction, and PostgreSQL answers that `COMMIT` with a
/// rollback; the first error is returned.
///
/// `work` must send every statement on its first poll: prepared statements only (prepare
/// them before), and no other await before its queries. Anything sent later would arrive
/// after the `COMMIT` and run outside the transaction.
async fn one_round_trip<T>(
    client: &deadpool_postgres::Object,
    scope: Scope,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    one_round_trip_in(client, scope.tenant, Some(scope.branch), work).await
}

/// [`one_round_trip`] in a tenant, and in one of its branches or in all of them.
async fn one_round_trip_in<T>(
    client: &deadpool_postgres::Object,
    tenant: TenantId,
    branch: Option<BranchId>,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let enter = client
        .prepare_cached(ENTER_SQL)
        .await
        .map_err(query_error)?;
    let [tenant, branch] = scope_settings(tenant, branch);
    let enter_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&tenant, &branch];
    // `biased`: polled in this order, so sent in this order.
    let (begun, entered, done, committed) = tokio::join!(
        biased;
        client.batch_execute("BEGIN"),
        client.execute(&enter, &enter_params),
        work,
        client.batch_execute("COMMIT"),
    );
    begun.map_err(query_error)?;
    entered.map_err(query_error)?;
    let value = done?;
    committed.map_err(query_error)?;
    Ok(value)
}

/// A sale's lines in `itemSeq` order, inside the caller's transaction.
async fn read_lines(tx: &Transaction<'_>, scope: Scope, sale: SaleId) -> Result<Vec<SaleLine>> {
    let rows = tx.query(
&tx.prepare_cached("SELECT item_seq, item_cd, item_nm, tax_ty_cd, qty::text, uprc::text, dc_amt::text, taxbl_amt::text,
                    tax_amt::text, tot_amt::text, original_item_seq
             FROM sale_lines WHERE sale_id = $1 AND tenant_id = $2 AND branch_id = $3 ORDER BY item_seq").await.map_err(query_error)?,
            &[&sale.0, &scope.tenant.0, &scope.branch.0],
        )
        .await
        .map_err(query_error)?;
    rows.iter()
        .map(|row| {
            let item_seq: i32 = row.get(0);
            Ok(SaleLine {
                item_seq: u32::try_from(item_seq)
                    .map_err(|_| StoreError::Corrupt(format!("item_seq {item_seq}")))?,
                item_cd: row.get(1),
                item_nm: row.get(2),
                tax_ty_cd: row.get(3),
                qty: quantity_from_text(row.get(4))?,
                uprc: money_from_text(row.get(5))?,
                dc_amt: money_from_text(row.get(6))?,
                taxbl_amt: money_from_text(row.get(7))?,
                tax_amt: money_from_text(row.get(8))?,
                tot_amt: money_from_text(row.get(9))?,
                original_item_seq: row
                    .get::<_, Option<i32>>(10)
                    .map(|seq| {
                        u32::try_from(seq)
                            .map_err(|_| StoreError::Corrupt(format!("original_item_seq {seq}")))
                    })
                    .transpose()?,
            })
        })
        .collect()
}

/// Takes the branch's next `invcNo`; the branch row stays locked until the caller commits,
/// which serialises numbering across replicas.
/// Keeps a call in the journal, linked to its sale (if any) or its operation, in the
/// caller's transaction.
async fn insert_exchange_in(
    tx: &Transaction<'_>,
    scope: Scope,
    exchange: &ExchangeRecord,
    operation: Option<i64>,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.execute(
&tx.prepare_cached("INSERT INTO exchanges (tenant_id, branch_id, sale_id, operation_id, endpoint, attempt, request_body,
                                response_body, http_status, outcome, elapsed_ms, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)").await.map_err(query_error)?,
        &[
            &scope.tenant.0,
            &scope.branch.0,
            &exchange.sale.map(|s| s.0),
            &operation,
            &exchange.endpoint,
            &attempt_number(exchange.attempt),
            &exchange.request_body,
            &exchange.response_body,
            &exchange.http_status.map(i32::from),
            &exchange.outcome,
            &to_i64(exchange.elapsed_ms, "elapsed_ms")?,
            &clamp_time(now),
        ],
    )
    .await
    .map_err(query_error)?;
    Ok(())
}

/// The start of an Idempotency-Key request in the caller's transaction: the key's earlier
/// use decides, or the record is written (Started) for the caller to commit.
async fn begin_in(
    tx: &Transaction<'_>,
    tenant: TenantId,
    key: &str,
    request_sha256: &str,
    now: DateTime<Utc>,
    in_flight_for: Duration,
    keep: Duration,
) -> Result<IdempotencyStart> {
    let expires = lease_until(now, keep);
    // The first of concurrent requests inserts; the others find its row, locked.
    let inserted = tx.query_opt(
&tx.prepare_cached("INSERT INTO idempotency_keys (tenant_id, key, request_sha256, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, key) DO NOTHING RETURNING 1").await.map_err(query_error)?,
            &[&tenant.0, &key, &request_sha256, &now, &expires],
        )
        .await
        .map_err(query_error)?;
    if inserted.is_some() {
        return Ok(IdempotencyStart::Started);
    }
    let row = tx.query_one(
&tx.prepare_cached(&format!("SELECT k.request_sha256, k.response_status, k.response_body, k.created_at, k.expires_at,
                    k.sale_id, s.rcpt_ty_cd, {SALE_SETTLED_SQL}
             FROM idempotency_keys k LEFT JOIN sales s ON s.id = k.sale_id AND s.tenant_id = k.tenant_id
             WHERE k.tenant_id = $1 AND k.key = $2 FOR UPDATE OF k")).await.map_err(query_error)?,
            &[&tenant.0, &key],
        )
        .await
        .map_err(query_error)?;
    let stored_expiry: DateTime<Utc> = row.get(4);
    if stored_expiry > now {
        let answer = row
            .get::<_, Option<i32>>(1)
            .zip(row.get::<_, Option<String>>(2))
            .map(|(s, b)| (u16::try_from(s).unwrap_or(500), b));
        if let Some(decision) = idempotency_decision(
            row.get(0),
            request_sha256,
            answer,
            row.get(3),
            now,
            in_flight_for,
            row.get::<_, Option<i64>>(5)
                .zip(row.get::<_, Option<String>>(6))
                .map(|(sale, rcpt_ty_cd)| AcceptedUnderKey {
                    sale,
                    rcpt_ty_cd,
                    settled: row.get::<_, Option<bool>>(7).unwrap_or(false),
                }),
        ) {
            return Ok(decision);
        }
    }
    tx.execute(
&tx.prepare_cached("UPDATE idempotency_keys SET request_sha256 = $3, response_status = NULL, response_body = NULL,
             created_at = $4, expires_at = $5, sale_id = NULL
         WHERE tenant_id = $1 AND key = $2").await.map_err(query_error)?,
        &[&tenant.0, &key, &request_sha256, &now, &expires],
    )
    .await
    .map_err(query_error)?;
    Ok(IdempotencyStart::Started)
}

/// Gives a refused sale's number back (see `plan_release`), in the caller's transaction,
/// which holds the branch row.
async fn release_number(
    tx: &Transaction<'_>,
    scope: Scope,
    sale_id: i64,
    invc_no: u64,
) -> Result<()> {
    let rows = tx.query(
&tx.prepare_cached("SELECT id, sale_id, invc_no, payload FROM outbox
             WHERE tenant_id = $1 AND branch_id = $2 AND state = 'PENDING' AND invc_no > $3 ORDER BY invc_no").await.map_err(query_error)?,
            &[&scope.tenant.0, &scope.branch.0, &to_i64(invc_no, "invc_no")?],
        )
        .await
        .map_err(query_error)?;
    let behind = rows
        .iter()
        .map(|r| {
            Ok(Behind {
                outbox_id: r.get(0),
                sale_id: r.get(1),
                invc_no: to_u64(r.get(2), "invc_no")?,
                payload: r.get(3),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let fates = plan_release(invc_no, behind)?;
    step_out_of_sequence(tx, scope, sale_id, invc_no).await?;
    for fate in &fates {
        match fate {
            Fate::Fail {
                outbox_id,
                sale_id,
                invc_no,
                message,
            } => {
                tx.execute(
&tx.prepare_cached("UPDATE outbox SET state = 'FAILED' WHERE id = $1 AND tenant_id = $2 AND branch_id = $3").await.map_err(query_error)?,
                    &[outbox_id, &scope.tenant.0, &scope.branch.0],
                )
                .await
                .map_err(query_error)?;
                tx.execute(
&tx.prepare_cached("UPDATE sales SET status = 'FAILED', failure_code = 'ORIGINAL_REFUSED', failure_message = $1
                     WHERE id = $2 AND tenant_id = $3 AND branch_id = $4").await.map_err(query_error)?,
                    &[message, sale_id, &scope.tenant.0, &scope.branch.0],
                )
                .await
                .map_err(query_error)?;
                step_out_of_sequence(tx, scope, *sale_id, *invc_no).await?;
            }
            Fate::Renumber {
                outbox_id,
                sale_id,
                invc_no,
                payload,
            } => {
                let number = to_i64(*invc_no, "invc_no")?;
                tx.execute(
&tx.prepare_cached("UPDATE outbox SET invc_no = $1, payload = $2, payload_sha256 = $3 WHERE id = $4 AND tenant_id = $5 AND branch_id = $6").await.map_err(query_error)?,
                    &[&number, &payload.body, &payload.sha256, outbox_id, &scope.tenant.0, &scope.branch.0],
                )
                .await
                .map_err(query_error)?;
                tx.execute(
&tx.prepare_cached("UPDATE sales SET invc_no = $1 WHERE id = $2 AND tenant_id = $3 AND branch_id = $4").await.map_err(query_error)?,
                    &[&number, sale_id, &scope.tenant.0, &scope.branch.0],
                )
                .await
                .map_err(query_error)?;
            }
        }
    }
    tx.execute(
        &tx.prepare_cached(
            "UPDATE branches SET last_invc_no = last_invc_no - $1 WHERE id = $2 AND tenant_id = $3",
        )
        .await
        .map_err(query_error)?,
        &[&released_count(&fates), &scope.branch.0, &scope.tenant.0],
    )
    .await
    .map_err(query_error)?;
    Ok(())
}

/// Moves a sale and its outbox row out of the numbered sequence (to -id), keeping the
/// number it was refused under.
async fn step_out_of_sequence(
    tx: &Transaction<'_>,
    scope: Scope,
    sale_id: i64,
    invc_no: u64,
) -> Result<()> {
    tx.execute(
&tx.prepare_cached("UPDATE sales SET refused_invc_no = $1, invc_no = -id WHERE id = $2 AND tenant_id = $3 AND branch_id = $4").await.map_err(query_error)?,
        &[&to_i64(invc_no, "invc_no")?, &sale_id, &scope.tenant.0, &scope.branch.0],
    )
    .await
    .map_err(query_error)?;
    tx.execute(
&tx.prepare_cached("UPDATE outbox SET invc_no = -sale_id WHERE sale_id = $1 AND tenant_id = $2 AND branch_id = $3").await.map_err(query_error)?,
        &[&sale_id, &scope.tenant.0, &scope.branch.0],
    )
    .await
    .map_err(query_error)?;
    Ok(())
}

async fn next_invc_no(tx: &Transaction<'_>, scope: Scope) -> Result<u64> {
    let row = tx.query_opt(
&tx.prepare_cached("UPDATE branches SET last_invc_no = last_invc_no + 1 WHERE id = $1 AND tenant_id = $2 RETURNING last_invc_no").await.map_err(query_error)?,
            &[&scope.branch.0, &scope.tenant.0],
        )
        .await
        .map_err(query_error)?
        .ok_or(StoreError::NotFound("branch"))?;
    to_u64(row.get(0), "invc_no")
}

/// Writes a sale or credit note, its lines and its outbox row (phase 1's rows), and links
/// the Idempotency-Key's record to it, in one statement.
async fn insert_sale(
    tx: &Transaction<'_>,
    scope: Scope,
    invc_no: u64,
    sale: &NewSale,
    payload: &OutboxPayload,
    rcpt_ty_cd: &str,
) -> Result<i64> {
    let number = to_i64(invc_no, "invc_no")?;
    let seq = |n: u32| {
        i32::try_from(n).map_err(|_| StoreError::Corrupt(format!("item_seq {n} out of range")))
    };
    let lines = &sale.lines;
    let item_seq = lines
        .iter()
        .map(|l| seq(l.item_seq))
        .collect::<Result<Vec<_>>>()?;
    let original_item_seq = lines
        .iter()
        .map(|l| l.original_item_seq.map(seq).transpose())
        .collect::<Result<Vec<_>>>()?;
    let text = |f: &dyn Fn(&SaleLine) -> String| lines.iter().map(f).collect::<Vec<String>>();
    let item_cd = text(&|l| l.item_cd.clone());
    let item_nm = text(&|l| l.item_nm.clone());
    let tax_ty_cd = text(&|l| l.tax_ty_cd.clone());
    let qty = text(&|l| l.qty.to_string());
    let uprc = text(&|l| money_text(l.uprc));
    let dc_amt = text(&|l| money_text(l.dc_amt));
    let taxbl_amt = text(&|l| money_text(l.taxbl_amt));
    let tax_amt = text(&|l| money_text(l.tax_amt));
    let tot_amt = text(&|l| money_text(l.tot_amt));
    let statement = tx
        .prepare_cached(
            "WITH sale AS (
                INSERT INTO sales (tenant_id, branch_id, invc_no, client_reference, status, tot_amt, rcpt_ty_cd)
                VALUES ($1, $2, $3, $4, 'PENDING_SYNC', $5::text::numeric, $6) RETURNING id),
             lines AS (
                INSERT INTO sale_lines (tenant_id, branch_id, sale_id, item_seq, item_cd, item_nm, tax_ty_cd,
                                        qty, uprc, dc_amt, taxbl_amt, tax_amt, tot_amt, original_item_seq)
                SELECT $1, $2, sale.id, l.item_seq, l.item_cd, l.item_nm, l.tax_ty_cd, l.qty::numeric, l.uprc::numeric,
                       l.dc_amt::numeric, l.taxbl_amt::numeric, l.tax_amt::numeric, l.tot_amt::numeric, l.original_item_seq
                FROM sale, unnest($7::int4[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                                  $14::text[], $15::text[], $16::text[], $17::int4[])
                     AS l(item_seq, item_cd, item_nm, tax_ty_cd, qty, uprc, dc_amt, taxbl_amt, tax_amt, tot_amt,
                          original_item_seq)),
             queued AS (
                INSERT INTO outbox (tenant_id, branch_id, sale_id, invc_no, payload, payload_sha256)
                SELECT $1, $2, sale.id, $3, $18, $19 FROM sale),
             keyed AS (
                UPDATE idempotency_keys SET sale_id = (SELECT id FROM sale)
                WHERE $20::text IS NOT NULL AND tenant_id = $1 AND key = $20)
             SELECT id FROM sale",
        )
        .await
        .map_err(query_error)?;
    let sale_id: i64 = tx
        .query_one(
            &statement,
            &[
                &scope.tenant.0,
                &scope.branch.0,
                &number,
                &sale.client_reference,
                &money_text(sale.tot_amt),
                &rcpt_ty_cd,
                &item_seq,
                &item_cd,
                &item_nm,
                &tax_ty_cd,
                &qty,
                &uprc,
                &dc_amt,
                &taxbl_amt,
                &tax_amt,
                &tot_amt,
                &original_item_seq,
                &payload.body,
                &payload.sha256,
                &sale.idempotency_key,
            ],
        )
        .await
        .map_err(query_error)?
        .get(0);
    Ok(sale_id)
}

/// Starts `writers` tasks of a batch writer on one shared queue, on the current runtime;
/// returns the queue. The tasks end when the last sender is gone.
///
/// A writer that panics (a bug: its batch's callers get "stopped before answering", as
/// they would from a process that died) is started again, so that one bad batch does not
/// leave the queue with fewer writers, or none, until the process restarts.
fn start_writers<T, Writer, Running>(
    pool: &Pool,
    writers: usize,
    write: Writer,
) -> tokio::sync::mpsc::UnboundedSender<T>
where
    T: Send + 'static,
    Writer: Fn(Pool, Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<T>>>) -> Running
        + Clone
        + Send
        + 'static,
    Running: std::future::Future<Output = ()> + Send + 'static,
{
    let (jobs, waiting) = tokio::sync::mpsc::unbounded_channel();
    let waiting = Arc::new(tokio::sync::Mutex::new(waiting));
    for _ in 0..writers {
        let (pool, waiting, write) = (pool.clone(), Arc::clone(&waiting), write.clone());
        tokio::spawn(async move {
            loop {
                match tokio::spawn(write(pool.clone(), Arc::clone(&waiting))).await {
                    Err(ended) if ended.is_panic() => {
                        let payload = ended.into_panic();
                        let message = payload
                            .downcast_ref::<&str>()
                            .copied()
                            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                            .unwrap_or("(no message)");
                        tracing::error!(
                            panic = message,
                            "a batch writer panicked; starting another in its place"
                        );
                        // Not at once: a writer that panics before taking any job would
                        // otherwise be restarted in a busy loop.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // The queue closed, or the runtime is shutting down.
                    _ => return,
                }
            }
        });
    }
    jobs
}

/// A batch writer's next jobs: waits for one, then takes whatever else is queued, up to
/// `max`; `None` once the queue is closed. One writer at a time takes from the queue, so a
/// batch holds the jobs that arrived while the other writer's transaction ran.
async fn next_batch<T>(
    waiting: &tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<T>>,
    max: usize,
) -> Option<Vec<T>> {
    let mut waiting = waiting.lock().await;
    let mut jobs = vec![waiting.recv().await?];
    while jobs.len() < max {
        match waiting.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    Some(jobs)
}

mod accept_batch;
mod operations;
mod relay_batch;
mod security;

pub use relay_batch::SharedRelayCounts;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{Mutex, mpsc::UnboundedReceiver, oneshot};

    type Job = (u32, oneshot::Sender<u32>);

    /// A writer that panics on job 0 and answers every other job with its number.
    async fn panicking_writer(_: Pool, waiting: Arc<Mutex<UnboundedReceiver<Job>>>) {
        while let Some(jobs) = next_batch(&waiting, 1).await {
            for (number, answer) in jobs {
                assert_ne!(number, 0, "job 0 is a bug");
                let _ = answer.send(number);
            }
        }
    }

    #[tokio::test]
    async fn a_writer_that_panicked_is_started_again() {
        // A pool that never connects: the writer under test never asks it for a client.
        let config: tokio_postgres::Config = "postgres://nobody@127.0.0.1:1/none".parse().unwrap();
        let manager = Manager::from_config(config, NoTls, ManagerConfig::default());
        let pool = Pool::builder(manager).max_size(1).build().unwrap();
        let queue = start_writers(&pool, 2, panicking_writer);
        let ask = |number| {
            let (answer, answered) = oneshot::channel();
            queue.send((number, answer)).unwrap();
            answered
        };
        // Three panics, more than there are writers; each panicking job's caller learns
        // that nobody will answer, and every later job is answered.
        let within = |answered| tokio::time::timeout(Duration::from_secs(10), answered);
        for round in 1..=3 {
            let refused = within(ask(0)).await.expect("no writer left to drop job 0");
            assert!(refused.is_err(), "round {round}");
            let answered = within(ask(round)).await.expect("no writer left");
            assert_eq!(answered, Ok(round));
        }
    }
}
