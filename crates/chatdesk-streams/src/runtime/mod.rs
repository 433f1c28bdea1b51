//! The consumer-group runtime: the one way every chatdesk consumer reads a stream.
//!
//! A consumer is this runtime plus a [`Handler`]. The handler says what an entry means; the
//! runtime does all the Redis work:
//!
//! 1. creates the group on every partition (`XGROUP CREATE … MKSTREAM`; an existing group is
//!    fine), starting at the first entry or the newest, as the group's `start` says;
//! 2. runs one task per partition, each with its own connection, reading with `XREADGROUP`
//!    (COUNT = `batch_size`, BLOCK = `block`, raced against shutdown);
//! 3. decodes entries (an entry that cannot be decoded is dead-lettered at once) and calls the
//!    handler with the batch, at most `concurrency` partitions at a time per process; while a
//!    full batch is handled (a backlog), the next batch is read without blocking, so reading and
//!    handling overlap instead of taking turns (order holds: it is handled next, or re-read with
//!    the pending list if this batch asked for a retry or the partition's lease was lost);
//! 4. acknowledges the entries the handler finished, in one XACK, only after the handler
//!    returned, and keeps re-trying that XACK until Redis takes it;
//! 5. re-delivers entries the handler asked to retry after an exponential backoff with jitter,
//!    before reading further (so order within a partition holds), and dead-letters an entry on
//!    its `max_deliveries`-th failed delivery: `XADD dlq.<family>` and `XACK` in one Lua script,
//!    so the entry is never both dead-lettered and pending;
//! 6. every `claim_idle / 2`, claims entries other consumers left unacknowledged for longer
//!    than `claim_idle` (`XAUTOCLAIM`): a crashed consumer's work is taken over;
//! 7. after a Redis error (including a restart of Redis) backs off, reconnects, and first
//!    re-reads its own pending entries, so nothing delivered before the error is forgotten;
//! 8. when the handler reports a dependency [`Unavailable`], keeps the batch and calls the handler
//!    again after a backoff until it succeeds (deliveries are not counted: an outage never
//!    dead-letters anything);
//! 9. on cancellation stops reading, finishes the batch in hand (and one read ahead),
//!    acknowledges them and returns.
//!
//! A live group (`live = true`, every gateway's) skips the pending list altogether: it reads
//! with `NOACK` and acknowledges, claims and dead-letters nothing (steps 3–9 differ: see
//! `partition/live.rs`); after a Redis error it sets its group back to the last entry it handled.
//!
//! Metrics (see [`crate::metrics`]) are emitted per batch; each batch runs in a `batch` span
//! with `stream`, `group`, `partition` and `batch_len`.

mod consumer;
mod partition;

use std::collections::HashMap;
use std::future::Future;

use chatdesk_core::{EntryId, GroupName, StreamName};

pub use consumer::{
    Assignments, Consumer, ConsumerError, ConsumerOptions, Partitions, Start, ensure_durable_groups, ensure_group,
    recreate_group,
};

use chatdesk_core::Entry;

/// Entries of one partition, in stream order.
#[derive(Debug, Clone)]
pub struct Batch {
    pub stream: StreamName,
    pub group: GroupName,
    pub partition: u16,
    pub entries: Vec<Entry>,
}

/// What became of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The effect is durable: acknowledge the entry.
    Done,
    /// A transient failure: deliver the entry again after a backoff; dead-letter it with this
    /// reason once it has been delivered `max_deliveries` times.
    Retry(String),
    /// The entry can never succeed (malformed, refers to something that will never exist):
    /// dead-letter it now with this reason.
    Reject(String),
}

/// The outcome of each entry of a batch; entries not mentioned are [`Outcome::Done`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcomes {
    exceptions: HashMap<EntryId, Outcome>,
}

impl Outcomes {
    /// Every entry of the batch is done.
    pub fn all_done() -> Self {
        Self::default()
    }

    pub fn retry(&mut self, id: EntryId, reason: impl Into<String>) -> &mut Self {
        self.exceptions.insert(id, Outcome::Retry(reason.into()));
        self
    }

    pub fn reject(&mut self, id: EntryId, reason: impl Into<String>) -> &mut Self {
        self.exceptions.insert(id, Outcome::Reject(reason.into()));
        self
    }

    pub fn of(&self, id: &EntryId) -> &Outcome {
        self.exceptions.get(id).unwrap_or(&Outcome::Done)
    }
}

/// An error that fails the whole batch: every entry is retried with this error as the reason.
/// Return [`Unavailable`] (boxed) instead when a dependency is down.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A dependency the handler needs (a database, a provider) is down. The runtime keeps the batch
/// and calls the handler again after a backoff, for as long as it takes, without counting
/// deliveries: an outage must never push healthy entries into the dead-letter stream.
#[derive(Debug, thiserror::Error)]
#[error("dependency unavailable: {0}")]
pub struct Unavailable(pub String);

/// What a consumer does with entries.
///
/// Contract:
/// - **At least once.** An entry can be delivered again: after a crash before the XACK, after
///   a claim from a consumer that was slow rather than dead, after a retry. The handler's effect
///   must therefore be idempotent by [`Entry::event_id`].
/// - **Order per partition.** Entries of one partition arrive in stream order, one batch at a
///   time; a retried entry is delivered again before any later entry of its partition is read.
///   Different partitions are handled concurrently.
/// - **The handler never acknowledges.** It returns [`Outcomes`]; the runtime acknowledges
///   done entries only after `handle` returned, so returning means "the effect is durable".
/// - Returning `Err` (or panicking) retries the whole batch; returning [`Unavailable`] waits for
///   the dependency and tries the same batch again.
pub trait Handler: Send + Sync + 'static {
    /// The group this handler reads as (`writer`, `sender`, `gateway.<node>`, …).
    fn group(&self) -> GroupName;

    /// The `streams.toml` entry holding the group's settings: the group's own name, unless
    /// several groups share one entry (every `gateway.<node>` group uses `gateway`).
    fn settings_key(&self) -> String {
        self.group().to_string()
    }

    fn handle(&self, batch: &Batch) -> impl Future<Output = Result<Outcomes, HandlerError>> + Send;
}
