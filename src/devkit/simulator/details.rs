//! What a failed job's triage reads, for simulated jobs: steps, tasks, sessions,
//! session actions (restJson1: ListSteps, ListTasks, BatchGetSessionAction,
//! BatchGetSession) and the sessions' logs (CloudWatch Logs JSON 1.1:
//! `X-Amz-Target: Logs_20140328.GetLogEvents`). Steps come from the job's spec, or
//! are made up from its task counts (one step "Render", a task per frame), so every
//! job, the demo's included, can be triaged.
use super::{Simulator, aws_error, not_found};
use crate::domain::JobKey;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A step of a simulated job (`JobSpec::steps`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
}

/// A task: its parameters, how its (latest) run ended, and what it logged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSpec {
    /// `{"Frame": "1042"}`; integers are sent as `int` parameters, others as `string`.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// The task's run status (`SUCCEEDED`, `FAILED`, `RUNNING`, `READY` …).
    #[serde(default = "succeeded")]
    pub status: String,
    pub exit_code: Option<i32>,
    pub progress_message: Option<String>,
    #[serde(default)]
    pub retries: i32,
    pub host: Option<String>,
    /// The session log's lines for this task's run.
    #[serde(default)]
    pub log: Vec<String>,
}

fn succeeded() -> String {
    "SUCCEEDED".into()
}

/// At most this many tasks are made up from a job's counts.
const SYNTH_CAP: i64 = 500;

fn hex(job_id: &str) -> &str {
    job_id
        .strip_prefix("job-")
        .filter(|h| h.len() == 32)
        .unwrap_or("0000000000000000000000000000000")
}

pub(super) struct Step {
    pub id: String,
    pub spec: StepSpec,
}

/// The job's steps, with their ids.
pub(super) fn steps(job: &super::SimJob) -> Vec<Step> {
    let specs = if job.steps.is_empty() {
        synthesized(job)
    } else {
        job.steps.clone()
    };
    let h = hex(&job.snap.key.job_id);
    specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| Step {
            id: format!("step-{:04x}{}", i, &h[4..]),
            spec,
        })
        .collect()
}

fn synthesized(job: &super::SimJob) -> Vec<StepSpec> {
    let mut tasks = Vec::new();
    let mut frame = 1;
    for (status, n) in &job.snap.task_run_status_counts {
        for _ in 0..(*n).min(SYNTH_CAP - tasks.len() as i64).max(0) {
            let failed = status == "FAILED";
            tasks.push(TaskSpec {
                parameters: [("Frame".to_string(), frame.to_string())].into(),
                status: status.clone(),
                exit_code: match status.as_str() {
                    "FAILED" => Some(1),
                    "SUCCEEDED" => Some(0),
                    _ => None,
                },
                progress_message: failed.then(|| format!("Frame {frame} failed")),
                retries: if failed { 2 } else { 0 },
                host: Some(format!("render-{:03}", frame % 97)),
                log: if failed {
                    vec![
                        format!("Loading scene for frame {frame}"),
                        format!("Rendering frame {frame}"),
                        format!("ERROR: frame {frame}: render process exited with code 1"),
                    ]
                } else {
                    vec![format!("Rendered frame {frame}")]
                },
            });
            frame += 1;
        }
    }
    vec![StepSpec {
        name: "Render".into(),
        tasks,
    }]
}

fn started(status: &str) -> bool {
    !matches!(
        status,
        "READY" | "PENDING" | "NOT_COMPATIBLE" | "ASSIGNED" | "SCHEDULED"
    )
}

fn ended(status: &str) -> bool {
    matches!(status, "SUCCEEDED" | "FAILED" | "CANCELED" | "INTERRUPTED")
}

/// Where a task's run sits: ids and times, derived from its place in the job.
struct Run<'a> {
    step: &'a Step,
    task: &'a TaskSpec,
    task_id: String,
    session_id: String,
    action_id: String,
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
}

fn runs<'a>(job: &super::SimJob, steps: &'a [Step]) -> Vec<Run<'a>> {
    let base = job.snap.started_at.unwrap_or(job.snap.created_at);
    let mut out = Vec::new();
    for (si, step) in steps.iter().enumerate() {
        let step_hex = &step.id["step-".len()..];
        for (ti, task) in step.spec.tasks.iter().enumerate() {
            let session_hex = format!("{:02x}{:04x}{}", si, ti, &step_hex[6..]);
            let start = base + chrono::Duration::seconds(ti as i64);
            out.push(Run {
                step,
                task,
                task_id: format!("task-{step_hex}-{ti}"),
                action_id: format!("sessionaction-{session_hex}-1"),
                session_id: format!("session-{session_hex}"),
                start,
                end: ended(&task.status).then(|| start + chrono::Duration::seconds(60)),
            });
        }
    }
    out
}

