//! The command line: parsing, the commands, and the edge where errors become exit
//! codes (the only place `anyhow` is used). The top layer: may import anything.
use crate::{
    app::telemetry::{self, LogFormat},
    app::{self, App},
    clock,
    config::Config,
    deadline::{Fetched, client::DeadlineClient},
    devkit::{demo, simulator::Simulator},
    domain::Subscription,
    domain::{Event, JobKey, JobSnapshot, Transition},
    http::client::ApiClient,
    render::Renderer,
    store::Store,
};
use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "deadline-notifier",
    version,
    about = "Tells artists in their team's chat when AWS Deadline Cloud jobs change state"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum WatchAction {
    /// Create a watch for your team.
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// Unique within the team.
        #[arg(long)]
        name: String,
        #[arg(long)]
        farm: String,
        /// 1 to 10 queues.
        #[arg(long = "queue", required = true)]
        queues: Vec<String>,
        /// Only jobs whose createdBy is one of these.
        #[arg(long = "created-by")]
        created_by: Vec<String>,
        /// Only jobs whose name matches this regex.
        #[arg(long)]
        name_matches: Option<String>,
        #[arg(long = "channel")]
        channels: Vec<String>,
        #[arg(long = "event")]
        events: Vec<String>,
    },
    /// List your team's watches (config-declared ones too).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a watch created through the API.
    Remove {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// Base URL of a running deadline-notifier.
    #[arg(
        long,
        env = "DEADLINE_NOTIFIER_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Your team's API token.
    #[arg(long, env = "DEADLINE_NOTIFIER_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        #[arg(long, default_value = "config/notifier.toml")]
        config: PathBuf,
    },
    /// Run the simulator, a local sink and the service on embedded defaults, and print the notifications.
    Demo {
        /// Keep everything running after the scripted jobs (until Ctrl-C), with the
        /// page on `--listen` and a few unsubscribed jobs to paste into it.
        #[arg(long)]
        stay: bool,
        /// Where the API and the page listen with `--stay`.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Validate a config file and every template it uses.
    CheckConfig {
        #[arg(long, default_value = "config/notifier.toml")]
        config: PathBuf,
    },
    /// Print the exact payload a channel would receive for a job and an event.
    Render {
        #[arg(long, default_value = "config/notifier.toml")]
        config: PathBuf,
        #[arg(long)]
        team: String,
        #[arg(long)]
        channel: String,
        /// Event name, e.g. job.succeeded.
        #[arg(long)]
        event: String,
        /// A GetJob response (JSON, as returned by `aws deadline get-job`), plus farmId and queueId.
        #[arg(long, conflicts_with = "job_id", required_unless_present = "job_id")]
        job: Option<PathBuf>,
        /// Fetch the job from Deadline Cloud instead: `farm-…/queue-…/job-…`.
        #[arg(long)]
        job_id: Option<String>,
    },
    /// Subscribe a job for your team.
    Subscribe {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        farm: String,
        #[arg(long)]
        queue: String,
        #[arg(long)]
        job: String,
        /// Channel names (default: all of the team's channels).
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Events (default: succeeded, failed, canceled, suspended, not_compatible, create_failed, upload_failed).
        #[arg(long = "event")]
        events: Vec<String>,
    },
    /// Watches: subscribe new jobs of queues automatically (`watch add|list|remove`).
    Watch {
        #[command(subcommand)]
        action: WatchAction,
    },
    /// Remove a subscription.
    Unsubscribe {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// List your team's subscriptions (every page).
    Subscriptions {
        #[command(flatten)]
        api: ApiArgs,
        /// `active` (default), `finished` (finished and ended) or `all`.
        #[arg(long, default_value = "active", value_parser = ["active", "finished", "all"])]
        state: String,
    },
    /// List your team's dead letters.
    DeadLetters {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Re-send a dead letter (same webhook-id).
    Replay {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// Re-enable a channel that was disabled after a 401/403/404/410.
    EnableChannel {
        #[command(flatten)]
        api: ApiArgs,
        name: String,
    },
    /// Check the store (every record readable) and print its subscriptions as JSON.
    Export {
        #[arg(long, default_value = "config/notifier.toml")]
        config: PathBuf,
    },
    /// Add the subscriptions from an `export` file (existing ones are kept).
    Import {
        #[arg(long, default_value = "config/notifier.toml")]
        config: PathBuf,
        file: PathBuf,
    },
    /// Exit 0 if the service answers /healthz (for container HEALTHCHECKs).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Run the Deadline Cloud simulator alone (with an SQS stand-in on the same port).
    Simulate {
        #[arg(long, default_value = "127.0.0.1:4566")]
        listen: std::net::SocketAddr,
        /// Publish every job change made through `/_sim/jobs` to the SQS stand-in's
        /// queue of this name, as Deadline Cloud's EventBridge events.
        #[arg(long)]
        events_queue: Option<String>,
    },
    /// Run a local webhook receiver that answers 200 and prints each request as a
    /// JSON line (for trying templates and for the container smoke test).
    Sink {
        #[arg(long, default_value = "127.0.0.1:4567")]
        listen: std::net::SocketAddr,
    },
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Serve { config } => {
            let cfg = Config::load(&config)?;
            let app = App::build(cfg, None, clock::system()).await?;
            app.run(app::shutdown_signal()).await
        }
        Command::Demo { stay, listen } => demo::run(stay.then_some(listen)).await,
        Command::CheckConfig { config } => check_config(&config),
        Command::Render {
            config,
            team,
            channel,
            event,
            job,
            job_id,
        } => render(&config, &team, &channel, &event, job, job_id).await,
        Command::Subscribe {
            api,
            farm,
            queue,
            job,
            channels,
            events,
        } => {
            JobKey::parse(&farm, &queue, &job)?;
            let mut body = json!({"farmId": farm, "queueId": queue, "jobId": job});
            if !channels.is_empty() {
                body["channels"] = json!(channels);
            }
            if !events.is_empty() {
                body["events"] = json!(events);
            }
            let (created, v) = ApiClient::new(&api.server, &api.token)
                .subscribe(body)
                .await?;
            if !created {
                eprintln!("already subscribed; existing subscription:");
            }
            print(&v);
            Ok(())
        }
        Command::Watch { action } => watch(action).await,
        Command::Unsubscribe { api, id } => {
            ApiClient::new(&api.server, &api.token)
                .unsubscribe(&id)
                .await?;
            println!("unsubscribed {id}");
            Ok(())
        }
        Command::Subscriptions { api, state } => {
            print(
                &ApiClient::new(&api.server, &api.token)
                    .subscriptions(&state)
                    .await?,
            );
            Ok(())
        }
        Command::DeadLetters { api } => {
            print(
                &ApiClient::new(&api.server, &api.token)
                    .get_all("/v1/dead-letters?limit=500", "deadLetters")
                    .await?,
            );
            Ok(())
        }
        Command::Replay { api, id } => {
            print(
                &ApiClient::new(&api.server, &api.token)
                    .post(&format!("/v1/dead-letters/{id}/replay"))
                    .await?,
            );
            Ok(())
        }
        Command::EnableChannel { api, name } => {
            ApiClient::new(&api.server, &api.token)
                .post(&format!("/v1/channels/{name}/enable"))
                .await?;
            println!("channel {name} enabled");
            Ok(())
        }
        Command::Export { config } => {
            let cfg = Config::load(&config)?;
            let store = Store::open(&cfg.store.path)?;
            let counts = store.verify()?;
            eprintln!(
                "store {}: {}",
                cfg.store.path.display(),
                serde_json::to_string(&counts)?
            );
            print(&json!({"subscriptions": store.subscriptions()?}));
            Ok(())
        }
        Command::Import { config, file } => import(&config, &file).await,
        Command::Healthcheck { url } => {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(3))
                .build()?;
            let r = client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            anyhow::ensure!(
                r.status().is_success(),
                "{url} answered HTTP {}",
                r.status()
            );
            println!("ok");
            Ok(())
        }
        Command::Sink { listen } => sink(listen).await,
        Command::Simulate {
            listen,
            events_queue,
        } => simulate(listen, events_queue).await,
    }
}

fn check_config(config: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    Renderer::load(&cfg, crate::deadline::region_from_env().as_deref())?;
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    let channels: usize = cfg.teams.iter().map(|t| t.channels.len()).sum();
    println!(
        "{}: OK ({} teams, {channels} channels, templates from {})",
        config.display(),
        cfg.teams.len(),
        cfg.templates.dir.display()
    );
    Ok(())
}

/// Prints the payload a channel would receive for a job and an event.
async fn render(
    config: &std::path::Path,
    team: &str,
    channel: &str,
    event: &str,
    job: Option<PathBuf>,
    job_id: Option<String>,
) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let renderer = Renderer::load(&cfg, crate::deadline::region_from_env().as_deref())?;
    let t = cfg
        .team(team)
        .with_context(|| format!("no team {team:?} in {}", config.display()))?;
    let ch = t
        .channel(channel)
        .with_context(|| format!("team {team:?} has no channel {channel:?}"))?;
    let ev = Event::parse(event).with_context(|| format!("unknown event {event:?}"))?;
    let snap = match (job, job_id) {
        (Some(job), _) => {
            let text = std::fs::read_to_string(&job)
                .with_context(|| format!("reading {}", job.display()))?;
            job_from_json(&text).with_context(|| format!("{}", job.display()))?
        }
        (None, Some(id)) => {
            let key = JobKey::parse_path(&id)?;
            let client = DeadlineClient::from_config(&cfg.deadline).await;
            match client.fetch(std::slice::from_ref(&key)).await?.pop() {
                Some((k, Fetched::Found(s))) => s.snapshot(k),
                Some((_, Fetched::Gone(why) | Fetched::Failed(why))) => {
                    anyhow::bail!("cannot read {key}: {why}")
                }
                None => anyhow::bail!("cannot read {key}: empty response"),
            }
        }
        (None, None) => anyhow::bail!("give --job FILE or --job-id farm/queue/job"),
    };
    let tr = Transition {
        event: ev,
        previous_task_run_status: None,
        previous_lifecycle_status: snap.lifecycle_status.clone(),
        detected_at: crate::clock::wall_now(),
        milestone: None,
        stalled_since: None,
    };
    print(&renderer.payload(&t.name, ch, &snap, &tr)?);
    Ok(())
}

