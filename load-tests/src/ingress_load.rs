//! Ingress load: signed generic webhooks posted over loopback at increasing rates against a
//! `chatdesk up` started by this command (private Redis and PostgreSQL, AOF `always`, the writer
//! running), reporting the sustained requests/s and latency p50/p99/p99.9 at each rate.
//!
//! ```text
//! cargo build --release -p chatdesk
//! cargo run --release -p chatdesk-load-tests --bin ingress-load -- [--rates 250,500,1000,2000] [--seconds 10]
//! ```
//!
//! The peer, measured first in the same run: `redis-benchmark` XADD from 50 clients against a
//! private Redis with AOF `appendfsync always` (the same durability as chatdesk's), which is
//! what one Redis round trip per webhook could reach at best; each rate's line prints its
//! sustained rate divided by that figure.
//!
//! Requests are scheduled open-loop (request i at start + i/rate), and latency is measured from
//! the scheduled time, so a server that falls behind shows its queueing instead of hiding it.
//! Each rate step is bounded in time; the run stops early once p99 exceeds one second.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chatdesk_api::ingress::signature::sign;
use chatdesk_load_tests::{Connection, Up, chatdesk_binary, percentile, redis_benchmark};
use chatdesk_local::{RedisOptions, RedisPersistence, RedisServer};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Sustained webhook requests/s and latency percentiles of `chatdesk up` over loopback")]
struct Args {
    /// Target request rates, per second, in order.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,4000,8000,16000")]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Distinct senders the messages come from.
    #[arg(long, default_value_t = 200)]
    senders: usize,
    /// The chatdesk binary; defaults to the one next to this benchmark (same build profile).
    #[arg(long)]
    chatdesk: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = chatdesk_binary(args.chatdesk.as_deref())?;
    let peer = {
        let dir = std::env::temp_dir().join(format!("chatdesk-bench-peer-{}", std::process::id()));
        let mut server =
            RedisServer::start(RedisOptions::new(dir.join("redis")).persistence(RedisPersistence::AofAlways)).await?;
        let rate = redis_benchmark(server.port(), 50_000, 1, 50);
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        rate?
    };
    let up = Up::start(binary, &[("CHATDESK_INGRESS_RATE_PER_INBOX", "1000000")]).await?;
    let address = up.address;
    let tenant = up.tenant("owner@bench.test")?;
    let tenant_id = tenant;
    let inbox = up.admin(&["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "bench"])?;
    let path = Arc::new(inbox["webhook_path"].as_str().context("webhook_path")?.to_owned());
    let secret = Arc::new(inbox["secret"].as_str().context("secret")?.to_owned());

    println!(
        "ingress-load: signed generic webhooks to `chatdesk up` (AOF always, writer on) over loopback; {} connections, {} s per rate",
        args.connections, args.seconds
    );
    println!(
        "peer: redis-benchmark XADD, 50 clients, AOF appendfsync always: {peer:.0} requests/s (same machine, same run)"
    );
    println!(
        "{:>10} {:>12} {:>9} {:>10} {:>10} {:>10} {:>8}",
        "target/s", "sustained/s", "errors", "p50 ms", "p99 ms", "p99.9 ms", "÷ peer"
    );
    let mut sequence = 0u64;
    for &rate in &args.rates {
        let total = rate * args.seconds;
        let begin = Instant::now() + Duration::from_millis(200);
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..args.connections as u64 {
            let (path, secret) = (path.clone(), secret.clone());
            let (connections, senders, base) = (args.connections as u64, args.senders as u64, sequence);
            workers.spawn(async move {
                let mut connection = Connection::open(address).await?;
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut index = worker;
                while index < total {
                    let scheduled = begin + Duration::from_secs_f64(index as f64 / rate as f64);
                    tokio::time::sleep_until(scheduled.into()).await;
                    let number = base + index;
                    let body = format!(
                        r#"{{"message_id":"bench-{number}","from":{{"id":"sender-{}","name":"Bench"}},"text":"load message {number}"}}"#,
                        number % senders
                    );
                    let signature = sign(body.as_bytes(), &secret);
                    match connection.post(&path, &signature, &body).await {
                        Ok(200) => latencies.push(scheduled.elapsed()),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            connection = Connection::open(address).await?;
                        }
                    }
                    index += connections;
                }
                anyhow::Ok((latencies, errors))
            });
        }
        let mut latencies = Vec::with_capacity(total as usize);
        let mut errors = 0;
        while let Some(joined) = workers.join_next().await {
            let (worker_latencies, worker_errors) = joined??;
            latencies.extend(worker_latencies);
            errors += worker_errors;
        }
        let elapsed = begin.elapsed();
        sequence += total;
        latencies.sort();
        let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
        let p99 = percentile(&latencies, 0.99);
        let sustained = latencies.len() as f64 / elapsed.as_secs_f64();
        println!(
            "{:>10} {:>12.0} {:>9} {:>10.2} {:>10.2} {:>10.2} {:>8.2}",
            rate,
            sustained,
            errors,
            ms(percentile(&latencies, 0.50)),
            ms(p99),
            ms(percentile(&latencies, 0.999)),
            sustained / peer
        );
        if p99 > Duration::from_secs(1) || errors * 100 > total {
            println!("stopping: the server no longer keeps up at {rate}/s");
            break;
        }
    }
    up.stop().await;
    Ok(())
}
