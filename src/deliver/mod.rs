//! Delivery workers: one per channel. A worker sends only what the store has made
//! durable, keeps order per (channel, job), and leaves every decision to
//! [`decide`]; this file holds the effects (store, HTTP, metrics, logs).
//!
//! `decide` is pure (layer "decisions": `domain`, `notify` only); this loop may also
//! import the store, `notify::send` and `app::{live, telemetry}`.
pub mod decide;
mod living;
pub mod record;

use crate::app::live::{Active, Live};
use crate::clock::SharedClock;
use crate::domain::{ChannelState, OutboxEntry};
use crate::notify::Channel;
use crate::notify::retry::Verdict;
use crate::store::{Store, StoreError, Wakers, channel_key};
use chrono::{DateTime, Utc};
use decide::{BeforeSend, Decision, Destinations, Next, Queue};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// What each worker has queued (count, oldest creation time) and holds for a
/// digest, for `/metrics` and `/v1/channels` without reading the store; and the
/// channels whose held messages a person asked to send now.
#[derive(Clone, Default)]
pub struct Backlogs {
    queued: Arc<Mutex<HashMap<(String, String), Backlog>>>,
    held: Arc<Mutex<HashMap<(String, String), Held>>>,
    flush: Arc<Mutex<HashSet<(String, String)>>>,
    /// Whether any flush is asked for: the workers' every turn checks this alone.
    flush_asked: Arc<std::sync::atomic::AtomicBool>,
}

/// Queued messages and the creation time of the oldest.
type Backlog = (usize, Option<DateTime<Utc>>);

/// Messages held for a digest, and when it goes.
pub type Held = (usize, Option<DateTime<Utc>>);

fn key(team: &str, channel: &str) -> (String, String) {
    (team.to_string(), channel.to_string())
}

impl Backlogs {
    fn set(&self, team: &str, channel: &str, n: usize, oldest: Option<DateTime<Utc>>) {
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key(team, channel), (n, oldest));
    }

    fn remove(&self, team: &str, channel: &str) {
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(team, channel));
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(team, channel));
    }

    fn set_held(&self, team: &str, channel: &str, n: usize, next: Option<DateTime<Utc>>) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key(team, channel), (n, next));
    }

    /// Held messages of a channel, and when its digest goes.
    pub fn held(&self, team: &str, channel: &str) -> Held {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key(team, channel))
            .copied()
            .unwrap_or((0, None))
    }

    /// (team, channel, held) per running worker.
    pub fn held_snapshot(&self) -> Vec<(String, String, usize)> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((t, c), (n, _))| (t.clone(), c.clone(), *n))
            .collect()
    }

    /// Asks the channel's worker to send what it holds now, as one digest (the
    /// caller wakes it).
    pub fn request_flush(&self, team: &str, channel: &str) {
        self.flush
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key(team, channel));
        self.flush_asked
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn take_flush(&self, team: &str, channel: &str) -> bool {
        if !self.flush_asked.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let mut f = self.flush.lock().unwrap_or_else(|e| e.into_inner());
        let taken = f.remove(&key(team, channel));
        if f.is_empty() {
            self.flush_asked
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        taken
    }

    /// (team, channel, queued, oldest) per running worker.
    pub fn snapshot(&self) -> Vec<(String, String, usize, Option<DateTime<Utc>>)> {
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((t, c), (n, o))| (t.clone(), c.clone(), *n, *o))
            .collect()
    }
}

/// Sends of different jobs a worker keeps in flight on one channel at most: a
/// receiver's latency then no longer caps the channel at one message per round
/// trip. A job's own messages still go one at a time, in order; pacing and the
/// breaker (one probe at a time) still apply.
pub const IN_FLIGHT_PER_CHANNEL: usize = 8;

/// Loaded entries a worker keeps decoded, so a send does not read and decode its
/// entry a second time; beyond this (a long backlog) entries are read when due,
/// which bounds a worker's memory whatever the backlog. Safe because only the
/// channel's own worker changes or removes an entry that is not awaiting triage,
/// and entries awaiting triage are never kept.
const KEPT_ENTRIES: usize = 256;

