//! Campaigns: how exactly each sender's rate holds at the receiver when many senders broadcast at
//! once, the highest rate one sender reaches, and what a recipient costs the broadcaster next to
//! what its delivery costs the sender.
//!
//! Starts `chatdesk up` (private Redis and PostgreSQL, every role), a receiver in this process
//! (one path per sender, arrivals timed), a generic inbox per sender, and a campaign per sender
//! at `--rate` for `--seconds`. Then:
//!
//! - per sender and 1-s window at the receiver (the windows between the sender's first and last
//!   arrival): the rate error `|count - rate| / rate`, max and p99 over all windows, the busiest
//!   window against the rate, and the total throughput;
//! - one sender at `--peak` messages per second (provider limits off): the rate it reaches;
//! - cost: Redis commands (`INFO commandstats`) and CPU seconds of the chatdesk process per
//!   recipient for a campaign, next to the same number of plain agent replies (sender and writer
//!   only): the difference is the broadcaster's share.
//!
//! ```text
//! cargo build --release -p chatdesk
//! cargo run --release -p chatdesk-load-tests --bin broadcast-rate -- [--senders 1000] [--rate 5] [--seconds 60] [--peak 1000]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chatdesk_load_tests::{Up, chatdesk_binary};
use clap::Parser;
use fred::prelude::*;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Per-sender rate accuracy, peak rate and cost per recipient of campaigns")]
struct Args {
    /// Senders broadcasting at once, one campaign each.
    #[arg(long, default_value_t = 1000)]
    senders: usize,
    /// Each campaign's rate, messages per second.
    #[arg(long, default_value_t = 5)]
    rate: u32,
    /// How long each campaign would take at its rate.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// One sender's rate for the peak run (0 skips it); it sends this many per second for 10 s.
    #[arg(long, default_value_t = 1000)]
    peak: u32,
    /// The chatdesk binary; defaults to the one next to this benchmark (same build profile).
    #[arg(long)]
    chatdesk: Option<PathBuf>,
}

#[derive(Clone, Default)]
struct Receiver {
    arrivals: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

impl Receiver {
    fn total(&self) -> usize {
        self.arrivals.lock().expect("arrivals").values().map(Vec::len).sum()
    }

