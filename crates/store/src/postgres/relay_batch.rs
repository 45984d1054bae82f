//! Phases 2 and 3 of many branches, several to one transaction.
//!
//! Every branch's relay claims its next sale and records each receipt in a transaction of
//! its own. With 50 busy branches that was two transactions per sale, each `BEGIN`, the
//! scope's `set_config`, one or two statements and a `COMMIT` with its WAL flush, and
//! measured, that per-transaction work, not the rows, was most of what PostgreSQL spent
//! on phases 2 and 3. Here the claims and receipts that arrive while a transaction is under
//! way wait for the next one, and that one runs them all, sent together behind one `BEGIN`
//! and ahead of one `COMMIT`. Within it, the jobs are split into runs of one tenant's
//! distinct branches ([`chunks_of_distinct_branches`]); a run's receipts are recorded by
//! one statement ([`record_many_sql`]) and then its claims, the chained ones included, by
//! another ([`CLAIM_MANY_SQL`]): the single statements' rules with arrays, since the
//! per-statement work was, after the per-transaction work, the next largest share.
//!
//! What each relay gets is what a transaction of its own would give it, because:
//! - each job's rows are written and read under the rules of its own statements
//!   ([`record_sql`], [`CLAIM_SQL`]), and every condition and value names the job's own
//!   tenant and branch. Row-level security is set to the tenant with a `set_config`
//!   before the tenant's first run (jobs of several tenants may share a transaction,
//!   sorted by tenant: a statement sees only the tenant set last), as phase 1's batches
//!   are; the branch is left unset, since setting it per job cost about 8 % of the
//!   pipeline's throughput in interleaved runs;
//! - a branch has one relay, with one claim or receipt under way at a time, so no two jobs
//!   of a batch touch the same rows unless something is misconfigured, and then they go to
//!   successive runs, each seeing the one before; a job's chained claim comes after its
//!   receipt, in the statement after it;
//! - when a statement fails on the server, PostgreSQL rolls the whole transaction back (its
//!   `COMMIT` answers as a rollback) and every job runs again on its own, so each gets its
//!   own answer, the receipt whose number is taken its [`StoreError::DuplicateReceipt`];
//! - when anything else fails (the connection, or an error raised in this process, after
//!   which the `COMMIT` may still have committed), nobody knows what took: every job gets
//!   the error, as a transaction of its own would have;
//! - each job's answer is read from its own rows: by position for a single statement, by
//!   the position in the arrays that every row of an array statement carries, whatever
//!   the other jobs' answers were.
//!
//! Invariant 8 holds: nothing here waits for the control unit; a job enters the queue
//! after its call returned, or before it starts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{
    CLAIM_SQL, ClaimParams, ENTER_SQL, RecordParams, SALE_COLUMNS, database, one_round_trip,
    query_error, record_sql, scope_settings, violated_constraint,
};
use crate::{Claim, Recorded, Result, Scope, StoreError};

/// At most this many claims and receipts in one transaction.
const MAX_BATCH: usize = 64;
/// Transactions under way at once: one is being written while the next fills.
const WRITERS: usize = 2;

enum Work {
    Claim {
        params: ClaimParams,
        answer: oneshot::Sender<Result<Option<Claim>>>,
    },
    Record {
        record: Box<RecordParams>,
        /// The branch's next sale, claimed in the same transaction.
        next: Option<ClaimParams>,
        answer: oneshot::Sender<Result<Recorded>>,
    },
}

struct Job {
    scope: Scope,
    work: Work,
}

/// The relays' queue. Its writers end when the last handle to it (the store and its
/// clones) is gone.
pub(super) struct Queue {
    jobs: mpsc::UnboundedSender<Job>,
    counts: Arc<Counts>,
}

/// What the shared transactions did, counted since the queue started.
#[derive(Default)]
struct Counts {
    array_statements: AtomicU64,
    rolled_back: AtomicU64,
}

/// How the relays' shared transactions fared since the store started (PostgreSQL only):
/// for operators reading a slow pipeline, and for the tests, which must see that the array
/// statements commit and do not merely fall back to one job at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedRelayCounts {
    /// Array statements ([`record_many_sql`], [`CLAIM_MANY_SQL`]) in transactions that
    /// committed.
    pub array_statements: u64,
    /// Shared transactions the server rolled back, whose jobs then ran one by one.
    pub rolled_back: u64,
}

