//! A local Amazon SQS standard queue in the real JSON 1.0 wire format
//! (`X-Amz-Target: AmazonSQS.<Operation>`): SendMessage, ReceiveMessage with long
//! polling and visibility timeouts, DeleteMessage(Batch), ChangeMessageVisibility,
//! GetQueueAttributes. The simulator serves it on `POST /` beside CloudWatch Logs, so
//! `AWS_ENDPOINT_URL_SQS` can point at the simulator; tests also drive it in-process.
//!
//! Like SQS, a message not deleted comes back after its visibility timeout, and only
//! the receipt handle of the latest receive deletes it.
use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What the queue answers instead of working.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqsFault {
    #[default]
    None,
    /// 400 AccessDenied on every call, as a queue policy or IAM role that refuses.
    Deny,
    /// 500 InternalError on every call.
    Fail,
    /// No answer at all to ReceiveMessage (a queue endpoint that accepts and hangs),
    /// until the fault is lifted.
    Hang,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SqsStats {
    pub sent: u64,
    /// ReceiveMessage calls answered (with or without messages).
    pub receives: u64,
    /// ReceiveMessage calls refused by a fault.
    pub refused: u64,
    /// Messages handed out (a message received twice counts twice).
    pub delivered: u64,
    pub deleted: u64,
    /// Messages waiting now (visible or in flight).
    pub waiting: u64,
    pub in_flight: u64,
}

struct Message {
    id: String,
    body: String,
    visible_at: Instant,
    /// The receipt of the latest receive: only it deletes the message.
    receipt: Option<String>,
    receive_count: u32,
}

#[derive(Default)]
struct Inner {
    /// Queue name → messages, oldest first.
    queues: BTreeMap<String, VecDeque<Message>>,
    fault: SqsFault,
    stats: SqsStats,
}

/// Handle on the fake queues (cheap to clone).
#[derive(Clone, Default)]
pub struct FakeSqs {
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
}

/// `…/<account>/<name>` → `name`; a bare name stays itself.
fn queue_name(url: &str) -> String {
    url.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(url)
        .to_string()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut r = (
        status,
        Json(json!({"__type": format!("com.amazonaws.sqs#{code}"), "message": message})),
    )
        .into_response();
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("{code};Sender")) {
        h.insert("x-amzn-query-error", v);
    }
    r
}

fn ok(v: Value) -> Response {
    let mut r = Json(v).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    r
}

