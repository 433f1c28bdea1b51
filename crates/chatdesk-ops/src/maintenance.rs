//! Handing a dead consumer's pending entries over at once, and pruning consumers and gateway
//! groups that are gone, instead of waiting for `claim_idle` or the hourly cleanup.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use chatdesk_streams::Script;
use chatdesk_streams::entry::value_text;
use fred::prelude::*;
use serde::Serialize;

use crate::{Actor, Ops, OpsError, Result, hand_over};

/// The consumer claimed entries are parked under until a live consumer takes them.
pub const CLAIM_CONSUMER: &str = "ops-claim";

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Claimed {
    pub family: String,
    pub group: String,
    /// Entries idle past the threshold, handed to the group's live consumers.
    pub entries: u64,
    /// Consumers removed: idle past the threshold and now holding nothing.
    pub consumers_removed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Pruned {
    /// Groups of gateway nodes that are gone (`gateway.<node>@<partition>`).
    pub groups_removed: Vec<String>,
    /// Consumers that held nothing and were idle past the threshold (`<group>/<consumer>@<partition>`).
    pub consumers_removed: Vec<String>,
}

/// The longest idle threshold taken: beyond it nothing has been idle (and Redis's arithmetic ends).
const MAX_IDLE: Duration = Duration::from_secs(365 * 24 * 3600);

fn check_idle(idle: Duration) -> Result<()> {
    if idle < Duration::from_secs(1) {
        return Err(OpsError::Invalid(
            "idle must be at least 1s: a live consumer is never idle that little".to_owned(),
        ));
    }
    if idle > MAX_IDLE {
        return Err(OpsError::Invalid("idle must be at most 365d".to_owned()));
    }
    Ok(())
}

impl Ops {
    /// Hands every entry of `group` pending for longer than `idle` to its live consumers (they
    /// are told to claim them now), and removes the consumers left idle and empty. Entries
    /// held by a live process (one that reported within the last 45 s) are left to it, and `idle`
    /// may not be shorter than the group's own `claim_idle`: a slow but live consumer keeps its work.
    pub async fn claim(&self, family: Option<&str>, group: &str, idle: Duration, actor: &Actor) -> Result<Claimed> {
        check_idle(idle)?;
        let target = self.group(family, group)?;
        if idle < target.settings.claim_idle {
            return Err(OpsError::Invalid(format!(
                "idle must be at least the group's claim_idle ({}s): a consumer may be busy with an entry that long",
                target.settings.claim_idle.as_secs()
            )));
        }
        let mut exists_somewhere = false;
        for partition in 0..target.stream.partitions {
            let key = self.keys.partition(&target.stream.name, partition).stream;
            let exists: u64 = self.redis.exists(&key).await?;
            if exists == 1 && group_exists(&self.redis, &key, &target.group).await? {
                exists_somewhere = true;
                break;
            }
        }
        if !exists_somewhere {
            return Err(OpsError::NotFound(format!(
                "the group {} does not exist on any partition of {}",
                target.group, target.stream.name
            )));
        }
        let live = self.live_nodes().await?;
        let idle_ms = idle.as_millis() as u64;
        let mut result = Claimed {
            family: target.stream.name.to_string(),
            group: target.group.clone(),
            entries: 0,
            consumers_removed: Vec::new(),
        };
        let audit_target = serde_json::json!({"family": result.family, "group": result.group, "idle_ms": idle_ms});
        let record = self.audit_start(actor, "claim", &audit_target).await;
        let outcome = self.claim_partitions(&target, idle_ms, &live, &mut result).await;
        if result.entries > 0 {
            self.claim_now(&result.family, &result.group).await;
        }
        let detail = if result.consumers_removed.is_empty() {
            format!("handed over {} entries", result.entries)
        } else {
            format!(
                "handed over {} entries; removed consumers: {}",
                result.entries,
                result.consumers_removed.join(", ")
            )
        };
        match &outcome {
            Ok(()) => self.audit_finish(&record, result.entries, "done", &detail).await,
            Err(error) => {
                self.audit_finish(&record, result.entries, "failed", &format!("{detail}; stopped: {error}")).await
            }
        }
        outcome.map(|()| result)
    }

    async fn claim_partitions(
        &self,
        target: &crate::GroupTarget,
        idle_ms: u64,
        live: &[String],
        result: &mut Claimed,
    ) -> Result<()> {
        for partition in 0..target.stream.partitions {
            let key = self.keys.partition(&target.stream.name, partition).stream;
            let exists: u64 = self.redis.exists(&key).await?;
            if exists == 0 || !group_exists(&self.redis, &key, &target.group).await? {
                continue;
            }
            let mut cursor = "-".to_owned();
            loop {
                let stale: Vec<(String, String, u64, u64)> =
                    self.redis.xpending(&key, target.group.as_str(), (idle_ms, cursor.as_str(), "+", 500)).await?;
                let ids: Vec<String> = stale
                    .iter()
                    .filter(|(_, consumer, _, _)| consumer != CLAIM_CONSUMER && !live.contains(consumer))
                    .map(|(id, _, _, _)| id.clone())
                    .collect();
                if !ids.is_empty() {
                    // The same idle threshold: an entry a consumer took meanwhile is left alone.
                    let claimed =
                        hand_over(&self.redis, &key, target.group.as_str(), CLAIM_CONSUMER, idle_ms, ids, false)
                            .await?;
                    result.entries += claimed.len() as u64;
                }
                match stale.last() {
                    Some((id, _, _, _)) if stale.len() == 500 => cursor = format!("({id}"),
                    _ => break,
                }
            }
            result.consumers_removed.extend(
                remove_idle_consumers(&self.redis, &key, &target.group, idle_ms, live)
                    .await?
                    .into_iter()
                    .map(|name| format!("{name}@{partition}")),
            );
        }
        Ok(())
    }

    /// Removes the groups of gateway nodes idle for longer than `idle` (they never hold retention
    /// back, but pile up in status and metrics) and, in every group, consumers holding nothing
    /// and idle for longer than `idle`.
    pub async fn prune(&self, idle: Duration, actor: &Actor) -> Result<Pruned> {
        check_idle(idle)?;
        let idle_ms = idle.as_millis() as u64;
        let live = self.live_nodes().await?;
        let mut result = Pruned { groups_removed: Vec::new(), consumers_removed: Vec::new() };
        let record = self.audit_start(actor, "prune", &serde_json::json!({"idle_ms": idle_ms})).await;
        for stream in self.families(None)? {
            let live_only: Vec<String> = stream
                .groups
                .iter()
                .filter(|(_, settings)| settings.start == chatdesk_core::config::StartFrom::Latest)
                .map(|(name, _)| format!("{name}."))
                .collect();
            for prefix in &live_only {
                // A live process's own group stays, however quiet.
                let keep: Vec<String> = live.iter().map(|node| format!("{prefix}{node}")).collect();
                result.groups_removed.extend(
                    chatdesk_streams::retention::remove_idle_groups(
                        &self.redis,
                        &self.keys,
                        &stream,
                        prefix,
                        &keep,
                        idle,
                    )
                    .await?,
                );
            }
            for partition in 0..stream.partitions {
                let key = self.keys.partition(&stream.name, partition).stream;
                let exists: u64 = self.redis.exists(&key).await?;
                if exists == 0 {
                    continue;
                }
                let groups: Vec<HashMap<String, Value>> = self.redis.xinfo_groups(&key).await?;
                for group in groups.iter().filter_map(|group| group.get("name").map(value_text)) {
                    for consumer in remove_idle_consumers(&self.redis, &key, &group, idle_ms, &live).await? {
                        result.consumers_removed.push(format!("{group}/{consumer}@{partition}"));
                    }
                }
            }
        }
        let count = (result.groups_removed.len() + result.consumers_removed.len()) as u64;
        let detail =
            format!("removed {} groups and {} consumers", result.groups_removed.len(), result.consumers_removed.len());
        self.audit_finish(&record, count, "done", &detail).await;
        Ok(result)
    }
}

async fn group_exists(redis: &Client, key: &str, group: &str) -> Result<bool> {
    let groups: Vec<HashMap<String, Value>> = redis.xinfo_groups(key).await?;
    Ok(groups.iter().any(|info| info.get("name").map(value_text).as_deref() == Some(group)))
}

/// Deletes consumer `ARGV[2]` of group `ARGV[1]` only if it holds nothing and has been idle for
/// at least `ARGV[3]` ms, checked in the same script: `XGROUP DELCONSUMER` drops what a consumer
/// holds, so a consumer that read in between must not be deleted. 1 when deleted.
static DELETE_IDLE_CONSUMER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
  if fields['name'] == ARGV[2] then
    if tonumber(fields['pending']) == 0 and tonumber(fields['idle']) >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
"#,
    )
});

