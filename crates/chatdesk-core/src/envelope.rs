//! The stream entry contract, in one place. Every entry of every stream (and every ephemeral
//! signal on pub/sub) is an [`Envelope`]: a few flat routing fields readable without parsing
//! JSON (so a consumer, or an operator with `redis-cli`, can filter by type, tenant or
//! conversation), plus one JSON `payload`.
//!
//! - Writing: an envelope is only made from a typed [`Record`] ([`Envelope::of`]): an
//!   [`Event`], a [`SendRequest`], a [`DeadLetter`] is written with [`DeadLetter::encode`].
//!   Type, conversation and payload therefore always agree.
//! - Reading: [`Envelope::decode`] is the one decoder of entry fields, used by the consumer
//!   runtime, the gateway's replay, ephemeral signals and every dead-letter reader;
//!   [`Envelope::record`] turns the payload back into its typed value and checks the type.
//!
//! ```text
//! type          message.created | send.requested | typing | …
//! tenant        tenant id (UUID)
//! conversation  conversation id (UUID), when the record belongs to one
//! event_id      UUIDv7, assigned once: the idempotency key of every effect downstream
//! time          milliseconds since the Unix epoch
//! payload       the record as JSON
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{Event, EventDecodeError};
use crate::ids::{EntryId, EventId, TenantId};

pub const FIELD_TYPE: &str = "type";
pub const FIELD_TENANT: &str = "tenant";
pub const FIELD_CONVERSATION: &str = "conversation";
pub const FIELD_EVENT_ID: &str = "event_id";
pub const FIELD_TIME: &str = "time";
pub const FIELD_PAYLOAD: &str = "payload";
/// Every field an envelope carries; [`Envelope::decode`] ignores others.
pub const FIELDS: [&str; 6] = [FIELD_TYPE, FIELD_TENANT, FIELD_CONVERSATION, FIELD_EVENT_ID, FIELD_TIME, FIELD_PAYLOAD];

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

/// A typed value that travels as an entry.
pub trait Record: Sized {
    /// The entry's `type` field.
    fn record_type(&self) -> &'static str;
    /// The conversation the record belongs to, if any (the entry's `conversation` field).
    fn conversation(&self) -> Option<Uuid>;
    /// The payload, as JSON.
    fn to_payload(&self) -> serde_json::Value;
    /// Reads a payload of an entry of type `record_type`.
    fn from_payload(record_type: &str, payload: &str) -> Result<Self, PayloadError>;
}

