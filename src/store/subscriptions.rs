//! Subscriptions (one per team and job, indexed by job) and the latest notice of
//! each subscription and channel.
use super::*;

/// Records where `e` stands as its subscription's latest notice on its channel.
/// A state change of an older message (`latest_only`) does not overwrite a newer one.
pub(super) fn note(
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

impl Store {
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
    pub(super) fn recount(&self, c: Counted) -> Result<(), StoreError> {
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

    /// Kept up to date on every change: O(1).
    pub fn subscription_count(&self) -> usize {
        self.count(Counted::Subscriptions)
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
    pub(super) fn replace_existing(
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
}
