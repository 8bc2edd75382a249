//! Config and template reload (SIGHUP, `POST /-/reload`): the new set is read and
//! validated completely, then swapped in one step. Anything that fails leaves the
//! running set in force, and the failure is logged, counted and returned.
use crate::config::{Config, ConfigError};
use crate::notify::send::{Sender, SenderError};
use crate::render::{RenderError, Renderer};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One consistent set of configuration, compiled templates and HTTP client. Readers
/// take an `Arc` of it and use that one set for the whole unit of work (a polled
/// batch, one delivery attempt, one API request), so a reload never mixes old and new.
pub struct Active {
    pub config: Arc<Config>,
    pub renderer: Arc<Renderer>,
    pub sender: Sender,
    /// `[server] tls`, read from its PEM files: what new API connections use.
    pub tls: Option<Arc<ServerTls>>,
    /// 1 for the set loaded at start-up, +1 per successful reload.
    pub generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("templates: {0}")]
    Templates(#[from] RenderError),
    #[error("{0}")]
    Sender(#[from] SenderError),
    #[error("{0}")]
    Tls(String),
    #[error(
        "{path}: {keys} changed, which takes effect only on restart; nothing was reloaded (restore the old value or restart)"
    )]
    RestartRequired { path: String, keys: String },
}

/// What a reload changed, for the log and the API response.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    pub generation: u64,
    pub teams_added: Vec<String>,
    pub teams_removed: Vec<String>,
    pub channels_added: Vec<String>,
    pub channels_removed: Vec<String>,
}

#[derive(Clone)]
pub struct Live {
    tx: Arc<watch::Sender<Arc<Active>>>,
    /// Serialises reloads, so two at once cannot interleave read and swap.
    gate: Arc<Mutex<()>>,
    /// The AWS chain's region, resolved once at start-up: monitor links of every
    /// reloaded set use it where `[deadline] region` is not set.
    chain_region: Option<String>,
}

impl Live {
    pub fn new(
        config: Config,
        renderer: Renderer,
        sender: Sender,
        tls: Option<Arc<ServerTls>>,
        chain_region: Option<String>,
    ) -> Live {
        let active = Active {
            config: Arc::new(config),
            renderer: Arc::new(renderer),
            sender,
            tls,
            generation: 1,
        };
        metrics::gauge!("deadline_notifier_config_generation").set(1.0);
        metrics::gauge!("deadline_notifier_config_last_reload_successful").set(1.0);
        Live {
            tx: Arc::new(watch::channel(Arc::new(active)).0),
            gate: Arc::new(Mutex::new(())),
            chain_region,
        }
    }

    pub fn current(&self) -> Arc<Active> {
        self.tx.borrow().clone()
    }

    /// Changes whenever a reload succeeds.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Active>> {
        self.tx.subscribe()
    }

    /// Re-reads the config file the service started with, and the templates it names.
    pub fn reload(&self, trigger: &'static str) -> Result<ReloadReport, ReloadError> {
        let _g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current();
        let result = load_next(&old, self.chain_region.as_deref());
        match &result {
            Ok((next, report)) => {
                self.tx.send_replace(next.clone());
                metrics::counter!("deadline_notifier_config_reloads_total", "outcome" => "success")
                    .increment(1);
                metrics::gauge!("deadline_notifier_config_last_reload_successful").set(1.0);
                metrics::gauge!("deadline_notifier_config_generation")
                    .set(report.generation as f64);
                metrics::gauge!("deadline_notifier_config_last_reload_success_timestamp_seconds")
                    .set(crate::clock::wall_now().timestamp() as f64);
                tracing::info!(
                    trigger,
                    generation = report.generation,
                    teams_added = ?report.teams_added,
                    teams_removed = ?report.teams_removed,
                    channels_added = ?report.channels_added,
                    channels_removed = ?report.channels_removed,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                metrics::counter!("deadline_notifier_config_reloads_total", "outcome" => "failure")
                    .increment(1);
                metrics::gauge!("deadline_notifier_config_last_reload_successful").set(0.0);
                tracing::error!(
                    trigger,
                    error = %e,
                    kept_generation = old.generation,
                    "configuration reload failed; the previous configuration stays in force"
                );
            }
        }
        result.map(|(_, r)| r)
    }
}

