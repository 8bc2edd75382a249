//! Slack incoming webhook: Block Kit with an escaped text fallback. Untrusted text
//! sits in `plain_text` (header) or in `mrkdwn` with `&<>` escaped and `verbatim`.
use super::truncate;
use crate::render::Rendered;
use serde_json::{Value, json};

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
