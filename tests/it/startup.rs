use crate::helpers::*;
use std::process::Command;

/// Copies a sled directory's files (it has no subdirectories that matter here).
fn copy_store(from: &std::path::Path, to: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_file() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
    to.to_path_buf()
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deadline-notifier"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_template_fails_start_up_naming_the_file() {
    let env = Env::new().await;
    let tdir = env.dir.path().join("templates/lighting/slack");
    std::fs::create_dir_all(&tdir).unwrap();
    std::fs::write(tdir.join("job.failed.hbs"), "{{#if name}}unclosed").unwrap();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!(
            "[templates]\ndir = \"{}\"\n{cfg}",
            env.dir.path().join("templates").display()
        ),
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(env.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lighting/slack/job.failed.hbs"), "{err}");

    // A misspelt field is caught at start-up too (strict mode), not at send time.
    std::fs::write(tdir.join("job.failed.hbs"), "{{nmae}} failed").unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(env.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("job.failed.hbs") && err.contains("nmae"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_file_and_key() {
    let env = Env::new().await;
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        cfg.replace("poll_interval = \"200ms\"", "poll_interval = \"often\""),
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(env.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notifier.toml") && err.contains("poll_interval"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_template_overrides_the_default() {
    let mut env = Env::new().await;
    let tdir = env.dir.path().join("templates/lighting/webhook");
    std::fs::create_dir_all(&tdir).unwrap();
    std::fs::write(
        tdir.join("job.succeeded.hbs"),
        "Hooray for {{name}} on {{team}}",
    )
    .unwrap();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!(
            "[templates]\ndir = \"{}\"\n{cfg}",
            env.dir.path().join("templates").display()
        ),
    )
    .unwrap();
    let _svc = env.start().await;
    let job = env.add_job("custom");
    env.subscribe_job(&job, serde_json::json!({"channels": ["pipeline"]}))
        .await;
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "SUCCEEDED");
    wait_until(std::time::Duration::from_secs(30), "delivery", || {
        env.delivered_for(&job).len() == 1
    })
    .await;
    assert_eq!(
        env.delivered_for(&job)[0].body["data"]["summary"],
        "Hooray for custom on lighting"
    );
}

#[test]
fn demo_runs_and_prints_every_notification() {
    let out = bin().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("demo complete: 18 notifications delivered"),
        "{stdout}"
    );
    // The watched job, never subscribed by hand, arrives with Jane's mentions.
    assert!(
        stdout.contains("in a watched queue: no subscribe call")
            && stdout.contains("<@U024BE7LH>")
            && stdout.contains("<at>Jane Doe</at>"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[slack]") && stdout.contains("[teams]") && stdout.contains("[webhook]")
    );
}

#[test]
fn example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("whsec");
    std::fs::write(&secret, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n").unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"))
        .unwrap()
        .replace("/run/secrets/pipeline-whsec", &secret.display().to_string());
    let cfg = dir.path().join("notifier.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("LIGHTING_API_TOKEN", "lighting-token-0123456789")
        .env("LIGHTING_SLACK_WEBHOOK", "https://hooks.slack.com/services/T000/B000/XXXX")
        .env("LIGHTING_TEAMS_WEBHOOK", "https://prod-00.westus.logic.azure.com/workflows/x/triggers/manual/paths/invoke?sig=abc")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A missing variable is named, its would-be value never printed.
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env_remove("LIGHTING_API_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("LIGHTING_API_TOKEN")
            && err.contains("teams[0].tokens[0]"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_one_store_refuses_to_start() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let out = bin()
        .args(["serve", "--config"])
        .arg(env.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.sled"), "names the store path: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_store_is_a_clear_error_not_a_panic() {
    let env = Env::new().await;
    let subs: Vec<_> = (0..2000)
        .map(|i| {
            serde_json::json!({
                "id": format!("sub-{i:032x}"), "team": "lighting",
                "farmId": format!("farm-{}", "a".repeat(32)), "queueId": format!("queue-{}", "b".repeat(32)),
                "jobId": format!("job-{i:032x}"), "channels": ["pipeline"], "events": ["job.failed"],
                "createdAt": "2026-11-30T10:00:00Z"
            })
        })
        .collect();
    let file = env.dir.path().join("export.json");
    std::fs::write(
        &file,
        serde_json::json!({ "subscriptions": subs }).to_string(),
    )
    .unwrap();
    let l = env.launcher();
    assert!(
        l.command(&["import"])
            .arg(&file)
            .output()
            .unwrap()
            .status
            .success()
    );
    // Damaged copies of the store. Every case must either be refused with the
    // README's error (naming the store, telling the operator to restore from an
    // export) or open with every one of the 2,000 records: never a store with
    // records silently missing, never an empty one.
    let store = env.dir.path().join("store.sled");
    let db_len = std::fs::metadata(store.join("db")).unwrap().len() as usize;
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let overwrite = |off: usize| -> Damage {
        Box::new(move |b: &mut Vec<u8>| {
            let end = (off + 64).min(b.len());
            b[off.min(end)..end].fill(0xab);
        })
    };
    let cases: Vec<(&str, Damage, bool)> = vec![
        ("overwrite@0", overwrite(0), false),
        ("overwrite@1000", overwrite(1000), false),
        ("overwrite@4096", overwrite(4096), false),
        ("overwrite@100000", overwrite(100_000), false),
        ("truncate-to-0", Box::new(|b: &mut Vec<u8>| b.clear()), true),
        (
            "truncate-to-half",
            Box::new(|b: &mut Vec<u8>| b.truncate(b.len() / 2)),
            true,
        ),
        (
            "random-bytes",
            Box::new(move |b: &mut Vec<u8>| {
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                *b = (0..db_len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
            }),
            true,
        ),
    ];
    let (mut refused, mut intact) = (0, 0);
    for (n, (name, damage, must_refuse)) in cases.into_iter().enumerate() {
        let copy = copy_store(&store, &env.dir.path().join(format!("corrupt{n}.sled")));
        let mut bytes = std::fs::read(copy.join("db")).unwrap();
        damage(&mut bytes);
        std::fs::write(copy.join("db"), bytes).unwrap();
        let cfg = env.dir.path().join(format!("corrupt{n}.toml"));
        let text = std::fs::read_to_string(env.config_path()).unwrap();
        std::fs::write(
            &cfg,
            text.replace(&store.display().to_string(), &copy.display().to_string()),
        )
        .unwrap();
        let mut l2 = l.clone();
        l2.config = cfg;
        let out = l2.command(&["export"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {
                assert!(!must_refuse, "{name}: a damaged store opened\n{err}");
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let n = v["subscriptions"].as_array().map_or(0, Vec::len);
                assert_eq!(n, 2000, "{name}: opened with records missing");
                intact += 1;
            }
            Some(1) => {
                assert!(
                    err.contains(&format!("corrupt{n}.sled"))
                        && err.contains("corrupt")
                        && err.contains("export"),
                    "{name}: {err}"
                );
                refused += 1;
            }
            other => panic!("{name}: exit {other:?}, not a clean error: {err}"),
        }
    }
    // The config file is checksummed: damage there is always detected.
    let copy = copy_store(&store, &env.dir.path().join("corrupt-conf.sled"));
    std::fs::write(copy.join("conf"), [0xabu8; 62]).unwrap();
    let cfg = env.dir.path().join("corrupt-conf.toml");
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        &cfg,
        text.replace(&store.display().to_string(), &copy.display().to_string()),
    )
    .unwrap();
    let mut l2 = l.clone();
    l2.config = cfg;
    let out = l2.command(&["serve"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("corrupt-conf.sled"), "names the store: {err}");
    println!(
        "damaged stores: {refused} refused with a clean error, {intact} opened with all 2,000 records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_healthcheck() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let job = env.add_job("ready?");
    env.subscribe_job(&job, serde_json::json!({})).await;
    env.observed(&job, 2).await;
    let r = reqwest::get(format!("{}/readyz", env.api())).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["deadline"], "ok");
    assert_eq!(v["watchedJobs"], 1);
    let out = bin()
        .args(["healthcheck", "--url", &format!("{}/healthz", env.api())])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = bin()
        .args(["healthcheck", "--url", "http://127.0.0.1:9/healthz"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_the_sink_received() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let jobs: Vec<_> = (0..3)
        .map(|i| env.add_job(&format!("metered {i}")))
        .collect();
    for j in &jobs {
        env.subscribe_job(j, serde_json::json!({})).await;
    }
    env.observed_all(&jobs, 2).await;
    env.sink.script(
        "/webhook/lighting",
        [deadline_notifier::devkit::sink::Answer {
            status: 500,
            retry_after: None,
            body: String::new(),
        }],
    );
    for j in &jobs {
        env.sim.set_status(j, "SUCCEEDED");
    }
    wait_until(std::time::Duration::from_secs(30), "9 deliveries", || {
        env.sink.delivered().len() == 9
    })
    .await;
    // A delivery is counted just after the sink has answered it.
    let url = format!("{}/metrics", env.api());
    let text = wait_for(
        std::time::Duration::from_secs(30),
        "/metrics to count the 9 deliveries",
        || async {
            let t = reqwest::get(&url).await.unwrap().text().await.unwrap();
            let counted = metric_sum(
                &t,
                "deadline_notifier_deliveries_total{",
                &["outcome=\"delivered\""],
            );
            if counted == 9.0 && metric_sum(&t, "deadline_notifier_outbox_depth", &[]) == 0.0 {
                Ok(t)
            } else {
                Err(t)
            }
        },
    )
    .await;
    let sum = |name: &str, needle: &[&str]| metric_sum(&text, name, needle);
    let delivered = sum(
        "deadline_notifier_deliveries_total{",
        &["outcome=\"delivered\""],
    );
    assert_eq!(delivered as usize, env.sink.delivered().len(), "{text}");
    for ch in ["slack", "teams", "pipeline"] {
        assert_eq!(
            sum(
                "deadline_notifier_deliveries_total{",
                &["outcome=\"delivered\"", &format!("channel=\"{ch}\"")]
            ),
            3.0
        );
    }
    assert_eq!(
        sum(
            "deadline_notifier_deliveries_total{",
            &["outcome=\"retry\"", "reason=\"http_500\""]
        ),
        1.0
    );
    assert!(
        sum(
            "deadline_notifier_deadline_api_calls_total{",
            &["operation=\"BatchGetJob\"", "outcome=\"ok\""]
        ) >= 2.0
    );
    assert_eq!(sum("deadline_notifier_outbox_depth", &[]), 0.0);
    assert!(text.contains("deadline_notifier_delivery_latency_seconds_bucket"));
    assert!(text.contains("deadline_notifier_channel_disabled{"));
}

/// The sum of the Prometheus samples named `name` whose labels contain every `needle`.
fn metric_sum(text: &str, name: &str, needle: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && needle.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
