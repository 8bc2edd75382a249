//! Microsoft Teams Workflows webhook: an Adaptive Card (1.5) in a `message`
//! envelope. Untrusted text goes only into `RichTextBlock`/`TextRun`, which renders
//! no Markdown, so nothing in it can format, link or mention.
use super::truncate;
use crate::render::Rendered;
use serde_json::{Value, json};

/// Budget for the whole serialized envelope (Teams documents 28 KB; field reports fail earlier).
pub const ENVELOPE_LIMIT: usize = 20_000;

fn run(text: &str, title: bool) -> Value {
    if title {
        json!({"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": text, "weight": "Bolder", "size": "Medium"}]})
    } else {
        json!({"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": text}]})
    }
}

fn card(r: &Rendered, link: Option<&str>, budget: usize) -> Value {
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
    let mut content = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.5",
        "body": body,
    });
    if let Some(url) = link {
        content["actions"] = json!([{"type": "Action.OpenUrl", "title": "Open in Deadline Cloud monitor", "url": url}]);
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

pub fn payload(r: &Rendered, link: Option<&str>) -> Value {
    // Shrink the text budget until the serialized envelope fits, so that escaping
    // growth (JSON `\uXXXX`, multi-byte characters) is accounted for.
    let mut budget = 12_000usize;
    loop {
        let v = card(r, link, budget);
        let size = serde_json::to_vec(&v)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if size <= ENVELOPE_LIMIT || budget < 64 {
            return v;
        }
        budget /= 2;
    }
}