    fn take(&self) -> HashMap<String, Vec<Instant>> {
        std::mem::take(&mut *self.arrivals.lock().expect("arrivals"))
    }
}

async fn start_receiver(receiver: Receiver) -> anyhow::Result<SocketAddr> {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let receiver = receiver.clone();
        async move {
            let arrived = Instant::now();
            receiver.arrivals.lock().expect("arrivals").entry(uri.path().to_owned()).or_default().push(arrived);
            axum::Json(json!({"id": "ok"}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let response =
            self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "{path} answered {status}: {answer}");
        Ok(answer)
    }
}

/// Total Redis commands served so far.
async fn redis_commands(redis: &Client) -> anyhow::Result<u64> {
    let info: String = redis.info(Some(fred::types::InfoKind::CommandStats)).await?;
    Ok(info
        .lines()
        .filter_map(|line| line.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum())
}

/// CPU seconds the process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are the 14th and 15th fields; after the command they are 12th and 13th.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

async fn wait_for(receiver: &Receiver, count: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while receiver.total() < count {
        anyhow::ensure!(Instant::now() < deadline, "only {} of {count} arrived in time", receiver.total());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let receiver = Receiver::default();
    let address = start_receiver(receiver.clone()).await?;
    let binary = chatdesk_binary(args.chatdesk.as_deref())?;
    let allowed = address.to_string();
    let up =
        Up::start(binary, &[("CHATDESK_SEND_LIMITS", "generic.account=off"), ("CHATDESK_OUTBOUND_ALLOW", &allowed)])
            .await?;
    let pid = up.pid().context("chatdesk's pid")?;
    let tenant = up.tenant("owner@broadcast.bench")?;
    up.admin(&[
        "agent",
        "create",
        "--tenant",
        &tenant,
        "--email",
        "mk@broadcast.bench",
        "--password",
        "bench-pass-1",
        "--role",
        "marketer",
    ])?;
    let client = chatdesk_sender::providers::http_client(Duration::from_secs(120))?;
    let base = format!("http://{}", up.address);
    let login: serde_json::Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": "mk@broadcast.bench", "password": "bench-pass-1"}))
        .send()
        .await?
        .json()
        .await?;
    let api = Api { client, base, token: login["token"].as_str().context("token")?.to_owned() };
    let redis =
        chatdesk_streams::RedisConnector::new(chatdesk_streams::RedisSettings::new(&up.redis_url))?.shared().await?;

    let inbox = |name: &str| -> anyhow::Result<String> {
        let url = format!("http://{address}/{name}");
        let answer = up.admin(&[
            "inbox",
            "create",
            "--tenant",
            &tenant,
            "--kind",
            "generic",
            "--name",
            name,
            "--outbound-url",
            &url,
        ])?;
        Ok(answer["inbox_id"].as_str().context("inbox_id")?.to_owned())
    };
    let per_sender = (args.rate * args.seconds) as usize;
    println!(
        "broadcast-rate: {} senders x {}/s for {} s ({} recipients), `chatdesk up` on this machine, generic receiver over loopback",
        args.senders,
        args.rate,
        args.seconds,
        args.senders * per_sender
    );
    let mut inboxes = Vec::with_capacity(args.senders);
    for sender in 0..args.senders {
        inboxes.push(inbox(&format!("s{sender}"))?);
    }
    let (commands_before, cpu_before) = (redis_commands(&redis).await?, cpu_seconds(pid));
    let started = Instant::now();
    for (sender, inbox) in inboxes.iter().enumerate() {
        let recipients: Vec<serde_json::Value> =
            (0..per_sender).map(|index| json!({"to": format!("s{sender}-{index}"), "vars": {"n": index}})).collect();
        api.post(
            "/v1/campaigns",
            json!({"inbox_id": inbox, "text": "Offer {{n}}", "rate_per_sec": args.rate, "recipients": recipients}),
        )
        .await?;
    }
    let created_in = started.elapsed();
    let total = args.senders * per_sender;
    wait_for(&receiver, total, Duration::from_secs(u64::from(args.seconds) * 20 + 600)).await?;
    let elapsed = started.elapsed();
    let (commands_after, cpu_after) = (redis_commands(&redis).await?, cpu_seconds(pid));
    let arrivals = receiver.take();

    let mut errors = Vec::new();
    let mut busiest_over = 0usize;
    let mut busiest = 0usize;
    for times in arrivals.values() {
        let mut times = times.clone();
        times.sort();
        let first = times[0];
        let seconds = times.last().expect("arrivals").duration_since(first).as_secs() as usize;
        let mut windows = vec![0usize; seconds + 1];
        for time in &times {
            windows[time.duration_since(first).as_secs() as usize] += 1;
        }
        // Whole windows only: the last one is partial.
        for count in &windows[..seconds] {
            errors.push((*count as f64 - f64::from(args.rate)).abs() / f64::from(args.rate));
        }
        let mut end = 0;
        for start in 0..times.len() {
            while end < times.len() && times[end] < times[start] + Duration::from_secs(1) {
                end += 1;
            }
            busiest = busiest.max(end - start);
        }
        busiest_over += usize::from(busiest > args.rate as usize);
    }
    errors.sort_by(f64::total_cmp);
    println!(
        "  campaigns created in {:.1} s; all {total} sent in {:.1} s",
        created_in.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "  total throughput {:.0} msgs/s (asked {}/s); per-sender rate error over 1-s windows: p50 {:.1} %, p99 {:.1} %, max {:.1} %",
        total as f64 / elapsed.as_secs_f64(),
        args.senders as u32 * args.rate,
        percentile(&errors, 0.5) * 100.0,
        percentile(&errors, 0.99) * 100.0,
        errors.last().copied().unwrap_or(0.0) * 100.0
    );
    println!("  busiest 1-s window of any sender: {busiest} (limit {}); senders over it: {busiest_over}", args.rate);
    let campaign_commands = (commands_after - commands_before) as f64 / total as f64;
    let campaign_cpu = (cpu_after - cpu_before) / total as f64;

    // The same number of plain replies: the sender's and writer's cost without the broadcaster.
    let replies = total.min(20_000);
    let owner: serde_json::Value = api
        .client
        .post(format!("{}/v1/auth/login", api.base))
        .json(&json!({"email": "owner@broadcast.bench", "password": "bench-pass-1"}))
        .send()
        .await?
        .json()
        .await?;
    let owner = Api {
        client: api.client.clone(),
        base: api.base.clone(),
        token: owner["token"].as_str().context("token")?.to_owned(),
    };
    let pool = chatdesk_store::connect(&up.database_url, 2).await?;
    let targets: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM conversations LIMIT 500").fetch_all(&pool).await?;
    let (commands_before, cpu_before) = (redis_commands(&redis).await?, cpu_seconds(pid));
    let mut sent = 0;
    while sent < replies {
        let mut batch = tokio::task::JoinSet::new();
        for index in sent..(sent + 64).min(replies) {
            let conversation = targets[index % targets.len()];
            let (client, base, token) = (owner.client.clone(), owner.base.clone(), owner.token.clone());
            batch.spawn(async move {
                client
                    .post(format!("{base}/v1/conversations/{conversation}/messages"))
                    .bearer_auth(token)
                    .json(&json!({"text": "reply"}))
                    .send()
                    .await
            });
        }
        while let Some(done) = batch.join_next().await {
            anyhow::ensure!(done??.status().is_success(), "a reply was refused");
        }
        sent = (sent + 64).min(replies);
    }
    wait_for(&receiver, replies, Duration::from_secs(600)).await?;
    receiver.take();
    let (commands_after, cpu_after) = (redis_commands(&redis).await?, cpu_seconds(pid));
    let reply_commands = (commands_after - commands_before) as f64 / replies as f64;
    let reply_cpu = (cpu_after - cpu_before) / replies as f64;
    println!("  cost per message (chatdesk process CPU, Redis commands):");
    println!("    campaign recipient   {:>7.3} ms CPU  {:>6.1} commands", campaign_cpu * 1000.0, campaign_commands);
    println!("    agent reply          {:>7.3} ms CPU  {:>6.1} commands", reply_cpu * 1000.0, reply_commands);
    println!(
        "    broadcaster's share  {:>7.3} ms CPU  {:>6.1} commands",
        (campaign_cpu - reply_cpu) * 1000.0,
        campaign_commands - reply_commands
    );

    if args.peak > 0 {
        let peak_inbox = inbox("peak")?;
        let count = (args.peak * 10) as usize;
        let recipients: Vec<serde_json::Value> =
            (0..count).map(|index| json!({"to": format!("p-{index}"), "vars": {"n": index}})).collect();
        let started = Instant::now();
        api.post(
            "/v1/campaigns",
            json!({"inbox_id": peak_inbox, "text": "Offer {{n}}", "rate_per_sec": args.peak, "recipients": recipients}),
        )
        .await?;
        wait_for(&receiver, count, Duration::from_secs(600)).await?;
        let arrivals = receiver.take();
        let mut times: Vec<Instant> = arrivals.into_values().flatten().collect();
        times.sort();
        let span = times.last().expect("arrivals").duration_since(times[0]).as_secs_f64();
        println!(
            "  one sender asked for {}/s: {:.0}/s at the receiver ({} in {:.1} s; {:.1} s from create to last)",
            args.peak,
            (count - 1) as f64 / span,
            count,
            span,
            started.elapsed().as_secs_f64()
        );
    }
    pool.close().await;
    up.stop().await;
    Ok(())
}
