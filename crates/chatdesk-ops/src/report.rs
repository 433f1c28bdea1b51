//! Where every partition and group stands, told honestly: Redis 7.0 reports a group's `lag` as
//! nil after `XGROUP SETID` or a deletion in the unread range, and a status printing 0 then would
//! lie. Such a lag is counted here (bounded) and marked `lag_estimated`.

use std::collections::HashMap;

use chatdesk_core::{EntryId, StreamSettings};
use chatdesk_streams::entry::{now_ms, value_text};
use chatdesk_streams::retention::{Need, durable_needs, retention_cut};
use fred::prelude::*;
use serde::Serialize;

use crate::{Ops, Result};

/// Entries counted at most to estimate one group's lag; past it the figure is a lower bound.
pub const LAG_COUNT_LIMIT: u64 = 10_000;
const LAG_PAGE: u64 = 1_000;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PartitionReport {
    pub stream: String,
    pub partition: u16,
    pub length: u64,
    /// The oldest entry still in the partition, and its age in milliseconds.
    pub first_id: Option<String>,
    pub first_age_ms: Option<u64>,
    pub last_id: Option<String>,
    pub last_age_ms: Option<u64>,
    /// Entries in the partition's dead-letter stream.
    pub dead_letters: u64,
    /// Set when a durable group keeps entries that retention would trim.
    pub retention_held_by: Option<RetentionHold>,
    pub groups: Vec<GroupReport>,
}

/// A durable group keeping entries past retention: a stuck or abandoned group makes its stream
/// grow without bound.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RetentionHold {
    pub group: String,
    /// `pending` (an entry delivered and never acknowledged), `unread` (the group has not read
    /// this far) or `missing` (the group does not exist on the partition).
    pub reason: String,
    /// The oldest entry the group still needs (`null` when missing: it needs everything).
    pub since_id: Option<String>,
    /// How long that entry has waited, in milliseconds.
    pub held_ms: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GroupReport {
    pub group: String,
    /// Listed in the stream's `retention.durable_groups`.
    pub durable: bool,
    /// Entries not yet delivered to the group.
    pub lag: u64,
    /// Redis could not tell (after `XGROUP SETID` or a trim or deletion past the group's
    /// position): `lag` was counted in the stream instead.
    pub lag_estimated: bool,
    /// The count stopped at its limit: the lag is at least `lag`.
    pub lag_at_least: bool,
    /// Delivered, not acknowledged.
    pub pending: u64,
    pub oldest_pending_id: Option<String>,
    pub oldest_pending_age_ms: Option<u64>,
    pub last_delivered_id: String,
    pub consumers: Vec<ConsumerReport>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConsumerReport {
    pub name: String,
    pub pending: u64,
    /// Since the consumer last read or claimed, in milliseconds.
    pub idle_ms: u64,
}

/// XPENDING's summary: count, oldest id, newest id, pending per consumer.
type PendingSummary = (u64, Option<String>, Option<String>, Vec<(String, String)>);

fn age(now: u64, id: &str) -> Option<u64> {
    id.parse::<EntryId>().ok().map(|id| now.saturating_sub(id.millis))
}

fn number(map: &HashMap<String, Value>, field: &str) -> Option<u64> {
    chatdesk_streams::status::count_field(map.get(field))
}

/// XINFO STREAM's entry fields are `[id, [field, value…]]`; the id is all we need.
fn entry_id(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Array(parts) => parts.first().map(value_text).filter(|id| !id.is_empty()),
        _ => None,
    }
}

impl Ops {
    /// Every partition of `family` (all families when `None`).
    pub async fn report(&self, family: Option<&str>) -> Result<Vec<PartitionReport>> {
        let mut reports = Vec::new();
        for stream in self.families(family)? {
            for partition in 0..stream.partitions {
                reports.push(self.partition_report(&stream, partition).await?);
            }
        }
        Ok(reports)
    }

