//! chatdesk's Redis Streams layer: the only code in the project that reads or writes streams.
//!
//! - [`commands`]: what agents do the same way through every front door (replies).
//! - [`connection`]: building fred clients, one shared client for ordinary commands and one
//!   dedicated connection per blocking reader.
//! - [`entry`]: the entry format: flat routing fields (type, tenant, conversation, event id,
//!   time) readable without parsing JSON, plus one JSON payload.
//! - [`producer`]: XADD into the partition of a tenant.
//! - [`ingest`]: what channels send, appended exactly once and in order (contacts and
//!   conversations created atomically with their first message).
//! - [`runtime`]: the consumer-group runtime every consumer uses: a [`Handler`] decides what an
//!   entry means, the runtime does the Redis work (groups, reads, acks, claims, retries, dead
//!   letters, shutdown, metrics).
//! - [`retention`]: trimming to `max_age` / `max_len`, never past what a durable group still
//!   needs.
//! - [`status`]: per-group lag and pending, for `/metrics` and `chatdesk streams status`.
//! - [`metrics`]: metric names and descriptions.

pub mod commands;
pub mod connection;
pub mod entry;
pub mod ingest;
pub mod metrics;
pub mod producer;
pub mod retention;
pub mod runtime;
pub mod status;

pub use connection::{RedisConnector, RedisSettings};
pub use entry::{Entry, NewEntry};
pub use producer::{Appended, ProduceError, Producer};
pub use runtime::{Batch, Consumer, ConsumerError, Handler, HandlerError, Outcome, Outcomes, Unavailable};

/// fred's client, re-exported so callers need no direct dependency for the common case.
pub use fred::clients::Client as RedisClient;
