//! The delivery worker's decisions, apart from its effects: which queued message goes
//! next, what an answer means for it, when a destination may be posted to again.
//! Everything here is pure and takes "now" as an argument, so tests drive it in
//! manual time.
use crate::domain::{JobKey, OutboxEntry};
use crate::notify::DeliveryConfig;
use crate::notify::retry::{self, Verdict};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use std::time::Instant;

/// No message is attempted twice within this, whatever the receiver or the
/// configured schedule says (`Retry-After: 0` must not become a flood).
pub const MIN_RETRY: Duration = Duration::from_secs(1);

/// What to do with a message after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Delivered,
    /// Try again at `at` (attempts and the error are recorded on the entry).
    RetryAt {
        at: DateTime<Utc>,
        attempts: u32,
        error: String,
        throttled: bool,
    },
    /// Never deliverable, or `give_up_after` passed: move to the dead letters.
    DeadLetter {
        reason: String,
        attempts: u32,
        gave_up: bool,
    },
    /// The destination is gone or revoked: disable the channel, dead-letter this.
    Disable {
        reason: String,
        attempts: u32,
    },
}

/// Decides what `verdict` means for `e` at `now`. `unit` ∈ [0, 1] is the jitter draw.
pub fn after_attempt(
    verdict: Verdict,
    e: &OutboxEntry,
    now: DateTime<Utc>,
    cfg: &DeliveryConfig,
    unit: f64,
) -> Decision {
    let give_up_at = give_up_at(e, cfg.give_up_after);
    let schedule = |delay: Duration, attempts: u32, error: String, throttled: bool| {
        if now >= give_up_at {
            return Decision::DeadLetter {
                reason: format!("gave up after {attempts} attempts: {error}"),
                attempts,
                gave_up: true,
            };
        }
        let at =
            now + chrono::Duration::from_std(delay.max(MIN_RETRY)).unwrap_or(chrono::Duration::MAX);
        // One last attempt at the deadline rather than none, and none after it.
        let at =
            at.min(give_up_at.max(now + chrono::Duration::from_std(MIN_RETRY).unwrap_or_default()));
        Decision::RetryAt {
            at,
            attempts,
            error,
            throttled,
        }
    };
    match verdict {
        Verdict::Delivered => Decision::Delivered,
        // Not a failure of the message: attempts are not counted.
        Verdict::Throttled { wait, reason } => schedule(wait, e.attempts, reason, true),
        Verdict::Retry { reason } => {
            let attempts = e.attempts + 1;
            let delay = retry::backoff(&cfg.retry_schedule, attempts, unit);
            schedule(delay, attempts, reason, false)
        }
        Verdict::DeadLetter { reason } => Decision::DeadLetter {
            reason,
            attempts: e.attempts + 1,
            gave_up: false,
        },
        Verdict::Disable { reason } => Decision::Disable {
            reason,
            attempts: e.attempts + 1,
        },
    }
}

/// When a message stops being retried (or held): `give_up_after` past its creation.
pub fn give_up_at(e: &OutboxEntry, give_up_after: Duration) -> DateTime<Utc> {
    e.created_at + chrono::Duration::from_std(give_up_after).unwrap_or(chrono::Duration::MAX)
}

/// A worker's view of its channel's queue: what it needs to choose, not the payloads.
#[derive(Debug, Default)]
pub struct Queue {
    entries: BTreeMap<u64, Pending>,
    /// How many entries are held: most channels hold none, and then nothing
    /// below walks the queue for them.
    held_count: usize,
}

#[derive(Debug, Clone)]
struct Pending {
    job: JobKey,
    due: DateTime<Utc>,
    created_at: DateTime<Utc>,
    /// A test message: it yields to every real one.
    test: bool,
    /// Being sent now: its job's later messages wait until this one is settled.
    sending: bool,
    /// Held for the channel's digest.
    held: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Send(u64),
    WaitUntil(DateTime<Utc>),
    Idle,
}

