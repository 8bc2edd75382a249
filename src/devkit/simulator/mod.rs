//! A local Deadline Cloud: GetJob, BatchGetJob, SearchJobs and ListJobs in the real
//! restJson1 wire format (RFC 3339 times, `x-amzn-errortype` on errors), with jobs
//! that advance on a script and injectable faults. Tests, the demo and benchmarks
//! drive it through the real SDK.
//!
//! Control it in-process with [`Simulator`], or over HTTP under `/_sim/`.
mod details;
mod events;
pub use details::{StepSpec, TaskSpec};

use crate::domain::{JobKey, JobSnapshot, LifecycleStatus, TaskRunStatus};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A change to a job, applied now or at a scripted time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    /// For scripts: apply this many milliseconds after the job was created.
    #[serde(default)]
    pub after_ms: u64,
    pub task_run_status: Option<String>,
    pub lifecycle_status: Option<String>,
    pub lifecycle_status_message: Option<String>,
    pub task_run_status_counts: Option<BTreeMap<String, i64>>,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Fields written as they are into the job's wire JSON from now on, replacing
    /// the real ones: an undecodable record (`{"name": 12345}`, a bad timestamp, a
    /// lone surrogate). `null` removes the override.
    pub raw: Option<Value>,
}

/// A job to create.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    pub farm_id: Option<String>,
    pub queue_id: Option<String>,
    pub job_id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub priority: Option<i32>,
    pub created_by: Option<String>,
    pub task_run_status: Option<String>,
    pub lifecycle_status: Option<String>,
    pub task_run_status_counts: Option<BTreeMap<String, i64>>,
    #[serde(default)]
    pub script: Vec<Patch>,
    /// The job comes into existence this long from now (jobs created over time):
    /// until then GetJob, BatchGetJob, SearchJobs and ListJobs do not know it.
    #[serde(default)]
    pub create_after_ms: u64,
    /// The job's `createdAt` as Deadline reports it (default: when it comes into
    /// existence): jobs submitted on a controlled clock's past or future days.
    pub created_at: Option<chrono::DateTime<Utc>>,
    /// The job's steps and tasks (what triage reads); empty: one step "Render" made
    /// up from the task counts.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
}

/// Faults applied to the next Deadline API requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    /// Answer this many requests with 429 ThrottlingException.
    #[serde(default)]
    pub throttle_next: u32,
    /// `Retry-After` seconds on those 429s.
    pub retry_after: Option<u32>,
    /// Answer this many requests with 500 InternalServerErrorException.
    #[serde(default)]
    pub error_next: u32,
    /// Delay every request by this much.
    #[serde(default)]
    pub latency_ms: u64,
    /// Refuse BatchGetJob with AccessDeniedException (clients must fall back to GetJob).
    #[serde(default)]
    pub deny_batch: bool,
    /// New jobs appear in SearchJobs only this long after creation (eventual consistency).
    #[serde(default)]
    pub search_delay_ms: u64,
    /// SearchJobs naming any of these queues answers ResourceNotFoundException (a
    /// deleted queue).
    #[serde(default)]
    pub missing_queues: Vec<String>,
    /// The calls triage makes (ListSteps, ListTasks, BatchGetSession*) answer 429
    /// ThrottlingException; job reads are unaffected.
    #[serde(default)]
    pub throttle_details: bool,
    /// CloudWatch Logs answers 503 ServiceUnavailableException.
    #[serde(default)]
    pub logs_down: bool,
    /// Delay every CloudWatch Logs request by this much.
    #[serde(default)]
    pub logs_latency_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub get_job: u64,
    pub batch_get_job: u64,
    pub search_jobs: u64,
    pub list_jobs: u64,
    pub throttled: u64,
    pub errors: u64,
    /// Job-reads served (GetJob = 1, BatchGetJob = items).
    pub job_reads: u64,
    pub list_steps: u64,
    pub list_tasks: u64,
    pub batch_get_session_action: u64,
    pub batch_get_session: u64,
    pub get_log_events: u64,
}

