//! The poll loop: read subscribed jobs from Deadline Cloud, diff each against the
//! stored state, route and render the resulting events, and commit state and
//! outbox entries together.
use crate::clock::SharedClock;
use crate::config::Config;
use crate::deadline::client::DeadlineClient;
use crate::deadline::{Fetched, SourceError};
use crate::deliver::Wakers;
use crate::diff::diff;
use crate::domain::{JobKey, JobSnapshot, Transition};
use crate::render::{self, Renderer};
use crate::route::{route, webhook_id};
use crate::store::{JobState, OutboxEntry, Store, StoreError, Subscription};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// Jobs to poll, with their stored state and active subscriptions.
type Due = BTreeMap<JobKey, (Option<JobState>, Vec<Subscription>)>;

pub struct Watcher {
    pub store: Store,
    pub client: Arc<DeadlineClient>,
    pub renderer: Arc<Renderer>,
    pub config: Arc<Config>,
    pub clock: SharedClock,
    pub wakers: Wakers,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct TickReport {
    pub polled: usize,
    pub transitions: usize,
    pub queued: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Watcher {
    /// Polls every `poll_interval` until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let interval = self.config.deadline.poll_interval;
        loop {
            let started = tokio::time::Instant::now();
            let mut pause = interval;
            match self.tick().await {
                Ok(r) if r.transitions > 0 => {
                    tracing::debug!(
                        polled = r.polled,
                        transitions = r.transitions,
                        queued = r.queued,
                        "poll done"
                    );
                }
                Ok(_) => {}
                Err(TickError::Source(SourceError::Throttled {
                    retry_after,
                    message,
                })) => {
                    let wait = retry_after.unwrap_or(interval).max(interval);
                    tracing::warn!(%message, wait_ms = wait.as_millis() as u64, "Deadline Cloud throttled polling; backing off");
                    pause = wait;
                }
                Err(TickError::Source(e)) => {
                    tracing::warn!(error = %e, "poll failed; retrying next interval")
                }
                // A store error is not something polling can fix: stop the service.
                Err(TickError::Store(e)) => return Err(e),
            }
            let next = started + pause;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return Ok(());
            }
        }
    }

    /// Jobs to poll now: those with an active subscription, unless they have been
    /// terminal for longer than the grace period.
    fn due(&self) -> Result<Due, StoreError> {
        let now = self.clock.now();
        let grace = chrono::Duration::from_std(self.config.deadline.terminal_grace)
            .unwrap_or(chrono::Duration::MAX);
        let mut by_job: BTreeMap<JobKey, (Option<JobState>, Vec<Subscription>)> = BTreeMap::new();
        for s in self.store.subscriptions()? {
            if s.is_active() {
                by_job.entry(s.job.clone()).or_default().1.push(s);
            }
        }
        let mut due = BTreeMap::new();
        for (key, (_, subs)) in by_job {
            let state = self.store.job_state(&key)?;
            let settled = state
                .as_ref()
                .and_then(|s| s.terminal_since)
                .is_some_and(|t| now - t > grace);
            if !settled {
                due.insert(key, (state, subs));
            }
        }
        Ok(due)
    }

    pub async fn tick(&self) -> Result<TickReport, TickError> {
        let due = self.due()?;
        let mut report = TickReport {
            polled: due.len(),
            ..Default::default()
        };
        if due.is_empty() {
            return Ok(report);
        }
        let keys: Vec<JobKey> = due.keys().cloned().collect();
        let results = self.client.fetch(&keys).await?;
        for (key, fetched) in results {
            let Some((prev, subs)) = due.get(&key) else {
                continue;
            };
            match fetched {
                Fetched::Found(snap) => {
                    let (t, q) = self.observe(prev.as_ref(), *snap, subs)?;
                    report.transitions += t;
                    report.queued += q;
                }
                Fetched::Gone(reason) => {
                    let n = self.store.end_subscriptions(&key, &reason)?;
                    tracing::warn!(job = %key, subscriptions = n, %reason, "job no longer exists in Deadline Cloud; subscription ended");
                }
                Fetched::Failed(reason) => {
                    tracing::warn!(job = %key, %reason, "could not read job; will retry next poll");
                }
            }
        }
        Ok(report)
    }

    /// Diffs one observation and commits it; returns (transitions, queued messages).
    fn observe(
        &self,
        prev: Option<&JobState>,
        snap: JobSnapshot,
        subs: &[Subscription],
    ) -> Result<(usize, usize), StoreError> {
        let now = self.clock.now();
        let terminal_since = if snap.is_terminal() {
            prev.and_then(|p| p.terminal_since).or(Some(now))
        } else {
            None
        };
        if let Some(p) = prev
            && p.snapshot == snap
            && p.terminal_since == terminal_since
        {
            return Ok((0, 0));
        }
        let events = diff(prev.map(|p| &p.snapshot), &snap);
        let previous = prev.map(|p| &p.snapshot);
        let mut entries = Vec::new();
        for d in route(&events, subs, &self.config.teams) {
            let tr = Transition {
                event: d.event,
                previous_task_run_status: previous.and_then(|p| p.task_run_status.clone()),
                previous_lifecycle_status: previous.map_or(snap.lifecycle_status.clone(), |p| {
                    p.lifecycle_status.clone()
                }),
                detected_at: now,
            };
            let link = self
                .renderer
                .monitor_url()
                .map(|b| render::monitor_link(b, &snap.key));
            let ctx = render::context(
                &d.team.name,
                &d.channel.name,
                &snap,
                &tr,
                self.renderer.monitor_url(),
            );
            let (payload, last_error) =
                match self
                    .renderer
                    .render(&d.team.name, d.channel.kind, d.event, &ctx)
                {
                    Ok(r) => (
                        crate::notify::payload(
                            d.channel.kind,
                            &d.team.name,
                            &r,
                            &snap,
                            &tr,
                            link.as_deref(),
                        ),
                        None,
                    ),
                    // Kept, and dead-lettered by delivery with the reason: never dropped.
                    Err(e) => (serde_json::Value::Null, Some(e.to_string())),
                };
            entries.push(OutboxEntry {
                seq: 0,
                webhook_id: webhook_id(&snap.key, &tr, &d.team.name, &d.channel.name),
                team: d.team.name.clone(),
                channel: d.channel.name.clone(),
                kind: d.channel.kind,
                job: snap.key.clone(),
                event: d.event,
                created_at: now,
                attempts: 0,
                next_attempt_at: now,
                last_error,
                payload,
            });
        }
        let key = snap.key.clone();
        let state = JobState {
            snapshot: snap,
            terminal_since,
        };
        let queued = self.store.commit_observation(&state, entries)?;
        for e in &events {
            tracing::info!(job = %key, event = %e, "transition detected");
        }
        for e in &queued {
            tracing::info!(job = %key, team = %e.team, channel = %e.channel, event = %e.event, webhook_id = %e.webhook_id, "notification queued");
            self.wakers.wake(&e.team, &e.channel);
        }
        Ok((events.len(), queued.len()))
    }
}
