//! Deadline Cloud: the SDK clients (the only code that sees SDK types) and the
//! GetJob JSON shape (`wire`) that the simulator in `devkit` also speaks. An adapter:
//! imports `domain` and `config` only.
pub mod client;
pub mod logs;
pub mod queue;
pub mod wire;

use crate::domain::JobKey;
pub use client::Observed;
use std::time::Duration;

/// The AWS region chain's environment part (`AWS_REGION`, `AWS_DEFAULT_REGION`), for
/// commands that build no client but still print monitor links.
pub fn region_from_env() -> Option<String> {
    first_env(&["AWS_REGION", "AWS_DEFAULT_REGION"])
}

/// The first of `keys` set to a non-empty value, as the AWS chain reads them.
fn first_env(keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// What one poll learned about one job.
#[derive(Debug)]
pub enum Fetched {
    Found(Box<Observed>),
    /// The job no longer exists (Deadline deletes jobs 120 days after submission).
    Gone(String),
    /// This job could not be read this time; try again next poll.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Deadline Cloud throttled the request: {message}")]
    Throttled {
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("Deadline Cloud request failed: {0}")]
    Other(String),
}

/// Each key the caller gave (its own type: a shared key is passed through, not
/// copied) with what was read.
pub type FetchResult<K = JobKey> = Result<Vec<(K, Fetched)>, SourceError>;

/// One row of ListJobs/SearchJobs: enough to find jobs to subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    pub key: JobKey,
    pub name: String,
    pub task_run_status: Option<crate::domain::TaskRunStatus>,
    pub lifecycle_status: crate::domain::LifecycleStatus,
}

/// A job found by discovery (SearchJobs): who created it and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub key: JobKey,
    pub name: String,
    pub created_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A step of a job, as triage needs it (ListSteps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFacts {
    pub step_id: String,
    pub name: String,
    pub failed: i64,
}

/// A task of a step (ListTasks): its parameters as strings, retries, latest action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFacts {
    pub task_id: String,
    pub run_status: String,
    pub parameters: std::collections::BTreeMap<String, String>,
    pub retries: Option<i32>,
    pub latest_session_action_id: Option<String>,
}

/// A session action (BatchGetSessionAction): how the task's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionFacts {
    pub session_action_id: String,
    pub session_id: String,
    pub exit_code: Option<i32>,
    pub progress_message: Option<String>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A session (BatchGetSession): where it ran and where it logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFacts {
    pub session_id: String,
    pub host: Option<String>,
    pub log_group: Option<String>,
    pub log_stream: Option<String>,
}