struct SimJob {
    snap: JobSnapshot,
    script: Vec<Patch>,
    created: Instant,
    hits: u64,
    /// When the job was first read (GetJob or BatchGetJob).
    first_read: Option<Instant>,
    raw: Option<serde_json::Map<String, Value>>,
    /// Explicit steps; empty: made up from the task counts.
    steps: Vec<StepSpec>,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<JobKey, SimJob>,
    /// Populated keys, for cheap random picks by the churn task.
    populated: Vec<JobKey>,
    faults: Faults,
    stats: Stats,
    next_id: u64,
    /// Where job changes are published as EventBridge envelopes, if anywhere.
    events_queue: Option<String>,
    /// (farm, budget id) → GetBudget's answer.
    budgets: BTreeMap<(String, String), Value>,
}

impl Inner {
    /// A job that exists by now, advanced along its script.
    fn live_job(&mut self, key: &JobKey) -> Option<&mut SimJob> {
        let j = self.jobs.get_mut(key).filter(|j| j.born())?;
        j.advance();
        Some(j)
    }
}

/// Handle on a running (or not yet started) simulator.
#[derive(Clone, Default)]
pub struct Simulator {
    inner: Arc<Mutex<Inner>>,
    /// The SQS stand-in served beside the Deadline API (`POST /`, `AmazonSQS.*`).
    sqs: super::sqs::FakeSqs,
}

fn apply(snap: &mut JobSnapshot, p: &Patch) {
    let now = crate::clock::wall_now();
    if let Some(s) = &p.task_run_status {
        let st = TaskRunStatus::from_wire(s);
        if st == TaskRunStatus::Running && snap.started_at.is_none() {
            snap.started_at = Some(now);
        }
        if st.is_terminal() {
            snap.ended_at = Some(now);
        } else if st.is_runnable() {
            snap.ended_at = None;
        }
        snap.task_run_status = Some(st);
    }
    if let Some(s) = &p.lifecycle_status {
        snap.lifecycle_status = LifecycleStatus::from_wire(s);
    }
    if let Some(s) = &p.lifecycle_status_message {
        snap.lifecycle_status_message = s.clone();
    }
    if let Some(c) = &p.task_run_status_counts {
        snap.task_run_status_counts = c.clone();
    }
    if let Some(n) = &p.name {
        snap.name = n.clone();
    }
    if let Some(d) = &p.description {
        snap.description = Some(d.clone());
    }
    snap.updated_at = Some(now);
}

impl SimJob {
    /// Whether the job exists yet (see `JobSpec::create_after_ms`).
    fn born(&self) -> bool {
        crate::clock::monotonic() >= self.created
    }

    /// The job's wire JSON, with any raw override.
    fn wire(&self, with_location: bool) -> Value {
        let mut v = crate::deadline::wire::to_wire(&self.snap, with_location);
        if let (Some(m), Some(raw)) = (v.as_object_mut(), &self.raw) {
            for (k, x) in raw {
                m.insert(k.clone(), x.clone());
            }
        }
        v
    }

    /// Applies every scripted step that is due.
    fn advance(&mut self) {
        let elapsed = self.created.elapsed().as_millis() as u64;
        while self.script.first().is_some_and(|p| p.after_ms <= elapsed) {
            let p = self.script.remove(0);
            apply(&mut self.snap, &p);
        }
    }
}

