//! The event model: everything that happens in a conversation, as it travels through the
//! `events` stream. The stream entry's `type` field is [`Event::event_type`]; its `payload` is the
//! event serialised with [`Event::to_payload`], a JSON object tagged by `type` and carrying a schema
//! version `v`. Readers accept every version they know and refuse the rest by name, so an old
//! consumer meeting a newer event dead-letters it instead of misreading it.
//!
//! Ids: a message's id is the event id of its `message.created` event; statuses refer to it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The payload schema version written by this build.
pub const EVENT_VERSION: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SenderKind {
    Customer,
    Agent,
    Bot,
    System,
    /// A broadcast campaign's message.
    Campaign,
}

/// Delivery status of a message. Ordered: a status never moves backwards, so a late `sent`
/// after `delivered` is ignored; `failed` can replace `queued` or `sent` but not a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Queued,
    Sent,
    Failed,
    Delivered,
    Read,
}

impl MessageStatus {
    /// Position in the one-way order of statuses.
    pub fn rank(self) -> i16 {
        match self {
            MessageStatus::Queued => 0,
            MessageStatus::Sent => 1,
            MessageStatus::Failed => 2,
            MessageStatus::Delivered => 3,
            MessageStatus::Read => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationStatus {
    Open,
    Pending,
    Resolved,
    Blocked,
}

impl ConversationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationStatus::Open => "open",
            ConversationStatus::Pending => "pending",
            ConversationStatus::Resolved => "resolved",
            ConversationStatus::Blocked => "blocked",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "open" => Some(Self::Open),
            "pending" => Some(Self::Pending),
            "resolved" => Some(Self::Resolved),
            "blocked" => Some(Self::Blocked),
            _ => None,
        }
    }
}

/// Who did something: a customer (contact id), an agent (user id), a bot, or the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: SenderKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageCreated {
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    pub contact_id: Uuid,
    pub direction: Direction,
    pub sender: Actor,
    pub text: String,
    /// Attachment metadata and other channel fields kept as they came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
    /// The provider's id of an inbound message (deduplication, replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    /// The sending client's own id of an outbound message (idempotent sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// When the provider says the message was sent, milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageStatusChanged {
    /// The event id of the message's `message.created`.
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub status: MessageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Why it failed, as a stable code when there is one: the provider's error code (WhatsApp's
    /// `131049`), or chatdesk's (`campaign_cancelled`, `expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationCreated {
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    pub contact_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationAssigned {
    pub conversation_id: Uuid,
    /// `None` unassigns.
    pub assignee_id: Option<Uuid>,
    pub by: Actor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationStatusChanged {
    pub conversation_id: Uuid,
    pub status: ConversationStatus,
    pub by: Actor,
}

/// An agent read a conversation up to `offset` (a stream entry id): inbound messages after it
/// stay unread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationRead {
    pub conversation_id: Uuid,
    pub offset: String,
    pub by: Actor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactCreated {
    pub contact_id: Uuid,
    pub inbox_id: Uuid,
    /// The contact's id on the channel (phone number, Telegram chat id, visitor id, …).
    pub external_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// What changed on a contact; an absent field stays as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactUpdated {
    pub contact_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The agent who edited the contact; absent when the channel told us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Actor>,
}

/// Two contacts were the same person: `merged_id`'s conversations now belong to `contact_id`,
/// and `merged_id` is kept only as an alias of it (its channel identity still finds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactMerged {
    pub contact_id: Uuid,
    pub merged_id: Uuid,
    pub by: Actor,
}

/// A private note in a conversation: agents see it, the customer never does. It is not a
/// message: nothing sends it, and no visitor's socket or history carries it. The note's id is the
/// event id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoteCreated {
    pub conversation_id: Uuid,
    pub author: Actor,
    pub text: String,
    /// Users of the tenant the note `@mention`s: they are notified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Uuid>,
}

/// Labels added to and removed from a conversation (label ids of the tenant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationLabels {
    pub conversation_id: Uuid,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Uuid>,
    pub by: Actor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Typing {
    pub conversation_id: Uuid,
    pub who: Actor,
    pub typing: bool,
}

