//! The cmcKeys at work: the sealed form each relay opens for each call, and their hot
//! rotation (issue 5) — a branch's data key, or the master key for every branch — without
//! a restart and without a failed sale.
//!
//! A relay's client never holds the key: it opens the branch's *latest* sealed form, kept
//! here, for each call. A rotation writes the new sealed form to the database first
//! (compare-and-swap on the key versions, so two rotations at once cannot both win), then
//! puts it here, and the next call opens that. A call already under way holds the old
//! form, which still opens: rotating makes new seals and wraps, and every master key
//! version stays in the keyring. A rotation made by another process (`ushuru admin`) is in
//! the database; this process goes on with the form it has, which still opens, until it
//! restarts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::json;
use ushuru_kra::{CmcKeyOpener, Secret};
use ushuru_store::{BranchId, NewAuditEvent, Scope, SealedCmcKey, Store, StoreError};
use ushuru_vault::{Binding, Vault, VaultError};

/// The vault binding of a branch.
pub fn binding(scope: Scope) -> Binding {
    Binding {
        tenant: scope.tenant.0,
        branch: scope.branch.0,
    }
}

/// The latest sealed cmcKey of each branch this process signs for.
#[derive(Debug, Default)]
pub struct SealedKeys {
    keys: RwLock<HashMap<BranchId, SealedCmcKey>>,
}

impl SealedKeys {
    pub fn set(&self, branch: BranchId, sealed: SealedCmcKey) {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(branch, sealed);
    }

    pub fn get(&self, branch: BranchId) -> Option<SealedCmcKey> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&branch)
            .cloned()
    }
}

/// A branch's cmcKey as its relay's client opens it: for one call, from the latest sealed
/// form, zeroized when the call's [`Secret`] drops.
pub struct SealedKeyOpener {
    pub vault: Vault,
    pub scope: Scope,
    pub keys: Arc<SealedKeys>,
}

