//! Every few seconds one process of the deployment reads the whole [`report`](crate::report),
//! publishes the gauges the shipped alert rules use, and keeps an hour of per-group figures in
//! Redis for the dashboard's charts. Every process runs the loop and reports itself alive; a
//! lease lets one of them sample, so the status is read once per interval however many run.

use std::collections::BTreeMap;
use std::time::Duration;

use chatdesk_streams::entry::now_ms;
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::Ops;
use crate::report::PartitionReport;

pub const INTERVAL: Duration = Duration::from_secs(15);
/// A process that has not reported for this long is gone.
pub const NODE_TTL: Duration = Duration::from_secs(45);
/// Points kept: an hour at [`INTERVAL`].
const HISTORY_POINTS: i64 = 240;

pub const GROUP_OLDEST_PENDING_SECONDS: &str = "chatdesk_stream_group_oldest_pending_seconds";
pub const GROUP_LAG_ESTIMATED: &str = "chatdesk_stream_group_lag_estimated";
pub const DEAD_LETTERS_ENTRIES: &str = "chatdesk_stream_dead_letters_entries";
pub const RETENTION_HELD_SECONDS: &str = "chatdesk_stream_retention_held_seconds";
pub const OLDEST_ENTRY_AGE_SECONDS: &str = "chatdesk_stream_oldest_entry_age_seconds";

/// Registers the gauges' descriptions.
pub fn describe() {
    ::metrics::describe_gauge!(
        GROUP_OLDEST_PENDING_SECONDS,
        ::metrics::Unit::Seconds,
        "Age of the oldest entry a group was delivered and has not acknowledged (0: nothing pending)"
    );
    ::metrics::describe_gauge!(
        GROUP_LAG_ESTIMATED,
        "1 when Redis could not tell a group's lag and it was counted instead"
    );
    ::metrics::describe_gauge!(DEAD_LETTERS_ENTRIES, "Entries in a partition's dead-letter stream");
    ::metrics::describe_gauge!(
        RETENTION_HELD_SECONDS,
        ::metrics::Unit::Seconds,
        "How long a durable group has kept entries that retention would remove (0: nothing held)"
    );
    ::metrics::describe_gauge!(OLDEST_ENTRY_AGE_SECONDS, ::metrics::Unit::Seconds, "Age of a partition's oldest entry");
}

/// One group's figures over all its partitions at one moment.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupPoint {
    pub stream: String,
    pub group: String,
    pub lag: u64,
    pub pending: u64,
    pub oldest_pending_age_ms: u64,
    pub dead_letters: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryPoint {
    pub time_ms: u64,
    pub groups: Vec<GroupPoint>,
}

