//! A subscription's life after its job stops moving: `finished` (terminal for
//! `terminal_grace`) or `ended` (the job is gone), then removed by the sweep
//! `[store] keep_finished` later, with its notices; tombstones that keep a watch
//! from taking a removed job up again; and each team's subscriptions in page order
//! (newest first, active apart from finished), so a page reads only its own rows.
use super::*;
use std::ops::Bound;

/// Which list a subscription is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubClass {
    Active,
    /// Finished or ended.
    Finished,
}

impl SubClass {
    pub fn of(s: &Subscription) -> SubClass {
        if s.is_active() {
            SubClass::Active
        } else {
            SubClass::Finished
        }
    }

    fn byte(self) -> u8 {
        match self {
            SubClass::Active => b'a',
            SubClass::Finished => b'f',
        }
    }
}

/// The most subscriptions one page reads: what bounds a filtered page's time.
pub const SCAN_BUDGET: usize = 1_000;

/// A position in a team's list: the last row of the previous page (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageFrom {
    /// `u64::MAX` − creation time in µs: newest first in key order.
    pub newest_first: u64,
    pub id: String,
}

/// One page of a team's subscriptions, and where the next one starts.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Subscription>,
    pub next: Option<PageFrom>,
}

fn newest_first(s: &Subscription) -> u64 {
    u64::MAX - s.created_at.timestamp_micros().max(0) as u64
}

fn order_prefix(team: &str, class: SubClass) -> Vec<u8> {
    let mut k = team.as_bytes().to_vec();
    k.push(0);
    k.push(class.byte());
    k.push(0);
    k
}

fn order_key_at(team: &str, class: SubClass, at: &PageFrom) -> Vec<u8> {
    let mut k = order_prefix(team, class);
    k.extend_from_slice(&at.newest_first.to_be_bytes());
    k.extend_from_slice(at.id.as_bytes());
    k
}

pub(super) fn order_key(s: &Subscription) -> Vec<u8> {
    order_key_at(
        &s.team,
        SubClass::of(s),
        &PageFrom {
            newest_first: newest_first(s),
            id: s.id.clone(),
        },
    )
}

/// Finished and ended subscriptions, by when they finished (a record from before
/// `finished_at` existed counts from its creation).
fn finished_key(s: &Subscription) -> Option<Vec<u8>> {
    if s.is_active() {
        return None;
    }
    let at = s
        .finished_at
        .unwrap_or(s.created_at)
        .timestamp_micros()
        .max(0) as u64;
    let mut k = at.to_be_bytes().to_vec();
    k.extend_from_slice(s.id.as_bytes());
    Some(k)
}

/// Keeps both indexes of one subscription in step with a write of it: `old` as
/// it was stored, `new` as it is stored now (`None`: gone), in the same transaction.
/// In the page-order tree, after every team's rows (no UTF-8 team name starts with
/// 0xFF): `ACTIVE_COUNT ‖ team` → that team's active subscriptions (i64, big-endian),
/// kept by [`reindex`] in the same transactions as the rows, so opening the store
/// reads one key per team instead of walking every row.
const ACTIVE_COUNT: &[u8] = b"\xffactive\0";
/// Present once the counts above are complete (a store from before them is
/// counted by one walk at open).
pub(super) const COUNTED: &[u8] = b"\xffcounted";

pub(super) fn active_count_key(team: &str) -> Vec<u8> {
    let mut k = ACTIVE_COUNT.to_vec();
    k.extend_from_slice(team.as_bytes());
    k
}

fn bump_active(order: &TransactionalTree, team: &str, delta: i64) -> TxResult<()> {
    let k = active_count_key(team);
    let n = read_i64(order.get(&k)?) + delta;
    order.insert(k, &n.max(0).to_be_bytes())?;
    Ok(())
}

