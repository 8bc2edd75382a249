//! Microsoft Teams Workflows webhook: an Adaptive Card (1.5) in a `message`
//! envelope. Untrusted text goes only into `RichTextBlock`/`TextRun`, which renders
//! no Markdown, so nothing in it can format, link or mention.
use super::retry::{self, Verdict};
use super::{Answer, Kind, Message, Rendered, truncate};
use serde_json::{Value, json};
use std::time::Duration;

pub struct Teams;

impl Kind for Teams {
    fn name(&self) -> &'static str {
        "teams"
    }
    fn default_hosts(&self) -> &'static [&'static str] {
        &[
            "*.logic.azure.com",
            "*.powerplatform.com",
            "*.powerautomate.com",
            "*.flow.microsoft.com",
        ]
    }
    /// Teams allows 4 posts per second per webhook.
    fn default_interval(&self) -> Duration {
        Duration::from_millis(250)
    }
    fn default_template(&self) -> &'static str {
        include_str!("../../templates/default/teams/default.hbs")
    }
    fn digest_template(&self) -> Option<&'static str> {
        Some(include_str!("../../templates/default/teams/digest.hbs"))
    }
    fn digest_payload(&self, d: &super::Digest) -> (Value, bool) {
        let (v, fits) = digest(d);
        if d.card_only {
            (bare_card(v), fits)
        } else {
            (v, fits)
        }
    }
    fn notice_template(&self, event: crate::domain::Event) -> Option<&'static str> {
        (event == crate::domain::Event::BudgetThreshold).then_some(include_str!(
            "../../templates/default/teams/budget.threshold.hbs"
        ))
    }
    fn notice_payload(&self, n: &super::Notice) -> Value {
        let v = payload(n.rendered, n.link);
        if n.card_only { bare_card(v) } else { v }
    }
    fn refuse_url(&self, url: &url::Url) -> Option<String> {
        match url.host() {
            Some(url::Host::Domain(d))
                if d.ends_with(".webhook.office.com") || d == "outlook.office.com" =>
            {
                Some(
                    "is a retired Office 365 connector URL; create a Teams Workflows webhook instead"
                        .into(),
                )
            }
            _ => None,
        }
    }
    fn payload(&self, m: &Message) -> Value {
        let mut v = payload_with(m.rendered, m.link, m.failure);
        // A mention entity from the people directory (name and id validated: no
        // markup); job text stays in TextRuns, which never mention anyone.
        if m.mention
            && let Some(p) = m.owner
            && let Some(id) = p.teams.as_deref()
        {
            let at = format!("<at>{}</at>", p.name);
            let content = &mut v["attachments"][0]["content"];
            if let Some(body) = content["body"].as_array_mut() {
                body.push(json!({"type": "TextBlock", "text": at, "wrap": true}));
            }
            content["msteams"] = json!({"entities": [{
                "type": "mention",
                "text": at,
                "mentioned": {"id": id, "name": p.name}
            }]});
        }
        if m.card_only {
            return bare_card(v);
        }
        v
    }
    /// Workflows answer 202; 401/403/404 mean the flow was deleted or its URL revoked.
    fn classify(&self, a: &Answer, max_retry_after: Duration) -> Verdict {
        retry::classify(a, true, max_retry_after)
    }
}

/// Budget for the whole serialized envelope (Teams documents 28 KB; field reports fail earlier).
pub const ENVELOPE_LIMIT: usize = 20_000;

fn run(text: &str, title: bool) -> Value {
    if title {
        json!({"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": text, "weight": "Bolder", "size": "Medium"}]})
    } else {
        json!({"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": text}]})
    }
}

/// A log tail as monospace TextRuns in a RichTextBlock: never a Markdown TextBlock,
/// so a log line cannot format, link or mention.
fn log_blocks(f: &crate::domain::Failure, budget: usize) -> Vec<Value> {
    let Some(t) = f.tasks.iter().find(|t| !t.log_tail.is_empty()) else {
        return Vec::new();
    };
    let head = format!(
        "Last {} log lines of {} ({}):",
        t.log_tail.len(),
        crate::domain::text::sanitize(&t.label()),
        crate::domain::text::sanitize(&t.step_name)
    );
    let log = super::tail_within(&t.log_tail, budget.min(4000));
    vec![
        json!({"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": truncate(&head, 300), "weight": "Bolder"}]}),
        json!({"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": log, "fontType": "Monospace", "size": "Small"}]}),
    ]
}

