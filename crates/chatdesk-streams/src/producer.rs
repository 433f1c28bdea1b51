//! Appending entries. The producer picks the partition from the tenant
//! (`hash(tenant) % partitions`), so a tenant's events are totally ordered in one stream.
//!
//! Entries are appended without MAXLEN: a length cap would delete entries that durable groups
//! have not acknowledged yet. Trimming is done separately, never past those groups.

use std::sync::Arc;
use std::time::Instant;

use chatdesk_core::config::{EVENTS_STREAM, SEND_STREAM};
use chatdesk_core::keys::partition_for_tenant;
use chatdesk_core::{EntryId, Envelope, KeyScheme, StreamsConfig};
use fred::prelude::*;
use fred::types::streams::XID;

use crate::Connections;
use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("stream family {0:?} is not declared in streams.toml")]
    UnknownStream(String),
    #[error("partition {partition} does not exist in stream {stream} ({partitions} partitions)")]
    NoSuchPartition { stream: String, partition: u16, partitions: u16 },
    #[error("XADD to {key} failed")]
    Redis {
        key: String,
        #[source]
        source: Error,
    },
    #[error("XADD to {key} returned an invalid id {id:?}")]
    InvalidId { key: String, id: String },
}

/// Where an entry landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub partition: u16,
    pub id: EntryId,
}

/// XADD unless the dedupe key (KEYS[2], same slot as the stream KEYS[1]) names an earlier entry;
/// remembers the new one for ARGV[1] seconds. ARGV[2..]: the entry's fields. Answers
/// `{1, id}` for a new entry, `{0, id}` for the earlier one.
pub static APPEND_ONCE: std::sync::LazyLock<crate::Script> = std::sync::LazyLock::new(|| {
    crate::Script::new(
        r#"
local existing = redis.call('GET', KEYS[2])
if existing then
  return {0, existing}
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return {1, id}
"#,
    )
});

#[derive(Clone)]
pub struct Producer {
    connections: Connections,
    keys: KeyScheme,
    config: Arc<StreamsConfig>,
}

impl Producer {
    pub fn new(client: Client, keys: KeyScheme, config: Arc<StreamsConfig>) -> Self {
        Self::over(client.into(), keys, config)
    }

    /// A producer whose appends take `connections` in turn: for a path that appends whole
    /// entries at a high rate beside other traffic (see [`Connections`]). Appends not awaited
    /// one after the other may then land in either order; a caller that needs an order awaits
    /// each append before the next.
    pub fn over(connections: Connections, keys: KeyScheme, config: Arc<StreamsConfig>) -> Self {
        Self { connections, keys, config }
    }

    fn partitions(&self, family: &str) -> Result<(chatdesk_core::StreamName, u16), ProduceError> {
        let stream = self.config.stream(family).ok_or_else(|| ProduceError::UnknownStream(family.to_owned()))?;
        Ok((stream.name.clone(), stream.partitions))
    }

    /// Appends a conversation event to its tenant's partition of the events stream.
    pub async fn append_event(&self, entry: &Envelope) -> Result<Appended, ProduceError> {
        self.append(EVENTS_STREAM, entry).await
    }

    /// Appends a delivery request to its tenant's partition of the send stream.
    pub async fn append_send(&self, entry: &Envelope) -> Result<Appended, ProduceError> {
        self.append(SEND_STREAM, entry).await
    }

    /// Appends `entry` to its tenant's partition of `family` and returns the entry id once
    /// Redis acknowledged the XADD.
    pub async fn append(&self, family: &str, entry: &Envelope) -> Result<Appended, ProduceError> {
        let (_, partitions) = self.partitions(family)?;
        self.append_to_partition(family, partition_for_tenant(&entry.tenant, partitions), entry).await
    }

    /// Appends `entry` to its tenant's partition of `family` unless an entry with the same
    /// `dedupe` id was appended there within `window`: one script, so a retried command (a
    /// reply whose first attempt died between its appends) appends each entry once. Returns the
    /// entry (the first one, on a repeat) and whether this call appended it.
    pub async fn append_once(
        &self,
        family: &str,
        entry: &Envelope,
        dedupe: &str,
        window: std::time::Duration,
    ) -> Result<(Appended, bool), ProduceError> {
        let (name, partitions) = self.partitions(family)?;
        let partition = partition_for_tenant(&entry.tenant, partitions);
        let keys = self.keys.partition(&name, partition);
        let mut args = vec![window.as_secs().max(1).to_string()];
        for (field, value) in entry.encode() {
            args.push(field.to_owned());
            args.push(value);
        }
        let started = Instant::now();
        let (fresh, id): (i64, String) = APPEND_ONCE
            .call(self.connections.next(), vec![keys.stream.clone(), keys.scoped("once", dedupe)], args)
            .await
            .map_err(|source| ProduceError::Redis { key: keys.stream.clone(), source })?;
        let labels = [("stream", name.to_string())];
        ::metrics::histogram!(metrics::APPEND_DURATION_SECONDS, &labels).record(started.elapsed().as_secs_f64());
        if fresh == 1 {
            ::metrics::counter!(metrics::ENTRIES_APPENDED_TOTAL, &labels).increment(1);
        }
        let id = id.parse().map_err(|_| ProduceError::InvalidId { key: keys.stream, id })?;
        Ok((Appended { partition, id }, fresh == 1))
    }

    /// Appends to an explicit partition (replays and tooling that must keep an entry where it
    /// was).
    pub async fn append_to_partition(
        &self,
        family: &str,
        partition: u16,
        entry: &Envelope,
    ) -> Result<Appended, ProduceError> {
        let (name, partitions) = self.partitions(family)?;
        if partition >= partitions {
            return Err(ProduceError::NoSuchPartition { stream: family.to_owned(), partition, partitions });
        }
        let key = self.keys.partition(&name, partition).stream;
        let started = Instant::now();
        let id: String = self
            .connections
            .next()
            .xadd(&key, false, None::<()>, XID::Auto, entry.encode())
            .await
            .map_err(|source| ProduceError::Redis { key: key.clone(), source })?;
        let labels = [("stream", name.to_string())];
        ::metrics::histogram!(metrics::APPEND_DURATION_SECONDS, &labels).record(started.elapsed().as_secs_f64());
        ::metrics::counter!(metrics::ENTRIES_APPENDED_TOTAL, &labels).increment(1);
        let id = id.parse().map_err(|_| ProduceError::InvalidId { key, id })?;
        Ok(Appended { partition, id })
    }
}
