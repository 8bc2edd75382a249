//! Failure triage cost and latency:
//! `cargo run --release --example triage [-- JOBS [SPREAD_SECONDS [POLL]]]`
//! (defaults: 40 jobs failing within 120 s, the default 15 s poll interval).
//!
//! The service and the simulator in one process, default budgets. Each job runs, then
//! fails on three frames of one step at a random moment within the spread. Prints the Deadline and
//! CloudWatch Logs calls triage made per failed job, and the time from the failure
//! (the simulator's change) to the triaged message at the sink, p50/p99. Not run in CI.
use deadline_notifier::app::App;
use deadline_notifier::config::Config;
use deadline_notifier::deadline::client::DeadlineClient;
use deadline_notifier::deadline::logs::LogsClient;
use deadline_notifier::devkit::simulator::{JobSpec, Patch, Simulator, StepSpec, TaskSpec};
use deadline_notifier::devkit::sink::Sink;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn failing_job(n: usize) -> JobSpec {
    let task = |frame: usize, status: &str| TaskSpec {
        parameters: [("Frame".to_string(), frame.to_string())].into(),
        status: status.into(),
        exit_code: Some(if status == "FAILED" { 137 } else { 0 }),
        progress_message: None,
        retries: 0,
        host: Some(format!("render-{:03}", frame % 50)),
        log: (0..40)
            .map(|i| format!("frame {frame}: line {i}"))
            .collect(),
    };
    JobSpec {
        name: format!("triage bench {n}"),
        task_run_status: Some("RUNNING".into()),
        task_run_status_counts: Some([("RUNNING".to_string(), 20)].into()),
        steps: vec![StepSpec {
            name: "Render".into(),
            tasks: (1..=20)
                .map(|f| {
                    task(
                        f,
                        if f % 7 == 0 || f == 20 {
                            "FAILED"
                        } else {
                            "SUCCEEDED"
                        },
                    )
                })
                .collect(),
        }],
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);
    let spread: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(120);
    let poll = args.next().unwrap_or_else(|| "15s".into());
    let sim = Simulator::new();
    let (sim_addr, _s) = sim.serve(([127, 0, 0, 1], 0).into()).await?;
    let sink = Sink::new();
    let (sink_addr, _k) = sink.serve(([127, 0, 0, 1], 0).into()).await?;
    let dir = tempfile::tempdir()?;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
rate_limit = 0
[store]
path = "{store}"
[deadline]
poll_interval = "{poll}"
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
    let config = Config::from_toml(&text, std::path::Path::new("triage-bench.toml"))?;
    let url = format!("http://{sim_addr}");
    let client = DeadlineClient::local(&url, &config.deadline);
    let app = App::build(config, Some(client), deadline_notifier::clock::system())
        .await?
        .with_logs(LogsClient::local(&url));
    let api = format!("http://{}", app.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();
    let mut keys = Vec::new();
    for n in 0..jobs {
        let k = sim.add_job(failing_job(n));
        let r = http
            .post(format!("{api}/v1/subscriptions"))
            .bearer_auth("bench-lighting-token-0001")
            .json(&serde_json::json!({"farmId": k.farm_id, "queueId": k.queue_id, "jobId": k.job_id, "events": ["job.failed"]}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "subscribe: {}", r.status());
        keys.push(k);
    }
    // Every job read once (the baseline) before anything fails.
    while keys.iter().any(|k| sim.hits(k) == 0) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = sim.stats();
    let mut arrivals = sink.subscribe();
    let mut failed_at: HashMap<String, Instant> = HashMap::new();
    let start = deadline_notifier::clock::monotonic();
    let mut order: Vec<usize> = (0..jobs).collect();
    let mut delays: Vec<Duration> = order
        .iter()
        .map(|_| Duration::from_millis(rand::random::<u64>() % (spread * 1000).max(1)))
        .collect();
    order.sort_by_key(|&i| delays[i]);
    let mut latencies = Vec::new();
    let mut with_details = 0;
    let mut next = 0;
    while latencies.len() < jobs {
        if next < jobs && start.elapsed() >= delays[order[next]] {
            let k = &keys[order[next]];
            sim.patch(
                k,
                &Patch {
                    task_run_status: Some("FAILED".into()),
                    task_run_status_counts: Some(
                        [("SUCCEEDED".to_string(), 17), ("FAILED".to_string(), 3)].into(),
                    ),
                    ..Default::default()
                },
            );
            failed_at.insert(k.job_id.to_string(), deadline_notifier::clock::monotonic());
            next += 1;
            continue;
        }
        let wait = if next < jobs {
            delays[order[next]].saturating_sub(start.elapsed())
        } else {
            Duration::from_secs(120)
        };
        match tokio::time::timeout(wait, arrivals.recv()).await {
            Ok(Ok(r)) => {
                let id = r.body["data"]["jobId"].as_str().unwrap_or("").to_string();
                if let Some(t) = failed_at.get(&id) {
                    latencies.push(t.elapsed());
                    if r.body["data"]["failure"]["tasks"]
                        .as_array()
                        .is_some_and(|t| t.len() == 3)
                    {
                        with_details += 1;
                    }
                }
            }
            Ok(Err(_)) => {}
            Err(_) if next >= jobs => {
                anyhow::bail!("timed out: {} of {jobs} messages", latencies.len())
            }
            Err(_) => {}
        }
    }
    let after = sim.stats();
    let _ = stop_tx.send(());
    let _ = service.await;
    delays.clear();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let per = |a: u64, b: u64| (a - b) as f64 / jobs as f64;
    println!("{jobs} failed jobs (3 failed frames each) within {spread} s, poll interval {poll}");
    println!(
        "triage calls per failed job: ListSteps {:.2}, ListTasks {:.2}, BatchGetSessionAction {:.2}, BatchGetSession {:.2}, GetLogEvents {:.2} (total {:.2})",
        per(after.list_steps, before.list_steps),
        per(after.list_tasks, before.list_tasks),
        per(
            after.batch_get_session_action,
            before.batch_get_session_action
        ),
        per(after.batch_get_session, before.batch_get_session),
        per(after.get_log_events, before.get_log_events),
        per(
            after.list_steps
                + after.list_tasks
                + after.batch_get_session_action
                + after.batch_get_session
                + after.get_log_events,
            before.list_steps
                + before.list_tasks
                + before.batch_get_session_action
                + before.batch_get_session
                + before.get_log_events
        ),
    );
    println!("messages with all three failed frames: {with_details}/{jobs}");
    println!(
        "failure → delivered with triage: p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        pct(0.5).as_secs_f64(),
        pct(0.99).as_secs_f64(),
        latencies.last().unwrap().as_secs_f64()
    );
    Ok(())
}
