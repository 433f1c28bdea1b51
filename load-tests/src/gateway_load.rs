//! Gateway figures against a `chatdesk up` started by this command (private Redis with AOF
//! `always`, private PostgreSQL, every role):
//!
//! 1. end-to-end latency from the webhook request to the agent's socket (p50/p99/p99.9) at the
//!    given message rates, with `--tenants` × `--agents-per-tenant` agent sockets subscribed to
//!    their tenant's `inbox` (each message reaches its tenant's agents), and where that time
//!    went: each stage from the server's own histograms, and each process's CPU share;
//! 2. memory per idle connection: the server's RSS with `--idle` idle sockets minus its RSS
//!    without them, divided by their number;
//! 3. the time to replay `--replay` missed events to one resuming client.
//!
//! With `--soak-seconds`, a steady load between 1 and 2 with the sockets live: the server's RSS
//! at its start, every minute and at its end, every message counted at every socket (lost must
//! be 0) and the latency over the soak.
//!
//! ```text
//! cargo build --release -p chatdesk
//! cargo run --release -p chatdesk-load-tests --bin gateway-load -- [--rates 500,1000,2000] [--seconds 10]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use chatdesk_api::ingress::signature::sign;
use chatdesk_core::Envelope;
use chatdesk_core::events::{Actor, Event, SenderKind, Typing};
use chatdesk_core::{KeyScheme, StreamsConfig, TenantId};
use chatdesk_load_tests::{
    Connection, Histogram, MachineCpu, Up, chatdesk_binary, cpu_seconds, cpu_shares, histogram, node_peer, percentile,
    run_node_peer, scrape, tree_cpu_seconds,
};
use chatdesk_streams::{Producer, RedisConnector, RedisSettings};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "WebSocket end-to-end latency, memory per idle connection, and replay time of chatdesk up")]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000")]
    rates: Vec<u64>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 50)]
    tenants: usize,
    #[arg(long, default_value_t = 20)]
    agents_per_tenant: usize,
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    #[arg(long, default_value_t = 100_000)]
    replay: usize,
    /// Skip the Socket.IO peer (it needs Node.js; its packages are installed when missing).
    #[arg(long)]
    no_peer: bool,
    /// After the rates, a steady load this long (0: none), printing the server's RSS at its
    /// start, every minute and at its end.
    #[arg(long, default_value_t = 0)]
    soak_seconds: u64,
    /// The soak's messages/s; by default half the highest rate sent in this run's rates (the
    /// issue's soak is at half the sustained rate).
    #[arg(long)]
    soak_rate: Option<u64>,
    #[arg(long)]
    chatdesk: Option<PathBuf>,
}

/// A run's latency by stage, from the server's histograms and the client's own measurement.
struct Breakdown {
    stages: Vec<(&'static str, Histogram)>,
}

impl Breakdown {
    fn between(before: &str, after: &str, end_to_end: &[Duration]) -> Self {
        let delta =
            |name: &str, filters: &[&str]| histogram(after, name, filters).since(&histogram(before, name, filters));
        let mut client = Histogram::default();
        let bounds =
            [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, f64::INFINITY];
        for bound in bounds {
            let below = end_to_end.iter().filter(|latency| latency.as_secs_f64() <= bound).count();
            client.buckets.push((bound, below as f64));
        }
        client.count = end_to_end.len() as f64;
        client.sum = end_to_end.iter().map(Duration::as_secs_f64).sum();
        Self {
            stages: vec![
                (
                    "webhook request (HTTP, signature, ingest script)",
                    delta("chatdesk_ingress_request_duration_seconds", &[]),
                ),
                (
                    "  of which the ingest script (Redis, AOF fsync)",
                    delta("chatdesk_stream_append_duration_seconds", &["by=\"ingest\""]),
                ),
                ("append -> gateway read (XREADGROUP)", delta("chatdesk_gateway_read_latency_seconds", &[])),
                (
                    "append -> frame written (read, hub, socket write)",
                    delta("chatdesk_gateway_fanout_latency_seconds", &[]),
                ),
                ("webhook built -> frame read by the agent (client)", client),
            ],
        }
    }
}

/// A benchmark message read by an agent socket.
#[derive(Clone, Copy)]
struct Frame {
    socket: usize,
    /// The message's number (`n=` in its text), to count each message at each socket once.
    number: u64,
    /// From the webhook being built to the frame being read.
    latency: Duration,
}

/// The number after `key` in a frame's text (`sent=` and `n=` in the benchmark's messages).
fn number_after(text: &str, key: &str) -> Option<u64> {
    text.split(key).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_micros() as u64).unwrap_or(0)
}