/// Starts the writers on the current runtime.
pub(super) fn start(pool: Pool) -> Queue {
    let counts = Arc::new(Counts::default());
    let writer_counts = Arc::clone(&counts);
    let writer = move |pool, waiting| write(pool, waiting, Arc::clone(&writer_counts));
    Queue {
        jobs: super::start_writers(&pool, WRITERS, writer),
        counts,
    }
}

fn stopped<T>(_: T) -> StoreError {
    StoreError::Database(
        "the relays' writer stopped before answering (the process is shutting down, or the writer failed)"
            .into(),
    )
}

impl Queue {
    pub(super) fn counts(&self) -> SharedRelayCounts {
        SharedRelayCounts {
            array_statements: self.counts.array_statements.load(Ordering::Relaxed),
            rolled_back: self.counts.rolled_back.load(Ordering::Relaxed),
        }
    }

    /// Claims the branch's oldest pending sale ([`CLAIM_SQL`]).
    pub(super) async fn claim(&self, scope: Scope, params: ClaimParams) -> Result<Option<Claim>> {
        let (answer, answered) = oneshot::channel();
        let work = Work::Claim { params, answer };
        self.jobs.send(Job { scope, work }).map_err(stopped)?;
        answered.await.map_err(stopped)?
    }

    /// Records a receipt ([`record_sql`]) and, with `next`, claims the branch's next sale.
    pub(super) async fn record(
        &self,
        scope: Scope,
        record: RecordParams,
        next: Option<ClaimParams>,
    ) -> Result<Recorded> {
        let (answer, answered) = oneshot::channel();
        let work = Work::Record {
            record: Box::new(record),
            next,
            answer,
        };
        self.jobs.send(Job { scope, work }).map_err(stopped)?;
        answered.await.map_err(stopped)?
    }
}

/// One writer: takes whatever is queued (at least one job), runs it, and goes again.
async fn write(pool: Pool, waiting: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>, counts: Arc<Counts>) {
    loop {
        let Some(jobs) = super::next_batch(&waiting, MAX_BATCH).await else {
            return;
        };
        if jobs.len() == 1 {
            for job in jobs {
                alone(&pool, job).await;
            }
        } else {
            together(&pool, jobs, &counts).await;
        }
    }
}

/// Runs one job in a transaction of its own, in its branch's scope, and answers it.
async fn alone(pool: &Pool, job: Job) {
    let scope = job.scope;
    match job.work {
        Work::Claim { params, answer } => {
            let _ = answer.send(claim_alone(pool, scope, params).await);
        }
        Work::Record {
            record,
            next,
            answer,
        } => {
            let _ = answer.send(record_alone(pool, scope, *record, next).await);
        }
    }
}

async fn claim_alone(pool: &Pool, scope: Scope, params: ClaimParams) -> Result<Option<Claim>> {
    let client = pool.get().await.map_err(database)?;
    let statement = client
        .prepare_cached(CLAIM_SQL)
        .await
        .map_err(query_error)?;
    let row = one_round_trip(&client, scope, async {
        client
            .query_opt(&statement, &params.as_params())
            .await
            .map_err(query_error)
    })
    .await?;
    params.claim(scope, row)
}

async fn record_alone(
    pool: &Pool,
    scope: Scope,
    record: RecordParams,
    next: Option<ClaimParams>,
) -> Result<Recorded> {
    let client = pool.get().await.map_err(database)?;
    let statement = client
        .prepare_cached(record_sql(record.journal.is_some()))
        .await
        .map_err(query_error)?;
    let claim_statement = match next {
        Some(_) => Some(
            client
                .prepare_cached(CLAIM_SQL)
                .await
                .map_err(query_error)?,
        ),
        None => None,
    };
    let (signed, next_row) = one_round_trip(&client, scope, async {
        let signed = async {
            client
                .query_opt(&statement, &record.as_params())
                .await
                .map_err(|e| record.error(e))
        };
        let next = async {
            match (&claim_statement, &next) {
                (Some(statement), Some(next)) => client
                    .query_opt(statement, &next.as_params())
                    .await
                    .map_err(query_error),
                _ => Ok(None),
            }
        };
        // Both sent now, the claim after the record; the record's error comes first.
        let (signed, next) = tokio::join!(biased; signed, next);
        Ok((signed?, next?))
    })
    .await?;
    let sale = record.signed(signed)?;
    let next = match next {
        Some(next) => next.claim(scope, next_row)?,
        None => None,
    };
    Ok(Recorded { sale, next })
}