/// What a finished send means for the worker's queue.
#[derive(Debug, Clone, Copy)]
enum QueueOp {
    /// Settled (sent, dead-lettered, gone): it leaves the queue.
    Remove,
    /// Sent; `recovered` if that closed the destination's breaker.
    Delivered { recovered: bool },
    /// Retried at this time.
    RetryAt(DateTime<Utc>),
    /// The channel is disabled and keeps its messages: this one waits until the
    /// channel is enabled again, or until this time (then it gives up).
    Held(DateTime<Utc>),
}

impl QueueOp {
    fn apply(self, seq: u64, queue: &mut Queue, now: DateTime<Utc>) {
        match self {
            QueueOp::Remove => queue.remove(seq),
            QueueOp::Delivered { recovered } => {
                queue.remove(seq);
                if recovered {
                    // What waited on a back-off may go now.
                    queue.pull_in(now);
                }
            }
            QueueOp::RetryAt(at) | QueueOp::Held(at) => queue.set_due(seq, at),
        }
    }
}

/// Destinations shared by all workers.
pub type SharedDestinations = Arc<Mutex<Destinations>>;

pub struct Worker {
    pub store: Store,
    pub live: Live,
    pub team: String,
    pub channel: String,
    pub clock: SharedClock,
    pub wake: Arc<Notify>,
    pub dests: SharedDestinations,
    pub backlogs: Backlogs,
    /// Where deliveries are recorded (shared by all workers).
    pub recorder: record::Recorder,
    /// Repeated identical warnings collapse to one line a minute.
    pub warns: Mutex<decide::WarnGate>,
    /// What Slack app channels share (workspace links, member lookups).
    pub slack: Arc<living::Shared>,
    /// What this worker last published of its held messages (published on change).
    pub last_held: Mutex<Held>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("delivery worker for {channel} panicked: {message}")]
    Panicked { channel: String, message: String },
}

/// Runs one worker per configured channel until shutdown, starting workers for
/// channels a reload adds; a worker whose channel a reload removed ends by itself
/// (its queued messages stay in the outbox until the channel returns).
pub async fn supervise(
    store: Store,
    live: Live,
    clock: SharedClock,
    wakers: Wakers,
    backlogs: Backlogs,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DeliveryError> {
    let (recorder, recording) = record::Recorder::start(store.clone());
    let mut sv = Supervisor {
        store: store.clone(),
        live: live.clone(),
        clock,
        wakers,
        backlogs,
        dests: SharedDestinations::default(),
        recorder,
        worker_shutdown: shutdown.clone(),
        tasks: JoinSet::new(),
        running: HashSet::new(),
        names: HashMap::new(),
        slack: Arc::default(),
    };
    let mut updates = live.subscribe();
    sv.spawn_missing();
    loop {
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_ok() {
                    sv.spawn_missing();
                    // Workers of removed channels may be asleep; wake them to notice.
                    for key in &sv.running {
                        if let Some((team, channel)) = key.split_once('/') {
                            sv.wakers.wake(team, channel);
                        }
                    }
                }
            }
            Some(joined) = sv.tasks.join_next_with_id() => match joined {
                Ok((id, Ok(key))) => {
                    sv.names.remove(&id);
                    sv.running.remove(&key);
                    // Removed and re-added between two looks: start it again.
                    sv.spawn_missing();
                }
                Ok((_, Err(e))) => return Err(e.into()),
                Err(e) => {
                    let channel = sv.names.get(&e.id()).cloned().unwrap_or_default();
                    return Err(DeliveryError::Panicked { channel, message: e.to_string() });
                }
            },
            _ = shutdown.changed(), if !*shutdown.borrow() => {}
        }
        if *shutdown.borrow() && sv.tasks.is_empty() {
            // The recorder ends once the last handle is gone, after its last
            // commit: only then has delivery let go of the store.
            drop(sv);
            let _ = recording.await;
            return Ok(());
        }
    }
}

