//! Watches created through the API, discovery's last-pass marks, and each
//! channel's state (disabled or not).
use super::*;

impl Store {
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
    #[cfg(test)]
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
