//! Configuration: TOML, strict (`deny_unknown_fields`), validated once at start-up
//! into [`Config`]. Every error names the file and the key.
//!
//! Here: the raw serde shapes and the validated types with their accessors. The
//! rules, one function per section, are in `validate`; where secrets come from is
//! `secret`. Imports `domain` and `notify` (whose types the settings are read into).
pub mod secret;
mod validate;

use crate::config::secret::SecretSource;
use crate::domain::Event;
use crate::notify::target;
pub use crate::notify::{Channel, ChannelKind, DeliveryConfig};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        de(d).map(Some)
    }

    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"15s\", \"5m\", \"1h\""
            ))
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: StoreConfig,
    #[serde(default)]
    deadline: DeadlineConfig,
    /// Read by [`DeliveryConfig::from_table`]: each channel kind adds its own keys.
    #[serde(default)]
    delivery: toml::Table,
    #[serde(default)]
    templates: TemplatesConfig,
    #[serde(default)]
    triage: TriageConfig,
    #[serde(default)]
    events: EventsConfig,
    #[serde(default)]
    teams: Vec<RawTeam>,
    #[serde(default)]
    people: Vec<RawPerson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerson {
    deadline: Vec<String>,
    slack: Option<String>,
    teams: Option<String>,
    email: Option<String>,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_grace", deserialize_with = "duration::de")]
    shutdown_grace: Duration,
    #[serde(default = "default_rate_limit")]
    rate_limit: f64,
    #[serde(default)]
    admin_tokens: Vec<TokenSource>,
    /// Cap on concurrent API connections; default from the open-file limit.
    max_connections: Option<usize>,
    /// Serve `/metrics` here instead of on the API's address.
    metrics_listen: Option<String>,
    #[serde(default = "default_max_watches")]
    max_watches_per_team: usize,
    #[serde(default = "default_max_subscriptions")]
    max_subscriptions_per_team: usize,
    #[serde(default = "default_max_watched_queues")]
    max_watched_queues_per_team: usize,
    tls: Option<TlsConfig>,
}

/// `[server] tls`: PEM files for the API and the page (re-read on reload).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_max_watches() -> usize {
    50
}
fn default_max_subscriptions() -> usize {
    20_000
}
fn default_max_watched_queues() -> usize {
    100
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub shutdown_grace: Duration,
    /// API requests per second allowed per token (bursts up to twice that); 0 disables.
    pub rate_limit: f64,
    /// Digests of the tokens allowed to call operator endpoints (`POST /-/reload`).
    pub admin_tokens: Vec<TokenDigest>,
    /// `None`: sized from the open-file limit at start ([`crate::http::server::default_max_connections`]).
    pub max_connections: Option<usize>,
    /// When set, `/metrics` is served on this address only.
    pub metrics_listen: Option<String>,
    /// Watches a team may create through the API.
    pub max_watches_per_team: usize,
    /// Active subscriptions a team may hold (API and watches together).
    pub max_subscriptions_per_team: usize,
    /// Distinct queues over all of a team's watches.
    pub max_watched_queues_per_team: usize,
    /// Serve HTTPS instead of HTTP on `listen`.
    pub tls: Option<TlsConfig>,
}

fn default_rate_limit() -> f64 {
    20.0
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_grace() -> Duration {
    Duration::from_secs(20)
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            shutdown_grace: default_grace(),
            rate_limit: default_rate_limit(),
            admin_tokens: Vec::new(),
            max_connections: None,
            metrics_listen: None,
            max_watches_per_team: default_max_watches(),
            max_subscriptions_per_team: default_max_subscriptions(),
            max_watched_queues_per_team: default_max_watched_queues(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// How long a finished (or ended) subscription is kept, with its job state and
    /// notices, after it finished: `"30d"`, `"0"` (none), `"forever"`.
    #[serde(default = "default_keep", deserialize_with = "keep::de")]
    pub keep_finished: Keep,
    /// How long a dead letter is kept.
    #[serde(default = "default_keep", deserialize_with = "keep::de")]
    pub keep_dead_letters: Keep,
}

/// A retention period: `For(d)` (zero keeps nothing), or `Forever`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    For(Duration),
    Forever,
}

impl Keep {
    /// What is older than this (finished or dead before it) goes; `None`: nothing.
    pub fn cutoff(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Keep::Forever => None,
            Keep::For(d) => {
                Some(now - chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::MAX))
            }
        }
    }

    /// How often a sweep runs: at least once a minute and ten times per period,
    /// never more than once a second.
    pub fn sweep_every(&self) -> Duration {
        match self {
            Keep::Forever => Duration::from_secs(60),
            Keep::For(d) => (*d / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)),
        }
    }
}

fn default_keep() -> Keep {
    Keep::For(Duration::from_secs(30 * 86_400))
}

mod keep {
    use super::Keep;
    use serde::{Deserialize, Deserializer};

    /// A duration string, or the bare number `0` (`keep_finished = 0`).
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Text(String),
    }

    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Keep, D::Error> {
        let s = match Raw::deserialize(d)? {
            Raw::Number(0) => return Ok(Keep::For(std::time::Duration::ZERO)),
            Raw::Number(n) => {
                return Err(serde::de::Error::custom(format!(
                    "{n} has no unit; write e.g. \"{n}d\" or \"{n}s\", \"0\" or \"forever\""
                )));
            }
            Raw::Text(s) => s,
        };
        let t = s.trim();
        if t == "forever" {
            return Ok(Keep::Forever);
        }
        if t == "0" {
            return Ok(Keep::For(std::time::Duration::ZERO));
        }
        match humantime::parse_duration(t) {
            Ok(d) if d >= std::time::Duration::from_secs(1) => Ok(Keep::For(d)),
            Ok(_) => Err(serde::de::Error::custom(format!(
                "{s:?} is shorter than 1s; write \"0\" to keep nothing"
            ))),
            Err(e) => Err(serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"30d\", \"12h\", \"0\" or \"forever\""
            ))),
        }
    }
}

