//! Entries as Redis returns them, read through the one codec of `chatdesk_core::envelope`.

use std::collections::HashMap;

use chatdesk_core::EntryId;
pub use chatdesk_core::envelope::{DecodeError, Entry, Envelope, now_ms};

/// A Redis reply value as text (binary data decoded lossily rather than failing the read).
pub fn value_text(value: &fred::types::Value) -> String {
    value.as_str_lossy().map(|text| text.into_owned()).unwrap_or_default()
}

/// Why an entry as read cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("entry id {0:?} is not a stream id")]
    Id(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Decodes entry `id` of `partition` from its fields as Redis returned them.
pub fn decode<K: AsRef<str>, V: AsRef<str>>(
    id: &str,
    partition: u16,
    delivery_count: u64,
    fields: impl IntoIterator<Item = (K, V)>,
) -> Result<Entry, ReadError> {
    let id: EntryId = id.parse().map_err(|_| ReadError::Id(id.to_owned()))?;
    Ok(Entry { id, partition, delivery_count, envelope: Envelope::decode(fields)? })
}

/// [`decode`] for a reply of XRANGE / XREADGROUP, whose values are Redis values.
pub(crate) fn decode_values(
    id: &str,
    partition: u16,
    delivery_count: u64,
    fields: &HashMap<String, fred::types::Value>,
) -> Result<Entry, ReadError> {
    decode(id, partition, delivery_count, fields.iter().map(|(field, value)| (field.as_str(), value_text(value))))
}
