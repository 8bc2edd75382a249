//! Outbound delivery. Each channel kind is one file implementing [`Kind`] (its
//! config keys, allowed hosts, escaping, payload, signing, pacing, response
//! classification and default template) and one line in [`KINDS`].
//! `send::Sender` posts a payload; [`retry`] holds the one retry policy.
//!
//! The kinds are pure (layer "channel kinds": they import only `domain`); `send`
//! alone does HTTP and sits with the adapters. This module depends on no
//! configuration code: `config` reads its settings into the types defined here
//! ([`Channel`], [`DeliveryConfig`]).
pub mod quiet;
pub mod retry;
pub mod send;
pub mod settings;
pub mod slack;
pub mod slack_app;
pub mod target;
pub mod teams;
pub mod webhook;

use crate::domain::secret::Secret;
use crate::domain::{Event, JobSnapshot, Transition};
use retry::Verdict;
use serde_json::Value;
use std::time::Duration;

pub use settings::DeliveryConfig;

/// Every channel kind the service knows, by registration. Adding a kind: one file
/// under `src/notify/`, one line here, its default template and golden files.
pub static KINDS: &[&dyn Kind] = &[
    &slack::Slack,
    &slack_app::SlackApp,
    &teams::Teams,
    &webhook::Webhook,
];

/// What a payload builder gets: the rendered text and the facts behind it.
pub struct Message<'a> {
    pub team: &'a str,
    pub rendered: &'a Rendered,
    pub job: &'a JobSnapshot,
    pub transition: &'a Transition,
    /// Link to the job in the Deadline Cloud monitor, if configured.
    pub link: Option<&'a str>,
    /// The job's owner, when `createdBy` maps to a person.
    pub owner: Option<&'a crate::domain::people::Person>,
    /// Whether this message mentions the owner (the channel's `mention_owner` has the event).
    pub mention: bool,
    /// Why the job failed, when triage ran for this message.
    pub failure: Option<&'a crate::domain::Failure>,
    /// The channel's `card_only` (Teams).
    pub card_only: bool,
    /// The living message's new content, for kinds with a root template.
    pub root: Option<&'a Rendered>,
    /// Whether the owner also gets this message directly (the channel's `dm_owner`).
    pub dm: bool,
}

/// The text a template produced, escaped for the channel's markup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    /// Plain text, shown where the channel renders no markup (Slack header, Teams TextRun).
    pub title: String,
    /// The body, with job data escaped by the kind's [`Kind::escape`].
    pub body: String,
    /// The title with job data escaped by the kind's [`Kind::escape`] (Slack's
    /// fallback `text`).
    pub fallback: String,
    /// The template file that produced it.
    pub template: String,
}

/// One page of a digest: the text its template rendered and the facts behind it.
pub struct Digest<'a> {
    pub channel: &'a str,
    pub rendered: &'a Rendered,
    /// Times of the first and last held message.
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    /// The jobs on this page, newest state first.
    pub jobs: &'a [DigestJob],
    /// Each held message's own payload, as it would have been sent alone.
    pub items: &'a [Value],
    /// The channel's `card_only` (Teams).
    pub card_only: bool,
}

/// An event that concerns no job (a budget threshold), rendered for one channel.
pub struct Notice<'a> {
    pub team: &'a str,
    pub event: Event,
    pub rendered: &'a Rendered,
    pub link: Option<&'a str>,
    /// The facts, as a webhook's `data` carries them.
    pub data: &'a Value,
    pub at: chrono::DateTime<chrono::Utc>,
    /// The channel's `card_only` (Teams).
    pub card_only: bool,
}

/// A job on a digest page: what a kind links to and mentions.
#[derive(Debug, Clone)]
pub struct DigestJob {
    pub name: String,
    pub link: Option<String>,
    /// A member id from the people directory, when the channel mentions the owner.
    pub mention_slack: Option<String>,
}

