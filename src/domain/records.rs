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
}

fn active() -> String {
    "active".into()
}

impl Subscription {
    pub fn is_active(&self) -> bool {
        self.state == "active"
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelState {
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
}
