//! The sandbox's clock: real time shifted by an offset that the control API sets or
//! advances, so tests can cross the 24-hour offline ceiling or a day boundary in a moment.
//! Fiscal time is East Africa Time (UTC+3, no DST).

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{Duration, FixedOffset, NaiveDateTime, Utc};

/// East Africa Time: UTC+3, no daylight saving.
pub const EAT: FixedOffset = match FixedOffset::east_opt(3 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+3 is a valid offset"),
};

#[derive(Debug, Default)]
pub struct SandboxClock {
    offset_ms: AtomicI64,
}

impl SandboxClock {
    /// Now, in EAT, without time zone (KRA's `yyyyMMddHHmmss` is EAT by definition).
    pub fn now(&self) -> NaiveDateTime {
        let shifted = Utc::now() + Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed));
        shifted.with_timezone(&EAT).naive_local()
    }

    /// Makes the clock read `at` (EAT) now; it keeps running from there.
    pub fn set(&self, at: NaiveDateTime) {
        let real = Utc::now().with_timezone(&EAT).naive_local();
        self.offset_ms
            .store((at - real).num_milliseconds(), Ordering::Relaxed);
    }

    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn set_offset_ms(&self, offset: i64) {
        self.offset_ms.store(offset, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_advance() {
        let clock = SandboxClock::default();
        let at = NaiveDateTime::parse_from_str("20260707114122", "%Y%m%d%H%M%S").unwrap();
        clock.set(at);
        let read = clock.now();
        assert!((read - at).num_seconds().abs() <= 1);
        clock.advance(Duration::hours(25));
        assert!((clock.now() - at - Duration::hours(25)).num_seconds().abs() <= 1);
    }
}
