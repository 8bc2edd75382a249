//! Discovery passes, carried out a search at a time: a pass is a list of SearchJobs
//! calls that the poll loop works through one call per turn, each call paid from
//! discovery's own request bucket, so polling keeps its share however many watches
//! there are. What to search and from when is decided in `discovery` (pure).
use super::*;
use crate::domain::Watch;
use std::collections::{HashSet, VecDeque};

/// A discovery pass under way.
pub(super) struct Pass {
    start: chrono::DateTime<chrono::Utc>,
    overlap: chrono::Duration,
    interval: u64,
    /// Each watch in force with its compiled `name_matches`.
    matchers: Vec<(Watch, Option<regex_lite::Regex>)>,
    /// Searches left: (farm, queues searched together).
    work: VecDeque<(String, Vec<String>)>,
    /// Farms whose searches were throttled: the rest of them waits for the next pass.
    throttled: HashSet<String>,
    /// (farm, queue, pass start) of every queue searched successfully.
    marks: Vec<(String, String, chrono::DateTime<chrono::Utc>)>,
}

/// What one search's answer means for the rest of the pass.
enum Searched {
    Done,
    /// Refused for several queues at once: search each alone to find the bad one.
    Split(Vec<String>),
    /// Throttled: the rest of this farm waits for the next pass.
    Throttled,
}

impl Loop {
    /// Starts a pass: the watches in force (API watches are read from the store only
    /// after they changed), their patterns compiled once and kept while in force,
    /// and every watched queue, once, in calls of up to ten.
    pub(super) fn start_pass(&mut self) -> Result<(), StoreError> {
        let cfg = self.active.config.clone();
        let interval = cfg.deadline.discovery_interval.as_millis() as u64;
        if self.api_watches.is_none() {
            let store = self.w.store.clone();
            self.api_watches = Some(blocking(|| store.watches())?);
        }
        let watches =
            discovery::watches_in_force(&cfg, self.api_watches.clone().unwrap_or_default());
        let by_farm = discovery::queues_by_farm(&watches);
        let stale = discovery::stale_marks(&self.last_pass, &by_farm);
        if !stale.is_empty() {
            for k in &stale {
                self.last_pass.remove(k);
            }
            let store = self.w.store.clone();
            blocking(|| store.remove_discovery_marks(&stale))?;
        }
        if watches.is_empty() {
            self.next_discovery = self.now_ms() + interval;
            return Ok(());
        }
        let mut compiled = std::mem::take(&mut self.patterns);
        let matchers: Vec<(Watch, Option<regex_lite::Regex>)> = watches
            .into_iter()
            .map(|w| {
                let re = w.name_matches.as_ref().and_then(|p| {
                    if let Some(re) = compiled.get(p) {
                        return Some(re.clone());
                    }
                    w.name_regex()
                });
                if let (Some(p), Some(re)) = (&w.name_matches, &re) {
                    self.patterns.insert(p.clone(), re.clone());
                }
                (w, re)
            })
            .collect();
        compiled.clear();
        let now = self.now_ms();
        let work = by_farm
            .iter()
            .flat_map(|(farm, queues)| {
                discovery::searches(farm, queues, &self.discovery_backoff, now)
                    .into_iter()
                    .map(move |chunk| (farm.clone(), chunk))
            })
            .collect();
        self.pass = Some(Pass {
            start: self.w.clock.now(),
            overlap: chrono::Duration::from_std(cfg.deadline.discovery_overlap)
                .unwrap_or(chrono::Duration::zero()),
            interval,
            matchers,
            work,
            throttled: HashSet::new(),
            marks: Vec::new(),
        });
        Ok(())
    }

    /// Makes the next search of the pass under way; ends the pass after its last.
    pub(super) async fn discover_step(&mut self) -> Result<(), StoreError> {
        let Some(mut pass) = self.pass.take() else {
            return Ok(());
        };
        while let Some((farm, chunk)) = pass.work.pop_front() {
            if pass.throttled.contains(&farm) {
                continue;
            }
            match self.search(&mut pass, &farm, chunk).await? {
                Searched::Done => {}
                Searched::Split(chunk) => {
                    for q in chunk.into_iter().rev() {
                        pass.work.push_front((farm.clone(), vec![q]));
                    }
                }
                Searched::Throttled => {
                    pass.throttled.insert(farm);
                }
            }
            break;
        }
        if pass.work.is_empty() {
            if !pass.marks.is_empty() {
                let store = self.w.store.clone();
                blocking(|| store.set_discovery_marks(&pass.marks))?;
            }
            self.next_discovery = self.now_ms() + pass.interval;
        } else {
            self.pass = Some(pass);
        }
        Ok(())
    }

