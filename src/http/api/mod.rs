//! The HTTP API (axum). A bearer token decides the team; a team never sees or
//! touches another team's data (it gets 404, as if the thing did not exist).
//!
//! Here: the shared state, errors, authentication, body parsing and the router;
//! one file per resource. Imports the store, `app::live`, the loops' handles and
//! read-only views (`watch::HealthView`), never their internals.
mod admin;
mod channels;
mod dead_letters;
mod paging;
mod subscriptions;
mod watches;

use admin::*;
use channels::*;
use dead_letters::*;
use subscriptions::*;
use watches::*;

use crate::app::live::Live;
use crate::clock::SharedClock;
use crate::config::{Team, TokenDigest};
use crate::domain::{ChannelState, Subscription};
use crate::domain::{Event, JobKey};
use crate::store::Wakers;
use crate::store::{Store, StoreError};
use crate::watch::{HealthView, SubChange, WatchHandle};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub live: Live,
    pub clock: SharedClock,
    pub wakers: Wakers,
    pub watch: WatchHandle,
    pub health: HealthView,
    pub backlogs: crate::deliver::Backlogs,
    limiter: Arc<RateLimiter>,
    /// The last test message accepted per (team, channel): when, and its outbox seq.
    tests: Arc<std::sync::Mutex<HashMap<(String, String), TestMessage>>>,
}

/// A test message accepted for a channel.
#[derive(Debug, Clone, Copy)]
pub(super) struct TestMessage {
    pub at: std::time::Instant,
    /// `None` while it is being queued.
    pub seq: Option<u64>,
}

impl AppState {
    fn tests(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), TestMessage>> {
        self.tests.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn new(
        store: Store,
        live: Live,
        clock: SharedClock,
        wakers: Wakers,
        watch: WatchHandle,
    ) -> AppState {
        let limiter = Arc::new(RateLimiter::new(live.current().config.server.rate_limit));
        AppState {
            store,
            live,
            clock,
            wakers,
            watch,
            health: HealthView::default(),
            backlogs: Default::default(),
            limiter,
            tests: Default::default(),
        }
    }

    pub fn with_health(mut self, health: HealthView) -> AppState {
        self.health = health;
        self
    }

    pub fn with_backlogs(mut self, backlogs: crate::deliver::Backlogs) -> AppState {
        self.backlogs = backlogs;
        self
    }
}

/// A token bucket per API token: `rate` requests/s, bursts up to `2 × rate`.
struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<[u8; 32], (f64, Instant)>>,
}

impl RateLimiter {
    fn new(rate: f64) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn allow(&self, token: &TokenDigest) -> bool {
        self.allow_at(token, crate::clock::tokio_monotonic().into_std())
    }

