//! Phase 1 of concurrent idempotent sales, several to one transaction.
//!
//! Each sale's own transaction cost PostgreSQL five round trips (`BEGIN`, the tenant, the
//! key and number, the sale, `COMMIT`) and a WAL flush; measured, that per-statement and
//! per-commit work, not the rows, was most of a sale's database time. Here the sales that
//! arrive while a transaction is under way wait for the next one, and that one writes all
//! of them with multi-row statements: their keys, their numbers, their sales, lines and
//! outbox rows. What each sale gets is what [`super::accept_one`] would give it:
//! - its number is its branch's next, gap-free: a sale whose payload cannot be built takes
//!   none (the next sale of its branch takes it) and leaves no key record behind;
//! - a key that was used before (a retry, a reuse, one in flight, or twice in the same
//!   batch) is decided by `accept_one`, after the batch commits;
//! - a failure before any payload is built sends every sale of the batch to `accept_one`;
//!   a database failure after that fails the batch's sales, none of which was written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{accept_one, database, enter, query_error};
use crate::{
    AcceptedSale, BranchId, IdempotentAccept, IdempotentRequest, NewSale, OutboxPayload,
    PayloadBuilder, Result, SaleId, Scope, StoreError, TenantId, build_payload, lease_until,
    money_text, to_i64, to_u64,
};

/// At most this many sales in one transaction.
const MAX_BATCH: usize = 64;
/// Transactions under way at once. Two: one is being written while the next fills, and
/// PostgreSQL has a second core to run it on.
const WRITERS: usize = 2;

struct Job {
    scope: Scope,
    request: IdempotentRequest,
    sale: NewSale,
    build: PayloadBuilder,
    answer: oneshot::Sender<Result<IdempotentAccept>>,
}

/// The queue of sales waiting for phase 1. Its writers end when the last handle to it (the
/// store and its clones) is gone.
pub(super) struct Queue {
    jobs: mpsc::UnboundedSender<Job>,
}

/// Starts the writers on the current runtime.
pub(super) fn start(pool: Pool) -> Queue {
    Queue {
        jobs: super::start_writers(&pool, WRITERS, write),
    }
}

impl Queue {
    pub(super) async fn accept(
        &self,
        scope: Scope,
        request: IdempotentRequest,
        sale: NewSale,
        build: PayloadBuilder,
    ) -> Result<IdempotentAccept> {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            scope,
            request,
            sale,
            build,
            answer,
        };
        if self.jobs.send(job).is_err() {
            return Err(StoreError::Database(
                "the sale writer stopped (is the process shutting down?)".into(),
            ));
        }
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Database(
                "the sale writer stopped before answering".into(),
            ))
        })
    }
}

/// One writer: takes whatever is queued (at least one sale), writes it, and goes again.
async fn write(pool: Pool, waiting: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>) {
    loop {
        let Some(jobs) = super::next_batch(&waiting, MAX_BATCH).await else {
            return;
        };
        // The tenant is set per transaction (row-level security), so one per tenant.
        let mut by_tenant: BTreeMap<i64, Vec<Job>> = BTreeMap::new();
        for job in jobs {
            by_tenant.entry(job.scope.tenant.0).or_default().push(job);
        }
        for (tenant, jobs) in by_tenant {
            accept_together(&pool, TenantId(tenant), jobs).await;
        }
    }
}

/// Answers every job: one by itself, several in one transaction.
async fn accept_together(pool: &Pool, tenant: TenantId, jobs: Vec<Job>) {
    if jobs.len() == 1 {
        for job in jobs {
            let accepted = accept_one(pool, job.scope, job.request, job.sale, job.build).await;
            let _ = job.answer.send(accepted);
        }
        return;
    }
    let later = match accept_batch(pool, tenant, jobs).await {
        Ok(later) => later,
        Err((error, untouched)) => {
            tracing::warn!(%error, sales = untouched.len(), "a batch of sales failed before any was numbered; accepting them one by one");
            untouched
        }
    };
    // Keys used before, and sales of a batch that failed before numbering: one by one, as
    // `accept_one` decides them (after the batch's keys are committed, so a key seen twice
    // in a batch waits for nothing).
    for job in later {
        let accepted = accept_one(pool, job.scope, job.request, job.sale, job.build).await;
        let _ = job.answer.send(accepted);
    }
}

type Untouched = (StoreError, Vec<Job>);

