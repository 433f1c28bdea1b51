//! Outbound delivery throughput: agent replies appended to the send stream, delivered by a
//! `chatdesk up` (private Redis and PostgreSQL, every role) to a generic-channel receiver in this
//! process, with the rate limits off. Reports messages/s and the latency from the append to the
//! receiver, for receivers that answer at once and after a provider-like delay, and the rate
//! after the last append (the sender draining what is queued then, if anything).
//!
//! Then the queued-first drain: the receiver holds every call while the replies are appended, so
//! they all wait in the delivery queue (the first `CHATDESK_SEND_CONCURRENCY` of them in calls),
//! and is timed from its opening to the last arrival. In the same run, the BullMQ peer in
//! `load-tests/peers/bullmq` enqueues as many jobs first and drains them to the same receiver
//! answering at once, and the two drain rates are compared (`--no-peer` skips the peer).
//!
//! ```text
//! cargo build --release -p chatdesk
//! cargo run --release -p chatdesk-load-tests --bin sender-throughput -- [--messages 5000] [--conversations 200] [--delays 0,50] [--no-peer]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chatdesk_api::ingress::signature::sign;
use chatdesk_conversations::Reply;
use chatdesk_core::events::{Actor, SenderKind};
use chatdesk_core::{KeyScheme, StreamsConfig};
use chatdesk_load_tests::{Connection, Up, chatdesk_binary, node_peer, percentile, run_node_peer};
use chatdesk_streams::{Producer, RedisConnector, RedisSettings};
use clap::Parser;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Messages/s and append-to-provider latency of the sender over loopback")]
struct Args {
    /// Replies per run.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Conversations they are spread over (each conversation's messages go out one at a time).
    #[arg(long, default_value_t = 200)]
    conversations: usize,
    /// The receiver's answer delay per run, in milliseconds (a provider's latency).
    #[arg(long, value_delimiter = ',', default_value = "0,50")]
    delays: Vec<u64>,
    /// Skip the BullMQ peer (it needs Node.js; its packages are installed when missing).
    #[arg(long)]
    no_peer: bool,
    /// The chatdesk binary; defaults to the one next to this benchmark (same build profile).
    #[arg(long)]
    chatdesk: Option<PathBuf>,
}

const APPENDERS: usize = 64;

/// The issue's figure for the peer: one BullMQ worker running 50 jobs at once.
const PEER_CONCURRENCY: usize = 50;

