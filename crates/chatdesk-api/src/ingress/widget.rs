//! The web widget channel. A visitor gives an e-mail address (and a name) and gets a visitor
//! token for one conversation, and a **visitor key**: a secret the widget keeps and presents
//! to come back. Coming back with its key within the standby window (default 10 minutes)
//! continues the same conversation, later opens a new one. Without the key a visitor is a new
//! one, whatever e-mail it gives: an e-mail is contact data, not proof of identity, so knowing a
//! customer's address shows nothing of their conversations. A session only reserves the
//! conversation's id: the visitor's first message makes it (agents see it, the writer stores
//! it), so sessions opened in bulk leave nothing but keys that expire. The widget then writes over REST
//! here (and reads over the WebSocket protocol with the same token). These routes answer any
//! origin (CORS), since the widget runs on the customer's own site; sessions are limited per
//! client address.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatdesk_conversations::Ingested;
use chatdesk_conversations::directory::{InboundMessage, Introduction};
use chatdesk_store::directory::InboxKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{inbox_of_kind, ingest, observe};
use chatdesk_conversations::text;

use crate::AppState;
use crate::auth::{TOKEN_TTL, issue_visitor_token, verify_visitor_token};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::openapi::ErrorBody;
use chatdesk_core::auth::{VisitorGrant, issue_visitor_key, verify_visitor_key};
use fred::prelude::*;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// An e-mail address: contact data, not proof of identity.
    #[schema(
        max_length = 320,
        pattern = "^[\\s\\u0085]*[^@\\s\\u0000-\\u001F\\u007F-\\u009F]+@[^@\\s\\u0000-\\u001F\\u007F-\\u009F]*\\.[^@\\s\\u0000-\\u001F\\u007F-\\u009F]*[\\s\\u0085]*$"
    )]
    pub email: String,
    /// At most 200 characters.
    #[schema(max_length = 200)]
    pub name: Option<String>,
    /// The `visitor_key` of an earlier session: continues that visitor's conversation. Without
    /// one (or with one that is not valid for this inbox) the visitor is a new one.
    pub visitor_key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// The visitor token: `Authorization: Bearer <token>` here, and `hello.token` on the WebSocket.
    pub token: String,
    /// The visitor's conversation. A new visitor's is made by its first message; until then it
    /// has no history and agents do not see it.
    pub conversation_id: Uuid,
    pub contact_id: Uuid,
    /// Seconds since the epoch.
    pub expires_at: u64,
    /// The visitor's secret: keep it (the widget stores it in the browser) and send it with the
    /// next session to continue. Valid for a year.
    pub visitor_key: String,
}

/// Sessions one client address may start per minute.
pub const SESSIONS_PER_ADDRESS_PER_MINUTE: u64 = 30;
/// Messages one visitor may write per minute: more than a person types, far less than a script
/// would need to drown the inbox's agents (and its own limit, shared by every visitor).
pub const MESSAGES_PER_VISITOR_PER_MINUTE: u64 = 30;
/// Messages all the visitors of one client address may write per minute.
pub const MESSAGES_PER_ADDRESS_PER_MINUTE: u64 = 120;

/// Counts one more use of `key` in the current minute (Redis, shared by every process) and
/// refuses (429) past `limit`.
async fn limit_per_minute(state: &AppState, key: &str, limit: u64, what: &str) -> Result<(), ApiError> {
    let count: u64 = state.redis.incr(key).await.map_err(|_| ApiError::Unavailable { dependency: "Redis" })?;
    if count == 1 {
        let _: Result<bool, _> = state.redis.expire(key, 120, None).await;
    }
    if count > limit {
        return Err(ApiError::TooManyRequests {
            message: format!("at most {limit} {what} per minute"),
            retry_after_seconds: 60 - (chatdesk_core::envelope::now_ms() / 1000) % 60,
        });
    }
    Ok(())
}

/// Refuses a session when the client address started too many in the current minute.
async fn limit_sessions(state: &AppState, address: std::net::IpAddr) -> Result<(), ApiError> {
    let minute = chatdesk_core::envelope::now_ms() / 60_000;
    let key = state.keys.widget_sessions_of_address(&address, minute);
    limit_per_minute(state, &key, SESSIONS_PER_ADDRESS_PER_MINUTE, "chat sessions from one address").await
}

/// Refuses a message past the visitor's or its address's budget, before it costs the inbox's
/// shared one: one visitor cannot take a web inbox away from the others.
async fn limit_messages(state: &AppState, visitor: Uuid, address: std::net::IpAddr) -> Result<(), ApiError> {
    let minute = chatdesk_core::envelope::now_ms() / 60_000;
    let key = state.keys.widget_messages_of_visitor(&visitor, minute);
    limit_per_minute(state, &key, MESSAGES_PER_VISITOR_PER_MINUTE, "messages from one visitor").await?;
    let key = state.keys.widget_messages_of_address(&address, minute);
    limit_per_minute(state, &key, MESSAGES_PER_ADDRESS_PER_MINUTE, "widget messages from one address").await
}

/// The external id a visitor is known by in its inbox.
fn visitor_identity(visitor: Uuid) -> String {
    format!("visitor:{visitor}")
}

