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
mod discover;
mod health;
mod hinted;
pub use discovery::SearchedQueues;
pub use health::{Health, HealthView};
pub mod budget;
pub mod diff;
pub mod discovery;
pub mod events;
pub mod hints;
pub mod plan;
pub mod progress;
pub mod push;
pub mod retention;
pub mod route;
pub mod schedule;
mod table;

use crate::app::live::{Active, Live};
use crate::clock::SharedClock;
use crate::deadline::client::{BATCH_LIMIT, DeadlineClient};
use crate::deadline::{Fetched, Observed, SourceError};
use crate::domain::{JobKey, JobStatus, TaskRunStatus};
use crate::domain::{JobState, Subscription};
use crate::store::{Store, StoreError};
use crate::watch::plan::Known;
use crate::watch::schedule::{Budget, LaneId, Lanes, Slot};
use crate::watch::table::{Due, Table, Tracked};
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
    /// Removed by the retention sweep: when nothing follows its job any more, the
    /// job's state goes too.
    Retired(Subscription),
    /// A watch was created or deleted through the API.
    Watches,
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
    /// The event queue's hints and health, when `[events]` names a queue.
    pub events: Option<events::Inbox>,
}

struct Loop {
    w: Watcher,
    active: Arc<Active>,
    /// Watched jobs by slot.
    tracked: Table,
    /// Due jobs (slots), by team.
    schedule: Lanes,
    /// Polling's share of the Deadline budget.
    budget: Budget,
    /// Discovery's own share (SearchJobs).
    discovery_budget: Budget,
    /// The discovery pass under way, searched one call per turn.
    pass: Option<discover::Pass>,
    /// API watches as last read; `None` after one changed (read again at the next pass).
    api_watches: Option<Vec<crate::domain::Watch>>,
    /// `name_matches` patterns compiled, while a watch in force uses them.
    patterns: HashMap<String, regex_lite::Regex>,
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
    /// Shared team names and channel lists of the subscriptions followed.
    interner: route::Interner,
    /// Event hints from the queue (none without `[events]`).
    pushed: Option<mpsc::UnboundedReceiver<Vec<events::Pushed>>>,
    answers: Option<mpsc::UnboundedSender<events::Answer>>,
    mode_rx: Option<watch::Receiver<push::Mode>>,
    /// Polling mode: relaxed to the backstop interval while events flow.
    mode: push::Mode,
    /// Messages waiting for their job's next read to be committed, by slot.
    awaiting: HashMap<Slot, Vec<(Arc<JobKey>, events::Pushed)>>,
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
        let discovery_budget = Budget::new(active.config.discovery_budget(), 0);
        // Reading and decoding the two trees is most of start-up at 100k jobs; do
        // them side by side.
        let (states, subs) = blocking(|| {
            std::thread::scope(|scope| {
                let states = scope.spawn(|| w.store.job_states());
                let subs = w.store.subscription_heads();
                let states = states
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                (states, subs)
            })
        });
        let read_ms = origin.elapsed().as_millis() as u64;
        // Maps sized once: growing a 100k-entry map rehashes it several times.
        let states = states?;
        let mut known: HashMap<JobKey, Known> =
            HashMap::with_capacity_and_hasher(states.len(), Default::default());
        known.extend(states.into_iter().map(Known::split));
        let mut states = known;
        let subs = subs?;
        let mut tracked = Table::with_capacity(subs.len());
        let mut interner = route::Interner::default();
        for s in subs {
            if s.is_followed() {
                let finished = s.is_finished();
                let (job, interest) = interner.split(s);
                let slot = tracked.slot_or_insert(job, |key| Tracked {
                    finished: true,
                    ..Tracked::new(key, None)
                });
                if let Some(t) = tracked.get_mut(slot) {
                    // One active subscription makes the job active.
                    t.finished &= finished;
                    t.subs.push(interest);
                }
            }
        }
        for (_, t) in tracked.iter_mut() {
            t.state = states.remove(&*t.key);
            t.subs.shrink_to_fit();
        }
        // States nothing follows: their subscriptions were removed (or ended) and a
        // stop came before the state went.
        let tracked_ms = origin.elapsed().as_millis() as u64;
        let orphans: Vec<JobKey> = states.into_keys().collect();
        if !orphans.is_empty() {
            blocking(|| -> Result<(), StoreError> {
                for job in &orphans {
                    w.store.delete_job_state(job)?;
                }
                Ok(())
            })?;
            tracing::info!(
                jobs = orphans.len(),
                "job states nothing follows any more were removed"
            );
        }
        let mut l = Loop {
            w,
            active,
            tracked,
            schedule: Lanes::default(),
            budget,
            discovery_budget,
            pass: None,
            api_watches: None,
            patterns: HashMap::default(),
            origin,
            load: 0.0,
            last_lag_log: None,
            next_discovery: 0,
            last_pass: HashMap::default(),
            discovery_backoff: HashMap::default(),
            interner,
            pushed: None,
            answers: None,
            mode_rx: None,
            mode: push::Mode::Tight,
            awaiting: HashMap::default(),
        };
        if let Some(inbox) = l.w.events.take() {
            l.pushed = Some(inbox.pushed);
            l.answers = Some(inbox.answers);
            l.mode_rx = Some(inbox.mode);
        }
        for (farm, queue, at) in blocking(|| l.w.store.discovery_marks())? {
            l.last_pass.insert((farm, queue), at);
        }
        let cutoff = l.w.clock.now() - chrono::Duration::days(health::UNMAPPED_DAYS);
        let unmapped = blocking(|| l.w.store.unmapped_people(cutoff))?;
        l.w.health.load_unmapped(unmapped);
        l.enforce_allow_lists()?;
        let scheduling_from = origin.elapsed().as_millis() as u64;
        blocking(|| l.schedule_loaded())?;
        tracing::info!(
            tracked_ms,
            scheduling_from,
            jobs = l.schedule.len(),
            subscriptions = l.tracked.iter().map(|(_, t)| t.subs.len()).sum::<usize>(),
            read_ms,
            load_ms = origin.elapsed().as_millis() as u64,
            "watcher loaded"
        );
        Ok(l)
    }

    /// Schedules every loaded job, spreading the first round over one interval (the
    /// finished ones over the finished interval) instead of a burst at start-up.
    /// What [`Loop::reschedule`] does for one job, done in one pass over all of them.
    fn schedule_loaded(&mut self) -> Result<(), StoreError> {
        let (interval, every) = (self.interval_ms(), self.finished_interval_ms());
        let finished_factor = (every / interval).clamp(1, u32::MAX as u64) as u32;
        let now = self.w.clock.now();
        let cfg = self.active.config.clone();
        let n = self.tracked.len().max(1) as u64;
        // One lane per team, found once per team rather than once per job.
        let mut lanes: HashMap<Box<str>, LaneId> = HashMap::default();
        self.schedule.reserve(self.tracked.slot_bound());
        let mut settled = Vec::new();
        for (i, (slot, t)) in self.tracked.iter_mut().enumerate() {
            let team = t.lane_team();
            t.lane = match lanes.get(team) {
                Some(l) => *l,
                None => {
                    let weight = cfg.team(team).map_or(1.0, |t| t.weight);
                    let l = self.schedule.lane(team, weight);
                    lanes.insert(team.into(), l);
                    l
                }
            };
            let i = i as u64;
            let st = t.state.as_ref();
            let (factor, at) = if t.finished {
                (finished_factor, i * every / n)
            } else if crate::watch::schedule::settled(
                st.and_then(|s| s.terminal_since),
                now,
                &cfg.deadline,
            ) {
                // Settled while the service was down (or before its subscriptions
                // were marked): finished below, then read at the finished pace.
                settled.push((slot, i * every / n));
                continue;
            } else {
                let f = crate::watch::schedule::poll_factor(
                    st.map(|s| &s.status),
                    st.map_or(now, |s| s.since),
                    now,
                    &cfg.deadline,
                );
                (f, i * interval / n)
            };
            t.factor = factor;
            self.load += 1.0 / f64::from(factor);
            self.schedule.set(slot, t.read_lane(), at);
        }
        for (slot, at) in settled {
            self.set_finished(slot, true)?;
            self.reschedule(slot, at, false);
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The base poll interval: `poll_interval`, or the backstop while events flow.
    fn interval_ms(&self) -> u64 {
        let d = match self.mode {
            push::Mode::Tight => self.active.config.deadline.poll_interval,
            push::Mode::Relaxed => self.active.config.events.backstop_interval,
        };
        d.as_millis().max(1) as u64
    }

    fn finished_interval_ms(&self) -> u64 {
        self.active
            .config
            .deadline
            .finished_poll_interval
            .as_millis()
            .max(1) as u64
    }

    /// Terminal for longer than the grace period: finished.
    fn settled(&self, slot: Slot) -> bool {
        let since = self
            .tracked
            .get(slot)
            .and_then(|t| t.state.as_ref())
            .and_then(|s| s.terminal_since);
        crate::watch::schedule::settled(since, self.w.clock.now(), &self.active.config.deadline)
    }

    /// How many times less often than the base interval to poll this job.
    fn factor(&self, t: &Tracked) -> u32 {
        if t.finished {
            return (self.finished_interval_ms() / self.interval_ms()).clamp(1, u32::MAX as u64)
                as u32;
        }
        // While events flow, the backstop interval is the whole of polling's
        // schedule: events, not adaptive intervals, keep active jobs current.
        if self.mode == push::Mode::Relaxed {
            return 1;
        }
        let st = t.state.as_ref();
        let now = self.w.clock.now();
        crate::watch::schedule::poll_factor(
            st.map(|s| &s.status),
            st.map_or(now, |s| s.since),
            now,
            &self.active.config.deadline,
        )
    }

    /// Schedules the job in `slot` at `at`, or one (adapted) interval from now when
    /// `after_poll` is set.
    fn reschedule(&mut self, slot: Slot, at: u64, after_poll: bool) {
        // A job no longer tracked (unsubscribed mid-poll) is not scheduled again.
        let Some(t) = self.tracked.get(slot) else {
            return;
        };
        let factor = self.factor(t);
        let lane = t.read_lane();
        let due = if after_poll {
            self.now_ms() + self.interval_ms() * u64::from(factor)
        } else {
            at
        };
        if let Some(t) = self.tracked.get_mut(slot) {
            if self.schedule.contains(slot) {
                self.load -= 1.0 / f64::from(t.factor);
            }
            t.factor = factor;
        }
        self.load += 1.0 / f64::from(factor);
        self.schedule.set(slot, lane, due);
    }

    fn unschedule(&mut self, slot: Slot) {
        if self.schedule.contains(slot) {
            if let Some(t) = self.tracked.get(slot) {
                self.load -= 1.0 / f64::from(t.factor);
            }
            self.schedule.remove(slot);
        }
    }

    /// Puts the job in its lane: the first of its teams by name (called when its
    /// subscriptions change).
    fn place(&mut self, slot: Slot) {
        let Some(t) = self.tracked.get(slot) else {
            return;
        };
        let team = t.lane_team();
        let weight = self.active.config.team(team).map_or(1.0, |t| t.weight);
        let lane = self.schedule.lane(team, weight);
        if let Some(t) = self.tracked.get_mut(slot) {
            t.lane = lane;
        }
    }

    /// Stops following the job in `slot`.
    fn forget(&mut self, slot: Slot) -> Option<Tracked> {
        self.answer(slot, false);
        self.unschedule(slot);
        let t = self.tracked.remove(slot)?;
        self.w.health.drop_view(&t.key);
        Some(t)
    }

    fn apply(&mut self, change: SubChange) -> Result<(), StoreError> {
        match change {
            SubChange::Added(sub) if !sub.is_active() => {}
            SubChange::Added(sub) => {
                let slot = match self.tracked.slot(&sub.job) {
                    Some(slot) => slot,
                    None => {
                        let state = blocking(|| self.w.store.job_state(&sub.job))?.map(Known::from);
                        self.tracked
                            .slot_or_insert(sub.job.clone(), |key| Tracked::new(key, state))
                    }
                };
                if let Some(t) = self.tracked.get_mut(slot) {
                    t.subs.retain(|s| !s.id.is(&sub.id));
                    t.subs.push(self.interner.interest(&sub));
                    t.subs.shrink_to_fit();
                    // A new active subscriber reads the job at the normal pace; it
                    // finishes again after its next read if it is still settled.
                    t.finished = false;
                }
                self.place(slot);
                // A new subscriber wants a fresh look, even at a settled job.
                let now = self.now_ms();
                self.reschedule(slot, now, false);
            }
            SubChange::Watches => self.api_watches = None,
            SubChange::Removed(sub) => self.drop_sub(&sub, false)?,
            SubChange::Retired(sub) => self.drop_sub(&sub, true)?,
        }
        Ok(())
    }

    /// A subscription is gone (unsubscribed, or `retired` by the sweep); a job
    /// nothing follows any more is dropped, and a retired one's state with it.
    fn drop_sub(&mut self, sub: &Subscription, retired: bool) -> Result<(), StoreError> {
        let Some(slot) = self.tracked.slot(&sub.job) else {
            return Ok(());
        };
        let empty = self.tracked.get_mut(slot).is_none_or(|t| {
            t.subs.retain(|s| !s.id.is(&sub.id));
            t.subs.is_empty()
        });
        if !empty {
            // A job whose lane changed is read in its new one from its next turn.
            self.place(slot);
            return Ok(());
        }
        self.forget(slot);
        if retired {
            let store = self.w.store.clone();
            blocking(|| store.delete_job_state(&sub.job))?;
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
        let rps = active.config.discovery_budget();
        if rps != self.active.config.discovery_budget() {
            self.discovery_budget.set_max(rps);
        }
        let cfg = active.config.clone();
        self.schedule
            .set_weights(|team| cfg.team(team).map(|t| t.weight));
        self.active = active;
        self.enforce_allow_lists()
    }

    /// Ends the subscriptions their team's allow-lists no longer admit (a reload
    /// narrowed them, or the config changed while the service was down).
    fn enforce_allow_lists(&mut self) -> Result<(), StoreError> {
        let teams = &self.active.config.teams;
        let mut outside: Vec<(Slot, String, String)> = Vec::new();
        for (slot, t) in self.tracked.iter() {
            for s in &t.subs {
                if let Some(team) = teams.iter().find(|x| *x.name == *s.team)
                    && let Err(why) = team.admits(&t.key)
                {
                    outside.push((slot, s.id.to_string(), why));
                }
            }
        }
        for (slot, id, why) in outside {
            let reason = format!("outside the team's allow-list: {why}");
            let store = self.w.store.clone();
            blocking(|| store.end_subscriptions_by_id(std::slice::from_ref(&id), &reason))?;
            let Some(t) = self.tracked.get_mut(slot) else {
                continue;
            };
            tracing::warn!(job = %t.key, subscription = %id, %reason, "subscription ended");
            t.subs.retain(|s| !s.id.is(&id));
            if t.subs.is_empty() {
                self.forget(slot);
            } else {
                self.place(slot);
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
            self.take_mode();
            while let Some(batch) = self.pushed.as_mut().and_then(|p| p.try_recv().ok()) {
                self.hinted(batch).await?;
            }
            self.w.health.set_watched_jobs(self.schedule.len());
            metrics::gauge!("deadline_notifier_watched_jobs").set(self.schedule.len() as f64);
            let now = self.now_ms();
            if self.pass.is_none() && now >= self.next_discovery {
                self.start_pass()?;
            }
            // Polling and discovery draw on separate buckets, so neither can use up
            // the other's share; polling goes first when both may go.
            let mut wait = Duration::from_secs(3600);
            if let Some(next) = self.schedule.next_due() {
                // A batch goes out when the earliest job is due, and fills up with
                // the jobs due next, up to an eighth of an interval early (or up to
                // the next batch's turn, if later): calls go out full, so API calls
                // per job-check stay at 1/100, and no job is read much early.
                let calls = (self.load / BATCH_LIMIT as f64).ceil().max(1.0);
                let spacing = (self.interval_ms() as f64 / calls) as u64;
                let lookahead = spacing.max(self.interval_ms() / 8);
                if next <= now {
                    match self.budget.wait(now) {
                        0 => {
                            self.poll_batch(now + lookahead).await?;
                            continue;
                        }
                        ms => wait = Duration::from_millis(ms),
                    }
                } else {
                    wait = Duration::from_millis(next - now);
                }
            }
            if self.pass.is_some() {
                match self.discovery_budget.wait(now) {
                    0 => {
                        self.discover_step().await?;
                        continue;
                    }
                    ms => wait = wait.min(Duration::from_millis(ms)),
                }
            } else {
                wait = wait.min(Duration::from_millis(
                    self.next_discovery.saturating_sub(now).max(1),
                ));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Some(c) = self.w.changes.recv() => self.apply(c)?,
                Some(batch) = events::next(&mut self.pushed) => self.hinted(batch).await?,
                _ = events::mode_changed(&mut self.mode_rx) => {}
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
        let keys: Vec<Due> = batch
            .into_iter()
            .filter_map(|(slot, _)| {
                let key = self.tracked.get(slot)?.key.clone();
                Some(Due { slot, key })
            })
            .collect();
        match self.w.client.fetch(&keys).await {
            Ok(results) => {
                self.budget.on_success();
                self.w
                    .health
                    .deadline_ok(self.w.clock.now().timestamp_millis());
                // The store's group commit makes these durable; workers pick the
                // messages up only then.
                blocking(|| -> Result<(), StoreError> {
                    for (due, fetched) in results {
                        // The same job still (nothing removes one while its read
                        // is out, but a slot is reused once freed).
                        if self
                            .tracked
                            .get(due.slot)
                            .is_some_and(|t| Arc::ptr_eq(&t.key, &due.key))
                        {
                            let hinted = self.awaiting.contains_key(&due.slot);
                            if matches!(fetched, Fetched::Failed(_)) {
                                self.answer_again(due.slot);
                            }
                            let transition = self.handle(due.slot, fetched)?;
                            if transition && !hinted && self.mode == push::Mode::Relaxed {
                                // A backstop poll found what no event announced while
                                // events flow: a steady count means events go missing.
                                metrics::counter!(
                                    "deadline_notifier_transitions_found_by_polling_total"
                                )
                                .increment(1);
                            }
                            self.answer(due.slot, transition);
                        }
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
                    self.reschedule(k.slot, 0, true);
                    self.answer_again(k.slot);
                }
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

    /// The job has been terminal for `terminal_grace` (`finished`), or a finished
    /// one moves again (a requeue): its subscriptions change state, and its reads
    /// move to the finished pace, or back.
    fn set_finished(&mut self, slot: Slot, finished: bool) -> Result<(), StoreError> {
        let Some(t) = self.tracked.get_mut(slot) else {
            return Ok(());
        };
        t.finished = finished;
        let ids: Vec<String> = t.subs.iter().map(|s| s.id.to_string()).collect();
        let key = t.key.clone();
        let name = self.w.health.name(&key);
        let (state, now) = (
            if finished { "finished" } else { "active" },
            self.w.clock.now(),
        );
        let changed =
            self.w
                .store
                .set_subscription_states(&ids, state, now, name.as_deref(), None)?;
        tracing::info!(job = %key, subscriptions = changed.len(), state, "subscriptions {state}");
        Ok(())
    }

    /// Carries out one read; returns whether it found a transition.
    fn handle(&mut self, slot: Slot, fetched: Fetched) -> Result<bool, StoreError> {
        let Some(key) = self.tracked.get(slot).map(|t| t.key.clone()) else {
            return Ok(false);
        };
        let mut transition = false;
        match fetched {
            Fetched::Found(snap) => {
                self.w.health.clear_poll_error(&key);
                self.w.health.refresh_view(&key, &snap, self.w.clock.now());
                transition = self.observe(slot, *snap)?;
                let finished = self.tracked.get(slot).is_some_and(|t| t.finished);
                match (self.settled(slot), finished) {
                    (true, false) => self.set_finished(slot, true)?,
                    (false, true) => self.set_finished(slot, false)?,
                    _ => {}
                }
                self.reschedule(slot, 0, true);
            }
            Fetched::Gone(reason) => {
                self.w.health.clear_poll_error(&key);
                let ids: Vec<String> = self
                    .tracked
                    .get(slot)
                    .map(|t| t.subs.iter().map(|s| s.id.to_string()).collect())
                    .unwrap_or_default();
                let n = self.w.store.end_subscriptions_by_id(&ids, &reason)?;
                tracing::warn!(job = %key, subscriptions = n, %reason, "job no longer exists in Deadline Cloud; subscription ended");
                self.forget(slot);
            }
            Fetched::Failed(reason) => {
                // Once per distinct error, not once per poll.
                if self.w.health.set_poll_error(&key, &reason) {
                    tracing::warn!(job = %key, %reason, "could not read job; will retry every interval");
                }
                self.reschedule(slot, 0, true);
            }
        }
        Ok(transition)
    }

    /// Diffs one observation and, if the state changed, commits it with its messages.
    /// Returns whether it found events.
    fn observe(&mut self, slot: Slot, observed: Observed) -> Result<bool, StoreError> {
        let Some(t) = self.tracked.get(slot) else {
            return Ok(false);
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
            if let Some(k) = self.tracked.get_mut(slot).and_then(|t| t.state.as_mut()) {
                k.progress = look.progress;
            }
            return Ok(false);
        }
        // Changed (or first seen): only now is the full snapshot built.
        let cur = observed.status.clone();
        let snap = observed.snapshot((*t.key).clone());
        if self.active.config.people.owner(&snap.created_by).is_none()
            && self.w.health.note_unmapped(&snap.created_by, now)
        {
            self.w.store.note_unmapped(&snap.created_by, now)?;
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
        if let Some(t) = self.tracked.get_mut(slot) {
            t.state = Some(Known::from(plan.state));
        }
        Ok(!plan.events.is_empty())
    }
}
