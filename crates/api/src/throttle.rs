//! Throttling of repeated authentication failures (issue 5).
//!
//! - **Per client address:** after `limit` failures within `window` from one address (an
//!   IPv6 client by its /64, which one client owns), every attempt from it gets 429 with
//!   `Retry-After` until the oldest counted failure leaves the window, whether or not the
//!   key it carries is valid: an answer that told a right guess from a wrong one would be
//!   an oracle. Only failures count: attempts in flight are not counted in advance, since
//!   one busy client (or every client behind one proxy) sends many good requests at once,
//!   and counting those blocked it (measured: `bench/pipeline`'s 50 clients on one
//!   address). Guesses already in flight when the limit is reached still get their
//!   answer, so an attacker gets at most its concurrency in extra guesses per window.
//! - **Per key prefix:** after `limit` failures with keys of one prefix (one key guessed
//!   from many addresses), *failed* attempts with that prefix get 429. A valid key is never
//!   refused for its prefix: prefixes are shown in listings and logs, and anyone could
//!   otherwise lock a known key or OAuth client out.
//!
//! Counts live in this process: with several replicas behind a load balancer, each counts
//! its own share. Behind a reverse proxy every client has the proxy's address; the prefix
//! count still holds there. Memory is bounded: past `MAX_SUBJECTS`, subjects whose
//! failures all left the window go first, then the one failing least recently.

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
    /// A client address; an IPv6 one by its /64 network (one client's allocation).
    pub fn address(address: IpAddr) -> Subject {
        match address {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Subject::Address(IpAddr::V4(v4)),
                None => {
                    let network = u128::from(v6) & !u128::from(u64::MAX);
                    Subject::Address(IpAddr::V6(network.into()))
                }
            },
            v4 => Subject::Address(v4),
        }
    }

    /// The prefix of a presented key.
    pub fn key_prefix(key: &str) -> Subject {
        Subject::KeyPrefix(ushuru_store::key_prefix(key))
    }
}

/// A failure's consequences.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// This failure reached the limit of its address or prefix (logged and audited once).
    pub throttled_now: bool,
    /// The prefix is over its limit: answer 429 after this long instead of 401.
    pub prefix_wait: Option<Duration>,
}

/// At most this many subjects are tracked.
const MAX_SUBJECTS: usize = 65_536;

type Counts = HashMap<Subject, VecDeque<Instant>>;

/// The failure counts.
#[derive(Debug)]
pub struct AuthThrottle {
    limit: usize,
    window: Duration,
    failures: Mutex<Counts>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long until `subject` is let through, if it is over its limit now.
    fn wait(&self, failures: &Counts, subject: &Subject, now: Instant) -> Option<Duration> {
        let times = failures.get(subject)?;
        let recent: Vec<&Instant> = times
            .iter()
            .filter(|at| now.saturating_duration_since(**at) < self.window)
            .collect();
        // Free again once enough counted failures have aged out to leave fewer than `limit`.
        let excess = recent.len().checked_sub(self.limit)?;
        let frees_at = **recent.get(excess)? + self.window;
        Some(frees_at.saturating_duration_since(now))
    }

