//! Access and secrets: no cross-team reach, no panic on any input, no leaked secret.
use crate::helpers::*;
use deadline_notifier::config::Config;
use deadline_notifier::devkit::sink::Answer;
use deadline_notifier::http::api::{self, AppState};
use deadline_notifier::store::Store;
use deadline_notifier::store::Wakers;
use serde_json::{Value, json};
use std::time::Duration;

async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_has_no_cross_team_reach() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let api = env.api();
    let job = env.add_job("shared job");
    let body = json!({"farmId": job.farm_id, "queueId": job.queue_id, "jobId": job.job_id});
    // Each team: a subscription, a dead letter (400 from its webhook), its channels.
    env.sink.script(
        "/webhook/lighting",
        [Answer {
            status: 400,
            retry_after: None,
            body: "bad".into(),
        }],
    );
    env.sink.script(
        "/webhook/fx",
        [Answer {
            status: 400,
            retry_after: None,
            body: "bad".into(),
        }],
    );
    let mut sub_body = body.clone();
    sub_body["channels"] = json!(["pipeline"]);
    let (_, l_sub) = call(
        "POST",
        &format!("{api}/v1/subscriptions"),
        Some(LIGHTING),
        Some(sub_body),
    )
    .await;
    let (_, f_sub) = call(
        "POST",
        &format!("{api}/v1/subscriptions"),
        Some(FX),
        Some(body.clone()),
    )
    .await;
    env.observed(&job, 2).await;
    env.sim.set_status(&job, "FAILED");
    wait_until(Duration::from_secs(30), "a dead letter per team", || {
        let got = env.sink.received();
        got.iter().any(|r| r.path == "/webhook/lighting")
            && got.iter().any(|r| r.path == "/webhook/fx")
    })
    .await;
    let dls = wait_for(
        Duration::from_secs(30),
        "one dead letter per team",
        || async {
            let mine = call(
                "GET",
                &format!("{api}/v1/dead-letters"),
                Some(LIGHTING),
                None,
            )
            .await
            .1;
            let theirs = call("GET", &format!("{api}/v1/dead-letters"), Some(FX), None)
                .await
                .1;
            let one = |v: &Value| v["deadLetters"].as_array().is_some_and(|a| a.len() == 1);
            if one(&mine) && one(&theirs) {
                Ok((mine, theirs))
            } else {
                Err((mine, theirs))
            }
        },
    )
    .await;
    struct Owned {
        token: &'static str,
        sub: String,
        dead: String,
        channel: &'static str,
    }
    let teams = [
        Owned {
            token: LIGHTING,
            sub: l_sub["id"].as_str().unwrap().into(),
            dead: dls.0["deadLetters"][0]["id"].to_string(),
            channel: "pipeline",
        },
        Owned {
            token: FX,
            sub: f_sub["id"].as_str().unwrap().into(),
            dead: dls.1["deadLetters"][0]["id"].to_string(),
            channel: "hook",
        },
    ];
    let mut cross = 0;
    let mut checked = 0;
    for (i, owner) in teams.iter().enumerate() {
        let other = &teams[1 - i];
        let targeted = [
            ("GET", format!("{api}/v1/subscriptions/{}", owner.sub)),
            ("DELETE", format!("{api}/v1/subscriptions/{}", owner.sub)),
            (
                "POST",
                format!("{api}/v1/dead-letters/{}/replay", owner.dead),
            ),
            (
                "POST",
                format!("{api}/v1/channels/{}/enable", owner.channel),
            ),
        ];
        for (m, url) in &targeted {
            // No token: 401. The other team: 404, as if it did not exist.
            let (s, v) = call(m, url, None, None).await;
            assert_eq!(s, 401, "{m} {url} without token");
            assert!(v["error"].is_string());
            let (s, _) = call(m, url, Some(other.token), None).await;
            if s != 404 {
                cross += 1;
            }
            checked += 2;
        }
        // Collections show only the caller's own items.
        for path in ["subscriptions", "dead-letters", "channels"] {
            assert_eq!(
                call("GET", &format!("{api}/v1/{path}"), None, None).await.0,
                401
            );
            let (s, v) = call("GET", &format!("{api}/v1/{path}"), Some(other.token), None).await;
            assert_eq!(s, 200);
            let text = v.to_string();
            if text.contains(&owner.sub)
                || (path == "dead-letters" && text.contains(&format!("\"id\":{}", owner.dead)))
            {
                cross += 1;
            }
            checked += 2;
        }
        assert_eq!(
            call(
                "POST",
                &format!("{api}/v1/subscriptions"),
                None,
                Some(body.clone())
            )
            .await
            .0,
            401
        );
        // The owner still has everything, then may act on it.
        assert_eq!(
            call("GET", &targeted[0].1, Some(owner.token), None).await.0,
            200,
            "not deleted by the other team"
        );
        assert_eq!(
            call("POST", &targeted[2].1, Some(owner.token), None)
                .await
                .0,
            202
        );
        assert_eq!(
            call("POST", &targeted[3].1, Some(owner.token), None)
                .await
                .0,
            204
        );
        assert_eq!(
            call("DELETE", &targeted[1].1, Some(owner.token), None)
                .await
                .0,
            204
        );
    }
    println!(
        "authorization matrix: {checked} foreign/anonymous checks, {cross} cross-team reads, writes or deletes"
    );
    assert_eq!(cross, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_token_rate_limit_answers_429() {
    let env = Env::new().await;
    let cfg = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replace("rate_limit = 0", "rate_limit = 5");
    std::fs::write(env.config_path(), cfg).unwrap();
    let mut env = env;
    let _svc = env.start().await;
    let url = format!("{}/v1/subscriptions", env.api());
    let mut limited = None;
    for _ in 0..30 {
        let r = reqwest::Client::new()
            .get(&url)
            .bearer_auth(LIGHTING)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some((
                r.headers().get("retry-after").cloned(),
                r.json::<Value>().await.unwrap(),
            ));
            break;
        }
    }
    let (retry_after, body) = limited.expect("a burst over the limit is refused");
    assert!(retry_after.is_some());
    assert!(body["error"].as_str().unwrap().contains("too many"));
    // Another team's token has its own budget.
    assert_eq!(call("GET", &url, Some(FX), None).await.0, 200);
}

