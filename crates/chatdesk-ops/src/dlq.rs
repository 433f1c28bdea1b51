//! Dead letters: listing and showing them, redriving them to their group once the cause is fixed
//! (a paced, cancellable task, like SQS's redrive), and purging them.
//!
//! A redrive returns an entry to the one group that gave up on it, not to every group of the
//! stream: one script checks the letter is still there, puts the original entry back into that
//! group's pending list with a fresh delivery count (`XCLAIM … RETRYCOUNT 0 FORCE`) and deletes
//! the letter, so a letter is never both redriven and kept, nor redriven twice. A letter whose
//! original entry was trimmed cannot go back to one group; it stays, counted as skipped.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use chatdesk_core::{DeadLetter, EntryId};
use chatdesk_streams::Script;
use chatdesk_streams::entry::{now_ms, value_text};
use fred::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bound::{Bound, End, format_ms};
use crate::task::{Running, Task, TaskState};
use crate::{Actor, HANDOVER_IDLE_MS, Ops, OpsError, Result};

/// The consumer redriven entries are parked under until a live consumer claims them.
pub const REDRIVE_CONSUMER: &str = "ops-redrive";
/// Letters looked at per call at most: a filter matching more acts on the oldest this many.
pub const SCAN_LIMIT: usize = 100_000;
pub const DEFAULT_RATE: f64 = 100.0;
pub const MAX_RATE: f64 = 10_000.0;

static REDRIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local letter = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if #letter == 0 then return 'gone' end
local original = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
if #original == 0 then return 'trimmed' end
local claimed = redis.pcall('XCLAIM', KEYS[1], ARGV[2], ARGV[4], 0, ARGV[3], 'IDLE', ARGV[5], 'RETRYCOUNT', 0, 'FORCE', 'JUSTID')
if type(claimed) == 'table' and claimed.err then return 'nogroup' end
redis.call('XDEL', KEYS[2], ARGV[1])
return 'moved'
"#,
    )
});

/// Which dead letters an action is about. Every field narrows; none selects every letter.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DlqFilter {
    pub family: Option<String>,
    pub group: Option<String>,
    /// Text the error contains (case-insensitive).
    pub error: Option<String>,
    /// Dead-lettered at or after (entry id, RFC 3339 time or `-2h`).
    pub since: Option<String>,
    /// Dead-lettered at or before.
    pub until: Option<String>,
    /// Letters by reference (`<family>/<partition>/<id>`).
    pub ids: Option<Vec<String>>,
}

/// One dead letter as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetterItem {
    /// `<family>/<partition>/<id>`: how to name it to `show`, `redrive` and `purge`.
    pub reference: String,
    pub family: String,
    pub partition: u16,
    pub id: String,
    /// When it was dead-lettered (RFC 3339).
    pub time: String,
    pub group: String,
    pub consumer: String,
    pub error: String,
    pub deliveries: u64,
    pub original_id: String,
    /// The original entry's `type` and `tenant`, when it had them.
    pub original_type: Option<String>,
    pub tenant: Option<String>,
    /// The original entry's fields (only when one letter is shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<(String, String)>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DlqPage {
    /// Letters matching the filter, over all partitions (counted up to the scan limit).
    pub total: u64,
    /// The newest `limit` of them.
    pub letters: Vec<DeadLetterItem>,
}

/// A letter's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterRef {
    pub family: String,
    pub partition: u16,
    pub id: EntryId,
}

impl LetterRef {
    pub fn parse(raw: &str) -> Result<Self> {
        let invalid =
            || OpsError::Invalid(format!("{raw:?} is not a dead-letter reference (<family>/<partition>/<id>)"));
        let mut parts = raw.split('/');
        let (Some(family), Some(partition), Some(id), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        Ok(LetterRef {
            family: family.to_owned(),
            partition: partition.parse().map_err(|_| invalid())?,
            id: id.parse().map_err(|_| invalid())?,
        })
    }
}

impl std::fmt::Display for LetterRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.family, self.partition, self.id)
    }
}

fn item(
    family: &str,
    partition: u16,
    id: &str,
    fields: &HashMap<String, Value>,
    with_fields: bool,
) -> Option<DeadLetterItem> {
    let letter = DeadLetter::decode(fields.iter().map(|(field, value)| (field.as_str(), value_text(value)))).ok()?;
    let original = |name: &str| letter.original.iter().find(|(field, _)| field == name).map(|(_, value)| value.clone());
    let time_ms = id.parse::<EntryId>().map(|id| id.millis).unwrap_or(letter.time_ms);
    Some(DeadLetterItem {
        reference: format!("{family}/{partition}/{id}"),
        family: family.to_owned(),
        partition,
        id: id.to_owned(),
        time: format_ms(time_ms),
        group: letter.group.clone(),
        consumer: letter.consumer.clone(),
        error: letter.error.clone(),
        deliveries: letter.deliveries,
        original_id: letter.original_id.clone(),
        original_type: original("type"),
        tenant: original("tenant"),
        fields: with_fields.then(|| letter.original.clone()),
    })
}

