//! The poll loop: read subscribed jobs from Deadline Cloud on a schedule, diff each
//! against its last state, route and render the resulting events, and commit state
//! and outbox entries together.
//!
//! Every watched job has a next-due time. Due jobs are read in `BatchGetJob` calls of
//! up to 100, spread evenly over the poll interval, within a global request budget
//! that backs off on throttling. Job state lives in memory in compact form; the store
//! is written only when a job's state changes.
//!
//! Owns: this loop (a layer "loops" module) and its pure steps, each a layer
//! "decisions" module that imports only `domain`, `notify`, `config`, `render` and
//! its siblings: `diff`, `route`, `progress`, `schedule`, `plan` (what a read means),
//! `discovery` (which queues to search, from when). `health` is what the loop lets
//! the API read. The loop may import the adapters (`store`, `deadline`), `app::live`
//! and `triage`.
mod health;
pub use discovery::SearchedQueues;
pub use health::{Health, HealthView};
pub mod diff;
pub mod discovery;
pub mod plan;
pub mod progress;
pub mod route;
pub mod schedule;

use crate::app::live::{Active, Live};
use crate::clock::SharedClock;
use crate::deadline::client::{BATCH_LIMIT, DeadlineClient};
use crate::deadline::{Fetched, Observed, SourceError};
use crate::domain::{JobKey, JobStatus, TaskRunStatus};
use crate::domain::{JobState, Subscription};
use crate::store::{Store, StoreError};
use crate::watch::plan::Known;
use crate::watch::route::Interest;
use crate::watch::schedule::{Budget, Schedule};
use foldhash::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A subscription change made through the API, for the watcher to pick up.
#[derive(Debug, Clone)]
pub enum SubChange {
    Added(Subscription),
    Removed(Subscription),
}

/// The API's side of the change channel.
#[derive(Clone)]
pub struct WatchHandle(Option<mpsc::UnboundedSender<SubChange>>);

impl WatchHandle {
    pub fn new() -> (WatchHandle, mpsc::UnboundedReceiver<SubChange>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (WatchHandle(Some(tx)), rx)
    }

    /// A handle that goes nowhere (an API without a watcher, as in router tests).
    pub fn detached() -> WatchHandle {
        WatchHandle(None)
    }

    pub fn notify(&self, change: SubChange) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(change);
        }
    }
}

/// What stays the same through one discovery pass.
struct Pass<'a> {
    start: chrono::DateTime<chrono::Utc>,
    overlap: chrono::Duration,
    interval: u64,
    matchers: &'a [(crate::domain::Watch, Option<regex_lite::Regex>)],
}

/// What one search's answer means for the rest of the pass.
enum Searched {
    Done,
    /// Refused for several queues at once: search each alone to find the bad one.
    Split(Vec<String>),
    /// Throttled: the rest of this farm waits for the next pass.
    Throttled,
}

pub struct Watcher {
    pub store: Store,
    pub client: Arc<DeadlineClient>,
    /// Config and templates; re-read at every batch so a reload applies from the next poll.
    pub live: Live,
    pub clock: SharedClock,
    pub changes: mpsc::UnboundedReceiver<SubChange>,
    pub health: Arc<Health>,
    /// Where committed failures go to be triaged.
    pub triage: crate::triage::Handle,
}

/// One watched job: its subscriptions and last known state, compact: 100k of these
/// live in memory.
struct Tracked {
    subs: Vec<Interest>,
    state: Option<Known>,
    /// Poll-interval multiplier currently applied (adaptive intervals).
    factor: u32,
}

struct Loop {
    w: Watcher,
    active: Arc<Active>,
    /// Keys shared with the schedule (`Arc`): one copy per watched job.
    tracked: HashMap<Arc<JobKey>, Tracked>,
    schedule: Schedule,
    budget: Budget,
    origin: Instant,
    /// Σ 1/factor over scheduled jobs: how many job-checks one interval needs.
    load: f64,
    last_lag_log: Option<Instant>,
    /// When (ms since `origin`) the next discovery pass is due.
    next_discovery: u64,
    /// (farm, queue) → when discovery last searched it (persisted).
    last_pass: discovery::LastPass,
    /// Searches that keep failing: (failures so far, not before this ms).
    discovery_backoff: discovery::Backoff,
}

