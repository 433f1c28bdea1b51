//! Filling a resuming client's gap. Inside the stream's retention the gap comes from the stream
//! (XRANGE after the client's offset); the part older than the stream's first entry comes from
//! PostgreSQL's `events` table under the same offsets (trimming never passes what the writer has
//! not stored). An epoch per partition, created with the stream, tells a cursor from a stream
//! that was since lost and recreated: such a cursor cannot be served.

use std::collections::HashMap;
use std::sync::Arc;

use chatdesk_core::{EntryId, KeyScheme, PartitionKeys};
use fred::prelude::*;
use uuid::Uuid;

use crate::hub::Delivery;

/// Entries per XRANGE or SQL page.
pub const PAGE: u64 = 500;

/// The epoch of a partition's stream: created once, lost with the stream's data.
pub async fn epoch(redis: &Client, keys: &KeyScheme, partition: &PartitionKeys) -> Result<String, Error> {
    let tag = &partition.stream[partition.stream.find('{').unwrap_or(0)..];
    let key = format!("{}:epoch:{tag}", keys.prefix());
    let candidate = Uuid::now_v7().simple().to_string();
    let _: Option<String> = redis.set(&key, candidate.as_str(), None, Some(SetOptions::NX), false).await?;
    let current: Option<String> = redis.get(&key).await?;
    Ok(current.unwrap_or(candidate))
}

fn entry_id(raw: &str) -> Option<EntryId> {
    raw.parse().ok()
}

/// The oldest and newest entry ids of a stream.
pub async fn bounds(redis: &Client, stream: &str) -> Result<(Option<EntryId>, Option<EntryId>), Error> {
    let first: Vec<(String, HashMap<String, Value>)> = redis.xrange(stream, "-", "+", Some(1)).await?;
    let last: Vec<(String, HashMap<String, Value>)> = redis.xrevrange(stream, "+", "-", Some(1)).await?;
    Ok((first.first().and_then(|(id, _)| entry_id(id)), last.first().and_then(|(id, _)| entry_id(id))))
}

fn text(value: Option<&Value>) -> Option<String> {
    value.and_then(|value| value.as_str_lossy().map(|text| text.into_owned()))
}

/// Decodes one stream entry into a delivery (entries without the routing fields are skipped).
pub fn delivery(partition: u16, id: &str, fields: &HashMap<String, Value>) -> Option<Delivery> {
    Some(Delivery {
        partition,
        offset: entry_id(id)?,
        event_id: Uuid::parse_str(&text(fields.get("event_id"))?).ok()?,
        tenant: Uuid::parse_str(&text(fields.get("tenant"))?).ok()?,
        conversation: text(fields.get("conversation")).and_then(|id| Uuid::parse_str(&id).ok()),
        event_type: text(fields.get("type"))?,
        payload: Arc::from(text(fields.get("payload"))?),
        time_ms: text(fields.get("time")).and_then(|time| time.parse().ok()).unwrap_or(0),
        ephemeral: false,
    })
}

/// Entries of `stream` after `after`, one page.
pub async fn stream_page(redis: &Client, stream: &str, partition: u16, after: EntryId) -> Result<Vec<Delivery>, Error> {
    let entries: Vec<(String, HashMap<String, Value>)> =
        redis.xrange(stream, format!("({after}"), "+", Some(PAGE)).await?;
    Ok(entries.iter().filter_map(|(id, fields)| delivery(partition, id, fields)).collect())
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
        .map(|row| Delivery {
            partition: row.partition as u16,
            offset: EntryId::new(row.offset_ms as u64, row.offset_seq as u64),
            event_id: row.event_id,
            tenant,
            conversation: row.conversation_id,
            event_type: row.event_type,
            payload: Arc::from(row.payload.to_string()),
            time_ms: row.occurred_at_ms as u64,
            ephemeral: false,
        })
        .collect())
}
