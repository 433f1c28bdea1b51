//! The `ops` channel: a snapshot of every stream's health, pushed every few seconds.

use std::collections::BTreeMap;
use std::time::Duration;

use chatdesk_core::{KeyScheme, StreamsConfig};
use chatdesk_streams::RedisClient;
use chatdesk_streams::status::partition_status;
use fred::prelude::*;
use serde::Serialize;

/// How often an `ops` subscriber gets a snapshot.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The event type of a snapshot.
pub const EVENT_TYPE: &str = "ops.streams";

/// The event type of an operator action (replay, redrive, purge, claim, prune) as recorded in
/// the audit log.
pub const AUDIT_EVENT_TYPE: &str = "ops.audit";

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub streams: Vec<StreamHealth>,
}

#[derive(Debug, Serialize)]
pub struct StreamHealth {
    pub stream: String,
    pub partitions: u16,
    /// Entries held, over all partitions.
    pub length: u64,
    /// Entries in the dead-letter partitions.
    pub dead_letters: u64,
    pub groups: Vec<GroupHealth>,
}

#[derive(Debug, Default, Serialize)]
pub struct GroupHealth {
    pub group: String,
    /// Entries not yet delivered to the group; `null` when Redis cannot tell for a partition.
    pub lag: Option<u64>,
    /// Delivered and not acknowledged.
    pub pending: u64,
    /// Consumers on the busiest partition.
    pub consumers: u64,
}

/// Reads the health of every configured stream (XINFO GROUPS and XLEN per partition).
pub async fn snapshot(redis: &RedisClient, keys: &KeyScheme, streams: &StreamsConfig) -> Result<Snapshot, Error> {
    let mut result = Vec::new();
    for stream in streams.streams.values() {
        let mut health = StreamHealth {
            stream: stream.name.to_string(),
            partitions: stream.partitions,
            length: 0,
            dead_letters: 0,
            groups: Vec::new(),
        };
        let mut groups: BTreeMap<String, GroupHealth> = BTreeMap::new();
        for partition in 0..stream.partitions {
            let partition_keys = keys.partition(&stream.name, partition);
            let dead: u64 = redis.xlen(&partition_keys.dead_letters).await?;
            health.dead_letters += dead;
            let statuses = partition_status(redis, keys, stream, partition).await?;
            if let Some(first) = statuses.first() {
                health.length += first.length;
            }
            for status in statuses {
                let group = groups.entry(status.group.clone()).or_insert_with(|| GroupHealth {
                    group: status.group.clone(),
                    lag: Some(0),
                    ..Default::default()
                });
                group.lag = group.lag.zip(status.lag).map(|(sum, lag)| sum + lag);
                group.pending += status.pending;
                group.consumers = group.consumers.max(status.consumers);
            }
        }
        health.groups = groups.into_values().collect();
        result.push(health);
    }
    Ok(Snapshot { streams: result })
}
