//! What the poll loop knows that others may read: readiness (last good Deadline
//! call, jobs watched), each watched job's view as last read, poll and discovery
//! errors, unmapped `createdBy` values. The loop writes through `Health`; the API
//! holds a [`HealthView`], which can only read, so no reader can change what the
//! loop decided or hold its locks longer than one lookup.
use super::discovery::SearchedQueues;
use crate::deadline::Observed;
use crate::domain::{CompactView, JobKey, JobView, Watch};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// An unmapped `createdBy`: last seen, and last written to the store.
type Sighting = (DateTime<Utc>, DateTime<Utc>);

/// Why a search failed, and since when.
pub type DiscoveryError = (String, DateTime<Utc>);

/// At most this many distinct unmapped `createdBy` values are remembered.
const UNMAPPED_CAP: usize = 10_000;
/// How long an unmapped `createdBy` is remembered after it was last seen.
pub const UNMAPPED_DAYS: i64 = 30;

#[derive(Debug, Default)]
pub struct Health {
    last_deadline_ok_ms: AtomicI64,
    watched_jobs: AtomicUsize,
    /// The polling mode while an event queue is configured: 0 none, 1 tight, 2 relaxed.
    polling: std::sync::atomic::AtomicU8,
    /// Each watched job's name, status and task counts as last read. Readers take
    /// the read side only, so page refreshes do not wait on each other.
    views: RwLock<foldhash::HashMap<Arc<JobKey>, CompactView>>,
    /// Jobs whose last read failed, and why (shown on their subscriptions).
    poll_errors: Mutex<HashMap<JobKey, String>>,
    /// Discovery failures by (farm, queues searched together): message and since when.
    discovery_errors: Mutex<HashMap<SearchedQueues, DiscoveryError>>,
    /// Watches that could not subscribe what they found (a limit reached), by id.
    watch_errors: Mutex<HashMap<String, DiscoveryError>>,
    /// `createdBy` values seen that map to nobody in `[[people]]`: when last seen,
    /// and when that was last written to the store.
    unmapped: Mutex<HashMap<String, Sighting>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Health {
    /// The read-only side, for the API.
    pub fn view(self: &Arc<Self>) -> HealthView {
        HealthView(self.clone())
    }

    pub(super) fn set_watched_jobs(&self, n: usize) {
        self.watched_jobs.store(n, Ordering::Relaxed);
    }

    pub(super) fn set_polling(&self, mode: super::push::Mode) {
        let v = match mode {
            super::push::Mode::Tight => 1,
            super::push::Mode::Relaxed => 2,
        };
        self.polling.store(v, Ordering::Relaxed);
    }

    pub(super) fn deadline_ok(&self, at_ms: i64) {
        self.last_deadline_ok_ms.store(at_ms, Ordering::Relaxed);
    }

    /// Records a failed read; returns whether the error is new for this job.
    pub(super) fn set_poll_error(&self, job: &JobKey, reason: &str) -> bool {
        let mut g = locked(&self.poll_errors);
        match g.get(job) {
            Some(r) if r == reason => false,
            _ => {
                g.insert(job.clone(), reason.to_string());
                true
            }
        }
    }

    pub(super) fn clear_poll_error(&self, job: &JobKey) {
        let mut g = locked(&self.poll_errors);
        if !g.is_empty() {
            g.remove(job);
        }
    }

    /// Records a failed search; returns whether the message is new for these queues.
    pub(super) fn set_discovery_error(
        &self,
        key: SearchedQueues,
        message: &str,
        since: DateTime<Utc>,
    ) -> bool {
        let mut g = locked(&self.discovery_errors);
        if g.get(&key).map(|e| e.0.as_str()) == Some(message) {
            return false;
        }
        g.insert(key, (message.to_string(), since));
        true
    }

    /// Returns whether there was an error to clear.
    pub(super) fn clear_discovery_error(&self, key: &SearchedQueues) -> bool {
        locked(&self.discovery_errors).remove(key).is_some()
    }

    /// Records why a watch could not subscribe; returns whether the message is new.
    pub(super) fn set_watch_error(&self, id: &str, message: &str, since: DateTime<Utc>) -> bool {
        let mut g = locked(&self.watch_errors);
        if g.get(id).map(|e| e.0.as_str()) == Some(message) {
            return false;
        }
        g.insert(id.to_string(), (message.to_string(), since));
        true
    }

    /// Returns whether there was an error to clear.
    pub(super) fn clear_watch_error(&self, id: &str) -> bool {
        let mut g = locked(&self.watch_errors);
        !g.is_empty() && g.remove(id).is_some()
    }

    /// Notes an unmapped `createdBy`; returns whether the store should be told
    /// (a new value, or one last written more than an hour ago).
    pub(super) fn note_unmapped(&self, created_by: &str, now: DateTime<Utc>) -> bool {
        let mut g = locked(&self.unmapped);
        if g.len() >= UNMAPPED_CAP && !g.contains_key(created_by) {
            let cutoff = now - chrono::Duration::days(UNMAPPED_DAYS);
            g.retain(|_, t| t.0 >= cutoff);
            if g.len() >= UNMAPPED_CAP {
                return false;
            }
        }
        let write = g
            .get(created_by)
            .is_none_or(|(_, written)| now - *written > chrono::Duration::hours(1));
        let written = match g.get(created_by) {
            Some((_, w)) if !write => *w,
            _ => now,
        };
        g.insert(created_by.to_string(), (now, written));
        write
    }

    /// What the store kept from earlier runs.
    pub(super) fn load_unmapped(&self, seen: Vec<(String, DateTime<Utc>)>) {
        let mut g = locked(&self.unmapped);
        for (k, t) in seen.into_iter().take(UNMAPPED_CAP) {
            g.insert(k, (t, t));
        }
    }

    /// The job's name as last read.
    pub(super) fn name(&self, job: &JobKey) -> Option<String> {
        self.views
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(job)
            .map(|v| v.expand().name)
    }

    pub(super) fn drop_view(&self, job: &JobKey) {
        self.views
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job);
    }

