//! Logging setup: `tracing` to stderr, human-readable or JSON, filtered by `RUST_LOG`.
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn"));
    // Colours only on a terminal: log files and container logs get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // try_init: a second init (tests, demo) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                3600.0,
            ])
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| {
                metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder()
            });
        let handle = recorder.handle();
        // Fails only if another recorder is installed; metrics then go there.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// A short, bounded label for why a delivery ended as it did.
pub fn reason_label(reason: &str) -> String {
    if let Some(rest) = reason.strip_prefix("HTTP ") {
        let code: String = rest.chars().take_while(char::is_ascii_digit).collect();
        return format!("http_{code}");
    }
    if reason.starts_with("transport error") {
        return "transport".into();
    }
    if reason.starts_with("target refused") {
        return "target_refused".into();
    }
    if reason.starts_with("channel disabled") {
        return "channel_disabled".into();
    }
    if reason.starts_with("gave up") {
        return "gave_up".into();
    }
    "other".into()
}
