//! A local webhook receiver for the demo and tests: records every POST and answers
//! like the real platform (Slack `200 ok`, Teams `202`, webhooks `200`), or with
//! scripted statuses to exercise retries.
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: serde_json::Value,
    pub raw: String,
    pub status: u16,
    /// When it arrived (for pacing and Retry-After checks).
    #[serde(skip)]
    pub at: Option<std::time::Instant>,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// A scripted answer: status, optional `Retry-After`, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    scripts: HashMap<String, VecDeque<Answer>>,
    /// path → (answer with this status until then)
    outages: HashMap<String, (std::time::Instant, u16)>,
    /// path → (fraction of requests answered 503, xorshift state): a flaky receiver.
    flaky: HashMap<String, (f64, u64)>,
    delay: std::time::Duration,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: usize,
    max_in_flight: usize,
}

#[derive(Clone)]
pub struct Sink {
    inner: Arc<Mutex<Inner>>,
    tx: tokio::sync::broadcast::Sender<Received>,
}

impl Default for Sink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink {
    pub fn new() -> Sink {
        let (tx, _) = tokio::sync::broadcast::channel(1024);
        Sink {
            inner: Arc::default(),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues answers for `path` (e.g. "/slack"), used before the default answer.
    pub fn script(&self, path: &str, answers: impl IntoIterator<Item = Answer>) {
        self.lock()
            .scripts
            .entry(path.to_string())
            .or_default()
            .extend(answers);
    }

    /// Answers every request to `path` with `status` until `until`.
    pub fn outage(&self, path: &str, until: std::time::Instant, status: u16) {
        self.lock()
            .outages
            .insert(path.to_string(), (until, status));
    }

    /// Answers a `rate` fraction of the requests to `path` with 503, chosen by a
    /// seeded generator (repeatable, and independent of timing).
    pub fn flaky(&self, path: &str, rate: f64, seed: u64) {
        self.lock()
            .flaky
            .insert(path.to_string(), (rate, seed.max(1)));
    }

    /// Holds every answer this long (a slow receiver).
    pub fn set_delay(&self, d: std::time::Duration) {
        self.lock().delay = d;
    }

    /// The most requests this sink held at once (a slow receiver shows whether a
    /// sender waits for each answer before the next request).
    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    /// Drops any answers still scripted for `path`, and ends its outage.
    pub fn clear_script(&self, path: &str) {
        let mut g = self.lock();
        g.scripts.remove(path);
        g.outages.remove(path);
        g.flaky.remove(path);
    }

    /// Every request so far, accepted or not.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Requests that were answered with 2xx, i.e. delivered.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Received> {
        self.tx.subscribe()
    }

    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        self.serve_with(addr, Router::new()).await
    }

    /// Serves the sink with `extra` routes beside it (the fake Slack Web API).
    pub async fn serve_with(
        &self,
        addr: SocketAddr,
        extra: Router,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let app = Router::new()
            .route("/_sink/received", axum::routing::get(received))
            .route("/{*path}", post(receive))
            .with_state(self.clone())
            .merge(extra);
        let h = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((local, h))
    }
}

/// `GET /_sink/received`: every request so far, oldest first (for out-of-process tests).
async fn received(State(sink): State<Sink>) -> Response {
    axum::Json(serde_json::json!({"received": sink.lock().received})).into_response()
}

async fn receive(
    State(sink): State<Sink>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let path = format!("/{path}");
    let (answer, delay) = {
        let mut g = sink.lock();
        let down = g
            .outages
            .get(&path)
            .filter(|(until, _)| crate::clock::monotonic() < *until)
            .map(|(_, s)| *s);
        let flaky = g.flaky.get_mut(&path).and_then(|(rate, x)| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            ((*x % 10_000) as f64 / 10_000.0 < *rate).then_some(503)
        });
        let scripted = match down.or(flaky) {
            Some(status) => Some(Answer {
                status,
                retry_after: None,
                body: "outage".into(),
            }),
            None => g.scripts.get_mut(&path).and_then(|q| q.pop_front()),
        };
        g.in_flight += 1;
        g.max_in_flight = g.max_in_flight.max(g.in_flight);
        (scripted, g.delay)
    };
    // Counted out however the request ends (a sender may hang up while held).
    struct Held(Sink);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.lock().in_flight -= 1;
        }
    }
    let held = Held(sink.clone());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    drop(held);
    let answer = answer.unwrap_or_else(|| {
        if path.starts_with("/slack") {
            Answer {
                status: 200,
                retry_after: None,
                body: "ok".into(),
            }
        } else if path.starts_with("/teams") {
            Answer {
                status: 202,
                retry_after: None,
                body: String::new(),
            }
        } else {
            Answer {
                status: 200,
                retry_after: None,
                body: String::new(),
            }
        }
    });
    let rec = Received {
        path: path.clone(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
            .collect(),
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        raw: body,
        status: answer.status,
        at: Some(crate::clock::monotonic()),
        received_at: crate::clock::wall_now(),
    };
    sink.lock().received.push(rec.clone());
    let _ = sink.tx.send(rec);
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, answer.body).into_response();
    if let Some(ra) = answer.retry_after
        && let Ok(v) = ra.parse()
    {
        r.headers_mut().insert("retry-after", v);
    }
    r
}