fn param_wire(v: &str) -> Value {
    if v.parse::<i64>().is_ok() {
        json!({"int": v})
    } else {
        json!({"string": v})
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn counts(tasks: &[TaskSpec]) -> BTreeMap<String, i64> {
    let mut c = BTreeMap::new();
    for t in tasks {
        *c.entry(t.status.clone()).or_insert(0) += 1;
    }
    c
}

fn step_status(c: &BTreeMap<String, i64>) -> &'static str {
    if c.contains_key("FAILED") {
        "FAILED"
    } else if c.contains_key("RUNNING") {
        "RUNNING"
    } else if c.keys().all(|k| k == "SUCCEEDED") && !c.is_empty() {
        "SUCCEEDED"
    } else {
        "READY"
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Page {
    next_token: Option<String>,
    max_results: Option<usize>,
}

/// One page of `items` as `{"<list>": […], "nextToken"?}` (the token is an offset).
fn paged(list: &str, items: Vec<Value>, p: &Page) -> Response {
    let from: usize = p
        .next_token
        .as_deref()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let n = p.max_results.unwrap_or(100).clamp(1, 100);
    let total = items.len();
    let out: Vec<Value> = items.into_iter().skip(from).take(n).collect();
    let mut body = json!({ list: out });
    if from + n < total {
        body["nextToken"] = json!((from + n).to_string());
    }
    Json(body).into_response()
}

pub(super) async fn list_steps(
    State(sim): State<Simulator>,
    Path((farm, queue, job)): Path<(String, String, String)>,
    Query(p): Query<Page>,
) -> Response {
    if let Some(r) = sim.gate_details().await {
        return r;
    }
    let key = JobKey {
        farm_id: farm.into(),
        queue_id: queue.into(),
        job_id: job.into(),
    };
    let mut g = sim.lock();
    g.stats.list_steps += 1;
    let Some(j) = g.live_job(&key) else {
        return not_found(&key);
    };
    let items: Vec<Value> = steps(j)
        .iter()
        .map(|s| {
            let c = counts(&s.spec.tasks);
            json!({
                "stepId": s.id,
                "name": s.spec.name,
                "lifecycleStatus": "CREATE_COMPLETE",
                "taskRunStatus": step_status(&c),
                "taskRunStatusCounts": c,
                "createdAt": rfc3339(j.snap.created_at),
                "createdBy": j.snap.created_by,
            })
        })
        .collect();
    paged("steps", items, &p)
}

pub(super) async fn list_tasks(
    State(sim): State<Simulator>,
    Path((farm, queue, job, step)): Path<(String, String, String, String)>,
    Query(p): Query<Page>,
) -> Response {
    if let Some(r) = sim.gate_details().await {
        return r;
    }
    let key = JobKey {
        farm_id: farm.into(),
        queue_id: queue.into(),
        job_id: job.into(),
    };
    let mut g = sim.lock();
    g.stats.list_tasks += 1;
    let Some(j) = g.live_job(&key) else {
        return not_found(&key);
    };
    let all = steps(j);
    if !all.iter().any(|s| s.id == step) {
        return aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Step {step} not found"),
            json!({"resourceId": step, "resourceType": "step"}),
        );
    }
    let items: Vec<Value> = runs(j, &all)
        .into_iter()
        .filter(|r| r.step.id == step)
        .map(|r| {
            let params: serde_json::Map<String, Value> = r
                .task
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), param_wire(v)))
                .collect();
            let mut t = json!({
                "taskId": r.task_id,
                "createdAt": rfc3339(j.snap.created_at),
                "createdBy": j.snap.created_by,
                "runStatus": r.task.status,
                "failureRetryCount": r.task.retries,
                "parameters": params,
            });
            if started(&r.task.status) {
                t["startedAt"] = json!(rfc3339(r.start));
                t["latestSessionActionId"] = json!(r.action_id);
            }
            if let Some(e) = r.end {
                t["endedAt"] = json!(rfc3339(e));
            }
            t
        })
        .collect();
    paged("tasks", items, &p)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ident {
    farm_id: String,
    queue_id: String,
    job_id: String,
    session_action_id: Option<String>,
    session_id: Option<String>,
}

