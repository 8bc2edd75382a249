//! Push: Deadline Cloud's EventBridge events through SQS (the simulator's SQS
//! stand-in, through the real `aws-sdk-sqs`) make jobs due now; polling stays the
//! safety net.
use crate::helpers::*;
use deadline_notifier::devkit::simulator::JobSpec;
use deadline_notifier::devkit::sqs::{SqsFault, envelope};
use deadline_notifier::domain::JobKey;
use serde_json::{Value, json};
use std::time::Duration;

const QUEUE: &str = "https://sqs.us-west-2.amazonaws.com/111122223333/deadline-events";
const T: Duration = Duration::from_secs(60);

/// `poll` replaces the test default of 200 ms; `events` is added to `[events]`.
fn configure(env: &Env, poll: &str, events: &str, extra: &str) {
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replacen(
            "poll_interval = \"200ms\"",
            &format!("poll_interval = \"{poll}\""),
            1,
        )
        + &format!(
            "\n[events]\nsqs_queue_url = \"{QUEUE}\"\nwait_time = \"1s\"\n{events}\n{extra}\n"
        );
    std::fs::write(env.config_path(), text).unwrap();
}

/// Events on the generic webhook of team lighting about `key`, in order.
fn announced(env: &Env, key: &JobKey) -> Vec<String> {
    env.delivered_for(key)
        .iter()
        .filter(|r| r.path == "/webhook/lighting")
        .map(event_of)
        .collect()
}

fn ids(key: &JobKey) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("farmId".into(), json!(key.farm_id.as_str()));
    m.insert("queueId".into(), json!(key.queue_id.as_str()));
    m.insert("jobId".into(), json!(key.job_id.as_str()));
    m
}

/// A Job Run Status Change for `key`, as EventBridge delivers it.
fn run_event(key: &JobKey, previous: &str, status: &str) -> String {
    let mut d = ids(key);
    d.insert("previousTaskRunStatus".into(), json!(previous));
    d.insert("taskRunStatus".into(), json!(status));
    d.insert("taskRunStatusCounts".into(), json!({status: 10}));
    envelope("Job Run Status Change", Value::Object(d))
}

/// A job that is running, subscribed, and read once (its state is stored).
async fn running_job(env: &Env, name: &str) -> JobKey {
    let key = env.sim.add_job(JobSpec {
        name: name.into(),
        task_run_status: Some("RUNNING".into()),
        task_run_status_counts: Some([("RUNNING".to_string(), 10)].into()),
        ..Default::default()
    });
    // The first read follows the subscription at once: count from before it.
    let before = env.sim.hits(&key);
    env.subscribe_job(
        &key,
        json!({"events": ["job.failed", "job.succeeded", "job.canceled"]}),
    )
    .await;
    wait_until(T, "the first read", || env.sim.hits(&key) > before).await;
    key
}

/// Silently (no event) changes a job's run status.
fn quietly(env: &Env, key: &JobKey, status: &str) {
    env.sim.emit_events(None);
    env.sim.set_status(key, status);
}

/// The control event: a new job fails and only its event says so; returns once its
/// message has arrived. A message something earlier would have caused is there by
/// then: earlier events were read and answered first.
async fn control(env: &Env) -> JobKey {
    let key = running_job(env, "control").await;
    quietly(env, &key, "FAILED");
    env.sim
        .sqs()
        .send(QUEUE, &run_event(&key, "RUNNING", "FAILED"));
    wait_until(T, "the control announced", || {
        !announced(env, &key).is_empty()
    })
    .await;
    key
}

async fn relaxed(env: &Env) -> bool {
    env.metric("deadline_notifier_event_polling_relaxed", &[])
        .await
        == 1.0
}

async fn wait_relaxed(env: &Env, want: bool) {
    wait_for(T, "the polling mode to change", || async {
        let now = relaxed(env).await;
        if now == want { Ok(()) } else { Err(now) }
    })
    .await
}

