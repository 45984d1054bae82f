//! The SQLite backend: one file, used by one process. Every write runs on one writer
//! thread that owns the read-write connection. The writer takes the operations queued for
//! it in batches: one `BEGIN IMMEDIATE`, each operation in turn (an operation that needs
//! to be atomic on its own runs in a savepoint, so its failure undoes only itself), one
//! `COMMIT`, and only then is any operation's result handed back. So a result means
//! committed, and under load many operations share one commit (group commit). Reads run
//! on a few read-only connections, each on a thread of its own (in WAL mode readers do
//! not wait for the writer).
//!
//! "One process" is enforced: claiming (and serving) takes an exclusive `flock` on
//! `<database>.lock`, which the operating system releases when the process dies. So no other
//! process can be sending for this database, and a lease left by a killed one is taken over
//! at once (see `signer.rs`).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use crate::signer::Hold;
use ushuru_vault::SealedCmcKey;

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

#[derive(Clone)]
pub struct SqliteStore {
    /// The writer thread's queue. The thread, and its connection, end when the last clone
    /// of the store is dropped.
    writer: crossbeam_channel::Sender<WriteJob>,
    /// The reader threads' shared queue: read-only connections, so that reads
    /// (authentication, a sale's status, lookups) do not queue behind every commit. `None`
    /// for an in-memory database, which only the writer's connection can see.
    readers: Option<crossbeam_channel::Sender<ReadJob>>,
    lock_path: PathBuf,
    signers: Arc<Mutex<Signers>>,
}

/// An operation for the writer thread: it runs in the batch's transaction and returns
/// what hands its result over, given whether the batch committed.
type WriteJob = Box<dyn FnOnce(&mut Connection) -> Deliver + Send>;
type Deliver = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// How many read-only connections (and reader threads) a file database gets.
const READERS: usize = 4;

/// The most operations one write transaction takes: enough to share a commit among all the
/// requests a busy server has waiting, few enough that none waits long behind the others.
const WRITE_BATCH: usize = 64;

/// Prepared statements kept per connection: more than the store has.
const STATEMENT_CACHE: usize = 128;

/// The database's lock file, once taken, and which relay of this process holds which branch.
#[derive(Default)]
struct Signers {
    lock: Option<File>,
    holds: HashMap<BranchId, Hold>,
}

fn database(error: rusqlite::Error) -> StoreError {
    if matches!(&error, rusqlite::Error::SqliteFailure(_, Some(message)) if message.contains("FOREIGN KEY"))
    {
        return StoreError::NotFound("branch or sale of this scope");
    }
    StoreError::Database(error.to_string())
}

/// A UNIQUE violation on `table.column`, by SQLite's message ("UNIQUE constraint failed:
/// receipts.sdc_id, receipts.rcpt_no"), which names columns rather than constraints.
fn unique_violation(error: &rusqlite::Error, columns: &str) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, Some(message))
        if e.code == ErrorCode::ConstraintViolation && message.contains("UNIQUE") && message.contains(columns))
}

fn timestamp(at: DateTime<Utc>) -> String {
    clamp_time(at).to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_timestamp(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time {text:?}: {e}")))
}

fn writer_gone() -> StoreError {
    StoreError::Database("the database thread stopped".into())
}

/// Starts the writer thread that owns `connection` (see the module's comment).
fn spawn_writer(mut connection: Connection) -> Result<crossbeam_channel::Sender<WriteJob>> {
    let (queue, jobs) = crossbeam_channel::unbounded::<WriteJob>();
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(WRITE_BATCH);
            let mut deliveries = Vec::with_capacity(WRITE_BATCH);
            while let Ok(first) = jobs.recv() {
                batch.push(first);
                while batch.len() < WRITE_BATCH {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                if let Err(e) = connection.execute_batch("BEGIN IMMEDIATE") {
                    // Each operation is told; none ran.
                    for job in batch.drain(..) {
                        drop(job);
                    }
                    tracing::error!(error = %e, "the SQLite writer could not begin a transaction");
                    continue;
                }
                for job in batch.drain(..) {
                    // A panicking operation drops its answer (its caller gets an error); the
                    // others in the batch go on.
                    if let Ok(deliver) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            job(&mut connection)
                        }))
                    {
                        deliveries.push(deliver);
                    }
                }
                let committed = connection
                    .execute_batch("COMMIT")
                    .map_err(|e| format!("the transaction did not commit: {e}"));
                if committed.is_err() {
                    let _ = connection.execute_batch("ROLLBACK");
                }
                for deliver in deliveries.drain(..) {
                    deliver(committed.clone());
                }
            }
        })
        .map_err(|e| StoreError::Database(format!("cannot start the SQLite writer: {e}")))?;
    Ok(queue)
}

