//! The rules: each section of the raw config checked and turned into the types the
//! service runs on. Every error names the file and the key. A rule fails fast, in the
//! order of the sections below.
use super::*;

fn invalid(path: &Path, key: String, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        key,
        message,
    }
}

pub(super) fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    check_deadline(&raw.deadline, path)?;
    check_triage(&raw.triage, path)?;
    check_events(&raw.events, path)?;
    let delivery = DeliveryConfig::from_table(&raw.delivery)
        .map_err(|e| invalid(path, format!("delivery.{}", e.key), e.message))?;
    if delivery.retry_schedule.is_empty() {
        return Err(invalid(
            path,
            "delivery.retry_schedule".into(),
            "needs at least one step".into(),
        ));
    }
    check_server(&raw, path)?;
    let policy = target::TargetPolicy::from_config(&delivery)
        .map_err(|m| invalid(path, "delivery.allowed_cidrs".into(), m))?;
    // Every token, admin or team, is unique across the whole file.
    let mut all_tokens = HashSet::new();
    let admin_tokens = admin_tokens(&raw.server, &mut all_tokens, path)?;
    let mut team_names = HashSet::new();
    let mut teams = Vec::new();
    for (ti, t) in raw.teams.into_iter().enumerate() {
        teams.push(team(
            t,
            ti,
            &policy,
            &mut team_names,
            &mut all_tokens,
            path,
        )?);
    }
    let people = people(raw.people, path)?;

    let base = path.parent().unwrap_or(Path::new("."));
    let mut templates = raw.templates;
    if templates.dir.is_relative() && !templates.dir.exists() && base.join(&templates.dir).exists()
    {
        templates.dir = base.join(&templates.dir);
    }

    Ok(Config {
        path: path.into(),
        server: ServerConfig {
            listen: raw.server.listen,
            shutdown_grace: raw.server.shutdown_grace,
            rate_limit: raw.server.rate_limit,
            admin_tokens,
            max_connections: raw.server.max_connections,
            metrics_listen: raw.server.metrics_listen,
            max_watches_per_team: raw.server.max_watches_per_team,
            max_subscriptions_per_team: raw.server.max_subscriptions_per_team,
            max_watched_queues_per_team: raw.server.max_watched_queues_per_team,
            tls: raw.server.tls.map(|t| TlsConfig {
                cert: relative_to(path, t.cert),
                key: relative_to(path, t.key),
            }),
        },
        store: raw.store,
        deadline: raw.deadline,
        delivery,
        templates,
        triage: raw.triage,
        events: raw.events,
        teams,
        people: std::sync::Arc::new(crate::domain::people::People::new(people)),
    })
}

fn check_deadline(d: &DeadlineConfig, path: &Path) -> Result<(), ConfigError> {
    if d.poll_interval < Duration::from_millis(100) {
        return Err(invalid(
            path,
            "deadline.poll_interval".into(),
            "must be at least 100ms".into(),
        ));
    }
    if d.discovery_interval < Duration::from_millis(100)
        || d.discovery_interval > Duration::from_secs(3600)
    {
        return Err(invalid(
            path,
            "deadline.discovery_interval".into(),
            "must be between 100ms and 1h".into(),
        ));
    }
    if d.discovery_overlap > Duration::from_secs(86_400) {
        return Err(invalid(
            path,
            "deadline.discovery_overlap".into(),
            "must be at most 1 day".into(),
        ));
    }
    if !(1..=10).contains(&d.max_attempts) {
        return Err(invalid(
            path,
            "deadline.max_attempts".into(),
            "must be between 1 and 10".into(),
        ));
    }
    if let Some(u) = &d.endpoint_url {
        url::Url::parse(u).map_err(|e| {
            invalid(
                path,
                "deadline.endpoint_url".into(),
                format!("not a URL: {e}"),
            )
        })?;
    }
    check_links(d, path)?;
    let ms = &d.progress_milestones;
    if ms.iter().any(|m| !(1..=99).contains(m)) || ms.windows(2).any(|w| w[0] >= w[1]) {
        return Err(invalid(
            path,
            "deadline.progress_milestones".into(),
            format!("{ms:?}: percentages between 1 and 99, in increasing order"),
        ));
    }
    if d.stall_after < Duration::from_secs(1) {
        return Err(invalid(
            path,
            "deadline.stall_after".into(),
            "must be at least 1s".into(),
        ));
    }
    if !(d.max_requests_per_second.is_finite() && d.max_requests_per_second >= 0.1) {
        return Err(invalid(
            path,
            "deadline.max_requests_per_second".into(),
            "must be at least 0.1".into(),
        ));
    }
    if d.finished_poll_interval < Duration::from_millis(100) {
        return Err(invalid(
            path,
            "deadline.finished_poll_interval".into(),
            "must be at least 100ms".into(),
        ));
    }
    let dr = d.discovery_max_requests_per_second;
    if !(dr.is_finite() && dr >= 0.01) {
        return Err(invalid(
            path,
            "deadline.discovery_max_requests_per_second".into(),
            "must be at least 0.01 (it is capped at a quarter of max_requests_per_second)".into(),
        ));
    }
    for (k, v) in [
        ("idle_factor", d.idle_factor),
        ("suspended_factor", d.suspended_factor),
        ("terminal_factor", d.terminal_factor),
    ] {
        if !(1..=100).contains(&v) {
            return Err(invalid(
                path,
                format!("deadline.{k}"),
                "must be between 1 and 100".into(),
            ));
        }
    }
    Ok(())
}

