//! Bot builders' routes: an inbox's auto-reply settings (the model's key is write-only), a test
//! chat that talks to the saved bot without a channel, the loaded dialog flows, the tenant's
//! model budget, and the orders flows took.

use axum::Json;
use axum::extract::State;
use chatdesk_autoreply::bot::{Move, one_message};
use chatdesk_autoreply::flow::{Button, Progress};
use chatdesk_autoreply::llm::{Role as TurnRole, Turn};
use chatdesk_core::autoreply::{AutoReply, Mode};
use chatdesk_store::directory::{self, InboxRecord};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{ADMIN_ROLES, CONVERSATION_ROLES, Principal};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::ErrorBody;

const MAX_TEST_MESSAGES: usize = 50;
/// Test chats one API process runs at once, and one tenant of them: each may hold a model's
/// answer (up to 1 MiB) for its whole timeout, so they are bounded like the bot's own answers.
const TEST_CHATS_PER_PROCESS: usize = 32;
const TEST_CHATS_PER_TENANT: usize = 4;

/// The test chats in flight, in all and per tenant.
struct TestChats {
    all: tokio::sync::Semaphore,
    by_tenant: std::sync::Mutex<std::collections::HashMap<Uuid, usize>>,
}

static TEST_CHATS: std::sync::LazyLock<TestChats> = std::sync::LazyLock::new(|| TestChats {
    all: tokio::sync::Semaphore::new(TEST_CHATS_PER_PROCESS),
    by_tenant: std::sync::Mutex::default(),
});

/// A tenant's place among the test chats in flight, given back when dropped.
struct TestChatSlot {
    tenant: Uuid,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl TestChatSlot {
    fn take(tenant: Uuid) -> Result<Self, ApiError> {
        let busy = || ApiError::Busy {
            message: "too many test chats at once; try again in a moment".into(),
            retry_after_seconds: 1,
        };
        let permit = TEST_CHATS.all.try_acquire().map_err(|_| busy())?;
        let mut by_tenant = TEST_CHATS.by_tenant.lock().expect("test chats lock");
        let count = by_tenant.entry(tenant).or_default();
        if *count >= TEST_CHATS_PER_TENANT {
            return Err(busy());
        }
        *count += 1;
        Ok(Self { tenant, _permit: permit })
    }
}

impl Drop for TestChatSlot {
    fn drop(&mut self) {
        let mut by_tenant = TEST_CHATS.by_tenant.lock().expect("test chats lock");
        if let Some(count) = by_tenant.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                by_tenant.remove(&self.tenant);
            }
        }
    }
}
const MAX_TEST_TEXT: usize = 4_096;

async fn tenant_inbox(state: &AppState, principal: &Principal, id: Uuid) -> Result<InboxRecord, ApiError> {
    directory::inbox_by_id(&state.db, id)
        .await
        .map_err(ApiError::store)?
        .filter(|inbox| inbox.tenant_id == principal.tenant)
        .ok_or_else(|| ApiError::NotFound { message: "no such inbox".into() })
}

/// An inbox's auto-reply settings as shown: everything but the model's API key.
#[derive(Debug, Serialize, ToSchema)]
pub struct AutoReplyView {
    pub inbox_id: Uuid,
    /// off, llm or flow.
    pub mode: String,
    /// The model's settings (`api_key_set` says whether a key is stored; the key is never shown).
    #[schema(value_type = Option<Object>)]
    pub llm: Option<serde_json::Value>,
    /// The dialog flow (`mode: flow`).
    pub flow: Option<String>,
    /// Quiet period: customer messages closer together than this are answered once.
    pub debounce_ms: i64,
    /// The longest wait after the first unanswered message.
    pub max_wait_ms: i64,
    /// Bot replies per conversation before it hands off (reason `cap`).
    pub max_replies: u32,
    /// Words with which a customer asks for a human (reason `keyword`).
    pub handoff_keywords: Vec<String>,
    /// When the bot answers: only outside or only inside business hours; `null`: always.
    #[schema(value_type = Option<Object>)]
    pub hours: Option<serde_json::Value>,
    /// Resolving a conversation ends its bot session: the bot answers again afterwards.
    pub reenable_on_resolve: bool,
    /// Told to the customer when the bot hands them over on its own account; `null`: nothing.
    pub handoff_text: Option<String>,
}

