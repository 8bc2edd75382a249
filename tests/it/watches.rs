//! Watches: new jobs in watched queues are subscribed by themselves.
use crate::helpers::*;
use deadline_notifier::devkit::simulator::{Faults, JobSpec};
use deadline_notifier::domain::JobKey;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const JANE: &str = "arn:aws:sts::111122223333:assumed-role/Artist/jane";

fn farm() -> String {
    format!("farm-{:032x}", 0xfa_u64)
}
fn queue() -> String {
    format!("queue-{:032x}", 0x9e_u64)
}

/// A lighting watch on the default queue for jane's jobs, Jane in the directory,
/// discovery every 200 ms.
fn configure(env: &Env, extra_watch: &str) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let text = text.replacen(
        "[deadline]\n",
        "[deadline]\ndiscovery_interval = \"200ms\"\n",
        1,
    );
    // The watch belongs to the lighting team: insert it after its last channel.
    let text = text.replacen(
        "[[teams]]\nname = \"fx\"",
        &format!(
            r#"[[teams.watches]]
name = "janes-shots"
farm_id = "{farm}"
queue_ids = ["{queue}"]
created_by = ["{JANE}"]
{extra_watch}
[[teams]]
name = "fx""#,
            farm = farm(),
            queue = queue()
        ),
        1,
    ) + &format!(
        r#"
[[people]]
deadline = ["{JANE}"]
slack = "U024BE7LH"
teams = "jane@studio.com"
name = "Jane Doe"
"#
    );
    std::fs::write(env.config_path(), text).unwrap();
}

async fn subscriptions(env: &Env) -> Vec<Value> {
    reqwest::Client::new()
        .get(format!("{}/v1/subscriptions", env.api()))
        .bearer_auth(LIGHTING)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["subscriptions"]
        .as_array()
        .unwrap()
        .clone()
}

fn job_by(env: &Env, name: &str, who: &str) -> JobKey {
    env.sim.add_job(JobSpec {
        name: name.into(),
        created_by: Some(who.into()),
        ..Default::default()
    })
}

/// Jane's failing job is announced with her mentions without
/// any subscribe call, even when it fails before its first poll; bob's is not
/// subscribed by a watch limited to jane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_queue_subscribes_janes_jobs_and_mentions_her() {
    let mut env = Env::new().await;
    configure(&env, "");
    let _svc = env.start().await;
    // Created, and already failed, before the service ever polled it.
    let janes = env.sim.add_job(JobSpec {
        name: "shot_010 comp".into(),
        created_by: Some(JANE.into()),
        task_run_status: Some("FAILED".into()),
        task_run_status_counts: Some([("FAILED".to_string(), 3)].into()),
        ..Default::default()
    });
    let bobs = job_by(&env, "bob's job", "bob");
    wait_until(T, "jane's failure on every lighting channel", || {
        env.delivered_for(&janes).len() == 3
    })
    .await;
    let got = env.delivered_for(&janes);
    let slack = got.iter().find(|r| r.path.starts_with("/slack")).unwrap();
    assert!(slack.raw.contains("<@U024BE7LH>"), "{}", slack.raw);
    let teams = got.iter().find(|r| r.path.starts_with("/teams")).unwrap();
    assert_eq!(
        teams.body["attachments"][0]["content"]["msteams"]["entities"][0]["mentioned"]["id"],
        "jane@studio.com"
    );
    let hook = got.iter().find(|r| r.path.starts_with("/webhook")).unwrap();
    assert_eq!(hook.body["type"], "job.failed");
    let subs = subscriptions(&env).await;
    let mine: Vec<_> = subs
        .iter()
        .filter(|s| s["jobId"] == json!(janes.job_id))
        .collect();
    assert_eq!(mine.len(), 1, "{subs:?}");
    assert!(mine[0]["watch"].as_str().unwrap().starts_with("watch-"));
    assert!(
        !subs.iter().any(|s| s["jobId"] == json!(bobs.job_id)),
        "bob's job is not jane's: {subs:?}"
    );
    assert!(env.delivered_for(&bobs).is_empty());
    // Exactly once, however many passes saw it.
    assert_eq!(env.delivered_for(&janes).len(), 3);
}

/// A job that shows in search only a while after creation is still
/// picked up; one created while the service is down is picked up after restart;
/// nothing is subscribed twice across restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_search_results_and_restarts_miss_nothing_and_repeat_nothing() {
    let mut env = Env::new().await;
    configure(&env, "");
    let launcher = env.launcher();
    let mut svc = env.start().await;
    env.sim.set_faults(Faults {
        search_delay_ms: 1500,
        ..Default::default()
    });
    let late = job_by(&env, "late in search", JANE);
    let mut all = vec![late.clone()];
    wait_until(T, "the late job's subscription", || env.sim.hits(&late) > 0).await;
    for run in 0..10 {
        svc.kill();
        // Created while the service is down.
        all.push(job_by(&env, &format!("while down {run}"), JANE));
        env.runs += 1;
        svc = launcher.start(env.runs).await;
        let want = all.clone();
        wait_until(T, "every job polled", || {
            want.iter().all(|j| env.sim.hits(j) > 0)
        })
        .await;
    }
    let subs = subscriptions(&env).await;
    let ids: Vec<_> = subs
        .iter()
        .map(|s| s["jobId"].as_str().unwrap().to_string())
        .collect();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "a job subscribed twice: {ids:?}");
    for j in &all {
        assert!(ids.contains(&j.job_id.to_string()), "{} missed", j.job_id);
    }
    drop(svc);
}

