//! Phases 2 and 3 of many branches, several to one transaction.
//!
//! Every branch's relay claims its next sale and records each receipt in a transaction of
//! its own. With 50 busy branches that was two transactions per sale, each `BEGIN`, the
//! scope's `set_config`, one or two statements and a `COMMIT` with its WAL flush, and
//! measured, that per-transaction work, not the rows, was most of what PostgreSQL spent
//! on phases 2 and 3. Here the claims and receipts that arrive while a transaction is under
//! way wait for the next one, and that one runs them all, each with exactly the statements
//! it would have run alone, all sent together behind one `BEGIN` and ahead of one `COMMIT`.
//!
//! What each relay gets is what a transaction of its own would give it, because:
//! - each job's statements are the same ones, in the same order, and every one of them
//!   names its tenant and branch in its own conditions and values. Row-level security is
//!   set to the tenant with a `set_config` before the tenant's first job (jobs of several
//!   tenants may share a transaction, sorted by tenant: a statement sees only the tenant
//!   set last), as phase 1's batches are; the branch is left unset, since setting it per
//!   job cost about 8 % of the pipeline's throughput in interleaved runs;
//! - a branch has one relay, with one claim or receipt under way at a time, so no two jobs
//!   of a batch touch the same rows unless something is misconfigured, and then they run in
//!   order, each seeing the one before;
//! - when a statement fails on the server, PostgreSQL rolls the whole transaction back (its
//!   `COMMIT` answers as a rollback) and every job runs again on its own, so each gets its
//!   own answer, the receipt whose number is taken its [`StoreError::DuplicateReceipt`];
//! - when anything else fails (the connection, or an error raised in this process, after
//!   which the `COMMIT` may still have committed), nobody knows what took: every job gets
//!   the error, as a transaction of its own would have;
//! - each job's answer is read from its own statements' rows, by position, whatever the
//!   other jobs' answers were.
//!
//! Invariant 8 holds: nothing here waits for the control unit; a job enters the queue
//! after its call returned, or before it starts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{
    CLAIM_SQL, ClaimParams, ENTER_SQL, RecordParams, database, one_round_trip, query_error,
    record_sql, scope_settings,
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

impl Job {
    /// How many statements the job sends after its scope's `set_config`.
    fn statements(&self) -> usize {
        match &self.work {
            Work::Claim { .. } => 1,
            Work::Record { next, .. } => 1 + usize::from(next.is_some()),
        }
    }
}

/// The relays' queue. Its writers end when the last handle to it (the store and its
/// clones) is gone.
pub(super) struct Queue {
    jobs: mpsc::UnboundedSender<Job>,
}

/// Starts the writers on the current runtime.
pub(super) fn start(pool: Pool) -> Queue {
    Queue {
        jobs: super::start_writers(&pool, WRITERS, write),
    }
}

fn stopped<T>(_: T) -> StoreError {
    StoreError::Database("the relays' writer stopped (is the process shutting down?)".into())
}