/// How a shared transaction ended when it did not commit.
enum NotCommitted {
    /// The server refused a statement, so the transaction was rolled back (or never begun):
    /// nothing was written, the jobs may run again. `number_taken`: the refusal was a
    /// receipt number recorded already, the one expected cause.
    NothingWritten {
        error: StoreError,
        number_taken: bool,
    },
    /// The connection failed, or this process refused something after sending it: the
    /// `COMMIT` may or may not have taken.
    Unknown(StoreError),
}

impl NotCommitted {
    /// A statement's error: only the server's own refusal aborts the transaction for sure.
    fn of(error: tokio_postgres::Error) -> Self {
        if error.as_db_error().is_some() {
            NotCommitted::NothingWritten {
                number_taken: violated_constraint(&error) == Some("receipts_sdc_rcpt_unique"),
                error: query_error(error),
            }
        } else {
            NotCommitted::Unknown(query_error(error))
        }
    }

    /// The first of two, the unknown outcome before the known one.
    fn worse(self, other: Self) -> Self {
        match (self, other) {
            (NotCommitted::NothingWritten { .. }, unknown @ NotCommitted::Unknown(_)) => unknown,
            (first, _) => first,
        }
    }
}

/// Runs several jobs in one transaction and answers them all.
async fn together(pool: &Pool, mut jobs: Vec<Job>, counts: &Counts) {
    // By tenant, for one `set_config` per tenant (a stable sort: no branch has two jobs
    // here, but order is kept anyway).
    jobs.sort_by_key(|job| job.scope.tenant.0);
    match run_together(pool, &jobs).await {
        Ok((rows, array_statements)) => {
            counts
                .array_statements
                .fetch_add(array_statements, Ordering::Relaxed);
            for (job, rows) in jobs.into_iter().zip(rows) {
                let scope = job.scope;
                match job.work {
                    Work::Claim { params, answer } => {
                        let _ = answer.send(params.claim(scope, rows.first));
                    }
                    Work::Record {
                        record,
                        next,
                        answer,
                    } => {
                        let recorded = record.signed(rows.first).and_then(|sale| {
                            let next = match next {
                                Some(next) => next.claim(scope, rows.second)?,
                                None => None,
                            };
                            Ok(Recorded { sale, next })
                        });
                        let _ = answer.send(recorded);
                    }
                }
            }
        }
        Err(NotCommitted::NothingWritten {
            error,
            number_taken,
        }) => {
            counts.rolled_back.fetch_add(1, Ordering::Relaxed);
            if number_taken {
                // A control unit's answer replayed or misnumbered; its own job says so.
                tracing::debug!(%error, jobs = jobs.len(), "a shared relay transaction rolled back; running its jobs one by one");
            } else {
                // Nothing the jobs themselves should cause: every shared transaction that
                // fails this way costs a round trip and then one transaction per job.
                tracing::warn!(%error, jobs = jobs.len(), "a shared relay transaction rolled back unexpectedly; running its jobs one by one");
            }
            for job in jobs {
                alone(pool, job).await;
            }
        }
        Err(NotCommitted::Unknown(error)) => {
            tracing::warn!(%error, jobs = jobs.len(), "a shared relay transaction ended unknown");
            let message = error.to_string();
            for job in jobs {
                let error = || StoreError::Database(message.clone());
                match job.work {
                    Work::Claim { answer, .. } => {
                        let _ = answer.send(Err(error()));
                    }
                    Work::Record { answer, .. } => {
                        let _ = answer.send(Err(error()));
                    }
                }
            }
        }
    }
}

/// One statement's answer: no row, one row, or (for [`record_many_sql`]) several.
type Rows = std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>;
type Statement<'a> = Pin<Box<dyn Future<Output = Rows> + Send + 'a>>;

