//! Bots: how many customer messages per second the `autoreply` role answers, and what it adds to
//! the model's own time between a customer's webhook and the bot's reply at the receiver.
//!
//! Starts `chatdesk up` (private Redis and PostgreSQL, every role), a model stand-in in this
//! process speaking the chat-completions API (answering after `--delays` milliseconds), and a
//! generic receiver timing each reply. Each of `--tenants` tenants has an inbox whose bot is the
//! model with no quiet period (`debounce_ms: 0`); `--messages` new customers, spread over the
//! tenants, each write once, offered at `--rate` per second.
//! For each model delay it prints the replies per second next to the rate offered and, when the
//! model is slow, next to the bound one process allows (`CHATDESK_AUTOREPLY_CONCURRENCY` /
//! delay), and the added latency (reply at the receiver − webhook sent − model delay) p50/p99.
//!
//! ```text
//! cargo build --release -p chatdesk
//! cargo run --release -p chatdesk-load-tests --bin autoreply-rate -- [--messages 2000] [--rate 200] [--delays 0,2000]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chatdesk_load_tests::{Up, chatdesk_binary, percentile};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Messages per second the autoreply role answers, and the latency it adds to the model's")]
struct Args {
    /// New customers writing once each, per model delay.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Webhooks offered per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// The model's answer times to measure, in milliseconds.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 2000])]
    delays: Vec<u64>,
    /// Conversations one autoreply process answers at once (CHATDESK_AUTOREPLY_CONCURRENCY);
    /// one tenant gets at most a quarter of them.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Tenants the customers are spread over (one bot inbox each).
    #[arg(long, default_value_t = 4)]
    tenants: usize,
    /// The chatdesk binary; defaults to the one next to this benchmark (same build profile).
    #[arg(long)]
    chatdesk: Option<PathBuf>,
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// The model stand-in: answers every chat completion after the current delay, echoing the
/// customer's last message.
async fn start_model(delay_ms: Arc<AtomicU64>) -> anyhow::Result<SocketAddr> {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |axum::Json(request): axum::Json<Value>| {
            let delay = Duration::from_millis(delay_ms.load(Ordering::Relaxed));
            async move {
                tokio::time::sleep(delay).await;
                let said = request["messages"]
                    .as_array()
                    .and_then(|messages| messages.last())
                    .and_then(|message| message["content"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                axum::Json(json!({
                    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_764_000_000, "model": "bench",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": format!("Bot: {said}")}}],
                    "usage": {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// The generic receiver: the time each customer's reply arrived.
async fn start_receiver(arrivals: Arrivals) -> anyhow::Result<SocketAddr> {
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let arrivals = arrivals.clone();
        async move {
            let arrived = Instant::now();
            if let Ok(message) = serde_json::from_slice::<Value>(&body)
                && let Some(to) = message["to"].as_str()
            {
                arrivals.lock().expect("arrivals").entry(to.to_owned()).or_insert(arrived);
            }
            axum::Json(json!({"id": "ok"}))
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
    let delay_ms = Arc::new(AtomicU64::new(0));
    let model = start_model(delay_ms.clone()).await?;
    let arrivals: Arrivals = Arc::default();
    let receiver = start_receiver(arrivals.clone()).await?;
    let binary = chatdesk_binary(args.chatdesk.as_deref())?;
    let allowed = format!("{model},{receiver}");
    let concurrency = args.concurrency.to_string();
    let up = Up::start(
        binary,
        &[
            ("CHATDESK_OUTBOUND_ALLOW", &allowed),
            ("CHATDESK_SEND_LIMITS", "generic.account=off"),
            ("CHATDESK_INGRESS_RATE_PER_INBOX", "100000"),
            ("CHATDESK_AUTOREPLY_DAILY_CALLS", "0"),
            ("CHATDESK_AUTOREPLY_DAILY_TOKENS", "0"),
            ("CHATDESK_AUTOREPLY_CONCURRENCY", &concurrency),
        ],
    )
    .await?;
    let client = chatdesk_sender::providers::http_client(Duration::from_secs(60))?;
    let base = format!("http://{}", up.address);
    // One bot inbox per tenant: (webhook URL, its secret).
    let mut inboxes = Vec::with_capacity(args.tenants);
    for index in 0..args.tenants.max(1) {
        let owner = format!("owner{index}@autoreply.bench");
        let tenant = up.tenant(&owner)?;
        let inbox = up.admin(&[
            "inbox",
            "create",
            "--tenant",
            &tenant,
            "--kind",
            "generic",
            "--name",
            "Bot",
            "--outbound-url",
            &format!("http://{receiver}/replies"),
        ])?;
        let inbox_id = inbox["inbox_id"].as_str().context("inbox_id")?.to_owned();
        let webhook = format!("http://{}{}", up.address, inbox["webhook_path"].as_str().context("webhook_path")?);
        let secret = inbox["secret"].as_str().context("secret")?.to_owned();
        let login: Value = client
            .post(format!("{base}/v1/auth/login"))
            .json(&json!({"email": owner, "password": "bench-pass-1"}))
            .send()
            .await?
            .json()
            .await?;
        let token = login["token"].as_str().context("token")?.to_owned();
        let settings = json!({
            "mode": "llm",
            "llm": {"base_url": format!("http://{model}/v1"), "api_key": "bench", "model": "bench", "timeout_ms": 30000},
            "debounce_ms": 0,
            "max_replies": 1000,
        });
        let configured = client
            .put(format!("{base}/v1/inboxes/{inbox_id}/autoreply"))
            .bearer_auth(&token)
            .json(&settings)
            .send()
            .await?;
        anyhow::ensure!(configured.status().is_success(), "configuring the bot: {}", configured.text().await?);
        inboxes.push((webhook, secret));
    }

    println!(
        "autoreply-rate: {} new customers of {} tenants writing once each, offered at {}/s; `chatdesk up` on this machine (autoreply concurrency {}, a quarter per tenant), model stand-in and generic receiver over loopback",
        args.messages,
        inboxes.len(),
        args.rate,
        args.concurrency
    );
    for delay in &args.delays {
        delay_ms.store(*delay, Ordering::Relaxed);
        arrivals.lock().expect("arrivals").clear();
        let mut sent_at: HashMap<String, Instant> = HashMap::with_capacity(args.messages);
        let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
        let started = Instant::now();
        let mut posts = tokio::task::JoinSet::new();
        for index in 0..args.messages {
            let due = started + interval * index as u32;
            tokio::time::sleep_until(due.into()).await;
            let from = format!("d{delay}-c{index}");
            let body = json!({"message_id": format!("m-{from}"), "from": {"id": from, "name": "Bench"}, "text": format!("question {index}")})
                .to_string();
            let (webhook, secret) = &inboxes[index % inboxes.len()];
            let signature = chatdesk_core::auth::sign_body(body.as_bytes(), secret);
            sent_at.insert(from, Instant::now());
            let (client, webhook) = (client.clone(), webhook.clone());
            posts.spawn(async move {
                client
                    .post(webhook)
                    .header("Content-Type", "application/json")
                    .header("X-Chatdesk-Signature", signature)
                    .body(body)
                    .send()
                    .await
                    .map(|response| response.status())
            });
        }
        while let Some(posted) = posts.join_next().await {
            let status = posted??;
            anyhow::ensure!(status.is_success(), "a webhook answered {status}");
        }
        let offered_in = started.elapsed();
        let deadline = Instant::now() + Duration::from_secs(600);
        while arrivals.lock().expect("arrivals").len() < args.messages {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {} replies arrived",
                arrivals.lock().expect("arrivals").len(),
                args.messages
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let arrived = arrivals.lock().expect("arrivals").clone();
        let last = arrived.values().max().copied().context("arrivals")?;
        let span = last.duration_since(started).as_secs_f64();
        let mut added: Vec<Duration> = arrived
            .iter()
            .filter_map(|(from, at)| {
                let total = at.duration_since(*sent_at.get(from)?);
                Some(total.saturating_sub(Duration::from_millis(*delay)))
            })
            .collect();
        added.sort();
        let rate = args.messages as f64 / span;
        let offered = args.messages as f64 / offered_in.as_secs_f64();
        println!("  model answers in {delay} ms:");
        println!("    {rate:.0} replies/s over {span:.1} s; offered {offered:.0}/s (ratio {:.2})", rate / offered);
        if *delay > 0 {
            // Each tenant may hold a quarter of the slots; with fewer than four tenants that is
            // the tighter bound.
            let slots = args.concurrency.min(inboxes.len() * (args.concurrency / 4).max(1));
            let bound = slots as f64 * 1000.0 / *delay as f64;
            println!(
                "    bound of one process: {slots} conversations at once / {delay} ms = {bound:.0}/s (ratio {:.2})",
                rate / bound
            );
        }
        println!(
            "    added latency (reply at the receiver - webhook sent - model time): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            percentile(&added, 0.5).as_secs_f64() * 1000.0,
            percentile(&added, 0.99).as_secs_f64() * 1000.0,
            added.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
        );
    }
    up.stop().await;
    Ok(())
}