impl FakeSqs {
    pub fn new() -> FakeSqs {
        FakeSqs::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a message on the queue (`url` or bare name); returns its id.
    pub fn send(&self, queue: &str, body: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        {
            let mut g = self.lock();
            g.stats.sent += 1;
            g.queues
                .entry(queue_name(queue))
                .or_default()
                .push_back(Message {
                    id: id.clone(),
                    body: body.to_string(),
                    visible_at: crate::clock::monotonic(),
                    receipt: None,
                    receive_count: 0,
                });
        }
        self.arrived.notify_waiters();
        id
    }

    pub fn set_fault(&self, f: SqsFault) {
        self.lock().fault = f;
    }

    pub fn stats(&self) -> SqsStats {
        let mut g = self.lock();
        let now = crate::clock::monotonic();
        let (mut waiting, mut in_flight) = (0, 0);
        for q in g.queues.values() {
            waiting += q.len() as u64;
            in_flight += q.iter().filter(|m| m.visible_at > now).count() as u64;
        }
        g.stats.waiting = waiting;
        g.stats.in_flight = in_flight;
        g.stats.clone()
    }

    /// Takes up to `max` visible messages, hiding each for `visibility`.
    fn take(&self, queue: &str, max: usize, visibility: Duration) -> Vec<Value> {
        let mut g = self.lock();
        let now = crate::clock::monotonic();
        let mut out = Vec::new();
        if let Some(q) = g.queues.get_mut(queue) {
            for m in q.iter_mut().filter(|m| m.visible_at <= now).take(max) {
                let receipt = format!("{}#{}", m.id, uuid::Uuid::new_v4().simple());
                m.receipt = Some(receipt.clone());
                m.visible_at = now + visibility;
                m.receive_count += 1;
                out.push(json!({
                    "MessageId": m.id,
                    "ReceiptHandle": receipt,
                    "Body": m.body,
                    "Attributes": {"ApproximateReceiveCount": m.receive_count.to_string()},
                }));
            }
        }
        g.stats.delivered += out.len() as u64;
        out
    }

    /// When the next in-flight message of `queue` becomes visible again.
    fn next_visible(&self, queue: &str) -> Option<Instant> {
        self.lock()
            .queues
            .get(queue)
            .and_then(|q| q.iter().map(|m| m.visible_at).min())
    }

    fn delete(&self, queue: &str, receipt: &str) -> bool {
        let mut g = self.lock();
        let Some(q) = g.queues.get_mut(queue) else {
            return false;
        };
        let before = q.len();
        q.retain(|m| m.receipt.as_deref() != Some(receipt));
        let gone = q.len() < before;
        if gone {
            g.stats.deleted += 1;
        }
        gone
    }

    fn change_visibility(&self, queue: &str, receipt: &str, after: Duration) -> bool {
        let mut g = self.lock();
        let now = crate::clock::monotonic();
        let found = g
            .queues
            .get_mut(queue)
            .and_then(|q| q.iter_mut().find(|m| m.receipt.as_deref() == Some(receipt)));
        match found {
            Some(m) => {
                m.visible_at = now + after;
                true
            }
            None => false,
        }
    }

    async fn receive(&self, req: &Value) -> Response {
        let queue = queue_name(req["QueueUrl"].as_str().unwrap_or(""));
        let max = req["MaxNumberOfMessages"]
            .as_u64()
            .unwrap_or(1)
            .clamp(1, 10) as usize;
        let wait = Duration::from_secs(req["WaitTimeSeconds"].as_u64().unwrap_or(0).min(20));
        let visibility = Duration::from_secs(req["VisibilityTimeout"].as_u64().unwrap_or(30));
        let deadline = crate::clock::monotonic() + wait;
        loop {
            let arrived = self.arrived.notified();
            let got = self.take(&queue, max, visibility);
            let now = crate::clock::monotonic();
            if !got.is_empty() || now >= deadline {
                self.lock().stats.receives += 1;
                return ok(json!({"Messages": got}));
            }
            // Woken by a new message, or when one in flight becomes visible again.
            let until = self
                .next_visible(&queue)
                .filter(|t| *t > now)
                .map_or(deadline, |t| t.min(deadline));
            let _ = tokio::time::timeout(until - now, arrived).await;
        }
    }

    /// Answers one JSON 1.0 call.
    pub async fn handle(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let op = target.strip_prefix("AmazonSQS.").unwrap_or("");
        let fault = self.lock().fault;
        if fault == SqsFault::Hang && op == "ReceiveMessage" {
            while self.lock().fault == SqsFault::Hang {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let refuse = match fault {
            SqsFault::None | SqsFault::Hang => None,
            SqsFault::Deny => Some(error(
                StatusCode::BAD_REQUEST,
                "AccessDenied",
                "Access to the resource https://sqs.us-west-2.amazonaws.com/ is denied.",
            )),
            SqsFault::Fail => Some(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            )),
        };
        if let Some(r) = refuse {
            if op == "ReceiveMessage" {
                self.lock().stats.refused += 1;
            }
            return r;
        }
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "body is not JSON",
            );
        };
        let queue = queue_name(req["QueueUrl"].as_str().unwrap_or(""));
        match op {
            "SendMessage" => {
                let id = self.send(&queue, req["MessageBody"].as_str().unwrap_or(""));
                ok(json!({"MessageId": id}))
            }
            "ReceiveMessage" => self.receive(&req).await,
            "DeleteMessage" => {
                self.delete(&queue, req["ReceiptHandle"].as_str().unwrap_or(""));
                ok(json!({}))
            }
            "DeleteMessageBatch" => {
                let mut done = Vec::new();
                for e in req["Entries"].as_array().into_iter().flatten() {
                    // A stale receipt is accepted and deletes nothing, as in SQS.
                    self.delete(&queue, e["ReceiptHandle"].as_str().unwrap_or(""));
                    done.push(json!({"Id": e["Id"]}));
                }
                ok(json!({"Successful": done, "Failed": []}))
            }
            "ChangeMessageVisibility" => {
                let secs = req["VisibilityTimeout"].as_u64().unwrap_or(0);
                if self.change_visibility(
                    &queue,
                    req["ReceiptHandle"].as_str().unwrap_or(""),
                    Duration::from_secs(secs),
                ) {
                    if secs == 0 {
                        self.arrived.notify_waiters();
                    }
                    ok(json!({}))
                } else {
                    error(
                        StatusCode::BAD_REQUEST,
                        "ReceiptHandleIsInvalid",
                        "The receipt handle is not valid for this queue.",
                    )
                }
            }
            "GetQueueAttributes" => {
                let s = self.stats();
                ok(json!({"Attributes": {
                    "ApproximateNumberOfMessages": (s.waiting - s.in_flight).to_string(),
                    "ApproximateNumberOfMessagesNotVisible": s.in_flight.to_string(),
                }}))
            }
            _ => error(
                StatusCode::BAD_REQUEST,
                "UnsupportedOperation",
                &format!("{target:?} is not supported by this fake"),
            ),
        }
    }
}

/// A Deadline Cloud event as EventBridge puts it on the queue.
pub fn envelope(detail_type: &str, detail: Value) -> String {
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": detail_type,
        "source": "aws.deadline",
        "account": "111122223333",
        "time": crate::clock::wall_now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": "us-west-2",
        "resources": [],
        "detail": detail,
    })
    .to_string()
}
