//! A tenant's inboxes: listing them, and setting how they send (the generic channel's outbound
//! URL, WhatsApp and Telegram credentials). Secrets and tokens are write-only.

use axum::Json;
use axum::extract::State;
use chatdesk_core::outbound::OutboundPolicy;
use chatdesk_store::directory::{self, InboxRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{ADMIN_ROLES, Principal};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::openapi::ErrorBody;

const MAX_URL_CHARS: usize = 2048;
const MAX_CREDENTIAL_CHARS: usize = 1024;

#[derive(Debug, Serialize, ToSchema)]
pub struct InboxView {
    pub id: Uuid,
    /// generic, whatsapp, telegram or web.
    pub kind: String,
    pub name: String,
    /// Where the channel posts inbound messages (the widget: where it starts sessions).
    pub webhook_path: String,
    /// The generic channel's outbound URL.
    pub outbound_url: Option<String>,
    /// WhatsApp: the phone number id messages are sent from.
    pub phone_number_id: Option<String>,
    /// Whether a sending credential (WhatsApp access token, Telegram bot token) is set; the
    /// credential itself is never shown.
    pub has_token: bool,
    /// generic: whether only timestamped signatures are accepted.
    pub require_timestamped_signature: bool,
}

impl From<&InboxRecord> for InboxView {
    fn from(inbox: &InboxRecord) -> Self {
        let config = |name: &str| inbox.provider_config.get(name).and_then(|value| value.as_str()).map(str::to_owned);
        Self {
            id: inbox.id,
            kind: inbox.kind.as_str().to_owned(),
            name: inbox.name.clone(),
            webhook_path: inbox.kind.webhook_path(inbox.id),
            outbound_url: inbox.outbound_url.clone(),
            phone_number_id: config("phone_number_id"),
            has_token: config("access_token").is_some() || config("bot_token").is_some(),
            require_timestamped_signature: inbox
                .provider_config
                .get(crate::ingress::generic::TIMESTAMPED_ONLY)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboxList {
    pub items: Vec<InboxView>,
}

#[utoipa::path(
    get,
    path = "/v1/inboxes",
    tag = "inboxes",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The tenant's inboxes, oldest first", body = InboxList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not see inboxes (owner, admin and marketer may)", body = ErrorBody),
    )
)]
pub async fn list_inboxes(State(state): State<AppState>, principal: Principal) -> Result<Json<InboxList>, ApiError> {
    // Marketers pick the inbox a campaign sends from; credentials are never shown to anyone.
    principal.require(crate::campaigns::MARKETING_ROLES, "list inboxes")?;
    let inboxes = directory::inboxes_of(&state.db, principal.tenant).await.map_err(ApiError::store)?;
    Ok(Json(InboxList { items: inboxes.iter().map(InboxView::from).collect() }))
}

/// Fields left out stay as they are; `null` clears one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInbox {
    /// generic: where outbound messages are POSTed (http:// or https://).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 2048, pattern = "^https?://[^\\s\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub outbound_url: Option<Option<String>>,
    /// whatsapp: the phone number id to send from.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 1024, pattern = "^[^\\s\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub phone_number_id: Option<Option<String>>,
    /// whatsapp: the Cloud API access token.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 1024, pattern = "^[^\\s\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub access_token: Option<Option<String>>,
    /// telegram: the bot token.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 1024, pattern = "^[^\\s\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub bot_token: Option<Option<String>>,
    /// generic: accept only timestamped signatures (`t=…,v1=…`), refusing the older `sha256=`
    /// form, with which a captured request can be replayed.
    #[serde(default)]
    pub require_timestamped_signature: Option<bool>,
}

/// Tells a field sent as `null` (`Some(None)`) from a field left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// How long a `PATCH` waits for the outbound URL's host to resolve.
const RESOLVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The same check the sender makes before each call, early: an address written in the URL, and
/// the addresses its host resolves to now. A host that does not resolve yet is accepted (the
/// sender decides at send time, on the addresses it connects to).
pub(crate) async fn check_destination(policy: &OutboundPolicy, url: &str, field: &str) -> Result<(), ApiError> {
    let refused = |reason: String| ApiError::invalid_field(field, reason);
    // Parsed as the HTTP client will parse it when it calls: `127.1.` is 127.0.0.1 to both.
    let parsed = chatdesk_outbound::checked_url(policy, url).map_err(|error| refused(error.to_string()))?;
    // An address written in the URL was decided above; a name is looked up now for early
    // feedback (the call checks the addresses it connects to).
    let Some(name) = parsed.domain().map(str::to_owned) else { return Ok(()) };
    let port = parsed.port_or_known_default().unwrap_or(0);
    let resolved = tokio::time::timeout(RESOLVE_WAIT, tokio::net::lookup_host((name.as_str(), port))).await;
    if let Ok(Ok(addresses)) = resolved {
        let addresses: Vec<std::net::SocketAddr> = addresses.collect();
        if !addresses.is_empty() && !addresses.iter().any(|address| policy.allows_resolved(&name, address.ip())) {
            return Err(refused(chatdesk_core::outbound::Refused::NotPublic.to_string()));
        }
    }
    Ok(())
}

