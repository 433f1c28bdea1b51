//! The loop of one partition of one consumer. See the module docs of [`super`] for the
//! sequence; this file is the state machine behind it (and `live.rs`, the one of live groups).

mod live;

use std::borrow::Cow;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chatdesk_core::envelope::FIELDS;
use chatdesk_core::{DeadLetter, Entry, EntryId, GroupName, GroupSettings, PartitionKeys};
use fred::prelude::*;
use fred::types::streams::XID;
use futures::FutureExt;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::consumer::ensure_group;
use super::{Batch, Handler, HandlerError, Outcome, Outcomes, Unavailable};
use crate::dead_letter::dead_letter_pending;
use crate::entry::{Envelope, ReadError, now_ms};
use crate::metrics;

const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Longest wait between calls while a dependency is down.
const UNAVAILABLE_BACKOFF_MAX: Duration = Duration::from_secs(5);
const ERROR_BACKOFF_BASE: Duration = Duration::from_millis(100);
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(3);
/// How long shutdown keeps trying to acknowledge finished entries while Redis is unreachable.
const SHUTDOWN_ACK_DEADLINE: Duration = Duration::from_secs(10);
/// The longest an exclusive group's partition waits for a holder that died: its lease lapses
/// after this (or the group's `claim_idle`, if shorter) without a renewal.
const MAX_LEASE: Duration = Duration::from_secs(10);

/// Field-value pairs as they were appended.
type Fields = Vec<(String, String)>;

/// An entry as read, decoded from the reply's values as they were walked.
struct RawEntry {
    id: String,
    body: Body,
    delivery_count: u64,
}

/// What an entry read holds.
enum Body {
    /// A pending entry deleted from the stream (XDEL or trim) before it was handled.
    Deleted,
    /// An envelope under its parsed id, and any fields it does not carry (kept for a dead
    /// letter).
    Decoded { id: EntryId, envelope: Envelope, extra: Fields },
    /// Fields that are not an envelope, kept as read for the dead letter.
    Undecodable { fields: Fields, error: ReadError },
}

/// An entry on its way to the dead-letter stream.
struct Doomed {
    id: String,
    delivery_count: u64,
    original: Fields,
    error: String,
}

impl Body {
    /// The fields a dead letter keeps of this entry.
    fn into_original(self) -> Fields {
        match self {
            Body::Deleted => Vec::new(),
            Body::Decoded { envelope, extra, .. } => original_fields(&envelope, &extra),
            Body::Undecodable { fields, .. } => fields,
        }
    }
}

/// The fields a dead letter keeps of an entry that decoded: the envelope's own, as the producer
/// writes them, then any others as they came. An entry appended through [`Envelope::encode`]
/// gets back exactly what was appended.
fn original_fields(envelope: &Envelope, extra: &[(String, String)]) -> Fields {
    let mut fields: Fields = envelope.encode().into_iter().map(|(field, value)| (field.to_owned(), value)).collect();
    fields.extend(extra.iter().cloned());
    fields
}

/// Where a batch came from; decides how delivery counts are known.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    New,
    OwnPending,
    Claimed,
}

/// A handler's panic, as the retry reason and the dead letter's error.
fn panic_reason(panic: Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("handler panicked: {text}")
}

fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)));
    let capped = exponential.min(max);
    // Full jitter on the upper half keeps retries of many partitions from synchronising.
    let half = capped / 2;
    half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis().max(1) as u64))
}

