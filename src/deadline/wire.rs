//! The GetJob wire shape of a job (RFC 3339 times, parameters as one-member unions),
//! written by the simulator and read back by the `render` command, so a job file
//! saved from `aws deadline get-job` or the simulator renders exactly as polled.
use crate::domain::{JobKey, JobSnapshot, LifecycleStatus, ParameterValue, TaskRunStatus};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct WireError {
    pub field: String,
    pub message: String,
}

fn rfc3339(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// The GetJob wire shape (BatchGetJob items add farmId and queueId).
pub fn to_wire(s: &JobSnapshot, with_location: bool) -> Value {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            m.insert(k.to_string(), v);
        }
    };
    if with_location {
        put("farmId", json!(s.key.farm_id));
        put("queueId", json!(s.key.queue_id));
    }
    put("jobId", json!(s.key.job_id));
    put("name", json!(s.name));
    put("description", json!(s.description));
    put("lifecycleStatus", json!(s.lifecycle_status.as_str()));
    put("lifecycleStatusMessage", json!(s.lifecycle_status_message));
    put("priority", json!(s.priority));
    put("createdAt", rfc3339(s.created_at));
    put("createdBy", json!(s.created_by));
    put(
        "updatedAt",
        s.updated_at.map(rfc3339).unwrap_or(Value::Null),
    );
    put("updatedBy", json!(s.updated_by));
    put(
        "startedAt",
        s.started_at.map(rfc3339).unwrap_or(Value::Null),
    );
    put("endedAt", s.ended_at.map(rfc3339).unwrap_or(Value::Null));
    put(
        "taskRunStatus",
        json!(s.task_run_status.as_ref().map(|x| x.as_str())),
    );
    put("targetTaskRunStatus", json!(s.target_task_run_status));
    put("taskRunStatusCounts", json!(s.task_run_status_counts));
    put("taskFailureRetryCount", json!(s.task_failure_retry_count));
    put("maxFailedTasksCount", json!(s.max_failed_tasks_count));
    put("maxRetriesPerTask", json!(s.max_retries_per_task));
    put("maxWorkerCount", json!(s.max_worker_count));
    put("storageProfileId", json!(s.storage_profile_id));
    put("sourceJobId", json!(s.source_job_id));
    if !s.parameters.is_empty() {
        let p: serde_json::Map<String, Value> = s
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), json!({ v.kind.clone(): v.value })))
            .collect();
        put("parameters", Value::Object(p));
    }
    put("attachments", s.attachments.clone().unwrap_or(Value::Null));
    Value::Object(m)
}

/// Reads a GetJob response (plus `farmId` and `queueId`, which GetJob's URL carries)
/// into a snapshot; the inverse of [`to_wire`].
pub fn from_wire(v: &Value) -> Result<JobSnapshot, WireError> {
    let bad = |field: &str, message: &str| WireError {
        field: field.into(),
        message: message.into(),
    };
    let obj = v
        .as_object()
        .ok_or_else(|| bad("(top)", "must be a JSON object"))?;
    let text = |k: &str| -> Result<Option<String>, WireError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(k, "must be a string")),
        }
    };
    let need = |k: &str| text(k)?.ok_or_else(|| bad(k, "is required"));
    let int = |k: &str| -> Result<Option<i64>, WireError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(n) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| bad(k, "must be an integer")),
        }
    };
    let int32 = |k: &str| -> Result<Option<i32>, WireError> {
        int(k)?
            .map(|n| i32::try_from(n).map_err(|_| bad(k, "is out of range")))
            .transpose()
    };
    let time = |k: &str| -> Result<Option<DateTime<Utc>>, WireError> {
        text(k)?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|d| d.with_timezone(&Utc))
                    .map_err(|e| bad(k, &format!("not an RFC 3339 time ({e})")))
            })
            .transpose()
    };
    let key = JobKey {
        farm_id: need("farmId")?.into(),
        queue_id: need("queueId")?.into(),
        job_id: need("jobId")?.into(),
    };
    let mut s = JobSnapshot::sample(key, &need("name")?);
    s.description = text("description")?;
    s.lifecycle_status = LifecycleStatus::from_wire(&need("lifecycleStatus")?);
    s.lifecycle_status_message = text("lifecycleStatusMessage")?.unwrap_or_default();
    s.priority = int32("priority")?.ok_or_else(|| bad("priority", "is required"))?;
    s.created_at = time("createdAt")?.ok_or_else(|| bad("createdAt", "is required"))?;
    s.created_by = need("createdBy")?;
    s.updated_at = time("updatedAt")?;
    s.updated_by = text("updatedBy")?;
    s.started_at = time("startedAt")?;
    s.ended_at = time("endedAt")?;
    s.task_run_status = text("taskRunStatus")?.map(|x| TaskRunStatus::from_wire(&x));
    s.target_task_run_status = text("targetTaskRunStatus")?;
    if let Some(c) = obj.get("taskRunStatusCounts").filter(|c| !c.is_null()) {
        let c = c
            .as_object()
            .ok_or_else(|| bad("taskRunStatusCounts", "must be an object"))?;
        s.task_run_status_counts = c
            .iter()
            .map(|(k, n)| {
                n.as_i64()
                    .map(|n| (k.clone(), n))
                    .ok_or_else(|| bad("taskRunStatusCounts", "counts must be integers"))
            })
            .collect::<Result<_, _>>()?;
    }
    s.task_failure_retry_count = int32("taskFailureRetryCount")?;
    s.max_failed_tasks_count = int32("maxFailedTasksCount")?;
    s.max_retries_per_task = int32("maxRetriesPerTask")?;
    s.max_worker_count = int32("maxWorkerCount")?;
    s.storage_profile_id = text("storageProfileId")?;
    s.source_job_id = text("sourceJobId")?;
    if let Some(p) = obj.get("parameters").filter(|p| !p.is_null()) {
        let p = p
            .as_object()
            .ok_or_else(|| bad("parameters", "must be an object"))?;
        for (name, union) in p {
            // One member, named by the type: {"string": "1-600"}.
            let (kind, value) = union
                .as_object()
                .and_then(|m| m.iter().next())
                .ok_or_else(|| bad("parameters", "each value must be like {\"string\": \"…\"}"))?;
            let value = match value {
                Value::String(v) => v.clone(),
                other => other.to_string(),
            };
            s.parameters.insert(
                name.clone(),
                ParameterValue {
                    kind: kind.clone(),
                    value,
                },
            );
        }
    }
    s.attachments = obj.get("attachments").filter(|a| !a.is_null()).cloned();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Event;

    #[test]
    fn what_the_simulator_writes_reads_back_identically() {
        for event in Event::ALL {
            let (job, _) = crate::render::sample_job(event);
            let back = from_wire(&to_wire(&job, true)).unwrap();
            assert_eq!(back, job, "{event}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let (job, _) = crate::render::sample_job(Event::Failed);
        let mut v = to_wire(&job, true);
        v["priority"] = json!("high");
        assert_eq!(from_wire(&v).unwrap_err().field, "priority");
        v["priority"] = json!(50);
        v["createdAt"] = json!("yesterday");
        assert_eq!(from_wire(&v).unwrap_err().field, "createdAt");
    }
}
