//! Templates render *text*; each channel escapes job data for its own markup, and
//! serde (in `notify`) builds the JSON, so every payload is valid by construction.
//!
//! Lookup for (team, kind, event), first match wins:
//! `<dir>/<team>/<kind>/<event>.hbs`, `<dir>/<team>/<kind>/default.hbs`,
//! `<dir>/default/<kind>/<event>.hbs`, `<dir>/default/<kind>/default.hbs`, then the
//! same `default/` files embedded in the binary.
//!
//! The first line of the output is the title, the rest the body.
//!
//! Layer "decisions": imports `domain`, `notify` (the kinds' escaping and payloads),
//! `config` and `watch::progress`; never the store, the network or the loops.
mod digest;
mod notice;
pub use notice::{budget_context, sample_budget};

use crate::config::Config;
use crate::domain::monitor::Monitor;
use crate::domain::text::sanitize;
use crate::domain::{Event, JobKey, JobSnapshot, Transition};
use crate::notify::{ChannelKind, Message, Rendered};
use chrono::{DateTime, Utc};
use digest::sample_digest_context;
use handlebars::Handlebars;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {file}: {message}")]
    Template { file: String, message: String },
    #[error("cannot read template {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("template {file} failed to render: {message}")]
    Render { file: String, message: String },
}

impl RenderError {
    /// A render error named by the template's file as the user knows it (its
    /// path, or "(embedded) …"), not its registry name.
    fn in_file(self, file: &str) -> RenderError {
        match self {
            RenderError::Render { message, .. } => RenderError::Render {
                file: file.to_string(),
                message,
            },
            other => other,
        }
    }
}

/// The built-in `default/<kind>/default.hbs`, shipped in the binary (each kind
/// owns its own), so the service runs without a templates directory.
pub fn embedded(rel: &str) -> Option<&'static str> {
    let rest = rel.strip_prefix("default/")?;
    if let Some(kind) = rest.strip_suffix("/root.hbs") {
        return ChannelKind::named(kind).and_then(|k| k.root_template());
    }
    if let Some(kind) = rest.strip_suffix("/digest.hbs") {
        return ChannelKind::named(kind).and_then(|k| k.digest_template());
    }
    if let Some((kind, file)) = rest.split_once('/')
        && let Some(event) = file.strip_suffix(".hbs").and_then(Event::parse_any)
        && !event.is_job_event()
    {
        return ChannelKind::named(kind).and_then(|k| k.notice_template(event));
    }
    let kind = rest.strip_suffix("/default.hbs")?;
    ChannelKind::named(kind).map(|k| k.default_template())
}

/// All compiled templates. Built once at start-up; every template is compiled in
/// strict mode and test-rendered, so a broken one fails start-up with its file name.
pub struct Renderer {
    plain: Handlebars<'static>,
    /// One registry per kind, escaping with the kind's [`crate::notify::Kind::escape`].
    by_kind: HashMap<&'static str, Handlebars<'static>>,
    /// (team, kind, event) → template name.
    resolved: HashMap<(String, ChannelKind, Event), String>,
    /// (team, kind) → the living message's template, for kinds that keep one.
    roots: HashMap<(String, ChannelKind), String>,
    /// (team, kind) → the digest template, for kinds that fold held messages.
    digests: HashMap<(String, ChannelKind), String>,
    /// (team, kind, notice event) → its template.
    notices: HashMap<(String, ChannelKind, Event), String>,
    monitor: Option<Monitor>,
    people: std::sync::Arc<crate::domain::people::People>,
    /// Templates that use `failure` (their messages wait for triage whatever the event).
    uses_failure: std::collections::HashSet<String>,
}

fn registry(escape: impl Fn(&str) -> String + Send + Sync + 'static) -> Handlebars<'static> {
    let mut h = Handlebars::new();
    h.set_strict_mode(true);
    h.register_escape_fn(escape);
    h
}

fn source_for(dir: &Path, rel: &str) -> Result<Option<(String, String)>, RenderError> {
    let path: PathBuf = dir.join(rel);
    // A template symlinked to, say, a secrets file would render that file into chat.
    if let (Ok(real), Ok(root)) = (std::fs::canonicalize(&path), std::fs::canonicalize(dir))
        && !real.starts_with(&root)
    {
        return Err(RenderError::Template {
            file: path.display().to_string(),
            message: format!(
                "resolves to {} outside the templates directory {}; templates must be files inside it",
                real.display(),
                root.display()
            ),
        });
    }
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some((path.display().to_string(), s))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(embedded(rel).map(|s| (format!("(embedded) templates/{rel}"), s.to_string())))
        }
        Err(source) => Err(RenderError::Read {
            file: path.display().to_string(),
            source,
        }),
    }
}