#[derive(Deserialize)]
struct Idents {
    identifiers: Vec<Ident>,
}

fn bad_request(message: &str) -> Response {
    aws_error(
        StatusCode::BAD_REQUEST,
        "ValidationException",
        message,
        json!({"reason": "OTHER"}),
    )
}

/// Runs `f` on the run of each identifier that names a started task run; the others
/// are per-item errors, as BatchGet* reports them inside a 200.
fn batch(
    sim: &Simulator,
    body: &[u8],
    id_field: &str,
    matches: impl Fn(&Run, &str) -> bool,
    item: impl Fn(&super::SimJob, &Run) -> Value,
) -> Response {
    let req: Idents = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_request(&format!("invalid request: {e}")),
    };
    if req.identifiers.is_empty() || req.identifiers.len() > 100 {
        return bad_request("identifiers must hold 1 to 100 items");
    }
    let mut g = sim.lock();
    let (mut items, mut errors) = (Vec::new(), Vec::new());
    for id in req.identifiers {
        let wanted = match id_field {
            "sessionActionId" => id.session_action_id.clone(),
            _ => id.session_id.clone(),
        }
        .unwrap_or_default();
        let key = JobKey {
            farm_id: id.farm_id.clone().into(),
            queue_id: id.queue_id.clone().into(),
            job_id: id.job_id.clone().into(),
        };
        let found = g.live_job(&key).and_then(|j| {
            let all = steps(j);
            runs(j, &all)
                .iter()
                .find(|r| started(&r.task.status) && matches(r, &wanted))
                .map(|r| item(j, r))
        });
        match found {
            Some(v) => items.push(v),
            None => errors.push(json!({
                "farmId": id.farm_id, "queueId": id.queue_id, "jobId": id.job_id,
                id_field: wanted,
                "code": "ResourceNotFoundException",
                "message": format!("{wanted} not found"),
            })),
        }
    }
    (items, errors).into_response_with(id_field)
}

trait IntoBatch {
    fn into_response_with(self, id_field: &str) -> Response;
}

impl IntoBatch for (Vec<Value>, Vec<Value>) {
    fn into_response_with(self, id_field: &str) -> Response {
        let list = if id_field == "sessionActionId" {
            "sessionActions"
        } else {
            "sessions"
        };
        Json(json!({ list: self.0, "errors": self.1 })).into_response()
    }
}

pub(super) async fn batch_get_session_action(
    State(sim): State<Simulator>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = sim.gate_details().await {
        return r;
    }
    sim.lock().stats.batch_get_session_action += 1;
    batch(
        &sim,
        &body,
        "sessionActionId",
        |r, id| r.action_id == id,
        |j, r| {
            let params: serde_json::Map<String, Value> = r
                .task
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), param_wire(v)))
                .collect();
            let mut a = json!({
                "farmId": j.snap.key.farm_id, "queueId": j.snap.key.queue_id, "jobId": j.snap.key.job_id,
                "sessionActionId": r.action_id,
                "sessionId": r.session_id,
                "status": if ended(&r.task.status) { r.task.status.as_str() } else { "RUNNING" },
                "startedAt": rfc3339(r.start),
                "definition": {"taskRun": {"taskId": r.task_id, "stepId": r.step.id, "parameters": params}},
            });
            if let Some(e) = r.end {
                a["endedAt"] = json!(rfc3339(e));
            }
            if let Some(c) = r.task.exit_code {
                a["processExitCode"] = json!(c);
            }
            if let Some(m) = &r.task.progress_message {
                a["progressMessage"] = json!(m);
            }
            a
        },
    )
}

pub(super) fn log_group(key: &JobKey) -> String {
    format!("/aws/deadline/{}/{}", key.farm_id, key.queue_id)
}