pub use tokio_rustls::rustls::ServerConfig as ServerTls;

/// Reads `[server] tls`: the certificate chain and its private key (PEM), checked
/// to belong together. The error names the key and the file.
pub fn load_tls(config: &Config) -> Result<Option<Arc<ServerTls>>, ReloadError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let Some(tls) = &config.server.tls else {
        return Ok(None);
    };
    let err = |key: &str, file: &std::path::Path, m: String| {
        ReloadError::Tls(format!(
            "{}: key `server.tls.{key}`: {}: {m}",
            config.path.display(),
            file.display()
        ))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            err(
                "cert",
                &tls.cert,
                format!("not a PEM certificate chain: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(err("cert", &tls.cert, "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| err("key", &tls.key, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut server = ServerTls::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("cert", &tls.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            err(
                "key",
                &tls.key,
                format!("does not fit the certificate: {e}"),
            )
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(server)))
}

fn load_next(
    old: &Active,
    chain_region: Option<&str>,
) -> Result<(Arc<Active>, ReloadReport), ReloadError> {
    let config = Config::load(&old.config.path)?;
    let restart = restart_only_changes(&old.config, &config);
    if !restart.is_empty() {
        return Err(ReloadError::RestartRequired {
            path: config.path.display().to_string(),
            keys: restart.join(", "),
        });
    }
    let renderer = Renderer::load(&config, chain_region)?;
    let sender = Sender::new(&config.delivery)?;
    // The files are read again even when the config names the same ones: a renewed
    // certificate is taken up by a reload.
    let tls = load_tls(&config)?;
    let report = diff_report(&old.config, &config, old.generation + 1);
    let next = Active {
        config: Arc::new(config),
        renderer: Arc::new(renderer),
        sender,
        tls,
        generation: old.generation + 1,
    };
    Ok((Arc::new(next), report))
}

/// Keys read once at start-up: the listening socket, the store, the API rate limiter
/// and the AWS client. Changing them on reload would silently do nothing, so the
/// reload is refused instead.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.server.listen != new.server.listen {
        keys.push("server.listen");
    }
    if old.server.metrics_listen != new.server.metrics_listen {
        keys.push("server.metrics_listen");
    }
    if old.server.rate_limit != new.server.rate_limit {
        keys.push("server.rate_limit");
    }
    if old.store.path != new.store.path {
        keys.push("store.path");
    }
    if old.deadline.endpoint_url != new.deadline.endpoint_url {
        keys.push("deadline.endpoint_url");
    }
    if old.deadline.region != new.deadline.region {
        keys.push("deadline.region");
    }
    if old.deadline.max_attempts != new.deadline.max_attempts {
        keys.push("deadline.max_attempts");
    }
    keys
}

fn diff_report(old: &Config, new: &Config, generation: u64) -> ReloadReport {
    let names = |c: &Config| -> std::collections::BTreeSet<String> {
        c.teams.iter().map(|t| t.name.clone()).collect()
    };
    let channels = |c: &Config| -> std::collections::BTreeSet<String> {
        c.teams
            .iter()
            .flat_map(|t| {
                t.channels
                    .iter()
                    .map(move |ch| format!("{}/{}", t.name, ch.name))
            })
            .collect()
    };
    let (ot, nt) = (names(old), names(new));
    let (oc, nc) = (channels(old), channels(new));
    ReloadReport {
        generation,
        teams_added: nt.difference(&ot).cloned().collect(),
        teams_removed: ot.difference(&nt).cloned().collect(),
        channels_added: nc.difference(&oc).cloned().collect(),
        channels_removed: oc.difference(&nc).cloned().collect(),
    }
}

/// Reloads on every SIGHUP until the process ends.
pub async fn on_sighup(live: Live) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload with POST /-/reload instead");
            return;
        };
        while hup.recv().await.is_some() {
            let l = live.clone();
            // Reading files and compiling templates is blocking work.
            let _ = tokio::task::spawn_blocking(move || l.reload("SIGHUP")).await;
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await
}
