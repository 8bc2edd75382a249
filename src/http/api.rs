//! The HTTP API (axum). A bearer token decides the team; a team never sees or
//! touches another team's data (it gets 404, as if the thing did not exist).
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
}

impl AppState {
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
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store error while serving the API");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut r = (status, Json(json!({"error": self.to_string()}))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
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
        .merge(crate::http::web::routes())
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::map_response(
            crate::http::web::security_headers,
        ))
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
/// succeeded within three poll intervals (at least a minute).
async fn readyz(State(st): State<AppState>) -> Response {
    let store_ok = st.store.run(|s| Ok(s.verify_open())).await.unwrap_or(false);
    let watched = st.health.watched_jobs();
    let last = st.health.last_deadline_ok_ms();
    let window = (st.live.current().config.deadline.poll_interval * 3)
        .max(std::time::Duration::from_secs(60));
    let age_ms = st.clock.now().timestamp_millis() - last;
    let deadline_ok = watched == 0 || (last > 0 && age_ms <= window.as_millis() as i64);
    let body = json!({
        "store": if store_ok { "ok" } else { "failing" },
        "deadline": if deadline_ok { "ok" } else { "no successful call recently" },
        "watchedJobs": watched,
        "lastDeadlineSuccessMsAgo": (last > 0).then_some(age_ms),
    });
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

/// `GET /v1/people/unmapped` (admin token): `createdBy` values seen in the last 30
/// days that map to nobody in `[[people]]`, most recent first.
async fn unmapped_people(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(r) = admin(&st, &headers, "GET /v1/people/unmapped")? {
        return Ok(r);
    }
    let since = st.clock.now() - chrono::Duration::days(30);
    let list: Vec<Value> = st
        .health
        .unmapped_since(since)
        .into_iter()
        .map(|(created_by, at)| json!({"createdBy": created_by, "lastSeen": at}))
        .collect();
    Ok(Json(json!({"unmapped": list})).into_response())
}

/// `POST /-/reload` (admin token): re-reads config and templates, as SIGHUP does.
async fn reload(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(r) = admin(&st, &headers, "reload over HTTP (SIGHUP still reloads)")? {
        return Ok(r);
    }
    let live = st.live.clone();
    let result = tokio::task::spawn_blocking(move || live.reload("POST /-/reload"))
        .await
        .map_err(|e| ApiError::BadRequest(format!("reload did not finish: {e}")))?;
    Ok(match result {
        Ok(report) => (
            StatusCode::OK,
            Json(json!({"status": "reloaded", "report": report})),
        )
            .into_response(),
        // The new files are refused (the old set stays): a 400 naming file, line,
        // column and key, never their contents.
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "status": "failed",
                "error": e.to_string(),
                "generation": st.live.current().generation,
            })),
        )
            .into_response(),
    })
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

/// API field names of a watch, by the config field names `check_watch` reports.
fn watch_field(config_field: &str) -> &'static str {
    match config_field {
        "farm_id" => "farmId",
        "queue_ids" => "queueIds",
        "created_by" => "createdBy",
        "name_matches" => "nameMatches",
        "events" => "events",
        "channels" => "channels",
        _ => "name",
    }
}

