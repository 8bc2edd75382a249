//! Delivery to a Slack app channel: the calls one message takes (root post or
//! edit, thread reply, direct message), the anchor kept before the next message
//! of the job may leave, and the per-channel pacing of posts and edits. What an
//! answer means is decided in `notify::slack_app`; this file carries it out.
//!
//! Steps already done are marked in the entry's payload (`done`), which a retry
//! saves with the entry: a retry after a failed reply does not edit or post twice.
use super::Worker;
use crate::app::live::Active;
use crate::domain::{Anchor, OutboxEntry};
use crate::notify::Channel;
use crate::notify::retry::Verdict;
use crate::notify::send::ApiBody;
use crate::notify::slack_app::{self, Mode, Outcome};
use crate::store::StoreError;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a found member id is kept, and how long a miss is.
const LOOKUP_HIT: Duration = Duration::from_secs(24 * 3600);
const LOOKUP_MISS: Duration = Duration::from_secs(3600);

/// What every Slack app channel shares: workspace URLs (from `auth.test`, once
/// per token) and e-mail → member id lookups (`users.lookupByEmail`).
#[derive(Default)]
pub struct Shared {
    workspaces: Mutex<HashMap<[u8; 32], String>>,
    members: Mutex<HashMap<MemberKey, Lookup>>,
    /// One lookup at a time: sends of several jobs in flight at once would
    /// otherwise all miss the cache together and ask Slack the same question.
    asking: tokio::sync::Mutex<()>,
}

/// (token digest, e-mail).
type MemberKey = ([u8; 32], String);
/// The member id found (or not), and when it was asked.
type Lookup = (Option<String>, Instant);

fn token_key(ch: &Channel) -> [u8; 32] {
    use sha2::Digest;
    let token = ch.app.as_ref().map_or("", |a| a.token.expose());
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// One message's calls on one channel.
struct Calls<'a> {
    w: &'a Worker,
    active: &'a Active,
    ch: &'a Channel,
    dest: String,
    /// The worker took a post slot for this attempt; the first post uses it.
    slot_taken: bool,
}

/// A step failed: what the whole attempt returns.
type Stop = Verdict;

