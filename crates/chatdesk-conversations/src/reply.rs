//! An agent's reply: one validated command, used alike by `POST /v1/conversations/{id}/messages`
//! and the WebSocket's `send`.

use chatdesk_core::config::{EVENTS_STREAM, SEND_STREAM};
use chatdesk_core::envelope::{Button, SendRequest};
use chatdesk_core::events::{Actor, ConversationStatus, Direction, Event, MessageCreated};
use chatdesk_core::{EntryId, Envelope, EventId, KeyScheme, TenantId};
use chatdesk_streams::producer::{ProduceError, Producer};
use fred::prelude::*;
use uuid::Uuid;

use crate::text::{self, TextError};

/// How long a `client_msg_id` is remembered: a retry within this window is answered with the
/// first attempt's event instead of sending twice.
pub const CLIENT_MSG_ID_TTL_SECONDS: i64 = 86_400;

/// What replies need: where to append, where to remember client message ids, where to look
/// conversations up.
#[derive(Clone)]
pub struct Reply {
    pub producer: Producer,
    pub redis: Client,
    pub keys: KeyScheme,
    pub db: chatdesk_store::Pool,
}

/// The reply's event id and its events-stream offset (always set now: a repeated
/// `client_msg_id` finishes what its first attempt left undone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub event_id: Uuid,
    pub offset: Option<EntryId>,
}

/// Why a reply was not appended. Each front door maps these to its own answer (a status code,
/// an error frame).
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("text {0}")]
    Text(TextError),
    #[error("client_msg_id {0}")]
    ClientMsgId(TextError),
    #[error("no such conversation")]
    NotFound,
    #[error("the conversation is blocked; reopen it to reply")]
    Blocked,
    #[error("PostgreSQL is unavailable")]
    Store(#[source] chatdesk_store::StoreError),
    #[error("Redis is unavailable; nothing was sent")]
    Append(#[source] ProduceError),
}

impl Reply {
    pub fn new(producer: Producer, redis: Client, keys: KeyScheme, db: chatdesk_store::Pool) -> Self {
        Self { producer, redis, keys, db }
    }

    /// Validates the reply, checks the conversation (the tenant's, not blocked), appends the
    /// outbound message to the events stream and its delivery request to the send stream. A
    /// repeated `client_msg_id` (per conversation, for 24 hours) is answered with the first
    /// attempt's event and not sent again.
    pub async fn send(
        &self,
        tenant: Uuid,
        conversation: Uuid,
        sender: Actor,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<Accepted, ReplyError> {
        self.send_with(tenant, conversation, sender, text, client_msg_id, Vec::new()).await
    }

    /// [`Self::send`] with reply buttons (a bot's): sent with the message, and kept on it as
    /// `extra.buttons` so agents see what the customer was offered.
    pub async fn send_with(
        &self,
        tenant: Uuid,
        conversation: Uuid,
        sender: Actor,
        text: &str,
        client_msg_id: Option<&str>,
        buttons: Vec<Button>,
    ) -> Result<Accepted, ReplyError> {
        let text = text::message_text(text).map_err(ReplyError::Text)?;
        let client_msg_id = client_msg_id.map(text::client_msg_id).transpose().map_err(ReplyError::ClientMsgId)?;
        let (inbox, contact, status) = chatdesk_store::conversations::reply_target(&self.db, tenant, conversation)
            .await
            .map_err(ReplyError::Store)?
            .ok_or(ReplyError::NotFound)?;
        if status == ConversationStatus::Blocked {
            return Err(ReplyError::Blocked);
        }
        let target = Target { tenant: TenantId(tenant), conversation, inbox, contact };
        self.append(target, sender, &text, client_msg_id, buttons).await.map_err(ReplyError::Append)
    }

    async fn append(
        &self,
        target: Target,
        sender: Actor,
        text: &str,
        client_msg_id: Option<&str>,
        buttons: Vec<Button>,
    ) -> Result<Accepted, ProduceError> {
        let mut event_id = EventId::new();
        let redis_error = |key: &str| {
            let key = key.to_owned();
            move |source| ProduceError::Redis { key, source }
        };
        let idempotency_key =
            client_msg_id.map(|client| self.keys.client_message(&target.tenant, &target.conversation, client));
        // Whether this call claimed the id (and so may give it back if nothing was appended).
        let mut claimed_here = false;
        if let Some(key) = &idempotency_key {
            let claimed: Option<String> = self
                .redis
                .set(
                    key,
                    event_id.to_string(),
                    Some(Expiration::EX(CLIENT_MSG_ID_TTL_SECONDS)),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(redis_error(key))?;
            claimed_here = claimed.is_some();
            if !claimed_here {
                let first: Option<String> = self.redis.get(key).await.map_err(redis_error(key))?;
                let mut parts = first.as_deref().unwrap_or_default().splitn(2, ' ');
                let first_event = parts.next().and_then(|id| id.parse().ok()).unwrap_or(event_id.0);
                // The offset is written once the reply is appended and queued for sending.
                if let Some(offset) = parts.next().and_then(|offset| offset.parse().ok()) {
                    return Ok(Accepted { event_id: first_event, offset: Some(offset) });
                }
                // The first attempt has not finished: it died between its appends, or still runs.
                // Finish it under its event id; each append happens once (`append_once`), so the
                // message is stored, shown and sent once whichever attempt gets there.
                event_id = EventId(first_event);
            }
        }
        let event = Event::MessageCreated(MessageCreated {
            conversation_id: target.conversation,
            inbox_id: target.inbox,
            contact_id: target.contact,
            direction: Direction::Outbound,
            sender,
            text: text.to_owned(),
            extra: (!buttons.is_empty()).then(|| serde_json::json!({ "buttons": buttons })),
            provider_message_id: None,
            client_msg_id: client_msg_id.map(str::to_owned),
            sent_at_ms: None,
        });
        let entry = Envelope::of(target.tenant, &event).with_event_id(event_id);
        let once = format!("reply:{event_id}");
        let window = std::time::Duration::from_secs(CLIENT_MSG_ID_TTL_SECONDS as u64);
        let appended = match &idempotency_key {
            Some(_) => {
                self.producer.append_once(EVENTS_STREAM, &entry, &once, window).await.map(|(appended, _)| appended)
            }
            None => self.producer.append_event(&entry).await,
        };
        let offset = match appended {
            Ok(appended) => appended.id,
            Err(error) => {
                if let Some(key) = idempotency_key.as_ref().filter(|_| claimed_here) {
                    let _: Result<i64, _> = self.redis.del(key).await;
                }
                return Err(error);
            }
        };
        let request = SendRequest {
            message_id: event_id.0,
            conversation_id: target.conversation,
            inbox_id: target.inbox,
            contact_id: target.contact,
            text: text.to_owned(),
            template: None,
            campaign: None,
            buttons,
        };
        // A send request's event id is its message's: one delivery per message.
        let send = Envelope::of(target.tenant, &request).with_event_id(event_id);
        match &idempotency_key {
            Some(_) => {
                self.producer.append_once(SEND_STREAM, &send, &once, window).await?;
            }
            None => {
                self.producer.append_send(&send).await?;
            }
        }
        if let Some(key) = &idempotency_key {
            let _: Result<(), _> = self
                .redis
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
}

/// Where a reply goes, once the conversation is known to be the tenant's.
#[derive(Debug, Clone, Copy)]
struct Target {
    tenant: TenantId,
    conversation: Uuid,
    inbox: Uuid,
    contact: Uuid,
}
