//! Watches created through the API, discovery's last-pass marks, and each
//! channel's state (disabled or not).
use super::*;

fn watch_name_key(team: &str, name: &str) -> Vec<u8> {
    format!("{team}\0{name}").into_bytes()
}

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
        let s = &self.inner;
        let name_key = watch_name_key(&w.team, &w.name);
        let existing = (&s.watches, &s.watch_names)
            .transaction(
                |(watches, names)| -> TxResult<Option<crate::domain::Watch>> {
                    if let Some(id) = names.get(&name_key)?
                        && let Some(v) = watches.get(&id)?
                    {
                        return Ok(Some(decode_in_tx(&v)?));
                    }
                    watches.insert(w.id.as_bytes(), enc(&w))?;
                    names.insert(name_key.clone(), w.id.as_bytes())?;
                    Ok(None)
                },
            )
            .map_err(|e| self.tx_err(e))?;
        if let Some(existing) = existing {
            return Ok((existing, false));
        }
        self.mark_dirty();
        self.sync()?;
        Ok((w, true))
    }

    /// The API watches of one team (a prefix read of the name index).
    pub fn team_watches(&self, team: &str) -> Result<Vec<crate::domain::Watch>, StoreError> {
        let mut prefix = team.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for id in self.inner.watch_names.scan_prefix(prefix).values() {
            let id = id.map_err(|e| self.eng(e))?;
            if let Some(v) = self.inner.watches.get(&id).map_err(|e| self.eng(e))? {
                out.push(self.dec("watches", &v)?);
            }
        }
        Ok(out)
    }

    pub fn delete_watch(&self, id: &str) -> Result<(), StoreError> {
        let s = &self.inner;
        (&s.watches, &s.watch_names)
            .transaction(|(watches, names)| -> TxResult<()> {
                if let Some(v) = watches.remove(id.as_bytes())? {
                    let w: crate::domain::Watch = decode_in_tx(&v)?;
                    let k = watch_name_key(&w.team, &w.name);
                    if names.get(&k)?.as_deref() == Some(id.as_bytes()) {
                        names.remove(k)?;
                    }
                }
                Ok(())
            })
            .map_err(|e| self.tx_err(e))?;
        self.mark_dirty();
        self.sync()
    }

    /// Builds the name index of a store written before it existed.
    pub(super) fn index_watch_names(&self) -> Result<(), StoreError> {
        let s = &self.inner;
        if !s.watch_names.is_empty() || s.watches.is_empty() {
            return Ok(());
        }
        for w in self.watches()? {
            s.watch_names
                .insert(watch_name_key(&w.team, &w.name), w.id.as_bytes())
                .map_err(|e| self.eng(e))?;
        }
        self.mark_dirty();
        Ok(())
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

    /// Remembers an unmapped `createdBy` as seen at `at` (rides the group commit:
    /// losing one only means it is listed from its next sighting).
    pub fn note_unmapped(&self, created_by: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner
            .unmapped
            .insert(created_by.as_bytes(), enc(&at))
            .map_err(|e| self.eng(e))?;
        self.mark_dirty();
        Ok(())
    }

    /// The unmapped `createdBy` values seen since `cutoff`; older ones are forgotten.
    pub fn unmapped_people(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let mut keep = Vec::new();
        let mut expired = sled::Batch::default();
        let mut any = false;
        for kv in self.inner.unmapped.iter() {
            let (k, v) = kv.map_err(|e| self.eng(e))?;
            let at: DateTime<Utc> = self.dec("unmapped_people", &v)?;
            if at < cutoff {
                expired.remove(k);
                any = true;
            } else {
                keep.push((String::from_utf8_lossy(&k).into_owned(), at));
            }
        }
        if any {
            self.inner
                .unmapped
                .apply_batch(expired)
                .map_err(|e| self.eng(e))?;
            self.mark_dirty();
        }
        Ok(keep)
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
