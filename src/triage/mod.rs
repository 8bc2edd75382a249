//! Failure triage: why a job failed, gathered after its failure transition is
//! committed and before its message is built. The message waits at most
//! `[triage] timeout`; a triage that fails, is throttled or is slow never drops or
//! holds it longer: it goes out with what was gathered and says what was not.
//!
//! The watcher queues the failure's messages with a fallback payload and
//! `triage_until`; it hands the job to [`run`], which gathers, re-renders each
//! message with `failure`, stores payload and facts with the outbox entry (so a
//! retry or a restart sends the same message) and wakes the channel's worker.
//!
//! `redact` is pure (layer "decisions"); this loop may import the Deadline and
//! CloudWatch Logs clients, the store, `app::live` and `watch::schedule`'s budget,
//! never delivery.
pub mod redact;

use crate::app::live::Live;
use crate::config::TriageConfig;
use crate::deadline::SourceError;
use crate::deadline::client::DeadlineClient;
use crate::deadline::logs::LogsClient;
use crate::domain::monitor::Monitor;
use crate::domain::{
    FailedStep, FailedTask, Failure, JobKey, JobSnapshot, OutboxEntry, Transition,
};
use crate::store::Store;
use crate::store::Wakers;
use crate::watch::schedule::Budget;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Calls triage may make at once after a quiet spell: about two failed jobs' worth.
const BURST: f64 = 16.0;

pub use crate::domain::failure::NOT_GATHERED;

/// (team, channel, outbox seq): one message waiting for triage.
pub type Waiting = (String, String, u64);

/// One committed failure whose messages wait for triage.
#[derive(Debug, Clone)]
pub struct Request {
    pub job: JobSnapshot,
    pub transition: Transition,
    /// When its messages stop waiting (they go out with their fallback then).
    pub until: chrono::DateTime<chrono::Utc>,
    /// (team, channel, outbox seq) of each waiting message.
    pub entries: Vec<Waiting>,
}

/// The watcher's side of the triage queue.
#[derive(Clone)]
pub struct Handle(mpsc::UnboundedSender<Request>);

impl Handle {
    pub fn new() -> (Handle, mpsc::UnboundedReceiver<Request>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Handle(tx), rx)
    }

    pub fn submit(&self, r: Request) {
        // Gone only at shutdown: the entries stay stored and are triaged at the next start.
        let _ = self.0.send(r);
    }
}

/// The Deadline and CloudWatch Logs calls triage makes, within its own share of
/// the request budget.
pub struct Gatherer {
    deadline: Arc<DeadlineClient>,
    logs: Option<Arc<LogsClient>>,
    budget: Mutex<Budget>,
    epoch: Instant,
}

