//! Ingress: where customers' messages enter. One webhook route per inbox and channel kind,
//! plus the web widget.
//!
//! Every request goes through the same steps, and a rejected request appends nothing:
//! 1. the inbox exists and is of the route's kind (else 404);
//! 2. the per-inbox rate limit (shared by every process, in Redis) has room (else 429 with
//!    `Retry-After`);
//! 3. the body is JSON (415), within the size limit (413), and its signature or secret is valid
//!    (401), checked on the raw bytes before parsing;
//! 4. the body parses into messages (400 with the JSON position, 422 naming the missing field);
//! 5. each message is appended exactly once ([`chatdesk_streams::ingest`]): its contact and open
//!    conversation are created with the first message, and a provider message id seen in the
//!    last 7 days is answered 200 without appending again.
//!
//! The answer is 2xx only after Redis acknowledged every append.

pub mod generic;
pub mod signature;
pub mod telegram;
pub mod whatsapp;
pub mod widget;

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::FromRequest;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatdesk_core::events::{Actor, ContactCreated, ConversationCreated, Direction, Event, MessageCreated, SenderKind};
use chatdesk_core::{EventId, TenantId};
use chatdesk_store::directory::{InboxKind, InboxRecord};
use chatdesk_streams::NewEntry;
use chatdesk_streams::ingest::{Appended, CONTACT_ID_PLACEHOLDER, ConversationRef, Introduction};
use fred::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// How long a provider's message id is remembered: providers retry for up to 7 days.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

pub const REQUESTS_TOTAL: &str = "chatdesk_ingress_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "chatdesk_ingress_request_duration_seconds";
pub const DUPLICATES_TOTAL: &str = "chatdesk_ingress_duplicates_total";

pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(REQUESTS_TOTAL, Unit::Count, "Ingress requests by inbox kind and outcome");
    describe_histogram!(REQUEST_DURATION_SECONDS, Unit::Seconds, "Ingress request latency by inbox kind");
    describe_counter!(DUPLICATES_TOTAL, Unit::Count, "Provider messages delivered again and not appended");
}

/// Ingress settings.
#[derive(Debug, Clone)]
pub struct IngressSettings {
    /// Requests per second one inbox may make (all processes together).
    pub rate_per_inbox: u32,
    /// How long a widget visitor may be away and still continue the same conversation.
    pub widget_standby: Duration,
    /// Where clients open the WebSocket protocol when gateways run apart from the API
    /// (`CHATDESK_PUBLIC_WS_URL`); `None`: `/v1/ws` on the API's own host.
    pub websocket_url: Option<String>,
}

impl Default for IngressSettings {
    fn default() -> Self {
        Self { rate_per_inbox: 200, widget_standby: Duration::from_secs(600), websocket_url: None }
    }
}

/// One message a channel delivered, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The provider's id of the message: the deduplication key.
    pub provider_message_id: String,
    /// The sender's id on the channel.
    pub external_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub text: String,
    /// Channel fields kept as they came (attachments metadata, …).
    pub extra: Option<serde_json::Value>,
    pub sent_at_ms: Option<u64>,
}

/// What a webhook did, for the provider (and for people reading logs of their scripts).
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Received {
    /// Messages appended now.
    pub accepted: usize,
    /// Messages seen before and not appended again.
    pub duplicates: usize,
    /// Delivery statuses appended.
    pub statuses: usize,
}

/// The raw body: the signature is computed over exactly these bytes. Wrong content type: 415;
/// too large: 413.
pub struct RawJsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawJsonBody {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType { message: "expected Content-Type: application/json".into() });
        }
        Bytes::from_request(request, state).await.map(RawJsonBody).map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    message: format!("request body larger than {} bytes", crate::MAX_BODY_BYTES),
                }
            } else {
                ApiError::BadRequest { code: "invalid_body", message: rejection.body_text(), details: None }
            }
        })
    }
}

/// The inbox of a webhook route, or 404 when there is none of that kind.
pub async fn inbox_of_kind(state: &AppState, inbox: Uuid, kind: InboxKind) -> Result<InboxRecord, ApiError> {
    let found = chatdesk_store::directory::inbox_by_id(&state.db, inbox).await.map_err(ApiError::store)?;
    match found {
        Some(record) if record.kind == kind.as_str() => Ok(record),
        _ => Err(ApiError::NotFound { message: format!("no {} inbox {inbox}", kind.as_str()) }),
    }
}

/// A fixed one-second window per inbox, counted in Redis so every process shares it.
pub async fn check_rate(state: &AppState, inbox: Uuid) -> Result<(), ApiError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let key = format!("{}:ingress-rate:{inbox}:{now}", state.keys.prefix());
    let count: u64 = state.redis.incr(&key).await.map_err(|_| ApiError::Unavailable { dependency: "Redis" })?;
    if count == 1 {
        let _: Result<bool, _> = state.redis.expire(&key, 2, None).await;
    }
    if count > u64::from(state.ingress.rate_per_inbox) {
        return Err(ApiError::TooManyRequests {
            message: format!("inbox {inbox} is limited to {} requests per second", state.ingress.rate_per_inbox),
            retry_after_seconds: 1,
        });
    }
    Ok(())
}