/// Starts a thread for each read-only connection, all taking jobs from one queue; `None`
/// when there are none (an in-memory database).
fn spawn_readers(readers: Vec<Connection>) -> Result<Option<crossbeam_channel::Sender<ReadJob>>> {
    if readers.is_empty() {
        return Ok(None);
    }
    let (queue, jobs) = crossbeam_channel::unbounded::<ReadJob>();
    for (n, connection) in readers.into_iter().enumerate() {
        let jobs = jobs.clone();
        std::thread::Builder::new()
            .name(format!("sqlite-reader-{n}"))
            .spawn(move || {
                while let Ok(job) = jobs.recv() {
                    // A panicking read drops its answer (its caller gets an error).
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job(&connection);
                    }));
                }
            })
            .map_err(|e| StoreError::Database(format!("cannot start a SQLite reader: {e}")))?;
    }
    Ok(Some(queue))
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let path = path.to_owned();
        let connection =
            tokio::task::spawn_blocking(move || -> Result<(Connection, Vec<Connection>)> {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Database(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let connection = Connection::open(&path).map_err(database)?;
                connection
                    .pragma_update(None, "journal_mode", "WAL")
                    .map_err(database)?;
                // NORMAL in WAL mode: a commit survives a crash of the process (the SIGKILL of
                // the crash test); FULL would also survive a power cut, at one fsync per commit.
                connection
                    .pragma_update(None, "synchronous", "NORMAL")
                    .map_err(database)?;
                connection
                    .pragma_update(None, "foreign_keys", "ON")
                    .map_err(database)?;
                connection
                    .busy_timeout(Duration::from_secs(5))
                    .map_err(database)?;
                // Every statement is prepared once per connection (prepare_cached), not per
                // call.
                connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                let in_memory = path.as_os_str().is_empty() || path.as_os_str() == ":memory:";
                let mut readers = Vec::new();
                for _ in 0..if in_memory { 0 } else { READERS } {
                    let reader = Connection::open_with_flags(
                        &path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(database)?;
                    reader
                        .busy_timeout(Duration::from_secs(5))
                        .map_err(database)?;
                    reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                    readers.push(reader);
                }
                Ok((connection, readers))
            })
            .await
            .map_err(|e| StoreError::Database(format!("the blocking pool failed: {e}")))??;
        let (connection, readers) = connection;
        Ok(SqliteStore {
            writer: spawn_writer(connection)?,
            readers: spawn_readers(readers)?,
            lock_path: lock_path.into(),
            signers: Arc::default(),
        })
    }

    fn signers(&self) -> std::sync::MutexGuard<'_, Signers> {
        self.signers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the database's lock file for this store, if no other process (or other open
    /// store) has it. `false`: someone else serves this database.
    fn take_lock(&self, signers: &mut Signers) -> Result<bool> {
        if signers.lock.is_some() {
            return Ok(true);
        }
        let cannot = |e: std::io::Error| {
            StoreError::Database(format!("lock file {}: {e}", self.lock_path.display()))
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.lock_path)
            .map_err(cannot)?;
        if !try_lock_exclusive(&file).map_err(cannot)? {
            return Ok(false);
        }
        // For the message of whoever is refused next: which process serves the database.
        use std::io::{Seek, Write};
        file.set_len(0).map_err(cannot)?;
        file.rewind().map_err(cannot)?;
        write!(file, "{}", std::process::id()).map_err(cannot)?;
        signers.lock = Some(file);
        Ok(true)
    }

    pub async fn lock_for_serving(&self) -> Result<()> {
        let mut signers = self.signers();
        if self.take_lock(&mut signers)? {
            return Ok(());
        }
        let holder = std::fs::read_to_string(&self.lock_path)
            .ok()
            .map(|pid| pid.trim().to_owned())
            .filter(|pid| !pid.is_empty())
            .map_or_else(
                || "another process".to_owned(),
                |pid| format!("process {pid}"),
            );
        Err(StoreError::InUse(format!(
            "{holder} already serves the database {} (it holds {}): one process per SQLite database; \
             stop it, or give this one another data directory",
            self.lock_path.with_extension("").display(),
            self.lock_path.display()
        )))
    }

    /// `owner`'s hold of the branch: confirmed, taken (with the lock file if this store does
    /// not have it yet), or `None` when another relay or process signs for it.
    fn hold(&self, scope: Scope, owner: &str) -> Result<Option<Hold>> {
        let mut signers = self.signers();
        if !self.take_lock(&mut signers)? {
            return Ok(None);
        }
        if let Some(hold) = signers.holds.get(&scope.branch) {
            return Ok((hold.owner == owner).then(|| hold.clone()));
        }
        let hold = Hold::new(owner, None);
        signers.holds.insert(scope.branch, hold.clone());
        Ok(Some(hold))
    }

    pub async fn let_go_branch(&self, scope: Scope, owner: &str) -> Result<()> {
        let mut signers = self.signers();
        if signers
            .holds
            .get(&scope.branch)
            .is_some_and(|hold| hold.owner == owner)
        {
            signers.holds.remove(&scope.branch);
        }
        Ok(())
    }

    /// Runs `work` on the writer thread, inside the current batch's transaction, and
    /// returns its result once that transaction has committed.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: WriteJob = Box::new(move |connection| {
            let result = work(connection);
            Box::new(move |committed| {
                let _ = answer.send(match committed {
                    Ok(()) => result,
                    // Whatever the operation did was undone with the batch.
                    Err(e) if result.is_ok() => Err(StoreError::Database(e)),
                    Err(_) => result,
                });
            })
        });
        self.writer.send(job).map_err(|_| writer_gone())?;
        answered.await.map_err(|_| writer_gone())?
    }

    /// Whether `table` (`outbox` or `operations`) has a pending row for the branch, as a
    /// reader sees it.
    pub(super) async fn has_pending(&self, scope: Scope, table: &'static str) -> Result<bool> {
        self.read(move |connection| {
            connection
                .prepare_cached(&format!(
                    "SELECT EXISTS (SELECT 1 FROM {table} WHERE tenant_id = ?1 AND branch_id = ?2 AND state = 'PENDING')"
                ))
                .map_err(database)?
                .query_row(params![scope.tenant.0, scope.branch.0], |r| r.get(0))
                .map_err(database)
        })
        .await
    }

    /// Runs a read on one of the read-only connections (whichever reader thread is free),
    /// or on the writer for an in-memory database.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let Some(readers) = &self.readers else {
            return self.run(move |connection| work(connection)).await;
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: ReadJob = Box::new(move |connection| {
            let _ = answer.send(work(connection));
        });
        readers.send(job).map_err(|_| writer_gone())?;
        answered.await.map_err(|_| writer_gone())?
    }

    pub async fn migrate(&self) -> Result<Vec<&'static str>> {
        self.run(|connection| {
            let tx = connection.savepoint().map_err(database)?;
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    INTEGER CONSTRAINT schema_migrations_pk PRIMARY KEY,
                    name       TEXT NOT NULL,
                    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                )",
            )
            .map_err(database)?;
            let mut applied = Vec::new();
            for migration in MIGRATIONS {
                let done: Option<i64> = tx
                    .prepare_cached("SELECT version FROM schema_migrations WHERE version = ?1")
                    .map_err(database)?
                    .query_row([migration.version], |r| r.get(0))
                    .optional()
                    .map_err(database)?;
                if done.is_none() {
                    tx.execute_batch(migration.sqlite).map_err(database)?;
                    tx.prepare_cached(
                        "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)",
                    )
                    .map_err(database)?
                    .execute(params![migration.version, migration.name])
                    .map_err(database)?;
                    applied.push(migration.name);
                }
            }
            tx.commit().map_err(database)?;
            Ok(applied)
        })
        .await
    }

    pub async fn create_tenant(&self, tin: &str, name: &str) -> Result<Tenant> {
        let (tin, name) = (tin.to_owned(), name.to_owned());
        self.run(move |connection| {
            let id = connection
                .prepare_cached("INSERT INTO tenants (tin, name) VALUES (?1, ?2) RETURNING id")
                .map_err(database)?
                .query_row(params![tin, name], |r| r.get(0))
                .map_err(|e| {
                    if unique_violation(&e, "tenants.tin") {
                        StoreError::Conflict(format!("a tenant with PIN {tin} exists"))
                    } else {
                        database(e)
                    }
                })?;
            Ok(Tenant {
                id: TenantId(id),
                tin,
                name,
            })
        })
        .await
    }

    pub async fn create_branch(&self, tenant: TenantId, bhf_id: &str) -> Result<Branch> {
        let bhf_id = bhf_id.to_owned();
        self.run(move |connection| {
            let id = connection.prepare_cached("INSERT INTO branches (tenant_id, bhf_id) VALUES (?1, ?2) RETURNING id").map_err(database)?.query_row( params![tenant.0, bhf_id], |r| {
                    r.get(0)
                })
                .map_err(|e| {
                    if unique_violation(&e, "branches.tenant_id") {
                        StoreError::Conflict(format!("branch {bhf_id} exists for this tenant"))
                    } else if matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation) {
                        StoreError::NotFound("tenant")
                    } else {
                        database(e)
                    }
                })?;
            Ok(Branch { id: BranchId(id), tenant, bhf_id, last_invc_no: 0 })
        })
        .await
    }

    pub async fn branch(&self, scope: Scope) -> Result<Option<Branch>> {
        self.read(move |connection| {
            connection
                .prepare_cached(
                    "SELECT bhf_id, last_invc_no FROM branches WHERE id = ?1 AND tenant_id = ?2",
                )
                .map_err(database)?
                .query_row(params![scope.branch.0, scope.tenant.0], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()
                .map_err(database)?
                .map(|(bhf_id, last)| {
                    Ok(Branch {
                        id: scope.branch,
                        tenant: scope.tenant,
                        bhf_id,
                        last_invc_no: to_u64(last, "last_invc_no")?,
                    })
                })
                .transpose()
        })
        .await
    }

    pub async fn accept_sale(
        &self,
        scope: Scope,
        sale: NewSale,
        build: PayloadBuilder,
    ) -> Result<AcceptedSale> {
        self.run(move |connection| {
            let tx = connection.savepoint().map_err(database)?;
            let invc_no = next_invc_no(&tx, scope)?;
            let payload = build_payload(build, invc_no)?;
            let sale_id = insert_sale(&tx, scope, invc_no, &sale, &payload, "S")?;
            tx.commit().map_err(database)?;
            Ok(AcceptedSale {
                sale: SaleId(sale_id),
                invc_no,
            })
        })
        .await
    }

    pub async fn accept_credit_note<R: Send + 'static>(
        &self,
        scope: Scope,
        original: SaleId,
        plan: CreditPlanner<R>,
    ) -> Result<CreditOutcome<R>> {
        self.run(move |connection| {
            // The writer's batch began IMMEDIATE: the write lock is held, so the remainder
            // read below cannot change before this note commits.
            let tx = connection.savepoint().map_err(database)?;
            let Some(original_sale) = read_sale(&tx, scope, original)?.filter(|s| s.rcpt_ty_cd == "S") else {
                return Ok(CreditOutcome::NoSuchSale);
            };
            let original_payload: String = tx.prepare_cached("SELECT payload FROM outbox WHERE sale_id = ?1 AND tenant_id = ?2 AND branch_id = ?3").map_err(database)?.query_row(
                    params![original.0, scope.tenant.0, scope.branch.0],
                    |r| r.get(0),
                )
                .map_err(database)?;
            let note_ids: Vec<i64> = {
                let mut statement = tx
                    .prepare_cached(
                        "SELECT c.sale_id FROM credit_notes c JOIN sales s ON s.id = c.sale_id
                         WHERE c.original_sale_id = ?1 AND c.tenant_id = ?2 AND c.branch_id = ?3
                           AND s.status <> 'FAILED'
                         ORDER BY c.sale_id",
                    )
                    .map_err(database)?;
                                statement
                    .query_map(params![original.0, scope.tenant.0, scope.branch.0], |r| r.get(0))
                    .map_err(database)?
                    .collect::<rusqlite::Result<Vec<i64>>>()
                    .map_err(database)?
            };
            let mut credit_notes = Vec::new();
            let mut reversed_lines = Vec::new();
            for id in note_ids {
                if let Some(note) = read_sale(&tx, scope, SaleId(id))? {
                    credit_notes.push(note);
                }
                reversed_lines.extend(read_lines(&tx, scope, SaleId(id))?);
            }
            let context = CreditContext {
                original_lines: read_lines(&tx, scope, original)?,
                original: original_sale,
                original_payload,
                credit_notes,
                reversed_lines,
            };
            let invc_no = next_invc_no(&tx, scope)?;
            let note = match plan_credit_note(plan, &context, invc_no)? {
                Ok(note) => note,
                // Dropping the transaction rolls the number back: a refusal uses none.
                Err(refusal) => return Ok(CreditOutcome::Refused(refusal)),
            };
            let sale_id = insert_sale(&tx, scope, invc_no, &note.sale, &note.payload, "R")?;
            tx.prepare_cached("INSERT INTO credit_notes (sale_id, tenant_id, branch_id, original_sale_id, rfd_rsn_cd, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)").map_err(database)?.execute(
                params![sale_id, scope.tenant.0, scope.branch.0, original.0, note.rfd_rsn_cd, note.reason],
            )
            .map_err(database)?;
            tx.commit().map_err(database)?;
            Ok(CreditOutcome::Accepted(AcceptedSale { sale: SaleId(sale_id), invc_no }))
        })
        .await
    }

    pub async fn claim_next(
        &self,
        scope: Scope,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Claim>> {
        let Some(hold) = self.hold(scope, owner)? else {
            return Ok(None); // another relay or process signs for this branch
        };
        // Most looks find nothing (a relay looks again after every sale): a reader says so
        // without taking the one writer. A row committed after this look wakes the relay.
        if !self.has_pending(scope, "outbox").await? {
            return Ok(None);
        }
        self.run(move |connection| {
            let tx = connection.savepoint().map_err(database)?;
            let claim = claim_in(&tx, scope, &hold, lease, now)?;
            tx.commit().map_err(database)?;
            Ok(claim)
        })
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
        let (claim, receipt, exchange) = (claim.clone(), receipt.clone(), exchange.cloned());
        let next = match next {
            Some((owner, lease)) => self.hold(claim.scope, owner)?.map(|hold| (hold, lease)),
            None => None,
        };
        self.run(move |connection| {
            let tx = connection.savepoint().map_err(database)?;
            let scope = claim.scope;
                        // Only the holder of this claim's lease may finish the row; the sale is the row's own.
            let sale_id: i64 = tx.prepare_cached("UPDATE outbox SET state = 'DONE', lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = ?1 AND tenant_id = ?2 AND branch_id = ?3 AND state = 'PENDING' AND lease_owner = ?4
                     RETURNING sale_id").map_err(database)?.query_row(
                    params![claim.outbox_id, scope.tenant.0, scope.branch.0, claim.owner],
                    |r| r.get(0),
                )
                .optional()
                .map_err(database)?
                .ok_or(StoreError::NotFound("pending outbox row under this lease"))?;
            // The sequence auditor: the previous receipt of this control unit should be one less.
            let previous: Option<i64> = tx.prepare_cached("SELECT MAX(rcpt_no) FROM receipts WHERE sdc_id = ?1 AND tenant_id = ?2").map_err(database)?.query_row( params![receipt.sdc_id, scope.tenant.0], |r| r.get(0))
                .map_err(database)?;
            let number = to_i64(receipt.tot_rcpt_no, "rcpt_no")?;
            if let Some(previous) = previous
                && number > previous + 1
            {
                tx.prepare_cached("INSERT INTO sequence_findings (tenant_id, branch_id, sdc_id, kind, expected, found, sale_id)
                     VALUES (?1, ?2, ?3, 'GAP', ?4, ?5, ?6)").map_err(database)?.execute(
                    params![scope.tenant.0, scope.branch.0, receipt.sdc_id, previous + 1, number, sale_id],
                )
                .map_err(database)?;
                tracing::error!(sdc_id = %receipt.sdc_id, expected = previous + 1, found = number, "receipt numbers skipped a number");
            }
            tx.prepare_cached("INSERT INTO receipts (tenant_id, branch_id, sdc_id, rcpt_no, sale_id) VALUES (?1, ?2, ?3, ?4, ?5)").map_err(database)?.execute(
                params![scope.tenant.0, scope.branch.0, receipt.sdc_id, to_i64(receipt.tot_rcpt_no, "rcpt_no")?, sale_id],
            )
            .map_err(|e| {
                if unique_violation(&e, "receipts.sdc_id") {
                    StoreError::DuplicateReceipt { sdc_id: receipt.sdc_id.clone(), rcpt_no: receipt.tot_rcpt_no }
                } else {
                    database(e)
                }
            })?;
            tx.prepare_cached("UPDATE sales SET status = 'SIGNED', cur_rcpt_no = ?1, tot_rcpt_no = ?2, intrl_data = ?3, rcpt_sign = ?4,
                     sdc_date_time = ?5, sdc_id = ?6, mrc_no = ?7, signed_at = ?8
                 WHERE id = ?9 AND tenant_id = ?10 AND branch_id = ?11").map_err(database)?.execute(
                params![
                    to_i64(receipt.cur_rcpt_no, "cur_rcpt_no")?,
                    to_i64(receipt.tot_rcpt_no, "tot_rcpt_no")?,
                    receipt.intrl_data,
                    receipt.rcpt_sign,
                    receipt.sdc_date_time,
                    receipt.sdc_id,
                    receipt.mrc_no,
                    timestamp(now),
                    sale_id,
                    scope.tenant.0,
                    scope.branch.0
                ],
            )
            .map_err(database)?;
            if let Some(exchange) = &exchange {
                insert_exchange(&tx, scope, exchange, None, now)?;
            }
            let sale = read_sale(&tx, scope, SaleId(sale_id))?.ok_or(StoreError::NotFound("sale"))?;
            // The branch's next sale, claimed in the same transaction: a busy relay goes
            // straight on, an idle one finds out it is idle without another transaction.
            let next = match &next {
                Some((hold, lease)) => claim_in(&tx, scope, hold, *lease, now)?,
                None => None,
            };
            tx.commit().map_err(database)?;
            Ok(Recorded { sale, next })
        })
        .await
    }

    pub async fn latest_sale_id_by_reference(
        &self,
        scope: Scope,
        reference: &str,
    ) -> Result<Option<SaleId>> {
        let reference = reference.to_owned();
        self.read(move |connection| {
            connection
                .prepare_cached(
                    "SELECT id FROM sales
                     WHERE tenant_id = ?1 AND branch_id = ?2 AND client_reference = ?3
                     ORDER BY id DESC LIMIT 1",
                )
                .map_err(database)?
                .query_row(params![scope.tenant.0, scope.branch.0, reference], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()
                .map(|id| id.map(SaleId))
                .map_err(database)
        })
        .await
    }

    pub async fn credit_note_original(&self, scope: Scope, note: SaleId) -> Result<Option<SaleId>> {
        self.read(move |connection| {
            connection.prepare_cached("SELECT original_sale_id FROM credit_notes WHERE sale_id = ?1 AND tenant_id = ?2 AND branch_id = ?3").map_err(database)?.query_row(
                    params![note.0, scope.tenant.0, scope.branch.0],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|id| id.map(SaleId))
                .map_err(database)
        })
        .await
    }

    pub async fn sale_lines(&self, scope: Scope, sale: SaleId) -> Result<Vec<SaleLine>> {
        self.read(move |connection| read_lines(connection, scope, sale))
            .await
    }

    pub async fn sale(&self, scope: Scope, id: SaleId) -> Result<Option<SaleRecord>> {
        self.read(move |connection| read_sale(connection, scope, id))
            .await
    }

    pub async fn release(
        &self,
        claim: &Claim,
        retry_at: DateTime<Utc>,
        maybe_sent: bool,
        status: SaleStatus,
    ) -> Result<()> {
        let claim = claim.clone();
        self.run(move |connection| {
            let tx = connection.savepoint().map_err(database)?;
            let scope = claim.scope;
            let released = tx.prepare_cached("UPDATE outbox SET lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = ?1, maybe_sent = ?2
                     WHERE id = ?3 AND tenant_id = ?4 AND branch_id = ?5 AND state = 'PENDING' AND lease_owner = ?6").map_err(database)?.execute(
                    params![timestamp(retry_at), maybe_sent, claim.outbox_id, scope.tenant.0, scope.branch.0, claim.owner],
                )
                .map_err(database)?;
            if released == 0 {
                return Err(StoreError::NotFound("claimed outbox row"));
            }
            tx.prepare_cached("UPDATE sales SET status = ?1 WHERE id = ?2 AND tenant_id = ?3 AND branch_id = ?4").map_err(database)?.execute(
                params![status.as_str(), claim.sale.0, scope.tenant.0, scope.branch.0],
            )
            .map_err(database)?;
            tx.commit().map_err(database)
        })
        .await
    }

    pub async fn settle(&self, claim: &Claim, settlement: &Settlement) -> Result<()> {
        let (claim, settlement) = (claim.clone(), settlement.clone());
        self.run(move |connection| {
            let tx = connection.savepoint().map_err(database)?;
            let scope = claim.scope;
            let (state, code, message) = match &settlement {
                Settlement::Failed { code, message } => ("FAILED", Some(code.as_str()), message.as_str()),
                Settlement::Unresolved { message } => ("RECONCILIATION_REQUIRED", None, message.as_str()),
                Settlement::Quarantined { message } => ("QUARANTINED", Some("PAYLOAD_MISMATCH"), message.as_str()),
            };
            let settled = tx.prepare_cached("UPDATE outbox SET state = ?1, lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = ?2 AND tenant_id = ?3 AND branch_id = ?4 AND state = 'PENDING' AND lease_owner = ?5").map_err(database)?.execute(
                    params![state, claim.outbox_id, scope.tenant.0, scope.branch.0, claim.owner],
                )
                .map_err(database)?;
            if settled == 0 {
                return Err(StoreError::NotFound("pending outbox row"));
            }
            tx.prepare_cached("UPDATE sales SET status = ?1, failure_code = ?2, failure_message = ?3 WHERE id = ?4 AND tenant_id = ?5 AND branch_id = ?6").map_err(database)?.execute(
                                params![sale_status_of(state), code, message, claim.sale.0, scope.tenant.0, scope.branch.0],
            )
            .map_err(database)?;
            if gives_number_back(&claim, &settlement) {
                release_number(&tx, scope, claim.sale.0, claim.invc_no)?;
            }
            tx.commit().map_err(database)
        })
        .await
    }

    pub async fn record_exchange(
        &self,
        scope: Scope,
        exchange: &ExchangeRecord,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let exchange = exchange.clone();
        self.run(move |connection| insert_exchange(connection, scope, &exchange, None, now))
            .await
    }

    pub async fn exchanges(&self, scope: Scope, sale: SaleId) -> Result<Vec<ExchangeRecord>> {
        self.read(move |connection| {
            read_exchanges(connection, scope, "sale_id", sale.0, Some(sale))
        })
        .await
    }

    pub async fn record_finding(
        &self,
        scope: Scope,
        finding: &SequenceFinding,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let finding = finding.clone();
        self.run(move |connection| {
            connection.prepare_cached("INSERT INTO sequence_findings (tenant_id, branch_id, sdc_id, kind, expected, found, sale_id, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)").map_err(database)?.execute(
                    params![
                        scope.tenant.0,
                        scope.branch.0,
                        finding.sdc_id,
                        finding.kind.as_str(),
                        finding.expected.map(|e| to_i64(e, "expected")).transpose()?,
                        to_i64(finding.found, "found")?,
                        finding.sale.map(|s| s.0),
                        timestamp(now)
                    ],
                )
                .map_err(database)?;
            Ok(())
        })
        .await
    }

    pub async fn findings(&self, scope: Scope) -> Result<Vec<SequenceFinding>> {
        self.read(move |connection| {
            let mut statement = connection
                .prepare(
                    "SELECT sdc_id, kind, expected, found, sale_id FROM sequence_findings
                     WHERE tenant_id = ?1 AND branch_id = ?2 ORDER BY id",
                )
                .map_err(database)?;
            let rows = statement
                .query_map(params![scope.tenant.0, scope.branch.0], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })
                .map_err(database)?;
            rows.map(|row| {
                let (sdc_id, kind, expected, found, sale) = row.map_err(database)?;
                Ok(SequenceFinding {
                    sdc_id,
                    kind: FindingKind::parse(&kind)
                        .ok_or_else(|| StoreError::Corrupt(format!("finding kind {kind:?}")))?,
                    expected: expected.map(|e| to_u64(e, "expected")).transpose()?,
                    found: to_u64(found, "found")?,
                    sale: sale.map(SaleId),
                })
            })
            .collect()
        })
        .await
    }
}

