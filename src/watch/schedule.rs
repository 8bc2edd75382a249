//! Pure poll scheduling: which jobs to read next, and how fast the API may be called.
//! Time is milliseconds on a monotonic clock supplied by the caller. Jobs are slot
//! numbers handed out by the caller (the poll loop's job table), so scheduling
//! never hashes or compares a job's ids: at 100k jobs each lookup by key is a
//! cache miss, and a reschedule after every read did several.
use std::collections::BTreeSet;

/// A watched job's place in the caller's job table.
pub type Slot = u32;

/// A lane: one team's, or the background lane of finished jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneId(u32);

impl LaneId {
    /// Finished jobs: read only with what the team lanes leave of a batch.
    pub const BACKGROUND: LaneId = LaneId(u32::MAX);
}

/// Jobs ordered by when they are next due. Earliest-due first, so when the API
/// budget cannot keep up every job's interval stretches evenly and none starves.
#[derive(Default)]
struct Schedule {
    due: BTreeSet<(u64, Slot)>,
}

impl Schedule {
    fn next_due(&self) -> Option<u64> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Up to `max` jobs due at or before `until`, earliest first, with their due
    /// times. They stay scheduled until [`Lanes::set`] moves them.
    fn due_by(&self, until: u64, max: usize) -> impl Iterator<Item = (Slot, u64)> + '_ {
        self.due
            .iter()
            .take_while(move |(at, _)| *at <= until)
            .take(max)
            .map(|&(at, slot)| (slot, at))
    }
}

/// Due jobs by team, so that one team's many jobs slow that team and not the
/// others: each lane (a team) keeps its own earliest-due order, and a batch is
/// filled by weighted round-robin over the lanes that have jobs due (deficit
/// round-robin: a lane's unused share carries over while it has jobs waiting).
/// A job shared by several teams is in one lane, which the caller picks.
#[derive(Default)]
pub struct Lanes {
    lanes: Vec<Lane>,
    /// Each slot's lane and due time (`None`: not scheduled).
    pos: Vec<Option<(LaneId, u64)>>,
    len: usize,
    /// The lane that fills first in the next batch (rotates).
    next: usize,
    background: Schedule,
}

struct Lane {
    team: Box<str>,
    weight: f64,
    deficit: f64,
    schedule: Schedule,
}

