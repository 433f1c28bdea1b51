//! Filling a resuming client's gap. The part older than the stream's first entry comes from
//! PostgreSQL's `events` table under the same offsets (trimming never passes what the writer has
//! not stored); so does, for one conversation, everything the writer has acknowledged, read
//! through the conversation's index. The rest comes from the stream (entries after the client's
//! offset, read through `chatdesk_streams::range`). An epoch per partition, created with
//! the stream, tells a cursor from a stream that was since lost and recreated: such a cursor
//! cannot be served.

use chatdesk_core::{EntryId, Envelope, EventId, PartitionKeys, StreamSettings, TenantId};
use chatdesk_streams::RedisClient;
use fred::prelude::Error;
use uuid::Uuid;

use crate::hub::Delivery;

pub use chatdesk_streams::range::{bounds, epoch};

/// Entries per XRANGE or SQL page.
pub const PAGE: u64 = 500;

/// The partition's first entry the writer (every durable group) has not acknowledged yet:
/// everything before it is in PostgreSQL. `None` when a durable group has not read the
/// partition, so nothing is known.
pub async fn stored_floor(
    redis: &RedisClient,
    keys: &PartitionKeys,
    stream: &StreamSettings,
) -> Result<Option<EntryId>, Error> {
    chatdesk_streams::retention::durable_floor(redis, &keys.stream, stream).await
}

/// The greatest entry id below `id`: reading after it starts at `id`.
pub fn predecessor(id: EntryId) -> EntryId {
    match id.sequence {
        0 => EntryId::new(id.millis.saturating_sub(1), u64::MAX),
        sequence => EntryId::new(id.millis, sequence - 1),
    }
}

/// Entries of the partition after `after`, one page.
pub async fn stream_page(redis: &RedisClient, keys: &PartitionKeys, after: EntryId) -> Result<Vec<Delivery>, Error> {
    Ok(chatdesk_streams::range::after(redis, keys, after, PAGE).await?.into_iter().map(Delivery::stored).collect())
}

/// Stored events after `after` and before `before` (the stream's first entry), one page.
pub async fn stored_page(
    pool: &chatdesk_store::Pool,
    tenant: Uuid,
    conversation: Option<Uuid>,
    after: EntryId,
    before: Option<EntryId>,
) -> Result<Vec<Delivery>, chatdesk_store::StoreError> {
    let offset = |id: EntryId| (id.millis as i64, id.sequence as i64);
    let rows = chatdesk_store::conversations::events_between(
        pool,
        tenant,
        conversation,
        offset(after),
        before.map(offset),
        PAGE as i64,
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let envelope = Envelope {
                record_type: row.event_type,
                tenant: TenantId(tenant),
                conversation: row.conversation_id,
                event_id: EventId(row.event_id),
                time_ms: row.occurred_at_ms as u64,
                payload: row.payload.to_string(),
            };
            Delivery::new(Some(EntryId::new(row.offset_ms as u64, row.offset_seq as u64)), envelope)
        })
        .collect())
}
