//! The PostgreSQL backend: a connection pool shared by any number of processes. Invoice
//! numbers are allocated under the branch row's lock, and the branch's head outbox row is
//! claimed under `FOR UPDATE`, so replicas serialise per branch in the database itself.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::{
    AcceptedSale, Branch, BranchId, Claim, MIGRATIONS, NewSale, OutboxPayload, PayloadBuilder,
    Receipt, Result, SaleId, SaleRecord, SaleStatus, Scope, StoreError, Tenant, TenantId,
    lease_until, money_from_text, money_text, to_i64, to_u64,
};

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

fn database(error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(error.to_string())
}

/// The constraint a unique violation broke, by its explicit name in the migration.
fn violated_constraint(error: &tokio_postgres::Error) -> Option<&str> {
    let db = error.as_db_error()?;
    (db.code() == &SqlState::UNIQUE_VIOLATION)
        .then(|| db.constraint())
        .flatten()
}

/// Sets the transaction's tenant for row-level security (effective to the end of the
/// transaction only: `set_config(…, true)`).
async fn enter(tx: &Transaction<'_>, tenant: TenantId) -> Result<()> {
    tx.execute(
        "SELECT set_config('ushuru.tenant_id', $1, true)",
        &[&tenant.0.to_string()],
    )
    .await
    .map_err(database)?;
    Ok(())
}

impl PostgresStore {
    pub async fn connect(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Url(format!("{url}: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(database)?;
        // Fail now, with the reason, rather than on the first query.
        drop(
            pool.get()
                .await
                .map_err(|e| StoreError::Database(format!("cannot connect to PostgreSQL: {e}")))?,
        );
        Ok(PostgresStore { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(database)
    }

    pub async fn migrate(&self) -> Result<Vec<&'static str>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        // Replicas starting together migrate one at a time.
        tx.execute("SELECT pg_advisory_xact_lock(7020301)", &[])
            .await
            .map_err(database)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    BIGINT CONSTRAINT schema_migrations_pk PRIMARY KEY,
                name       TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(database)?;
        let mut applied = Vec::new();
        for migration in MIGRATIONS {
            let done = tx
                .query_opt(
                    "SELECT version FROM schema_migrations WHERE version = $1",
                    &[&migration.version],
                )
                .await
                .map_err(database)?;
            if done.is_none() {
                tx.batch_execute(migration.postgres)
                    .await
                    .map_err(database)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    &[&migration.version, &migration.name],
                )
                .await
                .map_err(database)?;
                applied.push(migration.name);
            }
        }
        tx.commit().await.map_err(database)?;
        Ok(applied)
    }

    pub async fn create_tenant(&self, tin: &str, name: &str) -> Result<Tenant> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO tenants (tin, name) VALUES ($1, $2) RETURNING id",
                &[&tin, &name],
            )
            .await
            .map_err(|e| match violated_constraint(&e) {
                Some("tenants_tin_unique") => {
                    StoreError::Conflict(format!("a tenant with PIN {tin} exists"))
                }
                _ => database(e),
            })?;
        Ok(Tenant {
            id: TenantId(row.get(0)),
            tin: tin.to_owned(),
            name: name.to_owned(),
        })
    }

    pub async fn create_branch(&self, tenant: TenantId, bhf_id: &str) -> Result<Branch> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        enter(&tx, tenant).await?;
        let row = tx
            .query_one(
                "INSERT INTO branches (tenant_id, bhf_id) VALUES ($1, $2) RETURNING id",
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
        tx.commit().await.map_err(database)?;
        Ok(Branch {
            id: BranchId(row.get(0)),
            tenant,
            bhf_id: bhf_id.to_owned(),
            last_invc_no: 0,
        })
    }

