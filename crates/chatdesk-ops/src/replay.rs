//! Replaying a range of a stream into one consumer group while it keeps running.
//!
//! `XCLAIM <stream> <group> ops-replay 0 <ids…> IDLE <a year> RETRYCOUNT 0 FORCE JUSTID` puts
//! entries the group has already acknowledged back into its pending list, as if a consumer had
//! died holding them; the group's live consumers are told to claim them at once (on the
//! `claim-now` channel; without it, at their next claim pass within `claim_idle / 2`) and take
//! them with a fresh delivery count. Other groups of the stream see nothing. Every
//! durable group's effects are idempotent (the writer's `events` ledger, the sender's per-event
//! job, the broadcaster's per-recipient state, autoreply's per-entry state), so a replay repeats
//! no effect: it restores what is missing.
//!
//! Only entries the group has been delivered are replayed (those after its position it reads
//! anyway). A range reaching into what retention trimmed is refused with what is available:
//! trimming never passes an entry a durable group has not acknowledged, so the writer stored
//! every trimmed entry, and PostgreSQL (its backups) is where those rows come back from.

use std::collections::HashMap;
use std::time::Duration;

use chatdesk_core::EntryId;
use chatdesk_streams::entry::{now_ms, value_text};
use fred::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bound::{Bound, End, format_ms};
use crate::task::{Running, Task, TaskState};
use crate::{Actor, GroupTarget, Ops, OpsError, Result, hand_over};

/// The consumer replayed entries are parked under until a live consumer claims them.
pub const REPLAY_CONSUMER: &str = "ops-replay";
/// Entries handed over per XCLAIM.
const PAGE: u64 = 200;
/// How long a replay waits for its group to handle what it handed over.
const HANDLED_WAIT: Duration = Duration::from_secs(3600);