async fn watch(action: WatchAction) -> anyhow::Result<()> {
    match action {
        WatchAction::Add {
            api,
            name,
            farm,
            queues,
            created_by,
            name_matches,
            channels,
            events,
        } => {
            let mut body = json!({"name": name, "farmId": farm, "queueIds": queues});
            if !created_by.is_empty() {
                body["createdBy"] = json!(created_by);
            }
            if let Some(re) = name_matches {
                body["nameMatches"] = json!(re);
            }
            if !channels.is_empty() {
                body["channels"] = json!(channels);
            }
            if !events.is_empty() {
                body["events"] = json!(events);
            }
            let (created, v) = ApiClient::new(&api.server, &api.token)
                .create("/v1/watches", body)
                .await?;
            if !created {
                eprintln!("a watch of that name exists with these settings:");
            }
            print(&v);
            Ok(())
        }
        WatchAction::List { api } => {
            print(
                &ApiClient::new(&api.server, &api.token)
                    .get_all("/v1/watches?limit=500", "watches")
                    .await?,
            );
            Ok(())
        }
        WatchAction::Remove { api, id } => {
            ApiClient::new(&api.server, &api.token)
                .delete(&format!("/v1/watches/{id}"))
                .await?;
            println!("removed watch {id}");
            Ok(())
        }
    }
}