/// Runs blocking store work from the poll loop without stalling the runtime's other
/// tasks (the API, the workers): the worker thread is handed over while it runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Watcher {
    /// Polls until `shutdown` turns true. Returns an error only for store failures.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let mut l = Loop::load(self)?;
        l.run(shutdown).await
    }
}

impl Loop {
    fn load(w: Watcher) -> Result<Loop, StoreError> {
        let origin = crate::clock::tokio_monotonic();
        let active = w.live.current();
        let budget = Budget::new(active.config.poll_budget(), 0);
        // Reading and decoding the two trees is most of start-up at 100k jobs; do
        // them side by side.
        let (states, subs) = blocking(|| {
            std::thread::scope(|scope| {
                let states = scope.spawn(|| w.store.job_states());
                let subs = w.store.subscriptions();
                let states = states
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                (states, subs)
            })
        });
        let mut states: HashMap<JobKey, JobState> =
            states?.into_iter().map(|s| (s.job.clone(), s)).collect();
        let mut tracked: HashMap<Arc<JobKey>, Tracked> = HashMap::default();
        for s in subs? {
            if s.is_active() {
                tracked
                    .entry(Arc::new(s.job.clone()))
                    .or_insert_with(|| Tracked {
                        subs: Vec::new(),
                        state: None,
                        factor: 1,
                    })
                    .subs
                    .push(Interest::from(&s));
            }
        }
        for (job, t) in tracked.iter_mut() {
            t.state = states.remove(job).map(Known::from);
        }
        let mut l = Loop {
            w,
            active,
            tracked,
            schedule: Schedule::default(),
            budget,
            origin,
            load: 0.0,
            last_lag_log: None,
            next_discovery: 0,
            last_pass: HashMap::default(),
            discovery_backoff: HashMap::default(),
        };
        for (farm, queue, at) in blocking(|| l.w.store.discovery_marks())? {
            l.last_pass.insert((farm, queue), at);
        }
        l.enforce_allow_lists()?;
        // Spread the first round over one interval instead of a burst at start-up.
        let interval = l.interval_ms();
        let jobs: Vec<Arc<JobKey>> = l.tracked.keys().cloned().collect();
        let n = jobs.len().max(1) as u64;
        for (i, job) in jobs.iter().enumerate() {
            if !l.settled(job) {
                l.reschedule(job, i as u64 * interval / n, false);
            }
        }
        tracing::info!(
            jobs = l.schedule.len(),
            subscriptions = l.tracked.values().map(|t| t.subs.len()).sum::<usize>(),
            load_ms = origin.elapsed().as_millis() as u64,
            "watcher loaded"
        );
        Ok(l)
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn interval_ms(&self) -> u64 {
        self.active.config.deadline.poll_interval.as_millis().max(1) as u64
    }

    /// Terminal for longer than the grace period: no longer polled.
    fn settled(&self, job: &JobKey) -> bool {
        let since = self
            .tracked
            .get(job)
            .and_then(|t| t.state.as_ref())
            .and_then(|s| s.terminal_since);
        crate::watch::schedule::settled(since, self.w.clock.now(), &self.active.config.deadline)
    }

    /// How many times less often than the base interval to poll this job.
    fn factor(&self, job: &JobKey) -> u32 {
        let st = self.tracked.get(job).and_then(|t| t.state.as_ref());
        crate::watch::schedule::poll_factor(
            st.map(|s| &s.status),
            st.map_or(self.w.clock.now(), |s| s.since),
            self.w.clock.now(),
            &self.active.config.deadline,
        )
    }

    /// Schedules `job` at `at`, or one (adapted) interval from now when `at` is 0 and
    /// `after_poll` is set.
    fn reschedule(&mut self, job: &JobKey, at: u64, after_poll: bool) {
        let factor = self.factor(job);
        let due = if after_poll {
            self.now_ms() + self.interval_ms() * u64::from(factor)
        } else {
            at
        };
        // A job no longer tracked (unsubscribed mid-poll) is not scheduled again.
        let Some(key) = self.tracked.get_key_value(job).map(|(k, _)| k.clone()) else {
            return;
        };
        let was_scheduled = self.schedule.contains(job);
        if let Some(t) = self.tracked.get_mut(job) {
            if was_scheduled {
                self.load -= 1.0 / f64::from(t.factor);
            }
            t.factor = factor;
        }
        self.load += 1.0 / f64::from(factor);
        self.schedule.set(&key, due);
    }

    fn unschedule(&mut self, job: &JobKey) {
        if self.schedule.contains(job) {
            if let Some(t) = self.tracked.get(job) {
                self.load -= 1.0 / f64::from(t.factor);
            }
            self.schedule.remove(job);
        }
    }

    fn apply(&mut self, change: SubChange) -> Result<(), StoreError> {
        match change {
            SubChange::Added(sub) if !sub.is_active() => {}
            SubChange::Added(sub) => {
                let job = sub.job.clone();
                let is_new = !self.tracked.contains_key(&job);
                if is_new {
                    let state = blocking(|| self.w.store.job_state(&job))?.map(Known::from);
                    self.tracked.insert(
                        Arc::new(job.clone()),
                        Tracked {
                            subs: Vec::new(),
                            state,
                            factor: 1,
                        },
                    );
                }
                if let Some(t) = self.tracked.get_mut(&job) {
                    t.subs.retain(|s| *s.id != *sub.id);
                    t.subs.push(Interest::from(&sub));
                }
                // A new subscriber wants a fresh look, even at a settled job.
                let now = self.now_ms();
                self.reschedule(&job, now, false);
            }
            SubChange::Removed(sub) => {
                let empty = self.tracked.get_mut(&sub.job).is_some_and(|t| {
                    t.subs.retain(|s| *s.id != *sub.id);
                    t.subs.is_empty()
                });
                if empty {
                    self.unschedule(&sub.job);
                    self.tracked.remove(&sub.job);
                    self.w.health.drop_view(&sub.job);
                }
            }
        }
        Ok(())
    }

    /// Takes up a reloaded config: the new budget now, the new intervals as jobs are
    /// next rescheduled.
    fn refresh(&mut self, active: Arc<Active>) -> Result<(), StoreError> {
        let rps = active.config.poll_budget();
        if rps != self.active.config.poll_budget() {
            self.budget.set_max(rps);
        }
        self.active = active;
        self.enforce_allow_lists()
    }

    /// Ends the subscriptions their team's allow-lists no longer admit (a reload
    /// narrowed them, or the config changed while the service was down).
    fn enforce_allow_lists(&mut self) -> Result<(), StoreError> {
        let teams = &self.active.config.teams;
        let mut outside: Vec<(Arc<JobKey>, String, String)> = Vec::new();
        for (job, t) in &self.tracked {
            for s in &t.subs {
                if let Some(team) = teams.iter().find(|x| *x.name == *s.team)
                    && let Err(why) = team.admits(job)
                {
                    outside.push((job.clone(), s.id.to_string(), why));
                }
            }
        }
        for (job, id, why) in outside {
            let reason = format!("outside the team's allow-list: {why}");
            let store = self.w.store.clone();
            blocking(|| store.end_subscriptions_by_id(std::slice::from_ref(&id), &reason))?;
            tracing::warn!(%job, subscription = %id, %reason, "subscription ended");
            let empty = self.tracked.get_mut(&*job).is_some_and(|t| {
                t.subs.retain(|s| *s.id != *id);
                t.subs.is_empty()
            });
            if empty {
                self.unschedule(&job);
                self.tracked.remove(&*job);
                self.w.health.drop_view(&job);
            }
        }
        Ok(())
    }

    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let mut reloads = self.w.live.subscribe();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let active = self.w.live.current();
            if active.generation != self.active.generation {
                self.refresh(active)?;
            }
            while let Ok(c) = self.w.changes.try_recv() {
                self.apply(c)?;
            }
            self.w.health.set_watched_jobs(self.schedule.len());
            metrics::gauge!("deadline_notifier_watched_jobs").set(self.schedule.len() as f64);
            let now = self.now_ms();
            if now >= self.next_discovery && self.budget.wait(now) == 0 {
                self.discover().await?;
                continue;
            }
            let wait = match self.schedule.next_due() {
                None => Duration::from_secs(3600),
                Some(next) => {
                    // Batches go out every interval / (calls one interval needs); when the
                    // earliest job is due, the batch also takes the jobs due before the
                    // next one would go out: full batches, evenly spread.
                    let calls = (self.load / BATCH_LIMIT as f64).ceil().max(1.0);
                    let spacing = (self.interval_ms() as f64 / calls) as u64;
                    if next <= now {
                        match self.budget.wait(now) {
                            0 => {
                                self.poll_batch(now + spacing).await?;
                                continue;
                            }
                            ms => Duration::from_millis(ms),
                        }
                    } else {
                        Duration::from_millis(next - now)
                    }
                }
            };
            let wait = wait.min(Duration::from_millis(
                self.next_discovery.saturating_sub(now).max(1),
            ));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Some(c) = self.w.changes.recv() => self.apply(c)?,
                _ = reloads.changed() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn poll_batch(&mut self, window_end: u64) -> Result<(), StoreError> {
        let batch = self.schedule.due_by(window_end, BATCH_LIMIT);
        let now = self.now_ms();
        self.budget.take(now);
        let lag = batch
            .iter()
            .map(|(_, due)| now.saturating_sub(*due))
            .max()
            .unwrap_or(0);
        self.report_lag(lag);
        let keys: Vec<JobKey> = batch.into_iter().map(|(k, _)| k).collect();
        match self.w.client.fetch(&keys).await {
            Ok(results) => {
                self.budget.on_success();
                self.w
                    .health
                    .deadline_ok(self.w.clock.now().timestamp_millis());
                // The store's group commit makes these durable; workers pick the
                // messages up only then.
                blocking(|| -> Result<(), StoreError> {
                    for (key, fetched) in results {
                        self.handle(&key, fetched)?;
                    }
                    Ok(())
                })?;
            }
            Err(SourceError::Throttled {
                retry_after,
                message,
            }) => {
                metrics::counter!("deadline_notifier_deadline_throttles_total").increment(1);
                let now = self.now_ms();
                self.budget
                    .on_throttle(now, retry_after.map(|d| d.as_millis() as u64));
                tracing::warn!(%message, rate = self.budget.rate(), retry_after_ms = retry_after.map(|d| d.as_millis() as u64), "Deadline Cloud throttled polling; request budget lowered");
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = keys.len(), "poll failed; retrying these jobs next interval");
                for k in &keys {
                    self.reschedule(k, 0, true);
                }
            }
        }
        Ok(())
    }

