//! The API's HTTP server: our own accept loop over hyper, so that no client can
//! hold the service's file descriptors. Every connection is watched: a request
//! head must arrive within `header_timeout` of its first byte however slowly bytes
//! drip, a request must be read and answered within `body_timeout`, an idle
//! keep-alive connection closes after `idle_timeout`. At `max_connections` the
//! oldest connection with no request in flight is shed, so a new client (a health
//! check, an artist) is served at once. The service raises its fd limit to the hard
//! limit at start and keeps [`FD_RESERVE`] descriptors for deliveries and the store.
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

/// Where each new connection's TLS settings come from (the set in force, so a
/// reloaded certificate serves new connections at once); `None` inside: plain HTTP.
pub type TlsSource = Arc<dyn Fn() -> Option<Arc<tokio_rustls::rustls::ServerConfig>> + Send + Sync>;

/// What a connection's bytes travel over: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// Descriptors kept free of API connections: outbound deliveries, the Deadline
/// client, the store, logs.
pub const FD_RESERVE: u64 = 512;

#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Longest request line (method, target, version) → 414.
    pub max_request_line: usize,
    /// Largest header block → 431.
    pub max_header_bytes: usize,
}

impl Limits {
    pub fn with_max_connections(max_connections: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections,
            max_request_line: 8 * 1024,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Raises the soft limit on open files to the hard limit; returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The default connection cap for an fd limit: well under it, with the reserve kept.
pub fn default_max_connections(fd_limit: u64) -> usize {
    (fd_limit.saturating_sub(FD_RESERVE) * 3 / 4).clamp(16, 100_000) as usize
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request (a new or kept-alive connection).
    Idle(Instant),
    /// Bytes of a request head have arrived since then.
    Head(Instant),
    /// A request is being read or answered since then.
    Busy(Instant),
}

struct ConnState {
    phase: Mutex<Phase>,
    close: Notify,
    /// Responses our service has produced on this connection.
    answered: AtomicU64,
}

impl ConnState {
    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn set(&self, p: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }
    fn busy(&self) -> bool {
        matches!(self.phase(), Phase::Busy(_))
    }
}

/// The socket, noting when a request head starts to arrive, and putting our own
/// answer (JSON, security headers) in place of the bare error response hyper
/// writes for a request it could not parse.
struct Watched<S> {
    inner: S,
    state: Arc<ConnState>,
    /// Status lines written so far.
    responses: u64,
    /// Bytes of a replacement response still to write.
    pending: Vec<u8>,
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    /// Writes what is left of a replacement; Ready once it is all out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The response hyper writes on its own for a request head it refuses, as
/// (status, reason, what our body says).
fn hyper_error(buf: &[u8]) -> Option<(u16, &'static str, &'static str)> {
    let line = buf.strip_prefix(b"HTTP/1.1 ")?;
    Some(match line.get(..3)? {
        b"400" => (400, "Bad Request", "malformed HTTP request"),
        b"414" => (414, "URI Too Long", "request line too long"),
        b"431" => (
            431,
            "Request Header Fields Too Large",
            "request headers too large",
        ),
        b"505" => (
            505,
            "HTTP Version Not Supported",
            "HTTP version not supported",
        ),
        [b'4' | b'5', _, _] => (400, "Bad Request", "malformed HTTP request"),
        _ => return None,
    })
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && let Phase::Idle(_) = self.state.phase()
        {
            self.state.set(Phase::Head(crate::clock::monotonic()));
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match this.drain(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        // Interim answers (100 Continue) are not responses to count.
        if buf.starts_with(b"HTTP/1.") && buf.get(9) != Some(&b'1') {
            let ours = this.state.answered.load(Ordering::Relaxed);
            this.responses += 1;
            // A status line our service did not produce is hyper's own answer to
            // a request it could not parse: ours goes out instead, and the
            // connection closes after it as hyper's would.
            if this.responses > ours
                && let Some((status, reason, message)) = hyper_error(buf)
            {
                this.state.answered.fetch_add(1, Ordering::Relaxed);
                this.pending = crate::http::web::raw_error(status, reason, message);
                let _ = this.drain(cx);
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

type Registry = Arc<Mutex<BTreeMap<u64, Arc<ConnState>>>>;

fn lock(r: &Registry) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnState>>> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

/// Whether a query string carries a `token` (or `access_token`) parameter, in
/// any case, percent-encoded or not.
fn token_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(name, _)| {
            let n = name.trim().to_ascii_lowercase();
            n == "token" || n == "access_token"
        })
    })
}

/// Our own limits on the request head, answered in JSON (hyper's own, higher ones
/// would answer with an empty body).
fn head_error(req: &Request<hyper::body::Incoming>, limits: &Limits) -> Option<Response<Body>> {
    // A token in a URL ends up in history, proxy logs and Referer headers: refused
    // on every path, before anything routes or logs the request.
    if token_in_query(req.uri().query()) {
        return Some(json_error(
            StatusCode::BAD_REQUEST,
            "a token was sent in the URL; send it only in the Authorization header (Bearer), and treat this one as exposed",
        ));
    }
    let line = req.method().as_str().len() + req.uri().to_string().len() + 10;
    if line > limits.max_request_line {
        return Some(json_error(
            StatusCode::URI_TOO_LONG,
            &format!("request line longer than {} bytes", limits.max_request_line),
        ));
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers > limits.max_header_bytes {
        return Some(json_error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!(
                "request headers larger than {} bytes",
                limits.max_header_bytes
            ),
        ));
    }
    None
}

/// Serves `router` on `listener` until `shutdown` turns true; then stops accepting,
/// closes idle connections and lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<TlsSource>,
    mut shutdown: watch::Receiver<bool>,
) {
    let registry: Registry = Arc::default();
    let next_id = AtomicU64::new(0);
    let all_closed = Arc::new(Notify::new());
    let sweeper = tokio::spawn(sweep(registry.clone(), limits.clone()));
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or a transient error: free an idle slot, pause
                // briefly, and say so at most once a minute.
                if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(error = %e, connections = lock(&registry).len(), "accept failed; shedding an idle connection");
                    last_accept_error = Some(crate::clock::monotonic());
                }
                shed_oldest_idle(&registry);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        {
            let mut reg = lock(&registry);
            if reg.len() >= limits.max_connections {
                let oldest_idle = reg.iter().find(|(_, c)| !c.busy()).map(|(id, _)| *id);
                match oldest_idle.and_then(|id| reg.remove(&id)) {
                    Some(c) => c.close.notify_one(),
                    None => continue, // every connection is mid-request: refuse this one
                }
            }
        }
        let _ = stream.set_nodelay(true);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            phase: Mutex::new(Phase::Idle(crate::clock::monotonic())),
            close: Notify::new(),
            answered: AtomicU64::new(0),
        });
        lock(&registry).insert(id, state.clone());
        let tls_config = tls.as_ref().and_then(|f| f());
        let router = router.clone();
        let limits2 = limits.clone();
        let svc_state = state.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            answer(router.clone(), svc_state.clone(), limits2.clone(), req)
        });
        let registry2 = registry.clone();
        let all_closed2 = all_closed.clone();
        let mut conn_shutdown = shutdown.clone();
        let idle_timeout = limits.idle_timeout;
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let Some(stream) = handshake(stream, tls_config, handshake_timeout).await else {
                forget(&registry2, id, &all_closed2);
                return;
            };
            let io = TokioIo::new(Watched {
                inner: stream,
                state: state.clone(),
                responses: 0,
                pending: Vec::new(),
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                // Our sweeper enforces the head deadline from the first byte; hyper's
                // own timer is only a backstop for a connection that never speaks.
                .header_read_timeout(idle_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(io, service);
            tokio::pin!(conn);
            let stopping = tokio::select! {
                _ = conn.as_mut() => false,
                _ = state.close.notified() => false,
                _ = conn_shutdown.wait_for(|v| *v) => true,
            };
            if stopping {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
            forget(&registry2, id, &all_closed2);
        });
    }
    sweeper.abort();
    // Idle connections go now; requests in flight finish (the app bounds how long).
    let idle: Vec<_> = lock(&registry)
        .values()
        .filter(|c| !c.busy())
        .cloned()
        .collect();
    for c in idle {
        c.close.notify_one();
    }
    loop {
        let notified = all_closed.notified();
        if lock(&registry).is_empty() {
            return;
        }
        notified.await;
    }
}

