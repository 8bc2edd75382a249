//! What the poll loop does with the event queue: a hint makes its job due now (a
//! tracked job), or has it considered for the watches that cover its queue (a job
//! not tracked yet); each message is answered once the read it caused is committed.
//! The queue's health sets the polling mode: relaxed to the backstop interval while
//! events flow, tightened back to `poll_interval` when they stop.
use super::events::{Answer, Pushed};
use super::hints::JobCause;
use super::*;
use crate::domain::Watch;

impl Loop {
    /// Takes up a new polling mode. Every job due later than one new interval (times
    /// its factor) is brought forward, spread over that interval: after tightening
    /// no job waits out a backstop interval once events may be missing, and after
    /// relaxing none waits longer than the backstop (a backstop shorter than
    /// `poll_interval` is honoured at once).
    pub(super) fn take_mode(&mut self) {
        let Some(rx) = self.mode_rx.as_mut() else {
            return;
        };
        let mode = *rx.borrow_and_update();
        self.w.health.set_polling(mode);
        if mode == self.mode {
            return;
        }
        self.mode = mode;
        self.respread();
    }

    fn respread(&mut self) {
        let now = self.now_ms();
        let interval = self.interval_ms();
        let late: Vec<(Slot, u64)> = self
            .schedule
            .scheduled()
            .filter_map(|(slot, due)| {
                let t = self.tracked.get(slot)?;
                let limit = now + interval * u64::from(self.factor(t));
                (due > limit).then_some((slot, limit))
            })
            .collect();
        let n = late.len().max(1) as u64;
        for (i, (slot, limit)) in late.into_iter().enumerate() {
            let at = (now + i as u64 * interval / n).min(limit);
            self.reschedule(slot, at, false);
        }
    }

    /// One receive's job hints.
    pub(super) async fn hinted(&mut self, batch: Vec<Pushed>) -> Result<(), StoreError> {
        let at = self.now_ms() + self.active.config.events.batch_window.as_millis() as u64;
        let mut unknown = Vec::new();
        for p in batch {
            match self.tracked.slot(&p.key) {
                Some(slot) => {
                    if let JobCause::TaskRun { failed: true } = p.cause {
                        tracing::debug!(job = %p.key, "a task failed: reading the job now");
                    }
                    let Some(t) = self.tracked.get(slot) else {
                        continue;
                    };
                    let (key, lane) = (t.key.clone(), t.read_lane());
                    self.schedule.pull(slot, lane, at);
                    self.awaiting.entry(slot).or_default().push((key, p));
                }
                None => unknown.push(p),
            }
        }
        if !unknown.is_empty() {
            self.consider(unknown).await?;
        }
        Ok(())
    }

    /// Jobs no subscription follows yet: those in a queue a watch covers are read
    /// and offered to the watches now, without waiting for discovery's next pass;
    /// the rest need nothing (another farm, an unwatched queue, a hostile id).
    async fn consider(&mut self, unknown: Vec<Pushed>) -> Result<(), StoreError> {
        let matchers = self.matchers()?;
        let (covered, other): (Vec<Pushed>, Vec<Pushed>) = unknown.into_iter().partition(|p| {
            matchers.iter().any(|(w, _)| {
                *w.farm_id == *p.key.farm_id && w.queue_ids.iter().any(|q| **q == *p.key.queue_id)
            })
        });
        for p in other {
            self.reply(Answer::Done {
                receipt: p.receipt,
                label: p.label,
                transition: false,
            });
        }
        if covered.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<JobKey> = covered.iter().map(|p| p.key.clone()).collect();
        keys.dedup();
        // Paid from discovery's bucket: adoption is discovery's work.
        self.discovery_budget.take(self.now_ms());
        let read = match self.w.client.fetch(&keys).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, jobs = keys.len(), "could not read new jobs an event named; discovery will find them");
                for p in covered {
                    self.reply(Answer::Again { receipt: p.receipt });
                }
                return Ok(());
            }
        };
        for (key, fetched) in read {
            if let Fetched::Found(obs) = fetched {
                let snap = obs.snapshot(key);
                let job = crate::deadline::NewJob {
                    key: snap.key.clone(),
                    name: snap.name,
                    created_by: snap.created_by,
                    created_at: snap.created_at,
                };
                self.adopt(&job, &matchers)?;
            }
        }
        for p in covered {
            match self.tracked.slot(&p.key) {
                // Adopted: answered after its first read, like any hinted job.
                Some(slot) => {
                    let Some(key) = self.tracked.get(slot).map(|t| t.key.clone()) else {
                        continue;
                    };
                    self.awaiting.entry(slot).or_default().push((key, p));
                }
                None => self.reply(Answer::Done {
                    receipt: p.receipt,
                    label: p.label,
                    transition: false,
                }),
            }
        }
        Ok(())
    }

    /// The watches in force with their compiled `name_matches`.
    fn matchers(&mut self) -> Result<Vec<(Watch, Option<regex_lite::Regex>)>, StoreError> {
        if self.api_watches.is_none() {
            let store = self.w.store.clone();
            self.api_watches = Some(blocking(|| store.watches())?);
        }
        let watches = discovery::watches_in_force(
            &self.active.config,
            self.api_watches.clone().unwrap_or_default(),
        );
        Ok(watches
            .into_iter()
            .map(|w| {
                let re = match w.name_matches.as_ref().and_then(|p| self.patterns.get(p)) {
                    Some(re) => Some(re.clone()),
                    None => w.name_regex(),
                };
                (w, re)
            })
            .collect())
    }

    /// Answers every message waiting on `slot`'s read (just committed).
    pub(super) fn answer(&mut self, slot: Slot, transition: bool) {
        let Some(waiting) = self.awaiting.remove(&slot) else {
            return;
        };
        let current = self.tracked.get(slot).map(|t| t.key.clone());
        for (key, p) in waiting {
            // A slot freed and reused since: the old job's messages need nothing.
            let same = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &key));
            self.reply(Answer::Done {
                receipt: p.receipt,
                label: p.label,
                transition: transition && same,
            });
        }
    }

    /// The read failed: the messages come back after their visibility timeout.
    pub(super) fn answer_again(&mut self, slot: Slot) {
        for (_, p) in self.awaiting.remove(&slot).unwrap_or_default() {
            self.reply(Answer::Again { receipt: p.receipt });
        }
    }

    fn reply(&self, a: Answer) {
        if let Some(tx) = &self.answers {
            let _ = tx.send(a);
        }
    }
}