struct Supervisor {
    store: Store,
    live: Live,
    clock: SharedClock,
    wakers: Wakers,
    backlogs: Backlogs,
    dests: SharedDestinations,
    recorder: record::Recorder,
    worker_shutdown: watch::Receiver<bool>,
    tasks: JoinSet<Result<String, StoreError>>,
    /// Channel keys with a live worker.
    running: HashSet<String>,
    /// Which channel each task serves, to name it if it panics.
    names: HashMap<tokio::task::Id, String>,
    slack: Arc<living::Shared>,
}

impl Supervisor {
    fn spawn_missing(&mut self) {
        if *self.worker_shutdown.borrow() {
            return;
        }
        let active = self.live.current();
        for t in &active.config.teams {
            for c in &t.channels {
                let key = channel_key(&t.name, &c.name);
                if self.running.contains(&key) {
                    continue;
                }
                let w = Worker {
                    store: self.store.clone(),
                    live: self.live.clone(),
                    team: t.name.clone(),
                    channel: c.name.clone(),
                    clock: self.clock.clone(),
                    wake: self.wakers.get(&t.name, &c.name),
                    dests: self.dests.clone(),
                    backlogs: self.backlogs.clone(),
                    recorder: self.recorder.clone(),
                    warns: Mutex::default(),
                    slack: self.slack.clone(),
                    last_held: Mutex::new((0, None)),
                };
                let id = self.tasks.spawn(w.run(self.worker_shutdown.clone())).id();
                self.running.insert(key.clone());
                self.names.insert(id, key);
            }
        }
    }
}

impl Worker {
    fn count(&self, e: &OutboxEntry, outcome: &'static str, reason: String) {
        metrics::counter!(
            "deadline_notifier_deliveries_total",
            "team" => e.team.clone(),
            "channel" => e.channel.clone(),
            "kind" => e.kind.clone(),
            "event" => e.event.as_str(),
            "outcome" => outcome,
            "reason" => reason,
        )
        .increment(1);
    }

