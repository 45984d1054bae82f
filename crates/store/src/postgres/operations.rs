//! The operations queue on PostgreSQL: stock, item and customer calls, queued and claimed
//! like the sales outbox (see `Store::enqueue_operation`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;

use super::{PostgresStore, enter_scope, query_error};
use crate::{
    Enqueued, ExchangeRecord, NewOperation, OperationClaim, OperationId, OperationKind,
    OperationRecord, OperationState, OutboxPayload, Result, Scope, StoreError,
    build_operation_payload, clamp_time, lease_until, to_i64, to_u64,
};

const COLUMNS: &str =
    "id, kind, operation_key, request_sha256, endpoint, payload, payload_sha256, sar_no,
                       summary, state, result_code, result_message, attempts, created_at";

fn record(r: &tokio_postgres::Row) -> Result<OperationRecord> {
    let kind: String = r.get(1);
    Ok(OperationRecord {
        id: OperationId(r.get(0)),
        kind: OperationKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("operation kind {kind:?}")))?,
        key: r.get(2),
        request_sha256: r.get(3),
        endpoint: r.get(4),
        payload: r.get(5),
        payload_sha256: r.get(6),
        sar_no: r
            .get::<_, Option<i64>>(7)
            .map(|n| to_u64(n, "sar_no"))
            .transpose()?,
        summary: r.get(8),
        state: OperationState::parse(r.get(9))?,
        result_code: r.get(10),
        result_message: r.get(11),
        attempts: u32::try_from(r.get::<_, i32>(12)).unwrap_or(0),
        created_at: r.get(13),
    })
}

async fn find_by_key(
    tx: &Transaction<'_>,
    scope: Scope,
    kind: OperationKind,
    key: &str,
) -> Result<Option<OperationRecord>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM operations WHERE tenant_id = $1 AND branch_id = $2 AND kind = $3 AND operation_key = $4"
    );
    tx.query_opt(
        &sql,
        &[&scope.tenant.0, &scope.branch.0, &kind.as_str(), &key],
    )
    .await
    .map_err(query_error)?
    .as_ref()
    .map(record)
    .transpose()
}

async fn find_by_id(
    tx: &Transaction<'_>,
    scope: Scope,
    id: OperationId,
) -> Result<Option<OperationRecord>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM operations WHERE tenant_id = $1 AND branch_id = $2 AND id = $3"
    );
    tx.query_opt(&sql, &[&scope.tenant.0, &scope.branch.0, &id.0])
        .await
        .map_err(query_error)?
        .as_ref()
        .map(record)
        .transpose()
}

