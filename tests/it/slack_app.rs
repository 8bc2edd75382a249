//! The Slack app channel against a local fake of the Slack Web API: one living
//! message per job, its thread, the anchor across SIGKILLs, a deleted root, a
//! revoked token, pacing, owner DMs and hostile job names.
use crate::helpers::*;
use deadline_notifier::devkit::simulator::{JobSpec, Patch};
use deadline_notifier::devkit::slack::{FakeSlack, SlackMessage};
use deadline_notifier::domain::JobKey;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const CHANNEL: &str = "C0LIVE0001";
const TOKEN: &str = "xoxb-0001-test-token";
const ADMIN: &str = "admin-token-0123456789abcdef";

struct App {
    env: Env,
    slack: FakeSlack,
}

/// An environment whose team `lighting` has a `slack_app` channel `live`
/// (`extra` keys appended to it) and the `[[people]]` given.
async fn app(extra: &str, people: &str) -> App {
    let env = Env::new().await;
    let slack = FakeSlack::new(TOKEN);
    let (addr, _) = slack.serve(([127, 0, 0, 1], 0).into()).await.unwrap();
    let token_file = env.dir.path().join("slack-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let channel = format!(
        r#"[[teams.channels]]
name = "live"
kind = "slack_app"
token = {{ file = "{}" }}
channel = "{CHANNEL}"
api_url = "http://{addr}/api/"
{extra}
"#,
        token_file.display()
    );
    let text =
        text.replace(
            "[[teams]]\nname = \"fx\"",
            &format!("{channel}[[teams]]\nname = \"fx\""),
        )
        .replace(
            "[server]\n",
            &format!("[server]\nadmin_tokens = [\"{ADMIN}\"]\n"),
        ) + people;
    std::fs::write(env.config_path(), text).unwrap();
    App { env, slack }
}

impl App {
    /// Subscribes the job on `live`; returns the subscription's id.
    async fn subscribe(&self, job: &JobKey, events: &[&str]) -> String {
        let v = self
            .env
            .subscribe_job(job, json!({"channels": ["live"], "events": events}))
            .await;
        v["id"].as_str().unwrap_or_default().to_string()
    }

    /// Returns once everything the service committed is on disk: enabling a
    /// channel (here one already enabled) is synced before it answers. A SIGKILL
    /// after this is between two events, outside the window where a message that
    /// Slack accepted is not yet recorded.
    async fn synced(&self) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/channels/live/enable", self.env.api()))
            .bearer_auth(LIGHTING)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    /// Waits until the subscription's latest message on `live` is `event`, delivered
    /// (recorded in the store: a SIGKILL now cannot send it again).
    async fn delivered(&self, id: &str, event: &str) {
        let path = format!("/v1/subscriptions/{id}");
        wait_for(T, &format!("{event} recorded as delivered"), || {
            let path = path.clone();
            async move {
                let v = self.env.get_json(&path, LIGHTING).await;
                let n = v["notifications"]
                    .as_array()
                    .and_then(|n| n.iter().find(|n| n["channel"] == "live"))
                    .cloned()
                    .unwrap_or(Value::Null);
                if n["event"] == event && n["state"] == "delivered" {
                    Ok(())
                } else {
                    Err(n)
                }
            }
        })
        .await;
    }

    /// The living messages of `job` (roots name the job id), not deleted.
    fn roots(&self, job: &JobKey) -> Vec<SlackMessage> {
        self.slack
            .top_level(CHANNEL)
            .into_iter()
            .filter(|m| m.all_text().contains(job.job_id.as_str()))
            .collect()
    }

    fn root(&self, job: &JobKey) -> Option<SlackMessage> {
        self.roots(job).pop()
    }

    fn replies(&self, job: &JobKey) -> Vec<SlackMessage> {
        self.root(job)
            .map(|r| self.slack.thread(&r.ts))
            .unwrap_or_default()
    }

    async fn wait_replies(&self, job: &JobKey, n: usize) {
        wait_until(T, &format!("{n} replies in the job's thread"), || {
            self.replies(job).len() >= n
        })
        .await;
    }

    fn posts_to_channel(&self) -> Vec<deadline_notifier::devkit::slack::SlackCall> {
        self.slack
            .calls()
            .into_iter()
            .filter(|c| c.method == "chat.postMessage" && c.body["channel"] == CHANNEL)
            .collect()
    }
}