impl SqliteStore {
    pub async fn insert_api_key(
        &self,
        scope: Scope,
        name: &str,
        prefix: &str,
        sha256: &str,
    ) -> Result<ApiKey> {
        let (name, prefix, sha256) = (name.to_owned(), prefix.to_owned(), sha256.to_owned());
        self.run(move |connection| {
            let id: i64 = connection.prepare_cached("INSERT INTO api_keys (tenant_id, branch_id, prefix, key_sha256, name) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id").map_err(database)?.query_row(
                    params![scope.tenant.0, scope.branch.0, prefix, sha256, name],
                    |r| r.get(0),
                )
                .map_err(database)?;
            Ok(ApiKey { id, scope, prefix, name })
        })
        .await
    }

    pub async fn authenticate(&self, sha256: &str, now: DateTime<Utc>) -> Result<Option<ApiKey>> {
        let sha256 = sha256.to_owned();
        let found = self
            .read(move |connection| {
                let row = connection
                    .prepare_cached(
                        "SELECT id, tenant_id, branch_id, prefix, name, last_used_at FROM api_keys
                     WHERE key_sha256 = ?1 AND revoked_at IS NULL",
                    )
                    .map_err(database)?
                    .query_row(params![sha256], |r| {
                        Ok((
                            ApiKey {
                                id: r.get(0)?,
                                scope: Scope {
                                    tenant: TenantId(r.get(1)?),
                                    branch: BranchId(r.get(2)?),
                                },
                                prefix: r.get(3)?,
                                name: r.get(4)?,
                            },
                            r.get::<_, Option<String>>(5)?,
                        ))
                    })
                    .optional()
                    .map_err(database)?;
                let Some((key, last_used)) = row else {
                    return Ok(None);
                };
                let last_used = last_used.as_deref().map(parse_timestamp).transpose()?;
                Ok(Some((key, last_used_is_stale(last_used, now))))
            })
            .await?;
        let Some((key, stale)) = found else {
            return Ok(None);
        };
        if stale {
            let id = key.id;
            self.run(move |connection| {
                connection
                    .prepare_cached("UPDATE api_keys SET last_used_at = ?1 WHERE id = ?2")
                    .map_err(database)?
                    .execute(params![timestamp(now), id])
                    .map_err(database)?;
                Ok(())
            })
            .await?;
        }
        Ok(Some(key))
    }