impl Lanes {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, slot: Slot) -> bool {
        matches!(self.pos.get(slot as usize), Some(Some(_)))
    }

    /// Room for slots below `n`: scheduling a whole store at start-up then does
    /// not grow the table as it goes.
    pub fn reserve(&mut self, n: usize) {
        self.pos.reserve(n.saturating_sub(self.pos.len()));
    }

    /// Each lane's share from its team's `weight` (teams unknown to `weight`: 1).
    pub fn set_weights(&mut self, weight: impl Fn(&str) -> Option<f64>) {
        for l in &mut self.lanes {
            l.weight = weight(&l.team).unwrap_or(1.0);
        }
    }

    /// `team`'s lane, created with `weight` if new.
    pub fn lane(&mut self, team: &str, weight: f64) -> LaneId {
        if let Some(i) = self.lanes.iter().position(|l| *l.team == *team) {
            return LaneId(i as u32);
        }
        self.lanes.push(Lane {
            team: team.into(),
            weight,
            deficit: 0.0,
            schedule: Schedule::default(),
        });
        LaneId((self.lanes.len() - 1) as u32)
    }

    fn schedule_mut(&mut self, lane: LaneId) -> &mut Schedule {
        match self.lanes.get_mut(lane.0 as usize) {
            Some(l) => &mut l.schedule,
            None => &mut self.background,
        }
    }

    /// Adds or moves `slot` into `lane`, due at `at`.
    pub fn set(&mut self, slot: Slot, lane: LaneId, at: u64) {
        let i = slot as usize;
        if self.pos.len() <= i {
            self.pos.resize(i + 1, None);
        }
        match self.pos[i] {
            Some((old, was)) => {
                self.schedule_mut(old).due.remove(&(was, slot));
            }
            None => self.len += 1,
        }
        self.schedule_mut(lane).due.insert((at, slot));
        self.pos[i] = Some((lane, at));
    }

    /// When `slot` is due, if scheduled.
    pub fn due(&self, slot: Slot) -> Option<u64> {
        self.pos
            .get(slot as usize)
            .copied()
            .flatten()
            .map(|(_, at)| at)
    }

    /// Moves `slot` to `at` if that is earlier than its turn (or it is unscheduled
    /// and in `lane`). Returns whether it moved.
    pub fn pull(&mut self, slot: Slot, lane: LaneId, at: u64) -> bool {
        match self.pos.get(slot as usize).copied().flatten() {
            Some((l, due)) if due > at => {
                self.set(slot, l, at);
                true
            }
            Some(_) => false,
            None => {
                self.set(slot, lane, at);
                true
            }
        }
    }

    /// Every scheduled slot with its due time, in slot order.
    pub fn scheduled(&self) -> impl Iterator<Item = (Slot, u64)> + '_ {
        self.pos
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|(_, at)| (i as Slot, at)))
    }

    pub fn remove(&mut self, slot: Slot) {
        if let Some(p) = self.pos.get_mut(slot as usize)
            && let Some((lane, at)) = p.take()
        {
            self.len -= 1;
            self.schedule_mut(lane).due.remove(&(at, slot));
        }
    }

    /// When the earliest job of any lane is due.
    pub fn next_due(&self) -> Option<u64> {
        self.lanes
            .iter()
            .filter_map(|l| l.schedule.next_due())
            .chain(self.background.next_due())
            .min()
    }

    /// Up to `max` jobs due at or before `until`, shared among the lanes with jobs
    /// due in proportion to their weights, each lane's earliest first.
    pub fn due_by(&mut self, until: u64, max: usize) -> Vec<(Slot, u64)> {
        let n = self.lanes.len();
        let mut queues: Vec<std::collections::VecDeque<(Slot, u64)>> = self
            .lanes
            .iter()
            .map(|l| l.schedule.due_by(until, max).collect())
            .collect();
        let mut out = Vec::with_capacity(max.min(1024));
        while out.len() < max && queues.iter().any(|q| !q.is_empty()) {
            for k in 0..n {
                let i = (self.next + k) % n;
                let lane = &mut self.lanes[i];
                let q = &mut queues[i];
                if q.is_empty() {
                    lane.deficit = 0.0;
                    continue;
                }
                lane.deficit += lane.weight;
                while lane.deficit >= 1.0 && out.len() < max {
                    let Some(job) = q.pop_front() else { break };
                    out.push(job);
                    lane.deficit -= 1.0;
                }
                if q.is_empty() {
                    lane.deficit = 0.0;
                }
                if out.len() >= max {
                    break;
                }
            }
        }
        if n > 0 {
            self.next = (self.next + 1) % n;
        }
        if out.len() < max {
            out.extend(self.background.due_by(until, max - out.len()));
        }
        out
    }
}

/// The global API request budget: a token bucket whose rate adapts to throttling
/// (halved on each ThrottlingException, recovering additively on success, never
/// above the configured maximum) and which honours `retryAfterSeconds`.
#[derive(Debug, Clone)]
pub struct Budget {
    max_rate: f64,
    rate: f64,
    tokens: f64,
    last: u64,
    paused_until: u64,
    /// Calls that may go at once after a quiet spell (0: one second's worth).
    burst: f64,
}

impl Budget {
    pub fn new(max_rate: f64, now: u64) -> Budget {
        Budget {
            max_rate,
            rate: max_rate,
            tokens: 1.0,
            last: now,
            paused_until: 0,
            burst: 0.0,
        }
    }

    /// A budget that saves up to `burst` calls while idle (triage: a failure needs a
    /// handful of calls at once, then nothing for a long time).
    pub fn with_burst(max_rate: f64, now: u64, burst: f64) -> Budget {
        Budget {
            tokens: burst.max(1.0),
            burst,
            ..Budget::new(max_rate, now)
        }
    }

