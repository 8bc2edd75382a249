//! The poll loop's watched jobs, one slot each: a job's key is hashed once, when
//! it is added or looked up from outside (an API change, a discovery); the loop's
//! own per-read work (schedule, diff, reschedule) goes by slot number, and one
//! job's data sits together in one place.
use super::plan::Known;
use super::route::Interest;
use super::schedule::{LaneId, Slot};
use crate::domain::{Id, JobKey};
use foldhash::{HashMap, HashSet};
use std::sync::Arc;

/// One watched job: its subscriptions and last known state, compact: 100k of these
/// live in memory.
pub(super) struct Tracked {
    /// Shared with the health views: one copy per watched job.
    pub key: Arc<JobKey>,
    pub subs: Vec<Interest>,
    pub state: Option<Known>,
    /// Poll-interval multiplier currently applied (adaptive intervals).
    pub factor: u32,
    /// Its subscriptions are `finished`: read once per `finished_poll_interval`,
    /// from what the budget leaves over.
    pub finished: bool,
    /// The lane it is read in while active: the first of its teams by name.
    pub lane: LaneId,
}

impl Tracked {
    pub fn new(key: Arc<JobKey>, state: Option<Known>) -> Tracked {
        Tracked {
            key,
            // Most jobs have one subscriber: room for exactly one.
            subs: Vec::with_capacity(1),
            state,
            factor: 1,
            finished: false,
            lane: LaneId::BACKGROUND,
        }
    }

    /// The lane it is read in now: finished jobs are read in the background lane.
    pub fn read_lane(&self) -> LaneId {
        if self.finished {
            LaneId::BACKGROUND
        } else {
            self.lane
        }
    }

    /// The team whose lane the job is read in: the first of its teams by name.
    pub fn lane_team(&self) -> &str {
        self.subs.iter().map(|s| &*s.team).min().unwrap_or("")
    }
}

/// Slots, and the index from key to slot. A removed job's slot is reused.
#[derive(Default)]
pub(super) struct Table {
    index: HashMap<Arc<JobKey>, Slot>,
    slots: Vec<Option<Tracked>>,
    free: Vec<Slot>,
    /// One copy of each farm and queue id, shared by all keys that name it.
    ids: HashSet<Id>,
}

impl Table {
    pub fn with_capacity(n: usize) -> Table {
        Table {
            index: HashMap::with_capacity_and_hasher(n, Default::default()),
            slots: Vec::with_capacity(n),
            free: Vec::new(),
            ids: HashSet::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// One past the highest slot in use.
    pub fn slot_bound(&self) -> usize {
        self.slots.len()
    }

    pub fn slot(&self, key: &JobKey) -> Option<Slot> {
        self.index.get(key).copied()
    }

    pub fn contains(&self, key: &JobKey) -> bool {
        self.index.contains_key(key)
    }

    pub fn get(&self, slot: Slot) -> Option<&Tracked> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut Tracked> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    pub fn by_key(&self, key: &JobKey) -> Option<&Tracked> {
        self.slot(key).and_then(|s| self.get(s))
    }

    /// Adds a job not tracked yet; returns its slot.
    fn insert(&mut self, t: Tracked) -> Slot {
        debug_assert!(!self.index.contains_key(&*t.key));
        let key = t.key.clone();
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(t);
                s
            }
            None => {
                self.slots.push(Some(t));
                (self.slots.len() - 1) as Slot
            }
        };
        self.index.insert(key, slot);
        slot
    }

    /// The job's slot, added with `make` if it is not tracked yet.
    pub fn slot_or_insert(
        &mut self,
        mut key: JobKey,
        make: impl FnOnce(Arc<JobKey>) -> Tracked,
    ) -> Slot {
        if let Some(s) = self.slot(&key) {
            return s;
        }
        self.share(&mut key.farm_id);
        self.share(&mut key.queue_id);
        self.insert(make(Arc::new(key)))
    }

    fn share(&mut self, id: &mut Id) {
        match self.ids.get(id.as_str()) {
            Some(x) => *id = x.clone(),
            None => {
                self.ids.insert(id.clone());
            }
        }
    }

    pub fn remove(&mut self, slot: Slot) -> Option<Tracked> {
        let t = self.slots.get_mut(slot as usize)?.take()?;
        self.index.remove(&*t.key);
        self.free.push(slot);
        Some(t)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Slot, &Tracked)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i as Slot, t)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Slot, &mut Tracked)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, t)| t.as_mut().map(|t| (i as Slot, t)))
    }
}

/// A job handed to the Deadline client: the slot comes back with the answer, so
/// the answer is handled without a lookup by key.
#[derive(Clone)]
pub(super) struct Due {
    pub slot: Slot,
    pub key: Arc<JobKey>,
}

impl std::borrow::Borrow<JobKey> for Due {
    fn borrow(&self) -> &JobKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> JobKey {
        JobKey {
            farm_id: "f".into(),
            queue_id: "q".into(),
            job_id: format!("j{n}").into(),
        }
    }

    #[test]
    fn slots_are_found_by_key_and_reused_after_removal() {
        let mut t = Table::default();
        let a = t.slot_or_insert(key(1), |k| Tracked::new(k, None));
        let b = t.slot_or_insert(key(2), |k| Tracked::new(k, None));
        assert_eq!(t.slot_or_insert(key(2), |_| unreachable!()), b);
        assert_eq!((t.slot(&key(1)), t.len()), (Some(a), 2));
        assert_eq!(
            t.remove(a).map(|x| x.key.job_id.clone()).as_deref(),
            Some("j1")
        );
        assert!(t.remove(a).is_none() && !t.contains(&key(1)) && t.get(a).is_none());
        let c = t.slot_or_insert(key(3), |k| Tracked::new(k, None));
        assert_eq!(c, a, "the freed slot is reused");
        let farm = |s: Slot| t.get(s).map(|x| x.key.farm_id.as_ptr());
        assert_eq!(farm(b), farm(c), "one copy of a farm id");
        assert_eq!(t.by_key(&key(3)).map(|x| x.key.job_id.as_str()), Some("j3"));
        let mut seen: Vec<Slot> = t.iter().map(|(s, _)| s).collect();
        seen.sort();
        assert_eq!(seen, vec![a, b]);
        assert_eq!(t.slot_bound(), 2);
    }
}
