//! The records the service keeps: subscriptions, last-seen job state, queued and
//! dead-lettered notifications, channel state. The store persists them; routing,
//! delivery and the API work on them.
use super::{Event, JobKey, JobStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub team: String,
    #[serde(flatten)]
    pub job: JobKey,
    pub channels: Vec<String>,
    pub events: Vec<Event>,
    pub created_at: DateTime<Utc>,
    /// `active`, or `ended` once the job no longer exists.
    #[serde(default = "active")]
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_reason: Option<String>,
    /// The watch that subscribed this job, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<String>,
    /// Muted: the job is still followed (its state kept) but nothing is sent.
    #[serde(default)]
    pub muted: bool,
    /// When it became `finished` or `ended`: `[store] keep_finished` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The job's name as last known (searchable after the job stops being read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
}

fn active() -> String {
    "active".into()
}

/// What the poll loop keeps of a stored subscription, decoded from the same record
/// without the rest (no flattened key, no timestamps): start-up reads every
/// followed subscription, so this is what makes it fast.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionHead {
    pub id: String,
    pub team: String,
    pub farm_id: String,
    pub queue_id: String,
    pub job_id: String,
    pub channels: Vec<String>,
    pub events: Vec<Event>,
    #[serde(default = "active")]
    pub state: String,
    #[serde(default)]
    pub muted: bool,
}

impl SubscriptionHead {
    /// See [`Subscription::is_followed`].
    pub fn is_followed(&self) -> bool {
        self.state == "active" || self.state == "finished"
    }

    pub fn is_finished(&self) -> bool {
        self.state == "finished"
    }
}

impl Subscription {
    /// Followed and polled at the normal pace.
    pub fn is_active(&self) -> bool {
        self.state == "active"
    }

    /// Terminal for `terminal_grace`: read only once per `finished_poll_interval`.
    pub fn is_finished(&self) -> bool {
        self.state == "finished"
    }

    /// Still followed (active or finished), so a requeue is seen.
    pub fn is_followed(&self) -> bool {
        self.is_active() || self.is_finished()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobState {
    pub job: JobKey,
    pub status: JobStatus,
    /// When `status` last changed (drives the adaptive poll interval).
    pub since: DateTime<Utc>,
    /// When the job was first seen terminal (cleared by a requeue).
    pub terminal_since: Option<DateTime<Utc>>,
    /// Milestones and stalls announced (see [`crate::watch::progress`]).
    #[serde(default)]
    pub progress: crate::domain::Progress,
}

/// A message waiting to be delivered to one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEntry {
    /// Store-assigned, increasing: gives transition order per channel.
    #[serde(default)]
    pub seq: u64,
    /// Stable per (job, transition, channel); sent as `webhook-id`.
    pub webhook_id: String,
    pub team: String,
    pub channel: String,
    /// The channel kind's name (`slack`, `teams`, `webhook`, …).
    pub kind: String,
    pub job: JobKey,
    pub event: Event,
    pub created_at: DateTime<Utc>,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub payload: serde_json::Value,
    /// Failure triage still running: the message waits for it until then at the
    /// latest, and goes out with its fallback payload after that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triage_until: Option<DateTime<Utc>>,
    /// What triage gathered (already rendered into `payload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<super::Failure>,
    /// The job and transition, kept while triage runs so the message can be rendered
    /// again with its details (after a restart too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Box<super::JobSnapshot>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<super::Transition>,
    /// Held for a digest (quiet hours or a digest window) until its channel's
    /// digest goes out, or until a later urgent message of its job releases it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// What a digest line says of the job, on channels that may hold messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brief: Option<Brief>,
    /// A digest page: how many held messages it folds (0 for any other message).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub digest_of: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A job as one line of a digest: kept with each message of a channel that may
/// hold messages, so a digest needs nothing but the outbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Brief {
    pub name: String,
    /// The job's state in words ("Succeeded").
    pub status: String,
    pub failed_tasks: i64,
    pub duration: Option<String>,
    /// The owner's display name, from the people directory.
    pub owner: Option<String>,
    /// The owner's Slack member id, when this message mentions the owner.
    pub mention_slack: Option<String>,
    pub link: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: u64,
    pub reason: String,
    pub dead_at: DateTime<Utc>,
    #[serde(flatten)]
    pub entry: OutboxEntry,
}

/// `webhook-id` prefix of channel test messages (they belong to no subscription).
pub const TEST_MESSAGE_PREFIX: &str = "msg_test_";

impl OutboxEntry {
    /// A message due now that belongs to no transition's triage (a channel test, a
    /// digest page): every later field at its starting value.
    #[allow(clippy::too_many_arguments)]
    pub fn due_now(
        webhook_id: String,
        team: &str,
        channel: &str,
        kind: &str,
        job: JobKey,
        event: Event,
        now: DateTime<Utc>,
        payload: serde_json::Value,
    ) -> OutboxEntry {
        OutboxEntry {
            seq: 0,
            webhook_id,
            team: team.to_string(),
            channel: channel.to_string(),
            kind: kind.to_string(),
            job,
            event,
            created_at: now,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            payload,
            triage_until: None,
            failure: None,
            snapshot: None,
            transition: None,
            held: false,
            brief: None,
            digest_of: 0,
        }
    }

