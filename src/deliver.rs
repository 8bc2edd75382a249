//! Delivery workers: one per channel, each sending its oldest outbox entry first,
//! so messages leave in transition order and one slow channel never holds up another.
use crate::clock::SharedClock;
use crate::config::{Channel, Config, Team};
use crate::notify::Sender;
use crate::notify::retry::{self, Verdict};
use crate::store::{ChannelState, OutboxEntry, Store, StoreError, channel_key};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Wakes a channel's worker when something is queued for it.
#[derive(Clone, Default)]
pub struct Wakers(Arc<HashMap<String, Arc<Notify>>>);

impl Wakers {
    pub fn new(cfg: &Config) -> Wakers {
        let mut m = HashMap::new();
        for t in &cfg.teams {
            for c in &t.channels {
                m.insert(channel_key(&t.name, &c.name), Arc::new(Notify::new()));
            }
        }
        Wakers(Arc::new(m))
    }

    pub fn wake(&self, team: &str, channel: &str) {
        if let Some(n) = self.0.get(&channel_key(team, channel)) {
            n.notify_one();
        }
    }

    fn get(&self, team: &str, channel: &str) -> Arc<Notify> {
        self.0
            .get(&channel_key(team, channel))
            .cloned()
            .unwrap_or_default()
    }
}