impl Simulator {
    pub fn new() -> Simulator {
        Simulator::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock can only come from a bug in this module;
        // keep serving rather than poisoning every later request.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_job(&self, spec: JobSpec) -> JobKey {
        let mut g = self.lock();
        g.next_id += 1;
        let n = g.next_id;
        let key = JobKey {
            farm_id: spec
                .farm_id
                .unwrap_or_else(|| format!("farm-{:032x}", 0xfa_u64))
                .into(),
            queue_id: spec
                .queue_id
                .unwrap_or_else(|| format!("queue-{:032x}", 0x9e_u64))
                .into(),
            job_id: spec
                .job_id
                .unwrap_or_else(|| format!("job-{:032x}", 0x10b0000_u64 + n))
                .into(),
        };
        let mut snap = JobSnapshot::sample(key.clone(), &spec.name);
        let born_in = std::time::Duration::from_millis(spec.create_after_ms);
        snap.created_at = spec.created_at.unwrap_or_else(|| {
            crate::clock::wall_now() + chrono::Duration::from_std(born_in).unwrap_or_default()
        });
        snap.description = spec.description;
        snap.priority = spec.priority.unwrap_or(50);
        if let Some(c) = spec.created_by {
            snap.created_by = c;
        }
        snap.task_run_status = Some(TaskRunStatus::from_wire(
            spec.task_run_status.as_deref().unwrap_or("READY"),
        ));
        snap.lifecycle_status = LifecycleStatus::from_wire(
            spec.lifecycle_status
                .as_deref()
                .unwrap_or("CREATE_COMPLETE"),
        );
        snap.task_run_status_counts = spec
            .task_run_status_counts
            .unwrap_or_else(|| [("READY".to_string(), 10)].into());
        snap.max_retries_per_task = Some(5);
        snap.max_failed_tasks_count = Some(100);
        snap.task_failure_retry_count = Some(0);
        let mut script = spec.script;
        script.sort_by_key(|p| p.after_ms);
        // A job born later (`create_after_ms`) publishes nothing: its creation is
        // found by discovery, as a job whose event was lost would be.
        let created = match &g.events_queue {
            Some(q) if born_in.is_zero() => Some((q.clone(), events::created(&snap))),
            _ => None,
        };
        g.jobs.insert(
            key.clone(),
            SimJob {
                snap,
                script,
                created: crate::clock::monotonic() + born_in,
                hits: 0,
                first_read: None,
                raw: None,
                steps: spec.steps,
            },
        );
        drop(g);
        if let Some((q, body)) = created {
            self.sqs.send(&q, &body);
        }
        key
    }