fn default_store_path() -> PathBuf {
    "data/notifier.sled".into()
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            keep_finished: default_keep(),
            keep_dead_letters: default_keep(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineConfig {
    #[serde(default = "default_poll", deserialize_with = "duration::de")]
    pub poll_interval: Duration,
    /// Overrides the endpoint (as `AWS_ENDPOINT_URL_DEADLINE` does).
    pub endpoint_url: Option<String>,
    /// Overrides the region from the AWS chain.
    pub region: Option<String>,
    #[serde(default = "default_terminal_grace", deserialize_with = "duration::de")]
    pub terminal_grace: Duration,
    /// Attempts per API call, including the first (the SDK's standard retry).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Base URL of the Deadline Cloud monitor (its host), for links in messages.
    pub monitor_url: Option<String>,
    /// Farms whose region differs from `region` (the links' path names the farm's region).
    #[serde(default)]
    pub farm_regions: std::collections::BTreeMap<String, String>,
    /// Global Deadline API budget (BatchGetJob/GetJob calls per second).
    #[serde(default = "default_max_rps")]
    pub max_requests_per_second: f64,
    /// A job PENDING/READY for longer than this is polled `idle_factor` times less often.
    #[serde(default = "default_idle_after", deserialize_with = "duration::de")]
    pub idle_after: Duration,
    #[serde(default = "default_factor")]
    pub idle_factor: u32,
    /// SUSPENDED jobs are polled this many times less often.
    #[serde(default = "default_factor")]
    pub suspended_factor: u32,
    /// Terminal jobs (within `terminal_grace`) are polled this many times less often.
    #[serde(default = "default_factor")]
    pub terminal_factor: u32,
    /// `job.stalled`: RUNNING with tasks running but no task succeeded for this long.
    #[serde(default = "default_stall_after", deserialize_with = "duration::de")]
    pub stall_after: Duration,
    /// `job.progress`: percentages of succeeded tasks that are announced (once each).
    #[serde(default = "default_milestones")]
    pub progress_milestones: Vec<u32>,
    /// How often watched queues are searched for new jobs.
    #[serde(
        default = "default_discovery_interval",
        deserialize_with = "duration::de"
    )]
    pub discovery_interval: Duration,
    /// How far each search looks back before the last pass (search results are
    /// eventually consistent).
    #[serde(
        default = "default_discovery_overlap",
        deserialize_with = "duration::de"
    )]
    pub discovery_overlap: Duration,
    /// SearchJobs calls per second for discovery: its own bucket, at most a quarter
    /// of `max_requests_per_second`, so polling is never starved by watches.
    #[serde(default = "default_discovery_rps")]
    pub discovery_max_requests_per_second: f64,
    /// A finished job (terminal for `terminal_grace`) is read this often, from what
    /// the budget leaves over, so a requeue is still seen.
    #[serde(default = "default_finished_poll", deserialize_with = "duration::de")]
    pub finished_poll_interval: Duration,
}

fn default_finished_poll() -> Duration {
    Duration::from_secs(600)
}

fn default_discovery_rps() -> f64 {
    0.5
}

fn default_stall_after() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_milestones() -> Vec<u32> {
    vec![50, 90]
}

fn default_discovery_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_discovery_overlap() -> Duration {
    Duration::from_secs(120)
}

fn default_max_rps() -> f64 {
    5.0
}
fn default_idle_after() -> Duration {
    Duration::from_secs(600)
}
fn default_factor() -> u32 {
    4
}

fn default_poll() -> Duration {
    Duration::from_secs(15)
}
fn default_terminal_grace() -> Duration {
    Duration::from_secs(3600)
}
fn default_attempts() -> u32 {
    3
}

/// `[triage]`: what a failure message gathers about why the job failed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriageConfig {
    /// Gather at all (failed tasks, exit codes, hosts, logs).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failed tasks described, at most (the total is always given).
    #[serde(default = "default_max_tasks")]
    pub max_tasks: usize,
    /// Read the failed tasks' session logs from CloudWatch Logs.
    #[serde(default = "yes")]
    pub logs: bool,
    /// Last lines of each failed task's log.
    #[serde(default = "default_log_lines")]
    pub log_lines: usize,
    /// A triage taking longer sends what it has, saying details were unavailable.
    #[serde(default = "default_triage_timeout", deserialize_with = "duration::de")]
    pub timeout: Duration,
    /// Deadline calls per second for triage, taken out of
    /// `deadline.max_requests_per_second` (polling gets the rest).
    #[serde(default = "default_triage_rps")]
    pub max_requests_per_second: f64,
}

fn yes() -> bool {
    true
}
fn default_max_tasks() -> usize {
    5
}
fn default_log_lines() -> usize {
    20
}
fn default_triage_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_triage_rps() -> f64 {
    2.5
}