impl Renderer {
    /// `chain_region` is the region the AWS chain resolved at start-up, used for
    /// monitor links when `[deadline] region` is not set.
    pub fn load(cfg: &Config, chain_region: Option<&str>) -> Result<Renderer, RenderError> {
        let dir = &cfg.templates.dir;
        let mut r = Renderer {
            plain: registry(sanitize),
            by_kind: HashMap::new(),
            resolved: HashMap::new(),
            roots: HashMap::new(),
            digests: HashMap::new(),
            notices: HashMap::new(),
            monitor: Monitor::new(
                cfg.deadline.monitor_url.as_deref(),
                cfg.deadline
                    .region
                    .clone()
                    .or_else(|| chain_region.map(str::to_string)),
                cfg.deadline.farm_regions.clone(),
            ),
            people: cfg.people.clone(),
            uses_failure: Default::default(),
        };
        let mut loaded: HashMap<String, String> = HashMap::new(); // rel → display name
        for team in &cfg.teams {
            let kinds: std::collections::BTreeMap<_, _> = team
                .channels
                .iter()
                .map(|c| (c.kind.as_str(), c.kind))
                .collect();
            for (kind_s, kind) in kinds {
                r.by_kind.entry(kind_s).or_insert_with(|| {
                    let mut h = registry(move |s| kind.escape(s));
                    // Templates registered before this kind was seen.
                    for (name, t) in r.plain.get_templates() {
                        h.register_template(name, t.clone());
                    }
                    h
                });
                if kind.root_template().is_some() {
                    let candidates = [
                        format!("{}/{kind_s}/root.hbs", team.name),
                        format!("default/{kind_s}/root.hbs"),
                    ];
                    let rel = r
                        .find_template(dir, &candidates, &mut loaded)?
                        .ok_or_else(|| RenderError::Template {
                            file: format!("{}/default/{kind_s}/root.hbs", dir.display()),
                            message: "no root template found for this channel kind".into(),
                        })?;
                    r.roots.insert((team.name.clone(), kind), rel);
                }
                if kind.digest_template().is_some() {
                    let candidates = [
                        format!("{}/{kind_s}/digest.hbs", team.name),
                        format!("default/{kind_s}/digest.hbs"),
                    ];
                    if let Some(rel) = r.find_template(dir, &candidates, &mut loaded)? {
                        r.digests.insert((team.name.clone(), kind), rel);
                    }
                }
                r.find_notices(dir, &team.name, kind, &mut loaded)?;
                for event in Event::ALL {
                    let candidates = [
                        format!("{}/{kind_s}/{}.hbs", team.name, event.as_str()),
                        format!("{}/{kind_s}/default.hbs", team.name),
                        format!("default/{kind_s}/{}.hbs", event.as_str()),
                        format!("default/{kind_s}/default.hbs"),
                    ];
                    let found = r.find_template(dir, &candidates, &mut loaded)?;
                    let rel = found.ok_or_else(|| RenderError::Template {
                        file: format!("{}/default/{kind_s}/default.hbs", dir.display()),
                        message: "no template found for this channel kind".into(),
                    })?;
                    r.resolved.insert((team.name.clone(), kind, event), rel);
                }
            }
        }
        // Strict mode only catches a misspelt field when rendering, so render every
        // template once now against a job with every field set (a root template
        // against every event's sample).
        let roots = r.resolved.keys().filter_map(|(team, kind, event)| {
            let rel = r.roots.get(&(team.clone(), *kind))?;
            Some(((team.clone(), *kind, *event), rel.clone()))
        });
        let all: Vec<_> = r
            .resolved
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(roots)
            .collect();
        for ((team, kind, event), rel) in &all {
            // Once with an owner from the people directory, once without: a template
            // must render for jobs whose owner is unmapped too.
            let with_owner = sample_context(team, "check", *event, r.monitor.as_ref());
            let mut without = with_owner.clone();
            without["owner"] = Value::Null;
            for ctx in [with_owner, without] {
                r.render_named(rel, *kind, &ctx)
                    .map_err(|e| e.in_file(&loaded[rel]))?;
            }
        }
        for ((team, kind), rel) in &r.digests {
            let ctx = sample_digest_context(team);
            r.render_named(rel, *kind, &ctx)
                .map_err(|e| e.in_file(&loaded[rel]))?;
        }
        r.check_notices(&loaded)?;
        Ok(r)
    }

