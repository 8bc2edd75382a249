//! The event queue's receive loop: long polls SQS, reads each body into a hint
//! (`hints`), hands job hints to the poll loop, and deletes a message only once what
//! it led to is durable (or it is known to need nothing). A crash anywhere before the
//! delete gets the message back from SQS after its visibility timeout, and the read
//! it causes then diffs against the stored state, so nothing is notified twice.
//!
//! It also keeps the queue's health (`push`), which sets how often the poll loop
//! still polls subscribed jobs.
use super::budget::count;
use super::hints::{self, Hint, JobCause};
use super::push::{Mode, QueueHealth};
use crate::deadline::queue::{EventQueue, QueueError, Received};
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};

/// Messages received and not yet answered, at most: past this the loop stops
/// receiving until the poll loop catches up (SQS keeps the rest).
const MAX_UNANSWERED: usize = 2_000;

/// A job hint the poll loop must answer for.
#[derive(Debug)]
pub struct Pushed {
    pub key: crate::domain::JobKey,
    pub cause: JobCause,
    pub receipt: String,
    pub label: &'static str,
}

/// The poll loop's answer for one message.
#[derive(Debug)]
pub enum Answer {
    /// Done (the read it caused is committed): delete it.
    Done {
        receipt: String,
        label: &'static str,
        transition: bool,
    },
    /// Its read failed: leave it to come back after its visibility timeout.
    Again { receipt: String },
}

/// The poll loop's ends of the queue.
pub struct Inbox {
    pub pushed: mpsc::UnboundedReceiver<Vec<Pushed>>,
    pub answers: mpsc::UnboundedSender<Answer>,
    pub mode: watch::Receiver<Mode>,
}

/// What the receive loop needs; `run` consumes it.
pub struct EventLoop {
    queue: Arc<EventQueue>,
    store: Store,
    config: crate::config::EventsConfig,
    pushed: mpsc::UnboundedSender<Vec<Pushed>>,
    answers: mpsc::UnboundedReceiver<Answer>,
    mode: watch::Sender<Mode>,
    /// Carries out budget events (they concern no job).
    budgets: super::budget::BudgetLoop,
}

impl EventLoop {
    pub fn new(
        queue: Arc<EventQueue>,
        store: Store,
        config: crate::config::EventsConfig,
        budgets: super::budget::BudgetLoop,
    ) -> (EventLoop, Inbox) {
        let (ptx, prx) = mpsc::unbounded_channel();
        let (atx, arx) = mpsc::unbounded_channel();
        let (mtx, mrx) = watch::channel(Mode::Tight);
        (
            EventLoop {
                queue,
                store,
                config,
                pushed: ptx,
                answers: arx,
                mode: mtx,
                budgets,
            },
            Inbox {
                pushed: prx,
                answers: atx,
                mode: mrx,
            },
        )
    }

    /// Receives until `shutdown`; deletes answered messages as answers arrive.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let EventLoop {
            queue,
            store,
            config,
            pushed,
            answers,
            mode,
            budgets,
        } = self;
        let (budget_tx, budget_rx) = super::budget::BudgetLoop::channel();
        let budget_task = tokio::spawn(budgets.run(budget_rx));
        let permits = Arc::new(Semaphore::new(MAX_UNANSWERED));
        let deleter = tokio::spawn(delete_answered(
            queue.clone(),
            store,
            answers,
            permits.clone(),
        ));
        let r = Receiver {
            queue,
            config,
            pushed,
            mode,
            permits,
            budgets: Some(budget_tx),
            health: QueueHealth::default(),
            origin: crate::clock::tokio_monotonic(),
            last_malformed_log: None,
            newest_event: None,
        };
        r.run(shutdown).await;
        deleter.abort();
        budget_task.abort();
    }
}

