//! Our own domain types. The AWS SDK's types stop at `deadline::client`; everything
//! else speaks in these.
//!
//! The ground floor (pure): imports nothing of this crate but itself, so every
//! other module can use it.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub mod budget;
pub mod failure;
pub mod monitor;
pub mod people;
mod records;
pub mod secret;
pub mod text;
pub use failure::{FailedStep, FailedTask, Failure};
pub use records::{
    Anchor, Brief, ChannelState, DeadLetter, JobState, Notice, NoticeState, OutboxEntry, Progress,
    Subscription, SubscriptionHead, TEST_MESSAGE_PREFIX, Watch,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field} must match {pattern} (got {got:?})")]
pub struct IdError {
    pub field: &'static str,
    pub pattern: &'static str,
    pub got: String,
}

fn check_id(
    field: &'static str,
    prefix: &str,
    pattern: &'static str,
    s: &str,
) -> Result<(), IdError> {
    let ok = s.strip_prefix(prefix).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        let mut got: String = s.chars().take(80).collect();
        if s.chars().count() > 80 {
            got.push('…');
        }
        Err(IdError {
            field,
            pattern,
            got,
        })
    }
}

/// Identifies one Deadline Cloud job.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobKey {
    pub farm_id: Id,
    pub queue_id: Id,
    pub job_id: Id,
}

/// A Deadline Cloud id (farm, queue, job): shared, immutable text. A clone is a
/// reference count, and the poll loop keeps one copy of each farm and queue id
/// for all their jobs (100k watched jobs share ten farm ids).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(std::sync::Arc<str>);

impl Id {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Id {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Id {
        Id(s.into())
    }
}

impl From<String> for Id {
    fn from(s: String) -> Id {
        Id(s.into())
    }
}

impl From<&String> for Id {
    fn from(s: &String) -> Id {
        Id(s.as_str().into())
    }
}

impl From<&Id> for String {
    fn from(id: &Id) -> String {
        id.0.to_string()
    }
}

impl From<Id> for String {
    fn from(id: Id) -> String {
        id.0.to_string()
    }
}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Id {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Id> for str {
    fn eq(&self, other: &Id) -> bool {
        *self == *other.0
    }
}

impl PartialEq<Id> for String {
    fn eq(&self, other: &Id) -> bool {
        **self == *other.0
    }
}

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id(v.into()))
            }
        }
        d.deserialize_str(V)
    }
}

impl JobKey {
    /// Validates each id against Deadline's patterns (`farm-`/`queue-`/`job-` + 32 hex).
    pub fn parse(farm_id: &str, queue_id: &str, job_id: &str) -> Result<Self, IdError> {
        check_id("farmId", "farm-", "farm-[0-9a-f]{32}", farm_id)?;
        check_id("queueId", "queue-", "queue-[0-9a-f]{32}", queue_id)?;
        check_id("jobId", "job-", "job-[0-9a-f]{32}", job_id)?;
        Ok(Self {
            farm_id: farm_id.into(),
            queue_id: queue_id.into(),
            job_id: job_id.into(),
        })
    }

    /// Parses `farm/queue/job`.
    pub fn parse_path(s: &str) -> Result<Self, IdError> {
        let mut it = s.split('/');
        let (f, q, j) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        if it.next().is_some() {
            return Err(IdError {
                field: "job",
                pattern: "farm-…/queue-…/job-…",
                got: s.into(),
            });
        }
        Self::parse(f, q, j)
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.farm_id, self.queue_id, self.job_id)
    }
}

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $wire:literal),* $(,)? }) => {
        $(#[$m])*
        /// Unknown wire values are kept verbatim in `Unknown` and never match a known variant.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant,)* Unknown(Box<str>) }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self { $(Self::$variant => $wire,)* Self::Unknown(s) => s }
            }
            pub fn from_wire(s: &str) -> Self {
                match s { $($wire => Self::$variant,)* other => Self::Unknown(other.into()) }
            }
            pub const KNOWN: &'static [&'static str] = &[$($wire),*];
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.as_str()) }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok(Self::from_wire(&s))
            }
        }
    };
}

wire_enum!(TaskRunStatus {
    Pending = "PENDING",
    Ready = "READY",
    Assigned = "ASSIGNED",
    Starting = "STARTING",
    Scheduled = "SCHEDULED",
    Interrupting = "INTERRUPTING",
    Running = "RUNNING",
    Suspended = "SUSPENDED",
    Canceled = "CANCELED",
    Failed = "FAILED",
    Succeeded = "SUCCEEDED",
    NotCompatible = "NOT_COMPATIBLE",
});

