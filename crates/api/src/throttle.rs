//! Throttling of repeated authentication failures (issue 5): after `limit` failures within
//! `window` from one client address, or presenting keys with one key prefix, further
//! attempts from that address or with that prefix are refused with 429 and `Retry-After`
//! until the oldest counted failure leaves the window, whether or not the key they carry
//! is valid (an answer that told a right guess from a wrong one would be an oracle).
//!
//! The prefix counts guesses at one key from many addresses; the address counts one client
//! guessing many keys. Counts live in this process: with several replicas behind a load
//! balancer, each counts its own share, so an attacker gets at most `limit` per replica per
//! window. Behind a reverse proxy every client has the proxy's address; the prefix count
//! still holds there.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Who is counted.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Subject {
    Address(IpAddr),
    /// The first characters of a presented key, as keys are stored (`ApiKey::prefix`).
    KeyPrefix(String),
}

impl Subject {
    /// The subjects of one attempt: its address if known, its key's prefix if it sent one.
    pub fn of(address: Option<IpAddr>, key: Option<&str>) -> Vec<Subject> {
        let mut subjects = Vec::with_capacity(2);
        if let Some(address) = address {
            subjects.push(Subject::Address(address));
        }
        if let Some(key) = key {
            subjects.push(Subject::KeyPrefix(ushuru_store::key_prefix(key)));
        }
        subjects
    }
}

/// At most this many subjects are tracked; past it, subjects whose failures all left the
/// window are forgotten, and if that is not enough new subjects go uncounted (logged), so
/// a flood of addresses costs bounded memory. The key-prefix count still applies to them.
const MAX_SUBJECTS: usize = 65_536;

/// The failure counts.
#[derive(Debug)]
pub struct AuthThrottle {
    limit: usize,
    window: Duration,
    failures: Mutex<HashMap<Subject, VecDeque<Instant>>>,
}

impl AuthThrottle {
    /// `limit` failures (at least 1) within `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        AuthThrottle {
            limit: usize::try_from(limit.max(1)).unwrap_or(usize::MAX),
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Subject, VecDeque<Instant>>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long until any of `subjects` may try again, if one is throttled now.
    pub fn blocked(&self, subjects: &[Subject], now: Instant) -> Option<Duration> {
        let failures = self.lock();
        subjects
            .iter()
            .filter_map(|subject| {
                let times = failures.get(subject)?;
                let recent: Vec<&Instant> = times
                    .iter()
                    .filter(|at| now.saturating_duration_since(**at) < self.window)
                    .collect();
                // Free again once enough of the counted failures have aged out to leave
                // fewer than `limit`.
                let excess = recent.len().checked_sub(self.limit)?;
                let frees_at = **recent.get(excess)? + self.window;
                Some(frees_at.saturating_duration_since(now))
            })
            .max()
    }

    /// Counts a failure against each subject; true if this one throttles any of them.
    pub fn failed(&self, subjects: &[Subject], now: Instant) -> bool {
        let mut failures = self.lock();
        if failures.len() >= MAX_SUBJECTS {
            let window = self.window;
            failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|last| now.saturating_duration_since(*last) < window)
            });
        }
        let mut throttled = false;
        for subject in subjects {
            if !failures.contains_key(subject) && failures.len() >= MAX_SUBJECTS {
                tracing::warn!("authentication failures from too many clients to count each");
                continue;
            }
            let times = failures.entry(subject.clone()).or_default();
            while times
                .front()
                .is_some_and(|at| now.saturating_duration_since(*at) >= self.window)
            {
                times.pop_front();
            }
            times.push_back(now);
            throttled |= times.len() == self.limit;
        }
        throttled
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn address(last: u8) -> Subject {
        Subject::Address(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn the_limit_th_failure_throttles_until_the_oldest_leaves_the_window() {
        let throttle = AuthThrottle::new(3, Duration::from_secs(60));
        let start = Instant::now();
        let one = [address(1)];
        assert!(!throttle.failed(&one, start));
        assert!(!throttle.failed(&one, start + Duration::from_secs(10)));
        assert_eq!(
            throttle.blocked(&one, start + Duration::from_secs(10)),
            None
        );
        assert!(throttle.failed(&one, start + Duration::from_secs(20)));
        // Blocked until the first failure (at 0 s) is 60 s old.
        assert_eq!(
            throttle.blocked(&one, start + Duration::from_secs(20)),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            throttle.blocked(&one, start + Duration::from_secs(59)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            throttle.blocked(&one, start + Duration::from_secs(60)),
            None
        );
        // Another address is not affected.
        assert_eq!(throttle.blocked(&[address(2)], start), None);
    }

    #[test]
    fn a_key_prefix_is_counted_across_addresses() {
        let throttle = AuthThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        let guess = Subject::of(
            Some(IpAddr::from([10, 0, 0, 1])),
            Some("ush_0123456789abcdef"),
        );
        let other_guess = Subject::of(Some(IpAddr::from([10, 0, 0, 2])), Some("ush_01234567zzzz"));
        assert_eq!(guess.len(), 2);
        throttle.failed(&guess, now);
        assert!(
            throttle.failed(&other_guess, now),
            "same prefix, second failure"
        );
        // A third address with the same prefix is refused; one with another prefix is not.
        let third = Subject::of(Some(IpAddr::from([10, 0, 0, 3])), Some("ush_01234567aaaa"));
        assert!(throttle.blocked(&third, now).is_some());
        let unrelated = Subject::of(Some(IpAddr::from([10, 0, 0, 3])), Some("ush_ffffffffaaaa"));
        assert_eq!(throttle.blocked(&unrelated, now), None);
    }

    #[test]
    fn the_count_is_bounded_in_memory() {
        let throttle = AuthThrottle::new(5, Duration::from_secs(1));
        let start = Instant::now();
        for n in 0..(MAX_SUBJECTS + 10) {
            let subject = Subject::Address(IpAddr::from(u32::try_from(n).unwrap().to_be_bytes()));
            throttle.failed(&[subject], start);
        }
        assert_eq!(throttle.lock().len(), MAX_SUBJECTS);
        // Once their failures age out, the old subjects make room.
        throttle.failed(&[address(9)], start + Duration::from_secs(2));
        assert_eq!(throttle.lock().len(), 1);
    }
}
