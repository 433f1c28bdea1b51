//! Trimming honours retention but never removes what a durable group has not acknowledged.

use std::collections::HashMap;

use chatdesk_core::{EntryId, KeyScheme, StreamsConfig};
use chatdesk_streams::retention::trim_partition;
use chatdesk_streams::{Producer, RedisConnector, RedisSettings};
use fred::prelude::*;
use fred::types::streams::XID;

type Read = HashMap<String, Vec<(String, HashMap<String, String>)>>;

async fn setup(
    retention: &str,
) -> (chatdesk_streams::RedisClient, KeyScheme, StreamsConfig, String, chatdesk_testkit::TestRedis) {
    let redis = chatdesk_testkit::redis().await;
    let client = RedisConnector::new(RedisSettings::new(redis.url())).unwrap().shared().await.unwrap();
    let keys = KeyScheme::new(chatdesk_testkit::unique_prefix()).unwrap();
    let text =
        format!("[streams.events]\npartitions = 1\nretention = {{ {retention} }}\n[streams.events.groups.writer]\n");
    let config = StreamsConfig::from_toml_str("test", &text).unwrap();
    let key = keys.partition(&config.stream("events").unwrap().name, 0).stream;
    (client, keys, config, key, redis)
}

async fn append(
    client: &chatdesk_streams::RedisClient,
    keys: &KeyScheme,
    config: &StreamsConfig,
    count: usize,
) -> Vec<String> {
    let producer = Producer::new(client.clone(), keys.clone(), std::sync::Arc::new(config.clone()));
    let mut ids = Vec::new();
    for index in 0..count {
        let entry = crate::support::entry(index as u64, false);
        ids.push(producer.append_to_partition("events", 0, &entry).await.unwrap().id.to_string());
    }
    ids
}

async fn read(client: &chatdesk_streams::RedisClient, key: &str, count: u64) -> Vec<String> {
    let read: Read =
        client.xreadgroup_map("writer", "c", Some(count), None, false, key, XID::NewInGroup).await.unwrap();
    read.into_values().flatten().map(|(id, _)| id).collect()
}

async fn first_id(client: &chatdesk_streams::RedisClient, key: &str) -> String {
    let entries: Vec<(String, HashMap<String, String>)> = client.xrange(key, "-", "+", Some(1)).await.unwrap();
    entries[0].0.clone()
}

#[tokio::test]
async fn max_len_waits_for_the_durable_group() {
    let (client, keys, config, key, _redis) = setup(r#"max_len = 10, durable_groups = ["writer"]"#).await;
    chatdesk_streams::runtime::ensure_durable_groups(&client, &keys, &config).await.unwrap();
    let stream = config.stream("events").unwrap();
    let ids = append(&client, &keys, &config, 50).await;

    let delivered = read(&client, &key, 30).await;
    let _: i64 = client.xack(&key, "writer", delivered[..20].to_vec()).await.unwrap();
    let trimmed = trim_partition(&client, &keys, stream, 0, 0).await.unwrap();
    assert_eq!(trimmed.removed, 20, "only what the group acknowledged may go");
    assert_eq!(first_id(&client, &key).await, ids[20], "the oldest pending entry is kept");

    let _: i64 = client.xack(&key, "writer", delivered[20..].to_vec()).await.unwrap();
    let rest = read(&client, &key, 100).await;
    let _: i64 = client.xack(&key, "writer", rest).await.unwrap();
    let trimmed = trim_partition(&client, &keys, stream, 0, 0).await.unwrap();
    assert_eq!(trimmed.removed, 20);
    let length: u64 = client.xlen(&key).await.unwrap();
    assert_eq!(length, 10, "max_len applies once everything is acknowledged");
    assert_eq!(first_id(&client, &key).await, ids[40]);
}

#[tokio::test]
async fn max_age_trims_old_acknowledged_entries_only() {
    let (client, keys, config, key, _redis) = setup(r#"max_age = "1h", durable_groups = ["writer"]"#).await;
    chatdesk_streams::runtime::ensure_durable_groups(&client, &keys, &config).await.unwrap();
    let stream = config.stream("events").unwrap();
    let hour_ms = 3_600_000;
    // Two entries from two hours ago (explicit ids), then three recent ones.
    for old in ["1000-0", "1000-1"] {
        let _: String = client.xadd(&key, false, None, old, vec![("type", "t")]).await.unwrap();
    }
    let recent = append(&client, &keys, &config, 3).await;
    let now = recent[2].parse::<EntryId>().unwrap().millis;
    let two_hours_later = 1000 + 2 * hour_ms;

    // Nothing read yet: the group still needs everything.
    let trimmed = trim_partition(&client, &keys, stream, 0, now.max(two_hours_later)).await.unwrap();
    assert_eq!(trimmed.removed, 0);

    let everything = read(&client, &key, 100).await;
    let _: i64 = client.xack(&key, "writer", everything).await.unwrap();
    let trimmed = trim_partition(&client, &keys, stream, 0, now).await.unwrap();
    assert_eq!(trimmed.removed, 2, "entries older than max_age go, recent ones stay");
    assert_eq!(first_id(&client, &key).await, recent[0]);
}

#[tokio::test]
async fn a_missing_durable_group_blocks_trimming() {
    let (client, keys, config, _key, _redis) = setup(r#"max_len = 1, durable_groups = ["writer"]"#).await;
    let stream = config.stream("events").unwrap();
    append(&client, &keys, &config, 5).await;
    let trimmed = trim_partition(&client, &keys, stream, 0, 0).await.unwrap();
    assert_eq!(trimmed.removed, 0);
}

#[tokio::test]
async fn groups_of_gone_gateway_nodes_are_removed() {
    let (client, keys, config, key, _redis) = setup(r#"durable_groups = ["writer"]"#).await;
    let stream = config.stream("events").unwrap();
    append(&client, &keys, &config, 3).await;
    for group in ["gateway.gone", "gateway.busy", "gateway.me", "writer"] {
        chatdesk_streams::runtime::ensure_group(&client, &key, group, chatdesk_core::StartFrom::Earliest)
            .await
            .unwrap();
        let _: Read =
            client.xreadgroup_map(group, "c", Some(1), None, false, key.as_str(), XID::NewInGroup).await.unwrap();
    }
    // gone: everything acknowledged; busy: one entry still pending.
    let delivered: Vec<(String, HashMap<String, String>)> = client.xrange(&key, "-", "+", Some(1)).await.unwrap();
    let _: i64 = client.xack(&key, "gateway.gone", delivered[0].0.as_str()).await.unwrap();
    let removed = chatdesk_streams::retention::remove_idle_groups(
        &client,
        &keys,
        stream,
        "gateway.",
        &["gateway.me".to_owned()],
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(removed, ["gateway.gone@0"]);
    let groups: Vec<HashMap<String, fred::types::Value>> = client.xinfo_groups(&key).await.unwrap();
    assert_eq!(groups.len(), 3, "the busy one, our own and the durable writer stay");
}
