//! The only module that knows the storage engine (sled): it persists the domain
//! records (subscriptions, last-seen job state, the outbox, dead letters, channel
//! state).
//!
//! Invariants:
//! - A detected transition's new job state and the outbox entries it produces
//!   commit in one transaction; an outbox entry leaves only when delivered or
//!   dead-lettered.
//! - Writes are made durable by one group commit (a dedicated thread, one fsync per
//!   ≤ [`GROUP_COMMIT`]). [`Store::durable`] publishes the highest outbox `seq` that
//!   is on disk; nothing above it may be sent, so a crash can never re-detect (and
//!   re-send under a new id) a notification that already left.
//! - Every value carries a CRC32; per-tree record counts live in the `meta` tree,
//!   updated in the same transactions as the records, and are checked at open. A
//!   marker file beside sled's files remembers that the store was initialised and how
//!   far its history reached, so an emptied or rolled-back data file is refused
//!   instead of opening as a smaller store.
mod wakers;
pub use wakers::Wakers;

use crate::domain::{
    ChannelState, DeadLetter, JobKey, JobState, Notice, NoticeState, OutboxEntry, Subscription,
};
use chrono::{DateTime, Utc};
use serde::{Serialize, de::DeserializeOwned};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

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
    #[error(
        "store {path}: the store is corrupt: {message}. Move it aside, start with an empty store and restore the \
         subscriptions from your latest `deadline-notifier export` with `deadline-notifier import`"
    )]
    Damaged { path: PathBuf, message: String },
    #[error("store {path}: sync failed: {message}")]
    Sync { path: PathBuf, message: String },
    #[error("store {path}: the store task failed: {message}")]
    Task { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// How long a write may wait for its fsync. One fsync per write would cap delivery
/// at the disk's fsync rate; nothing is sent before its sync, so this only delays.
pub const GROUP_COMMIT: Duration = Duration::from_millis(50);

/// The marker file trails the synced epoch by at least this much, so a store copied
/// file by file while running (the marker after `db`) still opens.
const MARKER_TRAIL: Duration = Duration::from_secs(2);
const MARKER_FILE: &str = "deadline-notifier.marker";

/// First byte of every checksummed value: `MAGIC ‖ CRC32(json) ‖ json`.
const MAGIC: u8 = 0xd1;

/// The counted trees, with their `meta` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Subscriptions,
    Jobs,
    Outbox,
    DeadLetters,
}

impl Counted {
    const ALL: [Counted; 4] = [
        Counted::Subscriptions,
        Counted::Jobs,
        Counted::Outbox,
        Counted::DeadLetters,
    ];
    fn tree(self) -> &'static str {
        match self {
            Counted::Subscriptions => "subscriptions",
            Counted::Jobs => "jobs",
            Counted::Outbox => "outbox",
            Counted::DeadLetters => "dead_letters",
        }
    }
    fn meta_key(self) -> Vec<u8> {
        format!("count/{}", self.tree()).into_bytes()
    }
    fn idx(self) -> usize {
        self as usize
    }
}

const META_STORE_ID: &[u8] = b"store_id";
const META_EPOCH: &[u8] = b"epoch";

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
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
    meta: sled::Tree,
    /// `farm/queue` → when discovery last searched it.
    discovery: sled::Tree,
    /// Watches created through the API, by id.
    watches: sled::Tree,
    /// `team\0job\0channel` → the latest [`Notice`] of that subscription and channel.
    notices: sled::Tree,
    /// In-memory mirror of the `meta` counts (what `/metrics` reads).
    counts: [AtomicI64; 4],
    sync: Arc<SyncShared>,
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.sync.lock().stop = true;
        self.sync.cv.notify_all();
        if let Some(h) = self.syncer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

struct SyncShared {
    state: Mutex<SyncState>,
    cv: Condvar,
    /// Held while a transaction that adds outbox entries commits, and by the syncer
    /// while it reads `committed_seq`: the `seq` it then publishes covers only
    /// commits that finished before its flush began.
    commit_lock: Mutex<()>,
    committed_seq: AtomicU64,
    durable: watch::Sender<u64>,
}

#[derive(Default)]
struct SyncState {
    dirty_since: Option<Instant>,
    /// Tickets: `requested` is handed to callers of `sync`, `done` is the highest
    /// ticket a finished flush covered.
    requested: u64,
    done: u64,
    last_error: Option<String>,
    holds: usize,
    /// The newest `requested` ticket the syncer saw and held back because of a
    /// hold: what lets a test know it looked, instead of pausing and hoping it did.
    held_back: u64,
    stop: bool,
}

impl SyncShared {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// While alive, the group commit does not run (tests use it to hold a sync back).
pub struct SyncHold(Arc<SyncShared>);

impl Drop for SyncHold {
    fn drop(&mut self) {
        self.0.lock().holds -= 1;
        self.0.cv.notify_all();
    }
}

pub fn channel_key(team: &str, channel: &str) -> String {
    format!("{team}/{channel}")
}

fn outbox_key(team: &str, channel: &str, seq: u64) -> Vec<u8> {
    let mut k = outbox_prefix(team, channel);
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

fn notice_key(e: &OutboxEntry) -> Vec<u8> {
    let mut k = index_key(&e.team, &e.job);
    k.push(0);
    k.extend_from_slice(e.channel.as_bytes());
    k
}

/// Records where `e` stands as its subscription's latest notice on its channel.
/// A state change of an older message (`latest_only`) does not overwrite a newer one.
fn note(
    notices: &TransactionalTree,
    e: &OutboxEntry,
    state: NoticeState,
    at: DateTime<Utc>,
    latest_only: bool,
) -> TxResult<()> {
    if e.is_test() {
        return Ok(());
    }
    let key = notice_key(e);
    if latest_only {
        match notices.get(&key)? {
            Some(v) => {
                let cur: Notice = decode_in_tx(&v)?;
                if cur.webhook_id != e.webhook_id {
                    return Ok(());
                }
            }
            None => return Ok(()),
        }
    }
    let n = Notice {
        channel: e.channel.clone(),
        event: e.event,
        at,
        webhook_id: e.webhook_id.clone(),
        state,
    };
    notices.insert(key, enc(&n))?;
    Ok(())
}

/// Queues `entries` inside a transaction: each gets the next `seq`, is counted, and
/// becomes its subscription's pending notice on its channel.
fn put_entries(
    outbox: &TransactionalTree,
    meta: &TransactionalTree,
    notices: &TransactionalTree,
    entries: &[OutboxEntry],
) -> TxResult<Vec<OutboxEntry>> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let mut e = e.clone();
        e.seq = outbox.generate_id()?;
        outbox.insert(outbox_key(&e.team, &e.channel, e.seq), enc(&e))?;
        note(notices, &e, NoticeState::Pending, e.created_at, false)?;
        out.push(e);
    }
    bump(meta, Counted::Outbox, out.len() as i64)?;
    Ok(out)
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own types always serialize.
    let json = serde_json::to_vec(v).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + 5);
    out.push(MAGIC);
    out.extend_from_slice(&crc32fast::hash(&json).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// The JSON inside a checksummed value, or why it is damaged.
fn checked(bytes: &[u8]) -> Result<&[u8], String> {
    match bytes {
        [MAGIC, c0, c1, c2, c3, json @ ..] => {
            if crc32fast::hash(json).to_be_bytes() == [*c0, *c1, *c2, *c3] {
                Ok(json)
            } else {
                Err("checksum mismatch".into())
            }
        }
        _ => Err("value has no checksum header".into()),
    }
}

fn decode_in_tx<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, ConflictableTransactionError<String>> {
    let json = checked(bytes).map_err(ConflictableTransactionError::Abort)?;
    serde_json::from_slice(json).map_err(|e| ConflictableTransactionError::Abort(e.to_string()))
}

fn read_i64(v: Option<sled::IVec>) -> i64 {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, i64::from_be_bytes)
}