/// What monitor links are built from: the monitor's URL and the regions.
fn check_links(d: &DeadlineConfig, path: &Path) -> Result<(), ConfigError> {
    if let Some(u) = &d.monitor_url {
        let parsed = url::Url::parse(u).map_err(|e| {
            invalid(
                path,
                "deadline.monitor_url".into(),
                format!("not a URL: {e}"),
            )
        })?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(invalid(
                path,
                "deadline.monitor_url".into(),
                "must be an http(s) URL".into(),
            ));
        }
    }
    if let Some(r) = &d.region
        && !is_region(r)
    {
        return Err(invalid(
            path,
            "deadline.region".into(),
            format!("{r:?} is not an AWS region (like \"us-west-2\")"),
        ));
    }
    for (farm, region) in &d.farm_regions {
        let key = format!("deadline.farm_regions.{farm:?}");
        crate::domain::JobKey::parse(
            farm,
            &format!("queue-{}", "0".repeat(32)),
            &format!("job-{}", "0".repeat(32)),
        )
        .map_err(|e| {
            invalid(
                path,
                key.clone(),
                format!("not a farm id: must match {}", e.pattern),
            )
        })?;
        if !is_region(region) {
            return Err(invalid(
                path,
                key,
                format!("{region:?} is not an AWS region (like \"eu-west-1\")"),
            ));
        }
    }
    Ok(())
}

fn check_triage(t: &TriageConfig, path: &Path) -> Result<(), ConfigError> {
    if !(1..=100).contains(&t.max_tasks) {
        return Err(invalid(
            path,
            "triage.max_tasks".into(),
            "must be between 1 and 100".into(),
        ));
    }
    if !(1..=200).contains(&t.log_lines) {
        return Err(invalid(
            path,
            "triage.log_lines".into(),
            "must be between 1 and 200".into(),
        ));
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(120)).contains(&t.timeout) {
        return Err(invalid(
            path,
            "triage.timeout".into(),
            "must be between 100ms and 2m".into(),
        ));
    }
    if !(t.max_requests_per_second.is_finite() && t.max_requests_per_second >= 0.1) {
        return Err(invalid(
            path,
            "triage.max_requests_per_second".into(),
            "must be at least 0.1".into(),
        ));
    }
    Ok(())
}

