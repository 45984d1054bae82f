//! Operators, keys by listing, and the security audit log (issue 5): the store's side.
//! Keys are kept only as a SHA-256 and a prefix; the audit log is append-only in the
//! database itself (a trigger refuses updates and deletes) and never holds a secret.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::{BranchId, Result, Scope, Store, StoreError, Tenant, TenantId, key_prefix, key_sha256};

/// A key that acts on no branch: it opens the admin routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorKey {
    pub id: i64,
    pub prefix: String,
    pub name: String,
}

/// An operator key as listed: never the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorKeyListing {
    pub key: OperatorKey,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A branch key as an operator lists it: never the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyListing {
    pub id: i64,
    pub scope: Scope,
    pub prefix: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One entry of the audit log, to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAuditEvent {
    pub at: DateTime<Utc>,
    /// Who: `operator:<key id>`, `cli`, `serve` (bootstrap), `api` (throttle).
    pub actor: String,
    /// What, as a stable word: `tenant.created`, `api_key.issued`, …
    pub action: String,
    pub tenant: Option<TenantId>,
    pub branch: Option<BranchId>,
    /// Anything else worth keeping: ids, prefixes, versions. Never a secret.
    pub detail: Value,
}

impl NewAuditEvent {
    pub fn new(at: DateTime<Utc>, actor: impl Into<String>, action: impl Into<String>) -> Self {
        NewAuditEvent {
            at,
            actor: actor.into(),
            action: action.into(),
            tenant: None,
            branch: None,
            detail: Value::Object(serde_json::Map::new()),
        }
    }

    pub fn scope(mut self, scope: Scope) -> Self {
        self.tenant = Some(scope.tenant);
        self.branch = Some(scope.branch);
        self
    }

    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// One entry of the audit log, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub tenant: Option<TenantId>,
    pub branch: Option<BranchId>,
    pub detail: Value,
}

/// A tenant and its branches, as the admin listing shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantOverview {
    pub tenant: Tenant,
    pub branches: Vec<BranchOverview>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchOverview {
    pub id: BranchId,
    pub bhf_id: String,
    /// Set once the device is initialised and its cmcKey sealed.
    pub sdc_id: Option<String>,
    pub mrc_no: Option<String>,
}

/// Operator keys start differently from branch keys, so a log line or a listing tells
/// them apart at a glance.
const OPERATOR_KEY_START: &str = "ushop_";

impl Store {
    /// A new operator key, returned once; only its hash is kept.
    pub async fn create_operator_key(&self, name: &str) -> Result<(String, OperatorKey)> {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random)
            .map_err(|e| StoreError::Database(format!("no randomness for a key: {e}")))?;
        let key = format!(
            "{OPERATOR_KEY_START}{}",
            data_encoding::HEXLOWER.encode(&random)
        );
        let record = dispatch!(self, s => s.insert_operator_key(name, &key_prefix(&key), &key_sha256(&key)))?;
        Ok((key, record))
    }

    /// Stores a key chosen by the operator (`USHURU_OPERATOR_KEY`) as a hash, once.
    pub async fn ensure_operator_key(&self, key: &str, name: &str) -> Result<OperatorKey> {
        dispatch!(self, s => s.ensure_operator_key(name, &key_prefix(key), &key_sha256(key)))
    }

    /// Whether any operator key, live or revoked, was ever issued.
    pub async fn operator_keys_exist(&self) -> Result<bool> {
        dispatch!(self, s => s.operator_keys_exist())
    }

    /// The live operator key a caller presents; `None` for an unknown or revoked one.
    pub async fn authenticate_operator(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<OperatorKey>> {
        dispatch!(self, s => s.authenticate_operator(&key_sha256(key), now))
    }

    /// Every operator key, newest first, revoked ones included.
    pub async fn operator_keys(&self) -> Result<Vec<OperatorKeyListing>> {
        dispatch!(self, s => s.operator_keys())
    }

    /// Revokes an operator key; the key as it was, or `None` if none is live with that id.
    pub async fn revoke_operator_key(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<OperatorKey>> {
        dispatch!(self, s => s.revoke_operator_key(id, now))
    }

    /// A branch's keys, newest first, revoked ones included.
    pub async fn api_keys(&self, scope: Scope) -> Result<Vec<ApiKeyListing>> {
        dispatch!(self, s => s.api_keys(scope))
    }

    /// Revokes a branch key by id, whichever branch it belongs to; the key as it was, or
    /// `None` if there is no live key with that id.
    pub async fn revoke_api_key_by_id(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<ApiKeyListing>> {
        dispatch!(self, s => s.revoke_api_key_by_id(id, now))
    }

    /// Every tenant with its branches, by id.
    pub async fn tenants_overview(&self) -> Result<Vec<TenantOverview>> {
        dispatch!(self, s => s.tenants_overview())
    }

    /// Appends to the audit log; the event's id.
    pub async fn audit(&self, event: NewAuditEvent) -> Result<i64> {
        dispatch!(self, s => s.audit(event))
    }

    /// Audit events after `after` (an id; 0 for the first), oldest first, at most `limit`.
    pub async fn audit_events(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>> {
        dispatch!(self, s => s.audit_events(after, limit))
    }

    /// Removes a branch whose provisioning failed before its device was initialised, and
    /// with `with_tenant` its tenant too if that has no other branch: what a provisioning
    /// that created them leaves when the control unit does not issue a key. A branch with
    /// a device, or with anything recorded against it, is never removed (the foreign keys
    /// refuse the latter); false if nothing was removed.
    pub async fn discard_unprovisioned_branch(
        &self,
        scope: Scope,
        with_tenant: bool,
    ) -> Result<bool> {
        dispatch!(self, s => s.discard_unprovisioned_branch(scope, with_tenant))
    }

    /// [`Store::audit`] for events that must not fail the work they record (throttling,
    /// bootstrap notes): a failure to write is logged instead.
    pub async fn audit_or_log(&self, event: NewAuditEvent) {
        let action = event.action.clone();
        if let Err(e) = self.audit(event).await {
            tracing::error!(error = %e, action, "an audit event could not be written");
        }
    }
}

/// Groups `(tenant, branch)` rows (ordered by tenant) into overviews.
pub(crate) fn group_overview(
    rows: impl IntoIterator<Item = (Tenant, Option<BranchOverview>)>,
) -> Vec<TenantOverview> {
    let mut overview: Vec<TenantOverview> = Vec::new();
    for (tenant, branch) in rows {
        match overview.last_mut() {
            Some(last) if last.tenant.id == tenant.id => last.branches.extend(branch),
            _ => overview.push(TenantOverview {
                tenant,
                branches: branch.into_iter().collect(),
            }),
        }
    }
    overview
}

/// An OAuth 2.0 client (client credentials): acts for one branch, like a branch key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthClient {
    pub id: i64,
    pub scope: Scope,
    /// Public: sent as the HTTP Basic user name.
    pub client_id: String,
    pub name: String,
}

impl OAuthClient {
    /// The branch key its access tokens act as: the client's id, scope and name, and the
    /// start of its client id as the prefix.
    pub(crate) fn acting_key(self) -> crate::ApiKey {
        crate::ApiKey {
            id: self.id,
            scope: self.scope,
            prefix: key_prefix(&self.client_id),
            name: self.name,
        }
    }
}

/// What starts each kind of credential, so a presented one is looked up in its own table.
pub const OAUTH_CLIENT_ID_START: &str = "ushc_";
pub const OAUTH_SECRET_START: &str = "ushs_";
pub const OAUTH_TOKEN_START: &str = "usht_";

fn random_hex(bytes: usize) -> Result<String> {
    let mut random = vec![0u8; bytes];
    getrandom::fill(&mut random)
        .map_err(|e| StoreError::Database(format!("no randomness for a credential: {e}")))?;
    Ok(data_encoding::HEXLOWER.encode(&random))
}

/// Equal without telling, by its timing, how much of the two agreed.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |differ, (x, y)| differ | (x ^ y))
            == 0
}

impl Store {
    /// A new OAuth client for a branch: its id and its secret, the secret shown only now.
    pub async fn create_oauth_client(
        &self,
        scope: Scope,
        name: &str,
    ) -> Result<(String, OAuthClient)> {
        let client_id = format!("{OAUTH_CLIENT_ID_START}{}", random_hex(16)?);
        let secret = format!("{OAUTH_SECRET_START}{}", random_hex(32)?);
        let client = dispatch!(self, s => s.insert_oauth_client(scope, &client_id, &key_sha256(&secret), name))?;
        Ok((secret, client))
    }

    /// The live client whose id and secret these are; `None` for anything else.
    pub async fn authenticate_oauth_client(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<Option<OAuthClient>> {
        let found = dispatch!(self, s => s.live_oauth_client(client_id))?;
        Ok(found
            .filter(|(_, stored)| same_digest(stored, &key_sha256(secret)))
            .map(|(client, _)| client))
    }

    /// A new access token for `client`, valid for `ttl`: the token and its expiry.
    pub async fn issue_oauth_token(
        &self,
        client: &OAuthClient,
        ttl: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<(String, DateTime<Utc>)> {
        let token = format!("{OAUTH_TOKEN_START}{}", random_hex(32)?);
        let ttl = chrono::Duration::from_std(ttl)
            .map_err(|_| StoreError::Conflict("token lifetime out of range".into()))?;
        let expires = crate::clamp_time(now + ttl);
        dispatch!(self, s => s.insert_oauth_token(&key_sha256(&token), client, expires))?;
        Ok((token, expires))
    }

    /// The branch an access token acts for, as a key: `None` once it expired or its client
    /// was revoked. The key's id is the client's, its prefix the start of the client id.
    pub async fn authenticate_oauth_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<crate::ApiKey>> {
        dispatch!(self, s => s.oauth_token(&key_sha256(token), now))
    }

    /// Revokes a client and deletes its tokens; the client as it was, or `None`.
    pub async fn revoke_oauth_client(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<OAuthClient>> {
        dispatch!(self, s => s.revoke_oauth_client(id, now))
    }

    /// Replaces a branch's sealed cmcKey (after a rotation) if it is still `expected`: the
    /// versions are compared, so two rotations at once cannot both win; false otherwise.
    pub async fn replace_sealed_cmc_key(
        &self,
        scope: Scope,
        expected: &crate::SealedCmcKey,
        new: &crate::SealedCmcKey,
    ) -> Result<bool> {
        dispatch!(self, s => s.replace_sealed_cmc_key(scope, expected, new))
    }

    /// Deletes expired access tokens; how many.
    pub async fn purge_oauth_tokens(&self, now: DateTime<Utc>) -> Result<u64> {
        dispatch!(self, s => s.purge_oauth_tokens(now))
    }
}
