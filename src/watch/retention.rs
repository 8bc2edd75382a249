//! The retention sweep: finished and ended subscriptions leave `[store]
//! keep_finished` after they finished, with their notices (and, through the
//! watcher, their job state); dead letters leave `keep_dead_letters` after they
//! died. It runs at least once a minute and ten times per period, in small batches
//! on the blocking pool, so polling and delivery never wait for it.
use crate::app::live::Live;
use crate::clock::SharedClock;
use crate::store::Store;
use crate::watch::{SubChange, WatchHandle};
use std::time::Duration;
use tokio::sync::watch;

/// Records removed per store call: a batch holds the store's write path only briefly.
pub const BATCH: usize = 256;

/// How long a removed subscription's tombstone is kept: longer than any search
/// window can reach back (a watch searches from its last pass minus the overlap).
fn tombstone_life(cfg: &crate::config::DeadlineConfig) -> chrono::Duration {
    let window = cfg.discovery_overlap + cfg.discovery_interval * 4;
    chrono::Duration::from_std(window.max(Duration::from_secs(86_400)))
        .unwrap_or(chrono::Duration::days(1))
}

/// How long a delivery is remembered (to suppress a duplicate send).
pub const DELIVERY_LOG_LIFE: chrono::Duration = chrono::Duration::days(30);

/// How often the sweep looks at both clocks.
const TICK: Duration = Duration::from_secs(1);

/// A sweep is due once `every` has passed on either clock: the runtime's (so the
/// sweep runs on a stopped or slow service clock) or the service's (so the sweep
/// keeps ten rounds per period when the service clock runs fast, as in the year
/// benchmark; retention is reckoned on the service clock).
pub fn due(real: Duration, service: chrono::Duration, every: Duration) -> bool {
    real >= every || service.to_std().is_ok_and(|s| s >= every)
}

/// Sweeps until `shutdown` turns true.
pub async fn run(
    store: Store,
    live: Live,
    clock: SharedClock,
    changes: WatchHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = (crate::clock::tokio_monotonic(), clock.now());
    let mut last_log_prune = clock.now();
    loop {
        let cfg = live.current().config.clone();
        let every = cfg
            .store
            .keep_finished
            .sweep_every()
            .min(cfg.store.keep_dead_letters.sweep_every());
        tokio::select! {
            _ = tokio::time::sleep(TICK.min(every)) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let now = clock.now();
        if !due(last.0.elapsed(), now - last.1, every) {
            continue;
        }
        last = (crate::clock::tokio_monotonic(), now);
        if let Some(cutoff) = cfg.store.keep_finished.cutoff(now) {
            let n = sweep_finished(&store, &changes, cutoff, now, &shutdown).await;
            if n > 0 {
                tracing::info!(
                    subscriptions = n,
                    "finished subscriptions past store.keep_finished removed"
                );
                metrics::counter!("deadline_notifier_retired_subscriptions_total")
                    .increment(n as u64);
            }
        }
        // The delivery log (what suppresses a duplicate send) only needs to outlive
        // any replay; pruned hourly, since it is one walk of the log.
        if now - last_log_prune >= chrono::Duration::hours(1) {
            last_log_prune = now;
            let before = now - DELIVERY_LOG_LIFE;
            if let Err(e) = store.run(move |s| s.prune_delivered(before)).await {
                tracing::error!(error = %e, "cannot prune the delivery log");
            }
        }
        let before = now - tombstone_life(&cfg.deadline);
        if let Err(e) = store
            .run(move |s| s.prune_removed(before, 10 * BATCH))
            .await
        {
            tracing::error!(error = %e, "cannot prune removed-subscription marks");
        }
        if let Some(cutoff) = cfg.store.keep_dead_letters.cutoff(now) {
            loop {
                match store
                    .run(move |s| s.sweep_dead_letters(cutoff, BATCH))
                    .await
                {
                    Ok(n) if n == BATCH => continue,
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(
                                dead_letters = n,
                                "dead letters past store.keep_dead_letters removed"
                            );
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "dead-letter sweep failed; trying again next round");
                        break;
                    }
                }
            }
        }
    }
}

/// Removes what finished before `cutoff`, a batch at a time; tells the watcher of
/// each removal. A stop between batches leaves the rest to the next sweep.
async fn sweep_finished(
    store: &Store,
    changes: &WatchHandle,
    cutoff: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
    shutdown: &watch::Receiver<bool>,
) -> usize {
    let mut total = 0;
    while !*shutdown.borrow() {
        match store
            .run(move |s| s.sweep_finished(cutoff, BATCH, now))
            .await
        {
            Ok(removed) => {
                let n = removed.len();
                total += n;
                for sub in removed {
                    changes.notify(SubChange::Retired(sub));
                }
                if n < BATCH {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "retention sweep failed; trying again next round");
                break;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_is_due_when_either_clock_has_moved_a_period() {
        let every = Duration::from_secs(60);
        assert!(!due(
            Duration::from_secs(59),
            chrono::Duration::seconds(59),
            every
        ));
        assert!(due(
            Duration::from_secs(60),
            chrono::Duration::zero(),
            every
        ));
        assert!(due(
            Duration::from_secs(1),
            chrono::Duration::days(1),
            every
        ));
        // A service clock set back never makes a sweep due by itself.
        assert!(!due(
            Duration::from_secs(1),
            chrono::Duration::days(-1),
            every
        ));
    }
}
