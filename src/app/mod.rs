//! Start-up and shutdown: open the store, compile templates, build the clients, then
//! run the watcher, the delivery workers and the API until told to stop.
//!
//! This file is the top of the service (layer "app"): it may import everything but
//! `cli` and `devkit`. Its two children sit low, because the loops share them:
//! `live` (the current config, templates and HTTP client) and `telemetry`.
pub mod live;
pub mod telemetry;

use crate::app::live::Live;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::deadline::client::DeadlineClient;
use crate::deliver;
use crate::http::api::{self, AppState};
use crate::notify::send::Sender;
use crate::render::Renderer;
use crate::store::Store;
use crate::store::Wakers;
use crate::watch::{Health, WatchHandle, Watcher};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

pub struct App {
    pub live: Live,
    pub store: Store,
    client: Arc<DeadlineClient>,
    /// CloudWatch Logs, for the log tails of failed tasks.
    logs: Option<Arc<crate::deadline::logs::LogsClient>>,
    listener: tokio::net::TcpListener,
    /// `/metrics` on its own address, when `server.metrics_listen` is set.
    metrics_listener: Option<tokio::net::TcpListener>,
    clock: SharedClock,
    /// The event queue's client, when given (the demo, benchmarks); otherwise built
    /// from the AWS chain for `[events] sqs_queue_url`.
    queue: Option<crate::deadline::queue::EventQueue>,
}

impl App {
    /// Validates everything that can be checked before serving. `client` overrides
    /// the AWS-chain client (the demo passes one pointed at its simulator).
    pub async fn build(
        config: Config,
        client: Option<DeadlineClient>,
        clock: SharedClock,
    ) -> anyhow::Result<App> {
        crate::app::telemetry::metrics();
        // The client first: it resolves the AWS region chain, which monitor links use.
        let (client, logs) = match client {
            Some(c) => (c, None),
            None => (
                DeadlineClient::from_config(&config.deadline).await,
                Some(Arc::new(
                    crate::deadline::logs::LogsClient::from_config(&config.deadline).await,
                )),
            ),
        };
        let chain_region = client.region().map(str::to_string);
        let renderer =
            Renderer::load(&config, chain_region.as_deref()).context("loading templates")?;
        if let Some(m) = renderer.monitor()
            && m.region_for("").is_none()
        {
            tracing::warn!(
                "deadline.monitor_url is set but no region is known (set [deadline] region or AWS_REGION): \
                 messages carry no monitor link except for farms in deadline.farm_regions"
            );
        }
        for w in config.warnings() {
            tracing::warn!("{w}");
        }
        let opened = crate::clock::monotonic();
        let store = Store::open(&config.store.path)?;
        let phases = store.open_times();
        tracing::info!(
            store = %config.store.path.display(),
            open_ms = opened.elapsed().as_millis() as u64,
            engine_ms = phases.engine_ms,
            check_ms = phases.check_ms,
            count_ms = phases.count_ms,
            "store opened"
        );
        let sender = Sender::new(&config.delivery)?;
        let tls = crate::app::live::load_tls(&config)?;
        let mut inherited = listenfd::ListenFd::from_env();
        let listener = listen_on(&mut inherited, 0, &config.server.listen, "server.listen").await?;
        let metrics_listener = match &config.server.metrics_listen {
            Some(addr) => Some(listen_on(&mut inherited, 1, addr, "server.metrics_listen").await?),
            None => None,
        };
        Ok(App {
            live: Live::new(config, renderer, sender, tls, chain_region),
            store,
            client: Arc::new(client),
            logs,
            listener,
            metrics_listener,
            clock,
            queue: None,
        })
    }

    /// Reads `[events]` through `queue` (a local stand-in) instead of the AWS chain.
    pub fn with_event_queue(mut self, queue: crate::deadline::queue::EventQueue) -> App {
        self.queue = Some(queue);
        self
    }