pub(super) struct PartitionWorker<H> {
    shared: Client,
    reader: Client,
    keys: PartitionKeys,
    group: GroupName,
    consumer: String,
    settings: GroupSettings,
    handler: Arc<H>,
    permits: Arc<Semaphore>,
    labels: [(&'static str, String); 3],
    /// Entries the handler finished whose XACK has not been confirmed yet.
    unacked: Vec<String>,
    /// New entries read while the previous batch was handled (see `read_ahead`), next in line.
    /// They are in our pending list: whenever that list is re-read, they are dropped from here.
    ahead: Vec<RawEntry>,
    /// Our own pending list may hold entries (after a retry, a restart, or a Redis error).
    own_pending: bool,
    /// Entries read but put back unhandled (a batch read ahead dropped after a retry, a lost
    /// lease or a Redis error; a batch read as the lease ran out), with how many times: Redis
    /// counted each read as a delivery, so every re-read subtracts them and only the handler's
    /// attempts count toward `max_deliveries`. Forgotten when the entry is acknowledged or
    /// dead-lettered, and once our pending list is empty.
    put_back: HashMap<String, u64>,
    retry_attempt: u32,
    retry_not_before: Option<Instant>,
    last_errors: HashMap<String, String>,
    next_claim_at: Instant,
    claim_cursor: String,
    /// Bumped by an operator's hand-back (replay, redrive, claim): claim at once.
    claim_now: Arc<std::sync::atomic::AtomicU64>,
    claim_now_seen: u64,
    /// Exclusive groups: whether we hold the partition's lease, and until when (by our own
    /// clock, which runs on while the process is paused) it surely holds.
    leased: bool,
    lease_until: Instant,
}

impl<H: Handler> PartitionWorker<H> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        shared: Client,
        reader: Client,
        keys: PartitionKeys,
        group: GroupName,
        consumer: String,
        settings: GroupSettings,
        handler: Arc<H>,
        permits: Arc<Semaphore>,
        claim_now: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        let labels = [
            ("stream", keys.family.to_string()),
            ("group", group.to_string()),
            ("partition", keys.partition.to_string()),
        ];
        // Counters alert rules take rates of exist from the start, at 0.
        for name in
            [metrics::HANDLER_UNAVAILABLE_TOTAL, metrics::ENTRIES_LOST_TOTAL, metrics::ENTRIES_DEAD_LETTERED_TOTAL]
        {
            ::metrics::counter!(name, &labels).increment(0);
        }
        if settings.live {
            ::metrics::counter!(metrics::LIVE_SET_BACKS_TOTAL, &labels).increment(0);
        }
        Self {
            shared,
            reader,
            keys,
            group,
            consumer,
            settings,
            handler,
            permits,
            labels,
            unacked: Vec::new(),
            ahead: Vec::new(),
            put_back: HashMap::new(),
            // A consumer restarted under the same name picks up what it had in hand.
            own_pending: true,
            retry_attempt: 0,
            retry_not_before: None,
            last_errors: HashMap::new(),
            // Claim once right away: a survivor takes over a crashed peer's old work promptly.
            next_claim_at: Instant::now(),
            claim_cursor: "0-0".to_owned(),
            claim_now_seen: claim_now.load(std::sync::atomic::Ordering::Relaxed),
            claim_now,
            leased: false,
            lease_until: Instant::now(),
        }
    }

    /// Whether the lease surely lasts through a blocking read and a batch wait from now: a
    /// process paused past its lease must not read (what it read would be handled beside the
    /// new holder).
    fn lease_lasts(&self) -> bool {
        !self.settings.exclusive
            || (self.leased && Instant::now() + self.settings.block + self.settings.batch_wait < self.lease_until)
    }

    fn lease_key(&self) -> String {
        self.keys.scoped("lease", self.group.as_str())
    }

    fn lease_ttl(&self) -> Duration {
        // Renewed at every turn (at most a block and a batch wait apart) and while a batch waits
        // for its dependency, so a live holder never lapses.
        self.settings.claim_idle.min(MAX_LEASE).max((self.settings.block + self.settings.batch_wait) * 3)
    }

    /// Exclusive groups: takes or renews the partition's lease. Taking it over from a holder
    /// that lapsed also takes that holder's pending entries, so they are handled before anything
    /// newer. Returns whether we hold it.
    async fn hold_lease(&mut self) -> Result<bool, Error> {
        let asked = Instant::now();
        let ttl = self.lease_ttl();
        let held: i64 = crate::lease::HOLD
            .call(&self.shared, vec![self.lease_key()], vec![self.consumer.clone(), ttl.as_millis().to_string()])
            .await?;
        let was = self.leased;
        self.leased = held != 0;
        // Counted from before the call: Redis started the lease no earlier than that.
        self.lease_until = asked + ttl;
        if self.leased {
            // Entries another consumer of the group still holds come first: at a take-over, and
            // any its last read got after (they are newer than all we read).
            self.take_over_pending().await?;
        }
        if self.leased && (held == 2 || !was) {
            tracing::info!(
                stream = %self.keys.family,
                group = %self.group,
                partition = self.keys.partition,
                "partition lease taken"
            );
        }
        Ok(self.leased)
    }

    /// Moves every entry other consumers of the group hold pending on this partition to us
    /// (their holder's lease lapsed: it is gone, or too slow to keep the partition in order).
    async fn take_over_pending(&mut self) -> Result<(), Error> {
        // The summary names each consumer with pending entries: usually only us (the batch
        // whose XACK goes out with the next read), and then there is nothing to take.
        let (_, _, _, consumers): crate::retention::PendingSummary =
            self.shared.xpending(self.keys.stream.as_str(), self.group.as_str(), ()).await?;
        if consumers.iter().all(|(consumer, _)| *consumer == self.consumer) {
            return Ok(());
        }
        loop {
            let pending: Vec<(String, String, u64, u64)> =
                self.shared.xpending(self.keys.stream.as_str(), self.group.as_str(), ("-", "+", 1000)).await?;
            let theirs: Vec<String> = pending
                .into_iter()
                .filter(|(_, consumer, _, _)| *consumer != self.consumer)
                .map(|(id, ..)| id)
                .collect();
            if theirs.is_empty() {
                return Ok(());
            }
            let _: Value = self
                .shared
                .xclaim(
                    self.keys.stream.as_str(),
                    self.group.as_str(),
                    self.consumer.as_str(),
                    0,
                    theirs,
                    None,
                    None,
                    None,
                    false,
                    true,
                )
                .await?;
            self.own_pending = true;
        }
    }