/// With polling every 10 minutes, a failure reaches chat from its event alone: 100
/// jobs fail, each announced once, and the latency from the event entering the
/// queue to the sink is printed (p50, p99, max).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_reaches_chat_from_its_event_with_polling_at_ten_minutes() {
    let mut env = Env::new().await;
    configure(&env, "10m", "", "[triage]\nenabled = false");
    let _svc = env.start().await;
    let mut keys = Vec::new();
    for i in 0..100 {
        keys.push(running_job(&env, &format!("shot_{i:03}")).await);
    }
    env.sim.emit_events(Some(QUEUE));
    let mut sent = Vec::new();
    for key in &keys {
        sent.push(deadline_notifier::clock::monotonic());
        env.sim.set_status(key, "FAILED");
        // One event at a time, as a farm's failures arrive.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until(T, "every failure announced", || {
        keys.iter().all(|k| !announced(&env, k).is_empty())
    })
    .await;
    let mut latency: Vec<Duration> = keys
        .iter()
        .zip(&sent)
        .map(|(k, at)| {
            let r = env
                .delivered_for(k)
                .into_iter()
                .find(|r| r.path == "/webhook/lighting")
                .unwrap();
            r.at.unwrap().saturating_duration_since(*at)
        })
        .collect();
    latency.sort();
    println!(
        "event → sink over {} jobs: p50 {:?}, p99 {:?}, max {:?}; BatchGetJob calls {}",
        latency.len(),
        latency[latency.len() / 2],
        latency[latency.len() * 99 / 100],
        latency[latency.len() - 1],
        env.sim.stats().batch_get_job
    );
    for k in &keys {
        assert_eq!(announced(&env, k), ["job.failed"], "{k}");
    }
    let sqs = env.sim.sqs().stats();
    assert_eq!(sqs.waiting, 0, "every message deleted: {sqs:?}");
    assert!(
        env.metric(
            "deadline_notifier_events_total",
            &["outcome=\"transition\""]
        )
        .await
            >= 100.0
    );
}

/// Duplicated and reordered events make one notification per transition; a
/// dropped event is found by the backstop poll, and counted as found by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_reorders_and_drops_make_exactly_one_notification_each() {
    let mut env = Env::new().await;
    configure(
        &env,
        "10m",
        "backstop_interval = \"2s\"\nrelax_after = \"1s\"",
        "",
    );
    let _svc = env.start().await;
    let dup = running_job(&env, "duplicated").await;
    let late = running_job(&env, "reordered").await;
    let dropped = running_job(&env, "dropped").await;
    wait_relaxed(&env, true).await;
    let q = env.sim.sqs();
    // Duplicated: the same transition's event three times.
    quietly(&env, &dup, "SUCCEEDED");
    let e = run_event(&dup, "RUNNING", "SUCCEEDED");
    for _ in 0..3 {
        q.send(QUEUE, &e);
    }
    // Reordered: SUCCEEDED arrives before the RUNNING that preceded it.
    quietly(&env, &late, "SUCCEEDED");
    q.send(QUEUE, &run_event(&late, "RUNNING", "SUCCEEDED"));
    q.send(QUEUE, &run_event(&late, "READY", "RUNNING"));
    // Dropped: the job fails and no event says so.
    quietly(&env, &dropped, "FAILED");
    wait_until(T, "all three announced", || {
        [&dup, &late, &dropped]
            .iter()
            .all(|k| !announced(&env, k).is_empty())
    })
    .await;
    wait_until(T, "every message deleted", || q.stats().waiting == 0).await;
    control(&env).await;
    assert_eq!(announced(&env, &dup), ["job.succeeded"]);
    assert_eq!(announced(&env, &late), ["job.succeeded"]);
    assert_eq!(announced(&env, &dropped), ["job.failed"]);
    assert!(
        env.metric("deadline_notifier_transitions_found_by_polling_total", &[])
            .await
            >= 1.0,
        "the dropped event's transition counts as found by polling"
    );
}

/// SIGKILL after the message is received and before what it caused is committed:
/// the message comes back after its visibility timeout and the transition is
/// announced exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_receive_and_commit_is_notified_exactly_once() {
    let mut env = Env::new().await;
    configure(&env, "10m", "visibility_timeout = \"5s\"", "");
    let mut svc = env.start().await;
    let key = running_job(&env, "killed mid-read").await;
    let before = env.sim.stats().batch_get_job;
    // The read the event causes hangs, so the service dies with it in flight.
    env.sim
        .set_faults(deadline_notifier::devkit::simulator::Faults {
            latency_ms: 30_000,
            ..Default::default()
        });
    quietly(&env, &key, "FAILED");
    env.sim
        .sqs()
        .send(QUEUE, &run_event(&key, "RUNNING", "FAILED"));
    wait_until(T, "the event received and its read under way", || {
        env.sim.sqs().stats().in_flight == 1 && env.sim.stats().batch_get_job > before
    })
    .await;
    svc.kill();
    env.sim.set_faults(Default::default());
    assert!(announced(&env, &key).is_empty());
    let _svc = env.start().await;
    wait_until(T, "the message back and its transition announced", || {
        !announced(&env, &key).is_empty()
    })
    .await;
    wait_until(T, "the message deleted", || {
        env.sim.sqs().stats().waiting == 0
    })
    .await;
    control(&env).await;
    assert_eq!(announced(&env, &key), ["job.failed"]);
    assert!(env.sim.sqs().stats().delivered >= 2, "received twice");
}