    /// One SearchJobs call (and its pages) for `chunk`, and what follows from its answer.
    async fn search(
        &mut self,
        pass: &mut Pass,
        farm: &str,
        chunk: Vec<String>,
    ) -> Result<Searched, StoreError> {
        let key = (farm.to_string(), chunk.clone());
        if discovery::backing_off(&self.discovery_backoff, &key, self.now_ms()) {
            return Ok(Searched::Done);
        }
        let since =
            discovery::search_since(&self.last_pass, farm, &chunk, pass.start, pass.overlap);
        self.discovery_budget.take(self.now_ms());
        match self
            .w
            .client
            .search_created_since(farm, &chunk, since)
            .await
        {
            Ok((jobs, calls)) => {
                // Later pages were calls too: the next search waits for them.
                for _ in 1..calls {
                    self.discovery_budget.take(self.now_ms());
                }
                self.discovery_budget.on_success();
                self.discovery_backoff.remove(&key);
                if self.w.health.clear_discovery_error(&key) {
                    tracing::info!(farm, queues = %chunk.join(","), "discovery works again for these queues");
                }
                for job in jobs {
                    self.adopt(&job, &pass.matchers)?;
                }
                for q in &chunk {
                    self.last_pass
                        .insert((farm.to_string(), q.clone()), pass.start);
                    pass.marks.push((farm.to_string(), q.clone(), pass.start));
                }
                Ok(Searched::Done)
            }
            Err(SourceError::Throttled {
                retry_after,
                message,
            }) => {
                let now = self.now_ms();
                self.discovery_budget
                    .on_throttle(now, retry_after.map(|d| d.as_millis() as u64));
                tracing::warn!(%message, rate = self.discovery_budget.rate(), "Deadline Cloud throttled discovery; trying again next pass");
                Ok(Searched::Throttled)
            }
            Err(_) if chunk.len() > 1 => Ok(Searched::Split(chunk)),
            Err(e) => {
                let msg = e.to_string();
                metrics::counter!("deadline_notifier_discovery_errors_total").increment(1);
                // Retried with back-off; the other queues are searched as usual.
                let next = discovery::after_failure(
                    self.discovery_backoff.get(&key).copied(),
                    pass.interval,
                    self.now_ms(),
                );
                self.discovery_backoff.insert(key.clone(), next);
                if self.w.health.set_discovery_error(key, &msg, pass.start) {
                    tracing::warn!(farm, queues = %chunk.join(","), error = %msg, "discovery failed for these queues; retrying every pass");
                }
                Ok(Searched::Done)
            }
        }
    }

    /// Subscribes a discovered job for every watch that wants it, unless its team
    /// already subscribes the job or holds `[server] max_subscriptions_per_team`
    /// (then the watch shows why). A job nobody tracked yet starts from the state
    /// every new job starts in, so one that already started, failed or succeeded
    /// before its first poll is still announced.
    pub(super) fn adopt(
        &mut self,
        job: &crate::deadline::NewJob,
        watches: &[(Watch, Option<regex_lite::Regex>)],
    ) -> Result<(), StoreError> {
        let cap = self.active.config.server.max_subscriptions_per_team;
        for w in watches
            .iter()
            .filter(|(w, re)| w.wants(&job.key, &job.name, &job.created_by, re.as_ref()))
            .map(|(w, _)| w)
        {
            let team_has = self
                .tracked
                .by_key(&job.key)
                .is_some_and(|t| t.subs.iter().any(|s| *s.team == *w.team));
            if team_has {
                continue;
            }
            if let Some(team) = self.active.config.team(&w.team)
                && team.admits(&job.key).is_err()
            {
                continue;
            }
            let now = self.w.clock.now();
            let store = self.w.store.clone();
            // Removed by the retention sweep: it stays removed.
            if blocking(|| store.was_removed(&w.team, &job.key))? {
                continue;
            }
            if store.active_subscriptions(&w.team) >= cap {
                self.over_cap(w, cap, now);
                continue;
            }
            if !self.tracked.contains(&job.key) && blocking(|| store.job_state(&job.key))?.is_none()
            {
                let mut start = crate::domain::JobSnapshot::sample(job.key.clone(), &job.name);
                start.lifecycle_status = crate::domain::LifecycleStatus::CreateInProgress;
                start.task_run_status = Some(TaskRunStatus::Ready);
                let state = JobState {
                    job: job.key.clone(),
                    status: JobStatus::of(&start),
                    since: job.created_at,
                    terminal_since: None,
                    progress: Default::default(),
                };
                blocking(|| store.commit_observation(&state, Vec::new()))?;
            }
            let sub = Subscription {
                id: format!("sub-{}", uuid::Uuid::new_v4().simple()),
                team: w.team.clone(),
                job: job.key.clone(),
                channels: w.channels.clone(),
                events: w.events.clone(),
                created_at: now,
                state: "active".into(),
                ended_reason: None,
                watch: Some(w.id.clone()),
                muted: false,
                finished_at: None,
                job_name: Some(job.name.clone()),
            };
            match blocking(|| store.insert_subscription_capped(sub, cap))? {
                crate::store::Inserted::Created(stored) => {
                    if self.w.health.clear_watch_error(&w.id) {
                        tracing::info!(team = %w.team, watch = %w.name, "watch subscribes again");
                    }
                    tracing::info!(job = %job.key, team = %w.team, watch = %w.name, created_by = %job.created_by, "subscribed by watch");
                    self.apply(SubChange::Added(stored))?;
                }
                crate::store::Inserted::Existing(_) => {}
                crate::store::Inserted::OverCap(cap) => self.over_cap(w, cap, now),
            }
        }
        Ok(())
    }

    fn over_cap(&self, w: &Watch, cap: usize, now: chrono::DateTime<chrono::Utc>) {
        let msg = format!(
            "team {:?} holds {cap} active subscriptions, the limit set by [server] max_subscriptions_per_team; \
             new jobs are not subscribed until some finish or are unsubscribed",
            w.team
        );
        metrics::counter!("deadline_notifier_watch_limited_total").increment(1);
        if self.w.health.set_watch_error(&w.id, &msg, now) {
            tracing::warn!(team = %w.team, watch = %w.name, limit = cap, "watch cannot subscribe: server.max_subscriptions_per_team reached");
        }
    }
}
