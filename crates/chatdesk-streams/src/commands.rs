//! What agents do that every front door (REST, WebSocket) does the same way.

use chatdesk_core::events::{Actor, Direction, Event, MessageCreated};
use chatdesk_core::{EntryId, EventId, KeyScheme, TenantId};
use fred::prelude::*;
use uuid::Uuid;

use crate::entry::NewEntry;
use crate::producer::{ProduceError, Producer};

/// How long a `client_msg_id` is remembered: a retry within this window is answered with the
/// first attempt's event instead of sending twice.
pub const CLIENT_MSG_ID_TTL_SECONDS: i64 = 86_400;

/// Where a reply goes (the caller has checked the conversation belongs to the tenant).
#[derive(Debug, Clone, Copy)]
pub struct ReplyTarget {
    pub tenant: Uuid,
    pub conversation: Uuid,
    pub inbox: Uuid,
    pub contact: Uuid,
}

/// The reply's event id and its events-stream offset; the offset is `None` only when a repeated
/// `client_msg_id` arrives before its first attempt finished appending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub event_id: Uuid,
    pub offset: Option<EntryId>,
}

/// Appends an outbound message to the events stream and its delivery request to the send
/// stream. A repeated `client_msg_id` (per tenant, for 24 hours) is answered with the first
/// attempt's event and not sent again.
pub async fn append_reply(
    producer: &Producer,
    redis: &Client,
    keys: &KeyScheme,
    target: ReplyTarget,
    sender: Actor,
    text: &str,
    client_msg_id: Option<&str>,
) -> Result<Accepted, ProduceError> {
    let event_id = EventId::new();
    let redis_error = |key: &str| {
        let key = key.to_owned();
        move |source| ProduceError::Redis { key, source }
    };
    let idempotency_key =
        client_msg_id.map(|client| format!("{}:client-msg:{}:{client}", keys.prefix(), target.tenant));
    if let Some(key) = &idempotency_key {
        let claimed: Option<String> = redis
            .set(
                key,
                event_id.to_string(),
                Some(Expiration::EX(CLIENT_MSG_ID_TTL_SECONDS)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(redis_error(key))?;
        if claimed.is_none() {
            let first: Option<String> = redis.get(key).await.map_err(redis_error(key))?;
            let mut parts = first.as_deref().unwrap_or_default().splitn(2, ' ');
            let first_event = parts.next().and_then(|id| id.parse().ok()).unwrap_or(event_id.0);
            let offset = parts.next().and_then(|offset| offset.parse().ok());
            return Ok(Accepted { event_id: first_event, offset });
        }
    }
    let event = Event::MessageCreated(MessageCreated {
        conversation_id: target.conversation,
        inbox_id: target.inbox,
        contact_id: target.contact,
        direction: Direction::Outbound,
        sender,
        text: text.to_owned(),
        extra: None,
        provider_message_id: None,
        client_msg_id: client_msg_id.map(str::to_owned),
        sent_at_ms: None,
    });
    let entry = NewEntry::new(event.event_type(), TenantId(target.tenant), &event.to_payload())
        .expect("events serialise")
        .with_conversation(target.conversation)
        .with_event_id(event_id);
    let offset = match producer.append("events", &entry).await {
        Ok(appended) => appended.id,
        Err(error) => {
            if let Some(key) = &idempotency_key {
                let _: Result<i64, _> = redis.del(key).await;
            }
            return Err(error);
        }
    };
    let delivery = serde_json::json!({
        "message_id": event_id.0,
        "conversation_id": target.conversation,
        "inbox_id": target.inbox,
        "contact_id": target.contact,
        "text": text,
    });
    let request = NewEntry::new("send.requested", TenantId(target.tenant), &delivery)
        .expect("JSON values serialise")
        .with_conversation(target.conversation);
    producer.append("send", &request).await?;
    if let Some(key) = &idempotency_key {
        let _: Result<(), _> = redis
            .set(
                key,
                format!("{event_id} {offset}"),
                Some(Expiration::EX(CLIENT_MSG_ID_TTL_SECONDS)),
                Some(SetOptions::XX),
                false,
            )
            .await;
    }
    Ok(Accepted { event_id: event_id.0, offset: Some(offset) })
}