/// Polling every second, a backstop of an hour: relaxed with one running job, then
/// `fault` on the queue. Returns once polling has tightened and found the failure
/// that no event announced.
async fn tightened_by(env: &mut Env, fault: SqsFault) -> (Service, JobKey) {
    configure(
        env,
        "1s",
        "backstop_interval = \"1h\"\nrelax_after = \"2s\"",
        "",
    );
    let svc = env.start().await;
    let key = running_job(env, "while the queue fails").await;
    wait_relaxed(env, true).await;
    env.sim.sqs().set_fault(fault);
    wait_relaxed(env, false).await;
    quietly(env, &key, "FAILED");
    wait_until(T, "polling to find the failure", || {
        !announced(env, &key).is_empty()
    })
    .await;
    (svc, key)
}

/// The fault lifted: polling relaxes again, and `/readyz` says so.
async fn relaxed_again(env: &Env, key: &JobKey) {
    env.sim.sqs().set_fault(SqsFault::None);
    wait_relaxed(env, true).await;
    wait_for(T, "/readyz to say polling relaxed", || async {
        let v: Value = reqwest::get(format!("{}/readyz", env.api()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["polling"] == json!("relaxed") {
            Ok(())
        } else {
            Err(v)
        }
    })
    .await;
    assert_eq!(announced(env, key), ["job.failed"]);
}

/// A queue that denies receives tightens polling at once; the transition no event
/// announces is found by polling; receives that work again relax it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_queue_tightens_polling_and_nothing_is_missed() {
    let mut env = Env::new().await;
    let (_svc, key) = tightened_by(&mut env, SqsFault::Deny).await;
    assert_eq!(
        env.metric("deadline_notifier_event_queue_healthy", &[])
            .await,
        0.0
    );
    let ready = reqwest::get(format!("{}/readyz", env.api())).await.unwrap();
    assert_eq!(ready.status(), 200, "polling covers for the queue");
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["polling"], json!("tight"), "{body}");
    relaxed_again(&env, &key).await;
    assert!(
        env.metric("deadline_notifier_event_receive_errors_total", &[])
            .await
            >= 1.0
    );
}

/// A queue that stops answering (no error, no answer) tightens polling once no
/// receive has succeeded for twice the wait; answers again relax it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_queue_tightens_polling_too() {
    let mut env = Env::new().await;
    let (_svc, key) = tightened_by(&mut env, SqsFault::Hang).await;
    relaxed_again(&env, &key).await;
}

/// A job created in a watched queue is subscribed from its CREATE_COMPLETE event,
/// before discovery's next pass (no SearchJobs call in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_event_in_a_watched_queue_subscribes_the_job_at_once() {
    let mut env = Env::new().await;
    configure(&env, "10m", "", "");
    let farm = format!("farm-{:032x}", 0xfa_u64);
    let queue = format!("queue-{:032x}", 0x9e_u64);
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replacen("[deadline]\n", "[deadline]\ndiscovery_interval = \"1h\"\n", 1)
        .replacen(
            "[[teams]]\nname = \"fx\"",
            &format!(
                "[[teams.watches]]\nname = \"everything\"\nfarm_id = \"{farm}\"\nqueue_ids = [\"{queue}\"]\n\n[[teams]]\nname = \"fx\""
            ),
            1,
        );
    std::fs::write(env.config_path(), text).unwrap();
    let _svc = env.start().await;
    // Discovery's first pass at start-up, then nothing for an hour.
    wait_until(T, "the first discovery pass", || {
        env.sim.stats().search_jobs >= 1
    })
    .await;
    let searches = env.sim.stats().search_jobs;
    env.sim.emit_events(Some(QUEUE));
    let sent = deadline_notifier::clock::monotonic();
    let key = env.add_job("new shot");
    let waited = wait_for(T, "the new job subscribed", || async {
        let subs = env.get_json("/v1/subscriptions", LIGHTING).await;
        let found = subs["subscriptions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["jobId"] == json!(key.job_id.as_str()));
        if found { Ok(sent.elapsed()) } else { Err(subs) }
    })
    .await;
    println!("CREATE_COMPLETE event → subscribed in {waited:?}");
    assert_eq!(env.sim.stats().search_jobs, searches, "no SearchJobs call");
    // The job's later failure comes by its own event.
    env.sim.set_status(&key, "FAILED");
    wait_until(T, "the failure announced", || {
        !announced(&env, &key).is_empty()
    })
    .await;
}