/// `[events]`: Deadline Cloud's own state changes, pushed through EventBridge to an
/// SQS queue. Events only make a job due now; the read that follows is the truth, and
/// polling goes on at `backstop_interval` as the safety net for a lost event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// The queue the EventBridge rule feeds; none: polling only.
    #[serde(default)]
    pub sqs_queue_url: Option<String>,
    /// How often subscribed jobs are still polled while events flow.
    #[serde(default = "default_backstop", deserialize_with = "duration::de")]
    pub backstop_interval: Duration,
    /// Receives must have succeeded this long before polling relaxes to the backstop.
    #[serde(default = "default_relax_after", deserialize_with = "duration::de")]
    pub relax_after: Duration,
    /// Long-poll wait of each receive (SQS allows 0–20 s).
    #[serde(default = "default_wait_time", deserialize_with = "duration::de")]
    pub wait_time: Duration,
    /// How long a received message stays invisible to other receives: longer than
    /// reading its job and committing what it found, so a message still being
    /// worked on never comes back, and one whose work was lost does.
    #[serde(default = "default_visibility", deserialize_with = "duration::de")]
    pub visibility_timeout: Duration,
    /// Events arriving within this window share one BatchGetJob call.
    #[serde(default = "default_batch_window", deserialize_with = "duration::de")]
    pub batch_window: Duration,
}

fn default_backstop() -> Duration {
    Duration::from_secs(300)
}
fn default_relax_after() -> Duration {
    Duration::from_secs(60)
}
fn default_wait_time() -> Duration {
    Duration::from_secs(20)
}
fn default_visibility() -> Duration {
    Duration::from_secs(60)
}
fn default_batch_window() -> Duration {
    Duration::from_millis(100)
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            sqs_queue_url: None,
            backstop_interval: default_backstop(),
            relax_after: default_relax_after(),
            wait_time: default_wait_time(),
            visibility_timeout: default_visibility(),
            batch_window: default_batch_window(),
        }
    }
}