    pub async fn partition_report(&self, stream: &StreamSettings, partition: u16) -> Result<PartitionReport> {
        let keys = self.keys.partition(&stream.name, partition);
        let now = now_ms();
        let dead_letters: u64 = self.redis.xlen(&keys.dead_letters).await?;
        let mut report = PartitionReport {
            stream: stream.name.to_string(),
            partition,
            length: 0,
            first_id: None,
            first_age_ms: None,
            last_id: None,
            last_age_ms: None,
            dead_letters,
            retention_held_by: None,
            groups: Vec::new(),
        };
        let exists: u64 = self.redis.exists(&keys.stream).await?;
        if exists == 0 {
            return Ok(report);
        }
        let info: HashMap<String, Value> = self.redis.xinfo_stream(&keys.stream, false, None).await?;
        report.length = number(&info, "length").unwrap_or(0);
        report.first_id = entry_id(info.get("first-entry"));
        report.last_id = entry_id(info.get("last-entry"));
        report.first_age_ms = report.first_id.as_deref().and_then(|id| age(now, id));
        report.last_age_ms = report.last_id.as_deref().and_then(|id| age(now, id));

        let groups: Vec<HashMap<String, Value>> = self.redis.xinfo_groups(&keys.stream).await?;
        for group in groups {
            let name = group.get("name").map(value_text).unwrap_or_default();
            let last_delivered_id = group.get("last-delivered-id").map(value_text).unwrap_or_default();
            let pending = number(&group, "pending").unwrap_or(0);
            let (lag, lag_estimated, lag_at_least) = match number(&group, "lag") {
                Some(lag) => (lag, false, false),
                None => {
                    let (lag, at_least) = self.count_after(&keys.stream, &last_delivered_id, &report).await?;
                    (lag, true, at_least)
                }
            };
            let (oldest_pending_id, oldest_pending_age_ms) = if pending > 0 {
                let (_, oldest, _, _): PendingSummary = self.redis.xpending(&keys.stream, name.as_str(), ()).await?;
                let age = oldest.as_deref().and_then(|id| age(now, id));
                (oldest, age)
            } else {
                (None, None)
            };
            let consumers: Vec<HashMap<String, Value>> =
                self.redis.xinfo_consumers(&keys.stream, name.as_str()).await?;
            let consumers = consumers
                .iter()
                .map(|consumer| ConsumerReport {
                    name: consumer.get("name").map(value_text).unwrap_or_default(),
                    pending: number(consumer, "pending").unwrap_or(0),
                    idle_ms: number(consumer, "idle").unwrap_or(0),
                })
                .collect();
            let durable = stream.retention.durable_groups.iter().any(|durable| durable.as_str() == name);
            report.groups.push(GroupReport {
                group: name,
                durable,
                lag,
                lag_estimated,
                lag_at_least,
                pending,
                oldest_pending_id,
                oldest_pending_age_ms,
                last_delivered_id,
                consumers,
            });
        }
        report.retention_held_by = self.retention_hold(stream, &keys.stream, now).await?;
        Ok(report)
    }

    /// Entries after `last_delivered` still in the stream, counted up to [`LAG_COUNT_LIMIT`].
    async fn count_after(&self, key: &str, last_delivered: &str, report: &PartitionReport) -> Result<(u64, bool)> {
        let Ok(last) = last_delivered.parse::<EntryId>() else { return Ok((report.length, false)) };
        // A group placed before the first entry has everything left to read.
        if let Some(first) = report.first_id.as_deref().and_then(|id| id.parse::<EntryId>().ok())
            && last < first
        {
            return Ok((report.length, false));
        }
        let mut counted = 0;
        let mut cursor = format!("({last}");
        while counted < LAG_COUNT_LIMIT {
            let page: Vec<(String, HashMap<String, Value>)> =
                self.redis.xrange(key, cursor.as_str(), "+", Some(LAG_PAGE)).await?;
            counted += page.len() as u64;
            match page.last() {
                Some((id, _)) if page.len() as u64 == LAG_PAGE => cursor = format!("({id}"),
                _ => return Ok((counted, false)),
            }
        }
        Ok((counted, true))
    }

    /// The durable group keeping entries retention would remove, if any: the one that needs the
    /// oldest entry.
    async fn retention_hold(&self, stream: &StreamSettings, key: &str, now: u64) -> Result<Option<RetentionHold>> {
        if stream.retention.durable_groups.is_empty() {
            return Ok(None);
        }
        let needs = durable_needs(&self.redis, key, stream).await?;
        if let Some((group, _)) = needs.iter().find(|(_, need)| *need == Need::Missing) {
            return Ok(Some(RetentionHold {
                group: group.clone(),
                reason: "missing".to_owned(),
                since_id: None,
                held_ms: 0,
            }));
        }
        let Some(cut) = retention_cut(&self.redis, key, stream, now).await? else { return Ok(None) };
        let first: Vec<(String, HashMap<String, Value>)> = self.redis.xrange(key, "-", "+", Some(1)).await?;
        let Some(first) = first.first().and_then(|(id, _)| id.parse::<EntryId>().ok()) else { return Ok(None) };
        if first >= cut {
            return Ok(None);
        }
        // Retention would remove entries from `first` up to `cut`; the group needing the oldest
        // of them is what keeps them.
        let holder = needs
            .iter()
            .filter_map(|(group, need)| need.floor().map(|floor| (group, need, floor)))
            .filter(|(_, _, floor)| *floor < cut)
            .min_by_key(|(_, _, floor)| *floor);
        Ok(holder.map(|(group, need, floor)| RetentionHold {
            group: group.clone(),
            reason: match need {
                Need::Pending(_) => "pending",
                _ => "unread",
            }
            .to_owned(),
            since_id: Some(floor.to_string()),
            held_ms: now.saturating_sub(floor.millis.max(first.millis)),
        }))
    }
}
