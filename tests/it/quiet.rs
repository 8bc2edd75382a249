//! Quiet hours and digests, end to end: held messages go out as one digest when
//! quiet hours end, urgent ones at once, nothing lost across a SIGKILL.
use crate::helpers::*;
use deadline_notifier::devkit::simulator::JobSpec;
use deadline_notifier::devkit::sink::Received;
use deadline_notifier::domain::JobKey;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Adds `keys` to the `pipeline` (webhook) channel of team `lighting`.
fn pipeline_with(env: &Env, keys: &str) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let text = text.replacen(
        "secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"\n",
        &format!("secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"\n{keys}\n"),
        1,
    );
    std::fs::write(env.config_path(), text).unwrap();
}

fn running(env: &Env, name: &str) -> JobKey {
    env.sim.add_job(JobSpec {
        name: name.into(),
        task_run_status: Some("RUNNING".into()),
        task_run_status_counts: Some([("RUNNING".to_string(), 10)].into()),
        ..Default::default()
    })
}

fn hooks(env: &Env) -> Vec<Received> {
    env.sink
        .delivered()
        .into_iter()
        .filter(|r| r.path == "/webhook/lighting")
        .collect()
}

fn digests(env: &Env) -> Vec<Received> {
    hooks(env)
        .into_iter()
        .filter(|r| r.body["type"] == "notifications.digest")
        .collect()
}

