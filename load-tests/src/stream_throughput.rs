//! Stream throughput: entries per second through a no-op consumer group (1 and 3 consumers,
//! batch 100 and 500) next to raw `redis-benchmark` XADD figures measured in the same run
//! against the same Redis.
//!
//! ```text
//! cargo run --release -p chatdesk-load-tests --bin stream-throughput -- [--entries 200000]
//! ```
//!
//! Without `--redis-url` it starts a private, non-persistent `redis-server` on a free loopback
//! port, so the figures measure chatdesk and Redis, not the disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chatdesk_core::{GroupName, KeyScheme, StreamsConfig, TenantId};
use chatdesk_load_tests::redis_benchmark;
use chatdesk_local::{RedisOptions, RedisServer};
use chatdesk_streams::{
    Batch, Consumer, ConsumerOptions, Envelope, Handler, HandlerError, Outcomes, Producer, RedisConnector,
    RedisSettings,
};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Entries per second through chatdesk consumer groups, next to raw redis-benchmark XADD")]
struct Args {
    /// Entries per scenario.
    #[arg(long, default_value_t = 200_000)]
    entries: u64,
    /// Partitions of the benchmark stream.
    #[arg(long, default_value_t = 8)]
    partitions: u16,
    /// Concurrent appenders when filling the stream.
    #[arg(long, default_value_t = 64)]
    appenders: u64,
    /// Use this Redis instead of a private one (loopback only; the benchmark writes to it).
    #[arg(long)]
    redis_url: Option<String>,
}

/// Counts entries and does nothing else.
struct NoOp {
    handled: Arc<AtomicU64>,
}

impl Handler for NoOp {
    fn group(&self) -> GroupName {
        GroupName::parse("noop").expect("a valid group name")
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        self.handled.fetch_add(batch.entries.len() as u64, Ordering::Relaxed);
        Ok(Outcomes::all_done())
    }
}

fn config(partitions: u16, batch_size: u32) -> anyhow::Result<StreamsConfig> {
    let text = format!(
        "[streams.bench]\npartitions = {partitions}\n[streams.bench.groups.noop]\nbatch_size = {batch_size}\nblock = \"100ms\"\nclaim_idle = \"60s\"\n"
    );
    Ok(StreamsConfig::from_toml_str("(benchmark)", &text)?)
}

async fn fill(producer: &Producer, entries: u64, appenders: u64, partitions: u16) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for appender in 0..appenders {
        let producer = producer.clone();
        tasks.spawn(async move {
            let tenant = TenantId(uuid::Uuid::now_v7());
            let mut index = appender;
            while index < entries {
                let entry = Envelope::of(tenant, &Bench(index));
                producer.append_to_partition("bench", (index % u64::from(partitions)) as u16, &entry).await?;
                index += appenders;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(entries as f64 / started.elapsed().as_secs_f64())
}

async fn consume(
    connector: &RedisConnector,
    args: &Args,
    consumers: usize,
    batch_size: u32,
) -> anyhow::Result<(f64, f64)> {
    let config = Arc::new(config(args.partitions, batch_size)?);
    let keys = KeyScheme::new(format!("bench-{}", uuid::Uuid::now_v7().simple())).map_err(anyhow::Error::msg)?;
    let client = connector.shared().await?;
    let producer = Producer::new(client.clone(), keys.clone(), config.clone());
    let append_rate = fill(&producer, args.entries, args.appenders, args.partitions).await?;

    let handled = Arc::new(AtomicU64::new(0));
    let cancel = CancellationToken::new();
    let stream = config.stream("bench").context("bench stream")?;
    let started = Instant::now();
    let mut running = Vec::new();
    for index in 0..consumers {
        let consumer = Consumer::new(
            ConsumerOptions::new(connector.clone(), keys.clone(), stream, format!("bench-{index}")),
            NoOp { handled: handled.clone() },
        )?;
        running.push(tokio::spawn(consumer.run(cancel.clone())));
    }
    while handled.load(Ordering::Relaxed) < args.entries {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("consumers did not finish within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let consume_rate = args.entries as f64 / started.elapsed().as_secs_f64();
    cancel.cancel();
    for consumer in running {
        consumer.await??;
    }
    // Free the memory for the next scenario.
    for partition in 0..args.partitions {
        let _: i64 =
            fred::interfaces::KeysInterface::del(&client, keys.partition(&stream.name, partition).stream).await?;
    }
    Ok((append_rate, consume_rate))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile_dir()?;
    let mut private = None;
    let url = match &args.redis_url {
        Some(url) => url.clone(),
        None => {
            let server = RedisServer::start(RedisOptions::new(dir.join("redis"))).await?;
            let url = server.url();
            private = Some(server);
            url
        }
    };
    let port: u16 = url.rsplit(':').next().and_then(|port| port.parse().ok()).context("the Redis URL needs a port")?;
    let connector = RedisConnector::new(RedisSettings::new(&url))?;

    println!("stream-throughput: {} entries per scenario, {} partitions, Redis {url}", args.entries, args.partitions);
    let raw = redis_benchmark(port, args.entries, 1, 50)?;
    let raw_pipelined = redis_benchmark(port, args.entries, 16, 50)?;
    println!("{:<44} {:>14}", "scenario", "entries/s");
    println!("{:<44} {:>14.0}", "redis-benchmark XADD (50 clients)", raw);
    println!("{:<44} {:>14.0}", "redis-benchmark XADD (50 clients, pipeline 16)", raw_pipelined);
    for (consumers, batch_size) in [(1, 100), (1, 500), (3, 100), (3, 500)] {
        let (append_rate, consume_rate) = consume(&connector, &args, consumers, batch_size).await?;
        println!("{:<44} {:>14.0}", format!("chatdesk Producer append ({} appenders)", args.appenders), append_rate);
        println!("{:<44} {:>14.0}", format!("no-op group: {consumers} consumer(s), batch {batch_size}"), consume_rate);
    }
    if let Some(mut server) = private {
        server.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("chatdesk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The benchmark's entries: a number, so the cost measured is the runtime's, not a payload's.
struct Bench(u64);

impl chatdesk_core::Record for Bench {
    fn record_type(&self) -> &'static str {
        "bench"
    }

    fn conversation(&self) -> Option<uuid::Uuid> {
        None
    }

    fn to_payload(&self) -> serde_json::Value {
        serde_json::json!({ "n": self.0 })
    }

    fn from_payload(_: &str, payload: &str) -> Result<Self, chatdesk_core::envelope::PayloadError> {
        let value: serde_json::Value = serde_json::from_str(payload)?;
        Ok(Bench(value["n"].as_u64().unwrap_or(0)))
    }
}
