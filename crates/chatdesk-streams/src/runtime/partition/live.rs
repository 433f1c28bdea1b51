//! Live groups (`live = true` in `streams.toml`): fan-out whose readers resume from their own
//! cursors, as every gateway's `gateway.<node>` group does for its sockets.
//!
//! A live group reads with `XREADGROUP … NOACK`. Redis then keeps no pending list for it, so
//! there is nothing to acknowledge, claim or dead-letter, and no `XCLAIM` per entry and group
//! goes into the append-only file (under AOF `always` every byte of it is written and fsynced
//! before any reply of that turn). What the pending list did for such a group is kept here: the
//! worker remembers the last entry it handed to the handler, and after a Redis error (a read
//! whose reply was lost took its entries with it) it waits out the read's `block` and sets the
//! group back there with `XGROUP SETID` on the reader's connection before reading again. That is
//! exact only with one consumer per group, which is how gateways use it (the group is named after
//! the node).
//!
//! A failing handler is called again with the entries it did not finish: while a dependency is
//! [`Unavailable`], for as long as it takes; otherwise up to `max_deliveries` calls, after which
//! those entries are skipped and counted as lost (the group's readers fetch any gap from the
//! stream themselves). An entry that cannot be decoded is skipped the same way. Shutdown
//! acknowledges nothing: what was read and not handled is gone for this group.

use std::collections::HashMap;
use std::time::Duration;

use chatdesk_core::Entry;
use fred::prelude::*;
use fred::types::streams::XID;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Body, ERROR_BACKOFF_BASE, ERROR_BACKOFF_MAX, PartitionWorker, RETRY_BACKOFF_BASE, RETRY_BACKOFF_MAX, RawEntry,
    UNAVAILABLE_BACKOFF_MAX, backoff, panic_reason,
};
use crate::entry::value_text;
use crate::metrics;
use crate::runtime::{Batch, Handler, Outcome, Unavailable};

/// Beyond a read's `block`: how long a read cut short on our side may still take in Redis.
const READ_SETTLE: Duration = Duration::from_millis(200);

/// Where the group reads from, as this worker knows it.
#[derive(Default)]
struct Position {
    /// The last entry handed to the handler (or skipped), or the group's position when the
    /// worker started; `None` until it is known.
    last: Option<String>,
    /// A Redis error came after the last read: entries past `last` may have been read and lost.
    rewind: bool,
}

/// Whether `error` says the stream or the group is gone (Redis restarted without its data, an
/// operator deleted the key, or a janitor took the group for a gone node's): the group is
/// created again ([`PartitionWorker::recreate_live_group`]).
fn group_gone(error: &Error) -> bool {
    let details = error.details();
    details.starts_with("NOGROUP") || details.contains("no such key") || details.contains("requires the key to exist")
}