wire_enum!(LifecycleStatus {
    CreateInProgress = "CREATE_IN_PROGRESS",
    CreateFailed = "CREATE_FAILED",
    CreateComplete = "CREATE_COMPLETE",
    UploadInProgress = "UPLOAD_IN_PROGRESS",
    UploadFailed = "UPLOAD_FAILED",
    UpdateInProgress = "UPDATE_IN_PROGRESS",
    UpdateFailed = "UPDATE_FAILED",
    UpdateSucceeded = "UPDATE_SUCCEEDED",
    Archived = "ARCHIVED",
});

impl TaskRunStatus {
    /// Terminal per the service model's `JobComplete` waiter.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Suspended | Self::NotCompatible
        )
    }
    /// States from which the job will (again) run tasks.
    pub fn is_runnable(&self) -> bool {
        matches!(
            self,
            Self::Pending
                | Self::Ready
                | Self::Assigned
                | Self::Starting
                | Self::Scheduled
                | Self::Running
        )
    }
}

/// A job parameter value; Deadline's union of int/float/string/path, each carried as a string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterValue {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// One observation of a job: every GetJob field, in our own types.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSnapshot {
    #[serde(flatten)]
    pub key: JobKey,
    pub name: String,
    pub description: Option<String>,
    pub lifecycle_status: LifecycleStatus,
    pub lifecycle_status_message: String,
    pub priority: i32,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub task_run_status: Option<TaskRunStatus>,
    pub target_task_run_status: Option<String>,
    #[serde(default)]
    pub task_run_status_counts: BTreeMap<String, i64>,
    pub task_failure_retry_count: Option<i32>,
    pub max_failed_tasks_count: Option<i32>,
    pub max_retries_per_task: Option<i32>,
    pub max_worker_count: Option<i32>,
    pub storage_profile_id: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, ParameterValue>,
    pub attachments: Option<serde_json::Value>,
    pub source_job_id: Option<String>,
}

impl JobSnapshot {
    pub fn count(&self, status: &str) -> i64 {
        self.task_run_status_counts
            .get(status)
            .copied()
            .unwrap_or(0)
    }

    /// A minimal job, used for baselines in tests, the demo and template checks.
    pub fn sample(key: JobKey, name: &str) -> Self {
        Self {
            key,
            name: name.into(),
            description: None,
            lifecycle_status: LifecycleStatus::CreateComplete,
            lifecycle_status_message: String::new(),
            priority: 50,
            created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            created_by: "arn:aws:sts::123456789012:assumed-role/Artist/jane".into(),
            updated_at: None,
            updated_by: None,
            started_at: None,
            ended_at: None,
            task_run_status: Some(TaskRunStatus::Ready),
            target_task_run_status: None,
            task_run_status_counts: BTreeMap::new(),
            task_failure_retry_count: None,
            max_failed_tasks_count: None,
            max_retries_per_task: None,
            max_worker_count: None,
            storage_profile_id: None,
            parameters: BTreeMap::new(),
            attachments: None,
            source_job_id: None,
        }
    }
}

/// What the API shows of a watched job between transitions: refreshed on every
/// read, kept in memory only (a restart shows the stored status until the next read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub name: String,
    pub task_run_status: Option<TaskRunStatus>,
    pub lifecycle_status: LifecycleStatus,
    pub task_run_status_counts: BTreeMap<String, i64>,
    pub read_at: DateTime<Utc>,
}

/// The in-memory form of [`JobView`], refreshed in place on every read: a boxed
/// name and the counts of the known statuses (100k of these stay small).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactView {
    pub name: Box<str>,
    pub task_run_status: Option<TaskRunStatus>,
    pub lifecycle_status: LifecycleStatus,
    /// Counts in [`TaskRunStatus::KNOWN`] order (a status the API adds later is not shown).
    pub counts: [u32; 12],
    pub read_at: DateTime<Utc>,
}

impl CompactView {
    /// The slot of a status in `counts`.
    pub fn slot(status: &str) -> Option<usize> {
        TaskRunStatus::KNOWN.iter().position(|k| *k == status)
    }

    pub fn expand(&self) -> JobView {
        JobView {
            name: self.name.to_string(),
            task_run_status: self.task_run_status.clone(),
            lifecycle_status: self.lifecycle_status.clone(),
            task_run_status_counts: TaskRunStatus::KNOWN
                .iter()
                .zip(self.counts)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.to_string(), i64::from(n)))
                .collect(),
            read_at: self.read_at,
        }
    }
}

/// The compact form of a job's state that transitions are computed from: kept in
/// memory for every watched job and written to the store only when it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub task_run_status: Option<TaskRunStatus>,
    pub lifecycle_status: LifecycleStatus,
    pub failed_tasks: i64,
}

