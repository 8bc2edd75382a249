//! Deadline Cloud: the SDK client (the only code that sees SDK types) and the local
//! simulator that speaks the same wire format.
pub mod client;
pub mod simulator;
pub mod wire;

use crate::domain::JobKey;
pub use client::Observed;
use std::time::Duration;

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

pub type FetchResult = Result<Vec<(JobKey, Fetched)>, SourceError>;

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