/// Why a payload is not the record it should be.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("entry type {found:?} is not {expected}")]
    WrongType { expected: &'static str, found: String },
    #[error("entry type {entry:?} does not match its payload's type {payload:?}")]
    TypeMismatch { entry: String, payload: &'static str },
    #[error(transparent)]
    Event(#[from] EventDecodeError),
    #[error("invalid payload: {0}")]
    Json(#[from] serde_json::Error),
}

/// One entry's routing fields and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub record_type: String,
    pub tenant: TenantId,
    pub conversation: Option<Uuid>,
    pub event_id: EventId,
    /// Milliseconds since the Unix epoch when the record was made.
    pub time_ms: u64,
    /// JSON text of the record.
    pub payload: String,
}

/// Why entry fields cannot be decoded; such an entry is dead-lettered at once, since no retry
/// can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("entry has no `{0}` field")]
    Missing(&'static str),
    #[error("field `{field}` is invalid: {value:?}")]
    Invalid { field: &'static str, value: String },
}

impl Envelope {
    /// The one constructor: `record` for `tenant`, with a fresh UUIDv7 event id, stamped now.
    ///
    /// Every string of the payload loses its U+0000 characters here (see [`without_nul`]): this
    /// is the one door every entry passes, so no entry can carry what PostgreSQL cannot store.
    pub fn of<R: Record>(tenant: TenantId, record: &R) -> Self {
        let (mut envelope, payload) = Self::unfinished(tenant, record);
        envelope.payload = payload.to_string();
        envelope
    }

    /// [`Envelope::of`] for an appender that finishes the payload itself (the ingest script adds
    /// the ids only it can know): the envelope with an empty payload, and the payload as a JSON
    /// value, its strings already without U+0000. The envelope is not an entry until its payload
    /// is set: appended as it is, every consumer would dead-letter it.
    pub fn unfinished<R: Record>(tenant: TenantId, record: &R) -> (Self, serde_json::Value) {
        let mut payload = record.to_payload();
        without_nul(&mut payload);
        let envelope = Self {
            record_type: record.record_type().to_owned(),
            tenant,
            conversation: record.conversation(),
            event_id: EventId::new(),
            time_ms: now_ms(),
            payload: String::new(),
        };
        (envelope, payload)
    }

    /// The same record under a given event id (an id decided earlier, or derived so that
    /// recording the same fact twice stores it once).
    pub fn with_event_id(mut self, event_id: EventId) -> Self {
        self.event_id = event_id;
        self
    }

    /// The entry's fields, in the order they are written.
    pub fn encode(&self) -> Vec<(&'static str, String)> {
        let mut fields = Vec::with_capacity(6);
        fields.push((FIELD_TYPE, self.record_type.clone()));
        fields.push((FIELD_TENANT, self.tenant.to_string()));
        fields.push((FIELD_EVENT_ID, self.event_id.to_string()));
        fields.push((FIELD_TIME, self.time_ms.to_string()));
        if let Some(conversation) = self.conversation {
            fields.push((FIELD_CONVERSATION, conversation.to_string()));
        }
        fields.push((FIELD_PAYLOAD, self.payload.clone()));
        fields
    }

    /// The entry's fields as one JSON object (how ephemeral signals travel on pub/sub).
    pub fn encode_json(&self) -> String {
        let object: serde_json::Map<String, serde_json::Value> = self
            .encode()
            .into_iter()
            .map(|(field, value)| (field.to_owned(), serde_json::Value::String(value)))
            .collect();
        serde_json::Value::Object(object).to_string()
    }

    /// The one decoder of entry fields. Unknown fields are ignored.
    pub fn decode<K: AsRef<str>, V: AsRef<str>>(fields: impl IntoIterator<Item = (K, V)>) -> Result<Self, DecodeError> {
        let (mut record_type, mut tenant, mut conversation, mut event_id, mut time, mut payload) =
            (None, None, None, None, None, None);
        for (field, value) in fields {
            let value = value.as_ref();
            match field.as_ref() {
                FIELD_TYPE => record_type = Some(value.to_owned()),
                FIELD_TENANT => tenant = Some(value.parse().map_err(|_| invalid(FIELD_TENANT, value))?),
                FIELD_CONVERSATION => {
                    conversation = Some(Uuid::parse_str(value).map_err(|_| invalid(FIELD_CONVERSATION, value))?)
                }
                FIELD_EVENT_ID => event_id = Some(value.parse().map_err(|_| invalid(FIELD_EVENT_ID, value))?),
                FIELD_TIME => time = Some(value.parse().map_err(|_| invalid(FIELD_TIME, value))?),
                FIELD_PAYLOAD => payload = Some(value.to_owned()),
                _ => {}
            }
        }
        Ok(Self {
            record_type: record_type.ok_or(DecodeError::Missing(FIELD_TYPE))?,
            tenant: tenant.ok_or(DecodeError::Missing(FIELD_TENANT))?,
            conversation,
            event_id: event_id.ok_or(DecodeError::Missing(FIELD_EVENT_ID))?,
            time_ms: time.ok_or(DecodeError::Missing(FIELD_TIME))?,
            payload: payload.ok_or(DecodeError::Missing(FIELD_PAYLOAD))?,
        })
    }

    /// Decodes [`Envelope::encode_json`]'s text.
    pub fn decode_json(text: &str) -> Result<Self, DecodeError> {
        let object: std::collections::HashMap<String, String> =
            serde_json::from_str(text).map_err(|_| invalid("entry", text))?;
        Self::decode(object)
    }

    /// The payload as the record it must be.
    pub fn record<R: Record>(&self) -> Result<R, PayloadError> {
        R::from_payload(&self.record_type, &self.payload)
    }

    /// The payload as an [`Event`] (whose type must be the entry's).
    pub fn event(&self) -> Result<Event, PayloadError> {
        self.record()
    }
}

/// Removes U+0000 from every string and object key of `value`. PostgreSQL stores neither a NUL
/// in `text` nor `\u0000` in `jsonb`: an event carrying one would be acknowledged to its sender
/// and then refused by the writer, and a contact refused that way would take every later
/// message of its conversation with it. No channel gives NUL a meaning worth keeping.
pub fn without_nul(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => {
            if text.contains('\0') {
                text.retain(|character| character != '\0');
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_nul),
        serde_json::Value::Object(members) => {
            if members.keys().any(|key| key.contains('\0')) {
                let cleaned =
                    std::mem::take(members).into_iter().map(|(key, member)| (key.replace('\0', ""), member)).collect();
                *members = cleaned;
            }
            members.values_mut().for_each(without_nul);
        }
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}

/// `text` without U+0000 (see [`without_nul`]), for strings that become identities (an external
/// sender id, a provider's message id) before they become payload.
pub fn text_without_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') { std::borrow::Cow::Owned(text.replace('\0', "")) } else { std::borrow::Cow::Borrowed(text) }
}

fn invalid(field: &'static str, value: &str) -> DecodeError {
    DecodeError::Invalid { field, value: value.chars().take(200).collect() }
}

/// An entry as a consumer receives it: where it is, how often it was delivered, what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub partition: u16,
    /// How many times the group has delivered this entry, this delivery included.
    pub delivery_count: u64,
    pub envelope: Envelope,
}

impl Record for Event {
    fn record_type(&self) -> &'static str {
        self.event_type()
    }

    fn conversation(&self) -> Option<Uuid> {
        self.conversation_id()
    }

    fn to_payload(&self) -> serde_json::Value {
        Event::to_payload(self)
    }

    fn from_payload(record_type: &str, payload: &str) -> Result<Self, PayloadError> {
        let event = Event::from_payload(payload)?;
        if event.event_type() != record_type {
            return Err(PayloadError::TypeMismatch { entry: record_type.to_owned(), payload: event.event_type() });
        }
        Ok(event)
    }
}

/// The payload of a `send.requested` entry of the send stream: one outbound message to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The event id of the message's `message.created`.
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    pub contact_id: Uuid,
    pub text: String,
    /// A WhatsApp template message instead of free text (outside the 24-hour window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
    /// Set when the message is a campaign's: the sender paces it at the campaign's rate, holds it
    /// while the campaign is paused, and drops it when cancelled or past `expires_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<CampaignSend>,
    /// Reply buttons under the text (a bot's yes/no or choice): WhatsApp interactive buttons (up
    /// to 3) or a list, Telegram's inline keyboard, `buttons` in a generic receiver's body.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
}

