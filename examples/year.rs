//! A studio's year in an afternoon: `cargo run --release --example year [-- DAYS JOBS_PER_DAY]`
//! (default 365 days of 500 jobs a day). Not run in CI.
//!
//! The service runs in this process on a controlled clock that moves a day at a
//! time; the Deadline Cloud simulator and a counting webhook receiver run in a child
//! process (so RSS is the service's). Every simulated day 500 jobs are submitted
//! (with that day's `createdAt`) to a queue a watch follows; each is discovered,
//! read once running, then succeeds and is announced. The next day it is past
//! `terminal_grace` and finishes; `keep_finished` (30 days) later the sweep removes
//! it. Like Deadline Cloud, the simulator forgets jobs 120 days after submission.
//! Prints, per simulated month: store size on disk, RSS, subscriptions held, and the
//! time of one `GET /v1/subscriptions` page (active, and finished).
use deadline_notifier::app::App;
use deadline_notifier::clock::Clock;
use deadline_notifier::config::Config;
use deadline_notifier::deadline::client::DeadlineClient;
use deadline_notifier::devkit::simulator::{JobSpec, Simulator};
use deadline_notifier::domain::JobKey;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "year-token-0123456789abcdef";
const QUEUES: u64 = 2;

fn farm() -> String {
    format!("farm-{:032x}", 0x7ea_u64)
}

fn queue(i: u64) -> String {
    format!("queue-{:032x}", 0x100 + i)
}

/// The service's clock: the start of the simulated year plus what the driver adds.
struct YearClock {
    start: chrono::DateTime<chrono::Utc>,
    offset_ms: AtomicI64,
}

impl Clock for YearClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.start + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// Every file under `p` with its size.
fn files(p: &std::path::Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => out.extend(files(&e.path())),
            Ok(m) => out.push((m.len(), e.path())),
            Err(_) => {}
        }
    }
    out
}

fn dir_size(p: &std::path::Path) -> u64 {
    files(p).iter().map(|(n, _)| n).sum()
}

/// The world child's state: the simulator, today's jobs, every job by submission.
struct World {
    sim: Simulator,
    today: Mutex<Vec<JobKey>>,
    all: Mutex<VecDeque<(chrono::DateTime<chrono::Utc>, JobKey)>>,
    received: AtomicU64,
}

