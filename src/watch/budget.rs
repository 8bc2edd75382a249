//! Budget Threshold Reached events: GetBudget for its name and figures, one notice
//! per channel that lists `budget.threshold`, queued in one transaction; the queue
//! message is deleted only once those are on disk. A GetBudget failure leaves the
//! message to come back (SQS's redrive policy moves one that keeps failing to the
//! dead-letter queue).
use crate::app::live::Live;
use crate::deadline::client::DeadlineClient;
use crate::deadline::queue::EventQueue;
use crate::domain::budget::{BudgetCrossed, BudgetFacts};
use crate::domain::{Event, JobKey, OutboxEntry};
use crate::store::{Store, Wakers};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Counts one queue message by detail-type and what came of it (`transition`,
/// `nothing`, `malformed`, `unknown`).
pub fn count(label: &'static str, outcome: &'static str) {
    metrics::counter!("deadline_notifier_events_total", "type" => label, "outcome" => outcome)
        .increment(1);
}

/// One event to carry out, with its queue message.
#[derive(Debug)]
pub struct Crossing {
    pub crossed: BudgetCrossed,
    pub receipt: String,
    pub label: &'static str,
}

/// The receive loop's end.
#[derive(Clone)]
pub struct Budgets(mpsc::UnboundedSender<Crossing>);

impl Budgets {
    pub fn submit(&self, c: Crossing) {
        let _ = self.0.send(c);
    }
}

pub struct BudgetLoop {
    pub client: Arc<DeadlineClient>,
    pub live: Live,
    pub store: Store,
    pub wakers: Wakers,
    pub queue: Arc<EventQueue>,
}

impl BudgetLoop {
    pub fn channel() -> (Budgets, mpsc::UnboundedReceiver<Crossing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Budgets(tx), rx)
    }

    /// Carries out crossings until the receive loop drops its end.
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Crossing>) {
        while let Some(c) = rx.recv().await {
            let Some(outcome) = self.carry_out(&c.crossed).await else {
                // Not carried out: the message comes back after its visibility timeout.
                continue;
            };
            match self.queue.delete(std::slice::from_ref(&c.receipt)).await {
                Ok(_) => count(c.label, outcome),
                Err(e) => {
                    tracing::warn!(error = %e, "could not delete a budget event; it comes back and is recognised as a repeat")
                }
            }
        }
    }

    /// Queues the notices; `None` when it must be tried again later.
    async fn carry_out(&self, c: &BudgetCrossed) -> Option<&'static str> {
        let active = self.live.current();
        let cfg = &active.config;
        if super::route::notice_targets(cfg, Event::BudgetThreshold, &c.farm_id, None).is_empty() {
            return Some("nothing");
        }
        let facts = match self.client.budget(&c.farm_id, &c.budget_id).await {
            Ok(Some(f)) => f,
            // Deleted since: the notice still goes, named by its id.
            Ok(None) => BudgetFacts {
                name: c.budget_id.clone(),
                ..Default::default()
            },
            Err(e) => {
                tracing::warn!(error = %e, budget = %c.budget_id, "GetBudget failed; the budget event will be read again");
                return None;
            }
        };
        let targets = super::route::notice_targets(
            cfg,
            Event::BudgetThreshold,
            &c.farm_id,
            facts.queue_id.as_deref(),
        );
        // Keyed like a job so the outbox orders it: the budget stands in the job's place.
        let key = JobKey {
            farm_id: c.farm_id.as_str().into(),
            queue_id: facts.queue_id.as_deref().unwrap_or("").into(),
            job_id: c.budget_id.as_str().into(),
        };
        let now = crate::clock::wall_now();
        let mut entries = Vec::new();
        for (team, channel) in &targets {
            match active.renderer.budget_payload(team, channel, c, &facts) {
                Ok(payload) => entries.push(OutboxEntry::due_now(
                    super::route::notice_webhook_id(&c.event_id, team, &channel.name),
                    team,
                    &channel.name,
                    channel.kind.as_str(),
                    key.clone(),
                    Event::BudgetThreshold,
                    now,
                    payload,
                )),
                Err(e) => {
                    tracing::error!(error = %e, team, channel = %channel.name, "budget notice could not be rendered; not sent to this channel")
                }
            }
        }
        if entries.is_empty() {
            return Some("nothing");
        }
        // A repeat of this event (a duplicate delivery, or the message back after a
        // crash between this commit and its delete) finds its notices queued already.
        // `enqueue_once` syncs before it returns, even when it queued nothing new (a
        // repeat's first sync may be the one that failed): the message is deleted
        // after this.
        let queued = match self.store.run(move |s| s.enqueue_once(entries)).await {
            Ok(q) => q,
            Err(e) => {
                tracing::error!(error = %e, "budget notices could not be stored; the event will be read again");
                return None;
            }
        };
        if queued.is_empty() {
            return Some("nothing");
        }
        for e in &queued {
            tracing::info!(team = %e.team, channel = %e.channel, budget = %c.budget_id, threshold = c.threshold_percent, webhook_id = %e.webhook_id, "budget notice queued");
            self.wakers.wake(&e.team, &e.channel);
        }
        Some("transition")
    }
}