async fn create_watch(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let team = team_for(&st, &headers)?;
    let obj = json_object(
        &body,
        &[
            "name",
            "farmId",
            "queueIds",
            "createdBy",
            "nameMatches",
            "events",
            "channels",
        ],
    )?;
    let name = field_str(&obj, "name")?.to_string();
    let farm_id = field_str(&obj, "farmId")?.to_string();
    let queue_ids = field_list(&obj, "queueIds")?
        .ok_or_else(|| ApiError::BadRequest("field `queueIds` is required".into()))?;
    let name_matches = match obj.get("nameMatches") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "field `nameMatches` must be a string".into(),
            ));
        }
    };
    let events = match field_list(&obj, "events")? {
        None => Event::DEFAULTS.to_vec(),
        Some(list) => list
            .iter()
            .map(|s| {
                Event::parse(s).ok_or_else(|| {
                    ApiError::BadRequest(format!("field `events`: unknown event {s:?}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let channels = field_list(&obj, "channels")?
        .unwrap_or_else(|| team.channels.iter().map(|c| c.name.clone()).collect());
    let candidate = crate::domain::Watch {
        id: format!("watch-{}", uuid::Uuid::new_v4().simple()),
        team: team.name.clone(),
        name,
        farm_id,
        queue_ids,
        created_by: field_list(&obj, "createdBy")?,
        name_matches,
        events,
        channels,
        source: "api".into(),
        created_at: st.clock.now(),
    };
    let w = crate::config::check_watch(&team, candidate).map_err(|(field, m)| {
        if m.contains("_ids") && m.contains("is not in team") {
            ApiError::Forbidden(m)
        } else {
            ApiError::BadRequest(format!("field `{}`: {m}", watch_field(field)))
        }
    })?;
    if let Some(c) = team.watches.iter().find(|c| c.name == w.name) {
        return Err(ApiError::Conflict(format!(
            "watch {:?} is declared in the config file {}",
            c.name,
            st.live.current().config.path.display()
        )));
    }
    let asked = w.clone();
    let (stored, created) = st.store.run(move |s| s.insert_watch(w)).await?;
    if !created && !same_watch(&stored, &asked) {
        return Err(ApiError::Conflict(format!(
            "a watch named {:?} already exists with other settings; delete it first",
            stored.name
        )));
    }
    if created {
        tracing::info!(team = %team.name, watch = %stored.name, id = %stored.id, "watch created");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(watch_json(&st, &stored))).into_response())
}

/// Same settings (ids and times aside).
fn same_watch(a: &crate::domain::Watch, b: &crate::domain::Watch) -> bool {
    a.farm_id == b.farm_id
        && a.queue_ids == b.queue_ids
        && a.created_by == b.created_by
        && a.name_matches == b.name_matches
        && a.events == b.events
        && a.channels == b.channels
}

/// A watch as the API shows it, with the discovery error of its queues, if any.
fn watch_json(st: &AppState, w: &crate::domain::Watch) -> Value {
    let mut v = serde_json::to_value(w).unwrap_or(Value::Null);
    if let (Some((message, since)), Some(m)) = (st.health.watch_error(w), v.as_object_mut()) {
        m.insert("error".into(), json!({"message": message, "since": since}));
    }
    v
}

/// The team's watches: config-declared ones first, then the API's.
async fn team_watches(st: &AppState, team: &Team) -> Result<Vec<crate::domain::Watch>, ApiError> {
    let name = team.name.clone();
    let mut all = team.watches.clone();
    all.extend(
        st.store
            .run(move |s| s.watches())
            .await?
            .into_iter()
            .filter(|w| w.team == name),
    );
    Ok(all)
}

/// One of the team's watches; another team's is a 404.
async fn owned_watch(
    st: &AppState,
    team: &Team,
    id: &str,
) -> Result<crate::domain::Watch, ApiError> {
    team_watches(st, team)
        .await?
        .into_iter()
        .find(|w| w.id == id)
        .ok_or(ApiError::NotFound("watch"))
}

async fn list_watches(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let list: Vec<Value> = team_watches(&st, &team)
        .await?
        .iter()
        .map(|w| watch_json(&st, w))
        .collect();
    Ok(Json(json!({"watches": list})))
}

async fn show_watch(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let w = owned_watch(&st, &team, &id).await?;
    Ok(Json(watch_json(&st, &w)))
}

async fn remove_watch(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let team = team_for(&st, &headers)?;
    let w = owned_watch(&st, &team, &id).await?;
    if w.source == "config" {
        return Err(ApiError::Conflict(format!(
            "watch {:?} is declared in the config file {}; remove it there",
            w.name,
            st.live.current().config.path.display()
        )));
    }
    st.store.run(move |s| s.delete_watch(&id)).await?;
    tracing::info!(team = %team.name, watch = %w.name, "watch deleted; its subscriptions run to their end");
    Ok(StatusCode::NO_CONTENT)
}

async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let team = team_for(&st, &headers)?;
    let obj = json_object(&body, &["farmId", "queueId", "jobId", "channels", "events"])?;
    let job = JobKey::parse(
        field_str(&obj, "farmId")?,
        field_str(&obj, "queueId")?,
        field_str(&obj, "jobId")?,
    )
    .map_err(|e| ApiError::BadRequest(format!("field `{}` must match {}", e.field, e.pattern)))?;
    team.admits(&job).map_err(ApiError::Forbidden)?;
    let channels = match field_list(&obj, "channels")? {
        None => team.channels.iter().map(|c| c.name.clone()).collect(),
        Some(list) if list.is_empty() => {
            return Err(ApiError::BadRequest(
                "field `channels` must not be empty".into(),
            ));
        }
        Some(list) => {
            for c in &list {
                if team.channel(c).is_none() {
                    let names: Vec<_> = team.channels.iter().map(|c| c.name.as_str()).collect();
                    return Err(ApiError::BadRequest(format!(
                        "field `channels`: team {:?} has no channel {:?} (it has: {})",
                        team.name,
                        c,
                        names.join(", ")
                    )));
                }
            }
            // Each channel once, in the order given (["a", "b", "a"] is ["a", "b"]).
            let mut seen = std::collections::HashSet::new();
            list.into_iter()
                .filter(|c| seen.insert(c.clone()))
                .collect()
        }
    };
    let events = match field_list(&obj, "events")? {
        None => Event::DEFAULTS.to_vec(),
        Some(list) if list.is_empty() => {
            return Err(ApiError::BadRequest(
                "field `events` must not be empty".into(),
            ));
        }
        Some(list) => list
            .iter()
            .map(|s| {
                Event::parse(s).ok_or_else(|| {
                    let all: Vec<_> = Event::ALL.iter().map(|e| e.as_str()).collect();
                    ApiError::BadRequest(format!(
                        "field `events`: unknown event {s:?}; expected one of {}",
                        all.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .fold(Vec::new(), |mut acc, e| {
                if !acc.contains(&e) {
                    acc.push(e);
                }
                acc
            }),
    };
    let sub = Subscription {
        id: format!("sub-{}", uuid::Uuid::new_v4().simple()),
        team: team.name.clone(),
        job,
        channels,
        events,
        created_at: st.clock.now(),
        state: "active".into(),
        ended_reason: None,
        watch: None,
        muted: false,
    };
    let (sub, created) = st.store.run(move |s| s.insert_subscription(sub)).await?;
    if created {
        tracing::info!(team = %sub.team, job = %sub.job, subscription = %sub.id, "subscribed");
        st.watch.notify(SubChange::Added(sub.clone()));
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sub)).into_response())
}

async fn list(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let name = team.name.clone();
    let subs = st
        .store
        .run(move |s| {
            s.subscriptions()?
                .into_iter()
                .filter(|s| s.team == name)
                .map(|sub| Ok((s.notices(&sub.team, &sub.job)?, sub)))
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await?;
    let subs: Vec<_> = subs
        .into_iter()
        .map(|(notices, s)| sub_json(&st, s, notices))
        .collect();
    Ok(Json(json!({"subscriptions": subs})))
}

/// A subscription as the API shows it, with what is known of its job: `job` (name,
/// status and task counts as last read), `pollError` when the last read failed,
/// `notifications` (the latest per channel) and `lastNotification` (the latest of those).
fn sub_json(st: &AppState, s: Subscription, mut notices: Vec<crate::domain::Notice>) -> Value {
    let err = st.health.poll_error(&s.job);
    let view = st.health.view(&s.job);
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        if let Some(err) = err {
            m.insert("pollError".into(), Value::String(err));
        }
        m.insert("job".into(), json!(view));
        notices.sort_by_key(|n| n.at);
        m.insert("lastNotification".into(), json!(notices.last()));
        m.insert("notifications".into(), json!(notices));
    }
    v
}

async fn sub_with_notices(st: &AppState, s: Subscription) -> Result<Value, ApiError> {
    let (team, job) = (s.team.clone(), s.job.clone());
    let notices = st.store.run(move |x| x.notices(&team, &job)).await?;
    Ok(sub_json(st, s, notices))
}

async fn owned(st: &AppState, team: &Team, id: &str) -> Result<Subscription, ApiError> {
    let id = id.to_string();
    match st.store.run(move |s| s.subscription(&id)).await? {
        Some(s) if s.team == team.name => Ok(s),
        _ => Err(ApiError::NotFound("subscription")),
    }
}

async fn show(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let sub = owned(&st, &team, &id).await?;
    Ok(Json(sub_with_notices(&st, sub).await?))
}

async fn remove(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let team = team_for(&st, &headers)?;
    let sub = owned(&st, &team, &id).await?;
    let gone = sub.clone();
    st.store.run(move |s| s.delete_subscription(&gone)).await?;
    tracing::info!(team = %sub.team, job = %sub.job, subscription = %sub.id, "unsubscribed");
    st.watch.notify(SubChange::Removed(sub.clone()));
    Ok(StatusCode::NO_CONTENT)
}

async fn dead_letters(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let items: Vec<_> = st
        .store
        .run(|s| s.dead_letters())
        .await?
        .into_iter()
        .filter(|d| d.entry.team == team.name)
        .collect();
    Ok(Json(json!({"deadLetters": items})))
}

async fn replay(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let team = team_for(&st, &headers)?;
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound("dead letter"))?;
    let owned = st
        .store
        .run(move |s| s.dead_letter_by_id(id))
        .await?
        .is_some_and(|d| d.entry.team == team.name);
    if !owned {
        return Err(ApiError::NotFound("dead letter"));
    }
    let e = st
        .store
        .run({
            let now = st.clock.now();
            move |s| s.replay_dead_letter(id, now)
        })
        .await?
        .ok_or(ApiError::NotFound("dead letter"))?;
    st.wakers.wake(&e.team, &e.channel);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"requeued": e.webhook_id, "channel": e.channel})),
    )
        .into_response())
}

/// `GET /v1/team`: who the token belongs to, and what a subscription may choose from.
async fn team_info(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let events: Vec<_> = Event::ALL
        .iter()
        .map(|e| json!({"name": e.as_str(), "default": Event::DEFAULTS.contains(e)}))
        .collect();
    let channels: Vec<_> = team.channels.iter().map(|c| c.name.clone()).collect();
    Ok(Json(json!({
        "name": team.name,
        "channels": channels,
        "events": events,
        "farmIds": team.farm_ids,
        "queueIds": team.queue_ids,
    })))
}

async fn channels(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let mut out = Vec::new();
    let (tname, names): (String, Vec<String>) = (
        team.name.clone(),
        team.channels.iter().map(|c| c.name.clone()).collect(),
    );
    let states = st
        .store
        .run(move |s| {
            names
                .iter()
                .map(|n| s.channel_state(&tname, n))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    for (c, s) in team.channels.iter().zip(states) {
        out.push(json!({
            "name": c.name, "kind": c.kind, "events": c.events,
            "disabled": s.disabled_reason.is_some(), "disabledReason": s.disabled_reason, "disabledAt": s.disabled_at,
        }));
    }
    Ok(Json(json!({"channels": out})))
}

/// `PATCH /v1/subscriptions/{id}` with `{"muted": bool}`: a muted subscription keeps
/// following its job but sends nothing.
async fn patch_subscription(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let obj = json_object(&body, &["muted"])?;
    let muted = match obj.get("muted") {
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "field `muted` must be true or false".into(),
            ));
        }
        None => return Err(ApiError::BadRequest("field `muted` is required".into())),
    };
    let mut sub = owned(&st, &team, &id).await?;
    if sub.muted != muted {
        sub.muted = muted;
        let saved = sub.clone();
        st.store.run(move |s| s.update_subscription(&saved)).await?;
        if sub.is_active() {
            st.watch.notify(SubChange::Added(sub.clone()));
        }
        tracing::info!(team = %team.name, subscription = %sub.id, muted, "subscription muted state changed");
    }
    Ok(Json(sub_with_notices(&st, sub).await?))
}

/// `POST /v1/channels/{name}/test`: queues a sample notification through the normal
/// outbox path → 202 with the outbox entry.
async fn test_channel(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let team = team_for(&st, &headers)?;
    let channel = team
        .channel(&name)
        .ok_or(ApiError::NotFound("channel"))?
        .clone();
    let active = st.live.current();
    let (job, mut tr) = crate::render::sample_job(Event::Succeeded);
    let now = st.clock.now();
    tr.detected_at = now;
    let payload = active
        .renderer
        .payload(&team.name, &channel, &job, &tr)
        .map_err(|e| ApiError::BadRequest(format!("the channel's template fails: {e}")))?;
    let entry = crate::domain::OutboxEntry {
        seq: 0,
        webhook_id: format!(
            "{}{}",
            crate::domain::TEST_MESSAGE_PREFIX,
            uuid::Uuid::new_v4().simple()
        ),
        team: team.name.clone(),
        channel: channel.name.clone(),
        kind: channel.kind.as_str().to_string(),
        job: job.key.clone(),
        event: tr.event,
        created_at: now,
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        payload,
        triage_until: None,
        failure: None,
        snapshot: None,
        transition: None,
    };
    let queued = st.store.run(move |s| s.enqueue(vec![entry])).await?;
    st.wakers.wake(&team.name, &channel.name);
    tracing::info!(team = %team.name, channel = %channel.name, "test message queued");
    Ok((StatusCode::ACCEPTED, Json(json!(queued.first()))).into_response())
}

/// `GET /v1/preview?channel=…&event=…`: the exact payload the team's template
/// renders for a sample job.
async fn preview(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let name = q
        .get("channel")
        .ok_or_else(|| ApiError::BadRequest("query parameter `channel` is required".into()))?;
    let channel = team
        .channel(name)
        .ok_or(ApiError::NotFound("channel"))?
        .clone();
    let event = match q.get("event") {
        None => Event::Failed,
        Some(e) => Event::parse(e).ok_or_else(|| {
            ApiError::BadRequest(format!("query parameter `event`: unknown event {e:?}"))
        })?,
    };
    let (job, tr) = crate::render::sample_job(event);
    let active = st.live.current();
    let failure = crate::domain::failure::EVENTS
        .contains(&event)
        .then(|| crate::domain::failure::sample_failure(&job.key, active.renderer.monitor()));
    let payload = active
        .renderer
        .payload_with(&team.name, &channel, &job, &tr, failure.as_ref())
        .map_err(|e| ApiError::BadRequest(format!("the channel's template fails: {e}")))?;
    Ok(Json(payload))
}

async fn enable(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let team = team_for(&st, &headers)?;
    if team.channel(&name).is_none() {
        return Err(ApiError::NotFound("channel"));
    }
    let (t, n) = (team.name.clone(), name.clone());
    st.store
        .run(move |s| s.set_channel_state(&t, &n, &ChannelState::default()))
        .await?;
    st.wakers.wake(&team.name, &name);
    tracing::info!(team = %team.name, channel = %name, "channel enabled");
    Ok(StatusCode::NO_CONTENT)
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