    /// The span a batch is handled in (the runtime's module docs name its fields).
    fn batch_span(&self, batch_len: usize) -> tracing::Span {
        tracing::info_span!(
            "batch",
            stream = %self.keys.family,
            group = %self.group,
            partition = self.keys.partition,
            batch_len,
            done = tracing::field::Empty,
            retried = tracing::field::Empty,
            dead_lettered = tracing::field::Empty,
        )
    }

    /// One call of the handler, within the process's concurrency, a panic caught as an error.
    async fn call_handler(&self, batch: &Batch) -> std::thread::Result<Result<Outcomes, HandlerError>> {
        let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
        AssertUnwindSafe(self.handler.handle(batch)).catch_unwind().await
    }

    /// Counts and logs a turn of the loop that failed on Redis.
    fn report_error(&self, error: &Error) {
        metrics::record_redis_error(&self.labels, "consume");
        tracing::warn!(
            stream = %self.keys.family,
            group = %self.group,
            partition = self.keys.partition,
            error = %error,
            "stream read failed, retrying"
        );
    }

    /// Creates the group again (at its `start`) after the stream or the group vanished.
    async fn recreate_group(&self) {
        let _ = ensure_group(&self.shared, &self.keys.stream, self.group.as_str(), self.settings.start).await;
    }

    fn claim_interval(&self) -> Duration {
        (self.settings.claim_idle / 2).max(Duration::from_millis(100))
    }