/// Bodies that are not Deadline Cloud events are deleted and counted, and nothing
/// else happens: no read, no message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_bodies_are_deleted_and_counted() {
    let mut env = Env::new().await;
    configure(&env, "10m", "", "");
    let _svc = env.start().await;
    let key = running_job(&env, "bystander").await;
    let reads = env.sim.stats().batch_get_job;
    let q = env.sim.sqs();
    q.send(QUEUE, "not json at all <!channel>");
    q.send(QUEUE, &"{".repeat(256 * 1024));
    let stranger = JobKey::parse(
        &format!("farm-{:032x}", 0xbad_u64),
        &format!("queue-{:032x}", 0xbad_u64),
        &format!("job-{:032x}", 0xbad_u64),
    )
    .unwrap();
    q.send(QUEUE, &run_event(&stranger, "RUNNING", "FAILED"));
    q.send(
        QUEUE,
        &envelope("Job Exploded", json!({"farmId": "farm-1"})),
    );
    wait_until(T, "all four deleted", || q.stats().deleted == 4).await;
    let count = |outcome: &'static str| {
        let env = &env;
        async move {
            env.metric(
                "deadline_notifier_events_total",
                &[&format!("outcome=\"{outcome}\"")],
            )
            .await
        }
    };
    assert_eq!(count("malformed").await, 2.0);
    assert_eq!(count("nothing").await, 1.0);
    assert_eq!(count("unknown").await, 1.0);
    // Control: an event for the subscribed job is read and announced.
    quietly(&env, &key, "FAILED");
    q.send(QUEUE, &run_event(&key, "RUNNING", "FAILED"));
    wait_until(T, "the control announced", || {
        !announced(&env, &key).is_empty()
    })
    .await;
    assert_eq!(
        env.sim.stats().batch_get_job,
        reads + 1,
        "only the control was read"
    );
    assert!(env.sink.delivered().iter().all(|r| !r.raw.contains("bad")));
}