    /// Reads session logs through `logs` (the demo points one at its simulator).
    pub fn with_logs(mut self, logs: crate::deadline::logs::LogsClient) -> App {
        self.logs = Some(Arc::new(logs));
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Runs until `stop` resolves, then stops polling, lets in-flight deliveries
    /// finish within `[server] shutdown_grace`, and flushes the store. Anything not
    /// delivered stays in the outbox for the next start.
    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (tx, rx) = watch::channel(false);
        let worker_rx = rx.clone();
        let wakers = Wakers::default();
        let backlogs = deliver::Backlogs::default();
        let (watch_handle, changes) = WatchHandle::new();
        let health = Arc::new(Health::default());
        let addr = self.local_addr();
        let outbox = self.store.outbox_len();
        // The delivery log only needs to outlive any possible duplicate or replay.
        let before = self.clock.now() - crate::watch::retention::DELIVERY_LOG_LIFE;
        let pruned = self.store.run(move |s| s.prune_delivered(before)).await?;
        tracing::info!(%addr, outbox, pruned, store = %self.store.path().display(), "deadline-notifier started");

        let (triage, requests) = crate::triage::Handle::new();
        let gatherer = Arc::new(crate::triage::Gatherer::new(
            self.client.clone(),
            self.logs.clone(),
            self.live.current().config.triage_budget().max(0.1),
        ));
        let (watcher, event_loop) = self
            .watcher(changes, health.clone(), triage, wakers.clone())
            .await;
        // Watcher and delivery workers run until shutdown; any of them ending early
        // means a store error, which stops the service rather than limping on.
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            watcher
                .run(rx)
                .await
                .map_err(|e| anyhow::Error::new(e).context("watcher stopped"))
        });
        let delivery = deliver::supervise(
            self.store.clone(),
            self.live.clone(),
            self.clock.clone(),
            wakers.clone(),
            backlogs.clone(),
            worker_rx.clone(),
        );
        tasks.spawn(async move {
            delivery
                .await
                .map_err(|e| anyhow::Error::new(e).context("delivery stopped"))
        });
        // Triage ends when the watcher drops its handle; it holds no message hostage
        // (each goes out with its fallback at its deadline).
        let triage_task = tokio::spawn(crate::triage::run(
            gatherer,
            requests,
            self.store.clone(),
            self.live.clone(),
            wakers.clone(),
        ));
        let (hup, sweep) = self.side_tasks(&watch_handle, &worker_rx);
        // Receiving stops with the process: a message it holds comes back to SQS.
        let events_task = event_loop.map(|l| tokio::spawn(l.run(worker_rx.clone())));

        let state = AppState::new(
            self.store.clone(),
            self.live.clone(),
            self.clock.clone(),
            wakers,
            watch_handle,
        )
        .with_health(health.view())
        .with_backlogs(backlogs);
        if let Some(listener) = self.metrics_listener {
            serve_metrics(listener, state.clone(), worker_rx.clone());
        }
        let mut server_task = tokio::spawn(serve_api(
            self.listener,
            self.live.clone(),
            state,
            worker_rx.clone(),
        ));

        let mut stop = Box::pin(stop);
        let mut failure: Option<anyhow::Error> = None;
        tokio::select! {
            _ = &mut stop => tracing::info!("shutdown requested; finishing in-flight deliveries"),
            Some(r) = tasks.join_next() => {
                failure = Some(match r {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow::anyhow!("a service task stopped unexpectedly"),
                    Err(e) => anyhow::anyhow!("a service task panicked: {e}"),
                });
            }
            r = &mut server_task => {
                failure = Some(anyhow::anyhow!("API server stopped: {:?}", r));
            }
        }
        let _ = tx.send(true);
        for t in [Some(hup), Some(sweep), events_task].into_iter().flatten() {
            t.abort();
        }
        // Unfinished triage is redone at the next start (its entries are stored).
        triage_task.abort();
        drain(
            tasks,
            server_task,
            self.live.current().config.server.shutdown_grace,
        )
        .await;
        self.store.flush().await?;
        tracing::info!(outbox = self.store.outbox_len(), "stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl App {
    /// The poll loop, and the event queue's receive loop feeding it when `[events]`
    /// names a queue. Read at start-up: a reload that changes `[events]` applies at
    /// the next start.
    async fn watcher(
        &mut self,
        changes: tokio::sync::mpsc::UnboundedReceiver<crate::watch::SubChange>,
        health: Arc<Health>,
        triage: crate::triage::Handle,
        wakers: Wakers,
    ) -> (Watcher, Option<crate::watch::events::EventLoop>) {
        let cfg = self.live.current().config.clone();
        let (event_loop, inbox) = match &cfg.events.sqs_queue_url {
            Some(url) => {
                let queue = match self.queue.take() {
                    Some(q) => q,
                    None => {
                        crate::deadline::queue::EventQueue::from_chain(
                            url,
                            cfg.deadline.max_attempts,
                        )
                        .await
                    }
                };
                let queue = Arc::new(queue);
                let budgets = crate::watch::budget::BudgetLoop {
                    client: self.client.clone(),
                    live: self.live.clone(),
                    store: self.store.clone(),
                    wakers,
                    queue: queue.clone(),
                };
                let (l, inbox) = crate::watch::events::EventLoop::new(
                    queue,
                    self.store.clone(),
                    cfg.events.clone(),
                    budgets,
                );
                (Some(l), Some(inbox))
            }
            None => (None, None),
        };
        let watcher = Watcher {
            store: self.store.clone(),
            client: self.client.clone(),
            live: self.live.clone(),
            clock: self.clock.clone(),
            changes,
            health,
            triage,
            events: inbox,
        };
        (watcher, event_loop)
    }

    /// Reload on SIGHUP, and the retention sweep: they stop with the process.
    fn side_tasks(
        &self,
        watch_handle: &WatchHandle,
        stop: &watch::Receiver<bool>,
    ) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
        let hup = tokio::spawn(crate::app::live::on_sighup(self.live.clone()));
        let sweep = tokio::spawn(crate::watch::retention::run(
            self.store.clone(),
            self.live.clone(),
            self.clock.clone(),
            watch_handle.clone(),
            stop.clone(),
        ));
        (hup, sweep)
    }
}

