//! A studio's year in a few seconds: subscriptions that finish and fade, and lists
//! that page.
use crate::helpers::*;
use deadline_notifier::devkit::simulator::JobSpec;
use deadline_notifier::domain::JobKey;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

async fn get(env: &Env, token: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", env.api()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// 2,000 jobs followed by a watch succeed, finish after `terminal_grace` and are
/// removed `keep_finished` later with their job states and notices; five running
/// jobs are untouched; a SIGKILL in the middle loses nothing active and the next
/// sweep finishes; the watch never takes a removed job up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_subscriptions_fade_and_the_store_returns_to_what_is_active() {
    let mut env = Env::new().await;
    let farm = format!("farm-{:032x}", 0xfa_u64);
    let queue = format!("queue-{:032x}", 0x9e_u64);
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let text = text
        .replacen(
            "[deadline]\n",
            "[deadline]\nterminal_grace = \"1s\"\nfinished_poll_interval = \"1s\"\ndiscovery_interval = \"200ms\"\ndiscovery_max_requests_per_second = 10\n",
            1,
        )
        .replacen("[store]\n", "[store]\nkeep_finished = \"3s\"\n", 1)
        .replacen(
            "[[teams]]\nname = \"fx\"",
            &format!(
                "[[teams.watches]]\nname = \"everything\"\nfarm_id = \"{farm}\"\nqueue_ids = [\"{queue}\"]\nevents = [\"job.succeeded\"]\nchannels = [\"pipeline\"]\n[[teams]]\nname = \"fx\""
            ),
            1,
        );
    std::fs::write(env.config_path(), text).unwrap();
    let mut svc = env.start().await;
    let running: Vec<JobKey> = (0..5)
        .map(|i| {
            env.sim.add_job(JobSpec {
                name: format!("long render {i}"),
                task_run_status: Some("RUNNING".into()),
                ..Default::default()
            })
        })
        .collect();
    let done: Vec<JobKey> = (0..2000)
        .map(|i| env.add_job(&format!("shot {i}")))
        .collect();
    wait_for(T, "every job subscribed", || async {
        match env
            .metric_opt("deadline_notifier_subscriptions", &[])
            .await
            .unwrap_or(-1.0)
        {
            n if n >= 2005.0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    env.observed_all(&done, 1).await;
    for k in &done {
        env.sim.set_status(k, "SUCCEEDED");
    }
    // Killed once removals have begun: the next sweep finishes the job.
    wait_for(T, "the first removals", || async {
        match env
            .metric_opt("deadline_notifier_subscriptions", &[])
            .await
            .unwrap_or(-1.0)
        {
            n if (5.0..2005.0).contains(&n) => Ok(()),
            n => Err(n),
        }
    })
    .await;
    svc.kill();
    let mut svc = env.start().await;
    wait_for(T, "only the running jobs' subscriptions", || async {
        let n = env
            .metric_opt("deadline_notifier_subscriptions", &[])
            .await
            .unwrap_or(-1.0);
        if n == 5.0 { Ok(()) } else { Err(n) }
    })
    .await;
    // Discovery keeps searching the queue (the removed jobs are inside its
    // overlap): none comes back.
    let searches = env.sim.stats().search_jobs;
    wait_until(T, "five more searches", || {
        env.sim.stats().search_jobs >= searches + 5
    })
    .await;
    let (s, active) = get(&env, LIGHTING, "/v1/subscriptions?state=all&limit=500").await;
    assert_eq!(s, 200);
    let ids: HashSet<String> = active["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            assert_eq!(x["state"], "active", "{x}");
            x["jobId"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        ids,
        running
            .iter()
            .map(|k| k.job_id.to_string())
            .collect::<HashSet<_>>()
    );
    // Every succeeded job is announced (messages outlive their subscriptions).
    wait_until(T, "2,000 announcements", || {
        let announced: HashSet<String> = env
            .sink
            .delivered()
            .into_iter()
            .filter(|r| r.path == "/webhook/lighting")
            .filter_map(|r| r.body["data"]["jobId"].as_str().map(str::to_string))
            .collect();
        announced.len() == 2000
    })
    .await;
    // The watcher drops a removed job's state when it takes up the sweep's news
    // (a state left by a stop before that is removed at the next start): wait
    // until it follows only the running jobs.
    wait_for(T, "the watcher follows only the running jobs", || async {
        match env
            .metric_opt("deadline_notifier_watched_jobs", &[])
            .await
            .unwrap_or(-1.0)
        {
            5.0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    // A clean stop, so the last sweep's and the watcher's last group commits are
    // on disk when the store is read (the kill above already covered a crash).
    assert!(svc.terminate().success());
    let store = deadline_notifier::store::Store::open(
        &env.config_path().parent().unwrap().join("store.sled"),
    )
    .unwrap();
    let counts = store.verify().unwrap();
    assert_eq!(counts.subscriptions, 5, "{counts:?}");
    assert_eq!(counts.jobs, 5, "{counts:?}");
    assert_eq!(store.notice_count(), 0, "the running jobs sent nothing");
}

/// Pages of a team's subscriptions: newest first, every row once while new ones
/// arrive, cursors good only for the team and list they came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_pages_follow_a_stable_signed_cursor() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let keys: Vec<JobKey> = (0..230)
        .map(|i| env.add_job(&format!("page job {i}")))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for k in keys.clone() {
        let url = format!("{}/v1/subscriptions", env.api());
        set.spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(LIGHTING)
                .json(&json!({"farmId": k.farm_id, "queueId": k.queue_id, "jobId": k.job_id}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), 201);
    }
    let (s, p1) = get(&env, LIGHTING, "/v1/subscriptions?limit=100").await;
    assert_eq!(s, 200, "{p1}");
    // Times compared as times: RFC 3339 text drops trailing zeros of the
    // fraction, so it does not sort as text.
    let rows = |p: &Value| -> Vec<(chrono::DateTime<chrono::Utc>, String)> {
        p["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["createdAt"].as_str().unwrap().parse().unwrap(),
                    x["id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let r1 = rows(&p1);
    assert_eq!(r1.len(), 100);
    assert!(r1.windows(2).all(|w| w[0].0 >= w[1].0), "newest first");
    let c1 = p1["next"].as_str().unwrap().to_string();
    // New subscriptions arrive between pages.
    for i in 0..5 {
        let k = env.add_job(&format!("late {i}"));
        env.subscribe_job(&k, json!({})).await;
    }
    let (_, p2) = get(
        &env,
        LIGHTING,
        &format!("/v1/subscriptions?limit=100&cursor={c1}"),
    )
    .await;
    let c2 = p2["next"].as_str().unwrap().to_string();
    let (_, p3) = get(
        &env,
        LIGHTING,
        &format!("/v1/subscriptions?limit=100&cursor={c2}"),
    )
    .await;
    assert!(p3["next"].is_null(), "{}", p3["next"]);
    let mut seen = HashSet::new();
    for (_, id) in r1.iter().chain(&rows(&p2)).chain(&rows(&p3)) {
        assert!(seen.insert(id.clone()), "{id} twice");
    }
    assert_eq!(seen.len(), 230, "every row once, none of the late ones");
    // Another team's use of the cursor, a forged one, a tampered one: 400.
    let (s, v) = get(
        &env,
        FX,
        &format!("/v1/subscriptions?limit=100&cursor={c1}"),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    for bad in ["abc.def", "", "%%%", &c1.replacen('A', "B", 1)] {
        if bad.is_empty() || bad == c1 {
            continue;
        }
        let (s, v) = get(&env, LIGHTING, &format!("/v1/subscriptions?cursor={bad}")).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    // A cursor of one list is no cursor of another.
    let (s, _) = get(
        &env,
        LIGHTING,
        &format!("/v1/subscriptions?state=finished&cursor={c1}"),
    )
    .await;
    assert_eq!(s, 400);
    for (q, key) in [
        ("state=done", "state"),
        ("limit=501", "limit"),
        ("limit=0", "limit"),
    ] {
        let (s, v) = get(&env, LIGHTING, &format!("/v1/subscriptions?{q}")).await;
        assert_eq!(s, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(key), "{v}");
    }
    // q: by job id (and by name once read).
    let needle = &keys[7].job_id[20..];
    let (_, found) = get(&env, LIGHTING, &format!("/v1/subscriptions?q={needle}")).await;
    assert_eq!(rows(&found).len(), 1, "{found}");
    env.observed(&keys[9], 2).await;
    let (_, found) = get(
        &env,
        LIGHTING,
        "/v1/subscriptions?q=PAGE%20JOB%209&limit=500",
    )
    .await;
    let names: Vec<_> = found["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["job"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(names.contains(&"page job 9".to_string()), "{names:?}");
    // The other lists page too.
    let (s, w) = get(&env, LIGHTING, "/v1/watches?limit=1").await;
    assert_eq!(s, 200);
    assert!(w.get("next").is_some(), "{w}");
    let (s, d) = get(&env, LIGHTING, "/v1/dead-letters?limit=5").await;
    assert_eq!(s, 200);
    assert!(
        d["deadLetters"].is_array() && d.get("next").is_some(),
        "{d}"
    );
    // Answers are compressed when asked.
    let r = reqwest::Client::builder()
        .no_gzip()
        .build()
        .unwrap()
        .get(format!("{}/v1/subscriptions?limit=500", env.api()))
        .bearer_auth(LIGHTING)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
}
