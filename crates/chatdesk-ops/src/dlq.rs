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

use chatdesk_core::{DeadLetter, EntryId, StreamName};
use chatdesk_streams::Script;
use chatdesk_streams::entry::{now_ms, value_text};
use fred::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bound::{Bound, End, format_ms};
use crate::task::{Running, Task, TaskState};
use crate::{Actor, HANDOVER_IDLE_MS, Ops, OpsError, Result};

/// The consumer redriven entries are parked under until a live consumer claims them.
pub const REDRIVE_CONSUMER: &str = "ops-redrive";
/// Letters looked at per partition and call at most: a list past it says "at least", and a
/// redrive or purge of a larger backlog acts on the oldest this many of each partition per run.
pub const SCAN_LIMIT: usize = 100_000;
/// Letters a redrive or purge acts on per run at most.
pub const ACT_LIMIT: usize = 100_000;
pub const DEFAULT_RATE: f64 = 100.0;
pub const MIN_RATE: f64 = 0.1;
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Text the error contains (case-insensitive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Dead-lettered at or after (entry id, RFC 3339 time or `-2h`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Dead-lettered at or before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Letters by reference (`<family>/<partition>/<id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
}

impl DlqFilter {
    /// The same filter with blank texts taken as absent: `"error": ""` selects nothing more
    /// than no `error` at all, and must not pass for a filter.
    pub fn normalized(&self) -> DlqFilter {
        let text =
            |value: &Option<String>| value.as_ref().map(|text| text.trim().to_owned()).filter(|text| !text.is_empty());
        DlqFilter {
            family: text(&self.family),
            group: text(&self.group),
            error: text(&self.error),
            since: text(&self.since),
            until: text(&self.until),
            ids: self.ids.clone(),
        }
    }

    /// Names no letter in particular: every letter would be chosen.
    pub fn is_everything(&self) -> bool {
        self.normalized() == DlqFilter::default()
    }
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
    /// Letters matching the filter, over all partitions.
    pub total: u64,
    /// The count stopped at its limit (100,000 letters looked at in a partition): there are at
    /// least `total`.
    pub total_at_least: bool,
    /// The newest `limit` of them.
    pub letters: Vec<DeadLetterItem>,
}

/// A checked filter.
struct Selection {
    partitions: Vec<(chatdesk_core::StreamName, u16)>,
    start: String,
    end: String,
    group: Option<String>,
    error: Option<String>,
    wanted: Option<Vec<String>>,
}

impl Selection {
    fn chooses(&self, letter: &DeadLetterItem) -> bool {
        self.group.as_ref().is_none_or(|group| &letter.group == group)
            && self.error.as_ref().is_none_or(|error| letter.error.to_lowercase().contains(error))
            && self.wanted.as_ref().is_none_or(|wanted| wanted.contains(&letter.reference))
    }
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
    /// What `filter` selects, checked: the partitions to read, the id range, the tests.
    fn selection(&self, filter: &DlqFilter) -> Result<Selection> {
        let filter = &filter.normalized();
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
            if wanted.len() > 10_000 {
                return Err(OpsError::Invalid("at most 10,000 ids at once".to_owned()));
            }
            for letter in wanted {
                let stream = self.stream(&letter.family)?.clone();
                self.partitions(&stream, Some(letter.partition))?;
            }
        }
        let mut partitions = Vec::new();
        for stream in self.families(filter.family.as_deref())? {
            for partition in 0..stream.partitions {
                let named = wanted.as_ref().is_none_or(|wanted| {
                    wanted.iter().any(|letter| letter.family == stream.name.as_str() && letter.partition == partition)
                });
                if named {
                    partitions.push((stream.name.clone(), partition));
                }
            }
        }
        Ok(Selection {
            partitions,
            start: since.map_or_else(|| "-".to_owned(), |bound| bound.id.to_string()),
            end: until.map_or_else(|| "+".to_owned(), |bound| bound.id.to_string()),
            group: filter.group.clone(),
            error: filter.error.as_ref().map(|error| error.to_lowercase()),
            wanted: wanted.map(|wanted| wanted.iter().map(ToString::to_string).collect()),
        })
    }

    /// Walks the letters of one partition that `selection` chooses, oldest first (`newest_first`:
    /// the other way), 500 per read, handing each to `visit` until it answers `false`. Returns
    /// `true` when the walk stopped at [`SCAN_LIMIT`] letters looked at with more left.
    async fn walk(
        &self,
        selection: &Selection,
        stream: &StreamName,
        partition: u16,
        newest_first: bool,
        mut visit: impl FnMut(DeadLetterItem) -> bool,
    ) -> Result<bool> {
        let key = self.keys.partition(stream, partition).dead_letters;
        let (mut cursor, last) = if newest_first {
            (selection.end.clone(), selection.start.as_str())
        } else {
            (selection.start.clone(), selection.end.as_str())
        };
        let mut looked = 0usize;
        loop {
            let page: Vec<(String, HashMap<String, Value>)> = if newest_first {
                self.redis.xrevrange(&key, cursor.as_str(), last, Some(500)).await?
            } else {
                self.redis.xrange(&key, cursor.as_str(), last, Some(500)).await?
            };
            for (id, fields) in &page {
                looked += 1;
                if let Some(letter) = item(stream.as_str(), partition, id, fields, false)
                    && selection.chooses(&letter)
                    && !visit(letter)
                {
                    return Ok(false);
                }
            }
            match page.last() {
                Some(_) if looked >= SCAN_LIMIT => return Ok(true),
                Some((id, _)) if page.len() == 500 => cursor = format!("({id}"),
                _ => return Ok(false),
            }
        }
    }

    /// Every letter `filter` selects, oldest first: what a redrive or a purge acts on. At most
    /// [`SCAN_LIMIT`] letters are looked at per partition and [`ACT_LIMIT`] kept; the second
    /// answer says whether more may match (a larger backlog takes several runs).
    async fn matching(&self, filter: &DlqFilter) -> Result<(Vec<DeadLetterItem>, bool)> {
        let selection = self.selection(filter)?;
        let mut found = Vec::new();
        let mut more = false;
        for (stream, partition) in &selection.partitions {
            let mut full = false;
            more |= self
                .walk(&selection, stream, *partition, false, |letter| {
                    full = found.len() >= ACT_LIMIT;
                    if !full {
                        found.push(letter);
                    }
                    !full
                })
                .await?;
            if full {
                more = true;
                break;
            }
        }
        found.sort_by_key(|letter| (letter.id.parse::<EntryId>().unwrap_or(EntryId::ZERO), letter.reference.clone()));
        Ok((found, more))
    }

    /// The newest `limit` letters `filter` selects, and how many it selects. Each partition is
    /// read newest first, keeping at most `limit` letters of it, so memory stays bounded however
    /// many letters there are; counting stops after [`SCAN_LIMIT`] letters looked at.
    pub async fn dlq_list(&self, filter: &DlqFilter, limit: usize) -> Result<DlqPage> {
        let limit = limit.clamp(1, 1_000);
        let selection = self.selection(filter)?;
        let mut letters: Vec<DeadLetterItem> = Vec::new();
        let mut total = 0u64;
        let mut at_least = false;
        for (stream, partition) in &selection.partitions {
            let mut kept = 0;
            at_least |= self
                .walk(&selection, stream, *partition, true, |letter| {
                    total += 1;
                    if kept < limit {
                        kept += 1;
                        letters.push(letter);
                    }
                    true
                })
                .await?;
        }
        letters.sort_by_key(|letter| {
            std::cmp::Reverse((letter.id.parse::<EntryId>().unwrap_or(EntryId::ZERO), letter.reference.clone()))
        });
        letters.truncate(limit);
        Ok(DlqPage { total, total_at_least: at_least, letters })
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
        if !(rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate)) {
            return Err(OpsError::Invalid(format!("rate must be {MIN_RATE} to {MAX_RATE} per second")));
        }
        let (letters, _) = self.matching(filter).await?;
        if letters.is_empty() {
            return Err(OpsError::Invalid("no dead letter matches: nothing to redrive".to_owned()));
        }
        let mut families: Vec<&str> = letters.iter().map(|letter| letter.family.as_str()).collect();
        families.sort_unstable();
        families.dedup();
        let locks: Vec<String> = families.iter().map(|family| format!("redrive:{family}")).collect();
        let target = serde_json::to_value(filter).unwrap_or_default();
        let mut running =
            self.start_task("redrive", &actor.0, target.clone(), &locks, letters.len() as u64, Some(rate)).await?;
        running.record = self.audit_start(actor, "dlq.redrive", &target).await;
        Ok((letters, running))
    }

    /// Moves each letter back to its group, paced; stops on cancel.
    pub async fn redrive_run(&self, letters: Vec<DeadLetterItem>, mut running: Running) -> Result<Task> {
        let rate = running.task.rate.unwrap_or(DEFAULT_RATE);
        let started = tokio::time::Instant::now();
        let mut skipped_why: Vec<String> = Vec::new();
        let mut cancelled = false;
        let mut failure = None;
        let mut last_report = tokio::time::Instant::now();
        // Groups that got letters back, and whether they were told to claim since.
        let mut signalled: std::collections::BTreeMap<(String, String), bool> = std::collections::BTreeMap::new();
        let mut last_signal = tokio::time::Instant::now();
        'letters: for (done, letter) in letters.iter().enumerate() {
            // Entry n goes at n / rate seconds: the pace holds whatever each move costs. A long
            // wait (a slow rate) still refreshes the task's lock and notices a cancel.
            let due = started + Duration::from_secs_f64(done as f64 / rate);
            while tokio::time::Instant::now() < due {
                let wake = due.min(tokio::time::Instant::now() + crate::task::HEARTBEAT);
                tokio::time::sleep_until(wake).await;
                if wake < due {
                    last_report = tokio::time::Instant::now();
                    let message = format!("moved {} of {}", running.task.moved, running.task.total);
                    if running.progress(message).await? {
                        cancelled = true;
                        break 'letters;
                    }
                }
            }
            if last_signal.elapsed() >= Duration::from_millis(500) {
                last_signal = tokio::time::Instant::now();
                self.signal_claims(&mut signalled).await;
            }
            // A cancel asked since the last look stops the task before this letter moves.
            if last_report.elapsed() >= Duration::from_millis(200) || rate < 5.0 {
                last_report = tokio::time::Instant::now();
                let message = format!("moved {} of {}", running.task.moved, running.task.total);
                if running.progress(message).await? {
                    cancelled = true;
                    break 'letters;
                }
            }
            let Ok(stream) = self.stream(&letter.family).map(|stream| stream.name.clone()) else { continue };
            // A live group (a gateway's) reads no pending list: a letter moved there would sit
            // in it for good.
            if self.group(Some(&letter.family), &letter.group).is_ok_and(|target| target.settings.live) {
                running.task.skipped += 1;
                if skipped_why.len() < 5 {
                    skipped_why.push(format!(
                        "{}: the group {} is live and reads no pending list (purge the letter instead)",
                        letter.reference, letter.group
                    ));
                }
                continue;
            }
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
                Ok("moved") => {
                    running.task.moved += 1;
                    signalled.insert((letter.family.clone(), letter.group.clone()), false);
                }
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
        }
        self.signal_claims(&mut signalled).await;
        let skipped =
            if skipped_why.is_empty() { String::new() } else { format!("; skipped {}", skipped_why.join(", ")) };
        let (state, outcome, message) = match (failure, cancelled) {
            (Some(error), _) => (TaskState::Failed, "failed", format!("stopped: {error}")),
            (None, true) => {
                (TaskState::Cancelled, "cancelled", format!("cancelled after moving {}{skipped}", running.task.moved))
            }
            (None, false) => (TaskState::Done, "done", format!("moved {}{skipped}", running.task.moved)),
        };
        // Recorded before the task reads as finished: whoever sees it done finds it in the log.
        self.audit_finish(&running.record, running.task.moved, outcome, &message).await;
        running.finish(state, message).await
    }

    /// Tells each group that got letters back since it was last told to claim now.
    async fn signal_claims(&self, signalled: &mut std::collections::BTreeMap<(String, String), bool>) {
        for ((family, group), told) in signalled.iter_mut() {
            if !*told {
                self.claim_now(family, group).await;
                *told = true;
            }
        }
    }

    /// Deletes what `filter` selects when `execute`; otherwise counts it. Returns the count and
    /// whether more may match than one run takes.
    pub async fn dlq_purge(&self, filter: &DlqFilter, execute: bool, actor: &Actor) -> Result<(u64, bool)> {
        let (letters, more) = self.matching(filter).await?;
        if !execute {
            return Ok((letters.len() as u64, more));
        }
        let target = serde_json::to_value(filter).unwrap_or_default();
        let record = self.audit_start(actor, "dlq.purge", &target).await;
        let mut purged = 0;
        for (index, letter) in letters.iter().enumerate() {
            let Ok(stream) = self.stream(&letter.family).map(|stream| stream.name.clone()) else { continue };
            let key = self.keys.partition(&stream, letter.partition).dead_letters;
            let removed: u64 = match self.redis.xdel(&key, letter.id.as_str()).await {
                Ok(removed) => removed,
                Err(error) => {
                    self.audit_finish(&record, purged, "failed", &format!("stopped after {purged}: {error}")).await;
                    return Err(error.into());
                }
            };
            purged += removed;
            if index % 1_000 == 999 {
                self.audit_progress(&record, purged, &format!("purged {purged} so far")).await;
            }
        }
        self.audit_finish(&record, purged, "done", &format!("purged {purged} dead letters")).await;
        Ok((purged, more))
    }
}
