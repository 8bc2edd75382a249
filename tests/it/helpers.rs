use deadline_notifier::devkit::simulator::{JobSpec, Simulator};
use deadline_notifier::devkit::sink::{Received, Sink};
use deadline_notifier::domain::JobKey;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub const LIGHTING: &str = "lighting-token-0123456789abcdef";
pub const FX: &str = "fx-token-0123456789abcdef012345";

/// Waits for `cond` to hold, checking every 50 ms, failing with `what` after `timeout`.
pub async fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut cond: F) {
    wait_for(timeout, what, || {
        let done = cond();
        async move { if done { Ok(()) } else { Err("not yet") } }
    })
    .await
}

/// Polls `probe` until it answers `Ok`, and returns that answer. At the deadline it
/// fails naming `what` and the last thing the probe saw (`Err`).
pub async fn wait_for<T, Seen, Fut>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Fut,
) -> T
where
    Fut: std::future::Future<Output = Result<T, Seen>>,
    Seen: std::fmt::Debug,
{
    let deadline = deadline_notifier::clock::tokio_monotonic() + timeout;
    loop {
        let seen = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if deadline_notifier::clock::tokio_monotonic() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}; last seen: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Env {
    pub sim: Simulator,
    pub sim_addr: SocketAddr,
    pub sink: Sink,
    pub sink_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub api_port: u16,
    /// Handed to each service: the API's socket, then `/metrics`' if any.
    pub sockets: Vec<Arc<std::net::TcpListener>>,
    pub runs: usize,
}

/// A listening socket on a port the system picks. The test keeps it for its
/// whole life and hands it to every service it starts (`LISTEN_FDS`), so the port
/// is never free for another process to take between runs.
pub fn socket() -> (Arc<std::net::TcpListener>, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().expect("bound address").port();
    (Arc::new(l), port)
}

impl Env {
    pub async fn new() -> Env {
        Self::with_delivery("").await
    }

    /// `delivery_extra` is appended to the `[delivery]` table.
    pub async fn with_delivery(delivery_extra: &str) -> Env {
        let sim = Simulator::new();
        let (sim_addr, _) = sim.serve(([127, 0, 0, 1], 0).into()).await.unwrap();
        let sink = Sink::new();
        let (sink_addr, _) = sink.serve(([127, 0, 0, 1], 0).into()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (api_socket, api_port) = socket();
        let cfg = format!(
            r#"
[server]
listen = "127.0.0.1:{api_port}"
shutdown_grace = "5s"
rate_limit = 0
[store]
path = "{store}"
[deadline]
poll_interval = "200ms"
max_requests_per_second = 50
max_attempts = 3
[delivery]
allow_private_targets = true
retry_schedule = ["200ms", "400ms"]
slack_interval = "50ms"
teams_interval = "50ms"
{delivery_extra}
[[teams]]
name = "lighting"
tokens = ["{LIGHTING}"]
[[teams.channels]]
name = "slack"
kind = "slack"
url = "http://{sink_addr}/slack/lighting"
[[teams.channels]]
name = "teams"
kind = "teams"
url = "http://{sink_addr}/teams/lighting"
[[teams.channels]]
name = "pipeline"
kind = "webhook"
url = "http://{sink_addr}/webhook/lighting"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
[[teams]]
name = "fx"
tokens = ["{FX}"]
[[teams.channels]]
name = "hook"
kind = "webhook"
url = "http://{sink_addr}/webhook/fx"
"#,
            store = dir.path().join("store.sled").display()
        );
        std::fs::write(dir.path().join("notifier.toml"), cfg).unwrap();
        Env {
            sim,
            sim_addr,
            sink,
            sink_addr,
            dir,
            api_port,
            sockets: vec![api_socket],
            runs: 0,
        }
    }

    /// A second socket, handed to the service for `server.metrics_listen`; its port.
    pub fn metrics_socket(&mut self) -> u16 {
        let (s, port) = socket();
        self.sockets.truncate(1);
        self.sockets.push(s);
        port
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("notifier.toml")
    }

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Starts `deadline-notifier serve` with the standard AWS env chain pointed at
    /// the simulator, and waits for /healthz.
    pub async fn start(&mut self) -> Service {
        self.runs += 1;
        self.launcher().start(self.runs).await
    }

    /// What it takes to start the service, detached from `Env` (for a killer task).
    pub fn launcher(&self) -> Launcher {
        Launcher {
            config: self.config_path(),
            dir: self.dir.path().to_path_buf(),
            sim_addr: self.sim_addr,
            api_port: self.api_port,
            sockets: self.sockets.clone(),
        }
    }

    pub fn add_job(&self, name: &str) -> JobKey {
        self.sim.add_job(JobSpec {
            name: name.into(),
            ..Default::default()
        })
    }

    pub async fn subscribe(&self, token: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/subscriptions", self.api()))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET <api><path>` with `token`; the JSON answer (null if none).
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.api()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    pub async fn subscribe_job(&self, key: &JobKey, extra: Value) -> Value {
        let mut body = json!({"farmId": key.farm_id, "queueId": key.queue_id, "jobId": key.job_id});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, v) = self.subscribe(LIGHTING, body).await;
        assert_eq!(status, 201, "{v}");
        v
    }

    /// Waits until the service has read the job `n` more times than now: after two
    /// reads, the first observation is certainly committed.
    pub async fn observed(&self, key: &JobKey, n: u64) {
        let start = self.sim.hits(key);
        wait_until(
            Duration::from_secs(20),
            "the service to poll the job",
            || self.sim.hits(key) >= start + n,
        )
        .await;
    }

    /// Like [`Env::observed`] for many jobs at once, counting from now for all of them.
    pub async fn observed_all(&self, keys: &[JobKey], n: u64) {
        let start: Vec<u64> = keys.iter().map(|k| self.sim.hits(k)).collect();
        wait_until(
            Duration::from_secs(30),
            "the service to poll every job",
            || {
                keys.iter()
                    .zip(&start)
                    .all(|(k, s)| self.sim.hits(k) >= s + n)
            },
        )
        .await;
    }

    /// The sum of every sample of metric `name` whose labels contain all of
    /// `labels` (e.g. `outcome="malformed"`); 0 when there is none.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.metric_opt(name, labels).await.unwrap_or(0.0)
    }

    /// [`Env::metric`], or `None` when `/metrics` has no such sample yet.
    pub async fn metric_opt(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.api()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let values: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
                    && labels.iter().all(|x| l.contains(x))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Delivered messages about `key` (2xx answers), in arrival order.
    pub fn delivered_for(&self, key: &JobKey) -> Vec<Received> {
        self.sink
            .delivered()
            .into_iter()
            .filter(|r| r.raw.contains(key.job_id.as_str()))
            .collect()
    }
}

#[derive(Clone)]
pub struct Launcher {
    pub config: PathBuf,
    pub dir: PathBuf,
    pub sim_addr: SocketAddr,
    pub api_port: u16,
    pub sockets: Vec<Arc<std::net::TcpListener>>,
}

impl Launcher {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_deadline-notifier"));
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "AWS_ENDPOINT_URL_DEADLINE",
                format!("http://{}", self.sim_addr),
            )
            .env(
                "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS",
                format!("http://{}", self.sim_addr),
            )
            .env("AWS_ENDPOINT_URL_SQS", format!("http://{}", self.sim_addr))
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "secret-test")
            .env("AWS_REGION", "us-west-2")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("RUST_LOG", "info");
        c
    }

    pub async fn start(&self, run: usize) -> Service {
        self.start_with(run, None).await
    }

    /// Starts the service with its open-file limit (soft and hard) set to `nofile`.
    pub async fn start_with(&self, run: usize, nofile: Option<u64>) -> Service {
        let log = self.dir.join(format!("run{run}.log"));
        let mut cmd = self.command(&["serve"]);
        pass_sockets(&mut cmd, &self.sockets);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and only touches the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn deadline-notifier");
        let svc = Service { child, log };
        // Plain HTTP, or HTTPS with one of the test certificates (`tests/tls`).
        let client = tls_client(&["a.pem", "b.pem"]);
        let urls = ["http", "https"].map(|s| format!("{s}://127.0.0.1:{}/healthz", self.api_port));
        let deadline = deadline_notifier::clock::tokio_monotonic() + Duration::from_secs(20);
        loop {
            let mut up = false;
            for url in &urls {
                up |= client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
            }
            if up {
                break;
            }
            if deadline_notifier::clock::tokio_monotonic() > deadline {
                panic!("service did not become healthy; log:\n{}", svc.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        svc
    }
}

/// Hands `sockets` to the child as fds 3, 4, … with `LISTEN_FDS` (systemd's
/// socket activation), which the service takes instead of binding its addresses.
fn pass_sockets(cmd: &mut Command, sockets: &[Arc<std::net::TcpListener>]) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fds: Vec<i32> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    cmd.env("LISTEN_FDS", fds.len().to_string());
    // SAFETY: only dup/dup2/close between fork and exec, which are
    // async-signal-safe, on descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            // Moved out of the way first, so that no source is overwritten by an
            // earlier target; dup2 clears close-on-exec on the targets.
            let mut high = Vec::with_capacity(fds.len());
            for fd in &fds {
                let h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, h) in high.iter().enumerate() {
                if libc::dup2(*h, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(*h);
            }
            Ok(())
        });
    }
}

