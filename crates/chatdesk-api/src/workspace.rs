//! The agent's workspace over REST: private notes, labels, canned responses, the contact panel,
//! search, the tenant's users and inbox membership.
//!
//! What changes a conversation or a contact (a note, a label added, a contact edited or merged)
//! is an event appended to the stream, stored by the writer and live on every agent's socket;
//! the tenant's settings (label definitions, canned responses, members) are written here.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chatdesk_core::events::{ContactMerged, ContactUpdated, ConversationLabels, Event, NoteCreated};
use chatdesk_core::{Envelope, EventId, TenantId};
use chatdesk_store::workspace::{self as store, CannedRow, ContactRow, LabelRow, Updated};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{ADMIN_ROLES, CONVERSATION_ROLES, Principal};
use crate::conversations::{AcceptedView, accept, actor, bad_query, conversation_of, readable_inboxes};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::ErrorBody;

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Invisible characters that reorder or hide text (bidirectional overrides, zero-width ones):
/// in a short name they spoof or blank what others see.
fn is_invisible(character: char) -> bool {
    matches!(character, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}' | '\u{180E}')
}

/// A short single-line name: trimmed, 1 to `max` characters, no control or invisible characters.
fn short_name(field: &str, raw: &str, max: usize) -> Result<String, ApiError> {
    let trimmed = chatdesk_core::spaces::trim(raw);
    if trimmed.is_empty() || trimmed.chars().count() > max {
        return Err(ApiError::invalid_field(field, format!("must be 1 to {max} characters, not only spaces")));
    }
    if trimmed.chars().any(|character| character.is_control() || is_invisible(character)) {
        return Err(ApiError::invalid_field(field, "must not contain control or invisible characters"));
    }
    Ok(trimmed.to_owned())
}

fn text(field: &str, raw: &str) -> Result<String, ApiError> {
    chatdesk_conversations::text::message_text(raw).map_err(|rule| ApiError::invalid_field(field, rule.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Notes

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteRequest {
    /// 1 to 4096 characters, not only spaces (trimmed).
    #[schema(min_length = 1, max_length = 4096, pattern = "[^\\s\\u0085\\u0000]")]
    pub text: String,
    /// Users of the tenant to notify (at most 20); the dashboard fills it from `@` mentions.
    #[serde(default)]
    #[schema(max_items = 20)]
    pub mentions: Vec<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NoteView {
    /// The note's id: its `note.created` event id.
    pub id: Uuid,
    /// The stream entry id the note was appended under.
    pub offset: String,
    /// agent or system.
    pub author_kind: String,
    pub author_id: Option<Uuid>,
    pub text: String,
    pub mentions: Vec<Uuid>,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NoteList {
    /// Oldest first.
    pub items: Vec<NoteView>,
}

/// Writes a private note in a conversation: agents see it (live on their sockets, in
/// `GET …/notes`), the customer never does; mentioned users are notified.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/notes",
    tag = "workspace",
    params(("id" = Uuid, Path, description = "Conversation id")),
    request_body = NoteRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the note is appended", body = AcceptedView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not write notes", body = ErrorBody),
        (status = 404, description = "No such conversation the caller may read", body = ErrorBody),
        (status = 422, description = "text is missing or invalid, or a mention is not a user of the tenant", body = ErrorBody),
        (status = 503, description = "Redis or PostgreSQL is unavailable; nothing was written", body = ErrorBody),
    )
)]
pub async fn create_note(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<NoteRequest>,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    principal.require(CONVERSATION_ROLES, "write notes")?;
    let text = text("text", &request.text)?;
    if request.mentions.len() > 20 {
        return Err(ApiError::invalid_field("mentions", "at most 20 users"));
    }
    let mut mentions = request.mentions;
    mentions.sort_unstable();
    mentions.dedup();
    let conversation = conversation_of(&state, &principal, id).await?;
    if !mentions.is_empty() {
        let users = store::users_of(&state.db, principal.tenant).await.map_err(ApiError::store)?;
        if !mentions.iter().all(|mention| users.iter().any(|(user, ..)| user == mention)) {
            return Err(ApiError::invalid_field("mentions", "every mention must be a user of this tenant"));
        }
        // A mention notifies, with the note's text: only someone who may read the conversation.
        let members =
            store::inbox_members(&state.db, principal.tenant, conversation.inbox_id).await.map_err(ApiError::store)?;
        let outsider = mentions.iter().find(|mention| {
            let role = users.iter().find(|(user, ..)| user == *mention).map(|(.., role)| role.as_str());
            match role {
                Some("owner" | "admin") => false,
                Some("agent") => !members.is_empty() && !members.contains(mention),
                _ => true,
            }
        });
        if let Some(outsider) = outsider {
            return Err(ApiError::invalid_field("mentions", format!("{outsider} cannot read this conversation")));
        }
    }
    let event = Event::NoteCreated(NoteCreated { conversation_id: id, author: actor(&principal), text, mentions });
    accept(&state, principal.tenant, id, &event).await
}

/// A conversation's private notes, oldest first (at most 1,000).
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/notes",
    tag = "workspace",
    params(("id" = Uuid, Path, description = "Conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The notes", body = NoteList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read conversations", body = ErrorBody),
        (status = 404, description = "No such conversation the caller may read", body = ErrorBody),
    )
)]
pub async fn list_notes(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<NoteList>, ApiError> {
    principal.require(CONVERSATION_ROLES, "read conversations")?;
    conversation_of(&state, &principal, id).await?;
    let rows = store::list_notes(&state.db, principal.tenant, id).await.map_err(ApiError::store)?;
    Ok(Json(NoteList {
        items: rows
            .into_iter()
            .map(|row| NoteView {
                id: row.event_id,
                offset: row.stream_offset,
                author_kind: row.author_kind,
                author_id: row.author_id,
                text: row.body,
                mentions: row.mentions,
                created_at: rfc3339(row.created_at),
            })
            .collect(),
    }))
}

// ---------------------------------------------------------------------------------------------
// Labels

#[derive(Debug, Serialize, ToSchema)]
pub struct LabelView {
    pub id: Uuid,
    pub name: String,
    /// `#rrggbb`.
    pub colour: String,
}

impl From<LabelRow> for LabelView {
    fn from(row: LabelRow) -> Self {
        Self { id: row.id, name: row.name, colour: row.colour }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LabelList {
    /// By name.
    pub items: Vec<LabelView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    /// 1 to 50 characters, unique in the tenant (case aside).
    #[schema(
        min_length = 1,
        max_length = 50,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0085\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
    /// `#rrggbb`.
    #[schema(pattern = "^#[0-9a-fA-F]{6}$")]
    pub colour: String,
}

/// The tenant's labels.
#[utoipa::path(
    get,
    path = "/v1/labels",
    tag = "workspace",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The labels", body = LabelList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read conversations", body = ErrorBody),
    )
)]
pub async fn list_labels(State(state): State<AppState>, principal: Principal) -> Result<Json<LabelList>, ApiError> {
    principal.require(CONVERSATION_ROLES, "read labels")?;
    let rows = store::list_labels(&state.db, principal.tenant).await.map_err(ApiError::store)?;
    Ok(Json(LabelList { items: rows.into_iter().map(LabelView::from).collect() }))
}