    /// The decision at `now` (tests drive it in manual time).
    fn allow_at(&self, token: &TokenDigest, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let burst = (self.rate * 2.0).max(1.0);
        let mut g = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = g.entry(token.0).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("too many requests for this token; slow down")]
    RateLimited,
    /// A configured limit is reached; `key` names the setting.
    #[error("{message}")]
    Limit { key: &'static str, message: String },
    /// Asked again too soon: retry after this many seconds.
    #[error("{message}")]
    TooSoon { retry_after: u64, message: String },
    #[error("internal error")]
    Store(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RateLimited | ApiError::TooSoon { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Limit { .. } => StatusCode::CONFLICT,
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store error while serving the API");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let body = match &self {
            ApiError::Limit { key, .. } => json!({"error": self.to_string(), "limit": key}),
            _ => json!({"error": self.to_string()}),
        };
        let mut r = (status, Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let secs = match &self {
                ApiError::TooSoon { retry_after, .. } => (*retry_after).max(1),
                _ => 1,
            };
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

pub fn router(state: AppState) -> Router {
    let separate_metrics = state.live.current().config.server.metrics_listen.is_some();
    let r = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz));
    let r = if separate_metrics {
        r
    } else {
        r.route("/metrics", get(metrics_text))
    };
    r.route("/-/reload", post(reload))
        .route("/v1/subscriptions", post(create).get(list))
        .route(
            "/v1/subscriptions/{id}",
            get(show).delete(remove).patch(patch_subscription),
        )
        .route("/v1/channels/{name}/test", post(test_channel))
        .route("/v1/preview", get(preview))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/{id}/replay", post(replay))
        .route("/v1/channels", get(channels))
        .route("/v1/team", get(team_info))
        .route("/v1/people/unmapped", get(unmapped_people))
        .route("/v1/watches", post(create_watch).get(list_watches))
        .route("/v1/watches/{id}", get(show_watch).delete(remove_watch))
        .route("/v1/channels/{name}/enable", post(enable))
        .route("/v1/channels/{name}/flush", post(flush))
        .merge(crate::http::web::routes())
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::map_response(
            crate::http::web::security_headers,
        ))
        // gzip or br as the client asks (the page's modules and long lists shrink
        // 4–6×); small answers and events are left as they are.
        .layer(
            tower_http::compression::CompressionLayer::new()
                .gzip(true)
                .br(true),
        )
        .with_state(state)
}

/// `/metrics` alone, for `[server] metrics_listen`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Ready when the store answers and, if any job is watched, a Deadline Cloud call
/// succeeded within three poll intervals (the backstop interval's, with an event
/// queue; at least a minute). A failing event queue does not make it unready:
/// polling covers for it.
async fn readyz(State(st): State<AppState>) -> Response {
    let store_ok = st.store.run(|s| Ok(s.verify_open())).await.unwrap_or(false);
    let watched = st.health.watched_jobs();
    let last = st.health.last_deadline_ok_ms();
    let cfg = &st.live.current().config;
    // While events flow, jobs are read only every backstop interval.
    let interval = match cfg.events.sqs_queue_url {
        Some(_) => cfg.deadline.poll_interval.max(cfg.events.backstop_interval),
        None => cfg.deadline.poll_interval,
    };
    let window = (interval * 3).max(std::time::Duration::from_secs(60));
    let age_ms = st.clock.now().timestamp_millis() - last;
    let deadline_ok = watched == 0 || (last > 0 && age_ms <= window.as_millis() as i64);
    let body = json!({
        "store": if store_ok { "ok" } else { "failing" },
        "deadline": if deadline_ok { "ok" } else { "no successful call recently" },
        "watchedJobs": watched,
        "lastDeadlineSuccessMsAgo": (last > 0).then_some(age_ms),
    });
    let mut body = body;
    if let Some(p) = st.health.polling() {
        // With an event queue: `relaxed` while events flow, `tight` while polling
        // covers for the queue (still ready: nothing is missed).
        body["polling"] = json!(p);
    }
    let status = if store_ok && deadline_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text. Counters come from the delivery, watch and client code; store-wide
/// gauges are computed here, at scrape time.
async fn metrics_text(State(st): State<AppState>) -> Result<Response, ApiError> {
    // O(1) in the size of the store: counts kept by the store, backlogs published by
    // the delivery workers.
    let now = st.clock.now();
    let age = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
    };
    let backlogs = st.backlogs.snapshot();
    let oldest = backlogs.iter().filter_map(|b| b.3).min();
    metrics::gauge!("deadline_notifier_outbox_depth").set(st.store.outbox_len() as f64);
    metrics::gauge!("deadline_notifier_outbox_oldest_age_seconds").set(age(oldest));
    metrics::gauge!("deadline_notifier_dead_letters").set(st.store.dead_letter_count() as f64);
    metrics::gauge!("deadline_notifier_subscriptions").set(st.store.subscription_count() as f64);
    for (team, channel, held) in st.backlogs.held_snapshot() {
        metrics::gauge!("deadline_notifier_channel_held", "team" => team, "channel" => channel)
            .set(held as f64);
    }
    for (team, channel, queued, oldest) in backlogs {
        metrics::gauge!("deadline_notifier_channel_queued", "team" => team.clone(), "channel" => channel.clone())
            .set(queued as f64);
        metrics::gauge!("deadline_notifier_channel_oldest_pending_age_seconds", "team" => team, "channel" => channel)
            .set(age(oldest));
    }
    let active = st.live.current();
    let keys: Vec<(String, String)> = active
        .config
        .teams
        .iter()
        .flat_map(|t| t.channels.iter().map(|c| (t.name.clone(), c.name.clone())))
        .collect();
    let states = st
        .store
        .run(move |s| {
            keys.into_iter()
                .map(|(t, c)| {
                    let disabled = s.channel_state(&t, &c)?.disabled_reason.is_some();
                    Ok((t, c, disabled))
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await?;
    for (team, channel, disabled) in states {
        metrics::gauge!("deadline_notifier_channel_disabled", "team" => team, "channel" => channel)
            .set(if disabled { 1.0 } else { 0.0 });
    }
    let handle = crate::app::telemetry::metrics();
    handle.run_upkeep();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}

/// Every error is `{"error": "…"}`, including the ones axum produces itself
/// (413 body too large, 405 method not allowed, bad path encoding).
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return resp;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!("request body is larger than {BODY_LIMIT} bytes"),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_string(),
        s => s
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
    };
    let mut r = (status, Json(json!({"error": message}))).into_response();
    for h in [header::ALLOW, header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(v) = resp.headers().get(&h) {
            r.headers_mut().insert(h, v.clone());
        }
    }
    r
}

/// Checks the admin token; `Ok(Some(response))` when admin endpoints are disabled.
fn admin(st: &AppState, headers: &HeaderMap, what: &str) -> Result<Option<Response>, ApiError> {
    let active = st.live.current();
    if active.config.server.admin_tokens.is_empty() {
        return Ok(Some(
            (
                StatusCode::FORBIDDEN,
                Json(json!({"error": format!("{what} is disabled: no [server] admin_tokens are configured")})),
            )
                .into_response(),
        ));
    }
    let digest = bearer(headers)?;
    let mut ok = false;
    for tok in &active.config.server.admin_tokens {
        ok |= tok.matches(&digest);
    }
    if !ok {
        return Err(ApiError::Unauthorized);
    }
    if !st.limiter.allow(&digest) {
        return Err(ApiError::RateLimited);
    }
    Ok(None)
}

fn bearer(headers: &HeaderMap) -> Result<TokenDigest, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(TokenDigest::of)
        .ok_or(ApiError::Unauthorized)
}

/// Finds the team whose token matches, comparing every token in constant time.
fn team_for(st: &AppState, headers: &HeaderMap) -> Result<Team, ApiError> {
    let active = st.live.current();
    let cfg = &active.config;
    let digest = bearer(headers)?;
    let mut found = None;
    // Every digest is compared, so timing does not tell which team (if any) matched.
    for team in &cfg.teams {
        for tok in &team.tokens {
            if tok.matches(&digest) {
                found = Some(team);
            }
        }
    }
    let team = found.ok_or(ApiError::Unauthorized)?.clone();
    if !st.limiter.allow(&digest) {
        return Err(ApiError::RateLimited);
    }
    Ok(team)
}

/// The request body as a JSON object with only `known` fields; a 400 naming the
/// problem otherwise.
fn json_object(body: &[u8], known: &[&str]) -> Result<serde_json::Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(ApiError::BadRequest("body must be a JSON object".into()));
    };
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "unknown field `{k}`; expected one of {}",
            known.join(", ")
        )));
    }
    Ok(obj)
}

fn field_str<'a>(
    body: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<&'a str, ApiError> {
    match body.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::BadRequest(format!(
            "field `{name}` must be a string"
        ))),
        None => Err(ApiError::BadRequest(format!("field `{name}` is required"))),
    }
}

fn field_list(
    body: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<Vec<String>>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::BadRequest(format!("field `{name}` must be a list of strings"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::BadRequest(format!(
            "field `{name}` must be a list of strings"
        ))),
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_bursts_of_twice_the_rate_and_refills() {
        let l = RateLimiter::new(2.0);
        let t = TokenDigest::of("some-token-0123456789");
        let now = crate::clock::monotonic();
        let allowed = (0..10).filter(|_| l.allow_at(&t, now)).count();
        assert_eq!(allowed, 4, "burst of 2 × rate");
        assert!(!l.allow_at(&t, now + Duration::from_millis(100)));
        assert!(
            l.allow_at(&t, now + Duration::from_millis(500)),
            "refilled one"
        );
        let other = TokenDigest::of("other-token-0123456789");
        assert!(l.allow_at(&other, now), "buckets are per token");
    }
}