impl Calls<'_> {
    /// Waits while a `Retry-After` blocks the channel, then calls `method`.
    async fn call(&self, method: &str, body: ApiBody<'_>) -> Result<Outcome, Stop> {
        loop {
            let wait = self
                .w
                .dests()
                .blocked_for(&self.dest, crate::clock::monotonic());
            if wait.is_zero() {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        let reply = self.active.sender.slack_call(self.ch, method, body).await?;
        let outcome =
            slack_app::classify_api(&reply.answer(), self.active.config.delivery.max_retry_after);
        if let Outcome::Throttled { wait, .. } = &outcome {
            // No call of any method to this channel until it has passed.
            self.w
                .dests()
                .block_until(&self.dest, crate::clock::monotonic() + *wait);
        }
        Ok(outcome)
    }

    /// A `chat.postMessage` to the channel, within its one-a-second pace; a
    /// message whose blocks are refused goes again as plain text.
    async fn post(&mut self, msg: &Value) -> Result<Outcome, Stop> {
        self.pace_post().await;
        let first = self.call("chat.postMessage", ApiBody::Json(msg)).await?;
        if let Outcome::TooLong(why) = &first {
            tracing::warn!(team = %self.w.team, channel = %self.w.channel, reason = %why, "Slack refused the blocks; sending the message as plain text");
            self.pace_post().await;
            return self
                .call("chat.postMessage", ApiBody::Json(&slack_app::plain(msg)))
                .await;
        }
        Ok(first)
    }

    /// A `chat.update` within the channel's edit budget.
    async fn edit(&mut self, msg: &Value) -> Result<Outcome, Stop> {
        for plain in [false, true] {
            loop {
                let wait = self
                    .w
                    .dests()
                    .edit_free_in(&self.dest, crate::clock::monotonic());
                if wait.is_zero() {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
            self.w
                .dests()
                .take_edit(&self.dest, crate::clock::monotonic());
            let body = if plain {
                slack_app::plain(msg)
            } else {
                msg.clone()
            };
            match self.call("chat.update", ApiBody::Json(&body)).await? {
                Outcome::TooLong(_) if !plain => continue,
                other => return Ok(other),
            }
        }
        Ok(Outcome::Refused("msg_too_long".into()))
    }

    async fn pace_post(&mut self) {
        if std::mem::take(&mut self.slot_taken) {
            return;
        }
        let interval = self.active.config.delivery.interval(self.ch.kind);
        loop {
            let now = crate::clock::monotonic();
            let wait = self.w.dests().free_in(&self.dest, now);
            if wait.is_zero() {
                self.w.dests().take(&self.dest, interval, now);
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// The workspace's URL, from `auth.test` once per token (for root links).
    async fn workspace(&self, shared: &Shared) -> Option<String> {
        let key = token_key(self.ch);
        if let Some(u) = shared.workspaces.lock().ok()?.get(&key) {
            return Some(u.clone());
        }
        let _one = shared.asking.lock().await;
        if let Some(u) = shared.workspaces.lock().ok()?.get(&key) {
            return Some(u.clone());
        }
        match self.call("auth.test", ApiBody::Json(&json!({}))).await {
            Ok(Outcome::Ok(v)) => {
                let url = v.get("url").and_then(Value::as_str)?.to_string();
                shared.workspaces.lock().ok()?.insert(key, url.clone());
                Some(url)
            }
            _ => None,
        }
    }

    /// The owner's member id: configured, or looked up by e-mail (cached).
    async fn member(&self, shared: &Shared, dm: &Value) -> Result<Option<String>, Stop> {
        if let Some(id) = dm.get("slack").and_then(Value::as_str) {
            return Ok(Some(id.to_string()));
        }
        let Some(email) = dm.get("email").and_then(Value::as_str) else {
            return Ok(None);
        };
        let key = (token_key(self.ch), email.to_string());
        let cached = |now: Instant| {
            let (id, at) = shared.members.lock().ok()?.get(&key).cloned()?;
            let ttl = if id.is_some() {
                LOOKUP_HIT
            } else {
                LOOKUP_MISS
            };
            (now.saturating_duration_since(at) < ttl).then_some(id)
        };
        if let Some(id) = cached(crate::clock::monotonic()) {
            return Ok(id);
        }
        let _one = shared.asking.lock().await;
        let now = crate::clock::monotonic();
        if let Some(id) = cached(now) {
            return Ok(id);
        }
        let found = match self
            .call("users.lookupByEmail", ApiBody::Form(&[("email", email)]))
            .await?
        {
            Outcome::Ok(v) => v
                .pointer("/user/id")
                .and_then(Value::as_str)
                .filter(|id| crate::domain::people::valid_slack_id(id))
                .map(str::to_string),
            Outcome::Retry(r) => return Err(Verdict::Retry { reason: r }),
            Outcome::Throttled { wait, reason } => {
                return Err(Verdict::Throttled { wait, reason });
            }
            other => {
                tracing::warn!(team = %self.w.team, channel = %self.w.channel, answer = ?other, "no Slack member found for the owner's e-mail; no direct message");
                None
            }
        };
        if let Ok(mut m) = shared.members.lock() {
            m.insert(key, (found.clone(), now));
        }
        Ok(found)
    }
}

/// What a failed step means for the whole message.
fn stop(o: Outcome) -> Stop {
    match o {
        Outcome::Ok(_) => Verdict::Delivered,
        Outcome::Disable(reason) => Verdict::Disable { reason },
        Outcome::Throttled { wait, reason } => Verdict::Throttled { wait, reason },
        Outcome::Retry(reason) => Verdict::Retry { reason },
        // A message that vanished under an edit is handled by posting a new root;
        // anywhere else it is a transient surprise.
        Outcome::Gone(reason) => Verdict::Retry { reason },
        Outcome::TooLong(reason) | Outcome::Refused(reason) => Verdict::DeadLetter {
            reason: format!("Slack refused the message: {reason}"),
        },
    }
}

fn done(e: &OutboxEntry, step: &str) -> bool {
    e.payload["done"]
        .as_array()
        .is_some_and(|d| d.iter().any(|s| s == step))
}

fn mark(e: &mut OutboxEntry, step: &str) {
    if let Some(o) = e.payload.as_object_mut() {
        let d = o.entry("done").or_insert_with(|| json!([]));
        if let Some(a) = d.as_array_mut() {
            a.push(json!(step));
        }
    }
}

/// `msg` addressed to `channel` (and a thread).
fn to(msg: &Value, channel: &str, extra: Value) -> Value {
    let mut m = msg.clone();
    if let Some(o) = m.as_object_mut() {
        o.insert("channel".into(), json!(channel));
        if let Value::Object(x) = extra {
            o.extend(x);
        }
    }
    m
}

impl Worker {
    /// Delivers one message to a Slack app channel. `newer_waiting`: a later
    /// message of the same job is queued, so the root is edited by that one.
    pub(super) async fn deliver_app(
        &self,
        active: &Active,
        ch: &Channel,
        e: &mut OutboxEntry,
        newer_waiting: bool,
    ) -> Result<Verdict, StoreError> {
        let Some(app) = ch.app.clone() else {
            return Ok(Verdict::DeadLetter {
                reason: "not a slack_app channel".into(),
            });
        };
        let mut calls = Calls {
            w: self,
            active,
            ch,
            dest: ch.destination().into_owned(),
            slot_taken: true,
        };
        let shared = self.slack.clone();
        let result = match app.mode {
            // A notice (no job) is one message of its own, never a living one.
            _ if !e.event.is_job_event() => self.notice(&mut calls, e).await,
            Mode::Living => self.living(&mut calls, &shared, e, newer_waiting).await,
            Mode::Post => self.post_mode(&mut calls, &shared, e).await,
        };
        match result {
            Ok(()) => {}
            Err(Ok(stop)) => return Ok(stop),
            Err(Err(store)) => return Err(store),
        }
        if let Err(stop) = self.direct(&mut calls, &shared, e).await {
            return Ok(stop);
        }
        Ok(Verdict::Delivered)
    }

    /// Root (first event), or edit + reply (later ones).
    async fn living(
        &self,
        calls: &mut Calls<'_>,
        shared: &Shared,
        e: &mut OutboxEntry,
        newer_waiting: bool,
    ) -> Result<(), Result<Stop, StoreError>> {
        let (t, c, job) = (self.team.clone(), self.channel.clone(), e.job.clone());
        let found = self
            .store
            .run(move |s| s.anchor(&t, &c, &job))
            .await
            .map_err(Err)?;
        let root = e.payload["root"].clone();
        let reply = e.payload["reply"].clone();
        let broadcast = e.payload["broadcast"].as_bool().unwrap_or(false);
        let Some(anchor) = found else {
            if !done(e, "root") {
                self.new_root(calls, shared, e, &root).await?;
            }
            // The root says what happened; a failure's details go in the thread.
            if broadcast && !done(e, "reply") {
                self.reply(calls, shared, e, &reply, &root, true).await?;
            }
            return Ok(());
        };
        if !newer_waiting && !done(e, "edit") && !done(e, "root") {
            let body = to(&root, &anchor.channel_id, json!({"ts": anchor.ts}));
            match calls.edit(&body).await.map_err(Ok)? {
                Outcome::Ok(_) => mark(e, "edit"),
                Outcome::Gone(why) => {
                    tracing::info!(job = %e.job, team = %self.team, channel = %self.channel, reason = %why, "the living message is gone; posting a new one");
                    self.new_root(calls, shared, e, &root).await?;
                }
                other => return Err(Ok(stop(other))),
            }
        }
        if !done(e, "reply") {
            self.reply(calls, shared, e, &reply, &root, broadcast)
                .await?;
        }
        Ok(())
    }

    /// Posts `root` as the job's new living message and keeps its anchor durably.
    async fn new_root(
        &self,
        calls: &mut Calls<'_>,
        shared: &Shared,
        e: &mut OutboxEntry,
        root: &Value,
    ) -> Result<(), Result<Stop, StoreError>> {
        let channel_id = calls.ch.app.as_ref().map_or("", |a| &a.channel).to_string();
        // Asked before the post, so nothing but the store's commit stands between
        // Slack's answer and a durable anchor.
        let workspace = calls.workspace(shared).await;
        let v = match calls
            .post(&to(root, &channel_id, json!({})))
            .await
            .map_err(Ok)?
        {
            Outcome::Ok(v) => v,
            other => return Err(Ok(stop(other))),
        };
        let answered = crate::clock::monotonic();
        self.keep_anchor(e, &v, &channel_id, workspace.as_deref())
            .await?;
        tracing::info!(job = %e.job, team = %self.team, channel = %self.channel, anchor_us = answered.elapsed().as_micros() as u64, "living message posted; anchor kept");
        mark(e, "root");
        Ok(())
    }

    /// Keeps where a posted message is: durable before anything else of the job
    /// leaves on this channel.
    async fn keep_anchor(
        &self,
        e: &OutboxEntry,
        answer: &Value,
        channel_id: &str,
        workspace: Option<&str>,
    ) -> Result<Anchor, Result<Stop, StoreError>> {
        let ts = answer.get("ts").and_then(Value::as_str).unwrap_or_default();
        let channel_id = answer
            .get("channel")
            .and_then(Value::as_str)
            .filter(|c| slack_app::valid_channel_id(c))
            .unwrap_or(channel_id)
            .to_string();
        let permalink = workspace.and_then(|ws| slack_app::permalink(ws, &channel_id, ts));
        let anchor = Anchor {
            channel_id,
            ts: ts.to_string(),
            permalink,
            posted_at: self.clock.now(),
        };
        let (t, c, job, a) = (
            self.team.clone(),
            self.channel.clone(),
            e.job.clone(),
            anchor.clone(),
        );
        self.store
            .run(move |s| s.set_anchor(&t, &c, &job, &a))
            .await
            .map_err(Err)?;
        Ok(anchor)
    }

    /// The event's own message in the root's thread. If Slack posted it at the
    /// top level (the root was deleted), a new root is posted and kept.
    async fn reply(
        &self,
        calls: &mut Calls<'_>,
        shared: &Shared,
        e: &mut OutboxEntry,
        reply: &Value,
        root: &Value,
        broadcast: bool,
    ) -> Result<(), Result<Stop, StoreError>> {
        let (t, c, job) = (self.team.clone(), self.channel.clone(), e.job.clone());
        let anchor = self
            .store
            .run(move |s| s.anchor(&t, &c, &job))
            .await
            .map_err(Err)?;
        let Some(anchor) = anchor else {
            return Err(Ok(Verdict::Retry {
                reason: "no living message to reply under".into(),
            }));
        };
        let body = to(
            reply,
            &anchor.channel_id,
            json!({"thread_ts": anchor.ts, "reply_broadcast": broadcast}),
        );
        let v = match calls.post(&body).await.map_err(Ok)? {
            Outcome::Ok(v) => v,
            // A root posted by this very attempt that is already gone again: not a
            // loop of new roots, a retry later.
            Outcome::Gone(why) if done(e, "root") => {
                return Err(Ok(Verdict::Retry { reason: why }));
            }
            Outcome::Gone(why) => {
                tracing::info!(job = %e.job, team = %self.team, channel = %self.channel, reason = %why, "the living message is gone; posting a new one");
                self.new_root(calls, shared, e, root).await?;
                return Box::pin(self.reply(calls, shared, e, reply, root, broadcast)).await;
            }
            other => return Err(Ok(stop(other))),
        };
        mark(e, "reply");
        let threaded = v
            .pointer("/message/thread_ts")
            .or_else(|| v.get("thread_ts"))
            .is_some();
        if !threaded {
            // Slack posts a reply to a deleted message at the top level: the reply
            // is seen; the story continues under a new root from here.
            tracing::info!(job = %e.job, team = %self.team, channel = %self.channel, "the living message was deleted; posting a new one");
            self.new_root(calls, shared, e, root).await?;
        }
        Ok(())
    }

    /// `mode = "post"`: one message per event, its `ts` kept.
    async fn post_mode(
        &self,
        calls: &mut Calls<'_>,
        shared: &Shared,
        e: &mut OutboxEntry,
    ) -> Result<(), Result<Stop, StoreError>> {
        if done(e, "post") {
            return Ok(());
        }
        let channel_id = calls.ch.app.as_ref().map_or("", |a| &a.channel).to_string();
        let reply = e.payload["reply"].clone();
        let workspace = calls.workspace(shared).await;
        match calls
            .post(&to(&reply, &channel_id, json!({})))
            .await
            .map_err(Ok)?
        {
            Outcome::Ok(v) => {
                self.keep_anchor(e, &v, &channel_id, workspace.as_deref())
                    .await?;
                mark(e, "post");
                Ok(())
            }
            other => Err(Ok(stop(other))),
        }
    }

    /// A notice's `{"post": message}`, posted as is: no anchor, no thread.
    async fn notice(
        &self,
        calls: &mut Calls<'_>,
        e: &mut OutboxEntry,
    ) -> Result<(), Result<Stop, StoreError>> {
        if done(e, "post") {
            return Ok(());
        }
        let channel_id = calls.ch.app.as_ref().map_or("", |a| &a.channel).to_string();
        let body = to(&e.payload["post"], &channel_id, json!({}));
        match calls.post(&body).await.map_err(Ok)? {
            Outcome::Ok(_) => {
                mark(e, "post");
                Ok(())
            }
            other => Err(Ok(stop(other))),
        }
    }

    /// The owner's direct message (`dm_owner`). It never disables the channel:
    /// a failure other than a transient one is logged and the DM skipped.
    async fn direct(
        &self,
        calls: &mut Calls<'_>,
        shared: &Shared,
        e: &mut OutboxEntry,
    ) -> Result<(), Stop> {
        let dm = e.payload["dm"].clone();
        if dm.is_null() || done(e, "dm") {
            return Ok(());
        }
        let Some(member) = calls.member(shared, &dm).await? else {
            mark(e, "dm");
            return Ok(());
        };
        let body = to(&e.payload["reply"], &member, json!({}));
        // A DM is its own conversation: the channel's post pace does not apply.
        match calls.call("chat.postMessage", ApiBody::Json(&body)).await? {
            Outcome::Ok(_) => {}
            Outcome::Retry(reason) => return Err(Verdict::Retry { reason }),
            Outcome::Throttled { wait, reason } => return Err(Verdict::Throttled { wait, reason }),
            other => {
                tracing::warn!(job = %e.job, team = %self.team, channel = %self.channel, answer = ?other, "the owner's direct message was refused; skipped");
            }
        }
        mark(e, "dm");
        Ok(())
    }
}
