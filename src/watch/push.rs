//! Whether the event queue can carry the load polling would otherwise carry: a pure
//! record of receive results, and the polling mode that follows from it at `now`.
//!
//! The service starts tight (every job polled at `poll_interval`). Only after receives
//! have succeeded without a gap for `relax_after` does polling relax to the backstop
//! interval. One failed receive, or no successful one for `silence` (twice the
//! long-poll wait), tightens it at once, and the minute starts over: a queue that
//! flaps never keeps polling relaxed.

/// How often subscribed jobs are polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every `poll_interval`: events are not (yet) trusted to arrive.
    Tight,
    /// Every `backstop_interval`: events make jobs due; polling is the safety net.
    Relaxed,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tight => "tight",
            Mode::Relaxed => "relaxed",
        }
    }
}

/// Receive results, in ms on the caller's monotonic scale.
#[derive(Debug, Default, Clone)]
pub struct QueueHealth {
    /// Start of the current run of successful receives.
    ok_since: Option<u64>,
    last_ok: Option<u64>,
    /// The last receive's error, while receives fail.
    pub error: Option<String>,
}

impl QueueHealth {
    /// A receive answered (with or without messages).
    pub fn received(&mut self, now: u64, silence: u64) {
        let gap = self.last_ok.is_none_or(|t| now.saturating_sub(t) > silence);
        if self.ok_since.is_none() || gap {
            self.ok_since = Some(now);
        }
        self.last_ok = Some(now);
        self.error = None;
    }

    /// A receive failed (denied, unreachable, no answer in time).
    pub fn failed(&mut self, error: String) {
        self.ok_since = None;
        self.error = Some(error);
    }

    /// The mode at `now`.
    pub fn mode(&self, now: u64, relax_after: u64, silence: u64) -> Mode {
        match (self.ok_since, self.last_ok) {
            (Some(since), Some(last))
                if now.saturating_sub(since) >= relax_after
                    && now.saturating_sub(last) <= silence =>
            {
                Mode::Relaxed
            }
            _ => Mode::Tight,
        }
    }

    /// Whether receives work now (for `/metrics`): no error, and not silent.
    pub fn healthy(&self, now: u64, silence: u64) -> bool {
        self.error.is_none()
            && self
                .last_ok
                .is_some_and(|t| now.saturating_sub(t) <= silence)
    }

    /// When the mode changes by itself if nothing else happens (relaxes once the run
    /// is long enough, or tightens when silence runs out).
    pub fn next_change(&self, now: u64, relax_after: u64, silence: u64) -> Option<u64> {
        let (since, last) = (self.ok_since?, self.last_ok?);
        match self.mode(now, relax_after, silence) {
            Mode::Tight if now.saturating_sub(last) <= silence => Some(since + relax_after),
            Mode::Tight => None,
            Mode::Relaxed => Some(last + silence + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const SILENCE: u64 = 40_000;

    #[test]
    fn starts_tight_and_relaxes_after_a_minute_of_receives() {
        let mut h = QueueHealth::default();
        assert_eq!(h.mode(0, MIN, SILENCE), Mode::Tight);
        let mut t = 0;
        while t < MIN {
            h.received(t, SILENCE);
            assert_eq!(h.mode(t, MIN, SILENCE), Mode::Tight, "at {t}");
            t += 20_000;
        }
        h.received(t, SILENCE);
        assert_eq!(h.mode(t, MIN, SILENCE), Mode::Relaxed);
        assert!(h.healthy(t, SILENCE));
    }

    #[test]
    fn one_error_tightens_at_once_and_the_minute_starts_over() {
        let mut h = QueueHealth::default();
        for t in (0..=MIN).step_by(20_000) {
            h.received(t, SILENCE);
        }
        assert_eq!(h.mode(MIN, MIN, SILENCE), Mode::Relaxed);
        h.failed("AccessDenied".into());
        assert_eq!(h.mode(MIN + 1, MIN, SILENCE), Mode::Tight);
        assert!(!h.healthy(MIN + 1, SILENCE));
        h.received(MIN + 5_000, SILENCE);
        assert_eq!(h.mode(MIN + 5_000 + MIN - 1, MIN, SILENCE), Mode::Tight);
        assert_eq!(
            h.next_change(MIN + 5_000, MIN, SILENCE),
            Some(MIN + 5_000 + MIN)
        );
        for t in (MIN + 5_000..=MIN + 5_000 + MIN).step_by(20_000) {
            h.received(t, SILENCE);
        }
        assert_eq!(h.mode(MIN + 5_000 + MIN, MIN, SILENCE), Mode::Relaxed);
    }

    #[test]
    fn silence_tightens_without_an_error() {
        let mut h = QueueHealth::default();
        for t in (0..=MIN).step_by(20_000) {
            h.received(t, SILENCE);
        }
        assert_eq!(h.next_change(MIN, MIN, SILENCE), Some(MIN + SILENCE + 1));
        assert_eq!(h.mode(MIN + SILENCE, MIN, SILENCE), Mode::Relaxed);
        assert_eq!(h.mode(MIN + SILENCE + 1, MIN, SILENCE), Mode::Tight);
        // A receive after the silence starts a new run.
        h.received(MIN + SILENCE + 5, SILENCE);
        assert_eq!(h.mode(MIN + SILENCE + 5, MIN, SILENCE), Mode::Tight);
    }
}