/// What to replay, as `chatdesk streams replay` and `POST /v1/ops/replay` take it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The stream family; needed only when the group name is in several.
    pub family: Option<String>,
    pub group: String,
    /// An entry id, an RFC 3339 time or a time before now (`-2h`).
    pub from: String,
    /// Same forms; now when absent.
    pub to: Option<String>,
    /// One partition only.
    pub partition: Option<u16>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayPlan {
    pub family: String,
    pub group: String,
    pub from_id: String,
    pub to_id: String,
    /// Entries that would be re-delivered, over all partitions.
    pub entries: u64,
    pub partitions: Vec<PartitionPlan>,
    /// Why it cannot be executed as asked (a trimmed range, a missing group); `null` when it can.
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PartitionPlan {
    pub partition: u16,
    pub entries: u64,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    /// Part of the range was trimmed from the stream.
    pub trimmed: bool,
    /// The oldest entry still in the partition.
    pub available_from: Option<String>,
    /// Entries of the range the group has not been delivered yet: it reads them anyway.
    pub not_yet_delivered: bool,
    /// The group does not exist on this partition.
    pub group_missing: bool,
    /// Entries of the range the group dead-lettered (still in the dead letters): replayed, they
    /// fail again unless their cause is fixed, and a later redrive would deliver them once more.
    pub dead_letters: u64,
}

impl Ops {
    fn replay_target(&self, request: &ReplayRequest) -> Result<GroupTarget> {
        let target = self.group(request.family.as_deref(), &request.group)?;
        if target.settings.start == chatdesk_core::config::StartFrom::Latest {
            return Err(OpsError::Invalid(format!(
                "group {:?} only follows live traffic (start = \"latest\"): its clients fill gaps themselves on resume",
                request.group
            )));
        }
        Ok(target)
    }

    /// What `request` would re-deliver; nothing is changed.
    pub async fn replay_plan(&self, request: &ReplayRequest) -> Result<ReplayPlan> {
        let target = self.replay_target(request)?;
        let now = now_ms();
        let from = Bound::parse(&request.from, End::Start, now, "--from")?.id;
        let to = match &request.to {
            Some(to) => Bound::parse(to, End::Finish, now, "--to")?.id,
            None => EntryId::new(now, u64::MAX),
        };
        if from > to {
            return Err(OpsError::Invalid(format!(
                "--from {} is after --to {}",
                request.from,
                request.to.as_deref().unwrap_or("now")
            )));
        }
        let mut plan = ReplayPlan {
            family: target.stream.name.to_string(),
            group: target.group.clone(),
            from_id: from.to_string(),
            to_id: to.to_string(),
            entries: 0,
            partitions: Vec::new(),
            refused: None,
        };
        let mut problems = Vec::new();
        for partition in self.partitions(&target.stream, request.partition)? {
            let part = self.partition_plan(&target, partition, from, to).await?;
            if part.group_missing && part.entries > 0 {
                problems.push(format!("partition {partition}: the group {} does not exist there", target.group));
            }
            if part.trimmed {
                let available = part
                    .available_from
                    .as_deref()
                    .and_then(|id| id.parse::<EntryId>().ok())
                    .map(|id| format!("it holds entries from {id} ({})", format_ms(id.millis)))
                    .unwrap_or_else(|| "it holds no entries".to_owned());
                problems
                    .push(format!("partition {partition}: part of the range was trimmed by retention; {available}"));
            }
            plan.entries += part.entries;
            plan.partitions.push(part);
        }
        if !problems.is_empty() {
            plan.refused = Some(format!(
                "{}. Trimmed entries had been acknowledged by every durable group (trimming never passes one that \
                 has not), so the writer stored them in PostgreSQL: restore lost rows from a database backup, and \
                 replay from the first entry still held.",
                problems.join("; ")
            ));
        }
        Ok(plan)
    }

    async fn partition_plan(
        &self,
        target: &GroupTarget,
        partition: u16,
        from: EntryId,
        to: EntryId,
    ) -> Result<PartitionPlan> {
        let key = self.keys.partition(&target.stream.name, partition).stream;
        let mut plan = PartitionPlan {
            partition,
            entries: 0,
            first_id: None,
            last_id: None,
            trimmed: false,
            available_from: None,
            not_yet_delivered: false,
            group_missing: false,
            dead_letters: 0,
        };
        let exists: u64 = self.redis.exists(&key).await?;
        if exists == 0 {
            return Ok(plan);
        }
        let info: HashMap<String, Value> = self.redis.xinfo_stream(&key, false, None).await?;
        let first = match info.get("first-entry") {
            Some(Value::Array(parts)) => parts.first().map(value_text).and_then(|id| id.parse::<EntryId>().ok()),
            _ => None,
        };
        plan.available_from = first.map(|id| id.to_string());
        let max_deleted = info
            .get("max-deleted-entry-id")
            .map(value_text)
            .and_then(|id| id.parse::<EntryId>().ok())
            .unwrap_or(EntryId::ZERO);
        // Something at or after `from` was removed, and `from` is older than what is left.
        plan.trimmed = max_deleted >= from && max_deleted != EntryId::ZERO && first.is_none_or(|first| from < first);

        let groups: Vec<HashMap<String, Value>> = self.redis.xinfo_groups(&key).await?;
        let Some(group) =
            groups.iter().find(|group| group.get("name").map(value_text).as_deref() == Some(target.group.as_str()))
        else {
            plan.group_missing = true;
            plan.entries = count_range(&self.redis, &key, from, to).await?.0;
            return Ok(plan);
        };
        let delivered = group
            .get("last-delivered-id")
            .map(value_text)
            .and_then(|id| id.parse::<EntryId>().ok())
            .unwrap_or(EntryId::ZERO);
        plan.not_yet_delivered = to > delivered && has_after(&self.redis, &key, delivered, to).await?;
        let end = to.min(delivered);
        if from <= end {
            let (entries, first_id, last_id) = count_range(&self.redis, &key, from, end).await?;
            plan.entries = entries;
            plan.first_id = first_id;
            plan.last_id = last_id;
            let letters = self.keys.partition(&target.stream.name, partition).dead_letters;
            plan.dead_letters = dead_entries(&self.redis, &letters, &target.group, 0, from, end).await?;
        }
        Ok(plan)
    }

    /// Re-delivers what `plan` lists to its group, as a task; the plan is made again first, so a
    /// stale one is never executed. Returns when the group has handled it all, or on cancel.
    pub async fn replay_start(&self, request: &ReplayRequest, actor: &Actor) -> Result<(ReplayPlan, Running)> {
        let plan = self.replay_plan(request).await?;
        if let Some(refused) = &plan.refused {
            return Err(OpsError::Invalid(refused.clone()));
        }
        let readable = |id: &str| match id.parse::<EntryId>() {
            Ok(entry) if entry.sequence == u64::MAX => entry.millis.to_string(),
            _ => id.to_owned(),
        };
        let mut target = serde_json::json!({
            "family": plan.family, "group": plan.group,
            "from": readable(&plan.from_id), "to": readable(&plan.to_id),
        });
        if let Some(partition) = request.partition {
            target["partition"] = partition.into();
        }
        let lock = format!("replay:{}:{}", plan.family, plan.group);
        let mut running = self.start_task("replay", &actor.0, target.clone(), &[lock], plan.entries, None).await?;
        running.record = self.audit_start(actor, "replay", &target).await;
        Ok((plan, running))
    }

    /// Runs a started replay to its end; the audit record says how it ended.
    pub async fn replay_run(&self, plan: &ReplayPlan, mut running: Running) -> Result<Task> {
        let outcome = self.replay_steps(plan, &mut running).await;
        let (state, message) = match &outcome {
            Ok(Some(message)) => (TaskState::Done, message.clone()),
            Ok(None) => (TaskState::Cancelled, format!("cancelled after handing {} entries over", running.task.moved)),
            Err(error) => (TaskState::Failed, error.to_string()),
        };
        let outcome_name = match state {
            TaskState::Done => "done",
            TaskState::Cancelled => "cancelled",
            _ => "failed",
        };
        // Recorded before the task reads as finished: whoever sees it done finds it in the log.
        self.audit_finish(&running.record, running.task.moved, outcome_name, &message).await;
        running.finish(state, message).await
    }

    /// `Some(summary)` when done, `None` when cancelled.
    async fn replay_steps(&self, plan: &ReplayPlan, running: &mut Running) -> Result<Option<String>> {
        let from: EntryId = plan.from_id.parse().unwrap_or(EntryId::ZERO);
        let to: EntryId = plan.to_id.parse().unwrap_or(EntryId::ZERO);
        let family = self.stream(&plan.family)?.name.clone();
        for part in plan.partitions.iter().filter(|part| part.entries > 0) {
            let key = self.keys.partition(&family, part.partition).stream;
            let (Some(first), Some(last)) = (&part.first_id, &part.last_id) else { continue };
            let mut cursor = first.clone();
            loop {
                let page: Vec<(String, HashMap<String, Value>)> =
                    self.redis.xrange(&key, cursor.as_str(), last.as_str(), Some(PAGE)).await?;
                let Some((last_read, _)) = page.last() else { break };
                let ids: Vec<String> = page.iter().map(|(id, _)| id.clone()).collect();
                let asked = ids.len();
                let claimed = hand_over(&self.redis, &key, plan.group.as_str(), REPLAY_CONSUMER, 0, ids, true).await?;
                running.task.moved += claimed.len() as u64;
                running.task.skipped += (asked - claimed.len()) as u64;
                let message = format!("handing entries to {}: partition {}", plan.group, part.partition);
                if running.progress(message).await? {
                    return Ok(None);
                }
                if (page.len() as u64) < PAGE {
                    break;
                }
                cursor = format!("({last_read}");
            }
            // The group starts on this partition while the next ones are handed over.
            self.claim_now(&plan.family, &plan.group).await;
        }
        self.claim_now(&plan.family, &plan.group).await;
        // Wait until the group's consumers have claimed and acknowledged what was handed over.
        let deadline = tokio::time::Instant::now() + HANDLED_WAIT;
        loop {
            let mut pending = 0;
            let mut consumers_alive = 0;
            for part in plan.partitions.iter().filter(|part| part.entries > 0) {
                let key = self.keys.partition(&family, part.partition).stream;
                let in_range: Vec<(String, String, u64, u64)> = self
                    .redis
                    .xpending(
                        &key,
                        plan.group.as_str(),
                        (from.to_string(), to.to_string(), running.task.moved.max(1) + 100),
                    )
                    .await?;
                pending += in_range.len() as u64;
                let consumers: Vec<HashMap<String, Value>> =
                    self.redis.xinfo_consumers(&key, plan.group.as_str()).await?;
                consumers_alive += consumers
                    .iter()
                    .filter(|consumer| {
                        consumer
                            .get("name")
                            .map(value_text)
                            .is_some_and(|name| !name.starts_with(crate::OPS_CONSUMER_PREFIX))
                            && consumer.get("idle").and_then(Value::as_u64).unwrap_or(u64::MAX) < 60_000
                    })
                    .count();
            }
            running.task.handled = Some(running.task.moved.saturating_sub(pending));
            if pending == 0 {
                let mut failed_again = 0;
                for part in &plan.partitions {
                    let keys = self.keys.partition(&family, part.partition);
                    forget_idle_ops_consumer(&self.redis, &keys.stream, &plan.group, REPLAY_CONSUMER).await?;
                    failed_again +=
                        dead_entries(&self.redis, &keys.dead_letters, &plan.group, running.task.started_ms, from, to)
                            .await?;
                }
                let mut summary = format!("{} entries re-delivered to {} and handled", running.task.moved, plan.group);
                if failed_again > 0 {
                    summary.push_str(&format!(
                        "; {failed_again} of them failed again and were dead-lettered (`streams dlq list --group {} --since {}`)",
                        plan.group, running.task.started_ms
                    ));
                }
                return Ok(Some(summary));
            }
            let message = if consumers_alive == 0 {
                format!("{pending} entries wait for {}: no live consumer (is its role running?)", plan.group)
            } else {
                format!("{pending} entries left for {} to handle", plan.group)
            };
            if running.progress(message).await? {
                return Ok(None);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(OpsError::Invalid(format!("{pending} entries were not handled within an hour")));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Removes an `ops-…` consumer once it holds nothing.
pub(crate) async fn forget_idle_ops_consumer(redis: &Client, key: &str, group: &str, consumer: &str) -> Result<()> {
    let exists: u64 = redis.exists(key).await?;
    if exists == 0 {
        return Ok(());
    }
    match crate::maintenance::delete_if_idle(redis, key, group, consumer, 0).await {
        Err(OpsError::Redis(error)) if error.details().contains("NOGROUP") => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Dead letters looked at at most when counting the dead entries of a range.
const DEAD_LETTERS_LOOKED: u64 = 10_000;

/// Entries of `[from, to]` that `group` dead-lettered in `key` at or after `since_ms`, each
/// counted once however often it was (at most [`DEAD_LETTERS_LOOKED`] letters are read). A letter
/// is written after its entry, so reading from `from`'s time misses none of the range's.
async fn dead_entries(
    redis: &Client,
    key: &str,
    group: &str,
    since_ms: u64,
    from: EntryId,
    to: EntryId,
) -> Result<u64> {
    let mut entries = std::collections::HashSet::new();
    let mut cursor = EntryId::new(since_ms.max(from.millis), 0).to_string();
    let mut looked = 0;
    while looked < DEAD_LETTERS_LOOKED {
        let page: Vec<(String, HashMap<String, Value>)> = redis.xrange(key, cursor.as_str(), "+", Some(500)).await?;
        for (_, fields) in &page {
            looked += 1;
            let letter = chatdesk_core::DeadLetter::decode(
                fields.iter().map(|(field, value)| (field.as_str(), value_text(value))),
            );
            if let Ok(letter) = letter
                && letter.group == group
                && letter.original_id.parse::<EntryId>().is_ok_and(|id| from <= id && id <= to)
            {
                entries.insert(letter.original_id);
            }
        }
        match page.last() {
            Some((id, _)) if page.len() == 500 => cursor = format!("({id}"),
            _ => break,
        }
    }
    Ok(entries.len() as u64)
}

/// Whether the partition holds an entry in `(after, to]`.
async fn has_after(redis: &Client, key: &str, after: EntryId, to: EntryId) -> Result<bool> {
    if to <= after {
        return Ok(false);
    }
    let page: Vec<(String, HashMap<String, Value>)> =
        redis.xrange(key, format!("({after}").as_str(), to.to_string().as_str(), Some(1)).await?;
    Ok(!page.is_empty())
}

/// Entries in `[from, to]`, with the first and last id.
async fn count_range(
    redis: &Client,
    key: &str,
    from: EntryId,
    to: EntryId,
) -> Result<(u64, Option<String>, Option<String>)> {
    let mut count = 0;
    let mut first = None;
    let mut last = None;
    let mut cursor = from.to_string();
    let end = to.to_string();
    loop {
        let page: Vec<(String, HashMap<String, Value>)> =
            redis.xrange(key, cursor.as_str(), end.as_str(), Some(1_000)).await?;
        if first.is_none() {
            first = page.first().map(|(id, _)| id.clone());
        }
        count += page.len() as u64;
        let Some((id, _)) = page.last() else { break };
        last = Some(id.clone());
        if page.len() < 1_000 {
            break;
        }
        cursor = format!("({id}");
    }
    Ok((count, first, last))
}