/// Where a statement's rows go: to nobody (a `set_config`), to one job's first or second
/// answer, or (the receipts of several jobs) each row to the job its last column names.
enum Destination {
    Nobody,
    First(usize),
    Second(usize),
    /// The jobs of a [`record_many_sql`], in the order of its arrays.
    Records(Vec<usize>),
    /// The claims of a [`CLAIM_MANY_SQL`], in the order of its arrays: each its job, and
    /// whether it is the claim chained to the job's receipt.
    Claims(Vec<(usize, bool)>),
}

/// The rows each job's statements returned: its claim's or its receipt's, and the claim
/// chained to its receipt.
#[derive(Default)]
struct JobRows {
    first: Option<tokio_postgres::Row>,
    second: Option<tokio_postgres::Row>,
}

/// Phase 3 for several receipts of one tenant in one statement: [`record_sql`] with arrays,
/// one element per receipt, as phase 1's batches write their sales. Each receipt keeps
/// every rule of [`record_sql`]: its outbox row is finished only under its lease, the
/// sequence auditor's look sees the device's receipts before this statement, its sale is
/// updated only if its row was finished, and its call is journalled when it came with it.
///
/// No two receipts of one statement may be of the same branch: the auditor's look at a
/// branch's previous receipt sees the statement's snapshot, which holds neither. The
/// caller splits them ([`chunks_of_distinct_branches`]).
///
/// Returns, per receipt finished, the columns [`RecordParams::signed`] reads (as
/// [`record_sql`] returns them) and then the receipt's 1-based position in the arrays.
/// Parameters: `$1` the tenant, then one array per column of [`Receipts`].
///
/// Every column of `input`, `done` and `previous` starts with `x_`, so that
/// [`SALE_COLUMNS`], unqualified in `signed`'s `RETURNING`, can only name columns of
/// `sales`: a CTE column named like one of them would make the statement ambiguous.
fn record_many_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH input AS (
                SELECT * FROM unnest($2::int8[], $3::int8[], $4::text[], $5::text[], $6::int8[], $7::int8[],
                                     $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[],
                                     $13::text[], $14::int4[], $15::text[], $16::text[], $17::int4[],
                                     $18::text[], $19::int8[])
                    WITH ORDINALITY AS r(x_outbox, x_branch, x_owner, x_sdc, x_rcpt, x_cur, x_intrl,
                                         x_sign, x_time, x_mrc, x_at, x_endpoint, x_attempt, x_request,
                                         x_response, x_http, x_outcome, x_elapsed, x_n)),
             done AS (
                UPDATE outbox o SET state = 'DONE', lease_owner = NULL, lease_expires_at = NULL
                FROM input r
                WHERE o.id = ANY($2::int8[]) AND o.id = r.x_outbox AND o.tenant_id = $1
                  AND o.branch_id = r.x_branch AND o.state = 'PENDING' AND o.lease_owner = r.x_owner
                RETURNING r.x_n, o.sale_id AS x_sale),
             previous AS (
                SELECT r.x_n, (SELECT rc.rcpt_no FROM receipts rc
                               WHERE rc.tenant_id = $1 AND rc.branch_id = r.x_branch AND rc.sdc_id = r.x_sdc
                               ORDER BY rc.rcpt_no DESC LIMIT 1) AS x_previous
                FROM input r),
             receipt AS (
                INSERT INTO receipts (tenant_id, branch_id, sdc_id, rcpt_no, sale_id)
                SELECT $1, r.x_branch, r.x_sdc, r.x_rcpt, done.x_sale FROM done JOIN input r USING (x_n)),
             gap AS (
                INSERT INTO sequence_findings (tenant_id, branch_id, sdc_id, kind, expected, found, sale_id)
                SELECT $1, r.x_branch, r.x_sdc, 'GAP', p.x_previous + 1, r.x_rcpt, done.x_sale
                FROM done JOIN input r USING (x_n) JOIN previous p USING (x_n)
                WHERE r.x_rcpt > p.x_previous + 1),
             journal AS (
                INSERT INTO exchanges (tenant_id, branch_id, sale_id, operation_id, endpoint, attempt,
                                       request_body, response_body, http_status, outcome, elapsed_ms,
                                       created_at)
                SELECT $1, r.x_branch, done.x_sale, NULL, r.x_endpoint, r.x_attempt, r.x_request,
                       r.x_response, r.x_http, r.x_outcome, r.x_elapsed, r.x_at
                FROM done JOIN input r USING (x_n) WHERE r.x_endpoint IS NOT NULL),
             signed AS (
                UPDATE sales SET status = 'SIGNED', cur_rcpt_no = r.x_cur, tot_rcpt_no = r.x_rcpt,
                                 intrl_data = r.x_intrl, rcpt_sign = r.x_sign, sdc_date_time = r.x_time,
                                 sdc_id = r.x_sdc, mrc_no = r.x_mrc, signed_at = r.x_at
                FROM done JOIN input r USING (x_n) JOIN previous p USING (x_n)
                WHERE sales.id = done.x_sale
                RETURNING sales.id, {SALE_COLUMNS}, p.x_previous, r.x_n)
             SELECT * FROM signed"
        )
    });
    &SQL
}

