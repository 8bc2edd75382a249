//! How much memory the store engine itself takes per watched job:
//! `cargo run --release --example store_memory`. Writes 100k job states the way the
//! watcher does (one state + outbox transaction each) and prints RSS as it goes.
use deadline_notifier::domain::JobState;
use deadline_notifier::domain::{JobKey, JobSnapshot, JobStatus};
use deadline_notifier::store::Store;

fn rss_mib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
        / 1048576
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    println!("opened: {} MiB", rss_mib());
    let now = deadline_notifier::clock::wall_now();
    for i in 0..100_000usize {
        let key = JobKey {
            farm_id: format!("farm-{:032x}", i % 10).into(),
            queue_id: format!("queue-{:032x}", i % 7).into(),
            job_id: format!("job-{i:032x}").into(),
        };
        let status = JobStatus::of(&JobSnapshot::sample(key.clone(), "x"));
        store
            .commit_observation(
                &JobState {
                    job: key,
                    status,
                    since: now,
                    terminal_since: None,
                    progress: Default::default(),
                },
                vec![],
            )
            .unwrap();
        if i % 20_000 == 0 {
            println!("{i} states: {} MiB", rss_mib());
        }
    }
    println!("100000 states: {} MiB", rss_mib());
    let states = store.job_states().unwrap();
    println!(
        "after reading them back ({}): {} MiB",
        states.len(),
        rss_mib()
    );
}