    pub fn is_test(&self) -> bool {
        self.webhook_id.starts_with(TEST_MESSAGE_PREFIX)
    }
}

/// Where a notification stands: queued (or retrying), delivered, or given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoticeState {
    #[serde(rename = "pending")]
    Pending,
    #[serde(rename = "delivered")]
    Delivered,
    #[serde(rename = "dead letter")]
    DeadLetter,
    /// Held (quiet hours, a digest window) and folded into a digest message.
    #[serde(rename = "in digest")]
    InDigest,
}

/// The latest notification a team's subscription sent (or is sending) to one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub channel: String,
    pub event: Event,
    /// When it was queued, or when it reached its current state.
    pub at: DateTime<Utc>,
    pub webhook_id: String,
    pub state: NoticeState,
}

/// Where a job's living message is on a Slack app channel: what later events edit
/// and reply under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Anchor {
    /// The Slack channel id the root was posted in.
    pub channel_id: String,
    /// The root message's `ts`.
    pub ts: String,
    /// Its link (from `auth.test`'s workspace URL), when known.
    pub permalink: Option<String>,
    pub posted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelState {
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// "Every new job in these queues (by these people, named like this)": a team's
/// standing order to subscribe new jobs automatically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Watch {
    pub id: String,
    pub team: String,
    pub name: String,
    pub farm_id: String,
    pub queue_ids: Vec<String>,
    /// Only jobs whose `createdBy` equals one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<Vec<String>>,
    /// Only jobs whose name matches this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_matches: Option<String>,
    pub events: Vec<Event>,
    pub channels: Vec<String>,
    /// `config` or `api`.
    pub source: String,
    pub created_at: DateTime<Utc>,
}

impl Watch {
    /// The compiled `name_matches` (validated when the watch was accepted).
    pub fn name_regex(&self) -> Option<regex_lite::Regex> {
        self.name_matches
            .as_deref()
            .and_then(|re| regex_lite::Regex::new(re).ok())
    }

    /// Whether a job found in one of the watch's queues is one it wants; `name_re`
    /// is [`Watch::name_regex`], compiled once per discovery pass.
    pub fn wants(
        &self,
        job: &JobKey,
        name: &str,
        created_by: &str,
        name_re: Option<&regex_lite::Regex>,
    ) -> bool {
        job.farm_id == self.farm_id
            && self.queue_ids.iter().any(|q| job.queue_id == *q)
            && self
                .created_by
                .as_ref()
                .is_none_or(|c| c.iter().any(|x| x == created_by))
            && name_re.is_none_or(|r| r.is_match(name))
    }

    /// The id of a config-declared watch: stable across restarts and reloads.
    pub fn config_id(team: &str, name: &str) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::digest(format!("{team}\0{name}").as_bytes());
        let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("watch-{hex}")
    }
}

/// What is stored about a job's progress: `job.progress` and `job.stalled` are
/// decided from it (see `watch::progress`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Succeeded tasks at the last look.
    pub succeeded: i64,
    /// When the succeeded count last grew (none seen yet: the job's start counts).
    pub last_growth_at: Option<DateTime<Utc>>,
    /// Highest milestone (percent) reached; each fires once.
    pub milestone: u32,
    /// A stall was announced and no task has succeeded since.
    pub stalled: bool,
}
