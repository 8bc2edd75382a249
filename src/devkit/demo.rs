//! `deadline-notifier demo`: the simulator, a local sink and the service on embedded
//! defaults; subscribes a few scripted jobs through the real API and prints every
//! notification as it arrives.
use crate::app::App;
use crate::config::Config;
use crate::deadline::client::DeadlineClient;
use crate::devkit::simulator::{JobSpec, Patch, Simulator};
use crate::devkit::sink::{Received, Sink};
use crate::http::client::ApiClient;
use anyhow::Context;
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "demo-lighting-token-0001";
const JANE: &str = "arn:aws:sts::111122223333:assumed-role/Artist/jane";
/// The farm and queue the demo's watch covers.
const WATCHED: (&str, &str) = (
    "farm-000000000000000000000000000000fa",
    "queue-0000000000000000000000000000d3e0",
);

fn demo_config(sink: &str, store: &std::path::Path, listen: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
shutdown_grace = "5s"
[store]
path = "{store}"
[deadline]
region = "us-west-2"
poll_interval = "500ms"
discovery_interval = "1s"
monitor_url = "https://monitor.example.com"
[delivery]
allow_private_targets = true
retry_schedule = ["1s", "2s"]
slack_interval = "300ms"
[[teams]]
name = "lighting"
tokens = ["{TOKEN}"]
[[teams.channels]]
name = "slack"
kind = "slack"
url = "http://{sink}/slack/T000/B000/demo"
[[teams.channels]]
name = "teams"
kind = "teams"
url = "http://{sink}/teams/workflows/demo"
[[teams.channels]]
name = "pipeline"
kind = "webhook"
url = "http://{sink}/webhook"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
[[teams.watches]]
name = "janes-jobs"
farm_id = "{farm}"
queue_ids = ["{queue}"]
created_by = ["{JANE}"]

[[people]]
deadline = ["{JANE}"]
slack = "U024BE7LH"
teams = "jane@studio.example"
name = "Jane Doe"
"#,
        farm = WATCHED.0,
        queue = WATCHED.1,
        store = store.display().to_string().replace('\\', "/"),
    )
}

