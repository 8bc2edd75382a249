//! Why a job failed, as gathered by triage: what the template context calls
//! `failure` and the webhook payload `data.failure`. Stored with the outbox entry,
//! so a retry or a restart sends the same message.
use super::monitor::Monitor;
use super::{Event, JobKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The events whose messages always carry triage (others only when their template
/// uses `failure`).
pub const EVENTS: &[Event] = &[Event::Failed, Event::TasksFailed, Event::NotCompatible];

/// Said in a message whose triage never finished (a crash, an outage).
pub const NOT_GATHERED: &str = "details could not be gathered in time";

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
    /// The last lines of the run's session log, cleaned by [`crate::triage::redact`].
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

/// A sample failure for previews, template checks and golden files.
pub fn sample_failure(key: &JobKey, monitor: Option<&Monitor>) -> Failure {
    let step = format!("step-{}", "1".repeat(32));
    let task = |n: usize, frame: &str| FailedTask {
        step_id: step.clone(),
        step_name: "Render".into(),
        task_id: format!("task-{}-{n}", "1".repeat(32)),
        parameters: [("Frame".to_string(), frame.to_string())].into(),
        exit_code: Some(137),
        message: Some("Render process was killed (out of memory)".into()),
        retries: Some(2),
        host: Some("render-042".into()),
        log_tail: vec![
            format!("Rendering frame {frame}"),
            "Memory in use: 61.8 GiB of 64 GiB".into(),
            "ERROR: std::bad_alloc".into(),
            "Process exited with code 137".into(),
        ],
        link: monitor.and_then(|m| m.task(key, &step, &format!("task-{}-{n}", "1".repeat(32)))),
    };
    Failure {
        failed_task_count: 2,
        steps: vec![FailedStep {
            step_id: step.clone(),
            name: "Render".into(),
            failed_count: 2,
            link: monitor.and_then(|m| m.step(key, &step)),
        }],
        tasks: vec![task(41, "1042"), task(42, "1043")],
        unavailable: None,
    }
}