fn counts(pairs: &[(&str, i64)]) -> std::collections::BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn set(env: &Env, job: &JobKey, status: &str, c: &[(&str, i64)]) {
    env.sim.patch(
        job,
        &Patch {
            task_run_status: Some(status.into()),
            task_run_status_counts: Some(counts(c)),
            ..Default::default()
        },
    );
}

const STORY: &[&str] = &[
    "job.started",
    "job.tasks_failed",
    "job.failed",
    "job.requeued",
    "job.succeeded",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_living_message_per_job_with_the_story_in_its_thread() {
    let mut a = app("", "").await;
    let svc = a.env.start().await;
    let job = a.env.add_job("shot_030 lighting");
    let id = a.subscribe(&job, STORY).await;
    a.env.observed(&job, 2).await;
    set(&a.env, &job, "RUNNING", &[("RUNNING", 4), ("READY", 6)]);
    wait_until(T, "the root message", || a.root(&job).is_some()).await;
    set(
        &a.env,
        &job,
        "RUNNING",
        &[("RUNNING", 4), ("FAILED", 2), ("READY", 4)],
    );
    a.wait_replies(&job, 1).await;
    set(&a.env, &job, "FAILED", &[("SUCCEEDED", 8), ("FAILED", 2)]);
    a.wait_replies(&job, 2).await;
    set(&a.env, &job, "READY", &[("SUCCEEDED", 8), ("READY", 2)]);
    a.wait_replies(&job, 3).await;
    set(&a.env, &job, "SUCCEEDED", &[("SUCCEEDED", 10)]);
    a.wait_replies(&job, 4).await;
    wait_until(T, "the root to say SUCCEEDED", || {
        a.root(&job)
            .is_some_and(|r| r.all_text().contains("SUCCEEDED"))
    })
    .await;

    assert_eq!(a.roots(&job).len(), 1, "exactly one top-level message");
    let root = a.root(&job).unwrap();
    let text = root.all_text();
    assert!(
        text.contains("`██████████` 100%"),
        "a full progress bar: {text}"
    );
    assert!(text.contains("shot_030 lighting"), "{text}");
    let replies = a.replies(&job);
    let said: Vec<(String, bool)> = replies
        .iter()
        .map(|r| (r.text.clone(), r.broadcast))
        .collect();
    assert_eq!(replies.len(), 4, "{said:?}");
    for (reply, (words, broadcast)) in replies.iter().zip([
        ("has failing tasks", true),
        ("failed", true),
        ("was requeued", false),
        ("succeeded", false),
    ]) {
        assert!(reply.text.contains(words), "{words}: {said:?}");
        assert_eq!(reply.broadcast, broadcast, "{words}: {said:?}");
    }
    // The root was edited in place for every later event (edits may coalesce).
    assert!(root.edits >= 1, "{root:?}");
    // The page's "one message in #live" links to it (workspace URL from auth.test).
    let sub = a
        .env
        .get_json(&format!("/v1/subscriptions/{id}"), LIGHTING)
        .await;
    assert_eq!(
        sub["livingMessages"],
        json!([{
            "channel": "live",
            "url": format!("https://studio.slack.com/archives/{CHANNEL}/p{}", root.ts.replace('.', "")),
            "postedAt": sub["livingMessages"][0]["postedAt"],
        }])
    );
    let auth_tests = a
        .slack
        .calls()
        .iter()
        .filter(|c| c.method == "auth.test")
        .count();
    assert_eq!(auth_tests, 1, "auth.test once per token");
    // The window in which a SIGKILL would post the root twice: Slack's answer to
    // the root post → the anchor on disk (printed for the README, not asserted).
    let log = svc.log_text();
    let window: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("anchor kept"))
        .filter_map(|l| l.split("anchor_us").nth(1))
        .map(|rest| {
            rest.trim_start_matches(['"', ':', '='])
                .split([',', ' ', '}'])
                .next()
                .unwrap_or("")
        })
        .collect();
    println!("root post answered → anchor durable: {window:?} µs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_root_is_posted_again_and_the_story_continues_there() {
    let mut a = app("", "").await;
    let _svc = a.env.start().await;
    let job = a.env.add_job("shot_040 fx");
    a.subscribe(&job, STORY).await;
    a.env.observed(&job, 2).await;
    set(&a.env, &job, "RUNNING", &[("RUNNING", 10)]);
    wait_until(T, "the root message", || a.root(&job).is_some()).await;
    let first = a.root(&job).unwrap();
    a.slack.delete(&first.ts);
    set(&a.env, &job, "SUCCEEDED", &[("SUCCEEDED", 10)]);
    wait_until(T, "a new root that says SUCCEEDED", || {
        a.root(&job)
            .is_some_and(|r| r.ts != first.ts && r.all_text().contains("SUCCEEDED"))
    })
    .await;
    a.wait_replies(&job, 1).await;
    assert_eq!(a.roots(&job).len(), 1);
    assert!(a.replies(&job)[0].text.contains("succeeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_blocks_are_sent_again_as_plain_text() {
    let mut a = app("", "").await;
    let _svc = a.env.start().await;
    let job = a.env.add_job("shot_045 long");
    a.subscribe(&job, STORY).await;
    a.env.observed(&job, 2).await;
    a.slack.script(
        "chat.postMessage",
        [(200, json!({"ok": false, "error": "msg_too_long"}), None)],
    );
    set(&a.env, &job, "RUNNING", &[("RUNNING", 10)]);
    // Without blocks the root is its text alone (the job's name, not its id).
    let root = || {
        a.slack
            .top_level(CHANNEL)
            .into_iter()
            .find(|m| m.text.contains("shot_045 long"))
    };
    wait_until(T, "the root message", || root().is_some()).await;
    let root = root().unwrap();
    assert!(root.blocks.is_null(), "sent again without blocks: {root:?}");
    assert!(root.text.contains("shot_045 long"), "{root:?}");
    let posts = a.posts_to_channel();
    assert_eq!(posts.len(), 2);
    assert!(!posts[0].body["blocks"].is_null() && posts[1].body["blocks"].is_null());
}

async fn channels(env: &Env) -> Value {
    env.get_json("/v1/channels", LIGHTING).await
}

fn live(v: &Value) -> Value {
    v["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "live"))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_disables_the_channel_and_its_messages_wait_for_it() {
    let mut a = app("", "").await;
    let _svc = a.env.start().await;
    let job = a.env.add_job("shot_050 comp");
    a.subscribe(&job, STORY).await;
    a.env.observed(&job, 2).await;
    set(&a.env, &job, "RUNNING", &[("RUNNING", 10)]);
    wait_until(T, "the root message", || a.root(&job).is_some()).await;

    a.slack.set_token("xoxb-0002-rotated-token");
    set(&a.env, &job, "SUCCEEDED", &[("SUCCEEDED", 10)]);
    wait_for(T, "the channel disabled with token_revoked", || {
        let env = &a.env;
        async move {
            let c = live(&channels(env).await);
            if c["disabledReason"] == "token_revoked" {
                Ok(c)
            } else {
                Err(c)
            }
        }
    })
    .await;
    // Nothing is retried in a loop: the control is ten more reads of the job,
    // after which the number of calls is unchanged.
    let calls = a.slack.calls().len();
    a.env.observed(&job, 10).await;
    assert_eq!(a.slack.calls().len(), calls, "calls went on while disabled");
    assert_eq!(live(&channels(&a.env).await)["disabled"], true);

    // A person replaces the token and enables the channel: the message goes.
    std::fs::write(
        a.env.dir.path().join("slack-token"),
        "xoxb-0002-rotated-token",
    )
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/-/reload", a.env.api()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/channels/live/enable", a.env.api()))
        .bearer_auth(LIGHTING)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    a.wait_replies(&job, 1).await;
    wait_until(T, "the root to say SUCCEEDED", || {
        a.root(&job)
            .is_some_and(|r| r.all_text().contains("SUCCEEDED"))
    })
    .await;
    assert!(a.replies(&job)[0].text.contains("succeeded"));
    assert_eq!(live(&channels(&a.env).await)["disabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_for_every_call_to_the_channel() {
    let mut a = app("", "").await;
    let _svc = a.env.start().await;
    let job = a.env.add_job("shot_060 anim");
    a.subscribe(&job, STORY).await;
    a.env.observed(&job, 2).await;
    a.slack.script(
        "chat.postMessage",
        [(429, json!({"ok": false, "error": "ratelimited"}), Some(3))],
    );
    set(&a.env, &job, "RUNNING", &[("RUNNING", 10)]);
    wait_until(T, "the root message", || a.root(&job).is_some()).await;
    let posts = a.posts_to_channel();
    assert_eq!(posts.len(), 2, "one refused, one accepted: {posts:?}");
    assert!(!posts[0].ok && posts[1].ok);
    // Both arrival times are the fake's own clock.
    let gap = posts[1].at.unwrap() - posts[0].at.unwrap();
    assert!(
        gap >= Duration::from_millis(2900),
        "Retry-After: 3 but the next call came after {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_studio_minute_one_post_a_second_and_every_root_final() {
    let mut a = app("", "").await;
    let _svc = a.env.start().await;
    let jobs: Vec<JobKey> = (0..100)
        .map(|i| {
            a.env.sim.add_job(JobSpec {
                name: format!("batch {i:03}"),
                task_run_status: Some("RUNNING".into()),
                task_run_status_counts: Some(counts(&[("RUNNING", 10)])),
                ..Default::default()
            })
        })
        .collect();
    for j in &jobs {
        a.subscribe(j, &["job.succeeded"]).await;
    }
    a.env.observed_all(&jobs, 2).await;
    let t0 = deadline_notifier::clock::tokio_monotonic();
    for (i, j) in jobs.iter().enumerate() {
        set(&a.env, j, "SUCCEEDED", &[("SUCCEEDED", 10)]);
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
    }
    wait_until(Duration::from_secs(300), "every job's root final", || {
        jobs.iter().all(|j| {
            let r = a.roots(j);
            r.len() == 1 && r[0].all_text().contains("SUCCEEDED")
        })
    })
    .await;
    let took = t0.elapsed();
    let posts = a.posts_to_channel();
    // At most one a second: any k posts span at least k - 1 seconds, less what a
    // busy machine may add to one arrival (the fake's own clock; 600 ms of slack).
    let at: Vec<std::time::Instant> = posts.iter().map(|p| p.at.unwrap()).collect();
    for i in 0..at.len() {
        for j in i + 1..at.len() {
            let span = at[j] - at[i];
            let floor =
                Duration::from_secs((j - i) as u64).saturating_sub(Duration::from_millis(600));
            assert!(span >= floor, "posts {i}..{j} within {span:?}");
        }
    }
    for j in &jobs {
        assert_eq!(a.roots(j).len(), 1, "{j}");
    }
    println!(
        "100 jobs finishing within 10 s: {} posts to the channel, last root final after {took:?}",
        posts.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_reach_the_owner_directly() {
    let people = r#"
[[people]]
deadline = ["jane"]
slack = "UJANE0001"
name = "Jane Doe"
[[people]]
deadline = ["jmail"]
email = "jane.mail@studio.com"
name = "Jane Mail"
"#;
    let mut a = app("dm_owner = [\"job.failed\"]", people).await;
    a.slack.add_member("jane.mail@studio.com", "UMAIL0001");
    let _svc = a.env.start().await;
    let mk = |name: &str, by: &str| {
        a.env.sim.add_job(JobSpec {
            name: name.into(),
            created_by: Some(by.into()),
            task_run_status: Some("RUNNING".into()),
            task_run_status_counts: Some(counts(&[("RUNNING", 10)])),
            ..Default::default()
        })
    };
    let jane = mk("jane's job", "jane");
    let mails: Vec<_> = (0..5)
        .map(|i| mk(&format!("mail job {i}"), "jmail"))
        .collect();
    let bob = mk("bob's job", "bob");
    let all: Vec<_> = [jane.clone(), bob.clone()]
        .into_iter()
        .chain(mails.iter().cloned())
        .collect();
    for j in &all {
        a.subscribe(j, &["job.failed"]).await;
    }
    a.env.observed_all(&all, 2).await;
    for j in &all {
        set(&a.env, j, "FAILED", &[("FAILED", 10)]);
    }
    let dms = |id: &str| {
        a.slack
            .messages()
            .into_iter()
            .filter(|m| m.channel == id)
            .count()
    };
    wait_until(T, "jane's and the five e-mail DMs", || {
        dms("UJANE0001") >= 1 && dms("UMAIL0001") >= 5
    })
    .await;
    wait_until(T, "every job's root", || {
        all.iter().all(|j| a.root(j).is_some())
    })
    .await;
    let lookups = a
        .slack
        .calls()
        .iter()
        .filter(|c| c.method == "users.lookupByEmail")
        .count();
    assert_eq!(lookups, 1, "one lookup for five failures");
    assert_eq!(dms("UJANE0001"), 1);
    // bob maps to nobody: no DM to anyone else, and he is listed.
    let dm_channels: std::collections::BTreeSet<_> = a
        .slack
        .messages()
        .into_iter()
        .map(|m| m.channel)
        .filter(|c| c != CHANNEL)
        .collect();
    assert_eq!(
        dm_channels.into_iter().collect::<Vec<_>>(),
        ["UJANE0001", "UMAIL0001"]
    );
    let unmapped = a.env.get_json("/v1/people/unmapped", ADMIN).await;
    assert!(unmapped.to_string().contains("\"bob\""), "{unmapped}");
}

/// Every place Slack parses markup: `mrkdwn` texts and the fallback `text`.
fn parsed_texts(m: &SlackMessage) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if o.get("type") == Some(&json!("mrkdwn"))
                    && let Some(t) = o.get("text").and_then(Value::as_str)
                {
                    out.push(t.to_string());
                }
                o.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = vec![m.text.clone()];
    walk(&m.blocks, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_job_name_pings_nobody_and_links_nowhere() {
    let mut a = app("", "").await;
    let _svc = a.env.start().await;
    let hostile = "<!channel> <http://evil|x> <@U024BE7LH>";
    let job = a.env.add_job(hostile);
    a.subscribe(&job, STORY).await;
    a.env.observed(&job, 2).await;
    set(&a.env, &job, "RUNNING", &[("RUNNING", 10)]);
    wait_until(T, "the root message", || a.root(&job).is_some()).await;
    set(&a.env, &job, "FAILED", &[("FAILED", 10)]);
    a.wait_replies(&job, 1).await;
    set(&a.env, &job, "READY", &[("READY", 10)]);
    a.wait_replies(&job, 2).await;
    let msgs = a.slack.messages();
    assert!(msgs.len() >= 3);
    for m in &msgs {
        for t in parsed_texts(m) {
            assert!(
                !t.contains('<') && !t.contains('>'),
                "markup reached Slack: {t:?}"
            );
        }
        assert!(m.all_text().contains("&lt;!channel&gt;"), "{m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_events_never_posts_a_second_root() {
    let mut a = app("", "").await;
    let job = a.env.add_job("shot_070 crash");
    let mut svc = a.env.start().await;
    let id = a
        .subscribe(&job, &["job.started", "job.succeeded", "job.requeued"])
        .await;
    a.env.observed(&job, 2).await;
    set(&a.env, &job, "RUNNING", &[("RUNNING", 10)]);
    wait_until(T, "the root message", || a.root(&job).is_some()).await;
    a.delivered(&id, "job.started").await;
    a.synced().await;
    // Each run: SIGKILL once the last event is recorded, a fresh start, one event.
    let steps = [("SUCCEEDED", "job.succeeded"), ("READY", "job.requeued")];
    for run in 0..20 {
        let (status, event) = steps[run % 2];
        svc.kill();
        svc = a.env.start().await;
        set(&a.env, &job, status, &[(status, 10)]);
        a.wait_replies(&job, run + 1).await;
        a.delivered(&id, event).await;
        a.synced().await;
    }
    drop(svc);
    let all_roots: Vec<_> = a
        .slack
        .messages()
        .into_iter()
        .filter(|m| m.thread_ts.is_none() && m.all_text().contains(job.job_id.as_str()))
        .collect();
    assert_eq!(all_roots.len(), 1, "a root was posted twice");
    let replies: Vec<_> = a.replies(&job).into_iter().map(|r| r.text).collect();
    assert_eq!(
        replies.len(),
        20,
        "a reply was posted twice or lost: {replies:#?}"
    );
}