fn app_state(dir: &std::path::Path) -> AppState {
    let text = format!(
        r#"
[store]
path = "{}"
[delivery]
allow_private_targets = true
[[teams]]
name = "lighting"
tokens = ["{LIGHTING}"]
[[teams.channels]]
name = "pipeline"
kind = "webhook"
url = "http://127.0.0.1:9/x"
[[teams]]
name = "fx"
tokens = [{{ sha256 = "{}" }}]
[[teams.channels]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/y"
"#,
        dir.join("s.sled").display(),
        // sha256sum of the FX token: hashed tokens authenticate like plain ones.
        deadline_notifier::config::TokenDigest::of(FX)
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let cfg = Config::from_toml(&text, std::path::Path::new("fuzz.toml")).unwrap();
    let store = Store::open(&cfg.store.path).unwrap();
    let wakers = Wakers::default();
    let renderer = deadline_notifier::render::Renderer::load(&cfg, None).unwrap();
    let sender = deadline_notifier::notify::send::Sender::new(&cfg.delivery).unwrap();
    AppState::new(
        store,
        deadline_notifier::app::live::Live::new(cfg, renderer, sender, None, None),
        deadline_notifier::clock::system(),
        wakers,
        deadline_notifier::watch::WatchHandle::detached(),
    )
}

#[tokio::test]
async fn router_fuzz_never_panics_and_always_answers_json_errors() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let state = app_state(dir.path());
    let router = api::router(state);
    let f = format!("farm-{}", "a".repeat(32));
    let q = format!("queue-{}", "b".repeat(32));
    let j = format!("job-{}", "c".repeat(32));
    let methods = [
        "GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "FOO",
    ];
    let segments = [
        "v1",
        "subscriptions",
        "dead-letters",
        "channels",
        "enable",
        "replay",
        "healthz",
        "1",
        "18446744073709551616",
        "-1",
        "%00",
        "%ff",
        "..",
        "%2e%2e",
        "ü",
        "%F0%9F%92%A9",
        "sub-x",
        "hook",
        "pipeline",
        "",
        "a%2Fb",
    ];
    let tokens: [Option<&str>; 5] = [None, Some(LIGHTING), Some(FX), Some("x"), Some("Bearer")];
    let bodies: Vec<Vec<u8>> = vec![
        vec![],
        b"{".to_vec(),
        b"null".to_vec(),
        b"[1,2,3]".to_vec(),
        json!({"farmId": f, "queueId": q, "jobId": j}).to_string().into_bytes(),
        json!({"farmId": f, "queueId": q, "jobId": j, "channels": [1, null, {}], "events": "job.failed"}).to_string().into_bytes(),
        json!({"farmId": "farm-".repeat(1000), "queueId": [], "jobId": {"a": 1}}).to_string().into_bytes(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        vec![b'a'; 70 * 1024],
    ];
    let mut n = 0;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for _ in 0..3000u64 {
        let mut r = |_k: u64| rng.random::<u32>() as usize;
        let depth = 1 + r(1) % 4;
        let path: String = (0..depth)
            .map(|d| format!("/{}", segments[r(10 + d as u64) % segments.len()]))
            .collect();
        let mut b = Request::builder()
            .method(methods[r(2) % methods.len()])
            .uri(&path);
        if let Some(t) = tokens[r(3) % tokens.len()] {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        if r(4) % 3 == 0 {
            b = b.header("content-type", "application/json");
        }
        if r(5) % 7 == 0 {
            b = b.header("authorization", &[0xc3u8, 0x28][..]);
        }
        let Ok(req) = b.body(Body::from(bodies[r(6) % bodies.len()].clone())) else {
            continue;
        };
        let head = req.method() == "HEAD";
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(status.as_u16() < 500, "{path}: {status}");
        if status.is_client_error() && !head {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "{path}: non-JSON error {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert!(v["error"].is_string(), "{path}: {v}");
            assert!(!String::from_utf8_lossy(&bytes).contains("panicked"));
        }
        n += 1;
    }
    println!("router fuzz: {n} random requests, no panic, every error JSON");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let job = env.add_job("redirected");
    env.subscribe_job(&job, json!({"channels": ["pipeline"]}))
        .await;
    env.observed(&job, 2).await;
    env.sink.script(
        "/webhook/lighting",
        [Answer {
            status: 302,
            retry_after: None,
            body: String::new(),
        }],
    );
    env.sim.set_status(&job, "FAILED");
    let url = format!("{}/v1/dead-letters", env.api());
    let reason = wait_for(
        Duration::from_secs(20),
        "a dead letter with its reason",
        || async {
            let v = call("GET", &url, Some(LIGHTING), None).await.1;
            match v["deadLetters"][0]["reason"].as_str() {
                Some(r) => Ok(r.to_string()),
                None => Err(v),
            }
        },
    )
    .await;
    assert!(
        reason.contains("302") && reason.contains("redirects are not followed"),
        "{reason}"
    );
    assert_eq!(
        env.sink.received().len(),
        1,
        "the redirect target was never requested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_errors_or_api_responses() {
    let env = Env::new().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secrets = [
        "SEKRETslackPATH",
        "SEKRETteamsSIG",
        "SEKRETunreachable",
        "C2FVsBQIhrscChlQIMV",
        LIGHTING,
        FX,
    ];
    let cfg = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replace("/slack/lighting\"", "/slack/lighting/SEKRETslackPATH\"")
        .replace("/teams/lighting\"", "/teams/lighting?sig=SEKRETteamsSIG\"");
    // fx posts to a closed port, with the secret in the path.
    let cfg = regex_replace_fx(
        &cfg,
        &format!("http://127.0.0.1:{closed}/SEKRETunreachable"),
    );
    std::fs::write(env.config_path(), cfg).unwrap();
    let mut env = env;
    let svc = env.start().await;
    let job = env.add_job("leaky?");
    env.subscribe_job(&job, json!({})).await;
    let body = json!({"farmId": job.farm_id, "queueId": job.queue_id, "jobId": job.job_id});
    assert_eq!(env.subscribe(FX, body).await.0, 201);
    env.observed(&job, 2).await;
    // Slack: 500s; Teams: 404 (disables the channel); webhook: 400; fx: connection refused.
    env.sink.script(
        "/slack/lighting/SEKRETslackPATH",
        (0..3).map(|_| Answer {
            status: 500,
            retry_after: None,
            body: "rollup_error".into(),
        }),
    );
    env.sink.script(
        "/teams/lighting",
        [Answer {
            status: 404,
            retry_after: None,
            body: "not found".into(),
        }],
    );
    env.sink.script(
        "/webhook/lighting",
        [Answer {
            status: 400,
            retry_after: None,
            body: "invalid_payload".into(),
        }],
    );
    env.sim.set_status(&job, "FAILED");
    wait_until(Duration::from_secs(30), "failures to be logged", || {
        let log = svc.log_text();
        log.contains("channel disabled")
            && log.contains("dead-lettered")
            // Slack's repeated 500s and fx's refused connections: identical
            // warnings collapse, so one line each.
            && log.matches("will retry").count() >= 2
    })
    .await;
    let mut seen = svc.log_text();
    for path in ["subscriptions", "dead-letters", "channels"] {
        seen.push_str(
            &call(
                "GET",
                &format!("{}/v1/{path}", env.api()),
                Some(LIGHTING),
                None,
            )
            .await
            .1
            .to_string(),
        );
        seen.push_str(
            &call("GET", &format!("{}/v1/{path}", env.api()), Some(FX), None)
                .await
                .1
                .to_string(),
        );
    }
    let out = env.launcher().command(&["check-config"]).output().unwrap();
    seen.push_str(&String::from_utf8_lossy(&out.stdout));
    seen.push_str(&String::from_utf8_lossy(&out.stderr));
    let leaks: Vec<_> = secrets.iter().filter(|s| seen.contains(*s)).collect();
    println!(
        "secret scan: {} bytes of logs, API responses and check-config output; {} secret occurrences",
        seen.len(),
        leaks.len()
    );
    assert!(leaks.is_empty(), "leaked: {leaks:?}");
    assert!(
        seen.contains("transport error"),
        "the connection failure was logged (without its URL)"
    );
}

/// Points the fx team's webhook at `url`.
fn regex_replace_fx(cfg: &str, url: &str) -> String {
    let mut out = Vec::new();
    let mut in_fx = false;
    for line in cfg.lines() {
        if line.starts_with("name = \"fx\"") {
            in_fx = true;
        }
        if in_fx && line.starts_with("url = ") {
            out.push(format!("url = \"{url}\""));
            continue;
        }
        out.push(line.to_string());
    }
    out.join("\n")
}

/// Thousands of idle and slow connections under a 4,096 fd limit
/// neither starve deliveries nor keep a new client waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_slow_connections_cannot_starve_the_service() {
    use tokio::io::AsyncWriteExt;
    // This process holds the client side of every connection.
    let hard = {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain libc calls on a struct we own.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        lim.rlim_max as usize
    };
    let mut env = Env::new().await;
    let launcher = env.launcher();
    env.runs += 1;
    let svc = launcher.start_with(env.runs, Some(4096)).await;
    let job = env.add_job("under siege");
    env.subscribe_job(&job, json!({"channels": ["pipeline"]}))
        .await;
    env.observed(&job, 2).await;

    let addr = format!("127.0.0.1:{}", env.api_port);
    let (idle_n, drip_n, stall_n) = (3500.min(hard / 2), 300, 100);
    let mut held = Vec::new();
    for _ in 0..idle_n {
        if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
            held.push(s);
        }
    }
    // Half a header, one byte every 200 ms; and a body that stalls after one byte.
    let mut drips = Vec::new();
    for i in 0..drip_n + stall_n {
        let addr = addr.clone();
        drips.push(tokio::spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                return;
            };
            if i < drip_n {
                for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                    if s.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            } else {
                let _ = s
                    .write_all(b"POST /v1/subscriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }));
    }
    // While all that is open: a transition is delivered, and a new client is served.
    env.sim.set_status(&job, "SUCCEEDED");
    wait_until(Duration::from_secs(60), "the delivery", || {
        env.delivered_for(&job).len() == 1
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = deadline_notifier::clock::monotonic();
        let r = client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .expect("/healthz answers while the port is flooded");
        assert_eq!(r.status(), 200);
        worst = worst.max(t.elapsed());
    }
    // How many of the idle connections the service still holds open.
    let mut open = 0;
    for s in &held {
        let mut buf = [0u8; 1];
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
            _ => {}
        }
    }
    let log = svc.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("tcp open error"), "{log}");
    println!(
        "{} idle + {drip_n} dripping + {stall_n} stalled connections under a 4,096 fd limit: delivery made, /healthz worst {worst:?}, {open} idle connections still held",
        held.len()
    );
    for d in drips {
        d.abort();
    }
}

/// Over-long request lines and header blocks get JSON errors at the
/// service's own limits; `/metrics` can live on its own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_limits_answer_json_and_metrics_can_move() {
    let mut env = Env::new().await;
    let metrics_port = env.metrics_socket();
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replacen(
            "[server]\n",
            &format!("[server]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
            1,
        );
    std::fs::write(env.config_path(), text).unwrap();
    let _svc = env.start().await;
    let client = reqwest::Client::new();
    let long = format!("{}/healthz?{}", env.api(), "a".repeat(9 * 1024));
    let r = client.get(&long).send().await.unwrap();
    assert_eq!(r.status(), 414);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("request line"), "{v}");
    let r = client
        .get(format!("{}/healthz", env.api()))
        .header("x-big", "b".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("headers"), "{v}");
    // /metrics moved: 404 (JSON) on the API port, served on its own.
    let r = client
        .get(format!("{}/metrics", env.api()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("deadline_notifier_"));
}

/// The headers every answer carries, whichever listener, route or limit made it.
fn assert_secure(status: u16, h: &reqwest::header::HeaderMap) {
    for (name, want) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(
            h.get(name).and_then(|v| v.to_str().ok()),
            Some(want),
            "{status}: {name} in {h:?}"
        );
    }
    assert!(h.contains_key("content-security-policy"), "{status}: {h:?}");
    if h.get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    {
        assert_eq!(h["cache-control"], "no-store", "{status}: {h:?}");
    }
}

/// Sends raw bytes and returns the status, the header block and the body.
async fn raw(port: u16, request: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Every status the server answers (400 malformed, 404, 405, 413, 414, 429, 431,
/// 505, and the metrics listener's) carries the security headers and a JSON body;
/// a token in the query is refused on any path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers() {
    let mut env = Env::new().await;
    let metrics_port = env.metrics_socket();
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replacen(
            "[server]\n",
            &format!("[server]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
            1,
        );
    std::fs::write(env.config_path(), text).unwrap();
    let svc = env.start().await;
    // A fresh connection per request: the server closes one after refusing an
    // oversized body, and a pooled reuse of it would fail on the client side.
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let api = env.api();
    let mut seen = Vec::new();
    let mut check = |r: &reqwest::Response, want: u16| {
        assert_eq!(r.status().as_u16(), want);
        assert_secure(want, r.headers());
        seen.push(want);
    };
    check(&c.get(format!("{api}/healthz")).send().await.unwrap(), 200);
    check(&c.get(format!("{api}/nope")).send().await.unwrap(), 404);
    check(
        &c.delete(format!("{api}/healthz")).send().await.unwrap(),
        405,
    );
    check(
        &c.get(format!("{api}/v1/subscriptions"))
            .send()
            .await
            .unwrap(),
        401,
    );
    let r = c
        .post(format!("{api}/v1/subscriptions"))
        .bearer_auth(LIGHTING)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    check(&r, 413);
    let r = c
        .get(format!("{api}/healthz?{}", "a".repeat(9 * 1024)))
        .send()
        .await
        .unwrap();
    check(&r, 414);
    let r = c
        .get(format!("{api}/healthz"))
        .header("x-big", "b".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    check(&r, 431);
    let test = format!("{api}/v1/channels/pipeline/test");
    check(
        &c.post(&test).bearer_auth(LIGHTING).send().await.unwrap(),
        202,
    );
    check(
        &c.post(&test).bearer_auth(LIGHTING).send().await.unwrap(),
        429,
    );
    // A token in the URL, on any path, with or without a valid one in the header.
    for path in ["/", "/healthz", "/v1/subscriptions?state=active&token=x"] {
        let url = if path.contains('?') {
            format!("{api}{path}")
        } else {
            format!("{api}{path}?token={LIGHTING}")
        };
        let r = c.get(&url).bearer_auth(LIGHTING).send().await.unwrap();
        check(&r, 400);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("Authorization"),
            "{v}"
        );
    }
    // The metrics listener: its answers and its 404.
    let m = format!("http://127.0.0.1:{metrics_port}");
    check(&c.get(format!("{m}/metrics")).send().await.unwrap(), 200);
    check(&c.get(format!("{m}/nope")).send().await.unwrap(), 404);
    assert!(seen.len() >= 12);
    // What hyper refuses before any route: ours answers instead, in JSON.
    for (port, request, want) in [
        (env.api_port, &b"GARBAGE\r\n\r\n"[..], 400),
        (
            env.api_port,
            &b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n"[..],
            400,
        ),
        (env.api_port, &b"GET / HTTP/3.0\r\nHost: x\r\n\r\n"[..], 400),
        (
            metrics_port,
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            400,
        ),
    ] {
        let (status, head, body) = raw(port, request).await;
        assert_eq!(status, want, "{head}\n{body}");
        for h in [
            "x-content-type-options: nosniff",
            "x-frame-options: deny",
            "content-security-policy:",
            "cache-control: no-store",
            "content-type: application/json",
        ] {
            assert!(head.contains(h), "{h} missing from {head}");
        }
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].is_string(), "{body}");
    }
    // No token from a refused URL reaches the log.
    assert!(!svc.log_text().contains(LIGHTING));
}