/// Creates a label (owners and admins).
#[utoipa::path(
    post,
    path = "/v1/labels",
    tag = "workspace",
    request_body = LabelRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = LabelView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only owners and admins define labels", body = ErrorBody),
        (status = 409, description = "The tenant has a label of that name", body = ErrorBody),
        (status = 422, description = "name or colour is invalid", body = ErrorBody),
    )
)]
pub async fn create_label(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<LabelRequest>,
) -> Result<(StatusCode, Json<LabelView>), ApiError> {
    principal.require(ADMIN_ROLES, "define labels")?;
    let name = short_name("name", &request.name, 50)?;
    let colour = request.colour.to_ascii_lowercase();
    if colour.len() != 7 || !colour.starts_with('#') || !colour[1..].bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(ApiError::invalid_field("colour", "must be #rrggbb"));
    }
    match store::create_label(&state.db, principal.tenant, &name, &colour).await.map_err(ApiError::store)? {
        Some(row) => Ok((StatusCode::CREATED, Json(row.into()))),
        None => Err(ApiError::Conflict { message: format!("the tenant already has a label named {name:?}") }),
    }
}

/// Deletes a label; it comes off every conversation.
#[utoipa::path(
    delete,
    path = "/v1/labels/{id}",
    tag = "workspace",
    params(("id" = Uuid, Path, description = "Label id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only owners and admins define labels", body = ErrorBody),
        (status = 404, description = "No such label in this tenant", body = ErrorBody),
    )
)]
pub async fn delete_label(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    principal.require(ADMIN_ROLES, "define labels")?;
    if store::delete_label(&state.db, principal.tenant, id).await.map_err(ApiError::store)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("label"))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelChange {
    /// Label ids to add (at most 20).
    #[serde(default)]
    #[schema(max_items = 20)]
    pub add: Vec<Uuid>,
    /// Label ids to remove (at most 20).
    #[serde(default)]
    #[schema(max_items = 20)]
    pub remove: Vec<Uuid>,
}

/// Adds labels to and removes labels from a conversation.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/labels",
    tag = "workspace",
    params(("id" = Uuid, Path, description = "Conversation id")),
    request_body = LabelChange,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted", body = AcceptedView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not label conversations", body = ErrorBody),
        (status = 404, description = "No such conversation the caller may read", body = ErrorBody),
        (status = 422, description = "Nothing to change, too many, or a label that is not the tenant's", body = ErrorBody),
    )
)]
pub async fn change_labels(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<LabelChange>,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    principal.require(CONVERSATION_ROLES, "label conversations")?;
    let (mut add, mut remove) = (request.add, request.remove);
    for (field, list) in [("add", &mut add), ("remove", &mut remove)] {
        if list.len() > 20 {
            return Err(ApiError::invalid_field(field, "at most 20 labels"));
        }
        list.sort_unstable();
        list.dedup();
    }
    if add.is_empty() && remove.is_empty() {
        return Err(ApiError::invalid_field("add", "name at least one label to add or remove"));
    }
    if add.iter().any(|label| remove.contains(label)) {
        return Err(ApiError::invalid_field("remove", "a label cannot be added and removed at once"));
    }
    conversation_of(&state, &principal, id).await?;
    let named: Vec<Uuid> = add.iter().chain(&remove).copied().collect();
    let known = store::known_labels(&state.db, principal.tenant, &named).await.map_err(ApiError::store)?;
    if let Some(unknown) = named.iter().find(|label| !known.contains(label)) {
        let field = if add.contains(unknown) { "add" } else { "remove" };
        return Err(ApiError::invalid_field(field, format!("{unknown} is not a label of this tenant")));
    }
    let event = Event::ConversationLabels(ConversationLabels {
        conversation_id: id,
        added: add,
        removed: remove,
        by: actor(&principal),
    });
    accept(&state, principal.tenant, id, &event).await
}