    pub async fn revoke_api_key(&self, scope: Scope, id: i64, now: DateTime<Utc>) -> Result<()> {
        self.run(move |connection| {
            let revoked = connection.prepare_cached("UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND tenant_id = ?3 AND branch_id = ?4 AND revoked_at IS NULL").map_err(database)?.execute(
                    params![timestamp(now), id, scope.tenant.0, scope.branch.0],
                )
                .map_err(database)?;
            if revoked == 0 { Err(StoreError::NotFound("live API key")) } else { Ok(()) }
        })
        .await
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
        let (key, request_sha256) = (key.to_owned(), request_sha256.to_owned());
        self.run(move |connection| {
            let tx = connection.savepoint().map_err(database)?;
            let start = begin_in(&tx, tenant, &key, &request_sha256, now, in_flight_for, keep)?;
            if start == IdempotencyStart::Started {
                tx.commit().map_err(database)?;
            }
            Ok(start)
        })
        .await
    }

    pub async fn accept_sale_once(
        &self,
        scope: Scope,
        request: IdempotentRequest,
        mut sale: NewSale,
        build: PayloadBuilder,
    ) -> Result<IdempotentAccept> {
        self.run(move |connection| {
            let tx = connection.savepoint().map_err(database)?;
            let start = begin_in(
                &tx,
                scope.tenant,
                &request.key,
                &request.request_sha256,
                request.now,
                request.in_flight_for,
                request.keep,
            )?;
            if start != IdempotencyStart::Started {
                return Ok(IdempotentAccept::Decided(start));
            }
            sale.idempotency_key = Some(request.key);
            let invc_no = next_invc_no(&tx, scope)?;
            let payload = build_payload(build, invc_no)?;
            let sale_id = insert_sale(&tx, scope, invc_no, &sale, &payload, "S")?;
            tx.commit().map_err(database)?;
            Ok(IdempotentAccept::Accepted(AcceptedSale {
                sale: SaleId(sale_id),
                invc_no,
            }))
        })
        .await
    }

