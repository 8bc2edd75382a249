//! `[delivery]` settings. Common keys are listed here; each kind adds
//! `<kind>_hosts` and `<kind>_interval` with the defaults its [`Kind`](super::Kind) gives.
use super::ChannelKind;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// true allows http:// and loopback/private addresses (on-prem chat, tests), and
    /// lifts the host allow-lists.
    pub allow_private_targets: bool,
    /// Private ranges that are allowed anyway (on-prem chat servers), e.g. "10.20.0.0/16".
    pub allowed_cidrs: Vec<String>,
    pub timeout: Duration,
    /// Back-off steps of one message after a retryable failure; the last repeats.
    pub retry_schedule: Vec<Duration>,
    /// A message still failing this long after it was queued goes to the dead letters.
    pub give_up_after: Duration,
    /// Longest `Retry-After` honoured; longer asks are capped to this.
    pub max_retry_after: Duration,
    /// Longest pause of a destination that keeps failing across messages.
    pub breaker_max: Duration,
    pub(crate) hosts: BTreeMap<&'static str, Vec<String>>,
    pub(crate) intervals: BTreeMap<&'static str, Duration>,
}

/// A bad `[delivery]` key: its name (without `delivery.`) and what is wrong.
#[derive(Debug)]
pub struct SettingError {
    pub key: String,
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> SettingError {
    SettingError {
        key: key.to_string(),
        message: message.into(),
    }
}

fn duration(key: &str, v: &toml::Value) -> Result<Duration, SettingError> {
    let s = v
        .as_str()
        .ok_or_else(|| err(key, "must be a duration string such as \"15s\""))?;
    humantime::parse_duration(s).map_err(|e| {
        err(
            key,
            format!("invalid duration {s:?} ({e}); write e.g. \"15s\", \"5m\", \"1h\""),
        )
    })
}

fn strings(key: &str, v: &toml::Value) -> Result<Vec<String>, SettingError> {
    let a = v
        .as_array()
        .ok_or_else(|| err(key, "must be a list of strings"))?;
    a.iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| err(key, "must be a list of strings"))
        })
        .collect()
}

fn default_schedule() -> Vec<Duration> {
    [1, 2, 5, 15, 30, 60, 120, 300]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            allow_private_targets: false,
            allowed_cidrs: Vec::new(),
            timeout: Duration::from_secs(15),
            retry_schedule: default_schedule(),
            give_up_after: Duration::from_secs(24 * 3600),
            max_retry_after: Duration::from_secs(600),
            breaker_max: Duration::from_secs(30),
            hosts: ChannelKind::all()
                .map(|k| {
                    let hosts = k.default_hosts().iter().map(|h| h.to_string()).collect();
                    (k.as_str(), hosts)
                })
                .collect(),
            intervals: ChannelKind::all()
                .map(|k| (k.as_str(), k.default_interval()))
                .collect(),
        }
    }
}

const COMMON: &[&str] = &[
    "allow_private_targets",
    "allowed_cidrs",
    "timeout",
    "retry_schedule",
    "give_up_after",
    "max_retry_after",
    "breaker_max",
];

impl DeliveryConfig {
    /// Reads the `[delivery]` table; unknown keys are errors.
    pub fn from_table(t: &toml::Table) -> Result<DeliveryConfig, SettingError> {
        let mut d = DeliveryConfig::default();
        for (k, v) in t {
            match k.as_str() {
                "allow_private_targets" => {
                    d.allow_private_targets =
                        v.as_bool().ok_or_else(|| err(k, "must be true or false"))?
                }
                "allowed_cidrs" => d.allowed_cidrs = strings(k, v)?,
                "timeout" => d.timeout = duration(k, v)?,
                "give_up_after" => d.give_up_after = duration(k, v)?,
                "max_retry_after" => d.max_retry_after = duration(k, v)?,
                "breaker_max" => d.breaker_max = duration(k, v)?,
                "retry_schedule" => {
                    let steps = v
                        .as_array()
                        .ok_or_else(|| err(k, "must be a list of durations"))?;
                    d.retry_schedule = steps
                        .iter()
                        .map(|s| duration(k, s))
                        .collect::<Result<_, _>>()?;
                }
                other => {
                    let per_kind = ChannelKind::all().find_map(|kind| {
                        other
                            .strip_prefix(kind.as_str())
                            .and_then(|r| r.strip_prefix('_'))
                            .map(|setting| (kind, setting))
                    });
                    match per_kind {
                        Some((kind, "hosts")) => {
                            d.hosts.insert(kind.as_str(), strings(k, v)?);
                        }
                        Some((kind, "interval")) => {
                            d.intervals.insert(kind.as_str(), duration(k, v)?);
                        }
                        _ => {
                            let kinds: Vec<_> = ChannelKind::all().map(|k| k.as_str()).collect();
                            return Err(err(
                                k,
                                format!(
                                    "unknown key; expected one of {}, or <kind>_hosts / <kind>_interval for kind {}",
                                    COMMON.join(", "),
                                    kinds.join(", ")
                                ),
                            ));
                        }
                    }
                }
            }
        }
        d.validate()?;
        Ok(d)
    }

