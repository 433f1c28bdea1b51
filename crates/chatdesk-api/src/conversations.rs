//! Conversations and their history (read from PostgreSQL), and what agents do to them
//! (appended to the events stream: nothing here writes PostgreSQL; the writer does).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chatdesk_conversations::ReplyError;
use chatdesk_core::events::{
    Actor, ConversationAssigned, ConversationStatus, ConversationStatusChanged, Event, SenderKind,
};
use chatdesk_core::{EntryId, Envelope, EventId, TenantId};
use chatdesk_store::conversations::{self as store, AssigneeFilter, ConversationFilter, ConversationRow, MessageRow};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{CONVERSATION_ROLES, Principal};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::ErrorBody;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContactView {
    /// The person (`GET /v1/contacts/{id}`): after a merge, the contact it was merged into.
    pub id: Uuid,
    pub name: Option<String>,
    /// The contact's id on its channel (phone number, chat id, visitor id).
    pub external_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LastMessage {
    pub id: Uuid,
    pub text: String,
    /// RFC 3339.
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationView {
    pub id: Uuid,
    pub inbox_id: Uuid,
    pub contact: ContactView,
    /// open, pending, resolved or blocked.
    pub status: String,
    pub assignee_id: Option<Uuid>,
    pub last_message: Option<LastMessage>,
    /// RFC 3339.
    pub last_activity_at: String,
    /// Inbound messages since the last agent reply.
    pub unread_count: i32,
    /// RFC 3339.
    pub created_at: String,
    /// Why the bot handed the conversation to humans, while it is not resolved
    /// (`docs/autoreply.md`); `null` when it did not.
    pub handoff: Option<HandoffView>,
    /// Ids of its labels (`GET /v1/labels`), by label name.
    pub labels: Vec<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HandoffView {
    /// agent_replied, assigned, keyword, model, cap, budget, error or timeout.
    pub reason: String,
    pub detail: Option<String>,
}

impl From<ConversationRow> for ConversationView {
    fn from(row: ConversationRow) -> Self {
        let last_message = match (row.last_message_id, row.last_message_text, row.last_message_at) {
            (Some(id), Some(text), Some(at)) => Some(LastMessage { id, text, at: rfc3339(at) }),
            _ => None,
        };
        Self {
            id: row.id,
            inbox_id: row.inbox_id,
            contact: ContactView { id: row.person_id, name: row.contact_name, external_id: row.contact_external_id },
            status: row.status.as_str().to_owned(),
            assignee_id: row.assignee_id,
            last_message,
            last_activity_at: rfc3339(row.last_activity_at),
            unread_count: row.unread_count,
            created_at: rfc3339(row.created_at),
            handoff: row.handoff.map(|(reason, detail)| HandoffView { reason, detail }),
            labels: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationPage {
    pub items: Vec<ConversationView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListConversations {
    /// open, pending, resolved or blocked.
    #[param(pattern = "^(open|pending|resolved|blocked)$")]
    pub status: Option<String>,
    /// A user id, `me`, or `none` (unassigned).
    #[param(pattern = "^(me|none|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")]
    pub assignee: Option<String>,
    pub inbox: Option<Uuid>,
    /// Only conversations with this label id.
    pub label: Option<Uuid>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,19}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

pub(crate) fn bad_query(parameter: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code: "invalid_query",
        message: format!("query parameter {parameter}: {}", message.into()),
        details: Some(serde_json::json!({ "parameter": parameter })),
    }
}

fn limit(requested: Option<u32>) -> Result<i64, ApiError> {
    match requested.unwrap_or(DEFAULT_LIMIT) {
        limit @ 1..=MAX_LIMIT => Ok(i64::from(limit)),
        other => Err(bad_query("limit", format!("must be between 1 and {MAX_LIMIT}, got {other}"))),
    }
}

/// `<last activity, ns since the epoch>_<id>`: a position in the list's order, readable so that
/// the document can state its shape (any value of that shape is a valid place to continue).
fn encode_conversation_cursor(row: &ConversationRow) -> String {
    format!("{}_{}", row.last_activity_at.unix_timestamp_nanos(), row.id)
}

fn decode_conversation_cursor(cursor: &str) -> Result<(OffsetDateTime, Uuid), ApiError> {
    let invalid = || bad_query("cursor", "not a cursor returned by this API");
    let (nanos, id) = cursor.split_once('_').ok_or_else(invalid)?;
    // Not before the epoch: what PostgreSQL and the list's order can hold, as the document says.
    let nanos: u64 = nanos.parse().map_err(|_| invalid())?;
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).map_err(|_| invalid())?;
    Ok((time, id.parse().map_err(|_| invalid())?))
}

/// Lists the caller's tenant's conversations, most recent activity first.
#[utoipa::path(
    get,
    path = "/v1/conversations",
    tag = "conversations",
    params(ListConversations),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of conversations", body = ConversationPage),
        (status = 400, description = "A query parameter is invalid", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read conversations", body = ErrorBody),
    )
)]
pub async fn list_conversations(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListConversations>,
) -> Result<Json<ConversationPage>, ApiError> {
    principal.require(CONVERSATION_ROLES, "read conversations")?;
    if let Some(status) = &query.status
        && ConversationStatus::parse(status).is_none()
    {
        return Err(bad_query("status", format!("must be open, pending, resolved or blocked, got {status:?}")));
    }
    let assignee = match query.assignee.as_deref() {
        None => AssigneeFilter::Any,
        Some("none") => AssigneeFilter::Unassigned,
        Some("me") => {
            AssigneeFilter::User(principal.user.ok_or_else(|| bad_query("assignee", "`me` needs an agent token"))?)
        }
        Some(other) => {
            AssigneeFilter::User(other.parse().map_err(|_| bad_query("assignee", "must be a user id, `me` or `none`"))?)
        }
    };
    let limit = limit(query.limit)?;
    let filter = ConversationFilter {
        status: query.status,
        assignee,
        inbox: query.inbox,
        label: query.label,
        inboxes: readable_inboxes(&state, &principal).await?,
        after: query.cursor.as_deref().map(decode_conversation_cursor).transpose()?,
        limit: limit + 1,
    };
    let mut rows = store::list_conversations(&state.db, principal.tenant, &filter).await.map_err(ApiError::store)?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(encode_conversation_cursor)
    } else {
        None
    };
    let items = with_labels(&state, principal.tenant, rows).await?;
    Ok(Json(ConversationPage { items, next_cursor }))
}

/// The views of `rows`, with their labels.
async fn with_labels(
    state: &AppState,
    tenant: Uuid,
    rows: Vec<ConversationRow>,
) -> Result<Vec<ConversationView>, ApiError> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let mut labels = chatdesk_store::workspace::labels_of(&state.db, tenant, &ids).await.map_err(ApiError::store)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let id = row.id;
            let mut view = ConversationView::from(row);
            view.labels = labels.remove(&id).unwrap_or_default();
            view
        })
        .collect())
}

