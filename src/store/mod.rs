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
//!
//! Here: opening, the trees, keys and the checksummed codec. One file per record
//! family (`subscriptions`, `outbox` with job states, `dead_letters`, `watches` with
//! discovery marks and channel state), the group commit (`sync`), damage detection
//! (`integrity`), worker wake-ups (`wakers`). May import `domain` and `clock` only.
mod anchors;
mod dead_letters;
mod integrity;
mod lifecycle;
mod outbox;
mod split;
mod subscriptions;
mod sync;
mod wakers;
mod watches;

use integrity::{Marker, write_marker_file};
pub use lifecycle::{Page, PageFrom, SubClass};
pub use subscriptions::Inserted;
use subscriptions::note;
#[cfg(test)]
pub use sync::SyncHold;
use sync::{SyncShared, SyncState, syncer};
pub use wakers::Wakers;

use crate::domain::{
    ChannelState, DeadLetter, JobKey, JobState, Notice, NoticeState, OutboxEntry, Subscription,
    SubscriptionHead,
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
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

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
    /// `team\0name` → watch id: a new watch's name is looked up, not searched for.
    watch_names: sled::Tree,
    /// `createdBy` values that map to nobody in `[[people]]` → when last seen.
    unmapped: sled::Tree,
    /// `team\0class\0newest-first time‖id` → (): a team's subscriptions in page
    /// order, `a` for active ones, `f` for finished and ended ones.
    sub_order: sled::Tree,
    /// `finished time‖id` → (): what the sweep removes first.
    finished: sled::Tree,
    /// `team\0job` → when its subscription was removed: a watch never takes it up again.
    removed: sled::Tree,
    /// `team\0job\0channel` → the latest [`Notice`] of that subscription and channel.
    notices: sled::Tree,
    /// `team\0job\0channel` → where the job's living Slack message is.
    anchors: sled::Tree,
    /// In-memory mirror of the `meta` counts (what `/metrics` reads).
    counts: [AtomicI64; 4],
    /// Active subscriptions per team (the per-team cap), counted at open and kept
    /// up to date by every write that starts or ends one. Its lock also orders
    /// capped inserts, so concurrent subscribes cannot pass the cap together.
    active: Mutex<foldhash::HashMap<String, usize>>,
    sync: Arc<SyncShared>,
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// How long opening took, by phase (logged at start-up).
    open_times: OpenTimes,
}

/// Milliseconds spent opening the store: sled's own recovery, the checksum and
/// count walk, and counting active subscriptions.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenTimes {
    pub engine_ms: u64,
    pub check_ms: u64,
    pub count_ms: u64,
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
    let mut k = notice_prefix(&e.team, &e.job);
    k.extend_from_slice(e.channel.as_bytes());
    k
}

/// Where a team's notices of `job` start: `team\0job\0`, then the channel.
fn notice_prefix(team: &str, job: &JobKey) -> Vec<u8> {
    let mut prefix = index_key(team, job);
    prefix.push(0);
    prefix
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

/// Threads that walk a tree at start-up: one per core (for a small tree the
/// extra threads cost microseconds; a large one's walk is most of start-up).
fn walk_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
        let t0 = crate::clock::monotonic();
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
        let engine_ms = t0.elapsed().as_millis() as u64;
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
            watch_names: t("watch_names")?,
            unmapped: t("unmapped_people")?,
            sub_order: t("subscription_order")?,
            finished: t("finished_subscriptions")?,
            removed: t("removed_subscriptions")?,
            notices: t("notices")?,
            anchors: t("anchors")?,
            counts: Default::default(),
            active: Default::default(),
            sync,
            syncer: Mutex::new(None),
            db,
            path: path.into(),
            open_times: OpenTimes {
                engine_ms,
                ..Default::default()
            },
        };
        let mut store = Store {
            inner: Arc::new(inner),
        };
        let t1 = crate::clock::monotonic();
        let marker = store.check_integrity()?;
        let check_ms = t1.elapsed().as_millis() as u64;
        store.count_active()?;
        store.index_watch_names()?;
        if let Some(inner) = Arc::get_mut(&mut store.inner) {
            inner.open_times.check_ms = check_ms;
            inner.open_times.count_ms = t1.elapsed().as_millis() as u64 - check_ms;
        }
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

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Opens a store that this process has just dropped. sled's background
    /// writer threads can hold the file lock for a moment after the last handle
    /// goes (a second process never meets this: its lock waits for our exit), so
    /// this waits for the lock, with a deadline, where `open` refuses at once.
    #[cfg(test)]
    pub(crate) fn reopen(path: &Path) -> Result<Store, StoreError> {
        let deadline = crate::clock::monotonic() + Duration::from_secs(10);
        loop {
            match Store::open(path) {
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

    pub fn open_times(&self) -> OpenTimes {
        self.inner.open_times
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

    /// Decodes every value of `tree`. At 100k records the walk and the decoding
    /// are most of start-up, and it waits for them: every core walks and decodes
    /// parts of the key space.
    fn decode_all<T: DeserializeOwned + Send>(
        &self,
        tree: &sled::Tree,
        name: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let parts = split::ranges(tree, split::PARTS).map_err(|e| self.eng(e))?;
        let decoded = split::in_parallel(parts, walk_threads(), |r| {
            tree.range(r)
                .values()
                .map(|v| self.dec(name, &v.map_err(|e| self.eng(e))?))
                .collect::<Result<Vec<T>, StoreError>>()
        });
        let mut all = Vec::new();
        for part in decoded {
            all.extend(part?);
        }
        Ok(all)
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

    // --- subscriptions ---

    /// A cheap liveness probe of the engine.
    pub fn verify_open(&self) -> bool {
        self.inner.channels.get(b"\0probe").is_ok()
    }

    fn count(&self, c: Counted) -> usize {
        self.inner.counts[c.idx()].load(Ordering::Relaxed).max(0) as usize
    }

    // --- job state and the transactional outbox ---

    // --- whole-store checks ---

    // --- watches ---

    // --- discovery ---

    // --- channel state ---
}

#[cfg(test)]
mod tests;