impl JobStatus {
    pub fn of(s: &JobSnapshot) -> JobStatus {
        JobStatus {
            task_run_status: s.task_run_status.clone(),
            lifecycle_status: s.lifecycle_status.clone(),
            failed_tasks: s.count("FAILED"),
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.task_run_status
            .as_ref()
            .is_some_and(TaskRunStatus::is_terminal)
            || self.lifecycle_status == LifecycleStatus::Archived
    }
}

/// What a transition means to a human. Names are the wire/API names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    Started,
    Succeeded,
    Failed,
    Canceled,
    Suspended,
    NotCompatible,
    Requeued,
    TasksFailed,
    CreateFailed,
    UploadFailed,
    UpdateFailed,
    Archived,
    /// RUNNING with tasks running, but no task succeeded for `deadline.stall_after`.
    Stalled,
    /// Succeeded tasks passed one of `deadline.progress_milestones` (percent).
    Progress,
    /// A farm's budget crossed one of its thresholds (an event from the queue; it
    /// concerns no job, so it goes only to channels that list it).
    BudgetThreshold,
}

impl Event {
    pub const ALL: [Event; 14] = [
        Event::Started,
        Event::Succeeded,
        Event::Failed,
        Event::Canceled,
        Event::Suspended,
        Event::NotCompatible,
        Event::Requeued,
        Event::TasksFailed,
        Event::CreateFailed,
        Event::UploadFailed,
        Event::UpdateFailed,
        Event::Archived,
        Event::Stalled,
        Event::Progress,
    ];
    /// Events that concern no job: a channel gets them only when its `events` list
    /// names them, never by default.
    pub const NOTICES: [Event; 1] = [Event::BudgetThreshold];
    /// What a subscription receives when it does not say.
    pub const DEFAULTS: [Event; 7] = [
        Event::Succeeded,
        Event::Failed,
        Event::Canceled,
        Event::Suspended,
        Event::NotCompatible,
        Event::CreateFailed,
        Event::UploadFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Started => "job.started",
            Event::Succeeded => "job.succeeded",
            Event::Failed => "job.failed",
            Event::Canceled => "job.canceled",
            Event::Suspended => "job.suspended",
            Event::NotCompatible => "job.not_compatible",
            Event::Requeued => "job.requeued",
            Event::TasksFailed => "job.tasks_failed",
            Event::CreateFailed => "job.create_failed",
            Event::UploadFailed => "job.upload_failed",
            Event::UpdateFailed => "job.update_failed",
            Event::Archived => "job.archived",
            Event::Stalled => "job.stalled",
            Event::Progress => "job.progress",
            Event::BudgetThreshold => "budget.threshold",
        }
    }

    /// A job event's name (what subscriptions and watches may ask for).
    pub fn parse(s: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// Any event a channel may list: the job events and the notices.
    pub fn parse_any(s: &str) -> Option<Event> {
        Event::parse(s).or_else(|| Event::NOTICES.into_iter().find(|e| e.as_str() == s))
    }

    /// Whether it concerns a job (else it is a notice, sent only where listed).
    pub fn is_job_event(self) -> bool {
        !Event::NOTICES.contains(&self)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Event::parse_any(&s).ok_or_else(|| {
            let names: Vec<_> = Event::ALL
                .iter()
                .chain(&Event::NOTICES)
                .map(|e| e.as_str())
                .collect();
            serde::de::Error::custom(format!(
                "unknown event {s:?}; expected one of {}",
                names.join(", ")
            ))
        })
    }
}

/// A detected change of a job, with the state it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub event: Event,
    pub previous_task_run_status: Option<TaskRunStatus>,
    pub previous_lifecycle_status: LifecycleStatus,
    pub detected_at: DateTime<Utc>,
    /// `job.progress`: the milestone passed (percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milestone: Option<u32>,
    /// `job.stalled`: since when no task has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_since: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_against_deadline_patterns() {
        let f = format!("farm-{}", "a".repeat(32));
        let q = format!("queue-{}", "0".repeat(32));
        let j = format!("job-{}", "f".repeat(32));
        assert!(JobKey::parse(&f, &q, &j).is_ok());
        let err = JobKey::parse(&f, &q, "job-XYZ").unwrap_err();
        assert_eq!(err.field, "jobId");
        assert!(JobKey::parse(&f, &format!("queue-{}", "A".repeat(32)), &j).is_err());
        assert_eq!(
            JobKey::parse_path(&format!("{f}/{q}/{j}")).unwrap().job_id,
            j
        );
    }

    #[test]
    fn unknown_status_is_kept_and_never_known() {
        let s = TaskRunStatus::from_wire("BRAND_NEW");
        assert_eq!(s, TaskRunStatus::Unknown("BRAND_NEW".into()));
        assert!(!s.is_terminal() && !s.is_runnable());
        assert_eq!(s.as_str(), "BRAND_NEW");
        // A value that merely looks like a known one stays unknown.
        assert!(matches!(
            TaskRunStatus::from_wire("succeeded"),
            TaskRunStatus::Unknown(_)
        ));
    }
}
