//! Page times of `GET /v1/subscriptions` with 100,000 subscriptions in the store
//! (half active, half finished), through the real router: `cargo run --release
//! --example paging [-- N]`. Prints p50/p99 per kind of page; the target is
//! p99 ≤ 20 ms. Not run in CI.
use axum::body::Body;
use axum::http::Request;
use deadline_notifier::config::Config;
use deadline_notifier::domain::{Event, JobKey, Subscription};
use deadline_notifier::http::api::{self, AppState};
use deadline_notifier::store::{Store, Wakers};
use tower::ServiceExt;

const TOKEN: &str = "paging-token-0123456789abcdef";

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nrate_limit = 0\n[store]\npath = \"{}\"\n[delivery]\nallow_private_targets = true\n[[teams]]\nname = \"lighting\"\ntokens = [\"{TOKEN}\"]\n[[teams.channels]]\nname = \"pipeline\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\n",
        dir.path().join("s.sled").display()
    );
    let cfg = Config::from_toml(&text, std::path::Path::new("paging.toml")).unwrap();
    let store = Store::open(&cfg.store.path).unwrap();
    let t0 = deadline_notifier::clock::wall_now() - chrono::Duration::days(60);
    let subs: Vec<Subscription> = (0..n)
        .map(|i| {
            let finished = i % 2 == 0;
            Subscription {
                id: format!("sub-{i:032x}"),
                team: "lighting".into(),
                job: JobKey {
                    farm_id: format!("farm-{:032x}", 1).into(),
                    queue_id: format!("queue-{:032x}", 2).into(),
                    job_id: format!("job-{i:032x}").into(),
                },
                channels: vec!["pipeline".into()],
                events: vec![Event::Failed, Event::Succeeded],
                created_at: t0 + chrono::Duration::seconds(i as i64 * 30),
                state: if finished { "finished" } else { "active" }.into(),
                ended_reason: None,
                watch: None,
                muted: false,
                finished_at: finished.then(|| t0 + chrono::Duration::seconds(i as i64 * 30 + 3600)),
                job_name: Some(format!("shot_{i:06} comp")),
            }
        })
        .collect();
    let load = deadline_notifier::clock::monotonic();
    store.insert_subscriptions_bulk(&subs).unwrap();
    eprintln!(
        "{n} subscriptions stored in {:.1} s",
        load.elapsed().as_secs_f64()
    );
    let renderer = deadline_notifier::render::Renderer::load(&cfg, None).unwrap();
    let sender = deadline_notifier::notify::send::Sender::new(&cfg.delivery).unwrap();
    let state = AppState::new(
        store,
        deadline_notifier::app::live::Live::new(cfg, renderer, sender, None, None),
        deadline_notifier::clock::system(),
        Wakers::default(),
        deadline_notifier::watch::WatchHandle::detached(),
    );
    let router = api::router(state);
    let get = |path: String| {
        let router = router.clone();
        async move {
            let req = Request::get(path)
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap();
            let t = deadline_notifier::clock::monotonic();
            let resp = router.oneshot(req).await.unwrap();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            (
                ms,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    println!("| page | pages | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for (label, base) in [
        (
            "active, limit 100, following the cursor",
            "/v1/subscriptions?state=active&limit=100",
        ),
        (
            "finished, limit 100, following the cursor",
            "/v1/subscriptions?state=finished&limit=100",
        ),
        (
            "all, limit 500, following the cursor",
            "/v1/subscriptions?state=all&limit=500",
        ),
    ] {
        let mut times = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..200 {
            let path = match &next {
                Some(c) => format!("{base}&cursor={c}"),
                None => base.to_string(),
            };
            let (ms, v) = get(path).await;
            assert!(
                v["subscriptions"].is_array(),
                "{label}: the API answered {v}"
            );
            times.push(ms);
            next = v["next"].as_str().map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        let pages = times.len();
        println!(
            "| {label} | {pages} | {:.2} | {:.2} |",
            percentile(&mut times.clone(), 0.5),
            percentile(&mut times, 0.99)
        );
    }
    let mut times = Vec::new();
    for i in 0..100 {
        let (ms, v) = get(format!(
            "/v1/subscriptions?state=all&limit=100&q=shot_{:04}",
            i * 7
        ))
        .await;
        assert!(
            v["subscriptions"].is_array(),
            "search: the API answered {v}"
        );
        times.push(ms);
    }
    println!(
        "| search `q=shot_NNNN` (100 matches each), all | 100 | {:.2} | {:.2} |",
        percentile(&mut times.clone(), 0.5),
        percentile(&mut times, 0.99)
    );
}