    /// A new maximum (config reload); a throttled rate stays at or below it.
    pub fn set_max(&mut self, max_rate: f64) {
        self.max_rate = max_rate;
        self.rate = self.rate.min(max_rate);
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&mut self, now: u64) {
        let dt = now.saturating_sub(self.last) as f64 / 1000.0;
        // At most one second's worth of burst, and at least one call.
        self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0).max(self.burst));
        self.last = now.max(self.last);
    }

    /// Milliseconds until a call may be made (0: now).
    pub fn wait(&mut self, now: u64) -> u64 {
        if now < self.paused_until {
            return self.paused_until - now;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            0
        } else {
            (((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u64
        }
    }

    /// Spends one call; call only when [`Budget::wait`] returned 0.
    pub fn take(&mut self, now: u64) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    pub fn on_success(&mut self) {
        // Slow recovery: +5% of the maximum per successful call.
        self.rate = (self.rate + self.max_rate * 0.05).min(self.max_rate);
    }

    pub fn on_throttle(&mut self, now: u64, retry_after_ms: Option<u64>) {
        self.rate = (self.rate / 2.0).max(self.max_rate / 64.0).max(0.05);
        self.tokens = self.tokens.min(0.0);
        if let Some(ms) = retry_after_ms {
            self.paused_until = self.paused_until.max(now + ms);
        }
    }
}

/// How many times less often than the base interval a job is polled, from its last
/// known status: suspended, terminal and long-idle jobs change rarely.
pub fn poll_factor(
    status: Option<&crate::domain::JobStatus>,
    since: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
    cfg: &crate::config::DeadlineConfig,
) -> u32 {
    use crate::domain::TaskRunStatus;
    let Some(st) = status else {
        return 1;
    };
    match &st.task_run_status {
        Some(TaskRunStatus::Suspended) => cfg.suspended_factor,
        _ if st.is_terminal() => cfg.terminal_factor,
        Some(TaskRunStatus::Pending | TaskRunStatus::Ready) => {
            let idle = chrono::Duration::from_std(cfg.idle_after).unwrap_or(chrono::Duration::MAX);
            if now - since > idle {
                cfg.idle_factor
            } else {
                1
            }
        }
        _ => 1,
    }
}

/// A job terminal for longer than `terminal_grace` is no longer polled.
pub fn settled(
    terminal_since: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    cfg: &crate::config::DeadlineConfig,
) -> bool {
    let grace = chrono::Duration::from_std(cfg.terminal_grace).unwrap_or(chrono::Duration::MAX);
    terminal_since.is_some_and(|t| now - t > grace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_due_first_and_moves() {
        let mut s = Lanes::default();
        let lane = s.lane("t", 1.0);
        for n in 0..5 {
            s.set(n, lane, 100 - u64::from(n) * 10);
        }
        let due: Vec<Slot> = s.due_by(80, 10).into_iter().map(|(k, _)| k).collect();
        assert_eq!(due, vec![4, 3, 2]);
        s.set(4, lane, 500);
        assert_eq!(s.due_by(80, 1)[0].0, 3);
        s.remove(3);
        s.remove(3);
        s.set(9, lane, 1);
        assert_eq!(s.len(), 5);
        assert!(!s.contains(3) && s.contains(9) && !s.contains(1000));
        assert_eq!(s.next_due(), Some(1));
        assert_eq!(s.due_by(1000, 100).len(), 5);
    }

    #[test]
    fn a_pull_only_brings_a_job_forward_and_keeps_its_lane() {
        let mut s = Lanes::default();
        let (a, b) = (s.lane("a", 1.0), s.lane("b", 1.0));
        s.set(1, a, 1_000);
        s.set(2, a, 50);
        // An event pulls 1 forward; it stays in lane a whatever lane the caller names.
        assert!(s.pull(1, b, 100));
        assert_eq!(s.due(1), Some(100));
        // A job already due sooner is not pushed back.
        assert!(!s.pull(2, a, 100));
        assert_eq!(s.due(2), Some(50));
        // One not scheduled yet is scheduled in the named lane.
        assert!(s.pull(3, b, 70));
        assert_eq!(s.due(3), Some(70));
        let mut all: Vec<_> = s.scheduled().collect();
        all.sort();
        assert_eq!(all, vec![(1, 100), (2, 50), (3, 70)]);
        assert_eq!(s.len(), 3);
        s.remove(1);
        assert_eq!(s.due(1), None);
        assert_eq!(s.due_by(100, 10).len(), 2);
    }

    #[test]
    fn a_team_with_many_due_jobs_does_not_crowd_out_another() {
        let mut l = Lanes::default();
        let (big, small) = (l.lane("big", 1.0), l.lane("small", 1.0));
        for n in 0..10_000 {
            l.set(n, big, u64::from(n));
        }
        for n in 0..10 {
            l.set(20_000 + n, small, 5_000 + u64::from(n));
        }
        // Every small job is due, and overdue long after most big ones: the next
        // batch still carries all of them.
        let batch = l.due_by(10_000, 100);
        assert_eq!(batch.len(), 100);
        let small = batch.iter().filter(|(k, _)| *k >= 20_000).count();
        assert_eq!(small, 10, "{batch:?}");
        // The big team's share is its earliest jobs.
        assert!(
            batch
                .iter()
                .filter(|(k, _)| *k < 20_000)
                .all(|(_, due)| *due < 90)
        );
    }

    #[test]
    fn weights_share_a_batch_and_moves_between_lanes_keep_one_entry() {
        let mut l = Lanes::default();
        let (a, b) = (l.lane("a", 3.0), l.lane("b", 1.0));
        for n in 0..1000 {
            l.set(n, a, 0);
            l.set(1000 + n, b, 0);
        }
        let mut from_a = 0;
        for _ in 0..10 {
            let batch = l.due_by(0, 100);
            from_a += batch.iter().filter(|(k, _)| *k < 1000).count();
            for (k, _) in batch {
                l.set(k, if k < 1000 { a } else { b }, 10);
            }
        }
        assert!(
            (700..=800).contains(&from_a),
            "weight 3 against 1: {from_a} of 1000"
        );
        l.set(0, b, 0);
        assert_eq!(l.len(), 2000);
        l.set(0, LaneId::BACKGROUND, 0);
        assert_eq!(l.len(), 2000);
        l.remove(0);
        assert_eq!(l.len(), 1999);
        assert!(!l.contains(0));
        l.set_weights(|_| None);
        assert_eq!(l.next_due(), Some(0));
    }

    #[test]
    fn background_jobs_get_only_what_the_lanes_leave() {
        let mut l = Lanes::default();
        let a = l.lane("a", 1.0);
        for n in 0..80 {
            l.set(n, a, 0);
        }
        for n in 100..200 {
            l.set(n, LaneId::BACKGROUND, 0);
        }
        let batch = l.due_by(0, 100);
        assert_eq!(batch.iter().filter(|(k, _)| *k < 80).count(), 80);
        assert_eq!(batch.iter().filter(|(k, _)| *k >= 100).count(), 20);
    }

    #[test]
    fn budget_never_exceeds_its_rate() {
        let mut b = Budget::new(5.0, 0);
        let mut calls = Vec::new();
        let mut now = 0;
        while now < 10_000 {
            let w = b.wait(now);
            if w == 0 {
                b.take(now);
                b.on_success();
                calls.push(now);
            } else {
                now += w;
            }
        }
        // In any 1 s window: at most rate + the 1-call burst.
        for (i, t) in calls.iter().enumerate() {
            let in_window = calls[i..].iter().take_while(|x| **x < t + 1000).count();
            assert!(in_window <= 6, "{in_window} calls in 1s from {t}");
        }
        assert!(calls.len() >= 49 && calls.len() <= 51, "{}", calls.len());
    }

    #[test]
    fn budget_backs_off_on_throttling_and_recovers_slowly() {
        let mut b = Budget::new(8.0, 0);
        b.on_throttle(0, Some(3000));
        assert_eq!(b.rate(), 4.0);
        assert_eq!(b.wait(1000), 2000, "honours retryAfterSeconds");
        b.on_throttle(1000, None);
        assert_eq!(b.rate(), 2.0);
        for _ in 0..5 {
            b.on_success();
        }
        assert!((b.rate() - 4.0).abs() < 1e-9, "{}", b.rate());
        for _ in 0..100 {
            b.on_success();
        }
        assert_eq!(b.rate(), 8.0);
    }

    #[test]
    fn poll_factor_and_settling_in_manual_time() {
        use crate::domain::{JobKey, JobSnapshot, JobStatus, TaskRunStatus};
        let cfg = crate::config::DeadlineConfig::default();
        let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let key = JobKey {
            farm_id: "f".into(),
            queue_id: "q".into(),
            job_id: "j".into(),
        };
        let status = |s: TaskRunStatus| {
            let mut j = JobSnapshot::sample(key.clone(), "x");
            j.task_run_status = Some(s);
            JobStatus::of(&j)
        };
        let idle = chrono::Duration::from_std(cfg.idle_after).unwrap();
        let ready = status(TaskRunStatus::Ready);
        assert_eq!(poll_factor(None, t0, t0, &cfg), 1);
        assert_eq!(poll_factor(Some(&ready), t0, t0 + idle, &cfg), 1);
        assert_eq!(
            poll_factor(
                Some(&ready),
                t0,
                t0 + idle + chrono::Duration::seconds(1),
                &cfg
            ),
            cfg.idle_factor
        );
        let running = status(TaskRunStatus::Running);
        assert_eq!(poll_factor(Some(&running), t0, t0 + idle * 10, &cfg), 1);
        let done = status(TaskRunStatus::Succeeded);
        assert_eq!(poll_factor(Some(&done), t0, t0, &cfg), cfg.terminal_factor);
        let susp = status(TaskRunStatus::Suspended);
        assert_eq!(poll_factor(Some(&susp), t0, t0, &cfg), cfg.suspended_factor);
        let grace = chrono::Duration::from_std(cfg.terminal_grace).unwrap();
        assert!(!settled(None, t0 + grace * 2, &cfg));
        assert!(!settled(Some(t0), t0 + grace, &cfg));
        assert!(settled(
            Some(t0),
            t0 + grace + chrono::Duration::seconds(1),
            &cfg
        ));
    }
}