    /// Counts `now` against `subject`, making room first if the table is full; the count.
    fn count(&self, failures: &mut Counts, subject: &Subject, now: Instant) -> usize {
        if !failures.contains_key(subject) && failures.len() >= MAX_SUBJECTS {
            let window = self.window;
            failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|last| now.saturating_duration_since(*last) < window)
            });
            if failures.len() >= MAX_SUBJECTS {
                let stalest = failures
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(subject, _)| subject.clone());
                if let Some(stalest) = stalest {
                    failures.remove(&stalest);
                }
            }
        }
        let times = failures.entry(subject.clone()).or_default();
        while times
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= self.window)
        {
            times.pop_front();
        }
        times.push_back(now);
        times.len()
    }

    /// Whether an attempt from `address` may go ahead: refused (how long to wait) while
    /// the address is over its limit, whatever key it carries.
    pub fn check(&self, address: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let Some(subject) = address.map(Subject::address) else {
            return Ok(());
        };
        match self.wait(&self.lock(), &subject, now) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt against its address and, if it presented a key, the key's
    /// prefix.
    pub fn failed(
        &self,
        address: Option<IpAddr>,
        prefix: Option<Subject>,
        now: Instant,
    ) -> Failure {
        let mut failures = self.lock();
        let at_address = address
            .map(Subject::address)
            .map_or(0, |subject| self.count(&mut failures, &subject, now));
        // Over the limit before this failure: refused; the failure that reaches the limit
        // is still answered as itself, as at an address.
        let prefix_wait = prefix
            .as_ref()
            .and_then(|subject| self.wait(&failures, subject, now));
        let at_prefix = prefix
            .as_ref()
            .map_or(0, |subject| self.count(&mut failures, subject, now));
        Failure {
            throttled_now: at_address == self.limit || at_prefix == self.limit,
            prefix_wait,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn v4(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    /// A failed attempt from `address` with `key`.
    fn fail(
        throttle: &AuthThrottle,
        address: Option<IpAddr>,
        key: Option<&str>,
        at: Instant,
    ) -> Failure {
        throttle.check(address, at).unwrap();
        throttle.failed(address, key.map(Subject::key_prefix), at)
    }

    #[test]
    fn the_limit_th_failure_throttles_an_address_until_the_oldest_ages_out() {
        let throttle = AuthThrottle::new(3, Duration::from_secs(60));
        let start = Instant::now();
        assert!(!fail(&throttle, v4(1), None, start).throttled_now);
        assert!(!fail(&throttle, v4(1), None, start + Duration::from_secs(10)).throttled_now);
        assert!(fail(&throttle, v4(1), None, start + Duration::from_secs(20)).throttled_now);
        // Refused until the first failure (at 0 s) is 60 s old, valid key or not.
        assert_eq!(
            throttle.check(v4(1), start + Duration::from_secs(20)).err(),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            throttle.check(v4(1), start + Duration::from_secs(59)).err(),
            Some(Duration::from_secs(1))
        );
        assert!(
            throttle
                .check(v4(1), start + Duration::from_secs(60))
                .is_ok()
        );
        assert!(throttle.check(v4(2), start).is_ok(), "another address");
    }

    #[test]
    fn good_attempts_never_count() {
        let throttle = AuthThrottle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        // Any number of checks (good requests, many at once) leave the address free.
        for _ in 0..100 {
            assert!(throttle.check(v4(1), now).is_ok());
        }
    }

    #[test]
    fn a_key_prefix_is_counted_across_addresses_and_refuses_only_failures() {
        let throttle = AuthThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(
            fail(&throttle, v4(1), Some("ush_0123456789abcdef"), now).prefix_wait,
            None
        );
        let second = fail(&throttle, v4(2), Some("ush_01234567zzzz"), now);
        assert!(second.throttled_now && second.prefix_wait.is_none());
        // A third address failing with that prefix is told to wait; one with another
        // prefix is not; and the address itself is not blocked for a valid key.
        assert!(
            fail(&throttle, v4(3), Some("ush_01234567aaaa"), now)
                .prefix_wait
                .is_some()
        );
        assert_eq!(
            fail(&throttle, v4(4), Some("ush_ffffffffaaaa"), now).prefix_wait,
            None
        );
        assert!(throttle.check(v4(5), now).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Subject::address(a), Subject::address(b));
        assert_ne!(Subject::address(a), Subject::address(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            Subject::address(mapped),
            Subject::address(IpAddr::from([10, 0, 0, 1]))
        );
    }

    #[test]
    fn the_count_is_bounded_in_memory() {
        let throttle = AuthThrottle::new(5, Duration::from_secs(1));
        let start = Instant::now();
        for n in 0..(MAX_SUBJECTS + 10) {
            let address = IpAddr::from(u32::try_from(n).unwrap().to_be_bytes());
            fail(&throttle, Some(address), None, start);
        }
        // Full: each new subject pushed out the stalest one.
        assert_eq!(throttle.lock().len(), MAX_SUBJECTS);
        // Once their failures age out, the old subjects make room at once.
        fail(&throttle, v4(9), None, start + Duration::from_secs(2));
        assert_eq!(throttle.lock().len(), 1);
    }
}
