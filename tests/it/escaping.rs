//! Property tests: arbitrary hostile job text, through the default templates and a
//! team template that uses every field, never breaks a payload or its markup.
use deadline_notifier::config::{Channel, ChannelKind, Config};
use deadline_notifier::domain::secret::Secret;
use deadline_notifier::domain::{
    Event, JobKey, JobSnapshot, LifecycleStatus, ParameterValue, TaskRunStatus, Transition,
};

use deadline_notifier::render::Renderer;
use proptest::prelude::*;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};

const CASES: u32 = 2000;

const EVERY_FIELD: &str = r#"{{emoji}} {{name}} {{verb}} ({{event}} for {{team}}/{{channel}})
{{description}}
by {{createdBy}} / {{updatedBy}} at {{createdAt}} {{updatedAt}} {{startedAt}} {{endedAt}} {{detectedAt}}
{{previousTaskRunStatus}} → {{taskRunStatus}} target {{targetTaskRunStatus}}; {{previousLifecycleStatus}} → {{lifecycleStatus}}: {{lifecycleStatusMessage}}
{{#each parameters}}{{@key}}={{this}} {{/each}}
{{#each taskRunStatusCounts}}{{@key}}:{{this}} {{/each}}{{taskSummary}} of {{taskTotal}}, {{duration}} ({{durationSeconds}}s)
{{priority}} {{taskFailureRetryCount}} {{maxFailedTasksCount}} {{maxRetriesPerTask}} {{maxWorkerCount}} {{storageProfileId}} {{sourceJobId}}
{{farmId}} {{queueId}} {{jobId}} {{monitorUrl}}
"#;

fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<!channel>".to_string()),
        Just("<!here>".to_string()),
        Just("<!everyone>".to_string()),
        Just("<@U123>".to_string()),
        Just("<#C123>".to_string()),
        Just("<!subteam^S1>".to_string()),
        Just("<https://x|y>".to_string()),
        Just("@here @channel".to_string()),
        Just("{{name}} {{> p}} {{{x}}}".to_string()),
        Just("\\".to_string()),
        Just("\"'`".to_string()),
        Just("\n\r\t".to_string()),
        Just("\u{202e}\u{200f}\u{2066}".to_string()),
        Just("&amp; &lt; & ; &#x27;".to_string()),
        Just("*_~[]()#>-".to_string()),
        Just("<at>Jane</at>".to_string()),
        any::<char>().prop_map(|c| c.to_string()),
        "\\PC{0,12}",
        "[\\x00-\\x1f\\x7f]{1,4}",
    ];
    let small = proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat());
    prop_oneof![
        8 => small.clone(),
        1 => small.prop_map(|s| if s.is_empty() { "x".repeat(10_240) } else { s.repeat(10_240 / s.len() + 1) }),
    ]
}

fn renderers() -> (Renderer, Renderer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["slack", "teams", "webhook"] {
        let d = dir.path().join("lighting").join(kind);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("default.hbs"), EVERY_FIELD).unwrap();
    }
    let cfg = |templates: &std::path::Path| {
        let text = format!(
            r#"
[templates]
dir = "{}"
[deadline]
monitor_url = "https://monitor.example.com"
region = "us-west-2"
[delivery]
allow_private_targets = true
[[teams]]
name = "lighting"
tokens = ["lighting-token-0123456789"]
[[teams.channels]]
name = "s"
kind = "slack"
url = "http://127.0.0.1:1/s"
[[teams.channels]]
name = "t"
kind = "teams"
url = "http://127.0.0.1:1/t"
[[teams.channels]]
name = "w"
kind = "webhook"
url = "http://127.0.0.1:1/w"
"#,
            templates.display()
        );
        Config::from_toml(&text, std::path::Path::new("prop.toml")).unwrap()
    };
    let defaults = Renderer::load(&cfg(&dir.path().join("nothing-here")), None).unwrap();
    let custom = Renderer::load(&cfg(dir.path()), None).unwrap();
    (defaults, custom, dir)
}

fn job(name: &str, description: &str, created_by: &str, param: &str) -> JobSnapshot {
    let key = JobKey {
        farm_id: format!("farm-{}", "1".repeat(32)).into(),
        queue_id: format!("queue-{}", "2".repeat(32)).into(),
        job_id: format!("job-{}", "3".repeat(32)).into(),
    };
    let mut j = JobSnapshot::sample(key, name);
    j.description = Some(description.to_string());
    j.created_by = created_by.to_string();
    j.lifecycle_status_message = description.to_string();
    j.parameters.insert(
        "Frames".into(),
        ParameterValue {
            kind: "string".into(),
            value: param.to_string(),
        },
    );
    j.parameters.insert(
        param.chars().take(20).collect(),
        ParameterValue {
            kind: "path".into(),
            value: param.to_string(),
        },
    );
    j.task_run_status = Some(TaskRunStatus::Failed);
    j.task_run_status_counts = [("FAILED".to_string(), 2), ("SUCCEEDED".to_string(), 598)].into();
    j.started_at = Some(j.created_at);
    j
}