    /// One discovery pass: search every watched queue (once, however many watches
    /// share it) for jobs created since its last pass minus the overlap, and
    /// subscribe the ones a watch wants. Shares the request budget with polling.
    async fn discover(&mut self) -> Result<(), StoreError> {
        let cfg = self.active.config.clone();
        let interval = cfg.deadline.discovery_interval.as_millis() as u64;
        let store = self.w.store.clone();
        let api_watches = blocking(|| store.watches())?;
        let watches = discovery::watches_in_force(&cfg, api_watches);
        let by_farm = discovery::queues_by_farm(&watches);
        let stale = discovery::stale_marks(&self.last_pass, &by_farm);
        if !stale.is_empty() {
            for k in &stale {
                self.last_pass.remove(k);
            }
            let store = self.w.store.clone();
            blocking(|| store.remove_discovery_marks(&stale))?;
        }
        if watches.is_empty() {
            self.next_discovery = self.now_ms() + interval;
            return Ok(());
        }
        // Each watch's name pattern is compiled once a pass, not once per job.
        let matchers: Vec<(crate::domain::Watch, Option<regex_lite::Regex>)> = watches
            .iter()
            .map(|w| (w.clone(), w.name_regex()))
            .collect();
        let pass = Pass {
            start: self.w.clock.now(),
            overlap: chrono::Duration::from_std(cfg.deadline.discovery_overlap)
                .unwrap_or(chrono::Duration::zero()),
            interval,
            matchers: &matchers,
        };
        let mut marks = Vec::new();
        for (farm, queues) in &by_farm {
            // A refused call covering several queues is retried queue by queue to
            // find the bad one.
            let mut work =
                discovery::searches(farm, queues, &self.discovery_backoff, self.now_ms());
            while let Some(chunk) = work.pop_front() {
                match self.search(&pass, farm, chunk, &mut marks).await? {
                    Searched::Done => {}
                    Searched::Split(chunk) => work.extend(chunk.into_iter().map(|q| vec![q])),
                    Searched::Throttled => break,
                }
            }
        }
        if !marks.is_empty() {
            let store = self.w.store.clone();
            blocking(|| store.set_discovery_marks(&marks))?;
        }
        self.next_discovery = self.now_ms() + interval;
        Ok(())
    }