fn check_events(e: &EventsConfig, path: &Path) -> Result<(), ConfigError> {
    let bad = |key: &str, message: &str| invalid(path, format!("events.{key}"), message.into());
    if let Some(u) = &e.sqs_queue_url {
        let parsed = url::Url::parse(u).map_err(|err| {
            bad(
                "sqs_queue_url",
                &format!("{u:?} is not a URL ({err}); write the queue URL SQS shows, e.g. https://sqs.us-west-2.amazonaws.com/111122223333/deadline-events"),
            )
        })?;
        let segments: Vec<&str> = parsed
            .path_segments()
            .map(|s| s.filter(|x| !x.is_empty()).collect())
            .unwrap_or_default();
        if !matches!(parsed.scheme(), "https" | "http") || segments.len() != 2 {
            return Err(bad(
                "sqs_queue_url",
                &format!(
                    "{u:?} is not a queue URL: expected https://sqs.<region>.amazonaws.com/<account>/<queue name>"
                ),
            ));
        }
    }
    if e.backstop_interval < Duration::from_millis(100) {
        return Err(bad("backstop_interval", "must be at least 100ms"));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&e.relax_after) {
        return Err(bad("relax_after", "must be between 1s and 1h"));
    }
    if e.wait_time > Duration::from_secs(20) || e.wait_time.subsec_nanos() != 0 {
        return Err(bad(
            "wait_time",
            "must be whole seconds between 0s and 20s (SQS long polling waits at most 20 s)",
        ));
    }
    if !(Duration::from_secs(5)..=Duration::from_secs(12 * 3600)).contains(&e.visibility_timeout)
        || e.visibility_timeout.subsec_nanos() != 0
    {
        return Err(bad(
            "visibility_timeout",
            "must be whole seconds between 5s and 12h",
        ));
    }
    if e.batch_window > Duration::from_secs(5) {
        return Err(bad("batch_window", "must be at most 5s"));
    }
    Ok(())
}