/// A reply button: the id comes back when the customer presses it; the title is what they see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Button {
    pub id: String,
    pub title: String,
}

/// A campaign message's sending rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSend {
    pub campaign_id: Uuid,
    /// The recipient's address on the channel: the contact may be new, and not stored yet
    /// when the sender meets the message.
    pub to: String,
    /// Messages per second on the campaign's sender (its inbox).
    pub rate_per_sec: u32,
    /// Not sent after this time (milliseconds since the epoch): the recipient is `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// The payload of a `broadcast.recipient` entry of the broadcast stream: one campaign recipient
/// handed over to be turned into an outbound message. Its event id is the message's id, derived
/// from the campaign, the recipient and the attempt, so handing it over twice sends it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRecipient {
    pub campaign_id: Uuid,
    pub position: u32,
    pub message_id: Uuid,
    pub inbox_id: Uuid,
    /// The recipient's address on the channel (phone number, chat id, generic sender id).
    pub address: String,
    /// The text with the recipient's variables filled in.
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
    pub rate_per_sec: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

impl BroadcastRecipient {
    pub const TYPE: &'static str = "broadcast.recipient";
}

impl Record for BroadcastRecipient {
    fn record_type(&self) -> &'static str {
        Self::TYPE
    }

    fn conversation(&self) -> Option<Uuid> {
        None
    }

    fn to_payload(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("broadcast recipients serialise")
    }

    fn from_payload(record_type: &str, payload: &str) -> Result<Self, PayloadError> {
        if record_type != Self::TYPE {
            return Err(PayloadError::WrongType { expected: Self::TYPE, found: record_type.to_owned() });
        }
        Ok(serde_json::from_str(payload)?)
    }
}

/// A WhatsApp message template: `name`, `language` (e.g. `en_US`) and the Cloud API's
/// `components` array as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub name: String,
    pub language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<serde_json::Value>,
}

impl SendRequest {
    pub const TYPE: &'static str = "send.requested";
}

