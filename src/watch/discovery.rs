//! Discovery's decisions, pure: which watches are in force, which queues are
//! searched together and from when, which searches wait out a back-off, and how
//! long a failing search waits. The poll loop carries them out (`watch::Loop::discover`).
use crate::config::Config;
use crate::domain::{JobKey, Watch};
use chrono::{DateTime, Utc};
use foldhash::HashMap;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// (farm, queues searched in one call).
pub type SearchedQueues = (String, Vec<String>);
/// Per search: failures in a row, and not before (ms since the epoch).
pub type Backoff = HashMap<SearchedQueues, (u32, u64)>;
/// When each (farm, queue) was last searched successfully.
pub type LastPass = HashMap<(String, String), DateTime<Utc>>;

/// At most this many queues go into one SearchJobs call (the API's limit).
pub const QUEUES_PER_SEARCH: usize = 10;
/// A failing search waits at most this long (ms) before it is tried again.
pub const MAX_BACKOFF_MS: u64 = 600_000;

/// The watches in force: the config's, and the API's whose team still exists and
/// still admits every queue they search (a reload can take either away; such a
/// watch rests rather than being deleted).
pub fn watches_in_force(cfg: &Config, api_watches: Vec<Watch>) -> Vec<Watch> {
    cfg.teams
        .iter()
        .flat_map(|t| t.watches.iter().cloned())
        .chain(api_watches.into_iter().filter(|w| {
            cfg.team(&w.team).is_some_and(|t| {
                w.queue_ids.iter().all(|q| {
                    t.admits(&JobKey {
                        farm_id: w.farm_id.clone().into(),
                        queue_id: q.clone().into(),
                        job_id: String::new().into(),
                    })
                    .is_ok()
                })
            })
        }))
        .collect()
}

/// Every watched queue, once, by farm: queues shared by several watches are searched once.
pub fn queues_by_farm(watches: &[Watch]) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_farm: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for w in watches {
        by_farm
            .entry(w.farm_id.clone())
            .or_default()
            .extend(w.queue_ids.iter().cloned());
    }
    by_farm
}

