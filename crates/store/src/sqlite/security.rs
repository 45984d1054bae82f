//! Operators, key listings and the audit log on SQLite (see `crate::security`).

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, database, parse_timestamp, timestamp};
use crate::security::{
    ApiKeyListing, AuditEvent, BranchOverview, NewAuditEvent, OAuthClient, OperatorKey,
    TenantOverview, group_overview,
};
use crate::{ApiKey, BranchId, Result, Scope, StoreError, Tenant, TenantId, last_used_is_stale};

const LISTING_COLUMNS: &str =
    "id, tenant_id, branch_id, prefix, name, created_at, last_used_at, revoked_at";

struct RawListing {
    id: i64,
    tenant: i64,
    branch: i64,
    prefix: String,
    name: String,
    created_at: String,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
}

fn raw_listing(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawListing> {
    Ok(RawListing {
        id: r.get(0)?,
        tenant: r.get(1)?,
        branch: r.get(2)?,
        prefix: r.get(3)?,
        name: r.get(4)?,
        created_at: r.get(5)?,
        last_used_at: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

fn optional_time(text: Option<String>) -> Result<Option<DateTime<Utc>>> {
    text.as_deref().map(parse_timestamp).transpose()
}

impl RawListing {
    fn into_listing(self) -> Result<ApiKeyListing> {
        Ok(ApiKeyListing {
            id: self.id,
            scope: Scope {
                tenant: TenantId(self.tenant),
                branch: BranchId(self.branch),
            },
            prefix: self.prefix,
            name: self.name,
            created_at: parse_timestamp(&self.created_at)?,
            last_used_at: optional_time(self.last_used_at)?,
            revoked_at: optional_time(self.revoked_at)?,
        })
    }
}

impl SqliteStore {
    pub async fn insert_operator_key(
        &self,
        name: &str,
        prefix: &str,
        sha256: &str,
    ) -> Result<OperatorKey> {
        let (name, prefix, sha256) = (name.to_owned(), prefix.to_owned(), sha256.to_owned());
        self.run(move |connection| {
            connection
                .execute(
                    "INSERT INTO operator_keys (prefix, key_sha256, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![prefix, sha256, name, timestamp(Utc::now())],
                )
                .map_err(database)?;
            Ok(OperatorKey {
                id: connection.last_insert_rowid(),
                prefix,
                name,
            })
        })
        .await
    }

    pub async fn ensure_operator_key(
        &self,
        name: &str,
        prefix: &str,
        sha256: &str,
    ) -> Result<OperatorKey> {
        let (name, prefix, sha256) = (name.to_owned(), prefix.to_owned(), sha256.to_owned());
        self.run(move |connection| {
            connection
                .execute(
                    "INSERT INTO operator_keys (prefix, key_sha256, name, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (key_sha256) DO NOTHING",
                    params![prefix, sha256, name, timestamp(Utc::now())],
                )
                .map_err(database)?;
            connection
                .query_row(
                    "SELECT id, prefix, name FROM operator_keys WHERE key_sha256 = ?1",
                    params![sha256],
                    |r| {
                        Ok(OperatorKey {
                            id: r.get(0)?,
                            prefix: r.get(1)?,
                            name: r.get(2)?,
                        })
                    },
                )
                .map_err(database)
        })
        .await
    }

    pub async fn operator_keys_exist(&self) -> Result<bool> {
        self.read(|connection| {
            connection
                .query_row("SELECT EXISTS (SELECT 1 FROM operator_keys)", [], |r| {
                    r.get(0)
                })
                .map_err(database)
        })
        .await
    }

    pub async fn authenticate_operator(
        &self,
        sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<OperatorKey>> {
        let sha256 = sha256.to_owned();
        let found = self
            .read(move |connection| {
                connection
                    .query_row(
                        "SELECT id, prefix, name, last_used_at FROM operator_keys
                         WHERE key_sha256 = ?1 AND revoked_at IS NULL",
                        params![sha256],
                        |r| {
                            Ok((
                                OperatorKey {
                                    id: r.get(0)?,
                                    prefix: r.get(1)?,
                                    name: r.get(2)?,
                                },
                                r.get::<_, Option<String>>(3)?,
                            ))
                        },
                    )
                    .optional()
                    .map_err(database)
            })
            .await?;
        let Some((key, last_used)) = found else {
            return Ok(None);
        };
        if last_used_is_stale(optional_time(last_used)?, now) {
            let id = key.id;
            self.run(move |connection| {
                connection
                    .execute(
                        "UPDATE operator_keys SET last_used_at = ?1 WHERE id = ?2",
                        params![timestamp(now), id],
                    )
                    .map_err(database)?;
                Ok(())
            })
            .await?;
        }
        Ok(Some(key))
    }

    pub async fn api_keys(&self, scope: Scope) -> Result<Vec<ApiKeyListing>> {
        let raw = self
            .read(move |connection| {
                let mut statement = connection
                    .prepare(&format!(
                        "SELECT {LISTING_COLUMNS} FROM api_keys WHERE tenant_id = ?1 AND branch_id = ?2
                         ORDER BY id DESC"
                    ))
                    .map_err(database)?;
                let rows = statement
                    .query_map(params![scope.tenant.0, scope.branch.0], raw_listing)
                    .map_err(database)?;
                rows.collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(database)
            })
            .await?;
        raw.into_iter().map(RawListing::into_listing).collect()
    }

    pub async fn revoke_api_key_by_id(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<ApiKeyListing>> {
        let raw = self
            .run(move |connection| {
                connection
                    .query_row(
                        &format!(
                            "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL
                             RETURNING {LISTING_COLUMNS}"
                        ),
                        params![timestamp(now), id],
                        raw_listing,
                    )
                    .optional()
                    .map_err(database)
            })
            .await?;
        raw.map(RawListing::into_listing).transpose()
    }

    pub async fn tenants_overview(&self) -> Result<Vec<TenantOverview>> {
        self.read(|connection| {
            let mut statement = connection
                .prepare(
                    "SELECT t.id, t.tin, t.name, b.id, b.bhf_id,
                            CASE WHEN b.cmc_key_sealed IS NOT NULL THEN b.sdc_id END,
                            CASE WHEN b.cmc_key_sealed IS NOT NULL THEN b.mrc_no END
                     FROM tenants t LEFT JOIN branches b ON b.tenant_id = t.id
                     ORDER BY t.id, b.id",
                )
                .map_err(database)?;
            let rows = statement
                .query_map([], |r| {
                    let tenant = Tenant {
                        id: TenantId(r.get(0)?),
                        tin: r.get(1)?,
                        name: r.get(2)?,
                    };
                    let branch = match r.get::<_, Option<i64>>(3)? {
                        Some(id) => Some(BranchOverview {
                            id: BranchId(id),
                            bhf_id: r.get(4)?,
                            sdc_id: r.get(5)?,
                            mrc_no: r.get(6)?,
                        }),
                        None => None,
                    };
                    Ok((tenant, branch))
                })
                .map_err(database)?;
            let rows = rows
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(database)?;
            Ok(group_overview(rows))
        })
        .await
    }

    pub async fn audit(&self, event: NewAuditEvent) -> Result<i64> {
        let detail = serde_json::to_string(&event.detail)
            .map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?;
        self.run(move |connection| {
            connection
                .execute(
                    "INSERT INTO audit_events (at, actor, action, tenant_id, branch_id, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        timestamp(event.at),
                        event.actor,
                        event.action,
                        event.tenant.map(|t| t.0),
                        event.branch.map(|b| b.0),
                        detail
                    ],
                )
                .map_err(database)?;
            Ok(connection.last_insert_rowid())
        })
        .await
    }

    pub async fn audit_events(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>> {
        type Raw = (
            i64,
            String,
            String,
            String,
            Option<i64>,
            Option<i64>,
            String,
        );
        let raw: Vec<Raw> = self
            .read(move |connection| {
                let mut statement = connection
                    .prepare(
                        "SELECT id, at, actor, action, tenant_id, branch_id, detail FROM audit_events
                         WHERE id > ?1 ORDER BY id LIMIT ?2",
                    )
                    .map_err(database)?;
                let rows = statement
                    .query_map(params![after, i64::from(limit)], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                    })
                    .map_err(database)?;
                rows.collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(database)
            })
            .await?;
        raw.into_iter()
            .map(|(id, at, actor, action, tenant, branch, detail)| {
                Ok(AuditEvent {
                    id,
                    at: parse_timestamp(&at)?,
                    actor,
                    action,
                    tenant: tenant.map(TenantId),
                    branch: branch.map(BranchId),
                    detail: serde_json::from_str(&detail)
                        .map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?,
                })
            })
            .collect()
    }
}

fn oauth_client(r: &rusqlite::Row<'_>) -> rusqlite::Result<OAuthClient> {
    Ok(OAuthClient {
        id: r.get(0)?,
        scope: Scope {
            tenant: TenantId(r.get(1)?),
            branch: BranchId(r.get(2)?),
        },
        client_id: r.get(3)?,
        name: r.get(4)?,
    })
}

impl SqliteStore {
    pub async fn insert_oauth_client(
        &self,
        scope: Scope,
        client_id: &str,
        secret_sha256: &str,
        name: &str,
    ) -> Result<OAuthClient> {
        let (client_id, secret_sha256, name) = (
            client_id.to_owned(),
            secret_sha256.to_owned(),
            name.to_owned(),
        );
        self.run(move |connection| {
            connection
                .execute(
                    "INSERT INTO oauth_clients (tenant_id, branch_id, client_id, secret_sha256, name, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![scope.tenant.0, scope.branch.0, client_id, secret_sha256, name, timestamp(Utc::now())],
                )
                .map_err(database)?;
            Ok(OAuthClient {
                id: connection.last_insert_rowid(),
                scope,
                client_id,
                name,
            })
        })
        .await
    }

    pub async fn live_oauth_client(
        &self,
        client_id: &str,
    ) -> Result<Option<(OAuthClient, String)>> {
        let client_id = client_id.to_owned();
        self.read(move |connection| {
            connection
                .query_row(
                    "SELECT id, tenant_id, branch_id, client_id, name, secret_sha256 FROM oauth_clients
                     WHERE client_id = ?1 AND revoked_at IS NULL",
                    params![client_id],
                    |r| Ok((oauth_client(r)?, r.get(5)?)),
                )
                .optional()
                .map_err(database)
        })
        .await
    }

    pub async fn insert_oauth_token(
        &self,
        token_sha256: &str,
        oauth: &OAuthClient,
        expires: DateTime<Utc>,
    ) -> Result<()> {
        let (token_sha256, oauth) = (token_sha256.to_owned(), oauth.clone());
        self.run(move |connection| {
            connection
                .execute(
                    "INSERT INTO oauth_tokens (token_sha256, client, tenant_id, branch_id, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![token_sha256, oauth.id, oauth.scope.tenant.0, oauth.scope.branch.0, timestamp(expires)],
                )
                .map_err(database)?;
            Ok(())
        })
        .await
    }

    pub async fn oauth_token(
        &self,
        token_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ApiKey>> {
        let token_sha256 = token_sha256.to_owned();
        let found = self
            .read(move |connection| {
                connection
                    .query_row(
                        "SELECT c.id, c.tenant_id, c.branch_id, c.client_id, c.name
                         FROM oauth_tokens t JOIN oauth_clients c ON c.id = t.client
                         WHERE t.token_sha256 = ?1 AND t.expires_at > ?2 AND c.revoked_at IS NULL",
                        params![token_sha256, timestamp(now)],
                        oauth_client,
                    )
                    .optional()
                    .map_err(database)
            })
            .await?;
        Ok(found.map(OAuthClient::acting_key))
    }

    pub async fn revoke_oauth_client(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<OAuthClient>> {
        self.run(move |connection| {
            let client = connection
                .query_row(
                    "UPDATE oauth_clients SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL
                     RETURNING id, tenant_id, branch_id, client_id, name",
                    params![timestamp(now), id],
                    oauth_client,
                )
                .optional()
                .map_err(database)?;
            connection
                .execute("DELETE FROM oauth_tokens WHERE client = ?1", params![id])
                .map_err(database)?;
            Ok(client)
        })
        .await
    }

    pub async fn purge_oauth_tokens(&self, now: DateTime<Utc>) -> Result<u64> {
        self.run(move |connection| {
            let purged = connection
                .execute(
                    "DELETE FROM oauth_tokens WHERE expires_at <= ?1",
                    params![timestamp(now)],
                )
                .map_err(database)?;
            Ok(u64::try_from(purged).unwrap_or(u64::MAX))
        })
        .await
    }
}

impl SqliteStore {
    pub async fn replace_sealed_cmc_key(
        &self,
        scope: Scope,
        expected: &crate::SealedCmcKey,
        new: &crate::SealedCmcKey,
    ) -> Result<bool> {
        let old = crate::SealedColumns::of(expected);
        let key = crate::SealedColumns::of(new);
        self.run(move |connection| {
            let replaced = connection
                .execute(
                    "UPDATE branches SET cmc_key_nonce = ?1, cmc_key_sealed = ?2, data_key_version = ?3,
                            data_key_nonce = ?4, data_key_wrapped = ?5, master_key_version = ?6
                     WHERE id = ?7 AND tenant_id = ?8 AND data_key_version = ?9 AND master_key_version = ?10
                       AND data_key_nonce = ?11 AND cmc_key_nonce = ?12",
                    params![key.nonce, key.sealed, key.data_key_version, key.data_key_nonce,
                            key.data_key_wrapped, key.master_key_version, scope.branch.0, scope.tenant.0,
                            old.data_key_version, old.master_key_version, old.data_key_nonce, old.nonce],
                )
                .map_err(database)?;
            Ok(replaced == 1)
        })
        .await
    }
}

impl SqliteStore {
    pub async fn operator_keys(&self) -> Result<Vec<crate::OperatorKeyListing>> {
        type Raw = (i64, String, String, String, Option<String>, Option<String>);
        let raw: Vec<Raw> = self
            .read(|connection| {
                let mut statement = connection
                    .prepare(
                        "SELECT id, prefix, name, created_at, last_used_at, revoked_at FROM operator_keys
                         ORDER BY id DESC",
                    )
                    .map_err(database)?;
                let rows = statement
                    .query_map([], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                    })
                    .map_err(database)?;
                rows.collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(database)
            })
            .await?;
        raw.into_iter()
            .map(|(id, prefix, name, created, used, revoked)| {
                Ok(crate::OperatorKeyListing {
                    key: OperatorKey { id, prefix, name },
                    created_at: parse_timestamp(&created)?,
                    last_used_at: optional_time(used)?,
                    revoked_at: optional_time(revoked)?,
                })
            })
            .collect()
    }

    pub async fn revoke_operator_key(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<OperatorKey>> {
        self.run(move |connection| {
            connection
                .query_row(
                    "UPDATE operator_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL
                     RETURNING id, prefix, name",
                    params![timestamp(now), id],
                    |r| {
                        Ok(OperatorKey {
                            id: r.get(0)?,
                            prefix: r.get(1)?,
                            name: r.get(2)?,
                        })
                    },
                )
                .optional()
                .map_err(database)
        })
        .await
    }
}

impl SqliteStore {
    pub async fn api_key_known(&self, sha256: &str) -> Result<bool> {
        let sha256 = sha256.to_owned();
        self.read(move |connection| {
            connection
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM api_keys WHERE key_sha256 = ?1)",
                    params![sha256],
                    |r| r.get(0),
                )
                .map_err(database)
        })
        .await
    }
}

impl SqliteStore {
    pub async fn discard_unprovisioned_branch(
        &self,
        scope: Scope,
        with_tenant: bool,
    ) -> Result<bool> {
        self.run(move |connection| {
            // A savepoint: the writer runs each job inside its batch's transaction.
            let tx = connection.savepoint().map_err(database)?;
            let removed = tx
                .execute(
                    "DELETE FROM branches WHERE id = ?1 AND tenant_id = ?2
                       AND sdc_id IS NULL AND cmc_key IS NULL AND cmc_key_sealed IS NULL",
                    params![scope.branch.0, scope.tenant.0],
                )
                .map_err(database)?;
            if removed == 1 && with_tenant {
                tx.execute(
                    "DELETE FROM tenants WHERE id = ?1
                       AND NOT EXISTS (SELECT 1 FROM branches WHERE tenant_id = ?1)",
                    params![scope.tenant.0],
                )
                .map_err(database)?;
            }
            tx.commit().map_err(database)?;
            Ok(removed == 1)
        })
        .await
    }
}
