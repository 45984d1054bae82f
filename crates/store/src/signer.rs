//! Who may claim a branch's outbox: the branch's *signer*, the one relay across all
//! processes that holds the branch's lock (ARCHITECTURE invariant 4: one call to the control
//! unit in flight per branch at a time, across processes).
//!
//! The lock lives with the process, so that it dies with it: on PostgreSQL a session-level
//! advisory lock per branch, all of a process's branches on one dedicated connection; on
//! SQLite an exclusive lock on a file beside the database (one process per database), and,
//! inside the process, a table of which relay holds which branch. A lease on an outbox row
//! therefore no longer decides who may take the row over; the lock does:
//!
//! - a relay that does not hold the branch claims nothing (it stands by, and asks again on
//!   its next step);
//! - the holder may take over a lease issued under any other hold, live or not: whoever took
//!   it cannot be sending any more, since it no longer holds the branch (a killed process's
//!   locks die with it);
//! - a live lease issued under the holder's own hold is still waited for: the lease stays the
//!   last-resort bound within one hold (a step that failed between claim and record).
//!
//! Each hold has its own id, and every lease token issued under it starts with that id, so a
//! restarted process with the same owner name (same host, same pid in a container) is a new
//! hold and takes its predecessor's leases over at once.

use chrono::{DateTime, Utc};

use crate::lease_token;

/// One relay's hold of one branch, in this process.
#[derive(Clone, Debug)]
pub(crate) struct Hold {
    /// The relay (its owner name) that holds the branch.
    pub owner: String,
    /// Unique to this hold: the prefix of every lease token issued under it.
    pub id: String,
    /// PostgreSQL: the backend pid of the connection holding the advisory lock, checked in
    /// the claim's own transaction.
    pub session_pid: Option<i32>,
}

impl Hold {
    pub fn new(owner: &str, session_pid: Option<i32>) -> Hold {
        Hold {
            owner: owner.to_owned(),
            id: lease_token(owner),
            session_pid,
        }
    }

    /// A lease token for one claim under this hold.
    pub fn lease_token(&self) -> String {
        lease_token(&self.id)
    }

    /// What every lease token issued under this hold starts with.
    pub fn issued_prefix(&self) -> String {
        format!("{}#", self.id)
    }

    fn issued(&self, token: &str) -> bool {
        token
            .strip_prefix(self.id.as_str())
            .is_some_and(|rest| rest.starts_with('#'))
    }

    /// Whether the holder may claim a head row leased as given (`holder`, until `held_until`).
    pub fn may_claim(
        &self,
        holder: Option<&str>,
        held_until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> bool {
        let live = holder.is_some() && held_until.is_some_and(|until| until > now);
        match holder {
            Some(token) if live && self.issued(token) => false,
            Some(token) if live => {
                tracing::info!(
                    previous = token,
                    "taking over a live lease: its holder no longer holds the branch lock"
                );
                true
            }
            _ => true,
        }
    }
}
