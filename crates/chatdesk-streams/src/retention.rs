//! Retention: trimming streams to `retention.max_age` / `retention.max_len` without ever removing
//! an entry that a durable group has not acknowledged.
//!
//! For each partition the trim point (an `XTRIM … MINID`) is the lower of
//! - what retention allows: entries older than `max_age`, or beyond the newest `max_len`, and
//! - what every durable group allows: its oldest pending entry, or, with nothing pending, the
//!   entry after the last one it was delivered (everything up to that is acknowledged).
//!
//! A durable group missing from a partition blocks trimming there: nothing is known about what
//! it has read. Trimming is idempotent, so several processes may run it at once.

use std::collections::HashMap;
use std::time::Duration;

use chatdesk_core::{EntryId, KeyScheme, StreamSettings, StreamsConfig};
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::entry::{now_ms, value_text};
use crate::metrics;

/// XPENDING's summary: count, oldest id, newest id, pending per consumer.
pub(crate) type PendingSummary = (u64, Option<String>, Option<String>, Vec<(String, String)>);

/// Entries looked at per partition and pass to find the `max_len` cut; a long backlog is cut
/// down over several passes instead of one slow command.
const MAX_LEN_SCAN: u64 = 10_000;

/// What one partition's trim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    pub partition: u16,
    /// The MINID used; `None` when nothing could be trimmed.
    pub min_id: Option<EntryId>,
    pub removed: u64,
}

fn successor(id: EntryId) -> EntryId {
    EntryId::new(id.millis, id.sequence.saturating_add(1))
}

/// What one durable group still needs of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The group is not on the partition: nothing is known about what it has read.
    Missing,
    /// Its oldest pending entry (delivered, not acknowledged).
    Pending(EntryId),
    /// The entry after the last one delivered (everything up to that is acknowledged).
    Unread(EntryId),
}

impl Need {
    /// The lowest entry id the group still needs; `None` when everything is.
    pub fn floor(&self) -> Option<EntryId> {
        match self {
            Need::Missing => None,
            Need::Pending(id) | Need::Unread(id) => Some(*id),
        }
    }
}

/// What each durable group of `stream` still needs of the partition at `key`.
pub async fn durable_needs(client: &Client, key: &str, stream: &StreamSettings) -> Result<Vec<(String, Need)>, Error> {
    let groups: Vec<HashMap<String, Value>> = client.xinfo_groups(key).await?;
    let mut needs = Vec::new();
    for durable in &stream.retention.durable_groups {
        let Some(info) =
            groups.iter().find(|group| group.get("name").map(value_text).as_deref() == Some(durable.as_str()))
        else {
            needs.push((durable.to_string(), Need::Missing));
            continue;
        };
        let pending = info.get("pending").and_then(Value::as_u64).unwrap_or(0);
        let need = if pending > 0 {
            let (_, oldest, _, _): PendingSummary = client.xpending(key, durable.as_str(), ()).await?;
            match oldest.and_then(|id| id.parse().ok()) {
                Some(id) => Need::Pending(id),
                None => Need::Missing,
            }
        } else {
            match info.get("last-delivered-id").map(value_text).and_then(|id| id.parse().ok()) {
                Some(id) => Need::Unread(successor(id)),
                None => Need::Missing,
            }
        };
        needs.push((durable.to_string(), need));
    }
    Ok(needs)
}

/// The lowest entry id every durable group still needs, or `None` when a durable group is
/// missing (then nothing may be trimmed). Every entry below it has been acknowledged by all of
/// them: for the events stream, stored by the writer.
pub async fn durable_floor(client: &Client, key: &str, stream: &StreamSettings) -> Result<Option<EntryId>, Error> {
    let mut floor: Option<EntryId> = None;
    for (_, need) in durable_needs(client, key, stream).await? {
        let Some(group_floor) = need.floor() else { return Ok(None) };
        floor = Some(floor.map_or(group_floor, |current| current.min(group_floor)));
    }
    Ok(floor)
}