    /// Applies a change now. Returns false if the job does not exist.
    pub fn patch(&self, key: &JobKey, p: &Patch) -> bool {
        let mut g = self.lock();
        let queue = g.events_queue.clone();
        match g.jobs.get_mut(key) {
            Some(j) => {
                let before = j.snap.clone();
                apply(&mut j.snap, p);
                if let Some(raw) = &p.raw {
                    j.raw = raw.as_object().cloned();
                }
                let after = j.snap.clone();
                drop(g);
                if let Some(q) = queue {
                    for body in events::changes(&before, &after) {
                        self.sqs.send(&q, &body);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Adds (or replaces) a budget that GetBudget answers for.
    pub fn add_budget(&self, farm_id: &str, budget_id: &str, name: &str, limit: f64, used: f64) {
        let now = crate::clock::wall_now();
        let ts = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let v = json!({
            "budgetId": budget_id,
            "usageTrackingResource": {"queueId": format!("queue-{:032x}", 0x9e_u64)},
            "status": "ACTIVE",
            "displayName": name,
            "approximateDollarLimit": limit,
            "usages": {"approximateDollarUsage": used},
            "createdBy": "arn:aws:sts::111122223333:assumed-role/Admin/ops",
            "createdAt": ts(now),
            "actions": [{"type": "STOP_SCHEDULING_AND_COMPLETE_TASKS", "thresholdPercentage": 100.0}],
            "schedule": {"fixed": {"startTime": ts(now), "endTime": ts(now + chrono::Duration::days(30))}},
        });
        self.lock()
            .budgets
            .insert((farm_id.to_string(), budget_id.to_string()), v);
    }

    /// The SQS stand-in this simulator serves.
    pub fn sqs(&self) -> &super::sqs::FakeSqs {
        &self.sqs
    }

    /// Publishes every later job change (`patch`, `set_status`, a new job) to the
    /// queue named `queue` as Deadline Cloud's EventBridge events; `None` stops.
    pub fn emit_events(&self, queue: Option<&str>) {
        self.lock().events_queue = queue.map(str::to_string);
    }

    /// Shorthand for a status change with matching task counts.
    pub fn set_status(&self, key: &JobKey, status: &str) -> bool {
        self.patch(
            key,
            &Patch {
                task_run_status: Some(status.into()),
                task_run_status_counts: Some([(status.to_string(), 10)].into()),
                ..Default::default()
            },
        )
    }

    /// Key of the `i`-th populated job: spread over `farms` × `queues`, deterministic
    /// so a benchmark can subscribe without asking.
    pub fn populated_key(i: usize, farms: usize, queues: usize) -> JobKey {
        JobKey {
            farm_id: format!("farm-{:032x}", i % farms.max(1)).into(),
            queue_id: format!("queue-{:032x}", (i / farms.max(1)) % queues.max(1)).into(),
            job_id: format!("job-{:032x}", i + 1).into(),
        }
    }

    /// Adds `n` READY jobs (see [`Simulator::populated_key`]).
    pub fn populate(&self, n: usize, farms: usize, queues: usize) {
        let now = crate::clock::wall_now();
        let mut g = self.lock();
        for i in 0..n {
            let key = Self::populated_key(i, farms, queues);
            let mut snap = JobSnapshot::sample(key.clone(), &format!("bench job {i}"));
            snap.created_at = now;
            snap.task_run_status_counts = [("READY".to_string(), 100)].into();
            g.populated.push(key.clone());
            g.jobs.insert(
                key,
                SimJob {
                    snap,
                    script: Vec::new(),
                    created: crate::clock::monotonic(),
                    hits: 0,
                    first_read: None,
                    raw: None,
                    steps: Vec::new(),
                },
            );
        }
    }

    /// Every 100 ms, moves a random `fraction_per_minute` share (per minute) of all jobs
    /// one step along READY → RUNNING → SUCCEEDED → READY (a requeue).
    pub fn spawn_churn(&self, fraction_per_minute: f64) -> tokio::task::JoinHandle<()> {
        let sim = self.clone();
        tokio::spawn(async move {
            let mut carry = 0.0;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let mut g = sim.lock();
                let n = g.populated.len();
                if n == 0 {
                    continue;
                }
                carry += n as f64 * fraction_per_minute / 600.0;
                let k = carry.floor() as usize;
                carry -= k as f64;
                for _ in 0..k {
                    let key = g.populated[rand::random::<u64>() as usize % n].clone();
                    if let Some(j) = g.jobs.get_mut(&key) {
                        let next = match j.snap.task_run_status {
                            Some(TaskRunStatus::Ready) => "RUNNING",
                            Some(TaskRunStatus::Running) => "SUCCEEDED",
                            _ => "READY",
                        };
                        apply(
                            &mut j.snap,
                            &Patch {
                                task_run_status: Some(next.into()),
                                ..Default::default()
                            },
                        );
                    }
                }
            }
        })
    }

    pub fn remove(&self, key: &JobKey) -> bool {
        self.lock().jobs.remove(key).is_some()
    }

    /// How many times this job has been read (GetJob or as a BatchGetJob item).
    pub fn hits(&self, key: &JobKey) -> u64 {
        self.lock().jobs.get(key).map_or(0, |j| j.hits)
    }

    /// How long after its creation each job was first read, for jobs read so far.
    pub fn first_read_delays(&self) -> Vec<std::time::Duration> {
        self.lock()
            .jobs
            .values()
            .filter_map(|j| j.first_read.map(|t| t.duration_since(j.created)))
            .collect()
    }

    pub fn set_faults(&self, f: Faults) {
        self.lock().faults = f;
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/2023-10-12/farms/{farm}/queues/{queue}/jobs/{job}",
                get(get_job),
            )
            .route(
                "/2023-10-12/farms/{farm}/queues/{queue}/jobs",
                get(list_jobs),
            )
            .route("/2023-10-12/batch-get-job", post(batch_get_job))
            .route("/2023-10-12/farms/{farm}/budgets/{budget}", get(get_budget))
            .route(
                "/2023-10-12/farms/{farm}/queues/{queue}/jobs/{job}/steps",
                get(details::list_steps),
            )
            .route(
                "/2023-10-12/farms/{farm}/queues/{queue}/jobs/{job}/steps/{step}/tasks",
                get(details::list_tasks),
            )
            .route(
                "/2023-10-12/batch-get-session-action",
                post(details::batch_get_session_action),
            )
            .route(
                "/2023-10-12/batch-get-session",
                post(details::batch_get_session),
            )
            .route("/", post(json_rpc))
            .route("/2023-10-12/farms/{farm}/search/jobs", post(search_jobs))
            .route("/_sim/jobs", post(admin_add))
            .route(
                "/_sim/jobs/{farm}/{queue}/{job}",
                axum::routing::patch(admin_patch)
                    .delete(admin_delete)
                    .get(admin_get),
            )
            .route("/_sim/faults", axum::routing::put(admin_faults))
            .route("/_sim/stats", get(admin_stats))
            .route("/_sim/populate", post(admin_populate))
            .fallback(unknown_operation)
            .with_state(self.clone())
    }

    /// Serves on `addr` (port 0 picks one); returns the bound address.
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let app = self.router();
        let h = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "simulator stopped");
            }
        });
        Ok((local, h))
    }

    /// [`Simulator::gate`] for the calls triage makes, plus `throttle_details`.
    async fn gate_details(&self) -> Option<Response> {
        if self.lock().faults.throttle_details {
            self.lock().stats.throttled += 1;
            return Some(throttle(None));
        }
        self.gate().await
    }

    /// Applies faults for one incoming API request; `Some(response)` means answer with it.
    async fn gate(&self) -> Option<Response> {
        let (latency, verdict) = {
            let mut g = self.lock();
            let latency = g.faults.latency_ms;
            let v = if g.faults.throttle_next > 0 {
                g.faults.throttle_next -= 1;
                g.stats.throttled += 1;
                Some(throttle(g.faults.retry_after))
            } else if g.faults.error_next > 0 {
                g.faults.error_next -= 1;
                g.stats.errors += 1;
                Some(aws_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerErrorException",
                    "simulated failure",
                    json!({}),
                ))
            } else {
                None
            };
            (latency, v)
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        verdict
    }
}