fn check_server(raw: &RawConfig, path: &Path) -> Result<(), ConfigError> {
    if raw.server.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(
            path,
            "server.listen".into(),
            format!(
                "{:?} is not an address like 127.0.0.1:8080",
                raw.server.listen
            ),
        ));
    }
    let rl = raw.server.rate_limit;
    if !(rl.is_finite() && (rl == 0.0 || (0.1..=100_000.0).contains(&rl))) {
        return Err(invalid(
            path,
            "server.rate_limit".into(),
            "must be 0 (off) or between 0.1 and 100000 requests per second".into(),
        ));
    }
    if let Some(m) = &raw.server.metrics_listen
        && (m.parse::<std::net::SocketAddr>().is_err() || *m == raw.server.listen)
    {
        return Err(invalid(
            path,
            "server.metrics_listen".into(),
            format!("{m:?} must be an address like 127.0.0.1:9090, other than server.listen"),
        ));
    }
    if let Some(n) = raw.server.max_connections
        && !(8..=100_000).contains(&n)
    {
        return Err(invalid(
            path,
            "server.max_connections".into(),
            "must be between 8 and 100000".into(),
        ));
    }
    for (key, n, range) in [
        (
            "max_watches_per_team",
            raw.server.max_watches_per_team,
            1..=10_000,
        ),
        (
            "max_subscriptions_per_team",
            raw.server.max_subscriptions_per_team,
            1..=10_000_000,
        ),
        (
            "max_watched_queues_per_team",
            raw.server.max_watched_queues_per_team,
            1..=100_000,
        ),
    ] {
        if !range.contains(&n) {
            return Err(invalid(
                path,
                format!("server.{key}"),
                format!("must be between {} and {}", range.start(), range.end()),
            ));
        }
    }
    if let Some(tls) = &raw.server.tls {
        for (key, file) in [("cert", &tls.cert), ("key", &tls.key)] {
            let file = relative_to(path, file.clone());
            if let Err(e) = std::fs::metadata(&file) {
                return Err(invalid(
                    path,
                    format!("server.tls.{key}"),
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        }
    }
    if raw.teams.is_empty() {
        return Err(invalid(
            path,
            "teams".into(),
            "configure at least one [[teams]] entry".into(),
        ));
    }

    Ok(())
}

fn admin_tokens(
    server: &RawServer,
    all_tokens: &mut HashSet<[u8; 32]>,
    path: &Path,
) -> Result<Vec<TokenDigest>, ConfigError> {
    let mut admin_tokens = Vec::new();
    for (i, src) in server.admin_tokens.iter().enumerate() {
        let key = format!("server.admin_tokens[{i}]");
        let digest = src.digest().map_err(|m| invalid(path, key.clone(), m))?;
        // A team token that is also an admin token would blur who may reload.
        if !all_tokens.insert(digest.0) {
            return Err(invalid(path, key, "this token is listed twice".into()));
        }
        admin_tokens.push(digest);
    }
    Ok(admin_tokens)
}

fn team(
    t: RawTeam,
    ti: usize,
    policy: &target::TargetPolicy,
    team_names: &mut HashSet<String>,
    all_tokens: &mut HashSet<[u8; 32]>,
    path: &Path,
) -> Result<Team, ConfigError> {
    let tk = format!("teams[{ti}]");
    if !valid_name(&t.name) {
        return Err(invalid(
            path,
            format!("{tk}.name"),
            format!(
                "{:?} must be 1-64 of [a-z0-9_-] and not \"default\" (it names a template directory)",
                t.name
            ),
        ));
    }
    if !team_names.insert(t.name.clone()) {
        return Err(invalid(
            path,
            format!("{tk}.name"),
            format!("team {:?} is configured twice", t.name),
        ));
    }
    if t.tokens.is_empty() {
        return Err(invalid(
            path,
            format!("{tk}.tokens"),
            format!("team {:?} needs at least one API token", t.name),
        ));
    }
    let mut tokens = Vec::new();
    for (i, src) in t.tokens.iter().enumerate() {
        let key = format!("{tk}.tokens[{i}]");
        let digest = src.digest().map_err(|m| invalid(path, key.clone(), m))?;
        if !all_tokens.insert(digest.0) {
            return Err(invalid(
                path,
                key,
                "this token is already used (by this or another team, or as an admin token)".into(),
            ));
        }
        tokens.push(digest);
    }
    if t.channels.is_empty() {
        return Err(invalid(
            path,
            format!("{tk}.channels"),
            format!("team {:?} has no [[teams.channels]]", t.name),
        ));
    }
    let mut names = HashSet::new();
    let mut channels = Vec::new();
    for (ci, c) in t.channels.into_iter().enumerate() {
        let ck = format!("{tk}.channels[{ci}]");
        if !names.insert(c.name.clone()) {
            return Err(invalid(
                path,
                format!("{ck}.name"),
                format!(
                    "channel {:?} is configured twice in team {:?}",
                    c.name, t.name
                ),
            ));
        }
        channels.push(channel(c, &ck, policy, path)?);
    }
    for (list, key, prefix) in [
        (&t.farm_ids, "farm_ids", "farm-"),
        (&t.queue_ids, "queue_ids", "queue-"),
    ] {
        if let Some(ids) = list {
            if ids.is_empty() {
                return Err(invalid(
                    path,
                    format!("{tk}.{key}"),
                    "an empty list would admit nothing; omit the key to allow any".into(),
                ));
            }
            for (i, id) in ids.iter().enumerate() {
                let hex = id.strip_prefix(prefix).unwrap_or("");
                if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        path,
                        format!("{tk}.{key}[{i}]"),
                        format!("{id:?} must be {prefix} followed by 32 hex digits"),
                    ));
                }
            }
        }
    }
    if !(t.weight.is_finite() && (0.1..=100.0).contains(&t.weight)) {
        return Err(invalid(
            path,
            format!("{tk}.weight"),
            format!("{} must be between 0.1 and 100 (default 1)", t.weight),
        ));
    }
    let mut team = Team {
        weight: t.weight,
        name: t.name,
        tokens,
        channels,
        farm_ids: t.farm_ids,
        queue_ids: t.queue_ids,
        watches: Vec::new(),
    };
    let mut watch_names = HashSet::new();
    for (wi, w) in t.watches.into_iter().enumerate() {
        let wk = format!("{tk}.watches[{wi}]");
        if !watch_names.insert(w.name.clone()) {
            return Err(invalid(
                path,
                format!("{wk}.name"),
                format!("watch {:?} is declared twice in this team", w.name),
            ));
        }
        let watch = check_watch(
            &team,
            crate::domain::Watch {
                id: crate::domain::Watch::config_id(&team.name, &w.name),
                team: team.name.clone(),
                name: w.name,
                farm_id: w.farm_id,
                queue_ids: w.queue_ids,
                created_by: w.created_by,
                name_matches: w.name_matches,
                events: w.events.unwrap_or_else(|| Event::DEFAULTS.to_vec()),
                channels: w
                    .channels
                    .unwrap_or_else(|| team.channels.iter().map(|c| c.name.clone()).collect()),
                source: "config".into(),
                created_at: chrono::DateTime::UNIX_EPOCH,
            },
        )
        .map_err(|(field, m)| invalid(path, format!("{wk}.{field}"), m))?;
        team.watches.push(watch);
    }
    Ok(team)
}