/// Slack mrkdwn: no `<` or `>` at all, and `&` only as one of the three entities.
/// A channel of `kind` named `name`, with every option at its default.
fn channel(name: &str, kind: &str) -> Channel {
    Channel {
        name: name.into(),
        kind: ChannelKind::named(kind).unwrap(),
        url: Secret::new("https://x"),
        secret: None,
        events: None,
        mention_owner: vec![],
        card_only: false,
        app: None,
        defer: Default::default(),
    }
}

fn mrkdwn_is_inert(t: &str) -> bool {
    if t.contains('<') || t.contains('>') {
        return false;
    }
    let mut rest = t;
    while let Some(i) = rest.find('&') {
        let tail = &rest[i..];
        if !(tail.starts_with("&amp;") || tail.starts_with("&lt;") || tail.starts_with("&gt;")) {
            return false;
        }
        rest = &rest[i + 1..];
    }
    true
}

fn check_slack(v: &Value) -> Result<(), String> {
    let blocks = v["blocks"].as_array().ok_or("no blocks")?;
    if blocks.len() > 50 {
        return Err("more than 50 blocks".into());
    }
    let top = v["text"].as_str().ok_or("no fallback text")?;
    if !mrkdwn_is_inert(top) || top.chars().count() > 3000 {
        return Err(format!("fallback text: {top:?}"));
    }
    if v.get("link_names").is_some() || v.get("parse").is_some() {
        return Err("link_names/parse set".into());
    }
    for b in blocks {
        let Some(t) = b.get("text") else { continue };
        let s = t["text"].as_str().ok_or("text object without text")?;
        let n = s.chars().count();
        match t["type"].as_str() {
            Some("mrkdwn") => {
                if t["verbatim"] != true || !mrkdwn_is_inert(s) || n > 3000 || n == 0 {
                    return Err(format!("mrkdwn block: {s:?}"));
                }
            }
            Some("plain_text") => {
                let limit = if b["type"] == "header" { 150 } else { 3000 };
                if n > limit || n == 0 {
                    return Err(format!("plain_text of {n} chars"));
                }
            }
            other => return Err(format!("unexpected text type {other:?}")),
        }
    }
    Ok(())
}

fn check_teams(bytes: &[u8], v: &Value) -> Result<(), String> {
    if bytes.len() > 20_000 {
        return Err(format!("envelope of {} bytes", bytes.len()));
    }
    if v["type"] != "message"
        || v["attachments"][0]["contentType"] != "application/vnd.microsoft.card.adaptive"
    {
        return Err("bad envelope".into());
    }
    let content = &v["attachments"][0]["content"];
    if content.get("msteams").is_some() {
        return Err("mention entities present".into());
    }
    for b in content["body"].as_array().ok_or("no body")? {
        if b["type"] != "RichTextBlock" {
            return Err(format!("untrusted text in {}", b["type"]));
        }
        for i in b["inlines"].as_array().ok_or("no inlines")? {
            if i["type"] != "TextRun" {
                return Err("inline other than TextRun".into());
            }
        }
    }
    Ok(())
}