/// A budget crossing a threshold reaches only the channels that list
/// `budget.threshold`, once however often the event repeats (a restart between
/// repeats included), with its hostile name inert in Slack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_threshold_reaches_the_channels_that_list_it_once() {
    let mut env = Env::new().await;
    let sink = env.sink_addr;
    configure(
        &env,
        "10m",
        "",
        &format!(
            r#"
[[teams]]
name = "producers"
tokens = ["producers-token-0123456789abcdef"]
[[teams.channels]]
name = "budget-hook"
kind = "webhook"
url = "http://{sink}/webhook/budget"
events = ["budget.threshold"]
[[teams.channels]]
name = "budget-slack"
kind = "slack"
url = "http://{sink}/slack/budget"
events = ["budget.threshold", "job.failed"]
"#
        ),
    );
    // `[[teams]]` after `[events]` would still be read as part of it in TOML: move
    // the events table to the end.
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let (head, rest) = text.split_once("\n[events]\n").unwrap();
    let (events, teams) = rest.split_once("\n[[teams]]").unwrap();
    std::fs::write(
        env.config_path(),
        format!("{head}\n[[teams]]{teams}\n[events]\n{events}\n"),
    )
    .unwrap();
    let farm = format!("farm-{:032x}", 0xfa_u64);
    let budget = format!("budget-{:032x}", 0xb0_u64);
    env.sim.add_budget(
        &farm,
        &budget,
        "Ep104 <!channel> <https://evil.example|click> & co",
        25_000.0,
        20_137.5,
    );
    let mut svc = env.start().await;
    let event = envelope(
        "Budget Threshold Reached",
        json!({"farmId": farm, "budgetId": budget, "thresholdInPercent": 80}),
    );
    // The same event delivered three times (SQS is at-least-once).
    for _ in 0..3 {
        env.sim.sqs().send(QUEUE, &event);
    }
    wait_until(T, "the budget notices", || {
        env.sink
            .delivered()
            .iter()
            .filter(|r| r.path.ends_with("/budget"))
            .count()
            >= 2
    })
    .await;
    wait_until(T, "every message deleted", || {
        env.sim.sqs().stats().waiting == 0
    })
    .await;
    control(&env).await;
    let all = env.sink.delivered();
    let hook: Vec<_> = all.iter().filter(|r| r.path == "/webhook/budget").collect();
    let slack: Vec<_> = all.iter().filter(|r| r.path == "/slack/budget").collect();
    assert_eq!((hook.len(), slack.len()), (1, 1), "once per channel");
    let data = &hook[0].body["data"];
    assert_eq!(hook[0].body["type"], json!("budget.threshold"));
    assert_eq!(data["budgetId"], json!(budget));
    assert_eq!(data["thresholdPercent"], json!(80.0));
    assert_eq!(data["approximateDollarUsage"], json!(20137.5));
    assert!(
        hook[0].headers.contains_key("webhook-signature")
            || hook[0].headers.contains_key("webhook-id")
    );
    let text = slack[0].body.to_string();
    assert!(
        text.contains("passed 80%") && text.contains("20,137.50"),
        "{text}"
    );
    for t in [
        &slack[0].body["text"],
        &slack[0].body["blocks"][1]["text"]["text"],
    ] {
        let t = t.as_str().unwrap_or_default();
        assert!(!t.contains('<') && !t.contains('>'), "inert: {t}");
    }
    // No other channel lists it: nothing about the budget anywhere else.
    assert!(
        all.iter()
            .filter(|r| !r.path.ends_with("/budget"))
            .all(|r| !r.raw.contains(&budget)),
        "never by default"
    );
    assert_eq!(
        env.metric(
            "deadline_notifier_events_total",
            &[
                "type=\"Budget Threshold Reached\"",
                "outcome=\"transition\""
            ]
        )
        .await,
        1.0
    );
    // The same event once more after a restart (as a crash between the commit and
    // the delete would bring it back): the service remembers nothing of it in
    // memory, and its notices were queued before, so nothing is sent. A clean stop,
    // so that the deliveries themselves are on disk and none is sent again.
    svc.terminate();
    let _svc = env.start().await;
    env.sim.sqs().send(QUEUE, &event);
    wait_until(T, "the repeat deleted", || {
        env.sim.sqs().stats().waiting == 0
    })
    .await;
    control(&env).await;
    let all = env.sink.delivered();
    assert_eq!(
        all.iter().filter(|r| r.path.ends_with("/budget")).count(),
        2,
        "still once per channel after a restart"
    );
    assert_eq!(
        env.metric(
            "deadline_notifier_events_total",
            &["type=\"Budget Threshold Reached\"", "outcome=\"nothing\""]
        )
        .await,
        1.0
    );
}

/// The CloudFormation rule sends only detail-types the service reads, and at least
/// the ones the service needs.
#[test]
fn the_deployed_rule_matches_what_the_service_reads() {
    use deadline_notifier::watch::hints;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/aws/events.yaml"),
    )
    .unwrap();
    let (_, after) = text.split_once("detail-type:\n").unwrap();
    let listed: Vec<&str> = after
        .lines()
        .map_while(|l| l.trim().strip_prefix("- "))
        .collect();
    for t in &listed {
        let body = envelope(t, json!({}));
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_ne!(
            hints::type_label(&parsed),
            "other",
            "{t} is not read by the service"
        );
    }
    for needed in [
        hints::JOB_LIFECYCLE,
        hints::JOB_RUN,
        hints::TASK_RUN,
        hints::BUDGET,
    ] {
        assert!(
            listed.contains(&needed),
            "the rule must send {needed}: {listed:?}"
        );
    }
    assert!(text.contains("aws:SourceArn") && text.contains("events.amazonaws.com"));
    for action in [
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "deadline:GetBudget",
    ] {
        assert!(text.contains(action), "{action}");
    }
}