/// What came back from the destination.
#[derive(Debug)]
pub struct Answer<'a> {
    pub status: u16,
    pub retry_after: Option<&'a str>,
    /// The first part of the response body (for reasons).
    pub body: &'a str,
    /// When it arrived (an HTTP-date `Retry-After` is relative to it).
    pub at: std::time::SystemTime,
}

/// One channel kind. Defaults suit a plain JSON webhook.
pub trait Kind: Sync + Send + 'static {
    /// `kind = "<name>"` in config; also names `[delivery] <name>_hosts`,
    /// `<name>_interval` and the template directory `templates/*/<name>/`.
    fn name(&self) -> &'static str;
    /// Default `[delivery] <name>_hosts` (`*.` matches subdomains); empty allows any
    /// public host.
    fn default_hosts(&self) -> &'static [&'static str] {
        &[]
    }
    /// Default `[delivery] <name>_interval`: minimum spacing between two posts to
    /// one destination URL, per the platform's limits.
    fn default_interval(&self) -> Duration {
        Duration::ZERO
    }
    /// The built-in `templates/default/<name>/default.hbs`.
    fn default_template(&self) -> &'static str;
    /// The built-in `templates/default/<name>/root.hbs`, for kinds that keep one
    /// living message per job.
    fn root_template(&self) -> Option<&'static str> {
        None
    }
    /// Whether a disabled channel keeps its messages queued (until re-enabled or
    /// `give_up_after`) rather than dead-lettering them.
    fn holds_when_disabled(&self) -> bool {
        false
    }
    /// The built-in `templates/default/<name>/digest.hbs`, for kinds that fold
    /// held messages into a digest.
    fn digest_template(&self) -> Option<&'static str> {
        None
    }
    /// The built-in `templates/default/<name>/<event>.hbs` of a notice, an event
    /// that concerns no job (`budget.threshold`).
    fn notice_template(&self, event: Event) -> Option<&'static str>;
    /// A notice's payload.
    fn notice_payload(&self, n: &Notice) -> Value;
    /// A digest page's payload, and whether it is within the platform's limits
    /// (a page that is not gets fewer jobs).
    fn digest_payload(&self, _d: &Digest) -> (Value, bool) {
        (Value::Null, false)
    }
    /// Escapes a job value for the kind's markup (applied by templates to every
    /// `{{field}}`). The default strips control characters (keeps `\n`, `\t`).
    fn escape(&self, s: &str) -> String {
        crate::domain::text::sanitize(s)
    }
    /// Refuses URLs that can never work for this kind (checked at config load and
    /// before every send), with the reason.
    fn refuse_url(&self, _url: &url::Url) -> Option<String> {
        None
    }
    /// Whether `secret` may be set, and whether this one is usable.
    fn check_secret(&self, _secret: &str) -> Result<(), String> {
        Err(format!(
            "only kind = \"webhook\" channels are signed; kind = \"{}\" takes no secret",
            self.name()
        ))
    }
    /// The JSON body for one message.
    fn payload(&self, m: &Message) -> Value;
    /// Extra request headers (ids, signatures).
    fn headers(
        &self,
        _webhook_id: &str,
        _timestamp: i64,
        _secret: Option<&Secret>,
        _body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, String> {
        Ok(Vec::new())
    }
    /// What an answer means for this kind.
    fn classify(&self, a: &Answer, max_retry_after: Duration) -> Verdict {
        retry::classify(a, false, max_retry_after)
    }
}

