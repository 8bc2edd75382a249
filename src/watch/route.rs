//! Pure routing: which channels hear about which events. No I/O.
use crate::config::{Channel, Team};
use crate::domain::Subscription;
use crate::domain::{Event, JobKey, Transition};
use sha2::{Digest, Sha256};

/// What routing needs of a subscription, in the compact form the watcher keeps in
/// memory for every watched job (a full `Subscription` is several times larger).
#[derive(Debug, Clone)]
pub struct Interest {
    pub id: Box<str>,
    pub team: Box<str>,
    pub channels: Box<[Box<str>]>,
    /// Bit `i` set: wants `Event::ALL[i]`.
    events: u16,
    /// Followed, but nothing is sent.
    pub muted: bool,
}

impl Interest {
    pub fn wants(&self, event: Event) -> bool {
        self.events & event_bit(event) != 0
    }
}

fn event_bit(event: Event) -> u16 {
    Event::ALL
        .iter()
        .position(|e| *e == event)
        .map_or(0, |i| 1 << i)
}

impl From<&Subscription> for Interest {
    fn from(s: &Subscription) -> Interest {
        Interest {
            id: s.id.as_str().into(),
            team: s.team.as_str().into(),
            channels: s.channels.iter().map(|c| c.as_str().into()).collect(),
            events: s.events.iter().fold(0, |m, e| m | event_bit(*e)),
            muted: s.muted,
        }
    }
}

/// A stored subscription's job and what routing keeps of it, its strings moved
/// rather than copied (start-up does this for every subscription).
pub fn split(s: crate::domain::SubscriptionHead) -> (JobKey, Interest) {
    let job = JobKey {
        farm_id: s.farm_id,
        queue_id: s.queue_id,
        job_id: s.job_id,
    };
    let interest = Interest {
        id: s.id.into_boxed_str(),
        team: s.team.into_boxed_str(),
        channels: s.channels.into_iter().map(String::into_boxed_str).collect(),
        events: s.events.iter().fold(0, |m, e| m | event_bit(*e)),
        muted: s.muted,
    };
    (job, interest)
}

#[derive(Debug)]
pub struct Dispatch<'a> {
    pub team: &'a Team,
    pub channel: &'a Channel,
    pub event: Event,
}

/// For each event, in order: each active subscription of the job that asked for the
/// event, and each of its channels whose own `events` list (if any) includes it.
pub fn route<'a>(
    job: &JobKey,
    events: &[Event],
    subs: &[Interest],
    teams: &'a [Team],
) -> Vec<Dispatch<'a>> {
    let mut out = Vec::new();
    for &event in events {
        for sub in subs.iter().filter(|s| !s.muted && s.wants(event)) {
            let Some(team) = teams.iter().find(|t| *t.name == *sub.team) else {
                continue;
            };
            // Outside the team's allow-lists (narrowed by a reload): never notified.
            if team.admits(job).is_err() {
                continue;
            }
            for channel in &team.channels {
                if sub.channels.iter().any(|c| **c == *channel.name) && channel.wants(event) {
                    out.push(Dispatch {
                        team,
                        channel,
                        event,
                    });
                }
            }
        }
    }
    out
}

/// The idempotency key of one notification: the same (job, transition, channel)
/// always yields the same id, across retries, restarts and replays.
pub fn webhook_id(job: &JobKey, tr: &Transition, team: &str, channel: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        job.to_string(),
        tr.event.as_str().to_string(),
        tr.detected_at.timestamp_micros().to_string(),
        team.to_string(),
        channel.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChannelKind, Team};
    use crate::domain::secret::Secret;

    fn team(name: &str) -> Team {
        let ch = |n: &str, events: Option<Vec<Event>>| Channel {
            name: n.into(),
            kind: ChannelKind::named("webhook").unwrap(),
            url: Secret::new("https://x"),
            secret: None,
            events,
            mention_owner: vec![],
        };
        Team {
            name: name.into(),
            tokens: vec![],
            channels: vec![ch("all", None), ch("failures", Some(vec![Event::Failed]))],
            farm_ids: None,
            queue_ids: None,
            watches: vec![],
            weight: 1.0,
        }
    }

    fn sub(team: &str, channels: &[&str], events: &[Event]) -> Subscription {
        Subscription {
            id: "s".into(),
            team: team.into(),
            job: JobKey {
                farm_id: "f".into(),
                queue_id: "q".into(),
                job_id: "j".into(),
            },
            channels: channels.iter().map(|s| s.to_string()).collect(),
            events: events.to_vec(),
            created_at: crate::clock::wall_now(),
            state: "active".into(),
            ended_reason: None,
            watch: None,
            muted: false,
            finished_at: None,
            job_name: None,
        }
    }

    #[test]
    fn routes_by_subscription_and_channel_filters() {
        let mut teams = vec![team("a"), team("b")];
        let subs: Vec<Interest> = [
            sub("a", &["all", "failures"], &Event::DEFAULTS),
            sub("b", &["failures"], &[Event::Succeeded, Event::Failed]),
        ]
        .iter()
        .map(Interest::from)
        .collect();
        let names = |evs: &[Event]| -> Vec<String> {
            route(&job(), evs, &subs, &teams)
                .iter()
                .map(|d| format!("{}/{}/{}", d.team.name, d.channel.name, d.event))
                .collect()
        };
        assert_eq!(names(&[Event::Succeeded]), vec!["a/all/job.succeeded"]);
        assert_eq!(
            names(&[Event::Failed]),
            vec![
                "a/all/job.failed",
                "a/failures/job.failed",
                "b/failures/job.failed"
            ]
        );
        assert!(names(&[Event::Started]).is_empty());
        // A reload that narrows b's queues to others: b hears nothing of this job.
        teams[1].queue_ids = Some(vec![format!("queue-{}", "9".repeat(32))]);
        let names: Vec<_> = route(&job(), &[Event::Failed], &subs, &teams)
            .iter()
            .map(|d| d.team.name.clone())
            .collect();
        assert_eq!(names, ["a", "a"]);
        // A muted subscription is followed but routed nowhere.
        let mut muted = sub("a", &["all"], &Event::DEFAULTS);
        muted.muted = true;
        let subs = [Interest::from(&muted)];
        assert!(route(&job(), &[Event::Failed], &subs, &teams).is_empty());
    }

    fn job() -> JobKey {
        JobKey {
            farm_id: "f".into(),
            queue_id: "q".into(),
            job_id: "j".into(),
        }
    }
}
