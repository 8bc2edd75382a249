//! The group commit: one fsync per window in which something was written (at
//! most every [`GROUP_COMMIT`]), at once when a caller waits in [`Store::sync`], and
//! the durable-`seq` watermark it publishes: a worker sends nothing above it.
use super::*;

pub(super) struct SyncShared {
    pub(super) state: Mutex<SyncState>,
    pub(super) cv: Condvar,
    /// Held while a transaction that adds outbox entries commits, and by the syncer
    /// while it reads `committed_seq`: the `seq` it then publishes covers only
    /// commits that finished before its flush began.
    pub(super) commit_lock: Mutex<()>,
    pub(super) committed_seq: AtomicU64,
    pub(super) durable: watch::Sender<u64>,
}

#[derive(Default)]
pub(super) struct SyncState {
    pub(super) dirty_since: Option<Instant>,
    /// Tickets: `requested` is handed to callers of `sync`, `done` is the highest
    /// ticket a finished flush covered.
    pub(super) requested: u64,
    pub(super) done: u64,
    pub(super) last_error: Option<String>,
    pub(super) holds: usize,
    /// The newest `requested` ticket the syncer saw and held back because of a
    /// hold: what lets a test know it looked, instead of pausing and hoping it did.
    pub(super) held_back: u64,
    pub(super) stop: bool,
}

impl SyncShared {
    pub(super) fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// While alive, the group commit does not run (tests use it to hold a sync back).
#[cfg(test)]
pub struct SyncHold(Arc<SyncShared>);

#[cfg(test)]
impl Drop for SyncHold {
    fn drop(&mut self) {
        self.0.lock().holds -= 1;
        self.0.cv.notify_all();
    }
}

/// Waits until a flush is due: a caller waits in `sync`, or something written
/// has waited [`GROUP_COMMIT`]; nothing flushes while a hold lives. Returns the
/// newest ticket the flush will cover, or `None` at a stop with nothing pending.
fn next_flush(sh: &SyncShared) -> Option<u64> {
    let mut st = sh.lock();
    loop {
        let wanted = st.requested > st.done;
        if st.stop {
            if wanted || st.dirty_since.is_some() {
                break;
            }
            return None;
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
    Some(st.requested)
}

/// The group commit: one fsync per window in which something was written, at once
/// when a caller waits in [`Store::sync`].
pub(super) fn syncer(
    sh: Arc<SyncShared>,
    db: sled::Db,
    meta: sled::Tree,
    path: PathBuf,
    marker: Marker,
) {
    let mut epoch = marker.epoch;
    // (epoch, when it became durable): mirrored to the marker once it is old enough.
    let mut candidate: Option<(i64, Instant)> = None;
    let mut marker_epoch = marker.epoch;
    loop {
        let Some(ticket) = next_flush(&sh) else {
            // A clean stop: the data file is complete, so the marker may record
            // exactly how far it reaches.
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

impl Store {
    /// Something was written: the group commit will sync it within [`GROUP_COMMIT`].
    pub(super) fn mark_dirty(&self) {
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
    #[cfg(test)]
    pub fn hold_syncs(&self) -> SyncHold {
        self.inner.sync.lock().holds += 1;
        SyncHold(self.inner.sync.clone())
    }

    /// Runs `f` (a transaction adding outbox entries) so that the syncer's snapshot of
    /// the highest committed `seq` never covers a commit still in flight.
    pub(super) fn committing<T>(
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
}
