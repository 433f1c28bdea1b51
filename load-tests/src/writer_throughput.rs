//! Writer throughput: events per second from the `events` stream into PostgreSQL through the
//! `writer` consumer group, for batch sizes 100, 500 and 2000 with one tenant (every event in one
//! partition, read in order by one task: the single-company deployment), and with the shipped
//! settings (8 partitions, batch 500, `batch_wait` 100 ms) and the messages spread over
//! `--tenants` tenants; next to a raw PostgreSQL `COPY` of the same message rows measured in the
//! same run against the same server.
//!
//! ```text
//! cargo run --release -p chatdesk-load-tests --bin writer-throughput -- [--messages 100000] [--tenants 32]
//! ```
//!
//! Starts a private Redis and a private PostgreSQL (fsync on, as in production) on loopback. The
//! end of a run is read from Redis (the group has nothing left to deliver or acknowledge), not by
//! counting rows in PostgreSQL while the writer works, which would take a share of the server
//! being measured; the rows are counted once at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chatdesk_core::Envelope;
use chatdesk_core::events::{ContactCreated, ConversationCreated, Event};
use chatdesk_core::{KeyScheme, StreamsConfig, TenantId};
use chatdesk_local::{PostgresOptions, PostgresServer, RedisOptions, RedisServer};
use chatdesk_store::directory::{InboxKind, create_inbox, create_tenant};
use chatdesk_streams::{Consumer, ConsumerOptions, Producer, RedisConnector, RedisSettings};
use chatdesk_workers::writer::Writer;
use clap::Parser;
use fred::interfaces::StreamsInterface;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Writer events/s for batch sizes 100, 500, 2000 next to a raw PostgreSQL COPY")]
struct Args {
    /// Message events per scenario.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Conversations the messages are spread over.
    #[arg(long, default_value_t = 200)]
    conversations: usize,
    /// Tenants of the shipped-settings scenario (their events spread over 8 partitions).
    #[arg(long, default_value_t = 32)]
    tenants: usize,
}

struct Scenario {
    pool: chatdesk_store::Pool,
    /// Each tenant with its inbox.
    tenants: Vec<(Uuid, Uuid)>,
}

/// Where a run's events go: partitions, and the writer group's batch.
struct Shape {
    partitions: u16,
    batch_size: u32,
    batch_wait_ms: u64,
}

async fn fresh_database(postgres: &PostgresServer, name: &str, tenants: usize) -> anyhow::Result<Scenario> {
    postgres.ensure_database(name).await?;
    let pool = chatdesk_store::connect(&postgres.url_for(name), 8).await?;
    chatdesk_store::migrate(&pool).await?;
    let mut all = Vec::with_capacity(tenants);
    for index in 0..tenants.max(1) {
        let tenant = create_tenant(&pool, &format!("bench {index}")).await?;
        let inbox =
            create_inbox(&pool, tenant, InboxKind::Generic, "bench", "secret", None, &serde_json::json!({})).await?.id;
        all.push((tenant, inbox));
    }
    Ok(Scenario { pool, tenants: all })
}

/// Contacts and conversations first (each in its tenant, round-robin), then the messages
/// round-robin over the conversations.
fn events(scenario: &Scenario, args: &Args) -> Vec<(Uuid, Event)> {
    let pairs: Vec<(Uuid, Uuid, Uuid, Uuid)> = (0..args.conversations)
        .map(|index| {
            let (tenant, inbox) = scenario.tenants[index % scenario.tenants.len()];
            (tenant, inbox, Uuid::now_v7(), Uuid::now_v7())
        })
        .collect();
    let mut events = Vec::with_capacity(args.messages + 2 * args.conversations);
    for (index, (tenant, inbox, contact, conversation)) in pairs.iter().enumerate() {
        events.push((
            *tenant,
            Event::ContactCreated(ContactCreated {
                contact_id: *contact,
                inbox_id: *inbox,
                external_id: format!("customer-{index}"),
                name: Some(format!("Customer {index}")),
                email: None,
            }),
        ));
        events.push((
            *tenant,
            Event::ConversationCreated(ConversationCreated {
                conversation_id: *conversation,
                inbox_id: *inbox,
                contact_id: *contact,
            }),
        ));
    }
    for index in 0..args.messages {
        let (tenant, inbox, contact, conversation) = pairs[index % pairs.len()];
        events.push((tenant, chatdesk_load_tests::inbound_message(inbox, contact, conversation, index)));
    }
    events
}

