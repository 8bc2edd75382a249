//! Generic webhook: Standard Webhooks v1 JSON (`type`, `timestamp`, `data`), signed
//! with `webhook-id`/`webhook-timestamp`/`webhook-signature` when a `whsec_` secret is set.
use super::{Kind, Message, Rendered};
use crate::domain::secret::Secret;
use crate::domain::{JobSnapshot, Transition};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

/// A webhook digest page's body at most (receivers commonly accept 256 KB).
pub const DIGEST_LIMIT: usize = 250_000;

pub struct Webhook;

impl Kind for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }
    fn default_template(&self) -> &'static str {
        include_str!("../../templates/default/webhook/default.hbs")
    }
    fn digest_template(&self) -> Option<&'static str> {
        Some(include_str!("../../templates/default/webhook/digest.hbs"))
    }
    /// `{"type": "notifications.digest", "data": {channel, from, to, summary,
    /// items}}`: each item is a held message's own payload, signed as one body.
    fn digest_payload(&self, d: &super::Digest) -> (Value, bool) {
        let ts = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let summary = if d.rendered.body.is_empty() {
            d.rendered.title.clone()
        } else {
            format!("{}\n{}", d.rendered.title, d.rendered.body)
        };
        let v = json!({
            "type": "notifications.digest",
            "timestamp": ts(d.to),
            "data": {
                "channel": d.channel,
                "from": ts(d.from),
                "to": ts(d.to),
                "summary": super::truncate(&summary, SUMMARY_LIMIT),
                "items": d.items,
            }
        });
        let fits = serde_json::to_vec(&v).is_ok_and(|b| b.len() <= DIGEST_LIMIT);
        (v, fits)
    }
    fn notice_template(&self, event: crate::domain::Event) -> Option<&'static str> {
        (event == crate::domain::Event::BudgetThreshold).then_some(include_str!(
            "../../templates/default/webhook/budget.threshold.hbs"
        ))
    }
    /// `{"type": "<event>", "timestamp", "data": {team, …facts, summary}}`, signed
    /// like every other message.
    fn notice_payload(&self, n: &super::Notice) -> Value {
        let summary = if n.rendered.body.is_empty() {
            n.rendered.title.clone()
        } else {
            format!("{}\n{}", n.rendered.title, n.rendered.body)
        };
        let mut data = serde_json::Map::new();
        data.insert("team".into(), json!(n.team));
        if let Some(facts) = n.data.as_object() {
            data.extend(facts.clone());
        }
        data.insert(
            "summary".into(),
            json!(super::truncate(&summary, SUMMARY_LIMIT)),
        );
        json!({
            "type": n.event.as_str(),
            "timestamp": n.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        })
    }
    fn check_secret(&self, secret: &str) -> Result<(), String> {
        decode_secret(secret).map(|_| ())
    }
    fn payload(&self, m: &Message) -> Value {
        let mut v = payload(m.team, m.rendered, m.job, m.transition);
        if let Some(ms) = m.transition.milestone {
            v["data"]["milestone"] = json!(ms);
        }
        if let Some(t) = m.transition.stalled_since {
            v["data"]["stalledSince"] =
                json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
        if let Some(f) = m.failure {
            v["data"]["failure"] =
                serde_json::to_value(within(f, FAILURE_LIMIT)).unwrap_or(Value::Null);
        }
        // Absent, not null, when the owner maps to nobody.
        if let Some(p) = m.owner {
            v["data"]["owner"] = json!({
                "createdBy": m.job.created_by,
                "name": p.name,
                "slack": p.slack,
                "teams": p.teams,
            });
        }
        v
    }
    fn headers(
        &self,
        webhook_id: &str,
        timestamp: i64,
        secret: Option<&Secret>,
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, String> {
        let mut h = vec![
            ("webhook-id", webhook_id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
        ];
        if let Some(secret) = secret {
            h.push((
                "webhook-signature",
                sign(secret.expose(), webhook_id, timestamp, body)?,
            ));
        }
        Ok(h)
    }
}

/// Serialized size `data.failure` is kept under: log tails lose their oldest lines.
pub const FAILURE_LIMIT: usize = 12_000;

fn within(f: &crate::domain::Failure, limit: usize) -> crate::domain::Failure {
    let mut f = f.clone();
    while serde_json::to_vec(&f).map_or(0, |b| b.len()) > limit {
        let Some(t) = f.tasks.iter_mut().max_by_key(|t| t.log_tail.len()) else {
            break;
        };
        if t.log_tail.is_empty() {
            break;
        }
        t.log_tail.remove(0);
    }
    f
}

/// Keeps the envelope well under the 20 KB Standard Webhooks recommends.
pub const SUMMARY_LIMIT: usize = 4000;

pub fn payload(team: &str, r: &Rendered, job: &JobSnapshot, tr: &Transition) -> Value {
    let ts = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let summary = if r.body.is_empty() {
        r.title.clone()
    } else {
        format!("{}\n{}", r.title, r.body)
    };
    let summary = super::truncate(&summary, SUMMARY_LIMIT);
    json!({
        "type": tr.event.as_str(),
        "timestamp": ts(Some(tr.detected_at)),
        "data": {
            "team": team,
            "farmId": job.key.farm_id,
            "queueId": job.key.queue_id,
            "jobId": job.key.job_id,
            "name": job.name,
            "taskRunStatus": job.task_run_status.as_ref().map(|s| s.as_str()),
            "previousTaskRunStatus": tr.previous_task_run_status.as_ref().map(|s| s.as_str()),
            "lifecycleStatus": job.lifecycle_status.as_str(),
            "previousLifecycleStatus": tr.previous_lifecycle_status.as_str(),
            "taskRunStatusCounts": job.task_run_status_counts,
            "createdBy": job.created_by,
            "priority": job.priority,
            "createdAt": ts(Some(job.created_at)),
            "startedAt": ts(job.started_at),
            "endedAt": ts(job.ended_at),
            "updatedAt": ts(job.updated_at),
            "summary": summary,
        }
    })
}

/// Decodes a `whsec_<base64>` secret (24–64 random bytes per the spec).
pub fn decode_secret(s: &str) -> Result<Vec<u8>, String> {
    let b64 = s
        .strip_prefix("whsec_")
        .ok_or("must start with whsec_ (Standard Webhooks format)")?;
    let key = STANDARD
        .decode(b64)
        .map_err(|_| "the part after whsec_ is not valid base64".to_string())?;
    if key.len() < 16 {
        return Err("key is too short; use 24-64 random bytes".into());
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256(id.timestamp.body)>`.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let key = decode_secret(secret)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        let sig = sign(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }
}
