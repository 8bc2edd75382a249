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
    assert!(
        mismatches.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 to accept):\n{}",
        mismatches.join("\n")
    );
    println!("{n} golden payloads checked");
}