impl Ops {
    /// Every letter `filter` selects, oldest first, up to [`SCAN_LIMIT`].
    async fn matching(&self, filter: &DlqFilter) -> Result<Vec<DeadLetterItem>> {
        let now = now_ms();
        let since = filter.since.as_deref().map(|raw| Bound::parse(raw, End::Start, now, "since")).transpose()?;
        let until = filter.until.as_deref().map(|raw| Bound::parse(raw, End::Finish, now, "until")).transpose()?;
        if let (Some(since), Some(until)) = (since, until)
            && since.id > until.id
        {
            return Err(OpsError::Invalid("since is after until".to_owned()));
        }
        if let Some(group) = &filter.group {
            self.group(filter.family.as_deref(), group)?;
        }
        let wanted: Option<Vec<LetterRef>> =
            filter.ids.as_ref().map(|ids| ids.iter().map(|id| LetterRef::parse(id)).collect()).transpose()?;
        if let Some(wanted) = &wanted {
            for letter in wanted {
                self.stream(&letter.family)?;
            }
        }
        let error = filter.error.as_ref().map(|error| error.to_lowercase());
        let start = since.map_or_else(|| "-".to_owned(), |bound| bound.id.to_string());
        let end = until.map_or_else(|| "+".to_owned(), |bound| bound.id.to_string());
        let mut found = Vec::new();
        for stream in self.families(filter.family.as_deref())? {
            for partition in 0..stream.partitions {
                if let Some(wanted) = &wanted
                    && !wanted
                        .iter()
                        .any(|letter| letter.family == stream.name.as_str() && letter.partition == partition)
                {
                    continue;
                }
                let key = self.keys.partition(&stream.name, partition).dead_letters;
                let mut cursor = start.clone();
                loop {
                    let page: Vec<(String, HashMap<String, Value>)> =
                        self.redis.xrange(&key, cursor.as_str(), end.as_str(), Some(500)).await?;
                    for (id, fields) in &page {
                        let Some(letter) = item(stream.name.as_str(), partition, id, fields, false) else { continue };
                        let chosen = filter.group.as_ref().is_none_or(|group| &letter.group == group)
                            && error.as_ref().is_none_or(|error| letter.error.to_lowercase().contains(error))
                            && wanted.as_ref().is_none_or(|wanted| {
                                wanted.iter().any(|wanted| wanted.to_string() == letter.reference)
                            });
                        if chosen {
                            found.push(letter);
                            if found.len() >= SCAN_LIMIT {
                                return Ok(found);
                            }
                        }
                    }
                    match page.last() {
                        Some((id, _)) if page.len() == 500 => cursor = format!("({id}"),
                        _ => break,
                    }
                }
            }
        }
        found.sort_by_key(|letter| (letter.id.parse::<EntryId>().unwrap_or(EntryId::ZERO), letter.reference.clone()));
        Ok(found)
    }

    /// The newest `limit` letters `filter` selects, and how many it selects.
    pub async fn dlq_list(&self, filter: &DlqFilter, limit: usize) -> Result<DlqPage> {
        let mut letters = self.matching(filter).await?;
        let total = letters.len() as u64;
        letters.reverse();
        letters.truncate(limit.clamp(1, 1_000));
        Ok(DlqPage { total, letters })
    }

    /// One letter with the original entry's fields.
    pub async fn dlq_show(&self, reference: &str) -> Result<DeadLetterItem> {
        let letter = LetterRef::parse(reference)?;
        let stream = self.stream(&letter.family)?.clone();
        self.partitions(&stream, Some(letter.partition))?;
        let key = self.keys.partition(&stream.name, letter.partition).dead_letters;
        let id = letter.id.to_string();
        let page: Vec<(String, HashMap<String, Value>)> =
            self.redis.xrange(&key, id.as_str(), id.as_str(), Some(1)).await?;
        let (id, fields) = page.first().ok_or_else(|| OpsError::NotFound(format!("no dead letter {reference}")))?;
        item(stream.name.as_str(), letter.partition, id, fields, true)
            .ok_or_else(|| OpsError::Invalid(format!("dead letter {reference} cannot be read")))
    }