fn view(inbox: Uuid, settings: &AutoReply) -> AutoReplyView {
    let shown = settings.view();
    let llm = shown.settings.llm.as_ref().map(|llm| {
        let mut value = serde_json::to_value(llm).unwrap_or_default();
        value["api_key_set"] = serde_json::Value::Bool(shown.api_key_set);
        value
    });
    let mode = serde_json::to_value(settings.mode).ok().and_then(|mode| mode.as_str().map(str::to_owned));
    AutoReplyView {
        inbox_id: inbox,
        mode: mode.unwrap_or_else(|| "off".into()),
        llm,
        flow: shown.settings.flow.clone(),
        debounce_ms: shown.settings.debounce_ms,
        max_wait_ms: shown.settings.max_wait_ms,
        max_replies: shown.settings.max_replies,
        handoff_keywords: shown.settings.handoff_keywords.clone(),
        hours: shown.settings.hours.as_ref().and_then(|hours| serde_json::to_value(hours).ok()),
        reenable_on_resolve: shown.settings.reenable_on_resolve,
        handoff_text: shown.settings.handoff_text.clone(),
    }
}

#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/autoreply",
    tag = "autoreply",
    params(("id" = Uuid, Path, description = "Inbox id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The inbox's auto-reply settings (never the model's key)", body = AutoReplyView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only owners and admins configure bots", body = ErrorBody),
        (status = 404, description = "No such inbox in this tenant", body = ErrorBody),
    )
)]
pub async fn get_autoreply(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<AutoReplyView>, ApiError> {
    principal.require(ADMIN_ROLES, "configure bots")?;
    let inbox = tenant_inbox(&state, &principal, id).await?;
    Ok(Json(view(inbox.id, &AutoReply::from_stored(&inbox.auto_reply))))
}

#[utoipa::path(
    put,
    path = "/v1/inboxes/{id}/autoreply",
    tag = "autoreply",
    params(("id" = Uuid, Path, description = "Inbox id")),
    request_body(content = AutoReply, description = "`{\"mode\": \"off\"}`, `{\"mode\": \"flow\", \"flow\": \"order\"}` or \
        `{\"mode\": \"llm\", \"llm\": {…}}`, with the optional settings. Leaving `llm.api_key` out keeps the stored key \
        (for the same endpoint)."),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The settings as saved", body = AutoReplyView),
        (status = 400, description = "Malformed JSON or an unknown field", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only owners and admins configure bots", body = ErrorBody),
        (status = 404, description = "No such inbox in this tenant", body = ErrorBody),
        (status = 422, description = "A setting is invalid (`details.field` names it): an unknown flow, a timeout out of range, \
            a base URL that is not http(s) or points at a private address", body = ErrorBody),
    )
)]
pub async fn put_autoreply(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<AutoReplyView>, ApiError> {
    principal.require(ADMIN_ROLES, "configure bots")?;
    let inbox = tenant_inbox(&state, &principal, id).await?;
    if !body.is_object() {
        return Err(ApiError::invalid_field("body", "must be a JSON object of settings"));
    }
    let mut settings: AutoReply = serde_path_to_error::deserialize(body).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::invalid_field(&field, error.into_inner().to_string())
    })?;
    settings.keep_key_from(&AutoReply::from_stored(&inbox.auto_reply));
    settings
        .validate(|name| state.bot.flows.get(name).is_some())
        .map_err(|invalid| ApiError::invalid_field(&invalid.field, invalid.reason))?;
    if let Some(llm) = &settings.llm {
        crate::inboxes::check_destination(
            &state.ingress.outbound,
            chatdesk_core::spaces::trim(&llm.base_url),
            "llm.base_url",
        )
        .await?;
    }
    let stored = serde_json::to_value(&settings).map_err(|error| ApiError::Internal(Box::new(error)))?;
    let saved = directory::set_auto_reply(&state.db, principal.tenant, id, &stored)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::NotFound { message: "no such inbox".into() })?;
    // Every process drops its cached copy, so the bot uses the new settings at once.
    if let Err(error) = state.inboxes.announce_change(id).await {
        // Other processes notice within the cache's maximum age.
        tracing::warn!(error = %error, inbox = %id, "cannot announce the inbox change");
    }
    tracing::info!(inbox = %id, mode = ?settings.mode, "auto-reply settings changed");
    Ok(Json(view(saved.id, &AutoReply::from_stored(&saved.auto_reply))))
}

