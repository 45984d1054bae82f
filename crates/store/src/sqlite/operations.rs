//! The operations queue on SQLite: stock, item and customer calls, queued and claimed like
//! the sales outbox (see `Store::enqueue_operation`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, database, insert_exchange, parse_timestamp, read_exchanges, timestamp};
use crate::{
    Enqueued, ExchangeRecord, NewOperation, OperationClaim, OperationId, OperationKind,
    OperationRecord, OperationState, OutboxPayload, Result, Scope, StoreError,
    build_operation_payload, lease_until, to_i64, to_u64,
};

const COLUMNS: &str =
    "id, kind, operation_key, request_sha256, endpoint, payload, payload_sha256, sar_no,
                       summary, state, result_code, result_message, attempts, created_at";

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawOperation> {
    Ok(RawOperation {
        id: r.get(0)?,
        kind: r.get(1)?,
        key: r.get(2)?,
        request_sha256: r.get(3)?,
        endpoint: r.get(4)?,
        payload: r.get(5)?,
        payload_sha256: r.get(6)?,
        sar_no: r.get(7)?,
        summary: r.get(8)?,
        state: r.get(9)?,
        result_code: r.get(10)?,
        result_message: r.get(11)?,
        attempts: r.get(12)?,
        created_at: r.get(13)?,
    })
}

struct RawOperation {
    id: i64,
    kind: String,
    key: String,
    request_sha256: String,
    endpoint: String,
    payload: String,
    payload_sha256: String,
    sar_no: Option<i64>,
    summary: String,
    state: String,
    result_code: Option<String>,
    result_message: Option<String>,
    attempts: i64,
    created_at: String,
}

impl RawOperation {
    fn into_record(self) -> Result<OperationRecord> {
        Ok(OperationRecord {
            id: OperationId(self.id),
            kind: OperationKind::parse(&self.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("operation kind {:?}", self.kind)))?,
            key: self.key,
            request_sha256: self.request_sha256,
            endpoint: self.endpoint,
            payload: self.payload,
            payload_sha256: self.payload_sha256,
            sar_no: self.sar_no.map(|n| to_u64(n, "sar_no")).transpose()?,
            summary: self.summary,
            state: OperationState::parse(&self.state)?,
            result_code: self.result_code,
            result_message: self.result_message,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            created_at: parse_timestamp(&self.created_at)?,
        })
    }
}

fn find(
    connection: &Connection,
    scope: Scope,
    condition: &str,
    value: &dyn rusqlite::ToSql,
    kind: Option<OperationKind>,
) -> Result<Option<OperationRecord>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM operations WHERE tenant_id = ?1 AND branch_id = ?2 AND {condition} = ?3
         AND (?4 IS NULL OR kind = ?4)"
    );
    connection
        .query_row(
            &sql,
            params![
                scope.tenant.0,
                scope.branch.0,
                value,
                kind.map(|k| k.as_str())
            ],
            read,
        )
        .optional()
        .map_err(database)?
        .map(RawOperation::into_record)
        .transpose()
}

impl SqliteStore {
    pub async fn enqueue_operation(
        &self,
        scope: Scope,
        operation: NewOperation,
    ) -> Result<Enqueued> {
        self.run(move |connection| {
            let tx = connection
                .savepoint()
                .map_err(database)?;
            if let Some(existing) = find(&tx, scope, "operation_key", &operation.key, Some(operation.kind))? {
                return Ok(if existing.request_sha256 == operation.request_sha256 {
                    Enqueued::Existing(existing)
                } else {
                    Enqueued::KeyReused(existing)
                });
            }
            let sar_no = if operation.kind.numbered() {
                let next: i64 = tx.prepare_cached("UPDATE branches SET last_sar_no = last_sar_no + 1 WHERE id = ?1 AND tenant_id = ?2
                         RETURNING last_sar_no").map_err(database)?.query_row(
                        params![scope.branch.0, scope.tenant.0],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(database)?
                    .ok_or(StoreError::NotFound("branch"))?;
                Some(to_u64(next, "sar_no")?)
            } else {
                None
            };
            // A builder that fails rolls the number back with the transaction: no gap.
            let OutboxPayload { body, sha256 } = build_operation_payload(operation.build, sar_no)?;
            let sar_no = sar_no.map(|n| to_i64(n, "sar_no")).transpose()?;
            tx.prepare_cached("INSERT INTO operations (tenant_id, branch_id, kind, operation_key, request_sha256, endpoint, payload,
                                         payload_sha256, sar_no, summary, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)").map_err(database)?.execute(
                params![
                    scope.tenant.0,
                    scope.branch.0,
                    operation.kind.as_str(),
                    operation.key,
                    operation.request_sha256,
                    operation.endpoint,
                    body,
                    sha256,
                    sar_no,
                    operation.summary,
                    timestamp(Utc::now())
                ],
            )
            .map_err(database)?;
            let id = tx.last_insert_rowid();
            let record = find(&tx, scope, "id", &id, None)?.ok_or(StoreError::NotFound("operation"))?;
            tx.commit().map_err(database)?;
            Ok(Enqueued::Created(record))
        })
        .await
    }

