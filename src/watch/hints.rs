//! What one message from the event queue says: an EventBridge envelope from
//! `aws.deadline`, read by its `detail-type` and `detail` into a [`Hint`]. Events are
//! hints, never the truth: delivery is best effort, may repeat and may come out of
//! order, so a hint only says which job to read now (or which budget crossed a
//! threshold); the state read after it is what the diff compares.
//!
//! Pure: a body in, a hint out. Unknown detail-types and unknown fields are ignored,
//! so a new kind of Deadline Cloud event never stops the queue.
use crate::domain::JobKey;
use serde_json::Value;

/// SQS refuses bodies over 256 KiB; a larger one is not from EventBridge.
pub const MAX_BODY: usize = 256 * 1024;

/// The detail-types the service reads (EventBridge events reference for Deadline Cloud).
pub const JOB_LIFECYCLE: &str = "Job Lifecycle Status Change";
pub const JOB_RUN: &str = "Job Run Status Change";
pub const STEP_LIFECYCLE: &str = "Step Lifecycle Status Change";
pub const STEP_RUN: &str = "Step Run Status Change";
pub const TASK_RUN: &str = "Task Run Status Change";
pub const BUDGET: &str = "Budget Threshold Reached";
/// Known, but nothing a job subscription needs.
const IGNORED: [&str; 2] = [
    "Fleet Size Recommendation Change",
    "Worker Status Unhealthy",
];

/// What a job event is about; each makes the job due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobCause {
    /// `lifecycleStatus`, and whether the event says the job was just created
    /// (`CREATE_COMPLETE`, or no previous status: the job's first event).
    Lifecycle {
        status: String,
        created: bool,
    },
    Run {
        status: String,
    },
    Step,
    /// A task's run status; `FAILED` may start failure triage early.
    TaskRun {
        failed: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Hint {
    Job {
        key: JobKey,
        cause: JobCause,
    },
    Budget(crate::domain::budget::BudgetCrossed),
    /// A Deadline Cloud event nothing here needs (fleet sizes, workers).
    Ignored,
    /// An envelope whose detail-type (or source) is not one we know.
    Unknown,
    /// Not an EventBridge envelope, or a known detail-type without the fields it
    /// must carry: why, for the log.
    Malformed(String),
}

/// The envelope's `detail-type` as a metric label: one of the known names, or
/// `other` (a hostile body must not mint label values).
pub fn type_label(body: &Value) -> &'static str {
    let dt = body
        .get("detail-type")
        .and_then(Value::as_str)
        .unwrap_or("");
    [
        JOB_LIFECYCLE,
        JOB_RUN,
        STEP_LIFECYCLE,
        STEP_RUN,
        TASK_RUN,
        BUDGET,
        IGNORED[0],
        IGNORED[1],
    ]
    .into_iter()
    .find(|k| *k == dt)
    .unwrap_or("other")
}