pub struct Service {
    child: Child,
    pub log: PathBuf,
}

impl Service {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`HUP`, `TERM`, …).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} failed");
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which channel a sink request went to.
pub fn channel_of(r: &Received) -> &'static str {
    if r.path.starts_with("/slack") {
        "slack"
    } else if r.path.starts_with("/teams") {
        "teams"
    } else if r.path.starts_with("/webhook/fx") {
        "fx"
    } else {
        "webhook"
    }
}

/// The event a delivered payload announces, whatever the channel.
pub fn event_of(r: &Received) -> String {
    if let Some(t) = r.body["type"].as_str()
        && t.starts_with("job.")
    {
        return t.to_string();
    }
    for (word, ev) in [
        (" started", "job.started"),
        (" succeeded", "job.succeeded"),
        (" failed to create", "job.create_failed"),
        (" failed", "job.failed"),
        (" was canceled", "job.canceled"),
    ] {
        let title = if channel_of(r) == "slack" {
            r.body["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        } else {
            r.body["attachments"][0]["content"]["body"][0]["inlines"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        if title.ends_with(word) {
            return ev.to_string();
        }
    }
    "unknown".into()
}

/// A client that trusts only the named test certificates of `tests/tls`, and opens
/// a new connection for every request (so a renewed certificate is seen at once).
pub fn tls_client(certs: &[&str]) -> reqwest::Client {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let certs = certs
        .iter()
        .map(|c| reqwest::Certificate::from_pem(&std::fs::read(dir.join(c)).unwrap()).unwrap());
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}
