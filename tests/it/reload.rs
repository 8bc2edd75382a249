//! Config and template reload: SIGHUP and `POST /-/reload` swap in a new set only when
//! all of it is valid; otherwise the running set stays and the error is reported.
use crate::helpers::*;
use deadline_notifier::domain::JobKey;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const ADMIN: &str = "admin-token-0123456789abcdef";

/// Gives the service an admin token and its own template directory; returns the
/// path of the lighting team's webhook template.
fn enable_reload(env: &Env) -> PathBuf {
    let dir = env.dir.path().join("templates");
    let tpl = dir.join("lighting/webhook/default.hbs");
    std::fs::create_dir_all(tpl.parent().unwrap()).unwrap();
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let text = text
        .replacen(
            "[server]\n",
            &format!("[server]\nadmin_tokens = [\"{ADMIN}\"]\n"),
            1,
        )
        .replacen(
            "[store]\n",
            &format!("[templates]\ndir = \"{}\"\n[store]\n", dir.display()),
            1,
        );
    std::fs::write(env.config_path(), text).unwrap();
    tpl
}

async fn post_reload(env: &Env, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{}/-/reload", env.api()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Drives a fresh job to SUCCEEDED and returns the `summary` its webhook message carried.
async fn succeed_one(env: &Env, name: &str) -> String {
    let job = env.add_job(name);
    env.subscribe_job(&job, json!({"channels": ["pipeline"]}))
        .await;
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "SUCCEEDED");
    wait_until(T, "the webhook message", || {
        !env.delivered_for(&job).is_empty()
    })
    .await;
    summary_of(env, &job)
}