// ---------------------------------------------------------------------------------------------
// Canned responses

#[derive(Debug, Serialize, ToSchema)]
pub struct CannedView {
    pub id: Uuid,
    /// What an agent types after `/` to find it.
    pub shortcode: String,
    /// The text, with its variables (`{{contact.name}}`, …) as written.
    pub text: String,
    /// The text with the variables filled in for a conversation; only in
    /// `GET /v1/conversations/{id}/canned_responses`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rendered: Option<String>,
}

impl From<CannedRow> for CannedView {
    fn from(row: CannedRow) -> Self {
        Self { id: row.id, shortcode: row.shortcode, text: row.body, rendered: None }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CannedList {
    /// By shortcode.
    pub items: Vec<CannedView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CannedRequest {
    /// 1 to 32 of a-z, 0-9, `_` and `-`.
    #[schema(pattern = "^[a-z0-9_-]{1,32}$")]
    pub shortcode: String,
    /// 1 to 4096 characters, not only spaces (trimmed). Variables: `{{contact.name}}`,
    /// `{{contact.email}}`, `{{contact.phone}}`, `{{agent.name}}`, `{{agent.email}}`.
    #[schema(min_length = 1, max_length = 4096, pattern = "[^\\s\\u0085\\u0000]")]
    pub text: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CannedPatch {
    #[schema(pattern = "^[a-z0-9_-]{1,32}$")]
    pub shortcode: Option<String>,
    #[schema(min_length = 1, max_length = 4096, pattern = "[^\\s\\u0085\\u0000]")]
    pub text: Option<String>,
}

fn shortcode(raw: &str) -> Result<String, ApiError> {
    let valid = !raw.is_empty()
        && raw.len() <= 32
        && raw.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-');
    if !valid {
        return Err(ApiError::invalid_field("shortcode", "must be 1 to 32 of a-z, 0-9, '_' and '-'"));
    }
    Ok(raw.to_owned())
}

/// The variables a canned response may use, and what they are for one conversation and agent.
/// An unknown `{{…}}` stays as written; a known one with no value becomes empty.
pub fn render(template: &str, values: &[(&str, Option<&str>)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                match values.iter().find(|(key, _)| *key == name) {
                    Some((_, value)) => out.push_str(value.unwrap_or_default()),
                    None => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Owners and admins change any canned response; an agent only the ones it made (they are the
/// whole team's, so one agent cannot rewrite or remove what others rely on).
async fn may_change_canned(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), ApiError> {
    let creator = store::canned_creator(&state.db, principal.tenant, id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found("canned response"))?;
    if ADMIN_ROLES.contains(&principal.role) || (principal.user.is_some() && creator == principal.user) {
        return Ok(());
    }
    Err(ApiError::Forbidden { message: "an agent changes only the canned responses it made".into() })
}

/// The tenant's canned responses.
#[utoipa::path(
    get,
    path = "/v1/canned_responses",
    tag = "workspace",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The canned responses", body = CannedList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read conversations", body = ErrorBody),
    )
)]
pub async fn list_canned(State(state): State<AppState>, principal: Principal) -> Result<Json<CannedList>, ApiError> {
    principal.require(CONVERSATION_ROLES, "read canned responses")?;
    let rows = store::list_canned(&state.db, principal.tenant).await.map_err(ApiError::store)?;
    Ok(Json(CannedList { items: rows.into_iter().map(CannedView::from).collect() }))
}

/// Creates a canned response, shared by the tenant's agents.
#[utoipa::path(
    post,
    path = "/v1/canned_responses",
    tag = "workspace",
    request_body = CannedRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = CannedView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not write canned responses", body = ErrorBody),
        (status = 409, description = "The shortcode is taken, or the tenant keeps 1,000 already", body = ErrorBody),
        (status = 422, description = "shortcode or text is invalid", body = ErrorBody),
    )
)]
pub async fn create_canned(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CannedRequest>,
) -> Result<(StatusCode, Json<CannedView>), ApiError> {
    principal.require(CONVERSATION_ROLES, "write canned responses")?;
    let code = shortcode(&request.shortcode)?;
    let body = text("text", &request.text)?;
    match store::create_canned(&state.db, principal.tenant, &code, &body, principal.user)
        .await
        .map_err(ApiError::store)?
    {
        store::Created::Done(row) => Ok((StatusCode::CREATED, Json(row.into()))),
        store::Created::Taken => Err(ApiError::Conflict { message: format!("the shortcode {code:?} is taken") }),
        store::Created::Full => Err(ApiError::Conflict {
            message: format!("the tenant has {} canned responses, the most it keeps", store::MAX_CANNED),
        }),
    }
}

/// Changes a canned response's shortcode or text.
#[utoipa::path(
    patch,
    path = "/v1/canned_responses/{id}",
    tag = "workspace",
    params(("id" = Uuid, Path, description = "Canned response id")),
    request_body = CannedPatch,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed", body = CannedView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not write canned responses, or an agent's change to another's", body = ErrorBody),
        (status = 404, description = "No such canned response in this tenant", body = ErrorBody),
        (status = 409, description = "The shortcode is taken", body = ErrorBody),
        (status = 422, description = "shortcode or text is invalid", body = ErrorBody),
    )
)]
pub async fn update_canned(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<CannedPatch>,
) -> Result<Json<CannedView>, ApiError> {
    principal.require(CONVERSATION_ROLES, "write canned responses")?;
    if request.shortcode.is_none() && request.text.is_none() {
        return Err(ApiError::invalid_field("text", "shortcode or text must be given"));
    }
    may_change_canned(&state, &principal, id).await?;
    let code = request.shortcode.as_deref().map(shortcode).transpose()?;
    let body = request.text.as_deref().map(|raw| text("text", raw)).transpose()?;
    match store::update_canned(&state.db, principal.tenant, id, code.as_deref(), body.as_deref())
        .await
        .map_err(ApiError::store)?
    {
        Updated::Done(row) => Ok(Json(row.into())),
        Updated::NotFound => Err(ApiError::not_found("canned response")),
        Updated::Taken => Err(ApiError::Conflict { message: "the shortcode is taken".into() }),
    }
}