/// Minimum spacing between posts to one destination, per the platforms' limits.
fn pace(kind: crate::config::ChannelKind, cfg: &crate::config::DeliveryConfig) -> Duration {
    match kind {
        crate::config::ChannelKind::Slack => cfg.slack_interval,
        crate::config::ChannelKind::Teams => cfg.teams_interval,
        crate::config::ChannelKind::Webhook => cfg.webhook_interval,
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
    pub sender: Sender,
    pub config: Arc<Config>,
    pub team: Team,
    pub channel: Channel,
    pub clock: SharedClock,
    pub wake: Arc<Notify>,
    pub pacer: Pacer,
}

/// Spawns one worker per configured channel.
pub fn spawn_all(
    store: &Store,
    sender: &Sender,
    config: &Arc<Config>,
    clock: &SharedClock,
    wakers: &Wakers,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Result<(), StoreError>>> {
    let mut handles = Vec::new();
    let pacer = Pacer::default();
    for t in &config.teams {
        for c in &t.channels {
            let w = Worker {
                store: store.clone(),
                sender: sender.clone(),
                config: config.clone(),
                team: t.clone(),
                channel: c.clone(),
                clock: clock.clone(),
                wake: wakers.get(&t.name, &c.name),
                pacer: pacer.clone(),
            };
            handles.push(tokio::spawn(w.run(shutdown.clone())));
        }
    }
    handles
}

impl Worker {
    fn count(&self, e: &OutboxEntry, outcome: &'static str, reason: String) {
        metrics::counter!(
            "deadline_notifier_deliveries_total",
            "team" => e.team.clone(),
            "channel" => e.channel.clone(),
            "kind" => self.channel.kind.as_str(),
            "event" => e.event.as_str(),
            "outcome" => outcome,
            "reason" => reason,
        )
        .increment(1);
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let pace = pace(self.channel.kind, &self.config.delivery);
        let dest = self.channel.url.expose().to_string();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let wait = match self
                .store
                .outbox_head(&self.team.name, &self.channel.name)?
            {
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
                        self.attempt(entry).await?;
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

    async fn attempt(&self, mut e: OutboxEntry) -> Result<(), StoreError> {
        let now = self.clock.now();
        let st = self
            .store
            .channel_state(&self.team.name, &self.channel.name)?;
        if let Some(reason) = st.disabled_reason {
            let dl = self
                .store
                .dead_letter(&e, &format!("channel disabled: {reason}"), now)?;
            tracing::warn!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, dead_letter = dl.id, "channel is disabled; message dead-lettered");
            self.count(&e, "dead_letter", "channel_disabled".into());
            return Ok(());
        }
        if e.payload.is_null() {
            let reason = e.last_error.clone().unwrap_or_else(|| "no payload".into());
            let dl = self.store.dead_letter(&e, &reason, now)?;
            tracing::error!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, dead_letter = dl.id, %reason, "message could not be rendered; dead-lettered");
            self.count(&e, "dead_letter", "render_error".into());
            return Ok(());
        }
        if self.store.was_delivered(&e.webhook_id)? {
            // Already sent (e.g. a replayed copy): at-least-once, but not twice on purpose.
            self.store.delivered(&e, now)?;
            tracing::info!(job = %e.job, team = %e.team, channel = %e.channel, event = %e.event, webhook_id = %e.webhook_id, "duplicate suppressed");
            self.count(&e, "duplicate", "already_delivered".into());
            return Ok(());
        }
        let body = serde_json::to_vec(&e.payload).unwrap_or_default();
        let verdict = self.sender.send(&self.channel, &e.webhook_id, &body).await;
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
                self.count(&e, "delivered", "ok".into());
                metrics::histogram!("deadline_notifier_delivery_latency_seconds", "kind" => self.channel.kind.as_str())
                    .record(latency_ms.max(0) as f64 / 1000.0);
            }
            Verdict::Throttled { wait, reason } => {
                e.next_attempt_at = now + chrono::Duration::from_std(wait).unwrap_or_default();
                self.pacer
                    .block_until(self.channel.url.expose(), Instant::now() + wait);
                e.last_error = Some(reason.clone());
                self.store.update_outbox(&e)?;
                tracing::warn!(%job, %team, %channel, %event, wait_ms = wait.as_millis() as u64, %reason, "destination rate-limited us; waiting");
                self.count(&e, "throttled", "http_429".into());
            }
            Verdict::Retry { reason } => {
                e.attempts += 1;
                e.last_error = Some(reason.clone());
                let age = (now - e.created_at).to_std().unwrap_or_default();
                if age >= self.config.delivery.give_up_after {
                    let dl = self.store.dead_letter(
                        &e,
                        &format!("gave up after {} attempts: {reason}", e.attempts),
                        now,
                    )?;
                    tracing::error!(%job, %team, %channel, %event, attempts = e.attempts, dead_letter = dl.id, %reason, "delivery gave up; dead-lettered");
                    self.count(&e, "dead_letter", "gave_up".into());
                } else {
                    let delay = retry::backoff(
                        &self.config.delivery.retry_schedule,
                        e.attempts,
                        rand::random::<f64>(),
                    );
                    e.next_attempt_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                    self.store.update_outbox(&e)?;
                    tracing::warn!(%job, %team, %channel, %event, attempts = e.attempts, retry_in_ms = delay.as_millis() as u64, %reason, "delivery failed; will retry");
                    self.count(&e, "retry", crate::telemetry::reason_label(&reason));
                }
            }
            Verdict::DeadLetter { reason } => {
                e.attempts += 1;
                let dl = self.store.dead_letter(&e, &reason, now)?;
                tracing::error!(%job, %team, %channel, %event, dead_letter = dl.id, %reason, "delivery refused; dead-lettered");
                self.count(&e, "dead_letter", crate::telemetry::reason_label(&reason));
            }
            Verdict::Disable { reason } => {
                e.attempts += 1;
                self.store.set_channel_state(
                    &self.team.name,
                    &self.channel.name,
                    &ChannelState {
                        disabled_reason: Some(reason.clone()),
                        disabled_at: Some(now),
                    },
                )?;
                let dl = self.store.dead_letter(&e, &reason, now)?;
                tracing::error!(%job, %team, %channel, %event, dead_letter = dl.id, %reason, "destination is gone or revoked; channel disabled");
                self.count(&e, "disabled", crate::telemetry::reason_label(&reason));
            }
        }
        Ok(())
    }
}
