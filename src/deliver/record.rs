//! Records deliveries for all workers: whatever was delivered while the previous
//! commit ran goes into the next one, as one store transaction. Eight workers
//! with several sends in flight each would otherwise queue one transaction (and
//! one blocking-pool hop) per message, all updating the same outbox count.
//!
//! A worker waits for its record to be committed before it lets the entry leave
//! its queue, so nothing is sent twice by the same process; durability is the
//! group commit's, as for a single record.

use crate::domain::OutboxEntry;
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

/// Records per transaction at most: bounds one commit's memory and time.
const MAX_BATCH: usize = 256;

type Ack = oneshot::Sender<Result<(), String>>;

/// A handle to the recording task; clones share it. The task ends when the last
/// handle is dropped, after committing what it was given.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<(OutboxEntry, DateTime<Utc>, Ack)>,
    store: Store,
}

impl Recorder {
    pub fn start(store: Store) -> Recorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<(OutboxEntry, DateTime<Utc>, Ack)>();
        let s = store.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let work = std::mem::take(&mut batch);
                let s = s.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let refs: Vec<_> = work.iter().map(|(e, at, _)| (e, *at)).collect();
                    let out = s.delivered_all(&refs).map_err(|e| e.to_string());
                    (work, out)
                })
                .await;
                match done {
                    Ok((work, out)) => {
                        for (_, _, ack) in work {
                            let _ = ack.send(out.clone());
                        }
                    }
                    // The batch's acks were dropped with it: each waiting worker
                    // sees the failure.
                    Err(e) => tracing::error!(error = %e, "recording deliveries failed"),
                }
            }
        });
        Recorder { tx, store }
    }

    /// Records `e` as delivered at `now`; returns once committed.
    pub async fn delivered(&self, e: OutboxEntry, now: DateTime<Utc>) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        let failed = |message: String| StoreError::Task {
            path: self.store.path().to_path_buf(),
            message,
        };
        self.tx
            .send((e, now, ack))
            .map_err(|_| failed("the delivery recorder has stopped".into()))?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(failed(message)),
            Err(_) => Err(failed("recording the delivery failed".into())),
        }
    }
}