    /// Refuses zero and absurd values, naming the key.
    fn validate(&self) -> Result<(), SettingError> {
        let range = |key: &str, v: Duration, min: Duration, max: Duration| {
            if v < min || v > max {
                Err(err(
                    key,
                    format!(
                        "{} is out of range; use {} to {}",
                        humantime::format_duration(v),
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ))
            } else {
                Ok(())
            }
        };
        let s = Duration::from_secs;
        range("timeout", self.timeout, Duration::from_millis(100), s(300))?;
        range("give_up_after", self.give_up_after, s(1), s(30 * 86_400))?;
        range("max_retry_after", self.max_retry_after, s(1), s(86_400))?;
        range("breaker_max", self.breaker_max, s(1), s(3600))?;
        if self.retry_schedule.is_empty() {
            return Err(err("retry_schedule", "needs at least one step"));
        }
        for step in &self.retry_schedule {
            range(
                "retry_schedule",
                *step,
                Duration::from_millis(100),
                s(86_400),
            )?;
        }
        for kind in ChannelKind::all() {
            let name = kind.as_str();
            range(
                &format!("{name}_interval"),
                self.interval(kind),
                Duration::ZERO,
                s(60),
            )?;
            if self.hosts(kind).is_empty() && !kind.default_hosts().is_empty() {
                return Err(err(
                    &format!("{name}_hosts"),
                    format!(
                        "an empty list would let {name} channels post anywhere; list the allowed hosts (default: {})",
                        kind.default_hosts().join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Hosts a channel of `kind` may post to; empty means any public host.
    pub fn hosts(&self, kind: ChannelKind) -> &[String] {
        self.hosts.get(kind.as_str()).map_or(&[], Vec::as_slice)
    }

    /// Minimum spacing between two posts to one destination of `kind`.
    pub fn interval(&self, kind: ChannelKind) -> Duration {
        self.intervals
            .get(kind.as_str())
            .copied()
            .unwrap_or_else(|| kind.default_interval())
    }
}

impl PartialEq for DeliveryConfig {
    fn eq(&self, o: &Self) -> bool {
        self.allow_private_targets == o.allow_private_targets
            && self.allowed_cidrs == o.allowed_cidrs
            && self.timeout == o.timeout
            && self.retry_schedule == o.retry_schedule
            && self.give_up_after == o.give_up_after
            && self.max_retry_after == o.max_retry_after
            && self.breaker_max == o.breaker_max
            && self.hosts == o.hosts
            && self.intervals == o.intervals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn per_kind_keys_come_from_the_registry() {
        let d = DeliveryConfig::from_table(&table(
            "slack_interval = \"50ms\"\nwebhook_hosts = [\"x.example.com\"]",
        ))
        .unwrap();
        let slack = ChannelKind::named("slack").unwrap();
        let webhook = ChannelKind::named("webhook").unwrap();
        assert_eq!(d.interval(slack), Duration::from_millis(50));
        assert_eq!(d.hosts(webhook), ["x.example.com".to_string()]);
        assert_eq!(d.hosts(slack), ["hooks.slack.com".to_string()]);
        let e = DeliveryConfig::from_table(&table("pigeon_hosts = []")).unwrap_err();
        assert_eq!(e.key, "pigeon_hosts");
        let e = DeliveryConfig::from_table(&table("timeout = \"soon\"")).unwrap_err();
        assert!(e.key == "timeout" && e.message.contains("soon"), "{e:?}");
    }

    #[test]
    fn zero_and_absurd_values_are_refused_naming_the_key() {
        for (text, key) in [
            ("timeout = \"0s\"", "timeout"),
            ("give_up_after = \"0s\"", "give_up_after"),
            ("retry_schedule = [\"0s\"]", "retry_schedule"),
            ("retry_schedule = []", "retry_schedule"),
            ("slack_hosts = []", "slack_hosts"),
            ("teams_hosts = []", "teams_hosts"),
            ("slack_interval = \"1h\"", "slack_interval"),
        ] {
            let e = DeliveryConfig::from_table(&table(text)).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e:?}");
        }
        // An empty webhook_hosts keeps its meaning: any public host.
        assert!(DeliveryConfig::from_table(&table("webhook_hosts = []")).is_ok());
    }
}