fn card(
    r: &Rendered,
    link: Option<&str>,
    failure: Option<&crate::domain::Failure>,
    budget: usize,
) -> Value {
    let mut body = vec![run(&truncate(&r.title, 500.min(budget)), true)];
    let mut left = budget;
    for line in r.body.lines().filter(|l| !l.trim().is_empty()) {
        if left == 0 {
            break;
        }
        let t = truncate(line, left);
        left = left.saturating_sub(t.chars().count());
        body.push(run(&t, false));
    }
    if let Some(f) = failure {
        body.extend(log_blocks(f, budget));
    }
    let mut content = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.5",
        "body": body,
    });
    let mut actions = Vec::new();
    if let Some(url) = link {
        actions.push(json!({"type": "Action.OpenUrl", "title": "Open in Deadline Cloud monitor", "url": url}));
    }
    if let Some(url) = failure
        .and_then(|f| f.tasks.first())
        .and_then(|t| t.link.as_deref())
    {
        actions.push(json!({"type": "Action.OpenUrl", "title": "Open failed task", "url": url}));
    }
    if !actions.is_empty() {
        content["actions"] = json!(actions);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": content
        }]
    })
}

/// A digest page: the rendered lines as TextRuns (nothing in them can format, link
/// or mention), within the envelope limit without cutting any line.
pub fn digest(d: &super::Digest) -> (Value, bool) {
    let whole = card(d.rendered, None, None, usize::MAX);
    let fits = serde_json::to_vec(&whole).is_ok_and(|b| b.len() <= ENVELOPE_LIMIT);
    (whole, fits)
}

/// The card inside a `message` envelope.
fn bare_card(mut envelope: Value) -> Value {
    envelope["attachments"][0]["content"].take()
}

pub fn payload(r: &Rendered, link: Option<&str>) -> Value {
    payload_with(r, link, None)
}

pub fn payload_with(
    r: &Rendered,
    link: Option<&str>,
    failure: Option<&crate::domain::Failure>,
) -> Value {
    // Shrink the text budget until the serialized envelope fits, so that escaping
    // growth (JSON `\uXXXX`, multi-byte characters) is accounted for.
    let mut budget = 12_000usize;
    loop {
        let v = card(r, link, failure, budget);
        let size = serde_json::to_vec(&v)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if size <= ENVELOPE_LIMIT || budget < 64 {
            return v;
        }
        budget /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_only_posts_the_card_the_envelope_carries() {
        let r = Rendered {
            title: "Job <b> succeeded".into(),
            body: "line one\nline two".into(),
            fallback: "Job <b> succeeded".into(),
            template: "t".into(),
        };
        let envelope = payload(&r, Some("https://monitor.example.com/j"));
        assert_eq!(envelope["type"], "message");
        let card = bare_card(envelope.clone());
        assert_eq!(card["type"], "AdaptiveCard");
        assert!(card.get("attachments").is_none());
        assert_eq!(card, envelope["attachments"][0]["content"]);
    }

    #[test]
    fn the_log_heading_is_one_clean_line() {
        let key = crate::domain::JobKey {
            farm_id: "f".into(),
            queue_id: "q".into(),
            job_id: "j".into(),
        };
        let mut f = crate::domain::failure::sample_failure(&key, None);
        f.tasks[0].step_name = "Ren\u{202e}der\nInjected line".into();
        f.tasks[0].parameters =
            [("Frame\u{2060}".to_string(), "10\r\n42\u{e0041}".to_string())].into();
        let blocks = log_blocks(&f, 4000);
        let head = blocks[0]["inlines"][0]["text"].as_str().unwrap();
        assert_eq!(
            head,
            "Last 4 log lines of Frame=10 42 (Render Injected line):"
        );
    }
}