/// Whether a channel address can be written to, as its channel says: a Telegram user who blocks
/// the bot is unreachable (campaigns skip the address) until they start it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactReachability {
    pub inbox_id: Uuid,
    /// The address on the channel (a Telegram chat id).
    pub external_id: String,
    pub reachable: bool,
    pub reason: String,
}

/// Why the bot stepped aside for a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffReason {
    /// An agent replied in the conversation.
    AgentReplied,
    /// The conversation was assigned to an agent.
    Assigned,
    /// The customer asked for a human with a handoff keyword.
    Keyword,
    /// The model called its `handoff` tool.
    Model,
    /// The bot reached its maximum replies in this conversation.
    Cap,
    /// The tenant's daily model budget is spent.
    Budget,
    /// The model endpoint answered with an error (after its one retry).
    Error,
    /// The model did not answer within its timeout.
    Timeout,
}

impl HandoffReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HandoffReason::AgentReplied => "agent_replied",
            HandoffReason::Assigned => "assigned",
            HandoffReason::Keyword => "keyword",
            HandoffReason::Model => "model",
            HandoffReason::Cap => "cap",
            HandoffReason::Budget => "budget",
            HandoffReason::Error => "error",
            HandoffReason::Timeout => "timeout",
        }
    }
}

/// The bot handed a conversation to humans: it stays silent there until the conversation is
/// resolved (and, if the inbox says so, reopened). One per bot session: the event id is derived
/// from the conversation and the session, so a handoff decided twice is stored once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationHandoff {
    pub conversation_id: Uuid,
    pub reason: HandoffReason,
    /// What the model or the rule said, for the agent who takes over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The bot session that ended; a conversation re-enabled after resolve starts the next one.
    pub session: u32,
}

/// An agent came online (first live socket) or went offline (last one closed or lapsed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub user_id: Uuid,
    pub online: bool,
}

/// Every event, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "message.created")]
    MessageCreated(MessageCreated),
    #[serde(rename = "message.status")]
    MessageStatus(MessageStatusChanged),
    #[serde(rename = "conversation.created")]
    ConversationCreated(ConversationCreated),
    #[serde(rename = "conversation.assigned")]
    ConversationAssigned(ConversationAssigned),
    #[serde(rename = "conversation.status_changed")]
    ConversationStatusChanged(ConversationStatusChanged),
    #[serde(rename = "conversation.read")]
    ConversationRead(ConversationRead),
    #[serde(rename = "conversation.handoff")]
    ConversationHandoff(ConversationHandoff),
    #[serde(rename = "conversation.labels")]
    ConversationLabels(ConversationLabels),
    #[serde(rename = "note.created")]
    NoteCreated(NoteCreated),
    #[serde(rename = "contact.created")]
    ContactCreated(ContactCreated),
    #[serde(rename = "contact.updated")]
    ContactUpdated(ContactUpdated),
    #[serde(rename = "contact.merged")]
    ContactMerged(ContactMerged),
    #[serde(rename = "contact.reachability")]
    ContactReachability(ContactReachability),
    /// Ephemeral: fanned out to dashboards, never persisted.
    #[serde(rename = "typing")]
    Typing(Typing),
    /// Ephemeral, tenant-wide: fanned out to `inbox` subscribers, never persisted.
    #[serde(rename = "presence")]
    Presence(Presence),
}

/// Why a payload could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("unsupported event schema version {0} (this build reads up to {EVENT_VERSION})")]
    Version(u64),
    #[error("invalid event payload: {0}")]
    Invalid(#[from] serde_json::Error),
}