#[test]
fn hostile_text_never_breaks_a_payload() {
    let (defaults, custom, _dir) = renderers();
    let count = AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(
        &(hostile(), hostile(), hostile(), hostile()),
        |(name, description, created_by, param)| {
            let snap = job(&name, &description, &created_by, &param);
            let tr = Transition {
                event: Event::Failed,
                previous_task_run_status: Some(TaskRunStatus::Running),
                previous_lifecycle_status: LifecycleStatus::CreateComplete,
                detected_at: snap.created_at + chrono::Duration::seconds(90),
                milestone: None,
                stalled_since: None,
            };
            for r in [&defaults, &custom] {
                for (kind, ch) in [("slack", "s"), ("teams", "t"), ("webhook", "w")] {
                    let channel = channel(ch, kind);
                    let payload = r
                        .payload("lighting", &channel, &snap, &tr)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let bytes = serde_json::to_vec(&payload).unwrap();
                    let v: Value = serde_json::from_slice(&bytes)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let verdict = match kind {
                        "slack" => check_slack(&v),
                        "teams" => check_teams(&bytes, &v),
                        _ => {
                            if v["data"]["name"] != Value::String(name.clone()) {
                                Err("name altered".to_string())
                            } else if v["data"]["summary"]
                                .as_str()
                                .map_or(0, |s| s.chars().count())
                                > 4000
                            {
                                Err("summary too long".into())
                            } else {
                                Ok(())
                            }
                        }
                    };
                    prop_assert!(verdict.is_ok(), "{:?}: {:?}", kind, verdict);
                }
            }
            count.fetch_add(1, Ordering::Relaxed);
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    let n = count.load(Ordering::Relaxed);
    println!(
        "escaping property test: {n} cases per channel (slack, teams, webhook), each through 2 template sets"
    );
    assert!(n >= CASES as usize);
}

/// A line break in a job name must not move text into the body (a fake, bold
/// "Status" line in Slack, extra blocks in Teams); webhook data keeps the exact name.
#[test]
fn a_job_value_cannot_rearrange_the_message() {
    let (defaults, _custom, _dir) = renderers();
    let fake = "shot_010\n*Status:* SUCCEEDED\u{202e}gnp.exe";
    let tr = Transition {
        event: Event::Failed,
        previous_task_run_status: Some(TaskRunStatus::Running),
        previous_lifecycle_status: LifecycleStatus::CreateComplete,
        detected_at: deadline_notifier::clock::wall_now(),
        milestone: None,
        stalled_since: None,
    };
    let payload = |kind: &str, name: &str| {
        let channel = channel("c", kind);
        defaults
            .payload(
                "lighting",
                &channel,
                &job(name, "d", "arn:x/jane", "p"),
                &tr,
            )
            .unwrap()
    };
    let slack = payload("slack", fake);
    let text = slack.to_string();
    assert!(!text.contains("\\n*Status:* SUCCEEDED"), "{text}");
    assert!(!text.contains('\u{202e}'), "{text}");
    let header = slack["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(header.contains("shot_010 *Status:* SUCCEEDED"), "{header}");
    assert!(text.contains("failed"), "the verb stays: {text}");
    let blocks = |v: &Value| {
        v["attachments"][0]["content"]["body"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(
        blocks(&payload("teams", fake)),
        blocks(&payload("teams", "shot_010")),
        "no extra Teams blocks"
    );
    let hook = payload("webhook", fake);
    assert_eq!(
        hook["data"]["name"],
        Value::String(fake.into()),
        "exact in data"
    );
}

/// A digest of 300 jobs, some with hostile names, is paged so that every Slack page
/// passes the block checks above, every Teams page the envelope checks, every
/// webhook page stays under its limit; each job is on exactly one page.
#[test]
fn digests_page_within_the_limits_and_names_stay_inert() {
    use deadline_notifier::domain::{Brief, OutboxEntry};
    let (defaults, _custom, _dir) = renderers();
    let hostile = [
        "<!channel> <http://evil|x> <@U024BE7LH>",
        "shot_010\n*Status:* SUCCEEDED",
        "&amp; <at>Jane</at> {{{x}}}",
    ];
    let at = deadline_notifier::clock::wall_now();
    let held: Vec<OutboxEntry> = (0..300u32)
        .map(|i| {
            let name = if i % 10 == 0 {
                format!("{} {i:03}", hostile[(i / 10) as usize % 3])
            } else {
                format!("night render shot_{i:03} lighting pass v{}", i % 7)
            };
            OutboxEntry {
                seq: u64::from(i),
                webhook_id: format!("msg_{i}"),
                team: "lighting".into(),
                channel: "c".into(),
                kind: "webhook".into(),
                job: JobKey {
                    farm_id: "farm-1".into(),
                    queue_id: "queue-1".into(),
                    job_id: format!("job-{i:032x}").into(),
                },
                event: Event::Succeeded,
                created_at: at + chrono::Duration::seconds(i64::from(i)),
                attempts: 0,
                next_attempt_at: at,
                last_error: None,
                payload: serde_json::json!({"type": "job.succeeded", "data": {"name": name, "pad": "x".repeat(600)}}),
                triage_until: None,
                failure: None,
                snapshot: None,
                transition: None,
                held: true,
                brief: Some(Brief {
                    name,
                    status: "Succeeded".into(),
                    duration: Some("1h 2m 3s".into()),
                    owner: Some("Jane Doe".into()),
                    mention_slack: (i % 2 == 0).then(|| "U024BE7LH".to_string()),
                    link: Some(format!("https://monitor.example.com/jobs/{i}")),
                    ..Default::default()
                }),
                digest_of: 0,
            }
        })
        .collect();
    for kind in ["slack", "teams", "webhook"] {
        let channel = channel("c", kind);
        let pages = defaults.digest_pages("lighting", &channel, &held).unwrap();
        assert!(
            pages.len() > 1 || kind == "webhook",
            "{kind}: 300 jobs fit one page?"
        );
        let mut seen = 0;
        for p in &pages {
            let bytes = serde_json::to_vec(p).unwrap();
            let text = p.to_string();
            match kind {
                "slack" => {
                    check_slack(p).unwrap_or_else(|e| panic!("slack page: {e}"));
                    seen += text.matches("Succeeded · succeeded").count();
                }
                "teams" => {
                    check_teams(&bytes, p).unwrap_or_else(|e| panic!("teams page: {e}"));
                    seen += text.matches("Succeeded · succeeded").count();
                }
                _ => {
                    assert!(
                        bytes.len() <= 250_000,
                        "webhook page of {} bytes",
                        bytes.len()
                    );
                    assert_eq!(p["type"], "notifications.digest");
                    seen += p["data"]["items"].as_array().unwrap().len();
                }
            }
        }
        assert_eq!(
            seen,
            300,
            "{kind}: every job once across {} pages",
            pages.len()
        );
    }
}