/// One request: our head limits, else the router; then the headers every answer
/// of every listener carries, whichever route or limit made it.
async fn answer(
    router: Router,
    st: Arc<ConnState>,
    limits: Limits,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    st.set(Phase::Busy(crate::clock::monotonic()));
    let mut resp = match head_error(&req, &limits) {
        Some(r) => r,
        None => router
            .oneshot(req.map(Body::new))
            .await
            .unwrap_or_else(|e| match e {}),
    };
    crate::http::web::secure(resp.headers_mut());
    st.answered.fetch_add(1, Ordering::Relaxed);
    st.set(Phase::Idle(crate::clock::monotonic()));
    Ok(resp)
}

/// The connection's byte stream: TLS when configured, within `timeout`. `None`:
/// plain HTTP on a TLS port, a scanner, or a client that never finishes the
/// handshake; there is nothing to answer over.
async fn handshake(
    stream: tokio::net::TcpStream,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    timeout: Duration,
) -> Option<Box<dyn Stream>> {
    let Some(cfg) = tls else {
        return Some(Box::new(stream));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// A connection is over: out of the registry, and the last one out says so.
fn forget(registry: &Registry, id: u64, all_closed: &Notify) {
    let mut reg = lock(registry);
    reg.remove(&id);
    if reg.is_empty() {
        all_closed.notify_waiters();
    }
}

fn shed_oldest_idle(registry: &Registry) {
    let mut reg = lock(registry);
    let oldest = reg.iter().find(|(_, c)| !c.busy()).map(|(id, _)| *id);
    if let Some(c) = oldest.and_then(|id| reg.remove(&id)) {
        c.close.notify_one();
    }
}

/// Once a second: close connections past their deadline.
async fn sweep(registry: Registry, limits: Limits) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = crate::clock::monotonic();
        let expired: Vec<(u64, Arc<ConnState>)> = lock(&registry)
            .iter()
            .filter(|(_, c)| expired(c.phase(), now, &limits))
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        for (id, c) in expired {
            lock(&registry).remove(&id);
            c.close.notify_one();
        }
    }
}