/// The inboxes the caller may read: `None` for every inbox (owners, admins, API keys); for an
/// agent, the inboxes it is a member of and those without members.
pub(crate) async fn readable_inboxes(state: &AppState, principal: &Principal) -> Result<Option<Vec<Uuid>>, ApiError> {
    match (principal.role, principal.user) {
        (chatdesk_core::auth::Role::Agent, Some(user)) => Ok(Some(
            chatdesk_store::workspace::readable_inboxes(&state.db, principal.tenant, user)
                .await
                .map_err(ApiError::store)?,
        )),
        _ => Ok(None),
    }
}

/// The conversation, if it is the caller's tenant's and in an inbox the caller may read; 404
/// otherwise (another tenant's conversation and an unreadable one look alike).
pub(crate) async fn conversation_of(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<ConversationRow, ApiError> {
    let row = store::get_conversation(&state.db, principal.tenant, id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found("conversation"))?;
    if let Some(inboxes) = readable_inboxes(state, principal).await?
        && !inboxes.contains(&row.inbox_id)
    {
        return Err(ApiError::not_found("conversation"));
    }
    Ok(row)
}

/// One conversation of the caller's tenant.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation", body = ConversationView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read conversations", body = ErrorBody),
        (status = 404, description = "No such conversation in this tenant", body = ErrorBody),
    )
)]
pub async fn get_conversation(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ConversationView>, ApiError> {
    principal.require(CONVERSATION_ROLES, "read conversations")?;
    let row = conversation_of(&state, &principal, id).await?;
    let mut items = with_labels(&state, principal.tenant, vec![row]).await?;
    Ok(Json(items.remove(0)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub event_id: Uuid,
    /// The stream entry id the message was appended under: its position in the tenant's event
    /// order, and a resume cursor for the WebSocket protocol.
    pub offset: String,
    /// inbound or outbound.
    pub direction: String,
    /// customer, agent, bot or system.
    pub sender_kind: String,
    pub sender_id: Option<Uuid>,
    pub text: String,
    /// queued, sent, failed, delivered or read (outbound); `null` for inbound messages.
    pub status: Option<String>,
    pub failure_reason: Option<String>,
    /// The provider's id of the message (e.g. a WhatsApp wamid), once sent or received.
    pub provider_message_id: Option<String>,
    /// Provider calls made to deliver an outbound message; `null` until it was sent or failed.
    pub attempts: Option<i16>,
    pub extra: Option<serde_json::Value>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<MessageRow> for MessageView {
    fn from(row: MessageRow) -> Self {
        Self {
            event_id: row.event_id,
            offset: row.stream_offset,
            direction: row.direction,
            sender_kind: row.sender_kind,
            sender_id: row.sender_id,
            text: row.body,
            status: row.status,
            failure_reason: row.failure_reason,
            provider_message_id: row.provider_message_id,
            attempts: row.attempts,
            extra: row.extra,
            created_at: rfc3339(row.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    /// Newest first.
    pub items: Vec<MessageView>,
    /// Pass as `cursor` for older messages; `null` when there are none.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListMessages {
    /// `next_cursor` of the previous page (a message's offset).
    #[param(pattern = "^[0-9]{1,19}-[0-9]{1,19}$")]
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// A conversation's messages, newest first, paging backwards.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/messages",
    tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id"), ListMessages),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of messages", body = MessagePage),
        (status = 400, description = "A query parameter is invalid", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read conversations", body = ErrorBody),
        (status = 404, description = "No such conversation in this tenant", body = ErrorBody),
    )
)]
pub async fn list_messages(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<ListMessages>,
) -> Result<Json<MessagePage>, ApiError> {
    principal.require(CONVERSATION_ROLES, "read conversations")?;
    let limit = limit(query.limit)?;
    let before = match query.cursor.as_deref() {
        Some(cursor) => {
            let offset: EntryId =
                cursor.parse().map_err(|_| bad_query("cursor", "not a cursor returned by this API"))?;
            // Past the largest stored offset, every message is older: the same page as that.
            let clamp = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
            Some((clamp(offset.millis), clamp(offset.sequence)))
        }
        None => None,
    };
    conversation_of(&state, &principal, id).await?;
    let mut rows =
        store::list_messages(&state.db, principal.tenant, id, before, limit + 1).await.map_err(ApiError::store)?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|row| row.stream_offset.clone())
    } else {
        None
    };
    Ok(Json(MessagePage { items: rows.into_iter().map(MessageView::from).collect(), next_cursor }))
}

// Named `Accepted` in the OpenAPI document, as clients know it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Accepted)]
pub struct AcceptedView {
    pub event_id: Uuid,
    /// The events-stream entry id of the appended event. (A repeated `client_msg_id` finishes
    /// what its first attempt left undone, so it is always set; it stays nullable for clients
    /// written against earlier versions.)
    pub offset: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyRequest {
    /// 1 to 4096 characters, not only spaces (trimmed).
    #[schema(min_length = 1, max_length = 4096, pattern = "[^\\s\\u0085\\u0000]")]
    pub text: String,
    /// The client's own id for this message (1 to 128 characters, no control characters); a
    /// repeated id is answered with the first attempt's event instead of sending again
    /// (remembered for 24 hours).
    #[schema(min_length = 1, max_length = 128, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub client_msg_id: Option<String>,
}

pub(crate) fn actor(principal: &Principal) -> Actor {
    Actor { kind: if principal.user.is_some() { SenderKind::Agent } else { SenderKind::System }, id: principal.user }
}

async fn append(
    state: &AppState,
    tenant: Uuid,
    conversation: Uuid,
    event: &Event,
    event_id: EventId,
) -> Result<EntryId, ApiError> {
    debug_assert_eq!(event.conversation_id(), Some(conversation));
    let entry = Envelope::of(TenantId(tenant), event).with_event_id(event_id);
    let appended = state.producer.append_event(&entry).await.map_err(ApiError::append)?;
    Ok(appended.id)
}

/// Appends an agent action and answers 202 with its event id and offset.
pub(crate) async fn accept(
    state: &AppState,
    tenant: Uuid,
    conversation: Uuid,
    event: &Event,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    let event_id = EventId::new();
    let offset = append(state, tenant, conversation, event, event_id).await?;
    Ok((StatusCode::ACCEPTED, Json(AcceptedView { event_id: event_id.0, offset: Some(offset.to_string()) })))
}

/// Sends an agent reply: appends the outbound message to the events stream and a delivery
/// request to the send stream. The message shows as `queued` until the provider answers.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/messages",
    tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")),
    request_body = ReplyRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the message is queued for delivery", body = AcceptedView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not reply", body = ErrorBody),
        (status = 404, description = "No such conversation in this tenant", body = ErrorBody),
        (status = 409, description = "The conversation is blocked", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid", body = ErrorBody),
        (status = 503, description = "Redis or PostgreSQL is unavailable; nothing was sent", body = ErrorBody),
    )
)]
pub async fn reply(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<ReplyRequest>,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    principal.require(CONVERSATION_ROLES, "reply to conversations")?;
    if principal.role == chatdesk_core::auth::Role::Agent && principal.user.is_some() {
        // An agent replies only where it may read; others skip the lookup the reply makes anyway.
        conversation_of(&state, &principal, id).await?;
    }
    let accepted = state
        .reply
        .send(principal.tenant, id, actor(&principal), &request.text, request.client_msg_id.as_deref())
        .await
        .map_err(reply_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(AcceptedView { event_id: accepted.event_id, offset: accepted.offset.map(|offset| offset.to_string()) }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    /// A user of the same tenant; `null` unassigns.
    pub assignee_id: Option<Uuid>,
}

/// Assigns the conversation to an agent of the tenant, or unassigns it.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/assign",
    tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")),
    request_body = AssignRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted", body = AcceptedView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not assign", body = ErrorBody),
        (status = 404, description = "No such conversation in this tenant", body = ErrorBody),
        (status = 422, description = "assignee_id is not a user of this tenant", body = ErrorBody),
    )
)]
pub async fn assign(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<AssignRequest>,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    principal.require(CONVERSATION_ROLES, "assign conversations")?;
    conversation_of(&state, &principal, id).await?;
    if let Some(assignee) = request.assignee_id {
        let known = chatdesk_store::directory::user_in_tenant(&state.db, principal.tenant, assignee)
            .await
            .map_err(ApiError::store)?;
        if !known {
            return Err(ApiError::invalid_field("assignee_id", "is not a user of this tenant"));
        }
    }
    let event = Event::ConversationAssigned(ConversationAssigned {
        conversation_id: id,
        assignee_id: request.assignee_id,
        by: actor(&principal),
    });
    accept(&state, principal.tenant, id, &event).await
}