    pub(super) fn refresh_view(&self, job: &Arc<JobKey>, observed: &Observed, now: DateTime<Utc>) {
        let mut g = self.views.write().unwrap_or_else(|e| e.into_inner());
        if let Some(new) = observed.refresh_view(g.get_mut(&**job), now) {
            g.insert(job.clone(), new);
        }
    }
}

/// Read-only access to what the poll loop knows.
#[derive(Debug, Clone, Default)]
pub struct HealthView(Arc<Health>);

impl HealthView {
    pub fn watched_jobs(&self) -> usize {
        self.0.watched_jobs.load(Ordering::Relaxed)
    }

    /// How subscribed jobs are polled, when an event queue is configured:
    /// `tight` (every `poll_interval`) or `relaxed` (every `backstop_interval`).
    pub fn polling(&self) -> Option<&'static str> {
        match self.0.polling.load(Ordering::Relaxed) {
            1 => Some(super::push::Mode::Tight.as_str()),
            2 => Some(super::push::Mode::Relaxed.as_str()),
            _ => None,
        }
    }

    /// When a Deadline Cloud call last succeeded (ms since the epoch; 0: never).
    pub fn last_deadline_ok_ms(&self) -> i64 {
        self.0.last_deadline_ok_ms.load(Ordering::Relaxed)
    }

    pub fn poll_error(&self, job: &JobKey) -> Option<String> {
        locked(&self.0.poll_errors).get(job).cloned()
    }

    /// Unmapped `createdBy` values seen since `since`, most recent first.
    pub fn unmapped_since(&self, since: DateTime<Utc>) -> Vec<(String, DateTime<Utc>)> {
        let g = locked(&self.0.unmapped);
        let mut v: Vec<_> = g
            .iter()
            .filter(|(_, t)| t.0 >= since)
            .map(|(k, t)| (k.clone(), t.0))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// What keeps `w` from working, if anything: a limit its subscriptions hit,
    /// or a discovery error of its queues: (message, since).
    pub fn watch_error(&self, w: &Watch) -> Option<DiscoveryError> {
        if let Some(e) = locked(&self.0.watch_errors).get(&w.id) {
            return Some(e.clone());
        }
        locked(&self.0.discovery_errors)
            .iter()
            .find(|((farm, queues), _)| {
                *farm == w.farm_id && queues.iter().any(|q| w.queue_ids.contains(q))
            })
            .map(|(_, e)| e.clone())
    }

    pub fn view(&self, job: &JobKey) -> Option<JobView> {
        self.0
            .views
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(job)
            .map(CompactView::expand)
    }
}
