//! Reading a partition outside any group: its bounds, a page after an offset, its epoch. The
//! gateway's replay and SRE tooling read here, through the same codec as the runtime.

use std::collections::HashMap;

use chatdesk_core::{Entry, EntryId, PartitionKeys};
use fred::prelude::*;
use uuid::Uuid;

use crate::entry::decode_values;

type Page = Vec<(String, HashMap<String, Value>)>;

/// The oldest and newest entry ids of the partition's stream.
pub async fn bounds(client: &Client, keys: &PartitionKeys) -> Result<(Option<EntryId>, Option<EntryId>), Error> {
    let first: Page = client.xrange(keys.stream.as_str(), "-", "+", Some(1)).await?;
    let last: Page = client.xrevrange(keys.stream.as_str(), "+", "-", Some(1)).await?;
    let id = |page: &Page| page.first().and_then(|(id, _)| id.parse().ok());
    Ok((id(&first), id(&last)))
}

/// Up to `count` entries after `after`, in order. An entry that does not decode is skipped
/// with a warning (the durable groups dead-letter it; a reader outside them cannot).
pub async fn after(client: &Client, keys: &PartitionKeys, after: EntryId, count: u64) -> Result<Vec<Entry>, Error> {
    let page: Page = client.xrange(keys.stream.as_str(), format!("({after}"), "+", Some(count)).await?;
    Ok(page
        .iter()
        .filter_map(|(id, fields)| match decode_values(id, keys.partition, 0, fields) {
            Ok(entry) => Some(entry),
            Err(error) => {
                tracing::warn!(stream = %keys.family, partition = keys.partition, id, error = %error, "skipping an entry that does not decode");
                None
            }
        })
        .collect())
}

/// The partition's epoch: created once, lost with the stream's data, so a cursor from a stream
/// that was lost and recreated can be told apart.
pub async fn epoch(client: &Client, keys: &PartitionKeys) -> Result<String, Error> {
    let key = keys.epoch();
    let candidate = Uuid::now_v7().simple().to_string();
    let _: Option<String> = client.set(&key, candidate.as_str(), None, Some(SetOptions::NX), false).await?;
    let current: Option<String> = client.get(&key).await?;
    Ok(current.unwrap_or(candidate))
}