async fn channel_state(env: &Env) -> Value {
    let v = env.get_json("/v1/channels", LIGHTING).await;
    v["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "pipeline"))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_then_one_digest_and_urgent_failures_go_at_once() {
    let mut env = Env::new().await;
    let now = deadline_notifier::clock::wall_now();
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%H:%M:%S").to_string();
    // Quiet hours in UTC that began 40 s ago (a range under a minute is refused)
    // and end 90 s from now: time enough for a loaded machine to start the service
    // and see every transition inside them.
    pipeline_with(
        &env,
        &format!(
            "quiet_hours = {{ from = \"{}\", to = \"{}\", tz = \"UTC\" }}\nquiet_urgent = [\"job.failed\"]",
            fmt(now - chrono::Duration::seconds(40)),
            fmt(now + chrono::Duration::seconds(90)),
        ),
    );
    let mut svc = env.start().await;
    let ok: Vec<JobKey> = (0..30)
        .map(|i| running(&env, &format!("night {i:02}")))
        .collect();
    let bad: Vec<JobKey> = (0..2)
        .map(|i| running(&env, &format!("broken {i}")))
        .collect();
    let all: Vec<JobKey> = ok.iter().chain(&bad).cloned().collect();
    for j in &all {
        env.subscribe_job(j, json!({"channels": ["pipeline"]}))
            .await;
    }
    env.observed_all(&all, 2).await;
    for j in &ok {
        env.sim.set_status(j, "SUCCEEDED");
    }
    for j in &bad {
        env.sim.set_status(j, "FAILED");
    }
    wait_until(T, "the two failures, at once", || {
        hooks(&env)
            .iter()
            .filter(|r| r.body["type"] == "job.failed")
            .count()
            == 2
    })
    .await;
    wait_for(T, "30 messages held", || {
        let env = &env;
        async move {
            let c = channel_state(env).await;
            if c["held"] == 30 { Ok(()) } else { Err(c) }
        }
    })
    .await;
    let c = channel_state(&env).await;
    assert!(
        c["quietUntil"].is_string() && c["nextDigest"].is_string(),
        "{c}"
    );
    assert!(digests(&env).is_empty(), "nothing folded while quiet");
    // A crash while they are held loses nothing.
    svc.kill();
    let _svc = env.start().await;
    wait_until(
        Duration::from_secs(180),
        "the digest when quiet hours end",
        || !digests(&env).is_empty(),
    )
    .await;
    // The control: a later transition of one job arrives after the digest, and
    // nothing else of the 30 came alone or twice.
    env.sim.set_status(&ok[0], "CANCELED");
    wait_until(T, "the control message", || {
        hooks(&env).iter().any(|r| r.body["type"] == "job.canceled")
    })
    .await;
    let ds = digests(&env);
    assert_eq!(ds.len(), 1, "one digest, sent once");
    let items = ds[0].body["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 30);
    let mut names: Vec<&str> = items
        .iter()
        .map(|i| {
            assert_eq!(i["type"], "job.succeeded");
            i["data"]["name"].as_str().unwrap()
        })
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 30);
    assert!(
        ds[0].headers.contains_key("webhook-signature"),
        "signed as usual"
    );
    assert!(
        ds[0].body["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("30 succeeded")
    );
    let alone = hooks(&env)
        .iter()
        .filter(|r| r.body["type"] == "job.succeeded")
        .count();
    assert_eq!(alone, 0, "no held message went alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_window_folds_fifty_jobs_into_one_message() {
    let mut env = Env::new().await;
    pipeline_with(&env, "digest = \"10s\"");
    let _svc = env.start().await;
    let jobs: Vec<JobKey> = (0..50)
        .map(|i| {
            env.sim.add_job(JobSpec {
                name: format!("window {i:02}"),
                ..Default::default()
            })
        })
        .collect();
    for j in &jobs {
        env.subscribe_job(
            j,
            json!({"channels": ["pipeline"], "events": ["job.started", "job.succeeded"]}),
        )
        .await;
    }
    env.observed_all(&jobs, 2).await;
    for j in &jobs {
        env.sim.set_status(j, "RUNNING");
    }
    env.observed_all(&jobs, 2).await;
    for j in &jobs {
        env.sim.set_status(j, "SUCCEEDED");
    }
    wait_until(T, "the digest", || {
        digests(&env)
            .iter()
            .map(|d| d.body["data"]["items"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
            >= 100
    })
    .await;
    let ds = digests(&env);
    let summary: String = ds
        .iter()
        .map(|d| d.body["data"]["summary"].as_str().unwrap_or("").to_string())
        .collect();
    for i in 0..50 {
        let line = summary
            .lines()
            .find(|l| l.starts_with(&format!("window {i:02}:")))
            .unwrap_or_else(|| panic!("window {i:02} missing: {summary}"));
        assert!(line.contains("started → succeeded"), "{line}");
        assert_eq!(
            summary.matches(&format!("window {i:02}:")).count(),
            1,
            "each job once"
        );
    }
    // One digest: every page carries the id of the same fold.
    let ids: std::collections::BTreeSet<String> = ds
        .iter()
        .map(|d| {
            let id = &d.headers["webhook-id"];
            id[..id.rfind('_').unwrap()].to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(
        hooks(&env)
            .iter()
            .all(|r| r.body["type"] == "notifications.digest"),
        "nothing went alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_now_releases_what_is_held_as_one_digest() {
    let mut env = Env::new().await;
    pipeline_with(&env, "digest = \"1h\"");
    let _svc = env.start().await;
    let job = running(&env, "held until asked");
    env.subscribe_job(&job, json!({"channels": ["pipeline"]}))
        .await;
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "SUCCEEDED");
    wait_for(T, "one message held", || {
        let env = &env;
        async move {
            let c = channel_state(env).await;
            if c["held"] == 1 { Ok(()) } else { Err(c) }
        }
    })
    .await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/channels/pipeline/flush", env.api()))
        .bearer_auth(LIGHTING)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_until(T, "the digest", || digests(&env).len() == 1).await;
    assert_eq!(
        digests(&env)[0].body["data"]["items"][0]["type"],
        "job.succeeded"
    );
    wait_for(T, "nothing held", || {
        let env = &env;
        async move {
            let c = channel_state(env).await;
            if c["held"] == 0 && c["nextDigest"].is_null() {
                Ok(())
            } else {
                Err(c)
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_quiet_hours_on_reload_releases_what_is_held_as_one_digest() {
    let mut env = Env::new().await;
    let admin = "admin-token-0123456789abcdef";
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replacen(
            "[server]\n",
            &format!("[server]\nadmin_tokens = [\"{admin}\"]\n"),
            1,
        );
    std::fs::write(env.config_path(), &text).unwrap();
    let now = deadline_notifier::clock::wall_now();
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%H:%M:%S").to_string();
    pipeline_with(
        &env,
        &format!(
            "quiet_hours = {{ from = \"{}\", to = \"{}\", tz = \"UTC\" }}",
            fmt(now - chrono::Duration::minutes(5)),
            fmt(now + chrono::Duration::hours(2)),
        ),
    );
    let _svc = env.start().await;
    let jobs: Vec<JobKey> = (0..3)
        .map(|i| running(&env, &format!("reload {i}")))
        .collect();
    for j in &jobs {
        env.subscribe_job(j, json!({"channels": ["pipeline"]}))
            .await;
    }
    env.observed_all(&jobs, 2).await;
    for j in &jobs {
        env.sim.set_status(j, "SUCCEEDED");
    }
    wait_for(T, "three messages held", || {
        let env = &env;
        async move {
            let c = channel_state(env).await;
            if c["held"] == 3 { Ok(()) } else { Err(c) }
        }
    })
    .await;
    std::fs::write(env.config_path(), &text).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/-/reload", env.api()))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_until(T, "the digest", || !digests(&env).is_empty()).await;
    let ds = digests(&env);
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].body["data"]["items"].as_array().unwrap().len(), 3);
}