/// Deletes `consumer` if it holds nothing and has been idle for `idle_ms`.
pub(crate) async fn delete_if_idle(
    redis: &Client,
    key: &str,
    group: &str,
    consumer: &str,
    idle_ms: u64,
) -> Result<bool> {
    let deleted: i64 = DELETE_IDLE_CONSUMER
        .call(redis, vec![key.to_owned()], vec![group.to_owned(), consumer.to_owned(), idle_ms.to_string()])
        .await?;
    Ok(deleted == 1)
}

/// Deletes the consumers of `group` holding nothing and idle for at least `idle_ms`, but never
/// one named after a live process.
async fn remove_idle_consumers(
    redis: &Client,
    key: &str,
    group: &str,
    idle_ms: u64,
    live: &[String],
) -> Result<Vec<String>> {
    let consumers: Vec<HashMap<String, Value>> = redis.xinfo_consumers(key, group).await?;
    let mut removed = Vec::new();
    for consumer in consumers {
        let name = consumer.get("name").map(value_text).unwrap_or_default();
        let pending = consumer.get("pending").and_then(Value::as_u64).unwrap_or(0);
        let idle = consumer.get("idle").and_then(Value::as_u64).unwrap_or(0);
        let alive = live.iter().any(|node| node == &name);
        if pending == 0
            && idle >= idle_ms
            && !name.is_empty()
            && !alive
            && delete_if_idle(redis, key, group, &name, idle_ms).await?
        {
            removed.push(name);
        }
    }
    Ok(removed)
}
