//! Lag and pending per group and partition (XINFO GROUPS), exported as gauges by every running
//! consumer and printed by `chatdesk streams status`.

use std::collections::HashMap;
use std::time::Duration;

use chatdesk_core::{GroupName, KeyScheme, StreamSettings};
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::entry::value_text;
use crate::metrics;

const MONITOR_INTERVAL: Duration = Duration::from_secs(5);

/// One group on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub stream: String,
    pub partition: u16,
    pub group: String,
    pub consumers: u64,
    /// Delivered but not acknowledged.
    pub pending: u64,
    /// Not yet delivered to the group; `None` when Redis cannot tell (after deletions in the
    /// unread range).
    pub lag: Option<u64>,
    pub last_delivered_id: String,
    /// Entries in the partition.
    pub length: u64,
}

/// A count field of an `XINFO` reply; `None` when missing or nil: fred reads nil as 0, and a
/// nil lag (Redis cannot tell) must not become 0.
pub fn count_field(value: Option<&Value>) -> Option<u64> {
    match value {
        None | Some(Value::Null) => None,
        Some(value) => value.as_u64(),
    }
}

/// Every group of one partition, as Redis reports it. A partition that does not exist yet has
/// no groups.
pub async fn partition_status(
    client: &Client,
    keys: &KeyScheme,
    stream: &StreamSettings,
    partition: u16,
) -> Result<Vec<GroupStatus>, Error> {
    let key = keys.partition(&stream.name, partition).stream;
    let exists: u64 = client.exists(&key).await?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let length: u64 = client.xlen(&key).await?;
    let groups: Vec<HashMap<String, Value>> = client.xinfo_groups(&key).await?;
    Ok(groups
        .into_iter()
        .map(|group| GroupStatus {
            stream: stream.name.to_string(),
            partition,
            group: group.get("name").map(value_text).unwrap_or_default(),
            consumers: count_field(group.get("consumers")).unwrap_or(0),
            pending: count_field(group.get("pending")).unwrap_or(0),
            lag: count_field(group.get("lag")),
            last_delivered_id: group.get("last-delivered-id").map(value_text).unwrap_or_default(),
            length,
        })
        .collect())
}

/// Publishes lag, pending and consumer counts of `group` every few seconds until cancelled.
pub async fn monitor_group(
    client: Client,
    keys: KeyScheme,
    stream: StreamSettings,
    group: GroupName,
    partitions: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u16>>>,
    cancel: CancellationToken,
) {
    loop {
        let read: Vec<u16> = partitions.lock().expect("partition set lock").iter().copied().collect();
        for partition in read {
            match partition_status(&client, &keys, &stream, partition).await {
                Ok(statuses) => {
                    for status in statuses.into_iter().filter(|status| status.group == group.as_str()) {
                        publish(&status);
                    }
                }
                Err(error) => {
                    tracing::debug!(stream = %stream.name, partition, error = %error, "cannot read group status")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(MONITOR_INTERVAL) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

pub fn publish(status: &GroupStatus) {
    let labels = [
        ("stream", status.stream.clone()),
        ("group", status.group.clone()),
        ("partition", status.partition.to_string()),
    ];
    if let Some(lag) = status.lag {
        ::metrics::gauge!(metrics::GROUP_LAG_ENTRIES, &labels).set(lag as f64);
    }
    ::metrics::gauge!(metrics::GROUP_PENDING_ENTRIES, &labels).set(status.pending as f64);
    ::metrics::gauge!(metrics::GROUP_CONSUMERS, &labels).set(status.consumers as f64);
    let stream_labels = [("stream", status.stream.clone()), ("partition", status.partition.to_string())];
    ::metrics::gauge!(metrics::STREAM_LENGTH_ENTRIES, &stream_labels).set(status.length as f64);
}
