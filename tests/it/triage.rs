//! Failure triage: what a failed job's messages say about why.
use crate::helpers::*;
use deadline_notifier::config::{DeadlineConfig, TriageConfig};
use deadline_notifier::deadline::client::DeadlineClient;
use deadline_notifier::deadline::logs::LogsClient;
use deadline_notifier::devkit::simulator::{JobSpec, Patch, Simulator, StepSpec, TaskSpec};
use deadline_notifier::domain::JobKey;
use deadline_notifier::triage::Gatherer;
use std::sync::Arc;

/// A job that fails on frames 1042 and 1043 of step "Render" with exit code 137.
pub fn failing_render(log_extra: &[&str]) -> JobSpec {
    let frame = |f: &str, status: &str, code: i32| TaskSpec {
        parameters: [("Frame".to_string(), f.to_string())].into(),
        status: status.into(),
        exit_code: Some(code),
        progress_message: (code != 0).then(|| "Render process was killed".to_string()),
        retries: if code != 0 { 2 } else { 0 },
        host: Some("render-042.farm.local".into()),
        log: [
            vec![
                format!("Rendering frame {f}"),
                "Memory in use: 61.8 GiB of 64 GiB".into(),
            ],
            log_extra.iter().map(|s| s.to_string()).collect(),
            vec![format!("frame {f}: process exited with code {code}")],
        ]
        .concat(),
    };
    JobSpec {
        name: "shot_070 hero render".into(),
        task_run_status: Some("RUNNING".into()),
        task_run_status_counts: Some([("RUNNING".to_string(), 4)].into()),
        steps: vec![
            StepSpec {
                name: "Setup".into(),
                tasks: vec![frame("1", "SUCCEEDED", 0)],
            },
            StepSpec {
                name: "Render".into(),
                tasks: vec![
                    frame("1041", "SUCCEEDED", 0),
                    frame("1042", "FAILED", 137),
                    frame("1043", "FAILED", 137),
                ],
            },
        ],
        ..Default::default()
    }
}

pub fn fail_it(sim: &Simulator, key: &JobKey) {
    sim.patch(
        key,
        &Patch {
            task_run_status: Some("FAILED".into()),
            task_run_status_counts: Some(
                [("SUCCEEDED".to_string(), 2), ("FAILED".to_string(), 2)].into(),
            ),
            ..Default::default()
        },
    );
}

