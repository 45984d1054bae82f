//! Claims taken in phase 1 for an idle relay.
//!
//! A relay that finds nothing to send offers to take its branch's next sale
//! ([`Offers::offer`]). The next sale accepted for the branch in this process then claims
//! the branch's head row in its own phase-1 transaction, under the relay's hold and with
//! the same rule as the relay's claim (`CLAIM_SQL`, `claim_in`): the head only, never
//! behind a row that is backing off, never a row leased under the relay's own hold. Once
//! that transaction commits, the claim is handed to the relay ([`Offers::hand`]), which
//! the request then wakes. A sale thus costs one transaction less: the claim commits with
//! the sale instead of on its own.
//!
//! Nothing here is durable, and nothing needs to be: a handed claim that is never taken
//! (the relay stopped) is a lease like any other, taken over when it runs out or when its
//! hold is gone; an offer nobody takes costs nothing.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{BranchId, Claim};

enum Offer {
    /// The relay (its owner name) waits for the branch's next sale.
    Waiting { owner: String, lease: Duration },
    /// Phase 1 claimed the branch's head for it.
    Handed(Box<Claim>),
}

/// The offers of this process's relays, by branch.
#[derive(Default)]
pub(crate) struct Offers {
    by_branch: Mutex<HashMap<BranchId, Offer>>,
}

impl Offers {
    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<BranchId, Offer>> {
        self.by_branch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The relay `owner` of `branch` found nothing to send. A claim handed to it and not
    /// taken yet stays (it is the relay's next step).
    pub(crate) fn offer(&self, branch: BranchId, owner: &str, lease: Duration) {
        let mut offers = self.locked();
        if !matches!(offers.get(&branch), Some(Offer::Handed(_))) {
            offers.insert(
                branch,
                Offer::Waiting {
                    owner: owner.to_owned(),
                    lease,
                },
            );
        }
    }

    /// The waiting relay's owner and lease, taken: one phase-1 transaction claims for it.
    pub(crate) fn take_waiting(&self, branch: BranchId) -> Option<(String, Duration)> {
        let mut offers = self.locked();
        match offers.remove(&branch) {
            Some(Offer::Waiting { owner, lease }) => Some((owner, lease)),
            Some(handed) => {
                offers.insert(branch, handed);
                None
            }
            None => None,
        }
    }

    /// A claim phase 1 committed for the branch's relay.
    pub(crate) fn hand(&self, claim: Claim) {
        self.locked()
            .insert(claim.scope.branch, Offer::Handed(Box::new(claim)));
    }

    /// The claim handed to the branch's relay, if its lease still runs at `now`; one whose
    /// lease ran out is dropped (the row may have been claimed again since).
    pub(crate) fn take_handed(&self, branch: BranchId, now: DateTime<Utc>) -> Option<Claim> {
        let mut offers = self.locked();
        match offers.remove(&branch) {
            Some(Offer::Handed(claim)) if claim.lease_expires_at > now => Some(*claim),
            Some(Offer::Handed(_)) | None => None,
            Some(waiting) => {
                offers.insert(branch, waiting);
                None
            }
        }
    }

    /// The branch's relay no longer signs here: whatever it offered or was handed goes.
    pub(crate) fn withdraw(&self, branch: BranchId) {
        self.locked().remove(&branch);
    }
}