struct Receiver {
    queue: Arc<EventQueue>,
    config: crate::config::EventsConfig,
    pushed: mpsc::UnboundedSender<Vec<Pushed>>,
    mode: watch::Sender<Mode>,
    permits: Arc<Semaphore>,
    budgets: Option<super::budget::Budgets>,
    health: QueueHealth,
    origin: tokio::time::Instant,
    last_malformed_log: Option<u64>,
    /// The newest event's `time` seen (ms since the epoch), for its age.
    newest_event: Option<i64>,
}

/// The next batch of hints, or never without a queue.
pub(super) async fn next(
    pushed: &mut Option<mpsc::UnboundedReceiver<Vec<Pushed>>>,
) -> Option<Vec<Pushed>> {
    match pushed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Returns when the polling mode changed; never without a queue (or once its
/// loop has ended).
pub(super) async fn mode_changed(mode: &mut Option<watch::Receiver<Mode>>) {
    let Some(rx) = mode else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Receiver {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn silence_ms(&self) -> u64 {
        (2 * self.config.wait_time.as_millis() as u64).max(5_000)
    }

    fn publish(&mut self) {
        let now = self.now_ms();
        let relax = self.config.relax_after.as_millis() as u64;
        let silence = self.silence_ms();
        let mode = self.health.mode(now, relax, silence);
        let healthy = self.health.healthy(now, silence);
        metrics::gauge!("deadline_notifier_event_queue_healthy").set(f64::from(u8::from(healthy)));
        metrics::gauge!("deadline_notifier_event_polling_relaxed")
            .set(f64::from(u8::from(mode == Mode::Relaxed)));
        if let Some(t) = self.newest_event {
            let age = crate::clock::wall_now().timestamp_millis() - t;
            metrics::gauge!("deadline_notifier_event_newest_age_seconds")
                .set(age.max(0) as f64 / 1000.0);
        }
        self.mode.send_if_modified(|m| {
            if *m == mode {
                return false;
            }
            match mode {
                Mode::Relaxed => tracing::info!(
                    backstop = %humantime::format_duration(self.config.backstop_interval),
                    "events arrive: subscribed jobs are polled at the backstop interval"
                ),
                Mode::Tight => tracing::warn!(
                    error = self.health.error.as_deref().unwrap_or("no answer"),
                    "event queue not working: polling tightened to poll_interval"
                ),
            }
            *m = mode;
            true
        });
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(queue = %self.queue.url(), "receiving Deadline Cloud events");
        let mut backoff = Duration::from_secs(1);
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Wait for room before receiving more: unanswered messages are capped.
            let room = tokio::select! {
                p = self.permits.clone().acquire_many_owned(10) => p.ok(),
                _ = shutdown.changed() => return,
            };
            drop(room);
            let silence = Duration::from_millis(self.silence_ms());
            let receive = self
                .queue
                .receive(self.config.wait_time, self.config.visibility_timeout);
            let result = tokio::select! {
                r = tokio::time::timeout(silence, receive) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(Ok(messages)) => {
                    backoff = Duration::from_secs(1);
                    let now = self.now_ms();
                    self.health.received(now, self.silence_ms());
                    self.publish();
                    self.take(messages);
                }
                Ok(Err(e)) => self.failed(e, &mut backoff, &mut shutdown).await,
                Err(_) => {
                    let e = QueueError::Unreachable {
                        operation: "ReceiveMessage",
                        message: format!(
                            "no answer within {}",
                            humantime::format_duration(silence)
                        ),
                    };
                    self.failed(e, &mut backoff, &mut shutdown).await
                }
            }
        }
    }

    async fn failed(
        &mut self,
        e: QueueError,
        backoff: &mut Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let msg = e.to_string();
        if self.health.error.as_deref() != Some(msg.as_str()) {
            tracing::warn!(error = %msg, queue = %self.queue.url(), "receiving events failed; polling covers for the queue");
        }
        metrics::counter!("deadline_notifier_event_receive_errors_total").increment(1);
        self.health.failed(msg);
        self.publish();
        tokio::select! {
            _ = tokio::time::sleep(*backoff) => {}
            _ = shutdown.changed() => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(20));
    }

    /// Reads each message; job hints go to the poll loop, the rest is answered here.
    fn take(&mut self, messages: Vec<Received>) {
        let mut jobs = Vec::new();
        let mut done = Vec::new();
        for m in messages {
            let (hint, label) = hints::parse(&m.body);
            if let Some(t) = hints::time_ms(&m.body)
                && self.newest_event.is_none_or(|n| t > n)
            {
                self.newest_event = Some(t);
            }
            metrics::counter!("deadline_notifier_events_received_total", "type" => label)
                .increment(1);
            match hint {
                Hint::Job { key, cause } => jobs.push(Pushed {
                    key,
                    cause,
                    receipt: m.receipt,
                    label,
                }),
                Hint::Budget(crossed) => match &self.budgets {
                    Some(b) => b.submit(super::budget::Crossing {
                        crossed,
                        receipt: m.receipt,
                        label,
                    }),
                    None => done.push((m.receipt, label, "nothing")),
                },
                Hint::Ignored => done.push((m.receipt, label, "nothing")),
                Hint::Unknown => done.push((m.receipt, label, "unknown")),
                Hint::Malformed(why) => {
                    let now = self.now_ms();
                    if self.last_malformed_log.is_none_or(|t| now - t >= 60_000) {
                        self.last_malformed_log = Some(now);
                        tracing::warn!(message_id = %m.message_id, %why, bytes = m.body.len(), "an event queue message is not a Deadline Cloud event; deleted (logged once a minute)");
                    }
                    done.push((m.receipt, label, "malformed"));
                }
            }
        }
        // Each unanswered message holds a permit until its answer is deleted.
        self.permits.forget_permits(jobs.len());
        if !jobs.is_empty() {
            let _ = self.pushed.send(jobs);
        }
        if !done.is_empty() {
            let queue = self.queue.clone();
            tokio::spawn(async move {
                let receipts: Vec<String> = done.iter().map(|(r, _, _)| r.clone()).collect();
                match queue.delete(&receipts).await {
                    Ok(_) => {
                        for (_, label, outcome) in done {
                            count(label, outcome);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, messages = receipts.len(), "could not delete event messages; they come back and are read again")
                    }
                }
            });
        }
    }
}

/// Deletes the messages the poll loop answered, once what they led to is on disk.
async fn delete_answered(
    queue: Arc<EventQueue>,
    store: Store,
    mut answers: mpsc::UnboundedReceiver<Answer>,
    permits: Arc<Semaphore>,
) {
    let mut batch = Vec::new();
    while answers.recv_many(&mut batch, 256).await > 0 {
        let n = batch.len();
        let done: Vec<(String, &'static str, bool)> = batch
            .drain(..)
            .filter_map(|a| match a {
                Answer::Done {
                    receipt,
                    label,
                    transition,
                } => Some((receipt, label, transition)),
                Answer::Again { .. } => None,
            })
            .collect();
        // Everything the answers stand for was committed before they were sent;
        // this waits until it is synced, so a crash after the delete loses nothing.
        if let Err(e) = store.flush().await {
            tracing::error!(error = %e, "store sync failed; event messages are left to come back");
            permits.add_permits(n);
            continue;
        }
        let receipts: Vec<String> = done.iter().map(|(r, _, _)| r.clone()).collect();
        match queue.delete(&receipts).await {
            Ok(failed) => {
                for (receipt, why) in &failed {
                    tracing::debug!(%receipt, %why, "event message not deleted; it comes back and is read again");
                }
                for (_, label, transition) in done {
                    count(label, if transition { "transition" } else { "nothing" });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, messages = receipts.len(), "could not delete event messages; they come back and are read again")
            }
        }
        permits.add_permits(n);
    }
}
