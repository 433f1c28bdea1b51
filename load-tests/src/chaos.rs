//! Chaos run: the roles as separate processes, as `docker-compose.yml` deploys them (2 × ingress,
//! gateway, writer and sender; a broadcaster and an autoreply), on a private Redis (AOF
//! `always`) and PostgreSQL, under a steady bounded load of signed webhooks, agents' replies over
//! REST and the WebSocket and a campaign per tenant, with agent sockets following every
//! tenant's inbox, while role processes are SIGKILLed and restarted every few seconds, Redis (or
//! a Redis Cluster master) is SIGKILLed once, PostgreSQL killed once and one gateway paused
//! (SIGSTOP, then SIGCONT). Seeded: the same seed makes the same faults at the same moments.
//!
//! ```text
//! cargo run --release -p chatdesk-load-tests --bin chaos -- [--seconds 60] [--seed 1]
//! ```
//!
//! After the load stops and the system has drained it prints the tally and exits non-zero on any
//! loss or duplicate: every acknowledged webhook and reply is exactly one row in PostgreSQL;
//! every agent socket saw every stored event of its tenant exactly once and in order (across its
//! resumes); every acknowledged reply reached the provider stand-in at least once (repeats are
//! counted: the sender delivers at least once); no dead letter; no pending entry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chatdesk_api::ingress::signature::sign;
use chatdesk_core::{EntryId, KeyScheme, StreamsConfig};
use chatdesk_load_tests::SplitMix64 as Rng;
use chatdesk_load_tests::chatdesk_binary;
use chatdesk_local::{PostgresOptions, PostgresServer, RedisCluster, RedisOptions, RedisPersistence, RedisServer};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Parser)]
#[command(about = "Kills roles, Redis and PostgreSQL under load, then counts every message")]
struct Args {
    /// How long the load and the faults last.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seeds the choice and timing of faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 3)]
    tenants: usize,
    /// Webhooks per second, over all tenants.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    /// Seconds between two role kills.
    #[arg(long, default_value_t = 4.0)]
    kill_every: f64,
    /// Run on a 3-master Redis Cluster (AOF `always` on each node); the Redis fault then kills
    /// one master.
    #[arg(long)]
    cluster: bool,
    /// The chatdesk binary (default: the one built next to this one).
    #[arg(long)]
    chatdesk: Option<PathBuf>,
}

/// One role process, restarted in place after a kill.
struct Role {
    name: String,
    roles: String,
    http: SocketAddr,
    child: Option<Child>,
    kills: u32,
    /// Times it exited at start (a dependency down) and was started again.
    restarts: u32,
}

struct Launcher {
    binary: PathBuf,
    logs: PathBuf,
    env: Vec<(String, String)>,
}

