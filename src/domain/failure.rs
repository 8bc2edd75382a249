//! Why a job failed, as gathered by triage: what the template context calls
//! `failure` and the webhook payload `data.failure`. Stored with the outbox entry,
//! so a retry or a restart sends the same message.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub failed_task_count: i64,
    pub steps: Vec<FailedStep>,
    pub tasks: Vec<FailedTask>,
    /// Why some details are missing (a failed, throttled or slow call); absent when
    /// everything was gathered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedStep {
    pub step_id: String,
    pub name: String,
    pub failed_count: i64,
    pub link: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedTask {
    pub step_id: String,
    pub step_name: String,
    pub task_id: String,
    /// `{"Frame": "1042"}`: values as strings.
    pub parameters: BTreeMap<String, String>,
    /// The process exit code of the task's latest run (signed, as the worker reports it).
    pub exit_code: Option<i64>,
    /// The run's progress message.
    pub message: Option<String>,
    pub retries: Option<i32>,
    pub host: Option<String>,
    /// The last lines of the run's session log, cleaned by [`crate::redact`].
    pub log_tail: Vec<String>,
    pub link: Option<String>,
}

impl FailedTask {
    /// "Frame=1042" (parameters joined), or the task id when it has none.
    pub fn label(&self) -> String {
        if self.parameters.is_empty() {
            return self.task_id.clone();
        }
        self.parameters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
