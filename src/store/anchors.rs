//! Where each job's living Slack message is: `team\0job\0channel` (the notices'
//! key shape) → [`Anchor`]. Written and synced before the next message of that
//! job and channel may leave, so a restart edits the same root.
use super::{Store, StoreError, enc, notice_prefix};
use crate::domain::{Anchor, JobKey};

fn anchor_key(team: &str, job: &JobKey, channel: &str) -> Vec<u8> {
    let mut k = notice_prefix(team, job);
    k.extend_from_slice(channel.as_bytes());
    k
}

impl Store {
    pub fn anchor(
        &self,
        team: &str,
        channel: &str,
        job: &JobKey,
    ) -> Result<Option<Anchor>, StoreError> {
        match self
            .inner
            .anchors
            .get(anchor_key(team, job, channel))
            .map_err(|e| self.eng(e))?
        {
            Some(v) => self.dec("anchors", &v).map(Some),
            None => Ok(None),
        }
    }

    /// Keeps `anchor` and returns once it is on disk: a crash after this never
    /// posts the root again.
    pub fn set_anchor(
        &self,
        team: &str,
        channel: &str,
        job: &JobKey,
        anchor: &Anchor,
    ) -> Result<(), StoreError> {
        self.inner
            .anchors
            .insert(anchor_key(team, job, channel), enc(anchor))
            .map_err(|e| self.eng(e))?;
        self.mark_dirty();
        self.sync()
    }

    /// Every channel's anchor of a team's job, by channel name.
    pub fn anchors_of(
        &self,
        team: &str,
        job: &JobKey,
    ) -> Result<Vec<(String, Anchor)>, StoreError> {
        let prefix = notice_prefix(team, job);
        let mut out = Vec::new();
        for kv in self.inner.anchors.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(|e| self.eng(e))?;
            let channel = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((channel, self.dec("anchors", &v)?));
        }
        Ok(out)
    }

    /// Forgets a team's anchors of `job` (its subscription is gone).
    pub(super) fn drop_anchors(&self, team: &str, job: &JobKey) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in self
            .inner
            .anchors
            .scan_prefix(notice_prefix(team, job))
            .keys()
        {
            batch.remove(k.map_err(|e| self.eng(e))?);
        }
        self.inner
            .anchors
            .apply_batch(batch)
            .map_err(|e| self.eng(e))
    }
}