/// The receipts of a [`record_many_sql`], column by column (for `unnest`).
#[derive(Default)]
struct Receipts<'a> {
    /// Each receipt's own parameters, for [`record_sql`] when it is the only one.
    each: Vec<&'a RecordParams>,
    outbox_id: Vec<i64>,
    branch: Vec<i64>,
    owner: Vec<&'a str>,
    sdc_id: Vec<&'a str>,
    rcpt_no: Vec<i64>,
    cur_rcpt_no: Vec<i64>,
    intrl_data: Vec<&'a str>,
    rcpt_sign: Vec<&'a str>,
    sdc_date_time: Vec<&'a str>,
    mrc_no: Vec<Option<&'a str>>,
    now: Vec<DateTime<Utc>>,
    /// NULL where the receipt comes without its call.
    endpoint: Vec<Option<&'a str>>,
    attempt: Vec<Option<i32>>,
    request_body: Vec<Option<&'a str>>,
    response_body: Vec<Option<&'a str>>,
    http_status: Vec<Option<i32>>,
    outcome: Vec<Option<&'a str>>,
    elapsed_ms: Vec<Option<i64>>,
}

impl<'a> Receipts<'a> {
    fn push(&mut self, r: &'a RecordParams) {
        self.each.push(r);
        self.outbox_id.push(r.outbox_id);
        self.branch.push(r.branch);
        self.owner.push(&r.owner);
        self.sdc_id.push(&r.sdc_id);
        self.rcpt_no.push(r.rcpt_no);
        self.cur_rcpt_no.push(r.cur_rcpt_no);
        self.intrl_data.push(&r.intrl_data);
        self.rcpt_sign.push(&r.rcpt_sign);
        self.sdc_date_time.push(&r.sdc_date_time);
        self.mrc_no.push(r.mrc_no.as_deref());
        self.now.push(r.now);
        let j = r.journal.as_ref();
        self.endpoint.push(j.map(|j| j.endpoint.as_str()));
        self.attempt.push(j.map(|j| j.attempt));
        self.request_body.push(j.map(|j| j.request_body.as_str()));
        self.response_body
            .push(j.and_then(|j| j.response_body.as_deref()));
        self.http_status.push(j.and_then(|j| j.http_status));
        self.outcome.push(j.map(|j| j.outcome.as_str()));
        self.elapsed_ms.push(j.map(|j| j.elapsed_ms));
    }

    /// `$2` onwards of [`record_many_sql`].
    fn as_params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 18] {
        [
            &self.outbox_id,
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
            &self.endpoint,
            &self.attempt,
            &self.request_body,
            &self.response_body,
            &self.http_status,
            &self.outcome,
            &self.elapsed_ms,
        ]
    }
}