impl Default for TriageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_tasks: default_max_tasks(),
            logs: true,
            log_lines: default_log_lines(),
            timeout: default_triage_timeout(),
            max_requests_per_second: default_triage_rps(),
        }
    }
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        Self {
            poll_interval: default_poll(),
            endpoint_url: None,
            region: None,
            terminal_grace: default_terminal_grace(),
            max_attempts: default_attempts(),
            monitor_url: None,
            farm_regions: Default::default(),
            stall_after: default_stall_after(),
            progress_milestones: default_milestones(),
            max_requests_per_second: default_max_rps(),
            idle_after: default_idle_after(),
            idle_factor: default_factor(),
            suspended_factor: default_factor(),
            terminal_factor: default_factor(),
            discovery_interval: default_discovery_interval(),
            discovery_overlap: default_discovery_overlap(),
            discovery_max_requests_per_second: default_discovery_rps(),
            finished_poll_interval: default_finished_poll(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplatesConfig {
    /// Directory holding `<team>/<kind>/<event>.hbs` and `default/<kind>/…`.
    #[serde(default = "default_templates")]
    pub dir: PathBuf,
}

fn default_templates() -> PathBuf {
    "templates".into()
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        Self {
            dir: default_templates(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeam {
    name: String,
    #[serde(default)]
    tokens: Vec<TokenSource>,
    #[serde(default)]
    channels: Vec<RawChannel>,
    /// Optional allow-lists: the team may only watch jobs in these farms / queues.
    farm_ids: Option<Vec<String>>,
    queue_ids: Option<Vec<String>>,
    #[serde(default)]
    watches: Vec<RawWatch>,
    /// Share of polling when teams compete for the request budget.
    #[serde(default = "default_weight")]
    weight: f64,
}

fn default_weight() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    name: String,
    farm_id: String,
    queue_ids: Vec<String>,
    created_by: Option<Vec<String>>,
    name_matches: Option<String>,
    events: Option<Vec<Event>>,
    channels: Option<Vec<String>>,
}

/// A token as configured: a secret (literal/env/file), or only its SHA-256 hex digest.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TokenSource {
    Sha256 { sha256: String },
    Secret(SecretSource),
}

impl TokenSource {
    fn digest(&self) -> Result<TokenDigest, String> {
        match self {
            TokenSource::Sha256 { sha256 } => TokenDigest::from_hex(sha256)
                .ok_or_else(|| "sha256 must be 64 hex characters (sha256sum of the token)".into()),
            TokenSource::Secret(src) => {
                let tok = src.resolve()?;
                if tok.expose().chars().count() < 16 {
                    return Err("a token must be at least 16 characters".into());
                }
                Ok(TokenDigest::of(tok.expose()))
            }
        }
    }
}

/// SHA-256 of an API token. Presented tokens are hashed and compared in constant time.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest([redacted])")
    }
}

impl TokenDigest {
    pub fn of(token: &str) -> TokenDigest {
        use sha2::Digest;
        TokenDigest(sha2::Sha256::digest(token.as_bytes()).into())
    }

    pub fn from_hex(hex: &str) -> Option<TokenDigest> {
        let hex = hex.trim();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(TokenDigest(out))
    }

    pub fn matches(&self, other: &TokenDigest) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: String,
    kind: String,
    /// Every kind but `slack_app`, which takes `api_url` (a default) instead.
    url: Option<SecretSource>,
    secret: Option<SecretSource>,
    events: Option<Vec<Event>>,
    /// Events on which the job's owner is mentioned; `[]` turns mentions off.
    mention_owner: Option<Vec<Event>>,
    /// Teams only: post the bare Adaptive Card instead of the `message` envelope.
    card_only: Option<bool>,
    /// Slack app only: the bot token (`xoxb-…`).
    token: Option<SecretSource>,
    /// Slack app only: the channel id (`C…`).
    channel: Option<String>,
    /// Slack app only: `living` (default) or `post`.
    mode: Option<crate::notify::slack_app::Mode>,
    /// Slack app only: events that also reach the owner as a direct message.
    dm_owner: Option<Vec<Event>>,
    /// Slack app only: the Web API's base URL.
    api_url: Option<String>,
    /// One quiet range, or a list of them.
    quiet_hours: Option<RawQuietHours>,
    /// Events that are sent at once even in quiet hours and digest windows.
    quiet_urgent: Option<Vec<Event>>,
    /// Fold non-urgent messages arriving within this window into one digest.
    #[serde(default, deserialize_with = "duration::opt")]
    digest: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawQuietHours {
    One(RawQuiet),
    Many(Vec<RawQuiet>),
}

impl RawQuietHours {
    fn ranges(&self) -> Vec<&RawQuiet> {
        match self {
            RawQuietHours::One(r) => vec![r],
            RawQuietHours::Many(v) => v.iter().collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuiet {
    from: Option<String>,
    to: Option<String>,
    tz: String,
    days: Option<Vec<String>>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub deadline: DeadlineConfig,
    pub delivery: DeliveryConfig,
    pub templates: TemplatesConfig,
    pub triage: TriageConfig,
    pub events: EventsConfig,
    pub teams: Vec<Team>,
    /// `[[people]]`: who a job's `createdBy` is in chat.
    pub people: std::sync::Arc<crate::domain::people::People>,
}

#[derive(Debug, Clone)]
pub struct Team {
    pub name: String,
    /// SHA-256 digests of the team's API tokens; plaintext tokens are not kept.
    pub tokens: Vec<TokenDigest>,
    pub channels: Vec<Channel>,
    /// Farms the team may watch; `None` allows any the service's role can read.
    pub farm_ids: Option<Vec<String>>,
    /// Queues the team may watch; `None` allows any.
    pub queue_ids: Option<Vec<String>>,
    /// `[[teams.watches]]`: new jobs to subscribe automatically.
    pub watches: Vec<crate::domain::Watch>,
    /// Polling share relative to other teams when the budget is short (default 1).
    pub weight: f64,
}

impl Config {
    /// SearchJobs calls per second for discovery: its own share of the global
    /// budget, at most a quarter of it.
    pub fn discovery_budget(&self) -> f64 {
        self.deadline
            .discovery_max_requests_per_second
            .min(self.deadline.max_requests_per_second / 4.0)
    }

    /// Deadline calls per second triage may make: its share of the global budget
    /// (what discovery leaves of one half), none when triage is off.
    pub fn triage_budget(&self) -> f64 {
        if !self.triage.enabled {
            return 0.0;
        }
        self.triage
            .max_requests_per_second
            .min(self.deadline.max_requests_per_second / 2.0 - self.discovery_budget())
    }

    /// Polling's share: the global budget less triage's and discovery's, so never
    /// less than half of it.
    pub fn poll_budget(&self) -> f64 {
        self.deadline.max_requests_per_second - self.triage_budget() - self.discovery_budget()
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates; `path` is used in messages and to resolve relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: parse_message(&e, text),
        })?;
        validate::validate(raw, path)
    }

    pub fn team(&self, name: &str) -> Option<&Team> {
        self.teams.iter().find(|t| t.name == name)
    }

    /// Advice that does not stop start-up (printed by `check-config`, logged at start).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Ok(addr) = self.server.listen.parse::<std::net::SocketAddr>()
            && !addr.ip().is_loopback()
            && self.server.tls.is_none()
        {
            w.push(format!(
                "{}: server.listen {} is not a loopback address and server.tls is not set: team and admin \
                 tokens would cross the network in clear text (set [server] tls, or terminate TLS at a proxy \
                 or ingress in front of the service)",
                self.path.display(),
                addr
            ));
        }
        if self.teams.len() > 1 {
            for t in self.teams.iter().filter(|t| !t.has_allow_list()) {
                w.push(format!(
                    "{}: team {:?} has no farm_ids or queue_ids: it can watch any job the service's AWS role can read, including other teams' (set [[teams]] farm_ids / queue_ids)",
                    self.path.display(),
                    t.name
                ));
            }
        }
        w
    }
}

impl Team {
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// Whether the team's allow-lists admit `job`; `Err` says which list refuses it.
    pub fn admits(&self, job: &crate::domain::JobKey) -> Result<(), String> {
        if let Some(farms) = &self.farm_ids
            && !farms.iter().any(|f| job.farm_id == *f)
        {
            return Err(format!(
                "farm {} is not in team {:?}'s farm_ids",
                job.farm_id, self.name
            ));
        }
        if let Some(queues) = &self.queue_ids
            && !queues.iter().any(|q| job.queue_id == *q)
        {
            return Err(format!(
                "queue {} is not in team {:?}'s queue_ids",
                job.queue_id, self.name
            ));
        }
        Ok(())
    }

    pub fn has_allow_list(&self) -> bool {
        self.farm_ids.is_some() || self.queue_ids.is_some()
    }
}

/// Keys whose values are secrets: their values never appear in an error.
const SECRET_KEYS: &[&str] = &["tokens", "admin_tokens", "url", "secret", "sha256"];

/// A TOML error as `line L, column C, key `K`: message`, without the source line
/// the parser quotes, and with quoted values removed unless the key is known to
/// hold nothing secret.
fn parse_message(e: &toml::de::Error, text: &str) -> String {
    let Some(span) = e.span() else {
        return redact_quoted(e.message());
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c))
        });
    let secret = key
        .as_deref()
        .is_none_or(|k| SECRET_KEYS.iter().any(|s| k.rsplit('.').next() == Some(*s)))
        || SECRET_KEYS.iter().any(|s| line_text.contains(s));
    let message = if secret {
        redact_quoted(e.message())
    } else {
        e.message().trim().to_string()
    };
    match key {
        Some(k) => format!("line {line}, column {col}, key `{k}`: {message}"),
        None => format!("line {line}, column {col}: {message}"),
    }
}