/// Starts (or resumes, with its visitor key, within the standby window) a visitor's
/// conversation. A new conversation is only reserved here; the first message makes it.
#[utoipa::path(
    post,
    path = "/v1/widget/{inbox_id}/sessions",
    tag = "widget",
    params(("inbox_id" = Uuid, Path, description = "A web inbox")),
    request_body = SessionRequest,
    responses(
        (status = 201, description = "A visitor token for the conversation", body = Session),
        (status = 404, description = "No web inbox with this id", body = ErrorBody),
        (status = 422, description = "email is missing or invalid", body = ErrorBody),
        (status = 429, description = "The inbox's rate limit, or too many sessions from this address; see Retry-After", body = ErrorBody),
    )
)]
pub async fn start_session(
    State(state): State<AppState>,
    ApiPath(inbox_id): ApiPath<Uuid>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    ApiJson(request): ApiJson<SessionRequest>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let inbox = inbox_of_kind(&state, inbox_id, InboxKind::Web).await?;
        // Lengths count what was sent, as the document's `maxLength` does; spaces around are
        // dropped.
        if request.email.chars().count() > 320 {
            return Err(ApiError::invalid_field("email", "must be at most 320 characters"));
        }
        if request.name.as_ref().is_some_and(|name| name.chars().count() > 200) {
            return Err(ApiError::invalid_field("name", "must be at most 200 characters"));
        }
        let email = chatdesk_core::spaces::trim(&request.email).to_lowercase();
        if !chatdesk_core::auth::is_email(&email) {
            return Err(ApiError::invalid_field("email", "is not an e-mail address"));
        }
        limit_sessions(&state, peer.ip()).await?;
        let name =
            request.name.map(|name| chatdesk_core::spaces::trim(&name).to_owned()).filter(|name| !name.is_empty());
        let returning =
            request.visitor_key.as_deref().and_then(|key| verify_visitor_key(&state.auth, inbox.id, key).ok());
        let visitor = returning.unwrap_or_else(Uuid::now_v7);
        let sender = Introduction {
            inbox: inbox.id,
            external_id: visitor_identity(visitor),
            name: name.clone(),
            email: Some(email.clone()),
        };
        let standby = Some(state.ingress.widget_standby);
        let Ingested::Resolved { contact_id, conversation_id } =
            ingest(&state, &inbox, &sender, None, standby, true).await?
        else {
            return Err(ApiError::Internal("the directory did not resolve a conversation".into()));
        };
        let grant = VisitorGrant {
            tenant: inbox.tenant_id,
            inbox: inbox.id,
            contact: contact_id,
            conversation: conversation_id,
            visitor,
            email: &email,
            name: name.as_deref(),
        };
        let (token, expires_at) = issue_visitor_token(&state.auth, &grant, TOKEN_TTL);
        let visitor_key = issue_visitor_key(&state.auth, inbox.id, visitor);
        let session = Session { token, conversation_id, contact_id, expires_at, visitor_key };
        Ok((StatusCode::CREATED, Json(session)).into_response())
    }
    .await;
    observe(InboxKind::Web, started, result)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VisitorMessage {
    /// 1 to 4096 characters, not only spaces (trimmed).
    #[schema(min_length = 1, max_length = 4096, pattern = "[^\\s\\u0085\\u0000]")]
    pub text: String,
    /// The widget's own id of the message (1 to 128 characters, no control characters): a retry
    /// with the same id is not appended twice.
    #[schema(min_length = 1, max_length = 128, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub client_msg_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VisitorAccepted {
    /// The message's event id; `null` when `duplicate` (the first attempt's entry is `offset`).
    pub event_id: Option<Uuid>,
    /// The events-stream entry id.
    pub offset: String,
    /// The conversation the message went to (a new one after the standby window).
    pub conversation_id: Uuid,
    pub duplicate: bool,
}