impl Launcher {
    fn spawn(&self, role: &Role) -> anyhow::Result<Child> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.logs.join(format!("{}.log", role.name)))?;
        Command::new(&self.binary)
            .args(["serve", "--roles", &role.roles, "--http", &role.http.to_string()])
            .envs(self.env.iter().map(|(name, value)| (name.as_str(), value.as_str())))
            .env("CHATDESK_NODE_ID", &role.name)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", role.name))
    }

    /// Starts the role and waits until it is ready. A process that exits first (it found Redis
    /// or PostgreSQL down at start) is started again a second later, as the deployment's restart
    /// policy does (`restart: unless-stopped`).
    async fn start(&self, role: &mut Role) -> anyhow::Result<()> {
        role.child = Some(self.spawn(role)?);
        let http = chatdesk_outbound::http_client(Duration::from_secs(2))?;
        let started = Instant::now();
        loop {
            let url = format!("http://{}/readyz", role.http);
            if http.get(&url).send().await.is_ok_and(|answer| answer.status() == 200) {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(90) {
                bail!("{} did not become ready (see {})", role.name, self.logs.display());
            }
            if let Some(child) = role.child.as_mut()
                && child.try_wait()?.is_some()
            {
                role.restarts += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                role.child = Some(self.spawn(role)?);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill").args(["-s", name, &pid.to_string()]).status();
}

struct Tenant {
    id: uuid::Uuid,
    inbox: String,
    /// The tenant's web widget inbox.
    web: String,
    secret: String,
    token: String,
}

/// What the load got acknowledged and what the sockets and the stand-in saw.
#[derive(Default)]
struct Observed {
    /// Per tenant: webhook message ids answered 200.
    webhooks: Vec<HashSet<String>>,
    /// Per tenant: reply event ids answered 202.
    replies: Vec<HashSet<String>>,
    /// Per tenant: known conversation ids (to reply to).
    conversations: Vec<Vec<String>>,
    /// Per socket (tenant, index): the stored events it received, in order.
    sockets: BTreeMap<(usize, usize), Vec<(EntryId, String)>>,
    socket_resumes: u64,
    /// Agent sockets that had their first `subscribed` answer.
    subscribed: usize,
    /// Event id → deliveries at the provider stand-in.
    delivered: HashMap<String, u32>,
    /// Recipient (`to`) → deliveries at the provider stand-in.
    delivered_to: HashMap<String, u32>,
    /// Per tenant: its campaign's id and recipients.
    campaigns: Vec<Option<(String, Vec<String>)>>,
    /// Per tenant: its widget visitor's conversation and contact, the `client_msg_id`s of its
    /// messages answered 202, and the stored events its socket received, in order.
    visitors: Vec<Visitor>,
    faults: Vec<String>,
}

#[derive(Default, Clone)]
struct Visitor {
    conversation: Option<String>,
    contact: Option<String>,
    acked: Vec<String>,
    events: Vec<(EntryId, String)>,
    resumes: u64,
}

type Shared = Arc<Mutex<Observed>>;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to the next gateway in turn; `None` (after a pause) when it is down.
async fn connect(gateways: &[SocketAddr], attempt: &mut usize) -> Option<Socket> {
    let address = gateways[*attempt % gateways.len()];
    *attempt += 1;
    let connected =
        tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(format!("ws://{address}/v1/ws")))
            .await;
    match connected {
        Ok(Ok((socket, _))) => Some(socket),
        _ => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
    }
}

/// A widget visitor of tenant `index`: a session (with retries on either ingress), its
/// conversation followed on either gateway (resuming from the last offset), and a message every
/// 2.5 s (under the 30-a-minute limit) while `sending` lasts, each retried with the same
/// `client_msg_id` until answered.
async fn visitor(
    http: reqwest::Client,
    ingresses: Vec<SocketAddr>,
    gateways: Vec<SocketAddr>,
    (index, web): (usize, String),
    observed: Shared,
    (sending, stop): (CancellationToken, CancellationToken),
    writers: TaskTracker,
) {
    let session = loop {
        if stop.is_cancelled() {
            return;
        }
        let address = ingresses[observed.lock().expect("observed").visitors[index].resumes as usize % ingresses.len()];
        let answer = http
            .post(format!("http://{address}/v1/widget/{web}/sessions"))
            .json(&json!({"email": format!("visitor{index}@chaos.test"), "name": format!("Visitor {index}")}))
            .send()
            .await;
        if let Ok(answer) = answer
            && answer.status() == 201
            && let Ok(session) = answer.json::<Value>().await
        {
            break session;
        }
        observed.lock().expect("observed").visitors[index].resumes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let token = session["token"].as_str().unwrap_or_default().to_owned();
    let conversation = session["conversation_id"].as_str().unwrap_or_default().to_owned();
    {
        let mut seen = observed.lock().expect("observed");
        seen.visitors[index].conversation = Some(conversation.clone());
        seen.visitors[index].contact = session["contact_id"].as_str().map(str::to_owned);
    }
    let writer = {
        let (http, ingresses, observed, web, token) =
            (http.clone(), ingresses.clone(), observed.clone(), web.clone(), token.clone());
        writers.spawn(async move {
            let mut sequence = 0usize;
            while !sending.is_cancelled() {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(2500)) => {}
                    () = sending.cancelled() => break,
                }
                sequence += 1;
                let client = format!("v{index}-{sequence}");
                for attempt in 0..40 {
                    let address = ingresses[(sequence + attempt) % ingresses.len()];
                    let answer = http
                        .post(format!("http://{address}/v1/widget/{web}/messages"))
                        .bearer_auth(&token)
                        .json(&json!({"text": format!("visitor message {sequence}"), "client_msg_id": client}))
                        .send()
                        .await;
                    if answer.is_ok_and(|answer| answer.status() == 202) {
                        observed.lock().expect("observed").visitors[index].acked.push(client.clone());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
        })
    };
    let channel = format!("conversation:{conversation}");
    let mut last: Option<EntryId> = None;
    let mut attempt = index;
    'connections: while !stop.is_cancelled() {
        let Some(mut socket) = connect(&gateways, &mut attempt).await else { continue };
        let mut subscribe = json!({"op": "subscribe", "channel": channel});
        if let Some(offset) = last {
            subscribe["since"] = json!(offset.to_string());
            observed.lock().expect("observed").visitors[index].resumes += 1;
        }
        for frame in [json!({"op": "hello", "token": token, "protocol": 1}), subscribe] {
            if socket.send(Message::Text(frame.to_string().into())).await.is_err() {
                continue 'connections;
            }
        }
        loop {
            let frame = tokio::select! {
                () = stop.cancelled() => break 'connections,
                frame = tokio::time::timeout(Duration::from_secs(10), socket.next()) => frame,
            };
            let Ok(Some(Ok(Message::Text(text)))) = frame else { break };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
            if frame["op"] == "error" {
                break;
            }
            let (Some(offset), Some(id)) = (frame["offset"].as_str(), frame["event_id"].as_str()) else { continue };
            let Ok(offset) = offset.parse::<EntryId>() else { continue };
            last = Some(offset);
            observed.lock().expect("observed").visitors[index].events.push((offset, id.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = writer.await;
}

async fn stand_in(observed: Shared) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/deliver",
        axum::routing::post(move |body: String| {
            let observed = observed.clone();
            async move {
                if let Ok(value) = serde_json::from_str::<Value>(&body) {
                    let mut seen = observed.lock().expect("observed");
                    if let Some(id) = value["event_id"].as_str() {
                        *seen.delivered.entry(id.to_owned()).or_default() += 1;
                    }
                    if let Some(to) = value["to"].as_str() {
                        *seen.delivered_to.entry(to.to_owned()).or_default() += 1;
                    }
                }
                axum::Json(json!({"ok": true}))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

fn ready_addresses(roles: &[Role], kind: &str) -> Vec<SocketAddr> {
    roles.iter().filter(|role| role.roles == kind).map(|role| role.http).collect()
}

/// Posts one webhook until some ingress acknowledges it (or `attempts` run out).
async fn post_webhook(
    http: &reqwest::Client,
    ingresses: &[SocketAddr],
    tenant: &Tenant,
    body: &str,
    pick: usize,
) -> bool {
    let signature = sign(body.as_bytes(), &tenant.secret);
    for attempt in 0..40 {
        let address = ingresses[(pick + attempt) % ingresses.len()];
        let answer = http
            .post(format!("http://{address}/v1/webhooks/generic/{}", tenant.inbox))
            .header("Content-Type", "application/json")
            .header("X-Chatdesk-Signature", &signature)
            .body(body.to_owned())
            .send()
            .await;
        if answer.is_ok_and(|answer| answer.status() == 200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    false
}

/// Posts one reply until acknowledged; a retry carries the same `client_msg_id`, so it is the
/// same message. Returns its event id.
async fn post_reply(
    http: &reqwest::Client,
    ingresses: &[SocketAddr],
    tenant: &Tenant,
    conversation: &str,
    client_msg_id: &str,
    pick: usize,
) -> Option<String> {
    for attempt in 0..40 {
        let address = ingresses[(pick + attempt) % ingresses.len()];
        let answer = http
            .post(format!("http://{address}/v1/conversations/{conversation}/messages"))
            .bearer_auth(&tenant.token)
            .json(&json!({"text": format!("reply {client_msg_id}"), "client_msg_id": client_msg_id}))
            .send()
            .await;
        if let Ok(answer) = answer
            && answer.status() == 202
            && let Ok(body) = answer.json::<Value>().await
        {
            return body["event_id"].as_str().map(str::to_owned);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    None
}

/// An agent's socket on its tenant's inbox: reconnects to either gateway and resumes from the
/// last offset it received, until `stop`. The tenant's first socket also replies over the
/// WebSocket (`send`) while `sending` lasts; a send not yet acknowledged when its socket drops is
/// sent again, with the same `client_msg_id`, on the next connection.
async fn agent_socket(
    gateways: Vec<SocketAddr>,
    token: String,
    key: (usize, usize),
    observed: Shared,
    (sending, stop): (CancellationToken, CancellationToken),
) {
    let mut last: Option<EntryId> = None;
    let mut attempt = key.1;
    let replies = key.1 == 0;
    let mut pending: Vec<Value> = Vec::new();
    let mut sequence = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(700));
    let mut counted = false;
    while !stop.is_cancelled() {
        let Some(mut socket) = connect(&gateways, &mut attempt).await else { continue };
        let hello = json!({"op": "hello", "token": token, "protocol": 1});
        let mut subscribe = json!({"op": "subscribe", "channel": "inbox"});
        if let Some(offset) = last {
            subscribe["since"] = json!(offset.to_string());
            observed.lock().expect("observed").socket_resumes += 1;
        }
        let mut frames = vec![hello, subscribe];
        frames.extend(pending.iter().cloned());
        let mut sent = true;
        for frame in frames {
            sent &= socket.send(Message::Text(frame.to_string().into())).await.is_ok();
        }
        if !sent {
            continue;
        }
        loop {
            let frame = tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick(), if replies && !sending.is_cancelled() => {
                    let conversation = {
                        let seen = observed.lock().expect("observed");
                        let known = &seen.conversations[key.0];
                        (!known.is_empty()).then(|| known[sequence % known.len()].clone())
                    };
                    let Some(conversation) = conversation else { continue };
                    sequence += 1;
                    let send = json!({"op": "send", "conversation": conversation,
                        "text": format!("socket reply {sequence}"), "client_msg_id": format!("ws{}-{sequence}", key.0)});
                    pending.push(send.clone());
                    if socket.send(Message::Text(send.to_string().into())).await.is_err() {
                        break;
                    }
                    continue;
                }
                frame = tokio::time::timeout(Duration::from_secs(10), socket.next()) => frame,
            };
            let Ok(Some(Ok(Message::Text(text)))) = frame else { break };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
            if frame["op"] == "subscribed" && last.is_none() && !counted {
                counted = true;
                observed.lock().expect("observed").subscribed += 1;
            }
            if frame["op"] == "ack" {
                let client = frame["client_msg_id"].clone();
                pending.retain(|send| send["client_msg_id"] != client);
                if let Some(event) = frame["event_id"].as_str() {
                    observed.lock().expect("observed").replies[key.0].insert(event.to_owned());
                }
                continue;
            }
            if frame["op"] == "error" {
                break;
            }
            if frame["op"] != "event" {
                continue;
            }
            let (Some(offset), Some(id)) = (frame["offset"].as_str(), frame["event_id"].as_str()) else { continue };
            let Ok(offset) = offset.parse::<EntryId>() else { continue };
            last = Some(offset);
            observed.lock().expect("observed").sockets.entry(key).or_default().push((offset, id.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = chatdesk_binary(args.chatdesk.as_deref())?;
    let dir = std::env::temp_dir().join(format!("chatdesk-chaos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs"))?;
    let outcome = run(&args, &binary, &dir).await;
    match &outcome {
        Ok(true) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        _ => eprintln!("logs kept in {}", dir.join("logs").display()),
    }
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => std::process::exit(1),
        Err(error) => Err(error),
    }
}

/// The Redis under test: one server, or a cluster whose masters are killed one at a time.
enum Redis {
    Single(Box<RedisServer>),
    Cluster(RedisCluster),
}

impl Redis {
    async fn start(dir: &Path, cluster: bool) -> anyhow::Result<Self> {
        Ok(if cluster {
            Self::Cluster(RedisCluster::start_with(&dir.join("redis-cluster"), 3, RedisPersistence::AofAlways).await?)
        } else {
            let options = RedisOptions::new(dir.join("redis")).persistence(RedisPersistence::AofAlways);
            Self::Single(Box::new(RedisServer::start(options).await?))
        })
    }

    fn url(&self) -> String {
        match self {
            Self::Single(server) => server.url(),
            Self::Cluster(cluster) => cluster.url(),
        }
    }

    /// SIGKILLs the server (one master of a cluster, chosen by `rng`); returns what it killed.
    async fn kill(&mut self, rng: &mut Rng) -> (String, Option<usize>) {
        match self {
            Self::Single(server) => {
                server.kill().await;
                ("Redis".into(), None)
            }
            Self::Cluster(cluster) => {
                let index = rng.below(cluster.len());
                if let Some(node) = cluster.node_mut(index) {
                    node.kill().await;
                }
                (format!("Redis Cluster master {index}"), Some(index))
            }
        }
    }

    async fn restart(&mut self, node: Option<usize>) -> anyhow::Result<()> {
        match (self, node) {
            (Self::Single(server), _) => server.restart().await?,
            (Self::Cluster(cluster), Some(index)) => {
                if let Some(node) = cluster.node_mut(index) {
                    node.restart().await?;
                }
            }
            (Self::Cluster(_), None) => {}
        }
        Ok(())
    }

    async fn stop(&mut self) {
        match self {
            Self::Single(server) => server.stop().await,
            Self::Cluster(cluster) => cluster.stop().await,
        }
    }
}

async fn run(args: &Args, binary: &Path, dir: &Path) -> anyhow::Result<bool> {
    let mut rng = Rng(args.seed);
    let mut redis = Redis::start(dir, args.cluster).await?;
    let mut postgres = PostgresServer::start(PostgresOptions::new(dir.join("postgres"))).await?;
    let (redis_url, database_url) = (redis.url(), postgres.url());
    let streams_file = concat!(env!("CARGO_MANIFEST_DIR"), "/../streams.toml");
    let streams = StreamsConfig::from_toml_str(streams_file, &std::fs::read_to_string(streams_file)?)?;
    let prefix = "chaos";
    let flows = concat!(env!("CARGO_MANIFEST_DIR"), "/../flows");
    let secret: String = (0..48).map(|index| (b'a' + ((args.seed as usize + index * 7) % 26) as u8) as char).collect();
    // The settings docker-compose.yml gives every role (`ROLE_ENV`, checked against the file by
    // tests/topology.rs), with this run's values; the HTTP address comes with each `--http`.
    let mut env = Vec::new();
    for name in chatdesk_load_tests::ROLE_ENV {
        let value = match *name {
            "REDIS_URL" => redis_url.clone(),
            "DATABASE_URL" => database_url.clone(),
            "CHATDESK_JWT_SECRET" => secret.clone(),
            "CHATDESK_STREAMS" => streams_file.to_owned(),
            "CHATDESK_FLOWS" => flows.to_owned(),
            "CHATDESK_TRUSTED_PROXIES" => "127.0.0.1/32".to_owned(),
            "RUST_LOG" => "warn".to_owned(),
            "CHATDESK_HTTP_ADDR" => continue,
            other => bail!("docker-compose.yml gives every role {other}, which the chaos run does not set"),
        };
        env.push(((*name).to_owned(), value));
    }
    // The run's own: the stand-in provider listens on loopback, and the load is bounded by the
    // run rather than by the per-inbox limit.
    for (name, value) in [
        ("CHATDESK_OUTBOUND_ALLOW", "127.0.0.1/32"),
        ("CHATDESK_INGRESS_RATE_PER_INBOX", "1000"),
        ("CHATDESK_KEY_PREFIX", prefix),
    ] {
        env.push((name.to_owned(), value.to_owned()));
    }
    let admin = |args: &[&str]| chatdesk_load_tests::admin(binary, &database_url, args);
    let migrate = std::process::Command::new(binary).arg("migrate").env("DATABASE_URL", &database_url).output()?;
    if !migrate.status.success() {
        bail!("chatdesk migrate: {}", String::from_utf8_lossy(&migrate.stderr));
    }

    let observed: Shared = Arc::new(Mutex::new(Observed::default()));
    let receiver = stand_in(observed.clone()).await?;
    let mut tenants = Vec::new();
    for index in 0..args.tenants {
        let email = format!("owner{index}@chaos.test");
        let tenant = admin(&[
            "tenant",
            "create",
            "--name",
            &format!("Tenant {index}"),
            "--owner-email",
            &email,
            "--password",
            "chaos-pass-1",
        ])?;
        let tenant_id = tenant["tenant_id"].as_str().context("tenant_id")?.to_owned();
        let inbox = admin(&[
            "inbox",
            "create",
            "--tenant",
            &tenant_id,
            "--kind",
            "generic",
            "--name",
            "hooks",
            "--outbound-url",
            &format!("http://{receiver}/deliver"),
        ])?;
        let web = admin(&["inbox", "create", "--tenant", &tenant_id, "--kind", "web", "--name", "site"])?;
        tenants.push((
            web["inbox_id"].as_str().context("web inbox_id")?.to_owned(),
            tenant_id.parse::<uuid::Uuid>()?,
            email,
            inbox["inbox_id"].as_str().context("inbox_id")?.to_owned(),
            inbox["secret"].as_str().context("secret")?.to_owned(),
        ));
    }

    let launcher = Launcher { binary: binary.to_path_buf(), logs: dir.join("logs"), env };
    // The topology of docker-compose.yml: its role services and their replica counts.
    let mut roles = Vec::new();
    for deployed in chatdesk_load_tests::deployed_roles(chatdesk_load_tests::COMPOSE)? {
        for index in 1..=deployed.replicas {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            roles.push(Role {
                name: format!("{}-{index}", deployed.role),
                roles: deployed.role.clone(),
                http: format!("127.0.0.1:{port}").parse()?,
                child: None,
                kills: 0,
                restarts: 0,
            });
        }
    }
    for role in &mut roles {
        launcher.start(role).await?;
    }
    let ingresses = ready_addresses(&roles, "ingress");
    let gateways = ready_addresses(&roles, "gateway");
    let http = chatdesk_outbound::http_client(Duration::from_secs(5))?;
    let mut ready = Vec::new();
    for (web, id, email, inbox, secret) in tenants {
        let login = http
            .post(format!("http://{}/v1/auth/login", ingresses[0]))
            .json(&json!({"email": email, "password": "chaos-pass-1"}))
            .send()
            .await?
            .json::<Value>()
            .await?;
        ready.push(Tenant { id, inbox, web, secret, token: login["token"].as_str().context("token")?.to_owned() });
    }
    let tenants = Arc::new(ready);
    {
        let mut seen = observed.lock().expect("observed");
        seen.webhooks = vec![HashSet::new(); tenants.len()];
        seen.replies = vec![HashSet::new(); tenants.len()];
        seen.conversations = vec![Vec::new(); tenants.len()];
        seen.campaigns = vec![None; tenants.len()];
        seen.visitors = vec![Visitor::default(); tenants.len()];
    }
    println!(
        "chaos: seed {}, {} s, {} tenants, {} webhooks/s, a role killed every {} s; logs in {}",
        args.seed,
        args.seconds,
        tenants.len(),
        args.rate,
        args.kill_every,
        dir.join("logs").display()
    );

    // Agent sockets, two per tenant, before any load.
    let stop_sockets = CancellationToken::new();
    let stop_load = CancellationToken::new();
    let mut sockets = Vec::new();
    for (index, tenant) in tenants.iter().enumerate() {
        for socket in 0..2 {
            sockets.push(tokio::spawn(agent_socket(
                gateways.clone(),
                tenant.token.clone(),
                (index, socket),
                observed.clone(),
                (stop_load.clone(), stop_sockets.clone()),
            )));
        }
    }
    // The load starts once every agent socket follows its inbox.
    let expected = tenants.len() * 2;
    let deadline = Instant::now() + Duration::from_secs(60);
    while observed.lock().expect("observed").subscribed < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A campaign per tenant, sending through the broadcaster and the senders all along the run.
    let recipients_per_campaign = (args.seconds as usize * 4).clamp(20, 2_000);
    for (index, tenant) in tenants.iter().enumerate() {
        let recipients: Vec<String> = (0..recipients_per_campaign).map(|n| format!("camp{index}-{n}")).collect();
        let body = json!({
            "inbox_id": tenant.inbox,
            "text": "Hello {{name}}",
            "rate_per_sec": 5,
            "recipients": recipients.iter().map(|to| json!({"to": to, "vars": {"name": to}})).collect::<Vec<_>>(),
        });
        let created = http
            .post(format!("http://{}/v1/campaigns", ingresses[index % ingresses.len()]))
            .bearer_auth(&tenant.token)
            .header("Idempotency-Key", format!("chaos-{index}"))
            .json(&body)
            .send()
            .await?;
        let status = created.status();
        let created: Value = created.json().await?;
        let id = created["campaign"]["id"]
            .as_str()
            .with_context(|| format!("campaign not created ({status}): {created}"))?;
        observed.lock().expect("observed").campaigns[index] = Some((id.to_owned(), recipients));
    }

    // A widget visitor per tenant.
    let visitor_writers = TaskTracker::new();
    for (index, tenant) in tenants.iter().enumerate() {
        sockets.push(tokio::spawn(visitor(
            http.clone(),
            ingresses.clone(),
            gateways.clone(),
            (index, tenant.web.clone()),
            observed.clone(),
            (stop_load.clone(), stop_sockets.clone()),
            visitor_writers.clone(),
        )));
    }

    // The load: webhooks at the rate, a reply every 200 ms, the conversation list every 2 s.
    let mut load = Vec::new();
    {
        let (http, tenants, ingresses, observed, stop) =
            (http.clone(), tenants.clone(), ingresses.clone(), observed.clone(), stop_load.clone());
        let rate = args.rate.max(1);
        load.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            let mut posts = tokio::task::JoinSet::new();
            let mut sequence = 0usize;
            while !stop.is_cancelled() {
                tick.tick().await;
                sequence += 1;
                let tenant_index = sequence % tenants.len();
                let (http, tenants, ingresses, observed) =
                    (http.clone(), tenants.clone(), ingresses.clone(), observed.clone());
                posts.spawn(async move {
                    let id = format!("w{tenant_index}-{sequence}");
                    let body = json!({"message_id": id, "from": {"id": format!("c{}", sequence % 23), "name": "Chaos"},
                        "text": format!("message {sequence}")})
                    .to_string();
                    if post_webhook(&http, &ingresses, &tenants[tenant_index], &body, sequence).await {
                        observed.lock().expect("observed").webhooks[tenant_index].insert(id);
                    }
                });
            }
            while posts.join_next().await.is_some() {}
        }));
    }
    {
        let (http, tenants, ingresses, observed, stop) =
            (http.clone(), tenants.clone(), ingresses.clone(), observed.clone(), stop_load.clone());
        let mut picks = Rng(args.seed ^ 0x5EED);
        load.push(tokio::spawn(async move {
            let mut replies = tokio::task::JoinSet::new();
            let mut sequence = 0usize;
            let mut refreshed = Instant::now() - Duration::from_secs(10);
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if refreshed.elapsed() > Duration::from_secs(2) {
                    refreshed = Instant::now();
                    for (index, tenant) in tenants.iter().enumerate() {
                        let address = ingresses[index % ingresses.len()];
                        let Ok(answer) = http
                            .get(format!("http://{address}/v1/conversations?limit=200&inbox={}", tenant.inbox))
                            .bearer_auth(&tenant.token)
                            .send()
                            .await
                        else {
                            continue;
                        };
                        if let Ok(page) = answer.json::<Value>().await
                            && let Some(items) = page["items"].as_array()
                        {
                            observed.lock().expect("observed").conversations[index] =
                                items.iter().filter_map(|item| item["id"].as_str().map(str::to_owned)).collect();
                        }
                    }
                }
                sequence += 1;
                let tenant_index = picks.below(tenants.len());
                let conversation = {
                    let seen = observed.lock().expect("observed");
                    let known = &seen.conversations[tenant_index];
                    if known.is_empty() {
                        continue;
                    }
                    known[picks.below(known.len())].clone()
                };
                let (http, tenants, ingresses, observed) =
                    (http.clone(), tenants.clone(), ingresses.clone(), observed.clone());
                replies.spawn(async move {
                    let client_msg_id = format!("r{tenant_index}-{sequence}");
                    let tenant = &tenants[tenant_index];
                    if let Some(event) =
                        post_reply(&http, &ingresses, tenant, &conversation, &client_msg_id, sequence).await
                    {
                        observed.lock().expect("observed").replies[tenant_index].insert(event);
                    }
                });
            }
            while replies.join_next().await.is_some() {}
        }));
    }

    // The faults.
    let started = Instant::now();
    let run_for = Duration::from_secs(args.seconds);
    let (redis_at, postgres_at, pause_at) = (run_for / 3, run_for * 2 / 3, run_for / 2);
    let (mut redis_done, mut postgres_done, mut pause_done) = (false, false, false);
    let mut next_kill = Duration::from_secs_f64(rng.between(1.0, args.kill_every));
    let fault = |text: String| {
        println!("  {:>6.1} s  {text}", started.elapsed().as_secs_f64());
        observed.lock().expect("observed").faults.push(text);
    };
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = started.elapsed();
        if !redis_done && now >= redis_at {
            redis_done = true;
            let (what, node) = redis.kill(&mut rng).await;
            fault(format!("{what} SIGKILL"));
            tokio::time::sleep(Duration::from_secs(1)).await;
            redis.restart(node).await?;
            fault(format!("{what} restarted"));
        }
        if !postgres_done && now >= postgres_at {
            postgres_done = true;
            postgres.kill().await;
            fault("PostgreSQL killed".into());
            tokio::time::sleep(Duration::from_secs(2)).await;
            postgres.restart().await?;
            fault("PostgreSQL restarted".into());
        }
        if !pause_done && now >= pause_at {
            pause_done = true;
            let gateway = roles.iter().filter(|role| role.roles == "gateway").nth(rng.below(2)).context("gateway")?;
            if let Some(pid) = gateway.child.as_ref().and_then(Child::id) {
                signal(pid, "STOP");
                fault(format!("{} SIGSTOP", gateway.name));
                tokio::time::sleep(Duration::from_secs(5)).await;
                signal(pid, "CONT");
                fault(format!("{} SIGCONT", gateway.name));
            }
        }
        if now >= next_kill {
            next_kill = now + Duration::from_secs_f64(rng.between(args.kill_every * 0.5, args.kill_every * 1.5));
            let index = rng.below(roles.len());
            let role = &mut roles[index];
            if let Some(mut child) = role.child.take() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            role.kills += 1;
            fault(format!("{} SIGKILL", role.name));
            tokio::time::sleep(Duration::from_secs_f64(rng.between(0.2, 1.5))).await;
            launcher.start(role).await?;
        }
    }
    stop_load.cancel();
    for task in load {
        let _ = task.await;
    }
    // A visitor's message sent as the load stopped is answered (and counted) before the drain.
    visitor_writers.close();
    let _ = tokio::time::timeout(Duration::from_secs(30), visitor_writers.wait()).await;
    println!("  {:>6.1} s  load stopped; draining", started.elapsed().as_secs_f64());

    // Drain: the writer and the sender have nothing left.
    let redis_client =
        chatdesk_streams::RedisConnector::new(chatdesk_streams::RedisSettings::new(&redis_url))?.shared().await?;
    let keys = KeyScheme::new(prefix).map_err(anyhow::Error::msg)?;
    let drained = drain(&redis_client, &keys, &streams).await;
    let pool = chatdesk_store::connect(&database_url, 4).await?;
    let campaigns = finished_campaigns(&http, &ingresses, &tenants, &observed).await;
    let drained = drained && drain(&redis_client, &keys, &streams).await;
    // The sockets catch up with everything stored.
    let tenant_ids: Vec<uuid::Uuid> = tenants.iter().map(|tenant| tenant.id).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stored_events(&pool, &tenant_ids).await?;
        let behind = {
            let seen = observed.lock().expect("observed");
            seen.sockets.iter().any(|((tenant, _), events)| {
                let got: HashSet<&str> = events.iter().map(|(_, id)| id.as_str()).collect();
                stored.get(tenant).is_some_and(|ids| ids.iter().any(|id| !got.contains(id.as_str())))
            })
        };
        if !behind || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop_sockets.cancel();
    for socket in sockets {
        let _ = socket.await;
    }
    let stores = Stores { pool: &pool, redis: &redis_client, prefix, tenants: &tenant_ids, streams: &streams };
    let ok = tally(stores, &observed, &roles, &campaigns, (drained, started.elapsed())).await?;
    for role in &mut roles {
        if let Some(pid) = role.child.as_ref().and_then(Child::id) {
            signal(pid, "INT");
        }
    }
    for role in &mut roles {
        if let Some(child) = role.child.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
        }
    }
    redis.stop().await;
    postgres.stop().await;
    Ok(ok)
}

/// Each tenant's campaign once it has finished (or as it stands after 180 s).
async fn finished_campaigns(
    http: &reqwest::Client,
    ingresses: &[SocketAddr],
    tenants: &[Tenant],
    observed: &Shared,
) -> Vec<Value> {
    let ids: Vec<Option<String>> = observed
        .lock()
        .expect("observed")
        .campaigns
        .iter()
        .map(|campaign| campaign.as_ref().map(|(id, _)| id.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut found = vec![Value::Null; tenants.len()];
    loop {
        for (index, tenant) in tenants.iter().enumerate() {
            let Some(id) = &ids[index] else { continue };
            if found[index]["status"] == "finished" {
                continue;
            }
            if let Ok(answer) =
                http.get(format!("http://{}/v1/campaigns/{id}", ingresses[0])).bearer_auth(&tenant.token).send().await
                && let Ok(campaign) = answer.json::<Value>().await
            {
                found[index] = campaign;
            }
        }
        if found.iter().all(|campaign| campaign["status"] == "finished") || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until the durable groups have nothing pending or unread and the delivery queue is empty.
async fn drain(redis: &chatdesk_streams::RedisClient, keys: &KeyScheme, streams: &StreamsConfig) -> bool {
    use fred::prelude::*;
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        let mut busy = false;
        for (family, group) in [("events", "writer"), ("send", "sender")] {
            let Some(stream) = streams.stream(family) else { continue };
            for partition in 0..stream.partitions {
                let key = keys.partition(&stream.name, partition).stream;
                let groups: Vec<HashMap<String, fred::types::Value>> =
                    redis.xinfo_groups(&key).await.unwrap_or_default();
                let Some(info) = groups
                    .iter()
                    .find(|info| info.get("name").and_then(|name| name.as_string()).as_deref() == Some(group))
                else {
                    continue;
                };
                let number = |field: &str| info.get(field).and_then(fred::types::Value::as_u64);
                // Redis 7.0's `lag` can stay above 0 after claims and scripted appends: compare
                // the group's last delivered entry with the stream's newest instead.
                let delivered = info
                    .get("last-delivered-id")
                    .and_then(|id| id.as_string())
                    .and_then(|id| id.parse::<EntryId>().ok())
                    .unwrap_or(EntryId::new(0, 0));
                let newest: Vec<(String, HashMap<String, String>)> =
                    redis.xrevrange(&key, "+", "-", Some(1)).await.unwrap_or_default();
                let unread =
                    newest.first().and_then(|(id, _)| id.parse::<EntryId>().ok()).is_some_and(|id| id > delivered);
                if number("pending") != Some(0) || unread {
                    busy = true;
                }
                if family == "send" {
                    let jobs: u64 =
                        redis.hlen(keys.partition(&stream.name, partition).key("sendq.jobs")).await.unwrap_or(0);
                    busy |= jobs > 0;
                }
            }
        }
        if !busy {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Per tenant (its index in `tenants`), the stored events' ids.
async fn stored_events(
    pool: &chatdesk_store::Pool,
    tenants: &[uuid::Uuid],
) -> anyhow::Result<HashMap<usize, Vec<String>>> {
    let rows: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("SELECT tenant_id, event_id FROM events").fetch_all(pool).await?;
    let mut stored: HashMap<usize, Vec<String>> = HashMap::new();
    for (tenant, id) in rows {
        if let Some(index) = tenants.iter().position(|candidate| *candidate == tenant) {
            stored.entry(index).or_default().push(id.to_string());
        }
    }
    Ok(stored)
}

/// Where the tally reads what was stored.
struct Stores<'a> {
    pool: &'a chatdesk_store::Pool,
    redis: &'a chatdesk_streams::RedisClient,
    prefix: &'a str,
    tenants: &'a [uuid::Uuid],
    streams: &'a StreamsConfig,
}

async fn tally(
    Stores { pool, redis, prefix, tenants, streams }: Stores<'_>,
    observed: &Shared,
    roles: &[Role],
    campaigns: &[Value],
    (drained, took): (bool, Duration),
) -> anyhow::Result<bool> {
    use fred::prelude::*;
    let stored = stored_events(pool, tenants).await?;
    let inbound: Vec<(String, i64)> = sqlx::query_as(
        "SELECT provider_message_id, count(*) FROM messages WHERE direction = 'inbound' GROUP BY provider_message_id",
    )
    .fetch_all(pool)
    .await?;
    let inbound: HashMap<String, i64> = inbound.into_iter().collect();
    // Each conversation's messages: what a visitor's socket must have shown.
    let messages: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("SELECT conversation_id, event_id FROM messages ORDER BY offset_ms, offset_seq")
            .fetch_all(pool)
            .await?;
    let mut visitor_stored: HashMap<String, Vec<String>> = HashMap::new();
    for (conversation, event) in messages {
        visitor_stored.entry(conversation.to_string()).or_default().push(event.to_string());
    }
    let outbound: Vec<(uuid::Uuid, Option<String>)> =
        sqlx::query_as("SELECT event_id, status FROM messages WHERE direction = 'outbound'").fetch_all(pool).await?;
    let outbound: HashMap<String, Option<String>> =
        outbound.into_iter().map(|(id, status)| (id.to_string(), status)).collect();
    // Every family's dead-letter stream, partition by partition (each its own slot on a cluster).
    let keys = KeyScheme::new(prefix).map_err(anyhow::Error::msg)?;
    let mut dead_letters = 0u64;
    for stream in streams.streams.values() {
        for partition in 0..stream.partitions {
            let key = keys.partition(&stream.name, partition).dead_letters;
            dead_letters += redis.xlen::<u64, _>(key.as_str()).await.unwrap_or(0);
        }
    }
    // A delivery's recorded ending leaves with its job: once the queue is empty, none is left,
    // however often a sender was killed between its record and its finish.
    let (mut endings, mut endings_uncounted) = (0u64, 0usize);
    if let Some(send) = streams.stream("send") {
        for partition in 0..send.partitions {
            let key = keys.partition(&send.name, partition).key("sendq.endings");
            match redis.hlen::<u64, _>(key.as_str()).await {
                Ok(count) => endings += count,
                Err(_) => endings_uncounted += 1,
            }
        }
    }

    let seen = observed.lock().expect("observed");
    let mut failures = Vec::new();
    let (mut webhooks, mut replies) = (0usize, 0usize);
    for (tenant, acked) in seen.webhooks.iter().enumerate() {
        webhooks += acked.len();
        for id in acked {
            match inbound.get(id).copied().unwrap_or(0) {
                1 => {}
                0 => failures.push(format!("tenant {tenant}: acknowledged webhook {id} is not stored")),
                many => failures.push(format!("tenant {tenant}: webhook {id} stored {many} times")),
            }
        }
    }
    let (mut reached, mut repeated) = (0usize, 0u64);
    for (tenant, acked) in seen.replies.iter().enumerate() {
        replies += acked.len();
        for id in acked {
            match outbound.get(id) {
                None => failures.push(format!("tenant {tenant}: acknowledged reply {id} is not stored")),
                // The provider's answer came back through the sender and the writer.
                Some(status) if status.as_deref() != Some("sent") => {
                    failures.push(format!("tenant {tenant}: delivered reply {id} is stored as {status:?}, not sent"));
                }
                Some(_) => {}
            }
            match seen.delivered.get(id).copied().unwrap_or(0) {
                0 => failures.push(format!("tenant {tenant}: acknowledged reply {id} never reached the provider")),
                times => {
                    reached += 1;
                    repeated += u64::from(times - 1);
                }
            }
        }
    }
    let mut socket_events = 0usize;
    for ((tenant, socket), events) in &seen.sockets {
        socket_events += events.len();
        let mut ids = HashSet::new();
        for pair in events.windows(2) {
            if pair[1].0 <= pair[0].0 {
                failures.push(format!(
                    "socket {tenant}/{socket}: {} after {} (reordered or repeated)",
                    pair[1].0, pair[0].0
                ));
            }
        }
        for (_, id) in events {
            if !ids.insert(id.as_str()) {
                failures.push(format!("socket {tenant}/{socket}: event {id} twice"));
            }
        }
        let missing = stored.get(tenant).map_or(0, |all| all.iter().filter(|id| !ids.contains(id.as_str())).count());
        if missing > 0 {
            failures.push(format!("socket {tenant}/{socket}: {missing} stored events never arrived"));
        }
    }
    if seen.sockets.len() < seen.webhooks.len() * 2 {
        failures.push(format!("only {} of {} sockets received anything", seen.sockets.len(), seen.webhooks.len() * 2));
    }
    let mut visitor_messages = 0usize;
    for (tenant, visitor) in seen.visitors.iter().enumerate() {
        let (Some(conversation), Some(contact)) = (&visitor.conversation, &visitor.contact) else {
            failures.push(format!("tenant {tenant}: the widget visitor never got a session"));
            continue;
        };
        visitor_messages += visitor.acked.len();
        for client in &visitor.acked {
            match inbound.get(&format!("widget:{contact}:{client}")).copied().unwrap_or(0) {
                1 => {}
                times => failures.push(format!("tenant {tenant}: visitor message {client} stored {times} times")),
            }
        }
        let shown = visitor_stored.get(conversation).cloned().unwrap_or_default();
        let got: Vec<&str> = visitor.events.iter().map(|(_, id)| id.as_str()).collect();
        if got.iter().collect::<HashSet<_>>().len() != got.len() {
            failures.push(format!("tenant {tenant}: the visitor's socket got an event twice"));
        }
        if visitor.events.windows(2).any(|pair| pair[1].0 <= pair[0].0) {
            failures.push(format!("tenant {tenant}: the visitor's socket got events out of order"));
        }
        let missing = shown.iter().filter(|id| !got.contains(&id.as_str())).count();
        if missing > 0 {
            failures.push(format!(
                "tenant {tenant}: {missing} messages of the visitor's conversation never reached its socket"
            ));
        }
    }
    let (mut recipients, mut campaign_repeats) = (0usize, 0u64);
    for (tenant, campaign) in seen.campaigns.iter().enumerate() {
        let Some((id, to)) = campaign else { continue };
        let found = &campaigns[tenant];
        let sent = found["counts"]["sent"].as_u64().unwrap_or(0) as usize;
        if found["status"] != "finished" || sent != to.len() {
            failures.push(format!(
                "tenant {tenant}: campaign {id} is {} with {sent} of {} sent: {}",
                found["status"],
                to.len(),
                found["counts"]
            ));
        }
        for address in to {
            recipients += 1;
            match seen.delivered_to.get(address).copied().unwrap_or(0) {
                0 => failures.push(format!("tenant {tenant}: campaign recipient {address} never reached the provider")),
                times => campaign_repeats += u64::from(times - 1),
            }
        }
    }
    if dead_letters > 0 {
        failures.push(format!("{dead_letters} dead letters"));
    }
    if !drained {
        failures.push("the writer or the sender did not drain within 180 s".into());
    }
    // Undrained, jobs are still queued and their endings with them: that failure is the drain's.
    if drained && endings > 0 {
        failures.push(format!("{endings} recorded delivery endings outlived their jobs"));
    }
    if endings_uncounted > 0 {
        failures.push(format!("recorded delivery endings of {endings_uncounted} send partitions could not be counted"));
    }

    println!("\ntally after {:.0} s:", took.as_secs_f64());
    println!("  faults: {}", seen.faults.len());
    for role in roles {
        let restarts =
            if role.restarts > 0 { format!(", exited at start {} times", role.restarts) } else { String::new() };
        println!("    {:<13} SIGKILLed {} times{restarts}", role.name, role.kills);
    }
    println!(
        "  acknowledged webhooks: {webhooks}, each stored once: {}",
        if failures.iter().any(|f| f.contains("webhook")) { "NO" } else { "yes" }
    );
    println!(
        "  acknowledged replies:  {replies}, stored: {}, reached the provider: {reached} (repeats: {repeated})",
        replies - failures.iter().filter(|f| f.contains("reply") && f.contains("not stored")).count()
    );
    println!(
        "  widget visitors: {} messages, each stored once and every message of their conversations on their sockets: {} ({} resumes)",
        visitor_messages,
        if failures.iter().any(|failure| failure.contains("visitor")) { "NO" } else { "yes" },
        seen.visitors.iter().map(|visitor| visitor.resumes).sum::<u64>()
    );
    let campaigns_ok = if failures.iter().any(|failure| failure.contains("campaign")) { "NO" } else { "yes" };
    println!(
        "  campaign recipients: {recipients}, each sent and delivered: {campaigns_ok} (repeats: {campaign_repeats})"
    );
    println!("  stored events: {}", stored.values().map(Vec::len).sum::<usize>());
    println!("  socket events: {socket_events} over {} sockets, {} resumes", seen.sockets.len(), seen.socket_resumes);
    println!("  dead letters: {dead_letters}");
    println!("  recorded delivery endings left: {endings}");
    for failure in failures.iter().take(30) {
        println!("  FAIL {failure}");
    }
    if failures.len() > 30 {
        println!("  … and {} more", failures.len() - 30);
    }
    println!("{}", if failures.is_empty() { "nothing lost, nothing twice" } else { "FAILED" });
    Ok(failures.is_empty())
}