async fn open_socket(address: SocketAddr, token: &str) -> anyhow::Result<Socket> {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/v1/ws")).await?;
    let hello = serde_json::json!({"op": "hello", "token": token, "protocol": 1});
    socket.send(Message::Text(hello.to_string().into())).await?;
    loop {
        if let Some(Ok(Message::Text(text))) = socket.next().await {
            if text.contains("\"welcome\"") {
                return Ok(socket);
            }
            bail!("handshake refused: {text}");
        }
    }
}

async fn subscribe(socket: &mut Socket, frame: serde_json::Value) -> anyhow::Result<u64> {
    socket.send(Message::Text(frame.to_string().into())).await?;
    let mut events = 0;
    while let Some(message) = socket.next().await {
        if let Message::Text(text) = message? {
            if text.contains("\"op\":\"subscribed\"") {
                return Ok(events);
            }
            events += 1;
        }
    }
    bail!("socket closed while subscribing")
}

/// Posts `total` signed webhooks at `rate` per second from `begin`, round-robin over the tenants,
/// open-loop; message numbers start at `base`. Returns how many were accepted.
async fn post_at_rate(
    address: SocketAddr,
    tenants: &Arc<Vec<Tenant>>,
    rate: u64,
    total: u64,
    begin: Instant,
    base: u64,
) -> anyhow::Result<u64> {
    // Open loop: enough connections that a request waiting for its answer never holds back
    // the next one's schedule (about 50 ms of answers in flight at the target rate).
    let connections = (rate / 20).clamp(64, 1024);
    let mut senders = tokio::task::JoinSet::new();
    for worker in 0..connections {
        let tenants = tenants.clone();
        senders.spawn(async move {
            let mut connection = Connection::open(address).await?;
            let mut index = worker;
            let mut sent = 0u64;
            while index < total {
                let scheduled = begin + Duration::from_secs_f64(index as f64 / rate as f64);
                tokio::time::sleep_until(scheduled.into()).await;
                let tenant = &tenants[(index as usize) % tenants.len()];
                let number = base + index;
                let body = format!(
                    r#"{{"message_id":"gw-{number}","from":{{"id":"c-{}","name":"Bench"}},"text":"sent={} n={number}"}}"#,
                    number % 97,
                    now_micros()
                );
                match connection.post(&tenant.path, &sign(body.as_bytes(), &tenant.secret), &body).await {
                    // Only an accepted message is due at the sockets.
                    Ok(status) if (200..300).contains(&status) => sent += 1,
                    Ok(_) => {}
                    Err(_) => connection = Connection::open(address).await?,
                }
                index += connections;
            }
            anyhow::Ok(sent)
        });
    }
    let mut sent = 0;
    while let Some(joined) = senders.join_next().await {
        sent += joined??;
    }
    Ok(sent)
}

/// Runs the Socket.IO peer (`load-tests/peers/socketio`) on the same machine with the same
/// clients, rates and seconds, against its own Redis (AOF `everysec`, as that peer is usually
/// run), and prints both side by side.
async fn compare_with_socketio(args: &Args, ours: &[(u64, f64, Duration, Duration)]) -> anyhow::Result<()> {
    let Some(peer) = node_peer("socketio")? else {
        println!("\nSocket.IO peer skipped: `node` is not installed (Debian: apt-get install nodejs npm)");
        return Ok(());
    };
    let ports = {
        let (first, second) =
            (std::net::TcpListener::bind("127.0.0.1:0")?, std::net::TcpListener::bind("127.0.0.1:0")?);
        format!("{},{}", first.local_addr()?.port(), second.local_addr()?.port())
    };
    let rates: Vec<String> = args.rates.iter().map(u64::to_string).collect();
    let peer_args: Vec<String> = vec![
        "--clients".to_owned(),
        (args.tenants * args.agents_per_tenant).to_string(),
        "--rates".to_owned(),
        rates.join(","),
        "--seconds".to_owned(),
        args.seconds.to_string(),
        "--ports".to_owned(),
        ports,
    ];
    let output = run_node_peer(&peer, "fanout.mjs", chatdesk_local::RedisPersistence::AofEverySec, &peer_args).await?;
    println!();
    println!(
        "next to the Socket.IO 4.8 peer (redis-streams-adapter, 2 servers, {} clients in rooms of 2, same rates, same machine):",
        args.tenants * args.agents_per_tenant
    );
    println!(
        "{:>10} {:>14} {:>12} {:>12} {:>14} {:>12} {:>12} {:>10}",
        "msgs/s", "chatdesk /s", "p50 ms", "p99 ms", "Socket.IO /s", "p50 ms", "p99 ms", "p99 ratio"
    );
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    for line in output.lines() {
        let Ok(peer) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let rate = peer["rate"].as_u64().unwrap_or_default();
        let Some((_, sent, p50, p99)) = ours.iter().find(|(ours, ..)| *ours == rate) else { continue };
        let peer_p99 = peer["p99_ms"].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:>10} {:>14.0} {:>12.2} {:>12.2} {:>14.0} {:>12.2} {:>12.2} {:>10.2}",
            rate,
            sent,
            ms(*p50),
            ms(*p99),
            peer["sent_per_sec"].as_f64().unwrap_or(f64::NAN),
            peer["p50_ms"].as_f64().unwrap_or(f64::NAN),
            peer_p99,
            ms(*p99) / peer_p99
        );
        println!(
            "{:>10} Socket.IO servers' CPU: {:.0}% of a core",
            "",
            peer["servers_cpu"].as_f64().unwrap_or(f64::NAN) * 100.0
        );
    }
    Ok(())
}