fn throttle(retry_after: Option<u32>) -> Response {
    let mut r = aws_error(
        StatusCode::TOO_MANY_REQUESTS,
        "ThrottlingException",
        "Rate exceeded",
        json!({"serviceCode": "deadline", "quotaCode": "L-SIMULATED"}),
    );
    if let Some(s) = retry_after {
        r.headers_mut().insert("retry-after", HeaderValue::from(s));
    }
    r
}

/// An AWS restJson1 error: status, `x-amzn-errortype` header, JSON body.
fn aws_error(status: StatusCode, kind: &str, message: &str, extra: Value) -> Response {
    let mut body = json!({"message": message});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(kind) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

fn not_found(key: &JobKey) -> Response {
    aws_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        &format!("Job {} not found", key.job_id),
        json!({"resourceId": key.job_id, "resourceType": "job"}),
    )
}

async fn get_job(
    State(sim): State<Simulator>,
    Path((farm, queue, job)): Path<(String, String, String)>,
) -> Response {
    if let Some(r) = sim.gate().await {
        return r;
    }
    let key = JobKey {
        farm_id: farm.into(),
        queue_id: queue.into(),
        job_id: job.into(),
    };
    let mut g = sim.lock();
    g.stats.get_job += 1;
    g.stats.job_reads += 1;
    match g.jobs.get_mut(&key).filter(|j| j.born()) {
        Some(j) => {
            j.advance();
            j.hits += 1;
            j.first_read.get_or_insert_with(crate::clock::monotonic);
            Json(j.wire(false)).into_response()
        }
        None => not_found(&key),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchReq {
    identifiers: Vec<JobKey>,
}

async fn batch_get_job(State(sim): State<Simulator>, body: axum::body::Bytes) -> Response {
    if let Some(r) = sim.gate().await {
        return r;
    }
    let req: BatchReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                &format!("cannot parse request: {e}"),
                json!({"reason": "CANNOT_PARSE"}),
            );
        }
    };
    let mut g = sim.lock();
    if g.faults.deny_batch {
        return aws_error(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            "not authorized to perform deadline:BatchGetJob",
            json!({}),
        );
    }
    if req.identifiers.is_empty() || req.identifiers.len() > 100 {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "identifiers must have 1 to 100 items",
            json!({"reason": "FIELD_VALIDATION_FAILED", "fieldList": [{"name": "identifiers", "message": "length"}]}),
        );
    }
    g.stats.batch_get_job += 1;
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for key in req.identifiers {
        match g.jobs.get_mut(&key).filter(|j| j.born()) {
            Some(j) => {
                j.advance();
                j.hits += 1;
                j.first_read.get_or_insert_with(crate::clock::monotonic);
                jobs.push(j.wire(true));
            }
            None => errors.push(json!({
                "farmId": key.farm_id, "queueId": key.queue_id, "jobId": key.job_id,
                "code": "ResourceNotFoundException", "message": "Job not found"
            })),
        }
    }
    g.stats.job_reads += jobs.len() as u64;
    Json(json!({"jobs": jobs, "errors": errors})).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchReq {
    queue_ids: Vec<String>,
    item_offset: usize,
    page_size: Option<usize>,
    #[serde(default)]
    filter_expressions: Option<Value>,
    #[serde(default)]
    sort_expressions: Option<Vec<Value>>,
}