/// The events that introduce a sender the first time it writes (appended only if it is new).
pub fn introduction(
    inbox: &InboxRecord,
    external_id: &str,
    name: Option<String>,
    email: Option<String>,
) -> Result<Introduction, ApiError> {
    let tenant = TenantId(inbox.tenant_id);
    let (contact_id, conversation_id) = (Uuid::now_v7(), Uuid::now_v7());
    let internal = |error: serde_json::Error| ApiError::Internal(Box::new(error));
    let contact_created = Event::ContactCreated(ContactCreated {
        contact_id,
        inbox_id: inbox.id,
        external_id: external_id.to_owned(),
        name,
        email,
    });
    let mut conversation_payload = Event::ConversationCreated(ConversationCreated {
        conversation_id,
        inbox_id: inbox.id,
        contact_id: Uuid::nil(),
    })
    .to_payload();
    conversation_payload["contact_id"] = serde_json::Value::from(CONTACT_ID_PLACEHOLDER);
    Ok(Introduction {
        contact_id,
        conversation_id,
        contact_created: NewEntry::new(contact_created.event_type(), tenant, &contact_created.to_payload())
            .map_err(internal)?,
        conversation_created: NewEntry::new("conversation.created", tenant, &conversation_payload)
            .map_err(internal)?
            .with_conversation(conversation_id),
    })
}

/// Finds or creates the sender's contact and open conversation.
pub async fn resolve(
    state: &AppState,
    inbox: &InboxRecord,
    external_id: &str,
    name: Option<String>,
    email: Option<String>,
    standby: Option<Duration>,
) -> Result<ConversationRef, ApiError> {
    let introduction = introduction(inbox, external_id, name, email)?;
    state
        .ingest
        .resolve_conversation(&TenantId(inbox.tenant_id), inbox.id, external_id, &introduction, standby)
        .await
        .map_err(ApiError::append)
}

/// Appends one inbound message exactly once, creating its contact and conversation with it.
/// Returns the conversation, the message's event id and whether it was new.
pub async fn ingest(
    state: &AppState,
    inbox: &InboxRecord,
    message: &Inbound,
    standby: Option<Duration>,
) -> Result<(ConversationRef, EventId, Appended), ApiError> {
    let resolved =
        resolve(state, inbox, &message.external_id, message.name.clone(), message.email.clone(), standby).await?;
    let event = Event::MessageCreated(MessageCreated {
        conversation_id: resolved.conversation_id,
        inbox_id: inbox.id,
        contact_id: resolved.contact_id,
        direction: Direction::Inbound,
        sender: Actor { kind: SenderKind::Customer, id: Some(resolved.contact_id) },
        text: message.text.clone(),
        extra: message.extra.clone(),
        provider_message_id: Some(message.provider_message_id.clone()),
        client_msg_id: None,
        sent_at_ms: message.sent_at_ms,
    });
    let event_id = EventId::new();
    let entry = NewEntry::new(event.event_type(), TenantId(inbox.tenant_id), &event.to_payload())
        .map_err(|error| ApiError::Internal(Box::new(error)))?
        .with_conversation(resolved.conversation_id)
        .with_event_id(event_id);
    let dedupe_id = format!("{}:{}", inbox.id, message.provider_message_id);
    let appended = state.ingest.append_once(&entry, &dedupe_id, DEDUPE_WINDOW).await.map_err(ApiError::append)?;
    Ok((resolved, event_id, appended))
}

/// Ingests every message of one webhook; answers with what was done.
pub async fn ingest_all(state: &AppState, inbox: &InboxRecord, messages: &[Inbound]) -> Result<Received, ApiError> {
    let mut received = Received::default();
    for message in messages {
        match ingest(state, inbox, message, None).await?.2 {
            Appended::New(_) => received.accepted += 1,
            Appended::Duplicate(_) => {
                received.duplicates += 1;
                ::metrics::counter!(DUPLICATES_TOTAL, "kind" => inbox.kind.clone()).increment(1);
            }
        }
    }
    Ok(received)
}

/// The steps every webhook shares: the inbox of this kind (404), its rate limit (429), the
/// caller's proof (401), then `receive` (parse and append); outcome and latency are recorded.
pub async fn webhook<Authenticate, Receive, Fut>(
    state: &AppState,
    kind: InboxKind,
    inbox_id: Uuid,
    authenticate: Authenticate,
    receive: Receive,
) -> Response
where
    Authenticate: FnOnce(&InboxRecord) -> Result<(), ApiError>,
    Receive: FnOnce(InboxRecord) -> Fut,
    Fut: std::future::Future<Output = Result<Received, ApiError>>,
{
    let started = Instant::now();
    let result = async {
        let inbox = inbox_of_kind(state, inbox_id, kind).await?;
        check_rate(state, inbox.id).await?;
        authenticate(&inbox)?;
        ok(receive(inbox).await?)
    }
    .await;
    observe(kind, started, result)
}

/// Records the request's outcome and latency by inbox kind.
pub fn observe(kind: InboxKind, started: Instant, result: Result<Response, ApiError>) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    let outcome = match response.status().as_u16() {
        200..=299 => "accepted",
        401 | 403 => "unauthorized",
        404 => "unknown_inbox",
        413 | 415 | 400 | 422 => "invalid",
        429 => "rate_limited",
        _ => "error",
    };
    ::metrics::counter!(REQUESTS_TOTAL, "kind" => kind.as_str(), "outcome" => outcome).increment(1);
    ::metrics::histogram!(REQUEST_DURATION_SECONDS, "kind" => kind.as_str()).record(started.elapsed().as_secs_f64());
    response
}

pub fn ok(received: Received) -> Result<Response, ApiError> {
    Ok((StatusCode::OK, Json(received)).into_response())
}

/// A header's value as text, if present and readable.
pub fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value: &HeaderValue| value.to_str().ok())
}