/// A registered kind, by name: cheap to copy, compared and hashed by name.
#[derive(Clone, Copy)]
pub struct ChannelKind(&'static dyn Kind);

impl ChannelKind {
    pub fn named(name: &str) -> Option<ChannelKind> {
        KINDS
            .iter()
            .find(|k| k.name() == name)
            .map(|k| ChannelKind(*k))
    }

    pub fn all() -> impl Iterator<Item = ChannelKind> {
        KINDS.iter().map(|k| ChannelKind(*k))
    }

    /// `"slack", "teams", "webhook"` for error messages.
    pub fn names() -> String {
        KINDS
            .iter()
            .map(|k| format!("{:?}", k.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn as_str(self) -> &'static str {
        self.0.name()
    }
}

impl std::ops::Deref for ChannelKind {
    type Target = dyn Kind;
    fn deref(&self) -> &(dyn Kind + 'static) {
        self.0
    }
}

impl PartialEq for ChannelKind {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for ChannelKind {}
impl std::hash::Hash for ChannelKind {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}
impl std::fmt::Debug for ChannelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl std::fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl serde::Serialize for ChannelKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A configured destination.
#[derive(Debug, Clone)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    pub url: Secret,
    /// Standard Webhooks signing key (`whsec_…`), for kinds that sign.
    pub secret: Option<Secret>,
    pub events: Option<Vec<Event>>,
    /// Events on which the job's owner is mentioned (`mention_owner`).
    pub mention_owner: Vec<Event>,
    /// Teams: the bare Adaptive Card, for a flow that passes the body straight to
    /// "Post card in a chat or channel" (the ready-made flow wants the envelope).
    pub card_only: bool,
    /// `kind = "slack_app"`: token, channel id, mode, `dm_owner`; `url` is `api_url`.
    pub app: Option<slack_app::AppChannel>,
    /// Quiet hours, urgent events and digest windows.
    pub defer: quiet::Deferral,
}

impl Channel {
    /// A job event: unless the channel's `events` leaves it out. A notice (no job):
    /// only when the channel's `events` names it.
    pub fn wants(&self, event: Event) -> bool {
        match &self.events {
            Some(e) => e.contains(&event),
            None => event.is_job_event(),
        }
    }

    /// What pacing, back-off and `Retry-After` apply to: the URL, or for a Slack
    /// app the (API, channel id) pair, since Slack limits each channel apart.
    pub fn destination(&self) -> std::borrow::Cow<'_, str> {
        match &self.app {
            Some(a) => format!("{}#{}", self.url.expose(), a.channel).into(),
            None => self.url.expose().into(),
        }
    }

    /// Every secret of this channel, for scrubbing error text.
    pub fn secrets(&self) -> Vec<&Secret> {
        [
            Some(&self.url),
            self.secret.as_ref(),
            self.app.as_ref().map(|a| &a.token),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Truncates to at most `max` characters on a character boundary, marking the cut
/// with an ellipsis; never cuts inside an `&…;` entity (Slack mrkdwn escapes).
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(1);
    let mut cut: String = s.chars().take(keep).collect();
    if let Some(amp) = cut.rfind('&')
        && !cut[amp..].contains(';')
        && cut.len() - amp <= 5
    {
        cut.truncate(amp);
    }
    cut.push('…');
    cut
}

/// The last lines of `lines` that fit in `limit` characters (the newest matter most).
pub fn tail_within(lines: &[String], limit: usize) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut used = 0;
    for l in lines.iter().rev() {
        let n = l.chars().count() + 1;
        if used + n > limit {
            break;
        }
        used += n;
        kept.push(l);
    }
    kept.reverse();
    kept.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_on_char_boundary_and_not_inside_entities() {
        assert_eq!(truncate("héllo", 10), "héllo");
        assert_eq!(truncate("héllo wörld", 5), "héll…");
        assert_eq!(truncate("ab &amp; cd", 6), "ab …");
        assert_eq!(truncate("ab &amp; cd", 9), "ab &amp;…");
    }

    #[test]
    fn kinds_are_registered_once_by_name() {
        let names: Vec<_> = ChannelKind::all().map(|k| k.as_str()).collect();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(names.len(), unique.len(), "{names:?}");
        for n in &names {
            assert_eq!(ChannelKind::named(n).map(|k| k.as_str()), Some(*n));
            assert!(!ChannelKind::named(n).unwrap().default_template().is_empty());
        }
        assert!(ChannelKind::named("carrier-pigeon").is_none());
    }
}
