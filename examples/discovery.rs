//! Discovery cost: `cargo run --release --example discovery [-- MINUTES [INTERVAL]]`
//! (defaults: 3 minutes, the default 30 s discovery interval).
//!
//! One farm, 50 watched queues (five watches of ten), new jobs arriving at 1,000 an
//! hour spread over the queues, the service and the simulator in one process.
//! Prints SearchJobs calls per minute and the delay from a job's creation to its
//! first poll (p50, p99). Not run in CI.
use deadline_notifier::app::App;
use deadline_notifier::config::Config;
use deadline_notifier::deadline::client::DeadlineClient;
use deadline_notifier::devkit::simulator::{JobSpec, Simulator};
use deadline_notifier::devkit::sink::Sink;
use std::time::Duration;

const QUEUES: usize = 50;
const JOBS_PER_HOUR: f64 = 1000.0;

fn queue(i: usize) -> String {
    format!("queue-{:032x}", 0x5100 + i)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let minutes: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let interval = args.next().unwrap_or_else(|| "30s".into());
    let farm = format!("farm-{:032x}", 0xfa_u64);
    let sim = Simulator::new();
    let (sim_addr, _s) = sim.serve(([127, 0, 0, 1], 0).into()).await?;
    let sink = Sink::new();
    let (sink_addr, _k) = sink.serve(([127, 0, 0, 1], 0).into()).await?;
    let dir = tempfile::tempdir()?;
    let mut text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[store]
path = "{store}"
[deadline]
poll_interval = "15s"
discovery_interval = "{interval}"
[delivery]
allow_private_targets = true
[[teams]]
name = "lighting"
tokens = ["bench-lighting-token-0001"]
[[teams.channels]]
name = "hook"
kind = "webhook"
url = "http://{sink_addr}/webhook"
"#,
        store = dir.path().join("store").display()
    );
    for w in 0..QUEUES / 10 {
        let qs: Vec<String> = (w * 10..w * 10 + 10)
            .map(|i| format!("\"{}\"", queue(i)))
            .collect();
        text.push_str(&format!(
            "[[teams.watches]]\nname = \"w{w}\"\nfarm_id = \"{farm}\"\nqueue_ids = [{}]\n",
            qs.join(", ")
        ));
    }
    let config = Config::from_toml(&text, std::path::Path::new("discovery-bench.toml"))?;
    let client = DeadlineClient::local(&format!("http://{sim_addr}"), &config.deadline);
    let app = App::build(config, Some(client), deadline_notifier::clock::system()).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));
    let run = Duration::from_secs_f64(minutes * 60.0);
    let every = Duration::from_secs_f64(3600.0 / JOBS_PER_HOUR);
    let start = deadline_notifier::clock::monotonic();
    let searches_at_start = sim.stats().search_jobs;
    let mut n = 0usize;
    while start.elapsed() < run {
        sim.add_job(JobSpec {
            farm_id: Some(farm.clone()),
            queue_id: Some(queue(n % QUEUES)),
            name: format!("job {n}"),
            ..Default::default()
        });
        n += 1;
        tokio::time::sleep(every).await;
    }
    // Let the last jobs be found before measuring.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let searches = sim.stats().search_jobs - searches_at_start;
    let mut delays = sim.first_read_delays();
    delays.sort();
    let pct = |p: f64| {
        delays
            .get(((delays.len() as f64 * p) as usize).min(delays.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let elapsed_min = start.elapsed().as_secs_f64() / 60.0;
    println!(
        "{QUEUES} watched queues, {n} new jobs in {minutes} min ({JOBS_PER_HOUR} an hour), discovery every {interval}:"
    );
    println!(
        "  SearchJobs: {searches} calls, {:.1} a minute",
        searches as f64 / elapsed_min
    );
    println!(
        "  creation → first poll: p50 {:.1} s, p99 {:.1} s ({} of {n} jobs polled)",
        pct(0.5).as_secs_f64(),
        pct(0.99).as_secs_f64(),
        delays.len()
    );
    let _ = stop_tx.send(());
    service.await??;
    Ok(())
}