impl Record for SendRequest {
    fn record_type(&self) -> &'static str {
        Self::TYPE
    }

    fn conversation(&self) -> Option<Uuid> {
        Some(self.conversation_id)
    }

    fn to_payload(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("send requests serialise")
    }

    fn from_payload(record_type: &str, payload: &str) -> Result<Self, PayloadError> {
        if record_type != Self::TYPE {
            return Err(PayloadError::WrongType { expected: Self::TYPE, found: record_type.to_owned() });
        }
        Ok(serde_json::from_str(payload)?)
    }
}

pub const DEAD_ORIGINAL_ID: &str = "original_id";
pub const DEAD_FAMILY: &str = "family";
pub const DEAD_PARTITION: &str = "partition";
pub const DEAD_GROUP: &str = "group";
pub const DEAD_CONSUMER: &str = "consumer";
pub const DEAD_ERROR: &str = "error";
pub const DEAD_DELIVERIES: &str = "delivery_count";
pub const DEAD_TIME: &str = "dead_at";
/// Prefix of the original entry's fields in a dead letter (`original.type`, `original.payload`, …),
/// so they never collide with the dead letter's own.
pub const DEAD_ORIGINAL_PREFIX: &str = "original.";

/// An entry a group gave up on, as written to `dlq.<family>`. One format for every group (the
/// runtime's and the sender's): enough to know what failed, where, why, and to re-drive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The entry's id in its stream (for the sender: the send-stream entry the job came from).
    pub original_id: String,
    pub family: String,
    pub partition: u16,
    pub group: String,
    pub consumer: String,
    pub error: String,
    pub deliveries: u64,
    pub time_ms: u64,
    /// The original entry's fields as they were.
    pub original: Vec<(String, String)>,
}

impl DeadLetter {
    /// The dead letter's stream fields.
    pub fn encode(&self) -> Vec<(String, String)> {
        let mut fields = vec![
            (DEAD_ORIGINAL_ID.to_owned(), self.original_id.clone()),
            (DEAD_FAMILY.to_owned(), self.family.clone()),
            (DEAD_PARTITION.to_owned(), self.partition.to_string()),
            (DEAD_GROUP.to_owned(), self.group.clone()),
            (DEAD_CONSUMER.to_owned(), self.consumer.clone()),
            (DEAD_ERROR.to_owned(), self.error.clone()),
            (DEAD_DELIVERIES.to_owned(), self.deliveries.to_string()),
            (DEAD_TIME.to_owned(), self.time_ms.to_string()),
        ];
        fields.extend(
            self.original.iter().map(|(field, value)| (format!("{DEAD_ORIGINAL_PREFIX}{field}"), value.clone())),
        );
        fields
    }

    /// Reads a dead letter's fields.
    pub fn decode<K: AsRef<str>, V: AsRef<str>>(fields: impl IntoIterator<Item = (K, V)>) -> Result<Self, DecodeError> {
        let mut letter = DeadLetter {
            original_id: String::new(),
            family: String::new(),
            partition: 0,
            group: String::new(),
            consumer: String::new(),
            error: String::new(),
            deliveries: 0,
            time_ms: 0,
            original: Vec::new(),
        };
        let mut seen_id = false;
        for (field, value) in fields {
            let (field, value) = (field.as_ref(), value.as_ref());
            match field {
                DEAD_ORIGINAL_ID => {
                    letter.original_id = value.to_owned();
                    seen_id = true;
                }
                DEAD_FAMILY => letter.family = value.to_owned(),
                DEAD_PARTITION => letter.partition = value.parse().map_err(|_| invalid(DEAD_PARTITION, value))?,
                DEAD_GROUP => letter.group = value.to_owned(),
                DEAD_CONSUMER => letter.consumer = value.to_owned(),
                DEAD_ERROR => letter.error = value.to_owned(),
                DEAD_DELIVERIES => letter.deliveries = value.parse().map_err(|_| invalid(DEAD_DELIVERIES, value))?,
                DEAD_TIME => letter.time_ms = value.parse().map_err(|_| invalid(DEAD_TIME, value))?,
                other => {
                    if let Some(original) = other.strip_prefix(DEAD_ORIGINAL_PREFIX) {
                        letter.original.push((original.to_owned(), value.to_owned()));
                    }
                }
            }
        }
        if !seen_id {
            return Err(DecodeError::Missing(DEAD_ORIGINAL_ID));
        }
        Ok(letter)
    }