#[derive(Clone)]
struct Receiver {
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    delay: Arc<Mutex<Duration>>,
    /// `false` holds every call until it turns `true`.
    open: Arc<tokio::sync::watch::Sender<bool>>,
    /// Calls that arrived while held.
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for Receiver {
    fn default() -> Self {
        Self {
            arrivals: Arc::default(),
            delay: Arc::default(),
            open: Arc::new(tokio::sync::watch::Sender::new(true)),
            held: Arc::default(),
        }
    }
}

impl Receiver {
    /// Every arrival, once `messages` have arrived (each is timed as it arrives, not here).
    async fn all_arrived(&self, messages: usize) -> anyhow::Result<HashMap<String, Instant>> {
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.arrivals.lock().expect("arrivals").len() < messages {
            anyhow::ensure!(Instant::now() < deadline, "not every message arrived within 10 minutes");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(self.arrivals.lock().expect("arrivals").clone())
    }
}

async fn start_receiver(receiver: Receiver) -> anyhow::Result<SocketAddr> {
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let receiver = receiver.clone();
        async move {
            let mut open = receiver.open.subscribe();
            if !*open.borrow_and_update() {
                receiver.held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = open.wait_for(|open| *open).await;
            }
            let arrived = Instant::now();
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(id) = value["event_id"].as_str() {
                receiver.arrivals.lock().expect("arrivals").entry(id.to_owned()).or_insert(arrived);
            }
            let delay = *receiver.delay.lock().expect("delay");
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            axum::Json(serde_json::json!({"id": "ok"}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let receiver = Receiver::default();
    let receiver_address = start_receiver(receiver.clone()).await?;
    let binary = chatdesk_binary(args.chatdesk.as_deref())?;
    // The receiver is on loopback, which the outbound policy refuses unless allowed.
    let allowed = receiver_address.to_string();
    let up = Up::start(
        binary,
        &[
            ("CHATDESK_INGRESS_RATE_PER_INBOX", "1000000"),
            ("CHATDESK_SEND_LIMITS", "generic.account=off"),
            ("CHATDESK_OUTBOUND_ALLOW", &allowed),
            // The queued-first drain holds calls while it appends; they must not time out.
            ("CHATDESK_SEND_TIMEOUT", "300s"),
        ],
    )
    .await?;
    let tenant = up.tenant("owner@bench.test")?;
    let tenant_id: Uuid = tenant.parse()?;
    let outbound = format!("http://{receiver_address}/replies");
    let inbox = up.admin(&[
        "inbox",
        "create",
        "--tenant",
        &tenant_id.to_string(),
        "--kind",
        "generic",
        "--name",
        "bench",
        "--outbound-url",
        &outbound,
    ])?;
    let path = inbox["webhook_path"].as_str().context("webhook_path")?.to_owned();
    let secret = inbox["secret"].as_str().context("secret")?.to_owned();

    // One customer message per conversation, so each has a stored contact to send to.
    let mut connection = Connection::open(up.address).await?;
    for index in 0..args.conversations {
        let body = serde_json::json!({"message_id": format!("seed-{index}"), "from": {"id": format!("c-{index}")}, "text": "hi"})
            .to_string();
        let status = connection.post(&path, &sign(body.as_bytes(), &secret), &body).await?;
        anyhow::ensure!(status == 200, "seeding answered {status}");
    }
    let pool = chatdesk_store::connect(&up.database_url, 2).await?;
    let targets: Vec<Uuid> = loop {
        let rows: Vec<(Uuid, Uuid)> = sqlx::query_as("SELECT id, contact_id FROM conversations WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_all(&pool)
            .await?;
        if rows.len() == args.conversations {
            break rows.into_iter().map(|(conversation, _)| conversation).collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let redis = RedisConnector::new(RedisSettings::new(&up.redis_url))?.shared().await?;
    let streams = Arc::new(StreamsConfig::from_toml_str("streams.toml", include_str!("../../streams.toml"))?);
    let keys = KeyScheme::new("chatdesk").map_err(anyhow::Error::msg)?;
    let producer = Producer::new(redis.clone(), keys.clone(), streams);
    // Replies go through the same command as REST (conversation looked up, then appended).
    let reply = Reply::new(producer, redis, keys, pool.clone());
    println!(
        "sender-throughput: {} replies over {} conversations to a generic receiver over loopback (`chatdesk up`, rate limits off)",
        args.messages, args.conversations
    );
    println!(
        "{:>9} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "delay ms", "appended/s", "delivered/s", "after ap./s", "p50 ms", "p99 ms", "max ms"
    );
    for &delay in &args.delays {
        *receiver.delay.lock().expect("delay") = Duration::from_millis(delay);
        receiver.arrivals.lock().expect("arrivals").clear();
        let started = Instant::now();
        let appended = append_all(&reply, tenant_id, &targets, args.messages).await?;
        let appended_in = started.elapsed();
        let arrivals = receiver.all_arrived(args.messages).await?;
        let last = arrivals.values().max().copied().unwrap_or(started);
        let mut latencies: Vec<Duration> = appended
            .iter()
            .filter_map(|(id, at)| arrivals.get(id).map(|arrived| arrived.saturating_duration_since(*at)))
            .collect();
        latencies.sort();
        let rate = args.messages as f64 / last.duration_since(started).as_secs_f64();
        let append_rate = args.messages as f64 / appended_in.as_secs_f64();
        // Once the appenders are done, the sender has the cores to itself (besides the writer
        // storing statuses): its own rate, draining what is queued.
        let appends_done = started + appended_in;
        let after = arrivals.values().filter(|arrived| **arrived > appends_done).count();
        let drain = after as f64 / last.saturating_duration_since(appends_done).as_secs_f64().max(1e-3);
        println!(
            "{delay:>9} {append_rate:>12.0} {rate:>12.0} {drain:>12.0} {:>10.1} {:>10.1} {:>10.1}",
            percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        );
    }
    println!("queued first (every reply appended while the receiver holds its calls, then timed from its opening):");
    let mut instant_drain = None;
    for &delay in &args.delays {
        let drain = queued_first_drain(&receiver, &reply, tenant_id, &targets, args.messages, delay).await?;
        if delay == 0 {
            instant_drain = Some(drain);
        }
    }
    pool.close().await;
    // The peer gets the cores chatdesk had, not a share of them.
    up.stop().await;
    if !args.no_peer {
        compare_with_bullmq(&args, &receiver, receiver_address, instant_drain).await?;
    }
    Ok(())
}

/// Appends `messages` replies round-robin over `targets` from many appenders at once, so the
/// producer side outpaces the sender being measured; each reply's event id with its time.
async fn append_all(
    reply: &Reply,
    tenant: Uuid,
    targets: &[Uuid],
    messages: usize,
) -> anyhow::Result<HashMap<String, Instant>> {
    let mut appenders = tokio::task::JoinSet::new();
    for worker in 0..APPENDERS {
        let (reply, targets) = (reply.clone(), targets.to_vec());
        appenders.spawn(async move {
            let mut appended = Vec::new();
            for index in (worker..messages).step_by(APPENDERS) {
                let conversation = targets[index % targets.len()];
                let sender = Actor { kind: SenderKind::Agent, id: None };
                let accepted = reply.send(tenant, conversation, sender, "benchmark reply", None).await?;
                appended.push((accepted.event_id.to_string(), Instant::now()));
            }
            anyhow::Ok(appended)
        });
    }
    let mut appended: HashMap<String, Instant> = HashMap::with_capacity(messages);
    while let Some(done) = appenders.join_next().await {
        appended.extend(done??);
    }
    Ok(appended)
}

/// The sender's drain of a full queue, as BullMQ's is measured: the receiver holds every call
/// while `messages` replies are appended and admitted, then opens and answers after `delay_ms`;
/// deliveries/s from the opening to the last arrival, counting only the replies that were not
/// already held in a call (those were leased and sent before the clock started).
async fn queued_first_drain(
    receiver: &Receiver,
    reply: &Reply,
    tenant: Uuid,
    targets: &[Uuid],
    messages: usize,
    delay_ms: u64,
) -> anyhow::Result<f64> {
    *receiver.delay.lock().expect("delay") = Duration::from_millis(delay_ms);
    receiver.arrivals.lock().expect("arrivals").clear();
    receiver.held.store(0, std::sync::atomic::Ordering::Relaxed);
    receiver.open.send_replace(false);
    let appended = append_all(reply, tenant, targets, messages).await?;
    // Admission takes milliseconds: once no call has joined the held ones for half a second,
    // every reply waits in the queue or a call.
    let mut held = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = receiver.held.load(std::sync::atomic::Ordering::Relaxed);
        if now == held {
            break;
        }
        held = now;
    }
    let opened = Instant::now();
    receiver.open.send_replace(true);
    let arrivals = receiver.all_arrived(messages).await?;
    anyhow::ensure!(appended.keys().all(|id| arrivals.contains_key(id)), "a reply never arrived");
    let last = arrivals.values().max().copied().unwrap_or(opened);
    let queued = messages.saturating_sub(held);
    let drain = queued as f64 / last.saturating_duration_since(opened).as_secs_f64().max(1e-3);
    println!(
        "queued-first drain, {delay_ms} ms receiver, {queued} replies queued behind {held} held calls (deliveries/s): {drain:.0}"
    );
    Ok(drain)
}

/// Runs the BullMQ peer with as many jobs as chatdesk delivered, to the same receiver answering
/// at once, against a private Redis with chatdesk's settings (AOF `always`, as `chatdesk up`
/// runs it), so both pay the same for a durable write. Both figures are drain rates: the peer
/// enqueues everything first and is timed from its worker's start to the last job completed.
async fn compare_with_bullmq(
    args: &Args,
    receiver: &Receiver,
    receiver_address: SocketAddr,
    chatdesk_drain: Option<f64>,
) -> anyhow::Result<()> {
    let Some(peer) = node_peer("bullmq")? else {
        println!("\nBullMQ peer skipped: `node` is not installed (Debian: apt-get install nodejs npm)");
        return Ok(());
    };
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(peer.join("package.json"))?)?;
    let version = manifest["dependencies"]["bullmq"].as_str().unwrap_or("?").to_owned();
    *receiver.delay.lock().expect("delay") = Duration::ZERO;
    receiver.arrivals.lock().expect("arrivals").clear();
    let peer_args: Vec<String> = [
        "--url",
        &format!("http://{receiver_address}/replies"),
        "--jobs",
        &args.messages.to_string(),
        "--conversations",
        &args.conversations.to_string(),
        "--concurrency",
        &PEER_CONCURRENCY.to_string(),
        "--modes",
        "call,none",
    ]
    .map(str::to_owned)
    .to_vec();
    let output = run_node_peer(&peer, "worker.mjs", chatdesk_local::RedisPersistence::AofAlways, &peer_args).await?;
    // One JSON object per mode: mode, jobs, completed, failed, enqueue_seconds, seconds, jobs_per_sec.
    let runs: Vec<serde_json::Value> = output.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let mode = |name: &str| runs.iter().find(|run| run["mode"] == name);
    let called = mode("call").context("no figure from the BullMQ peer")?;
    let number = |run: &serde_json::Value, field: &str| run[field].as_f64().unwrap_or(f64::NAN);
    let received =
        receiver.arrivals.lock().expect("arrivals").keys().filter(|id| id.starts_with("bullmq-call-")).count();
    anyhow::ensure!(
        number(called, "failed") == 0.0 && received == args.messages,
        "the BullMQ peer failed {} jobs and delivered {received} of {}",
        called["failed"],
        args.messages
    );
    println!();
    println!(
        "next to the BullMQ {version} peer (one Worker, concurrency {PEER_CONCURRENCY}, its own Redis with AOF always, the same receiver answering at once):"
    );
    println!(
        "bullmq jobs: {} enqueued by addBulk at {:.0}/s, then completed, every one arrived at the receiver",
        called["completed"],
        number(called, "completed") / number(called, "enqueue_seconds")
    );
    let peer_drain = number(called, "jobs_per_sec");
    println!("bullmq drain, instant receiver (jobs/s): {peer_drain:.0}");
    if let Some(bare) = mode("none") {
        println!("bullmq drain, no call (jobs/s): {:.0}", number(bare, "jobs_per_sec"));
    }
    match chatdesk_drain {
        Some(drain) => {
            println!("chatdesk drain / bullmq drain, queued first, instant receiver: {:.2}", drain / peer_drain)
        }
        None => println!("chatdesk drain / bullmq drain: no run with an instant receiver (--delays 0) to compare"),
    }
    Ok(())
}
