//! Slack incoming webhook: Block Kit with an escaped text fallback. Untrusted text
//! sits in `plain_text` (header) or in `mrkdwn` with `&<>` escaped and `verbatim`.
use super::retry::{self, Verdict};
use super::{Answer, Kind, Message, Rendered, truncate};
use serde_json::{Value, json};
use std::time::Duration;

pub struct Slack;

impl Kind for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }
    fn default_hosts(&self) -> &'static [&'static str] {
        &["hooks.slack.com"]
    }
    /// Slack allows about one post per second per incoming webhook.
    fn default_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn default_template(&self) -> &'static str {
        include_str!("../../templates/default/slack/default.hbs")
    }
    fn escape(&self, s: &str) -> String {
        escape(s)
    }
    fn payload(&self, m: &Message) -> Value {
        let mut v = payload(m.rendered, m.link);
        if let Some(f) = m.failure {
            add_failure(&mut v, f);
        }
        // The only way a mention enters a message: a member ID from the people
        // directory (validated as `U`/`W` + [A-Z0-9]), in a block we build.
        if m.mention
            && let Some(id) = m.owner.and_then(|p| p.slack.as_deref())
            && let Some(blocks) = v["blocks"].as_array_mut()
        {
            let at = blocks
                .iter()
                .position(|b| b["type"] == "actions")
                .unwrap_or(blocks.len());
            blocks.insert(
                at,
                json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("<@{id}>")}}),
            );
        }
        v
    }
    fn digest_template(&self) -> Option<&'static str> {
        Some(include_str!("../../templates/default/slack/digest.hbs"))
    }
    fn digest_payload(&self, d: &super::Digest) -> (Value, bool) {
        digest(d)
    }
    fn notice_template(&self, event: crate::domain::Event) -> Option<&'static str> {
        (event == crate::domain::Event::BudgetThreshold).then_some(include_str!(
            "../../templates/default/slack/budget.threshold.hbs"
        ))
    }
    fn notice_payload(&self, n: &super::Notice) -> Value {
        payload(n.rendered, n.link)
    }
    fn classify(&self, a: &Answer, max_retry_after: Duration) -> Verdict {
        // Slack's Web API answers 200 with {"ok":false,...}; incoming webhooks answer "ok".
        if (200..300).contains(&a.status)
            && let Ok(v) = serde_json::from_str::<Value>(a.body)
            && v.get("ok") == Some(&Value::Bool(false))
        {
            return Verdict::DeadLetter {
                reason: retry::reason(a),
            };
        }
        // 401/403/404 from a chat webhook mean a revoked URL or an archived channel.
        retry::classify(a, true, max_retry_after)
    }
}

/// Slack mrkdwn: `&`, `<`, `>` are its control characters; `&` first. The value is
/// first folded to one line and cleaned by [`crate::domain::text::sanitize`].
pub fn escape(s: &str) -> String {
    let clean = crate::domain::text::sanitize(s);
    let mut out = String::with_capacity(clean.len());
    for c in clean.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Slack's per-text-object limit.
pub const TEXT_LIMIT: usize = 3000;
/// Header blocks take `plain_text` of at most 150 characters.
pub const HEADER_LIMIT: usize = 150;

pub fn payload(r: &Rendered, link: Option<&str>) -> Value {
    let mut blocks = Vec::new();
    if !r.title.is_empty() {
        blocks.push(json!({
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(&r.title, HEADER_LIMIT), "emoji": true}
        }));
    }
    if !r.body.trim().is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(&r.body, TEXT_LIMIT), "verbatim": true}
        }));
    }
    if let Some(url) = link {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": {"type": "plain_text", "text": "Open in Deadline Cloud monitor"},
                "url": url
            }]
        }));
    }
    let fallback = if r.fallback.is_empty() {
        "Deadline Cloud job update".to_string()
    } else {
        truncate(&r.fallback, TEXT_LIMIT)
    };
    json!({
        "text": fallback,
        "blocks": blocks,
        "unfurl_links": false,
        "unfurl_media": false
    })
}

/// Blocks a digest page may use at most (of Slack's 50), leaving room for the
/// header and the links.
const DIGEST_SECTIONS: usize = 45;

/// Characters of block text a digest page may hold at most.
const DIGEST_TEXT: usize = 12_000;