    fn dests(&self) -> std::sync::MutexGuard<'_, Destinations> {
        self.dests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns the channel's key when shutting down or when a reload removed the channel.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<String, StoreError> {
        let me = Arc::new(self);
        let mut flying = JoinSet::new();
        let out = Arc::clone(&me).serve(shutdown, &mut flying).await;
        // In-flight sends complete even during shutdown (the grace period in `app`
        // bounds how long that may take), so a sent message is recorded as sent.
        while let Some(done) = flying.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::error!(team = %me.team, channel = %me.channel, error = %e, "recording a delivery failed during shutdown");
            }
        }
        out
    }

    async fn serve(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
        flying: &mut JoinSet<Result<(u64, QueueOp), StoreError>>,
    ) -> Result<String, StoreError> {
        let key = channel_key(&self.team, &self.channel);
        let mut durable = self.store.durable();
        let mut queue = Queue::default();
        let mut awaiting = std::collections::BTreeSet::new();
        let mut kept: HashMap<u64, OutboxEntry> = HashMap::new();
        // Entries up to `loaded` (inclusive) are in `queue`; the next load starts after it.
        let mut next_from: u64 = 0;
        // The channel is disabled and holds its messages (until enabled).
        let mut held = false;
        loop {
            if *shutdown.borrow() {
                self.backlogs.remove(&self.team, &self.channel);
                return Ok(key);
            }
            // One config set per attempt: a reload applies from the next message on.
            let active = self.live.current();
            let Some(channel) = active
                .config
                .team(&self.team)
                .and_then(|t| t.channel(&self.channel))
                .cloned()
            else {
                self.channel_removed().await?;
                return Ok(key);
            };
            // Only what is on disk may leave: a crash can then never re-detect a
            // transition whose message was already sent.
            let upto = *durable.borrow_and_update();
            if upto >= next_from {
                self.load(next_from, upto, &mut queue, &mut awaiting, &mut kept)
                    .await?;
                next_from = upto + 1;
            }
            if !awaiting.is_empty() {
                self.recheck_triage(&mut queue, &mut awaiting).await?;
            }
            if held && !self.disabled().await? {
                // Enabled again: what waited goes now, in order.
                held = false;
                queue.pull_in(self.clock.now());
            }
            self.backlogs
                .set(&self.team, &self.channel, queue.len(), queue.oldest());
            let now = self.clock.now();
            let digest_at = self
                .digest_turn(&active, &channel, &mut queue, &mut kept, now)
                .await?;
            let dest = channel.destination();
            let url: &str = &dest;
            let tripped = self.dests().tripped(url);
            // Different jobs' messages may be in flight together; a failing endpoint
            // gets one probe at a time, on the breaker's schedule, whatever the
            // messages' own back-off says.
            let room = flying.len() < if tripped { 1 } else { IN_FLIGHT_PER_CHANNEL };
            let choice = match (room, tripped) {
                (false, _) => Next::Idle,
                (true, true) => queue.first().map_or(Next::Idle, Next::Send),
                (true, false) => queue.next(now),
            };
            let wait = match choice {
                Next::Send(seq) => {
                    let free_in = self.dests().free_in(url, crate::clock::monotonic());
                    if free_in.is_zero() {
                        let interval = active.config.delivery.interval(channel.kind);
                        self.dests().take(url, interval, crate::clock::monotonic());
                        let newer = channel.app.is_some() && queue.has_later(seq);
                        queue.start(seq);
                        let entry = kept.remove(&seq);
                        flying.spawn(Arc::clone(&self).attempt(active, channel, seq, entry, newer));
                        continue;
                    }
                    free_in
                }
                Next::WaitUntil(t) => (t - now).to_std().unwrap_or(Duration::ZERO),
                Next::Idle => Duration::from_secs(60),
            };
            let wait = match digest_at {
                Some(t) => wait.min((t - now).to_std().unwrap_or(Duration::ZERO)),
                None => wait,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = durable.changed() => {}
                _ = shutdown.changed() => {}
                Some(done) = flying.join_next(), if !flying.is_empty() => {
                    let (seq, op) = match done {
                        Ok(r) => r?,
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    };
                    queue.finish(seq);
                    held |= matches!(op, QueueOp::Held(_));
                    op.apply(seq, &mut queue, self.clock.now());
                }
            }
        }
    }

    /// Queues the durable entries `from..=upto` of this channel.
    async fn load(
        &self,
        from: u64,
        upto: u64,
        queue: &mut Queue,
        awaiting: &mut std::collections::BTreeSet<u64>,
        kept: &mut HashMap<u64, OutboxEntry>,
    ) -> Result<(), StoreError> {
        let (t, c) = (self.team.clone(), self.channel.clone());
        let fresh = self
            .store
            .run(move |s| s.outbox_range(&t, &c, from, upto))
            .await?;
        for e in fresh {
            queue.insert(&e);
            if e.triage_until.is_some() {
                awaiting.insert(e.seq);
            } else if kept.len() < KEPT_ENTRIES {
                kept.insert(e.seq, e);
            }
        }
        Ok(())
    }

    /// Messages waiting for triage are due at its deadline; one whose triage
    /// finished (it woke us) is due now.
    async fn recheck_triage(
        &self,
        queue: &mut Queue,
        awaiting: &mut std::collections::BTreeSet<u64>,
    ) -> Result<(), StoreError> {
        let (t, c, seqs) = (
            self.team.clone(),
            self.channel.clone(),
            awaiting.iter().copied().collect::<Vec<_>>(),
        );
        let now_state = self
            .store
            .run(move |s| {
                seqs.into_iter()
                    .map(|seq| Ok((seq, s.outbox_entry(&t, &c, seq)?)))
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await?;
        for (seq, e) in now_state {
            match e {
                None => {
                    awaiting.remove(&seq);
                    queue.remove(seq);
                }
                Some(e) if e.triage_until.is_none() => {
                    awaiting.remove(&seq);
                    queue.set_due(seq, e.next_attempt_at);
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn publish_held(&self, held: Held) {
        let mut last = self.last_held.lock().unwrap_or_else(|e| e.into_inner());
        if *last != held {
            *last = held;
            self.backlogs
                .set_held(&self.team, &self.channel, held.0, held.1);
        }
    }

    /// Folds what the channel holds into a digest once it is due (or asked for with
    /// `POST /v1/channels/{name}/flush`); returns when the next one is due.
    async fn digest_turn(
        &self,
        active: &Active,
        channel: &Channel,
        queue: &mut Queue,
        kept: &mut HashMap<u64, OutboxEntry>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        // Taken whether or not anything is held: a "send now" with nothing held
        // must not release a later message early.
        let asked = self.backlogs.take_flush(&self.team, &self.channel);
        let (seqs, oldest) = queue.held();
        let Some(oldest) = oldest else {
            self.publish_held((0, None));
            return Ok(None);
        };
        let at = if asked {
            now
        } else {
            channel.defer.release_at(oldest, now)
        };
        if at > now {
            self.publish_held((seqs.len(), Some(at)));
            return Ok(Some(at));
        }
        self.fold(active, channel, &seqs, queue, kept, now).await?;
        self.publish_held((0, None));
        Ok(None)
    }

    /// One digest of the held messages `seqs`: rendered into pages and queued in
    /// their place in one transaction. If it cannot be rendered, the held messages
    /// go one by one instead: late, never lost.
    async fn fold(
        &self,
        active: &Active,
        channel: &Channel,
        seqs: &[u64],
        queue: &mut Queue,
        kept: &mut HashMap<u64, OutboxEntry>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (t, c, wanted) = (self.team.clone(), self.channel.clone(), seqs.to_vec());
        let held: Vec<OutboxEntry> = self
            .store
            .run(move |s| {
                let mut out = Vec::new();
                for seq in wanted {
                    out.extend(s.outbox_entry(&t, &c, seq)?);
                }
                Ok(out)
            })
            .await?;
        for seq in seqs {
            queue.remove(*seq);
            kept.remove(seq);
        }
        if held.is_empty() {
            return Ok(());
        }
        let pages = match active.renderer.digest_pages(&self.team, channel, &held) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(team = %self.team, channel = %self.channel, error = %e, held = held.len(), "the digest could not be rendered; sending the held messages one by one");
                for mut e in held {
                    e.held = false;
                    queue.insert(&e);
                    let saved = e.clone();
                    self.store.run(move |s| s.update_outbox(&saved)).await?;
                }
                return Ok(());
            }
        };
        let first = held[0].webhook_id.clone();
        let event = held[held.len() - 1].event;
        let n = pages.len();
        let entries: Vec<OutboxEntry> = pages
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                // Stable per digest page: a crash before the fold commits leaves the
                // held messages, after it the pages with these ids.
                let id = format!("digest_{first}_{}", i + 1);
                OutboxEntry {
                    digest_of: held.len() as u32,
                    ..OutboxEntry::due_now(
                        id.clone(),
                        &self.team,
                        &self.channel,
                        channel.kind.as_str(),
                        crate::domain::JobKey {
                            farm_id: "digest".into(),
                            queue_id: self.channel.clone().into(),
                            job_id: id.into(),
                        },
                        event,
                        now,
                        payload,
                    )
                }
            })
            .collect();
        let folded = held.len();
        self.store
            .run(move |s| s.fold_into_digest(&held, entries, now))
            .await?;
        metrics::counter!("deadline_notifier_digests_total", "team" => self.team.clone(), "channel" => self.channel.clone())
            .increment(1);
        tracing::info!(team = %self.team, channel = %self.channel, held = folded, pages = n, "digest queued");
        Ok(())
    }

    async fn disabled(&self) -> Result<bool, StoreError> {
        let (t, c) = (self.team.clone(), self.channel.clone());
        let st = self.store.run(move |s| s.channel_state(&t, &c)).await?;
        Ok(st.disabled_reason.is_some())
    }

    async fn channel_removed(&self) -> Result<(), StoreError> {
        self.backlogs.remove(&self.team, &self.channel);
        let (t, c) = (self.team.clone(), self.channel.clone());
        let queued = self.store.run(move |s| s.outbox_len_for(&t, &c)).await?;
        if queued > 0 {
            tracing::warn!(team = %self.team, channel = %self.channel, queued, "channel removed from the configuration; its queued messages stay in the outbox until it is configured again");
        } else {
            tracing::info!(team = %self.team, channel = %self.channel, "channel removed from the configuration");
        }
        Ok(())
    }

    /// One message's send, run beside other jobs' sends; returns what its outcome
    /// means for the worker's queue.
    async fn attempt(
        self: Arc<Self>,
        active: Arc<Active>,
        target: Channel,
        seq: u64,
        kept: Option<OutboxEntry>,
        newer_waiting: bool,
    ) -> Result<(u64, QueueOp), StoreError> {
        let active = &*active;
        let target = &target;
        let (t, c) = (self.team.clone(), self.channel.clone());
        let found = self
            .store
            .run(move |s| {
                let st = s.channel_state(&t, &c)?;
                let e = match kept {
                    Some(e) => Some(e),
                    None => s.outbox_entry(&t, &c, seq)?,
                };
                let dup = match &e {
                    Some(e) => s.was_delivered(&e.webhook_id)?,
                    None => false,
                };
                Ok((st, e, dup))
            })
            .await?;
        let (st, Some(mut e), already) = found else {
            return Ok((seq, QueueOp::Remove));
        };
        let now = self.clock.now();
        let hold = target
            .kind
            .holds_when_disabled()
            .then_some(active.config.delivery.give_up_after);
        match decide::before_send(st.disabled_reason.as_deref(), &e, already, hold, now) {
            BeforeSend::Hold(until) => {
                tracing::debug!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, "channel is disabled; message held until it is enabled");
                return Ok((seq, QueueOp::Held(until)));
            }
            BeforeSend::ChannelDisabled(reason) => {
                let dl = self.dead_letter(&e, reason, now).await?;
                tracing::warn!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, dead_letter = dl, "channel is disabled; message dead-lettered");
                self.count(&e, "dead_letter", "channel_disabled".into());
                return Ok((seq, QueueOp::Remove));
            }
            BeforeSend::Unrenderable(reason) => {
                let dl = self.dead_letter(&e, reason.clone(), now).await?;
                tracing::error!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, dead_letter = dl, %reason, "message could not be rendered; dead-lettered");
                self.count(&e, "dead_letter", "render_error".into());
                return Ok((seq, QueueOp::Remove));
            }
            BeforeSend::Duplicate => {
                self.recorder.delivered(e.clone(), now).await?;
                tracing::info!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, webhook_id = %e.webhook_id, "duplicate suppressed");
                self.count(&e, "duplicate", "already_delivered".into());
                return Ok((seq, QueueOp::Remove));
            }
            BeforeSend::Send { without_triage } => {
                if without_triage {
                    // From now on this message is its fallback, so a retry sends
                    // what this attempt sends.
                    e.triage_until = None;
                    e.snapshot = None;
                    e.transition = None;
                    if e.failure.is_some() {
                        tracing::info!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, "failure details partly gathered in time; sending what was gathered");
                    } else {
                        tracing::info!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, "failure details not gathered in time; sending without them");
                    }
                }
            }
        }
        let verdict = if target.app.is_some() {
            self.deliver_app(active, target, &mut e, newer_waiting)
                .await?
        } else {
            let body = serde_json::to_vec(&e.payload).unwrap_or_default();
            active.sender.send(target, &e.webhook_id, &body).await
        };
        let now = self.clock.now();
        let dest = target.destination();
        let url: &str = &dest;
        let reason_label = match &verdict {
            Verdict::Retry { reason }
            | Verdict::DeadLetter { reason }
            | Verdict::Disable { reason } => crate::app::telemetry::reason_label(reason),
            Verdict::Throttled { .. } => "http_429".into(),
            Verdict::Delivered => "ok".into(),
        };
        let decision =
            decide::after_attempt(verdict, &e, now, &active.config.delivery, rand::random());
        let op = self
            .carry_out(active, decision, e, url, now, reason_label)
            .await?;
        Ok((seq, op))
    }

    /// Carries out what [`decide::after_attempt`] decided: store, queue, pacing, logs
    /// and metrics.
    async fn carry_out(
        &self,
        active: &Active,
        decision: Decision,
        mut e: OutboxEntry,
        url: &str,
        now: DateTime<Utc>,
        reason_label: String,
    ) -> Result<QueueOp, StoreError> {
        let (job, team, channel, event) = (
            e.job.to_string(),
            e.team.clone(),
            e.channel.clone(),
            e.event,
        );
        let op = match decision {
            Decision::Delivered => {
                self.recorder.delivered(e.clone(), now).await?;
                // The destination is back: what waited on a back-off may go now.
                let recovered = self.dests().succeeded(url);
                let latency_ms = (now - e.created_at).num_milliseconds();
                tracing::info!(%job, %team, %channel, %event, webhook_id = %e.webhook_id, attempts = e.attempts + 1, latency_ms, "delivered");
                self.count(&e, "delivered", reason_label);
                metrics::histogram!("deadline_notifier_delivery_latency_seconds", "kind" => e.kind.clone())
                    .record(latency_ms.max(0) as f64 / 1000.0);
                QueueOp::Delivered { recovered }
            }
            Decision::RetryAt {
                at,
                attempts,
                error,
                throttled,
            } => {
                e.attempts = attempts;
                e.next_attempt_at = at;
                e.last_error = Some(error.clone());
                let saved = e.clone();
                self.store.run(move |s| s.update_outbox(&saved)).await?;
                let wait = (at - now).to_std().unwrap_or_default();
                let admitted = self
                    .warns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .admit(&error, crate::clock::monotonic());
                if throttled {
                    self.dests()
                        .block_until(url, crate::clock::monotonic() + wait);
                    if let Some(repeated) = admitted {
                        tracing::warn!(%job, %team, %channel, %event, wait_ms = wait.as_millis() as u64, reason = %error, repeated, "destination rate-limited us; waiting");
                    }
                    self.count(&e, "throttled", reason_label);
                } else {
                    let max = active.config.delivery.breaker_max;
                    self.dests().failed(url, crate::clock::monotonic(), max);
                    if let Some(repeated) = admitted {
                        tracing::warn!(%job, %team, %channel, %event, attempts, retry_in_ms = wait.as_millis() as u64, reason = %error, repeated, "delivery failed; will retry");
                    }
                    self.count(&e, "retry", reason_label);
                }
                QueueOp::RetryAt(at)
            }
            Decision::DeadLetter {
                reason,
                attempts,
                gave_up,
            } => {
                e.attempts = attempts;
                let dl = self.dead_letter(&e, reason.clone(), now).await?;
                if gave_up {
                    tracing::error!(%job, %team, %channel, %event, attempts, dead_letter = dl, %reason, "delivery gave up; dead-lettered");
                    self.count(&e, "dead_letter", "gave_up".into());
                } else {
                    tracing::error!(%job, %team, %channel, %event, dead_letter = dl, %reason, "delivery refused; dead-lettered");
                    self.count(&e, "dead_letter", reason_label);
                }
                QueueOp::Remove
            }
            Decision::Disable { reason, attempts } => {
                e.attempts = attempts;
                let (t, c, r) = (self.team.clone(), self.channel.clone(), reason.clone());
                self.store
                    .run(move |s| {
                        s.set_channel_state(
                            &t,
                            &c,
                            &ChannelState {
                                disabled_reason: Some(r),
                                disabled_at: Some(now),
                            },
                        )
                    })
                    .await?;
                self.count(&e, "disabled", reason_label);
                if let Some(kind) = crate::notify::ChannelKind::named(&e.kind)
                    && kind.holds_when_disabled()
                {
                    // Kept (with what it already did): it goes once the channel is
                    // enabled again, or gives up at `give_up_after`.
                    let until = decide::give_up_at(&e, active.config.delivery.give_up_after);
                    let saved = e.clone();
                    self.store.run(move |s| s.update_outbox(&saved)).await?;
                    tracing::error!(%job, %team, %channel, %event, %reason, "channel disabled until a person acts; its messages stay queued (POST /v1/channels/{{name}}/enable)");
                    return Ok(QueueOp::Held(until));
                }
                let dl = self.dead_letter(&e, reason.clone(), now).await?;
                tracing::error!(%job, %team, %channel, %event, dead_letter = dl, %reason, "destination is gone or revoked; channel disabled");
                QueueOp::Remove
            }
        };
        Ok(op)
    }

    async fn dead_letter(
        &self,
        e: &OutboxEntry,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let e = e.clone();
        self.store
            .run(move |s| s.dead_letter(&e, &reason, now).map(|d| d.id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::devkit::sink::Sink;
    use crate::domain::{Event, JobKey, JobSnapshot, JobState, JobStatus};
    use crate::notify::send::Sender;
    use crate::render::Renderer;

    fn key(n: u8) -> JobKey {
        JobKey {
            farm_id: format!("farm-{}", "a".repeat(32)).into(),
            queue_id: format!("queue-{}", "b".repeat(32)).into(),
            job_id: format!("job-{n:032x}").into(),
        }
    }

    fn entry(n: u8) -> OutboxEntry {
        OutboxEntry::due_now(
            format!("msg_{n}"),
            "lighting",
            "pipeline",
            "webhook",
            key(n),
            Event::Succeeded,
            crate::clock::wall_now(),
            serde_json::json!({"n": n}),
        )
    }

    fn state(n: u8) -> JobState {
        JobState {
            job: key(n),
            status: JobStatus::of(&JobSnapshot::sample(key(n), "x")),
            since: crate::clock::wall_now(),
            terminal_since: None,
            progress: Default::default(),
        }
    }

    /// A worker that is already running must not send an entry whose
    /// commit has not been synced, however it is woken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_leaves_before_its_commit_is_durable() {
        let sink = Sink::new();
        let (addr, _h) = sink.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[store]
path = "{store}"
[delivery]
allow_private_targets = true
[[teams]]
name = "lighting"
tokens = ["lighting-token-0123456789"]
[[teams.channels]]
name = "pipeline"
kind = "webhook"
url = "http://{addr}/hook"
"#,
            store = dir.path().join("s").display()
        );
        let config = Config::from_toml(&text, &dir.path().join("n.toml")).unwrap();
        let store = Store::open(&config.store.path).unwrap();
        let renderer = Renderer::load(&config, None).unwrap();
        let sender = Sender::new(&config.delivery).unwrap();
        let live = Live::new(config, renderer, sender, None, None);
        let wakers = Wakers::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let sup = tokio::spawn(supervise(
            store.clone(),
            live,
            crate::clock::system(),
            wakers.clone(),
            Backlogs::default(),
            stop_rx,
        ));
        let wait_for = |n: usize| {
            let sink = sink.clone();
            async move {
                let deadline = crate::clock::monotonic() + Duration::from_secs(20);
                while sink.delivered().len() < n {
                    assert!(crate::clock::monotonic() < deadline, "never delivered {n}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        // The first message goes through normally: the worker is running and warm.
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.commit_observation(&state(1), vec![entry(1)]))
            .await
            .unwrap()
            .unwrap();
        wait_for(1).await;

        let hold = store.hold_syncs();
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.commit_observation(&state(2), vec![entry(2)]))
            .await
            .unwrap()
            .unwrap();
        // Every way a worker can be woken, while the sync is held back.
        for _ in 0..20 {
            wakers.wake("lighting", "pipeline");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            sink.received().len(),
            1,
            "a message left before its commit was synced"
        );
        // The control: releasing the sync lets the message go. It must arrive after
        // the release, never before it.
        let released = crate::clock::monotonic();
        drop(hold);
        wait_for(2).await;
        let arrived = sink.received()[1].at.expect("arrival time");
        assert!(
            arrived >= released,
            "a message left before its commit was synced"
        );
        let ids: Vec<_> = sink
            .delivered()
            .iter()
            .map(|r| r.headers["webhook-id"].clone())
            .collect();
        assert_eq!(ids, ["msg_1", "msg_2"]);
        stop_tx.send(true).unwrap();
        sup.await.unwrap().unwrap();
    }
}
