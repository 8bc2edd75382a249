//! Slack app (Web API, bot token): one living message per job. The first event of a
//! job posts a root message; later events edit it (`chat.update`) and reply in its
//! thread. What goes in the messages is decided here, as is what Slack's answers
//! mean; the calls, the anchors and the pacing are carried out by the delivery loop.
//!
//! Untrusted text sits where Slack parses no markup (`plain_text` header, escaped
//! `mrkdwn` with `verbatim`), exactly as for the incoming-webhook kind.
use super::retry::{self, Verdict};
use super::{Answer, Kind, Message, slack};
use crate::domain::Event;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub struct SlackApp;

/// Where Slack's Web API answers unless `api_url` says otherwise.
pub const DEFAULT_API_URL: &str = "https://slack.com/api/";

/// `mode = "living" | "post"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One root message per job, edited in place, with a thread reply per event.
    Living,
    /// One message per event, as the incoming-webhook kind, with its `ts` kept.
    Post,
}

/// What a `kind = "slack_app"` channel adds to [`super::Channel`]; its `url` is the
/// Web API's base URL (`api_url`).
#[derive(Debug, Clone)]
pub struct AppChannel {
    pub token: crate::domain::secret::Secret,
    /// The Slack channel id (`C…`, `G…`).
    pub channel: String,
    pub mode: Mode,
    /// Events that also reach the job's owner as a direct message.
    pub dm_owner: Vec<Event>,
}

/// A Slack conversation id: `C`/`G`/`D` and upper-case letters or digits.
pub fn valid_channel_id(s: &str) -> bool {
    matches!(s.as_bytes().first(), Some(b'C' | b'G' | b'D'))
        && (3..=24).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Events whose thread reply is also shown in the channel (`reply_broadcast`):
/// what someone must act on.
pub fn broadcasts(e: Event) -> bool {
    matches!(
        e,
        Event::Failed
            | Event::TasksFailed
            | Event::CreateFailed
            | Event::UploadFailed
            | Event::UpdateFailed
            | Event::NotCompatible
            | Event::Stalled
    )
}

impl Kind for SlackApp {
    fn name(&self) -> &'static str {
        "slack_app"
    }
    fn default_hosts(&self) -> &'static [&'static str] {
        &["slack.com"]
    }
    /// `chat.postMessage` allows about one message per second per channel.
    fn default_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn default_template(&self) -> &'static str {
        include_str!("../../templates/default/slack_app/default.hbs")
    }
    fn root_template(&self) -> Option<&'static str> {
        Some(include_str!("../../templates/default/slack_app/root.hbs"))
    }
    fn notice_template(&self, event: crate::domain::Event) -> Option<&'static str> {
        (event == crate::domain::Event::BudgetThreshold).then_some(include_str!(
            "../../templates/default/slack_app/budget.threshold.hbs"
        ))
    }
    /// `{"post": message}`: a notice has no living message; it is posted as is.
    fn notice_payload(&self, n: &super::Notice) -> Value {
        let mut post = slack::payload(n.rendered, n.link);
        strip_webhook_fields(&mut post);
        json!({"post": post})
    }
    fn holds_when_disabled(&self) -> bool {
        true
    }
    fn escape(&self, s: &str) -> String {
        slack::escape(s)
    }
    /// `{"root": message, "reply": message, "broadcast": bool, "dm": {"slack"|"email"}}`:
    /// the living message's new content, the event's own message, and whom to DM.
    /// Each message is a `chat.postMessage` body without `channel`.
    fn payload(&self, m: &Message) -> Value {
        let mut reply = slack::Slack.payload(m);
        strip_webhook_fields(&mut reply);
        let root = m.root.map(|r| {
            let mut root = slack::payload(r, m.link);
            strip_webhook_fields(&mut root);
            if let Some(id) = m.owner.and_then(|p| p.slack.as_deref())
                && m.mention
                && let Some(blocks) = root["blocks"].as_array_mut()
            {
                let at = blocks
                    .iter()
                    .position(|b| b["type"] == "actions")
                    .unwrap_or(blocks.len());
                blocks.insert(
                    at,
                    json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("Owner: <@{id}>")}]}),
                );
            }
            root
        });
        let dm = m.dm.then_some(m.owner).flatten().and_then(|p| {
            match (p.slack.as_deref(), p.email.as_deref()) {
                (Some(id), _) => Some(json!({"slack": id})),
                (None, Some(email)) => Some(json!({"email": email})),
                (None, None) => None,
            }
        });
        json!({
            "root": root,
            "reply": reply,
            "broadcast": broadcasts(m.transition.event),
            "dm": dm,
        })
    }
    fn classify(&self, a: &Answer, max_retry_after: Duration) -> Verdict {
        match classify_api(a, max_retry_after) {
            Outcome::Ok(_) => Verdict::Delivered,
            Outcome::Gone(r) | Outcome::Refused(r) | Outcome::TooLong(r) => {
                Verdict::DeadLetter { reason: r }
            }
            Outcome::Disable(r) => Verdict::Disable { reason: r },
            Outcome::Throttled { wait, reason } => Verdict::Throttled { wait, reason },
            Outcome::Retry(r) => Verdict::Retry { reason: r },
        }
    }
}