/// A sale of the batch with its number and its built payload, to be written.
struct Numbered {
    scope: Scope,
    request: IdempotentRequest,
    sale: NewSale,
    answer: oneshot::Sender<Result<IdempotentAccept>>,
    invc_no: u64,
    payload: OutboxPayload,
}

/// Writes the batch. Answers the jobs it accepted or failed itself and returns the ones left
/// for [`accept_one`]; on a failure before any payload was built, returns them all with the
/// error.
async fn accept_batch(
    pool: &Pool,
    tenant: TenantId,
    jobs: Vec<Job>,
) -> std::result::Result<Vec<Job>, Untouched> {
    let mut client = match pool.get().await {
        Ok(client) => client,
        Err(e) => return Err((database(e), jobs)),
    };
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return Err((query_error(e), jobs)),
    };
    if let Err(e) = enter(&tx, tenant).await {
        return Err((e, jobs));
    }
    // Statement 1: the keys not used before, recorded; the branches' counters, locked (in
    // id order, so that two batches never wait for each other in a cycle).
    // A key twice in the batch is offered once, with its first request.
    let mut offered = HashSet::new();
    let first_uses: Vec<&IdempotentRequest> = jobs
        .iter()
        .map(|j| &j.request)
        .filter(|r| offered.insert(r.key.as_str()))
        .collect();
    let keys: Vec<&str> = first_uses.iter().map(|r| r.key.as_str()).collect();
    let shas: Vec<&str> = first_uses
        .iter()
        .map(|r| r.request_sha256.as_str())
        .collect();
    let created: Vec<_> = first_uses.iter().map(|r| r.now).collect();
    let expires: Vec<_> = first_uses
        .iter()
        .map(|r| lease_until(r.now, r.keep))
        .collect();
    let branches: Vec<i64> = jobs
        .iter()
        .map(|j| j.scope.branch.0)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let first = async {
        let statement = tx
            .prepare_cached(
                "WITH recorded AS (
                    INSERT INTO idempotency_keys (tenant_id, key, request_sha256, created_at, expires_at)
                    SELECT $1, k.key, k.sha, k.created, k.expires
                    FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
                         AS k(key, sha, created, expires)
                    ON CONFLICT (tenant_id, key) DO NOTHING RETURNING key),
                 counters AS (
                    SELECT id, last_invc_no FROM branches WHERE tenant_id = $1 AND id = ANY($6::int8[])
                    ORDER BY id FOR UPDATE)
                 SELECT ARRAY(SELECT key FROM recorded), ARRAY(SELECT id FROM counters),
                        ARRAY(SELECT last_invc_no FROM counters)",
            )
            .await?;
        tx.query_one(
            &statement,
            &[&tenant.0, &keys, &shas, &created, &expires, &branches],
        )
        .await
    };
    let row = match first.await {
        Ok(row) => row,
        Err(e) => return Err((query_error(e), jobs)),
    };
    let recorded: HashSet<String> = row.get::<_, Vec<String>>(0).into_iter().collect();
    let mut last: HashMap<i64, i64> = row
        .get::<_, Vec<i64>>(1)
        .into_iter()
        .zip(row.get::<_, Vec<i64>>(2))
        .collect();

    // Number and build, in queue order within each branch. A key twice in this batch was
    // recorded for its first request; the others go to `accept_one`.
    let mut later = Vec::new();
    let mut accepted: Vec<Numbered> = Vec::new();
    let mut failed_keys: Vec<String> = Vec::new();
    let mut taken: HashSet<String> = HashSet::new();
    for job in jobs {
        if !recorded.contains(&job.request.key) || !taken.insert(job.request.key.clone()) {
            later.push(job);
            continue;
        }
        let Some(counter) = last.get_mut(&job.scope.branch.0) else {
            failed_keys.push(job.request.key.clone());
            let _ = job.answer.send(Err(StoreError::NotFound("branch")));
            continue;
        };
        let next = match to_u64(*counter + 1, "invc_no") {
            Ok(next) => next,
            Err(e) => {
                failed_keys.push(job.request.key.clone());
                let _ = job.answer.send(Err(e));
                continue;
            }
        };
        let Job {
            scope,
            request,
            sale,
            build,
            answer,
        } = job;
        match build_payload(build, next) {
            Ok(payload) => {
                *counter += 1;
                accepted.push(Numbered {
                    scope,
                    request,
                    sale,
                    answer,
                    invc_no: next,
                    payload,
                });
            }
            // Its number goes to the branch's next sale, its key's record is removed.
            Err(e) => {
                failed_keys.push(request.key);
                let _ = answer.send(Err(e));
            }
        }
    }

    // Every key was used before: nothing to write, and the locks go with the rollback.
    if accepted.is_empty() && failed_keys.is_empty() {
        return Ok(later);
    }
    match write_sales(&tx, tenant, &last, &failed_keys, &accepted).await {
        Ok(ids) => match tx.commit().await {
            Ok(()) => {
                for (sale, id) in accepted.into_iter().zip(ids) {
                    let _ = sale
                        .answer
                        .send(Ok(IdempotentAccept::Accepted(AcceptedSale {
                            sale: SaleId(id),
                            invc_no: sale.invc_no,
                        })));
                }
            }
            Err(e) => fail_all(accepted, &query_error(e)),
        },
        Err(e) => fail_all(accepted, &e),
    }
    Ok(later)
}