fn expired(p: Phase, now: Instant, l: &Limits) -> bool {
    match p {
        Phase::Idle(t) => now.duration_since(t) > l.idle_timeout,
        Phase::Head(t) => now.duration_since(t) > l.header_timeout,
        Phase::Busy(t) => now.duration_since(t) > l.body_timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each phase's deadline, decided from instants set by hand.
    #[test]
    fn deadlines_per_phase_in_controlled_time() {
        let l = Limits::with_max_connections(10);
        let t = crate::clock::monotonic();
        let now = t + Duration::from_secs(11);
        assert!(expired(Phase::Head(t), now, &l), "a head dripping for 11 s");
        assert!(!expired(Phase::Idle(t), now, &l));
        assert!(!expired(Phase::Busy(t), now, &l));
        let now = now + Duration::from_secs(20);
        assert!(expired(Phase::Busy(t), now, &l));
        assert!(!expired(Phase::Idle(t), now, &l));
        let now = now + Duration::from_secs(30);
        assert!(expired(Phase::Idle(t), now, &l));
    }

    #[test]
    fn tokens_in_the_query_are_recognised() {
        for q in [
            "token=abc",
            "a=1&token=x",
            "TOKEN=x",
            "%74oken=x",
            "access_token=x",
            "token",
        ] {
            assert!(token_in_query(Some(q)), "{q}");
        }
        for q in [
            "tokens=1",
            "cursor=abc",
            "q=token",
            "channel=slack&event=job.failed",
        ] {
            assert!(!token_in_query(Some(q)), "{q}");
        }
        assert!(!token_in_query(None));
    }

    #[test]
    fn the_default_cap_leaves_the_reserve() {
        assert_eq!(default_max_connections(4096), (4096 - 512) * 3 / 4);
        assert_eq!(default_max_connections(100), 16);
    }
}
