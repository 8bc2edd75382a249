//! Scale benchmark: `cargo run --release --example bench [-- 1000 10000 100000]`.
//!
//! Runs the Deadline Cloud simulator and a webhook sink in one child process and the
//! service in another (so CPU and RSS figures are the service's alone), for each job
//! count, and prints one table. Not run in CI.
use deadline_notifier::app::App;
use deadline_notifier::clock;
use deadline_notifier::config::Config;
use deadline_notifier::deadline::client::DeadlineClient;
use deadline_notifier::devkit::simulator::Simulator;
use deadline_notifier::devkit::sink::Sink;
use deadline_notifier::domain::{Event, JobKey};
use deadline_notifier::domain::{JobState, OutboxEntry, Subscription};
use deadline_notifier::store::Store;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const FARMS: usize = 10;
const QUEUES: usize = 10;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn config(
    dir: &std::path::Path,
    sim: &str,
    sink: &str,
    interval: &str,
    rps: f64,
    channels: usize,
) -> Config {
    let mut text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
rate_limit = 0
[store]
path = "{}"
[deadline]
poll_interval = "{interval}"
max_requests_per_second = {rps}
endpoint_url = "{sim}"
max_attempts = 1
[delivery]
allow_private_targets = true
webhook_interval = "0s"
[[teams]]
name = "bench"
tokens = ["bench-token-0123456789"]
"#,
        dir.join("store.sled").display()
    );
    for c in 0..channels {
        text.push_str(&format!("[[teams.channels]]\nname = \"hook{c}\"\nkind = \"webhook\"\nurl = \"{sink}/webhook/{c}\"\n"));
    }
    Config::from_toml(&text, std::path::Path::new("bench.toml")).unwrap()
}