    /// One SearchJobs call (and its pages) for `chunk`, and what follows from its answer.
    async fn search(
        &mut self,
        pass: &Pass<'_>,
        farm: &str,
        chunk: Vec<String>,
        marks: &mut Vec<(String, String, chrono::DateTime<chrono::Utc>)>,
    ) -> Result<Searched, StoreError> {
        let key = (farm.to_string(), chunk.clone());
        if discovery::backing_off(&self.discovery_backoff, &key, self.now_ms()) {
            return Ok(Searched::Done);
        }
        let since =
            discovery::search_since(&self.last_pass, farm, &chunk, pass.start, pass.overlap);
        self.budget.take(self.now_ms());
        match self
            .w
            .client
            .search_created_since(farm, &chunk, since)
            .await
        {
            Ok((jobs, calls)) => {
                for _ in 1..calls {
                    self.budget.take(self.now_ms());
                }
                self.discovery_backoff.remove(&key);
                if self.w.health.clear_discovery_error(&key) {
                    tracing::info!(farm, queues = %chunk.join(","), "discovery works again for these queues");
                }
                for job in jobs {
                    self.adopt(&job, pass.matchers)?;
                }
                for q in &chunk {
                    self.last_pass
                        .insert((farm.to_string(), q.clone()), pass.start);
                    marks.push((farm.to_string(), q.clone(), pass.start));
                }
                Ok(Searched::Done)
            }
            Err(SourceError::Throttled {
                retry_after,
                message,
            }) => {
                let now = self.now_ms();
                self.budget
                    .on_throttle(now, retry_after.map(|d| d.as_millis() as u64));
                tracing::warn!(%message, "Deadline Cloud throttled discovery; trying again next pass");
                Ok(Searched::Throttled)
            }
            Err(_) if chunk.len() > 1 => Ok(Searched::Split(chunk)),
            Err(e) => {
                let msg = e.to_string();
                metrics::counter!("deadline_notifier_discovery_errors_total").increment(1);
                // Retried with back-off; the other queues are searched as usual.
                let next = discovery::after_failure(
                    self.discovery_backoff.get(&key).copied(),
                    pass.interval,
                    self.now_ms(),
                );
                self.discovery_backoff.insert(key.clone(), next);
                if self.w.health.set_discovery_error(key, &msg, pass.start) {
                    tracing::warn!(farm, queues = %chunk.join(","), error = %msg, "discovery failed for these queues; retrying every pass");
                }
                Ok(Searched::Done)
            }
        }
    }

