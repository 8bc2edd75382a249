//! Fair shares: one team's watches cannot stop polling for the others, and the
//! per-team limits refuse with the config key named.
use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn farm() -> String {
    format!("farm-{:032x}", 0xfa_u64)
}

async fn post(url: &str, token: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Sends `bodies` to `url` concurrently (the store's group commit takes them
/// together); every answer must be `want`.
async fn post_all(url: &str, token: &'static str, bodies: Vec<Value>, want: u16) {
    let mut set = tokio::task::JoinSet::new();
    for b in bodies {
        let url = url.to_string();
        set.spawn(async move { post(&url, token, b).await });
    }
    while let Some(r) = set.join_next().await {
        let (status, v) = r.unwrap();
        assert_eq!(status, want, "{v}");
    }
}

fn edit_config(env: &Env, server: &str, deadline: &str) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let text = text
        .replacen("[server]\n", &format!("[server]\n{server}"), 1)
        .replacen("max_requests_per_second = 50\n", deadline, 1);
    std::fs::write(env.config_path(), text).unwrap();
}

/// 300 watches of 10 made-up queues each keep discovery searching all the time;
/// polling still gets its share (BatchGetJob at least four calls for every
/// SearchJobs call, its budget against discovery's), and the other team's
/// transition goes out while discovery is still at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_watches_do_not_starve_polling() {
    let mut env = Env::new().await;
    // Global 8/s: discovery 1/s, triage 2.5/s, polling 4.5/s. 100 jobs every
    // 100 ms ask polling for 10 calls a second: it uses all of its share.
    edit_config(
        &env,
        "max_watches_per_team = 300\nmax_watched_queues_per_team = 3000\n",
        "max_requests_per_second = 8\ndiscovery_max_requests_per_second = 1\ndiscovery_interval = \"200ms\"\n",
    );
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replacen("poll_interval = \"200ms\"", "poll_interval = \"100ms\"", 1);
    std::fs::write(env.config_path(), text).unwrap();
    let _svc = env.start().await;
    let watches: Vec<Value> = (0..300u64)
        .map(|w| {
            let queues: Vec<String> = (0..10u64)
                .map(|q| format!("queue-{:032x}", 0x1_0000 + w * 10 + q))
                .collect();
            json!({"name": format!("w{w}"), "farmId": farm(), "queueIds": queues,
                   "channels": ["pipeline"]})
        })
        .collect();
    post_all(&format!("{}/v1/watches", env.api()), LIGHTING, watches, 201).await;
    let jobs: Vec<_> = (0..100).map(|i| env.add_job(&format!("fx {i}"))).collect();
    let subs = jobs
        .iter()
        .map(|k| json!({"farmId": k.farm_id, "queueId": k.queue_id, "jobId": k.job_id}))
        .collect();
    post_all(&format!("{}/v1/subscriptions", env.api()), FX, subs, 201).await;
    env.observed_all(&jobs, 1).await;
    let s0 = env.sim.stats();
    wait_until(T, "twenty searches", || {
        env.sim.stats().search_jobs >= s0.search_jobs + 20
    })
    .await;
    let s1 = env.sim.stats();
    let (searches, batches) = (
        s1.search_jobs - s0.search_jobs,
        s1.batch_get_job - s0.batch_get_job,
    );
    eprintln!("fair shares: {batches} BatchGetJob and {searches} SearchJobs calls in one window");
    // Budgets 4.5 : 1; at least 4 : 1 (half the global budget) with the edges
    // of the window allowed for.
    assert!(
        batches >= 4 * searches - 8,
        "polling starved: {batches} BatchGetJob against {searches} SearchJobs"
    );
    env.sim.set_status(&jobs[7], "SUCCEEDED");
    let s2 = env.sim.stats();
    wait_until(T, "fx's job.succeeded", || {
        env.sink.delivered().iter().any(|r| {
            r.path == "/webhook/fx"
                && r.raw.contains(jobs[7].job_id.as_str())
                && r.body["type"] == "job.succeeded"
        })
    })
    .await;
    let s3 = env.sim.stats();
    eprintln!(
        "fair shares: the transition went out after {} BatchGetJob and {} SearchJobs calls",
        s3.batch_get_job - s2.batch_get_job,
        s3.search_jobs - s2.search_jobs
    );
    // Every job is read once per ~2.2 s (100 jobs, 4.5 calls/s, 100 per call).
    assert!(
        s3.search_jobs - s2.search_jobs <= 15,
        "the transition waited behind discovery"
    );
}

