//! The one delivery retry policy, used by every channel: classify what came back,
//! and say when (or whether) to try again.
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 429: wait as asked (capped); not a failure.
    Throttled {
        wait: Duration,
        reason: String,
    },
    /// 408, 5xx, timeouts, connection and TLS errors: back off and retry.
    Retry {
        reason: String,
    },
    /// This payload will never be accepted (400, other 4xx, 3xx): dead-letter it.
    DeadLetter {
        reason: String,
    },
    /// The destination is gone or revoked: stop sending to it at all.
    Disable {
        reason: String,
    },
}

/// `HTTP <status>: <start of the body>`, control characters removed.
pub fn reason(a: &super::Answer) -> String {
    let snippet: String = a
        .body
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if snippet.is_empty() {
        format!("HTTP {}", a.status)
    } else {
        format!("HTTP {}: {snippet}", a.status)
    }
}

/// Classifies an HTTP response. `is_chat` selects chat-webhook semantics, where
/// 401/403/404 mean a revoked URL or an archived channel.
pub fn classify(a: &super::Answer, is_chat: bool, cap: Duration) -> Verdict {
    let why = || reason(a);
    match a.status {
        200..=299 => Verdict::Delivered,
        429 => {
            let wait = a
                .retry_after
                .and_then(|v| parse_retry_after(v, a.at))
                .unwrap_or(Duration::from_secs(5))
                .min(cap);
            Verdict::Throttled {
                wait,
                reason: why(),
            }
        }
        408 | 500..=599 => Verdict::Retry { reason: why() },
        410 => Verdict::Disable { reason: why() },
        401 | 403 | 404 if is_chat => Verdict::Disable { reason: why() },
        300..=399 => Verdict::DeadLetter {
            reason: format!("{} (redirects are not followed; update the URL)", why()),
        },
        _ => Verdict::DeadLetter { reason: why() },
    }
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110), relative to `now`.
pub fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(f) = v.parse::<f64>()
        && f.is_finite()
        && f >= 0.0
    {
        return Some(Duration::from_secs_f64(f.min(1e9)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Delay before attempt `attempt + 1` (attempt counts from 1): the schedule's step for
/// this attempt (the last step repeats), with full jitter so that many failed
/// messages don't retry in lockstep.
pub fn backoff(schedule: &[Duration], attempt: u32, unit: f64) -> Duration {
    let idx = (attempt.saturating_sub(1) as usize).min(schedule.len().saturating_sub(1));
    let step = schedule.get(idx).copied().unwrap_or(Duration::from_secs(5));
    step.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Kind;

    const CAP: Duration = Duration::from_secs(600);

    #[test]
    fn table() {
        use Verdict::*;
        let d = |status, retry_after: Option<&str>, body, chat| {
            let a = crate::notify::Answer {
                status,
                retry_after,
                body,
                at: crate::clock::system_time(),
            };
            if chat {
                crate::notify::slack::Slack.classify(&a, CAP)
            } else {
                crate::notify::webhook::Webhook.classify(&a, CAP)
            }
        };
        assert_eq!(d(200, None, "ok", true), Delivered);
        assert_eq!(d(202, None, "", true), Delivered);
        assert!(matches!(
            d(200, None, r#"{"ok":false,"error":"invalid_blocks"}"#, true),
            DeadLetter { .. }
        ));
        assert!(
            matches!(d(429, Some("3"), "", true), Throttled { wait, .. } if wait == Duration::from_secs(3))
        );
        assert!(matches!(d(429, Some("99999"), "", true), Throttled { wait, .. } if wait == CAP));
        assert!(matches!(d(429, None, "", false), Throttled { .. }));
        for s in [408, 500, 502, 503, 504] {
            assert!(matches!(d(s, None, "", false), Retry { .. }), "{s}");
        }
        assert!(
            matches!(d(400, None, "invalid_payload", true), DeadLetter { reason } if reason.contains("invalid_payload"))
        );
        assert!(matches!(d(413, None, "", false), DeadLetter { .. }));
        assert!(matches!(d(301, None, "", false), DeadLetter { .. }));
        assert!(matches!(
            d(410, None, "channel_is_archived", true),
            Disable { .. }
        ));
        assert!(matches!(d(410, None, "", false), Disable { .. }));
        assert!(matches!(d(404, None, "no_service", true), Disable { .. }));
        assert!(matches!(
            d(403, None, "invalid_token", true),
            Disable { .. }
        ));
        assert!(matches!(d(404, None, "", false), DeadLetter { .. }));
    }

    #[test]
    fn retry_after_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let p = |v| parse_retry_after(v, now);
        assert_eq!(p("3"), Some(Duration::from_secs(3)));
        assert_eq!(p("1.5"), Some(Duration::from_millis(1500)));
        let soon = now + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(soon);
        assert_eq!(p(&date), Some(Duration::from_secs(120)));
        assert_eq!(p("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(p("soon"), None);
    }

    #[test]
    fn backoff_follows_schedule_and_repeats_last() {
        let s = [Duration::from_secs(5), Duration::from_secs(300)];
        assert_eq!(backoff(&s, 1, 1.0), Duration::from_secs(5));
        assert_eq!(backoff(&s, 2, 1.0), Duration::from_secs(300));
        assert_eq!(backoff(&s, 9, 1.0), Duration::from_secs(300));
        assert_eq!(backoff(&s, 9, 0.5), Duration::from_secs(150));
    }
}