/// The batch's numbered sales could not be written: nothing of them was.
fn fail_all(accepted: Vec<Numbered>, error: &StoreError) {
    tracing::warn!(%error, sales = accepted.len(), "a batch of sales could not be written");
    for sale in accepted {
        let _ = sale.answer.send(Err(StoreError::Database(format!(
            "the sale was not accepted: {error}"
        ))));
    }
}

/// Statement 2: the counters moved on, the failed sales' keys removed, and the sales, their
/// lines, their outbox rows and their keys' links written. Returns the sales' ids in the
/// order of `accepted`.
async fn write_sales(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: TenantId,
    last: &HashMap<i64, i64>,
    failed_keys: &[String],
    accepted: &[Numbered],
) -> Result<Vec<i64>> {
    // Only the counters of branches that got sales moved on.
    let counter_ids: Vec<i64> = accepted
        .iter()
        .map(|sale| sale.scope.branch.0)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let counter_values: Vec<i64> = counter_ids.iter().map(|id| last[id]).collect();
    let mut branch = Vec::with_capacity(accepted.len());
    let mut number = Vec::with_capacity(accepted.len());
    let mut reference = Vec::with_capacity(accepted.len());
    let mut total = Vec::with_capacity(accepted.len());
    let mut key = Vec::with_capacity(accepted.len());
    let mut payload = Vec::with_capacity(accepted.len());
    let mut sha = Vec::with_capacity(accepted.len());
    let mut lines = Lines::default();
    for sale in accepted {
        let invc_no = to_i64(sale.invc_no, "invc_no")?;
        branch.push(sale.scope.branch.0);
        number.push(invc_no);
        reference.push(sale.sale.client_reference.as_deref());
        total.push(money_text(sale.sale.tot_amt));
        key.push(sale.request.key.as_str());
        payload.push(sale.payload.body.as_str());
        sha.push(sale.payload.sha256.as_str());
        for line in &sale.sale.lines {
            lines.push(sale.scope.branch, invc_no, line)?;
        }
    }
    let statement = tx
        .prepare_cached(
            "WITH numbered AS (
                UPDATE branches b SET last_invc_no = c.last_invc_no
                FROM unnest($2::int8[], $3::int8[]) AS c(id, last_invc_no)
                WHERE b.id = ANY($2::int8[]) AND b.id = c.id AND b.tenant_id = $1),
             dropped AS (
                DELETE FROM idempotency_keys
                WHERE cardinality($4::text[]) > 0 AND tenant_id = $1 AND key = ANY($4::text[])),
             sale AS (
                INSERT INTO sales (tenant_id, branch_id, invc_no, client_reference, status, tot_amt, rcpt_ty_cd)
                SELECT $1, s.branch_id, s.invc_no, s.client_reference, 'PENDING_SYNC', s.tot_amt::numeric, 'S'
                FROM unnest($5::int8[], $6::int8[], $7::text[], $8::text[])
                     AS s(branch_id, invc_no, client_reference, tot_amt)
                RETURNING id, branch_id, invc_no),
             lines AS (
                INSERT INTO sale_lines (tenant_id, branch_id, sale_id, item_seq, item_cd, item_nm, tax_ty_cd,
                                        qty, uprc, dc_amt, taxbl_amt, tax_amt, tot_amt, original_item_seq)
                SELECT $1, sale.branch_id, sale.id, l.item_seq, l.item_cd, l.item_nm, l.tax_ty_cd, l.qty::numeric,
                       l.uprc::numeric, l.dc_amt::numeric, l.taxbl_amt::numeric, l.tax_amt::numeric,
                       l.tot_amt::numeric, l.original_item_seq
                FROM unnest($12::int8[], $13::int8[], $14::int4[], $15::text[], $16::text[], $17::text[],
                            $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], $23::text[],
                            $24::int4[])
                     AS l(branch_id, invc_no, item_seq, item_cd, item_nm, tax_ty_cd, qty, uprc, dc_amt,
                          taxbl_amt, tax_amt, tot_amt, original_item_seq)
                JOIN sale ON sale.branch_id = l.branch_id AND sale.invc_no = l.invc_no),
             queued AS (
                INSERT INTO outbox (tenant_id, branch_id, sale_id, invc_no, payload, payload_sha256)
                SELECT $1, sale.branch_id, sale.id, sale.invc_no, p.payload, p.sha
                FROM unnest($5::int8[], $6::int8[], $10::text[], $11::text[]) AS p(branch_id, invc_no, payload, sha)
                JOIN sale ON sale.branch_id = p.branch_id AND sale.invc_no = p.invc_no),
             keyed AS (
                UPDATE idempotency_keys k SET sale_id = sale.id
                FROM unnest($5::int8[], $6::int8[], $9::text[]) AS x(branch_id, invc_no, key)
                JOIN sale ON sale.branch_id = x.branch_id AND sale.invc_no = x.invc_no
                WHERE k.tenant_id = $1 AND k.key = ANY($9::text[]) AND k.key = x.key)
             SELECT branch_id, invc_no, id FROM sale",
        )
        .await
        .map_err(query_error)?;
    let rows = tx
        .query(
            &statement,
            &[
                &tenant.0,
                &counter_ids,
                &counter_values,
                &failed_keys,
                &branch,
                &number,
                &reference,
                &total,
                &key,
                &payload,
                &sha,
                &lines.branch,
                &lines.invc_no,
                &lines.item_seq,
                &lines.item_cd,
                &lines.item_nm,
                &lines.tax_ty_cd,
                &lines.qty,
                &lines.uprc,
                &lines.dc_amt,
                &lines.taxbl_amt,
                &lines.tax_amt,
                &lines.tot_amt,
                &lines.original_item_seq,
            ],
        )
        .await
        .map_err(query_error)?;
    let ids: HashMap<(i64, i64), i64> = rows
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
    branch
        .iter()
        .zip(&number)
        .map(|(b, n)| {
            ids.get(&(*b, *n)).copied().ok_or_else(|| {
                StoreError::Corrupt(format!("sale {n} of branch {b} was not written"))
            })
        })
        .collect()
}