fn channel(
    c: RawChannel,
    ck: &str,
    policy: &target::TargetPolicy,
    path: &Path,
) -> Result<Channel, ConfigError> {
    if !valid_name(&c.name) {
        return Err(invalid(
            path,
            format!("{ck}.name"),
            format!("{:?} must be 1-64 of [a-z0-9_-]", c.name),
        ));
    }
    let kind = ChannelKind::named(&c.kind).ok_or_else(|| {
        invalid(
            path,
            format!("{ck}.kind"),
            format!(
                "unknown kind {:?}; expected one of {}",
                c.kind,
                ChannelKind::names()
            ),
        )
    })?;
    let is_app = kind.as_str() == "slack_app";
    let url = match (&c.url, is_app) {
        (Some(src), false) => src
            .resolve()
            .map_err(|m| invalid(path, format!("{ck}.url"), m))?,
        (None, false) => {
            return Err(invalid(
                path,
                format!("{ck}.url"),
                format!("is required for kind = {:?}", kind.as_str()),
            ));
        }
        (Some(_), true) => {
            return Err(invalid(
                path,
                format!("{ck}.url"),
                "kind = \"slack_app\" posts through the Web API: set `token` and `channel` (and `api_url` only to point elsewhere than https://slack.com/api/)".into(),
            ));
        }
        (None, true) => crate::domain::secret::Secret::new(
            c.api_url
                .clone()
                .unwrap_or_else(|| crate::notify::slack_app::DEFAULT_API_URL.into()),
        ),
    };
    let url_key = if is_app { "api_url" } else { "url" };
    policy
        .check_url(kind, url.expose())
        .map_err(|m| invalid(path, format!("{ck}.{url_key}"), m))?;
    let app = app_channel(&c, is_app, ck, path)?;
    let defer = deferral(&c, is_app, ck, path)?;
    let secret = match &c.secret {
        None => None,
        Some(src) => {
            let s = src
                .resolve()
                .map_err(|m| invalid(path, format!("{ck}.secret"), m))?;
            kind.check_secret(s.expose())
                .map_err(|m| invalid(path, format!("{ck}.secret"), m))?;
            Some(s)
        }
    };
    if let Some(ev) = &c.events
        && ev.is_empty()
    {
        return Err(invalid(
            path,
            format!("{ck}.events"),
            "an empty list would receive nothing; omit the key for all events".into(),
        ));
    }
    if c.card_only.is_some() && kind.as_str() != "teams" {
        return Err(invalid(
            path,
            format!("{ck}.card_only"),
            format!(
                "only applies to kind = \"teams\" (this channel is {:?})",
                kind.as_str()
            ),
        ));
    }
    Ok(Channel {
        name: c.name,
        kind,
        url,
        secret,
        events: c.events,
        card_only: c.card_only.unwrap_or(false),
        app,
        defer,
        mention_owner: c
            .mention_owner
            .unwrap_or_else(|| crate::domain::people::DEFAULT_MENTION_EVENTS.to_vec()),
    })
}