impl<H: Handler> PartitionWorker<H> {
    pub(super) async fn run_live(mut self, cancel: CancellationToken) {
        let mut position = Position::default();
        let mut error_attempt = 0;
        while !cancel.is_cancelled() {
            match self.live_step(&mut position, &cancel).await {
                Ok(()) => error_attempt = 0,
                // A released worker's read answered by the group's destruction: the partition is
                // another worker's now, whose group must not be recreated from here.
                Err(_) if cancel.is_cancelled() => break,
                Err(error) => {
                    error_attempt += 1;
                    self.report_error(&error);
                    if group_gone(&error) {
                        self.recreate_live_group(position.last.as_deref()).await;
                    }
                    // Known or not, the position is where the group is set back to; unknown,
                    // it is read from the group first.
                    position.rewind = position.last.is_some();
                    // A read the error cut short on our side may still be blocked in Redis, and
                    // would take entries after a set-back sent sooner: wait it out.
                    let pause = backoff(ERROR_BACKOFF_BASE, ERROR_BACKOFF_MAX, error_attempt)
                        .max(self.settings.block + READ_SETTLE);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = cancel.cancelled() => {}
                    }
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.reader.quit()).await;
    }

    async fn live_step(&mut self, position: &mut Position, cancel: &CancellationToken) -> Result<(), Error> {
        match &position.last {
            None => {
                let known = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    known = self.group_position() => known?,
                };
                position.last = Some(known);
                position.rewind = false;
            }
            Some(last) if position.rewind => {
                // On the reader's own connection, so it runs after anything still queued there.
                let set_back = self.reader.xgroup_setid::<Value, _, _, _>(
                    self.keys.stream.as_str(),
                    self.group.as_str(),
                    last.as_str(),
                );
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    set = set_back => set?,
                };
                position.rewind = false;
                ::metrics::counter!(metrics::LIVE_SET_BACKS_TOTAL, &self.labels).increment(1);
                tracing::info!(
                    stream = %self.keys.family,
                    group = %self.group,
                    partition = self.keys.partition,
                    last = %last,
                    "live group set back to the last entry it handled"
                );
            }
            Some(_) => {}
        }
        // Cancellation first: a read sent after a partition was released and assigned again
        // would take entries from the new worker's group.
        let mut entries = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            read = self.read(XID::NewInGroup, Some(self.settings.block)) => read?,
        };
        if entries.is_empty() {
            return Ok(());
        }
        self.fill(&mut entries, cancel).await?;
        let last = entries.last().map(|entry| entry.id.clone());
        let span = self.batch_span(entries.len());
        if self.handle_live(entries, cancel).instrument(span).await {
            position.last = last;
        }
        Ok(())
    }

    /// Creates the group again after it or its stream vanished: where this worker stopped, when
    /// known (entries appended meanwhile are read, not skipped), else at the group's `start`.
    async fn recreate_live_group(&self, last: Option<&str>) {
        match last {
            Some(last) => {
                let _: Result<Value, _> = self
                    .shared
                    .xgroup_create(
                        self.keys.stream.as_str(),
                        self.group.as_str(),
                        XID::Manual(last.to_owned().into()),
                        true,
                    )
                    .await;
            }
            None => self.recreate_group().await,
        }
    }

    /// The group's last delivered entry, from `XINFO GROUPS`.
    async fn group_position(&self) -> Result<String, Error> {
        let groups: Vec<HashMap<String, Value>> = self.shared.xinfo_groups(self.keys.stream.as_str()).await?;
        groups
            .iter()
            .find(|info| info.get("name").map(value_text).as_deref() == Some(self.group.as_str()))
            .and_then(|info| info.get("last-delivered-id").map(value_text))
            .ok_or_else(|| {
                Error::new(ErrorKind::NotFound, format!("NOGROUP no group {} on {}", self.group, self.keys.stream))
            })
    }

    /// Hands a batch to the handler until every entry is finished or skipped. Returns false
    /// only when shutdown came first.
    async fn handle_live(&mut self, entries: Vec<RawEntry>, cancel: &CancellationToken) -> bool {
        let started = std::time::Instant::now();
        let mut failed = 0u64;
        let mut decoded = Vec::with_capacity(entries.len());
        for RawEntry { id, body, .. } in entries {
            match body {
                Body::Decoded { id: entry_id, envelope, .. } => {
                    decoded.push(Entry { id: entry_id, partition: self.keys.partition, delivery_count: 1, envelope });
                }
                Body::Undecodable { error, .. } => {
                    failed += 1;
                    tracing::error!(stream = %self.keys.family, group = %self.group, id = %id, error = %error, "entry cannot be decoded; the live group skips it");
                }
                // Only a pending list's entries can be deleted under it; a live group has none.
                Body::Deleted => {}
            }
        }
        let mut batch = Batch {
            stream: self.keys.family.clone(),
            group: self.group.clone(),
            partition: self.keys.partition,
            entries: decoded,
        };
        let (mut done, mut calls, mut unavailable_attempt) = (0u64, 0u32, 0u32);
        while !batch.entries.is_empty() {
            let outcome = self.call_handler(&batch).await;
            let reason = match outcome {
                Ok(Ok(outcomes)) => {
                    let mut reason = String::new();
                    let mut again = Vec::new();
                    for entry in std::mem::take(&mut batch.entries) {
                        match outcomes.of(&entry.id) {
                            Outcome::Done => done += 1,
                            Outcome::Retry(why) => {
                                reason.clone_from(why);
                                again.push(entry);
                            }
                            Outcome::Reject(why) => {
                                failed += 1;
                                tracing::error!(stream = %self.keys.family, group = %self.group, id = %entry.id, error = %why, "entry rejected; the live group skips it");
                            }
                        }
                    }
                    batch.entries = again;
                    if batch.entries.is_empty() {
                        break;
                    }
                    reason
                }
                Ok(Err(error)) if error.is::<Unavailable>() => {
                    unavailable_attempt += 1;
                    ::metrics::counter!(metrics::HANDLER_UNAVAILABLE_TOTAL, &self.labels).increment(1);
                    tracing::warn!(stream = %self.keys.family, group = %self.group, partition = self.keys.partition, error = %error, attempt = unavailable_attempt, "dependency unavailable, keeping the batch");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(RETRY_BACKOFF_BASE, UNAVAILABLE_BACKOFF_MAX, unavailable_attempt)) => continue,
                        _ = cancel.cancelled() => return false,
                    }
                }
                Ok(Err(error)) => error.to_string(),
                Err(panic) => panic_reason(panic),
            };
            calls += 1;
            if calls >= self.settings.max_deliveries {
                failed += batch.entries.len() as u64;
                tracing::error!(stream = %self.keys.family, group = %self.group, partition = self.keys.partition, entries = batch.entries.len(), calls, error = %reason, "entries not finished; the live group skips them");
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(RETRY_BACKOFF_BASE, RETRY_BACKOFF_MAX, calls)) => {}
                _ = cancel.cancelled() => return false,
            }
        }
        let span = tracing::Span::current();
        span.record("done", done);
        span.record("retried", u64::from(calls));
        span.record("dead_lettered", 0u64);
        ::metrics::counter!(metrics::ENTRIES_PROCESSED_TOTAL, &self.labels).increment(done);
        if failed > 0 {
            // Skipped for good: no pending list or dead letter keeps them for this group.
            ::metrics::counter!(metrics::ENTRIES_FAILED_TOTAL, &self.labels).increment(failed);
            ::metrics::counter!(metrics::ENTRIES_LOST_TOTAL, &self.labels).increment(failed);
        }
        ::metrics::histogram!(metrics::BATCH_DURATION_SECONDS, &self.labels).record(started.elapsed().as_secs_f64());
        true
    }
}