/// The API and the page, over TLS when `[server] tls` is set (each new connection
/// takes the certificate in force, so a reload renews it), until `stop`.
async fn serve_api(
    listener: tokio::net::TcpListener,
    live: Live,
    state: AppState,
    stop: watch::Receiver<bool>,
) {
    let max_connections = connection_cap(live.current().config.server.max_connections);
    let tls: crate::http::server::TlsSource = Arc::new(move || live.current().tls.clone());
    crate::http::server::serve(
        listener,
        api::router(state),
        crate::http::server::Limits::with_max_connections(max_connections),
        Some(tls),
        stop,
    )
    .await
}

/// `/metrics` on its own address (`server.metrics_listen`), until `stop`.
fn serve_metrics(listener: tokio::net::TcpListener, state: AppState, stop: watch::Receiver<bool>) {
    let addr = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(%addr, "serving /metrics on its own address");
    tokio::spawn(crate::http::server::serve(
        listener,
        api::metrics_router(state),
        crate::http::server::Limits::with_max_connections(64),
        None,
        stop,
    ));
}

/// A listening socket: the one handed over at `index` by whoever started the
/// process (systemd socket activation, `LISTEN_FDS`: the API's first, `/metrics`
/// second), else `addr` bound now. A handed-over socket is never re-bound, so a
/// supervisor (or a test) can restart the service on it without a window in which
/// the port is free.
async fn listen_on(
    inherited: &mut listenfd::ListenFd,
    index: usize,
    addr: &str,
    key: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    let handed = inherited
        .take_tcp_listener(index)
        .with_context(|| format!("LISTEN_FDS socket {index} (for {key}) is not a TCP listener"))?;
    match handed {
        Some(l) => {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            tracing::info!(key, addr = %l.local_addr()?, "listening on a socket handed over by the parent (LISTEN_FDS); {key} is not bound");
            Ok(l)
        }
        None => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({key})")),
    }
}

/// The API's connection cap: `server.max_connections`, but never more than the
/// open-file limit allows with descriptors kept for deliveries and the store.
fn connection_cap(configured: Option<usize>) -> usize {
    let fd_limit = crate::http::server::raise_fd_limit();
    let room = crate::http::server::default_max_connections(fd_limit);
    let max_connections = match configured {
        Some(n) if n > room => {
            tracing::warn!(
                configured = n,
                fd_limit,
                used = room,
                "server.max_connections is above what the open-file limit allows with descriptors kept for deliveries and the store; using the lower value"
            );
            room
        }
        Some(n) => n,
        None => room,
    };
    tracing::info!(fd_limit, max_connections, "API connection limits");
    max_connections
}

/// Waits up to `grace` for the tasks and the server to finish what they hold;
/// what is unfinished then stays in the outbox for the next start.
async fn drain(
    mut tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    server_task: tokio::task::JoinHandle<()>,
    grace: std::time::Duration,
) {
    let drained = tokio::time::timeout(grace, async {
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Err(e)) => {
                    tracing::error!(error = format!("{e:#}"), "task stopped with an error")
                }
                Err(e) => tracing::error!(error = %e, "task panicked"),
                Ok(Ok(())) => {}
            }
        }
        let _ = server_task.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "shutdown grace elapsed; unfinished messages stay in the outbox"
        );
        tasks.abort_all();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
