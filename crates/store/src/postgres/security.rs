//! Operators, key listings and the audit log on PostgreSQL (see `crate::security`).
//! What acts across tenants (an operator's view, a request's first lookup) goes through
//! the definer functions of migration 0013; the rest runs in its tenant's transaction.

use chrono::{DateTime, Utc};

use super::{PostgresStore, enter_scope, query_error};
use crate::security::{
    ApiKeyListing, AuditEvent, BranchOverview, NewAuditEvent, OAuthClient, OperatorKey,
    TenantOverview, group_overview,
};
use crate::{ApiKey, BranchId, Result, Scope, Tenant, TenantId, clamp_time, last_used_is_stale};

const LISTING_COLUMNS: &str =
    "id, tenant_id, branch_id, prefix, name, created_at, last_used_at, revoked_at";

fn listing(row: &tokio_postgres::Row) -> ApiKeyListing {
    ApiKeyListing {
        id: row.get(0),
        scope: Scope {
            tenant: TenantId(row.get(1)),
            branch: BranchId(row.get(2)),
        },
        prefix: row.get(3),
        name: row.get(4),
        created_at: row.get(5),
        last_used_at: row.get(6),
        revoked_at: row.get(7),
    }
}

impl PostgresStore {
    pub async fn insert_operator_key(
        &self,
        name: &str,
        prefix: &str,
        sha256: &str,
    ) -> Result<OperatorKey> {
        let client = self.client().await?;
        let id: i64 = client
            .query_one(
                "INSERT INTO operator_keys (prefix, key_sha256, name) VALUES ($1, $2, $3) RETURNING id",
                &[&prefix, &sha256, &name],
            )
            .await
            .map_err(query_error)?
            .get(0);
        Ok(OperatorKey {
            id,
            prefix: prefix.to_owned(),
            name: name.to_owned(),
        })
    }

    pub async fn ensure_operator_key(
        &self,
        name: &str,
        prefix: &str,
        sha256: &str,
    ) -> Result<OperatorKey> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "WITH inserted AS (
                    INSERT INTO operator_keys (prefix, key_sha256, name) VALUES ($1, $2, $3)
                    ON CONFLICT (key_sha256) DO NOTHING RETURNING id, prefix, name)
                 SELECT id, prefix, name FROM inserted
                 UNION ALL SELECT id, prefix, name FROM operator_keys WHERE key_sha256 = $2
                 LIMIT 1",
                &[&prefix, &sha256, &name],
            )
            .await
            .map_err(query_error)?;
        Ok(OperatorKey {
            id: row.get(0),
            prefix: row.get(1),
            name: row.get(2),
        })
    }

    pub async fn operator_keys_exist(&self) -> Result<bool> {
        let client = self.client().await?;
        Ok(client
            .query_one("SELECT EXISTS (SELECT 1 FROM operator_keys)", &[])
            .await
            .map_err(query_error)?
            .get(0))
    }

    pub async fn authenticate_operator(
        &self,
        sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<OperatorKey>> {
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                "SELECT id, prefix, name, last_used_at FROM operator_keys
                 WHERE key_sha256 = $1 AND revoked_at IS NULL",
                &[&sha256],
            )
            .await
            .map_err(query_error)?
        else {
            return Ok(None);
        };
        let key = OperatorKey {
            id: row.get(0),
            prefix: row.get(1),
            name: row.get(2),
        };
        if last_used_is_stale(row.get(3), now) {
            client
                .execute(
                    "UPDATE operator_keys SET last_used_at = $1 WHERE id = $2",
                    &[&clamp_time(now), &key.id],
                )
                .await
                .map_err(query_error)?;
        }
        Ok(Some(key))
    }

    pub async fn api_keys(&self, scope: Scope) -> Result<Vec<ApiKeyListing>> {
        let rows = self
            .scoped_query(
                scope.tenant,
                Some(scope.branch),
                &format!(
                    "SELECT {LISTING_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND branch_id = $2
                     ORDER BY id DESC"
                ),
                &[&scope.tenant.0, &scope.branch.0],
            )
            .await?;
        Ok(rows.iter().map(listing).collect())
    }

    pub async fn revoke_api_key_by_id(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<ApiKeyListing>> {
        // An operator names the key only by id: its tenant comes from the definer function
        // `ushuru_api_key_scope`, and the revocation runs in that tenant's transaction.
        let Some(scope) = self
            .scope_of(
                "SELECT tenant_id, branch_id FROM ushuru_api_key_scope($1)",
                id,
            )
            .await?
        else {
            return Ok(None);
        };
        let rows = self
            .scoped_query(
                scope.tenant,
                Some(scope.branch),
                &format!(
                    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL
                     RETURNING {LISTING_COLUMNS}"
                ),
                &[&clamp_time(now), &id],
            )
            .await?;
        Ok(rows.first().map(listing))
    }

    /// The scope a definer function (`sql`, one parameter) finds for an id.
    async fn scope_of(&self, sql: &str, id: i64) -> Result<Option<Scope>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client.prepare_cached(sql).await.map_err(query_error)?,
                &[&id],
            )
            .await
            .map_err(query_error)?;
        Ok(row.map(|r| Scope {
            tenant: TenantId(r.get(0)),
            branch: BranchId(r.get(1)),
        }))
    }

    pub async fn tenants_overview(&self) -> Result<Vec<TenantOverview>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT tenant_id, tin, tenant_name, branch_id, bhf_id, sdc_id, mrc_no
                 FROM ushuru_tenants_overview()",
                &[],
            )
            .await
            .map_err(query_error)?;
        Ok(group_overview(rows.iter().map(|r| {
            let tenant = Tenant {
                id: TenantId(r.get(0)),
                tin: r.get(1),
                name: r.get(2),
            };
            let branch = r.get::<_, Option<i64>>(3).map(|id| BranchOverview {
                id: BranchId(id),
                bhf_id: r.get(4),
                sdc_id: r.get(5),
                mrc_no: r.get(6),
            });
            (tenant, branch)
        })))
    }

    pub async fn audit(&self, event: NewAuditEvent) -> Result<i64> {
        let mut client = self.client().await?;
        let detail = tokio_postgres::types::Json(&event.detail);
        // One writer at a time: ids are handed out before commit, so two concurrent
        // inserts could commit out of id order, and a reader paging by id would skip the
        // lower one for good. Security events are rare; serialising them costs nothing.
        let tx = client.transaction().await.map_err(query_error)?;
        tx.execute("SELECT pg_advisory_xact_lock(7020302)", &[])
            .await
            .map_err(query_error)?;
        let id = tx
            .query_one(
                "INSERT INTO audit_events (at, actor, action, tenant_id, branch_id, detail)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &clamp_time(event.at),
                    &event.actor,
                    &event.action,
                    &event.tenant.map(|t| t.0),
                    &event.branch.map(|b| b.0),
                    &detail,
                ],
            )
            .await
            .map_err(query_error)?
            .get(0);
        tx.commit().await.map_err(query_error)?;
        Ok(id)
    }

    pub async fn audit_events(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, at, actor, action, tenant_id, branch_id, detail FROM audit_events
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &i64::from(limit)],
            )
            .await
            .map_err(query_error)?;
        Ok(rows
            .iter()
            .map(|r| AuditEvent {
                id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                tenant: r.get::<_, Option<i64>>(4).map(TenantId),
                branch: r.get::<_, Option<i64>>(5).map(BranchId),
                detail: r
                    .get::<_, tokio_postgres::types::Json<serde_json::Value>>(6)
                    .0,
            })
            .collect())
    }
}