/// Several claims of one tenant's distinct branches in one statement: [`CLAIM_SQL`] with
/// arrays, each claim with its own branch, lease and hold, under the same rules: each
/// branch's head row locked (not skipped) and leased unless it backs off or holds a live
/// lease of the same hold. Returns [`CLAIM_SQL`]'s columns for each sale claimed, then the
/// claim's 1-based position in the arrays ([`CLAIM_MANY_POSITION`]). Parameters: `$1` the
/// tenant, then one array per column of [`Claims`].
const CLAIM_MANY_SQL: &str = "WITH input AS (
        SELECT * FROM unnest($2::int8[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[])
            WITH ORDINALITY AS c(x_branch, x_token, x_expires, x_now, x_prefix, x_n)),
     head AS (
        SELECT c.x_n, c.x_token, c.x_expires, c.x_now, c.x_prefix, h.*
        FROM input c CROSS JOIN LATERAL (
            SELECT id, lease_owner, lease_expires_at, next_attempt_at, maybe_sent
            FROM outbox WHERE tenant_id = $1 AND branch_id = c.x_branch AND state = 'PENDING'
            ORDER BY invc_no LIMIT 1 FOR UPDATE) h)
    UPDATE outbox o SET lease_owner = head.x_token, lease_expires_at = head.x_expires,
                        attempts = o.attempts + 1, maybe_sent = TRUE
    FROM head
    WHERE o.id = head.id
      AND (head.next_attempt_at IS NULL OR head.next_attempt_at <= head.x_now)
      AND NOT (head.lease_owner IS NOT NULL AND head.lease_expires_at > head.x_now
               AND starts_with(head.lease_owner, head.x_prefix))
    RETURNING o.id, o.sale_id, o.invc_no, o.payload, o.payload_sha256, o.attempts, head.maybe_sent,
              head.lease_owner, head.lease_expires_at, head.x_n";

/// The column of [`CLAIM_MANY_SQL`]'s rows that holds the claim's position.
const CLAIM_MANY_POSITION: usize = 9;

/// The claims of a [`CLAIM_MANY_SQL`], column by column (for `unnest`).
#[derive(Default)]
struct Claims<'a> {
    /// Each claim's own parameters, for [`CLAIM_SQL`] when it is the only one.
    each: Vec<&'a ClaimParams>,
    branch: Vec<i64>,
    token: Vec<&'a str>,
    expires: Vec<DateTime<Utc>>,
    now: Vec<DateTime<Utc>>,
    issued_prefix: Vec<&'a str>,
}

impl<'a> Claims<'a> {
    fn push(&mut self, c: &'a ClaimParams) {
        self.each.push(c);
        self.branch.push(c.branch);
        self.token.push(&c.token);
        self.expires.push(c.expires);
        self.now.push(c.now);
        self.issued_prefix.push(&c.issued_prefix);
    }

    /// `$2` onwards of [`CLAIM_MANY_SQL`].
    fn as_params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [
            &self.branch,
            &self.token,
            &self.expires,
            &self.now,
            &self.issued_prefix,
        ]
    }
}

/// One run of [`chunks_of_distinct_branches`], ready to send: its tenant, the tenant's
/// `set_config` values when the run is the tenant's first, and its receipts and claims
/// with the positions (in the batch) of the jobs they answer.
struct Run<'a> {
    tenant: i64,
    setting: Option<[String; 2]>,
    receipt_jobs: Vec<usize>,
    receipts: Receipts<'a>,
    /// Each claim's job, and whether it is the claim chained to that job's receipt.
    claim_jobs: Vec<(usize, bool)>,
    claims: Claims<'a>,
}

impl<'a> Run<'a> {
    /// The run of `jobs`, which start at position `first` of the batch.
    fn of(jobs: &'a [Job], first: usize, first_of_tenant: bool) -> Self {
        let tenant = jobs[0].scope.tenant;
        let mut run = Run {
            tenant: tenant.0,
            setting: first_of_tenant.then(|| scope_settings(tenant, None)),
            receipt_jobs: Vec::new(),
            receipts: Receipts::default(),
            claim_jobs: Vec::new(),
            claims: Claims::default(),
        };
        for (at, job) in (first..).zip(jobs) {
            let (claim, chained) = match &job.work {
                Work::Claim { params, .. } => (Some(params), false),
                Work::Record { record, next, .. } => {
                    run.receipt_jobs.push(at);
                    run.receipts.push(record);
                    (next.as_ref(), true)
                }
            };
            if let Some(params) = claim {
                run.claim_jobs.push((at, chained));
                run.claims.push(params);
            }
        }
        run
    }
}

/// Splits `jobs` (sorted by tenant) into runs to be sent in order: each of one tenant and of
/// distinct branches, so that a run's receipts can share one [`record_many_sql`]. A branch
/// has one relay, so its second job in a batch means something is misconfigured; it then
/// simply starts the next run, after the first job's.
fn chunks_of_distinct_branches(jobs: &[Job]) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut branches = std::collections::HashSet::new();
    for (at, job) in jobs.iter().enumerate() {
        let joins_the_run =
            jobs[start].scope.tenant == job.scope.tenant && !branches.contains(&job.scope.branch);
        if !joins_the_run {
            chunks.push(start..at);
            start = at;
            branches.clear();
        }
        branches.insert(job.scope.branch);
    }
    if start < jobs.len() {
        chunks.push(start..jobs.len());
    }
    chunks
}