pub(super) fn reindex(
    order: &TransactionalTree,
    finished: &TransactionalTree,
    old: Option<&Subscription>,
    new: Option<&Subscription>,
) -> TxResult<()> {
    let was = old.filter(|o| o.is_active()).map(|o| o.team.as_str());
    let is = new.filter(|n| n.is_active()).map(|n| n.team.as_str());
    if was != is {
        if let Some(team) = was {
            bump_active(order, team, -1)?;
        }
        if let Some(team) = is {
            bump_active(order, team, 1)?;
        }
    }
    if let Some(o) = old {
        order.remove(order_key(o))?;
        if let Some(k) = finished_key(o) {
            finished.remove(k)?;
        }
    }
    if let Some(n) = new {
        order.insert(order_key(n), &[])?;
        if let Some(k) = finished_key(n) {
            finished.insert(k, n.team.as_bytes())?;
        }
    }
    Ok(())
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

impl Store {
    /// This store's own random id: what page cursors are signed with, so a cursor
    /// is good only for the store (and, with the team in it, the team) it came from.
    pub fn cursor_key(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .inner
            .meta
            .get(META_STORE_ID)
            .map_err(|e| self.eng(e))?
            .map(|v| v.to_vec())
            .unwrap_or_default())
    }

    /// Builds the page and sweep indexes of a store written before they existed
    /// (one walk, at open).
    /// Subscriptions exist but the page-order index does not: a store written
    /// before it.
    pub(super) fn needs_index(&self) -> bool {
        self.inner.sub_order.is_empty() && !self.inner.subs.is_empty()
    }

    /// Active subscriptions per team, from the counts kept beside the page-order
    /// rows; a store without them is counted from the rows' keys (`team \0 class
    /// \0 …`, written in the same transactions as the records) once, and the counts
    /// written.
    pub(super) fn active_by_team(&self) -> Result<foldhash::HashMap<String, usize>, StoreError> {
        let order = &self.inner.sub_order;
        let mut by_team: foldhash::HashMap<String, usize> = Default::default();
        if order.contains_key(COUNTED).map_err(|e| self.eng(e))? {
            for kv in order.scan_prefix(ACTIVE_COUNT) {
                let (k, v) = kv.map_err(|e| self.eng(e))?;
                let team = String::from_utf8_lossy(&k[ACTIVE_COUNT.len()..]).into_owned();
                by_team.insert(team, read_i64(Some(v)).max(0) as usize);
            }
            return Ok(by_team);
        }
        for k in order.range(..[0xffu8].as_slice()).keys() {
            let k = k.map_err(|e| self.eng(e))?;
            let Some(end) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            if k.get(end + 1) != Some(&SubClass::Active.byte()) {
                continue;
            }
            let team = String::from_utf8_lossy(&k[..end]);
            match by_team.get_mut(&*team) {
                Some(n) => *n += 1,
                None => {
                    by_team.insert(team.into_owned(), 1);
                }
            }
        }
        let mut b = sled::Batch::default();
        for kv in order.scan_prefix(ACTIVE_COUNT) {
            let (k, _) = kv.map_err(|e| self.eng(e))?;
            b.remove(k);
        }
        for (team, n) in &by_team {
            b.insert(active_count_key(team), &(*n as i64).to_be_bytes());
        }
        b.insert(COUNTED, &[]);
        order.apply_batch(b).map_err(|e| self.eng(e))?;
        self.mark_dirty();
        Ok(by_team)
    }

    pub(super) fn index_subscriptions(&self, subs: &[Subscription]) -> Result<(), StoreError> {
        let s = &self.inner;
        if !s.sub_order.is_empty() || subs.is_empty() {
            return Ok(());
        }
        let mut order = sled::Batch::default();
        let mut finished = sled::Batch::default();
        for sub in subs {
            order.insert(order_key(sub), &[]);
            if let Some(k) = finished_key(sub) {
                finished.insert(k, sub.team.as_bytes());
            }
        }
        s.sub_order.apply_batch(order).map_err(|e| self.eng(e))?;
        s.finished.apply_batch(finished).map_err(|e| self.eng(e))?;
        self.mark_dirty();
        Ok(())
    }

    /// Moves subscriptions to `state` (`active`, `finished` or `ended`), each with
    /// its indexes in one transaction. `finished`/`ended` start the retention
    /// clock at `at`; `active` stops it. Returns the ones that changed.
    pub fn set_subscription_states(
        &self,
        ids: &[String],
        state: &str,
        at: DateTime<Utc>,
        job_name: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Vec<Subscription>, StoreError> {
        let s = &self.inner;
        let mut changed = Vec::new();
        for id in ids {
            let r = (&s.subs, &s.sub_order, &s.finished)
                .transaction(
                    |(subs, order, finished)| -> TxResult<Option<(Subscription, Subscription)>> {
                        let Some(v) = subs.get(id.as_bytes())? else {
                            return Ok(None);
                        };
                        let old: Subscription = decode_in_tx(&v)?;
                        // An ended subscription stays ended: its job is gone.
                        if old.state == state || old.state == "ended" {
                            return Ok(None);
                        }
                        let mut new = old.clone();
                        new.state = state.to_string();
                        new.finished_at = (state != "active").then_some(at);
                        if let Some(n) = job_name {
                            new.job_name = Some(n.to_string());
                        }
                        if state == "ended" {
                            new.ended_reason = reason.map(str::to_string);
                        }
                        subs.insert(id.as_bytes(), enc(&new))?;
                        reindex(order, finished, Some(&old), Some(&new))?;
                        Ok(Some((old, new)))
                    },
                )
                .map_err(|e| self.tx_err(e))?;
            if let Some((old, new)) = r {
                match (old.is_active(), new.is_active()) {
                    (true, false) => self.active_delta(&new.team, -1),
                    (false, true) => self.active_delta(&new.team, 1),
                    _ => {}
                }
                changed.push(new);
            }
        }
        if !changed.is_empty() {
            self.mark_dirty();
        }
        Ok(changed)
    }

    /// One page of `team`'s subscriptions of `classes`, newest first, after `from`,
    /// at most `limit` of those `wanted` accepts. Reads only the index entries it
    /// passes and their records, at most [`SCAN_BUDGET`] of them: with a filter
    /// that matches rarely a page may hold fewer than `limit` (even none) and still
    /// say where the next one starts, so no page walks the team's whole history.
    pub fn subscriptions_page(
        &self,
        team: &str,
        classes: &[SubClass],
        from: Option<&PageFrom>,
        limit: usize,
        wanted: &dyn Fn(&Subscription) -> bool,
    ) -> Result<Page, StoreError> {
        let s = &self.inner;
        let mut iters: Vec<std::iter::Peekable<sled::Iter>> = classes
            .iter()
            .map(|c| {
                let prefix = order_prefix(team, *c);
                let start = match from {
                    Some(f) => Bound::Excluded(order_key_at(team, *c, f)),
                    None => Bound::Included(prefix.clone()),
                };
                s.sub_order
                    .range::<Vec<u8>, _>((start, Bound::Excluded(prefix_end(&prefix))))
                    .peekable()
            })
            .collect();
        let plen = order_prefix(team, SubClass::Active).len();
        let mut items = Vec::new();
        let mut last: Option<PageFrom> = None;
        let mut scanned = 0;
        loop {
            // The newest of the lists' heads (smallest suffix) comes next.
            let mut best: Option<(usize, Vec<u8>)> = None;
            for (i, it) in iters.iter_mut().enumerate() {
                match it.peek() {
                    Some(Ok((k, _))) => {
                        let suffix = k[plen..].to_vec();
                        if best.as_ref().is_none_or(|(_, b)| suffix < *b) {
                            best = Some((i, suffix));
                        }
                    }
                    Some(Err(_)) => {
                        if let Some(Err(e)) = it.next() {
                            return Err(self.eng(e));
                        }
                    }
                    None => {}
                }
            }
            let Some((i, suffix)) = best else {
                return Ok(Page { items, next: None });
            };
            if items.len() >= limit || scanned >= SCAN_BUDGET {
                return Ok(Page { items, next: last });
            }
            scanned += 1;
            iters[i].next();
            let (ts, id) = suffix.split_at(8.min(suffix.len()));
            let id = String::from_utf8_lossy(id).into_owned();
            last = Some(PageFrom {
                newest_first: u64::from_be_bytes(ts.try_into().unwrap_or([0; 8])),
                id: id.clone(),
            });
            if let Some(sub) = self.subscription(&id)?
                && sub.team == team
                && wanted(&sub)
            {
                items.push(sub);
            }
        }
    }

    /// Removes up to `max` finished or ended subscriptions that finished before
    /// `cutoff`, each with its notices and page entry, leaving a tombstone so a
    /// watch never takes the job up again. Returns what it removed (the watcher
    /// drops them, and a job state nothing follows any more).
    pub fn sweep_finished(
        &self,
        cutoff: DateTime<Utc>,
        max: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<Subscription>, StoreError> {
        let s = &self.inner;
        let limit = cutoff.timestamp_micros().max(0) as u64;
        let mut due = Vec::new();
        for kv in s.finished.range(..limit.to_be_bytes().to_vec()).take(max) {
            let (k, _) = kv.map_err(|e| self.eng(e))?;
            due.push((
                k.to_vec(),
                String::from_utf8_lossy(&k[8.min(k.len())..]).into_owned(),
            ));
        }
        let mut removed = Vec::new();
        for (fk, id) in due {
            // The notices go in the same transaction as the subscription: a delivery
            // recorded concurrently (which rewrites its notice) then either comes
            // first and is removed too, or comes after and finds nothing to update.
            // Only a new transition creates a notice, and that revives the
            // subscription, so keys listed before the transaction are all there are.
            let notice_keys = self.notice_keys_of(&id)?;
            let gone = (
                &s.subs,
                &s.sub_index,
                &s.meta,
                &s.sub_order,
                &s.finished,
                &s.removed,
                &s.notices,
            )
                .transaction(
                    |(subs, idx, meta, order, finished, tombs, notices)| -> TxResult<Option<Subscription>> {
                        let Some(v) = subs.get(id.as_bytes())? else {
                            finished.remove(fk.clone())?;
                            return Ok(None);
                        };
                        let sub: Subscription = decode_in_tx(&v)?;
                        if sub.is_active() {
                            // Revived since it was indexed: not ours to remove.
                            finished.remove(fk.clone())?;
                            return Ok(None);
                        }
                        subs.remove(id.as_bytes())?;
                        bump(meta, Counted::Subscriptions, -1)?;
                        let ik = index_key(&sub.team, &sub.job);
                        if idx.get(&ik)?.as_deref() == Some(id.as_bytes()) {
                            idx.remove(ik.clone())?;
                        }
                        // Its notices go with it, unless the team follows the job again.
                        if idx.get(&ik)?.is_none() {
                            for k in &notice_keys {
                                notices.remove(k.as_slice())?;
                            }
                        }
                        reindex(order, finished, Some(&sub), None)?;
                        finished.remove(fk.clone())?;
                        tombs.insert(ik, enc(&now))?;
                        Ok(Some(sub))
                    },
                )
                .map_err(|e| self.tx_err(e))?;
            if let Some(sub) = gone {
                self.adjust(Counted::Subscriptions, -1);
                // A root nobody follows is never edited again; a stale anchor left
                // by a crash here is harmless (the next subscription edits it).
                self.drop_anchors(&sub.team, &sub.job)?;
                removed.push(sub);
            }
        }
        if !removed.is_empty() {
            self.mark_dirty();
        }
        Ok(removed)
    }

    /// The notice keys of the (team, job) of subscription `id` (none if it is gone).
    fn notice_keys_of(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let Some(v) = self
            .inner
            .subs
            .get(id.as_bytes())
            .map_err(|e| self.eng(e))?
        else {
            return Ok(Vec::new());
        };
        let sub: Subscription = self.dec("subscriptions", &v)?;
        self.notice_keys(&sub.team, &sub.job)
    }

    /// Every notice key of a team's subscription to `job`, one per channel.
    pub(super) fn notice_keys(&self, team: &str, job: &JobKey) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner
            .notices
            .scan_prefix(notice_prefix(team, job))
            .keys()
            .map(|k| k.map(|k| k.to_vec()).map_err(|e| self.eng(e)))
            .collect()
    }

    /// Latest-notice records held (walks them: checks and tools).
    pub fn notice_count(&self) -> usize {
        self.inner.notices.len()
    }

    /// Whether `team`'s subscription to `job` was removed by the sweep.
    pub fn was_removed(&self, team: &str, job: &JobKey) -> Result<bool, StoreError> {
        self.inner
            .removed
            .contains_key(index_key(team, job))
            .map_err(|e| self.eng(e))
    }

    /// Forgets tombstones older than `before` (a watch's search never reaches that
    /// far back again), at most `max` at a time.
    pub fn prune_removed(&self, before: DateTime<Utc>, max: usize) -> Result<usize, StoreError> {
        let mut b = sled::Batch::default();
        let mut n = 0;
        for kv in self.inner.removed.iter() {
            let (k, v) = kv.map_err(|e| self.eng(e))?;
            let at: DateTime<Utc> = self.dec("removed_subscriptions", &v)?;
            if at < before {
                b.remove(k);
                n += 1;
                if n >= max {
                    break;
                }
            }
        }
        if n > 0 {
            self.inner.removed.apply_batch(b).map_err(|e| self.eng(e))?;
            self.mark_dirty();
        }
        Ok(n)
    }

    /// Deletes a job's stored state (nothing follows the job any more).
    pub fn delete_job_state(&self, job: &JobKey) -> Result<(), StoreError> {
        let s = &self.inner;
        let jk = job_key_bytes(job);
        let removed = (&s.jobs, &s.meta)
            .transaction(|(jobs, meta)| -> TxResult<bool> {
                let gone = jobs.remove(jk.clone())?.is_some();
                if gone {
                    bump(meta, Counted::Jobs, -1)?;
                }
                Ok(gone)
            })
            .map_err(|e| self.tx_err(e))?;
        if removed {
            self.adjust(Counted::Jobs, -1);
            self.mark_dirty();
        }
        Ok(())
    }

    /// Removes up to `max` dead letters that died before `cutoff` (oldest first:
    /// ids grow with time).
    pub fn sweep_dead_letters(
        &self,
        cutoff: DateTime<Utc>,
        max: usize,
    ) -> Result<usize, StoreError> {
        let s = &self.inner;
        let mut due = Vec::new();
        for kv in s.dead.iter().take(max) {
            let (k, v) = kv.map_err(|e| self.eng(e))?;
            let dl: DeadLetter = self.dec("dead_letters", &v)?;
            if dl.dead_at >= cutoff {
                break;
            }
            due.push(k);
        }
        let mut n = 0;
        for k in due {
            let gone = (&s.dead, &s.meta)
                .transaction(|(dead, meta)| -> TxResult<bool> {
                    let gone = dead.remove(&k)?.is_some();
                    if gone {
                        bump(meta, Counted::DeadLetters, -1)?;
                    }
                    Ok(gone)
                })
                .map_err(|e| self.tx_err(e))?;
            if gone {
                self.adjust(Counted::DeadLetters, -1);
                n += 1;
            }
        }
        if n > 0 {
            self.mark_dirty();
        }
        Ok(n)
    }

    /// One page of `team`'s dead letters, newest first, before id `before`.
    pub fn dead_letters_page(
        &self,
        team: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<DeadLetter>, Option<u64>), StoreError> {
        let end = before.unwrap_or(u64::MAX);
        let mut items = Vec::new();
        let mut last = None;
        for kv in self.inner.dead.range(..end.to_be_bytes().to_vec()).rev() {
            let (k, v) = kv.map_err(|e| self.eng(e))?;
            if items.len() >= limit {
                return Ok((items, last));
            }
            let dl: DeadLetter = self.dec("dead_letters", &v)?;
            last = Some(u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])));
            if dl.entry.team == team {
                items.push(dl);
            }
        }
        Ok((items, None))
    }
}