/// The MINID retention alone would trim to, if any.
pub async fn retention_cut(
    client: &Client,
    key: &str,
    stream: &StreamSettings,
    now_ms: u64,
) -> Result<Option<EntryId>, Error> {
    let mut cut: Option<EntryId> = None;
    if let Some(max_age) = stream.retention.max_age {
        let oldest_kept = now_ms.saturating_sub(max_age.as_millis() as u64);
        cut = Some(EntryId::new(oldest_kept, 0));
    }
    if let Some(max_len) = stream.retention.max_len {
        let length: u64 = client.xlen(key).await?;
        if length > max_len {
            let excess = (length - max_len).min(MAX_LEN_SCAN);
            let oldest: Vec<(String, HashMap<String, Value>)> = client.xrange(key, "-", "+", Some(excess)).await?;
            if let Some(last) = oldest.last().and_then(|(id, _)| id.parse::<EntryId>().ok()) {
                let by_length = successor(last);
                cut = Some(cut.map_or(by_length, |current| current.max(by_length)));
            }
        }
    }
    Ok(cut)
}

/// Trims one partition as far as retention and the durable groups allow.
pub async fn trim_partition(
    client: &Client,
    keys: &KeyScheme,
    stream: &StreamSettings,
    partition: u16,
    now_ms: u64,
) -> Result<Trimmed, Error> {
    let key = keys.partition(&stream.name, partition).stream;
    let nothing = Trimmed { partition, min_id: None, removed: 0 };
    let exists: u64 = client.exists(&key).await?;
    if exists == 0 {
        return Ok(nothing);
    }
    let Some(cut) = retention_cut(client, &key, stream, now_ms).await? else {
        return Ok(nothing);
    };
    let min_id = if stream.retention.durable_groups.is_empty() {
        cut
    } else {
        match durable_floor(client, &key, stream).await? {
            Some(floor) => cut.min(floor),
            None => return Ok(nothing),
        }
    };
    let removed: u64 = client.xtrim(&key, ("MINID", "=", min_id.to_string())).await?;
    if removed > 0 {
        ::metrics::counter!(metrics::ENTRIES_TRIMMED_TOTAL, "stream" => stream.name.to_string()).increment(removed);
    }
    Ok(Trimmed { partition, min_id: Some(min_id), removed })
}

/// Trims every partition of every family every `interval` until cancelled.
pub async fn run(
    client: Client,
    keys: KeyScheme,
    config: StreamsConfig,
    interval: Duration,
    cancel: CancellationToken,
) {
    loop {
        for stream in config.streams.values() {
            for partition in 0..stream.partitions {
                match trim_partition(&client, &keys, stream, partition, now_ms()).await {
                    Ok(trimmed) if trimmed.removed > 0 => {
                        tracing::debug!(stream = %stream.name, partition, removed = trimmed.removed, "trimmed")
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(stream = %stream.name, partition, error = %error, "trim failed")
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Removes the groups named `<prefix><anything>` not in `keep` whose consumers have all been
/// idle for at least `idle` and that hold nothing pending: the groups of gateway nodes that are
/// gone. Such groups are not durable (they never hold back trimming), but left alone they pile
/// up in `XINFO GROUPS` and in lag metrics. Returns the groups removed.
pub async fn remove_idle_groups(
    client: &Client,
    keys: &KeyScheme,
    stream: &StreamSettings,
    prefix: &str,
    keep: &[String],
    idle: Duration,
) -> Result<Vec<String>, Error> {
    let mut removed = Vec::new();
    for partition in 0..stream.partitions {
        let key = keys.partition(&stream.name, partition).stream;
        let exists: u64 = client.exists(&key).await?;
        if exists == 0 {
            continue;
        }
        let groups: Vec<HashMap<String, Value>> = client.xinfo_groups(&key).await?;
        for group in groups {
            let Some(name) = group.get("name").map(value_text) else { continue };
            let pending = group.get("pending").and_then(Value::as_u64).unwrap_or(0);
            if !name.starts_with(prefix) || keep.contains(&name) || pending > 0 {
                continue;
            }
            let consumers: Vec<HashMap<String, Value>> = client.xinfo_consumers(&key, name.as_str()).await?;
            let all_idle = consumers.iter().all(|consumer| {
                consumer.get("idle").and_then(Value::as_u64).unwrap_or(u64::MAX) >= idle.as_millis() as u64
            });
            if all_idle {
                let _: i64 = client.xgroup_destroy(&key, name.as_str()).await?;
                removed.push(format!("{name}@{partition}"));
            }
        }
    }
    Ok(removed)
}