/// The `CREATED_AT` lower bound of a search (`GREATER_THAN_EQUAL_TO` or
/// `GREATER_THAN`), the only date filter the service sends.
fn created_at_floor(f: &Value) -> Option<(chrono::DateTime<Utc>, bool)> {
    for filter in f["filters"].as_array()? {
        let d = &filter["dateTimeFilter"];
        if d["name"] == "CREATED_AT" {
            let at = match &d["dateTime"] {
                Value::String(t) => chrono::DateTime::parse_from_rfc3339(t)
                    .ok()
                    .map(|t| t.with_timezone(&Utc)),
                Value::Number(n) => n.as_f64().and_then(|secs| {
                    chrono::DateTime::from_timestamp_millis((secs * 1000.0) as i64)
                }),
                _ => None,
            }?;
            return Some((at, d["operator"] == "GREATER_THAN_EQUAL_TO"));
        }
    }
    None
}

async fn search_jobs(
    State(sim): State<Simulator>,
    Path(farm): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = sim.gate().await {
        return r;
    }
    let req: SearchReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                &e.to_string(),
                json!({"reason": "CANNOT_PARSE"}),
            );
        }
    };
    if req.queue_ids.is_empty() || req.queue_ids.len() > 10 {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "queueIds must have 1 to 10 items",
            json!({"reason": "FIELD_VALIDATION_FAILED"}),
        );
    }
    if req.item_offset > 10_000 {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "itemOffset must be at most 10000",
            json!({"reason": "FIELD_VALIDATION_FAILED"}),
        );
    }
    if let Some(q) = req
        .queue_ids
        .iter()
        .find(|q| sim.lock().faults.missing_queues.contains(q))
    {
        return aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Queue {q} not found"),
            json!({"resourceId": q, "resourceType": "queue"}),
        );
    }
    let floor = req.filter_expressions.as_ref().and_then(created_at_floor);
    let ascending = req.sort_expressions.as_ref().is_some_and(|s| {
        s.iter().any(|x| {
            x["fieldSort"]["name"] == "CREATED_AT" && x["fieldSort"]["sortOrder"] == "ASCENDING"
        })
    });
    let mut g = sim.lock();
    g.stats.search_jobs += 1;
    let page = req.page_size.unwrap_or(100).clamp(1, 100);
    // Search is eventually consistent: a new job shows after `search_delay_ms`.
    let delay = std::time::Duration::from_millis(g.faults.search_delay_ms);
    let mut found: Vec<(chrono::DateTime<Utc>, Value)> = Vec::new();
    for (k, j) in g.jobs.iter_mut() {
        if k.farm_id == farm
            && req.queue_ids.iter().any(|q| k.queue_id == *q)
            && j.born()
            && j.created.elapsed() >= delay
        {
            let keep = floor.is_none_or(|(t, inclusive)| {
                if inclusive {
                    j.snap.created_at >= t
                } else {
                    j.snap.created_at > t
                }
            });
            if keep {
                j.advance();
                found.push((j.snap.created_at, j.wire(true)));
            }
        }
    }
    if ascending {
        found.sort_by_key(|(t, _)| *t);
    }
    let all: Vec<Value> = found.into_iter().map(|(_, v)| v).collect();
    let total = all.len();
    let items: Vec<Value> = all.into_iter().skip(req.item_offset).take(page).collect();
    let mut out = json!({"jobs": items, "totalResults": total});
    if req.item_offset + page < total {
        out["nextItemOffset"] = json!(req.item_offset + page);
    }
    Json(out).into_response()
}