    pub async fn branch(&self, scope: Scope) -> Result<Option<Branch>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        enter(&tx, scope.tenant).await?;
        let row = tx
            .query_opt(
                "SELECT bhf_id, last_invc_no FROM branches WHERE id = $1 AND tenant_id = $2",
                &[&scope.branch.0, &scope.tenant.0],
            )
            .await
            .map_err(database)?;
        tx.commit().await.map_err(database)?;
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
        let tx = client.transaction().await.map_err(database)?;
        enter(&tx, scope.tenant).await?;
        // The branch row's lock serialises numbering across replicas until this commits.
        let row = tx
            .query_opt(
                "UPDATE branches SET last_invc_no = last_invc_no + 1 WHERE id = $1 AND tenant_id = $2 RETURNING last_invc_no",
                &[&scope.branch.0, &scope.tenant.0],
            )
            .await
            .map_err(database)?
            .ok_or(StoreError::NotFound("branch"))?;
        let invc_no = to_u64(row.get(0), "invc_no")?;
        let payload = build(invc_no).map_err(StoreError::Payload)?;
        let number = to_i64(invc_no, "invc_no")?;
        let sale_id: i64 = tx
            .query_one(
                "INSERT INTO sales (tenant_id, branch_id, invc_no, client_reference, status, tot_amt)
                 VALUES ($1, $2, $3, $4, 'PENDING_SYNC', $5::text::numeric) RETURNING id",
                &[&scope.tenant.0, &scope.branch.0, &number, &sale.client_reference, &money_text(sale.tot_amt)],
            )
            .await
            .map_err(database)?
            .get(0);
        tx.execute(
            "INSERT INTO outbox (tenant_id, branch_id, sale_id, invc_no, payload, payload_sha256) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&scope.tenant.0, &scope.branch.0, &sale_id, &number, &payload.body, &payload.sha256],
        )
        .await
        .map_err(database)?;
        tx.commit().await.map_err(database)?;
        Ok(AcceptedSale {
            sale: SaleId(sale_id),
            invc_no,
        })
    }

    pub async fn claim_next(
        &self,
        scope: Scope,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Claim>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        enter(&tx, scope.tenant).await?;
        // Locking the head row (not skipping it) makes a second claimer wait for the first to
        // commit its lease, then see it: only the head is ever eligible, so order holds.
        let head = tx
            .query_opt(
                "SELECT id, sale_id, invc_no, payload, payload_sha256, attempts, lease_owner, lease_expires_at
                 FROM outbox WHERE tenant_id = $1 AND branch_id = $2 AND state = 'PENDING'
                 ORDER BY invc_no LIMIT 1 FOR UPDATE",
                &[&scope.tenant.0, &scope.branch.0],
            )
            .await
            .map_err(database)?;
        let Some(head) = head else {
            tx.commit().await.map_err(database)?;
            return Ok(None);
        };
        let holder: Option<String> = head.get(6);
        let held_until: Option<DateTime<Utc>> = head.get(7);
        if let (Some(holder), Some(until)) = (holder, held_until)
            && holder != owner
            && until > now
        {
            tx.commit().await.map_err(database)?;
            return Ok(None);
        }
        let id: i64 = head.get(0);
        let expires = lease_until(now, lease);
        let attempts: i32 = tx
            .query_one(
                "UPDATE outbox SET lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1 WHERE id = $3 RETURNING attempts",
                &[&owner, &expires, &id],
            )
            .await
            .map_err(database)?
            .get(0);
        tx.commit().await.map_err(database)?;
        Ok(Some(Claim {
            outbox_id: id,
            scope,
            sale: SaleId(head.get(1)),
            invc_no: to_u64(head.get(2), "invc_no")?,
            payload: OutboxPayload {
                body: head.get(3),
                sha256: head.get(4),
            },
            attempts: u32::try_from(attempts).unwrap_or(0),
            owner: owner.to_owned(),
            lease_expires_at: expires,
        }))
    }

    pub async fn record_receipt(
        &self,
        claim: &Claim,
        receipt: &Receipt,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let scope = claim.scope;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        enter(&tx, scope.tenant).await?;
        let done = tx
            .execute(
                "UPDATE outbox SET state = 'DONE', lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = $1 AND tenant_id = $2 AND branch_id = $3 AND state = 'PENDING'",
                &[&claim.outbox_id, &scope.tenant.0, &scope.branch.0],
            )
            .await
            .map_err(database)?;
        if done == 0 {
            return Err(StoreError::NotFound("pending outbox row"));
        }
        let rcpt_no = to_i64(receipt.tot_rcpt_no, "rcpt_no")?;
        tx.execute(
            "INSERT INTO receipts (tenant_id, branch_id, sdc_id, rcpt_no, sale_id) VALUES ($1, $2, $3, $4, $5)",
            &[&scope.tenant.0, &scope.branch.0, &receipt.sdc_id, &rcpt_no, &claim.sale.0],
        )
        .await
        .map_err(|e| match violated_constraint(&e) {
            Some("receipts_sdc_rcpt_unique") => {
                StoreError::DuplicateReceipt { sdc_id: receipt.sdc_id.clone(), rcpt_no: receipt.tot_rcpt_no }
            }
            _ => database(e),
        })?;
        tx.execute(
            "UPDATE sales SET status = 'SIGNED', cur_rcpt_no = $1, tot_rcpt_no = $2, intrl_data = $3, rcpt_sign = $4,
                 sdc_date_time = $5, sdc_id = $6, mrc_no = $7, signed_at = $8
             WHERE id = $9 AND tenant_id = $10 AND branch_id = $11",
            &[
                &to_i64(receipt.cur_rcpt_no, "cur_rcpt_no")?,
                &rcpt_no,
                &receipt.intrl_data,
                &receipt.rcpt_sign,
                &receipt.sdc_date_time,
                &receipt.sdc_id,
                &receipt.mrc_no,
                &now,
                &claim.sale.0,
                &scope.tenant.0,
                &scope.branch.0,
            ],
        )
        .await
        .map_err(database)?;
        tx.commit().await.map_err(database)
    }

    pub async fn sale(&self, scope: Scope, id: SaleId) -> Result<Option<SaleRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        enter(&tx, scope.tenant).await?;
        let row = tx
            .query_opt(
                "SELECT invc_no, client_reference, status, tot_amt::text, sdc_id, mrc_no, cur_rcpt_no, tot_rcpt_no,
                        intrl_data, rcpt_sign, sdc_date_time
                 FROM sales WHERE id = $1 AND tenant_id = $2 AND branch_id = $3",
                &[&id.0, &scope.tenant.0, &scope.branch.0],
            )
            .await
            .map_err(database)?;
        tx.commit().await.map_err(database)?;
        let Some(row) = row else { return Ok(None) };
        let status: String = row.get(2);
        let receipt = match (
            row.get::<_, Option<String>>(4),
            row.get::<_, Option<i64>>(6),
            row.get::<_, Option<i64>>(7),
            row.get::<_, Option<String>>(8),
            row.get::<_, Option<String>>(9),
            row.get::<_, Option<String>>(10),
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
                mrc_no: row.get(5),
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
            invc_no: to_u64(row.get(0), "invc_no")?,
            client_reference: row.get(1),
            status: SaleStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("sale status {status:?}")))?,
            tot_amt: money_from_text(row.get::<_, &str>(3))?,
            receipt,
        }))
    }
}