/// Reads an export file into the store; subscriptions already there are kept.
async fn import(config: &std::path::Path, file: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    #[derive(serde::Deserialize)]
    struct Export {
        subscriptions: Vec<Subscription>,
    }
    let data: Export = serde_json::from_str(&text)
        .with_context(|| format!("{}: not an export file", file.display()))?;
    let store = Store::open(&cfg.store.path)?;
    let (mut created, mut kept) = (0, 0);
    for (i, sub) in data.subscriptions.into_iter().enumerate() {
        let team = cfg.team(&sub.team).with_context(|| {
            format!(
                "{}: subscriptions[{i}]: team {:?} is not in {}",
                file.display(),
                sub.team,
                config.display()
            )
        })?;
        JobKey::parse(&sub.job.farm_id, &sub.job.queue_id, &sub.job.job_id)
            .with_context(|| format!("{}: subscriptions[{i}]", file.display()))?;
        if let Some(c) = sub.channels.iter().find(|c| team.channel(c).is_none()) {
            anyhow::bail!(
                "{}: subscriptions[{i}]: team {:?} has no channel {c:?}",
                file.display(),
                team.name
            );
        }
        if store.insert_subscription(sub)?.1 {
            created += 1
        } else {
            kept += 1
        }
    }
    store.flush().await?;
    println!("imported {created} subscriptions ({kept} already present)");
    Ok(())
}