/// One turn of a test conversation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestTurn {
    /// customer or bot.
    pub role: String,
    #[schema(max_length = 4096)]
    pub text: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestChat {
    /// The conversation so far, oldest first; the customer's last messages are answered.
    #[schema(min_items = 1, max_items = 50)]
    pub messages: Vec<TestTurn>,
    /// The `flow_state` of the previous answer (flow mode).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub flow_state: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestReply {
    pub text: String,
    /// Buttons the channel shows under the text (id and title).
    #[schema(value_type = Vec<Object>)]
    pub buttons: Vec<Button>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestHandoff {
    pub reason: String,
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestAnswer {
    pub replies: Vec<TestReply>,
    /// The bot would hand the conversation to a human.
    pub handoff: Option<TestHandoff>,
    /// Send back with the next turn (flow mode).
    #[schema(value_type = Option<Object>)]
    pub flow_state: Option<serde_json::Value>,
    /// The order the flow would take (nothing is stored by a test).
    #[schema(value_type = Option<Object>)]
    pub order: Option<serde_json::Value>,
}

/// A handoff, with the inbox's `handoff_text` as what the customer would be told.
fn handoff(settings: &AutoReply, reason: chatdesk_core::events::HandoffReason, detail: Option<String>) -> TestAnswer {
    TestAnswer {
        replies: settings
            .handoff_text
            .iter()
            .map(|text| TestReply { text: text.clone(), buttons: Vec::new() })
            .collect(),
        handoff: Some(TestHandoff { reason: reason.as_str().to_owned(), detail }),
        flow_state: None,
        order: None,
    }
}

#[utoipa::path(
    post,
    path = "/v1/inboxes/{id}/autoreply/test",
    tag = "autoreply",
    params(("id" = Uuid, Path, description = "Inbox id")),
    request_body = TestChat,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What the saved bot answers (model calls count against the daily budget; nothing is sent or stored)", body = TestAnswer),
        (status = 400, description = "Malformed JSON or an unknown field", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only owners and admins configure bots", body = ErrorBody),
        (status = 404, description = "No such inbox in this tenant", body = ErrorBody),
        (status = 409, description = "Auto-reply is off for the inbox: choose a mode and save first", body = ErrorBody),
        (status = 422, description = "A message is invalid", body = ErrorBody),
        (status = 503, description = "Too many test chats at once (4 per tenant, 32 per process); see Retry-After", body = ErrorBody),
    )
)]
pub async fn test_autoreply(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(chat): ApiJson<TestChat>,
) -> Result<Json<TestAnswer>, ApiError> {
    principal.require(ADMIN_ROLES, "test bots")?;
    let inbox = tenant_inbox(&state, &principal, id).await?;
    let settings = AutoReply::from_stored(&inbox.auto_reply);
    if !settings.is_on() {
        return Err(ApiError::Conflict {
            message: "auto-reply is off for this inbox: choose a mode and save first".into(),
        });
    }
    if chat.messages.is_empty() || chat.messages.len() > MAX_TEST_MESSAGES {
        return Err(ApiError::invalid_field("messages", format!("send 1 to {MAX_TEST_MESSAGES} messages")));
    }
    let mut turns = Vec::with_capacity(chat.messages.len());
    for (index, message) in chat.messages.iter().enumerate() {
        let field = format!("messages[{index}]");
        let role = match message.role.as_str() {
            "customer" => TurnRole::User,
            "bot" => TurnRole::Assistant,
            _ => return Err(ApiError::invalid_field(&format!("{field}.role"), "must be customer or bot")),
        };
        if message.text.trim().is_empty() || message.text.contains('\0') || message.text.chars().count() > MAX_TEST_TEXT
        {
            return Err(ApiError::invalid_field(
                &format!("{field}.text"),
                format!("must be 1 to {MAX_TEST_TEXT} characters without U+0000"),
            ));
        }
        turns.push(Turn { role, text: message.text.clone() });
    }
    // The customer's messages since the bot last spoke are the ones answered.
    let unanswered: Vec<&Turn> = turns
        .iter()
        .rev()
        .take_while(|turn| turn.role == TurnRole::User)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if unanswered.is_empty() {
        return Err(ApiError::invalid_field("messages", "the last message must be the customer's"));
    }
    if let Some(asked) = unanswered.iter().find(|turn| settings.asks_for_human(&turn.text)) {
        return Ok(Json(handoff(&settings, chatdesk_core::events::HandoffReason::Keyword, Some(asked.text.clone()))));
    }
    let _slot = TestChatSlot::take(principal.tenant)?;
    let bot = &state.bot;
    match settings.mode {
        Mode::Off => unreachable!("checked above"),
        Mode::Llm => {
            let llm = settings.llm.as_ref().ok_or_else(|| ApiError::invalid_field("llm", "is not set"))?;
            let bot_turns = turns.iter().filter(|turn| turn.role == TurnRole::Assistant).count();
            if bot_turns >= settings.max_replies as usize {
                let detail = Some(format!("the bot sent {bot_turns} replies, its maximum"));
                return Ok(Json(handoff(&settings, chatdesk_core::events::HandoffReason::Cap, detail)));
            }
            let context = turns.len().saturating_sub(llm.max_context_messages as usize);
            match bot.llm_move(principal.tenant, llm, &turns[context..]).await {
                Move::Handoff { reason, detail } => Ok(Json(handoff(&settings, reason, detail))),
                Move::Say(prompts) => Ok(Json(TestAnswer {
                    replies: prompts
                        .into_iter()
                        .map(|prompt| TestReply { text: prompt.text, buttons: prompt.buttons })
                        .collect(),
                    handoff: None,
                    flow_state: None,
                    order: None,
                })),
            }
        }
        Mode::Flow => {
            let name = settings.flow.clone().unwrap_or_default();
            let progress: Option<Progress> = match chat.flow_state {
                None | Some(serde_json::Value::Null) => None,
                Some(value) => Some(
                    serde_json::from_value(value)
                        .map_err(|error| ApiError::invalid_field("flow_state", format!("not a flow state: {error}")))?,
                ),
            };
            let messages: Vec<(String, Option<String>)> =
                unanswered.iter().map(|turn| (turn.text.clone(), None)).collect();
            let step = bot
                .flow_step(&name, progress, &messages)
                .ok_or_else(|| ApiError::invalid_field("flow", format!("no flow named {name:?} is loaded")))?;
            let mut say = step.say;
            let mut order = None;
            if let Some((completed, _)) = &step.completed {
                say.push(chatdesk_autoreply::flow::Prompt {
                    text: bot.finish_text(&name, &completed.fields, "TEST"),
                    buttons: Vec::new(),
                });
                order = Some(serde_json::json!({ "fields": completed.fields }));
            }
            let replies =
                one_message(&say).map(|(text, buttons)| vec![TestReply { text, buttons }]).unwrap_or_default();
            Ok(Json(TestAnswer {
                replies,
                handoff: None,
                flow_state: serde_json::to_value(&step.progress).ok(),
                order,
            }))
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowList {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<chatdesk_autoreply::flow::FlowSummary>,
}

#[utoipa::path(
    get,
    path = "/v1/autoreply/flows",
    tag = "autoreply",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The dialog flows this deployment loaded (name, description, states)", body = FlowList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only owners and admins configure bots", body = ErrorBody),
    )
)]
pub async fn list_flows(State(state): State<AppState>, principal: Principal) -> Result<Json<FlowList>, ApiError> {
    principal.require(ADMIN_ROLES, "configure bots")?;
    Ok(Json(FlowList { items: state.bot.flows.summaries() }))
}