async fn change_status(
    state: AppState,
    principal: Principal,
    id: Uuid,
    status: ConversationStatus,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    principal.require(CONVERSATION_ROLES, "change a conversation's status")?;
    conversation_of(&state, &principal, id).await?;
    let event = Event::ConversationStatusChanged(ConversationStatusChanged {
        conversation_id: id,
        status,
        by: actor(&principal),
    });
    accept(&state, principal.tenant, id, &event).await
}

/// Marks the conversation resolved.
#[utoipa::path(post, path = "/v1/conversations/{id}/resolve", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")), security(("bearer" = [])),
    responses((status = 202, body = AcceptedView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn resolve(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    change_status(state, principal, id, ConversationStatus::Resolved).await
}

/// Opens the conversation again.
#[utoipa::path(post, path = "/v1/conversations/{id}/reopen", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")), security(("bearer" = [])),
    responses((status = 202, body = AcceptedView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn reopen(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    change_status(state, principal, id, ConversationStatus::Open).await
}

/// Blocks the conversation: no replies until it is reopened.
#[utoipa::path(post, path = "/v1/conversations/{id}/block", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")), security(("bearer" = [])),
    responses((status = 202, body = AcceptedView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn block(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    change_status(state, principal, id, ConversationStatus::Blocked).await
}

/// A refused reply, as REST answers it.
fn reply_error(error: ReplyError) -> ApiError {
    match error {
        ReplyError::Text(rule) => ApiError::invalid_field("text", rule.to_string()),
        ReplyError::ClientMsgId(rule) => ApiError::invalid_field("client_msg_id", rule.to_string()),
        ReplyError::NotFound => ApiError::NotFound { message: "no such conversation".into() },
        ReplyError::Blocked => ApiError::Conflict { message: error.to_string() },
        ReplyError::Store(error) => ApiError::store(error),
        ReplyError::Append(error) => ApiError::append(error),
    }
}