impl Queue {
    pub fn insert(&mut self, e: &OutboxEntry) {
        self.held_count += usize::from(e.held);
        let old = self.entries.insert(
            e.seq,
            Pending {
                job: e.job.clone(),
                due: e.next_attempt_at,
                created_at: e.created_at,
                test: e.is_test(),
                sending: false,
                held: e.held,
            },
        );
        if old.is_some_and(|p| p.held) {
            self.held_count -= 1;
        }
    }

    /// Marks a message as being sent; [`Queue::next`] then passes over its job.
    pub fn start(&mut self, seq: u64) {
        if let Some(p) = self.entries.get_mut(&seq) {
            p.sending = true;
        }
    }

    /// The send of `seq` is over (its outcome is applied separately).
    pub fn finish(&mut self, seq: u64) {
        if let Some(p) = self.entries.get_mut(&seq) {
            p.sending = false;
        }
    }

    pub fn remove(&mut self, seq: u64) {
        if self.entries.remove(&seq).is_some_and(|p| p.held) {
            self.held_count -= 1;
        }
    }

    pub fn set_due(&mut self, seq: u64, due: DateTime<Utc>) {
        if let Some(p) = self.entries.get_mut(&seq) {
            p.due = due;
        }
    }

    /// After the destination recovered: everything waiting on a back-off may go now
    /// (order per job still holds; pacing still applies).
    pub fn pull_in(&mut self, now: DateTime<Utc>) {
        for p in self.entries.values_mut() {
            p.due = p.due.min(now);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Per job, the newest message that is not held: a held message older than it
    /// goes on its own, in order (a later urgent event must not overtake it); one
    /// newer than it stays held.
    fn released(&self) -> HashMap<&JobKey, u64> {
        let mut out = HashMap::new();
        if self.held_count == 0 {
            return out;
        }
        for (seq, p) in &self.entries {
            if !p.held {
                out.insert(&p.job, *seq);
            }
        }
        out
    }

    fn is_held(released: &HashMap<&JobKey, u64>, seq: u64, p: &Pending) -> bool {
        p.held && released.get(&p.job).is_none_or(|newest| *newest < seq)
    }

    /// The messages held for the digest (not released by a later urgent one of
    /// their job), oldest first, and the creation time of the oldest.
    pub fn held(&self) -> (Vec<u64>, Option<DateTime<Utc>>) {
        if self.held_count == 0 {
            return (Vec::new(), None);
        }
        let released = self.released();
        let seqs: Vec<u64> = self
            .entries
            .iter()
            .filter(|(seq, p)| Self::is_held(&released, **seq, p))
            .map(|(s, _)| *s)
            .collect();
        let oldest = seqs
            .iter()
            .filter_map(|s| self.entries.get(s))
            .map(|p| p.created_at)
            .min();
        (seqs, oldest)
    }

    /// Whether a later message of the same job as `seq` is queued (a living
    /// message is then edited once, by the newest).
    pub fn has_later(&self, seq: u64) -> bool {
        let Some(p) = self.entries.get(&seq) else {
            return false;
        };
        self.entries.range(seq + 1..).any(|(_, q)| q.job == p.job)
    }

    /// The oldest queued message (always its job's first), real ones before tests.
    pub fn first(&self) -> Option<u64> {
        self.entries
            .iter()
            .find(|(_, p)| !p.test)
            .or_else(|| self.entries.iter().next())
            .map(|(seq, _)| *seq)
    }

    /// Creation time of the oldest queued message. Entries are queued in creation
    /// order (a replay is re-queued as new), so it is the first one's: O(1) on the
    /// per-message path.
    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        self.entries.values().next().map(|p| p.created_at)
    }

    /// Order is kept per job: only a job's oldest queued message may go, so its
    /// "started" never arrives after its "failed"; different jobs never wait for
    /// each other. Among sendable messages the oldest goes first. A test message
    /// goes only when no real message is queued: it never takes a real one's turn.
    /// A message being sent holds back its job's later ones (and, if real, every
    /// test) until its outcome is known: a failed send is retried before them.
    pub fn next(&self, now: DateTime<Utc>) -> Next {
        let released = self.released();
        for tests in [false, true] {
            let mut seen: HashSet<&JobKey> = HashSet::new();
            let mut soonest: Option<DateTime<Utc>> = None;
            let mut sending = false;
            for (seq, p) in self.entries.iter().filter(|(_, p)| p.test == tests) {
                if !seen.insert(&p.job) {
                    continue;
                }
                // Held for the digest: the job's later messages wait behind it.
                if Self::is_held(&released, *seq, p) {
                    continue;
                }
                if p.sending {
                    sending = true;
                    continue;
                }
                if p.due <= now {
                    return Next::Send(*seq);
                }
                soonest = Some(soonest.map_or(p.due, |s| s.min(p.due)));
            }
            if let Some(s) = soonest {
                return Next::WaitUntil(s);
            }
            if sending {
                // Only sends in flight: their completion wakes the worker.
                return Next::Idle;
            }
        }
        Next::Idle
    }
}

/// A destination that keeps failing across messages is paused as a whole, for
/// longer each time (from 1 s, doubling, up to `max`); any success closes it. One
/// failing message alone never pauses it.
#[derive(Debug, Clone, Default)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// Consecutive failures (across messages) before the breaker opens.
pub const BREAKER_THRESHOLD: u32 = 3;

impl Breaker {
    pub fn on_failure(&mut self, now: Instant, max: Duration) {
        self.failures += 1;
        if self.failures >= BREAKER_THRESHOLD {
            let n = (self.failures - BREAKER_THRESHOLD).min(16);
            let pause = Duration::from_secs(1u64 << n).min(max.max(MIN_RETRY));
            self.open_until = Some(now + pause);
        }
    }