    pub async fn operation(
        &self,
        scope: Scope,
        kind: OperationKind,
        key: &str,
    ) -> Result<Option<OperationRecord>> {
        let key = key.to_owned();
        self.read(move |connection| find(connection, scope, "operation_key", &key, Some(kind)))
            .await
    }

    pub async fn operation_by_id(
        &self,
        scope: Scope,
        id: OperationId,
    ) -> Result<Option<OperationRecord>> {
        self.read(move |connection| find(connection, scope, "id", &id.0, None))
            .await
    }

    pub async fn claim_next_operation(
        &self,
        scope: Scope,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<OperationClaim>> {
        // The same gate as the sales outbox: only the branch's signer claims.
        let Some(hold) = self.hold(scope, owner)? else {
            return Ok(None);
        };
        if !self.has_pending(scope, "operations").await? {
            return Ok(None);
        }
        self.run(move |connection| {
            let tx = connection
                .savepoint()
                .map_err(database)?;
            // Operations go in order too (stock master after the stock moves it follows):
            // only the head is eligible.
            let head = tx.prepare_cached("SELECT id, kind, endpoint, payload, payload_sha256, attempts, lease_owner, lease_expires_at,
                            next_attempt_at
                     FROM operations WHERE tenant_id = ?1 AND branch_id = ?2 AND state = 'PENDING'
                     ORDER BY id LIMIT 1").map_err(database)?.query_row(
                    params![scope.tenant.0, scope.branch.0],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, Option<String>>(6)?,
                            r.get::<_, Option<String>>(7)?,
                            r.get::<_, Option<String>>(8)?,
                        ))
                    },
                )
                .optional()
                .map_err(database)?;
            let Some((id, kind, endpoint, body, sha256, attempts, holder, held_until, next_attempt)) = head else {
                return Ok(None);
            };
            if let Some(at) = next_attempt
                && parse_timestamp(&at)? > now
            {
                return Ok(None);
            }
            let held_until = held_until.as_deref().map(parse_timestamp).transpose()?;
            if !hold.may_claim(holder.as_deref(), held_until, now) {
                return Ok(None);
            }
            let token = hold.lease_token();
            tx.prepare_cached("UPDATE operations SET lease_owner = ?1, lease_expires_at = ?2, attempts = attempts + 1 WHERE id = ?3").map_err(database)?.execute(
                params![token, timestamp(lease_until(now, lease)), id],
            )
            .map_err(database)?;
            tx.commit().map_err(database)?;
            Ok(Some(OperationClaim {
                scope,
                id: OperationId(id),
                kind: OperationKind::parse(&kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("operation kind {kind:?}")))?,
                endpoint,
                payload: OutboxPayload { body, sha256 },
                attempts: u32::try_from(attempts + 1).unwrap_or(u32::MAX),
                owner: token,
            }))
        })
        .await
    }

    pub async fn release_operation(
        &self,
        claim: &OperationClaim,
        retry_at: DateTime<Utc>,
    ) -> Result<()> {
        let claim = claim.clone();
        self.run(move |connection| {
            let released = connection.prepare_cached("UPDATE operations SET lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = ?1
                     WHERE id = ?2 AND tenant_id = ?3 AND branch_id = ?4 AND state = 'PENDING' AND lease_owner = ?5").map_err(database)?.execute(
                    params![timestamp(retry_at), claim.id.0, claim.scope.tenant.0, claim.scope.branch.0, claim.owner],
                )
                .map_err(database)?;
            if released == 0 {
                return Err(StoreError::NotFound("claimed operation"));
            }
            Ok(())
        })
        .await
    }

    pub async fn settle_operation(
        &self,
        claim: &OperationClaim,
        rejected: Option<(&str, &str)>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let claim = claim.clone();
        let (state, code, message) = match rejected {
            None => (OperationState::Synced, None, None),
            Some((code, message)) => (
                OperationState::Rejected,
                Some(code.to_owned()),
                Some(message.to_owned()),
            ),
        };
        self.run(move |connection| {
            let settled = connection.prepare_cached("UPDATE operations SET state = ?1, result_code = ?2, result_message = ?3, done_at = ?4,
                            lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = ?5 AND tenant_id = ?6 AND branch_id = ?7 AND state = 'PENDING' AND lease_owner = ?8").map_err(database)?.execute(
                    params![
                        state.as_str(),
                        code,
                        message,
                        timestamp(now),
                        claim.id.0,
                        claim.scope.tenant.0,
                        claim.scope.branch.0,
                        claim.owner
                    ],
                )
                .map_err(database)?;
            if settled == 0 {
                return Err(StoreError::NotFound("claimed operation"));
            }
            Ok(())
        })
        .await
    }

    pub async fn record_operation_exchange(
        &self,
        scope: Scope,
        operation: OperationId,
        exchange: &ExchangeRecord,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let exchange = exchange.clone();
        self.run(move |connection| {
            insert_exchange(connection, scope, &exchange, Some(operation.0), now)
        })
        .await
    }

    pub async fn operation_exchanges(
        &self,
        scope: Scope,
        operation: OperationId,
    ) -> Result<Vec<ExchangeRecord>> {
        self.read(move |connection| {
            read_exchanges(connection, scope, "operation_id", operation.0, None)
        })
        .await
    }
}
