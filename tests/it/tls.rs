//! HTTPS for the API and the page: `[server] tls`, and a renewed certificate
//! taken up by a reload.
use crate::helpers::*;
use serde_json::Value;
use std::time::Duration;

fn use_cert(env: &Env, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let to = env.config_path().parent().unwrap().to_path_buf();
    std::fs::copy(dir.join(format!("{name}.pem")), to.join("cert.pem")).unwrap();
    std::fs::copy(dir.join(format!("{name}.key")), to.join("key.pem")).unwrap();
}

async fn status(c: &reqwest::Client, url: &str) -> Result<u16, String> {
    c.get(url)
        .bearer_auth(LIGHTING)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_and_takes_up_a_renewed_certificate() {
    let mut env = Env::new().await;
    use_cert(&env, "a");
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replacen(
            "[server]\n",
            "[server]\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
            1,
        );
    std::fs::write(env.config_path(), text).unwrap();
    let svc = env.start().await;
    let base = format!("https://127.0.0.1:{}", env.api_port);
    let (a, b) = (tls_client(&["a.pem"]), tls_client(&["b.pem"]));
    let r = a.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("content-security-policy"));
    assert!(r.text().await.unwrap().contains("<html"));
    assert_eq!(
        status(&a, &format!("{base}/v1/subscriptions")).await,
        Ok(200)
    );
    // Only the configured certificate is presented; nothing answers in clear text.
    assert!(status(&b, &format!("{base}/healthz")).await.is_err());
    let plain = format!("http://127.0.0.1:{}/healthz", env.api_port);
    assert!(status(&reqwest::Client::new(), &plain).await.is_err());

    // Renewed on disk, taken up by SIGHUP: new connections get the new one.
    use_cert(&env, "b");
    svc.signal("HUP");
    let url = format!("{base}/healthz");
    wait_for(
        Duration::from_secs(20),
        "the renewed certificate",
        || async {
            match status(&b, &url).await {
                Ok(200) => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
    assert!(status(&a, &url).await.is_err());

    // A broken certificate is refused by the reload, naming the key; the one in
    // force keeps serving.
    std::fs::write(
        env.config_path().parent().unwrap().join("cert.pem"),
        "not a certificate",
    )
    .unwrap();
    svc.signal("HUP");
    wait_until(
        Duration::from_secs(20),
        "the refused reload in the log",
        || svc.log_text().contains("server.tls.cert"),
    )
    .await;
    assert_eq!(status(&b, &url).await, Ok(200));
    let v: Value = b.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], "ok");
}