/// Deletes a canned response.
#[utoipa::path(
    delete,
    path = "/v1/canned_responses/{id}",
    tag = "workspace",
    params(("id" = Uuid, Path, description = "Canned response id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not write canned responses, or an agent's change to another's", body = ErrorBody),
        (status = 404, description = "No such canned response in this tenant", body = ErrorBody),
    )
)]
pub async fn delete_canned(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    principal.require(CONVERSATION_ROLES, "write canned responses")?;
    may_change_canned(&state, &principal, id).await?;
    if store::delete_canned(&state.db, principal.tenant, id).await.map_err(ApiError::store)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("canned response"))
    }
}

/// The canned responses with their variables filled in for this conversation's contact and the
/// calling agent: what the reply box inserts.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/canned_responses",
    tag = "workspace",
    params(("id" = Uuid, Path, description = "Conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The canned responses, each with `rendered`", body = CannedList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read conversations", body = ErrorBody),
        (status = 404, description = "No such conversation the caller may read", body = ErrorBody),
    )
)]
pub async fn rendered_canned(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<CannedList>, ApiError> {
    principal.require(CONVERSATION_ROLES, "read canned responses")?;
    let conversation = conversation_of(&state, &principal, id).await?;
    let contact = store::get_contact(&state.db, principal.tenant, conversation.person_id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found("contact"))?;
    let users = store::users_of(&state.db, principal.tenant).await.map_err(ApiError::store)?;
    let agent = principal.user.and_then(|me| users.into_iter().find(|(user, ..)| *user == me));
    let agent_name = agent.as_ref().map(|(_, name, email, _)| display_name(name.as_deref(), email));
    let agent_email = agent.as_ref().map(|(_, _, email, _)| email.clone());
    let values = [
        ("contact.name", contact.name.as_deref()),
        ("contact.email", contact.email.as_deref()),
        ("contact.phone", contact.phone.as_deref()),
        ("agent.name", agent_name.as_deref()),
        ("agent.email", agent_email.as_deref()),
    ];
    let rows = store::list_canned(&state.db, principal.tenant).await.map_err(ApiError::store)?;
    Ok(Json(CannedList {
        items: rows
            .into_iter()
            .map(|row| {
                let rendered = render(&row.body, &values);
                CannedView { rendered: Some(rendered), ..row.into() }
            })
            .collect(),
    }))
}

/// How a user is named to others: its name, else its e-mail's local part.
fn display_name(name: Option<&str>, email: &str) -> String {
    name.filter(|name| !name.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| email.split('@').next().unwrap_or(email).to_owned())
}

// ---------------------------------------------------------------------------------------------
// Contacts

#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityView {
    pub inbox_id: Uuid,
    pub inbox_name: String,
    /// generic, whatsapp, telegram or web.
    pub inbox_kind: String,
    /// The id on the channel (phone number, chat id, visitor id).
    pub external_id: String,
    /// The contact this identity was first known as (itself, or a contact merged into it).
    pub contact_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContactConversation {
    pub id: Uuid,
    pub inbox_id: Uuid,
    pub status: String,
    /// RFC 3339.
    pub last_activity_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContactDetail {
    pub id: Uuid,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub identities: Vec<IdentityView>,
    /// RFC 3339: when the contact was first known.
    pub first_seen_at: String,
    /// RFC 3339: its newest message to us; `null` if it never wrote.
    pub last_seen_at: Option<String>,
    /// Newest activity first (at most 100), the ones the caller may read.
    pub conversations: Vec<ContactConversation>,
}

/// A contact, and with it the contact a merged one now belongs to; 404 for an agent who works
/// none of the inboxes the person is known in.
async fn contact_of(state: &AppState, principal: &Principal, id: Uuid) -> Result<ContactRow, ApiError> {
    let row = store::get_contact(&state.db, principal.tenant, id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found("contact"))?;
    let person = match row.merged_into {
        Some(survivor) => store::get_contact(&state.db, principal.tenant, survivor)
            .await
            .map_err(ApiError::store)?
            .ok_or_else(|| ApiError::not_found("contact"))?,
        None => row,
    };
    if let Some(readable) = readable_inboxes(state, principal).await? {
        let identities = store::identities(&state.db, principal.tenant, person.id).await.map_err(ApiError::store)?;
        if !identities.iter().any(|identity| readable.contains(&identity.inbox_id)) {
            return Err(ApiError::not_found("contact"));
        }
    }
    Ok(person)
}

async fn contact_detail(state: &AppState, principal: &Principal, row: ContactRow) -> Result<ContactDetail, ApiError> {
    let tenant = principal.tenant;
    let readable = readable_inboxes(state, principal).await?;
    let (identities, conversations, last_seen) =
        store::contact_panel(&state.db, tenant, row.id).await.map_err(ApiError::store)?;
    Ok(ContactDetail {
        id: row.id,
        name: row.name,
        email: row.email,
        phone: row.phone,
        identities: identities
            .into_iter()
            .map(|identity| IdentityView {
                inbox_id: identity.inbox_id,
                inbox_name: identity.inbox_name,
                inbox_kind: identity.inbox_kind,
                external_id: identity.external_id,
                contact_id: identity.contact_id,
            })
            .collect(),
        first_seen_at: rfc3339(row.created_at),
        last_seen_at: last_seen.map(rfc3339),
        conversations: conversations
            .into_iter()
            .filter(|(_, inbox, ..)| readable.as_ref().is_none_or(|inboxes| inboxes.contains(inbox)))
            .map(|(id, inbox_id, status, at)| ContactConversation {
                id,
                inbox_id,
                status,
                last_activity_at: rfc3339(at),
            })
            .collect(),
    })
}

/// A contact: its details, channel identities, when it was first and last seen, and its other
/// conversations. A merged contact's id answers with the contact it was merged into.
#[utoipa::path(
    get,
    path = "/v1/contacts/{id}",
    tag = "workspace",
    params(("id" = Uuid, Path, description = "Contact id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The contact", body = ContactDetail),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read contacts", body = ErrorBody),
        (status = 404, description = "No such contact in this tenant", body = ErrorBody),
    )
)]
pub async fn get_contact(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ContactDetail>, ApiError> {
    principal.require(CONVERSATION_ROLES, "read contacts")?;
    let row = contact_of(&state, &principal, id).await?;
    Ok(Json(contact_detail(&state, &principal, row).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactPatch {
    /// 1 to 200 characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0085\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: Option<String>,
    #[schema(
        max_length = 320,
        pattern = "^[^\\s\\u0085@\\u0000-\\u001F\\u007F-\\u009F]+@[^\\s\\u0085@\\u0000-\\u001F\\u007F-\\u009F]*\\.[^\\s\\u0085@\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub email: Option<String>,
    /// Digits, spaces, `+`, `-`, `(` and `)`: 3 to 32 characters.
    #[schema(pattern = "^[0-9+() -]{3,32}$")]
    pub phone: Option<String>,
}

/// Edits a contact's name, e-mail or phone (an absent field is unchanged).
#[utoipa::path(
    patch,
    path = "/v1/contacts/{id}",
    tag = "workspace",
    params(("id" = Uuid, Path, description = "Contact id")),
    request_body = ContactPatch,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the change is appended", body = AcceptedView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not edit contacts", body = ErrorBody),
        (status = 404, description = "No such contact in this tenant", body = ErrorBody),
        (status = 422, description = "Nothing to change, or a field is invalid", body = ErrorBody),
    )
)]
pub async fn update_contact(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<ContactPatch>,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    principal.require(CONVERSATION_ROLES, "edit contacts")?;
    let name = request.name.as_deref().map(|raw| short_name("name", raw, 200)).transpose()?;
    let email = match request.email.as_deref() {
        Some(raw) => {
            let email = chatdesk_core::spaces::trim(raw).to_lowercase();
            if !chatdesk_core::auth::is_email(&email) {
                return Err(ApiError::invalid_field("email", "is not an e-mail address"));
            }
            Some(email)
        }
        None => None,
    };
    let phone = match request.phone.as_deref() {
        Some(raw) => {
            let phone = raw.trim();
            let valid = (3..=32).contains(&phone.len())
                && phone.bytes().all(|byte| byte.is_ascii_digit() || b"+() -".contains(&byte))
                && phone.bytes().any(|byte| byte.is_ascii_digit());
            if !valid {
                return Err(ApiError::invalid_field("phone", "must be 3 to 32 digits, spaces, '+', '-', '(' or ')'"));
            }
            Some(phone.to_owned())
        }
        None => None,
    };
    if name.is_none() && email.is_none() && phone.is_none() {
        return Err(ApiError::invalid_field("name", "name, email or phone must be given"));
    }
    let contact = contact_of(&state, &principal, id).await?;
    let event = Event::ContactUpdated(ContactUpdated {
        contact_id: contact.id,
        name,
        email,
        phone,
        by: Some(actor(&principal)),
    });
    append_contact_event(&state, principal.tenant, &event).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// The other contact, the same person: its conversations move to this one.
    pub contact_id: Uuid,
}

