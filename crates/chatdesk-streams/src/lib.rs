//! chatdesk's Redis Streams transport: connections, appends, the consumer runtime, dead letters,
//! scripts, retention and status. It knows entries (`chatdesk_core::envelope`), not what they
//! mean. Every stream read goes through it; the only appends made elsewhere are those that must
//! be atomic with a domain's own keys (the conversation directory's ingest script, the sender's
//! queue), and they write entries with the same encoder and dead letters with [`dead_letter`].
//!
//! - [`connection`]: building fred clients, one shared client for ordinary commands and one
//!   dedicated connection per blocking reader.
//! - [`entry`]: entries as Redis returns them, read through the one codec
//!   (`chatdesk_core::envelope`).
//! - [`producer`]: XADD into the partition of a tenant.
//! - [`range`]: reading a partition outside any group (bounds, pages, its epoch).
//! - [`dead_letter`]: the one way a dead letter is written, embedded in every script that
//!   writes one.
//! - [`script`]: Lua scripts called by SHA, reloaded on `NOSCRIPT`.
//! - [`runtime`]: the consumer-group runtime every consumer uses: a [`Handler`] decides what an
//!   entry means, the runtime does the Redis work (groups, reads, acks, claims, retries, dead
//!   letters, shutdown, metrics).
//! - [`retention`]: trimming to `max_age` / `max_len`, never past what a durable group still
//!   needs.
//! - [`status`]: per-group lag and pending, for `/metrics` and `chatdesk streams status`.
//! - [`metrics`]: metric names and descriptions.

pub mod connection;
pub mod dead_letter;
pub mod entry;
pub mod lease;
pub mod metrics;
pub mod producer;
pub mod range;
pub mod retention;
pub mod runtime;
pub mod script;
pub mod status;

pub use chatdesk_core::{Entry, Envelope};
pub use connection::{Connections, RedisConnector, RedisSettings};
pub use producer::{Appended, ProduceError, Producer};
pub use runtime::{
    Batch, Consumer, ConsumerError, ConsumerOptions, Handler, HandlerError, Outcome, Outcomes, Partitions, Unavailable,
};
pub use script::Script;

/// fred's client, re-exported so callers need no direct dependency for the common case.
pub use fred::clients::Client as RedisClient;