/// One quiet range, every error naming its key (`quiet_hours[1].tz`).
fn quiet_range(
    r: &super::RawQuiet,
    qk: &str,
    path: &Path,
) -> Result<crate::notify::quiet::QuietRange, ConfigError> {
    use crate::notify::quiet;
    let tz: chrono_tz::Tz = r.tz.parse().map_err(|_| {
        invalid(
            path,
            format!("{qk}.tz"),
            format!(
                "{:?} is not an IANA time zone (like \"Europe/London\")",
                r.tz
            ),
        )
    })?;
    let time = |key: &str, v: &Option<String>| -> Result<Option<chrono::NaiveTime>, ConfigError> {
        match v {
            None => Ok(None),
            Some(s) => quiet::parse_time(s).map(Some).ok_or_else(|| {
                invalid(
                    path,
                    format!("{qk}.{key}"),
                    format!("{s:?} is not a time; write \"HH:MM\" or \"HH:MM:SS\" (24-hour)"),
                )
            }),
        }
    };
    let times = match (time("from", &r.from)?, time("to", &r.to)?) {
        (Some(f), Some(t)) => {
            if f == t {
                return Err(invalid(
                    path,
                    format!("{qk}.to"),
                    "equals `from`: a range must have a length (for whole days, give `days` alone)"
                        .into(),
                ));
            }
            if quiet::length(f, t) < chrono::Duration::minutes(1) {
                return Err(invalid(
                    path,
                    format!("{qk}.to"),
                    "the range is shorter than 1 minute".into(),
                ));
            }
            Some((f, t))
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                path,
                format!("{qk}.to"),
                "is required with `from`".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                path,
                format!("{qk}.from"),
                "is required with `to`".into(),
            ));
        }
    };
    let days = match &r.days {
        None => None,
        Some(d) if d.is_empty() => {
            return Err(invalid(
                path,
                format!("{qk}.days"),
                "an empty list; omit the key for every day".into(),
            ));
        }
        Some(d) => Some(
            d.iter()
                .enumerate()
                .map(|(j, s)| {
                    quiet::parse_day(s).ok_or_else(|| {
                        invalid(
                            path,
                            format!("{qk}.days[{j}]"),
                            format!("{s:?} is not a day; write \"mon\" … \"sun\""),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    if times.is_none() && days.is_none() {
        return Err(invalid(
            path,
            format!("{qk}.from"),
            "give `from` and `to`, or `days` for whole days".into(),
        ));
    }
    Ok(quiet::QuietRange { tz, times, days })
}

/// `quiet_hours`, `quiet_urgent`, `digest`: each range checked, every error naming
/// its key (`quiet_hours[1].tz`).
fn deferral(
    c: &RawChannel,
    is_app: bool,
    ck: &str,
    path: &Path,
) -> Result<crate::notify::quiet::Deferral, ConfigError> {
    if is_app && (c.quiet_hours.is_some() || c.digest.is_some()) {
        let key = if c.quiet_hours.is_some() {
            "quiet_hours"
        } else {
            "digest"
        };
        return Err(invalid(
            path,
            format!("{ck}.{key}"),
            "a slack_app channel already folds each job into one living message; quiet hours and digests apply to slack, teams and webhook channels".into(),
        ));
    }
    let mut ranges = Vec::new();
    if let Some(q) = &c.quiet_hours {
        let many = matches!(q, RawQuietHours::Many(_));
        let all = q.ranges();
        if all.is_empty() {
            return Err(invalid(
                path,
                format!("{ck}.quiet_hours"),
                "an empty list; omit the key for no quiet hours".into(),
            ));
        }
        for (i, r) in all.into_iter().enumerate() {
            let qk = if many {
                format!("{ck}.quiet_hours[{i}]")
            } else {
                format!("{ck}.quiet_hours")
            };
            ranges.push(quiet_range(r, &qk, path)?);
        }
    }
    if let Some(d) = c.digest
        && !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(86_400))
            .contains(&d)
    {
        return Err(invalid(
            path,
            format!("{ck}.digest"),
            "must be between 1s and 24h".into(),
        ));
    }
    if c.quiet_urgent.is_some() && ranges.is_empty() && c.digest.is_none() {
        return Err(invalid(
            path,
            format!("{ck}.quiet_urgent"),
            "has no effect without `quiet_hours` or `digest`".into(),
        ));
    }
    Ok(crate::notify::quiet::Deferral {
        quiet: ranges,
        urgent: c.quiet_urgent.clone().unwrap_or_default(),
        digest: c.digest,
    })
}

/// The Slack app keys: required on `kind = "slack_app"`, refused elsewhere.
fn app_channel(
    c: &RawChannel,
    is_app: bool,
    ck: &str,
    path: &Path,
) -> Result<Option<crate::notify::slack_app::AppChannel>, ConfigError> {
    if !is_app {
        let given = [
            ("token", c.token.is_some()),
            ("channel", c.channel.is_some()),
            ("mode", c.mode.is_some()),
            ("dm_owner", c.dm_owner.is_some()),
            ("api_url", c.api_url.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(_, set)| *set) {
            return Err(invalid(
                path,
                format!("{ck}.{key}"),
                format!(
                    "only applies to kind = \"slack_app\" (this channel is {:?})",
                    c.kind
                ),
            ));
        }
        return Ok(None);
    }
    let token = c
        .token
        .as_ref()
        .ok_or_else(|| {
            invalid(
                path,
                format!("{ck}.token"),
                "is required for kind = \"slack_app\": the bot token (xoxb-…), e.g. { env = \"SLACK_BOT_TOKEN\" }".into(),
            )
        })?
        .resolve()
        .map_err(|m| invalid(path, format!("{ck}.token"), m))?;
    if token.expose().trim().is_empty() || token.expose().chars().any(char::is_whitespace) {
        return Err(invalid(
            path,
            format!("{ck}.token"),
            "must be a bot token (xoxb-…) without spaces".into(),
        ));
    }
    let channel = c.channel.clone().ok_or_else(|| {
        invalid(
            path,
            format!("{ck}.channel"),
            "is required for kind = \"slack_app\": the channel id (like C0123456789)".into(),
        )
    })?;
    if !crate::notify::slack_app::valid_channel_id(&channel) {
        return Err(invalid(
            path,
            format!("{ck}.channel"),
            format!(
                "{channel:?} is not a Slack channel id (like C0123456789; a name like #renders does not work)"
            ),
        ));
    }
    Ok(Some(crate::notify::slack_app::AppChannel {
        token,
        channel,
        mode: c.mode.unwrap_or(crate::notify::slack_app::Mode::Living),
        dm_owner: c.dm_owner.clone().unwrap_or_default(),
    }))
}

fn people(
    raw: Vec<RawPerson>,
    path: &Path,
) -> Result<Vec<crate::domain::people::Person>, ConfigError> {
    let mut people = Vec::new();
    let mut seen_ids = HashSet::new();
    for (i, p) in raw.into_iter().enumerate() {
        let pk = format!("people[{i}]");
        if p.deadline.is_empty() {
            return Err(invalid(
                path,
                format!("{pk}.deadline"),
                "list the createdBy values Deadline reports for this person".into(),
            ));
        }
        for (j, d) in p.deadline.iter().enumerate() {
            if d.trim().is_empty() || !seen_ids.insert(d.clone()) {
                return Err(invalid(
                    path,
                    format!("{pk}.deadline[{j}]"),
                    "must be non-empty and belong to one person only".into(),
                ));
            }
        }
        if let Some(s) = &p.slack
            && !crate::domain::people::valid_slack_id(s)
        {
            return Err(invalid(
                path,
                format!("{pk}.slack"),
                format!("{s:?} is not a Slack member ID (like U024BE7LH)"),
            ));
        }
        if let Some(t) = &p.teams
            && !crate::domain::people::valid_teams_id(t)
        {
            return Err(invalid(
                path,
                format!("{pk}.teams"),
                "must be the user's principal name (jane@studio.com) or object id".into(),
            ));
        }
        if !crate::domain::people::valid_name(&p.name) {
            return Err(invalid(
                path,
                format!("{pk}.name"),
                "must be 1-100 characters without control characters or < > &".into(),
            ));
        }
        if let Some(e) = &p.email
            && !crate::domain::people::valid_email(e)
        {
            return Err(invalid(
                path,
                format!("{pk}.email"),
                format!("{e:?} is not an e-mail address"),
            ));
        }
        people.push(crate::domain::people::Person {
            deadline: p.deadline,
            slack: p.slack,
            teams: p.teams,
            email: p.email,
            name: p.name,
        });
    }

    Ok(people)
}

/// A path from the config file, relative to the file's directory when relative.
fn relative_to(config: &Path, p: PathBuf) -> PathBuf {
    if p.is_relative() {
        config.parent().unwrap_or(Path::new(".")).join(p)
    } else {
        p
    }
}