/// Merges another contact of the same person into this one: its conversations follow, and its
/// channel identity keeps reaching this contact.
#[utoipa::path(
    post,
    path = "/v1/contacts/{id}/merge",
    tag = "workspace",
    params(("id" = Uuid, Path, description = "The contact that stays")),
    request_body = MergeRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the merge is appended", body = AcceptedView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not merge contacts", body = ErrorBody),
        (status = 404, description = "Either contact is not in this tenant", body = ErrorBody),
        (status = 422, description = "Both ids name the same contact", body = ErrorBody),
    )
)]
pub async fn merge_contacts(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<MergeRequest>,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    principal.require(CONVERSATION_ROLES, "merge contacts")?;
    let kept = contact_of(&state, &principal, id).await?;
    let merged = contact_of(&state, &principal, request.contact_id).await?;
    if kept.id == merged.id {
        return Err(ApiError::invalid_field("contact_id", "is already this contact"));
    }
    let event =
        Event::ContactMerged(ContactMerged { contact_id: kept.id, merged_id: merged.id, by: actor(&principal) });
    append_contact_event(&state, principal.tenant, &event).await
}

async fn append_contact_event(
    state: &AppState,
    tenant: Uuid,
    event: &Event,
) -> Result<(StatusCode, Json<AcceptedView>), ApiError> {
    let event_id = EventId::new();
    let entry = Envelope::of(TenantId(tenant), event).with_event_id(event_id);
    let appended = state.producer.append_event(&entry).await.map_err(ApiError::append)?;
    Ok((StatusCode::ACCEPTED, Json(AcceptedView { event_id: event_id.0, offset: Some(appended.id.to_string()) })))
}