/// Incoming-webhook fields that the Web API does not take with a thread reply.
fn strip_webhook_fields(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("unfurl_media");
    }
}

/// What one Web API answer means.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `ok: true`, with the answer's JSON.
    Ok(Value),
    /// The message to edit is gone or can no longer be edited: post a new root.
    Gone(String),
    /// A person must act (token, channel, scopes): disable the channel, keep its messages.
    Disable(String),
    /// 429 / `ratelimited`: nothing to this channel until `wait` has passed.
    Throttled { wait: Duration, reason: String },
    /// The blocks were refused: send again as plain text.
    TooLong(String),
    /// Transient: retry on the usual schedule.
    Retry(String),
    /// Any other refusal: this message will never be accepted.
    Refused(String),
}

/// Errors after which nothing works until a person acts.
const DISABLING: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "channel_not_found",
    "is_archived",
    "not_in_channel",
    "missing_scope",
];

/// Classifies a Web API answer. Slack answers HTTP 200 with `{"ok": false,
/// "error": "<code>"}` for almost every failure; the code decides.
pub fn classify_api(a: &Answer, max_retry_after: Duration) -> Outcome {
    let v: Option<Value> = serde_json::from_str(a.body).ok();
    let error = v
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
        .map(|e| {
            e.chars()
                .filter(|c| !c.is_control())
                .take(80)
                .collect::<String>()
        });
    if a.status == 429 || error.as_deref() == Some("ratelimited") {
        let wait = a
            .retry_after
            .and_then(|v| retry::parse_retry_after(v, a.at))
            .unwrap_or(Duration::from_secs(5))
            .min(max_retry_after);
        return Outcome::Throttled {
            wait,
            reason: format!("ratelimited (HTTP {})", a.status),
        };
    }
    if !(200..300).contains(&a.status) {
        return match retry::classify(a, false, max_retry_after) {
            Verdict::Retry { reason } => Outcome::Retry(reason),
            Verdict::Disable { reason } => Outcome::Disable(reason),
            Verdict::Throttled { wait, reason } => Outcome::Throttled { wait, reason },
            Verdict::DeadLetter { reason } => match error {
                // A 4xx with a Slack body still names the code.
                Some(e) if DISABLING.contains(&e.as_str()) => Outcome::Disable(e),
                _ => Outcome::Refused(reason),
            },
            Verdict::Delivered => Outcome::Retry(format!("HTTP {}", a.status)),
        };
    }
    let Some(v) = v else {
        return Outcome::Retry(format!("HTTP {}: the answer is not JSON", a.status));
    };
    if v.get("ok") == Some(&Value::Bool(true)) {
        return Outcome::Ok(v);
    }
    let Some(e) = error else {
        return Outcome::Retry(format!("HTTP {}: ok is not true and no error", a.status));
    };
    match e.as_str() {
        "message_not_found" | "cant_update_message" | "edit_window_closed" | "thread_not_found" => {
            Outcome::Gone(e)
        }
        "msg_too_long" | "invalid_blocks" | "msg_blocks_too_long" | "invalid_blocks_format" => {
            Outcome::TooLong(e)
        }
        "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" => {
            Outcome::Retry(e)
        }
        "missing_scope" => {
            let needed = v.get("needed").and_then(Value::as_str).unwrap_or("?");
            Outcome::Disable(format!("missing_scope (needs {needed})"))
        }
        _ if DISABLING.contains(&e.as_str()) => Outcome::Disable(e),
        _ => Outcome::Refused(e),
    }
}

/// A message body with its blocks removed: what is sent again after
/// `msg_too_long` / `invalid_blocks` (the `text` is already escaped and cut).
pub fn plain(msg: &Value) -> Value {
    let mut m = msg.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("blocks");
    }
    m
}

/// The message's link: `<workspace url>archives/<channel>/p<ts without the dot>`.
pub fn permalink(workspace: &str, channel: &str, ts: &str) -> Option<String> {
    let base = url::Url::parse(workspace).ok()?;
    if base.scheme() != "https" && base.scheme() != "http" {
        return None;
    }
    if !valid_channel_id(channel) || !ts.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let base = base.as_str().trim_end_matches('/');
    Some(format!(
        "{base}/archives/{channel}/p{}",
        ts.replace('.', "")
    ))
}

/// At most `limit` edits in any `window` on one channel (`chat.update` is Tier 3,
/// about 50 a minute): the times of the last edits, and when the next may go.
#[derive(Debug, Clone)]
pub struct EditWindow {
    limit: usize,
    window: Duration,
    times: VecDeque<Instant>,
}

impl EditWindow {
    pub fn new(limit: usize, window: Duration) -> EditWindow {
        EditWindow {
            limit: limit.max(1),
            window,
            times: VecDeque::new(),
        }
    }