async fn list_jobs(
    State(sim): State<Simulator>,
    Path((farm, queue)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = sim.gate().await {
        return r;
    }
    let max = q
        .get("maxResults")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100usize)
        .clamp(1, 100);
    let start: usize = q.get("nextToken").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut g = sim.lock();
    g.stats.list_jobs += 1;
    let mut all = Vec::new();
    for (k, j) in g.jobs.iter_mut() {
        if k.farm_id == farm && k.queue_id == queue && j.born() {
            j.advance();
            let mut v = j.wire(false);
            if let Some(m) = v.as_object_mut() {
                m.remove("description");
                m.remove("parameters");
                m.remove("attachments");
                m.remove("storageProfileId");
            }
            all.push(v);
        }
    }
    let total = all.len();
    let items: Vec<Value> = all.into_iter().skip(start).take(max).collect();
    let mut out = json!({"jobs": items});
    if start + max < total {
        out["nextToken"] = json!((start + max).to_string());
    }
    Json(out).into_response()
}

async fn get_budget(
    State(sim): State<Simulator>,
    Path((farm, budget)): Path<(String, String)>,
) -> Response {
    if let Some(r) = sim.gate().await {
        return r;
    }
    match sim.lock().budgets.get(&(farm, budget.clone())) {
        Some(v) => Json(v.clone()).into_response(),
        None => aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("budget {budget} not found"),
            json!({"resourceId": budget, "resourceType": "budget"}),
        ),
    }
}

/// `POST /` carries two JSON protocols: CloudWatch Logs and SQS, told apart by target.
async fn json_rpc(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let sqs = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("AmazonSQS."));
    if sqs {
        sim.sqs.handle(&headers, &body).await
    } else {
        details::logs(State(sim), headers, body).await
    }
}

async fn unknown_operation(headers: HeaderMap) -> Response {
    let _ = headers;
    aws_error(
        StatusCode::BAD_REQUEST,
        "ValidationException",
        "unknown operation",
        json!({"reason": "UNKNOWN_OPERATION"}),
    )
}

async fn admin_add(State(sim): State<Simulator>, Json(spec): Json<JobSpec>) -> Response {
    let key = sim.add_job(spec);
    (StatusCode::CREATED, Json(json!(key))).into_response()
}

async fn admin_patch(
    State(sim): State<Simulator>,
    Path((farm, queue, job)): Path<(String, String, String)>,
    Json(p): Json<Patch>,
) -> Response {
    let key = JobKey {
        farm_id: farm.into(),
        queue_id: queue.into(),
        job_id: job.into(),
    };
    if sim.patch(&key, &p) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(&key)
    }
}

async fn admin_delete(
    State(sim): State<Simulator>,
    Path((farm, queue, job)): Path<(String, String, String)>,
) -> Response {
    let key = JobKey {
        farm_id: farm.into(),
        queue_id: queue.into(),
        job_id: job.into(),
    };
    if sim.remove(&key) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(&key)
    }
}

async fn admin_get(
    State(sim): State<Simulator>,
    Path((farm, queue, job)): Path<(String, String, String)>,
) -> Response {
    let key = JobKey {
        farm_id: farm.into(),
        queue_id: queue.into(),
        job_id: job.into(),
    };
    let g = sim.lock();
    match g.jobs.get(&key) {
        Some(j) => {
            Json(json!({"hits": j.hits, "job": crate::deadline::wire::to_wire(&j.snap, true)}))
                .into_response()
        }
        None => not_found(&key),
    }
}

async fn admin_faults(State(sim): State<Simulator>, Json(f): Json<Faults>) -> StatusCode {
    sim.set_faults(f);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Populate {
    jobs: usize,
    #[serde(default = "ten")]
    farms: usize,
    #[serde(default = "ten")]
    queues: usize,
    /// Share of all jobs changing state per minute (0.05 = 5 %).
    #[serde(default)]
    churn_per_minute: f64,
}

fn ten() -> usize {
    10
}

async fn admin_populate(State(sim): State<Simulator>, Json(p): Json<Populate>) -> StatusCode {
    sim.populate(p.jobs, p.farms, p.queues);
    if p.churn_per_minute > 0.0 {
        sim.spawn_churn(p.churn_per_minute);
    }
    StatusCode::NO_CONTENT
}

async fn admin_stats(State(sim): State<Simulator>) -> Json<Stats> {
    Json(sim.stats())
}
