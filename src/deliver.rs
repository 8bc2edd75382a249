//! Delivery workers: one per channel, each sending its oldest outbox entry first,
//! so messages leave in transition order and one slow channel never holds up another.
use crate::clock::SharedClock;
use crate::config::{Channel, ChannelKind};
use crate::notify::retry::{self, Verdict};
use crate::reload::{Active, Live};
use crate::store::{ChannelState, OutboxEntry, Store, StoreError, channel_key};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Wakes a channel's worker when something is queued for it. Channels can appear on
/// reload, so a waker is created on first use by either side.
#[derive(Clone, Default)]
pub struct Wakers(Arc<Mutex<HashMap<String, Arc<Notify>>>>);

impl Wakers {
    pub fn wake(&self, team: &str, channel: &str) {
        self.get(team, channel).notify_one();
    }

    fn get(&self, team: &str, channel: &str) -> Arc<Notify> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel_key(team, channel))
            .or_default()
            .clone()
    }
}

/// Minimum spacing between posts to one destination, per the platforms' limits.
fn pace(kind: ChannelKind, cfg: &crate::config::DeliveryConfig) -> Duration {
    match kind {
        ChannelKind::Slack => cfg.slack_interval,
        ChannelKind::Teams => cfg.teams_interval,
        ChannelKind::Webhook => cfg.webhook_interval,
    }
}

/// Spacing and back-off per destination URL, shared by every channel posting to it,
/// so two channels with one Slack webhook still make ~1 post/s, and a 429 pauses both.
#[derive(Clone, Default)]
pub struct Pacer(Arc<Mutex<HashMap<String, Instant>>>);

impl Pacer {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long until `dest` may be posted to.
    pub fn free_in(&self, dest: &str) -> Duration {
        self.lock().get(dest).map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        })
    }

    /// Takes the next slot for `dest`; the following one is `interval` later.
    pub fn reserve(&self, dest: &str, interval: Duration) -> Instant {
        let now = Instant::now();
        let mut g = self.lock();
        let slot = g.get(dest).map_or(now, |t| (*t).max(now));
        g.insert(dest.to_string(), slot + interval);
        slot
    }

    /// Nothing goes to `dest` before `until` (a 429's Retry-After).
    pub fn block_until(&self, dest: &str, until: Instant) {
        let mut g = self.lock();
        let t = g.entry(dest.to_string()).or_insert(until);
        *t = (*t).max(until);
    }
}

pub struct Worker {
    pub store: Store,
    pub live: Live,
    pub team: String,
    pub channel: String,
    pub clock: SharedClock,
    pub wake: Arc<Notify>,
    pub pacer: Pacer,
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
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DeliveryError> {
    let mut sv = Supervisor {
        store,
        live: live.clone(),
        clock,
        wakers,
        pacer: Pacer::default(),
        worker_shutdown: shutdown.clone(),
        tasks: JoinSet::new(),
        running: HashSet::new(),
        names: HashMap::new(),
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
            return Ok(());
        }
    }
}

struct Supervisor {
    store: Store,
    live: Live,
    clock: SharedClock,
    wakers: Wakers,
    pacer: Pacer,
    worker_shutdown: watch::Receiver<bool>,
    tasks: JoinSet<Result<String, StoreError>>,
    /// Channel keys with a live worker.
    running: HashSet<String>,
    /// Which channel each task serves, to name it if it panics.
    names: HashMap<tokio::task::Id, String>,
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
                    pacer: self.pacer.clone(),
                };
                let id = self.tasks.spawn(w.run(self.worker_shutdown.clone())).id();
                self.running.insert(key.clone());
                self.names.insert(id, key);
            }
        }
    }
}

impl Worker {
    fn count(&self, e: &OutboxEntry, kind: ChannelKind, outcome: &'static str, reason: String) {
        metrics::counter!(
            "deadline_notifier_deliveries_total",
            "team" => e.team.clone(),
            "channel" => e.channel.clone(),
            "kind" => kind.as_str(),
            "event" => e.event.as_str(),
            "outcome" => outcome,
            "reason" => reason,
        )
        .increment(1);
    }

