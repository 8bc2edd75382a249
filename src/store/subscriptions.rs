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
    // A test message and a digest page belong to no subscription.
    if e.is_test() || e.digest_of > 0 {
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

/// What a capped insert did.
#[derive(Debug)]
pub enum Inserted {
    Created(Subscription),
    /// The team already subscribes the job (this one is returned).
    Existing(Subscription),
    /// The team holds `cap` active subscriptions already; nothing was written.
    OverCap(usize),
}

impl Store {
    /// Inserts `sub` unless the team already subscribes the job; returns the stored
    /// subscription and whether it was created.
    pub fn insert_subscription(
        &self,
        sub: Subscription,
    ) -> Result<(Subscription, bool), StoreError> {
        match self.insert_subscription_capped(sub, usize::MAX)? {
            Inserted::Created(s) => {
                // A 201 promises the subscription survives a crash.
                self.sync()?;
                Ok((s, true))
            }
            Inserted::Existing(s) => Ok((s, false)),
            Inserted::OverCap(_) => unreachable!("no team holds usize::MAX subscriptions"),
        }
    }

    /// Counts the active subscriptions of every team from the page-order index's
    /// keys (no record is decoded), after building the page and sweep indexes of a
    /// store written before them (once).
    pub(super) fn count_active(&self) -> Result<(), StoreError> {
        if self.needs_index() {
            let subs = self.subscriptions()?;
            self.index_subscriptions(&subs)?;
        }
        *self.active() = self.active_by_team()?;
        Ok(())
    }

    fn active(&self) -> MutexGuard<'_, foldhash::HashMap<String, usize>> {
        self.inner.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn active_delta(&self, team: &str, delta: i64) {
        let mut a = self.active();
        let n = a.entry(team.to_string()).or_insert(0);
        *n = (*n as i64 + delta).max(0) as usize;
    }

    /// The team's active subscriptions: O(1).
    pub fn active_subscriptions(&self, team: &str) -> usize {
        self.active().get(team).copied().unwrap_or(0)
    }

    /// [`Store::insert_subscription`], refused when the team already holds `cap`
    /// active subscriptions (an existing subscription to the job is still returned).
    /// Rides the group commit: a caller that promises durability calls
    /// [`Store::sync`] (a watch does not need to: a lost subscription is found
    /// again, since its discovery mark is written after it and lost with it).
    pub fn insert_subscription_capped(
        &self,
        sub: Subscription,
        cap: usize,
    ) -> Result<Inserted, StoreError> {
        let ik = index_key(&sub.team, &sub.job);
        let s = &self.inner;
        let mut active = self.active();
        let held = active.get(&sub.team).copied().unwrap_or(0);
        let res = (&s.subs, &s.sub_index, &s.meta, &s.sub_order, &s.finished).transaction(
            |(subs, idx, meta, order, finished)| -> TxResult<Inserted> {
                if let Some(id) = idx.get(&ik)?
                    && let Some(existing) = subs.get(&id)?
                {
                    let existing: Subscription = decode_in_tx(&existing)?;
                    // A finished one is still followed: the job is the same.
                    if existing.is_followed() {
                        return Ok(Inserted::Existing(existing));
                    }
                    if held >= cap {
                        return Ok(Inserted::OverCap(cap));
                    }
                    subs.remove(&id)?;
                    bump(meta, Counted::Subscriptions, -1)?;
                    super::lifecycle::reindex(order, finished, Some(&existing), None)?;
                } else if held >= cap {
                    return Ok(Inserted::OverCap(cap));
                }
                if subs.insert(sub.id.as_bytes(), enc(&sub))?.is_none() {
                    bump(meta, Counted::Subscriptions, 1)?;
                }
                idx.insert(ik.clone(), sub.id.as_bytes())?;
                super::lifecycle::reindex(order, finished, None, Some(&sub))?;
                Ok(Inserted::Created(sub.clone()))
            },
        );
        let r = res.map_err(|e| self.tx_err(e))?;
        if !matches!(r, Inserted::Created(_)) {
            return Ok(r);
        }
        if sub.is_active() {
            *active.entry(sub.team.clone()).or_insert(0) += 1;
        }
        drop(active);
        self.recount(Counted::Subscriptions)?;
        self.mark_dirty();
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
            (&s.subs, &s.sub_index, &s.meta, &s.sub_order, &s.finished)
                .transaction(|(t_subs, t_idx, meta, order, finished)| -> TxResult<()> {
                    let mut added = 0;
                    for sub in chunk {
                        let old = t_subs.insert(sub.id.as_bytes(), enc(sub))?;
                        match &old {
                            None => added += 1,
                            Some(v) => {
                                let old: Subscription = decode_in_tx(v)?;
                                super::lifecycle::reindex(order, finished, Some(&old), None)?;
                            }
                        }
                        super::lifecycle::reindex(order, finished, None, Some(sub))?;
                        t_idx.insert(index_key(&sub.team, &sub.job), sub.id.as_bytes())?;
                    }
                    bump(meta, Counted::Subscriptions, added)
                })
                .map_err(|e| self.tx_err(e))?;
        }
        self.recount(Counted::Subscriptions)?;
        self.count_active()?;
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

    /// Every subscription, as much of it as the poll loop keeps.
    pub fn subscription_heads(&self) -> Result<Vec<SubscriptionHead>, StoreError> {
        self.decode_all(&self.inner.subs, "subscriptions")
    }

    pub fn delete_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        let ik = index_key(&sub.team, &sub.job);
        let s = &self.inner;
        // Removed in the same transaction as the subscription, so a delivery
        // recorded concurrently cannot write its notice back (see `sweep_finished`).
        let notice_keys = self.notice_keys(&sub.team, &sub.job)?;
        let removed = (
            &s.subs,
            &s.sub_index,
            &s.meta,
            &s.sub_order,
            &s.finished,
            &s.notices,
        )
            .transaction(
                |(subs, idx, meta, order, finished, notices)| -> TxResult<Option<bool>> {
                    for k in &notice_keys {
                        notices.remove(k.as_slice())?;
                    }
                    let removed = match subs.remove(sub.id.as_bytes())? {
                        Some(old) => {
                            let old = decode_in_tx::<Subscription>(&old)?;
                            super::lifecycle::reindex(order, finished, Some(&old), None)?;
                            Some(old.is_active())
                        }
                        None => None,
                    };
                    if removed.is_some() {
                        bump(meta, Counted::Subscriptions, -1)?;
                    }
                    if idx.get(&ik)?.as_deref() == Some(sub.id.as_bytes()) {
                        idx.remove(ik.clone())?;
                    }
                    Ok(removed)
                },
            )
            .map_err(|e| self.tx_err(e))?;
        if let Some(was_active) = removed {
            self.adjust(Counted::Subscriptions, -1);
            if was_active {
                self.active_delta(&sub.team, -1);
            }
        }
        self.mark_dirty();
        self.sync()
    }

    /// The latest notice of a team's subscription to `job`, per channel.
    pub fn notices(&self, team: &str, job: &JobKey) -> Result<Vec<Notice>, StoreError> {
        self.inner
            .notices
            .scan_prefix(notice_prefix(team, job))
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
        let s = &self.inner;
        let old = (&s.subs, &s.sub_order, &s.finished)
            .transaction(
                |(subs, order, finished)| -> TxResult<Option<Subscription>> {
                    let Some(v) = subs.get(sub.id.as_bytes())? else {
                        return Ok(None);
                    };
                    let old: Subscription = decode_in_tx(&v)?;
                    subs.insert(sub.id.as_bytes(), enc(sub))?;
                    super::lifecycle::reindex(order, finished, Some(&old), Some(sub))?;
                    Ok(Some(old))
                },
            )
            .map_err(|e| self.tx_err(e))?;
        if let Some(old) = old
            && old.is_active() != sub.is_active()
        {
            self.active_delta(&sub.team, if old.is_active() { -1 } else { 1 });
        }
        self.mark_dirty();
        self.sync()
    }

    /// Ends the given subscriptions (the job is gone, or now outside their team's
    /// allow-lists): they are listed as finished and removed on its clock.
    pub fn end_subscriptions_by_id(
        &self,
        ids: &[String],
        reason: &str,
    ) -> Result<usize, StoreError> {
        let now = crate::clock::wall_now();
        let n = self
            .set_subscription_states(ids, "ended", now, None, Some(reason))?
            .len();
        if n > 0 {
            self.sync()?;
        }
        Ok(n)
    }
}