/// Whether the writer group has delivered and acknowledged everything on every partition.
async fn drained(
    client: &chatdesk_streams::RedisClient,
    keys: &KeyScheme,
    stream: &chatdesk_core::StreamSettings,
) -> anyhow::Result<bool> {
    for partition in 0..stream.partitions {
        let groups = chatdesk_streams::status::partition_status(client, keys, stream, partition).await?;
        let done = match groups.iter().find(|group| group.group == "writer") {
            Some(group) => group.pending == 0 && group.lag == Some(0),
            // Not created yet (the consumer is starting): done only if there is nothing to read.
            None => client.xlen::<u64, _>(keys.partition(&stream.name, partition).stream.as_str()).await? == 0,
        };
        if !done {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn writer_rate(redis_url: &str, scenario: &Scenario, args: &Args, shape: &Shape) -> anyhow::Result<f64> {
    let Shape { partitions, batch_size, batch_wait_ms } = shape;
    let config = Arc::new(StreamsConfig::from_toml_str(
        "(benchmark)",
        &format!(
            "[streams.events]\npartitions = {partitions}\n[streams.events.groups.writer]\nbatch_size = {batch_size}\nbatch_wait = \"{batch_wait_ms}ms\"\nblock = \"100ms\"\nclaim_idle = \"5m\"\nexclusive = true\n"
        ),
    )?);
    let connector = RedisConnector::new(RedisSettings::new(redis_url))?;
    let client = connector.shared().await?;
    let keys = KeyScheme::new(format!("bench-{}", Uuid::now_v7().simple())).map_err(anyhow::Error::msg)?;
    let producer = Producer::new(client, keys.clone(), config.clone());
    let mut appending = tokio::task::JoinSet::new();
    let all = Arc::new(events(scenario, args));
    // Contacts and conversations are appended (in order) before any message that refers to them;
    // the messages go concurrently.
    for (tenant, event) in all.iter() {
        let entry = Envelope::of(TenantId(*tenant), event);
        if !matches!(event, Event::MessageCreated(_)) {
            producer.append_event(&entry).await?;
            continue;
        }
        let producer = producer.clone();
        appending.spawn(async move { producer.append_event(&entry).await.map(|_| ()) });
        if appending.len() >= 64 {
            appending.join_next().await.context("appender")???;
        }
    }
    while let Some(joined) = appending.join_next().await {
        joined??;
    }

    let stream = config.stream("events").context("events stream")?;
    let consumer = Consumer::new(
        ConsumerOptions::new(connector.clone(), keys.clone(), stream, "bench"),
        Writer::new(scenario.pool.clone()),
    )?;
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(consumer.run(cancel.clone()));
    let redis = connector.shared().await?;
    while !drained(&redis, &keys, stream).await? {
        if started.elapsed() > Duration::from_secs(900) {
            bail!("the writer has not stored the run's events in 15 minutes");
        }
        // Three calls per partition a turn: often enough to time seconds-long runs, rarely
        // enough to leave the Redis being read alone.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    cancel.cancel();
    running.await??;
    let expected = i64::try_from(args.messages)?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&scenario.pool).await?;
    if rows != expected {
        let mut dead_letters = 0u64;
        let mut groups = Vec::new();
        for partition in 0..stream.partitions {
            let partition_keys = keys.partition(&stream.name, partition);
            dead_letters += redis.xlen::<u64, _>(partition_keys.dead_letters.as_str()).await?;
            groups.push(chatdesk_streams::status::partition_status(&redis, &keys, stream, partition).await?);
        }
        bail!(
            "the writer acknowledged every event but stored {rows} of {expected} messages ({dead_letters} dead-lettered; \
             groups after {:?}: {groups:?})",
            started.elapsed()
        );
    }
    Ok(rate)
}

/// COPY of the same message rows (after their conversations exist), one statement.
async fn copy_rate(scenario: &Scenario, args: &Args) -> anyhow::Result<f64> {
    let all = events(scenario, args);
    let (setup, messages): (Vec<_>, Vec<_>) =
        all.iter().partition(|(_, event)| !matches!(event, Event::MessageCreated(_)));
    let stored: Vec<chatdesk_store::writer::StoredEvent> = setup
        .iter()
        .enumerate()
        .map(|(index, (tenant, event))| chatdesk_store::writer::StoredEvent {
            event_id: Uuid::now_v7(),
            tenant_id: *tenant,
            partition: 0,
            offset: chatdesk_core::EntryId::new(1, index as u64),
            occurred_at_ms: 1_763_800_000_000,
            event: (*event).clone(),
            payload: None,
        })
        .collect();
    chatdesk_store::writer::apply_events(&scenario.pool, &stored).await?;
    let mut data = String::with_capacity(messages.len() * 200);
    for (index, (tenant, event)) in messages.iter().enumerate() {
        let Event::MessageCreated(message) = event else { continue };
        data.push_str(&format!(
            "{}\t{}\t{}\t2-{index}\t2\t{index}\tinbound\tcustomer\t{}\t{}\t\\N\t{}\t\\N\t\\N\t-1\t2026-11-22 00:00:00+00\n",
            Uuid::now_v7(),
            tenant,
            message.conversation_id,
            message.contact_id,
            message.text,
            message.provider_message_id.as_deref().unwrap_or_default(),
        ));
    }
    let mut connection = scenario.pool.acquire().await?;
    let started = Instant::now();
    let mut copy = connection
        .copy_in_raw(
            "COPY messages (event_id, tenant_id, conversation_id, stream_offset, offset_ms, offset_seq, direction, sender_kind, \
             sender_id, body, extra, provider_message_id, client_msg_id, status, status_rank, created_at) FROM STDIN",
        )
        .await?;
    copy.send(data.as_bytes()).await?;
    let rows = copy.finish().await?;
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("chatdesk-writer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut redis = RedisServer::start(RedisOptions::new(dir.join("redis"))).await?;
    let mut postgres = PostgresServer::start(PostgresOptions::new(dir.join("postgres"))).await?;
    println!(
        "writer-throughput: {} message events (+{} contact/conversation events) per scenario, PostgreSQL with fsync on",
        args.messages,
        2 * args.conversations
    );
    println!("{:<40} {:>14}", "scenario", "events/s");
    for batch_size in [100, 500, 2000] {
        let scenario = fresh_database(&postgres, &format!("bench_writer_{batch_size}"), 1).await?;
        let shape = Shape { partitions: 1, batch_size, batch_wait_ms: 0 };
        let rate = writer_rate(&redis.url(), &scenario, &args, &shape).await?;
        println!("{:<40} {:>14.0}", format!("writer group, batch {batch_size}"), rate);
        scenario.pool.close().await;
    }
    let scenario = fresh_database(&postgres, "bench_writer_shipped", args.tenants).await?;
    let shape = Shape { partitions: 8, batch_size: 500, batch_wait_ms: 100 };
    let rate = writer_rate(&redis.url(), &scenario, &args, &shape).await?;
    println!("{:<40} {:>14.0}", format!("writer group, shipped, {} tenants", args.tenants), rate);
    scenario.pool.close().await;
    let scenario = fresh_database(&postgres, "bench_copy", 1).await?;
    let rate = copy_rate(&scenario, &args).await?;
    println!("{:<40} {:>14.0}", "raw COPY of the message rows", rate);
    scenario.pool.close().await;
    redis.stop().await;
    postgres.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