/// The 51st watch, a watch over too many queues and the subscription past the
/// team's limit are refused with 409 naming the config key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_refused_with_the_key_named() {
    let mut env = Env::new().await;
    edit_config(
        &env,
        "max_subscriptions_per_team = 3\nmax_watched_queues_per_team = 60\n",
        "max_requests_per_second = 50\ndiscovery_interval = \"200ms\"\n",
    );
    let _svc = env.start().await;
    let url = format!("{}/v1/watches", env.api());
    let body = |w: u64, n: u64| {
        let queues: Vec<String> = (0..n)
            .map(|q| format!("queue-{:032x}", 0x1_0000 + w * 10 + q))
            .collect();
        json!({"name": format!("w{w}"), "farmId": farm(), "queueIds": queues})
    };
    // 50 watches of one queue each.
    post_all(&url, LIGHTING, (0..50).map(|w| body(w, 1)).collect(), 201).await;
    let (s, v) = post(&url, LIGHTING, body(50, 1)).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["limit"], "server.max_watches_per_team", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("max_watches_per_team")
    );
    // The same watch again is still answered (idempotent), limit or not.
    let (s, v) = post(&url, LIGHTING, body(3, 1)).await;
    assert_eq!(s, 200, "{v}");
    // The other team is not limited by this one's watches; 50 + 10 queues is
    // the queue limit, 11 more are over it.
    let (s, v) = post(&url, FX, body(100, 10)).await;
    assert_eq!(s, 201, "{v}");
    let list: Vec<Value> = {
        let r = reqwest::Client::new()
            .get(&url)
            .bearer_auth(LIGHTING)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["watches"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert_eq!(list.len(), 50);
    for w in &list[..2] {
        let r = reqwest::Client::new()
            .delete(format!("{url}/{}", w["id"].as_str().unwrap()))
            .bearer_auth(LIGHTING)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    // 48 watches over 48 queues: ten more queues fit, three more after that do not.
    let (s, v) = post(&url, LIGHTING, body(60, 10)).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = post(&url, LIGHTING, body(61, 3)).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["limit"], "server.max_watched_queues_per_team", "{v}");
    let (s, v) = post(&url, LIGHTING, body(62, 1)).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = post(&url, LIGHTING, body(63, 1)).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["limit"], "server.max_watches_per_team", "{v}");
    // createdBy: at most 50 values.
    let mut b = body(70, 1);
    b["createdBy"] = json!((0..51).map(|i| format!("user{i}")).collect::<Vec<_>>());
    let (s, v) = post(&url, FX, b).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("createdBy"), "{v}");
    let mut b = body(71, 1);
    b["name"] = json!("w71");
    b["queueIds"] = json!(
        (0..11)
            .map(|q| format!("queue-{:032x}", 0x9_0000 + q))
            .collect::<Vec<_>>()
    );
    let (s, v) = post(&url, FX, b).await;
    assert_eq!(s, 400, "{v}");
    // Subscriptions: three active, the fourth refused.
    let keys: Vec<_> = (0..4).map(|i| env.add_job(&format!("j{i}"))).collect();
    for k in &keys[..3] {
        env.subscribe_job(k, json!({})).await;
    }
    let (s, v) = env
        .subscribe(
            LIGHTING,
            json!({"farmId": keys[3].farm_id, "queueId": keys[3].queue_id, "jobId": keys[3].job_id}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["limit"], "server.max_subscriptions_per_team", "{v}");
    // Subscribing a job again still answers the existing subscription.
    let (s, _) = env
        .subscribe(
            LIGHTING,
            json!({"farmId": keys[0].farm_id, "queueId": keys[0].queue_id, "jobId": keys[0].job_id}),
        )
        .await;
    assert_eq!(s, 200);
    // The other team has its own count.
    let (s, v) = env
        .subscribe(
            FX,
            json!({"farmId": keys[3].farm_id, "queueId": keys[3].queue_id, "jobId": keys[3].job_id}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

/// A hundred test-message requests at once queue one; the rest are told when to
/// try again; a real transition on that channel goes out as if none were asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_messages_cannot_flood_a_channel() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let job = env.add_job("shot_020 lighting");
    env.subscribe_job(&job, json!({"channels": ["slack"]}))
        .await;
    env.observed(&job, 2).await;
    let url = format!("{}/v1/channels/slack/test", env.api());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let url = url.clone();
        set.spawn(async move {
            let r = reqwest::Client::new()
                .post(&url)
                .bearer_auth(LIGHTING)
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            (r.status().as_u16(), retry, r.json::<Value>().await.unwrap())
        });
    }
    let mut accepted = 0;
    while let Some(r) = set.join_next().await {
        let (status, retry, body) = r.unwrap();
        match status {
            202 => accepted += 1,
            429 => {
                assert!(matches!(retry, Some(1..=10)), "{retry:?}");
                assert!(
                    body["error"].as_str().unwrap().contains("test message"),
                    "{body}"
                );
            }
            s => panic!("{s}: {body}"),
        }
    }
    assert_eq!(accepted, 1);
    env.sim.set_status(&job, "SUCCEEDED");
    wait_until(T, "the real message and the one test message", || {
        let slack: Vec<_> = env
            .sink
            .delivered()
            .into_iter()
            .filter(|r| r.path.starts_with("/slack"))
            .collect();
        slack.iter().any(|r| r.raw.contains(job.job_id.as_str()))
            && slack
                .iter()
                .filter(|r| !r.raw.contains(job.job_id.as_str()))
                .count()
                == 1
    })
    .await;
}