/// Sends `BEGIN`, each tenant's `set_config` and every job's statements (`jobs` sorted by
/// tenant), and `COMMIT` in one round trip, as [`super::one_round_trip`] does for one job.
/// Per run of [`chunks_of_distinct_branches`]: its receipts (in one [`record_many_sql`] when
/// there are several), then its claims, each chained claim after its own receipt. Returns
/// each job's rows, in the order of `jobs`, and how many array statements it sent.
async fn run_together(
    pool: &Pool,
    jobs: &[Job],
) -> std::result::Result<(Vec<JobRows>, u64), NotCommitted> {
    let nothing = |error| NotCommitted::NothingWritten {
        error,
        number_taken: false,
    };
    let client = pool.get().await.map_err(|e| nothing(database(e)))?;
    let prepare = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .prepare_cached(sql)
                .await
                .map_err(|e| nothing(query_error(e)))
        }
    };
    let enter = prepare(ENTER_SQL).await?;
    let claim = prepare(CLAIM_SQL).await?;
    let record = prepare(record_sql(false)).await?;
    let record_journal = prepare(record_sql(true)).await?;
    let record_many = prepare(record_many_sql()).await?;
    let claim_many = prepare(CLAIM_MANY_SQL).await?;
    let (client, enter, claim, record_many, claim_many) =
        (&client, &enter, &claim, &record_many, &claim_many);
    // What each statement needs, built before any is sent (the futures borrow it).
    let chunks = chunks_of_distinct_branches(jobs);
    let runs: Vec<Run<'_>> = chunks
        .iter()
        .enumerate()
        .map(|(at, chunk)| {
            let tenant = jobs[chunk.start].scope.tenant;
            let first_of_tenant = at == 0 || jobs[chunks[at - 1].start].scope.tenant != tenant;
            Run::of(&jobs[chunk.clone()], chunk.start, first_of_tenant)
        })
        .collect();
    let mut statements: Vec<(Destination, Statement<'_>)> = Vec::new();
    for run in &runs {
        if let Some([tenant, branch]) = &run.setting {
            statements.push((
                Destination::Nobody,
                Box::pin(async move {
                    client
                        .execute(enter, &[tenant, branch])
                        .await
                        .map(|_| Vec::new())
                }),
            ));
        }
        if run.receipt_jobs.len() > 1 {
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&run.tenant];
            params.extend_from_slice(&run.receipts.as_params());
            statements.push((
                Destination::Records(run.receipt_jobs.clone()),
                Box::pin(async move { client.query(record_many, &params).await }),
            ));
        } else if let (Some(&at), Some(r)) = (run.receipt_jobs.first(), run.receipts.each.first()) {
            let statement = if r.journal.is_some() {
                &record_journal
            } else {
                &record
            };
            statements.push((
                Destination::First(at),
                Box::pin(async move { client.query(statement, &r.as_params()).await }),
            ));
        }
        if run.claim_jobs.len() > 1 {
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&run.tenant];
            params.extend_from_slice(&run.claims.as_params());
            statements.push((
                Destination::Claims(run.claim_jobs.clone()),
                Box::pin(async move { client.query(claim_many, &params).await }),
            ));
        } else if let (Some(&(at, chained)), Some(params)) =
            (run.claim_jobs.first(), run.claims.each.first())
        {
            let destination = if chained {
                Destination::Second(at)
            } else {
                Destination::First(at)
            };
            statements.push((
                destination,
                Box::pin(async move { client.query(claim, &params.as_params()).await }),
            ));
        }
    }
    let (destinations, statements): (Vec<Destination>, Vec<Statement<'_>>) =
        statements.into_iter().unzip();
    let array_statements = destinations
        .iter()
        .filter(|d| matches!(d, Destination::Records(_) | Destination::Claims(_)))
        .count() as u64;
    // `biased`: polled in this order, so sent in this order; `in_order` sends every
    // statement on its first poll, before the `COMMIT`.
    let (begun, rows, committed) = tokio::join!(
        biased;
        client.batch_execute("BEGIN"),
        in_order(statements),
        client.batch_execute("COMMIT"),
    );
    let mut failed: Option<NotCommitted> = begun.err().map(NotCommitted::of);
    let mut answers: Vec<JobRows> = jobs.iter().map(|_| JobRows::default()).collect();
    for (rows, destination) in rows.into_iter().zip(destinations) {
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                let this = NotCommitted::of(error);
                failed = Some(match failed {
                    Some(earlier) => earlier.worse(this),
                    None => this,
                });
                continue;
            }
        };
        match destination {
            Destination::Nobody => {}
            Destination::First(at) => answers[at].first = one_row(rows)?,
            Destination::Second(at) => answers[at].second = one_row(rows)?,
            Destination::Records(owners) => {
                for row in rows {
                    // The receipt's 1-based position in the arrays, the last column.
                    let position: i64 = row.try_get(RECORD_MANY_POSITION).map_err(unknown)?;
                    let at = usize::try_from(position - 1)
                        .ok()
                        .and_then(|p| owners.get(p))
                        .ok_or_else(|| {
                            unknown_text(format!(
                                "a receipt row at position {position} of {}",
                                owners.len()
                            ))
                        })?;
                    answers[*at].first = Some(row);
                }
            }
            Destination::Claims(owners) => {
                for row in rows {
                    let position: i64 = row.try_get(CLAIM_MANY_POSITION).map_err(unknown)?;
                    let &(at, chained) = usize::try_from(position - 1)
                        .ok()
                        .and_then(|p| owners.get(p))
                        .ok_or_else(|| {
                            unknown_text(format!(
                                "a claim row at position {position} of {}",
                                owners.len()
                            ))
                        })?;
                    if chained {
                        answers[at].second = Some(row);
                    } else {
                        answers[at].first = Some(row);
                    }
                }
            }
        }
    }
    if let Some(failed) = failed {
        return Err(failed);
    }
    committed.map_err(|e| NotCommitted::Unknown(query_error(e)))?;
    Ok((answers, array_statements))
}

