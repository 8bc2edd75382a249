//! Pure routing: which channels hear about which events. No I/O.
use crate::config::{Channel, Team};
use crate::domain::Subscription;
use crate::domain::{Event, JobKey, Transition};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;

/// What routing needs of a subscription, in the compact form the watcher keeps in
/// memory for every watched job (a full `Subscription` is several times larger):
/// the team and the channel list are shared with every other subscription that
/// names the same ones (see [`Interner`]).
#[derive(Debug, Clone)]
pub struct Interest {
    pub id: SubId,
    pub team: Arc<str>,
    pub channels: Arc<[Box<str>]>,
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

/// A subscription id: 16 bytes for the form the service hands out (`sub-` and 32
/// lower-case hex digits), the text itself for any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubId {
    Hex([u8; 16]),
    Other(Box<str>),
}

impl SubId {
    pub fn new(id: &str) -> SubId {
        match Self::hex(id) {
            Some(b) => SubId::Hex(b),
            None => SubId::Other(id.into()),
        }
    }

    fn hex(id: &str) -> Option<[u8; 16]> {
        let digits = id.strip_prefix("sub-")?.as_bytes();
        if digits.len() != 32 {
            return None;
        }
        // Lower case only, so the id prints back exactly as it was given.
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 16];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(out)
    }

    /// Whether this is the id `id`.
    pub fn is(&self, id: &str) -> bool {
        match self {
            SubId::Hex(b) => Self::hex(id).is_some_and(|h| h == *b),
            SubId::Other(s) => **s == *id,
        }
    }
}

impl std::fmt::Display for SubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubId::Hex(b) => {
                f.write_str("sub-")?;
                b.iter().try_for_each(|x| write!(f, "{x:02x}"))
            }
            SubId::Other(s) => f.write_str(s),
        }
    }
}

/// One shared copy of each team name and each channel list that subscriptions
/// name: at 100k subscriptions a handful of distinct values, not 100k copies.
/// Values stay once seen (they are few, and come from the config's teams).
#[derive(Default)]
pub struct Interner {
    strs: HashSet<Arc<str>>,
    lists: HashSet<Arc<[Box<str>]>>,
}

impl Interner {
    pub fn str(&mut self, s: &str) -> Arc<str> {
        if let Some(x) = self.strs.get(s) {
            return x.clone();
        }
        let x: Arc<str> = s.into();
        self.strs.insert(x.clone());
        x
    }

    pub fn list(&mut self, items: &[String]) -> Arc<[Box<str>]> {
        let items: Vec<Box<str>> = items.iter().map(|c| c.as_str().into()).collect();
        if let Some(x) = self.lists.get(&*items) {
            return x.clone();
        }
        let x: Arc<[Box<str>]> = items.into();
        self.lists.insert(x.clone());
        x
    }

    /// What routing keeps of a subscription.
    pub fn interest(&mut self, s: &Subscription) -> Interest {
        self.build(&s.id, &s.team, &s.channels, &s.events, s.muted)
    }

    fn build(
        &mut self,
        id: &str,
        team: &str,
        channels: &[String],
        events: &[Event],
        muted: bool,
    ) -> Interest {
        Interest {
            id: SubId::new(id),
            team: self.str(team),
            channels: self.list(channels),
            events: events.iter().fold(0, |m, e| m | event_bit(*e)),
            muted,
        }
    }

    /// A stored subscription's job and what routing keeps of it (start-up does
    /// this for every subscription).
    pub fn split(&mut self, s: crate::domain::SubscriptionHead) -> (JobKey, Interest) {
        let interest = self.build(&s.id, &s.team, &s.channels, &s.events, s.muted);
        let job = JobKey {
            farm_id: s.farm_id.into(),
            queue_id: s.queue_id.into(),
            job_id: s.job_id.into(),
        };
        (job, interest)
    }
}

impl From<&Subscription> for Interest {
    /// Without sharing (tests, one-off routing).
    fn from(s: &Subscription) -> Interest {
        Interner::default().interest(s)
    }
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
/// The (team, channel) pairs a notice about `farm_id` (and `queue_id`, when known)
/// goes to: channels whose `events` name it, of teams whose allow-lists admit the
/// farm and queue. Never a channel that does not list it: notices are opt-in.
pub fn notice_targets<'a>(
    cfg: &'a crate::config::Config,
    event: crate::domain::Event,
    farm_id: &str,
    queue_id: Option<&str>,
) -> Vec<(&'a str, &'a crate::notify::Channel)> {
    cfg.teams
        .iter()
        .filter(|t| {
            t.farm_ids
                .as_ref()
                .is_none_or(|f| f.iter().any(|x| x == farm_id))
        })
        .filter(|t| match (&t.queue_ids, queue_id) {
            (Some(qs), Some(q)) => qs.iter().any(|x| x == q),
            // A budget of no known queue reaches a queue-limited team: it is the
            // team's farm.
            _ => true,
        })
        .flat_map(|t| {
            t.channels
                .iter()
                .filter(move |c| c.events.as_ref().is_some_and(|e| e.contains(&event)))
                .map(move |c| (t.name.as_str(), c))
        })
        .collect()
}

