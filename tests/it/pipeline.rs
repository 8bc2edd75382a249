use crate::helpers::*;
use deadline_notifier::devkit::simulator::{Faults, JobSpec, Patch};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_job_yields_one_message_per_channel_and_no_started() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let job = env.add_job("shot_010 comp");
    env.subscribe_job(&job, json!({})).await;
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "RUNNING");
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "SUCCEEDED");
    wait_until(T, "3 deliveries", || env.delivered_for(&job).len() >= 3).await;
    env.observed(&job, 3).await;
    // The control: a later transition of the same job. A job's messages leave each
    // channel in order, so anything wrongly queued with `succeeded` arrives before it.
    env.sim.set_status(&job, "CANCELED");
    wait_until(T, "the control message on every channel", || {
        env.delivered_for(&job)
            .iter()
            .filter(|r| event_of(r) == "job.canceled")
            .count()
            >= 3
    })
    .await;

    let got: Vec<_> = env
        .delivered_for(&job)
        .into_iter()
        .filter(|r| event_of(r) != "job.canceled")
        .collect();
    let mut channels: Vec<_> = got.iter().map(channel_of).collect();
    channels.sort();
    assert_eq!(
        channels,
        vec!["slack", "teams", "webhook"],
        "exactly one message per channel"
    );
    for r in &got {
        assert_eq!(event_of(r), "job.succeeded", "{}", r.raw);
        assert!(
            r.raw.contains("shot_010 comp"),
            "message names the job: {}",
            r.raw
        );
    }
    let hook = got.iter().find(|r| channel_of(r) == "webhook").unwrap();
    assert_eq!(hook.body["data"]["previousTaskRunStatus"], "RUNNING");
    assert!(hook.headers.contains_key("webhook-signature"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_is_sent_when_asked_for_and_order_is_kept() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let job = env.add_job("shot_011");
    env.subscribe_job(
        &job,
        json!({"events": ["job.started", "job.succeeded"], "channels": ["pipeline"]}),
    )
    .await;
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "RUNNING");
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "SUCCEEDED");
    wait_until(T, "2 deliveries", || env.delivered_for(&job).len() >= 2).await;
    let events: Vec<_> = env.delivered_for(&job).iter().map(event_of).collect();
    assert_eq!(events, vec!["job.started", "job.succeeded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_canceled_create_failed_and_skipped_states() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let failed = env.add_job("will fail");
    let canceled = env.add_job("will cancel");
    let jumped = env.add_job("ready to done");
    let bad = env.sim.add_job(JobSpec {
        name: "bad bundle".into(),
        lifecycle_status: Some("CREATE_IN_PROGRESS".into()),
        ..Default::default()
    });
    for j in [&failed, &canceled, &jumped, &bad] {
        env.subscribe_job(j, json!({"channels": ["pipeline"]}))
            .await;
    }
    env.observed_all(
        &[
            failed.clone(),
            canceled.clone(),
            jumped.clone(),
            bad.clone(),
        ],
        2,
    )
    .await;
    env.sim.set_status(&failed, "RUNNING");
    env.sim.set_status(&canceled, "RUNNING");
    env.observed(&failed, 2).await;
    env.sim.set_status(&failed, "FAILED");
    env.sim.set_status(&canceled, "CANCELED");
    env.sim.set_status(&jumped, "SUCCEEDED"); // READY → SUCCEEDED, RUNNING never seen
    env.sim.patch(
        &bad,
        &Patch {
            lifecycle_status: Some("CREATE_FAILED".into()),
            ..Default::default()
        },
    );
    for (j, ev) in [
        (&failed, "job.failed"),
        (&canceled, "job.canceled"),
        (&jumped, "job.succeeded"),
        (&bad, "job.create_failed"),
    ] {
        wait_until(T, ev, || env.delivered_for(j).len() == 1).await;
        assert_eq!(event_of(&env.delivered_for(j)[0]), ev);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_job_name_is_inert_on_every_channel() {
    let hostile = "<!channel> *bold* \"q\" \\ \n<https://evil|click>";
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let job = env.sim.add_job(JobSpec {
        name: hostile.into(),
        description: Some("<@U123> <!here> &amp; {{name}}".into()),
        ..Default::default()
    });
    env.subscribe_job(&job, json!({})).await;
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "FAILED");
    wait_until(T, "3 deliveries", || env.delivered_for(&job).len() >= 3).await;
    for r in env.delivered_for(&job) {
        let v: Value = serde_json::from_str(&r.raw).expect("payload is valid JSON");
        match channel_of(&r) {
            "slack" => {
                // Top-level text and every mrkdwn object: no raw < > from job data.
                let mut mrkdwn = vec![v["text"].as_str().unwrap().to_string()];
                for b in v["blocks"].as_array().unwrap() {
                    if b["text"]["type"] == "mrkdwn" {
                        assert_eq!(b["text"]["verbatim"], true);
                        mrkdwn.push(b["text"]["text"].as_str().unwrap().to_string());
                    }
                    if b["text"]["type"] == "plain_text" {
                        // Shown literally: visible, pings nobody.
                        assert!(b["text"]["text"].as_str().unwrap().contains("<!channel>"));
                    }
                }
                for t in mrkdwn {
                    assert!(
                        !t.contains('<') && !t.contains('>'),
                        "unescaped markup in mrkdwn: {t}"
                    );
                }
                assert!(v.get("link_names").is_none());
            }
            "teams" => {
                let content = &v["attachments"][0]["content"];
                assert_eq!(
                    v["attachments"][0]["contentType"],
                    "application/vnd.microsoft.card.adaptive"
                );
                for b in content["body"].as_array().unwrap() {
                    assert_eq!(
                        b["type"], "RichTextBlock",
                        "untrusted text only in TextRuns"
                    );
                }
                assert!(content.get("msteams").is_none(), "no mention entities");
                assert!(r.raw.contains("<!channel>"), "text shown as typed");
            }
            _ => assert_eq!(v["data"]["name"], hostile),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_detection_before_delivery_loses_nothing_and_detects_once() {
    let mut env = Env::new().await;
    let mut svc = env.start().await;
    let job = env.add_job("crashy");
    env.subscribe_job(&job, json!({"channels": ["pipeline"]}))
        .await;
    env.observed(&job, 2).await;
    // The receiver is down: the message is detected and queued but cannot be delivered.
    let until_cleared = deadline_notifier::clock::monotonic() + Duration::from_secs(3600);
    env.sink.outage("/webhook/lighting", until_cleared, 503);
    env.sim.set_status(&job, "SUCCEEDED");
    wait_until(T, "a failed delivery attempt", || {
        env.sink
            .received()
            .iter()
            .any(|r| r.raw.contains(job.job_id.as_str()))
    })
    .await;
    svc.kill(); // SIGKILL
    let first_id = env
        .sink
        .received()
        .iter()
        .find(|r| r.raw.contains(job.job_id.as_str()))
        .unwrap()
        .headers["webhook-id"]
        .clone();
    env.sink.clear_script("/webhook/lighting");

    let svc2 = env.start().await;
    wait_until(T, "delivery after restart", || {
        env.delivered_for(&job).len() == 1
    })
    .await;
    env.observed(&job, 3).await;
    let delivered = env.delivered_for(&job);
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0].headers["webhook-id"], first_id,
        "same webhook-id across restart"
    );
    let detections = |log: String| {
        log.lines()
            .filter(|l| l.contains("transition detected") && l.contains(job.job_id.as_str()))
            .count()
    };
    assert_eq!(
        detections(svc.log_text()) + detections(svc2.log_text()),
        1,
        "detected exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_delay_but_never_lose() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let job = env.add_job("throttled");
    env.subscribe_job(&job, json!({"channels": ["pipeline"]}))
        .await;
    env.observed(&job, 2).await;
    env.sim.set_faults(Faults {
        throttle_next: 4,
        retry_after: Some(1),
        error_next: 4,
        ..Default::default()
    });
    env.sim.set_status(&job, "RUNNING");
    env.sim.set_status(&job, "FAILED");
    wait_until(T, "delivery despite faults", || {
        env.delivered_for(&job).len() == 1
    })
    .await;
    let s = env.sim.stats();
    assert!(
        s.throttled >= 4 && s.errors >= 4,
        "faults were served: {s:?}"
    );
    assert_eq!(event_of(&env.delivered_for(&job)[0]), "job.failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_get_job_refused_falls_back_to_get_job() {
    let mut env = Env::new().await;
    env.sim.set_faults(Faults {
        deny_batch: true,
        ..Default::default()
    });
    let _svc = env.start().await;
    let job = env.add_job("no batch rights");
    env.subscribe_job(&job, json!({"channels": ["pipeline"]}))
        .await;
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "SUCCEEDED");
    wait_until(T, "delivery via GetJob", || {
        env.delivered_for(&job).len() == 1
    })
    .await;
    assert!(env.sim.stats().get_job >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_get_job_is_used_for_many_jobs() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let jobs: Vec<_> = (0..150).map(|i| env.add_job(&format!("job {i}"))).collect();
    for j in &jobs {
        env.subscribe_job(j, json!({"channels": ["pipeline"]}))
            .await;
    }
    env.observed(&jobs[149], 2).await;
    let s = env.sim.stats();
    assert_eq!(s.get_job, 0, "no per-job calls while BatchGetJob works");
    assert!(
        s.job_reads as f64 / s.batch_get_job as f64 > 10.0,
        "batches carry many jobs: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_job_ends_its_subscription() {
    let mut env = Env::new().await;
    let svc = env.start().await;
    let job = env.add_job("old job");
    let sub = env.subscribe_job(&job, json!({})).await;
    env.observed(&job, 1).await;
    env.sim.remove(&job);
    let url = format!(
        "{}/v1/subscriptions/{}",
        env.api(),
        sub["id"].as_str().unwrap()
    );
    let client = reqwest::Client::new();
    let mut state = String::new();
    let deadline = deadline_notifier::clock::tokio_monotonic() + T;
    while state != "ended" && deadline_notifier::clock::tokio_monotonic() < deadline {
        let v: Value = client
            .get(&url)
            .bearer_auth(LIGHTING)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        state = v["state"].as_str().unwrap_or("").to_string();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "ended");
    assert!(svc.log_text().contains("no longer exists"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_undelivered_messages_survive() {
    let mut env = Env::new().await;
    let mut svc = env.start().await;
    let job = env.add_job("term");
    env.subscribe_job(&job, json!({"channels": ["pipeline"]}))
        .await;
    env.observed(&job, 2).await;
    let until_cleared = deadline_notifier::clock::monotonic() + Duration::from_secs(3600);
    env.sink.outage("/webhook/lighting", until_cleared, 500);
    env.sim.set_status(&job, "CANCELED");
    wait_until(T, "an attempt", || {
        env.sink
            .received()
            .iter()
            .any(|r| r.raw.contains(job.job_id.as_str()))
    })
    .await;
    let status = svc.terminate();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        svc.log_text()
    );
    env.sink.clear_script("/webhook/lighting");
    let _svc2 = env.start().await;
    wait_until(T, "delivery after restart", || {
        env.delivered_for(&job).len() == 1
    })
    .await;
}

/// ListJobs and SearchJobs through the real SDK: the simulator's wire format parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_search_jobs_through_the_sdk() {
    use deadline_notifier::config::DeadlineConfig;
    use deadline_notifier::deadline::client::DeadlineClient;
    let env = Env::new().await;
    let mut keys: Vec<_> = (1..130).map(|i| env.add_job(&format!("j{i}"))).collect();
    // j0 has failed tasks, so the compact status's failure count is checked too.
    keys.insert(
        0,
        env.sim.add_job(JobSpec {
            name: "j0".into(),
            task_run_status: Some("RUNNING".into()),
            task_run_status_counts: Some(
                [("FAILED".to_string(), 3), ("RUNNING".to_string(), 7)].into(),
            ),
            ..Default::default()
        }),
    );
    env.sim.set_status(&keys[3], "RUNNING");
    let client = DeadlineClient::local(
        &format!("http://{}", env.sim_addr),
        &DeadlineConfig::default(),
    );
    let listed = client
        .list_jobs(&keys[0].farm_id, &keys[0].queue_id)
        .await
        .unwrap();
    assert_eq!(listed.len(), 130, "all pages");
    let searched = client
        .search_jobs(&keys[0].farm_id, &[keys[0].queue_id.to_string()])
        .await
        .unwrap();
    assert_eq!(searched.len(), 130);
    let running = searched.iter().find(|s| s.key == keys[3]).unwrap();
    assert_eq!(
        running.task_run_status.as_ref().map(|s| s.as_str()),
        Some("RUNNING")
    );
    assert_eq!(running.name, "j3");
    let mut fetched = client.fetch(&keys[..2]).await.unwrap();
    let (key, f) = fetched.remove(0);
    let deadline_notifier::deadline::Fetched::Found(observed) = f else {
        panic!("job 0 not found: {f:?}");
    };
    // The compact status read straight off the SDK value agrees with the one the
    // full snapshot gives.
    let status = observed.status.clone();
    let snap = observed.snapshot(key);
    assert_eq!(snap.name, "j0");
    assert_eq!(status.failed_tasks, 3);
    assert_eq!(
        status,
        deadline_notifier::domain::JobStatus::of(&snap),
        "{snap:?}"
    );
}

/// One record the SDK cannot decode must not blind its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_job_is_isolated_and_the_rest_keep_being_polled() {
    let mut env = Env::new().await;
    let svc = env.start().await;
    let jobs: Vec<_> = (0..40)
        .map(|i| env.add_job(&format!("batch {i}")))
        .collect();
    let mut subs = Vec::new();
    for j in &jobs {
        subs.push(
            env.subscribe_job(j, json!({"channels": ["pipeline"]}))
                .await,
        );
    }
    env.observed_all(&jobs, 2).await;
    let bad = &jobs[17];
    assert!(env.sim.patch(
        bad,
        &Patch {
            raw: Some(json!({"name": 12345})),
            ..Default::default()
        }
    ));
    for j in &jobs {
        env.sim.set_status(j, "SUCCEEDED");
    }
    wait_until(T, "every other job's message", || {
        jobs.iter()
            .filter(|j| *j != bad)
            .all(|j| env.delivered_for(j).len() == 1)
    })
    .await;
    assert!(env.delivered_for(bad).is_empty());
    // The bad job's subscription says why it is not being read.
    let url = format!(
        "{}/v1/subscriptions/{}",
        env.api(),
        subs[17]["id"].as_str().unwrap()
    );
    let client = reqwest::Client::new();
    let shown = wait_for(T, "the subscription to say why it is not read", || async {
        let v: Value = client
            .get(&url)
            .bearer_auth(LIGHTING)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["pollError"].is_string() {
            Ok(v)
        } else {
            Err(v)
        }
    })
    .await;
    assert!(
        shown["pollError"].as_str().unwrap_or("").contains("decode"),
        "{shown}"
    );
    let metrics = reqwest::get(format!("{}/metrics", env.api()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("deadline_notifier_undecodable_jobs 1"),
        "{metrics}"
    );
    let log = svc.log_text();
    assert!(log.contains(bad.job_id.as_str()), "the log names the job");
    // Readiness is about the watcher, not one job.
    let r = reqwest::get(format!("{}/readyz", env.api())).await.unwrap();
    assert_eq!(r.status(), 200);
    // Once the record decodes again, the job is back.
    env.sim.patch(
        bad,
        &Patch {
            raw: Some(Value::Null),
            ..Default::default()
        },
    );
    wait_until(T, "the bad job's message once it decodes", || {
        env.delivered_for(bad).len() == 1
    })
    .await;
}

/// The owner of a failed job is mentioned on every channel, from
/// the people directory only; job text never mentions anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_is_mentioned_and_job_text_pings_nobody() {
    let mut env = Env::new().await;
    let jane = "arn:aws:sts::111122223333:assumed-role/Artist/jane";
    let admin = "admin-token-0123456789abcdef";
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let text = text.replacen(
        "[server]\n",
        &format!("[server]\nadmin_tokens = [\"{admin}\"]\n"),
        1,
    ) + &format!(
        r#"
[[people]]
deadline = ["jane", "{jane}"]
slack = "U024BE7LH"
teams = "jane@studio.com"
name = "Jane Doe"
"#
    );
    std::fs::write(env.config_path(), text).unwrap();
    let mut svc = env.start().await;
    let hostile = "<@U0BADBAD> <!channel> <at>Boss</at>";
    let janes = env.sim.add_job(JobSpec {
        name: hostile.into(),
        created_by: Some(jane.into()),
        ..Default::default()
    });
    let bobs = env.sim.add_job(JobSpec {
        name: "bob's job".into(),
        created_by: Some("bob".into()),
        ..Default::default()
    });
    for j in [&janes, &bobs] {
        env.subscribe_job(j, json!({"events": ["job.failed", "job.succeeded"]}))
            .await;
    }
    env.observed_all(&[janes.clone(), bobs.clone()], 2).await;
    env.sim.set_status(&janes, "FAILED");
    env.sim.set_status(&bobs, "FAILED");
    wait_until(T, "both jobs on three channels", || {
        env.delivered_for(&janes).len() == 3 && env.delivered_for(&bobs).len() == 3
    })
    .await;
    let on = |job: &deadline_notifier::domain::JobKey, prefix: &str| -> Value {
        env.delivered_for(job)
            .into_iter()
            .find(|r| r.path.starts_with(prefix))
            .unwrap()
            .body
    };
    // Slack: exactly one mention, ours, in a block we built. Only mrkdwn text and
    // the fallback `text` are parsed for mentions (the header is plain_text).
    let slack_v = on(&janes, "/slack");
    let mut marked = vec![slack_v["text"].as_str().unwrap().to_string()];
    for b in slack_v["blocks"].as_array().unwrap() {
        if b["text"]["type"] == "mrkdwn" {
            marked.push(b["text"]["text"].as_str().unwrap().to_string());
        }
    }
    let marked = marked.join("\n");
    assert_eq!(marked.matches("<@").count(), 1, "{marked}");
    assert!(marked.contains("<@U024BE7LH>"), "{marked}");
    assert!(!marked.contains("<!channel>"), "{marked}");
    assert!(
        marked.contains("@Jane Doe"),
        "the template shows the owner: {marked}"
    );
    // Teams: one mention entity, ours; the hostile <at> stays inert text in a TextRun.
    let teams = on(&janes, "/teams");
    let content = &teams["attachments"][0]["content"];
    let entities = content["msteams"]["entities"].as_array().unwrap();
    assert_eq!(entities.len(), 1);
    assert_eq!(entities[0]["mentioned"]["id"], "jane@studio.com");
    let text_blocks: Vec<_> = content["body"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "TextBlock")
        .collect();
    assert_eq!(text_blocks.len(), 1, "{content}");
    assert_eq!(text_blocks[0]["text"], "<at>Jane Doe</at>");
    // Webhook: data.owner when mapped, absent when not.
    let hook = on(&janes, "/webhook");
    assert_eq!(hook["data"]["owner"]["slack"], "U024BE7LH");
    assert_eq!(hook["data"]["owner"]["createdBy"], jane);
    let bob_hook = on(&bobs, "/webhook");
    assert!(bob_hook["data"].get("owner").is_none(), "{bob_hook}");
    let bob_slack = on(&bobs, "/slack");
    assert!(
        bob_slack["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| !b["text"]["text"].as_str().unwrap_or("").starts_with("<@")),
        "{bob_slack}"
    );
    assert!(
        on(&bobs, "/teams")["attachments"][0]["content"]
            .get("msteams")
            .is_none()
    );
    // Ops can see whom to add to the directory.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/people/unmapped", env.api()))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let who: Vec<_> = v["unmapped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["createdBy"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(who, ["bob"], "{v}");
    // Kept in the store: a restart still lists bob.
    svc.terminate();
    let _svc = env.start().await;
    let r = reqwest::Client::new()
        .get(format!("{}/v1/people/unmapped", env.api()))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    let after: Value = r.json().await.unwrap();
    assert_eq!(
        after["unmapped"][0]["createdBy"], "bob",
        "after a restart: {after}"
    );
    assert_eq!(after["unmapped"].as_array().unwrap().len(), 1, "{after}");
    let r = reqwest::Client::new()
        .get(format!("{}/v1/people/unmapped", env.api()))
        .bearer_auth(LIGHTING)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a team token is not an admin token");
}
