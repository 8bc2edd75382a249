//! Deadline API calls for idle subscribed jobs, push versus polling only:
//! `cargo run --release --example push [-- JOBS [SCALE]]` (defaults: 10,000 jobs,
//! time scaled 10×). Not run in CI.
//!
//! Each mode runs the service and the simulator (with its SQS stand-in) in one
//! process on the default intervals divided by SCALE (poll 15 s, idle after 10 min,
//! backstop 5 min, relax after 1 min), waits until the jobs are idle (and, for push,
//! polling has relaxed), then counts GetJob and BatchGetJob calls over three backstop
//! intervals. Calls per hour are the measured rate divided by SCALE: what the same
//! jobs cost at the real intervals. The request budget is raised so that it never
//! limits polling: the figures are what each schedule asks for.
use deadline_notifier::app::App;
use deadline_notifier::config::Config;
use deadline_notifier::deadline::client::DeadlineClient;
use deadline_notifier::deadline::queue::EventQueue;
use deadline_notifier::devkit::simulator::Simulator;
use deadline_notifier::domain::{Event, Subscription};
use deadline_notifier::store::Store;
use std::time::Duration;

const QUEUE: &str = "https://sqs.us-west-2.amazonaws.com/111122223333/deadline-events";

fn scaled(secs: f64, scale: f64) -> String {
    format!("{}ms", (secs * 1000.0 / scale).round() as u64)
}

fn populate(store: &Store, jobs: usize) -> anyhow::Result<()> {
    let now = deadline_notifier::clock::wall_now();
    let subs: Vec<Subscription> = (0..jobs)
        .map(|i| Subscription {
            id: format!("sub-{i:032x}"),
            team: "lighting".into(),
            job: Simulator::populated_key(i, 10, 10),
            channels: vec!["hook".into()],
            events: vec![Event::Failed, Event::Succeeded],
            created_at: now,
            state: "active".into(),
            ended_reason: None,
            watch: None,
            muted: false,
            finished_at: None,
            job_name: None,
        })
        .collect();
    store.insert_subscriptions_bulk(&subs)?;
    Ok(())
}

/// Deadline calls per real hour for `jobs` idle jobs, with or without push.
async fn measure(jobs: usize, scale: f64, push: bool) -> anyhow::Result<(f64, f64)> {
    let sim = Simulator::new();
    sim.populate(jobs, 10, 10);
    let (sim_addr, _s) = sim.serve(([127, 0, 0, 1], 0).into()).await?;
    let dir = tempfile::tempdir()?;
    let events = if push {
        format!(
            "[events]\nsqs_queue_url = \"{QUEUE}\"\nwait_time = \"1s\"\nbackstop_interval = \"{}\"\nrelax_after = \"{}\"\n",
            scaled(300.0, scale),
            scaled(60.0, scale)
        )
    } else {
        String::new()
    };
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[store]
path = "{store}"
[deadline]
poll_interval = "{poll}"
idle_after = "{idle}"
max_requests_per_second = 1000
[delivery]
allow_private_targets = true
[[teams]]
name = "lighting"
tokens = ["bench-lighting-token-0001"]
[[teams.channels]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/webhook"
{events}"#,
        store = dir.path().join("store").display(),
        poll = scaled(15.0, scale),
        idle = scaled(600.0, scale),
    );
    {
        let store = Store::open(&dir.path().join("store"))?;
        populate(&store, jobs)?;
        store.sync()?;
    }
    let config = Config::from_toml(&text, std::path::Path::new("push-bench.toml"))?;
    let client = DeadlineClient::local(&format!("http://{sim_addr}"), &config.deadline);
    let app = App::build(config, Some(client), deadline_notifier::clock::system())
        .await?
        .with_event_queue(EventQueue::local(&format!("http://{sim_addr}"), QUEUE));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));
    // Idle after `idle_after`, relaxed after `relax_after`, and one full round at the
    // new pace so the first reads' schedule has washed out.
    let warm = Duration::from_secs_f64((600.0 + 300.0 + 60.0) / scale);
    tokio::time::sleep(warm).await;
    let calls = || {
        let s = sim.stats();
        s.get_job + s.batch_get_job
    };
    let window = Duration::from_secs_f64(3.0 * 300.0 / scale);
    let (c0, t0) = (calls(), deadline_notifier::clock::monotonic());
    tokio::time::sleep(window).await;
    let (c1, elapsed) = (calls(), t0.elapsed().as_secs_f64());
    let per_hour = (c1 - c0) as f64 / elapsed * 3600.0 / scale;
    let receives = sim.sqs().stats().receives as f64;
    let _ = stop_tx.send(());
    service.await??;
    Ok((per_hour, receives))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let scale: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10.0);
    println!(
        "{jobs} idle subscribed jobs; defaults (poll 15 s, idle after 10 min ×4, backstop 5 min), time scaled {scale}×:"
    );
    let (polling, _) = measure(jobs, scale, false).await?;
    println!("  polling only: {polling:.0} Deadline API calls an hour");
    let (push, receives) = measure(jobs, scale, true).await?;
    println!(
        "  push (events + backstop): {push:.0} Deadline API calls an hour ({:.1}× fewer; plus {receives:.0} SQS receives in the run, 180 an hour per service at the 20 s long poll)",
        polling / push.max(1.0)
    );
    Ok(())
}
