//! The entry format. Routing fields are flat strings so a consumer (or an operator with
//! `redis-cli`) can filter by type, tenant or conversation without parsing JSON; the event
//! itself is one JSON `payload` field.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use chatdesk_core::{EntryId, EventId, TenantId};
use uuid::Uuid;

pub const FIELD_TYPE: &str = "type";
pub const FIELD_TENANT: &str = "tenant";
pub const FIELD_CONVERSATION: &str = "conversation";
pub const FIELD_EVENT_ID: &str = "event_id";
pub const FIELD_TIME: &str = "time";
pub const FIELD_PAYLOAD: &str = "payload";

/// An entry to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    pub event_type: String,
    pub tenant: TenantId,
    pub conversation: Option<Uuid>,
    pub event_id: EventId,
    /// Milliseconds since the Unix epoch when the event happened.
    pub time_ms: u64,
    /// JSON text of the event.
    pub payload: String,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

impl NewEntry {
    /// A new event with a fresh UUIDv7 id, stamped now.
    pub fn new(
        event_type: impl Into<String>,
        tenant: TenantId,
        payload: &impl serde::Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            event_type: event_type.into(),
            tenant,
            conversation: None,
            event_id: EventId::new(),
            time_ms: now_ms(),
            payload: serde_json::to_string(payload)?,
        })
    }

    pub fn with_conversation(mut self, conversation: Uuid) -> Self {
        self.conversation = Some(conversation);
        self
    }

    pub fn with_event_id(mut self, event_id: EventId) -> Self {
        self.event_id = event_id;
        self
    }

    pub(crate) fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            (FIELD_TYPE, self.event_type.clone()),
            (FIELD_TENANT, self.tenant.to_string()),
            (FIELD_EVENT_ID, self.event_id.to_string()),
            (FIELD_TIME, self.time_ms.to_string()),
        ];
        if let Some(conversation) = self.conversation {
            fields.push((FIELD_CONVERSATION, conversation.to_string()));
        }
        fields.push((FIELD_PAYLOAD, self.payload.clone()));
        fields
    }
}

/// An entry as a consumer receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: EntryId,
    pub partition: u16,
    /// How many times the group has delivered this entry, this delivery included.
    pub delivery_count: u64,
    pub event_type: String,
    pub tenant: TenantId,
    pub conversation: Option<Uuid>,
    pub event_id: EventId,
    pub time_ms: u64,
    pub payload: String,
}

impl Entry {
    /// Parses the JSON payload.
    pub fn payload_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }
}

/// A Redis reply value as text (binary data decoded lossily rather than failing the read).
pub(crate) fn value_text(value: &fred::types::Value) -> String {
    value.as_str_lossy().map(|text| text.into_owned()).unwrap_or_default()
}

/// Why an entry cannot be decoded; such an entry is dead-lettered at once, since no retry can
/// fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("entry has no `{0}` field")]
    Missing(&'static str),
    #[error("field `{field}` is invalid: {value:?}")]
    Invalid { field: &'static str, value: String },
}

/// Decodes the fields of entry `id` as Redis returned them.
pub fn decode(
    id: EntryId,
    partition: u16,
    delivery_count: u64,
    fields: &HashMap<String, String>,
) -> Result<Entry, DecodeError> {
    let get = |name: &'static str| fields.get(name).ok_or(DecodeError::Missing(name));
    let invalid = |field: &'static str, value: &str| DecodeError::Invalid { field, value: value.to_owned() };
    let tenant = get(FIELD_TENANT)?;
    let event_id = get(FIELD_EVENT_ID)?;
    let time = get(FIELD_TIME)?;
    let conversation = match fields.get(FIELD_CONVERSATION) {
        Some(text) => Some(Uuid::parse_str(text).map_err(|_| invalid(FIELD_CONVERSATION, text))?),
        None => None,
    };
    Ok(Entry {
        id,
        partition,
        delivery_count,
        event_type: get(FIELD_TYPE)?.clone(),
        tenant: tenant.parse().map_err(|_| invalid(FIELD_TENANT, tenant))?,
        conversation,
        event_id: event_id.parse().map_err(|_| invalid(FIELD_EVENT_ID, event_id))?,
        time_ms: time.parse().map_err(|_| invalid(FIELD_TIME, time))?,
        payload: get(FIELD_PAYLOAD)?.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let tenant = TenantId(Uuid::now_v7());
        let conversation = Uuid::now_v7();
        let new = NewEntry::new("message.created", tenant, &serde_json::json!({"text": "hi"}))
            .unwrap()
            .with_conversation(conversation);
        let fields: HashMap<String, String> =
            new.fields().into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
        let entry = decode(EntryId::new(1, 0), 3, 1, &fields).unwrap();
        assert_eq!(entry.event_type, "message.created");
        assert_eq!(entry.tenant, tenant);
        assert_eq!(entry.conversation, Some(conversation));
        assert_eq!(entry.event_id, new.event_id);
        assert_eq!(entry.payload_json::<serde_json::Value>().unwrap()["text"], "hi");
    }

    #[test]
    fn missing_or_bad_fields_are_named() {
        let mut fields: HashMap<String, String> = HashMap::new();
        assert_eq!(decode(EntryId::ZERO, 0, 1, &fields).unwrap_err(), DecodeError::Missing("tenant"));
        fields.insert("tenant".into(), "not-a-uuid".into());
        fields.insert("event_id".into(), Uuid::now_v7().to_string());
        fields.insert("time".into(), "1".into());
        fields.insert("type".into(), "x".into());
        fields.insert("payload".into(), "{}".into());
        assert!(matches!(decode(EntryId::ZERO, 0, 1, &fields), Err(DecodeError::Invalid { field: "tenant", .. })));
    }
}