/// Publishes the gauges of `reports`.
pub fn publish(reports: &[PartitionReport]) {
    for report in reports {
        let partition = report.partition.to_string();
        let stream_labels = [("stream", report.stream.clone()), ("partition", partition.clone())];
        ::metrics::gauge!(DEAD_LETTERS_ENTRIES, &stream_labels).set(report.dead_letters as f64);
        ::metrics::gauge!(chatdesk_streams::metrics::STREAM_LENGTH_ENTRIES, &stream_labels).set(report.length as f64);
        ::metrics::gauge!(OLDEST_ENTRY_AGE_SECONDS, &stream_labels)
            .set(report.first_age_ms.unwrap_or(0) as f64 / 1000.0);
        for group in &report.groups {
            // A gateway node's group is live-only and named per node: its figures would make one
            // series per node ever started.
            if !group.durable && group.group.contains('.') {
                continue;
            }
            let labels =
                [("stream", report.stream.clone()), ("group", group.group.clone()), ("partition", partition.clone())];
            ::metrics::gauge!(chatdesk_streams::metrics::GROUP_LAG_ENTRIES, &labels).set(group.lag as f64);
            ::metrics::gauge!(GROUP_LAG_ESTIMATED, &labels).set(if group.lag_estimated { 1.0 } else { 0.0 });
            ::metrics::gauge!(chatdesk_streams::metrics::GROUP_PENDING_ENTRIES, &labels).set(group.pending as f64);
            let live = group
                .consumers
                .iter()
                .filter(|consumer| !consumer.name.starts_with(crate::OPS_CONSUMER_PREFIX))
                .count();
            ::metrics::gauge!(chatdesk_streams::metrics::GROUP_CONSUMERS, &labels).set(live as f64);
            ::metrics::gauge!(GROUP_OLDEST_PENDING_SECONDS, &labels)
                .set(group.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
        for durable in report.groups.iter().filter(|group| group.durable) {
            let labels =
                [("stream", report.stream.clone()), ("group", durable.group.clone()), ("partition", partition.clone())];
            let held = report
                .retention_held_by
                .as_ref()
                .filter(|hold| hold.group == durable.group)
                .map_or(0.0, |hold| hold.held_ms as f64 / 1000.0);
            ::metrics::gauge!(RETENTION_HELD_SECONDS, &labels).set(held);
        }
    }
}

fn point(reports: &[PartitionReport]) -> HistoryPoint {
    let mut groups: BTreeMap<(String, String), GroupPoint> = BTreeMap::new();
    for report in reports {
        for group in report.groups.iter().filter(|group| group.durable || !group.group.contains('.')) {
            let point = groups.entry((report.stream.clone(), group.group.clone())).or_insert_with(|| GroupPoint {
                stream: report.stream.clone(),
                group: group.group.clone(),
                lag: 0,
                pending: 0,
                oldest_pending_age_ms: 0,
                dead_letters: 0,
            });
            point.lag += group.lag;
            point.pending += group.pending;
            point.oldest_pending_age_ms = point.oldest_pending_age_ms.max(group.oldest_pending_age_ms.unwrap_or(0));
        }
        // Dead letters are per stream; a group's letters name it, but counting them per group
        // would read every letter: the chart shows the stream's.
        for point in groups.values_mut().filter(|point| point.stream == report.stream) {
            point.dead_letters += report.dead_letters;
        }
    }
    HistoryPoint { time_ms: now_ms(), groups: groups.into_values().collect() }
}

impl Ops {
    fn history_key(&self) -> String {
        self.keys.tagged("ops-history", "streams")
    }

    /// The last hour of points, oldest first.
    pub async fn history(&self) -> crate::Result<Vec<HistoryPoint>> {
        let raw: Vec<String> = self.redis.lrange(self.history_key(), 0, HISTORY_POINTS - 1).await?;
        let mut points: Vec<HistoryPoint> = raw.iter().filter_map(|raw| serde_json::from_str(raw).ok()).collect();
        points.reverse();
        Ok(points)
    }

    fn nodes_key(&self) -> String {
        self.keys.tagged("ops-nodes", "live")
    }

    /// The processes that reported within the last [`NODE_TTL`]: their consumers and gateway
    /// groups are alive whatever `XINFO` says (Redis 7.0 does not count a blocked read that
    /// found nothing as activity, so an idle partition's consumer looks idle).
    pub async fn live_nodes(&self) -> crate::Result<Vec<String>> {
        let since = now_ms().saturating_sub(NODE_TTL.as_millis() as u64);
        let nodes: Vec<String> = self.redis.zrangebyscore(self.nodes_key(), since as f64, "+inf", false, None).await?;
        Ok(nodes)
    }

    /// Samples every [`INTERVAL`] until cancelled, reporting `node` (this process) alive.
    pub async fn sample(self, node: String, cancel: CancellationToken) {
        describe();
        loop {
            let now = now_ms();
            let alive: Result<(), fred::error::Error> = async {
                let _: i64 =
                    self.redis.zadd(self.nodes_key(), None, None, false, false, (now as f64, node.as_str())).await?;
                let forgotten = now.saturating_sub(24 * 3600 * 1000) as f64;
                let _: i64 = self.redis.zremrangebyscore(self.nodes_key(), "-inf", forgotten).await?;
                Ok(())
            }
            .await;
            if let Err(error) = alive {
                tracing::debug!(error = %error, "cannot report this process alive");
            }
            match self.lead(&node).await {
                Ok(true) => {
                    if let Err(error) = self.sample_once().await {
                        tracing::debug!(error = %error, "cannot sample stream status");
                    }
                }
                Ok(false) => {}
                Err(error) => tracing::debug!(error = %error, "cannot tell which process samples"),
            }
            tokio::select! {
                _ = tokio::time::sleep(INTERVAL) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Whether `node` samples this round: one process of the deployment does (the first to take
    /// the lease, for as long as it keeps renewing it), so the status is read once per interval
    /// however many processes run, and only that process exports the gauges (no process holds
    /// stale ones: one that stops sampling has stopped running, or lost Redis).
    async fn lead(&self, node: &str) -> crate::Result<bool> {
        let key = self.keys.tagged("ops-sampler", "lease");
        let ttl = Expiration::EX(INTERVAL.as_secs() as i64 * 3);
        let taken: Option<String> = self.redis.set(&key, node, Some(ttl.clone()), Some(SetOptions::NX), false).await?;
        if taken.is_some() {
            return Ok(true);
        }
        let holder: Option<String> = self.redis.get(&key).await?;
        if holder.as_deref() == Some(node) {
            let _: () = self.redis.set(&key, node, Some(ttl), Some(SetOptions::XX), false).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn sample_once(&self) -> crate::Result<()> {
        let reports = self.report(None).await?;
        publish(&reports);
        // The consumers a replay, redrive or claim parked entries under, once the group has taken
        // them all: they would otherwise count as consumers.
        for report in &reports {
            let Ok(stream) = self.stream(&report.stream) else { continue };
            let key = self.keys.partition(&stream.name, report.partition).stream;
            for group in &report.groups {
                for consumer in group
                    .consumers
                    .iter()
                    .filter(|consumer| consumer.name.starts_with(crate::OPS_CONSUMER_PREFIX) && consumer.pending == 0)
                {
                    crate::maintenance::delete_if_idle(&self.redis, &key, &group.group, &consumer.name, 0).await?;
                }
            }
        }
        let json = serde_json::to_string(&point(&reports)).unwrap_or_default();
        let key = self.history_key();
        let _: i64 = self.redis.lpush(&key, json).await?;
        let _: () = self.redis.ltrim(&key, 0, HISTORY_POINTS - 1).await?;
        Ok(())
    }
}