/// A visitor's message, with a visitor token.
#[utoipa::path(
    post,
    path = "/v1/widget/{inbox_id}/messages",
    tag = "widget",
    params(("inbox_id" = Uuid, Path, description = "A web inbox")),
    request_body = VisitorMessage,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Appended", body = VisitorAccepted),
        (status = 401, description = "Missing or invalid visitor token", body = ErrorBody),
        (status = 404, description = "No web inbox with this id, or the token is for another inbox", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid", body = ErrorBody),
        (status = 429, description = "The visitor's (30 a minute), its address's (120 a minute) or the inbox's rate limit; see Retry-After", body = ErrorBody),
    )
)]
pub async fn post_message(
    State(state): State<AppState>,
    ApiPath(inbox_id): ApiPath<Uuid>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<VisitorMessage>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (visitor, inbox) = visitor_of(&state, inbox_id, &headers).await?;
        limit_messages(&state, visitor.visitor, peer.ip()).await?;
        let text =
            text::message_text(&request.text).map_err(|error| ApiError::invalid_field("text", error.to_string()))?;
        let client_msg_id = match request.client_msg_id {
            Some(id) => text::client_msg_id(&id)
                .map_err(|error| ApiError::invalid_field("client_msg_id", error.to_string()))?
                .to_owned(),
            None => Uuid::now_v7().to_string(),
        };
        let sender = Introduction {
            inbox: inbox.id,
            external_id: visitor_identity(visitor.visitor),
            // The contact is made with the first message, as the session's visitor named itself.
            name: visitor.name.clone(),
            email: Some(visitor.email.clone()),
        };
        let message = InboundMessage {
            provider_message_id: format!("widget:{}:{client_msg_id}", visitor.contact),
            text,
            extra: None,
            sent_at_ms: None,
        };
        let standby = Some(state.ingress.widget_standby);
        let accepted = match ingest(&state, &inbox, &sender, Some(&message), standby, true).await? {
            Ingested::Appended { conversation_id, event_id, offset, .. } => VisitorAccepted {
                event_id: Some(event_id.0),
                offset: offset.to_string(),
                conversation_id,
                duplicate: false,
            },
            Ingested::Duplicate { conversation_id, offset } => VisitorAccepted {
                event_id: None,
                offset: offset.to_string(),
                conversation_id: conversation_id.unwrap_or(visitor.conversation),
                duplicate: true,
            },
            Ingested::Resolved { .. } | Ingested::RateLimited => {
                return Err(ApiError::Internal("the directory did not append the message".into()));
            }
        };
        Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
    }
    .await;
    observe(InboxKind::Web, started, result)
}

/// The visitor of a request's token, and the web inbox it belongs to.
async fn visitor_of(
    state: &AppState,
    inbox_id: Uuid,
    headers: &HeaderMap,
) -> Result<(chatdesk_core::auth::VisitorClaims, chatdesk_store::directory::InboxRecord), ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::Unauthorized {
            message: "missing visitor token (Authorization: Bearer <token>)".into(),
        })?;
    let visitor = verify_visitor_token(&state.auth, token.trim())
        .map_err(|error| ApiError::Unauthorized { message: error.to_string() })?;
    let inbox = inbox_of_kind(state, inbox_id, InboxKind::Web).await?;
    if visitor.inbox != inbox.id {
        return Err(ApiError::NotFound { message: "the visitor token belongs to another inbox".into() });
    }
    Ok((visitor, inbox))
}

/// A message as the visitor sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct VisitorHistoryMessage {
    pub event_id: Uuid,
    /// The events-stream entry id: subscribe with `since` = the newest one to continue live.
    pub offset: String,
    /// `inbound`: the visitor's; `outbound`: the agents' (or a bot's).
    pub direction: String,
    pub text: String,
    /// Reply buttons a bot offered with the message (`id`, `title`); empty for others. Only
    /// these are shown to visitors of a message's channel fields.
    #[schema(value_type = Vec<Object>)]
    pub buttons: Vec<serde_json::Value>,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VisitorHistory {
    /// Oldest first.
    pub items: Vec<VisitorHistoryMessage>,
    /// Subscribe on the WebSocket with `since` = this to continue without a gap: the newest
    /// item's offset, or (no messages yet) a point a minute before this answer.
    pub resume_from: String,
}

/// How far before "now" an empty history resumes, to cover clock differences and messages
/// appended while this answer was made.
const EMPTY_HISTORY_MARGIN_MS: u64 = 60_000;

const HISTORY_LIMIT: i64 = 200;

/// The visitor's conversation so far (the latest 200 messages), with a visitor token.
#[utoipa::path(
    get,
    path = "/v1/widget/{inbox_id}/messages",
    tag = "widget",
    params(("inbox_id" = Uuid, Path, description = "A web inbox")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation's messages, oldest first", body = VisitorHistory),
        (status = 401, description = "Missing or invalid visitor token", body = ErrorBody),
        (status = 404, description = "No web inbox with this id, or the token is for another inbox", body = ErrorBody),
    )
)]
pub async fn history(
    State(state): State<AppState>,
    ApiPath(inbox_id): ApiPath<Uuid>,
    headers: HeaderMap,
) -> Result<Json<VisitorHistory>, ApiError> {
    let (visitor, _) = visitor_of(&state, inbox_id, &headers).await?;
    let rows = chatdesk_store::conversations::list_messages(
        &state.db,
        visitor.tenant,
        visitor.conversation,
        None,
        HISTORY_LIMIT,
    )
    .await
    .map_err(ApiError::store)?;
    let newest = rows.first().map(|row| row.stream_offset.clone());
    let resume_from = newest
        .unwrap_or_else(|| format!("{}-0", chatdesk_core::envelope::now_ms().saturating_sub(EMPTY_HISTORY_MARGIN_MS)));
    let items = rows
        .into_iter()
        .rev()
        .map(|row| VisitorHistoryMessage {
            event_id: row.event_id,
            offset: row.stream_offset,
            direction: row.direction,
            text: row.body,
            buttons: row
                .extra
                .as_ref()
                .filter(|_| row.sender_kind == "bot")
                .and_then(|extra| extra.get("buttons"))
                .and_then(serde_json::Value::as_array)
                .cloned()
                .unwrap_or_default(),
            created_at: row.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        })
        .collect();
    Ok(Json(VisitorHistory { items, resume_from }))
}
