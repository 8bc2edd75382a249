//! The one place that talks HTTP to chat: posts a rendered payload to a channel
//! and turns the answer into a [`Verdict`] through the channel's kind. What is sent
//! and how it is classified are decided in the kinds (`notify::<kind>`); this file
//! only carries it out.
use super::retry::Verdict;
use super::target::TargetPolicy;
use super::{Answer, Channel, DeliveryConfig};
use crate::domain::secret::scrub;
use std::net::SocketAddr;

/// Posts payloads. Redirects are never followed; with `allow_private_targets = false`
/// every resolved address is checked at connect time.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    cfg: DeliveryConfig,
    policy: TargetPolicy,
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
        let policy = TargetPolicy::from_config(cfg).map_err(SenderError)?;
        if !cfg.allow_private_targets {
            b = b
                .dns_resolver(std::sync::Arc::new(CheckedResolver(policy.clone())))
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
        let ts = crate::clock::wall_now().timestamp();
        match channel
            .kind
            .headers(webhook_id, ts, channel.secret.as_ref(), body)
        {
            Ok(headers) => {
                for (k, v) in headers {
                    req = req.header(k, v);
                }
            }
            Err(e) => {
                return Verdict::DeadLetter {
                    reason: format!("signing secret: {e}"),
                };
            }
        }
        let resp = match req.body(body.to_vec()).send().await {
            Ok(r) => r,
            Err(e) => return transport_verdict(e, channel),
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after(&resp);
        // Bodies are only read for the reason text; cap what we keep.
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(1000).collect();
        channel.kind.classify(
            &Answer {
                status,
                retry_after: retry_after.as_deref(),
                body: &body,
                at: crate::clock::system_time(),
            },
            self.cfg.max_retry_after,
        )
    }
}

/// The answer's `Retry-After`, as sent (parsed by the classifier).
fn retry_after(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// What a transport error (no HTTP answer) means: retry, unless the address
/// policy refused the target. The text is stripped of URLs and secrets.
fn transport_verdict(e: reqwest::Error, channel: &Channel) -> Verdict {
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        src = s.source();
    }
    let reason = scrub(&reason, &channel.secrets());
    if reason.contains("non-public addresses") {
        return Verdict::DeadLetter {
            reason: format!("target refused: {reason}"),
        };
    }
    Verdict::Retry {
        reason: format!("transport error: {reason}"),
    }
}

/// One Slack Web API answer, as it came.
#[derive(Debug, Clone)]
pub struct ApiReply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
    pub at: std::time::SystemTime,
}

impl ApiReply {
    pub fn answer(&self) -> Answer<'_> {
        Answer {
            status: self.status,
            retry_after: self.retry_after.as_deref(),
            body: &self.body,
            at: self.at,
        }
    }
}

/// Answers larger than this are not read further (ours are a few hundred bytes).
const API_ANSWER_CAP: usize = 64 * 1024;

/// A Web API request body: JSON for the chat methods, a form for the lookups
/// (`users.lookupByEmail` takes no JSON).
#[derive(Debug, Clone, Copy)]
pub enum ApiBody<'a> {
    Json(&'a serde_json::Value),
    Form(&'a [(&'a str, &'a str)]),
}

impl Sender {
    /// Calls a Slack Web API `method` for a `slack_app` channel: `POST
    /// <api_url><method>` with the bot token. `Err` when no answer came (what that
    /// means, as for any post).
    pub async fn slack_call(
        &self,
        channel: &Channel,
        method: &str,
        body: ApiBody<'_>,
    ) -> Result<ApiReply, Verdict> {
        let Some(app) = &channel.app else {
            return Err(Verdict::DeadLetter {
                reason: "not a slack_app channel".into(),
            });
        };
        let base = channel.url.expose();
        if let Err(e) = self.policy.check_url(channel.kind, base) {
            return Err(Verdict::DeadLetter {
                reason: format!("target refused: api_url {e}"),
            });
        }
        let url = format!("{}/{method}", base.trim_end_matches('/'));
        let req = self.client.post(url).bearer_auth(app.token.expose());
        let req = match body {
            ApiBody::Json(v) => req
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/json; charset=utf-8",
                )
                .body(serde_json::to_vec(v).unwrap_or_default()),
            ApiBody::Form(f) => req
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(
                    url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(f.iter())
                        .finish(),
                ),
        };
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(transport_verdict(e, channel)),
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after(&resp);
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) if bytes.len() < API_ANSWER_CAP => bytes.extend_from_slice(&c),
                Ok(_) => break,
                Err(e) => return Err(transport_verdict(e, channel)),
            }
        }
        bytes.truncate(API_ANSWER_CAP);
        Ok(ApiReply {
            status,
            retry_after,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            at: crate::clock::system_time(),
        })
    }
}

/// DNS resolver for outbound deliveries: drops every address the policy refuses,
/// so what is checked is what is dialled (no DNS-rebinding window).
#[derive(Debug, Clone)]
pub struct CheckedResolver(pub TargetPolicy);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| policy.ip_allowed(a.ip()))
                .collect();
            if allowed.is_empty() {
                let msg = format!(
                    "{host} resolves only to non-public addresses (allow_private_targets = false)"
                );
                return Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    msg,
                )) as _);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> TargetPolicy {
        TargetPolicy::from_config(&DeliveryConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_to_private_addresses() {
        use reqwest::dns::Resolve;
        let r = CheckedResolver(strict());
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = r
            .resolve(name)
            .await
            .err()
            .expect("localhost must be refused")
            .to_string();
        assert!(err.contains("non-public"), "{err}");
        let open = CheckedResolver(TargetPolicy {
            allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
            ..strict()
        });
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(
            open.resolve(name).await.is_ok(),
            "an allow-listed CIDR is accepted"
        );
    }
}