async fn gatherer(sim: &Simulator) -> (Gatherer, String) {
    let (addr, _) = sim.serve(([127, 0, 0, 1], 0).into()).await.unwrap();
    let url = format!("http://{addr}");
    let client = DeadlineClient::local(&url, &DeadlineConfig::default());
    (
        Gatherer::new(
            Arc::new(client),
            Some(Arc::new(LogsClient::local(&url))),
            1.0,
        ),
        url,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathers_failed_frames_exit_codes_hosts_and_log_tails() {
    let sim = Simulator::new();
    let key = sim.add_job(failing_render(&[
        "AKIAIOSFODNN7EXAMPLE in env",
        "login password=hunter2",
        "<!channel> look",
    ]));
    fail_it(&sim, &key);
    let (g, _) = gatherer(&sim).await;
    let mut job = deadline_notifier::domain::JobSnapshot::sample(key.clone(), "x");
    job.task_run_status_counts = [("FAILED".to_string(), 2)].into();
    let f = g.gather(&TriageConfig::default(), &job, None).await;
    assert_eq!(f.unavailable, None, "{f:?}");
    assert_eq!(f.failed_task_count, 2);
    assert_eq!(f.steps.len(), 1, "only the step with failures: {f:?}");
    assert_eq!(f.steps[0].name, "Render");
    let frames: Vec<_> = f
        .tasks
        .iter()
        .map(|t| t.parameters["Frame"].clone())
        .collect();
    assert_eq!(frames, ["1042", "1043"]);
    for t in &f.tasks {
        assert_eq!(t.exit_code, Some(137));
        assert_eq!(t.step_name, "Render");
        assert_eq!(t.retries, Some(2));
        assert_eq!(t.host.as_deref(), Some("render-042.farm.local"));
        assert_eq!(t.message.as_deref(), Some("Render process was killed"));
        let log = t.log_tail.join("\n");
        assert!(log.contains("process exited with code 137"), "{log}");
        assert!(
            !log.contains("earlier action"),
            "bounded by the action's start: {log}"
        );
        assert!(
            !log.contains("AKIAIOSFODNN7EXAMPLE") && !log.contains("hunter2"),
            "{log}"
        );
    }
    let stats = sim.stats();
    println!(
        "triage calls: ListSteps {} ListTasks {} BatchGetSessionAction {} BatchGetSession {} GetLogEvents {}",
        stats.list_steps,
        stats.list_tasks,
        stats.batch_get_session_action,
        stats.batch_get_session,
        stats.get_log_events
    );
    assert_eq!(
        (
            stats.list_steps,
            stats.list_tasks,
            stats.batch_get_session_action,
            stats.batch_get_session,
            stats.get_log_events
        ),
        (1, 1, 1, 1, 2)
    );
}

fn texts(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    // (type of the enclosing object, text) for every "text" string in a payload.
    match v {
        serde_json::Value::Object(m) => {
            let ty = m
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string();
            for (k, x) in m {
                match x {
                    serde_json::Value::String(s) if k == "text" => {
                        out.push((ty.clone(), s.clone()))
                    }
                    _ => texts(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| texts(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_says_which_frames_failed_why_and_where_in_every_channel() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let key = env.sim.add_job(failing_render(&[
        "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
        "db login password=hunter2",
        "<!channel> <@U123> *render* died",
    ]));
    env.subscribe_job(&key, serde_json::json!({})).await;
    env.observed(&key, 2).await;
    fail_it(&env.sim, &key);
    wait_until(
        std::time::Duration::from_secs(30),
        "three failure messages",
        || env.delivered_for(&key).len() >= 3,
    )
    .await;
    for r in env.delivered_for(&key) {
        let raw = &r.raw;
        assert!(
            !raw.contains("AKIAIOSFODNN7EXAMPLE") && !raw.contains("hunter2"),
            "{}: {raw}",
            r.path
        );
        let mut all = Vec::new();
        texts(&r.body, &mut all);
        let joined: String = all
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        if r.path.starts_with("/slack") || r.path.starts_with("/teams") {
            for want in [
                "Frame=1042",
                "Frame=1043",
                "Render",
                "exit code 137",
                "render-042.farm.local",
                "process exited with code 137",
            ] {
                assert!(joined.contains(want), "{} lacks {want:?}: {joined}", r.path);
            }
            assert!(
                !joined.to_lowercase().contains("details unavailable"),
                "{joined}"
            );
        }
        if r.path.starts_with("/slack") {
            // Mentions only in mrkdwn would ping; there `<` is escaped. The log is in
            // a preformatted rich_text element, which is never parsed.
            for (ty, t) in &all {
                if ty == "mrkdwn" {
                    assert!(!t.contains("<!channel>") && !t.contains("<@U123>"), "{t}");
                }
            }
            let blocks = r.body["blocks"].as_array().unwrap();
            let log = blocks
                .iter()
                .find(|b| b["type"] == "rich_text")
                .expect("a log block");
            assert_eq!(log["elements"][1]["type"], "rich_text_preformatted");
            assert!(!r.raw.contains("\"broadcast\"") && !r.raw.contains("\"type\":\"user\""));
        }
        if r.path.starts_with("/teams") {
            let body = r.body["attachments"][0]["content"]["body"]
                .as_array()
                .unwrap();
            let mono = body
                .iter()
                .flat_map(|b| b["inlines"].as_array().cloned().unwrap_or_default())
                .find(|run| run["fontType"] == "Monospace")
                .expect("a monospace log run");
            assert!(
                mono["text"]
                    .as_str()
                    .unwrap()
                    .contains("process exited with code 137")
            );
            assert!(
                !body.iter().any(|b| b["type"] == "TextBlock"
                    && b["text"].as_str().unwrap_or("").contains("exited"))
            );
        }
        if r.path.starts_with("/webhook") {
            let f = &r.body["data"]["failure"];
            assert_eq!(f["failedTaskCount"], 2, "{f}");
            assert_eq!(f["steps"][0]["name"], "Render");
            assert_eq!(f["tasks"][0]["parameters"]["Frame"], "1042");
            assert_eq!(f["tasks"][1]["parameters"]["Frame"], "1043");
            assert_eq!(f["tasks"][0]["exitCode"], 137);
            assert_eq!(f["tasks"][0]["host"], "render-042.farm.local");
            let tail: Vec<_> = f["tasks"][0]["logTail"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_string())
                .collect();
            assert!(tail.iter().any(|l| l.contains("[REDACTED]")), "{tail:?}");
            // No `monitor_url` in this config: no links (golden files show them).
            assert!(f["tasks"][0]["link"].is_null(), "{f}");
            assert!(f.get("unavailable").is_none(), "{f}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_triage_or_a_dead_logs_endpoint_still_delivers_saying_so() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let quiet = env.sim.add_job(failing_render(&[]));
    let throttled = env.sim.add_job(failing_render(&[]));
    for k in [&quiet, &throttled] {
        env.subscribe_job(k, serde_json::json!({"channels": ["pipeline"]}))
            .await;
    }
    env.observed_all(&[quiet.clone(), throttled.clone()], 2)
        .await;

    // Logs down: frames, exit codes and hosts still come; the log lines do not.
    env.sim
        .set_faults(deadline_notifier::devkit::simulator::Faults {
            logs_down: true,
            ..Default::default()
        });
    fail_it(&env.sim, &quiet);
    wait_until(
        std::time::Duration::from_secs(30),
        "the message without logs",
        || !env.delivered_for(&quiet).is_empty(),
    )
    .await;
    let f = env.delivered_for(&quiet)[0].body["data"]["failure"].clone();
    assert_eq!(f["tasks"][0]["exitCode"], 137, "{f}");
    assert!(
        f["unavailable"]
            .as_str()
            .unwrap()
            .contains("log lines unavailable"),
        "{f}"
    );

    // Every triage call throttled: the message goes out with what little is known.
    env.sim
        .set_faults(deadline_notifier::devkit::simulator::Faults {
            throttle_details: true,
            ..Default::default()
        });
    fail_it(&env.sim, &throttled);
    wait_until(
        std::time::Duration::from_secs(30),
        "the message without details",
        || !env.delivered_for(&throttled).is_empty(),
    )
    .await;
    let r = &env.delivered_for(&throttled)[0];
    let f = &r.body["data"]["failure"];
    assert_eq!(f["failedTaskCount"], 2, "{f}");
    assert_eq!(f["tasks"], serde_json::json!([]), "{f}");
    assert!(
        f["unavailable"].as_str().unwrap().contains("throttled"),
        "{f}"
    );
    assert!(r.body["data"]["summary"].is_string());
}

/// The logs endpoint hangs past the triage timeout: the message still carries
/// the frames and exit codes that arrived before, and says what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_logs_endpoint_still_sends_the_frames_and_exit_codes() {
    let mut env = Env::new().await;
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        text.replacen(
            "[delivery]\n",
            "[triage]\ntimeout = \"2s\"\n[delivery]\n",
            1,
        ),
    )
    .unwrap();
    let _svc = env.start().await;
    let job = env.sim.add_job(failing_render(&[]));
    env.subscribe_job(&job, serde_json::json!({"channels": ["pipeline", "slack"]}))
        .await;
    env.observed(&job, 2).await;
    env.sim
        .set_faults(deadline_notifier::devkit::simulator::Faults {
            logs_latency_ms: 600_000,
            ..Default::default()
        });
    fail_it(&env.sim, &job);
    wait_until(std::time::Duration::from_secs(30), "both messages", || {
        env.delivered_for(&job).len() == 2
    })
    .await;
    let got = env.delivered_for(&job);
    let hook = got.iter().find(|r| r.path.starts_with("/webhook")).unwrap();
    let f = &hook.body["data"]["failure"];
    assert_eq!(f["tasks"][0]["exitCode"], 137, "{f}");
    assert_eq!(f["tasks"][0]["parameters"]["Frame"], "1042", "{f}");
    assert!(f["unavailable"].is_string(), "{f}");
    let slack = got.iter().find(|r| r.path.starts_with("/slack")).unwrap();
    assert!(
        slack.raw.contains("1042") && slack.raw.contains("137"),
        "{}",
        slack.raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_detection_and_delivery_sends_the_same_triage() {
    let mut env = Env::new().await;
    let mut svc = env.start().await;
    let key = env.sim.add_job(failing_render(&["first run's log"]));
    env.subscribe_job(
        &key,
        serde_json::json!({"channels": ["pipeline"], "events": ["job.failed"]}),
    )
    .await;
    env.observed(&key, 2).await;
    let path = "/webhook/lighting";
    env.sink.outage(
        path,
        deadline_notifier::clock::monotonic() + std::time::Duration::from_secs(120),
        503,
    );
    fail_it(&env.sim, &key);
    // Two refused attempts with the triaged message: it is stored (the group commit
    // syncs within 50 ms; the second attempt comes ≥ 200 ms after the first).
    let attempts = |env: &Env| {
        env.sink
            .received()
            .into_iter()
            .filter(|r| r.path == path && r.raw.contains(key.job_id.as_str()))
            .filter(|r| {
                r.body["data"]["failure"]["tasks"]
                    .as_array()
                    .is_some_and(|t| !t.is_empty())
            })
            .collect::<Vec<_>>()
    };
    wait_until(
        std::time::Duration::from_secs(30),
        "two refused attempts",
        || attempts(&env).len() >= 2,
    )
    .await;
    let sent = attempts(&env)[0].clone();
    svc.kill();
    // Gathering again would now fail: the job is gone from Deadline Cloud.
    env.sim.remove(&key);
    env.sink
        .outage(path, deadline_notifier::clock::monotonic(), 503);
    let _svc = env.start().await;
    wait_until(
        std::time::Duration::from_secs(30),
        "delivery after the restart",
        || !env.delivered_for(&key).is_empty(),
    )
    .await;
    let got = &env.delivered_for(&key)[0];
    assert_eq!(got.headers["webhook-id"], sent.headers["webhook-id"]);
    assert_eq!(got.body["data"]["failure"], sent.body["data"]["failure"]);
    assert!(got.raw.contains("first run's log"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_milestones_and_a_stall_fire_once_each_across_a_restart() {
    let mut env = Env::new().await;
    let cfg = std::fs::read_to_string(env.config_path()).unwrap().replace(
        "max_attempts = 3",
        "max_attempts = 3\nstall_after = \"2s\"\nprogress_milestones = [50, 90]",
    );
    std::fs::write(env.config_path(), cfg).unwrap();
    let mut svc = env.start().await;
    let key = env.sim.add_job(JobSpec {
        name: "shot_080 long sim".into(),
        task_run_status: Some("RUNNING".into()),
        task_run_status_counts: Some(
            [("RUNNING".to_string(), 4), ("READY".to_string(), 16)].into(),
        ),
        ..Default::default()
    });
    env.subscribe_job(
        &key,
        serde_json::json!({"channels": ["pipeline"], "events": ["job.progress", "job.stalled"]}),
    )
    .await;
    env.observed(&key, 2).await;
    let counts = |pairs: &[(&str, i64)]| Patch {
        task_run_status_counts: Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
        ..Default::default()
    };
    let of = |env: &Env, event: &str| {
        env.delivered_for(&key)
            .into_iter()
            .filter(|r| r.body["type"] == event)
            .collect::<Vec<_>>()
    };
    env.sim.patch(
        &key,
        &counts(&[("SUCCEEDED", 11), ("RUNNING", 4), ("READY", 5)]),
    );
    wait_until(
        std::time::Duration::from_secs(20),
        "the 50% message",
        || of(&env, "job.progress").len() == 1,
    )
    .await;
    // One poll jumps past 90%: one message, for 90.
    env.sim
        .patch(&key, &counts(&[("SUCCEEDED", 19), ("RUNNING", 1)]));
    wait_until(
        std::time::Duration::from_secs(20),
        "the 90% message",
        || of(&env, "job.progress").len() == 2,
    )
    .await;
    let ms: Vec<_> = of(&env, "job.progress")
        .iter()
        .map(|r| r.body["data"]["milestone"].clone())
        .collect();
    assert_eq!(ms, [serde_json::json!(50), serde_json::json!(90)]);
    // No growth while a task runs: stalled, once.
    wait_until(
        std::time::Duration::from_secs(30),
        "the stall message",
        || of(&env, "job.stalled").len() == 1,
    )
    .await;
    env.observed(&key, 10).await;
    svc.kill();
    let _svc = env.start().await;
    env.observed(&key, 10).await;
    assert_eq!(
        of(&env, "job.stalled").len(),
        1,
        "a stall is announced once, restart or not"
    );
    assert_eq!(
        of(&env, "job.progress").len(),
        2,
        "milestones are not announced again"
    );
    let s = &of(&env, "job.stalled")[0].body["data"];
    assert!(s["stalledSince"].is_string(), "{s}");
}