impl PostgresStore {
    pub async fn enqueue_operation(
        &self,
        scope: Scope,
        operation: NewOperation,
    ) -> Result<Enqueued> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        // The branch row, locked: numbering and the key check happen one request at a time
        // per branch, so two first uses of a key cannot both queue.
        let last_sar_no: i64 = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT last_sar_no FROM branches WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
                )
                .await
                .map_err(query_error)?,
                &[&scope.branch.0, &scope.tenant.0],
            )
            .await
            .map_err(query_error)?
            .ok_or(StoreError::NotFound("branch"))?
            .get(0);
        if let Some(existing) = find_by_key(&tx, scope, operation.kind, &operation.key).await? {
            tx.commit().await.map_err(query_error)?;
            return Ok(if existing.request_sha256 == operation.request_sha256 {
                Enqueued::Existing(existing)
            } else {
                Enqueued::KeyReused(existing)
            });
        }
        let sar_no = if operation.kind.numbered() {
            let next = last_sar_no + 1;
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE branches SET last_sar_no = $1 WHERE id = $2 AND tenant_id = $3",
                )
                .await
                .map_err(query_error)?,
                &[&next, &scope.branch.0, &scope.tenant.0],
            )
            .await
            .map_err(query_error)?;
            Some(to_u64(next, "sar_no")?)
        } else {
            None
        };
        // A builder that fails rolls the number back with the transaction: no gap.
        let OutboxPayload { body, sha256 } = build_operation_payload(operation.build, sar_no)?;
        let sar_no = sar_no.map(|n| to_i64(n, "sar_no")).transpose()?;
        let id: i64 = tx.query_one(
&tx.prepare_cached("INSERT INTO operations (tenant_id, branch_id, kind, operation_key, request_sha256, endpoint, payload,
                                         payload_sha256, sar_no, summary, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id").await.map_err(query_error)?,
                &[
                    &scope.tenant.0,
                    &scope.branch.0,
                    &operation.kind.as_str(),
                    &operation.key,
                    &operation.request_sha256,
                    &operation.endpoint,
                    &body,
                    &sha256,
                    &sar_no,
                    &operation.summary,
                    &clamp_time(Utc::now()),
                ],
            )
            .await
            .map_err(query_error)?
            .get(0);
        let created = find_by_id(&tx, scope, OperationId(id))
            .await?
            .ok_or(StoreError::NotFound("operation"))?;
        tx.commit().await.map_err(query_error)?;
        Ok(Enqueued::Created(created))
    }

    pub async fn operation(
        &self,
        scope: Scope,
        kind: OperationKind,
        key: &str,
    ) -> Result<Option<OperationRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let found = find_by_key(&tx, scope, kind, key).await?;
        tx.commit().await.map_err(query_error)?;
        Ok(found)
    }

    pub async fn operation_by_id(
        &self,
        scope: Scope,
        id: OperationId,
    ) -> Result<Option<OperationRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let found = find_by_id(&tx, scope, id).await?;
        tx.commit().await.map_err(query_error)?;
        Ok(found)
    }

    pub async fn claim_next_operation(
        &self,
        scope: Scope,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<OperationClaim>> {
        // The same gate as the sales outbox: only the branch's signer claims, and only while
        // its lock connection still holds the branch.
        let Some(hold) = self.hold(scope, owner).await? else {
            return Ok(None);
        };
        if !self.still_held(&hold, scope).await? {
            return Ok(None);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        // Only the head is eligible (stock master after the stock moves it follows), locked
        // so that a second claimer waits and then sees the first one's lease.
        let head = tx.query_opt(
&tx.prepare_cached("SELECT id, kind, endpoint, payload, payload_sha256, lease_owner, lease_expires_at, next_attempt_at
                 FROM operations WHERE tenant_id = $1 AND branch_id = $2 AND state = 'PENDING'
                 ORDER BY id LIMIT 1 FOR UPDATE").await.map_err(query_error)?,
                &[&scope.tenant.0, &scope.branch.0],
            )
            .await
            .map_err(query_error)?;
        let Some(head) = head else {
            tx.commit().await.map_err(query_error)?;
            return Ok(None);
        };
        let holder: Option<String> = head.get(5);
        let held_until: Option<DateTime<Utc>> = head.get(6);
        let next_attempt: Option<DateTime<Utc>> = head.get(7);
        if next_attempt.is_some_and(|at| at > now)
            || !hold.may_claim(holder.as_deref(), held_until, now)
        {
            tx.commit().await.map_err(query_error)?;
            return Ok(None);
        }
        let id: i64 = head.get(0);
        let token = hold.lease_token();
        let attempts: i32 = tx.query_one(
&tx.prepare_cached("UPDATE operations SET lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1
                 WHERE id = $3 RETURNING attempts").await.map_err(query_error)?,
                &[&token, &lease_until(now, lease), &id],
            )
            .await
            .map_err(query_error)?
            .get(0);
        tx.commit().await.map_err(query_error)?;
        let kind: String = head.get(1);
        Ok(Some(OperationClaim {
            scope,
            id: OperationId(id),
            kind: OperationKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("operation kind {kind:?}")))?,
            endpoint: head.get(2),
            payload: OutboxPayload {
                body: head.get(3),
                sha256: head.get(4),
            },
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            owner: token,
        }))
    }

    pub async fn release_operation(
        &self,
        claim: &OperationClaim,
        retry_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, claim.scope).await?;
        let released = tx.execute(
&tx.prepare_cached("UPDATE operations SET lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = $1
                 WHERE id = $2 AND tenant_id = $3 AND branch_id = $4 AND state = 'PENDING' AND lease_owner = $5").await.map_err(query_error)?,
                &[&clamp_time(retry_at), &claim.id.0, &claim.scope.tenant.0, &claim.scope.branch.0, &claim.owner],
            )
            .await
            .map_err(query_error)?;
        if released == 0 {
            return Err(StoreError::NotFound("claimed operation"));
        }
        tx.commit().await.map_err(query_error)
    }

    pub async fn settle_operation(
        &self,
        claim: &OperationClaim,
        rejected: Option<(&str, &str)>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let (state, code, message) = match rejected {
            None => (OperationState::Synced, None, None),
            Some((code, message)) => (OperationState::Rejected, Some(code), Some(message)),
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, claim.scope).await?;
        let settled = tx.execute(
&tx.prepare_cached("UPDATE operations SET state = $1, result_code = $2, result_message = $3, done_at = $4,
                        lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = $5 AND tenant_id = $6 AND branch_id = $7 AND state = 'PENDING' AND lease_owner = $8").await.map_err(query_error)?,
                &[
                    &state.as_str(),
                    &code,
                    &message,
                    &clamp_time(now),
                    &claim.id.0,
                    &claim.scope.tenant.0,
                    &claim.scope.branch.0,
                    &claim.owner,
                ],
            )
            .await
            .map_err(query_error)?;
        if settled == 0 {
            return Err(StoreError::NotFound("claimed operation"));
        }
        tx.commit().await.map_err(query_error)
    }

    pub async fn record_operation_exchange(
        &self,
        scope: Scope,
        operation: OperationId,
        exchange: &ExchangeRecord,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.insert_exchange(scope, exchange, Some(operation.0), now)
            .await
    }

    pub async fn operation_exchanges(
        &self,
        scope: Scope,
        operation: OperationId,
    ) -> Result<Vec<ExchangeRecord>> {
        self.read_exchanges(scope, "operation_id", operation.0, None)
            .await
    }
}
