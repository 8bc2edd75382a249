//! Outbound delivery: one small module per channel kind builds its payload; the
//! [`Sender`] posts it and [`retry::classify`] decides what the answer means.
pub mod retry;
pub mod slack;
pub mod target;
pub mod teams;
pub mod webhook;

use crate::config::{Channel, ChannelKind, DeliveryConfig};
use crate::domain::{JobSnapshot, Transition};
use crate::render::Rendered;
use crate::secret::scrub;
use retry::Verdict;
use serde_json::Value;

/// Builds the JSON body for a channel.
pub fn payload(
    kind: ChannelKind,
    team: &str,
    r: &Rendered,
    job: &JobSnapshot,
    tr: &Transition,
    link: Option<&str>,
) -> Value {
    match kind {
        ChannelKind::Slack => slack::payload(r, link),
        ChannelKind::Teams => teams::payload(r, link),
        ChannelKind::Webhook => webhook::payload(team, r, job, tr),
    }
}

/// Truncates to at most `max` characters on a character boundary, marking the cut
/// with an ellipsis; never cuts inside an `&…;` entity (Slack mrkdwn escapes).
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(1);
    let mut cut: String = s.chars().take(keep).collect();
    if let Some(amp) = cut.rfind('&')
        && !cut[amp..].contains(';')
        && cut.len() - amp <= 5
    {
        cut.truncate(amp);
    }
    cut.push('…');
    cut
}

/// Posts payloads. Redirects are never followed; with `allow_private_targets = false`
/// every resolved address is checked at connect time.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    cfg: DeliveryConfig,
    policy: target::TargetPolicy,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct SenderError(String);

impl Sender {
    pub fn new(cfg: &DeliveryConfig) -> Result<Sender, SenderError> {
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(std::time::Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("deadline-notifier/", env!("CARGO_PKG_VERSION")));
        let policy = target::TargetPolicy::from_config(cfg).map_err(SenderError)?;
        if !cfg.allow_private_targets {
            b = b
                .dns_resolver(std::sync::Arc::new(target::CheckedResolver(policy.clone())))
                .https_only(true);
        }
        let client = b.build().map_err(|e| SenderError(e.to_string()))?;
        Ok(Sender {
            client,
            cfg: cfg.clone(),
            policy,
        })
    }

    /// One attempt. `webhook_id` is stable across attempts and restarts.
    pub async fn send(&self, channel: &Channel, webhook_id: &str, body: &[u8]) -> Verdict {
        let url = channel.url.expose();
        if let Err(e) = self.policy.check_url(channel.kind, url) {
            return Verdict::DeadLetter {
                reason: format!("target refused: URL {e}"),
            };
        }
        let mut req = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if channel.kind == ChannelKind::Webhook {
            let ts = chrono::Utc::now().timestamp();
            req = req
                .header("webhook-id", webhook_id)
                .header("webhook-timestamp", ts.to_string());
            if let Some(secret) = &channel.secret {
                match webhook::sign(secret.expose(), webhook_id, ts, body) {
                    Ok(sig) => req = req.header("webhook-signature", sig),
                    Err(e) => {
                        return Verdict::DeadLetter {
                            reason: format!("signing secret: {e}"),
                        };
                    }
                }
            }
        }
        let resp = match req.body(body.to_vec()).send().await {
            Ok(r) => r,
            Err(e) => {
                let e = e.without_url();
                let mut reason = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    reason.push_str(": ");
                    reason.push_str(&s.to_string());
                    src = s.source();
                }
                let secrets: Vec<_> = [Some(&channel.url), channel.secret.as_ref()]
                    .into_iter()
                    .flatten()
                    .collect();
                let reason = scrub(&reason, &secrets);
                if reason.contains("non-public addresses") {
                    return Verdict::DeadLetter {
                        reason: format!("target refused: {reason}"),
                    };
                }
                return Verdict::Retry {
                    reason: format!("transport error: {reason}"),
                };
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Bodies are only read for the reason text; cap what we keep.
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(1000).collect();
        let is_chat = channel.kind != ChannelKind::Webhook;
        retry::classify(
            status,
            retry_after.as_deref(),
            &body,
            is_chat,
            self.cfg.max_retry_after,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_on_char_boundary_and_not_inside_entities() {
        assert_eq!(truncate("héllo", 10), "héllo");
        assert_eq!(truncate("héllo wörld", 5), "héll…");
        assert_eq!(truncate("ab &amp; cd", 6), "ab …");
        assert_eq!(truncate("ab &amp; cd", 9), "ab &amp;…");
    }
}