type TxResult<T> = Result<T, ConflictableTransactionError<String>>;

/// Adds `delta` to a count inside a transaction.
fn bump(meta: &TransactionalTree, c: Counted, delta: i64) -> TxResult<()> {
    if delta == 0 {
        return Ok(());
    }
    let k = c.meta_key();
    let n = read_i64(meta.get(&k)?) + delta;
    meta.insert(k, &n.to_be_bytes())?;
    Ok(())
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Marker {
    store_id: String,
    epoch: i64,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.into(),
            message,
        };
        let damaged = |message: String| StoreError::Damaged {
            path: path.into(),
            message,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| open_err(format!("cannot create directory: {e}")))?;
        }
        // sled 0.34 panics, rather than erroring, on some corrupt files; turn that into
        // an error naming the store so start-up fails cleanly instead of crash-looping.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Our group commit does every flush (each write marks the store dirty);
            // without sled's own flusher thread nothing holds the file lock once
            // the store is dropped.
            sled::Config::new()
                .path(path)
                .cache_capacity(CACHE_BYTES)
                .flush_every_ms(None)
                .open()
        }))
        .map_err(|_| damaged("sled could not recover its files".into()))?;
        let db = opened.map_err(|e| match &e {
            sled::Error::Io(io)
                if io.to_string().contains("lock")
                    || io.kind() == std::io::ErrorKind::WouldBlock =>
            {
                open_err(format!(
                    "{e} (is another deadline-notifier using this store?)"
                ))
            }
            sled::Error::Corruption { .. } => damaged(e.to_string()),
            _ => open_err(e.to_string()),
        })?;
        let t = |name: &str| {
            db.open_tree(name).map_err(|source| StoreError::Engine {
                path: path.into(),
                source,
            })
        };
        let initial = db.generate_id().map_err(|source| StoreError::Engine {
            path: path.into(),
            source,
        })?;
        let (durable, _) = watch::channel(initial);
        let sync = Arc::new(SyncShared {
            state: Mutex::new(SyncState::default()),
            cv: Condvar::new(),
            commit_lock: Mutex::new(()),
            committed_seq: AtomicU64::new(initial),
            durable,
        });
        let inner = Inner {
            subs: t("subscriptions")?,
            sub_index: t("subscription_index")?,
            jobs: t("jobs")?,
            outbox: t("outbox")?,
            dead: t("dead_letters")?,
            sent: t("delivered_log")?,
            channels: t("channels")?,
            meta: t("meta")?,
            discovery: t("discovery")?,
            watches: t("watches")?,
            notices: t("notices")?,
            counts: Default::default(),
            sync,
            syncer: Mutex::new(None),
            db,
            path: path.into(),
        };
        let store = Store {
            inner: Arc::new(inner),
        };
        let marker = store.check_integrity()?;
        let s = store.inner.clone();
        let handle = std::thread::Builder::new()
            .name("store-sync".into())
            .spawn({
                let sync = s.sync.clone();
                let db = s.db.clone();
                let meta = s.meta.clone();
                let path = s.path.clone();
                move || syncer(sync, db, meta, path, marker)
            })
            .map_err(|e| open_err(format!("cannot start the sync thread: {e}")))?;
        *s.syncer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(store)
    }

    fn marker_path(&self) -> PathBuf {
        self.inner.path.join(MARKER_FILE)
    }

    /// Verifies checksums and counts, and the marker; initialises a new store and
    /// seals one written before checksums existed. Returns the marker contents.
    fn check_integrity(&self) -> Result<Marker, StoreError> {
        let s = &self.inner;
        let damaged = |message: String| StoreError::Damaged {
            path: s.path.clone(),
            message,
        };
        let marker: Option<Marker> = match std::fs::read(self.marker_path()) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| {
                damaged(format!("its marker file {MARKER_FILE} is unreadable ({e})"))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(damaged(format!("cannot read {MARKER_FILE}: {e}"))),
        };
        let store_id = s.meta.get(META_STORE_ID).map_err(|e| self.eng(e))?;
        let epoch = read_i64(s.meta.get(META_EPOCH).map_err(|e| self.eng(e))?);
        let store_id = match store_id {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                if let Some(m) = &marker {
                    return Err(damaged(format!(
                        "its data file holds nothing of store {} (emptied, truncated or overwritten)",
                        m.store_id
                    )));
                }
                // New, or written by a version without checksums: seal and count it.
                self.seal()?
            }
        };
        if let Some(m) = &marker {
            if m.store_id != store_id {
                return Err(damaged(format!(
                    "its data file belongs to store {store_id}, its marker to store {}",
                    m.store_id
                )));
            }
            if m.epoch > epoch {
                return Err(damaged(format!(
                    "its data file was rolled back (sync epoch {epoch}, but {} was reached before): records written since are lost",
                    m.epoch
                )));
            }
        }
        let counts = self.walk_checked()?;
        for c in Counted::ALL {
            let kept = read_i64(s.meta.get(c.meta_key()).map_err(|e| self.eng(e))?);
            let found = counts[c.idx()];
            if kept != found {
                return Err(damaged(format!(
                    "tree {} holds {found} records but {kept} were written",
                    c.tree()
                )));
            }
            s.counts[c.idx()].store(found, Ordering::Relaxed);
        }
        let marker = Marker { store_id, epoch };
        self.write_marker(&marker)
            .map_err(|e| damaged(format!("cannot write {MARKER_FILE}: {e}")))?;
        Ok(marker)
    }

    /// Gives a store without a `store_id` one: checksums its values (a store from an
    /// earlier version holds plain JSON) and writes its counts.
    fn seal(&self) -> Result<String, StoreError> {
        let s = &self.inner;
        let mut counts = [0i64; 4];
        for (tree, name, counted) in self.json_trees() {
            let mut batch = sled::Batch::default();
            for kv in tree.iter() {
                let (k, v) = kv.map_err(|e| self.eng(e))?;
                let value: serde_json::Value = if checked(&v).is_ok() {
                    continue;
                } else {
                    serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                        path: s.path.clone(),
                        tree: name,
                        message: e.to_string(),
                    })?
                };
                batch.insert(k, enc(&value));
            }
            tree.apply_batch(batch).map_err(|e| self.eng(e))?;
            if let Some(c) = counted {
                counts[c.idx()] = tree.len() as i64;
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let mut batch = sled::Batch::default();
        for c in Counted::ALL {
            batch.insert(c.meta_key(), &counts[c.idx()].to_be_bytes());
        }
        batch.insert(META_EPOCH, &0i64.to_be_bytes());
        // Last: a crash before this leaves a store that is sealed again next time.
        batch.insert(META_STORE_ID, id.as_bytes());
        s.meta.apply_batch(batch).map_err(|e| self.eng(e))?;
        s.db.flush().map_err(|e| self.eng(e))?;
        Ok(id)
    }

    fn json_trees(&self) -> [(&sled::Tree, &'static str, Option<Counted>); 8] {
        let s = &self.inner;
        [
            (&s.subs, "subscriptions", Some(Counted::Subscriptions)),
            (&s.jobs, "jobs", Some(Counted::Jobs)),
            (&s.outbox, "outbox", Some(Counted::Outbox)),
            (&s.dead, "dead_letters", Some(Counted::DeadLetters)),
            (&s.channels, "channels", None),
            (&s.discovery, "discovery", None),
            (&s.watches, "watches", None),
            (&s.notices, "notices", None),
        ]
    }

    /// Checks every value's checksum (in parallel, one thread a tree); returns counts.
    fn walk_checked(&self) -> Result<[i64; 4], StoreError> {
        let trees = self.json_trees();
        let results: Vec<Result<(Option<Counted>, i64), StoreError>> = std::thread::scope(|sc| {
            let handles: Vec<_> = trees
                .iter()
                .map(|(tree, name, counted)| {
                    sc.spawn(move || {
                        let mut n = 0i64;
                        for v in tree.iter().values() {
                            let v = v.map_err(|e| self.eng(e))?;
                            checked(&v).map_err(|message| StoreError::Corrupt {
                                path: self.inner.path.clone(),
                                tree: name,
                                message,
                            })?;
                            n += 1;
                        }
                        Ok((*counted, n))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut counts = [0i64; 4];
        for r in results {
            if let (Some(c), n) = r? {
                counts[c.idx()] = n;
            }
        }
        Ok(counts)
    }

    fn write_marker(&self, m: &Marker) -> std::io::Result<()> {
        write_marker_file(&self.inner.path, m)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn eng(&self, source: sled::Error) -> StoreError {
        StoreError::Engine {
            path: self.inner.path.clone(),
            source,
        }
    }

    fn tx_err(&self, e: TransactionError<String>) -> StoreError {
        match e {
            TransactionError::Storage(source) => self.eng(source),
            TransactionError::Abort(message) => StoreError::Corrupt {
                path: self.inner.path.clone(),
                tree: "transaction",
                message,
            },
        }
    }

    fn dec<T: DeserializeOwned>(&self, tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            path: self.inner.path.clone(),
            tree,
            message,
        };
        let json = checked(bytes).map_err(corrupt)?;
        serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
    }

    fn adjust(&self, c: Counted, delta: i64) {
        self.inner.counts[c.idx()].fetch_add(delta, Ordering::Relaxed);
    }

    /// Runs blocking store work off the async runtime's worker threads.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| StoreError::Task {
                path: self.inner.path.clone(),
                message: e.to_string(),
            })?
    }

    // --- group commit ---

    /// Something was written: the group commit will sync it within [`GROUP_COMMIT`].
    fn mark_dirty(&self) {
        let mut st = self.inner.sync.lock();
        if st.dirty_since.is_none() {
            st.dirty_since = Some(crate::clock::monotonic());
            drop(st);
            self.inner.sync.cv.notify_all();
        }
    }

    /// Blocks until everything written before the call is on disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        let sh = &self.inner.sync;
        let mut st = sh.lock();
        st.requested += 1;
        let ticket = st.requested;
        sh.cv.notify_all();
        while st.done < ticket {
            if st.stop {
                break;
            }
            st = sh.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        match &st.last_error {
            Some(message) => Err(StoreError::Sync {
                path: self.inner.path.clone(),
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Async wrapper of [`Store::sync`].
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.run(|s| s.sync()).await
    }

    /// The highest outbox `seq` known to be on disk; entries above it must not be sent.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.inner.sync.durable.subscribe()
    }

    /// Holds the group commit back while the returned guard lives (tests).
    #[doc(hidden)]
    pub fn hold_syncs(&self) -> SyncHold {
        self.inner.sync.lock().holds += 1;
        SyncHold(self.inner.sync.clone())
    }

    /// Runs `f` (a transaction adding outbox entries) so that the syncer's snapshot of
    /// the highest committed `seq` never covers a commit still in flight.
    fn committing<T>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError>,
        max_seq: impl Fn(&T) -> Option<u64>,
    ) -> Result<T, StoreError> {
        let sh = &self.inner.sync;
        let r = {
            let _g = sh.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
            let r = f()?;
            if let Some(seq) = max_seq(&r) {
                sh.committed_seq.fetch_max(seq, Ordering::SeqCst);
            }
            r
        };
        self.mark_dirty();
        Ok(r)
    }

    // --- subscriptions ---

    /// Inserts `sub` unless the team already subscribes the job; returns the stored
    /// subscription and whether it was created.
    pub fn insert_subscription(
        &self,
        sub: Subscription,
    ) -> Result<(Subscription, bool), StoreError> {
        let ik = index_key(&sub.team, &sub.job);
        let s = &self.inner;
        let res = (&s.subs, &s.sub_index, &s.meta).transaction(
            |(subs, idx, meta)| -> TxResult<(Subscription, bool)> {
                if let Some(id) = idx.get(&ik)?
                    && let Some(existing) = subs.get(&id)?
                {
                    let existing: Subscription = decode_in_tx(&existing)?;
                    if existing.is_active() {
                        return Ok((existing, false));
                    }
                    subs.remove(&id)?;
                    bump(meta, Counted::Subscriptions, -1)?;
                }
                if subs.insert(sub.id.as_bytes(), enc(&sub))?.is_none() {
                    bump(meta, Counted::Subscriptions, 1)?;
                }
                idx.insert(ik.clone(), sub.id.as_bytes())?;
                Ok((sub.clone(), true))
            },
        );
        let r = res.map_err(|e| self.tx_err(e))?;
        self.recount(Counted::Subscriptions)?;
        self.mark_dirty();
        // A 201 promises the subscription survives a crash.
        self.sync()?;
        Ok(r)
    }

    /// Reloads one in-memory count from `meta` (after a transaction whose delta is
    /// only known inside it).
    fn recount(&self, c: Counted) -> Result<(), StoreError> {
        let n = read_i64(self.inner.meta.get(c.meta_key()).map_err(|e| self.eng(e))?);
        self.inner.counts[c.idx()].store(n, Ordering::Relaxed);
        Ok(())
    }

    /// Loads many subscriptions at once (benchmarks, bulk imports): large
    /// transactions and a single sync, instead of one transaction each.
    pub fn insert_subscriptions_bulk(&self, subs: &[Subscription]) -> Result<(), StoreError> {
        let s = &self.inner;
        for chunk in subs.chunks(2000) {
            (&s.subs, &s.sub_index, &s.meta)
                .transaction(|(t_subs, t_idx, meta)| -> TxResult<()> {
                    let mut added = 0;
                    for sub in chunk {
                        if t_subs.insert(sub.id.as_bytes(), enc(sub))?.is_none() {
                            added += 1;
                        }
                        t_idx.insert(index_key(&sub.team, &sub.job), sub.id.as_bytes())?;
                    }
                    bump(meta, Counted::Subscriptions, added)
                })
                .map_err(|e| self.tx_err(e))?;
        }
        self.recount(Counted::Subscriptions)?;
        self.mark_dirty();
        self.sync()
    }

    /// A cheap liveness probe of the engine.
    pub fn verify_open(&self) -> bool {
        self.inner.channels.get(b"\0probe").is_ok()
    }

    /// Kept up to date on every change: O(1).
    pub fn subscription_count(&self) -> usize {
        self.count(Counted::Subscriptions)
    }

    fn count(&self, c: Counted) -> usize {
        self.inner.counts[c.idx()].load(Ordering::Relaxed).max(0) as usize
    }

    pub fn subscription(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        match self
            .inner
            .subs
            .get(id.as_bytes())
            .map_err(|e| self.eng(e))?
        {
            Some(v) => Ok(Some(self.dec("subscriptions", &v)?)),
            None => Ok(None),
        }
    }

    pub fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.inner
            .subs
            .iter()
            .values()
            .map(|v| self.dec("subscriptions", &v.map_err(|e| self.eng(e))?))
            .collect()
    }

    pub fn delete_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        let ik = index_key(&sub.team, &sub.job);
        let s = &self.inner;
        let removed = (&s.subs, &s.sub_index, &s.meta)
            .transaction(|(subs, idx, meta)| -> TxResult<bool> {
                let removed = subs.remove(sub.id.as_bytes())?.is_some();
                if removed {
                    bump(meta, Counted::Subscriptions, -1)?;
                }
                if idx.get(&ik)?.as_deref() == Some(sub.id.as_bytes()) {
                    idx.remove(ik.clone())?;
                }
                Ok(removed)
            })
            .map_err(|e| self.tx_err(e))?;
        if removed {
            self.adjust(Counted::Subscriptions, -1);
        }
        let mut prefix = ik;
        prefix.push(0);
        for k in s.notices.scan_prefix(&prefix).keys() {
            s.notices
                .remove(k.map_err(|e| self.eng(e))?)
                .map_err(|e| self.eng(e))?;
        }
        self.mark_dirty();
        self.sync()
    }

    /// The latest notice of a team's subscription to `job`, per channel.
    pub fn notices(&self, team: &str, job: &JobKey) -> Result<Vec<Notice>, StoreError> {
        let mut prefix = index_key(team, job);
        prefix.push(0);
        self.inner
            .notices
            .scan_prefix(prefix)
            .values()
            .map(|v| self.dec("notices", &v.map_err(|e| self.eng(e))?))
            .collect()
    }

    /// Marks every active subscription of `job` as ended (the job is gone).
    pub fn end_subscriptions(&self, job: &JobKey, reason: &str) -> Result<usize, StoreError> {
        let ids: Vec<String> = self
            .subscriptions()?
            .into_iter()
            .filter(|s| &s.job == job && s.is_active())
            .map(|s| s.id)
            .collect();
        self.end_subscriptions_by_id(&ids, reason)
    }

    /// Writes `value` under `key` only if a record is there: an update never
    /// re-creates a record removed meanwhile (counts stay exact).
    fn replace_existing(
        &self,
        tree: &sled::Tree,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        tree.transaction(|t| -> TxResult<()> {
            if t.get(&key)?.is_some() {
                t.insert(key.clone(), value.clone())?;
            }
            Ok(())
        })
        .map_err(|e| self.tx_err(e))?;
        self.mark_dirty();
        Ok(())
    }

    /// Replaces a stored subscription (same id), and syncs.
    pub fn update_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        self.replace_existing(&self.inner.subs, sub.id.as_bytes().to_vec(), enc(sub))?;
        self.sync()
    }

    /// Queues entries that belong to no job transition (a channel test), and syncs;
    /// they are sent like any other once durable.
    pub fn enqueue(&self, entries: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, StoreError> {
        let s = &self.inner;
        let out = self.committing(
            || {
                (&s.outbox, &s.meta, &s.notices)
                    .transaction(|(outbox, meta, notices)| -> TxResult<Vec<OutboxEntry>> {
                        put_entries(outbox, meta, notices, &entries)
                    })
                    .map_err(|e| self.tx_err(e))
            },
            |out| out.iter().map(|e| e.seq).max(),
        )?;
        self.adjust(Counted::Outbox, out.len() as i64);
        self.sync()?;
        Ok(out)
    }

    /// Ends the given subscriptions (e.g. now outside their team's allow-lists).
    pub fn end_subscriptions_by_id(
        &self,
        ids: &[String],
        reason: &str,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for id in ids {
            if let Some(mut s) = self.subscription(id)?
                && s.is_active()
            {
                s.state = "ended".into();
                s.ended_reason = Some(reason.into());
                self.inner
                    .subs
                    .insert(s.id.as_bytes(), enc(&s))
                    .map_err(|e| self.eng(e))?;
                n += 1;
            }
        }
        if n > 0 {
            self.mark_dirty();
            self.sync()?;
        }
        Ok(n)
    }

    // --- job state and the transactional outbox ---

    pub fn job_state(&self, job: &JobKey) -> Result<Option<JobState>, StoreError> {
        match self
            .inner
            .jobs
            .get(job_key_bytes(job))
            .map_err(|e| self.eng(e))?
        {
            Some(v) => Ok(Some(self.dec("jobs", &v)?)),
            None => Ok(None),
        }
    }

    /// Every stored job state (start-up loads them once).
    pub fn job_states(&self) -> Result<Vec<JobState>, StoreError> {
        self.inner
            .jobs
            .iter()
            .values()
            .map(|v| self.dec("jobs", &v.map_err(|e| self.eng(e))?))
            .collect()
    }

    /// Stores the job's new state and queues `entries`, atomically. Returns the
    /// queued entries with their sequence numbers. The group commit syncs it; the
    /// entries become sendable when [`Store::durable`] reaches their `seq`.
    pub fn commit_observation(
        &self,
        state: &JobState,
        entries: Vec<OutboxEntry>,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let jk = job_key_bytes(&state.job);
        let value = enc(state);
        let s = &self.inner;
        let (out, new_job) = self.committing(
            || {
                (&s.jobs, &s.outbox, &s.meta, &s.notices)
                    .transaction(
                        |(jobs, outbox, meta, notices)| -> TxResult<(Vec<OutboxEntry>, bool)> {
                            let new_job = jobs.insert(jk.clone(), value.clone())?.is_none();
                            if new_job {
                                bump(meta, Counted::Jobs, 1)?;
                            }
                            Ok((put_entries(outbox, meta, notices, &entries)?, new_job))
                        },
                    )
                    .map_err(|e| self.tx_err(e))
            },
            |(out, _)| out.iter().map(|e| e.seq).max(),
        )?;
        if new_job {
            self.adjust(Counted::Jobs, 1);
        }
        self.adjust(Counted::Outbox, out.len() as i64);
        Ok(out)
    }

    /// Queued entries of one channel with `from ≤ seq ≤ upto`, oldest first.
    pub fn outbox_range(
        &self,
        team: &str,
        channel: &str,
        from: u64,
        upto: u64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        if from > upto {
            return Ok(Vec::new());
        }
        let from = outbox_key(team, channel, from);
        let to = outbox_key(team, channel, upto);
        self.inner
            .outbox
            .range(from..=to)
            .values()
            .map(|v| self.dec("outbox", &v.map_err(|e| self.eng(e))?))
            .collect()
    }

    /// One queued entry, if it is still queued.
    pub fn outbox_entry(
        &self,
        team: &str,
        channel: &str,
        seq: u64,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        match self
            .inner
            .outbox
            .get(outbox_key(team, channel, seq))
            .map_err(|e| self.eng(e))?
        {
            Some(v) => Ok(Some(self.dec("outbox", &v)?)),
            None => Ok(None),
        }
    }

    /// Every queued entry still waiting for failure triage (read once at start-up).
    pub fn outbox_awaiting_triage(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut out = Vec::new();
        for v in self.inner.outbox.iter().values() {
            let e: OutboxEntry = self.dec("outbox", &v.map_err(|e| self.eng(e))?)?;
            if e.triage_until.is_some() {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Stores a triaged message: its payload and facts, due now; drops what was kept
    /// only for triage. Returns false when the entry is gone (already sent with its
    /// fallback, or dead-lettered). Synced by the group commit.
    pub fn finish_triage(
        &self,
        team: &str,
        channel: &str,
        seq: u64,
        payload: serde_json::Value,
        failure: crate::domain::Failure,
    ) -> Result<bool, StoreError> {
        let key = outbox_key(team, channel, seq);
        let done = self
            .inner
            .outbox
            .transaction(|t| -> TxResult<bool> {
                let Some(v) = t.get(&key)? else {
                    return Ok(false);
                };
                let mut e: OutboxEntry = decode_in_tx(&v)?;
                if e.triage_until.is_none() {
                    return Ok(false);
                }
                e.payload = payload.clone();
                e.failure = Some(failure.clone());
                e.triage_until = None;
                e.snapshot = None;
                e.transition = None;
                e.next_attempt_at = e.next_attempt_at.min(crate::clock::wall_now());
                t.insert(key.clone(), enc(&e))?;
                Ok(true)
            })
            .map_err(|e| self.tx_err(e))?;
        self.mark_dirty();
        Ok(done)
    }

    /// The oldest pending entry of a channel.
    pub fn outbox_head(
        &self,
        team: &str,
        channel: &str,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        match self
            .inner
            .outbox
            .scan_prefix(outbox_prefix(team, channel))
            .next()
        {
            Some(kv) => {
                let (_, v) = kv.map_err(|e| self.eng(e))?;
                Ok(Some(self.dec("outbox", &v)?))
            }
            None => Ok(None),
        }
    }

    pub fn dead_letter_count(&self) -> usize {
        self.count(Counted::DeadLetters)
    }

    pub fn outbox_len(&self) -> usize {
        self.count(Counted::Outbox)
    }

    /// Messages queued for one channel (walks that channel's entries).
    pub fn outbox_len_for(&self, team: &str, channel: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.inner.outbox.scan_prefix(outbox_prefix(team, channel)) {
            kv.map_err(|e| self.eng(e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Saves retry bookkeeping of a queued entry (never re-creates a removed one).
    pub fn update_outbox(&self, e: &OutboxEntry) -> Result<(), StoreError> {
        self.replace_existing(
            &self.inner.outbox,
            outbox_key(&e.team, &e.channel, e.seq),
            enc(e),
        )
    }

    /// Removes a delivered entry and records its webhook-id in the delivery log,
    /// atomically. Synced by the group commit (≤ [`GROUP_COMMIT`]), not per message.
    pub fn delivered(&self, e: &OutboxEntry, now: DateTime<Utc>) -> Result<(), StoreError> {
        let ok = outbox_key(&e.team, &e.channel, e.seq);
        let at = now.timestamp_millis().to_be_bytes();
        let s = &self.inner;
        let removed = (&s.outbox, &s.sent, &s.meta, &s.notices)
            .transaction(|(outbox, sent, meta, notices)| -> TxResult<bool> {
                let removed = outbox.remove(ok.clone())?.is_some();
                if removed {
                    bump(meta, Counted::Outbox, -1)?;
                }
                sent.insert(e.webhook_id.as_bytes(), &at)?;
                note(notices, e, NoticeState::Delivered, now, true)?;
                Ok(removed)
            })
            .map_err(|e| self.tx_err(e))?;
        if removed {
            self.adjust(Counted::Outbox, -1);
        }
        self.mark_dirty();
        Ok(())
    }

    /// Whether a notification with this webhook-id was already delivered.
    pub fn was_delivered(&self, webhook_id: &str) -> Result<bool, StoreError> {
        self.inner
            .sent
            .contains_key(webhook_id.as_bytes())
            .map_err(|e| self.eng(e))
    }

    /// Drops delivery-log records older than `before`; returns how many.
    pub fn prune_delivered(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let cutoff = before.timestamp_millis();
        let mut n = 0;
        for kv in self.inner.sent.iter() {
            let (k, v) = kv.map_err(|e| self.eng(e))?;
            let at = read_i64(Some(v));
            if at < cutoff {
                self.inner.sent.remove(k).map_err(|e| self.eng(e))?;
                n += 1;
            }
        }
        if n > 0 {
            self.mark_dirty();
        }
        Ok(n)
    }

    /// Moves an entry from the outbox to the dead letters, atomically, and syncs.
    pub fn dead_letter(
        &self,
        e: &OutboxEntry,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<DeadLetter, StoreError> {
        let ok = outbox_key(&e.team, &e.channel, e.seq);
        let s = &self.inner;
        let (dl, removed) = (&s.outbox, &s.dead, &s.meta, &s.notices)
            .transaction(
                |(outbox, dead, meta, notices)| -> TxResult<(DeadLetter, bool)> {
                    note(notices, e, NoticeState::DeadLetter, now, true)?;
                    let id = dead.generate_id()?;
                    let dl = DeadLetter {
                        id,
                        reason: reason.to_string(),
                        dead_at: now,
                        entry: e.clone(),
                    };
                    let removed = outbox.remove(ok.clone())?.is_some();
                    if removed {
                        bump(meta, Counted::Outbox, -1)?;
                    }
                    dead.insert(&id.to_be_bytes(), enc(&dl))?;
                    bump(meta, Counted::DeadLetters, 1)?;
                    Ok((dl, removed))
                },
            )
            .map_err(|e| self.tx_err(e))?;
        if removed {
            self.adjust(Counted::Outbox, -1);
        }
        self.adjust(Counted::DeadLetters, 1);
        self.mark_dirty();
        Ok(dl)
    }

    pub fn dead_letter_by_id(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        match self
            .inner
            .dead
            .get(id.to_be_bytes())
            .map_err(|e| self.eng(e))?
        {
            Some(v) => Ok(Some(self.dec("dead_letters", &v)?)),
            None => Ok(None),
        }
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner
            .dead
            .iter()
            .values()
            .map(|v| self.dec("dead_letters", &v.map_err(|e| self.eng(e))?))
            .collect()
    }

    /// Re-queues a dead letter with its original `webhook-id`, at the tail of its
    /// channel, and waits until that is on disk.
    pub fn replay_dead_letter(
        &self,
        id: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        let dk = id.to_be_bytes();
        let s = &self.inner;
        let r = self.committing(
            || {
                (&s.outbox, &s.dead, &s.meta, &s.notices)
                    .transaction(
                        |(outbox, dead, meta, notices)| -> TxResult<Option<OutboxEntry>> {
                            let Some(v) = dead.get(dk)? else {
                                return Ok(None);
                            };
                            let dl: DeadLetter = decode_in_tx(&v)?;
                            let mut e = dl.entry;
                            e.seq = outbox.generate_id()?;
                            e.attempts = 0;
                            e.next_attempt_at = now;
                            e.created_at = now;
                            e.last_error = None;
                            outbox.insert(outbox_key(&e.team, &e.channel, e.seq), enc(&e))?;
                            note(notices, &e, NoticeState::Pending, now, false)?;
                            dead.remove(&dk)?;
                            bump(meta, Counted::Outbox, 1)?;
                            bump(meta, Counted::DeadLetters, -1)?;
                            Ok(Some(e))
                        },
                    )
                    .map_err(|e| self.tx_err(e))
            },
            |r| r.as_ref().map(|e| e.seq),
        )?;
        if r.is_some() {
            self.adjust(Counted::Outbox, 1);
            self.adjust(Counted::DeadLetters, -1);
        }
        self.sync()?;
        Ok(r)
    }

    // --- whole-store checks ---

    /// Reads and decodes every record of every tree; an error names the tree.
    pub fn verify(&self) -> Result<StoreCounts, StoreError> {
        let s = &self.inner;
        let subscriptions = self.subscriptions()?.len();
        let jobs = self.job_states()?.len();
        let mut outbox = 0;
        for v in s.outbox.iter().values() {
            let _: OutboxEntry = self.dec("outbox", &v.map_err(|e| self.eng(e))?)?;
            outbox += 1;
        }
        let dead_letters = self.dead_letters()?.len();
        for v in s.channels.iter().values() {
            let _: ChannelState = self.dec("channels", &v.map_err(|e| self.eng(e))?)?;
        }
        let mut delivered_log = 0;
        for kv in s.sent.iter() {
            kv.map_err(|e| self.eng(e))?;
            delivered_log += 1;
        }
        Ok(StoreCounts {
            subscriptions,
            jobs,
            outbox,
            dead_letters,
            delivered_log,
        })
    }

    // --- watches ---

    /// Every watch created through the API.
    pub fn watches(&self) -> Result<Vec<crate::domain::Watch>, StoreError> {
        self.inner
            .watches
            .iter()
            .values()
            .map(|v| self.dec("watches", &v.map_err(|e| self.eng(e))?))
            .collect()
    }

    /// Stores `w` unless its team already has a watch of that name; returns the
    /// stored one and whether it was created. Synced before it returns.
    pub fn insert_watch(
        &self,
        w: crate::domain::Watch,
    ) -> Result<(crate::domain::Watch, bool), StoreError> {
        let _g = self
            .inner
            .sync
            .commit_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = self
            .watches()?
            .into_iter()
            .find(|x| x.team == w.team && x.name == w.name)
        {
            return Ok((existing, false));
        }
        self.inner
            .watches
            .insert(w.id.as_bytes(), enc(&w))
            .map_err(|e| self.eng(e))?;
        drop(_g);
        self.mark_dirty();
        self.sync()?;
        Ok((w, true))
    }

    pub fn delete_watch(&self, id: &str) -> Result<(), StoreError> {
        self.inner
            .watches
            .remove(id.as_bytes())
            .map_err(|e| self.eng(e))?;
        self.mark_dirty();
        self.sync()
    }

    // --- discovery ---

    /// When discovery last searched each (farm, queue).
    pub fn discovery_marks(&self) -> Result<Vec<(String, String, DateTime<Utc>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.discovery.iter() {
            let (k, v) = kv.map_err(|e| self.eng(e))?;
            let at: DateTime<Utc> = self.dec("discovery", &v)?;
            let k = String::from_utf8_lossy(&k).into_owned();
            if let Some((farm, queue)) = k.split_once('/') {
                out.push((farm.to_string(), queue.to_string(), at));
            }
        }
        Ok(out)
    }

    /// Records discovery passes (ride the group commit: a lost mark only means the
    /// next pass looks further back, and subscribing is idempotent).
    pub fn set_discovery_marks(
        &self,
        marks: &[(String, String, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (farm, queue, at) in marks {
            b.insert(format!("{farm}/{queue}").as_bytes(), enc(at));
        }
        self.inner
            .discovery
            .apply_batch(b)
            .map_err(|e| self.eng(e))?;
        self.mark_dirty();
        Ok(())
    }

    /// Forgets the marks of queues no watch covers any more, so a watch added on
    /// one later looks back only over the overlap, not to a pass months ago.
    pub fn remove_discovery_marks(&self, keys: &[(String, String)]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (farm, queue) in keys {
            b.remove(format!("{farm}/{queue}").as_bytes());
        }
        self.inner
            .discovery
            .apply_batch(b)
            .map_err(|e| self.eng(e))?;
        self.mark_dirty();
        Ok(())
    }

    // --- channel state ---

    pub fn channel_state(&self, team: &str, channel: &str) -> Result<ChannelState, StoreError> {
        match self
            .inner
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
        self.inner
            .channels
            .insert(channel_key(team, channel), enc(st))
            .map_err(|e| self.eng(e))?;
        self.mark_dirty();
        self.sync()
    }

    /// Damages one stored value in place (tests of the integrity checks).
    #[doc(hidden)]
    pub fn damage_subscription_for_tests(&self, id: &str) -> Result<(), StoreError> {
        let s = &self.inner;
        if let Some(v) = s.subs.get(id.as_bytes()).map_err(|e| self.eng(e))? {
            let mut v = v.to_vec();
            if let Some(last) = v.last_mut() {
                *last ^= 0x01;
            }
            s.subs.insert(id.as_bytes(), v).map_err(|e| self.eng(e))?;
        }
        s.db.flush().map_err(|e| self.eng(e))?;
        Ok(())
    }
}

fn write_marker_file(dir: &Path, m: &Marker) -> std::io::Result<()> {
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(m).unwrap_or_default())?;
    std::fs::rename(tmp, dir.join(MARKER_FILE))
}

/// The group commit: one fsync per window in which something was written, at once
/// when a caller waits in [`Store::sync`].
fn syncer(sh: Arc<SyncShared>, db: sled::Db, meta: sled::Tree, path: PathBuf, marker: Marker) {
    let mut epoch = marker.epoch;
    // (epoch, when it became durable): mirrored to the marker once it is old enough.
    let mut candidate: Option<(i64, Instant)> = None;
    let mut marker_epoch = marker.epoch;
    loop {
        let ticket = {
            let mut st = sh.lock();
            loop {
                let wanted = st.requested > st.done;
                if st.stop {
                    if wanted || st.dirty_since.is_some() {
                        break;
                    }
                    drop(st);
                    // A clean stop: the data file is complete, so the marker may
                    // record exactly how far it reaches.
                    if epoch > marker_epoch {
                        let m = Marker {
                            store_id: marker.store_id.clone(),
                            epoch,
                        };
                        if let Err(err) = write_marker_file(&path, &m) {
                            tracing::warn!(store = %path.display(), error = %err, "cannot update the store marker");
                        }
                    }
                    return;
                }
                if st.holds > 0 {
                    st.held_back = st.requested;
                    sh.cv.notify_all();
                    st = sh.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                if wanted {
                    break;
                }
                match st.dirty_since {
                    Some(t) => {
                        let due = t + GROUP_COMMIT;
                        let now = crate::clock::monotonic();
                        if now >= due {
                            break;
                        }
                        st = sh
                            .cv
                            .wait_timeout(st, due - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    None => st = sh.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                }
            }
            st.dirty_since = None;
            st.requested
        };
        let seq = {
            let _g = sh.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.committed_seq.load(Ordering::SeqCst)
        };
        epoch += 1;
        let result = meta
            .insert(META_EPOCH, &epoch.to_be_bytes())
            .and_then(|_| db.flush());
        // Publish the watermark before releasing waiters: once `sync` returns,
        // `durable()` already covers everything it waited for.
        if result.is_ok() {
            sh.durable.send_if_modified(|d| {
                if seq > *d {
                    *d = seq;
                    true
                } else {
                    false
                }
            });
        }
        {
            let mut st = sh.lock();
            st.done = st.done.max(ticket);
            st.last_error = result.as_ref().err().map(|e| e.to_string());
        }
        sh.cv.notify_all();
        match result {
            Ok(_) => {
                let now = crate::clock::monotonic();
                match candidate {
                    Some((e, at)) if now.duration_since(at) >= MARKER_TRAIL => {
                        if e > marker_epoch {
                            let m = Marker {
                                store_id: marker.store_id.clone(),
                                epoch: e,
                            };
                            if let Err(err) = write_marker_file(&path, &m) {
                                tracing::warn!(store = %path.display(), error = %err, "cannot update the store marker");
                            } else {
                                marker_epoch = e;
                            }
                        }
                        candidate = Some((epoch, now));
                    }
                    None => candidate = Some((epoch, now)),
                    Some(_) => {}
                }
            }
            Err(e) => {
                tracing::error!(store = %path.display(), error = %e, "store sync failed; nothing new is sent until a sync succeeds");
                // Retry soon rather than spin.
                std::thread::sleep(GROUP_COMMIT);
                sh.lock()
                    .dirty_since
                    .get_or_insert(crate::clock::monotonic());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Event, JobSnapshot, JobStatus};

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
            kind: "webhook".into(),
            job,
            event: Event::Succeeded,
            created_at: crate::clock::wall_now(),
            attempts: 0,
            next_attempt_at: crate::clock::wall_now(),
            last_error: None,
            payload: serde_json::json!({}),
            triage_until: None,
            failure: None,
            snapshot: None,
            transition: None,
        }
    }

    fn state(n: u8) -> JobState {
        JobState {
            job: key(n),
            status: JobStatus::of(&JobSnapshot::sample(key(n), "a")),
            since: crate::clock::wall_now(),
            terminal_since: None,
            progress: Default::default(),
        }
    }

    fn sub(id: &str, team: &str, n: u8) -> Subscription {
        Subscription {
            id: id.into(),
            team: team.into(),
            job: key(n),
            channels: vec![],
            events: vec![],
            created_at: crate::clock::wall_now(),
            state: "active".into(),
            ended_reason: None,
            watch: None,
            muted: false,
        }
    }

    #[test]
    fn state_and_outbox_commit_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        {
            let s = Store::open(&p).unwrap();
            let q = s
                .commit_observation(
                    &state(1),
                    vec![entry("t", "c", key(1)), entry("t", "c", key(1))],
                )
                .unwrap();
            assert!(q[0].seq < q[1].seq);
            s.sync().unwrap();
            assert!(*s.durable().borrow() >= q[1].seq);
        }
        let s = reopen(&p).unwrap();
        assert!(s.job_state(&key(1)).unwrap().is_some());
        assert_eq!(s.outbox_len(), 2);
        let head = s.outbox_head("t", "c").unwrap().unwrap();
        s.delivered(&head, crate::clock::wall_now()).unwrap();
        assert!(s.was_delivered("msg_x").unwrap());
        let next = s.outbox_head("t", "c").unwrap().unwrap();
        assert!(next.seq > head.seq);
        let dl = s
            .dead_letter(&next, "HTTP 400", crate::clock::wall_now())
            .unwrap();
        assert!(s.outbox_head("t", "c").unwrap().is_none());
        assert_eq!((s.outbox_len(), s.dead_letter_count()), (0, 1));
        let back = s
            .replay_dead_letter(dl.id, crate::clock::wall_now())
            .unwrap()
            .unwrap();
        assert_eq!(back.webhook_id, "msg_x");
        assert!(s.dead_letters().unwrap().is_empty());
        assert_eq!((s.outbox_len(), s.dead_letter_count()), (1, 0));
    }

    #[test]
    fn one_subscription_per_team_and_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        assert!(s.insert_subscription(sub("a", "t1", 2)).unwrap().1);
        let (existing, created) = s.insert_subscription(sub("b", "t1", 2)).unwrap();
        assert!(!created);
        assert_eq!(existing.id, "a");
        assert!(s.insert_subscription(sub("c", "t2", 2)).unwrap().1);
        assert_eq!(s.subscription_count(), 2);
        s.delete_subscription(&existing).unwrap();
        assert_eq!(s.subscription_count(), 1);
        assert!(s.insert_subscription(sub("d", "t1", 2)).unwrap().1);
        assert_eq!(s.subscription_count(), 2);
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

    #[test]
    fn nothing_is_durable_while_the_sync_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let before = *s.durable().borrow();
        let hold = s.hold_syncs();
        let q = s
            .commit_observation(&state(1), vec![entry("t", "c", key(1))])
            .unwrap();
        // A caller waits for a flush: without the hold the syncer would flush now.
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let (s, released) = (s.clone(), released.clone());
            std::thread::spawn(move || {
                s.sync().unwrap();
                assert!(
                    released.load(std::sync::atomic::Ordering::SeqCst),
                    "a flush ran while the sync was held"
                );
            })
        };
        // The control: the syncer has seen that request and held it back.
        {
            let sh = &s.inner.sync;
            let deadline = crate::clock::monotonic() + Duration::from_secs(10);
            let mut st = sh.lock();
            while !(st.requested > st.done && st.held_back == st.requested) {
                assert!(
                    crate::clock::monotonic() < deadline,
                    "the syncer never looked at the request"
                );
                st = sh
                    .cv
                    .wait_timeout(st, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        assert_eq!(*s.durable().borrow(), before, "published while held");
        released.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(hold);
        waiter.join().unwrap();
        assert!(*s.durable().borrow() >= q[0].seq);
    }

    #[test]
    fn delivered_is_synced_by_the_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let q = s
            .commit_observation(&state(1), vec![entry("t", "c", key(1))])
            .unwrap();
        s.sync().unwrap();
        s.delivered(&q[0], crate::clock::wall_now()).unwrap();
        // The syncer runs by itself (no caller waits): the dirty flag is cleared
        // once it has flushed.
        let deadline = crate::clock::monotonic() + Duration::from_secs(10);
        while s.inner.sync.lock().dirty_since.is_some() {
            assert!(
                crate::clock::monotonic() < deadline,
                "group commit never ran"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Opens a store just closed in this process. sled's background I/O may hold
    /// the file lock for a moment after a drop (a different process never sees
    /// this): wait for it, with a deadline.
    fn reopen(p: &Path) -> Result<Store, StoreError> {
        let deadline = crate::clock::monotonic() + Duration::from_secs(10);
        loop {
            match Store::open(p) {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && crate::clock::monotonic() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    fn reopen_err(p: &Path) -> String {
        reopen(p).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_damaged_value_is_refused_naming_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        {
            let s = Store::open(&p).unwrap();
            s.insert_subscription(sub("a", "t", 1)).unwrap();
            s.damage_subscription_for_tests("a").unwrap();
            let e = s.subscription("a").unwrap_err().to_string();
            assert!(
                e.contains("checksum") && e.contains(&p.display().to_string()),
                "{e}"
            );
        }
        let e = reopen_err(&p);
        assert!(
            e.contains("checksum") && e.contains(&p.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn a_missing_record_is_a_count_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        {
            let s = Store::open(&p).unwrap();
            s.insert_subscription(sub("a", "t", 1)).unwrap();
            s.insert_subscription(sub("b", "t", 2)).unwrap();
            // Behind the store's back, as lost data would be.
            s.inner.subs.remove(b"a").unwrap();
            s.inner.db.flush().unwrap();
        }
        let e = reopen_err(&p);
        assert!(
            e.contains("the store is corrupt") && e.contains("export"),
            "{e}"
        );
        assert!(e.contains("subscriptions holds 1 records but 2"), "{e}");
    }

    #[test]
    fn an_emptied_data_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        {
            let s = Store::open(&p).unwrap();
            s.insert_subscription(sub("a", "t", 1)).unwrap();
        }
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap() != MARKER_FILE {
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).unwrap();
                } else {
                    std::fs::remove_file(&path).unwrap();
                }
            }
        }
        let e = reopen_err(&p);
        assert!(e.contains("holds nothing"), "{e}");
    }

    #[test]
    fn a_rolled_back_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        {
            let _s = Store::open(&p).unwrap();
        }
        let m: Marker =
            serde_json::from_slice(&std::fs::read(p.join(MARKER_FILE)).unwrap()).unwrap();
        write_marker_file(
            &p,
            &Marker {
                store_id: m.store_id,
                epoch: m.epoch + 1000,
            },
        )
        .unwrap();
        let e = reopen_err(&p);
        assert!(e.contains("rolled back"), "{e}");
    }

    #[test]
    fn a_store_from_before_checksums_is_sealed_on_first_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        {
            let db = sled::Config::new()
                .path(&p)
                .flush_every_ms(None)
                .open()
                .unwrap();
            let subs = db.open_tree("subscriptions").unwrap();
            subs.insert(b"a", serde_json::to_vec(&sub("a", "t", 1)).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        {
            let s = reopen(&p).unwrap();
            assert_eq!(s.subscription_count(), 1);
            assert_eq!(s.subscription("a").unwrap().unwrap().team, "t");
        }
        let s = reopen(&p).unwrap();
        assert_eq!(s.verify().unwrap().subscriptions, 1);
    }
}
