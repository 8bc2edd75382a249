//! The simulator's job changes as Deadline Cloud publishes them to EventBridge: the
//! envelopes a rule on `source: aws.deadline` puts on an SQS queue.
use crate::devkit::sqs::envelope;
use crate::domain::JobSnapshot;
use serde_json::{Value, json};

fn ids(s: &JobSnapshot) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("farmId".into(), json!(s.key.farm_id.as_str()));
    m.insert("queueId".into(), json!(s.key.queue_id.as_str()));
    m.insert("jobId".into(), json!(s.key.job_id.as_str()));
    m
}

fn with(s: &JobSnapshot, extra: Value) -> Value {
    let mut m = ids(s);
    if let Value::Object(x) = extra {
        m.extend(x);
    }
    Value::Object(m)
}

/// A new job: its lifecycle reached `CREATE_COMPLETE`.
pub(super) fn created(s: &JobSnapshot) -> String {
    envelope(
        "Job Lifecycle Status Change",
        with(
            s,
            json!({"previousLifecycleStatus": "CREATE_IN_PROGRESS", "lifecycleStatus": s.lifecycle_status.as_str()}),
        ),
    )
}

/// The events one change of a job publishes: lifecycle, the job's run status, and a
/// failed task when the failed count grew.
pub(super) fn changes(before: &JobSnapshot, after: &JobSnapshot) -> Vec<String> {
    let mut out = Vec::new();
    if before.lifecycle_status != after.lifecycle_status {
        out.push(envelope(
            "Job Lifecycle Status Change",
            with(
                after,
                json!({"previousLifecycleStatus": before.lifecycle_status.as_str(), "lifecycleStatus": after.lifecycle_status.as_str()}),
            ),
        ));
    }
    let failed = |s: &JobSnapshot| s.task_run_status_counts.get("FAILED").copied().unwrap_or(0);
    if failed(after) > failed(before) {
        out.push(envelope(
            "Task Run Status Change",
            with(
                after,
                json!({"stepId": format!("step-{:032x}", 1), "taskId": format!("task-{:032x}-0", 1), "previousRunStatus": "RUNNING", "runStatus": "FAILED"}),
            ),
        ));
    }
    let status = |s: &JobSnapshot| s.task_run_status.as_ref().map(|t| t.as_str().to_string());
    if status(before) != status(after) {
        out.push(envelope(
            "Job Run Status Change",
            with(
                after,
                json!({"previousTaskRunStatus": status(before), "taskRunStatus": status(after), "taskRunStatusCounts": after.task_run_status_counts}),
            ),
        ));
    }
    out
}