    pub(super) async fn run(mut self, cancel: CancellationToken) {
        if self.settings.live {
            return self.run_live(cancel).await;
        }
        let mut error_attempt = 0;
        while !cancel.is_cancelled() {
            match self.step(&cancel).await {
                Ok(()) => error_attempt = 0,
                Err(error) => {
                    error_attempt += 1;
                    self.report_error(&error);
                    // Whatever was delivered before the error is in our pending list.
                    self.put_back_ahead();
                    if error.details().starts_with("NOGROUP") {
                        // The stream (and its groups) vanished, e.g. Redis restarted without
                        // persistence: recreate so the partition keeps flowing.
                        self.recreate_group().await;
                    }
                    let mut pause = backoff(ERROR_BACKOFF_BASE, ERROR_BACKOFF_MAX, error_attempt);
                    if !self.unacked.is_empty() {
                        // Handled entries whose XACK has not gone through are claimed by a peer
                        // (and handled again) once idle past claim_idle: try well before that.
                        pause = pause.min(self.settings.claim_idle / 4);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = cancel.cancelled() => {}
                    }
                }
            }
        }
        // A batch read ahead is in hand too: finished before stopping, like the one being
        // handled, unless entries before it are still pending or the partition is no longer
        // surely ours.
        let ahead = std::mem::take(&mut self.ahead);
        if !ahead.is_empty() && !self.own_pending && (!self.settings.exclusive || Instant::now() < self.lease_until) {
            let span = self.batch_span(ahead.len());
            if let Err(error) = self.process(ahead, &cancel).instrument(span).await {
                tracing::warn!(stream = %self.keys.family, group = %self.group, error = %error, "batch read ahead not finished at shutdown; it will be delivered again");
            }
        }
        let deadline = Instant::now() + SHUTDOWN_ACK_DEADLINE;
        while !self.unacked.is_empty() && Instant::now() < deadline {
            if self.flush_acks().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if !self.unacked.is_empty() {
            tracing::warn!(
                stream = %self.keys.family,
                group = %self.group,
                partition = self.keys.partition,
                entries = self.unacked.len(),
                "stopping with finished entries unacknowledged; they will be delivered again"
            );
        }
        if self.leased {
            // Handed over at once rather than after the lease lapses.
            let _: Result<i64, _> =
                crate::lease::RELEASE.call(&self.shared, vec![self.lease_key()], vec![self.consumer.clone()]).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.reader.quit()).await;
    }

    /// One turn of the loop: acknowledge, then read from our pending list, from claimable
    /// entries or from new entries, and handle what was read.
    async fn step(&mut self, cancel: &CancellationToken) -> Result<(), Error> {
        if self.settings.exclusive && !self.hold_lease().await? {
            // Another process of the group reads this partition; what we finished is
            // acknowledged, and we look again after a block. What we read ahead is the new
            // holder's to take over; whatever it has not taken is re-read if the lease comes back.
            if !self.ahead.is_empty() {
                self.put_back_ahead();
            }
            self.flush_acks().await?;
            tokio::select! {
                _ = tokio::time::sleep(self.settings.block) => {}
                _ = cancel.cancelled() => {}
            }
            return Ok(());
        }
        let signalled = self.claim_now.load(std::sync::atomic::Ordering::Relaxed);
        if signalled != self.claim_now_seen {
            self.claim_now_seen = signalled;
            self.next_claim_at = Instant::now();
            self.claim_cursor = "0-0".to_owned();
        }
        let (source, entries) = if self.own_pending {
            // Re-read below with the rest of our pending list, in order.
            self.put_back_ahead();
            self.flush_acks().await?;
            if let Some(not_before) = self.retry_not_before {
                tokio::select! {
                    _ = tokio::time::sleep_until(not_before) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
            }
            if !self.lease_lasts() {
                return Ok(());
            }
            let entries = self.read(XID::Manual("0".into()), None).await?;
            if entries.is_empty() {
                self.own_pending = false;
                self.retry_attempt = 0;
                self.retry_not_before = None;
                self.last_errors.clear();
                self.put_back.clear();
                return Ok(());
            }
            (Source::OwnPending, entries)
        } else if Instant::now() >= self.next_claim_at {
            self.flush_acks().await?;
            if !self.lease_lasts() {
                return Ok(());
            }
            let entries = self.claim().await?;
            if entries.is_empty() {
                return Ok(());
            }
            (Source::Claimed, entries)
        } else if !self.ahead.is_empty() {
            (Source::New, std::mem::take(&mut self.ahead))
        } else {
            let until_claim = self.next_claim_at.saturating_duration_since(Instant::now());
            let block = self.settings.block.min(until_claim).max(Duration::from_millis(1));
            let entries = tokio::select! {
                read = async {
                    if self.lease_lasts() { self.ack_and_read(block).await } else { Ok(Vec::new()) }
                } => read?,
                // Dropping the read may leave entries delivered to us; they stay in our pending
                // list and are claimed by a peer (or re-read by us under the same name).
                _ = cancel.cancelled() => return Ok(()),
            };
            if entries.is_empty() {
                return Ok(());
            }
            let mut entries = entries;
            self.fill(&mut entries, cancel).await?;
            (Source::New, entries)
        };
        let entries = if source == Source::New { entries } else { self.with_delivery_counts(entries).await? };
        let batch_len = entries.len();
        let span = self.batch_span(batch_len);
        if self.settings.exclusive && Instant::now() >= self.lease_until {
            // Paused past the lease while reading: the new holder takes these over and handles
            // them in order; we only keep them pending, read but not handled.
            for entry in entries {
                *self.put_back.entry(entry.id).or_default() += 1;
            }
            self.own_pending = true;
            return Ok(());
        }
        // A full batch of new entries means more are probably waiting: read the next batch
        // while the handler works on this one, so a backlog is read and handled at once rather
        // than in turns.
        if source == Source::New && batch_len >= self.settings.batch_size as usize && self.lease_lasts() {
            let acks = std::mem::take(&mut self.unacked);
            let next = read_ahead(
                self.reader.clone(),
                self.keys.stream.clone(),
                self.group.clone(),
                self.consumer.clone(),
                self.settings.batch_size as usize,
                acks,
            );
            let (processed, (unconfirmed, next)) = tokio::join!(self.process(entries, cancel).instrument(span), next);
            self.unacked.extend(unconfirmed);
            match next {
                Ok(next) => self.ahead = next,
                Err(error) => {
                    // The read may have delivered entries before it failed: they are ours.
                    self.own_pending = true;
                    processed?;
                    return Err(error);
                }
            }
            // If the batch failed, `run` puts what was read ahead back.
            processed?;
            // Kept only while this batch went through and the partition is still ours; otherwise
            // they wait in our pending list (re-read in order, or taken over by the new holder).
            // When shutting down, `run` finishes them.
            let lease_lapsed = self.settings.exclusive && (!self.leased || Instant::now() >= self.lease_until);
            if !self.ahead.is_empty() && (self.own_pending || lease_lapsed) {
                self.put_back_ahead();
            }
            return Ok(());
        }
        self.process(entries, cancel).instrument(span).await
    }

    async fn read(&self, id: XID, block: Option<Duration>) -> Result<Vec<RawEntry>, Error> {
        self.read_up_to(id, block, self.settings.batch_size as usize).await
    }

    /// A batch that came short waits `batch_wait` for more, then takes what arrived meanwhile
    /// with one read that does not block: one more round trip per batch, and far fewer batches
    /// (handler calls, PostgreSQL transactions) under a steady trickle.
    async fn fill(&self, entries: &mut Vec<RawEntry>, cancel: &CancellationToken) -> Result<(), Error> {
        let size = self.settings.batch_size as usize;
        if self.settings.batch_wait.is_zero() || entries.len() >= size {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(self.settings.batch_wait) => {}
            // What was read is ours (pending) and handled now; nothing waits on the rest.
            _ = cancel.cancelled() => return Ok(()),
        }
        entries.extend(self.read_up_to(XID::NewInGroup, None, size - entries.len()).await?);
        Ok(())
    }

    async fn read_up_to(&self, id: XID, block: Option<Duration>, count: usize) -> Result<Vec<RawEntry>, Error> {
        let noack = self.settings.live;
        read_group(&self.reader, &self.keys.stream, &self.group, &self.consumer, id, block, count, noack).await
    }

    /// XACK of the finished entries and the next read, sent together on the reader's connection:
    /// one round trip per batch instead of two. Redis runs them in order, so the XACK is done
    /// before the read blocks.
    async fn ack_and_read(&mut self, block: Duration) -> Result<Vec<RawEntry>, Error> {
        if self.unacked.is_empty() {
            return self.read(XID::NewInGroup, Some(block)).await;
        }
        let ids: Vec<&str> = self.unacked.iter().map(String::as_str).collect();
        let ack = self.reader.xack::<i64, _, _, _>(self.keys.stream.as_str(), self.group.as_str(), ids);
        let (acked, read) = tokio::join!(ack, self.read(XID::NewInGroup, Some(block)));
        // An XACK that failed is sent again with the next batch's; the read's entries are ours.
        if acked.is_ok() {
            self.unacked.clear();
        }
        let entries = read?;
        acked?;
        Ok(entries)
    }

    /// XAUTOCLAIM: take over entries idle past `claim_idle`, a batch at a time, walking the
    /// pending list with a cursor until it wraps.
    async fn claim(&mut self) -> Result<Vec<RawEntry>, Error> {
        let (cursor, claimed, deleted): (String, Value, Vec<String>) = self
            .shared
            .xautoclaim(
                self.keys.stream.as_str(),
                self.group.as_str(),
                self.consumer.as_str(),
                self.settings.claim_idle.as_millis() as u64,
                self.claim_cursor.as_str(),
                Some(u64::from(self.settings.batch_size)),
                false,
            )
            .await?;
        if cursor == "0-0" {
            self.next_claim_at = Instant::now() + self.claim_interval();
        }
        self.claim_cursor = cursor;
        if !deleted.is_empty() {
            ::metrics::counter!(metrics::ENTRIES_LOST_TOTAL, &self.labels).increment(deleted.len() as u64);
            tracing::error!(
                stream = %self.keys.family,
                group = %self.group,
                partition = self.keys.partition,
                ids = ?deleted,
                "pending entries were deleted from the stream before the group handled them"
            );
        }
        let entries = entries_of(claimed)?;
        if !entries.is_empty() {
            ::metrics::counter!(metrics::ENTRIES_CLAIMED_TOTAL, &self.labels).increment(entries.len() as u64);
            tracing::info!(
                stream = %self.keys.family,
                group = %self.group,
                partition = self.keys.partition,
                entries = entries.len(),
                "claimed entries idle past claim_idle"
            );
        }
        Ok(entries)
    }

    /// Drops the batch read ahead back to our pending list, noting that the handler never saw it.
    fn put_back_ahead(&mut self) {
        for entry in self.ahead.drain(..) {
            *self.put_back.entry(entry.id).or_default() += 1;
        }
        self.own_pending = true;
    }

    /// Re-delivered entries: look up how often the group has delivered each, less the reads
    /// put back unhandled.
    async fn with_delivery_counts(&mut self, mut entries: Vec<RawEntry>) -> Result<Vec<RawEntry>, Error> {
        let first =
            entries.iter().map(|entry| entry.id.as_str()).min_by_key(|id| parse_id(id)).unwrap_or("-").to_owned();
        let last =
            entries.iter().map(|entry| entry.id.as_str()).max_by_key(|id| parse_id(id)).unwrap_or("+").to_owned();
        let pending: Vec<(String, String, u64, u64)> = self
            .shared
            .xpending(
                self.keys.stream.as_str(),
                self.group.as_str(),
                (first.as_str(), last.as_str(), (entries.len() * 2 + 100) as u64, self.consumer.as_str()),
            )
            .await?;
        let counts: HashMap<String, u64> = pending.into_iter().map(|(id, _, _, count)| (id, count)).collect();
        for entry in &mut entries {
            let count = counts.get(&entry.id).copied().unwrap_or(1);
            // Kept until the entry is acknowledged or dead-lettered: Redis counts that read again
            // at every re-read.
            let unhandled_reads = self.put_back.get(&entry.id).copied().unwrap_or(0);
            entry.delivery_count = count.saturating_sub(unhandled_reads).max(1);
        }
        Ok(entries)
    }

    async fn process(&mut self, entries: Vec<RawEntry>, cancel: &CancellationToken) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let max_deliveries = u64::from(self.settings.max_deliveries);
        // Each handled entry's id, delivery count and extra fields, beside its decoded entry.
        let mut to_handle: Vec<(String, u64, Fields)> = Vec::with_capacity(entries.len());
        let mut decoded = Vec::with_capacity(entries.len());
        let mut to_dead_letter: Vec<Doomed> = Vec::new();
        for RawEntry { id, body, delivery_count } in entries {
            let (entry_id, envelope, extra) = match body {
                Body::Deleted => {
                    // Deleted from the stream (XDEL or trim) while pending: nothing left to handle.
                    ::metrics::counter!(metrics::ENTRIES_LOST_TOTAL, &self.labels).increment(1);
                    tracing::error!(stream = %self.keys.family, group = %self.group, id = %id, "pending entry no longer exists");
                    self.put_back.remove(&id);
                    self.unacked.push(id);
                    continue;
                }
                body if delivery_count > max_deliveries => {
                    let error = self.last_errors.remove(&id).unwrap_or_else(|| {
                        format!(
                            "delivered {} times without being acknowledged (consumers failed or crashed)",
                            delivery_count - 1
                        )
                    });
                    to_dead_letter.push(Doomed { original: body.into_original(), id, delivery_count, error });
                    continue;
                }
                Body::Undecodable { fields, error } => {
                    let error = format!("cannot decode entry: {error}");
                    to_dead_letter.push(Doomed { id, delivery_count, original: fields, error });
                    continue;
                }
                Body::Decoded { id: entry_id, envelope, extra } => (entry_id, envelope, extra),
            };
            decoded.push(Entry { id: entry_id, partition: self.keys.partition, delivery_count, envelope });
            to_handle.push((id, delivery_count, extra));
        }

        let (mut done, mut retried) = (0u64, 0u64);
        if !to_handle.is_empty() {
            let batch = Batch {
                stream: self.keys.family.clone(),
                group: self.group.clone(),
                partition: self.keys.partition,
                entries: decoded,
            };
            let mut unavailable_attempt = 0;
            let outcome = loop {
                let outcome = self.call_handler(&batch).await;
                let Ok(Err(error)) = &outcome else { break outcome };
                if !error.is::<Unavailable>() {
                    break outcome;
                }
                unavailable_attempt += 1;
                ::metrics::counter!(metrics::HANDLER_UNAVAILABLE_TOTAL, &self.labels).increment(1);
                tracing::warn!(
                    stream = %self.keys.family,
                    group = %self.group,
                    partition = self.keys.partition,
                    error = %error,
                    attempt = unavailable_attempt,
                    "dependency unavailable, keeping the batch"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff(RETRY_BACKOFF_BASE, UNAVAILABLE_BACKOFF_MAX, unavailable_attempt)) => {}
                    // Shutting down: the entries stay pending and are delivered again later,
                    // before anything read after them (a batch read ahead is put back, not
                    // finished).
                    _ = cancel.cancelled() => {
                        self.own_pending = true;
                        return Ok(());
                    }
                }
                if self.settings.exclusive && !matches!(self.hold_lease().await, Ok(true)) {
                    // The lease went to another process (we were paused past it): that one
                    // handles this batch, in order; ours stays pending until it is taken over,
                    // and is re-read first if we hold the partition again (or could not tell).
                    self.own_pending = true;
                    return Ok(());
                }
            };
            let outcomes = match outcome {
                Ok(Ok(outcomes)) => Ok(outcomes),
                Ok(Err(error)) => Err(error.to_string()),
                Err(panic) => Err(panic_reason(panic)),
            };
            for ((id, delivery_count, extra), entry) in to_handle.into_iter().zip(&batch.entries) {
                let outcome = match &outcomes {
                    Ok(outcomes) => outcomes.of(&entry.id).clone(),
                    Err(error) => Outcome::Retry(error.clone()),
                };
                let error = match outcome {
                    Outcome::Done => {
                        done += 1;
                        self.last_errors.remove(&id);
                        self.put_back.remove(&id);
                        self.unacked.push(id);
                        continue;
                    }
                    Outcome::Retry(reason) if delivery_count < max_deliveries => {
                        retried += 1;
                        self.last_errors.insert(id, reason);
                        continue;
                    }
                    Outcome::Retry(reason) | Outcome::Reject(reason) => reason,
                };
                let original = original_fields(&entry.envelope, &extra);
                to_dead_letter.push(Doomed { id, delivery_count, original, error });
            }
        }

        let failed = retried + to_dead_letter.len() as u64;
        let dead_lettered = to_dead_letter.len() as u64;
        for doomed in to_dead_letter {
            let letter = DeadLetter {
                original_id: doomed.id,
                family: self.keys.family.to_string(),
                partition: self.keys.partition,
                group: self.group.to_string(),
                consumer: self.consumer.clone(),
                error: doomed.error,
                deliveries: doomed.delivery_count,
                time_ms: now_ms(),
                original: doomed.original,
            };
            let moved = dead_letter_pending(&self.shared, &self.keys, &letter).await?;
            self.put_back.remove(&letter.original_id);
            if moved {
                tracing::warn!(stream = %self.keys.family, group = %self.group, id = %letter.original_id, error = %letter.error, "entry dead-lettered");
            }
        }
        if retried > 0 {
            self.own_pending = true;
            self.retry_attempt += 1;
            self.retry_not_before =
                Some(Instant::now() + backoff(RETRY_BACKOFF_BASE, RETRY_BACKOFF_MAX, self.retry_attempt));
        }
        // The XACK of this batch goes out with the next read (see `ack_and_read`).

        let span = tracing::Span::current();
        span.record("done", done);
        span.record("retried", retried);
        span.record("dead_lettered", dead_lettered);
        ::metrics::counter!(metrics::ENTRIES_PROCESSED_TOTAL, &self.labels).increment(done);
        if failed > 0 {
            ::metrics::counter!(metrics::ENTRIES_FAILED_TOTAL, &self.labels).increment(failed);
        }
        if dead_lettered > 0 {
            ::metrics::counter!(metrics::ENTRIES_DEAD_LETTERED_TOTAL, &self.labels).increment(dead_lettered);
        }
        ::metrics::histogram!(metrics::BATCH_DURATION_SECONDS, &self.labels).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// XACK everything finished, in one call. On failure the ids are kept and the next attempt
    /// includes them: an entry whose effect is done is never handed to the handler again by
    /// this consumer.
    async fn flush_acks(&mut self) -> Result<(), Error> {
        if self.unacked.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = self.unacked.iter().map(String::as_str).collect();
        let _: i64 = self.shared.xack(self.keys.stream.as_str(), self.group.as_str(), ids).await?;
        self.unacked.clear();
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_group(
    reader: &Client,
    stream: &str,
    group: &GroupName,
    consumer: &str,
    id: XID,
    block: Option<Duration>,
    count: usize,
    noack: bool,
) -> Result<Vec<RawEntry>, Error> {
    let reply: Value = reader
        .xreadgroup(
            group.as_str(),
            consumer,
            Some(count as u64),
            block.map(|block| block.as_millis() as u64),
            noack,
            stream,
            id,
        )
        .await?;
    read_reply_entries(reply)
}

/// The next batch of new entries without blocking, with the XACK of what was finished before
/// the batch now in hand (sent together, as in `ack_and_read`). Owns what it uses, so it runs
/// beside the handler. Returns the ids whose XACK is not confirmed, and what was read.
async fn read_ahead(
    reader: Client,
    stream: String,
    group: GroupName,
    consumer: String,
    count: usize,
    acks: Vec<String>,
) -> (Vec<String>, Result<Vec<RawEntry>, Error>) {
    let read = read_group(&reader, &stream, &group, &consumer, XID::NewInGroup, None, count, false);
    if acks.is_empty() {
        return (acks, read.await);
    }
    let acked = {
        let ids: Vec<&str> = acks.iter().map(String::as_str).collect();
        let ack = reader.xack::<i64, _, _, _>(stream.as_str(), group.as_str(), ids);
        let (acked, read) = tokio::join!(ack, read);
        (acked.is_ok(), read)
    };
    match acked {
        (true, read) => (Vec::new(), read),
        (false, read) => (acks, read),
    }
}

fn parse_id(id: &str) -> EntryId {
    id.parse().unwrap_or(EntryId::ZERO)
}

/// XREADGROUP's reply (one stream: `[[key, entries]]`, or a map under RESP3; nil when nothing
/// came) as entries.
fn read_reply_entries(reply: Value) -> Result<Vec<RawEntry>, Error> {
    match reply {
        Value::Null => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut entries = Vec::new();
            for stream in streams {
                let Value::Array(key_and_entries) = stream else { return Err(unexpected_reply("XREADGROUP")) };
                let Some(stream_entries) = key_and_entries.into_iter().nth(1) else {
                    return Err(unexpected_reply("XREADGROUP"));
                };
                entries.extend(entries_of(stream_entries)?);
            }
            Ok(entries)
        }
        Value::Map(streams) => {
            let mut entries = Vec::new();
            for (_, stream_entries) in streams.inner() {
                entries.extend(entries_of(stream_entries)?);
            }
            Ok(entries)
        }
        _ => Err(unexpected_reply("XREADGROUP")),
    }
}

/// Entries as XREADGROUP and XAUTOCLAIM send them, `[[id, [field, value, …]], …]`, walked and
/// decoded as they are: fred's typed conversion builds a hash map per entry (hashing every field
/// name), and copying every field into a `String` before decoding cost as much again. Only the
/// id, the type and the payload are copied out of the reply. A pending entry deleted from the
/// stream has no fields (nil).
fn entries_of(value: Value) -> Result<Vec<RawEntry>, Error> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(unexpected_reply("entries")),
    };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(id_and_fields) = item else { return Err(unexpected_reply("entry")) };
        let mut id_and_fields = id_and_fields.into_iter();
        let id = match id_and_fields.next() {
            Some(id @ (Value::String(_) | Value::Bytes(_))) => text_of(&id).into_owned(),
            _ => return Err(unexpected_reply("entry id")),
        };
        let body = match id_and_fields.next() {
            Some(Value::Array(flat)) => {
                if flat.len() % 2 != 0 {
                    return Err(unexpected_reply("entry fields"));
                }
                body_of(&id, || flat.chunks_exact(2).map(|pair| (text_of(&pair[0]), text_of(&pair[1]))))
            }
            Some(Value::Map(map)) => {
                let map: Vec<(fred::types::Key, Value)> = map.inner().into_iter().collect();
                body_of(&id, || map.iter().map(|(field, value)| (field.as_str_lossy(), text_of(value))))
            }
            // A pending entry deleted from the stream.
            Some(Value::Null) => Body::Deleted,
            _ => return Err(unexpected_reply("entry fields")),
        };
        entries.push(RawEntry { id, body, delivery_count: 1 });
    }
    Ok(entries)
}