    pub async fn finish_idempotent(
        &self,
        tenant: TenantId,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        let (key, body) = (key.to_owned(), body.to_owned());
        self.run(move |connection| {
            let finished = connection
                .prepare_cached(
                    "UPDATE idempotency_keys SET response_status = ?1, response_body = ?2
                     WHERE tenant_id = ?3 AND key = ?4 AND response_status IS NULL",
                )
                .map_err(database)?
                .execute(params![status, body, tenant.0, key])
                .map_err(database)?;
            if finished == 0 {
                Err(StoreError::NotFound("running idempotent request"))
            } else {
                Ok(())
            }
        })
        .await
    }

    pub async fn abandon_idempotent(&self, tenant: TenantId, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.run(move |connection| {
            connection.prepare_cached("DELETE FROM idempotency_keys WHERE tenant_id = ?1 AND key = ?2 AND response_status IS NULL").map_err(database)?.execute( params![tenant.0, key])
                .map_err(database)?;
            Ok(())
        })
        .await
    }

    pub async fn purge_idempotency(&self, now: DateTime<Utc>) -> Result<u64> {
        self.run(move |connection| {
            let purged = connection
                .prepare_cached("DELETE FROM idempotency_keys WHERE expires_at <= ?1")
                .map_err(database)?
                .execute([timestamp(now)])
                .map_err(database)?;
            Ok(purged as u64)
        })
        .await
    }
}

impl SqliteStore {
    pub async fn item_registered(&self, scope: Scope, item_cd: &str) -> Result<bool> {
        let item_cd = item_cd.to_owned();
        self.read(move |connection| {
            connection.prepare_cached("SELECT 1 FROM registered_items WHERE tenant_id = ?1 AND branch_id = ?2 AND item_cd = ?3").map_err(database)?.query_row(
                    params![scope.tenant.0, scope.branch.0, item_cd],
                    |_| Ok(()),
                )
                .optional()
                .map(|found| found.is_some())
                .map_err(database)
        })
        .await
    }

    pub async fn mark_item_registered(
        &self,
        scope: Scope,
        item_cd: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let item_cd = item_cd.to_owned();
        self.run(move |connection| {
            connection.prepare_cached("INSERT INTO registered_items (tenant_id, branch_id, item_cd, registered_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (branch_id, item_cd) DO NOTHING").map_err(database)?.execute(
                    params![scope.tenant.0, scope.branch.0, item_cd, timestamp(now)],
                )
                .map_err(database)?;
            Ok(())
        })
        .await
    }
}

impl SqliteStore {
    pub async fn tenant_by_tin(&self, tin: &str) -> Result<Option<Tenant>> {
        let tin = tin.to_owned();
        self.read(move |connection| {
            connection
                .prepare_cached("SELECT id, name FROM tenants WHERE tin = ?1")
                .map_err(database)?
                .query_row([&tin], |r| {
                    Ok(Tenant {
                        id: TenantId(r.get(0)?),
                        tin: tin.clone(),
                        name: r.get(1)?,
                    })
                })
                .optional()
                .map_err(database)
        })
        .await
    }

    pub async fn branch_by_id(&self, tenant: TenantId, bhf_id: &str) -> Result<Option<Branch>> {
        let bhf_id = bhf_id.to_owned();
        self.read(move |connection| {
            let row = connection
                .prepare_cached(
                    "SELECT id, last_invc_no FROM branches WHERE tenant_id = ?1 AND bhf_id = ?2",
                )
                .map_err(database)?
                .query_row(params![tenant.0, bhf_id], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()
                .map_err(database)?;
            row.map(|(id, last)| {
                Ok(Branch {
                    id: BranchId(id),
                    tenant,
                    bhf_id: bhf_id.clone(),
                    last_invc_no: to_u64(last, "last_invc_no")?,
                })
            })
            .transpose()
        })
        .await
    }

    pub async fn save_device(&self, scope: Scope, device: &DeviceRecord) -> Result<()> {
        let device = device.clone();
        self.run(move |connection| {
            let key = SealedColumns::of(&device.cmc_key);
            let saved = connection.prepare_cached("UPDATE branches SET control_unit_url = ?1, control_unit_profile = ?2, sdc_id = ?3, mrc_no = ?4,
                            cmc_key = NULL, cmc_key_nonce = ?5, cmc_key_sealed = ?6, data_key_version = ?7,
                            data_key_nonce = ?8, data_key_wrapped = ?9, master_key_version = ?10
                     WHERE id = ?11 AND tenant_id = ?12").map_err(database)?.execute(
                    params![device.control_unit_url, device.profile, device.sdc_id, device.mrc_no,
                            key.nonce, key.sealed, key.data_key_version, key.data_key_nonce,
                            key.data_key_wrapped, key.master_key_version, scope.branch.0, scope.tenant.0],
                )
                .map_err(database)?;
            if saved == 0 { Err(StoreError::NotFound("branch")) } else { Ok(()) }
        })
        .await
    }

    pub async fn device(&self, scope: Scope) -> Result<Option<DeviceRecord>> {
        self.read(move |connection| {
            connection
                .prepare_cached(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM branches b WHERE id = ?1 AND tenant_id = ?2"
                ))
                .map_err(database)?
                .query_row(params![scope.branch.0, scope.tenant.0], |r| {
                    device_from_row(r, 0)
                })
                .optional()
                .map_err(database)
                // Every column may still be NULL (a branch whose device is not initialised yet).
                .map(Option::flatten)
        })
        .await
    }