#[utoipa::path(
    patch,
    path = "/v1/inboxes/{id}",
    tag = "inboxes",
    params(("id" = Uuid, Path, description = "Inbox id")),
    request_body = UpdateInbox,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The inbox as it is now", body = InboxView),
        (status = 400, description = "Malformed JSON or an unknown field", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The role may not configure inboxes", body = ErrorBody),
        (status = 404, description = "No such inbox in this tenant", body = ErrorBody),
        (status = 422, description = "A field does not apply to this kind of inbox or is invalid", body = ErrorBody),
    )
)]
pub async fn update_inbox(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(update): ApiJson<UpdateInbox>,
) -> Result<Json<InboxView>, ApiError> {
    principal.require(ADMIN_ROLES, "configure inboxes")?;
    let inbox = directory::inbox_by_id(&state.db, id)
        .await
        .map_err(ApiError::store)?
        .filter(|inbox| inbox.tenant_id == principal.tenant)
        .ok_or_else(|| ApiError::NotFound { message: "no such inbox".into() })?;
    let kind = inbox.kind.as_str();
    if let Some(Some(url)) = &update.outbound_url {
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !scheme_ok
            || url.chars().count() > MAX_URL_CHARS
            || url.contains(|c: char| chatdesk_core::spaces::is_space(c) || c.is_control())
        {
            return Err(ApiError::invalid_field(
                "outbound_url",
                "must be an http:// or https:// URL, without spaces or control characters",
            ));
        }
        check_destination(&state.ingress.outbound, url, "outbound_url").await?;
    }
    let mut patch = serde_json::Map::new();
    for (field, value, kinds) in [
        ("outbound_url", &update.outbound_url, &["generic"][..]),
        ("phone_number_id", &update.phone_number_id, &["whatsapp"][..]),
        ("access_token", &update.access_token, &["whatsapp"][..]),
        ("bot_token", &update.bot_token, &["telegram"][..]),
    ] {
        let Some(value) = value else { continue };
        if !kinds.contains(&kind) {
            return Err(ApiError::invalid_field(field, format!("does not apply to a {kind} inbox")));
        }
        if let Some(text) = value
            && (text.is_empty()
                || text.chars().count() > MAX_CREDENTIAL_CHARS
                || text.contains(|c: char| chatdesk_core::spaces::is_space(c) || c.is_control()))
        {
            return Err(ApiError::invalid_field(field, "must be non-empty, without spaces or control characters"));
        }
        if field != "outbound_url" {
            patch.insert(field.to_owned(), value.clone().map_or(serde_json::Value::Null, serde_json::Value::String));
        }
    }
    if let Some(required) = update.require_timestamped_signature {
        if kind != "generic" {
            return Err(ApiError::invalid_field(
                "require_timestamped_signature",
                format!("does not apply to a {kind} inbox"),
            ));
        }
        patch.insert(crate::ingress::generic::TIMESTAMPED_ONLY.to_owned(), serde_json::Value::Bool(required));
    }
    let outbound_url = update.outbound_url.as_ref().map(|url| url.as_deref());
    let updated =
        directory::update_inbox(&state.db, principal.tenant, id, outbound_url, &serde_json::Value::Object(patch))
            .await
            .map_err(ApiError::store)?
            .ok_or_else(|| ApiError::NotFound { message: "no such inbox".into() })?;
    // Every process drops its cached copy; one that misses the announcement keeps it at most
    // `chatdesk_conversations::inboxes::MAX_AGE`.
    if let Err(error) = state.inboxes.announce_change(updated.id).await {
        tracing::warn!(error = %error, inbox = %updated.id, "cannot announce an inbox change");
    }
    Ok(Json(InboxView::from(&updated)))
}