async fn call(
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The watch API, team-scoped like subscriptions; an API watch
/// subscribes new jobs like a config one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_api() {
    use reqwest::Method;
    let mut env = Env::new().await;
    configure(&env, "");
    let _svc = env.start().await;
    let url = format!("{}/v1/watches", env.api());
    let body = json!({"name": "all-comp", "farmId": farm(), "queueIds": [queue()],
        "nameMatches": "^comp_\\d+", "channels": ["pipeline"], "events": ["job.succeeded"]});
    let (s, created) = call(Method::POST, &url, LIGHTING, Some(body.clone())).await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["source"], "api");
    assert_eq!(created["team"], "lighting");
    assert!(created["createdAt"].is_string() && created["id"].is_string());
    let (s, again) = call(Method::POST, &url, LIGHTING, Some(body.clone())).await;
    assert_eq!((s, &again["id"]), (200, &created["id"]));
    let mut other = body.clone();
    other["events"] = json!(["job.failed"]);
    assert_eq!(call(Method::POST, &url, LIGHTING, Some(other)).await.0, 409);
    let (s, list) = call(Method::GET, &url, LIGHTING, None).await;
    assert_eq!(s, 200);
    let sources: Vec<_> = list["watches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["source"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sources, ["config", "api"]);
    let config_id = list["watches"][0]["id"].as_str().unwrap().to_string();
    let (s, v) = call(
        Method::DELETE,
        &format!("{url}/{config_id}"),
        LIGHTING,
        None,
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("notifier.toml"),
        "{v}"
    );
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        call(Method::GET, &format!("{url}/{id}"), FX, None).await.0,
        404
    );
    assert_eq!(
        call(Method::DELETE, &format!("{url}/{id}"), FX, None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(Method::GET, &format!("{url}/{id}"), LIGHTING, None)
            .await
            .0,
        200
    );
    // Bad input names the field.
    for (patch, field) in [
        (json!({"farmId": "farm-1"}), "farmId"),
        (json!({"queueIds": ["queue-x"]}), "queueIds"),
        (
            json!({"queueIds": (0..11).map(|i| format!("queue-{i:032x}")).collect::<Vec<_>>()}),
            "queueIds",
        ),
        (json!({"nameMatches": "("}), "nameMatches"),
        (json!({"channels": ["nope"]}), "channels"),
        (json!({"events": ["job.exploded"]}), "events"),
    ] {
        let mut b = body.clone();
        b["name"] = json!("bad");
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (s, v) = call(Method::POST, &url, LIGHTING, Some(b)).await;
        assert_eq!(s, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{field}: {v}");
    }
    // The API watch subscribes a matching new job (and only a matching one).
    let comp = job_by(&env, "comp_042", "bob");
    let other_job = job_by(&env, "layout_007", "bob");
    env.sim.set_status(&comp, "SUCCEEDED");
    wait_until(T, "the comp job's message", || {
        env.delivered_for(&comp).len() == 1
    })
    .await;
    let subs = subscriptions(&env).await;
    assert!(
        subs.iter()
            .any(|s| s["jobId"] == json!(comp.job_id) && s["watch"] == json!(id))
    );
    assert!(!subs.iter().any(|s| s["jobId"] == json!(other_job.job_id)));
    // Deleting it stops discovery; its subscriptions run to their end.
    assert_eq!(
        call(Method::DELETE, &format!("{url}/{id}"), LIGHTING, None)
            .await
            .0,
        204
    );
    assert_eq!(
        call(Method::GET, &format!("{url}/{id}"), LIGHTING, None)
            .await
            .0,
        404
    );
}

/// Held to the team's allow-lists like subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_outside_the_allow_lists_is_forbidden() {
    let mut env = Env::new().await;
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replacen(
            "name = \"fx\"\n",
            &format!(
                "name = \"fx\"\nqueue_ids = [\"queue-{}\"]\n",
                "9".repeat(32)
            ),
            1,
        );
    std::fs::write(env.config_path(), text).unwrap();
    let _svc = env.start().await;
    let body = json!({"name": "x", "farmId": farm(), "queueIds": [queue()]});
    let (s, v) = call(
        reqwest::Method::POST,
        &format!("{}/v1/watches", env.api()),
        FX,
        Some(body),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains(&queue()), "{v}");
}

