//! Golden files: the exact payload of every default template (event × channel), so a
//! template change shows its diff in review. `UPDATE_GOLDEN=1 cargo test golden`
//! rewrites them.
use deadline_notifier::config::{ChannelKind, Config};
use deadline_notifier::domain::Event;
use deadline_notifier::render::{self, Renderer};
use std::path::PathBuf;

#[test]
fn default_templates_match_golden_files() {
    let text = r#"
[templates]
dir = "templates"
[deadline]
monitor_url = "https://monitor.example.com"
region = "us-west-2"
[delivery]
allow_private_targets = true
[[teams]]
name = "lighting"
tokens = ["lighting-token-0123456789"]
[[teams.channels]]
name = "slack"
kind = "slack"
url = "http://127.0.0.1:1/s"
[[teams.channels]]
name = "teams"
kind = "teams"
url = "http://127.0.0.1:1/t"
[[teams.channels]]
name = "webhook"
kind = "webhook"
url = "http://127.0.0.1:1/w"
[[teams.channels]]
name = "teams-card"
kind = "teams"
url = "http://127.0.0.1:1/c"
card_only = true
[[teams.channels]]
name = "slack_app"
kind = "slack_app"
token = "xoxb-golden-token"
channel = "C0GOLDEN01"
api_url = "http://127.0.0.1:1/api/"
dm_owner = ["job.failed"]
"#;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = Config::from_toml(text, &root.join("golden.toml")).unwrap();
    cfg.templates.dir = root.join("templates");
    let renderer = Renderer::load(&cfg, None).unwrap();
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    let mut mismatches = Vec::new();
    let mut n = 0;
    // Each kind's own channel, and a Teams channel with `card_only` (the bare card,
    // for a custom flow) in its own folder.
    let mut channels: Vec<(&str, &str)> = ChannelKind::all()
        .map(|k| (k.as_str(), k.as_str()))
        .collect();
    channels.push(("teams-card", "teams_card_only"));
    for (name, folder) in channels {
        let channel = cfg.teams[0].channel(name).unwrap();
        for event in Event::ALL {
            let (job, tr) = render::sample_job(event);
            let failure = deadline_notifier::domain::failure::EVENTS
                .contains(&event)
                .then(|| {
                    deadline_notifier::domain::failure::sample_failure(&job.key, renderer.monitor())
                });
            let payload = renderer
                .payload_with("lighting", channel, &job, &tr, failure.as_ref())
                .unwrap();
            let got = serde_json::to_string_pretty(&payload).unwrap() + "\n";
            let file = root
                .join("tests/golden")
                .join(folder)
                .join(format!("{}.json", event.as_str()));
            n += 1;
            if update {
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&file).unwrap_or_default();
            if want != got {
                mismatches.push(format!("{}:\n{got}", file.display()));
            }
        }
    }
    // A budget notice on every channel (its name holds markup, escaped per kind).
    let (crossed, facts) = render::sample_budget();
    for (name, folder) in [
        ("slack", "slack"),
        ("teams", "teams"),
        ("webhook", "webhook"),
        ("teams-card", "teams_card_only"),
        ("slack_app", "slack_app"),
    ] {
        let channel = cfg.teams[0].channel(name).unwrap();
        let payload = renderer
            .budget_payload("lighting", channel, &crossed, &facts)
            .unwrap();
        let got = serde_json::to_string_pretty(&payload).unwrap() + "\n";
        let file = root
            .join("tests/golden")
            .join(folder)
            .join("budget.threshold.json");
        n += 1;
        if update {
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if want != got {
            mismatches.push(format!("{}:\n{got}", file.display()));
        }
    }
    // A digest per kind that has one: three jobs held in quiet hours, one of which
    // went through several events.
    let held: Vec<_> = [
        ("shot_010 comp v3", Event::Started, 0),
        ("shot_020 light", Event::Succeeded, 1),
        ("shot_010 comp v3", Event::TasksFailed, 2),
        ("shot_010 comp v3", Event::Failed, 3),
        ("shot_030 fx", Event::Canceled, 4),
    ]
    .into_iter()
    .map(|(name, event, i)| {
        let (mut job, mut tr) = render::sample_job(event);
        job.name = name.into();
        job.key.job_id = format!("job-{:032x}", name.len()).into();
        tr.detected_at += chrono::Duration::minutes(i);
        let channel = cfg.teams[0].channel("webhook").unwrap();
        deadline_notifier::domain::OutboxEntry {
            seq: i as u64,
            webhook_id: format!("msg_{i}"),
            team: "lighting".into(),
            channel: "webhook".into(),
            kind: "webhook".into(),
            job: job.key.clone(),
            event,
            created_at: tr.detected_at,
            attempts: 0,
            next_attempt_at: tr.detected_at,
            last_error: None,
            payload: renderer.payload("lighting", channel, &job, &tr).unwrap(),
            triage_until: None,
            failure: None,
            snapshot: None,
            transition: None,
            held: true,
            brief: Some(renderer.brief(channel, &job, &tr)),
            digest_of: 0,
        }
    })
    .collect();
    for kind in ChannelKind::all().filter(|k| k.digest_template().is_some()) {
        let channel = cfg.teams[0].channel(kind.as_str()).unwrap();
        let pages = renderer.digest_pages("lighting", channel, &held).unwrap();
        assert_eq!(pages.len(), 1);
        let got = serde_json::to_string_pretty(&pages[0]).unwrap() + "\n";
        let file = root
            .join("tests/golden")
            .join(kind.as_str())
            .join("digest.json");
        n += 1;
        if update {
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        if std::fs::read_to_string(&file).unwrap_or_default() != got {
            mismatches.push(format!("{}:\n{got}", file.display()));
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 to accept):\n{}",
        mismatches.join("\n")
    );
    println!("{n} golden payloads checked");
}
