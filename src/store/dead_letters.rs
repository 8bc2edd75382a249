//! Dead letters: messages that will not be sent, with the reason, until replayed.
use super::*;

impl Store {
    pub fn dead_letter_count(&self) -> usize {
        self.count(Counted::DeadLetters)
    }

    /// Moves an entry from the outbox to the dead letters, atomically, and syncs.
    pub fn dead_letter(
        &self,
        e: &OutboxEntry,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<DeadLetter, StoreError> {
        let ok = outbox_key(&e.team, &e.channel, e.seq);
        let s = &self.inner;
        let (dl, removed) = (&s.outbox, &s.dead, &s.meta, &s.notices)
            .transaction(
                |(outbox, dead, meta, notices)| -> TxResult<(DeadLetter, bool)> {
                    note(notices, e, NoticeState::DeadLetter, now, true)?;
                    let id = dead.generate_id()?;
                    let dl = DeadLetter {
                        id,
                        reason: reason.to_string(),
                        dead_at: now,
                        entry: e.clone(),
                    };
                    let removed = outbox.remove(ok.clone())?.is_some();
                    if removed {
                        bump(meta, Counted::Outbox, -1)?;
                    }
                    dead.insert(&id.to_be_bytes(), enc(&dl))?;
                    bump(meta, Counted::DeadLetters, 1)?;
                    Ok((dl, removed))
                },
            )
            .map_err(|e| self.tx_err(e))?;
        if removed {
            self.adjust(Counted::Outbox, -1);
        }
        self.adjust(Counted::DeadLetters, 1);
        self.mark_dirty();
        Ok(dl)
    }

    pub fn dead_letter_by_id(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        match self
            .inner
            .dead
            .get(id.to_be_bytes())
            .map_err(|e| self.eng(e))?
        {
            Some(v) => Ok(Some(self.dec("dead_letters", &v)?)),
            None => Ok(None),
        }
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner
            .dead
            .iter()
            .values()
            .map(|v| self.dec("dead_letters", &v.map_err(|e| self.eng(e))?))
            .collect()
    }

    /// Re-queues a dead letter with its original `webhook-id`, at the tail of its
    /// channel, and waits until that is on disk.
    pub fn replay_dead_letter(
        &self,
        id: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        let dk = id.to_be_bytes();
        let s = &self.inner;
        let r = self.committing(
            || {
                (&s.outbox, &s.dead, &s.meta, &s.notices)
                    .transaction(
                        |(outbox, dead, meta, notices)| -> TxResult<Option<OutboxEntry>> {
                            let Some(v) = dead.get(dk)? else {
                                return Ok(None);
                            };
                            let dl: DeadLetter = decode_in_tx(&v)?;
                            let mut e = dl.entry;
                            e.seq = outbox.generate_id()?;
                            e.attempts = 0;
                            e.next_attempt_at = now;
                            e.created_at = now;
                            e.last_error = None;
                            outbox.insert(outbox_key(&e.team, &e.channel, e.seq), enc(&e))?;
                            note(notices, &e, NoticeState::Pending, now, false)?;
                            dead.remove(&dk)?;
                            bump(meta, Counted::Outbox, 1)?;
                            bump(meta, Counted::DeadLetters, -1)?;
                            Ok(Some(e))
                        },
                    )
                    .map_err(|e| self.tx_err(e))
            },
            |r| r.as_ref().map(|e| e.seq),
        )?;
        if r.is_some() {
            self.adjust(Counted::Outbox, 1);
            self.adjust(Counted::DeadLetters, -1);
        }
        self.sync()?;
        Ok(r)
    }
}