impl Gatherer {
    pub fn new(
        deadline: Arc<DeadlineClient>,
        logs: Option<Arc<LogsClient>>,
        rate: f64,
    ) -> Gatherer {
        Gatherer {
            deadline,
            logs,
            budget: Mutex::new(Budget::with_burst(rate, 0, BURST)),
            epoch: crate::clock::monotonic(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_rate(&self, rate: f64) {
        self.budget().set_max(rate);
    }

    /// Waits for a request token.
    async fn token(&self) {
        loop {
            let wait = {
                let now = self.now_ms();
                let mut b = self.budget();
                let w = b.wait(now);
                if w == 0 {
                    b.take(now);
                }
                w
            };
            if wait == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    fn noted<T>(&self, r: Result<T, SourceError>) -> Result<T, SourceError> {
        match &r {
            Ok(_) => self.budget().on_success(),
            Err(SourceError::Throttled { .. }) => {
                let now = self.now_ms();
                self.budget().on_throttle(now, None);
            }
            Err(_) => {}
        }
        r
    }

    /// Gathers the failure of `job`, within `cfg.timeout`. Never fails: what could
    /// not be gathered is named in `unavailable`.
    pub async fn gather(
        &self,
        cfg: &TriageConfig,
        job: &JobSnapshot,
        monitor: Option<&Monitor>,
    ) -> Failure {
        self.gather_within(cfg, cfg.timeout, job, monitor, &mut |_| {})
            .await
    }

    /// [`Gatherer::gather`] within `limit` (what is left of the messages' wait).
    /// `facts` receives the failure as far as gathered once Deadline Cloud's part
    /// (steps, tasks, exit codes, hosts) is in, before the logs are read: what
    /// goes out if the rest does not arrive in time.
    pub async fn gather_within(
        &self,
        cfg: &TriageConfig,
        limit: Duration,
        job: &JobSnapshot,
        monitor: Option<&Monitor>,
        facts: &mut (dyn FnMut(&Failure) + Send),
    ) -> Failure {
        let mut f = Failure {
            failed_task_count: job.count("FAILED"),
            ..Default::default()
        };
        let started = crate::clock::monotonic();
        let r =
            tokio::time::timeout(limit, self.collect(cfg, &job.key, monitor, &mut f, facts)).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => f.unavailable = Some(e.to_string()),
            Err(_) => f.unavailable = Some(took_longer(limit)),
        }
        metrics::histogram!("deadline_notifier_triage_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("deadline_notifier_triage_total", "outcome" => if f.unavailable.is_some() { "partial" } else { "complete" }).increment(1);
        f
    }

    /// Fills `f` step by step, so a timeout keeps what was gathered.
    async fn collect(
        &self,
        cfg: &TriageConfig,
        key: &JobKey,
        monitor: Option<&Monitor>,
        f: &mut Failure,
        facts: &mut (dyn FnMut(&Failure) + Send),
    ) -> Result<(), SourceError> {
        self.token().await;
        let steps = self.noted(self.deadline.steps(key).await)?;
        f.steps = steps
            .iter()
            .filter(|s| s.failed > 0)
            .map(|s| FailedStep {
                step_id: s.step_id.clone(),
                // Free text from whoever submitted the job: one line, no format
                // characters, before any channel sees it.
                name: crate::domain::text::sanitize(&s.name),
                failed_count: s.failed,
                link: monitor.and_then(|m| m.step(key, &s.step_id)),
            })
            .collect();
        if f.failed_task_count == 0 {
            f.failed_task_count = f.steps.iter().map(|s| s.failed_count).sum();
        }
        let mut actions: HashMap<String, usize> = HashMap::new();
        for step in f.steps.clone() {
            if f.tasks.len() >= cfg.max_tasks {
                break;
            }
            self.token().await;
            let tasks = self.noted(
                self.deadline
                    .failed_tasks(key, &step.step_id, cfg.max_tasks - f.tasks.len())
                    .await,
            )?;
            for t in tasks {
                if let Some(a) = &t.latest_session_action_id {
                    actions.insert(a.clone(), f.tasks.len());
                }
                f.tasks.push(FailedTask {
                    link: monitor.and_then(|m| m.task(key, &step.step_id, &t.task_id)),
                    step_id: step.step_id.clone(),
                    step_name: step.name.clone(),
                    task_id: t.task_id,
                    parameters: t
                        .parameters
                        .into_iter()
                        .map(|(k, v)| {
                            (
                                crate::domain::text::sanitize(&k),
                                crate::domain::text::sanitize(&v),
                            )
                        })
                        .collect(),
                    retries: t.retries,
                    ..Default::default()
                });
            }
        }
        if actions.is_empty() {
            return Ok(());
        }
        self.token().await;
        let ids: Vec<String> = actions.keys().cloned().collect();
        let found = self.noted(self.deadline.session_actions(key, &ids).await)?;
        let mut windows = HashMap::new();
        let mut sessions: HashMap<String, Vec<usize>> = HashMap::new();
        for a in found {
            let Some(&i) = actions.get(&a.session_action_id) else {
                continue;
            };
            let t = &mut f.tasks[i];
            t.exit_code = a.exit_code.map(i64::from);
            t.message = a
                .progress_message
                .as_deref()
                .map(crate::triage::redact::clean_line)
                .filter(|m| !m.is_empty());
            windows.insert(i, (a.started_at, a.ended_at, a.session_id.clone()));
            sessions.entry(a.session_id).or_default().push(i);
        }
        if sessions.is_empty() {
            return Ok(());
        }
        self.token().await;
        let ids: Vec<String> = sessions.keys().cloned().collect();
        let found = self.noted(self.deadline.sessions(key, &ids).await)?;
        let mut streams = HashMap::new();
        for s in found {
            for &i in sessions.get(&s.session_id).into_iter().flatten() {
                f.tasks[i].host = s.host.as_deref().map(crate::triage::redact::clean_line);
                let group = s
                    .log_group
                    .clone()
                    .unwrap_or_else(|| format!("/aws/deadline/{}/{}", key.farm_id, key.queue_id));
                let stream = s.log_stream.clone().unwrap_or_else(|| s.session_id.clone());
                streams.insert(i, (group, stream));
            }
        }
        let Some(logs) = self.logs.as_ref().filter(|_| cfg.logs) else {
            return Ok(());
        };
        if !streams.is_empty() {
            let mut so_far = f.clone();
            so_far.unavailable = Some("log lines were not read in time".into());
            facts(&so_far);
        }
        self.read_logs(cfg, logs, &streams, &windows, f).await;
        Ok(())
    }
}

/// (session log group, stream) of each described task, by its index in `tasks`.
type Streams = HashMap<usize, (String, String)>;
/// (run start, run end, session id) of each described task, by its index.
type Windows = HashMap<
    usize,
    (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
        String,
    ),
>;

impl Gatherer {
    /// The log tail of each described task, in task order; the first failure ends
    /// the reading (the rest is still worth sending) and is named in `unavailable`.
    async fn read_logs(
        &self,
        cfg: &TriageConfig,
        logs: &LogsClient,
        streams: &Streams,
        windows: &Windows,
        f: &mut Failure,
    ) {
        let mut order: Vec<usize> = streams.keys().copied().collect();
        order.sort_unstable();
        for i in order {
            let (group, stream) = &streams[&i];
            let (start, end) = windows.get(&i).map_or((None, None), |w| (w.0, w.1));
            // CloudWatch Logs has its own quota: no Deadline budget spent here.
            match logs.tail(group, stream, start, end, cfg.log_lines).await {
                Ok(lines) => f.tasks[i].log_tail = crate::triage::redact::clean_tail(&lines),
                Err(e) => {
                    f.unavailable = Some(format!("log lines unavailable: {e}"));
                    break;
                }
            }
        }
    }
}

fn took_longer(limit: Duration) -> String {
    format!(
        "gathering took longer than {}",
        humantime::format_duration(Duration::from_millis(limit.as_millis() as u64))
    )
}

/// Runs triage requests as they come (and those a restart left), a few at a time.
pub async fn run(
    gatherer: Arc<Gatherer>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    store: Store,
    live: Live,
    wakers: Wakers,
) {
    // Few at a time: with a small budget, two triages that finish beat four that
    // each run out of time halfway.
    let limit = Arc::new(tokio::sync::Semaphore::new(2));
    let mut tasks = tokio::task::JoinSet::new();
    match store.run(|s| s.outbox_awaiting_triage()).await {
        Ok(left) => {
            for r in requests_for(left) {
                tracing::info!(job = %r.job.key, "triage left unfinished by the last run; gathering again");
                tasks.spawn(one(
                    gatherer.clone(),
                    r,
                    store.clone(),
                    live.clone(),
                    wakers.clone(),
                    limit.clone(),
                ));
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the outbox for unfinished triage"),
    }
    loop {
        tokio::select! {
            r = requests.recv() => match r {
                Some(r) => {
                    tasks.spawn(one(gatherer.clone(), r, store.clone(), live.clone(), wakers.clone(), limit.clone()));
                }
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Entries awaiting triage, grouped by the transition they announce: one request
/// per (job, event, detection), listing every message that waits for it. Used for
/// what an observation just queued and for what a previous run left unfinished.
pub fn requests_for(entries: Vec<OutboxEntry>) -> Vec<Request> {
    let mut by: HashMap<String, Request> = HashMap::new();
    for e in entries {
        let (Some(job), Some(tr)) = (e.snapshot, e.transition) else {
            continue;
        };
        let k = format!(
            "{}|{}|{}",
            e.job,
            tr.event,
            tr.detected_at.timestamp_micros()
        );
        let until = e.triage_until.unwrap_or(tr.detected_at);
        by.entry(k)
            .or_insert_with(|| Request {
                job: *job,
                transition: tr,
                until,
                entries: Vec::new(),
            })
            .entries
            .push((e.team, e.channel, e.seq));
    }
    by.into_values().collect()
}

async fn one(
    gatherer: Arc<Gatherer>,
    r: Request,
    store: Store,
    live: Live,
    wakers: Wakers,
    limit: Arc<tokio::sync::Semaphore>,
) {
    let _permit = limit.acquire_owned().await;
    let active = live.current();
    gatherer.set_rate(active.config.triage_budget().max(0.1));
    // Only the time its messages still wait is worth spending: a triage that could
    // no longer reach them would take budget from one that can.
    let left = (r.until - crate::clock::wall_now())
        .to_std()
        .unwrap_or_default();
    if left < Duration::from_millis(200) {
        tracing::warn!(job = %r.job.key, "triage started after its messages stopped waiting; they go out without details");
        return;
    }
    // Stop gathering a little before the messages stop waiting: the render and
    // the store write must land before a worker sends the fallback.
    let margin = (left / 5).min(Duration::from_secs(1));
    let (staged_tx, mut staged_rx) = mpsc::unbounded_channel::<Failure>();
    let mut stage = move |f: &Failure| {
        let _ = staged_tx.send(f.clone());
    };
    let gather = gatherer.gather_within(
        &active.config.triage,
        (left - margin).min(active.config.triage.timeout),
        &r.job,
        active.renderer.monitor(),
        &mut stage,
    );
    tokio::pin!(gather);
    // What arrives before the end is stored with the messages at once (they keep
    // waiting), so a slow log read can no longer cost the facts already in.
    let failure = loop {
        tokio::select! {
            f = &mut gather => break f,
            Some(partial) = staged_rx.recv() => {
                store_failure(&r, &partial, &active, &store, &wakers, false).await;
            }
        }
    };
    if let Some(why) = &failure.unavailable {
        tracing::warn!(job = %r.job.key, reason = %why, "failure details partly unavailable; sending what was gathered");
    }
    store_failure(&r, &failure, &active, &store, &wakers, true).await;
}

/// Renders each waiting message of `r` with `failure` and stores it: `last`
/// releases the messages; otherwise they keep waiting with this as their fallback.
async fn store_failure(
    r: &Request,
    failure: &Failure,
    active: &crate::app::live::Active,
    store: &Store,
    wakers: &Wakers,
    last: bool,
) {
    for (team, channel, seq) in &r.entries {
        let Some(ch) = active
            .config
            .team(team)
            .and_then(|t| t.channel(channel))
            .cloned()
        else {
            continue;
        };
        let payload = match active.renderer.payload_with(
            team,
            &ch,
            &r.job,
            &r.transition,
            Some(failure),
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(job = %r.job.key, %team, %channel, error = %e, "template failed with the failure details; the message keeps its fallback");
                continue;
            }
        };
        let (t, c, s, f) = (team.clone(), channel.clone(), *seq, failure.clone());
        let stored = if last {
            store
                .run(move |st| st.finish_triage(&t, &c, s, payload, f))
                .await
        } else {
            store
                .run(move |st| st.stage_triage(&t, &c, s, payload, f))
                .await
        };
        match stored {
            Ok(_) if last => wakers.wake(team, channel),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(job = %r.job.key, %team, %channel, error = %e, "cannot store the triaged message; it goes out with its fallback")
            }
        }
    }
}