    /// Returns whether the destination had been failing (its queue may be pulled in).
    pub fn on_success(&mut self) -> bool {
        let was = self.failures > 0;
        self.failures = 0;
        self.open_until = None;
        was
    }

    pub fn open_until(&self) -> Option<Instant> {
        self.open_until
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Per destination URL, shared by every channel posting to it: pacing slots,
/// `Retry-After` blocks and the breaker. So two channels with one Slack webhook
/// still make ~1 post/s, and a 429 pauses both.
#[derive(Debug, Default)]
pub struct Destinations {
    by_url: HashMap<String, Dest>,
}

#[derive(Debug, Default)]
struct Dest {
    next_slot: Option<Instant>,
    blocked_until: Option<Instant>,
    breaker: Breaker,
    /// Message edits (Slack app channels): at most 50 a minute.
    edits: Option<crate::notify::slack_app::EditWindow>,
}

impl Destinations {
    /// How long until `url` may be posted to.
    pub fn free_in(&self, url: &str, now: Instant) -> Duration {
        let Some(d) = self.by_url.get(url) else {
            return Duration::ZERO;
        };
        [d.next_slot, d.blocked_until, d.breaker.open_until()]
            .into_iter()
            .flatten()
            .map(|t| t.saturating_duration_since(now))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Takes the slot at `now` (call only when [`Destinations::free_in`] is zero);
    /// the next one is `interval` later.
    pub fn take(&mut self, url: &str, interval: Duration, now: Instant) {
        self.by_url.entry(url.to_string()).or_default().next_slot = Some(now + interval);
    }

    /// How long a `Retry-After` still keeps every call from `url`.
    pub fn blocked_for(&self, url: &str, now: Instant) -> Duration {
        self.by_url
            .get(url)
            .and_then(|d| d.blocked_until)
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// How long until a message on `url` may be edited (the edit budget).
    pub fn edit_free_in(&self, url: &str, now: Instant) -> Duration {
        self.by_url
            .get(url)
            .and_then(|d| d.edits.as_ref())
            .map_or(Duration::ZERO, |w| w.wait(now))
    }

    /// Records an edit on `url` at `now`.
    pub fn take_edit(&mut self, url: &str, now: Instant) {
        self.by_url
            .entry(url.to_string())
            .or_default()
            .edits
            .get_or_insert_with(crate::notify::slack_app::edit_window)
            .take(now);
    }

    /// Nothing goes to `url` before `until` (a 429's Retry-After).
    pub fn block_until(&mut self, url: &str, until: Instant) {
        let d = self.by_url.entry(url.to_string()).or_default();
        d.blocked_until = Some(d.blocked_until.map_or(until, |t| t.max(until)));
    }

    pub fn failed(&mut self, url: &str, now: Instant, max: Duration) {
        self.by_url
            .entry(url.to_string())
            .or_default()
            .breaker
            .on_failure(now, max);
    }

    /// Failing across messages: only probes go to it, on the breaker's schedule.
    pub fn tripped(&self, url: &str) -> bool {
        self.by_url
            .get(url)
            .is_some_and(|d| d.breaker.failures() >= BREAKER_THRESHOLD)
    }

    /// Returns whether it had been failing.
    pub fn succeeded(&mut self, url: &str) -> bool {
        self.by_url
            .get_mut(url)
            .is_some_and(|d| d.breaker.on_success())
    }
}

/// Collapses repeated identical warnings: a warning is logged when it differs from
/// the last one, or a minute after the last line, with how many were held back.
#[derive(Debug, Default)]
pub struct WarnGate {
    last: Option<(String, Instant)>,
    held: u64,
}

pub const WARN_EVERY: Duration = Duration::from_secs(60);

impl WarnGate {
    /// `Some(held back since the last line)` when this one should be logged.
    pub fn admit(&mut self, what: &str, now: Instant) -> Option<u64> {
        match &self.last {
            Some((w, at)) if w == what && now.duration_since(*at) < WARN_EVERY => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some((what.to_string(), now));
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// What to do with a queued message before any attempt to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeforeSend {
    /// The channel was disabled (its destination is gone or revoked): dead-letter
    /// with this reason rather than send.
    ChannelDisabled(String),
    /// Rendering failed when it was queued: dead-letter with the render error.
    Unrenderable(String),
    /// The channel is disabled, and its kind keeps messages queued until it is
    /// enabled again: wait until then, or until this time (`give_up_after`).
    Hold(DateTime<Utc>),
    /// A copy with the same `webhook-id` was delivered (a replay): record it as
    /// delivered and send nothing. At least once, never twice on purpose.
    Duplicate,
    /// Send it. `without_triage`: it was held for triage and triage missed its
    /// deadline, so it goes out as its fallback and stops waiting for details.
    Send { without_triage: bool },
}

/// The checks before a send, in the order they apply.
///
/// `hold`: the kind keeps a disabled channel's messages (with `give_up_after`).
pub fn before_send(
    disabled_reason: Option<&str>,
    e: &OutboxEntry,
    already_delivered: bool,
    hold: Option<Duration>,
    now: DateTime<Utc>,
) -> BeforeSend {
    if let Some(reason) = disabled_reason {
        if let Some(until) = hold.map(|h| give_up_at(e, h))
            && now < until
        {
            return BeforeSend::Hold(until);
        }
        return BeforeSend::ChannelDisabled(format!("channel disabled: {reason}"));
    }
    if e.payload.is_null() {
        return BeforeSend::Unrenderable(
            e.last_error.clone().unwrap_or_else(|| "no payload".into()),
        );
    }
    if already_delivered {
        return BeforeSend::Duplicate;
    }
    BeforeSend::Send {
        without_triage: e.triage_until.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Event;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn job(n: u8) -> JobKey {
        JobKey {
            farm_id: "f".into(),
            queue_id: "q".into(),
            job_id: format!("j{n}").into(),
        }
    }

    fn entry(seq: u64, j: u8, due_s: i64) -> OutboxEntry {
        OutboxEntry {
            seq,
            next_attempt_at: t0() + chrono::Duration::seconds(due_s),
            ..OutboxEntry::due_now(
                format!("msg_{seq}"),
                "t",
                "c",
                "webhook",
                job(j),
                Event::Succeeded,
                t0(),
                serde_json::json!({}),
            )
        }
    }

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    #[test]
    fn order_is_per_job_and_other_jobs_do_not_wait() {
        let mut q = Queue::default();
        q.insert(&entry(1, 1, 60)); // job 1's first message is backing off
        q.insert(&entry(2, 1, 0)); // job 1's second must wait for it
        q.insert(&entry(3, 2, 0)); // job 2 is free
        assert_eq!(q.next(t0()), Next::Send(3));
        q.remove(3);
        assert_eq!(q.next(t0()), Next::WaitUntil(t0() + secs(60)));
        assert_eq!(q.next(t0() + secs(60)), Next::Send(1));
        q.remove(1);
        assert_eq!(q.next(t0() + secs(60)), Next::Send(2));
        q.remove(2);
        assert_eq!(q.next(t0()), Next::Idle);
    }

    #[test]
    fn a_test_message_never_goes_ahead_of_a_real_one() {
        let mut q = Queue::default();
        let mut test = entry(1, 9, 0);
        test.webhook_id = format!("{}x", crate::domain::TEST_MESSAGE_PREFIX);
        q.insert(&test);
        q.insert(&entry(2, 1, 30)); // a real message backing off
        assert_eq!(q.next(t0()), Next::WaitUntil(t0() + secs(30)));
        assert_eq!(q.first(), Some(2));
        assert_eq!(q.next(t0() + secs(30)), Next::Send(2));
        q.remove(2);
        assert_eq!(q.next(t0()), Next::Send(1));
    }

    #[test]
    fn a_message_in_flight_holds_its_job_and_the_tests_but_not_other_jobs() {
        let mut q = Queue::default();
        q.insert(&entry(1, 1, 0));
        q.insert(&entry(2, 1, 0)); // job 1's second message
        q.insert(&entry(3, 2, 0));
        let mut test = entry(4, 9, 0);
        test.webhook_id = format!("{}x", crate::domain::TEST_MESSAGE_PREFIX);
        q.insert(&test);
        assert_eq!(q.next(t0()), Next::Send(1));
        q.start(1);
        // Job 1 is busy; job 2 may go alongside.
        assert_eq!(q.next(t0()), Next::Send(3));
        q.start(3);
        // Both real jobs are in flight: neither job 1's second message nor the test
        // may go until one is settled.
        assert_eq!(q.next(t0()), Next::Idle);
        // Job 1's send failed: it backs off, and its second message still waits.
        q.finish(1);
        q.set_due(1, t0() + secs(5));
        assert_eq!(q.next(t0()), Next::WaitUntil(t0() + secs(5)));
        q.finish(3);
        q.remove(3);
        assert_eq!(q.next(t0() + secs(5)), Next::Send(1));
        q.remove(1);
        assert_eq!(q.next(t0() + secs(5)), Next::Send(2));
        q.remove(2);
        assert_eq!(q.next(t0() + secs(5)), Next::Send(4));
    }

    #[test]
    fn pull_in_makes_backed_off_messages_due() {
        let mut q = Queue::default();
        q.insert(&entry(1, 1, 300));
        q.pull_in(t0());
        assert_eq!(q.next(t0()), Next::Send(1));
    }

    #[test]
    fn early_retries_are_short_and_grow_while_failures_persist() {
        let cfg = DeliveryConfig::default();
        let mut e = entry(1, 1, 0);
        let mut delays = Vec::new();
        let mut now = t0();
        for _ in 0..8 {
            match after_attempt(
                Verdict::Retry {
                    reason: "HTTP 503".into(),
                },
                &e,
                now,
                &cfg,
                1.0,
            ) {
                Decision::RetryAt { at, attempts, .. } => {
                    delays.push((at - now).num_seconds());
                    e.attempts = attempts;
                    now = at;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, [1, 2, 5, 15, 30, 60, 120, 300]);
    }

    #[test]
    fn zero_delays_are_floored_to_one_second() {
        let cfg = DeliveryConfig {
            retry_schedule: vec![Duration::ZERO],
            ..DeliveryConfig::default()
        };
        let e = entry(1, 1, 0);
        for v in [
            Verdict::Retry {
                reason: "HTTP 503".into(),
            },
            Verdict::Throttled {
                wait: Duration::ZERO,
                reason: "HTTP 429".into(),
            },
        ] {
            match after_attempt(v, &e, t0(), &cfg, 0.0) {
                Decision::RetryAt { at, .. } => assert_eq!(at - t0(), secs(1)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn give_up_after_holds_whatever_the_receiver_says() {
        let cfg = DeliveryConfig {
            give_up_after: Duration::from_secs(5),
            ..DeliveryConfig::default()
        };
        let e = entry(1, 1, 0);
        // A long Retry-After is cut to the deadline...
        match after_attempt(
            Verdict::Throttled {
                wait: Duration::from_secs(600),
                reason: "HTTP 429".into(),
            },
            &e,
            t0() + secs(1),
            &cfg,
            1.0,
        ) {
            Decision::RetryAt {
                at,
                throttled: true,
                ..
            } => assert_eq!(at, t0() + secs(5)),
            other => panic!("{other:?}"),
        }
        // ...and at the deadline the message is dead-lettered.
        for v in [
            Verdict::Throttled {
                wait: Duration::ZERO,
                reason: "HTTP 429".into(),
            },
            Verdict::Retry {
                reason: "HTTP 503".into(),
            },
        ] {
            assert!(matches!(
                after_attempt(v, &e, t0() + secs(5), &cfg, 1.0),
                Decision::DeadLetter { gave_up: true, .. }
            ));
        }
    }

    #[test]
    fn refusals_and_revocations_are_final() {
        let cfg = DeliveryConfig::default();
        let e = entry(1, 1, 0);
        assert!(matches!(
            after_attempt(
                Verdict::DeadLetter {
                    reason: "HTTP 400".into()
                },
                &e,
                t0(),
                &cfg,
                0.5
            ),
            Decision::DeadLetter {
                gave_up: false,
                attempts: 1,
                ..
            }
        ));
        assert!(matches!(
            after_attempt(
                Verdict::Disable {
                    reason: "HTTP 410".into()
                },
                &e,
                t0(),
                &cfg,
                0.5
            ),
            Decision::Disable { attempts: 1, .. }
        ));
        assert_eq!(
            after_attempt(Verdict::Delivered, &e, t0(), &cfg, 0.5),
            Decision::Delivered
        );
    }

    /// Pacing, `Retry-After` blocks and the breaker are pure functions of the
    /// instant they are given: time is set by hand.
    #[test]
    fn pacing_retry_after_and_the_breaker_in_controlled_time() {
        let url = "https://hooks.example.com/x";
        let max = Duration::from_secs(30);
        let mut d = Destinations::default();
        let t0 = crate::clock::monotonic();
        let now = t0;
        assert_eq!(d.free_in(url, now), Duration::ZERO);
        d.take(url, Duration::from_millis(250), now);
        assert_eq!(d.free_in(url, now), Duration::from_millis(250));
        assert_eq!(d.free_in("https://other.example.com/", now), Duration::ZERO);
        let now = t0 + Duration::from_millis(250);
        assert_eq!(d.free_in(url, now), Duration::ZERO);
        d.block_until(url, now + Duration::from_secs(3));
        assert_eq!(d.free_in(url, now), Duration::from_secs(3));
        let now = now + Duration::from_secs(3);
        // Two failures: no pause; from the third, 1 s, 2 s, 4 s … up to `max`.
        d.failed(url, now, max);
        d.failed(url, now, max);
        assert_eq!(d.free_in(url, now), Duration::ZERO);
        let mut pauses = Vec::new();
        for _ in 0..8 {
            d.failed(url, now, max);
            pauses.push(d.free_in(url, now).as_secs());
        }
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert!(d.succeeded(url));
        assert_eq!(d.free_in(url, now), Duration::ZERO);
        assert!(!d.succeeded(url));
    }

    #[test]
    fn identical_warnings_collapse_to_one_line_a_minute() {
        let mut g = WarnGate::default();
        let t0 = crate::clock::monotonic();
        let mut lines = Vec::new();
        for i in 0..600u64 {
            let now = t0 + Duration::from_millis(200 * i);
            // 495 a second for a while, as a `Retry-After: 0` flood once caused.
            if let Some(held) = g.admit("HTTP 429", now) {
                lines.push(held);
            }
            if i == 300 {
                assert_eq!(
                    g.admit("HTTP 503", now),
                    Some(0),
                    "a new error shows at once"
                );
            }
        }
        // 120 s of warnings: the first line, the 503, the 429 again right after it, then one a minute.
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[2] == 0 && lines.iter().sum::<u64>() < 600);
    }

    #[test]
    fn before_a_send_disabled_then_unrenderable_then_duplicate_then_fallback() {
        let mut e = entry(1, 1, 0);
        assert_eq!(
            before_send(None, &e, false, None, t0()),
            BeforeSend::Send {
                without_triage: false
            }
        );
        assert_eq!(
            before_send(Some("HTTP 410"), &e, true, None, t0()),
            BeforeSend::ChannelDisabled("channel disabled: HTTP 410".into())
        );
        assert_eq!(
            before_send(None, &e, true, None, t0()),
            BeforeSend::Duplicate
        );
        // A kind that holds: the message waits for the channel until it gives up.
        let day = Duration::from_secs(86_400);
        let until = t0() + chrono::Duration::days(1);
        assert_eq!(
            before_send(Some("token_revoked"), &e, false, Some(day), t0()),
            BeforeSend::Hold(until)
        );
        assert_eq!(
            before_send(Some("token_revoked"), &e, false, Some(day), until),
            BeforeSend::ChannelDisabled("channel disabled: token_revoked".into())
        );
        // Still held for triage when its turn came: triage missed the deadline.
        e.triage_until = Some(t0());
        assert_eq!(
            before_send(None, &e, false, None, t0()),
            BeforeSend::Send {
                without_triage: true
            }
        );
        e.payload = serde_json::Value::Null;
        e.last_error = Some("template x failed to render".into());
        assert_eq!(
            before_send(None, &e, true, None, t0()),
            BeforeSend::Unrenderable("template x failed to render".into())
        );
        e.last_error = None;
        assert_eq!(
            before_send(None, &e, false, None, t0()),
            BeforeSend::Unrenderable("no payload".into())
        );
    }

    #[test]
    fn held_messages_wait_and_a_later_urgent_one_releases_its_job_in_order() {
        let held = |seq, j| OutboxEntry {
            held: true,
            ..entry(seq, j, 0)
        };
        let mut q = Queue::default();
        q.insert(&held(1, 1));
        q.insert(&held(2, 2));
        q.insert(&held(3, 1));
        assert_eq!(q.next(t0()), Next::Idle, "everything held");
        assert_eq!(q.held(), (vec![1, 2, 3], Some(t0())));
        // Job 1's urgent message: its held ones go first, one at a time, in order.
        q.insert(&entry(4, 1, 0));
        assert_eq!(q.held().0, vec![2]);
        assert_eq!(q.next(t0()), Next::Send(1));
        q.start(1);
        assert_eq!(q.next(t0()), Next::Idle);
        q.finish(1);
        q.remove(1);
        assert_eq!(q.next(t0()), Next::Send(3));
        // A message held after the urgent one stays held.
        q.insert(&held(5, 1));
        assert_eq!(q.held().0, vec![2, 5]);
    }

    #[test]
    fn a_later_message_of_the_same_job_is_seen() {
        let mut q = Queue::default();
        q.insert(&entry(1, 1, 0));
        q.insert(&entry(2, 2, 0));
        assert!(!q.has_later(1));
        q.insert(&entry(3, 1, 0));
        assert!(q.has_later(1) && !q.has_later(2) && !q.has_later(3));
    }
}