/// A digest page: the header, the rendered lines in `mrkdwn` sections (cut on line
/// boundaries, each within Slack's 3,000 characters), and a `rich_text` list that
/// links each job (its name a plain text element: never parsed) and mentions the
/// owners from the people directory.
fn digest(d: &super::Digest) -> (Value, bool) {
    let r = d.rendered;
    let mut sections: Vec<String> = Vec::new();
    let mut fits = true;
    for line in r.body.lines().filter(|l| !l.trim().is_empty()) {
        if line.chars().count() > TEXT_LIMIT {
            fits = false;
        }
        let line = truncate(line, TEXT_LIMIT);
        match sections.last_mut() {
            Some(cur) if cur.chars().count() + 1 + line.chars().count() <= TEXT_LIMIT => {
                cur.push('\n');
                cur.push_str(&line);
            }
            _ => sections.push(line),
        }
    }
    fits &= sections.len() <= DIGEST_SECTIONS;
    // Slack refuses messages well before 50 full sections (`msg_blocks_too_long`
    // is reported near 13,000 characters of block text): keep a page under that.
    let total: usize = sections.iter().map(|t| t.chars().count()).sum::<usize>()
        + d.jobs
            .iter()
            .map(|j| j.name.chars().count().min(200) + 8)
            .sum::<usize>();
    fits &= total <= DIGEST_TEXT;
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": truncate(&r.title, HEADER_LIMIT), "emoji": true}
    })];
    for t in sections {
        blocks.push(
            json!({"type": "section", "text": {"type": "mrkdwn", "text": t, "verbatim": true}}),
        );
    }
    let items: Vec<Value> = d
        .jobs
        .iter()
        .filter(|j| j.link.is_some() || j.mention_slack.is_some())
        .map(|j| {
            let mut el = vec![match &j.link {
                Some(url) => json!({"type": "link", "url": url, "text": truncate(&crate::domain::text::sanitize(&j.name), 200)}),
                None => json!({"type": "text", "text": truncate(&crate::domain::text::sanitize(&j.name), 200)}),
            }];
            if let Some(id) = &j.mention_slack {
                el.push(json!({"type": "text", "text": " · "}));
                el.push(json!({"type": "user", "user_id": id}));
            }
            json!({"type": "rich_text_section", "elements": el})
        })
        .collect();
    if !items.is_empty() {
        blocks.push(json!({"type": "rich_text", "elements": [
            {"type": "rich_text_list", "style": "bullet", "elements": items}
        ]}));
    }
    let fallback = if r.fallback.is_empty() {
        "Deadline Cloud digest".to_string()
    } else {
        truncate(&r.fallback, TEXT_LIMIT)
    };
    (
        json!({"text": fallback, "blocks": blocks, "unfurl_links": false, "unfurl_media": false}),
        fits,
    )
}

/// Slack's code block for a log tail: lines are text elements of a
/// `rich_text_preformatted` block, where nothing is parsed as markup or a mention.
fn add_failure(v: &mut Value, f: &crate::domain::Failure) {
    let Some(blocks) = v["blocks"].as_array_mut() else {
        return;
    };
    let at = blocks
        .iter()
        .position(|b| b["type"] == "actions")
        .unwrap_or(blocks.len());
    if let Some(t) = f.tasks.iter().find(|t| !t.log_tail.is_empty()) {
        let head = format!(
            "Last {} log lines of {} ({}):",
            t.log_tail.len(),
            crate::domain::text::sanitize(&t.label()),
            crate::domain::text::sanitize(&t.step_name)
        );
        let log = super::tail_within(&t.log_tail, TEXT_LIMIT - 100);
        blocks.insert(
            at,
            json!({"type": "rich_text", "elements": [
                {"type": "rich_text_section", "elements": [{"type": "text", "text": truncate(&head, 300), "style": {"bold": true}}]},
                {"type": "rich_text_preformatted", "elements": [{"type": "text", "text": log}]}
            ]}),
        );
    }
    if let Some(url) = f.tasks.first().and_then(|t| t.link.as_deref())
        && let Some(actions) = blocks
            .iter_mut()
            .find(|b| b["type"] == "actions")
            .and_then(|b| b["elements"].as_array_mut())
    {
        actions.push(json!({
            "type": "button",
            "text": {"type": "plain_text", "text": "Open failed task"},
            "url": url
        }));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escape_only_touches_control_chars() {
        assert_eq!(
            super::escape("<!channel> & \"q\" *b*\u{7}"),
            "&lt;!channel&gt; &amp; \"q\" *b*"
        );
    }
}