    /// How long until an edit may go at `now` (zero: now).
    pub fn wait(&self, now: Instant) -> Duration {
        if self.times.len() < self.limit {
            return Duration::ZERO;
        }
        let oldest = self.times[self.times.len() - self.limit];
        (oldest + self.window).saturating_duration_since(now)
    }

    /// Records an edit made at `now`.
    pub fn take(&mut self, now: Instant) {
        self.times.push_back(now);
        while self.times.len() > self.limit {
            self.times.pop_front();
        }
    }
}

/// The default edit budget per channel.
pub fn edit_window() -> EditWindow {
    EditWindow::new(50, Duration::from_secs(60))
}

/// A ten-cell bar for `percent` (0–100), for the root message.
pub fn progress_bar(percent: i64) -> String {
    let full = (percent.clamp(0, 100) as usize + 5) / 10;
    format!("{}{}", "█".repeat(full), "░".repeat(10 - full))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str, retry_after: Option<&'static str>) -> Outcome {
        classify_api(
            &Answer {
                status,
                retry_after,
                body,
                at: std::time::SystemTime::UNIX_EPOCH,
            },
            Duration::from_secs(300),
        )
    }

    #[test]
    fn answers_are_classified_by_their_error_code() {
        assert!(matches!(
            answer(200, r#"{"ok":true,"ts":"1.2"}"#, None),
            Outcome::Ok(_)
        ));
        for gone in [
            "message_not_found",
            "cant_update_message",
            "edit_window_closed",
        ] {
            assert_eq!(
                answer(200, &format!(r#"{{"ok":false,"error":"{gone}"}}"#), None),
                Outcome::Gone(gone.into())
            );
        }
        for stop in DISABLING.iter().filter(|e| **e != "missing_scope") {
            assert_eq!(
                answer(200, &format!(r#"{{"ok":false,"error":"{stop}"}}"#), None),
                Outcome::Disable(stop.to_string())
            );
        }
        assert_eq!(
            answer(
                200,
                r#"{"ok":false,"error":"missing_scope","needed":"chat:write","provided":"x"}"#,
                None
            ),
            Outcome::Disable("missing_scope (needs chat:write)".into())
        );
        assert_eq!(
            answer(429, r#"{"ok":false,"error":"ratelimited"}"#, Some("3")),
            Outcome::Throttled {
                wait: Duration::from_secs(3),
                reason: "ratelimited (HTTP 429)".into()
            }
        );
        for long in ["msg_too_long", "invalid_blocks"] {
            assert_eq!(
                answer(200, &format!(r#"{{"ok":false,"error":"{long}"}}"#), None),
                Outcome::TooLong(long.into())
            );
        }
        for transient in ["internal_error", "fatal_error", "service_unavailable"] {
            assert_eq!(
                answer(
                    200,
                    &format!(r#"{{"ok":false,"error":"{transient}"}}"#),
                    None
                ),
                Outcome::Retry(transient.into())
            );
        }
        assert!(matches!(answer(503, "", None), Outcome::Retry(_)));
        assert!(matches!(answer(200, "<html>", None), Outcome::Retry(_)));
        assert_eq!(
            answer(200, r#"{"ok":false,"error":"no_text"}"#, None),
            Outcome::Refused("no_text".into())
        );
    }

    #[test]
    fn permalinks_drop_the_dot_and_refuse_odd_input() {
        assert_eq!(
            permalink(
                "https://studio.slack.com/",
                "C0123456789",
                "1733380000.000100"
            )
            .as_deref(),
            Some("https://studio.slack.com/archives/C0123456789/p1733380000000100")
        );
        assert_eq!(permalink("javascript:alert(1)", "C01", "1.2"), None);
        assert_eq!(permalink("https://x.slack.com/", "C01", "1.2\"x"), None);
        assert_eq!(permalink("https://x.slack.com/", "evil", "1.2"), None);
    }

    #[test]
    fn the_edit_window_admits_fifty_a_minute() {
        let t0 = crate::clock::monotonic();
        let mut w = EditWindow::new(50, Duration::from_secs(60));
        for i in 0..50 {
            assert_eq!(w.wait(t0 + Duration::from_millis(i)), Duration::ZERO);
            w.take(t0 + Duration::from_millis(i));
        }
        // The 51st waits until the first leaves the window.
        assert_eq!(
            w.wait(t0 + Duration::from_secs(10)),
            Duration::from_secs(50)
        );
        assert_eq!(w.wait(t0 + Duration::from_secs(60)), Duration::ZERO);
        w.take(t0 + Duration::from_secs(60));
        assert_eq!(
            w.wait(t0 + Duration::from_secs(60)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn bars() {
        assert_eq!(progress_bar(100), "██████████");
        assert_eq!(progress_bar(0), "░░░░░░░░░░");
        assert_eq!(progress_bar(44), "████░░░░░░");
        assert_eq!(progress_bar(250), "██████████");
    }
}