    pub async fn initialised_branches(&self) -> Result<Vec<InitialisedBranch>> {
        self.read(move |connection| {
            let mut statement = connection
                .prepare(&format!(
                    "SELECT {DEVICE_COLUMNS}, b.id, b.tenant_id, t.tin, b.bhf_id
                     FROM branches b JOIN tenants t ON t.id = b.tenant_id
                     WHERE b.cmc_key_sealed IS NOT NULL
                     ORDER BY b.id"
                ))
                .map_err(database)?;
            let rows = statement
                .query_map([], |r| {
                    let Some(device) = device_from_row(r, 0)? else {
                        return Ok(None);
                    };
                    Ok(Some(InitialisedBranch {
                        device,
                        scope: Scope {
                            tenant: TenantId(r.get(11)?),
                            branch: BranchId(r.get(10)?),
                        },
                        tin: r.get(12)?,
                        bhf_id: r.get(13)?,
                    }))
                })
                .map_err(database)?;
            let rows = rows
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(database)?;
            Ok(rows.into_iter().flatten().collect())
        })
        .await
    }

    pub async fn plaintext_cmc_keys(&self) -> Result<Vec<PlaintextCmcKey>> {
        self.read(move |connection| {
            let mut statement = connection
                .prepare("SELECT tenant_id, id, cmc_key FROM branches WHERE cmc_key IS NOT NULL ORDER BY id")
                .map_err(database)?;
            let rows = statement
                .query_map([], |r| {
                    Ok(PlaintextCmcKey {
                        scope: Scope {
                            tenant: TenantId(r.get(0)?),
                            branch: BranchId(r.get(1)?),
                        },
                        cmc_key: zeroize::Zeroizing::new(r.get(2)?),
                    })
                })
                .map_err(database)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(database)
        })
        .await
    }

    pub async fn seal_plaintext_cmc_key(
        &self,
        scope: Scope,
        sealed: &SealedCmcKey,
    ) -> Result<bool> {
        let key = SealedColumns::of(sealed);
        self.run(move |connection| {
            let sealed_now = connection
                .execute(
                    "UPDATE branches SET cmc_key = NULL, cmc_key_nonce = ?1, cmc_key_sealed = ?2,
                            data_key_version = ?3, data_key_nonce = ?4, data_key_wrapped = ?5,
                            master_key_version = ?6
                     WHERE id = ?7 AND tenant_id = ?8 AND cmc_key IS NOT NULL",
                    params![
                        key.nonce,
                        key.sealed,
                        key.data_key_version,
                        key.data_key_nonce,
                        key.data_key_wrapped,
                        key.master_key_version,
                        scope.branch.0,
                        scope.tenant.0
                    ],
                )
                .map_err(database)?;
            Ok(sealed_now == 1)
        })
        .await
    }
}

/// One sale of a scope, read on a connection or inside a transaction.
/// `flock(LOCK_EX | LOCK_NB)`: `false` when another open file description has the lock.
#[cfg(unix)]
fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    use rustix::fs::{FlockOperation, flock};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Elsewhere there is no lock file: one process per database is then the operator's duty.
#[cfg(not(unix))]
fn try_lock_exclusive(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// Claims the branch's head row for `hold`, in the caller's transaction, if it is ready:
/// not backing off and not under a live lease of this same hold.
fn claim_in(
    tx: &Connection,
    scope: Scope,
    hold: &Hold,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Option<Claim>> {
    let head = tx.prepare_cached("SELECT id, sale_id, invc_no, payload, payload_sha256, attempts, lease_owner, lease_expires_at,
                            next_attempt_at, maybe_sent
                     FROM outbox WHERE tenant_id = ?1 AND branch_id = ?2 AND state = 'PENDING'
                     ORDER BY invc_no LIMIT 1").map_err(database)?.query_row(
                    params![scope.tenant.0, scope.branch.0],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, Option<String>>(6)?,
                            r.get::<_, Option<String>>(7)?,
                            r.get::<_, Option<String>>(8)?,
                            r.get::<_, bool>(9)?,
                        ))
                    },
                )
                .optional()
                .map_err(database)?;
    let Some((
        id,
        sale_id,
        invc_no,
        body,
        sha256,
        attempts,
        lease_owner,
        lease_expires,
        next_attempt,
        maybe_sent,
    )) = head
    else {
        return Ok(None);
    };
    if let Some(next_attempt) = next_attempt
        && parse_timestamp(&next_attempt)? > now
    {
        return Ok(None); // backing off after a call that was not sent
    }
    let held_until = lease_expires.as_deref().map(parse_timestamp).transpose()?;
    if !hold.may_claim(lease_owner.as_deref(), held_until, now) {
        return Ok(None); // the branch's head row is being sent under this hold's live lease
    }
    let expires = lease_until(now, lease);
    let token = hold.lease_token();
    // From this claim on, the payload may reach the control unit.
    tx.prepare_cached("UPDATE outbox SET lease_owner = ?1, lease_expires_at = ?2, attempts = attempts + 1, maybe_sent = TRUE
                 WHERE id = ?3").map_err(database)?.execute(
                                params![token, timestamp(expires), id],
            )
            .map_err(database)?;
    Ok(Some(Claim {
        outbox_id: id,
        scope,
        sale: SaleId(sale_id),
        invc_no: to_u64(invc_no, "invc_no")?,
        payload: OutboxPayload { body, sha256 },
        attempts: u32::try_from(attempts + 1).unwrap_or(u32::MAX),
        maybe_sent,
        owner: token,
        lease_expires_at: expires,
    }))
}

fn read_sale(connection: &Connection, scope: Scope, id: SaleId) -> Result<Option<SaleRecord>> {
    let row = connection.prepare_cached("SELECT COALESCE(refused_invc_no, invc_no), client_reference, status, tot_amt, sdc_id, mrc_no, cur_rcpt_no, tot_rcpt_no,
                    intrl_data, rcpt_sign, sdc_date_time, rcpt_ty_cd
             FROM sales WHERE id = ?1 AND tenant_id = ?2 AND branch_id = ?3").map_err(database)?.query_row(
            params![id.0, scope.tenant.0, scope.branch.0],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                    r.get::<_, String>(11)?,
                ))
            },
        )
        .optional()
        .map_err(database)?;
    let Some((
        invc_no,
        client_reference,
        status,
        tot_amt,
        sdc_id,
        mrc_no,
        cur,
        tot,
        intrl,
        sign,
        at,
        rcpt_ty_cd,
    )) = row
    else {
        return Ok(None);
    };
    let receipt = match (sdc_id, cur, tot, intrl, sign, at) {
        (
            Some(sdc_id),
            Some(cur),
            Some(tot),
            Some(intrl_data),
            Some(rcpt_sign),
            Some(sdc_date_time),
        ) => Some(Receipt {
            sdc_id,
            mrc_no,
            cur_rcpt_no: to_u64(cur, "cur_rcpt_no")?,
            tot_rcpt_no: to_u64(tot, "tot_rcpt_no")?,
            intrl_data,
            rcpt_sign,
            sdc_date_time,
        }),
        _ => None,
    };
    Ok(Some(SaleRecord {
        id,
        scope,
        invc_no: to_u64(invc_no, "invc_no")?,
        client_reference,
        status: SaleStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("sale status {status:?}")))?,
        tot_amt: money_from_text(&tot_amt)?,
        receipt,
        rcpt_ty_cd,
    }))
}