/// One client for the bench's own reads: `reqwest::get` builds a client per call,
/// loading the system's certificates each time, and that CPU would be counted as
/// the service's.
async fn get(url: &str) -> Value {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let c = CLIENT.get_or_init(reqwest::Client::new);
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// Child 1: simulator and sink. Prints their ports, serves until killed.
async fn run_world() {
    let sim = Simulator::new();
    let (sim_addr, _a) = sim.serve(([127, 0, 0, 1], 0).into()).await.unwrap();
    let sink = Sink::new();
    let (sink_addr, _b) = sink.serve(([127, 0, 0, 1], 0).into()).await.unwrap();
    let stats_sink = sink.clone();
    let app = axum::Router::new().route(
        "/stats",
        axum::routing::get(move || {
            let sink = stats_sink.clone();
            async move {
                let mut lat: Vec<f64> = sink
                    .received()
                    .iter()
                    .filter_map(|r| {
                        let ts = r.body["timestamp"].as_str()?;
                        let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
                        Some(
                            (r.received_at - t.with_timezone(&chrono::Utc)).num_microseconds()?
                                as f64
                                / 1000.0,
                        )
                    })
                    .collect();
                lat.sort_by(|a, b| a.total_cmp(b));
                let pct = |p: f64| {
                    lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
                        .copied()
                        .unwrap_or(f64::NAN)
                };
                axum::Json(
                    json!({"received": sink.received().len(), "p50": pct(0.5), "p99": pct(0.99)}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stats_addr = listener.local_addr().unwrap();
    println!("{} {} {}", sim_addr, sink_addr, stats_addr);
    axum::serve(listener, app).await.unwrap();
}

/// Child 2: the service watching `n` jobs. Prints one JSON line of figures.
async fn run_watch(
    n: usize,
    sim: String,
    sink: String,
    stats: String,
    interval: &str,
    rps: f64,
    measure: u64,
) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim, &sink, interval, rps, 1);
    // The store is written by another process, as in production (the service starts on
    // a store it did not just fill), so this process's RSS is the service's alone.
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--populate",
            &n.to_string(),
            &cfg.store.path.display().to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "populating the store failed");
    let rss_base = rss_bytes();
    let calls =
        |s: &Value| s["batchGetJob"].as_u64().unwrap_or(0) + s["getJob"].as_u64().unwrap_or(0);
    let before = get(&format!("{sim}/_sim/stats")).await;
    let t0 = deadline_notifier::clock::monotonic();
    let client = DeadlineClient::local(&sim, &cfg.deadline);
    let app = App::build(cfg, Some(client), clock::system())
        .await
        .unwrap();
    tokio::spawn(app.run(std::future::pending()));
    if n == 0 {
        // Baseline: the running service with nothing to watch.
        tokio::time::sleep(Duration::from_secs(measure)).await;
        println!(
            "{}",
            json!({"jobs": 0, "startup_ms": t0.elapsed().as_secs_f64() * 1000.0, "rss_mib": rss_bytes() as f64 / 1048576.0})
        );
        return;
    }
    loop {
        if calls(&get(&format!("{sim}/_sim/stats")).await) > calls(&before) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let startup = t0.elapsed();
    // Warm up: one full round of baselines.
    loop {
        let s = get(&format!("{sim}/_sim/stats")).await;
        if s["jobReads"].as_u64().unwrap() - before["jobReads"].as_u64().unwrap() >= n as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s0, c0, w0) = (
        get(&format!("{sim}/_sim/stats")).await,
        cpu_seconds(),
        deadline_notifier::clock::monotonic(),
    );
    tokio::time::sleep(Duration::from_secs(measure)).await;
    let (s1, c1, wall) = (
        get(&format!("{sim}/_sim/stats")).await,
        cpu_seconds(),
        w0.elapsed(),
    );
    let checks = s1["jobReads"].as_u64().unwrap() - s0["jobReads"].as_u64().unwrap();
    let api = calls(&s1) - calls(&s0);
    let lat = get(&format!("{stats}/stats")).await;
    let out = json!({
        "jobs": n,
        "startup_ms": startup.as_secs_f64() * 1000.0,
        "checks": checks,
        "checks_per_s": checks as f64 / wall.as_secs_f64(),
        "api_per_check": api as f64 / checks.max(1) as f64,
        "cpu_us_per_check": (c1 - c0) * 1e6 / checks.max(1) as f64,
        "rss_mib": rss_bytes() as f64 / 1048576.0,
        "rss_base_mib": rss_base as f64 / 1048576.0,
        "p50_ms": lat["p50"], "p99_ms": lat["p99"], "delivered": lat["received"],
    });
    println!("{out}");
}

/// Child of a watch child: writes `n` subscriptions into the store at `path`.
fn run_populate(n: usize, path: &str) {
    let store = Store::open(std::path::Path::new(path)).unwrap();
    let now = deadline_notifier::clock::wall_now();
    let subs: Vec<Subscription> = (0..n)
        .map(|i| Subscription {
            id: format!("sub-{i:032x}"),
            team: "bench".into(),
            job: Simulator::populated_key(i, FARMS, QUEUES),
            channels: vec!["hook0".into()],
            events: vec![Event::Started, Event::Succeeded, Event::Requeued],
            created_at: now,
            state: "active".into(),
            ended_reason: None,
            watch: None,
            muted: false,
            finished_at: None,
            job_name: None,
        })
        .collect();
    store.insert_subscriptions_bulk(&subs).unwrap();
}

/// Child 3: delivery throughput: `m` queued messages over 8 webhook channels.
async fn run_throughput(m: usize, sim: String, sink: String, stats: String) {
    let dir = tempfile::tempdir().unwrap();
    let channels = 8;
    let cfg = config(dir.path(), &sim, &sink, "1h", 5.0, channels);
    {
        let store = Store::open(&cfg.store.path).unwrap();
        let now = deadline_notifier::clock::wall_now();
        let mut entries = Vec::with_capacity(m);
        for i in 0..m {
            entries.push(OutboxEntry::due_now(
                format!("msg_{i:032x}"),
                "bench",
                &format!("hook{}", i % channels),
                "webhook",
                JobKey {
                    farm_id: "f".into(),
                    queue_id: "q".into(),
                    job_id: format!("j{i}").into(),
                },
                Event::Succeeded,
                now,
                json!({"type": "job.succeeded", "timestamp": now.to_rfc3339(), "data": {"i": i}}),
            ));
        }
        let state = JobState {
            job: JobKey {
                farm_id: "f".into(),
                queue_id: "q".into(),
                job_id: "j".into(),
            },
            status: deadline_notifier::domain::JobStatus::of(
                &deadline_notifier::domain::JobSnapshot::sample(
                    JobKey {
                        farm_id: "f".into(),
                        queue_id: "q".into(),
                        job_id: "j".into(),
                    },
                    "x",
                ),
            ),
            since: now,
            terminal_since: None,
            progress: Default::default(),
        };
        store.commit_observation(&state, entries).unwrap();
    }
    let before = get(&format!("{stats}/stats")).await["received"]
        .as_u64()
        .unwrap();
    let client = DeadlineClient::local(&sim, &cfg.deadline);
    let app = App::build(cfg, Some(client), clock::system())
        .await
        .unwrap();
    let t0 = deadline_notifier::clock::monotonic();
    let cpu0 = cpu_seconds();
    tokio::spawn(app.run(std::future::pending()));
    loop {
        if get(&format!("{stats}/stats")).await["received"]
            .as_u64()
            .unwrap()
            - before
            >= m as u64
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu_us = (cpu_seconds() - cpu0) * 1e6 / m as f64;
    println!(
        "{}",
        json!({"messages": m, "seconds": secs, "posts_per_s": m as f64 / secs, "cpu_us_per_post": cpu_us})
    );
}

fn spawn_self(args: &[&str]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(if std::env::var_os("RUST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap()
}

/// Starts the simulator-and-sink child; returns it with its simulator, sink and stats URLs.
fn spawn_world() -> (Child, String, String, String) {
    let mut world = spawn_self(&["--world"]);
    let line = first_line(&mut world);
    let urls: Vec<String> = line
        .split_whitespace()
        .map(|a| format!("http://{a}"))
        .collect();
    (world, urls[0].clone(), urls[1].clone(), urls[2].clone())
}

fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    match args.get(1).map(String::as_str) {
        Some("--world") => return rt.block_on(run_world()),
        Some("--populate") => return run_populate(args[2].parse().unwrap(), &args[3]),
        Some("--watch") => {
            // RUST_LOG=info shows the service's start-up timings (store open, watcher load).
            if std::env::var_os("RUST_LOG").is_some() {
                deadline_notifier::app::telemetry::init(
                    deadline_notifier::app::telemetry::LogFormat::Text,
                );
            }
            let n = args[2].parse().unwrap();
            let rps: f64 = args[7].parse().unwrap();
            return rt.block_on(run_watch(
                n,
                args[3].clone(),
                args[4].clone(),
                args[5].clone(),
                &args[6],
                rps,
                args[8].parse().unwrap(),
            ));
        }
        Some("--throughput") => {
            return rt.block_on(run_throughput(
                args[2].parse().unwrap(),
                args[3].clone(),
                args[4].clone(),
                args[5].clone(),
            ));
        }
        _ => {}
    }
    // `bench throughput` runs only the delivery phase (for before/after pairs).
    let only_throughput = args.get(1).map(String::as_str) == Some("throughput");
    let sizes: Vec<usize> = if only_throughput {
        Vec::new()
    } else if args.len() > 1 {
        args[1..].iter().map(|a| a.parse().unwrap()).collect()
    } else {
        vec![1_000, 10_000, 100_000]
    };
    println!(
        "| jobs | interval | API calls/job-check | CPU µs/job-check | RSS MiB (base) | RSS/sub | p50 / p99 detection→delivery | start-up to first poll |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut base_rss = None;
    let baseline = (!only_throughput).then_some(0);
    for n in baseline.into_iter().chain(sizes) {
        let (mut world, sim, sink, stats) = spawn_world();
        rt.block_on(async {
            reqwest::Client::new()
                .post(format!("{sim}/_sim/populate"))
                .json(&json!({"jobs": n, "farms": FARMS, "queues": QUEUES, "churnPerMinute": 0.05}))
                .send()
                .await
                .unwrap();
        });
        // 1 s interval while the budget allows; beyond, the interval the budget can cover.
        let rps = 200.0;
        let interval = if n <= 10_000 {
            "1s".to_string()
        } else {
            format!("{}s", (n as f64 / 100.0 / rps * 1.5).ceil())
        };
        let measure = if n == 0 { 2 } else { 20 };
        let mut w = spawn_self(&[
            "--watch",
            &n.to_string(),
            &sim,
            &sink,
            &stats,
            &interval,
            &rps.to_string(),
            &measure.to_string(),
        ]);
        let v: Value = serde_json::from_str(&first_line(&mut w)).unwrap();
        let _ = w.kill();
        let _ = world.kill();
        if n == 0 {
            base_rss = v["rss_mib"].as_f64();
            println!(
                "| 0 (baseline) | – | – | – | {:.1} | – | – | – |",
                v["rss_mib"].as_f64().unwrap()
            );
            continue;
        }
        let rss = v["rss_mib"].as_f64().unwrap();
        let per_sub = (rss - base_rss.unwrap_or(0.0)) * 1048576.0 / n as f64;
        println!(
            "| {n} | {interval} | {:.4} | {:.1} | {:.1} ({:.1}) | {:.0} B | {:.0} / {:.0} ms | {:.0} ms |",
            v["api_per_check"].as_f64().unwrap(),
            v["cpu_us_per_check"].as_f64().unwrap(),
            rss,
            base_rss.unwrap_or(0.0),
            per_sub,
            v["p50_ms"].as_f64().unwrap_or(f64::NAN),
            v["p99_ms"].as_f64().unwrap_or(f64::NAN),
            v["startup_ms"].as_f64().unwrap(),
        );
    }
    let (mut world, sim, sink, stats) = spawn_world();
    let mut t = spawn_self(&["--throughput", "20000", &sim, &sink, &stats]);
    let v: Value = serde_json::from_str(&first_line(&mut t)).unwrap();
    let _ = t.kill();
    let _ = world.kill();
    println!(
        "\ndelivery throughput to a local sink: {:.0} posts/s ({} messages over 8 webhook channels in {:.2} s; the service's CPU {:.0} µs/post)",
        v["posts_per_s"].as_f64().unwrap(),
        v["messages"],
        v["seconds"].as_f64().unwrap(),
        v["cpu_us_per_post"].as_f64().unwrap()
    );
}