/// Queues with a stored last pass that no watch searches any more.
pub fn stale_marks(
    last_pass: &LastPass,
    by_farm: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<(String, String)> {
    let mut stale: Vec<(String, String)> = last_pass
        .keys()
        .filter(|(f, q)| by_farm.get(f).is_none_or(|qs| !qs.contains(q)))
        .cloned()
        .collect();
    stale.sort();
    stale
}

/// Whether the search of `key` is still waiting out its back-off at `now_ms`.
pub fn backing_off(backoff: &Backoff, key: &SearchedQueues, now_ms: u64) -> bool {
    backoff
        .get(key)
        .is_some_and(|(_, not_before)| now_ms < *not_before)
}

/// A farm's queues in calls of at most [`QUEUES_PER_SEARCH`], leaving out each
/// queue whose own search is backing off, so that it does not fail the searches of
/// the queues it would share a call with.
pub fn searches(
    farm: &str,
    queues: &BTreeSet<String>,
    backoff: &Backoff,
    now_ms: u64,
) -> VecDeque<Vec<String>> {
    let due: Vec<String> = queues
        .iter()
        .filter(|q| !backing_off(backoff, &(farm.to_string(), vec![(*q).clone()]), now_ms))
        .cloned()
        .collect();
    due.chunks(QUEUES_PER_SEARCH)
        .map(<[String]>::to_vec)
        .collect()
}

/// Jobs created since when: the oldest last pass of the queues searched together
/// (a queue never searched starts at this pass), minus the overlap that catches
/// jobs whose creation was recorded late.
pub fn search_since(
    last_pass: &LastPass,
    farm: &str,
    queues: &[String],
    pass_start: DateTime<Utc>,
    overlap: chrono::Duration,
) -> DateTime<Utc> {
    queues
        .iter()
        .map(|q| {
            last_pass
                .get(&(farm.to_string(), q.clone()))
                .copied()
                .unwrap_or(pass_start)
        })
        .min()
        .unwrap_or(pass_start)
        - overlap
}

/// After a failed search: failures in a row and when to try again. One interval,
/// doubling per failure, at most [`MAX_BACKOFF_MS`].
pub fn after_failure(previous: Option<(u32, u64)>, interval_ms: u64, now_ms: u64) -> (u32, u64) {
    let failures = previous.map_or(0, |b| b.0) + 1;
    let delay = (interval_ms << failures.min(10)).min(MAX_BACKOFF_MS);
    (failures, now_ms + delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn watch(farm: &str, queues: &[&str]) -> Watch {
        Watch {
            id: "w".into(),
            team: "lighting".into(),
            name: "w".into(),
            farm_id: farm.into(),
            queue_ids: queues.iter().map(|q| q.to_string()).collect(),
            created_by: None,
            name_matches: None,
            events: vec![],
            channels: vec![],
            source: "api".into(),
            created_at: t(0),
        }
    }

    #[test]
    fn shared_queues_are_searched_once_in_calls_of_ten() {
        let qs: Vec<String> = (0..23).map(|i| format!("q{i:02}")).collect();
        let refs: Vec<&str> = qs.iter().map(String::as_str).collect();
        let watches = [
            watch("f1", &refs),
            watch("f1", &refs[..5]),
            watch("f2", &["q0"]),
        ];
        let by_farm = queues_by_farm(&watches);
        assert_eq!(by_farm["f1"].len(), 23);
        let calls = searches("f1", &by_farm["f1"], &Backoff::default(), 0);
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 3]);
        assert_eq!(by_farm["f2"].len(), 1);
    }

    #[test]
    fn a_failing_queue_waits_alone_and_its_back_off_doubles_to_ten_minutes() {
        let interval = 30_000;
        let key = ("f1".to_string(), vec!["q1".to_string()]);
        let mut backoff = Backoff::default();
        let now = 1_000_000;
        let first = after_failure(None, interval, now);
        assert_eq!(first, (1, now + 60_000));
        backoff.insert(key.clone(), first);
        let queues: BTreeSet<String> = ["q0", "q1", "q2"].map(String::from).into();
        // While q1 backs off, the others are searched without it.
        let calls = searches("f1", &queues, &backoff, now + 59_999);
        assert_eq!(calls, [vec!["q0".to_string(), "q2".to_string()]]);
        assert!(backing_off(&backoff, &key, now + 59_999));
        assert!(!backing_off(&backoff, &key, now + 60_000));
        assert_eq!(searches("f1", &queues, &backoff, now + 60_000)[0].len(), 3);
        let mut b = first;
        for _ in 0..12 {
            b = after_failure(Some(b), interval, now);
        }
        assert_eq!(b, (13, now + MAX_BACKOFF_MS));
    }

    #[test]
    fn a_search_starts_at_the_oldest_last_pass_minus_the_overlap() {
        let mut last = LastPass::default();
        last.insert(("f1".into(), "q0".into()), t(100));
        last.insert(("f1".into(), "q1".into()), t(40));
        let overlap = chrono::Duration::seconds(30);
        let qs = ["q0".to_string(), "q1".to_string()];
        assert_eq!(search_since(&last, "f1", &qs, t(200), overlap), t(10));
        // A queue never searched starts at this pass.
        assert_eq!(
            search_since(&last, "f1", &["q9".to_string()], t(200), overlap),
            t(170)
        );
        assert_eq!(search_since(&last, "f1", &qs[..1], t(200), overlap), t(70));
    }

    #[test]
    fn marks_of_queues_no_watch_searches_are_stale() {
        let mut last = LastPass::default();
        last.insert(("f1".into(), "q0".into()), t(1));
        last.insert(("f1".into(), "gone".into()), t(1));
        last.insert(("f9".into(), "q0".into()), t(1));
        let by_farm = queues_by_farm(&[watch("f1", &["q0"])]);
        assert_eq!(
            stale_marks(&last, &by_farm),
            [
                ("f1".to_string(), "gone".to_string()),
                ("f9".to_string(), "q0".to_string())
            ]
        );
    }

    /// Passes every 30 s (the default interval) with the default 120 s overlap: a
    /// job that shows in search up to the overlap after its creation is inside the
    /// window of the first pass that can see it; later than that, it is not.
    #[test]
    fn a_job_visible_late_is_found_while_the_delay_is_within_the_overlap() {
        let overlap = chrono::Duration::seconds(120);
        let found = |delay_s: i64| -> bool {
            let created = t(5);
            let visible_from = created + chrono::Duration::seconds(delay_s);
            let queues = ["q1".to_string()];
            let mut last = LastPass::default();
            for n in 0..40 {
                let pass = t(n * 30);
                let since = search_since(&last, "f1", &queues, pass, overlap);
                // SearchJobs answers jobs created since `since` that it shows by now.
                if pass >= visible_from && created >= since {
                    return true;
                }
                last.insert(("f1".into(), "q1".into()), pass);
            }
            false
        };
        for delay in [0, 29, 60, 90, 120] {
            assert!(found(delay), "a job {delay} s late must be found");
        }
        assert!(
            !found(150),
            "past the overlap a job is missed: the overlap is what covers it"
        );
    }
}