fn step(after_ms: u64, status: &str, counts: &[(&str, i64)]) -> Patch {
    Patch {
        after_ms,
        task_run_status: Some(status.into()),
        task_run_status_counts: Some(counts.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
        ..Default::default()
    }
}

/// `demo --stay`: adds a few jobs nobody subscribed, for trying the page, and runs
/// until Ctrl-C.
async fn keep_running(sim: &Simulator, api: &str) {
    let region = "us-west-2";
    let mut rendering = Vec::new();
    for minute in 1..=10u64 {
        let done = (minute * 60).min(600) as i64;
        let running = if minute < 10 { 8 } else { 0 };
        let ready = (600 - done - running).max(0);
        let status = if minute < 10 { "RUNNING" } else { "SUCCEEDED" };
        rendering.push(step(
            minute * 60_000,
            status,
            &[("SUCCEEDED", done), ("RUNNING", running), ("READY", ready)],
        ));
    }
    rendering.insert(
        0,
        step(15_000, "RUNNING", &[("RUNNING", 8), ("READY", 592)]),
    );
    let jobs = [
        ("shot_040 crowd sim (10 minutes)", rendering),
        (
            "shot_050 fx cache (fails after 2 minutes)",
            vec![
                step(20_000, "RUNNING", &[("RUNNING", 4), ("READY", 36)]),
                step(120_000, "FAILED", &[("SUCCEEDED", 37), ("FAILED", 3)]),
            ],
        ),
    ];
    println!();
    println!("Still running (Ctrl-C to stop). Open {api}/ and sign in with {TOKEN};");
    println!("these jobs are not subscribed yet — paste one into \"Job ID or monitor URL\":");
    for (name, script) in jobs {
        let k = sim.add_job(JobSpec {
            name: name.into(),
            script,
            ..Default::default()
        });
        println!(
            "  {name}\n    https://monitor.example.com/{region}/farms/{}/queues/{}?jobId={}",
            k.farm_id, k.queue_id, k.job_id
        );
    }
    crate::app::shutdown_signal().await;
}

/// A readable rendering of what a chat would show.
pub fn describe(r: &Received) -> String {
    let b = &r.body;
    let mut out = String::new();
    if r.path.starts_with("/slack") {
        out.push_str("[slack]\n");
        for block in b["blocks"].as_array().into_iter().flatten() {
            if let Some(t) = block["text"]["text"].as_str() {
                out.push_str(&format!("  {}\n", t.replace('\n', "\n  ")));
            }
            if block["type"] == "rich_text" {
                // A log tail: a heading, then the lines as a code block.
                for part in block["elements"].as_array().into_iter().flatten() {
                    let text: String = part["elements"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["text"].as_str())
                        .collect();
                    if part["type"] == "rich_text_preformatted" {
                        out.push_str(&format!("  │ {}\n", text.replace('\n', "\n  │ ")));
                    } else {
                        out.push_str(&format!("  {text}\n"));
                    }
                }
                continue;
            }
            for el in block["elements"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "  [{}] → {}\n",
                    el["text"]["text"].as_str().unwrap_or(""),
                    el["url"].as_str().unwrap_or("")
                ));
            }
        }
    } else if r.path.starts_with("/teams") {
        out.push_str("[teams]\n");
        let content = &b["attachments"][0]["content"];
        for block in content["body"].as_array().into_iter().flatten() {
            for run in block["inlines"].as_array().into_iter().flatten() {
                out.push_str(&format!("  {}\n", run["text"].as_str().unwrap_or("")));
            }
            if block["type"] == "TextBlock" {
                out.push_str(&format!("  {}\n", block["text"].as_str().unwrap_or("")));
            }
        }
    } else {
        let sig = r
            .headers
            .get("webhook-signature")
            .map(String::as_str)
            .unwrap_or("-");
        let id = r
            .headers
            .get("webhook-id")
            .map(String::as_str)
            .unwrap_or("-");
        out.push_str(&format!(
            "[webhook] webhook-id={id} signature={sig}\n  {}\n",
            b
        ));
    }
    out
}