impl Event {
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::MessageCreated(_) => "message.created",
            Event::MessageStatus(_) => "message.status",
            Event::ConversationCreated(_) => "conversation.created",
            Event::ConversationAssigned(_) => "conversation.assigned",
            Event::ConversationStatusChanged(_) => "conversation.status_changed",
            Event::ConversationRead(_) => "conversation.read",
            Event::ConversationHandoff(_) => "conversation.handoff",
            Event::ConversationLabels(_) => "conversation.labels",
            Event::NoteCreated(_) => "note.created",
            Event::ContactCreated(_) => "contact.created",
            Event::ContactUpdated(_) => "contact.updated",
            Event::ContactMerged(_) => "contact.merged",
            Event::ContactReachability(_) => "contact.reachability",
            Event::Typing(_) => "typing",
            Event::Presence(_) => "presence",
        }
    }

    /// The conversation the event belongs to, if any.
    pub fn conversation_id(&self) -> Option<Uuid> {
        match self {
            Event::MessageCreated(event) => Some(event.conversation_id),
            Event::MessageStatus(event) => Some(event.conversation_id),
            Event::ConversationCreated(event) => Some(event.conversation_id),
            Event::ConversationAssigned(event) => Some(event.conversation_id),
            Event::ConversationStatusChanged(event) => Some(event.conversation_id),
            Event::ConversationRead(event) => Some(event.conversation_id),
            Event::ConversationHandoff(event) => Some(event.conversation_id),
            Event::ConversationLabels(event) => Some(event.conversation_id),
            Event::NoteCreated(event) => Some(event.conversation_id),
            Event::Typing(event) => Some(event.conversation_id),
            Event::ContactCreated(_)
            | Event::ContactUpdated(_)
            | Event::ContactMerged(_)
            | Event::ContactReachability(_)
            | Event::Presence(_) => None,
        }
    }

    /// Durable events are stored; ephemeral ones (typing, presence) only fan out.
    pub fn is_durable(&self) -> bool {
        !matches!(self, Event::Typing(_) | Event::Presence(_))
    }

    /// The JSON payload: the tagged event plus `"v": EVENT_VERSION`.
    pub fn to_payload(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("events always serialise");
        if let Some(object) = value.as_object_mut() {
            object.insert("v".to_owned(), serde_json::Value::from(EVENT_VERSION));
        }
        value
    }

    pub fn from_payload(payload: &str) -> Result<Self, EventDecodeError> {
        let mut value: serde_json::Value = serde_json::from_str(payload)?;
        let version = value.get("v").and_then(serde_json::Value::as_u64).unwrap_or(1);
        if version == 0 || version > u64::from(EVENT_VERSION) {
            return Err(EventDecodeError::Version(version));
        }
        if let Some(object) = value.as_object_mut() {
            object.remove("v");
        }
        Ok(serde_json::from_value(value)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn events_round_trip_with_their_type_and_version() {
        let event = Event::MessageCreated(MessageCreated {
            conversation_id: id(1),
            inbox_id: id(2),
            contact_id: id(3),
            direction: Direction::Inbound,
            sender: Actor { kind: SenderKind::Customer, id: Some(id(3)) },
            text: "hello".into(),
            extra: None,
            provider_message_id: Some("wamid.1".into()),
            client_msg_id: None,
            sent_at_ms: None,
        });
        let payload = event.to_payload();
        assert_eq!(payload["type"], "message.created");
        assert_eq!(payload["v"], 1);
        assert_eq!(Event::from_payload(&payload.to_string()).unwrap(), event);
        assert_eq!(event.event_type(), "message.created");
    }

    #[test]
    fn newer_versions_and_unknown_types_are_refused_by_name() {
        let error = Event::from_payload(r#"{"type":"typing","v":9}"#).unwrap_err();
        assert!(error.to_string().contains("version 9"), "{error}");
        let error = Event::from_payload(r#"{"type":"message.teleported","v":1}"#).unwrap_err();
        assert!(error.to_string().contains("message.teleported"), "{error}");
    }

    #[test]
    fn statuses_only_move_forward() {
        use MessageStatus::*;
        assert!(Queued.rank() < Sent.rank());
        assert!(Sent.rank() < Failed.rank());
        assert!(Failed.rank() < Delivered.rank());
        assert!(Delivered.rank() < Read.rank());
    }

    /// Every example in docs/events.md parses and names its own type.
    #[test]
    fn documented_examples_parse() {
        let doc = include_str!("../../../docs/events.md");
        let mut examples = 0;
        for block in doc.split("```json").skip(1) {
            let json = block.split("```").next().unwrap();
            let event = Event::from_payload(json).unwrap_or_else(|error| panic!("{error}: {json}"));
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(value["type"], event.event_type());
            examples += 1;
        }
        assert_eq!(examples, 15, "one example per event type");
    }
}