/// The CLI's `watch add|list|remove`, against the running service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cli_adds_lists_and_removes() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_deadline-notifier"))
            .args(args)
            .args(["--server", &env.api(), "--token", LIGHTING])
            .output()
            .unwrap()
    };
    let (f, q) = (farm(), queue());
    let out = cli(&[
        "watch",
        "add",
        "--name",
        "cli-watch",
        "--farm",
        &f,
        "--queue",
        &q,
        "--created-by",
        "jane",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["createdBy"], json!(["jane"]));
    let out = cli(&["watch", "list"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["watches"][0]["id"], json!(id));
    let out = cli(&["watch", "remove", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["watch", "remove", &id]);
    assert!(!out.status.success(), "a second remove is a 404");
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

/// A watch whose queue is gone shows the error and never stops the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_deleted_queue_shows_its_error_and_the_others_go_on() {
    let mut env = Env::new().await;
    let gone = format!("queue-{}", "d".repeat(32));
    configure(&env, "");
    let _svc = env.start().await;
    env.sim.set_faults(Faults {
        missing_queues: vec![gone.clone()],
        ..Default::default()
    });
    let url = format!("{}/v1/watches", env.api());
    let (s, bad) = call(
        reqwest::Method::POST,
        &url,
        LIGHTING,
        Some(json!({"name": "gone", "farmId": farm(), "queueIds": [gone]})),
    )
    .await;
    assert_eq!(s, 201, "{bad}");
    let janes = job_by(&env, "still watched", JANE);
    env.sim.set_status(&janes, "FAILED");
    wait_until(T, "the healthy watch still works", || {
        env.delivered_for(&janes).len() == 3
    })
    .await;
    let shown = wait_for(T, "the broken watch to show its error", || async {
        let (_, list) = call(reqwest::Method::GET, &url, LIGHTING, None).await;
        let w = list["watches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "gone")
            .cloned()
            .unwrap();
        if w["error"].is_object() {
            Ok(w)
        } else {
            Err(w)
        }
    })
    .await;
    assert!(
        shown["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("ResourceNotFound"),
        "{shown}"
    );
    assert!(shown["error"]["since"].is_string(), "{shown}");
    let (_, list) = call(reqwest::Method::GET, &url, LIGHTING, None).await;
    let healthy = list["watches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "janes-shots")
        .unwrap()
        .clone();
    assert!(healthy.get("error").is_none(), "{healthy}");
}

/// Jobs the simulator creates over time (by script) are found when they appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_created_later_by_script_is_found_when_it_appears() {
    let mut env = Env::new().await;
    configure(&env, "");
    let _svc = env.start().await;
    let later = env.sim.add_job(JobSpec {
        name: "appears later".into(),
        created_by: Some(JANE.into()),
        create_after_ms: 1500,
        script: vec![deadline_notifier::devkit::simulator::Patch {
            after_ms: 300,
            task_run_status: Some("SUCCEEDED".into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    wait_until(T, "its message once it exists", || {
        env.delivered_for(&later)
            .iter()
            .any(|r| r.body["type"] == "job.succeeded")
    })
    .await;
}

/// A job that shows in search many discovery passes after its creation is still
/// picked up, because `discovery_overlap` reaches back over it (the window
/// arithmetic for a delay of a minute and more is a unit test of
/// `watch::discovery`; this runs the same through the SDK in seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_shows_in_search_many_passes_late_is_picked_up() {
    let mut env = Env::new().await;
    configure(&env, "");
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replacen(
            "[deadline]\n",
            "[deadline]\ndiscovery_overlap = \"6s\"\n",
            1,
        );
    std::fs::write(env.config_path(), text).unwrap();
    let _svc = env.start().await;
    // Twenty passes of 200 ms go by before search shows the job.
    env.sim.set_faults(Faults {
        search_delay_ms: 4_000,
        ..Default::default()
    });
    let late = job_by(&env, "many passes late", JANE);
    env.sim.set_status(&late, "FAILED");
    wait_until(Duration::from_secs(60), "the late job's message", || {
        env.delivered_for(&late).len() == 3
    })
    .await;
}

/// A search answer holding an id that is not Deadline's shape is skipped, counted
/// and logged once; the good jobs of the same answer are subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_ids_that_are_not_deadline_ids_are_skipped() {
    let mut env = Env::new().await;
    configure(&env, "");
    let svc = env.start().await;
    for odd in [
        "job-odd/../../x?y=1",
        "job-0123",
        "job-ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ",
    ] {
        env.sim.add_job(JobSpec {
            job_id: Some(odd.into()),
            name: "odd".into(),
            created_by: Some(JANE.into()),
            ..Default::default()
        });
    }
    let good = job_by(&env, "shot_030", JANE);
    wait_for(T, "the good job subscribed", || async {
        let subs = subscriptions(&env).await;
        if subs.iter().any(|s| s["jobId"] == json!(good.job_id)) {
            Ok(subs)
        } else {
            Err(subs.len())
        }
    })
    .await;
    let subs = subscriptions(&env).await;
    assert_eq!(subs.len(), 1, "{subs:?}");
    let metrics = reqwest::get(format!("{}/metrics", env.api()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let n: f64 = metrics
        .lines()
        .find(|l| l.starts_with("deadline_notifier_discovery_invalid_ids_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(n >= 3.0, "{n}");
    let log = svc.log_text();
    assert_eq!(log.matches("not a Deadline id").count(), 1, "logged once");
}
