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
/// handle is dropped, after committing what it was given; await its
/// [`tokio::task::JoinHandle`] (from [`Recorder::start`]) to know that it let go
/// of the store.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<(OutboxEntry, DateTime<Utc>, Ack)>,
    store: Store,
}

impl Recorder {
    pub fn start(store: Store) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(OutboxEntry, DateTime<Utc>, Ack)>();
        let s = store.clone();
        let task = tokio::spawn(async move {
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
        (Recorder { tx, store }, task)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Event, JobKey, JobSnapshot, JobState, JobStatus};

    fn entry(n: u32) -> OutboxEntry {
        OutboxEntry::due_now(
            format!("msg_{n}"),
            "lighting",
            &format!("c{}", n % 3),
            "webhook",
            JobKey {
                farm_id: "farm-1".into(),
                queue_id: "queue-1".into(),
                job_id: format!("job-{n}").into(),
            },
            Event::Succeeded,
            crate::clock::wall_now(),
            serde_json::json!({"n": n}),
        )
    }

    /// Many workers recording at once: every entry leaves the outbox, every
    /// webhook-id is in the delivery log, and the kept count matches what is left
    /// (it is checked against the records at the next open).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_are_all_committed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let store = Store::open(&path).unwrap();
        let key = JobKey {
            farm_id: "farm-1".into(),
            queue_id: "queue-1".into(),
            job_id: "job-x".into(),
        };
        let state = JobState {
            job: key.clone(),
            status: JobStatus::of(&JobSnapshot::sample(key, "x")),
            since: crate::clock::wall_now(),
            terminal_since: None,
            progress: Default::default(),
        };
        let queued = store
            .commit_observation(&state, (0..300).map(entry).collect())
            .unwrap();
        assert_eq!(store.outbox_len(), 300);
        let (recorder, recording) = Recorder::start(store.clone());
        let mut tasks = tokio::task::JoinSet::new();
        // 250 of the 300, from 25 concurrent senders.
        for chunk in queued[..250].chunks(10) {
            let (r, chunk) = (recorder.clone(), chunk.to_vec());
            tasks.spawn(async move {
                for e in chunk {
                    r.delivered(e, crate::clock::wall_now()).await.unwrap();
                }
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.unwrap();
        }
        assert_eq!(store.outbox_len(), 50);
        for e in &queued[..250] {
            assert!(
                store.was_delivered(&e.webhook_id).unwrap(),
                "{}",
                e.webhook_id
            );
        }
        for e in &queued[250..] {
            assert!(!store.was_delivered(&e.webhook_id).unwrap());
        }
        drop(recorder);
        recording.await.unwrap();
        drop(store);
        // The open-time check compares the kept count with the records.
        let reopened = Store::reopen(&path).unwrap();
        assert_eq!(reopened.outbox_len(), 50);
    }
}
