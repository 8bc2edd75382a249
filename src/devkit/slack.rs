//! A local Slack Web API for the demo and tests: `auth.test`, `chat.postMessage`,
//! `chat.update` and `users.lookupByEmail`, answering as Slack does (HTTP 200 with
//! `{"ok": false, "error": …}` for failures, 429 with `Retry-After` when asked), and
//! keeping the channel's messages so a test can read what a person would see.
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One message as the channel holds it.
#[derive(Debug, Clone, Serialize)]
pub struct SlackMessage {
    pub channel: String,
    pub ts: String,
    /// The root's `ts` for a thread reply.
    pub thread_ts: Option<String>,
    pub broadcast: bool,
    pub text: String,
    pub blocks: Value,
    /// Edits so far.
    pub edits: u32,
    pub deleted: bool,
}

impl SlackMessage {
    /// Everything a person could read in it: text and every block's text.
    pub fn all_text(&self) -> String {
        let mut out = self.text.clone();
        collect_text(&self.blocks, &mut out);
        out
    }
}

fn collect_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push('\n');
            out.push_str(s);
        }
        Value::Array(a) => a.iter().for_each(|x| collect_text(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_text(x, out)),
        _ => {}
    }
}

/// One call as it arrived.
#[derive(Debug, Clone, Serialize)]
pub struct SlackCall {
    pub method: String,
    pub body: Value,
    pub ok: bool,
    #[serde(skip)]
    pub at: Option<std::time::Instant>,
}

#[derive(Default)]
struct Inner {
    token: String,
    workspace: String,
    messages: Vec<SlackMessage>,
    calls: Vec<SlackCall>,
    /// Answers to use, per method, before the normal one: (HTTP status, body, Retry-After).
    scripts: HashMap<String, VecDeque<(u16, Value, Option<u64>)>>,
    /// email → member id.
    members: HashMap<String, String>,
    next_ts: u64,
}

/// The fake workspace. Cheap to clone; every clone is the same workspace.
#[derive(Clone)]
pub struct FakeSlack {
    inner: Arc<Mutex<Inner>>,
}