    /// Starts redriving what `filter` selects at `rate` per second; run it with [`Ops::redrive_run`].
    pub async fn redrive_start(
        &self,
        filter: &DlqFilter,
        rate: Option<f64>,
        actor: &Actor,
    ) -> Result<(Vec<DeadLetterItem>, Running)> {
        let rate = rate.unwrap_or(DEFAULT_RATE);
        if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
            return Err(OpsError::Invalid(format!("rate must be above 0 and at most {MAX_RATE} per second")));
        }
        let letters = self.matching(filter).await?;
        let mut families: Vec<&str> = letters.iter().map(|letter| letter.family.as_str()).collect();
        families.sort_unstable();
        families.dedup();
        let locks: Vec<String> = families.iter().map(|family| format!("redrive:{family}")).collect();
        let target = serde_json::to_value(filter).unwrap_or_default();
        let running = self.start_task("redrive", &actor.0, target, &locks, letters.len() as u64, Some(rate)).await?;
        Ok((letters, running))
    }

    /// Moves each letter back to its group, paced; stops on cancel.
    pub async fn redrive_run(&self, letters: Vec<DeadLetterItem>, mut running: Running, actor: &Actor) -> Result<Task> {
        let rate = running.task.rate.unwrap_or(DEFAULT_RATE);
        let started = tokio::time::Instant::now();
        let mut skipped_why: Vec<String> = Vec::new();
        let mut cancelled = false;
        let mut failure = None;
        let mut last_report = tokio::time::Instant::now();
        for (done, letter) in letters.iter().enumerate() {
            // Entry n goes at n / rate seconds: the pace holds whatever each move costs.
            let due = started + Duration::from_secs_f64(done as f64 / rate);
            tokio::time::sleep_until(due).await;
            let Ok(stream) = self.stream(&letter.family).map(|stream| stream.name.clone()) else { continue };
            let keys = self.keys.partition(&stream, letter.partition);
            let result: Result<String, Error> = REDRIVE
                .call(
                    &self.redis,
                    vec![keys.stream.clone(), keys.dead_letters.clone()],
                    vec![
                        letter.id.clone(),
                        letter.group.clone(),
                        letter.original_id.clone(),
                        REDRIVE_CONSUMER.to_owned(),
                        HANDOVER_IDLE_MS.to_string(),
                    ],
                )
                .await;
            match result.as_deref() {
                Ok("moved") => running.task.moved += 1,
                Ok(why) => {
                    running.task.skipped += 1;
                    let why = match why {
                        "trimmed" => format!("{}: its original entry was trimmed", letter.reference),
                        "nogroup" => format!("{}: the group {} does not exist", letter.reference, letter.group),
                        _ => format!("{}: already gone", letter.reference),
                    };
                    if skipped_why.len() < 5 {
                        skipped_why.push(why);
                    }
                }
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
            if last_report.elapsed() >= Duration::from_millis(200) || done + 1 == letters.len() {
                last_report = tokio::time::Instant::now();
                let message = format!("moved {} of {}", running.task.moved, running.task.total);
                if running.progress(message).await? {
                    cancelled = true;
                    break;
                }
            }
        }
        let skipped =
            if skipped_why.is_empty() { String::new() } else { format!("; skipped {}", skipped_why.join(", ")) };
        let (state, outcome, message) = match (failure, cancelled) {
            (Some(error), _) => (TaskState::Failed, "failed", format!("stopped: {error}")),
            (None, true) => {
                (TaskState::Cancelled, "cancelled", format!("cancelled after moving {}{skipped}", running.task.moved))
            }
            (None, false) => (TaskState::Done, "done", format!("moved {}{skipped}", running.task.moved)),
        };
        let target = running.task.target.clone();
        let task = running.finish(state, message.clone()).await?;
        self.audit(actor, "dlq.redrive", &target, task.moved, outcome, &message).await;
        Ok(task)
    }

    /// Deletes what `filter` selects when `execute`; otherwise counts it. Returns the count.
    pub async fn dlq_purge(&self, filter: &DlqFilter, execute: bool, actor: &Actor) -> Result<u64> {
        let letters = self.matching(filter).await?;
        if !execute {
            return Ok(letters.len() as u64);
        }
        let mut purged = 0;
        for letter in &letters {
            let Ok(stream) = self.stream(&letter.family).map(|stream| stream.name.clone()) else { continue };
            let key = self.keys.partition(&stream, letter.partition).dead_letters;
            let removed: u64 = self.redis.xdel(&key, letter.id.as_str()).await?;
            purged += removed;
        }
        let target = serde_json::to_value(filter).unwrap_or_default();
        self.audit(actor, "dlq.purge", &target, purged, "done", &format!("purged {purged} dead letters")).await;
        Ok(purged)
    }
}