/// The column of [`record_many_sql`]'s rows that holds the receipt's position.
const RECORD_MANY_POSITION: usize = 14;

/// The one row (or none) of a statement that returns at most one.
fn one_row(
    rows: Vec<tokio_postgres::Row>,
) -> std::result::Result<Option<tokio_postgres::Row>, NotCommitted> {
    if rows.len() > 1 {
        return Err(unknown_text(format!(
            "{} rows where at most one was expected",
            rows.len()
        )));
    }
    Ok(rows.into_iter().next())
}

/// Something this process refused after the statements were sent: the `COMMIT` may have
/// taken.
fn unknown(error: tokio_postgres::Error) -> NotCommitted {
    NotCommitted::Unknown(query_error(error))
}

fn unknown_text(message: String) -> NotCommitted {
    NotCommitted::Unknown(StoreError::Database(message))
}

/// Awaits every future, polling them in the order given (so each one's first poll, which
/// sends its statement, comes in that order), and returns their outputs in that order.
async fn in_order<F: Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match Pin::new(future).poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BranchId, TenantId};

    fn claim_job(tenant: i64, branch: i64) -> Job {
        let scope = Scope {
            tenant: TenantId(tenant),
            branch: BranchId(branch),
        };
        let now = Utc::now();
        Job {
            scope,
            work: Work::Claim {
                params: ClaimParams {
                    tenant,
                    branch,
                    token: String::new(),
                    expires: now,
                    now,
                    issued_prefix: String::new(),
                },
                answer: oneshot::channel().0,
            },
        }
    }

    #[test]
    fn runs_split_at_a_new_tenant_and_at_a_branch_seen_before() {
        let jobs: Vec<Job> = [
            (1, 10),
            (1, 11),
            (1, 10),
            (1, 12),
            (2, 20),
            (2, 21),
            (3, 30),
        ]
        .into_iter()
        .map(|(tenant, branch)| claim_job(tenant, branch))
        .collect();
        assert_eq!(
            chunks_of_distinct_branches(&jobs),
            vec![0..2, 2..4, 4..6, 6..7]
        );
        assert_eq!(chunks_of_distinct_branches(&jobs[..1]), vec![0..1]);
        assert!(chunks_of_distinct_branches(&[]).is_empty());
    }
}