/// A steady load after the rates, with the sockets live: the server's memory must level off,
/// not climb, and every message must still reach every socket.
struct Soak {
    rate: u64,
    seconds: u64,
    /// The first message number, past every number the rates used.
    base: u64,
    agents_per_tenant: usize,
}

impl Soak {
    async fn run(
        &self,
        address: SocketAddr,
        tenants: &Arc<Vec<Tenant>>,
        frames: &Arc<Mutex<Vec<Frame>>>,
        server: u32,
    ) -> anyhow::Result<()> {
        let total = self.rate * self.seconds;
        let numbers = self.base..self.base + total;
        frames.lock().await.clear();
        println!();
        println!("soak: {} msgs/s for {} s ({total} messages) with the sockets live", self.rate, self.seconds);
        let begin = Instant::now() + Duration::from_millis(200);
        let posting = tokio::spawn({
            let tenants = tenants.clone();
            let (rate, base) = (self.rate, self.base);
            async move { post_at_rate(address, &tenants, rate, total, begin, base).await }
        });
        let start = rss_kib(server)?;
        println!("soak RSS at 0 s (KiB): {start}");
        // Sampled every 10 s for the highest value of each half, printed every minute.
        let mut samples = vec![start];
        let (mut next_sample, mut next_report) = (Duration::from_secs(10), Duration::from_secs(60));
        while !posting.is_finished() {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let elapsed = begin.elapsed();
            if elapsed >= next_sample {
                samples.push(rss_kib(server)?);
                next_sample += Duration::from_secs(10);
            }
            if elapsed >= next_report {
                println!("soak RSS at {} s (KiB): {}", next_report.as_secs(), samples.last().copied().unwrap_or(start));
                next_report += Duration::from_secs(60);
            }
        }
        let sent = posting.await??;
        // Frames still on their way are given a bounded while, not forever.
        let due = sent * self.agents_per_tenant as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let arrived = frames.lock().await.iter().filter(|frame| numbers.contains(&frame.number)).count() as u64;
            if arrived >= due || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let end = rss_kib(server)?;
        let mut soaked: Vec<Frame> =
            frames.lock().await.iter().filter(|frame| numbers.contains(&frame.number)).copied().collect();
        let mut latencies: Vec<Duration> = soaked.iter().map(|frame| frame.latency).collect();
        latencies.sort();
        soaked.sort_by_key(|frame| (frame.socket, frame.number));
        soaked.dedup_by_key(|frame| (frame.socket, frame.number));
        let distinct = soaked.len() as u64;
        let repeated = latencies.len() as u64 - distinct;
        let (first_half, second_half) = samples.split_at(samples.len() / 2);
        let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
        println!("soak RSS at the end (KiB): {end}");
        println!(
            "soak RSS highest (KiB): {} in the first half, {} in the second",
            first_half.iter().max().copied().unwrap_or(start),
            second_half.iter().max().copied().unwrap_or(end),
        );
        println!("soak RSS end / start: {:.3}", end as f64 / start as f64);
        println!(
            "soak messages: {sent} of {total} accepted; socket deliveries {distinct} of {due} ({repeated} repeated)"
        );
        println!("soak lost: {}", due.saturating_sub(distinct));
        println!(
            "soak latency p50 / p99.9 ms: {:.2} / {:.2}",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.999))
        );
        println!("soak p99 ms: {:.2}", ms(percentile(&latencies, 0.99)));
        Ok(())
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// A valid event the writer skips (typing is not stored), so the replay measures the gateway.
/// A small event for the replay figure (its content does not matter, only its size).
fn typing_event(index: usize) -> Event {
    Event::Typing(Typing {
        conversation_id: uuid::Uuid::from_u128(index as u128),
        who: Actor { kind: SenderKind::System, id: None },
        typing: true,
    })
}