    /// Subscribes a discovered job for every watch that wants it, unless its team
    /// already subscribes the job. A job nobody tracked yet starts from the state
    /// every new job starts in, so one that already started, failed or succeeded
    /// before its first poll is still announced.
    fn adopt(
        &mut self,
        job: &crate::deadline::NewJob,
        watches: &[(crate::domain::Watch, Option<regex_lite::Regex>)],
    ) -> Result<(), StoreError> {
        for w in watches
            .iter()
            .filter(|(w, re)| w.wants(&job.key, &job.name, &job.created_by, re.as_ref()))
            .map(|(w, _)| w)
        {
            let team_has = self
                .tracked
                .get(&job.key)
                .is_some_and(|t| t.subs.iter().any(|s| *s.team == *w.team));
            if team_has {
                continue;
            }
            if let Some(team) = self.active.config.team(&w.team)
                && team.admits(&job.key).is_err()
            {
                continue;
            }
            let now = self.w.clock.now();
            let store = self.w.store.clone();
            if !self.tracked.contains_key(&job.key)
                && blocking(|| store.job_state(&job.key))?.is_none()
            {
                let mut start = crate::domain::JobSnapshot::sample(job.key.clone(), &job.name);
                start.lifecycle_status = crate::domain::LifecycleStatus::CreateInProgress;
                start.task_run_status = Some(TaskRunStatus::Ready);
                let state = JobState {
                    job: job.key.clone(),
                    status: JobStatus::of(&start),
                    since: job.created_at,
                    terminal_since: None,
                    progress: Default::default(),
                };
                blocking(|| store.commit_observation(&state, Vec::new()))?;
            }
            let sub = Subscription {
                id: format!("sub-{}", uuid::Uuid::new_v4().simple()),
                team: w.team.clone(),
                job: job.key.clone(),
                channels: w.channels.clone(),
                events: w.events.clone(),
                created_at: now,
                state: "active".into(),
                ended_reason: None,
                watch: Some(w.id.clone()),
                muted: false,
            };
            let (stored, created) = blocking(|| store.insert_subscription(sub))?;
            if created {
                tracing::info!(job = %job.key, team = %w.team, watch = %w.name, created_by = %job.created_by, "subscribed by watch");
                self.apply(SubChange::Added(stored))?;
            }
        }
        Ok(())
    }