/// `webhook-id` of a notice: stable per (event id, team, channel), so a repeated
/// event is recognisable by the receiver as the same message.
pub fn notice_webhook_id(event_id: &str, team: &str, channel: &str) -> String {
    let mut h = Sha256::new();
    for part in ["notice", event_id, team, channel] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

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

    #[test]
    fn subscription_ids_print_back_as_given_and_compare_by_value() {
        let hex = "sub-0123456789abcdef0123456789abcdef";
        for id in [
            hex,
            "sub-0123456789ABCDEF0123456789ABCDEF",
            "sub-1",
            "custom id",
            "",
        ] {
            let s = SubId::new(id);
            assert_eq!(s.to_string(), id);
            assert!(s.is(id));
            assert!(!s.is("sub-ffffffffffffffffffffffffffffffff"));
        }
        assert!(matches!(SubId::new(hex), SubId::Hex(_)));
        assert!(!SubId::new(hex).is("sub-0123456789ABCDEF0123456789ABCDEF"));
        let mut i = Interner::default();
        let (a, b) = (i.str("lighting"), i.str("lighting"));
        assert!(Arc::ptr_eq(&a, &b));
        let list = vec!["a".to_string(), "b".to_string()];
        assert!(Arc::ptr_eq(&i.list(&list), &i.list(&list)));
        assert_eq!(&*i.list(&list)[1], "b");
    }

    fn team(name: &str) -> Team {
        let ch = |n: &str, events: Option<Vec<Event>>| Channel {
            name: n.into(),
            kind: ChannelKind::named("webhook").unwrap(),
            url: Secret::new("https://x"),
            secret: None,
            events,
            mention_owner: vec![],
            card_only: false,
            app: None,
            defer: Default::default(),
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

    #[test]
    fn notices_reach_only_channels_that_list_them_within_the_allow_lists() {
        let farm = format!("farm-{}", "a".repeat(32));
        let (q1, q2) = (
            format!("queue-{}", "1".repeat(32)),
            format!("queue-{}", "2".repeat(32)),
        );
        let text = format!(
            r#"
[delivery]
allow_private_targets = true
[[teams]]
name = "everyone"
tokens = ["everyone-token-0123456789"]
[[teams.channels]]
name = "all-job-events"
kind = "webhook"
url = "http://127.0.0.1:1/a"
[[teams.channels]]
name = "budgets"
kind = "webhook"
url = "http://127.0.0.1:1/b"
events = ["budget.threshold"]
[[teams]]
name = "other-farm"
tokens = ["other-farm-token-0123456789"]
farm_ids = ["farm-{b}"]
[[teams.channels]]
name = "budgets"
kind = "webhook"
url = "http://127.0.0.1:1/c"
events = ["budget.threshold"]
[[teams]]
name = "one-queue"
tokens = ["one-queue-token-0123456789"]
queue_ids = ["{q1}"]
[[teams.channels]]
name = "budgets"
kind = "webhook"
url = "http://127.0.0.1:1/d"
events = ["budget.threshold", "job.failed"]
"#,
            b = "b".repeat(32)
        );
        let cfg = crate::config::Config::from_toml(&text, std::path::Path::new("t.toml")).unwrap();
        let names = |queue: Option<&str>| -> Vec<String> {
            notice_targets(&cfg, Event::BudgetThreshold, &farm, queue)
                .iter()
                .map(|(t, c)| format!("{t}/{}", c.name))
                .collect()
        };
        // Never a channel by default; never a team whose farms exclude it.
        assert_eq!(names(None), ["everyone/budgets", "one-queue/budgets"]);
        assert_eq!(names(Some(&q1)), ["everyone/budgets", "one-queue/budgets"]);
        assert_eq!(names(Some(&q2)), ["everyone/budgets"]);
        assert_ne!(
            notice_webhook_id("e1", "everyone", "budgets"),
            notice_webhook_id("e1", "one-queue", "budgets")
        );
        assert_eq!(
            notice_webhook_id("e1", "everyone", "budgets"),
            notice_webhook_id("e1", "everyone", "budgets")
        );
    }
}