struct Tenant {
    token: String,
    path: String,
    secret: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let up = Up::start(chatdesk_binary(args.chatdesk.as_deref())?, &[("CHATDESK_INGRESS_RATE_PER_INBOX", "1000000")])
        .await?;
    let address = up.address;
    let mut tenants = Vec::new();
    for index in 0..args.tenants {
        let email = format!("owner-{index}@bench.test");
        let tenant_id = up.tenant(&email)?;
        let inbox = up.admin(&["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "bench"])?;
        let mut login = Connection::open(address).await?;
        let body = serde_json::json!({"email": email, "password": "bench-pass-1"}).to_string();
        let request = format!(
            "POST /v1/auth/login HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        login.reader.get_mut().write_all(request.as_bytes()).await?;
        let mut response = String::new();
        login.reader.read_to_string(&mut response).await?;
        let json: serde_json::Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).context("login body")?)?;
        tenants.push(Tenant {
            token: json["token"].as_str().context("token")?.to_owned(),
            path: inbox["webhook_path"].as_str().context("webhook_path")?.to_owned(),
            secret: inbox["secret"].as_str().context("secret")?.to_owned(),
        });
    }
    let tenants = Arc::new(tenants);

    // 1. End-to-end latency.
    let frames = Arc::new(Mutex::new(Vec::<Frame>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = tokio::task::JoinSet::new();
    let mut sockets_opened = 0usize;
    for tenant in tenants.iter() {
        for _ in 0..args.agents_per_tenant {
            let mut socket = open_socket(address, &tenant.token).await?;
            subscribe(&mut socket, serde_json::json!({"op": "subscribe", "channel": "inbox"})).await?;
            let (frames, stop) = (frames.clone(), stop.clone());
            let socket_index = sockets_opened;
            sockets_opened += 1;
            readers.spawn(async move {
                // Clients ping well inside the heartbeat, as the protocol asks; a silent one is
                // closed by the server after 2.5 heartbeats.
                let mut last_ping = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if last_ping.elapsed() > Duration::from_secs(10) {
                        last_ping = Instant::now();
                        if socket.send(Message::Text(r#"{"op":"ping"}"#.into())).await.is_err() {
                            break;
                        }
                    }
                    let text = match tokio::time::timeout(Duration::from_millis(200), socket.next()).await {
                        Err(_) => continue,
                        Ok(Some(Ok(Message::Text(text)))) => text,
                        Ok(Some(Ok(_))) => continue,
                        Ok(None) | Ok(Some(Err(_))) => break,
                    };
                    if let (Some(sent), Some(number)) = (number_after(&text, "sent="), number_after(&text, "n=")) {
                        let latency = Duration::from_micros(now_micros().saturating_sub(sent));
                        frames.lock().await.push(Frame { socket: socket_index, number, latency });
                    }
                }
            });
        }
    }
    println!(
        "gateway-load: `chatdesk up` (AOF always, every role), {} agent sockets ({} tenants x {} agents, each subscribed to its inbox)",
        args.tenants * args.agents_per_tenant,
        args.tenants,
        args.agents_per_tenant
    );
    println!(
        "{:>10} {:>12} {:>10} {:>10} {:>10} {:>12}",
        "msgs/s", "sent/s", "p50 ms", "p99 ms", "p99.9 ms", "deliveries"
    );
    let mut sequence = 0u64;
    let server = up.pid().context("server pid")?;
    let mut breakdowns = Vec::new();
    let mut ours = Vec::new();
    for &rate in &args.rates {
        frames.lock().await.clear();
        let scraped = scrape(address).await?;
        let cpu = (cpu_seconds(std::process::id())?, tree_cpu_seconds(server), Instant::now());
        let total = rate * args.seconds;
        let begin = Instant::now() + Duration::from_millis(200);
        let machine = MachineCpu::read()?;
        let sent = post_at_rate(address, &tenants, rate, total, begin, sequence).await?;
        let elapsed = begin.elapsed();
        // While sending only: the per-process shares below also count the drain after it.
        let busy = MachineCpu::read()?.busy_since(&machine);
        sequence += total;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut measured: Vec<Duration> = frames.lock().await.iter().map(|frame| frame.latency).collect();
        measured.sort();
        let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
        println!(
            "{:>10} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>12}",
            rate,
            sent as f64 / elapsed.as_secs_f64(),
            ms(percentile(&measured, 0.50)),
            ms(percentile(&measured, 0.99)),
            ms(percentile(&measured, 0.999)),
            measured.len()
        );
        ours.push((
            rate,
            sent as f64 / elapsed.as_secs_f64(),
            percentile(&measured, 0.50),
            percentile(&measured, 0.99),
        ));
        let wall = cpu.2.elapsed().as_secs_f64();
        let generator = (cpu_seconds(std::process::id())? - cpu.0) / wall;
        let servers = cpu_shares(&cpu.1, &tree_cpu_seconds(server), wall);
        let servers =
            format!("{servers}; the machine's {} cores {:.0}% busy while sending", machine.cores, busy * 100.0);
        breakdowns.push((rate, Breakdown::between(&scraped, &scrape(address).await?, &measured), generator, servers));
    }
    println!();
    println!("where the time goes (from chatdesk's own histograms over each run; ms):");
    println!("{:>10}  {:<58} {:>8} {:>8} {:>8}", "msgs/s", "stage", "mean", "p50", "p99");
    for (rate, breakdown, generator, servers) in &breakdowns {
        for (stage, histogram) in &breakdown.stages {
            let ms = |value: Option<f64>| value.map_or("-".to_owned(), |value| format!("{:.2}", value * 1000.0));
            println!(
                "{:>10}  {:<58} {:>8} {:>8} {:>8}",
                rate,
                stage,
                ms(histogram.mean()),
                ms(histogram.quantile(0.5)),
                ms(histogram.quantile(0.99))
            );
        }
        println!("{:>10}  CPU (100% = one core): load generator {:.0}%, {servers}", rate, generator * 100.0,);
    }
    if !args.no_peer {
        compare_with_socketio(&args, &ours).await?;
    }
    if args.soak_seconds > 0 {
        let highest_sent = ours.iter().map(|(_, sent, ..)| *sent).fold(0.0, f64::max);
        let rate = args.soak_rate.unwrap_or(((highest_sent / 2.0).round() as u64).max(1));
        let soak = Soak { rate, seconds: args.soak_seconds, base: sequence, agents_per_tenant: args.agents_per_tenant };
        soak.run(address, &tenants, &frames, server).await?;
    }
    stop.store(true, Ordering::Relaxed);
    while readers.join_next().await.is_some() {}

    // 2. Memory per idle connection.
    let pid = up.pid().context("server pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid)?;
    let mut idle = Vec::with_capacity(args.idle);
    for index in 0..args.idle {
        idle.push(open_socket(address, &tenants[index % tenants.len()].token).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    println!(
        "memory per idle connection: {:.1} KiB ({} idle sockets: RSS {} KiB -> {} KiB)",
        (after.saturating_sub(before)) as f64 / args.idle as f64,
        args.idle,
        before,
        after
    );
    drop(idle);

    // 3. Replay of missed events to one resuming client.
    let streams = Arc::new(StreamsConfig::from_toml_str("streams.toml", include_str!("../../streams.toml"))?);
    let client = RedisConnector::new(RedisSettings::new(&up.redis_url))?.shared().await?;
    let producer = Producer::new(client, KeyScheme::new("chatdesk").map_err(anyhow::Error::msg)?, streams);
    let tenant_claims: serde_json::Value = {
        let token = &tenants[0].token;
        let payload = token.split('.').nth(1).context("token payload")?;
        use base64::Engine;
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?
    };
    let tenant_id: uuid::Uuid = tenant_claims["tenant"].as_str().context("tenant")?.parse()?;
    let mut socket = open_socket(address, &tenants[0].token).await?;
    subscribe(&mut socket, serde_json::json!({"op": "subscribe", "channel": "inbox"})).await?;
    let start_offset = { producer.append_event(&Envelope::of(TenantId(tenant_id), &typing_event(0))).await?.id };
    drop(socket);
    let mut appending = tokio::task::JoinSet::new();
    for worker in 0..32usize {
        let producer = producer.clone();
        let count = args.replay;
        appending.spawn(async move {
            let mut index = worker;
            while index < count {
                producer.append_event(&Envelope::of(TenantId(tenant_id), &typing_event(index))).await?;
                index += 32;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = appending.join_next().await {
        joined??;
    }
    let mut socket = open_socket(address, &tenants[0].token).await?;
    let started = Instant::now();
    let replayed = subscribe(
        &mut socket,
        serde_json::json!({"op": "subscribe", "channel": "inbox", "since": start_offset.to_string()}),
    )
    .await?;
    let elapsed = started.elapsed();
    println!(
        "replay: {replayed} missed events in {:.2} s ({:.0} events/s)",
        elapsed.as_secs_f64(),
        replayed as f64 / elapsed.as_secs_f64()
    );
    up.stop().await;
    Ok(())
}
