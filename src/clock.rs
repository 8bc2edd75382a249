//! Time source: the only module that reads the system's clocks (clippy's
//! `disallowed-methods` refuses `Utc::now`, `SystemTime::now` and `Instant::now`
//! everywhere else). Decisions take "now" as an argument; the loops read it from a
//! [`Clock`] so that tests and the simulator can control it, and adapters that only
//! stamp or measure use the free functions here.
#![allow(clippy::disallowed_methods)]
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

pub type SharedClock = Arc<dyn Clock>;

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Wall-clock time, for stamps that no decision reads back (signatures, logs,
/// metrics) and for code that has no [`Clock`] to hand.
pub fn wall_now() -> DateTime<Utc> {
    Utc::now()
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
