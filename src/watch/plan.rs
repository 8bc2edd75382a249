//! What one read of a watched job means, decided without I/O: whether anything
//! changed ([`look`]), and if so the events, the job's new state and the outbox
//! entries to commit with it ([`plan`]). The poll loop commits the plan in one
//! transaction; a test sets `now` by hand.
use super::diff::diff;
use super::progress::{self, Fire, Seen};
use super::route::{Interest, route, webhook_id};
use crate::config::{Config, DeadlineConfig};
use crate::domain::failure::NOT_GATHERED;
use crate::domain::{
    Event, Failure, JobSnapshot, JobState, JobStatus, OutboxEntry, Progress, Transition,
};
use crate::render::Renderer;
use chrono::{DateTime, Utc};

/// What the loop keeps in memory of a watched job's last committed state.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub status: JobStatus,
    pub since: DateTime<Utc>,
    pub terminal_since: Option<DateTime<Utc>>,
    /// In memory at every read; stored when a milestone or stall fires or clears.
    pub progress: Progress,
}

impl Known {
    /// The stored state's job and what the loop keeps of it, moved, not copied.
    pub fn split(s: JobState) -> (crate::domain::JobKey, Known) {
        let known = Known {
            status: s.status,
            since: s.since,
            terminal_since: s.terminal_since,
            progress: s.progress,
        };
        (s.job, known)
    }
}

impl From<JobState> for Known {
    fn from(s: JobState) -> Known {
        Known::split(s).1
    }
}

/// The first look at a read: progress, and whether the rest must be planned.
#[derive(Debug, Clone, PartialEq)]
pub struct Look {
    pub progress: Progress,
    pub fires: Vec<Fire>,
    /// The status changed, the job is new, or progress must be stored: only then is
    /// the full snapshot built and a [`plan`] made (most reads change nothing).
    pub changed: bool,
}

pub fn look(
    prev: Option<&Known>,
    status: &JobStatus,
    seen: &Seen,
    now: DateTime<Utc>,
    dl: &DeadlineConfig,
) -> Look {
    let (progress, fires, progress_changed) = match prev {
        Some(p) => progress::step(
            &p.progress,
            seen,
            now,
            dl.stall_after,
            &dl.progress_milestones,
        ),
        None => (
            progress::baseline(seen, &dl.progress_milestones),
            Vec::new(),
            false,
        ),
    };
    let same = prev.is_some_and(|p| p.status == *status);
    Look {
        changed: !(same && fires.is_empty() && !progress_changed),
        progress,
        fires,
    }
}

/// What to commit for a changed read.
#[derive(Debug)]
pub struct Plan {
    pub events: Vec<Event>,
    pub state: JobState,
    pub entries: Vec<OutboxEntry>,
}

/// The events a read shows (status transitions, then fired milestones and stalls),
/// the job's new state and one outbox entry per (event, channel) that asked for it.
#[allow(clippy::too_many_arguments)] // each is one input of the decision
pub fn plan(
    prev: Option<&Known>,
    cur: JobStatus,
    snap: &JobSnapshot,
    look: Look,
    subs: &[Interest],
    config: &Config,
    renderer: &Renderer,
    now: DateTime<Utc>,
) -> Plan {
    let mut events = diff(prev.map(|p| &p.status), &cur);
    let (mut milestone, mut stalled_since) = (None, None);
    for f in &look.fires {
        match f {
            Fire::Milestone(m) => {
                milestone = Some(*m);
                events.push(Event::Progress);
            }
            Fire::Stalled { since } => {
                stalled_since = Some(*since);
                events.push(Event::Stalled);
            }
        }
    }
    let mut entries = Vec::new();
    for d in route(&snap.key, &events, subs, &config.teams) {
        let tr = Transition {
            event: d.event,
            previous_task_run_status: prev.and_then(|p| p.status.task_run_status.clone()),
            previous_lifecycle_status: prev.map_or(cur.lifecycle_status.clone(), |p| {
                p.status.lifecycle_status.clone()
            }),
            detected_at: now,
            milestone: (d.event == Event::Progress).then_some(milestone).flatten(),
            stalled_since: (d.event == Event::Stalled)
                .then_some(stalled_since)
                .flatten(),
        };
        entries.push(entry(
            &d.team.name,
            d.channel,
            snap,
            tr,
            config,
            renderer,
            now,
        ));
    }
    let same = prev.is_some_and(|p| p.status == cur);
    let terminal_since = if cur.is_terminal() {
        prev.and_then(|p| p.terminal_since).or(Some(now))
    } else {
        None
    };
    let state = JobState {
        job: snap.key.clone(),
        status: cur,
        // When the status last changed (a milestone alone does not change it).
        since: prev.filter(|_| same).map_or(now, |p| p.since),
        terminal_since,
        progress: look.progress,
    };
    Plan {
        events,
        state,
        entries,
    }
}

