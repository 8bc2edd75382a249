//! Wake-ups between whoever queues outbox entries (the watcher, triage, the API)
//! and the channel's delivery worker. It lives with the store because every
//! writer of the outbox needs it and none of them should depend on delivery.
use super::channel_key;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Wakes a channel's worker when something is queued for it. Channels can appear on
/// reload, so a waker is created on first use by either side.
#[derive(Clone, Default)]
pub struct Wakers(Arc<Mutex<HashMap<String, Arc<Notify>>>>);

impl Wakers {
    pub fn wake(&self, team: &str, channel: &str) {
        self.get(team, channel).notify_one();
    }

    /// The channel's wake-up signal (its worker waits on it).
    pub fn get(&self, team: &str, channel: &str) -> Arc<Notify> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel_key(team, channel))
            .or_default()
            .clone()
    }
}
