//! `/metrics` scrape cost against a large store:
//! `cargo run --release --example metrics_scrape [-- 100000]`.
//!
//! Fills a store with N subscriptions (and N/10 queued messages), then times the
//! real `/metrics` handler through the router, and, for comparison, the tree walks
//! the handler used to do on every scrape (count subscriptions, decode every
//! outbox entry).
use deadline_notifier::app::live::Live;
use deadline_notifier::config::Config;
use deadline_notifier::domain::{
    Event, JobKey, JobSnapshot, JobState, JobStatus, OutboxEntry, Subscription,
};
use deadline_notifier::http::api::{AppState, router};
use deadline_notifier::notify::send::Sender;
use deadline_notifier::render::Renderer;
use deadline_notifier::store::Store;
use deadline_notifier::store::Wakers;
use deadline_notifier::watch::WatchHandle;
use std::time::Duration;
use tower::ServiceExt;

fn key(i: usize) -> JobKey {
    JobKey {
        farm_id: format!("farm-{}", "a".repeat(32)).into(),
        queue_id: format!("queue-{}", "b".repeat(32)).into(),
        job_id: format!("job-{i:032x}").into(),
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[store]
path = "{}"
[delivery]
allow_private_targets = true
[[teams]]
name = "lighting"
tokens = ["lighting-token-0123456789"]
[[teams.channels]]
name = "pipeline"
kind = "webhook"
url = "http://127.0.0.1:9/hook"
"#,
        dir.path().join("store").display()
    );
    let config = Config::from_toml(&text, &dir.path().join("n.toml")).unwrap();
    let store = Store::open(&config.store.path).unwrap();
    let now = deadline_notifier::clock::wall_now();
    let subs: Vec<Subscription> = (0..n)
        .map(|i| Subscription {
            id: format!("sub-{i:032x}"),
            team: "lighting".into(),
            job: key(i),
            channels: vec!["pipeline".into()],
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
    store.insert_subscriptions_bulk(&subs).unwrap();
    for i in 0..n / 10 {
        let e = OutboxEntry::due_now(
            format!("msg_{i}"),
            "lighting",
            "pipeline",
            "webhook",
            key(i),
            Event::Failed,
            now,
            serde_json::json!({"data": {"summary": "x".repeat(400)}}),
        );
        let st = JobState {
            job: key(i),
            status: JobStatus::of(&JobSnapshot::sample(key(i), "x")),
            since: now,
            terminal_since: None,
            progress: Default::default(),
        };
        store.commit_observation(&st, vec![e]).unwrap();
    }
    store.sync().unwrap();
    let renderer = Renderer::load(&config, None).unwrap();
    let sender = Sender::new(&config.delivery).unwrap();
    let live = Live::new(config, renderer, sender, None, None);
    let state = AppState::new(
        store.clone(),
        live,
        deadline_notifier::clock::system(),
        Wakers::default(),
        WatchHandle::detached(),
    );
    let app = router(state);
    let scrape = || async {
        let req = axum::http::Request::get("/metrics")
            .body(axum::body::Body::empty())
            .unwrap();
        let r = app.clone().oneshot(req).await.unwrap();
        assert!(r.status().is_success());
    };
    scrape().await;
    let rounds = 50;
    let t = deadline_notifier::clock::monotonic();
    for _ in 0..rounds {
        scrape().await;
    }
    let now_per = t.elapsed() / rounds;

    let walk_rounds = 5;
    let t = deadline_notifier::clock::monotonic();
    for _ in 0..walk_rounds {
        let subs = store.subscriptions().unwrap().len();
        let mut outbox = 0;
        for _ in 0..1 {
            outbox += store
                .outbox_range("lighting", "pipeline", 0, u64::MAX)
                .unwrap()
                .len();
        }
        let dead = store.dead_letters().unwrap().len();
        std::hint::black_box((subs, outbox, dead));
    }
    let walk_per = t.elapsed() / walk_rounds;
    println!(
        "{n} subscriptions, {} queued: /metrics scrape {:.3} ms; the per-scrape tree walks it replaced {:.1} ms",
        n / 10,
        ms(now_per),
        ms(walk_per)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
