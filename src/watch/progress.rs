//! `job.progress` and `job.stalled`: pure decisions from what is stored about a
//! job's progress, its task counts now, and the time. The state is stored with the
//! job (only when a milestone or a stall fires or clears, so polling writes nothing
//! more): a restart neither fires again nor forgets.
//!
//! Growth is measured against the stored succeeded count: after a restart a larger
//! count reads as growth "now", which can delay a stall but never invent one.
use crate::domain::{Progress, TaskRunStatus};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// What one read of the job says about its progress.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub succeeded: i64,
    pub total: i64,
    pub running: i64,
    pub status: Option<&'a TaskRunStatus>,
    pub started_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fire {
    /// The highest milestone passed since the last look.
    Milestone(u32),
    /// No task succeeded since then while tasks ran.
    Stalled { since: DateTime<Utc> },
}

fn percent(s: &Seen) -> u32 {
    if s.total <= 0 {
        return 0;
    }
    ((s.succeeded.max(0) * 100) / s.total).clamp(0, 100) as u32
}

fn reached(milestones: &[u32], pct: u32) -> u32 {
    milestones
        .iter()
        .copied()
        .filter(|m| *m <= pct)
        .max()
        .unwrap_or(0)
}

/// The state to keep when a job is first seen: nothing fires for what it already did.
pub fn baseline(seen: &Seen, milestones: &[u32]) -> Progress {
    Progress {
        succeeded: seen.succeeded,
        last_growth_at: None,
        milestone: reached(milestones, percent(seen)),
        stalled: false,
    }
}

/// The next state, what fires, and whether the state must be stored now.
pub fn step(
    prev: &Progress,
    seen: &Seen,
    now: DateTime<Utc>,
    stall_after: Duration,
    milestones: &[u32],
) -> (Progress, Vec<Fire>, bool) {
    let mut next = prev.clone();
    let mut fires = Vec::new();
    let mut store = false;
    let pct = percent(seen);
    if seen.succeeded > prev.succeeded {
        next.succeeded = seen.succeeded;
        next.last_growth_at = Some(now);
        if prev.stalled {
            next.stalled = false;
            store = true;
        }
    } else if seen.succeeded < prev.succeeded {
        // Requeued (tasks reset): milestones may fire again as it climbs back.
        next = Progress {
            succeeded: seen.succeeded,
            last_growth_at: Some(now),
            milestone: reached(milestones, pct),
            stalled: false,
        };
        store = next.milestone != prev.milestone || prev.stalled;
    }
    let running = seen.status == Some(&TaskRunStatus::Running);
    let top = reached(milestones, pct);
    if top > next.milestone {
        next.milestone = top;
        store = true;
        if running {
            fires.push(Fire::Milestone(top));
        }
    }
    if running && seen.running > 0 && !next.stalled {
        if let Some(since) = next.last_growth_at.or(seen.started_at) {
            if now - since
                >= chrono::Duration::from_std(stall_after).unwrap_or(chrono::Duration::MAX)
            {
                next.stalled = true;
                store = true;
                fires.push(Fire::Stalled { since });
            }
        } else {
            next.last_growth_at = Some(now);
        }
    }
    (next, fires, store)
}