/// The envelope's `time`, in ms since the epoch (for the newest event's age).
pub fn time_ms(body: &str) -> Option<i64> {
    if body.len() > MAX_BODY {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct T {
        time: String,
    }
    let t: T = serde_json::from_str(body).ok()?;
    chrono::DateTime::parse_from_rfc3339(&t.time)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// Reads one message body. Returns the hint and the detail-type label.
pub fn parse(body: &str) -> (Hint, &'static str) {
    if body.len() > MAX_BODY {
        return (
            Hint::Malformed(format!(
                "body of {} bytes is larger than SQS allows",
                body.len()
            )),
            "other",
        );
    }
    let v: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => return (Hint::Malformed(format!("not JSON: {e}")), "other"),
    };
    let label = type_label(&v);
    (read(&v), label)
}

fn read(v: &Value) -> Hint {
    let (Some(dt), Some(source), Some(detail)) = (
        v.get("detail-type").and_then(Value::as_str),
        v.get("source").and_then(Value::as_str),
        v.get("detail").filter(|d| d.is_object()),
    ) else {
        return Hint::Malformed(
            "not an EventBridge envelope (needs detail-type, source and a detail object)".into(),
        );
    };
    if source != "aws.deadline" {
        return Hint::Unknown;
    }
    let s = |k: &str| detail.get(k).and_then(Value::as_str);
    let job = || -> Result<JobKey, String> {
        let (Some(f), Some(q), Some(j)) = (s("farmId"), s("queueId"), s("jobId")) else {
            return Err(format!("{dt:?} without farmId, queueId and jobId"));
        };
        JobKey::parse(f, q, j).map_err(|e| format!("{dt:?}: {e}"))
    };
    let job_hint = |cause: JobCause| match job() {
        Ok(key) => Hint::Job { key, cause },
        Err(why) => Hint::Malformed(why),
    };
    match dt {
        JOB_LIFECYCLE => {
            let Some(status) = s("lifecycleStatus") else {
                return Hint::Malformed(format!("{dt:?} without lifecycleStatus"));
            };
            let created = status == "CREATE_COMPLETE" || s("previousLifecycleStatus").is_none();
            job_hint(JobCause::Lifecycle {
                status: status.to_string(),
                created,
            })
        }
        JOB_RUN => job_hint(JobCause::Run {
            status: s("taskRunStatus").unwrap_or_default().to_string(),
        }),
        STEP_LIFECYCLE | STEP_RUN => job_hint(JobCause::Step),
        TASK_RUN => job_hint(JobCause::TaskRun {
            failed: s("runStatus") == Some("FAILED"),
        }),
        BUDGET => budget(v, detail),
        _ if IGNORED.contains(&dt) => Hint::Ignored,
        _ => Hint::Unknown,
    }
}

fn budget(envelope: &Value, detail: &Value) -> Hint {
    let farm = detail.get("farmId").and_then(Value::as_str);
    let budget = detail.get("budgetId").and_then(Value::as_str);
    let pct = detail.get("thresholdInPercent").and_then(Value::as_f64);
    match (farm, budget, pct) {
        (Some(f), Some(b), Some(p))
            if hex_id("farm-", f) && hex_id("budget-", b) && p.is_finite() =>
        {
            let id = envelope.get("id").and_then(Value::as_str).unwrap_or("");
            let at = envelope
                .get("time")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc));
            Hint::Budget(crate::domain::budget::BudgetCrossed {
                farm_id: f.to_string(),
                budget_id: b.to_string(),
                threshold_percent: p,
                // Without an id, the budget and threshold stand for the event.
                event_id: if id.is_empty() || id.len() > 128 {
                    format!("{b}@{p}")
                } else {
                    id.to_string()
                },
                at: at.unwrap_or(chrono::DateTime::UNIX_EPOCH),
            })
        }
        _ => Hint::Malformed(
            "\"Budget Threshold Reached\" without a valid farmId, budgetId and thresholdInPercent"
                .into(),
        ),
    }
}