impl FakeSlack {
    /// A workspace that accepts `token`.
    pub fn new(token: &str) -> FakeSlack {
        FakeSlack {
            inner: Arc::new(Mutex::new(Inner {
                token: token.into(),
                workspace: "https://studio.slack.com/".into(),
                next_ts: 1_733_380_000_000_100,
                ..Default::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on only `token` is accepted (the old one answers `token_revoked`).
    pub fn set_token(&self, token: &str) {
        self.lock().token = token.into();
    }

    /// A member `users.lookupByEmail` finds.
    pub fn add_member(&self, email: &str, id: &str) {
        self.lock().members.insert(email.into(), id.into());
    }

    /// The next calls of `method` get these answers: (HTTP status, body, Retry-After seconds).
    pub fn script(
        &self,
        method: &str,
        answers: impl IntoIterator<Item = (u16, Value, Option<u64>)>,
    ) {
        self.lock()
            .scripts
            .entry(method.into())
            .or_default()
            .extend(answers);
    }

    /// A person deletes the message `ts`.
    pub fn delete(&self, ts: &str) {
        for m in self.lock().messages.iter_mut().filter(|m| m.ts == ts) {
            m.deleted = true;
        }
    }

    /// Every message posted so far (deleted ones marked).
    pub fn messages(&self) -> Vec<SlackMessage> {
        self.lock().messages.clone()
    }

    /// What the channel shows at the top level: roots, and broadcast replies.
    pub fn top_level(&self, channel: &str) -> Vec<SlackMessage> {
        self.messages()
            .into_iter()
            .filter(|m| m.channel == channel && !m.deleted && m.thread_ts.is_none())
            .collect()
    }

    /// The replies under `ts`, oldest first.
    pub fn thread(&self, ts: &str) -> Vec<SlackMessage> {
        self.messages()
            .into_iter()
            .filter(|m| m.thread_ts.as_deref() == Some(ts))
            .collect()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<SlackCall> {
        self.lock().calls.clone()
    }

    /// `/api/{method}` and `/_fake/messages`, to serve alone or beside the sink.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/_fake/messages", get(list))
            .route("/api/{method}", post(call))
            .with_state(self.clone())
    }

    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let app = self.router();
        let h = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((local, h))
    }
}

/// `GET /_fake/messages`: the workspace's messages (for out-of-process tests).
async fn list(State(s): State<FakeSlack>) -> Response {
    axum::Json(json!({"messages": s.messages(), "calls": s.calls()})).into_response()
}

fn ok_false(error: &str) -> Value {
    json!({"ok": false, "error": error})
}

async fn call(
    State(s): State<FakeSlack>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let args: Value = if form {
        Value::Object(
            url::form_urlencoded::parse(body.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )
    } else {
        serde_json::from_str(&body).unwrap_or(Value::Null)
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let mut g = s.lock();
    let (status, answer, retry_after) = match g.scripts.get_mut(&method).and_then(|q| q.pop_front())
    {
        Some(a) => a,
        None if bearer.is_empty() => (200, ok_false("not_authed"), None),
        None if bearer != g.token => (200, ok_false("token_revoked"), None),
        None => (200, answer(&mut g, &method, &args), None),
    };
    let ok = answer["ok"] == true;
    g.calls.push(SlackCall {
        method,
        body: args,
        ok,
        at: Some(crate::clock::monotonic()),
    });
    drop(g);
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        axum::Json(answer),
    )
        .into_response();
    if let Some(ra) = retry_after
        && let Ok(v) = ra.to_string().parse()
    {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

fn answer(g: &mut Inner, method: &str, a: &Value) -> Value {
    let str_of = |k: &str| a.get(k).and_then(Value::as_str).map(str::to_string);
    match method {
        "auth.test" => {
            json!({"ok": true, "url": g.workspace, "team": "Studio", "user": "deadline-bot"})
        }
        "users.lookupByEmail" => match str_of("email").and_then(|e| g.members.get(&e).cloned()) {
            Some(id) => json!({"ok": true, "user": {"id": id}}),
            None => ok_false("users_not_found"),
        },
        "chat.postMessage" => {
            let Some(channel) = str_of("channel") else {
                return ok_false("channel_not_found");
            };
            let text = str_of("text").unwrap_or_default();
            let blocks = a.get("blocks").cloned().unwrap_or(Value::Null);
            if text.is_empty() && blocks.is_null() {
                return ok_false("no_text");
            }
            // A reply to a message that is gone is posted at the top level.
            let thread_ts = str_of("thread_ts").filter(|t| {
                g.messages
                    .iter()
                    .any(|m| &m.ts == t && !m.deleted && m.channel == channel)
            });
            g.next_ts += 100;
            let ts = format!("{}.{:06}", g.next_ts / 1_000_000, g.next_ts % 1_000_000);
            let m = SlackMessage {
                channel: channel.clone(),
                ts: ts.clone(),
                thread_ts: thread_ts.clone(),
                broadcast: a.get("reply_broadcast") == Some(&Value::Bool(true)),
                text: text.clone(),
                blocks,
                edits: 0,
                deleted: false,
            };
            g.messages.push(m);
            let mut message = json!({"type": "message", "text": text, "ts": ts});
            if let Some(t) = thread_ts {
                message["thread_ts"] = json!(t);
            }
            json!({"ok": true, "channel": channel, "ts": ts, "message": message})
        }
        "chat.update" => {
            let (Some(channel), Some(ts)) = (str_of("channel"), str_of("ts")) else {
                return ok_false("invalid_arguments");
            };
            let Some(m) = g
                .messages
                .iter_mut()
                .find(|m| m.ts == ts && m.channel == channel && !m.deleted)
            else {
                return ok_false("message_not_found");
            };
            m.text = str_of("text").unwrap_or_default();
            m.blocks = a.get("blocks").cloned().unwrap_or(Value::Null);
            m.edits += 1;
            json!({"ok": true, "channel": channel, "ts": ts, "text": m.text})
        }
        _ => ok_false("unknown_method"),
    }
}