/// The subscribed jobs the demo plays, with the events each subscribes to
/// (null: the defaults): a success, a failure, hostile markup, a bad bundle.
fn scripted_jobs() -> Vec<(JobSpec, Value)> {
    let ok = [("SUCCEEDED", 600)];
    vec![
        (
            JobSpec {
                name: "shot_010 comp v3".into(),
                script: vec![
                    step(1500, "RUNNING", &[("RUNNING", 4), ("READY", 596)]),
                    step(4000, "SUCCEEDED", &ok),
                ],
                ..Default::default()
            },
            json!(["job.started", "job.succeeded", "job.failed"]),
        ),
        (
            JobSpec {
                name: "shot_020 lighting".into(),
                script: vec![
                    step(1500, "RUNNING", &[("RUNNING", 10), ("READY", 90)]),
                    step(4000, "FAILED", &[("SUCCEEDED", 98), ("FAILED", 2)]),
                ],
                ..Default::default()
            },
            Value::Null,
        ),
        (
            JobSpec {
                name: "<!channel> *bold* \"q\" \\ \n<https://evil|click>".into(),
                description: Some("<@U123> @here {{name}} </script>".into()),
                script: vec![step(2500, "SUCCEEDED", &[("SUCCEEDED", 10)])],
                ..Default::default()
            },
            Value::Null,
        ),
        (
            JobSpec {
                name: "shot_030 bad bundle".into(),
                lifecycle_status: Some("CREATE_IN_PROGRESS".into()),
                script: vec![Patch {
                    after_ms: 2500,
                    lifecycle_status: Some("CREATE_FAILED".into()),
                    lifecycle_status_message: Some("Job template failed validation".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
            Value::Null,
        ),
    ]
}

/// Runs the scripted demo; with `stay`, keeps the service up afterwards on that address.
pub async fn run(stay: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let sim = Simulator::new();
    let (sim_addr, _s) = sim
        .serve(([127, 0, 0, 1], 0).into())
        .await
        .context("starting the simulator")?;
    let sink = Sink::new();
    let (sink_addr, _k) = sink
        .serve(([127, 0, 0, 1], 0).into())
        .await
        .context("starting the sink")?;
    let dir = tempfile::tempdir().context("creating a temporary store directory")?;
    let listen = stay.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
    let text = demo_config(
        &sink_addr.to_string(),
        &dir.path().join("notifier.sled"),
        &listen,
    );
    let config = Config::from_toml(&text, std::path::Path::new("(embedded demo config)"))?;
    let client = DeadlineClient::local(&format!("http://{sim_addr}"), &config.deadline);
    let app = App::build(config, Some(client), crate::clock::system())
        .await
        .with_context(|| format!("starting the service on {listen}"))?
        .with_logs(crate::deadline::logs::LogsClient::local(&format!(
            "http://{sim_addr}"
        )));
    let api = format!("http://{}", app.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));

    println!("deadline-notifier demo");
    println!(
        "  simulator  http://{sim_addr}   (Deadline Cloud API, reached through aws-sdk-deadline)"
    );
    println!(
        "  sink       http://{sink_addr}  (stands in for Slack, Teams and a webhook receiver)"
    );
    println!("  API        {api}");
    println!("  page       {api}/   (sign in with the team token {TOKEN})");
    println!();

    let jobs = scripted_jobs();
    // started + succeeded, failed, succeeded, create_failed, and jane's watched
    // failure: 6 events × 3 channels.
    let expected = 6 * 3;

    let mut arrivals = sink.subscribe();
    let client = ApiClient::new(&api, TOKEN);
    for (spec, events) in jobs {
        let name = spec.name.clone();
        let key = sim.add_job(spec);
        let mut body = json!({"farmId": key.farm_id, "queueId": key.queue_id, "jobId": key.job_id});
        if !events.is_null() {
            body["events"] = events;
        }
        let (_, sub) = client
            .subscribe(body)
            .await
            .context("subscribing through the API")?;
        println!(
            "subscribed {} ({:?}) as {}",
            key.job_id,
            name,
            sub["id"].as_str().unwrap_or("?")
        );
    }
    // No subscribe call for this one: the watch finds it, and Jane is mentioned.
    let watched = sim.add_job(JobSpec {
        farm_id: Some(WATCHED.0.into()),
        queue_id: Some(WATCHED.1.into()),
        name: "shot_030 fx by jane".into(),
        created_by: Some(JANE.into()),
        script: vec![step(2500, "FAILED", &[("SUCCEEDED", 40), ("FAILED", 1)])],
        ..Default::default()
    });
    println!(
        "created {} (\"shot_030 fx by jane\") in a watched queue: no subscribe call",
        watched.job_id
    );
    println!();

    let mut seen = 0;
    let deadline = crate::clock::tokio_monotonic() + Duration::from_secs(60);
    while seen < expected {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Ok(r)) if (200..300).contains(&r.status) => {
                seen += 1;
                println!("── notification {seen}/{expected} ──\n{}", describe(&r));
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {}
            Err(_) => {
                let _ = stop_tx.send(());
                anyhow::bail!("demo timed out: {seen} of {expected} notifications arrived");
            }
        }
    }
    println!("demo complete: {seen} notifications delivered; none lost, none duplicated.");
    if stay.is_some() {
        keep_running(&sim, &api).await;
    }
    let _ = stop_tx.send(());
    service.await.context("service task")??;
    Ok(())
}