// ---------------------------------------------------------------------------------------------
// Search

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Words to find (1 to 200 characters): `"a phrase"`, `-word` to leave out, `or`.
    #[param(min_length = 1, max_length = 200)]
    pub q: String,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,5}$")]
    pub cursor: Option<String>,
    /// 1 to 50, default 20.
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageHitView {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    /// The message's stream offset.
    pub offset: String,
    /// inbound or outbound.
    pub direction: String,
    /// Up to two fragments of the text around the matched words, which are marked by
    /// U+2063 `[` before and `]` U+2063 after (plain text: escape it, then highlight the marks).
    pub snippet: String,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContactHitView {
    pub id: Uuid,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub external_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    /// Best match first, then newest.
    pub messages: Vec<MessageHitView>,
    /// Contacts whose name, e-mail, phone or channel id contains `q` (first page only, at most 10).
    pub contacts: Vec<ContactHitView>,
    /// Pass as `cursor` for more messages; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Searches the tenant's messages (full text, ranked, with highlighted snippets) and contacts.
#[utoipa::path(
    get,
    path = "/v1/search",
    tag = "workspace",
    params(SearchQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What matched", body = SearchResults),
        (status = 400, description = "A query parameter is invalid", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read conversations", body = ErrorBody),
        (status = 503, description = "Too many searches at once, or one that took too long (busy); Retry-After says when to try again", body = ErrorBody),
    )
)]
pub async fn search(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<SearchResults>, ApiError> {
    principal.require(CONVERSATION_ROLES, "search conversations")?;
    let cleaned = chatdesk_core::envelope::text_without_nul(&query.q);
    let q = chatdesk_core::spaces::trim(&cleaned);
    if q.is_empty() || query.q.chars().count() > 200 {
        return Err(bad_query("q", "must be 1 to 200 characters, not only spaces"));
    }
    let limit = match query.limit.unwrap_or(20) {
        limit @ 1..=50 => i64::from(limit),
        other => return Err(bad_query("limit", format!("must be between 1 and 50, got {other}"))),
    };
    let offset: i64 = match query.cursor.as_deref() {
        Some(cursor) => cursor
            .parse::<u32>()
            .ok()
            .filter(|offset| *offset < 100_000)
            .map(i64::from)
            .ok_or_else(|| bad_query("cursor", "not a cursor returned by this API"))?,
        None => 0,
    };
    // Searches share the database with everything else: a few at a time per process, and each
    // one bounded in time, so no tenant's searches can hold the pool.
    let busy =
        || ApiError::Busy { message: "too many searches at once; try again shortly".into(), retry_after_seconds: 1 };
    let _slot = state.searches.clone().try_acquire_owned().map_err(|_| busy())?;
    let readable = readable_inboxes(&state, &principal).await?;
    // The two searches run side by side: a first page waits for the slower, not for both.
    let messages = store::search_messages(&state.db, principal.tenant, q, readable.as_deref(), offset, limit + 1);
    let contacts = async {
        if offset == 0 {
            store::search_contacts(&state.db, principal.tenant, q, readable.as_deref(), 10).await
        } else {
            Ok(Vec::new())
        }
    };
    let (hits, contacts) = tokio::join!(messages, contacts);
    let mut hits = hits.map_err(ApiError::store)?.ok_or_else(|| ApiError::Busy {
        message: "the search took too long; add words to narrow it".into(),
        retry_after_seconds: 1,
    })?;
    let contacts = contacts.map_err(ApiError::store)?;
    let next_cursor = (hits.len() as i64 > limit).then(|| (offset + limit).to_string());
    hits.truncate(limit as usize);
    Ok(Json(SearchResults {
        messages: hits
            .into_iter()
            .map(|hit| MessageHitView {
                message_id: hit.event_id,
                conversation_id: hit.conversation_id,
                offset: hit.stream_offset,
                direction: hit.direction,
                snippet: hit.snippet,
                created_at: rfc3339(hit.created_at),
            })
            .collect(),
        contacts: contacts
            .into_iter()
            .map(|contact| ContactHitView {
                id: contact.id,
                name: contact.name,
                email: contact.email,
                phone: contact.phone,
                external_id: contact.external_id,
            })
            .collect(),
        next_cursor,
    }))
}

// ---------------------------------------------------------------------------------------------
// Users and inbox members

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    /// The name to show: the user's name, else its e-mail's local part.
    pub name: String,
    pub email: String,
    /// owner, admin, agent, marketer or sre.
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<UserView>,
}

/// The tenant's users: whom to mention, assign or make an inbox member.
#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "workspace",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The users", body = UserList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read conversations", body = ErrorBody),
    )
)]
pub async fn list_users(State(state): State<AppState>, principal: Principal) -> Result<Json<UserList>, ApiError> {
    principal.require(CONVERSATION_ROLES, "list users")?;
    let users = store::users_of(&state.db, principal.tenant).await.map_err(ApiError::store)?;
    Ok(Json(UserList {
        items: users
            .into_iter()
            .map(|(id, name, email, role)| UserView { id, name: display_name(name.as_deref(), &email), email, role })
            .collect(),
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Members {
    /// User ids (owners, admins or agents of the tenant; at most 500). Empty: the inbox is the
    /// whole team's.
    #[schema(max_items = 500)]
    pub user_ids: Vec<Uuid>,
}

async fn inbox_of_tenant(state: &AppState, principal: &Principal, inbox: Uuid) -> Result<(), ApiError> {
    match chatdesk_store::directory::inbox_by_id(&state.db, inbox).await.map_err(ApiError::store)? {
        Some(record) if record.tenant_id == principal.tenant => Ok(()),
        _ => Err(ApiError::not_found("inbox")),
    }
}

/// The agents who work an inbox. An inbox with members is read only by them (and by owners and
/// admins); one without is the whole team's.
#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/members",
    tag = "inboxes",
    params(("id" = Uuid, Path, description = "Inbox id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The members", body = Members),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read inboxes", body = ErrorBody),
        (status = 404, description = "No such inbox in this tenant", body = ErrorBody),
    )
)]
pub async fn get_members(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Members>, ApiError> {
    principal.require(CONVERSATION_ROLES, "read inboxes")?;
    inbox_of_tenant(&state, &principal, id).await?;
    let user_ids = store::inbox_members(&state.db, principal.tenant, id).await.map_err(ApiError::store)?;
    Ok(Json(Members { user_ids }))
}

/// Sets who works an inbox (owners and admins).
#[utoipa::path(
    put,
    path = "/v1/inboxes/{id}/members",
    tag = "inboxes",
    params(("id" = Uuid, Path, description = "Inbox id")),
    request_body = Members,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The members now", body = Members),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only owners and admins set members", body = ErrorBody),
        (status = 404, description = "No such inbox in this tenant", body = ErrorBody),
        (status = 422, description = "A user is not an owner, admin or agent of this tenant", body = ErrorBody),
    )
)]
pub async fn put_members(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<Members>,
) -> Result<Json<Members>, ApiError> {
    principal.require(ADMIN_ROLES, "set inbox members")?;
    let mut users = request.user_ids;
    if users.len() > 500 {
        return Err(ApiError::invalid_field("user_ids", "at most 500 users"));
    }
    users.sort_unstable();
    users.dedup();
    inbox_of_tenant(&state, &principal, id).await?;
    if !store::set_inbox_members(&state.db, principal.tenant, id, &users).await.map_err(ApiError::store)? {
        return Err(ApiError::invalid_field("user_ids", "every user must be an owner, admin or agent of this tenant"));
    }
    announce_routing_change(&state, id).await;
    Ok(Json(Members { user_ids: users }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// `manual`: agents pick or are assigned by hand. `round_robin`: each new conversation (and
    /// each reopened one without an agent) is assigned at once, in turn, to a member who is online
    /// and holds fewer open conversations than `agent_capacity`; when nobody qualifies it stays
    /// unassigned.
    #[schema(pattern = "^(manual|round_robin)$")]
    pub mode: String,
    /// 1 to 1000 open conversations per agent.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 1, maximum = 1000)]
    pub agent_capacity: u32,
    /// `round_robin`: when a member has been offline this many seconds (1 to 86400), its open
    /// conversations with unanswered customer messages go to members who are online and have
    /// room; `null` (the default): they stay.
    #[serde(default, deserialize_with = "whole_or_null")]
    #[schema(minimum = 1, maximum = 86400)]
    pub reassign_after_seconds: Option<u32>,
}

/// A whole number as JSON means it: `713.0` is 713 (JSON Schema's `integer` says so too).
fn whole<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    number
        .as_u64()
        .or_else(|| number.as_f64().filter(|value| value.fract() == 0.0 && *value >= 0.0).map(|value| value as u64))
        .and_then(|value| u32::try_from(value).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("expected a whole number, got {number}")))
}