/// The bot token the sink's fake Slack accepts unless `SINK_SLACK_TOKEN` says otherwise.
const SINK_SLACK_TOKEN: &str = "xoxb-sink-token";

async fn sink(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let sink = crate::devkit::sink::Sink::new();
    let mut received = sink.subscribe();
    // A fake Slack Web API beside it, for `slack_app` channels (api_url = <sink>/api/).
    let token = std::env::var("SINK_SLACK_TOKEN").unwrap_or_else(|_| SINK_SLACK_TOKEN.into());
    let slack = crate::devkit::slack::FakeSlack::new(&token);
    let (addr, handle) = sink.serve_with(listen, slack.router()).await?;
    eprintln!(
        "webhook sink on http://{addr} (POST any path; a fake Slack Web API under /api/, its messages at /_fake/messages)"
    );
    let print = async move {
        use std::io::Write;
        while let Ok(r) = received.recv().await {
            let line = serde_json::json!({"path": r.path, "status": r.status, "body": r.body});
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    };
    tokio::select! {
        _ = app::shutdown_signal() => {}
        _ = handle => {}
        _ = print => {}
    }
    Ok(())
}

async fn simulate(
    listen: std::net::SocketAddr,
    events_queue: Option<String>,
) -> anyhow::Result<()> {
    let sim = Simulator::new();
    sim.emit_events(events_queue.as_deref());
    let (addr, handle) = sim.serve(listen).await?;
    println!("Deadline Cloud simulator on http://{addr}");
    println!("  export AWS_ENDPOINT_URL_DEADLINE=http://{addr}");
    if let Some(q) = &events_queue {
        println!("  export AWS_ENDPOINT_URL_SQS=http://{addr}");
        println!(
            "  [events] sqs_queue_url = \"https://sqs.us-west-2.amazonaws.com/111122223333/{q}\""
        );
    }
    println!(
        "  add a job:  curl -X POST http://{addr}/_sim/jobs -H 'content-type: application/json' -d '{{\"name\":\"shot_010\"}}'"
    );
    tokio::select! {
        _ = app::shutdown_signal() => {}
        _ = handle => {}
    }
    Ok(())
}

/// Reads a GetJob/BatchGetJob-shaped JSON document into a snapshot.
fn job_from_json(text: &str) -> anyhow::Result<JobSnapshot> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    Ok(crate::deadline::wire::from_wire(&v)?)
}