/// A sale's lines in `itemSeq` order.
fn read_lines(connection: &Connection, scope: Scope, sale: SaleId) -> Result<Vec<SaleLine>> {
    let mut statement = connection
        .prepare_cached(
            "SELECT item_seq, item_cd, item_nm, tax_ty_cd, qty, uprc, dc_amt, taxbl_amt, tax_amt, tot_amt,
                    original_item_seq
             FROM sale_lines WHERE sale_id = ?1 AND tenant_id = ?2 AND branch_id = ?3 ORDER BY item_seq",
        )
        .map_err(database)?;
    let rows = statement
        .query_map(params![sale.0, scope.tenant.0, scope.branch.0], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                [
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                ],
                r.get::<_, Option<u32>>(10)?,
            ))
        })
        .map_err(database)?;
    let mut lines = Vec::new();
    for row in rows {
        let (
            item_seq,
            item_cd,
            item_nm,
            tax_ty_cd,
            [qty, uprc, dc, taxbl, tax, tot],
            original_item_seq,
        ) = row.map_err(database)?;
        lines.push(SaleLine {
            item_seq,
            item_cd,
            item_nm,
            tax_ty_cd,
            qty: quantity_from_text(&qty)?,
            uprc: money_from_text(&uprc)?,
            dc_amt: money_from_text(&dc)?,
            taxbl_amt: money_from_text(&taxbl)?,
            tax_amt: money_from_text(&tax)?,
            tot_amt: money_from_text(&tot)?,
            original_item_seq,
        });
    }
    Ok(lines)
}

/// Takes the branch's next `invcNo` inside the caller's transaction.
/// Keeps a call in the journal, linked to its sale (if any) or its operation.
fn insert_exchange(
    connection: &Connection,
    scope: Scope,
    exchange: &ExchangeRecord,
    operation: Option<i64>,
    now: DateTime<Utc>,
) -> Result<()> {
    connection.prepare_cached("INSERT INTO exchanges (tenant_id, branch_id, sale_id, operation_id, endpoint, attempt, request_body,
                                    response_body, http_status, outcome, elapsed_ms, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)").map_err(database)?.execute(
            params![
                scope.tenant.0,
                scope.branch.0,
                exchange.sale.map(|s| s.0),
                operation,
                exchange.endpoint,
                attempt_number(exchange.attempt),
                exchange.request_body,
                exchange.response_body,
                exchange.http_status,
                exchange.outcome,
                to_i64(exchange.elapsed_ms, "elapsed_ms")?,
                timestamp(now)
            ],
        )
        .map_err(database)?;
    Ok(())
}

/// The calls of one sale or operation (`column` is `sale_id` or `operation_id`), oldest
/// first.
fn read_exchanges(
    connection: &Connection,
    scope: Scope,
    column: &str,
    id: i64,
    sale: Option<SaleId>,
) -> Result<Vec<ExchangeRecord>> {
    let mut statement = connection
        .prepare(&format!(
            "SELECT endpoint, attempt, request_body, response_body, http_status, outcome, elapsed_ms
             FROM exchanges WHERE tenant_id = ?1 AND branch_id = ?2 AND {column} = ?3 ORDER BY id"
        ))
        .map_err(database)?;
    let rows = statement
        .query_map(params![scope.tenant.0, scope.branch.0, id], |r| {
            Ok(ExchangeRecord {
                sale,
                endpoint: r.get(0)?,
                attempt: r.get(1)?,
                request_body: r.get(2)?,
                response_body: r.get(3)?,
                http_status: r.get(4)?,
                outcome: r.get(5)?,
                elapsed_ms: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
            })
        })
        .map_err(database)?;
    rows.collect::<std::result::Result<Vec<_>, _>>()
        .map_err(database)
}

/// The start of an Idempotency-Key request in the caller's transaction: the key's earlier
/// use decides, or the record is written (Started) for the caller to commit.
fn begin_in(
    tx: &Connection,
    tenant: TenantId,
    key: &str,
    request_sha256: &str,
    now: DateTime<Utc>,
    in_flight_for: Duration,
    keep: Duration,
) -> Result<IdempotencyStart> {
    let stored = tx.prepare_cached(&format!("SELECT k.request_sha256, k.response_status, k.response_body, k.created_at, k.expires_at,
                    k.sale_id, s.rcpt_ty_cd, {SALE_SETTLED_SQL}
             FROM idempotency_keys k LEFT JOIN sales s ON s.id = k.sale_id AND s.tenant_id = k.tenant_id
             WHERE k.tenant_id = ?1 AND k.key = ?2")).map_err(database)?.query_row(
            params![tenant.0, key],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<i64>>(5)?.zip(r.get::<_, Option<String>>(6)?).map(
                        |(sale, rcpt_ty_cd)| AcceptedUnderKey {
                            sale,
                            rcpt_ty_cd,
                            settled: false,
                        },
                    ),
                    r.get::<_, Option<bool>>(7)?.unwrap_or(false),
                ))
            },
        )
        .optional()
        .map_err(database)?;
    if let Some((stored_sha256, status, body, created, expires, accepted, settled)) = stored
        && parse_timestamp(&expires)? > now
    {
        let answer = status
            .zip(body)
            .map(|(s, b)| (u16::try_from(s).unwrap_or(500), b));
        if let Some(decision) = idempotency_decision(
            &stored_sha256,
            request_sha256,
            answer,
            parse_timestamp(&created)?,
            now,
            in_flight_for,
            accepted.map(|a| AcceptedUnderKey { settled, ..a }),
        ) {
            return Ok(decision);
        }
    }
    tx.prepare_cached("INSERT INTO idempotency_keys (tenant_id, key, request_sha256, response_status, response_body, created_at, expires_at)
         VALUES (?1, ?2, ?3, NULL, NULL, ?4, ?5)
         ON CONFLICT (tenant_id, key) DO UPDATE SET request_sha256 = excluded.request_sha256, response_status = NULL,
             response_body = NULL, created_at = excluded.created_at, expires_at = excluded.expires_at, sale_id = NULL").map_err(database)?.execute(
        params![tenant.0, key, request_sha256, timestamp(now), timestamp(lease_until(now, keep))],
    )
    .map_err(database)?;
    Ok(IdempotencyStart::Started)
}