#[utoipa::path(
    get,
    path = "/v1/autoreply/usage",
    tag = "autoreply",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Today's (UTC) model calls and tokens against the tenant's daily budget (`null` limit: none)", body = Object),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Only owners and admins configure bots", body = ErrorBody),
    )
)]
pub async fn usage(State(state): State<AppState>, principal: Principal) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require(ADMIN_ROLES, "configure bots")?;
    let usage = state.bot.budget.usage(principal.tenant).await.map_err(|error| {
        tracing::warn!(error = %error, "cannot read the model budget");
        ApiError::Unavailable { dependency: "Redis" }
    })?;
    Ok(Json(serde_json::to_value(usage).unwrap_or_default()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OrderQuery {
    /// The previous page's `next_cursor`.
    #[param(pattern = "^[0-9]{1,16}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    pub inbox_id: Option<Uuid>,
    pub conversation_id: Uuid,
    pub contact_id: Uuid,
    pub flow: String,
    /// The fields the flow collected (address, phone, quantity, …).
    #[schema(value_type = Object)]
    pub fields: serde_json::Value,
    /// new, confirmed or cancelled.
    pub status: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

fn parse_cursor(cursor: &str) -> Option<(OffsetDateTime, Uuid)> {
    let (micros, id) = cursor.split_once('_')?;
    let micros: u64 = micros.parse().ok()?;
    Some((OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros).checked_mul(1_000)?).ok()?, id.parse().ok()?))
}

#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "autoreply",
    params(OrderQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Orders dialog flows took, newest first", body = OrderPage),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not see orders (owner, admin and agent may)", body = ErrorBody),
        (status = 422, description = "An invalid cursor or limit", body = ErrorBody),
    )
)]
pub async fn list_orders(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<OrderQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    principal.require(CONVERSATION_ROLES, "see orders")?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "must be 1 to 200"));
    }
    let after = match &query.cursor {
        None => None,
        Some(cursor) => {
            Some(parse_cursor(cursor).ok_or_else(|| ApiError::invalid_field("cursor", "not a cursor of this list"))?)
        }
    };
    let rows = chatdesk_store::autoreply::orders(&state.db, principal.tenant, after, i64::from(limit) + 1)
        .await
        .map_err(ApiError::store)?;
    let more = rows.len() > limit as usize;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next_cursor = more
        .then(|| rows.last().map(|row| format!("{}_{}", row.created_at.unix_timestamp_nanos() / 1_000, row.id)))
        .flatten();
    let items = rows
        .iter()
        .map(|row| OrderView {
            id: row.id,
            inbox_id: row.inbox_id,
            conversation_id: row.conversation_id,
            contact_id: row.contact_id,
            flow: row.flow.clone(),
            fields: row.fields.clone(),
            status: row.status.clone(),
            created_at: row.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        })
        .collect();
    Ok(Json(OrderPage { items, next_cursor }))
}