/// Replaces every `"…"` and `'…'` in a parser message (serde quotes the value it
/// could not take) with `"<redacted>"`.
fn redact_quoted(m: &str) -> String {
    let mut out = String::with_capacity(m.len());
    let mut chars = m.trim().chars();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' {
            for d in chars.by_ref() {
                if d == c {
                    break;
                }
            }
            out.push_str("\"<redacted>\"");
        } else {
            out.push(c);
        }
    }
    out
}

/// `created_by` values a watch may list, and characters each.
pub const MAX_CREATED_BY: usize = 50;
pub const MAX_CREATED_BY_LEN: usize = 256;

/// Validates a watch for `team` (config or API); the error names the field
/// (`name`, `farm_id`, `queue_ids`, `created_by`, `name_matches`, `events`, `channels`).
pub fn check_watch(
    team: &Team,
    mut w: crate::domain::Watch,
) -> Result<crate::domain::Watch, (&'static str, String)> {
    if !valid_name(&w.name) {
        return Err(("name", format!("{:?} must be 1-64 of [a-z0-9_-]", w.name)));
    }
    let id_ok = |id: &str, prefix: &str| {
        id.strip_prefix(prefix)
            .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if !id_ok(&w.farm_id, "farm-") {
        return Err(("farm_id", "must be farm- followed by 32 hex digits".into()));
    }
    if !(1..=10).contains(&w.queue_ids.len()) {
        return Err((
            "queue_ids",
            "must list 1 to 10 queues (SearchJobs takes at most 10 per call)".into(),
        ));
    }
    // Every repeat, not only neighbours: each queue id is searched once.
    let mut seen_q = HashSet::new();
    w.queue_ids.retain(|q| seen_q.insert(q.clone()));
    for q in &w.queue_ids {
        if !id_ok(q, "queue-") {
            return Err((
                "queue_ids",
                format!("{q:?} must be queue- followed by 32 hex digits"),
            ));
        }
        let key = crate::domain::JobKey {
            farm_id: w.farm_id.clone().into(),
            queue_id: q.clone().into(),
            job_id: String::new().into(),
        };
        team.admits(&key).map_err(|m| {
            if m.starts_with("farm") {
                ("farm_id", m)
            } else {
                ("queue_ids", m)
            }
        })?;
    }
    if let Some(c) = &w.created_by {
        if c.is_empty() || c.iter().any(|x| x.trim().is_empty()) {
            return Err((
                "created_by",
                "list the createdBy values to match, or omit the key for everyone".into(),
            ));
        }
        if c.len() > MAX_CREATED_BY {
            return Err((
                "created_by",
                format!("lists {} values; at most {MAX_CREATED_BY}", c.len()),
            ));
        }
        if let Some(x) = c.iter().find(|x| x.chars().count() > MAX_CREATED_BY_LEN) {
            return Err((
                "created_by",
                format!(
                    "a value of {} characters; at most {MAX_CREATED_BY_LEN} each",
                    x.chars().count()
                ),
            ));
        }
    }
    if let Some(re) = &w.name_matches
        && let Err(e) = regex_lite::Regex::new(re)
    {
        return Err(("name_matches", format!("not a valid regex: {e}")));
    }
    if w.events.is_empty() {
        return Err(("events", "an empty list would notify nothing".into()));
    }
    if w.channels.is_empty() {
        return Err(("channels", "an empty list would notify nowhere".into()));
    }
    for c in &w.channels {
        if team.channel(c).is_none() {
            return Err((
                "channels",
                format!("team {:?} has no channel {c:?}", team.name),
            ));
        }
    }
    let mut seen = HashSet::new();
    w.channels.retain(|c| seen.insert(c.clone()));
    Ok(w)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s != "default"
}

/// `us-west-2`, `eu-central-1`, `us-gov-west-1`, `cn-north-1` …
pub fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
[deadline]
poll_interval = "1s"
[delivery]
allow_private_targets = true
[[teams]]
name = "lighting"
tokens = ["lighting-token-0123456789"]
[[teams.channels]]
name = "slack"
kind = "slack"
url = "http://127.0.0.1:9/slack"
[[teams.channels]]
name = "pipeline"
kind = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
events = ["job.failed", "job.succeeded"]
"#;

    fn err(text: &str) -> String {
        Config::from_toml(text, Path::new("notifier.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_config_loads() {
        let c = Config::from_toml(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(c.deadline.poll_interval, Duration::from_secs(1));
        assert_eq!(c.teams[0].channels[1].events.as_ref().unwrap().len(), 2);
        assert!(!c.teams[0].channels[1].wants(Event::Started));
    }

    #[test]
    fn errors_name_the_key() {
        let e = err(&GOOD.replace("poll_interval = \"1s\"", "poll_interval = \"soon\""));
        assert!(
            e.contains("poll_interval") && e.contains("notifier.toml"),
            "{e}"
        );
        let e = err(&GOOD.replace("[server]", "[server]\nlisten_typo = 1"));
        assert!(e.contains("listen_typo"), "{e}");
        let e = err(&GOOD.replace("\"job.failed\"", "\"job.exploded\""));
        assert!(e.contains("job.exploded"), "{e}");
        let e = err(&GOOD.replace(
            "allow_private_targets = true",
            "allow_private_targets = false",
        ));
        assert!(e.contains("teams[0].channels[0].url"), "{e}");
        let e = err(&GOOD.replace("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "nope"));
        assert!(e.contains("teams[0].channels[1].secret"), "{e}");
        let e = err(&GOOD.replace(
            "\"lighting-token-0123456789\"",
            "{ env = \"DN_UNSET_TOKEN_VAR\" }",
        ));
        assert!(
            e.contains("teams[0].tokens[0]") && e.contains("DN_UNSET_TOKEN_VAR"),
            "{e}"
        );
    }

    #[test]
    fn events_section_defaults_and_errors_name_the_key() {
        let c = Config::from_toml(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(c.events.sqs_queue_url, None);
        assert_eq!(c.events.backstop_interval, Duration::from_secs(300));
        assert_eq!(c.events.wait_time, Duration::from_secs(20));
        let with = |extra: &str| format!("{GOOD}\n[events]\n{extra}\n");
        let url = "https://sqs.us-west-2.amazonaws.com/111122223333/deadline-events";
        let c = Config::from_toml(
            &with(&format!(
                "sqs_queue_url = \"{url}\"\nbackstop_interval = \"2s\""
            )),
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.events.sqs_queue_url.as_deref(), Some(url));
        assert_eq!(c.events.backstop_interval, Duration::from_secs(2));
        for (extra, key) in [
            (
                "sqs_queue_url = \"deadline-events\"",
                "events.sqs_queue_url",
            ),
            (
                "sqs_queue_url = \"https://sqs.us-west-2.amazonaws.com/deadline-events\"",
                "events.sqs_queue_url",
            ),
            ("wait_time = \"25s\"", "events.wait_time"),
            ("visibility_timeout = \"1s\"", "events.visibility_timeout"),
            ("backstop_interval = \"soon\"", "backstop_interval"),
            ("queue = \"x\"", "queue"),
        ] {
            let e = err(&with(extra));
            assert!(
                e.contains(key) && e.contains("notifier.toml"),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn shares_of_the_deadline_budget_leave_polling_half() {
        let c = Config::from_toml(GOOD, Path::new("x.toml")).unwrap();
        // Defaults: 5/s global, discovery 0.5, triage 2.5 → 2.0, polling 2.5.
        assert_eq!(c.discovery_budget(), 0.5);
        assert_eq!(c.triage_budget(), 2.0);
        assert_eq!(c.poll_budget(), 2.5);
        assert_eq!(c.server.max_watches_per_team, 50);
        assert_eq!(c.server.max_subscriptions_per_team, 20_000);
        assert_eq!(c.server.max_watched_queues_per_team, 100);
        assert_eq!(c.teams[0].weight, 1.0);
        let c = Config::from_toml(
            &GOOD.replace(
                "poll_interval = \"1s\"",
                "poll_interval = \"1s\"\nmax_requests_per_second = 1\ndiscovery_max_requests_per_second = 5",
            ),
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.discovery_budget(), 0.25, "at most a quarter");
        assert!(c.poll_budget() >= 0.5, "{}", c.poll_budget());
        let e = err(&GOOD.replace("[server]", "[server]\nmax_watches_per_team = 0"));
        assert!(e.contains("server.max_watches_per_team"), "{e}");
        let e = err(&GOOD.replace("name = \"lighting\"", "name = \"lighting\"\nweight = 0"));
        assert!(e.contains("teams[0].weight"), "{e}");
        let e = err(&GOOD.replace(
            "[server]",
            "[server]\ntls = { cert = \"missing.pem\", key = \"missing.key\" }",
        ));
        assert!(e.contains("server.tls.cert"), "{e}");
        let w = Config::from_toml(
            &GOOD.replace("127.0.0.1:0", "0.0.0.0:8080"),
            Path::new("x.toml"),
        )
        .unwrap()
        .warnings();
        assert!(w.iter().any(|w| w.contains("server.tls")), "{w:?}");
    }

    #[test]
    fn farm_regions_and_region_are_checked() {
        let farm = format!("farm-{}", "a".repeat(32));
        let c = Config::from_toml(
            &GOOD.replace(
                "poll_interval = \"1s\"",
                &format!("poll_interval = \"1s\"\nregion = \"us-west-2\"\nfarm_regions = {{ \"{farm}\" = \"eu-west-1\" }}"),
            ),
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.deadline.farm_regions[&farm], "eu-west-1");
        let e = err(&GOOD.replace(
            "poll_interval = \"1s\"",
            "poll_interval = \"1s\"\nfarm_regions = { \"farm-x\" = \"eu-west-1\" }",
        ));
        assert!(
            e.contains("deadline.farm_regions.\"farm-x\"") && e.contains("farm id"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "poll_interval = \"1s\"",
            &format!("poll_interval = \"1s\"\nfarm_regions = {{ \"{farm}\" = \"Europe\" }}"),
        ));
        assert!(
            e.contains("farm_regions") && e.contains("\"Europe\" is not an AWS region"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "poll_interval = \"1s\"",
            "poll_interval = \"1s\"\nregion = \"west\"",
        ));
        assert!(e.contains("deadline.region"), "{e}");
    }

    #[test]
    fn tokens_may_be_given_as_sha256() {
        let digest = "a0a1f9e0e28b0b0f6d8b6c1d5e5c5d0c0d3b9a3e8e8c6b1b6f0c7c9d2a9e5f10";
        let c = Config::from_toml(
            &GOOD.replace(
                "\"lighting-token-0123456789\"",
                &format!("{{ sha256 = \"{digest}\" }}"),
            ),
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.teams[0].tokens[0], TokenDigest::from_hex(digest).unwrap());
        let e = err(&GOOD.replace("\"lighting-token-0123456789\"", "{ sha256 = \"abc\" }"));
        assert!(
            e.contains("teams[0].tokens[0]") && e.contains("64 hex"),
            "{e}"
        );
        let plain = Config::from_toml(GOOD, Path::new("x.toml")).unwrap();
        assert!(plain.teams[0].tokens[0].matches(&TokenDigest::of("lighting-token-0123456789")));
        assert!(!format!("{:?}", plain.teams[0]).contains("lighting-token"));
    }

    #[test]
    fn secrets_never_in_errors() {
        let e = err(&GOOD.replace(
            "http://127.0.0.1:9/slack",
            "ftp://hooks.example.com/T000/SECRETPART",
        ));
        assert!(!e.contains("SECRETPART"), "{e}");
    }

    #[test]
    fn absurd_server_values_and_short_tokens_are_refused() {
        let e = err(&GOOD.replace("[server]", "[server]\nrate_limit = 1e-9"));
        assert!(e.contains("server.rate_limit"), "{e}");
        // 15 characters, 30 bytes: too short.
        let e = err(&GOOD.replace("lighting-token-0123456789", "ééééééééééééééé"));
        assert!(
            e.contains("teams[0].tokens[0]") && e.contains("16 characters"),
            "{e}"
        );
        let e = err(&GOOD.replace("[delivery]", "[delivery]\ntimeout = \"0s\""));
        assert!(e.contains("delivery.timeout"), "{e}");
    }

    #[test]
    fn parse_errors_never_echo_secrets() {
        let secret = "tok-SECRET-0123456789abcdef";
        for text in [
            GOOD.replace(
                "tokens = [\"lighting-token-0123456789\"]",
                &format!("tokens = \"{secret}\""),
            ),
            GOOD.replace(
                "url = \"http://127.0.0.1:9/slack\"",
                &format!("url = \"https://hooks.slack.com/{secret}"),
            ),
            GOOD.replace(
                "url = \"http://127.0.0.1:9/slack\"",
                &format!("url = 12 \"{secret}\""),
            ),
            GOOD.replace(
                "[server]",
                &format!("[server]\nadmin_tokens = {{ x = \"{secret}\" }}"),
            ),
        ] {
            let e = err(&text);
            assert!(!e.contains("SECRET"), "{e}");
            assert!(e.contains("notifier.toml") && e.contains("line "), "{e}");
        }
        let e = err(&GOOD.replace("\"job.failed\"", "\"job.exploded\""));
        assert!(
            e.contains("job.exploded") && e.contains("key `events`"),
            "{e}"
        );
    }

    #[test]
    fn people_and_mentions() {
        let text = GOOD.to_string()
            + r#"
[[people]]
deadline = ["jane"]
slack = "U024BE7LH"
teams = "jane@studio.com"
name = "Jane Doe"
"#;
        let c = Config::from_toml(&text, Path::new("x.toml")).unwrap();
        assert_eq!(c.people.owner("jane").unwrap().name, "Jane Doe");
        assert_eq!(
            c.teams[0].channels[0].mention_owner,
            crate::domain::people::DEFAULT_MENTION_EVENTS.to_vec()
        );
        let off = text.replacen(
            "kind = \"slack\"\n",
            "kind = \"slack\"\nmention_owner = []\n",
            1,
        );
        let c = Config::from_toml(&off, Path::new("x.toml")).unwrap();
        assert!(c.teams[0].channels[0].mention_owner.is_empty());
        for (bad, key) in [
            ("slack = \"U024BE7LH\"", "people[0].slack"),
            ("name = \"Jane Doe\"", "people[0].name"),
            ("teams = \"jane@studio.com\"", "people[0].teams"),
        ] {
            let broken = text.replace(
                bad,
                &format!("{} = \"<at>x</at>\"", bad.split(' ').next().unwrap()),
            );
            let e = err(&broken);
            assert!(e.contains(key), "{e}");
        }
        let e = err(&(text.clone() + "[[people]]\ndeadline = [\"jane\"]\nname = \"Other\"\n"));
        assert!(e.contains("people[1].deadline[0]"), "{e}");
    }

    #[test]
    fn slack_app_channels_take_a_token_and_a_channel_id() {
        let app = GOOD.to_string()
            + "[[teams.channels]]\nname = \"live\"\nkind = \"slack_app\"\ntoken = \"xoxb-1-2\"\nchannel = \"C0123456789\"\n";
        let c = Config::from_toml(&app, Path::new("x.toml")).unwrap();
        let ch = &c.teams[0].channels[2];
        let a = ch.app.as_ref().unwrap();
        assert_eq!(
            ch.url.expose(),
            "https://slack.com/api/",
            "the default api_url"
        );
        assert_eq!(a.mode, crate::notify::slack_app::Mode::Living);
        assert!(a.dm_owner.is_empty());
        assert!(
            !format!("{ch:?}").contains("xoxb-1-2"),
            "the token is a secret"
        );
        let post = Config::from_toml(
            &(app.clone() + "mode = \"post\"\ndm_owner = [\"job.failed\"]\n"),
            Path::new("x.toml"),
        )
        .unwrap();
        let a = post.teams[0].channels[2].app.as_ref().unwrap();
        assert_eq!(a.mode, crate::notify::slack_app::Mode::Post);
        assert_eq!(a.dm_owner, vec![Event::Failed]);
        for (broken, key, says) in [
            (
                app.replace("token = \"xoxb-1-2\"\n", ""),
                "channels[2].token",
                "is required",
            ),
            (
                app.replace("channel = \"C0123456789\"\n", ""),
                "channels[2].channel",
                "is required",
            ),
            (
                app.replace("C0123456789", "#renders"),
                "channels[2].channel",
                "not a Slack channel id",
            ),
            (
                app.clone() + "url = \"https://hooks.slack.com/x\"\n",
                "channels[2].url",
                "Web API",
            ),
            (app.clone() + "mode = \"thread\"\n", "mode", ""),
            (
                GOOD.replacen(
                    "kind = \"slack\"\n",
                    "kind = \"slack\"\nchannel = \"C01\"\n",
                    1,
                ),
                "channels[0].channel",
                "only applies to kind = \"slack_app\"",
            ),
        ] {
            let e = err(&broken);
            assert!(e.contains(key) && e.contains(says), "{key}: {e}");
        }
        let e = err(&(GOOD.to_string()
            + "[[people]]\ndeadline = [\"x\"]\nname = \"X\"\nemail = \"not-an-address\"\n"));
        assert!(e.contains("people[0].email"), "{e}");
    }

    #[test]
    fn quiet_hours_and_digests_are_checked_naming_the_key() {
        let with = |keys: &str| {
            GOOD.replacen(
                "kind = \"slack\"\n",
                &format!("kind = \"slack\"\n{keys}\n"),
                1,
            )
        };
        let c = Config::from_toml(
            &with("quiet_hours = { from = \"20:00\", to = \"08:00\", tz = \"Europe/London\" }\nquiet_urgent = [\"job.failed\"]\ndigest = \"15m\""),
            Path::new("x.toml"),
        )
        .unwrap();
        let d = &c.teams[0].channels[0].defer;
        assert_eq!(d.quiet.len(), 1);
        assert_eq!(d.urgent, vec![Event::Failed]);
        assert_eq!(d.digest, Some(Duration::from_secs(900)));
        let list = Config::from_toml(
            &with("quiet_hours = [{ days = [\"sat\", \"sun\"], tz = \"UTC\" }, { from = \"22:00\", to = \"06:00:30\", tz = \"Asia/Kolkata\", days = [\"fri\"] }]"),
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(list.teams[0].channels[0].defer.quiet.len(), 2);
        for (keys, key) in [
            (
                "quiet_hours = { from = \"20:00\", to = \"08:00\", tz = \"Mars/Olympus\" }",
                "channels[0].quiet_hours.tz",
            ),
            (
                "quiet_hours = { from = \"8pm\", to = \"08:00\", tz = \"UTC\" }",
                "channels[0].quiet_hours.from",
            ),
            (
                "quiet_hours = { from = \"08:00\", to = \"08:00\", tz = \"UTC\" }",
                "channels[0].quiet_hours.to",
            ),
            (
                "quiet_hours = { from = \"08:00\", to = \"08:00:30\", tz = \"UTC\" }",
                "channels[0].quiet_hours.to",
            ),
            (
                "quiet_hours = { from = \"08:00\", tz = \"UTC\" }",
                "channels[0].quiet_hours.to",
            ),
            (
                "quiet_hours = { tz = \"UTC\" }",
                "channels[0].quiet_hours.from",
            ),
            (
                "quiet_hours = [{ days = [\"sat\"], tz = \"UTC\" }, { days = [\"someday\"], tz = \"UTC\" }]",
                "channels[0].quiet_hours[1].days[0]",
            ),
            ("digest = \"25h\"", "channels[0].digest"),
            ("digest = \"500ms\"", "channels[0].digest"),
            (
                "quiet_urgent = [\"job.failed\"]",
                "channels[0].quiet_urgent",
            ),
        ] {
            let e = err(&with(keys));
            assert!(e.contains(key), "{keys}: {e}");
        }
    }

    #[test]
    fn card_only_is_a_teams_option() {
        let teams = GOOD.to_string()
            + "[[teams.channels]]\nname = \"lighting-teams\"\nkind = \"teams\"\nurl = \"https://prod-12.westus.logic.azure.com/workflows/x\"\n";
        let c = Config::from_toml(&teams, Path::new("x.toml")).unwrap();
        assert!(
            !c.teams[0].channels[2].card_only,
            "the envelope is the default"
        );
        let c = Config::from_toml(&(teams.clone() + "card_only = true\n"), Path::new("x.toml"))
            .unwrap();
        assert!(c.teams[0].channels[2].card_only);
        // A Workflows URL on flow.microsoft.com is accepted by default.
        let flow = teams.replace(
            "https://prod-12.westus.logic.azure.com/workflows/x",
            "https://default1234.07.environment.flow.microsoft.com/workflows/x",
        );
        assert!(Config::from_toml(&flow, Path::new("x.toml")).is_ok());
        let e = err(&GOOD.replacen(
            "kind = \"slack\"\n",
            "kind = \"slack\"\ncard_only = true\n",
            1,
        ));
        assert!(
            e.contains("teams[0].channels[0].card_only")
                && e.contains("only applies to kind = \"teams\""),
            "{e}"
        );
    }

    #[test]
    fn regions() {
        for ok in [
            "us-west-2",
            "eu-central-1",
            "us-gov-west-1",
            "cn-north-1",
            "ap-southeast-4",
        ] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in [
            "",
            "us",
            "us-west",
            "US-WEST-2",
            "us-west-2/..",
            "us_west_2",
            "us--2",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
    }

    #[test]
    fn keep_takes_a_duration_zero_or_forever_and_names_the_key_otherwise() {
        let with = |v: &str| {
            let text = GOOD.replacen(
                "[deadline]\n",
                &format!("[store]\nkeep_finished = {v}\n[deadline]\n"),
                1,
            );
            Config::from_toml(&text, Path::new("x.toml"))
        };
        let keep = |v: &str| with(v).unwrap().store.keep_finished;
        assert_eq!(keep("0"), Keep::For(Duration::ZERO));
        assert_eq!(keep("\"0\""), Keep::For(Duration::ZERO));
        assert_eq!(keep("\"forever\""), Keep::Forever);
        assert_eq!(keep("\"3s\""), Keep::For(Duration::from_secs(3)));
        for bad in ["30", "\"500ms\"", "\"soon\""] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("keep_finished"), "{bad}: {e}");
        }
    }
}
