use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scope_every_subscription_to_its_team() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let job = env.add_job("api");
    let api = env.api();
    let body =
        json!({"farmId": job.farm_id, "queueId": job.queue_id, "jobId": job.job_id}).to_string();
    let subs = format!("{api}/v1/subscriptions");
    use reqwest::Method as M;

    // No token, wrong token → 401 with a JSON error.
    for tok in [None, Some("not-a-real-token-000000")] {
        let (s, v) = call(M::POST, &subs, tok, Some(&body)).await;
        assert_eq!(s, 401);
        assert!(v["error"].is_string());
        assert_eq!(call(M::GET, &subs, tok, None).await.0, 401);
    }

    let (s, created) = call(M::POST, &subs, Some(LIGHTING), Some(&body)).await;
    assert_eq!(s, 201, "{created}");
    for k in [
        "id",
        "team",
        "farmId",
        "queueId",
        "jobId",
        "channels",
        "events",
        "createdAt",
    ] {
        assert!(created.get(k).is_some(), "response has {k}: {created}");
    }
    assert_eq!(created["team"], "lighting");
    assert_eq!(created["channels"], json!(["slack", "teams", "pipeline"]));
    assert_eq!(created["events"].as_array().unwrap().len(), 7);
    let id = created["id"].as_str().unwrap();

    // Same job, same team → 200 with the existing subscription.
    let (s, again) = call(M::POST, &subs, Some(LIGHTING), Some(&body)).await;
    assert_eq!((s, again["id"].as_str()), (200, Some(id)));

    // Another team can subscribe the same job, but never sees or deletes lighting's.
    let (s, fx) = call(M::POST, &subs, Some(FX), Some(&body)).await;
    assert_eq!(s, 201);
    assert_ne!(fx["id"], created["id"]);
    let one = format!("{subs}/{id}");
    assert_eq!(call(M::GET, &one, Some(FX), None).await.0, 404);
    assert_eq!(call(M::DELETE, &one, Some(FX), None).await.0, 404);
    let (_, fx_list) = call(M::GET, &subs, Some(FX), None).await;
    assert_eq!(fx_list["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(fx_list["subscriptions"][0]["team"], "fx");
    let (_, dl) = call(M::GET, &format!("{api}/v1/dead-letters"), Some(FX), None).await;
    assert!(dl["deadLetters"].as_array().unwrap().is_empty());

    let (s, mine) = call(M::GET, &one, Some(LIGHTING), None).await;
    assert_eq!((s, mine["id"].as_str()), (200, Some(id)));
    assert_eq!(call(M::DELETE, &one, Some(LIGHTING), None).await.0, 204);
    assert_eq!(call(M::GET, &one, Some(LIGHTING), None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_naming_the_field() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let subs = format!("{}/v1/subscriptions", env.api());
    let f = format!("farm-{}", "a".repeat(32));
    let q = format!("queue-{}", "b".repeat(32));
    let j = format!("job-{}", "c".repeat(32));
    let cases = [
        ("{not json".to_string(), "JSON"),
        ("[]".to_string(), "object"),
        (json!({"queueId": q, "jobId": j}).to_string(), "farmId"),
        (
            json!({"farmId": "farm-1", "queueId": q, "jobId": j}).to_string(),
            "farmId",
        ),
        (
            json!({"farmId": f, "queueId": q, "jobId": 42}).to_string(),
            "jobId",
        ),
        (
            json!({"farmId": f, "queueId": "queue-XYZ", "jobId": j}).to_string(),
            "queueId",
        ),
        (
            json!({"farmId": f, "queueId": q, "jobId": j, "channels": ["nope"]}).to_string(),
            "channels",
        ),
        (
            json!({"farmId": f, "queueId": q, "jobId": j, "events": ["job.exploded"]}).to_string(),
            "events",
        ),
        (
            json!({"farmId": f, "queueId": q, "jobId": j, "team": "fx"}).to_string(),
            "team",
        ),
    ];
    for (body, field) in cases {
        let (s, v) = call(reqwest::Method::POST, &subs, Some(LIGHTING), Some(&body)).await;
        assert_eq!(s, 400, "{body} → {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(field),
            "error for {body} should name {field}: {msg}"
        );
    }
    let big = format!("{{\"farmId\":\"{}\"}}", "x".repeat(100_000));
    assert_eq!(
        call(reqwest::Method::POST, &subs, Some(LIGHTING), Some(&big))
            .await
            .0,
        413
    );
    // Repeated channels and events are stored once each, in the order given.
    let body = json!({"farmId": f, "queueId": q, "jobId": j,
        "channels": ["slack", "pipeline", "slack"], "events": ["job.failed", "job.failed"]})
    .to_string();
    let (s, v) = call(reqwest::Method::POST, &subs, Some(LIGHTING), Some(&body)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["channels"], json!(["slack", "pipeline"]));
    assert_eq!(v["events"], json!(["job.failed"]));
}

async fn req(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Mute, channel test and preview are team-scoped, with
/// 401/404/400 like the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_test_message_and_preview() {
    use reqwest::Method;
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let job = env.add_job("mutable");
    let sub = env
        .subscribe_job(
            &job,
            json!({"channels": ["pipeline"], "events": ["job.started", "job.succeeded"]}),
        )
        .await;
    env.observed(&job, 2).await;
    let url = format!(
        "{}/v1/subscriptions/{}",
        env.api(),
        sub["id"].as_str().unwrap()
    );
    assert_eq!(
        req(Method::PATCH, &url, None, Some(json!({"muted": true})))
            .await
            .0,
        401
    );
    assert_eq!(
        req(Method::PATCH, &url, Some(FX), Some(json!({"muted": true})))
            .await
            .0,
        404
    );
    let (s, v) = req(
        Method::PATCH,
        &url,
        Some(LIGHTING),
        Some(json!({"muted": "yes"})),
    )
    .await;
    assert!(
        s == 400 && v["error"].as_str().unwrap().contains("muted"),
        "{v}"
    );
    let (s, v) = req(
        Method::PATCH,
        &url,
        Some(LIGHTING),
        Some(json!({"channels": []})),
    )
    .await;
    assert!(
        s == 400 && v["error"].as_str().unwrap().contains("channels"),
        "{v}"
    );
    let (s, v) = req(
        Method::PATCH,
        &url,
        Some(LIGHTING),
        Some(json!({"muted": true})),
    )
    .await;
    assert_eq!((s, &v["muted"]), (200, &json!(true)), "{v}");
    // Two more polls: the second starts after the watcher took the change in.
    env.observed(&job, env.sim.hits(&job) + 2).await;
    // Muted: the transition is followed, nothing is sent.
    env.sim.set_status(&job, "RUNNING");
    env.observed(&job, env.sim.hits(&job) + 2).await;
    let (s, v) = req(
        Method::PATCH,
        &url,
        Some(LIGHTING),
        Some(json!({"muted": false})),
    )
    .await;
    assert_eq!((s, &v["muted"]), (200, &json!(false)), "{v}");
    env.observed(&job, env.sim.hits(&job) + 2).await;
    env.sim.set_status(&job, "SUCCEEDED");
    wait_until(Duration::from_secs(30), "the unmuted message", || {
        !env.delivered_for(&job).is_empty()
    })
    .await;
    let events: Vec<_> = env
        .delivered_for(&job)
        .iter()
        .map(|r| r.body["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(events, ["job.succeeded"], "nothing while muted");

    // Send test message: through the outbox, to the sink.
    let test = format!("{}/v1/channels/pipeline/test", env.api());
    assert_eq!(req(Method::POST, &test, None, None).await.0, 401);
    assert_eq!(
        req(
            Method::POST,
            &format!("{}/v1/channels/nope/test", env.api()),
            Some(LIGHTING),
            None
        )
        .await
        .0,
        404
    );
    let (s, entry) = req(Method::POST, &test, Some(LIGHTING), None).await;
    assert_eq!(s, 202, "{entry}");
    let id = entry["webhookId"].as_str().unwrap().to_string();
    wait_until(
        Duration::from_secs(30),
        "the test message at the sink",
        || {
            env.sink
                .delivered()
                .iter()
                .any(|r| r.headers.get("webhook-id") == Some(&id))
        },
    )
    .await;

    // Preview: the exact payload of the team's template for a sample job.
    let p = |q: &str| format!("{}/v1/preview?{q}", env.api());
    let (s, v) = req(
        Method::GET,
        &p("channel=slack&event=job.failed"),
        Some(LIGHTING),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["blocks"].is_array() && v["text"].as_str().unwrap().contains("failed"),
        "{v}"
    );
    assert_eq!(
        req(Method::GET, &p("channel=slack"), None, None).await.0,
        401
    );
    assert_eq!(
        req(Method::GET, &p("channel=hook"), Some(LIGHTING), None)
            .await
            .0,
        404
    );
    let (s, v) = req(
        Method::GET,
        &p("channel=slack&event=job.exploded"),
        Some(LIGHTING),
        None,
    )
    .await;
    assert!(
        s == 400 && v["error"].as_str().unwrap().contains("event"),
        "{v}"
    );
    assert_eq!(
        req(Method::GET, &p("event=job.failed"), Some(LIGHTING), None)
            .await
            .0,
        400
    );
}

/// GETs `url` (as lighting) until `done` holds for the answer; returns that answer.
async fn get_until(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(30), what, || async {
        let (_, v) = req(reqwest::Method::GET, url, Some(LIGHTING), None).await;
        if done(&v) { Ok(v) } else { Err(v) }
    })
    .await
}

/// What the page reads: who the token is, each subscription's job as last read, and
/// the latest notification per channel with its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_job_view_and_last_notification_per_channel() {
    use reqwest::Method;
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let team = format!("{}/v1/team", env.api());
    assert_eq!(req(Method::GET, &team, None, None).await.0, 401);
    let (s, v) = req(Method::GET, &team, Some(LIGHTING), None).await;
    assert_eq!((s, v["name"].as_str()), (200, Some("lighting")), "{v}");
    assert_eq!(v["channels"], json!(["slack", "teams", "pipeline"]));
    let events = v["events"].as_array().unwrap();
    assert!(events.contains(&json!({"name": "job.succeeded", "default": true})));
    assert!(events.contains(&json!({"name": "job.started", "default": false})));
    let (_, v) = req(Method::GET, &team, Some(FX), None).await;
    assert_eq!(v["name"], "fx");

    let job = env.add_job("viewed <b>job</b>");
    env.sink.script(
        "/slack/lighting",
        [deadline_notifier::devkit::sink::Answer {
            status: 200,
            retry_after: None,
            body: r#"{"ok":false,"error":"invalid_blocks"}"#.into(),
        }],
    );
    let sub = env
        .subscribe_job(
            &job,
            json!({"channels": ["slack", "pipeline"], "events": ["job.succeeded"]}),
        )
        .await;
    let id = sub["id"].as_str().unwrap().to_string();
    let list = format!("{}/v1/subscriptions", env.api());
    env.observed(&job, 2).await;
    let (_, v) = req(Method::GET, &list, Some(LIGHTING), None).await;
    let s = &v["subscriptions"][0];
    assert_eq!(s["job"]["name"], "viewed <b>job</b>", "{s}");
    assert!(s["job"]["taskRunStatus"].is_string(), "{s}");
    assert_eq!(s["lastNotification"], Value::Null, "{s}");
    assert_eq!(s["notifications"], json!([]), "{s}");

    env.sim.set_status(&job, "SUCCEEDED");
    let one = format!("{list}/{id}");
    let last = get_until(&one, "both channels settled", |v| {
        let states: Vec<_> = v["notifications"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| (n["channel"].clone(), n["state"].clone()))
            .collect();
        states.contains(&(json!("pipeline"), json!("delivered")))
            && states.contains(&(json!("slack"), json!("dead letter")))
    })
    .await;
    assert_eq!(last["job"]["taskRunStatus"], "SUCCEEDED", "{last}");
    let n = &last["lastNotification"];
    assert_eq!(n["event"], "job.succeeded", "{last}");
    assert!(["delivered", "dead letter"].contains(&n["state"].as_str().unwrap()));
    // Another team sees none of it.
    assert_eq!(req(Method::GET, &one, Some(FX), None).await.0, 404);

    // A replayed dead letter is pending again (or delivered, once the sink takes it).
    let (_, dl) = req(
        Method::GET,
        &format!("{}/v1/dead-letters", env.api()),
        Some(LIGHTING),
        None,
    )
    .await;
    let dl_id = dl["deadLetters"][0]["id"].as_u64().unwrap();
    let (s, _) = req(
        Method::POST,
        &format!("{}/v1/dead-letters/{dl_id}/replay", env.api()),
        Some(LIGHTING),
        None,
    )
    .await;
    assert_eq!(s, 202);
    get_until(&one, "the replay delivered", |v| {
        v["notifications"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["channel"] == "slack" && n["state"] == "delivered")
    })
    .await;

    // Unsubscribing forgets the notices: subscribing again starts clean.
    assert_eq!(req(Method::DELETE, &one, Some(LIGHTING), None).await.0, 204);
    let again = env.subscribe_job(&job, json!({})).await;
    let (_, v) = req(
        Method::GET,
        &format!("{list}/{}", again["id"].as_str().unwrap()),
        Some(LIGHTING),
        None,
    )
    .await;
    assert_eq!(v["notifications"], json!([]), "{v}");
}

/// The page and its assets, and every API answer, carry the security headers; the
/// API answers no cross-origin request with CORS headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_is_served_with_strict_headers_and_etags() {
    let mut env = Env::new().await;
    let _svc = env.start().await;
    let c = reqwest::Client::new();
    for (path, ctype) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/api.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
        ("/assets/icon.svg", "image/svg+xml"),
        ("/v1/subscriptions", "application/json"),
        ("/nowhere", "application/json"),
    ] {
        let r = c
            .get(format!("{}{path}", env.api()))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        let h = r.headers();
        let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
        assert!(get("content-type").unwrap().starts_with(ctype), "{path}");
        let csp = get("content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'self'")
                && csp.contains("frame-ancestors 'none'")
                && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert_eq!(get("x-content-type-options").as_deref(), Some("nosniff"));
        assert_eq!(get("referrer-policy").as_deref(), Some("no-referrer"));
        assert_eq!(get("access-control-allow-origin"), None, "{path}");
    }
    let preflight = c
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/subscriptions", env.api()),
        )
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(!preflight.status().is_success());
    assert!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let r = c
        .get(format!("{}/assets/app.js", env.api()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let etag = r.headers()["etag"].clone();
    let again = c
        .get(format!("{}/assets/app.js", env.api()))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let html = c.get(env.api()).send().await.unwrap().text().await.unwrap();
    assert!(!html.contains(" style=") && !html.contains("<style"));
    assert!(!html.contains("<script>"), "inline script");
    // Without the script, a form posts nowhere that keeps anything: no field of
    // the sign-in form has a name, so a token never leaves in a URL or a body.
    let token_input = html
        .split("<input")
        .find(|i| i.contains("id=\"token\""))
        .unwrap();
    assert!(
        !token_input.split('>').next().unwrap().contains("name="),
        "{token_input}"
    );
    for form in html.split("<form").skip(1) {
        let tag = form.split('>').next().unwrap();
        assert!(tag.contains("method=\"post\""), "{tag}");
    }
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(env.api())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
}