impl Queue {
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
async fn write(pool: Pool, waiting: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>) {
    loop {
        let Some(jobs) = super::next_batch(&waiting, MAX_BATCH).await else {
            return;
        };
        if jobs.len() == 1 {
            for job in jobs {
                alone(&pool, job).await;
            }
        } else {
            together(&pool, jobs).await;
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
    /// nothing was written, the jobs may run again.
    NothingWritten(StoreError),
    /// The connection failed, or this process refused something after sending it: the
    /// `COMMIT` may or may not have taken.
    Unknown(StoreError),
}

impl NotCommitted {
    /// A statement's error: only the server's own refusal aborts the transaction for sure.
    fn of(error: tokio_postgres::Error) -> Self {
        if error.as_db_error().is_some() {
            NotCommitted::NothingWritten(query_error(error))
        } else {
            NotCommitted::Unknown(query_error(error))
        }
    }

    /// The first of two, the unknown outcome before the known one.
    fn worse(self, other: Self) -> Self {
        match (self, other) {
            (NotCommitted::NothingWritten(_), unknown @ NotCommitted::Unknown(_)) => unknown,
            (first, _) => first,
        }
    }
}

/// Runs several jobs in one transaction and answers them all.
async fn together(pool: &Pool, mut jobs: Vec<Job>) {
    // By tenant, for one `set_config` per tenant (a stable sort: no branch has two jobs
    // here, but order is kept anyway).
    jobs.sort_by_key(|job| job.scope.tenant.0);
    match run_together(pool, &jobs).await {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for job in jobs {
                let scope = job.scope;
                // This job's rows, by position, before anything is made of them.
                let mut own = rows.by_ref().take(job.statements());
                match job.work {
                    Work::Claim { params, answer } => {
                        let row = own.next().flatten();
                        let _ = answer.send(params.claim(scope, row));
                    }
                    Work::Record {
                        record,
                        next,
                        answer,
                    } => {
                        let signed = own.next().flatten();
                        let next_row = own.next().flatten();
                        let recorded = record.signed(signed).and_then(|sale| {
                            let next = match next {
                                Some(next) => next.claim(scope, next_row)?,
                                None => None,
                            };
                            Ok(Recorded { sale, next })
                        });
                        let _ = answer.send(recorded);
                    }
                }
            }
        }
        Err(NotCommitted::NothingWritten(error)) => {
            tracing::debug!(%error, jobs = jobs.len(), "a shared relay transaction rolled back; running its jobs one by one");
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

type Statement<'a> = Pin<
    Box<
        dyn Future<Output = std::result::Result<Option<tokio_postgres::Row>, tokio_postgres::Error>>
            + Send
            + 'a,
    >,
>;

/// Sends `BEGIN`, each tenant's `set_config` and every job's statements in order (`jobs`
/// sorted by tenant), and `COMMIT` in one round trip, as [`super::one_round_trip`] does
/// for one job. Returns one row (or none) per job statement, in the order sent (the
/// `set_config`s left out).
async fn run_together(
    pool: &Pool,
    jobs: &[Job],
) -> std::result::Result<Vec<Option<tokio_postgres::Row>>, NotCommitted> {
    let nothing = NotCommitted::NothingWritten;
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
    let (client, enter, claim) = (&client, &enter, &claim);
    // Each tenant's `set_config` (its answer is dropped) before its first job (the jobs come
    // sorted by tenant), then each job's statements.
    let settings: Vec<Option<[String; 2]>> = jobs
        .iter()
        .enumerate()
        .map(|(at, job)| {
            let first_of_tenant = at == 0 || jobs[at - 1].scope.tenant != job.scope.tenant;
            first_of_tenant.then(|| scope_settings(job.scope.tenant, None))
        })
        .collect();
    let mut statements: Vec<(bool, Statement<'_>)> =
        Vec::with_capacity(2 * jobs.len() + jobs.iter().map(Job::statements).sum::<usize>());
    for (job, setting) in jobs.iter().zip(&settings) {
        if let Some([tenant, branch]) = setting {
            statements.push((
                false,
                Box::pin(
                    async move { client.execute(enter, &[tenant, branch]).await.map(|_| None) },
                ),
            ));
        }
        match &job.work {
            Work::Claim { params, .. } => {
                statements.push((
                    true,
                    Box::pin(async move { client.query_opt(claim, &params.as_params()).await }),
                ));
            }
            Work::Record {
                record: r, next, ..
            } => {
                let statement = if r.journal.is_some() {
                    &record_journal
                } else {
                    &record
                };
                statements.push((
                    true,
                    Box::pin(async move { client.query_opt(statement, &r.as_params()).await }),
                ));
                if let Some(next) = next {
                    statements.push((
                        true,
                        Box::pin(async move { client.query_opt(claim, &next.as_params()).await }),
                    ));
                }
            }
        }
    }
    let (answered, statements): (Vec<bool>, Vec<Statement<'_>>) = statements.into_iter().unzip();
    // `biased`: polled in this order, so sent in this order; `in_order` sends every
    // statement on its first poll, before the `COMMIT`.
    let (begun, rows, committed) = tokio::join!(
        biased;
        client.batch_execute("BEGIN"),
        in_order(statements),
        client.batch_execute("COMMIT"),
    );
    let mut failed: Option<NotCommitted> = begun.err().map(NotCommitted::of);
    let mut answers = Vec::with_capacity(rows.len());
    for (row, answered) in rows.into_iter().zip(answered) {
        match row {
            Ok(row) if answered => answers.push(row),
            Ok(_) => {}
            Err(error) => {
                let this = NotCommitted::of(error);
                failed = Some(match failed {
                    Some(earlier) => earlier.worse(this),
                    None => this,
                });
            }
        }
    }
    if let Some(failed) = failed {
        return Err(failed);
    }
    committed.map_err(|e| NotCommitted::Unknown(query_error(e)))?;
    Ok(answers)
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