/// One channel's message for one transition. A failure's message waits (up to the
/// triage timeout) for why it failed; meanwhile it holds a fallback that says the
/// details are missing, so nothing waits for ever.
fn entry(
    team: &str,
    channel: &crate::notify::Channel,
    snap: &JobSnapshot,
    tr: Transition,
    config: &Config,
    renderer: &Renderer,
    now: DateTime<Utc>,
) -> OutboxEntry {
    let triage = &config.triage;
    let wait = triage.enabled && renderer.wants_failure(team, channel.kind, tr.event);
    let fallback = wait.then(|| Failure {
        failed_task_count: snap.count("FAILED"),
        unavailable: Some(NOT_GATHERED.into()),
        ..Default::default()
    });
    let (payload, last_error) =
        match renderer.payload_with(team, channel, snap, &tr, fallback.as_ref()) {
            Ok(v) => (v, None),
            // Kept, and dead-lettered by delivery with the reason: never dropped.
            Err(e) => (serde_json::Value::Null, Some(e.to_string())),
        };
    let until = wait.then(|| now + chrono::Duration::from_std(triage.timeout).unwrap_or_default());
    // Quiet hours and digest windows decide at detection time, so a message found
    // at 19:59:59.9 leaves at once and one found at 20:00 waits, whenever it is sent.
    let defer = &channel.defer;
    let held = defer.is_active() && defer.holds(tr.event, now);
    let brief = defer
        .is_active()
        .then(|| renderer.brief(channel, snap, &tr));
    OutboxEntry {
        seq: 0,
        webhook_id: webhook_id(&snap.key, &tr, team, &channel.name),
        team: team.to_string(),
        channel: channel.name.clone(),
        kind: channel.kind.as_str().to_string(),
        job: snap.key.clone(),
        event: tr.event,
        created_at: now,
        attempts: 0,
        next_attempt_at: until.unwrap_or(now),
        last_error,
        payload,
        triage_until: until,
        failure: None,
        snapshot: wait.then(|| Box::new(snap.clone())),
        transition: wait.then_some(tr),
        held,
        brief,
        digest_of: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobKey, Subscription, TaskRunStatus};
    use std::time::Duration;

    const CONFIG: &str = r#"
[delivery]
allow_private_targets = true
[triage]
timeout = "30s"
[[teams]]
name = "lighting"
tokens = ["lighting-token-0123456789"]
[[teams.channels]]
name = "pipeline"
kind = "webhook"
url = "http://127.0.0.1:9/hook"
"#;

    fn setup() -> (Config, Renderer) {
        let cfg = Config::from_toml(CONFIG, std::path::Path::new("plan.toml")).unwrap();
        let r = Renderer::load(&cfg, None).unwrap();
        (cfg, r)
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn snap(status: &str) -> JobSnapshot {
        let key = JobKey::parse(
            &format!("farm-{}", "1".repeat(32)),
            &format!("queue-{}", "2".repeat(32)),
            &format!("job-{}", "3".repeat(32)),
        )
        .unwrap();
        let mut s = JobSnapshot::sample(key, "shot_010");
        s.task_run_status = Some(TaskRunStatus::from_wire(status));
        s
    }

    fn interest(snap: &JobSnapshot, events: &[Event], muted: bool) -> Interest {
        Interest::from(&Subscription {
            id: "sub-1".into(),
            team: "lighting".into(),
            job: snap.key.clone(),
            channels: vec!["pipeline".into()],
            events: events.to_vec(),
            created_at: at(0),
            state: "active".into(),
            ended_reason: None,
            watch: None,
            muted,
            finished_at: None,
            job_name: None,
        })
    }

    fn seen(s: &JobSnapshot) -> Seen<'_> {
        Seen {
            succeeded: 0,
            total: 0,
            running: 0,
            status: s.task_run_status.as_ref(),
            started_at: None,
        }
    }

    fn known(s: &JobSnapshot, since: DateTime<Utc>) -> Known {
        Known {
            status: JobStatus::of(s),
            since,
            terminal_since: None,
            progress: Progress::default(),
        }
    }

    fn run(
        prev: Option<&Known>,
        s: &JobSnapshot,
        subs: &[Interest],
        now: DateTime<Utc>,
    ) -> (Look, Option<Plan>) {
        let (cfg, r) = setup();
        let l = look(prev, &JobStatus::of(s), &seen(s), now, &cfg.deadline);
        let p = l
            .changed
            .then(|| plan(prev, JobStatus::of(s), s, l.clone(), subs, &cfg, &r, now));
        (l, p)
    }

    #[test]
    fn the_first_read_is_a_baseline_that_is_stored_but_says_nothing() {
        let s = snap("SUCCEEDED");
        let subs = [interest(&s, &[Event::Succeeded], false)];
        let (l, p) = run(None, &s, &subs, at(10));
        assert!(l.changed, "a new job's state must be stored");
        let p = p.unwrap();
        assert!(p.events.is_empty() && p.entries.is_empty(), "{p:?}");
        assert_eq!(p.state.since, at(10));
        assert_eq!(p.state.terminal_since, Some(at(10)));
    }

    #[test]
    fn an_unchanged_read_plans_nothing() {
        let s = snap("RUNNING");
        let prev = known(&s, at(0));
        let (l, p) = run(Some(&prev), &s, &[interest(&s, &Event::ALL, false)], at(60));
        assert!(!l.changed);
        assert!(p.is_none());
    }

    #[test]
    fn running_to_succeeded_queues_one_message_stamped_now() {
        let before = snap("RUNNING");
        let prev = known(&before, at(0));
        let s = snap("SUCCEEDED");
        let subs = [interest(&s, &[Event::Succeeded], false)];
        let (_, p) = run(Some(&prev), &s, &subs, at(90));
        let p = p.unwrap();
        assert_eq!(p.events, [Event::Succeeded]);
        assert_eq!(p.entries.len(), 1);
        let e = &p.entries[0];
        assert_eq!(
            (e.team.as_str(), e.channel.as_str(), e.kind.as_str()),
            ("lighting", "pipeline", "webhook")
        );
        assert_eq!((e.created_at, e.next_attempt_at), (at(90), at(90)));
        assert_eq!(e.triage_until, None);
        assert_eq!(e.payload["type"], "job.succeeded", "{}", e.payload);
        assert_eq!(
            (p.state.since, p.state.terminal_since),
            (at(90), Some(at(90)))
        );
    }

    #[test]
    fn a_failure_waits_for_triage_until_the_timeout_with_a_fallback() {
        let prev = known(&snap("RUNNING"), at(0));
        let s = snap("FAILED");
        let (_, p) = run(
            Some(&prev),
            &s,
            &[interest(&s, &[Event::Failed], false)],
            at(100),
        );
        let e = &p.unwrap().entries[0];
        let until = at(100) + chrono::Duration::from_std(Duration::from_secs(30)).unwrap();
        assert_eq!(e.triage_until, Some(until));
        assert_eq!(
            e.next_attempt_at, until,
            "held until triage stores the full message"
        );
        assert!(e.snapshot.is_some() && e.transition.is_some());
        assert!(
            e.payload.to_string().contains(NOT_GATHERED),
            "{}",
            e.payload
        );
    }

    #[test]
    fn a_muted_or_uninterested_subscription_queues_nothing_but_the_state_moves() {
        let prev = known(&snap("RUNNING"), at(0));
        let s = snap("SUCCEEDED");
        for subs in [
            vec![interest(&s, &[Event::Succeeded], true)],
            vec![interest(&s, &[Event::Failed], false)],
        ] {
            let (_, p) = run(Some(&prev), &s, &subs, at(5));
            let p = p.unwrap();
            assert_eq!(p.events, [Event::Succeeded]);
            assert!(p.entries.is_empty());
            assert_eq!(p.state.status, JobStatus::of(&s));
        }
    }
}