impl PostgresStore {
    pub async fn insert_oauth_client(
        &self,
        scope: Scope,
        client_id: &str,
        secret_sha256: &str,
        name: &str,
    ) -> Result<OAuthClient> {
        let rows = self
            .scoped_query(
                scope.tenant,
                Some(scope.branch),
                "INSERT INTO oauth_clients (tenant_id, branch_id, client_id, secret_sha256, name)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[
                    &scope.tenant.0,
                    &scope.branch.0,
                    &client_id,
                    &secret_sha256,
                    &name,
                ],
            )
            .await?;
        let id: i64 = rows
            .first()
            .map(|r| r.get(0))
            .ok_or_else(|| crate::StoreError::Database("INSERT … RETURNING gave no row".into()))?;
        Ok(OAuthClient {
            id,
            scope,
            client_id: client_id.to_owned(),
            name: name.to_owned(),
        })
    }

    pub async fn live_oauth_client(
        &self,
        client_id: &str,
    ) -> Result<Option<(OAuthClient, String)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, tenant_id, branch_id, client_id, name, secret_sha256
                 FROM ushuru_oauth_client_by_client_id($1)",
                &[&client_id],
            )
            .await
            .map_err(query_error)?;
        Ok(row.map(|r| (oauth_client(&r), r.get(5))))
    }

    pub async fn insert_oauth_token(
        &self,
        token_sha256: &str,
        oauth: &OAuthClient,
        expires: DateTime<Utc>,
    ) -> Result<()> {
        self.scoped_execute(
            oauth.scope.tenant,
            Some(oauth.scope.branch),
            "INSERT INTO oauth_tokens (token_sha256, client, tenant_id, branch_id, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &token_sha256,
                &oauth.id,
                &oauth.scope.tenant.0,
                &oauth.scope.branch.0,
                &expires,
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn oauth_token(
        &self,
        token_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ApiKey>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, tenant_id, branch_id, client_id, name FROM ushuru_oauth_token($1, $2)",
                &[&token_sha256, &clamp_time(now)],
            )
            .await
            .map_err(query_error)?;
        Ok(row.map(|r| oauth_client(&r).acting_key()))
    }

    pub async fn revoke_oauth_client(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<OAuthClient>> {
        let Some(scope) = self
            .scope_of(
                "SELECT tenant_id, branch_id FROM ushuru_oauth_client_scope($1)",
                id,
            )
            .await?
        else {
            return Ok(None);
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        enter_scope(&tx, scope).await?;
        let row = tx
            .query_opt(
                "UPDATE oauth_clients SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL
                 RETURNING id, tenant_id, branch_id, client_id, name",
                &[&clamp_time(now), &id],
            )
            .await
            .map_err(query_error)?;
        tx.execute("DELETE FROM oauth_tokens WHERE client = $1", &[&id])
            .await
            .map_err(query_error)?;
        tx.commit().await.map_err(query_error)?;
        Ok(row.as_ref().map(oauth_client))
    }

    pub async fn purge_oauth_tokens(&self, now: DateTime<Utc>) -> Result<u64> {
        let client = self.client().await?;
        let purged: i64 = client
            .query_one("SELECT ushuru_purge_oauth_tokens($1)", &[&clamp_time(now)])
            .await
            .map_err(query_error)?
            .get(0);
        Ok(u64::try_from(purged).unwrap_or_default())
    }
}

fn oauth_client(r: &tokio_postgres::Row) -> OAuthClient {
    OAuthClient {
        id: r.get(0),
        scope: Scope {
            tenant: TenantId(r.get(1)),
            branch: BranchId(r.get(2)),
        },
        client_id: r.get(3),
        name: r.get(4),
    }
}

impl PostgresStore {
    pub async fn replace_sealed_cmc_key(
        &self,
        scope: Scope,
        expected: &crate::SealedCmcKey,
        new: &crate::SealedCmcKey,
    ) -> Result<bool> {
        let old = crate::SealedColumns::of(expected);
        let key = crate::SealedColumns::of(new);
        let version = |v: i64| {
            i32::try_from(v)
                .map_err(|_| crate::StoreError::Conflict(format!("key version {v} out of range")))
        };
        let replaced = self
            .scoped_execute(
                scope.tenant,
                Some(scope.branch),
                "UPDATE branches SET cmc_key_nonce = $1, cmc_key_sealed = $2, data_key_version = $3,
                        data_key_nonce = $4, data_key_wrapped = $5, master_key_version = $6
                 WHERE id = $7 AND tenant_id = $8 AND data_key_version = $9 AND master_key_version = $10
                   AND data_key_nonce = $11 AND cmc_key_nonce = $12",
                &[&key.nonce, &key.sealed, &version(key.data_key_version)?, &key.data_key_nonce,
                  &key.data_key_wrapped, &version(key.master_key_version)?, &scope.branch.0, &scope.tenant.0,
                  &version(old.data_key_version)?, &version(old.master_key_version)?,
                  &old.data_key_nonce, &old.nonce],
            )
            .await?;
        Ok(replaced == 1)
    }
}

impl PostgresStore {
    pub async fn operator_keys(&self) -> Result<Vec<crate::OperatorKeyListing>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, prefix, name, created_at, last_used_at, revoked_at FROM operator_keys
                 ORDER BY id DESC",
                &[],
            )
            .await
            .map_err(query_error)?;
        Ok(rows
            .iter()
            .map(|r| crate::OperatorKeyListing {
                key: OperatorKey {
                    id: r.get(0),
                    prefix: r.get(1),
                    name: r.get(2),
                },
                created_at: r.get(3),
                last_used_at: r.get(4),
                revoked_at: r.get(5),
            })
            .collect())
    }

    pub async fn revoke_operator_key(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<OperatorKey>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE operator_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL
                 RETURNING id, prefix, name",
                &[&clamp_time(now), &id],
            )
            .await
            .map_err(query_error)?;
        Ok(row.map(|r| OperatorKey {
            id: r.get(0),
            prefix: r.get(1),
            name: r.get(2),
        }))
    }
}

impl PostgresStore {
    pub async fn api_key_known(&self, sha256: &str) -> Result<bool> {
        let client = self.client().await?;
        Ok(client
            .query_one("SELECT ushuru_api_key_known($1)", &[&sha256])
            .await
            .map_err(query_error)?
            .get(0))
    }
}

impl PostgresStore {
    pub async fn discard_unprovisioned_branch(
        &self,
        scope: Scope,
        with_tenant: bool,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(query_error)?;
        super::enter(&tx, scope.tenant).await?;
        let removed = tx
            .execute(
                "DELETE FROM branches WHERE id = $1 AND tenant_id = $2
                   AND sdc_id IS NULL AND cmc_key IS NULL AND cmc_key_sealed IS NULL",
                &[&scope.branch.0, &scope.tenant.0],
            )
            .await
            .map_err(query_error)?;
        if removed == 1 && with_tenant {
            tx.execute(
                "DELETE FROM tenants WHERE id = $1
                   AND NOT EXISTS (SELECT 1 FROM branches WHERE tenant_id = $1)",
                &[&scope.tenant.0],
            )
            .await
            .map_err(query_error)?;
        }
        tx.commit().await.map_err(query_error)?;
        Ok(removed == 1)
    }
}