/// Gives a refused sale's number back (see `plan_release`), in the caller's transaction.
fn release_number(tx: &Connection, scope: Scope, sale_id: i64, invc_no: u64) -> Result<()> {
    let behind = {
        let mut statement = tx
            .prepare(
                "SELECT id, sale_id, invc_no, payload FROM outbox
                 WHERE tenant_id = ?1 AND branch_id = ?2 AND state = 'PENDING' AND invc_no > ?3 ORDER BY invc_no",
            )
            .map_err(database)?;
        let rows = statement
            .query_map(
                params![scope.tenant.0, scope.branch.0, to_i64(invc_no, "invc_no")?],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .map_err(database)?;
        let mut behind = Vec::new();
        for row in rows {
            let (outbox_id, sale_id, number, payload) = row.map_err(database)?;
            behind.push(Behind {
                outbox_id,
                sale_id,
                invc_no: to_u64(number, "invc_no")?,
                payload,
            });
        }
        behind
    };
    let fates = plan_release(invc_no, behind)?;
    step_out_of_sequence(tx, scope, sale_id, invc_no)?;
    for fate in &fates {
        match fate {
            Fate::Fail {
                outbox_id,
                sale_id,
                invc_no,
                message,
            } => {
                tx.prepare_cached("UPDATE outbox SET state = 'FAILED' WHERE id = ?1 AND tenant_id = ?2 AND branch_id = ?3").map_err(database)?.execute(
                    params![outbox_id, scope.tenant.0, scope.branch.0],
                )
                .map_err(database)?;
                tx.prepare_cached("UPDATE sales SET status = 'FAILED', failure_code = 'ORIGINAL_REFUSED', failure_message = ?1
                     WHERE id = ?2 AND tenant_id = ?3 AND branch_id = ?4").map_err(database)?.execute(
                    params![message, sale_id, scope.tenant.0, scope.branch.0],
                )
                .map_err(database)?;
                step_out_of_sequence(tx, scope, *sale_id, *invc_no)?;
            }
            Fate::Renumber {
                outbox_id,
                sale_id,
                invc_no,
                payload,
            } => {
                let number = to_i64(*invc_no, "invc_no")?;
                tx.prepare_cached("UPDATE outbox SET invc_no = ?1, payload = ?2, payload_sha256 = ?3 WHERE id = ?4 AND tenant_id = ?5 AND branch_id = ?6").map_err(database)?.execute(
                    params![number, payload.body, payload.sha256, outbox_id, scope.tenant.0, scope.branch.0],
                )
                .map_err(database)?;
                tx.prepare_cached("UPDATE sales SET invc_no = ?1 WHERE id = ?2 AND tenant_id = ?3 AND branch_id = ?4").map_err(database)?.execute(
                    params![number, sale_id, scope.tenant.0, scope.branch.0],
                )
                .map_err(database)?;
            }
        }
    }
    tx.prepare_cached(
        "UPDATE branches SET last_invc_no = last_invc_no - ?1 WHERE id = ?2 AND tenant_id = ?3",
    )
    .map_err(database)?
    .execute(params![
        released_count(&fates),
        scope.branch.0,
        scope.tenant.0
    ])
    .map_err(database)?;
    Ok(())
}

/// Moves a sale and its outbox row out of the numbered sequence (to -id), keeping the
/// number it was refused under.
fn step_out_of_sequence(tx: &Connection, scope: Scope, sale_id: i64, invc_no: u64) -> Result<()> {
    tx.prepare_cached("UPDATE sales SET refused_invc_no = ?1, invc_no = -id WHERE id = ?2 AND tenant_id = ?3 AND branch_id = ?4").map_err(database)?.execute(
        params![to_i64(invc_no, "invc_no")?, sale_id, scope.tenant.0, scope.branch.0],
    )
    .map_err(database)?;
    tx.prepare_cached("UPDATE outbox SET invc_no = -sale_id WHERE sale_id = ?1 AND tenant_id = ?2 AND branch_id = ?3").map_err(database)?.execute(
        params![sale_id, scope.tenant.0, scope.branch.0],
    )
    .map_err(database)?;
    Ok(())
}

fn next_invc_no(tx: &Connection, scope: Scope) -> Result<u64> {
    let invc_no: i64 = tx.prepare_cached("UPDATE branches SET last_invc_no = last_invc_no + 1 WHERE id = ?1 AND tenant_id = ?2 RETURNING last_invc_no").map_err(database)?.query_row(
            params![scope.branch.0, scope.tenant.0],
            |r| r.get(0),
        )
        .optional()
        .map_err(database)?
        .ok_or(StoreError::NotFound("branch"))?;
    to_u64(invc_no, "invc_no")
}

/// Writes a sale or credit note, its lines and its outbox row (phase 1's rows).
fn insert_sale(
    tx: &Connection,
    scope: Scope,
    invc_no: u64,
    sale: &NewSale,
    payload: &OutboxPayload,
    rcpt_ty_cd: &str,
) -> Result<i64> {
    let number = to_i64(invc_no, "invc_no")?;
    let sale_id: i64 = tx.prepare_cached("INSERT INTO sales (tenant_id, branch_id, invc_no, client_reference, status, tot_amt, rcpt_ty_cd)
             VALUES (?1, ?2, ?3, ?4, 'PENDING_SYNC', ?5, ?6) RETURNING id").map_err(database)?.query_row(
            params![scope.tenant.0, scope.branch.0, number, sale.client_reference, money_text(sale.tot_amt), rcpt_ty_cd],
            |r| r.get(0),
        )
        .map_err(database)?;
    let mut insert_line = tx
        .prepare_cached(
            "INSERT INTO sale_lines (tenant_id, branch_id, sale_id, item_seq, item_cd, item_nm, tax_ty_cd,
                                     qty, uprc, dc_amt, taxbl_amt, tax_amt, tot_amt, original_item_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .map_err(database)?;
    for line in &sale.lines {
        insert_line
            .execute(params![
                scope.tenant.0,
                scope.branch.0,
                sale_id,
                line.item_seq,
                line.item_cd,
                line.item_nm,
                line.tax_ty_cd,
                line.qty.to_string(),
                money_text(line.uprc),
                money_text(line.dc_amt),
                money_text(line.taxbl_amt),
                money_text(line.tax_amt),
                money_text(line.tot_amt),
                line.original_item_seq
            ])
            .map_err(database)?;
    }
    tx.prepare_cached("INSERT INTO outbox (tenant_id, branch_id, sale_id, invc_no, payload, payload_sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6)").map_err(database)?.execute(
        params![scope.tenant.0, scope.branch.0, sale_id, number, payload.body, payload.sha256],
    )
    .map_err(database)?;
    if let Some(key) = &sale.idempotency_key {
        tx.prepare_cached(
            "UPDATE idempotency_keys SET sale_id = ?1 WHERE tenant_id = ?2 AND key = ?3",
        )
        .map_err(database)?
        .execute(params![sale_id, scope.tenant.0, key])
        .map_err(database)?;
    }
    Ok(sale_id)
}
mod operations;
mod security;

/// The device columns [`device_from_row`] reads, in its order (`b` is `branches`).
const DEVICE_COLUMNS: &str = "b.control_unit_url, b.control_unit_profile, b.sdc_id, b.mrc_no,
    b.cmc_key_nonce, b.cmc_key_sealed, b.data_key_version, b.data_key_nonce, b.data_key_wrapped,
    b.master_key_version";

/// The device columns from `first` on; None while any is NULL (not initialised).
fn device_from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Option<DeviceRecord>> {
    let text = |i: usize| r.get::<_, Option<String>>(first + i);
    let bytes = |i: usize| r.get::<_, Option<Vec<u8>>>(first + i);
    let version = |i: usize| r.get::<_, Option<i64>>(first + i);
    let (Some(control_unit_url), Some(profile), Some(sdc_id), Some(mrc_no)) =
        (text(0)?, text(1)?, text(2)?, text(3)?)
    else {
        return Ok(None);
    };
    let (
        Some(nonce),
        Some(sealed),
        Some(data_key_version),
        Some(data_key_nonce),
        Some(data_key_wrapped),
        Some(master_key_version),
    ) = (
        bytes(4)?,
        bytes(5)?,
        version(6)?,
        bytes(7)?,
        bytes(8)?,
        version(9)?,
    )
    else {
        return Ok(None);
    };
    let cmc_key = SealedColumns {
        nonce,
        sealed,
        data_key_version,
        data_key_nonce,
        data_key_wrapped,
        master_key_version,
    }
    .into_key();
    Ok(cmc_key.map(|cmc_key| DeviceRecord {
        control_unit_url,
        profile,
        sdc_id,
        mrc_no,
        cmc_key,
    }))
}
