//! Operators' repairs at scale: how fast a replay restores a lost window into the writer, next to
//! the writer's own first pass over the same events in the same run (a replay cannot beat it),
//! and how close a dead-letter redrive keeps to the rate asked for.
//!
//! ```text
//! cargo run --release -p chatdesk-load-tests --bin ops-rate -- [--messages 50000] [--letters 10000]
//! ```
//!
//! Starts a private Redis and a private PostgreSQL (fsync on) on loopback; the writer group runs in
//! this process with `claim_idle = 2s`, so replayed entries are taken within a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chatdesk_core::events::{ContactCreated, ConversationCreated, Event};
use chatdesk_core::{DeadLetter, Envelope, KeyScheme, StreamsConfig, TenantId};
use chatdesk_local::{PostgresOptions, PostgresServer, RedisOptions, RedisServer};
use chatdesk_ops::dlq::DlqFilter;
use chatdesk_ops::replay::ReplayRequest;
use chatdesk_ops::{Actor as OpsActor, Ops};
use chatdesk_store::directory::{InboxKind, create_inbox, create_tenant};
use chatdesk_streams::{Consumer, ConsumerOptions, Producer, RedisConnector, RedisSettings};
use chatdesk_workers::writer::Writer;
use clap::Parser;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Replay into the writer next to its first pass; a redrive's rate next to the rate asked")]
struct Args {
    /// Message events written, lost and replayed.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Dead letters redriven.
    #[arg(long, default_value_t = 10_000)]
    letters: usize,
    /// The redrive's rate, per second.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
}

async fn rows(pool: &chatdesk_store::Pool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(pool).await?)
}