fn whole_or_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    match Option::<serde_json::Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(number) => whole(serde_json::Value::Number(number)).map(Some).map_err(serde::de::Error::custom),
    }
}

/// How an inbox's conversations are assigned.
#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/routing",
    tag = "inboxes",
    params(("id" = Uuid, Path, description = "Inbox id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The inbox's routing", body = Routing),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not read inboxes", body = ErrorBody),
        (status = 404, description = "No such inbox in this tenant", body = ErrorBody),
    )
)]
pub async fn get_routing(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Routing>, ApiError> {
    principal.require(CONVERSATION_ROLES, "read inboxes")?;
    let routing = store::inbox_routing(&state.db, principal.tenant, id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found("inbox"))?;
    Ok(Json(Routing {
        mode: routing.mode,
        agent_capacity: routing.agent_capacity.max(1) as u32,
        reassign_after_seconds: routing.reassign_after_seconds.map(|seconds| seconds.max(1) as u32),
    }))
}

/// Sets how an inbox's conversations are assigned (owners and admins). Members are set with
/// `PUT /v1/inboxes/{id}/members`; round robin assigns only among members.
#[utoipa::path(
    put,
    path = "/v1/inboxes/{id}/routing",
    tag = "inboxes",
    params(("id" = Uuid, Path, description = "Inbox id")),
    request_body = Routing,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The inbox's routing now", body = Routing),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only owners and admins set routing", body = ErrorBody),
        (status = 404, description = "No such inbox in this tenant", body = ErrorBody),
        (status = 422, description = "mode or agent_capacity is invalid", body = ErrorBody),
    )
)]
pub async fn put_routing(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<Routing>,
) -> Result<Json<Routing>, ApiError> {
    principal.require(ADMIN_ROLES, "set inbox routing")?;
    if !matches!(request.mode.as_str(), "manual" | "round_robin") {
        return Err(ApiError::invalid_field("mode", "must be manual or round_robin"));
    }
    if !(1..=1000).contains(&request.agent_capacity) {
        return Err(ApiError::invalid_field("agent_capacity", "must be between 1 and 1000"));
    }
    if request.reassign_after_seconds.is_some_and(|seconds| !(1..=86_400).contains(&seconds)) {
        return Err(ApiError::invalid_field("reassign_after_seconds", "must be between 1 and 86400, or null"));
    }
    let capacity = request.agent_capacity as i32;
    let reassign = request.reassign_after_seconds.map(|seconds| seconds as i32);
    if !store::set_inbox_routing(&state.db, principal.tenant, id, &request.mode, capacity, reassign)
        .await
        .map_err(ApiError::store)?
    {
        return Err(ApiError::not_found("inbox"));
    }
    announce_routing_change(&state, id).await;
    Ok(Json(request))
}

/// Routers keep each inbox's routing and members; they drop their copy when the inbox's change
/// is announced, and one that misses it reads the inbox again within
/// `chatdesk_workers::routing::ROUTING_MAX_AGE`.
async fn announce_routing_change(state: &AppState, inbox: Uuid) {
    if let Err(error) = state.inboxes.announce_change(inbox).await {
        tracing::warn!(error = %error, %inbox, "cannot announce an inbox's routing change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_filled_and_unknown_ones_kept() {
        let values = [("contact.name", Some("Ana")), ("agent.name", Some("Bo")), ("contact.email", None)];
        assert_eq!(render("Hi {{contact.name}}, I'm {{ agent.name }}.", &values), "Hi Ana, I'm Bo.");
        assert_eq!(render("mail: {{contact.email}}!", &values), "mail: !");
        assert_eq!(render("{{order.id}} and {{contact.name", &values), "{{order.id}} and {{contact.name");
        assert_eq!(render("{{contact.name}}{{contact.name}}", &values), "AnaAna");
        assert_eq!(render("é {{x}} ü", &values), "é {{x}} ü");
    }
}