pub(super) async fn batch_get_session(
    State(sim): State<Simulator>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = sim.gate_details().await {
        return r;
    }
    sim.lock().stats.batch_get_session += 1;
    batch(
        &sim,
        &body,
        "sessionId",
        |r, id| r.session_id == id,
        |j, r| {
            let tail = &r.session_id["session-".len()..];
            let mut s = json!({
                "farmId": j.snap.key.farm_id, "queueId": j.snap.key.queue_id, "jobId": j.snap.key.job_id,
                "sessionId": r.session_id,
                "fleetId": format!("fleet-{tail}"),
                "workerId": format!("worker-{tail}"),
                "startedAt": rfc3339(r.start),
                "lifecycleStatus": if r.end.is_some() { "ENDED" } else { "STARTED" },
                "log": {
                    "logDriver": "awslogs",
                    "options": {"logGroupName": log_group(&j.snap.key), "logStreamName": r.session_id},
                    "parameters": {},
                },
                "hostProperties": {
                    "hostName": r.task.host.clone().unwrap_or_else(|| "render-000".into()),
                    "ec2InstanceType": "c5.4xlarge",
                    "ipAddresses": {"ipV4Addresses": ["10.0.0.5"]},
                },
            });
            if let Some(e) = r.end {
                s["endedAt"] = json!(rfc3339(e));
            }
            s
        },
    )
}

/// Every log event of a session stream: two lines of an earlier action (outside the
/// task run's window), then the task's lines spread over its run.
fn stream_events(sim: &Simulator, group: &str, stream: &str) -> Option<Vec<(i64, String)>> {
    let mut g = sim.lock();
    for j in g.jobs.values_mut() {
        if log_group(&j.snap.key) != group || !j.born() {
            continue;
        }
        j.advance();
        let all = steps(j);
        if let Some(r) = runs(j, &all)
            .iter()
            .find(|r| r.session_id == stream && started(&r.task.status))
        {
            let start = r.start.timestamp_millis();
            let span = r.end.map_or(30_000, |e| e.timestamp_millis() - start);
            let n = r.task.log.len() as i64;
            let mut out = vec![
                (
                    start - 5_000,
                    "openjd: entering environment (earlier action)".to_string(),
                ),
                (
                    start - 3_000,
                    "openjd: environment ready (earlier action)".to_string(),
                ),
            ];
            for (i, line) in r.task.log.iter().enumerate() {
                out.push((start + (i as i64 + 1) * span / (n + 1), line.clone()));
            }
            return Some(out);
        }
    }
    None
}

fn logs_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut r = (status, Json(json!({"__type": kind, "message": message}))).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    r
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetLogEvents {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_stream_name: String,
    start_time: Option<i64>,
    end_time: Option<i64>,
    limit: Option<usize>,
    start_from_head: Option<bool>,
}

/// CloudWatch Logs, JSON 1.1 on `POST /`: only GetLogEvents.
pub(super) async fn logs(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if target != "Logs_20140328.GetLogEvents" {
        return logs_error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            &format!("unknown operation {target:?}"),
        );
    }
    let (latency, down) = {
        let mut g = sim.lock();
        g.stats.get_log_events += 1;
        (g.faults.logs_latency_ms, g.faults.logs_down)
    };
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    if down {
        return logs_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "simulated outage",
        );
    }
    let req: GetLogEvents = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return logs_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterException",
                &e.to_string(),
            );
        }
    };
    let Some(group) = req.log_group_name.or(req.log_group_identifier) else {
        return logs_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterException",
            "logGroupName is required",
        );
    };
    let Some(events) = stream_events(&sim, &group, &req.log_stream_name) else {
        return logs_error(
            StatusCode::BAD_REQUEST,
            "ResourceNotFoundException",
            "The specified log stream does not exist.",
        );
    };
    let mut events: Vec<_> = events
        .into_iter()
        .filter(|(t, _)| {
            req.start_time.is_none_or(|s| *t >= s) && req.end_time.is_none_or(|e| *t < e)
        })
        .collect();
    let limit = req.limit.unwrap_or(10_000).clamp(1, 10_000);
    if events.len() > limit {
        if req.start_from_head.unwrap_or(false) {
            events.truncate(limit);
        } else {
            events.drain(..events.len() - limit);
        }
    }
    let now = crate::clock::wall_now().timestamp_millis();
    let items: Vec<Value> = events
        .into_iter()
        .map(|(t, m)| json!({"timestamp": t, "message": m, "ingestionTime": now}))
        .collect();
    let mut r = Json(json!({
        "events": items,
        "nextForwardToken": format!("f/{now}"),
        "nextBackwardToken": format!("b/{now}"),
    }))
    .into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    r
}
