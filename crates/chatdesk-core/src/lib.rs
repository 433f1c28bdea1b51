//! Domain types shared by every chatdesk crate. Nothing here does I/O or needs a runtime, so the
//! rules they encode (how ids look, which key a partition lives under, what a valid
//! `streams.toml` is) are unit-tested in isolation and reused unchanged by the binary, the
//! consumers and the tests.
//!
//! - [`auth`]: roles, and the signed agent and visitor tokens.
//! - [`autoreply`]: an inbox's auto-reply settings (model, flow, limits), validated.
//! - [`envelope`]: the stream entry contract: the one constructor and the one decoder of
//!   entries, the send request and the dead-letter record.
//! - [`ids`]: stream entry ids (the resume cursor), event ids (UUIDv7), tenant ids.
//! - [`keys`]: the Redis key scheme, hash-tagged per partition, and `partition = hash(tenant) % P`.
//! - [`duration`]: human durations (`"250ms"`, `"5s"`, `"7d"`) used in configuration.
//! - [`config`]: typed `streams.toml`, parsed and validated with errors naming file, key and reason.
//! - [`names`]: validated stream-family and group names.
//! - [`outbound`]: where the sender may call on a tenant's behalf (public addresses, plus what
//!   the operator allows).

pub mod auth;
pub mod autoreply;
pub mod campaign;
pub mod config;
pub mod duration;
pub mod envelope;
pub mod events;
pub mod ids;
pub mod keys;
pub mod names;
pub mod outbound;
pub mod spaces;

pub use config::{ConfigError, GroupSettings, Retention, StartFrom, StreamSettings, StreamsConfig};
pub use envelope::{DeadLetter, Entry, Envelope, Record, SendRequest};
pub use ids::{EntryId, EventId, TenantId};
pub use keys::{KeyScheme, PartitionKeys};
pub use names::{GroupName, StreamName};