    /// The first of `candidates` that exists (loaded before, on disk, or embedded),
    /// registered once.
    fn find_template(
        &mut self,
        dir: &Path,
        candidates: &[String],
        loaded: &mut HashMap<String, String>,
    ) -> Result<Option<String>, RenderError> {
        for rel in candidates {
            if loaded.contains_key(rel) {
                return Ok(Some(rel.clone()));
            }
            if let Some((display, src)) = source_for(dir, rel)? {
                self.register(rel, &display, &src)?;
                if src.contains("failure") {
                    self.uses_failure.insert(rel.clone());
                }
                loaded.insert(rel.clone(), display);
                return Ok(Some(rel.clone()));
            }
        }
        Ok(None)
    }

    fn register(&mut self, name: &str, display: &str, src: &str) -> Result<(), RenderError> {
        lint(src).map_err(|message| RenderError::Template {
            file: display.to_string(),
            message,
        })?;
        for reg in std::iter::once(&mut self.plain).chain(self.by_kind.values_mut()) {
            reg.register_template_string(name, src)
                .map_err(|e| RenderError::Template {
                    file: display.to_string(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    pub fn monitor(&self) -> Option<&Monitor> {
        self.monitor.as_ref()
    }

    /// Renders the message for one channel.
    pub fn render(
        &self,
        team: &str,
        kind: ChannelKind,
        event: Event,
        ctx: &Value,
    ) -> Result<Rendered, RenderError> {
        let rel = self
            .resolved
            .get(&(team.to_string(), kind, event))
            .ok_or_else(|| RenderError::Template {
                file: format!("{team}/{}/{}", kind.as_str(), event.as_str()),
                message: "no template resolved for this team and channel kind".into(),
            })?;
        self.render_named(rel, kind, ctx)
    }

    fn render_named(
        &self,
        rel: &str,
        kind: ChannelKind,
        ctx: &Value,
    ) -> Result<Rendered, RenderError> {
        let err = |e: handlebars::RenderError| RenderError::Render {
            file: rel.to_string(),
            message: e.to_string(),
        };
        let plain = self.plain.render(rel, ctx).map_err(err)?;
        let (title, _) = split(&plain);
        let marked = match self.by_kind.get(kind.as_str()) {
            Some(h) => h.render(rel, ctx).map_err(err)?,
            None => {
                return Err(RenderError::Template {
                    file: rel.to_string(),
                    message: format!("no templates loaded for kind {kind}"),
                });
            }
        };
        let (fallback, body) = split(&marked);
        Ok(Rendered {
            title,
            body,
            fallback,
            template: rel.to_string(),
        })
    }

    /// The one way from a transition to a channel's payload: context → template →
    /// the kind's escaping → the kind's payload. Used by the watcher, the `render`
    /// command, and the golden and escaping tests.
    pub fn payload(
        &self,
        team: &str,
        channel: &crate::notify::Channel,
        job: &JobSnapshot,
        tr: &Transition,
    ) -> Result<Value, RenderError> {
        self.payload_with(team, channel, job, tr, None)
    }

    /// [`Renderer::payload`] with what triage gathered (`failure` in the context,
    /// `data.failure` for webhooks, the failed frames and log tail in chat).
    pub fn payload_with(
        &self,
        team: &str,
        channel: &crate::notify::Channel,
        job: &JobSnapshot,
        tr: &Transition,
        failure: Option<&crate::domain::Failure>,
    ) -> Result<Value, RenderError> {
        let owner = self.people.owner(&job.created_by);
        let mut ctx = context(team, &channel.name, job, tr, self.monitor(), owner);
        ctx["failure"] = serde_json::to_value(failure).unwrap_or(Value::Null);
        let rendered = self.render(team, channel.kind, tr.event, &ctx)?;
        let root = match self.roots.get(&(team.to_string(), channel.kind)) {
            Some(rel) => Some(self.render_named(rel, channel.kind, &ctx)?),
            None => None,
        };
        let link = self.monitor().and_then(|m| m.job(&job.key));
        Ok(channel.kind.payload(&Message {
            team,
            rendered: &rendered,
            job,
            transition: tr,
            link: link.as_deref(),
            owner,
            mention: owner.is_some() && channel.mention_owner.contains(&tr.event),
            failure,
            card_only: channel.card_only,
            root: root.as_ref(),
            dm: channel
                .app
                .as_ref()
                .is_some_and(|a| a.dm_owner.contains(&tr.event)),
        }))
    }

    /// What a digest line says of `job` after `tr` on `channel`.
    pub fn brief(
        &self,
        channel: &crate::notify::Channel,
        job: &JobSnapshot,
        tr: &Transition,
    ) -> crate::domain::Brief {
        let owner = self.people.owner(&job.created_by);
        let duration = job
            .started_at
            .map(|s| human_duration((job.ended_at.unwrap_or(tr.detected_at) - s).num_seconds()));
        crate::domain::Brief {
            name: job.name.clone(),
            status: status_words(job).1.to_string(),
            failed_tasks: job.count("FAILED"),
            duration,
            owner: owner.map(|p| p.name.clone()),
            mention_slack: owner
                .filter(|_| channel.mention_owner.contains(&tr.event))
                .and_then(|p| p.slack.clone()),
            link: self.monitor().and_then(|m| m.job(&job.key)),
        }
    }

    /// Whether a message of this event on this channel waits for failure triage: the
    /// failure events always; others when their template uses `failure`.
    pub fn wants_failure(&self, team: &str, kind: ChannelKind, event: Event) -> bool {
        crate::domain::failure::EVENTS.contains(&event)
            || self
                .resolved
                .get(&(team.to_string(), kind, event))
                .is_some_and(|rel| self.uses_failure.contains(rel))
    }
}

/// Rejects, on handlebars' own parse tree, every form that would bypass the
/// channel's escaping: unescaped output (`{{{ }}}`, `{{& }}` in any spelling),
/// raw blocks and partials. Reading the parse tree, not the text, means no
/// spelling of these (whitespace, line breaks, `~`, escaped backslashes) slips by.
pub fn lint(src: &str) -> Result<(), String> {
    use handlebars::template::{Template, TemplateElement as E};
    // A syntax error is reported by registration, with its own position.
    let Ok(t) = Template::compile(src) else {
        return Ok(());
    };
    let lines: Vec<&str> = src.split('\n').collect();
    let starts_raw_block = |line: usize, col: usize| {
        lines
            .get(line.saturating_sub(1))
            .and_then(|l| l.get(col.saturating_sub(1)..))
            .is_some_and(|rest| rest.starts_with("{{{{"))
    };
    fn walk(
        t: &Template,
        check: &dyn Fn(&E, usize, usize) -> Option<&'static str>,
    ) -> Result<(), String> {
        for (i, el) in t.elements.iter().enumerate() {
            let (line, col) = t.mapping.get(i).map_or((0, 0), |m| (m.0, m.1));
            if let Some(what) = check(el, line, col) {
                return Err(format!(
                    "line {line}, column {col}: {what} would bypass the channel's escaping; use `{{{{field}}}}`"
                ));
            }
            let nested: Vec<&Template> = match el {
                E::HelperBlock(h) => h.template.iter().chain(h.inverse.iter()).collect(),
                E::DecoratorBlock(d) | E::PartialBlock(d) => d.template.iter().collect(),
                _ => Vec::new(),
            };
            for n in nested {
                walk(n, check)?;
            }
        }
        Ok(())
    }
    let check = |el: &E, line: usize, col: usize| match el {
        E::HtmlExpression(_) => Some("unescaped output (`{{{ }}}` or `{{& }}`)"),
        E::PartialExpression(_) | E::PartialBlock(_) => Some("a partial"),
        E::HelperBlock(_) if starts_raw_block(line, col) => Some("a raw block (`{{{{ }}}}`)"),
        _ => None,
    };
    walk(&t, &check)
}

fn split(s: &str) -> (String, String) {
    let s = s.trim_matches(|c| c == '\n' || c == '\r');
    match s.split_once('\n') {
        Some((t, b)) => (
            t.trim().to_string(),
            b.trim_matches(|c| c == '\n' || c == '\r').to_string(),
        ),
        None => (s.trim().to_string(), String::new()),
    }
}

fn ts(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// `1h 2m 3s`-style; seconds precision is plenty for a render job.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

fn event_words(e: Event) -> (&'static str, &'static str) {
    match e {
        Event::Started => ("▶️", "started"),
        Event::Succeeded => ("✅", "succeeded"),
        Event::Failed => ("❌", "failed"),
        Event::Canceled => ("🚫", "was canceled"),
        Event::Suspended => ("⏸️", "was suspended"),
        Event::NotCompatible => ("⚠️", "is not compatible with any fleet"),
        Event::Requeued => ("🔁", "was requeued"),
        Event::TasksFailed => ("⚠️", "has failing tasks"),
        Event::CreateFailed => ("❌", "failed to create"),
        Event::UploadFailed => ("❌", "failed to upload attachments"),
        Event::UpdateFailed => ("❌", "failed to update"),
        Event::Archived => ("🗄️", "was archived"),
        Event::Stalled => ("🐢", "has stalled"),
        Event::Progress => ("📈", "passed a milestone"),
        Event::BudgetThreshold => ("💰", "crossed a budget threshold"),
    }
}

/// The job's state in words, lifecycle failures first (the job never ran).
fn status_words(job: &JobSnapshot) -> (&'static str, &'static str) {
    use crate::domain::{LifecycleStatus as L, TaskRunStatus as S};
    match (&job.lifecycle_status, job.task_run_status.as_ref()) {
        (L::CreateFailed, _) => ("❌", "Failed to create"),
        (L::UploadFailed, _) => ("❌", "Upload failed"),
        (L::UpdateFailed, _) => ("❌", "Update failed"),
        (L::Archived, _) => ("🗄️", "Archived"),
        (_, Some(S::Succeeded)) => ("✅", "Succeeded"),
        (_, Some(S::Failed)) => ("❌", "Failed"),
        (_, Some(S::Canceled)) => ("🚫", "Canceled"),
        (_, Some(S::Suspended)) => ("⏸️", "Suspended"),
        (_, Some(S::NotCompatible)) => ("⚠️", "Not compatible"),
        (_, Some(S::Running)) => ("▶️", "Running"),
        (_, Some(S::Starting)) => ("▶️", "Starting"),
        (_, Some(S::Ready | S::Pending | S::Assigned | S::Scheduled)) => ("⏳", "Waiting"),
        (_, _) => ("⏳", "Waiting"),
    }
}

/// Builds the template context: every GetJob field (wire names), plus team, channel,
/// event, previous statuses, a duration, task summary and monitor link.
pub fn context(
    team: &str,
    channel: &str,
    job: &JobSnapshot,
    tr: &Transition,
    monitor: Option<&Monitor>,
    owner: Option<&crate::domain::people::Person>,
) -> Value {
    let mut counts = serde_json::Map::new();
    for s in crate::domain::TaskRunStatus::KNOWN {
        counts.insert((*s).to_string(), json!(job.count(s)));
    }
    for (k, v) in &job.task_run_status_counts {
        counts.insert(k.clone(), json!(v));
    }
    let total: i64 = job.task_run_status_counts.values().sum();
    let succeeded = job.count("SUCCEEDED");
    let failed = job.count("FAILED");
    let mut task_summary = format!("{succeeded}/{total} succeeded");
    if failed > 0 {
        task_summary.push_str(&format!(", {failed} failed"));
    }
    let running = job.count("RUNNING");
    if running > 0 {
        task_summary.push_str(&format!(", {running} running"));
    }
    let duration_secs = job
        .started_at
        .map(|s| (job.ended_at.unwrap_or(tr.detected_at) - s).num_seconds());
    let params: serde_json::Map<String, Value> = job
        .parameters
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.value.clone())))
        .collect();
    let (emoji, verb) = event_words(tr.event);
    let remaining = total - succeeded - failed - job.count("CANCELED");
    let rate =
        crate::watch::progress::throughput(succeeded, remaining, job.started_at, tr.detected_at);
    let progress_percent = (total > 0).then(|| succeeded * 100 / total);
    let link = monitor.and_then(|m| m.job(&job.key));
    let mut ctx = json!({
        "team": team,
        "channel": channel,
        "event": tr.event.as_str(),
        "emoji": emoji,
        "verb": verb,
        "detectedAt": ts(Some(tr.detected_at)),
        "previousTaskRunStatus": tr.previous_task_run_status.as_ref().map(|s| s.as_str()),
        "previousLifecycleStatus": tr.previous_lifecycle_status.as_str(),
        "duration": duration_secs.map(human_duration),
        "durationSeconds": duration_secs,
        "taskSummary": task_summary,
        "submitter": job.created_by.rsplit('/').next().unwrap_or(&job.created_by),
        "isLifecycleEvent": matches!(tr.event, Event::CreateFailed | Event::UploadFailed | Event::UpdateFailed | Event::Archived),
        "taskTotal": total,

        "monitorUrl": link,
        // From the people directory only; `mention` is display text ("@Jane Doe"),
        // the ping itself is added by the channel's payload builder.
        "owner": owner.map(|p| json!({
            "name": p.name,
            "mention": format!("@{}", p.name),
            "createdBy": job.created_by,
        })),
        "farmId": job.key.farm_id,
        "queueId": job.key.queue_id,
        "jobId": job.key.job_id,
        "name": job.name,
        "description": job.description,
        "lifecycleStatus": job.lifecycle_status.as_str(),
        "lifecycleStatusMessage": job.lifecycle_status_message,
        "priority": job.priority,
        "createdAt": ts(Some(job.created_at)),
        "createdBy": job.created_by,
        "updatedAt": ts(job.updated_at),
        "updatedBy": job.updated_by,
        "startedAt": ts(job.started_at),
        "endedAt": ts(job.ended_at),
        "taskRunStatus": job.task_run_status.as_ref().map(|s| s.as_str()),
        "targetTaskRunStatus": job.target_task_run_status,
        "taskRunStatusCounts": counts,
        "taskFailureRetryCount": job.task_failure_retry_count,
        "maxFailedTasksCount": job.max_failed_tasks_count,
        "maxRetriesPerTask": job.max_retries_per_task,
        "maxWorkerCount": job.max_worker_count,
        "storageProfileId": job.storage_profile_id,
        "parameters": params,
        "attachments": job.attachments,
        "sourceJobId": job.source_job_id,
    });
    // Progress, throughput and stalls (a second object: json! nests only so deep).
    let (status_emoji, status) = status_words(job);
    let extra = json!({
        "progressPercent": progress_percent,
        "progressBar": crate::notify::slack_app::progress_bar(progress_percent.unwrap_or(0)),
        "status": status,
        "statusEmoji": status_emoji,
        // Throughput since the job started, and the time the rest would take at it.
        "tasksPerHour": rate.map(|(r, _)| (r * 10.0).round() / 10.0),
        "eta": rate.and_then(|(_, eta)| eta).map(|d| human_duration(d.as_secs() as i64)),
        "milestone": tr.milestone,
        "stalledFor": tr.stalled_since.map(|s| human_duration((tr.detected_at - s).num_seconds())),
    });
    if let (Some(c), Value::Object(e)) = (ctx.as_object_mut(), extra) {
        c.extend(e);
    }
    ctx
}

/// A job with every optional field present, in the state `event` announces, and the
/// transition to it: for start-up checks, previews and golden files.
pub fn sample_job(event: Event) -> (JobSnapshot, Transition) {
    use crate::domain::{LifecycleStatus as L, TaskRunStatus as S};
    let key = JobKey {
        farm_id: format!("farm-{}", "0".repeat(32)).into(),
        queue_id: format!("queue-{}", "0".repeat(32)).into(),
        job_id: format!("job-{}", "0".repeat(32)).into(),
    };
    let mut job = JobSnapshot::sample(key, "shot_010 comp v3");
    job.description = Some("Final comp for shot 010".into());
    job.started_at = Some(job.created_at + chrono::Duration::seconds(30));
    job.updated_by = Some("arn:aws:sts::123456789012:assumed-role/Artist/jane".into());
    job.target_task_run_status = Some("READY".into());
    job.task_failure_retry_count = Some(0);
    job.max_failed_tasks_count = Some(100);
    job.max_retries_per_task = Some(5);
    job.max_worker_count = Some(10);
    job.storage_profile_id = Some(format!("sp-{}", "0".repeat(32)));
    job.source_job_id = Some(format!("job-{}", "1".repeat(32)));
    job.attachments = Some(json!({"manifests": [], "fileSystem": "COPIED"}));
    job.parameters.insert(
        "Frames".into(),
        crate::domain::ParameterValue {
            kind: "string".into(),
            value: "1-600".into(),
        },
    );
    let (status, prev, counts, lifecycle): (S, S, &[(&str, i64)], L) = match event {
        Event::Started => (
            S::Running,
            S::Ready,
            &[("RUNNING", 8), ("READY", 592)],
            L::CreateComplete,
        ),
        Event::Succeeded => (
            S::Succeeded,
            S::Running,
            &[("SUCCEEDED", 600)],
            L::CreateComplete,
        ),
        Event::Failed => (
            S::Failed,
            S::Running,
            &[("SUCCEEDED", 598), ("FAILED", 2)],
            L::CreateComplete,
        ),
        Event::Canceled => (
            S::Canceled,
            S::Running,
            &[("SUCCEEDED", 300), ("CANCELED", 300)],
            L::CreateComplete,
        ),
        Event::Suspended => (
            S::Suspended,
            S::Running,
            &[("SUCCEEDED", 300), ("SUSPENDED", 300)],
            L::CreateComplete,
        ),
        Event::NotCompatible => (
            S::NotCompatible,
            S::Ready,
            &[("NOT_COMPATIBLE", 600)],
            L::CreateComplete,
        ),
        Event::Requeued => (
            S::Ready,
            S::Failed,
            &[("SUCCEEDED", 598), ("READY", 2)],
            L::CreateComplete,
        ),
        Event::TasksFailed => (
            S::Running,
            S::Running,
            &[("SUCCEEDED", 400), ("FAILED", 3), ("RUNNING", 197)],
            L::CreateComplete,
        ),
        Event::CreateFailed => (S::Ready, S::Ready, &[("READY", 600)], L::CreateFailed),
        Event::UploadFailed => (S::Ready, S::Ready, &[("READY", 600)], L::UploadFailed),
        Event::UpdateFailed => (
            S::Running,
            S::Running,
            &[("SUCCEEDED", 300), ("RUNNING", 300)],
            L::UpdateFailed,
        ),
        Event::Archived => (
            S::Succeeded,
            S::Succeeded,
            &[("SUCCEEDED", 600)],
            L::Archived,
        ),
        Event::Stalled => (
            S::Running,
            S::Running,
            &[("SUCCEEDED", 240), ("RUNNING", 8), ("READY", 352)],
            L::CreateComplete,
        ),
        // A running job, for a notice's template checked against a job context.
        Event::Progress | Event::BudgetThreshold => (
            S::Running,
            S::Running,
            &[("SUCCEEDED", 310), ("RUNNING", 8), ("READY", 282)],
            L::CreateComplete,
        ),
    };
    if matches!(
        lifecycle,
        L::CreateFailed | L::UploadFailed | L::UpdateFailed
    ) {
        job.started_at = None;
        job.lifecycle_status_message =
            "Job attachments upload failed: access denied to s3://bucket/prefix".into();
    }
    if status.is_terminal() {
        job.ended_at = Some(job.created_at + chrono::Duration::seconds(3630));
    }
    job.updated_at = Some(job.created_at + chrono::Duration::seconds(3630));
    job.task_run_status = Some(status);
    job.lifecycle_status = lifecycle;
    job.task_run_status_counts = counts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let tr = Transition {
        event,
        previous_task_run_status: Some(prev),
        previous_lifecycle_status: match event {
            Event::CreateFailed => L::CreateInProgress,
            Event::UploadFailed => L::UploadInProgress,
            Event::UpdateFailed => L::UpdateInProgress,
            _ => L::CreateComplete,
        },
        // A job that just started has run for seconds, not an hour.
        detected_at: job.created_at
            + chrono::Duration::seconds(if event == Event::Started { 32 } else { 3631 }),
        milestone: None,
        stalled_since: None,
    };
    if event == Event::Started {
        job.updated_at = Some(tr.detected_at);
    }
    let mut tr = tr;
    match event {
        Event::Progress => tr.milestone = Some(50),
        Event::Stalled => tr.stalled_since = Some(tr.detected_at - chrono::Duration::minutes(42)),
        _ => {}
    }
    (job, tr)
}

/// The monitor samples link to when none is configured.
pub fn sample_monitor() -> Monitor {
    Monitor::fixed("https://monitor.example.com", "us-west-2")
}

/// The template context of [`sample_job`].
pub fn sample_context(team: &str, channel: &str, event: Event, monitor: Option<&Monitor>) -> Value {
    let (job, tr) = sample_job(event);
    let owner = crate::domain::people::Person {
        deadline: vec![job.created_by.clone()],
        slack: Some("U0000000".into()),
        teams: Some("jane@example.com".into()),
        email: Some("jane@example.com".into()),
        name: "Jane Doe".into(),
    };
    let monitor = monitor.cloned().unwrap_or_else(sample_monitor);
    let mut ctx = context(team, channel, &job, &tr, Some(&monitor), Some(&owner));
    if crate::domain::failure::EVENTS.contains(&event) {
        ctx["failure"] = serde_json::to_value(crate::domain::failure::sample_failure(
            &job.key,
            Some(&monitor),
        ))
        .unwrap_or(Value::Null);
    } else {
        ctx["failure"] = Value::Null;
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_rejects_unescaped_output_with_line() {
        assert!(lint("{{name}}\n{{#if x}}{{y}}{{/if}} \\{{{literal").is_ok());
        let e = lint("ok\n  {{{name}}}").unwrap_err();
        assert!(e.starts_with("line 2, column 3"), "{e}");
        assert!(lint("{{& name}}").is_err());
        assert!(lint("{{~{name}~}}").is_err());
        assert!(lint("{{{{raw}}}}x{{{{/raw}}}}").is_err());
        assert!(lint("{{> other}}").is_err());
        for bypass in [
            "{{ {name}}}",
            "{{\t{name}}}",
            "{{\n{name}}}",
            "{{ &name}}",
            "\\\\{{{name}}}",
            "{{#if x}}\n  {{{name}}}\n{{/if}}",
            "{{#if x}}{{else}}{{&name}}{{/if}}",
        ] {
            assert!(lint(bypass).is_err(), "{bypass:?} passed the lint");
        }
    }

    #[test]
    fn job_values_stay_on_one_line_and_cannot_disguise_themselves() {
        assert_eq!(
            sanitize("shot_010\n*Status:* SUCCEEDED"),
            "shot_010 *Status:* SUCCEEDED"
        );
        assert_eq!(sanitize("a\r\n\tb\u{2028}c"), "a b c");
        assert_eq!(
            sanitize("ev\u{202e}lif\u{2066}.exe\u{200b}\u{feff}\u{200f}"),
            "evlif.exe"
        );
        // ZWNJ (Persian) and ZWJ (emoji sequences) are kept.
        assert_eq!(
            sanitize("می\u{200c}خواهم 👩\u{200d}💻"),
            "می\u{200c}خواهم 👩\u{200d}💻"
        );
        assert_eq!(
            crate::notify::slack::escape("<!here>\n*x*"),
            "&lt;!here&gt; *x*"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_template_symlinked_outside_the_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, "TOP SECRET").unwrap();
        let t = dir.path().join("templates/lighting/webhook");
        std::fs::create_dir_all(&t).unwrap();
        std::os::unix::fs::symlink(&secret, t.join("default.hbs")).unwrap();
        let e = source_for(
            &dir.path().join("templates"),
            "lighting/webhook/default.hbs",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("outside the templates directory"), "{e}");
        assert!(!e.contains("TOP SECRET"));
        // A symlink that stays inside is fine.
        std::fs::write(t.join("real.hbs"), "{{name}}").unwrap();
        std::os::unix::fs::symlink(t.join("real.hbs"), t.join("job.failed.hbs")).unwrap();
        assert!(
            source_for(
                &dir.path().join("templates"),
                "lighting/webhook/job.failed.hbs"
            )
            .unwrap()
            .is_some()
        );
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m 1s");
        assert_eq!(human_duration(3723), "1h 2m 3s");
    }

    proptest::proptest! {
        /// Every unescaped form, in random whitespace and layout, is refused.
        #[test]
        fn no_spelling_of_unescaped_output_passes(
            ws1 in "[ \t\n~]{0,3}",
            ws2 in "[ \t\n]{0,3}",
            ws3 in "[ \t\n~]{0,3}",
            before in "[a-z \n]{0,8}",
            form in 0usize..4,
            field in proptest::sample::select(vec!["name", "description", "createdBy", "parameters.Frames"]),
        ) {
            let t = match form {
                0 => format!("{before}{{{{{{{ws1}{field}{ws2}}}}}}}"),
                1 => format!("{before}{{{{{ws1}&{ws2}{field}{ws3}}}}}"),
                2 => format!("{before}{{{{#if x}}}}{ws1}{{{{{{{ws2}{field}}}}}}}{{{{/if}}}}"),
                _ => format!("{before}\\\\{{{{{{{ws2}{field}}}}}}}"),
            };
            // Refused either way: handlebars fails to register it, or lint refuses it.
            let compiles = handlebars::template::Template::compile(&t).is_ok();
            proptest::prop_assert!(!compiles || lint(&t).is_err(), "{:?} passed", t);
        }
    }

    /// The property above is not vacuous: every form, plainly spelled, is one that
    /// handlebars accepts, so it is lint that must refuse it.
    #[test]
    fn each_unescaped_form_compiles_and_is_refused_by_lint() {
        for field in ["name", "description", "createdBy", "parameters.Frames"] {
            for t in [
                format!("{{{{{{{field}}}}}}}"),
                format!("{{{{&{field}}}}}"),
                format!("{{{{#if x}}}}{{{{{{{field}}}}}}}{{{{/if}}}}"),
                format!("\\\\{{{{{{{field}}}}}}}"),
            ] {
                assert!(
                    handlebars::template::Template::compile(&t).is_ok(),
                    "{t:?} must compile"
                );
                assert!(lint(&t).is_err(), "{t:?} passed lint");
            }
        }
    }
}