impl CmcKeyOpener for SealedKeyOpener {
    fn open(&self) -> Result<Secret, String> {
        let sealed = self
            .keys
            .get(self.scope.branch)
            .ok_or_else(|| "no sealed cmcKey is known for this branch".to_owned())?;
        let mut opened = self
            .vault
            .open_cmc_key(binding(self.scope), &sealed)
            .map_err(|e| e.to_string())?;
        // Moved, not copied: the one buffer is zeroized when the call's Secret drops.
        Ok(Secret::new(std::mem::take(&mut *opened)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("the branch's device is not initialised: it has no cmcKey to rotate")]
    NotInitialised,
    #[error("another rotation of this branch's key won the race; try again")]
    Raced,
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a data key rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataKeyRotation {
    pub from: u32,
    pub to: u32,
    pub master_version: u32,
}

/// Seals the branch's cmcKey under a new data key; audited as `data_key.rotated`.
pub async fn rotate_data_key(
    store: &Store,
    vault: &Vault,
    keys: Option<&SealedKeys>,
    scope: Scope,
    actor: &str,
) -> Result<DataKeyRotation, RotationError> {
    // Wrapped under the newest master key version, wherever it was made.
    vault.refresh_master()?;
    let device = store
        .device(scope)
        .await?
        .ok_or(RotationError::NotInitialised)?;
    let rotated = vault.rotate_data_key(binding(scope), &device.cmc_key)?;
    if !store
        .replace_sealed_cmc_key(scope, &device.cmc_key, &rotated)
        .await?
    {
        return Err(RotationError::Raced);
    }
    if let Some(keys) = keys {
        keys.set(scope.branch, rotated.clone());
    }
    let rotation = DataKeyRotation {
        from: device.cmc_key.data_key.version,
        to: rotated.data_key.version,
        master_version: rotated.data_key.master_version,
    };
    store
        .audit(
            NewAuditEvent::new(chrono::Utc::now(), actor, "data_key.rotated")
                .scope(scope)
                .detail(json!({
                    "fromVersion": rotation.from,
                    "toVersion": rotation.to,
                    "masterKeyVersion": rotation.master_version,
                })),
        )
        .await?;
    Ok(rotation)
}

/// What a master key rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterKeyRotation {
    /// The master key versions data keys were wrapped under before, oldest first.
    pub from: Vec<u32>,
    pub to: u32,
    /// Whether a new master key version was made (else an operator-supplied one is used).
    pub new_version: bool,
    /// Data keys re-wrapped.
    pub rewrapped: usize,
}

/// Makes a new master key version (if the provider can) and re-wraps every branch's data
/// key under the current version; audited as `master_key.rotated`. With a provider that
/// cannot make versions (a key from the environment), re-wraps under the newest version
/// it was given, and refuses if there is nothing to re-wrap.
pub async fn rotate_master_key(
    store: &Store,
    vault: &Vault,
    keys: Option<&SealedKeys>,
    actor: &str,
) -> Result<MasterKeyRotation, RotationError> {
    vault.refresh_master()?;
    let branches = store.initialised_branches().await?;
    let current = vault.master_version();
    // A rotation that stopped midway (or another process's) left data keys behind on an
    // older version: this one finishes re-wrapping them instead of making yet another.
    let unfinished = branches
        .iter()
        .any(|b| b.device.cmc_key.data_key.master_version < current);
    let new_version = if unfinished {
        false
    } else {
        match vault.add_master_version() {
            Ok(_) => true,
            Err(VaultError::NotRotatable(how)) => return Err(VaultError::NotRotatable(how).into()),
            Err(e) => return Err(e.into()),
        }
    };
    let to = vault.master_version();
    let mut from = std::collections::BTreeSet::new();
    let mut rewrapped = 0;
    let progress = rewrap_all(store, vault, keys, &branches, &mut from, &mut rewrapped).await;
    if let Err(error) = &progress {
        // Whatever was done is on record, and a retry finishes it.
        store
            .audit_or_log(
                NewAuditEvent::new(chrono::Utc::now(), actor, "master_key.rotation_stopped")
                    .detail(json!({
                        "toVersion": to,
                        "newVersion": new_version,
                        "rewrapped": rewrapped,
                        "of": branches.len(),
                        "error": error.to_string(),
                    })),
            )
            .await;
    }
    progress?;
    let rotation = MasterKeyRotation {
        from: from.into_iter().collect(),
        to,
        new_version,
        rewrapped,
    };
    store
        .audit(
            NewAuditEvent::new(chrono::Utc::now(), actor, "master_key.rotated").detail(json!({
                "fromVersions": rotation.from,
                "toVersion": rotation.to,
                "newVersion": rotation.new_version,
                "rewrapped": rotation.rewrapped,
            })),
        )
        .await?;
    Ok(rotation)
}

/// Re-wraps every branch's data key under the current master key version, counting.
async fn rewrap_all(
    store: &Store,
    vault: &Vault,
    keys: Option<&SealedKeys>,
    branches: &[ushuru_store::InitialisedBranch],
    from: &mut std::collections::BTreeSet<u32>,
    rewrapped: &mut usize,
) -> Result<(), RotationError> {
    for branch in branches {
        let mut sealed = branch.device.cmc_key.clone();
        // A data key rotated meanwhile: read it again, once.
        for attempt in 0..2 {
            let Some(moved) = vault.rewrap_data_key(binding(branch.scope), &sealed)? else {
                break;
            };
            if store
                .replace_sealed_cmc_key(branch.scope, &sealed, &moved)
                .await?
            {
                from.insert(sealed.data_key.master_version);
                *rewrapped += 1;
                if let Some(keys) = keys {
                    keys.set(branch.scope.branch, moved);
                }
                break;
            }
            if attempt == 1 {
                return Err(RotationError::Raced);
            }
            sealed = store
                .device(branch.scope)
                .await?
                .ok_or(RotationError::NotInitialised)?
                .cmc_key;
        }
    }
    Ok(())
}
