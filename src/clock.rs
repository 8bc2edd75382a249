//! Time source: the only module that reads the system's clocks (clippy's
//! `disallowed-methods` refuses `Utc::now`, `SystemTime::now` and `Instant::now`
//! everywhere else). Decisions take "now" as an argument; the loops read it from a
//! [`Clock`] so that tests and the simulator can control it, and adapters that only
//! stamp or measure use the free functions here.
#![allow(clippy::disallowed_methods)]
use chrono::{DateTime, SubsecRound, Utc};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        stamp()
    }
}

/// The system's time at the store's resolution (whole microseconds). The store
/// orders rows by microsecond keys and the API shows the stamp itself; stamps
/// finer than the key would let two rows created within one microsecond show in
/// an order their times contradict.
fn stamp() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub type SharedClock = Arc<dyn Clock>;

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Wall-clock time, for stamps that no decision reads back (signatures, logs,
/// metrics) and for code that has no [`Clock`] to hand.
pub fn wall_now() -> DateTime<Utc> {
    stamp()
}

/// Wall-clock time as `SystemTime` (HTTP dates such as `Retry-After`).
pub fn system_time() -> SystemTime {
    SystemTime::now()
}

/// Monotonic time, for measuring how long something took and for pacing that
/// must not jump with the wall clock.
pub fn monotonic() -> Instant {
    Instant::now()
}

/// Monotonic time as tokio's `Instant` (for `sleep_until` deadlines).
pub fn tokio_monotonic() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;

    /// Every stamp the service makes is a whole microsecond, so the microsecond
    /// keys that order rows and the times shown for them agree.
    #[test]
    fn stamps_have_the_store_resolution() {
        for _ in 0..1_000 {
            assert_eq!(SystemClock.now().nanosecond() % 1_000, 0);
            assert_eq!(wall_now().nanosecond() % 1_000, 0);
        }
    }
}