    /// Returns the channel's key when shutting down or when a reload removed the channel.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<String, StoreError> {
        let key = channel_key(&self.team, &self.channel);
        loop {
            if *shutdown.borrow() {
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
                let queued = self.store.outbox_len_for(&self.team, &self.channel)?;
                if queued > 0 {
                    tracing::warn!(team = %self.team, channel = %self.channel, queued, "channel removed from the configuration; its queued messages stay in the outbox until it is configured again");
                } else {
                    tracing::info!(team = %self.team, channel = %self.channel, "channel removed from the configuration");
                }
                return Ok(key);
            };
            let pace = pace(channel.kind, &active.config.delivery);
            let dest = channel.url.expose().to_string();
            let wait = match self.store.outbox_head(&self.team, &self.channel)? {
                None => Duration::from_secs(5),
                Some(entry) => {
                    let due_in = (entry.next_attempt_at - self.clock.now())
                        .to_std()
                        .unwrap_or(Duration::ZERO);
                    let wait = due_in.max(self.pacer.free_in(&dest));
                    if wait.is_zero() {
                        // Another worker posting to the same URL may have taken the
                        // slot meanwhile; wait for ours.
                        let slot = self.pacer.reserve(&dest, pace);
                        tokio::time::sleep_until(slot).await;
                        // In-flight sends complete even during shutdown; the grace
                        // period in `app` bounds how long that may take.
                        self.attempt(&active, &channel, entry).await?;
                        continue;
                    }
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn attempt(
        &self,
        active: &Active,
        target: &Channel,
        mut e: OutboxEntry,
    ) -> Result<(), StoreError> {
        let kind = target.kind;
        let now = self.clock.now();
        let st = self.store.channel_state(&self.team, &self.channel)?;
        if let Some(reason) = st.disabled_reason {
            let dl = self
                .store
                .dead_letter(&e, &format!("channel disabled: {reason}"), now)?;
            tracing::warn!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, dead_letter = dl.id, "channel is disabled; message dead-lettered");
            self.count(&e, kind, "dead_letter", "channel_disabled".into());
            return Ok(());
        }
        if e.payload.is_null() {
            let reason = e.last_error.clone().unwrap_or_else(|| "no payload".into());
            let dl = self.store.dead_letter(&e, &reason, now)?;
            tracing::error!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, dead_letter = dl.id, %reason, "message could not be rendered; dead-lettered");
            self.count(&e, kind, "dead_letter", "render_error".into());
            return Ok(());
        }
        if self.store.was_delivered(&e.webhook_id)? {
            // Already sent (e.g. a replayed copy): at-least-once, but not twice on purpose.
            self.store.delivered(&e, now)?;
            tracing::info!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, webhook_id = %e.webhook_id, "duplicate suppressed");
            self.count(&e, kind, "duplicate", "already_delivered".into());
            return Ok(());
        }
        let body = serde_json::to_vec(&e.payload).unwrap_or_default();
        let verdict = active.sender.send(target, &e.webhook_id, &body).await;
        let now = self.clock.now();
        let span = (
            e.job.to_string(),
            e.team.clone(),
            e.channel.clone(),
            e.event,
        );
        let (job, team, channel, event) = (&span.0, &span.1, &span.2, span.3);
        match verdict {
            Verdict::Delivered => {
                self.store.delivered(&e, now)?;
                let latency_ms = (now - e.created_at).num_milliseconds();
                tracing::info!(%job, %team, %channel, %event, webhook_id = %e.webhook_id, attempts = e.attempts + 1, latency_ms, "delivered");
                self.count(&e, kind, "delivered", "ok".into());
                metrics::histogram!("deadline_notifier_delivery_latency_seconds", "kind" => kind.as_str())
                    .record(latency_ms.max(0) as f64 / 1000.0);
            }
            Verdict::Throttled { wait, reason } => {
                e.next_attempt_at = now + chrono::Duration::from_std(wait).unwrap_or_default();
                self.pacer
                    .block_until(target.url.expose(), Instant::now() + wait);
                e.last_error = Some(reason.clone());
                self.store.update_outbox(&e)?;
                tracing::warn!(%job, %team, %channel, %event, wait_ms = wait.as_millis() as u64, %reason, "destination rate-limited us; waiting");
                self.count(&e, kind, "throttled", "http_429".into());
            }
            Verdict::Retry { reason } => {
                e.attempts += 1;
                e.last_error = Some(reason.clone());
                let age = (now - e.created_at).to_std().unwrap_or_default();
                if age >= active.config.delivery.give_up_after {
                    let dl = self.store.dead_letter(
                        &e,
                        &format!("gave up after {} attempts: {reason}", e.attempts),
                        now,
                    )?;
                    tracing::error!(%job, %team, %channel, %event, attempts = e.attempts, dead_letter = dl.id, %reason, "delivery gave up; dead-lettered");
                    self.count(&e, kind, "dead_letter", "gave_up".into());
                } else {
                    let delay = retry::backoff(
                        &active.config.delivery.retry_schedule,
                        e.attempts,
                        rand::random::<f64>(),
                    );
                    e.next_attempt_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                    self.store.update_outbox(&e)?;
                    tracing::warn!(%job, %team, %channel, %event, attempts = e.attempts, retry_in_ms = delay.as_millis() as u64, %reason, "delivery failed; will retry");
                    self.count(&e, kind, "retry", crate::telemetry::reason_label(&reason));
                }
            }
            Verdict::DeadLetter { reason } => {
                e.attempts += 1;
                let dl = self.store.dead_letter(&e, &reason, now)?;
                tracing::error!(%job, %team, %channel, %event, dead_letter = dl.id, %reason, "delivery refused; dead-lettered");
                self.count(
                    &e,
                    kind,
                    "dead_letter",
                    crate::telemetry::reason_label(&reason),
                );
            }
            Verdict::Disable { reason } => {
                e.attempts += 1;
                self.store.set_channel_state(
                    &self.team,
                    &self.channel,
                    &ChannelState {
                        disabled_reason: Some(reason.clone()),
                        disabled_at: Some(now),
                    },
                )?;
                let dl = self.store.dead_letter(&e, &reason, now)?;
                tracing::error!(%job, %team, %channel, %event, dead_letter = dl.id, %reason, "destination is gone or revoked; channel disabled");
                self.count(
                    &e,
                    kind,
                    "disabled",
                    crate::telemetry::reason_label(&reason),
                );
            }
        }
        Ok(())
    }
}