    /// The original entry, when its fields still decode.
    pub fn original_envelope(&self) -> Result<Envelope, DecodeError> {
        Envelope::decode(self.original.iter().map(|(field, value)| (field.as_str(), value.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Actor, SenderKind, Typing};

    fn typing() -> Event {
        Event::Typing(Typing {
            conversation_id: Uuid::from_u128(7),
            who: Actor { kind: SenderKind::Agent, id: None },
            typing: true,
        })
    }

    #[test]
    fn fields_round_trip_through_the_one_codec() {
        let tenant = TenantId(Uuid::now_v7());
        let envelope = Envelope::of(tenant, &typing());
        assert_eq!(envelope.record_type, "typing");
        assert_eq!(envelope.conversation, Some(Uuid::from_u128(7)));
        let decoded = Envelope::decode(envelope.encode()).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(decoded.event().unwrap(), typing());
        assert_eq!(Envelope::decode_json(&envelope.encode_json()).unwrap(), envelope);
    }

    #[test]
    fn no_entry_carries_a_nul() {
        let event = Event::ContactCreated(crate::events::ContactCreated {
            contact_id: Uuid::from_u128(1),
            inbox_id: Uuid::from_u128(2),
            external_id: "cust\0-1".into(),
            name: Some("A\0na".into()),
            email: None,
        });
        let envelope = Envelope::of(TenantId(Uuid::from_u128(3)), &event);
        assert!(!envelope.payload.contains("\\u0000"), "{}", envelope.payload);
        let Event::ContactCreated(stored) = envelope.event().unwrap() else { panic!("a contact") };
        assert_eq!((stored.external_id.as_str(), stored.name.as_deref()), ("cust-1", Some("Ana")));

        let mut nested = serde_json::json!({"a\0": ["x\0y", {"k": "\0"}], "n": 1});
        without_nul(&mut nested);
        assert_eq!(nested, serde_json::json!({"a": ["xy", {"k": ""}], "n": 1}));
        // A backslash followed by `u0000` is text, not a NUL, and stays.
        let mut literal = serde_json::json!("\\u0000");
        without_nul(&mut literal);
        assert_eq!(literal, serde_json::json!("\\u0000"));
    }

    #[test]
    fn missing_or_bad_fields_are_named() {
        let none: Vec<(String, String)> = Vec::new();
        assert_eq!(Envelope::decode(none).unwrap_err(), DecodeError::Missing("type"));
        let fields = [("type", "x"), ("tenant", "not-a-uuid")];
        assert!(matches!(Envelope::decode(fields), Err(DecodeError::Invalid { field: "tenant", .. })));
    }

    #[test]
    fn a_payload_of_another_type_is_refused() {
        let mut envelope = Envelope::of(TenantId(Uuid::now_v7()), &typing());
        envelope.record_type = "message.created".into();
        assert!(matches!(envelope.event(), Err(PayloadError::TypeMismatch { .. })));
        assert!(matches!(envelope.record::<SendRequest>(), Err(PayloadError::WrongType { .. })));
    }

    #[test]
    fn send_requests_are_strict() {
        let id = Uuid::now_v7();
        let request = SendRequest {
            message_id: id,
            conversation_id: id,
            inbox_id: id,
            contact_id: id,
            text: "hi".into(),
            template: None,
            campaign: None,
            buttons: Vec::new(),
        };
        let envelope = Envelope::of(TenantId(id), &request);
        assert_eq!(envelope.record::<SendRequest>().unwrap(), request);
        let bad = envelope.payload.replace("\"text\"", "\"txt\"");
        assert!(SendRequest::from_payload(SendRequest::TYPE, &bad).is_err());
    }

    #[test]
    fn dead_letters_keep_the_original_entry() {
        let envelope = Envelope::of(TenantId(Uuid::now_v7()), &typing());
        let letter = DeadLetter {
            original_id: "5-1".into(),
            family: "events".into(),
            partition: 3,
            group: "writer".into(),
            consumer: "node-1".into(),
            error: "boom".into(),
            deliveries: 5,
            time_ms: 42,
            original: envelope.encode().into_iter().map(|(field, value)| (field.to_owned(), value)).collect(),
        };
        let decoded = DeadLetter::decode(letter.encode()).unwrap();
        assert_eq!(decoded, letter);
        assert_eq!(decoded.original_envelope().unwrap(), envelope);
    }
}