/// The batch's lines, column by column (for `unnest`).
#[derive(Default)]
struct Lines {
    branch: Vec<i64>,
    invc_no: Vec<i64>,
    item_seq: Vec<i32>,
    item_cd: Vec<String>,
    item_nm: Vec<String>,
    tax_ty_cd: Vec<String>,
    qty: Vec<String>,
    uprc: Vec<String>,
    dc_amt: Vec<String>,
    taxbl_amt: Vec<String>,
    tax_amt: Vec<String>,
    tot_amt: Vec<String>,
    original_item_seq: Vec<Option<i32>>,
}

impl Lines {
    fn push(&mut self, branch: BranchId, invc_no: i64, line: &crate::SaleLine) -> Result<()> {
        let seq = |n: u32| {
            i32::try_from(n).map_err(|_| StoreError::Corrupt(format!("item_seq {n} out of range")))
        };
        self.branch.push(branch.0);
        self.invc_no.push(invc_no);
        self.item_seq.push(seq(line.item_seq)?);
        self.original_item_seq
            .push(line.original_item_seq.map(seq).transpose()?);
        self.item_cd.push(line.item_cd.clone());
        self.item_nm.push(line.item_nm.clone());
        self.tax_ty_cd.push(line.tax_ty_cd.clone());
        self.qty.push(line.qty.to_string());
        self.uprc.push(money_text(line.uprc));
        self.dc_amt.push(money_text(line.dc_amt));
        self.taxbl_amt.push(money_text(line.taxbl_amt));
        self.tax_amt.push(money_text(line.tax_amt));
        self.tot_amt.push(money_text(line.tot_amt));
        Ok(())
    }
}