    fn report_lag(&mut self, lag_ms: u64) {
        let interval = self.interval_ms();
        metrics::gauge!("deadline_notifier_poll_lag_seconds").set(lag_ms as f64 / 1000.0);
        metrics::gauge!("deadline_notifier_poll_interval_effective_seconds")
            .set((interval + lag_ms) as f64 / 1000.0);
        metrics::gauge!("deadline_notifier_deadline_request_budget").set(self.budget.rate());
        if lag_ms <= interval / 2 {
            return;
        }
        if self
            .last_lag_log
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.last_lag_log = Some(crate::clock::tokio_monotonic());
        tracing::warn!(
            configured_interval_ms = interval,
            effective_interval_ms = interval + lag_ms,
            jobs = self.schedule.len(),
            request_rate = self.budget.rate(),
            "poll interval stretched: the request budget cannot cover every job at the configured interval; \
             all jobs are slowed evenly (raise [deadline] max_requests_per_second or poll_interval)"
        );
    }

    fn handle(&mut self, key: &JobKey, fetched: Fetched) -> Result<(), StoreError> {
        match fetched {
            Fetched::Found(snap) => {
                self.w.health.clear_poll_error(key);
                if let Some((shared, _)) = self.tracked.get_key_value(key) {
                    self.w
                        .health
                        .refresh_view(shared, &snap, self.w.clock.now());
                }
                self.observe(key, *snap)?;
                if self.settled(key) {
                    self.unschedule(key);
                } else {
                    self.reschedule(key, 0, true);
                }
            }
            Fetched::Gone(reason) => {
                self.w.health.clear_poll_error(key);
                self.w.health.drop_view(key);
                let n = self.w.store.end_subscriptions(key, &reason)?;
                tracing::warn!(job = %key, subscriptions = n, %reason, "job no longer exists in Deadline Cloud; subscription ended");
                self.unschedule(key);
                self.tracked.remove(key);
            }
            Fetched::Failed(reason) => {
                // Once per distinct error, not once per poll.
                if self.w.health.set_poll_error(key, &reason) {
                    tracing::warn!(job = %key, %reason, "could not read job; will retry every interval");
                }
                self.reschedule(key, 0, true);
            }
        }
        Ok(())
    }

    /// Diffs one observation and, if the state changed, commits it with its messages.
    fn observe(&mut self, key: &JobKey, observed: Observed) -> Result<(), StoreError> {
        let Some(t) = self.tracked.get(key) else {
            return Ok(());
        };
        let prev = t.state.as_ref();
        let now = self.w.clock.now();
        let (succeeded, total, running, started_at) = observed.progress();
        let seen = crate::watch::progress::Seen {
            succeeded,
            total,
            running,
            status: observed.status.task_run_status.as_ref(),
            started_at,
        };
        let look = plan::look(
            prev,
            &observed.status,
            &seen,
            now,
            &self.active.config.deadline,
        );
        if !look.changed {
            if let Some(k) = self.tracked.get_mut(key).and_then(|t| t.state.as_mut()) {
                k.progress = look.progress;
            }
            return Ok(());
        }
        // Changed (or first seen): only now is the full snapshot built.
        let cur = observed.status.clone();
        let snap = observed.snapshot(key.clone());
        if self.active.config.people.owner(&snap.created_by).is_none() {
            self.w.health.note_unmapped(&snap.created_by, now);
        }
        let cfg = &self.active.config;
        let plan = plan::plan(
            prev,
            cur,
            &snap,
            look,
            &t.subs,
            cfg,
            &self.active.renderer,
            now,
        );
        let queued = self.w.store.commit_observation(&plan.state, plan.entries)?;
        for e in &plan.events {
            tracing::info!(job = %snap.key, event = %e, "transition detected");
        }
        for e in &queued {
            tracing::info!(job = %snap.key, team = %e.team, channel = %e.channel, event = %e.event, webhook_id = %e.webhook_id, "notification queued");
        }
        // After the commit: a crash from here on finds the entries and triages again.
        for r in crate::triage::requests_for(queued) {
            self.w.triage.submit(r);
        }
        if let Some(t) = self.tracked.get_mut(&snap.key) {
            t.state = Some(Known::from(plan.state));
        }
        Ok(())
    }
}