/// Entry `id`'s fields, borrowed from the reply (walked once to decode, and again only for
/// fields the envelope does not carry, or to keep them all when they are not an envelope).
fn body_of<'a, I>(id: &str, pairs: impl Fn() -> I) -> Body
where
    I: Iterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
{
    if pairs().next().is_none() {
        return Body::Deleted;
    }
    let owned = |(field, value): (Cow<'a, str>, Cow<'a, str>)| (field.into_owned(), value.into_owned());
    let decoded = id
        .parse::<EntryId>()
        .map_err(|_| ReadError::Id(id.to_owned()))
        .and_then(|entry_id| Ok((entry_id, Envelope::decode(pairs())?)));
    match decoded {
        Ok((id, envelope)) => Body::Decoded {
            id,
            envelope,
            extra: pairs().filter(|(field, _)| !FIELDS.contains(&field.as_ref())).map(owned).collect(),
        },
        Err(error) => Body::Undecodable { fields: pairs().map(owned).collect(), error },
    }
}

/// A reply value as text, borrowed when it is UTF-8 (binary data decoded lossily rather than
/// failing the read).
fn text_of(value: &Value) -> Cow<'_, str> {
    value.as_str_lossy().unwrap_or_default()
}

fn unexpected_reply(what: &str) -> Error {
    Error::new(fred::error::ErrorKind::Protocol, format!("unexpected {what} in a stream reply"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str) -> Value {
        Value::String(text.into())
    }

    #[test]
    fn stream_replies_are_read_as_sent() {
        assert!(read_reply_entries(Value::Null).unwrap().is_empty(), "nothing new");
        let reply = Value::Array(vec![Value::Array(vec![
            text("p:{events:0}"),
            Value::Array(vec![
                Value::Array(vec![
                    text("1-0"),
                    Value::Array(vec![text("type"), text("a"), text("payload"), text("{}"), text("tenant"), text("t")]),
                ]),
                // A pending entry deleted from the stream.
                Value::Array(vec![text("2-0"), Value::Null]),
            ]),
        ])]);
        let entries = read_reply_entries(reply).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        let Body::Undecodable { fields, .. } = &entries[0].body else { panic!("not an envelope") };
        let fields: Vec<(&str, &str)> = fields.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
        assert_eq!(fields, [("type", "a"), ("payload", "{}"), ("tenant", "t")], "kept in the order appended");
        assert_eq!(entries[1].id, "2-0");
        assert!(matches!(entries[1].body, Body::Deleted));

        // An envelope as the producer writes it, with a field it does not carry.
        let envelope = Envelope {
            record_type: "typing".to_owned(),
            tenant: chatdesk_core::TenantId(uuid::Uuid::now_v7()),
            conversation: Some(uuid::Uuid::now_v7()),
            event_id: chatdesk_core::EventId::new(),
            time_ms: 1_765_000_000_000,
            payload: r#"{"active":true}"#.to_owned(),
        };
        let mut flat: Vec<Value> =
            envelope.encode().into_iter().flat_map(|(field, value)| [text(field), text(&value)]).collect();
        flat.extend([text("trace"), text("abc")]);
        let reply = Value::Array(vec![Value::Array(vec![
            text("p:{events:0}"),
            Value::Array(vec![Value::Array(vec![text("4-0"), Value::Array(flat)])]),
        ])]);
        let entries = read_reply_entries(reply).unwrap();
        let Body::Decoded { id, envelope: read, extra } = &entries[0].body else { panic!("an envelope") };
        assert_eq!(id.to_string(), "4-0");
        assert_eq!(read, &envelope);
        assert_eq!(extra, &[("trace".to_owned(), "abc".to_owned())]);
        let mut appended: Vec<(String, String)> =
            envelope.encode().into_iter().map(|(field, value)| (field.to_owned(), value)).collect();
        appended.push(("trace".to_owned(), "abc".to_owned()));
        assert_eq!(original_fields(read, extra), appended, "a dead letter keeps what was appended");

        let mut map = HashMap::new();
        map.insert(
            fred::types::Key::from("p"),
            Value::Array(vec![Value::Array(vec![text("3-0"), Value::Array(vec![text("type"), text("b")])])]),
        );
        let entries = read_reply_entries(Value::Map(map.try_into().unwrap())).unwrap();
        let Body::Undecodable { fields, .. } = &entries[0].body else { panic!("not an envelope") };
        assert_eq!((entries[0].id.as_str(), fields[0].1.as_str()), ("3-0", "b"), "RESP3");

        assert!(read_reply_entries(text("OK")).is_err());
        assert!(entries_of(Value::Array(vec![text("1-0")])).is_err(), "an entry is a pair");
        let odd = Value::Array(vec![Value::Array(vec![text("1-0"), Value::Array(vec![text("type")])])]);
        assert!(entries_of(odd).is_err(), "fields come in pairs");
        let not_fields = Value::Array(vec![Value::Array(vec![text("1-0"), text("type")])]);
        assert!(entries_of(not_fields).is_err(), "not taken for a deleted entry");
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        for attempt in 1..30 {
            let pause = backoff(Duration::from_millis(100), Duration::from_secs(10), attempt);
            let ceiling =
                Duration::from_millis(100).saturating_mul(1 << (attempt - 1).min(16)).min(Duration::from_secs(10));
            assert!(
                pause >= ceiling / 2 && pause <= ceiling + Duration::from_millis(1),
                "attempt {attempt}: {pause:?}"
            );
        }
    }
}