fn summary_of(env: &Env, job: &JobKey) -> String {
    let got = env.delivered_for(job);
    assert_eq!(got.len(), 1, "one message: {got:?}");
    got[0].body["data"]["summary"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_templates_and_a_broken_template_keeps_the_old_set() {
    let mut env = Env::new().await;
    let tpl = enable_reload(&env);
    std::fs::write(&tpl, "v1 {{name}} {{verb}}").unwrap();
    let svc = env.start().await;
    assert_eq!(
        env.metric_opt("deadline_notifier_config_generation", &[])
            .await,
        Some(1.0)
    );
    assert_eq!(succeed_one(&env, "shot_a").await, "v1 shot_a succeeded");

    // A good change, by SIGHUP: the next message uses it.
    std::fs::write(&tpl, "v2 {{name}} {{verb}}").unwrap();
    svc.signal("HUP");
    wait_until(T, "the reload to be logged", || {
        svc.log_text().contains("configuration reloaded")
    })
    .await;
    assert_eq!(succeed_one(&env, "shot_b").await, "v2 shot_b succeeded");
    assert_eq!(
        env.metric_opt("deadline_notifier_config_generation", &[])
            .await,
        Some(2.0)
    );

    // A broken template: refused, reported in the log and the metrics, old set kept.
    std::fs::write(&tpl, "v3 {{#if name}} unclosed").unwrap();
    svc.signal("HUP");
    wait_until(T, "the failed reload to be logged", || {
        svc.log_text().contains("configuration reload failed")
    })
    .await;
    let log = svc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reload failed"))
        .unwrap();
    assert!(
        line.contains("lighting/webhook/default.hbs"),
        "the error names the file: {line}"
    );
    assert_eq!(
        env.metric_opt("deadline_notifier_config_last_reload_successful", &[])
            .await,
        Some(0.0)
    );
    assert_eq!(
        env.metric_opt("deadline_notifier_config_generation", &[])
            .await,
        Some(2.0)
    );
    assert_eq!(succeed_one(&env, "shot_c").await, "v2 shot_c succeeded");

    // The same through the API: the response carries the error.
    let (status, body) = post_reload(&env, Some(ADMIN)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["generation"], 2);
    let err = body["error"].as_str().unwrap();
    assert!(err.contains("lighting/webhook/default.hbs"), "{err}");

    // Fixed: reloads, and the metric recovers.
    std::fs::write(&tpl, "v4 {{name}} {{verb}}").unwrap();
    let (status, body) = post_reload(&env, Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["report"]["generation"], 3);
    assert_eq!(
        env.metric_opt("deadline_notifier_config_last_reload_successful", &[])
            .await,
        Some(1.0)
    );
    assert_eq!(succeed_one(&env, "shot_d").await, "v4 shot_d succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_endpoint_needs_the_admin_token() {
    let mut env = Env::new().await;
    let _tpl = enable_reload(&env);
    let _svc = env.start().await;
    assert_eq!(post_reload(&env, None).await.0, 401);
    assert_eq!(
        post_reload(&env, Some(LIGHTING)).await.0,
        401,
        "a team token is not an admin token"
    );
    assert_eq!(
        post_reload(&env, Some("admin-token-0123456789abcdeX"))
            .await
            .0,
        401
    );
    assert_eq!(post_reload(&env, Some(ADMIN)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_without_admin_tokens_is_refused_over_http() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let (status, body) = post_reload(&env, Some(LIGHTING)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("admin_tokens"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_channel_and_refuses_restart_only_keys() {
    let mut env = Env::new().await;
    let _tpl = enable_reload(&env);
    let _svc = env.start().await;
    let sink = env.sink_addr;
    let base = std::fs::read_to_string(env.config_path()).unwrap();

    // A new channel for the last team (fx): usable right after the reload.
    let added = format!(
        "{base}\n[[teams.channels]]\nname = \"extra\"\nkind = \"webhook\"\nurl = \"http://{sink}/webhook/extra\"\n"
    );
    std::fs::write(env.config_path(), &added).unwrap();
    let (status, body) = post_reload(&env, Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["report"]["channelsAdded"], json!(["fx/extra"]));
    let job = env.add_job("fx shot");
    let (status, v) = env
        .subscribe(
            FX,
            json!({"farmId": job.farm_id, "queueId": job.queue_id, "jobId": job.job_id, "channels": ["extra"]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "FAILED");
    wait_until(T, "delivery to the new channel", || {
        env.sink
            .delivered()
            .iter()
            .any(|r| r.path == "/webhook/extra" && r.raw.contains(job.job_id.as_str()))
    })
    .await;

    // The listen address is read once; changing it is refused, not silently ignored.
    let port = env.api_port;
    let moved = added.replacen(&format!("127.0.0.1:{port}"), "127.0.0.1:1", 1);
    std::fs::write(env.config_path(), moved).unwrap();
    let (status, body) = post_reload(&env, Some(ADMIN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("server.listen"),
        "{body}"
    );
    // Still serving, on the old generation.
    assert_eq!(body["generation"], 2);
    let r = reqwest::get(format!("{}/healthz", env.api()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_channel_keeps_its_queue_until_it_returns() {
    let mut env = Env::new().await;
    let _tpl = enable_reload(&env);
    let sink = env.sink_addr;
    // fx gets a second channel, so `hook` can be removed (a team needs one).
    let with_hook = std::fs::read_to_string(env.config_path()).unwrap()
        + &format!(
            "\n[[teams.channels]]\nname = \"extra\"\nkind = \"webhook\"\nurl = \"http://{sink}/webhook/extra\"\n"
        );
    std::fs::write(env.config_path(), &with_hook).unwrap();
    let svc = env.start().await;

    // A message for fx/hook is queued while its receiver is down.
    env.sink.outage(
        "/webhook/fx",
        deadline_notifier::clock::monotonic() + Duration::from_secs(3600),
        503,
    );
    let job = env.add_job("fx queued");
    let body = json!({"farmId": job.farm_id, "queueId": job.queue_id, "jobId": job.job_id, "channels": ["hook"]});
    assert_eq!(env.subscribe(FX, body).await.0, 201);
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "FAILED");
    wait_until(T, "a failed attempt at fx/hook", || {
        env.sink
            .received()
            .iter()
            .any(|r| r.path == "/webhook/fx" && r.raw.contains(job.job_id.as_str()))
    })
    .await;

    // Remove the channel: its worker stops and says the message is kept.
    let hook_block = format!(
        "[[teams.channels]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{sink}/webhook/fx\"\n"
    );
    assert!(with_hook.contains(&hook_block));
    std::fs::write(env.config_path(), with_hook.replace(&hook_block, "")).unwrap();
    let (status, body) = post_reload(&env, Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["report"]["channelsRemoved"], json!(["fx/hook"]));
    wait_until(T, "the worker to report the kept message", || {
        svc.log_text()
            .lines()
            .any(|l| l.contains("channel removed from the configuration") && l.contains("queued=1"))
    })
    .await;

    // The receiver recovers and the channel comes back: the message goes out once.
    env.sink.clear_script("/webhook/fx");
    std::fs::write(env.config_path(), &with_hook).unwrap();
    let (status, body) = post_reload(&env, Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["report"]["channelsAdded"], json!(["fx/hook"]));
    wait_until(T, "the kept message to be delivered", || {
        env.delivered_for(&job)
            .iter()
            .any(|r| r.path == "/webhook/fx")
    })
    .await;
    let sent: Vec<_> = env
        .delivered_for(&job)
        .into_iter()
        .filter(|r| r.path == "/webhook/fx")
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].body["type"], "job.failed");
}

/// Per-team allow-lists: outside them a subscription is a 403
/// naming the farm or queue; a reload that narrows them ends the subscriptions now
/// outside, with the reason, and they stop notifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_refuse_and_a_narrowing_reload_ends_subscriptions() {
    let mut env = Env::new().await;
    enable_reload(&env);
    let job = env.add_job("allowed at first");
    let other_queue = format!("queue-{}", "9".repeat(32));
    // fx may only watch another queue.
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replacen(
            "name = \"fx\"\n",
            &format!("name = \"fx\"\nqueue_ids = [\"{other_queue}\"]\n"),
            1,
        );
    std::fs::write(env.config_path(), &text).unwrap();
    let _svc = env.start().await;
    let body = json!({"farmId": job.farm_id, "queueId": job.queue_id, "jobId": job.job_id});
    let (status, v) = env.subscribe(FX, body).await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains(job.queue_id.as_str()),
        "names the queue: {v}"
    );
    let sub = env
        .subscribe_job(&job, json!({"channels": ["pipeline"]}))
        .await;
    env.observed(&job, 2).await;

    // Narrow lighting to another farm, reload.
    let other_farm = format!("farm-{}", "8".repeat(32));
    let narrowed = text.replacen(
        "name = \"lighting\"\n",
        &format!("name = \"lighting\"\nfarm_ids = [\"{other_farm}\"]\n"),
        1,
    );
    std::fs::write(env.config_path(), narrowed).unwrap();
    let (status, v) = post_reload(&env, Some(ADMIN)).await;
    assert_eq!(status, 200, "{v}");
    let url = format!(
        "{}/v1/subscriptions/{}",
        env.api(),
        sub["id"].as_str().unwrap()
    );
    let mut state = Value::Null;
    wait_until(T, "the subscription to end", || {
        let url = url.clone();
        state = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                reqwest::Client::new()
                    .get(url)
                    .bearer_auth(LIGHTING)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            })
        })
        .join()
        .unwrap();
        state["state"] == "ended"
    })
    .await;
    assert!(
        state["endedReason"]
            .as_str()
            .unwrap()
            .contains(job.farm_id.as_str()),
        "{state}"
    );
    // Routing refuses it too (`route` unit test): an ended subscription is not
    // polled, and a job outside the lists is never routed to the team.
}

/// A config error in a secret-bearing key never echoes the secret:
/// not in the reload answer (a 400), not in the log, not from check-config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_secret_key_is_reported_without_its_value() {
    let mut env = Env::new().await;
    enable_reload(&env);
    let svc = env.start().await;
    let good = std::fs::read_to_string(env.config_path()).unwrap();
    let secret = "tok-LEAKME-0123456789abcdef";
    for broken in [
        good.replacen(
            &format!("tokens = [\"{FX}\"]"),
            &format!("tokens = \"{secret}\""),
            1,
        ),
        good.replacen(
            "url = \"http://",
            &format!("url = \"https://hooks.example.com/{secret}\nx = \"http://"),
            1,
        ),
    ] {
        assert_ne!(broken, good);
        std::fs::write(env.config_path(), &broken).unwrap();
        let (status, v) = post_reload(&env, Some(ADMIN)).await;
        assert_eq!(status, 400, "{v}");
        let text = v.to_string();
        assert!(!text.contains("LEAKME"), "{text}");
        assert!(text.contains("line "), "names the line: {text}");
        let out = env.launcher().command(&["check-config"]).output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success() && !all.contains("LEAKME"), "{all}");
    }
    assert!(
        !svc.log_text().contains("LEAKME"),
        "the log echoes the secret"
    );
}