async fn until_rows(pool: &chatdesk_store::Pool, expected: i64, what: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let stored = rows(pool).await?;
        if stored >= expected {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!("{what}: {stored} of {expected} rows in 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("chatdesk-ops-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut redis = RedisServer::start(RedisOptions::new(dir.join("redis"))).await?;
    let mut postgres = PostgresServer::start(PostgresOptions::new(dir.join("postgres"))).await?;
    postgres.ensure_database("bench_ops").await?;
    let pool = chatdesk_store::connect(&postgres.url_for("bench_ops"), 8).await?;
    chatdesk_store::migrate(&pool).await?;
    let tenant = create_tenant(&pool, "bench").await?;
    let inbox =
        create_inbox(&pool, tenant, InboxKind::Generic, "bench", "secret", None, &serde_json::json!({})).await?.id;

    let config = Arc::new(StreamsConfig::from_toml_str(
        "(benchmark)",
        "[streams.events]\npartitions = 1\nretention = { max_age = \"7d\", durable_groups = [\"writer\"] }\n\
         [streams.events.groups.writer]\nbatch_size = 500\nblock = \"100ms\"\nclaim_idle = \"2s\"\n",
    )?);
    let connector = RedisConnector::new(RedisSettings::new(redis.url()))?;
    let client = connector.shared().await?;
    let keys = KeyScheme::new(format!("bench-{}", Uuid::now_v7().simple())).map_err(anyhow::Error::msg)?;
    let producer = Producer::new(client.clone(), keys.clone(), config.clone());
    let ops = Ops { redis: client.clone(), db: Some(pool.clone()), keys: keys.clone(), streams: config.clone() };

    // Twenty conversations, then the messages round-robin over them.
    let conversations: Vec<(Uuid, Uuid)> = (0..20).map(|_| (Uuid::now_v7(), Uuid::now_v7())).collect();
    for (index, (contact, conversation)) in conversations.iter().enumerate() {
        let contact_created = Event::ContactCreated(ContactCreated {
            contact_id: *contact,
            inbox_id: inbox,
            external_id: format!("customer-{index}"),
            name: None,
            email: None,
        });
        producer.append_event(&Envelope::of(TenantId(tenant), &contact_created)).await?;
        let created = Event::ConversationCreated(ConversationCreated {
            conversation_id: *conversation,
            inbox_id: inbox,
            contact_id: *contact,
        });
        producer.append_event(&Envelope::of(TenantId(tenant), &created)).await?;
    }
    let mut appending = tokio::task::JoinSet::new();
    for index in 0..args.messages {
        let (contact, conversation) = conversations[index % conversations.len()];
        let event = chatdesk_load_tests::inbound_message(inbox, contact, conversation, index);
        let producer = producer.clone();
        appending
            .spawn(async move { producer.append_event(&Envelope::of(TenantId(tenant), &event)).await.map(|_| ()) });
        if appending.len() >= 64 {
            appending.join_next().await.context("appender")???;
        }
    }
    while let Some(joined) = appending.join_next().await {
        joined??;
    }
    let total = i64::try_from(args.messages)?;

    let stream = config.stream("events").context("events stream")?;
    let consumer = Consumer::new(
        ConsumerOptions::new(connector.clone(), keys.clone(), stream, "bench"),
        Writer::new(pool.clone()),
    )?;
    let cancel = CancellationToken::new();
    let running = tokio::spawn(consumer.run(cancel.clone()));
    let first_pass = until_rows(&pool, total, "first pass").await?;
    let first_rate = args.messages as f64 / first_pass.as_secs_f64();

    // The incident: every message row and its ledger entry are lost.
    sqlx::query("DELETE FROM messages").execute(&pool).await?;
    sqlx::query("DELETE FROM events WHERE type = 'message.created'").execute(&pool).await?;
    let request = ReplayRequest { family: None, group: "writer".into(), from: "0".into(), to: None, partition: None };
    let started = Instant::now();
    let (plan, task) = ops.replay_start(&request, &OpsActor::cli()).await?;
    let done = ops.replay_run(&plan, task).await?;
    let replay = started.elapsed();
    let restored = rows(&pool).await?;
    if restored != total {
        bail!("the replay restored {restored} of {total} rows ({done:?})");
    }
    let replay_rate = plan.entries as f64 / replay.as_secs_f64();

    // Dead letters of the first `letters` entries, as the runtime writes them.
    let key = keys.partition(&stream.name, 0);
    let entries: Vec<(String, std::collections::HashMap<String, String>)> =
        client.xrange(&key.stream, "-", "+", Some(args.letters as u64)).await?;
    for (id, fields) in &entries {
        let letter = DeadLetter {
            original_id: id.clone(),
            family: "events".into(),
            partition: 0,
            group: "writer".into(),
            consumer: "bench".into(),
            error: "benchmark letter".into(),
            deliveries: 5,
            time_ms: chatdesk_core::envelope::now_ms(),
            original: fields.iter().map(|(field, value)| (field.clone(), value.clone())).collect(),
        };
        let _: String = client.xadd(&key.dead_letters, false, None, "*", letter.encode()).await?;
    }
    let letters = entries.len();
    let started = Instant::now();
    let (found, task) = ops
        .redrive_start(
            &DlqFilter { family: Some("events".into()), ..Default::default() },
            Some(args.rate),
            &OpsActor::cli(),
        )
        .await?;
    let done = ops.redrive_run(found, task).await?;
    let redrive = started.elapsed();
    if done.moved != letters as u64 {
        bail!("the redrive moved {} of {letters} ({done:?})", done.moved);
    }
    let redrive_rate = letters as f64 / redrive.as_secs_f64();
    cancel.cancel();
    running.await??;

    println!(
        "ops-rate: {} message events on one partition (writer batch 500), {} dead letters",
        args.messages, letters
    );
    println!("{:<52} {:>12} {:>16}", "stage", "entries/s", "ratio");
    println!("{:<52} {:>12.0} {:>16}", "writer, first pass (the limit a replay meets)", first_rate, "1.00");
    println!(
        "{:<52} {:>12.0} {:>16}",
        "replay into writer: plan, hand-over, all handled",
        replay_rate,
        format!("{:.2} of writer", replay_rate / first_rate)
    );
    println!(
        "{:<52} {:>12.0} {:>16}",
        format!("dlq redrive, --rate {}", args.rate),
        redrive_rate,
        format!("{:.2} of asked", redrive_rate / args.rate)
    );
    pool.close().await;
    redis.stop().await;
    postgres.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
