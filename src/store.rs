//! The only module that knows the storage engine (sled). Subscriptions, last-seen job
//! state, the outbox of pending deliveries, dead letters and channel state.
//!
//! Invariant: a detected transition's new job state and the outbox entries it
//! produces commit in one transaction; an outbox entry leaves only when delivered or
//! dead-lettered.
use crate::config::ChannelKind;
use crate::domain::{Event, JobKey, JobStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: cannot open: {message}")]
    Open { path: PathBuf, message: String },
    #[error("store {path}: {source}")]
    Engine { path: PathBuf, source: sled::Error },
    #[error("store {path}: corrupt record in {tree}: {message}")]
    Corrupt {
        path: PathBuf,
        tree: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub team: String,
    #[serde(flatten)]
    pub job: JobKey,
    pub channels: Vec<String>,
    pub events: Vec<Event>,
    pub created_at: DateTime<Utc>,
    /// `active`, or `ended` once the job no longer exists.
    #[serde(default = "active")]
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_reason: Option<String>,
}

fn active() -> String {
    "active".into()
}

impl Subscription {
    pub fn is_active(&self) -> bool {
        self.state == "active"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobState {
    pub job: JobKey,
    pub status: JobStatus,
    /// When `status` last changed (drives the adaptive poll interval).
    pub since: DateTime<Utc>,
    /// When the job was first seen terminal (cleared by a requeue).
    pub terminal_since: Option<DateTime<Utc>>,
}

/// A message waiting to be delivered to one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEntry {
    /// Store-assigned, increasing: gives transition order per channel.
    #[serde(default)]
    pub seq: u64,
    /// Stable per (job, transition, channel); sent as `webhook-id`.
    pub webhook_id: String,
    pub team: String,
    pub channel: String,
    pub kind: ChannelKind,
    pub job: JobKey,
    pub event: Event,
    pub created_at: DateTime<Utc>,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: u64,
    pub reason: String,
    pub dead_at: DateTime<Utc>,
    #[serde(flatten)]
    pub entry: OutboxEntry,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelState {
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreCounts {
    pub subscriptions: usize,
    pub jobs: usize,
    pub outbox: usize,
    pub dead_letters: usize,
    pub delivered_log: usize,
}

/// sled's page cache (its default is 1 GiB, which would make memory grow with the
/// number of watched jobs); hot state lives in the watcher's memory anyway.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    subs: sled::Tree,
    sub_index: sled::Tree,
    jobs: sled::Tree,
    outbox: sled::Tree,
    dead: sled::Tree,
    channels: sled::Tree,
    /// webhook-id → delivered-at: our own log, used to suppress duplicate sends.
    sent: sled::Tree,
}

pub fn channel_key(team: &str, channel: &str) -> String {
    format!("{team}/{channel}")
}

fn outbox_key(team: &str, channel: &str, seq: u64) -> Vec<u8> {
    let mut k = channel_key(team, channel).into_bytes();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn outbox_prefix(team: &str, channel: &str) -> Vec<u8> {
    let mut k = channel_key(team, channel).into_bytes();
    k.push(0);
    k
}

fn job_key_bytes(k: &JobKey) -> Vec<u8> {
    k.to_string().into_bytes()
}

fn index_key(team: &str, job: &JobKey) -> Vec<u8> {
    format!("{team}\0{job}").into_bytes()
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own types always serialize.
    serde_json::to_vec(v).unwrap_or_default()
}

type TxResult<T> = Result<T, ConflictableTransactionError<String>>;

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: path.into(),
                message: format!("cannot create directory: {e}"),
            })?;
        }
        // sled 0.34 panics, rather than erroring, on some corrupt files; turn that into
        // an error naming the store so start-up fails cleanly instead of crash-looping.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sled::Config::new().path(path).cache_capacity(CACHE_BYTES).open()
        }))
        .map_err(|_| StoreError::Open {
            path: path.into(),
            message: "the store is corrupt (sled could not recover it); restore a backup, or move it aside \
                      and rebuild the subscriptions with `deadline-notifier import`"
                .into(),
        })?;
        let db = opened.map_err(|e| StoreError::Open {
            path: path.into(),
            message: match &e {
                sled::Error::Io(io)
                    if io.to_string().contains("lock")
                        || io.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    format!("{e} (is another deadline-notifier using this store?)")
                }
                _ => e.to_string(),
            },
        })?;
        let t = |name: &str| {
            db.open_tree(name).map_err(|source| StoreError::Engine {
                path: path.into(),
                source,
            })
        };
        Ok(Store {
            subs: t("subscriptions")?,
            sub_index: t("subscription_index")?,
            jobs: t("jobs")?,
            outbox: t("outbox")?,
            dead: t("dead_letters")?,
            sent: t("delivered_log")?,
            channels: t("channels")?,
            db,
            path: path.into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn eng(&self, source: sled::Error) -> StoreError {
        StoreError::Engine {
            path: self.path.clone(),
            source,
        }
    }

    fn tx_err(&self, e: TransactionError<String>) -> StoreError {
        match e {
            TransactionError::Storage(source) => self.eng(source),
            TransactionError::Abort(message) => StoreError::Corrupt {
                path: self.path.clone(),
                tree: "transaction",
                message,
            },
        }
    }

    fn dec<T: DeserializeOwned>(&self, tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            tree,
            message: e.to_string(),
        })
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map_err(|e| self.eng(e))?;
        Ok(())
    }

    // --- subscriptions ---

    /// Inserts `sub` unless the team already subscribes the job; returns the stored
    /// subscription and whether it was created.
    pub fn insert_subscription(
        &self,
        sub: Subscription,
    ) -> Result<(Subscription, bool), StoreError> {
        let ik = index_key(&sub.team, &sub.job);
        let res = (&self.subs, &self.sub_index).transaction(
            |(subs, idx)| -> TxResult<(Subscription, bool)> {
                if let Some(id) = idx.get(&ik)?
                    && let Some(existing) = subs.get(&id)?
                {
                    let existing: Subscription = serde_json::from_slice(&existing)
                        .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                    if existing.is_active() {
                        return Ok((existing, false));
                    }
                    subs.remove(&id)?;
                }
                subs.insert(sub.id.as_bytes(), enc(&sub))?;
                idx.insert(ik.clone(), sub.id.as_bytes())?;
                Ok((sub.clone(), true))
            },
        );
        // A 201 promises the subscription survives a crash.
        res.map_err(|e| self.tx_err(e))
            .and_then(|r| self.sync().map(|_| r))
    }

    /// Loads many subscriptions at once (benchmarks, bulk imports): one batch per
    /// tree and a single sync, instead of one transaction each.
    pub fn insert_subscriptions_bulk(&self, subs: &[Subscription]) -> Result<(), StoreError> {
        let mut b_subs = sled::Batch::default();
        let mut b_idx = sled::Batch::default();
        for s in subs {
            b_subs.insert(s.id.as_bytes(), enc(s));
            b_idx.insert(index_key(&s.team, &s.job), s.id.as_bytes());
        }
        self.subs.apply_batch(b_subs).map_err(|e| self.eng(e))?;
        self.sub_index.apply_batch(b_idx).map_err(|e| self.eng(e))?;
        self.sync()
    }

    /// A cheap liveness probe of the engine.
    pub fn verify_open(&self) -> bool {
        self.channels.get(b"\0probe").is_ok()
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    pub fn subscription(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        match self.subs.get(id.as_bytes()).map_err(|e| self.eng(e))? {
            Some(v) => Ok(Some(self.dec("subscriptions", &v)?)),
            None => Ok(None),
        }
    }

    pub fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.subs
            .iter()
            .values()
            .map(|v| self.dec("subscriptions", &v.map_err(|e| self.eng(e))?))
            .collect()
    }

    pub fn delete_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        let ik = index_key(&sub.team, &sub.job);
        (&self.subs, &self.sub_index)
            .transaction(|(subs, idx)| -> TxResult<()> {
                subs.remove(sub.id.as_bytes())?;
                if idx.get(&ik)?.as_deref() == Some(sub.id.as_bytes()) {
                    idx.remove(ik.clone())?;
                }
                Ok(())
            })
            .map_err(|e| self.tx_err(e))
            .and_then(|_| self.sync())
    }

    /// Marks every active subscription of `job` as ended (the job is gone).
    pub fn end_subscriptions(&self, job: &JobKey, reason: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for mut s in self.subscriptions()? {
            if &s.job == job && s.is_active() {
                s.state = "ended".into();
                s.ended_reason = Some(reason.into());
                self.subs
                    .insert(s.id.as_bytes(), enc(&s))
                    .map_err(|e| self.eng(e))?;
                n += 1;
            }
        }
        self.sync()?;
        Ok(n)
    }

    // --- job state and the transactional outbox ---

    pub fn job_state(&self, job: &JobKey) -> Result<Option<JobState>, StoreError> {
        match self.jobs.get(job_key_bytes(job)).map_err(|e| self.eng(e))? {
            Some(v) => Ok(Some(self.dec("jobs", &v)?)),
            None => Ok(None),
        }
    }

    /// Every stored job state (start-up loads them once).
    pub fn job_states(&self) -> Result<Vec<JobState>, StoreError> {
        self.jobs
            .iter()
            .values()
            .map(|v| self.dec("jobs", &v.map_err(|e| self.eng(e))?))
            .collect()
    }

    /// Stores the job's new state and queues `entries`, atomically. Returns the
    /// queued entries with their sequence numbers. Not synced: call [`Store::sync`]
    /// before acting on the result.
    pub fn commit_observation(
        &self,
        state: &JobState,
        entries: Vec<OutboxEntry>,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let jk = job_key_bytes(&state.job);
        let value = enc(state);
        (&self.jobs, &self.outbox)
            .transaction(|(jobs, outbox)| -> TxResult<Vec<OutboxEntry>> {
                jobs.insert(jk.clone(), value.clone())?;
                let mut out = Vec::with_capacity(entries.len());
                for e in &entries {
                    let mut e = e.clone();
                    e.seq = outbox.generate_id()?;
                    outbox.insert(outbox_key(&e.team, &e.channel, e.seq), enc(&e))?;
                    out.push(e);
                }
                Ok(out)
            })
            .map_err(|e| self.tx_err(e))
    }

    /// sled commits to memory and flushes on a timer; a SIGKILL in between would lose a
    /// committed transition, so every change the outbox contract depends on is synced.
    /// Observations are synced by the caller, once per batch, before anything is sent.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.eng(e))?;
        Ok(())
    }

    /// The oldest pending entry for a channel: the only one that may be sent, so
    /// messages leave in transition order.
    pub fn outbox_head(
        &self,
        team: &str,
        channel: &str,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        match self.outbox.scan_prefix(outbox_prefix(team, channel)).next() {
            Some(kv) => {
                let (_, v) = kv.map_err(|e| self.eng(e))?;
                Ok(Some(self.dec("outbox", &v)?))
            }
            None => Ok(None),
        }
    }

    /// Outbox depth and the creation time of its oldest entry.
    pub fn outbox_stats(&self) -> Result<(usize, Option<DateTime<Utc>>), StoreError> {
        let mut n = 0;
        let mut oldest: Option<DateTime<Utc>> = None;
        for v in self.outbox.iter().values() {
            let e: OutboxEntry = self.dec("outbox", &v.map_err(|e| self.eng(e))?)?;
            n += 1;
            oldest = Some(oldest.map_or(e.created_at, |o| o.min(e.created_at)));
        }
        Ok((n, oldest))
    }

    pub fn dead_letter_count(&self) -> usize {
        self.dead.len()
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Messages queued for one channel.
    pub fn outbox_len_for(&self, team: &str, channel: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.outbox.scan_prefix(outbox_prefix(team, channel)) {
            kv.map_err(|e| self.eng(e))?;
            n += 1;
        }
        Ok(n)
    }

    pub fn update_outbox(&self, e: &OutboxEntry) -> Result<(), StoreError> {
        self.outbox
            .insert(outbox_key(&e.team, &e.channel, e.seq), enc(e))
            .map_err(|e| self.eng(e))?;
        Ok(())
    }

    /// Removes a delivered entry and records its webhook-id in the delivery log, atomically.
    pub fn delivered(&self, e: &OutboxEntry, now: DateTime<Utc>) -> Result<(), StoreError> {
        let ok = outbox_key(&e.team, &e.channel, e.seq);
        let at = now.timestamp_millis().to_be_bytes();
        (&self.outbox, &self.sent)
            .transaction(|(outbox, sent)| -> TxResult<()> {
                outbox.remove(ok.clone())?;
                sent.insert(e.webhook_id.as_bytes(), &at)?;
                Ok(())
            })
            .map_err(|e| self.tx_err(e))?;
        // Not synced: losing this to a crash only means re-sending a delivered message
        // with the same webhook-id (at-least-once), and syncing here would cap delivery
        // throughput at the disk's fsync rate.
        Ok(())
    }

    /// Whether a notification with this webhook-id was already delivered.
    pub fn was_delivered(&self, webhook_id: &str) -> Result<bool, StoreError> {
        self.sent
            .contains_key(webhook_id.as_bytes())
            .map_err(|e| self.eng(e))
    }

    /// Drops delivery-log records older than `before`; returns how many.
    pub fn prune_delivered(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let cutoff = before.timestamp_millis();
        let mut n = 0;
        for kv in self.sent.iter() {
            let (k, v) = kv.map_err(|e| self.eng(e))?;
            let at = v.as_ref().try_into().map(i64::from_be_bytes).unwrap_or(0);
            if at < cutoff {
                self.sent.remove(k).map_err(|e| self.eng(e))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Moves an entry from the outbox to the dead letters, atomically.
    pub fn dead_letter(
        &self,
        e: &OutboxEntry,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<DeadLetter, StoreError> {
        let ok = outbox_key(&e.team, &e.channel, e.seq);
        (&self.outbox, &self.dead)
            .transaction(|(outbox, dead)| -> TxResult<DeadLetter> {
                let id = dead.generate_id()?;
                let dl = DeadLetter {
                    id,
                    reason: reason.to_string(),
                    dead_at: now,
                    entry: e.clone(),
                };
                outbox.remove(ok.clone())?;
                dead.insert(&id.to_be_bytes(), enc(&dl))?;
                Ok(dl)
            })
            .map_err(|e| self.tx_err(e))
            .and_then(|dl| self.sync().map(|_| dl))
    }

    pub fn dead_letter_by_id(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        match self.dead.get(id.to_be_bytes()).map_err(|e| self.eng(e))? {
            Some(v) => Ok(Some(self.dec("dead_letters", &v)?)),
            None => Ok(None),
        }
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.dead
            .iter()
            .values()
            .map(|v| self.dec("dead_letters", &v.map_err(|e| self.eng(e))?))
            .collect()
    }

    /// Re-queues a dead letter with its original `webhook-id`, at the tail of its channel.
    pub fn replay_dead_letter(
        &self,
        id: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        let dk = id.to_be_bytes();
        (&self.outbox, &self.dead)
            .transaction(|(outbox, dead)| -> TxResult<Option<OutboxEntry>> {
                let Some(v) = dead.get(dk)? else {
                    return Ok(None);
                };
                let dl: DeadLetter = serde_json::from_slice(&v)
                    .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                let mut e = dl.entry;
                e.seq = outbox.generate_id()?;
                e.attempts = 0;
                e.next_attempt_at = now;
                e.created_at = now;
                outbox.insert(outbox_key(&e.team, &e.channel, e.seq), enc(&e))?;
                dead.remove(&dk)?;
                Ok(Some(e))
            })
            .map_err(|e| self.tx_err(e))
            .and_then(|r| self.sync().map(|_| r))
    }

    // --- whole-store checks ---

    /// Reads and decodes every record of every tree; an error names the tree.
    pub fn verify(&self) -> Result<StoreCounts, StoreError> {
        let subscriptions = self.subscriptions()?.len();
        let mut jobs = 0;
        for v in self.jobs.iter().values() {
            let _: JobState = self.dec("jobs", &v.map_err(|e| self.eng(e))?)?;
            jobs += 1;
        }
        let mut outbox = 0;
        for v in self.outbox.iter().values() {
            let _: OutboxEntry = self.dec("outbox", &v.map_err(|e| self.eng(e))?)?;
            outbox += 1;
        }
        let dead_letters = self.dead_letters()?.len();
        for v in self.channels.iter().values() {
            let _: ChannelState = self.dec("channels", &v.map_err(|e| self.eng(e))?)?;
        }
        Ok(StoreCounts {
            subscriptions,
            jobs,
            outbox,
            dead_letters,
            delivered_log: self.sent.len(),
        })
    }

    // --- channel state ---

    pub fn channel_state(&self, team: &str, channel: &str) -> Result<ChannelState, StoreError> {
        match self
            .channels
            .get(channel_key(team, channel))
            .map_err(|e| self.eng(e))?
        {
            Some(v) => self.dec("channels", &v),
            None => Ok(ChannelState::default()),
        }
    }

    pub fn set_channel_state(
        &self,
        team: &str,
        channel: &str,
        st: &ChannelState,
    ) -> Result<(), StoreError> {
        self.channels
            .insert(channel_key(team, channel), enc(st))
            .map_err(|e| self.eng(e))?;
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobSnapshot;

    fn key(n: u8) -> JobKey {
        JobKey {
            farm_id: format!("farm-{}", "a".repeat(32)),
            queue_id: format!("queue-{}", "b".repeat(32)),
            job_id: format!("job-{:032x}", n),
        }
    }

    fn entry(team: &str, ch: &str, job: JobKey) -> OutboxEntry {
        OutboxEntry {
            seq: 0,
            webhook_id: "msg_x".into(),
            team: team.into(),
            channel: ch.into(),
            kind: ChannelKind::Webhook,
            job,
            event: Event::Succeeded,
            created_at: Utc::now(),
            attempts: 0,
            next_attempt_at: Utc::now(),
            last_error: None,
            payload: serde_json::json!({}),
        }
    }

    #[test]
    fn state_and_outbox_commit_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        {
            let s = Store::open(&p).unwrap();
            let st = JobState {
                job: key(1),
                status: JobStatus::of(&JobSnapshot::sample(key(1), "a")),
                since: Utc::now(),
                terminal_since: None,
            };
            let q = s
                .commit_observation(&st, vec![entry("t", "c", key(1)), entry("t", "c", key(1))])
                .unwrap();
            assert!(q[0].seq < q[1].seq);
            s.db.flush().unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert!(s.job_state(&key(1)).unwrap().is_some());
        let head = s.outbox_head("t", "c").unwrap().unwrap();
        s.delivered(&head, Utc::now()).unwrap();
        assert!(s.was_delivered("msg_x").unwrap());
        let next = s.outbox_head("t", "c").unwrap().unwrap();
        assert!(next.seq > head.seq);
        let dl = s.dead_letter(&next, "HTTP 400", Utc::now()).unwrap();
        assert!(s.outbox_head("t", "c").unwrap().is_none());
        let back = s.replay_dead_letter(dl.id, Utc::now()).unwrap().unwrap();
        assert_eq!(back.webhook_id, "msg_x");
        assert!(s.dead_letters().unwrap().is_empty());
    }

    #[test]
    fn one_subscription_per_team_and_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let sub = |id: &str, team: &str| Subscription {
            id: id.into(),
            team: team.into(),
            job: key(2),
            channels: vec![],
            events: vec![],
            created_at: Utc::now(),
            state: active(),
            ended_reason: None,
        };
        assert!(s.insert_subscription(sub("a", "t1")).unwrap().1);
        let (existing, created) = s.insert_subscription(sub("b", "t1")).unwrap();
        assert!(!created);
        assert_eq!(existing.id, "a");
        assert!(s.insert_subscription(sub("c", "t2")).unwrap().1);
        s.delete_subscription(&existing).unwrap();
        assert!(s.insert_subscription(sub("d", "t1")).unwrap().1);
    }

    #[test]
    fn second_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        let _a = Store::open(&p).unwrap();
        // sled holds an exclusive file lock; a second open in the same process also fails.
        let err = Store::open(&p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(&p.display().to_string()), "{err}");
    }
}
