//! Job states and the outbox: a transition's new state and its messages commit in
//! one transaction; an entry leaves only when delivered or dead-lettered.
use super::*;

/// Queues `entries` inside a transaction: each gets the next `seq`, is counted, and
/// becomes its subscription's pending notice on its channel.
pub(super) fn put_entries(
    outbox: &TransactionalTree,
    meta: &TransactionalTree,
    notices: &TransactionalTree,
    entries: &[OutboxEntry],
) -> TxResult<Vec<OutboxEntry>> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let mut e = e.clone();
        e.seq = outbox.generate_id()?;
        outbox.insert(outbox_key(&e.team, &e.channel, e.seq), enc(&e))?;
        note(notices, &e, NoticeState::Pending, e.created_at, false)?;
        out.push(e);
    }
    bump(meta, Counted::Outbox, out.len() as i64)?;
    Ok(out)
}

/// Whether the latest notice of `e`'s job on its channel is `e`'s own message.
fn queued_before(notices: &TransactionalTree, e: &OutboxEntry) -> TxResult<bool> {
    Ok(match notices.get(notice_key(e))? {
        Some(v) => decode_in_tx::<Notice>(&v)?.webhook_id == e.webhook_id,
        None => false,
    })
}

impl Store {
    /// Queues entries that belong to no job transition (a channel test), and syncs;
    /// they are sent like any other once durable.
    pub fn enqueue(&self, entries: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, StoreError> {
        self.enqueue_where(entries, false)
    }

    /// Like [`Store::enqueue`], but an entry whose channel's latest notice of the
    /// same job already carries its `webhook_id` is left out: a message for an
    /// event that was queued before (SQS delivers at least once, and again after a
    /// crash between the commit and the delete) is not sent twice. The check and the
    /// insert are one transaction; it syncs like `enqueue`, even when nothing is new.
    /// Returns what was queued.
    pub fn enqueue_once(&self, entries: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, StoreError> {
        self.enqueue_where(entries, true)
    }

    fn enqueue_where(
        &self,
        entries: Vec<OutboxEntry>,
        once: bool,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let s = &self.inner;
        let out = self.committing(
            || {
                (&s.outbox, &s.meta, &s.notices)
                    .transaction(|(outbox, meta, notices)| -> TxResult<Vec<OutboxEntry>> {
                        let mut new = Vec::with_capacity(entries.len());
                        for e in &entries {
                            if once && queued_before(notices, e)? {
                                continue;
                            }
                            new.push(e.clone());
                        }
                        put_entries(outbox, meta, notices, &new)
                    })
                    .map_err(|e| self.tx_err(e))
            },
            |out| out.iter().map(|e| e.seq).max(),
        )?;
        self.adjust(Counted::Outbox, out.len() as i64);
        self.sync()?;
        Ok(out)
    }

    pub fn job_state(&self, job: &JobKey) -> Result<Option<JobState>, StoreError> {
        match self
            .inner
            .jobs
            .get(job_key_bytes(job))
            .map_err(|e| self.eng(e))?
        {
            Some(v) => Ok(Some(self.dec("jobs", &v)?)),
            None => Ok(None),
        }
    }

    /// Every stored job state (start-up loads them once).
    pub fn job_states(&self) -> Result<Vec<JobState>, StoreError> {
        self.decode_all(&self.inner.jobs, "jobs")
    }

    /// Stores the job's new state and queues `entries`, atomically. Returns the
    /// queued entries with their sequence numbers. The group commit syncs it; the
    /// entries become sendable when [`Store::durable`] reaches their `seq`.
    pub fn commit_observation(
        &self,
        state: &JobState,
        entries: Vec<OutboxEntry>,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let jk = job_key_bytes(&state.job);
        let value = enc(state);
        let s = &self.inner;
        let (out, new_job) = self.committing(
            || {
                (&s.jobs, &s.outbox, &s.meta, &s.notices)
                    .transaction(
                        |(jobs, outbox, meta, notices)| -> TxResult<(Vec<OutboxEntry>, bool)> {
                            let new_job = jobs.insert(jk.clone(), value.clone())?.is_none();
                            if new_job {
                                bump(meta, Counted::Jobs, 1)?;
                            }
                            Ok((put_entries(outbox, meta, notices, &entries)?, new_job))
                        },
                    )
                    .map_err(|e| self.tx_err(e))
            },
            |(out, _)| out.iter().map(|e| e.seq).max(),
        )?;
        if new_job {
            self.adjust(Counted::Jobs, 1);
        }
        self.adjust(Counted::Outbox, out.len() as i64);
        Ok(out)
    }

    /// Queued entries of one channel with `from ≤ seq ≤ upto`, oldest first.
    pub fn outbox_range(
        &self,
        team: &str,
        channel: &str,
        from: u64,
        upto: u64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        if from > upto {
            return Ok(Vec::new());
        }
        let from = outbox_key(team, channel, from);
        let to = outbox_key(team, channel, upto);
        self.inner
            .outbox
            .range(from..=to)
            .values()
            .map(|v| self.dec("outbox", &v.map_err(|e| self.eng(e))?))
            .collect()
    }

    /// One queued entry, if it is still queued.
    pub fn outbox_entry(
        &self,
        team: &str,
        channel: &str,
        seq: u64,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        match self
            .inner
            .outbox
            .get(outbox_key(team, channel, seq))
            .map_err(|e| self.eng(e))?
        {
            Some(v) => Ok(Some(self.dec("outbox", &v)?)),
            None => Ok(None),
        }
    }

    /// Every queued entry still waiting for failure triage (read once at start-up).
    pub fn outbox_awaiting_triage(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut out = Vec::new();
        for v in self.inner.outbox.iter().values() {
            let e: OutboxEntry = self.dec("outbox", &v.map_err(|e| self.eng(e))?)?;
            if e.triage_until.is_some() {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Stores a triaged message: its payload and facts, due now; drops what was kept
    /// only for triage. Returns false when the entry is gone (already sent with its
    /// fallback, or dead-lettered). Synced by the group commit.
    pub fn finish_triage(
        &self,
        team: &str,
        channel: &str,
        seq: u64,
        payload: serde_json::Value,
        failure: crate::domain::Failure,
    ) -> Result<bool, StoreError> {
        self.write_triage(team, channel, seq, payload, failure, true)
    }

    /// Stores what triage has gathered so far as a waiting message's payload: it
    /// keeps waiting for the rest, and goes out with this if the rest is late.
    pub fn stage_triage(
        &self,
        team: &str,
        channel: &str,
        seq: u64,
        payload: serde_json::Value,
        failure: crate::domain::Failure,
    ) -> Result<bool, StoreError> {
        self.write_triage(team, channel, seq, payload, failure, false)
    }

    /// Writes triage's payload and facts into a message still waiting for triage;
    /// `finish` also ends the wait (the message is due now). False when the entry
    /// is gone or no longer waiting.
    fn write_triage(
        &self,
        team: &str,
        channel: &str,
        seq: u64,
        payload: serde_json::Value,
        failure: crate::domain::Failure,
        finish: bool,
    ) -> Result<bool, StoreError> {
        let key = outbox_key(team, channel, seq);
        let done = self
            .inner
            .outbox
            .transaction(|t| -> TxResult<bool> {
                let Some(v) = t.get(&key)? else {
                    return Ok(false);
                };
                let mut e: OutboxEntry = decode_in_tx(&v)?;
                if e.triage_until.is_none() {
                    return Ok(false);
                }
                e.payload = payload.clone();
                e.failure = Some(failure.clone());
                if finish {
                    e.triage_until = None;
                    e.snapshot = None;
                    e.transition = None;
                    e.next_attempt_at = e.next_attempt_at.min(crate::clock::wall_now());
                }
                t.insert(key.clone(), enc(&e))?;
                Ok(true)
            })
            .map_err(|e| self.tx_err(e))?;
        self.mark_dirty();
        Ok(done)
    }

    /// The oldest pending entry of a channel.
    pub fn outbox_head(
        &self,
        team: &str,
        channel: &str,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        match self
            .inner
            .outbox
            .scan_prefix(outbox_prefix(team, channel))
            .next()
        {
            Some(kv) => {
                let (_, v) = kv.map_err(|e| self.eng(e))?;
                Ok(Some(self.dec("outbox", &v)?))
            }
            None => Ok(None),
        }
    }

    pub fn outbox_len(&self) -> usize {
        self.count(Counted::Outbox)
    }

    /// Messages queued for one channel (walks that channel's entries).
    pub fn outbox_len_for(&self, team: &str, channel: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.inner.outbox.scan_prefix(outbox_prefix(team, channel)) {
            kv.map_err(|e| self.eng(e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Saves retry bookkeeping of a queued entry (never re-creates a removed one).
    pub fn update_outbox(&self, e: &OutboxEntry) -> Result<(), StoreError> {
        self.replace_existing(
            &self.inner.outbox,
            outbox_key(&e.team, &e.channel, e.seq),
            enc(e),
        )
    }

    /// Folds a channel's held entries into digest `pages`, atomically: the held
    /// entries leave the outbox (their notices say "in digest") and the pages are
    /// queued in their place. A crash leaves either the held entries or the pages,
    /// so a digest goes out once, with the same webhook-ids. Returns the pages
    /// with their sequence numbers.
    pub fn fold_into_digest(
        &self,
        held: &[OutboxEntry],
        pages: Vec<OutboxEntry>,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let s = &self.inner;
        let (out, removed) = self.committing(
            || {
                (&s.outbox, &s.meta, &s.notices)
                    .transaction(
                        |(outbox, meta, notices)| -> TxResult<(Vec<OutboxEntry>, i64)> {
                            let mut removed = 0;
                            for e in held {
                                if outbox
                                    .remove(outbox_key(&e.team, &e.channel, e.seq))?
                                    .is_some()
                                {
                                    removed += 1;
                                    note(notices, e, NoticeState::InDigest, now, true)?;
                                }
                            }
                            bump(meta, Counted::Outbox, -removed)?;
                            let out = put_entries(outbox, meta, notices, &pages)?;
                            Ok((out, removed))
                        },
                    )
                    .map_err(|e| self.tx_err(e))
            },
            |(out, _)| out.iter().map(|e| e.seq).max(),
        )?;
        self.adjust(Counted::Outbox, out.len() as i64 - removed);
        Ok(out)
    }

    /// Removes a delivered entry and records its webhook-id in the delivery log,
    /// atomically. Synced by the group commit (≤ [`GROUP_COMMIT`]), not per message.
    pub fn delivered(&self, e: &OutboxEntry, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.delivered_all(&[(e, now)])
    }

    /// [`Store::delivered`] for several entries in one transaction: the delivery
    /// workers' records share one commit (and one count update) instead of
    /// contending for the outbox count one message at a time.
    pub fn delivered_all(&self, done: &[(&OutboxEntry, DateTime<Utc>)]) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let s = &self.inner;
        let removed = (&s.outbox, &s.sent, &s.meta, &s.notices)
            .transaction(|(outbox, sent, meta, notices)| -> TxResult<i64> {
                let mut removed = 0;
                for (e, now) in done {
                    let ok = outbox_key(&e.team, &e.channel, e.seq);
                    if outbox.remove(ok)?.is_some() {
                        removed += 1;
                    }
                    sent.insert(
                        e.webhook_id.as_bytes(),
                        &now.timestamp_millis().to_be_bytes(),
                    )?;
                    note(notices, e, NoticeState::Delivered, *now, true)?;
                }
                bump(meta, Counted::Outbox, -removed)?;
                Ok(removed)
            })
            .map_err(|e| self.tx_err(e))?;
        self.adjust(Counted::Outbox, -removed);
        self.mark_dirty();
        Ok(())
    }

    /// Whether a notification with this webhook-id was already delivered.
    pub fn was_delivered(&self, webhook_id: &str) -> Result<bool, StoreError> {
        self.inner
            .sent
            .contains_key(webhook_id.as_bytes())
            .map_err(|e| self.eng(e))
    }

    /// Drops delivery-log records older than `before`; returns how many.
    pub fn prune_delivered(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let cutoff = before.timestamp_millis();
        let mut n = 0;
        for kv in self.inner.sent.iter() {
            let (k, v) = kv.map_err(|e| self.eng(e))?;
            let at = read_i64(Some(v));
            if at < cutoff {
                self.inner.sent.remove(k).map_err(|e| self.eng(e))?;
                n += 1;
            }
        }
        if n > 0 {
            self.mark_dirty();
        }
        Ok(n)
    }
}