/// `prefix` and 32 lowercase hex digits, as the Deadline Cloud API names its ids.
pub fn hex_id(prefix: &str, b: &str) -> bool {
    b.strip_prefix(prefix).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(p: &str, n: u8) -> String {
        format!("{p}-{}", format!("{n:x}").repeat(32))
    }

    fn envelope(dt: &str, detail: Value) -> String {
        json!({
            "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": dt, "source": "aws.deadline", "account": "111122223333",
            "time": "2026-12-05T20:00:00Z", "region": "us-west-2", "resources": [],
            "detail": detail
        })
        .to_string()
    }

    fn job_detail(extra: Value) -> Value {
        let mut d =
            json!({"farmId": id("farm", 1), "queueId": id("queue", 2), "jobId": id("job", 3)});
        d.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        d
    }

    #[test]
    fn job_events_name_the_job_and_why() {
        let key = JobKey::parse(&id("farm", 1), &id("queue", 2), &id("job", 3)).unwrap();
        let (h, label) = parse(&envelope(
            JOB_RUN,
            job_detail(
                json!({"previousTaskRunStatus": "RUNNING", "taskRunStatus": "FAILED", "taskRunStatusCounts": {"FAILED": 1}, "newField": [1]}),
            ),
        ));
        assert_eq!(label, JOB_RUN);
        assert_eq!(
            h,
            Hint::Job {
                key: key.clone(),
                cause: JobCause::Run {
                    status: "FAILED".into()
                }
            }
        );
        let (h, _) = parse(&envelope(
            JOB_LIFECYCLE,
            job_detail(
                json!({"previousLifecycleStatus": "CREATE_IN_PROGRESS", "lifecycleStatus": "CREATE_COMPLETE"}),
            ),
        ));
        assert!(matches!(
            h,
            Hint::Job {
                cause: JobCause::Lifecycle { created: true, .. },
                ..
            }
        ));
        let (h, _) = parse(&envelope(
            JOB_LIFECYCLE,
            job_detail(json!({"lifecycleStatus": "CREATE_IN_PROGRESS"})),
        ));
        assert!(
            matches!(
                h,
                Hint::Job {
                    cause: JobCause::Lifecycle { created: true, .. },
                    ..
                }
            ),
            "a first event"
        );
        let (h, _) = parse(&envelope(
            JOB_LIFECYCLE,
            job_detail(
                json!({"previousLifecycleStatus": "CREATE_COMPLETE", "lifecycleStatus": "ARCHIVED"}),
            ),
        ));
        assert!(matches!(
            h,
            Hint::Job {
                cause: JobCause::Lifecycle { created: false, .. },
                ..
            }
        ));
        let (h, _) = parse(&envelope(
            TASK_RUN,
            job_detail(json!({"stepId": "step-1", "taskId": "task-1", "runStatus": "FAILED"})),
        ));
        assert_eq!(
            h,
            Hint::Job {
                key,
                cause: JobCause::TaskRun { failed: true }
            }
        );
        let (h, label) = parse(&envelope(STEP_RUN, job_detail(json!({"stepId": "s"}))));
        assert!(
            matches!(
                h,
                Hint::Job {
                    cause: JobCause::Step,
                    ..
                }
            ) && label == STEP_RUN
        );
    }

    #[test]
    fn budgets_and_other_types() {
        let (h, label) = parse(&envelope(
            BUDGET,
            json!({"farmId": id("farm", 1), "budgetId": id("budget", 4), "thresholdInPercent": 80}),
        ));
        assert_eq!(label, BUDGET);
        let Hint::Budget(b) = h else { panic!("{h:?}") };
        assert_eq!(
            (
                b.farm_id,
                b.budget_id,
                b.threshold_percent,
                b.event_id.as_str()
            ),
            (
                id("farm", 1),
                id("budget", 4),
                80.0,
                "6a7e8feb-b491-4cf7-a9f1-bf3703467718"
            )
        );
        assert_eq!(b.at.to_rfc3339(), "2026-12-05T20:00:00+00:00");
        let (h, _) = parse(&envelope(
            BUDGET,
            json!({"farmId": id("farm", 1), "budgetId": "x"}),
        ));
        assert!(matches!(h, Hint::Malformed(_)));
        let (h, label) = parse(&envelope("Fleet Size Recommendation Change", json!({})));
        assert_eq!(
            (h, label),
            (Hint::Ignored, "Fleet Size Recommendation Change")
        );
        let (h, label) = parse(&envelope("Job Exploded", json!({})));
        assert_eq!((h, label), (Hint::Unknown, "other"));
    }

    #[test]
    fn hostile_bodies_are_malformed_never_a_panic() {
        let big = "x".repeat(MAX_BODY + 1);
        for body in [
            "",
            "not json",
            "[]",
            "null",
            "{\"detail-type\": 5}",
            &big,
            &envelope(
                JOB_RUN,
                json!({"farmId": "farm-../../etc", "queueId": id("queue", 2), "jobId": id("job", 3)}),
            ),
            &envelope(JOB_RUN, json!("a string detail")),
            &envelope(JOB_LIFECYCLE, job_detail(json!({}))),
        ] {
            let (h, _) = parse(body);
            assert!(
                matches!(h, Hint::Malformed(_)),
                "{:?} → {h:?}",
                &body[..body.len().min(60)]
            );
        }
        let mut other_source: Value =
            serde_json::from_str(&envelope(JOB_RUN, job_detail(json!({})))).unwrap();
        other_source["source"] = json!("my.app");
        assert_eq!(parse(&other_source.to_string()).0, Hint::Unknown);
    }
}