/// Child: the simulator, a webhook receiver that counts, and the driver's controls.
async fn run_world() {
    use axum::extract::State;
    use axum::routing::{get, post};
    let world = Arc::new(World {
        sim: Simulator::new(),
        today: Mutex::new(Vec::new()),
        all: Mutex::new(VecDeque::new()),
        received: AtomicU64::new(0),
    });
    let (sim_addr, _s) = world.sim.serve(([127, 0, 0, 1], 0).into()).await.unwrap();
    let app = axum::Router::new()
        .route(
            "/hook",
            post(|State(w): State<Arc<World>>| async move {
                w.received.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        )
        .route(
            "/received",
            get(|State(w): State<Arc<World>>| async move {
                w.received.load(Ordering::SeqCst).to_string()
            }),
        )
        // Submits `count` RUNNING jobs created from `from` on, `spacing_s` apart.
        .route(
            "/jobs",
            post(
                |State(w): State<Arc<World>>, axum::Json(v): axum::Json<Value>| async move {
                    let from: chrono::DateTime<chrono::Utc> =
                        v["from"].as_str().unwrap().parse().unwrap();
                    let spacing = v["spacing_s"].as_i64().unwrap();
                    let mut today = w.today.lock().unwrap();
                    let mut all = w.all.lock().unwrap();
                    today.clear();
                    for i in 0..v["count"].as_u64().unwrap() {
                        let created = from + chrono::Duration::seconds(spacing * i as i64);
                        let key = w.sim.add_job(JobSpec {
                            farm_id: Some(farm()),
                            queue_id: Some(queue(i % QUEUES)),
                            name: format!("shot_{:04} lighting v{}", i, created.format("%j")),
                            task_run_status: Some("RUNNING".into()),
                            task_run_status_counts: Some([("RUNNING".to_string(), 10)].into()),
                            created_at: Some(created),
                            ..Default::default()
                        });
                        today.push(key.clone());
                        all.push_back((created, key));
                    }
                    "ok"
                },
            ),
        )
        // How many of today's jobs have not been read yet.
        .route(
            "/unread",
            get(|State(w): State<Arc<World>>| async move {
                let today = w.today.lock().unwrap();
                today
                    .iter()
                    .filter(|k| w.sim.hits(k) == 0)
                    .count()
                    .to_string()
            }),
        )
        .route(
            "/succeed",
            post(|State(w): State<Arc<World>>| async move {
                for k in w.today.lock().unwrap().iter() {
                    w.sim.set_status(k, "SUCCEEDED");
                }
                "ok"
            }),
        )
        // Forgets jobs submitted before `before`, as Deadline Cloud does after 120 days.
        .route(
            "/expire",
            post(
                |State(w): State<Arc<World>>, axum::Json(v): axum::Json<Value>| async move {
                    let before: chrono::DateTime<chrono::Utc> =
                        v["before"].as_str().unwrap().parse().unwrap();
                    let mut all = w.all.lock().unwrap();
                    while all.front().is_some_and(|(t, _)| *t < before) {
                        let (_, k) = all.pop_front().unwrap();
                        w.sim.remove(&k);
                    }
                    "ok"
                },
            ),
        )
        .with_state(world.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{} {}", sim_addr, listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}

fn config(dir: &std::path::Path, sim: &str, ctl: &str) -> Config {
    let queues: Vec<String> = (0..QUEUES).map(|i| format!("\"{}\"", queue(i))).collect();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
rate_limit = 0
[store]
path = "{store}"
keep_finished = "30d"
[deadline]
poll_interval = "500ms"
max_requests_per_second = 100
endpoint_url = "{sim}"
max_attempts = 1
discovery_interval = "200ms"
discovery_max_requests_per_second = 20
[delivery]
allow_private_targets = true
webhook_interval = "0s"
[[teams]]
name = "lighting"
tokens = ["{TOKEN}"]
[[teams.channels]]
name = "renders"
kind = "webhook"
url = "{ctl}/hook"
[[teams.watches]]
name = "every-render"
farm_id = "{farm}"
queue_ids = [{queues}]
events = ["job.succeeded", "job.failed"]
channels = ["renders"]
"#,
        store = dir.join("store.sled").display(),
        farm = farm(),
        queues = queues.join(", "),
    );
    Config::from_toml(&text, std::path::Path::new("year.toml")).unwrap()
}

async fn text(c: &reqwest::Client, url: &str) -> String {
    c.get(url).send().await.unwrap().text().await.unwrap()
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let t0 = deadline_notifier::clock::monotonic();
    while !f().await {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "waited two minutes for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Median and worst of `n` reads of one page, in ms.
async fn page_ms(c: &reqwest::Client, api: &str, state: &str, n: usize) -> (f64, f64, usize) {
    let mut times = Vec::with_capacity(n);
    let mut rows = 0;
    for _ in 0..n {
        let t0 = deadline_notifier::clock::monotonic();
        let v: Value = c
            .get(format!("{api}/v1/subscriptions?state={state}&limit=100"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        rows = v["subscriptions"].as_array().map_or(0, Vec::len);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    (times[n / 2], times[n - 1], rows)
}

async fn run_year(days: u64, per_day: u64) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--world")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addrs: Vec<String> = line
        .split_whitespace()
        .map(|a| format!("http://{a}"))
        .collect();
    let (sim, ctl) = (addrs[0].clone(), addrs[1].clone());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim, &ctl);
    let store_dir = cfg.store.path.clone();
    let start: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let clock = Arc::new(YearClock {
        start,
        offset_ms: AtomicI64::new(0),
    });
    let client = DeadlineClient::local(&sim, &cfg.deadline);
    let app = App::build(cfg, Some(client), clock.clone()).await.unwrap();
    let api = format!("http://{}", app.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));
    let c = reqwest::Client::new();
    let rss_base = rss_bytes();
    println!(
        "{days} simulated days of {per_day} jobs a day; keep_finished 30 days; RSS at start {:.1} MiB\n",
        rss_base as f64 / 1048576.0
    );
    println!(
        "| day | jobs so far | subscriptions held | jobs followed | store on disk | RSS | page p50 / max, active | page p50 / max, finished | real s/day |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // The watch's first search marks where its queues' history starts (at the
    // clock's start): only then may the first day's jobs be submitted.
    wait_until("the watch's first search", async || {
        let v: Value = c
            .get(format!("{sim}/_sim/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["searchJobs"].as_u64().unwrap_or(0) >= QUEUES.div_ceil(10)
    })
    .await;
    let wall = deadline_notifier::clock::monotonic();
    let mut month_wall = deadline_notifier::clock::monotonic();
    let day_ms = 86_400_000_i64;
    for day in 0..days as i64 {
        // The day's jobs are submitted between 00:00 and 22:00; then the clock moves
        // to 23:00 (in this order, so no search can pass the day before its jobs exist).
        let day_start = start + chrono::Duration::milliseconds(day * day_ms);
        c.post(format!("{ctl}/jobs"))
            .json(&json!({"count": per_day, "from": day_start.to_rfc3339(), "spacing_s": 22 * 3600 / per_day.max(1) as i64}))
            .send()
            .await
            .unwrap();
        clock
            .offset_ms
            .store(day * day_ms + 23 * 3_600_000, Ordering::SeqCst);
        wait_until("every job of the day read once", async || {
            text(&c, &format!("{ctl}/unread")).await == "0"
        })
        .await;
        c.post(format!("{ctl}/succeed")).send().await.unwrap();
        let want = (day as u64 + 1) * per_day;
        wait_until("every job of the day announced", async || {
            text(&c, &format!("{ctl}/received"))
                .await
                .parse::<u64>()
                .unwrap()
                >= want
        })
        .await;
        let expire = day_start - chrono::Duration::days(120);
        c.post(format!("{ctl}/expire"))
            .json(&json!({"before": expire.to_rfc3339()}))
            .send()
            .await
            .unwrap();
        if (day + 1) % 30 == 0 || day + 1 == days as i64 {
            let m = text(&c, &format!("{api}/metrics")).await;
            let (a50, amax, arows) = page_ms(&c, &api, "active", 21).await;
            let (f50, fmax, frows) = page_ms(&c, &api, "finished", 21).await;
            let _ = (arows, frows);
            let held = metric(&m, "deadline_notifier_subscriptions");
            let watched = metric(&m, "deadline_notifier_watched_jobs");
            let days_here = if (day + 1) % 30 == 0 {
                30
            } else {
                (day + 1) % 30
            };
            println!(
                "| {} | {} | {held:.0} | {watched:.0} | {:.1} MiB | {:.1} MiB | {a50:.2} / {amax:.2} ms | {f50:.2} / {fmax:.2} ms | {:.2} |",
                day + 1,
                want,
                dir_size(&store_dir) as f64 / 1048576.0,
                rss_bytes() as f64 / 1048576.0,
                month_wall.elapsed().as_secs_f64() / days_here as f64,
            );
            month_wall = deadline_notifier::clock::monotonic();
        }
    }
    println!(
        "\n{} jobs in {:.0} s real time",
        days * per_day,
        wall.elapsed().as_secs_f64()
    );
    let _ = stop_tx.send(());
    let _ = running.await;
    let _ = child.kill();
    let _ = child.wait();
    // Where the bytes are: each tree's records and their sizes, read after a clean
    // stop (a constant job rate must leave every tree flat, not only the counts).
    let mut files = files(&store_dir);
    files.sort();
    for (n, f) in files.iter().rev().take(8) {
        println!("{n:>12} {}", f.display());
    }
    let db = sled::open(&store_dir).unwrap();
    println!("\n| tree | records | key + value bytes |\n|---|---|---|");
    for name in db.tree_names() {
        let t = db.open_tree(&name).unwrap();
        let (mut n, mut bytes) = (0u64, 0u64);
        for kv in t.iter() {
            let (k, v) = kv.unwrap();
            n += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        println!("| {} | {n} | {bytes} |", String::from_utf8_lossy(&name));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    if args.get(1).map(String::as_str) == Some("--world") {
        return rt.block_on(run_world());
    }
    let days = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(365);
    let per_day = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(500);
    rt.block_on(run_year(days, per_day));
}