/// Tasks succeeded per hour since the job started, and the time the rest would take
/// at that rate.
pub fn throughput(
    succeeded: i64,
    remaining: i64,
    started_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<(f64, Option<Duration>)> {
    let hours = (now - started_at?).num_milliseconds() as f64 / 3_600_000.0;
    if hours <= 0.0 || succeeded <= 0 {
        return None;
    }
    let per_hour = succeeded as f64 / hours;
    let eta =
        (remaining > 0).then(|| Duration::from_secs_f64(remaining as f64 / per_hour * 3600.0));
    Some((per_hour, eta.or(Some(Duration::ZERO))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: &[u32] = &[50, 90];
    const STALL: Duration = Duration::from_secs(1800);

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + chrono::Duration::minutes(min)
    }

    fn seen(succeeded: i64, running: i64) -> Seen<'static> {
        Seen {
            succeeded,
            total: 100,
            running,
            status: Some(&TaskRunStatus::Running),
            started_at: Some(t(0)),
        }
    }

    #[test]
    fn a_jump_past_several_milestones_fires_once_for_the_highest() {
        let p = baseline(&seen(10, 5), MS);
        let (p, f, store) = step(&p, &seen(95, 5), t(5), STALL, MS);
        assert_eq!(f, [Fire::Milestone(90)]);
        assert!(store);
        let (_, f, store) = step(&p, &seen(97, 3), t(6), STALL, MS);
        assert!(f.is_empty() && !store, "once");
    }

    #[test]
    fn the_first_look_is_a_baseline() {
        let p = baseline(&seen(60, 5), MS);
        let (_, f, _) = step(&p, &seen(60, 5), t(1), STALL, MS);
        assert!(f.is_empty());
    }

    #[test]
    fn a_stall_fires_once_from_the_last_growth_and_progress_clears_it() {
        let p = baseline(&seen(10, 5), MS);
        let (p, f, _) = step(&p, &seen(20, 5), t(10), STALL, MS);
        assert!(f.is_empty());
        let (p, f, _) = step(&p, &seen(20, 5), t(39), STALL, MS);
        assert!(f.is_empty(), "29 minutes since growth");
        let (p, f, store) = step(&p, &seen(20, 5), t(40), STALL, MS);
        assert_eq!(f, [Fire::Stalled { since: t(10) }]);
        assert!(store && p.stalled);
        let (p, f, _) = step(&p, &seen(20, 5), t(90), STALL, MS);
        assert!(f.is_empty(), "once per stall");
        let (p, f, store) = step(&p, &seen(21, 5), t(91), STALL, MS);
        assert!(f.is_empty() && store && !p.stalled, "cleared by progress");
        let (_, f, _) = step(&p, &seen(21, 5), t(121), STALL, MS);
        assert_eq!(f, [Fire::Stalled { since: t(91) }], "a new stall");
    }

    #[test]
    fn no_growth_seen_measures_from_the_jobs_start_and_idle_jobs_never_stall() {
        let p = baseline(&seen(0, 5), MS);
        let (_, f, _) = step(&p, &seen(0, 5), t(31), STALL, MS);
        assert_eq!(f, [Fire::Stalled { since: t(0) }]);
        let (_, f, _) = step(&p, &seen(0, 0), t(31), STALL, MS);
        assert!(f.is_empty(), "nothing running: waiting, not stalled");
        let ready = Seen {
            status: Some(&TaskRunStatus::Ready),
            ..seen(0, 5)
        };
        let (_, f, _) = step(&p, &ready, t(31), STALL, MS);
        assert!(f.is_empty());
    }

    #[test]
    fn a_restart_with_a_stale_count_delays_but_never_invents_a_stall() {
        // Stored at 20 (t=10); the job grew to 40 meanwhile; we come back at t=45.
        let stored = Progress {
            succeeded: 20,
            last_growth_at: Some(t(10)),
            milestone: 0,
            stalled: false,
        };
        let (p, f, _) = step(&stored, &seen(40, 5), t(45), STALL, MS);
        assert!(f.is_empty());
        assert_eq!(p.last_growth_at, Some(t(45)));
    }

    #[test]
    fn a_requeue_resets_milestones() {
        let p = baseline(&seen(10, 5), MS);
        let (p, _, _) = step(&p, &seen(60, 5), t(5), STALL, MS);
        assert_eq!(p.milestone, 50);
        let (p, f, store) = step(&p, &seen(0, 5), t(6), STALL, MS);
        assert!(f.is_empty() && store && p.milestone == 0);
        let (_, f, _) = step(&p, &seen(55, 5), t(7), STALL, MS);
        assert_eq!(f, [Fire::Milestone(50)]);
    }

    #[test]
    fn throughput_and_eta() {
        let (rate, eta) = throughput(100, 300, Some(t(0)), t(60)).unwrap();
        assert!((rate - 100.0).abs() < 1e-9);
        assert_eq!(eta, Some(Duration::from_secs(3 * 3600)));
        assert!(throughput(0, 300, Some(t(0)), t(60)).is_none());
    }
}
