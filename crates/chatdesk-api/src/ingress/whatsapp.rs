//! WhatsApp Cloud API webhooks.
//!
//! - `GET /v1/webhooks/whatsapp/{inbox_id}?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`
//!   answers the challenge when the verify token is the inbox secret (else 403).
//! - `POST /v1/webhooks/whatsapp/{inbox_id}` takes Meta's delivery shape
//!   (`object` → `entry[]` → `changes[]` → `value` with `messages[]` and/or `statuses[]`), checked
//!   with `X-Hub-Signature-256` (HMAC-SHA256 of the raw body; the inbox secret is the app
//!   secret). Messages become `message.created`; statuses (sent, delivered, read, failed) become
//!   `message.status` of the outbound message with that wamid.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chatdesk_conversations::directory::Once;
use chatdesk_core::Envelope;
use chatdesk_core::TenantId;
use chatdesk_core::events::{Event, MessageStatus, MessageStatusChanged};
use chatdesk_store::directory::{InboxKind, InboxRecord};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    DEDUPE_WINDOW, Inbound, RawJsonBody, Received, header_text, inbox_of_kind, ingest_all, signature, webhook,
};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, parse_json};
use crate::openapi::ErrorBody;

pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
pub const UNMATCHED_STATUSES_TOTAL: &str = "chatdesk_ingress_whatsapp_unmatched_statuses_total";

#[derive(Debug, Deserialize, ToSchema)]
pub struct Notification {
    /// `whatsapp_business_account`.
    pub object: String,
    #[serde(default)]
    pub entry: Vec<NotificationEntry>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NotificationEntry {
    /// The WhatsApp Business Account id.
    pub id: Option<String>,
    #[serde(default)]
    pub changes: Vec<Change>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Change {
    pub field: String,
    #[serde(default)]
    pub value: ChangeValue,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ChangeValue {
    #[serde(default)]
    pub contacts: Vec<WaContact>,
    #[serde(default)]
    pub messages: Vec<WaMessage>,
    #[serde(default)]
    pub statuses: Vec<WaStatus>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct WaContact {
    pub wa_id: String,
    pub profile: Option<WaProfile>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct WaProfile {
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct WaMessage {
    pub from: String,
    /// The wamid.
    pub id: String,
    /// Seconds since the epoch, as a string.
    pub timestamp: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<WaText>,
    /// Media and other message bodies, kept as they came.
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct WaText {
    pub body: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct WaStatus {
    /// The wamid of the outbound message.
    pub id: String,
    /// sent, delivered, read or failed.
    pub status: String,
    pub timestamp: Option<String>,
    pub recipient_id: Option<String>,
    #[serde(default)]
    pub errors: Vec<serde_json::Value>,
}

/// A delivery status for one of our outbound messages.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    pub wamid: String,
    pub status: MessageStatus,
    pub reason: Option<String>,
    /// The first error's code (`131049`: the per-user marketing cap).
    pub code: Option<String>,
    /// When WhatsApp says it happened, milliseconds since the epoch.
    pub at_ms: Option<u64>,
}

/// A status for a wamid no stored message has yet is answered 503 so Meta delivers it again
/// (it retries for days): the message's provider id may simply not be stored yet. Statuses older
/// than this are for messages chatdesk never sent and are dropped.
const UNMATCHED_RETRY_WINDOW_MS: u64 = 3_600_000;

fn seconds_to_ms(text: Option<&str>) -> Option<u64> {
    text.and_then(|seconds| seconds.parse::<u64>().ok()).and_then(|seconds| seconds.checked_mul(1000))
}

/// The button or list row the customer pressed, as `{"id", "title"}`: an interactive reply's
/// id and title, or a template quick-reply's payload and text. A bot's flow reads the id.
fn choice_of(kind: &str, rest: &serde_json::Map<String, serde_json::Value>) -> Option<serde_json::Value> {
    let text = |value: Option<&serde_json::Value>| value.and_then(serde_json::Value::as_str).map(str::to_owned);
    let (id, title) = match kind {
        "interactive" => {
            let reply = rest.get("interactive")?;
            let pressed = reply.get("button_reply").or_else(|| reply.get("list_reply"))?;
            (text(pressed.get("id"))?, text(pressed.get("title")).unwrap_or_default())
        }
        "button" => {
            let button = rest.get("button")?;
            let title = text(button.get("text")).unwrap_or_default();
            (text(button.get("payload")).unwrap_or_else(|| title.clone()), title)
        }
        _ => return None,
    };
    Some(serde_json::json!({ "id": id, "title": title }))
}

/// Messages and statuses of one notification.
pub fn parse(body: &[u8]) -> Result<(Vec<Inbound>, Vec<StatusUpdate>), ApiError> {
    let notification: Notification = parse_json(body)?;
    if notification.object != "whatsapp_business_account" {
        return Err(ApiError::invalid_field(
            "object",
            format!("must be \"whatsapp_business_account\", got {:?}", notification.object),
        ));
    }
    let (mut messages, mut statuses) = (Vec::new(), Vec::new());
    for entry in notification.entry {
        for change in entry.changes.into_iter().filter(|change| change.field == "messages") {
            let names: HashMap<&str, Option<&str>> = change
                .value
                .contacts
                .iter()
                .map(|contact| {
                    (contact.wa_id.as_str(), contact.profile.as_ref().and_then(|profile| profile.name.as_deref()))
                })
                .collect();
            for message in &change.value.messages {
                let text = match (&message.text, message.kind.as_str()) {
                    (Some(text), _) => text.body.clone(),
                    // A template's quick-reply button: its text is what the customer saw and
                    // pressed; its payload stays in `extra.button`.
                    (None, "button") => message
                        .rest
                        .get("button")
                        .and_then(|button| button.get("text").or_else(|| button.get("payload")))
                        .and_then(serde_json::Value::as_str)
                        .map_or_else(|| "[button]".to_owned(), str::to_owned),
                    (None, "interactive") => message
                        .rest
                        .get("interactive")
                        .and_then(|reply| reply.get("button_reply").or_else(|| reply.get("list_reply")))
                        .and_then(|reply| reply.get("title"))
                        .and_then(serde_json::Value::as_str)
                        .map_or_else(|| "[interactive]".to_owned(), str::to_owned),
                    (None, kind) => message
                        .rest
                        .get(kind)
                        .and_then(|media| media.get("caption"))
                        .and_then(serde_json::Value::as_str)
                        .map_or_else(|| format!("[{kind}]"), str::to_owned),
                };
                let mut extra = message.rest.clone();
                extra.insert("type".into(), serde_json::Value::from(message.kind.clone()));
                if let Some(choice) = choice_of(message.kind.as_str(), &message.rest) {
                    extra.insert("choice".into(), choice);
                }
                messages.push(Inbound {
                    provider_message_id: message.id.clone(),
                    external_id: message.from.clone(),
                    name: names.get(message.from.as_str()).copied().flatten().map(str::to_owned),
                    email: None,
                    text,
                    extra: Some(serde_json::Value::Object(extra)),
                    sent_at_ms: seconds_to_ms(message.timestamp.as_deref()),
                });
            }
            for status in &change.value.statuses {
                let mapped = match status.status.as_str() {
                    "sent" => MessageStatus::Sent,
                    "delivered" => MessageStatus::Delivered,
                    "read" => MessageStatus::Read,
                    "failed" => MessageStatus::Failed,
                    _ => continue,
                };
                let reason = status.errors.first().map(|error| {
                    let code = error.get("code").map(ToString::to_string).unwrap_or_default();
                    let title = error
                        .get("title")
                        .or_else(|| error.get("message"))
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("");
                    format!("{code} {title}").trim().to_owned()
                });
                let code = status.errors.first().and_then(|error| error.get("code")).map(|code| match code {
                    serde_json::Value::String(code) => code.clone(),
                    other => other.to_string(),
                });
                statuses.push(StatusUpdate {
                    wamid: status.id.clone(),
                    status: mapped,
                    reason,
                    code,
                    at_ms: seconds_to_ms(status.timestamp.as_deref()),
                });
            }
        }
    }
    Ok((messages, statuses))
}

/// Appends a `message.status` for each status whose wamid belongs to one of our messages.
async fn append_statuses(state: &AppState, inbox: &InboxRecord, statuses: &[StatusUpdate]) -> Result<usize, ApiError> {
    let mut appended = 0;
    for update in statuses {
        // No message of ours has such an id (ours are stored cleaned and bounded): not one to
        // look up, nor to ask again for.
        if update.wamid.contains('\0') || update.wamid.len() > chatdesk_conversations::directory::MAX_ID_BYTES {
            ::metrics::counter!(UNMATCHED_STATUSES_TOTAL).increment(1);
            continue;
        }
        let found =
            chatdesk_store::conversations::message_by_provider_id(&state.db, inbox.tenant_id, inbox.id, &update.wamid)
                .await
                .map_err(ApiError::store)?;
        let Some((message_id, conversation_id)) = found else {
            ::metrics::counter!(UNMATCHED_STATUSES_TOTAL).increment(1);
            let age_ms = chatdesk_streams::entry::now_ms().saturating_sub(update.at_ms.unwrap_or(0));
            if age_ms < UNMATCHED_RETRY_WINDOW_MS {
                tracing::info!(inbox = %inbox.id, wamid = %update.wamid, "status for a message not stored yet, asking for redelivery");
                return Err(ApiError::Unavailable { dependency: "the message this status is for" });
            }
            tracing::warn!(inbox = %inbox.id, wamid = %update.wamid, status = update.status.as_str(), "dropping an old status for an unknown message");
            continue;
        };
        let event = Event::MessageStatus(MessageStatusChanged {
            message_id,
            conversation_id,
            status: update.status,
            reason: update.reason.clone(),
            provider_message_id: Some(update.wamid.clone()),
            attempts: None,
            code: update.code.clone(),
        });
        let entry = Envelope::of(TenantId(inbox.tenant_id), &event);
        let dedupe_id = format!("{}:status:{}:{}", inbox.id, update.wamid, update.status.as_str());
        if let Once::New(_) =
            state.directory.append_once(&entry, &dedupe_id, DEDUPE_WINDOW).await.map_err(super::directory_error)?
        {
            appended += 1;
        }
    }
    Ok(appended)
}

/// Receives a WhatsApp Cloud API notification (messages and statuses).
#[utoipa::path(
    post,
    path = "/v1/webhooks/whatsapp/{inbox_id}",
    tag = "ingress",
    params(
        ("inbox_id" = Uuid, Path, description = "The inbox"),
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=<hex HMAC-SHA256 of the raw body with the app secret>`"),
    ),
    request_body = Notification,
    responses(
        (status = 200, description = "Appended (or already appended before)", body = Received),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong signature", body = ErrorBody),
        (status = 404, description = "No WhatsApp inbox with this id", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid", body = ErrorBody),
        (status = 429, description = "The inbox's rate limit; see Retry-After", body = ErrorBody),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    ApiPath(inbox_id): ApiPath<Uuid>,
    headers: HeaderMap,
    RawJsonBody(body): RawJsonBody,
) -> Response {
    let (state, body) = (&state, &body);
    let authenticate = |inbox: &InboxRecord| {
        signature::verify_hmac_header(
            SIGNATURE_HEADER,
            header_text(&headers, SIGNATURE_HEADER),
            body,
            &inbox.webhook_secret,
        )
    };
    webhook(state, InboxKind::Whatsapp, inbox_id, authenticate, |inbox| async move {
        let (messages, statuses) = parse(body)?;
        let mut received = ingest_all(state, &inbox, &messages).await?;
        received.statuses = append_statuses(state, &inbox, &statuses).await?;
        Ok(received)
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Verification {
    #[serde(rename = "hub.mode")]
    #[param(rename = "hub.mode")]
    pub mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    #[param(rename = "hub.verify_token")]
    pub verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    #[param(rename = "hub.challenge")]
    pub challenge: Option<String>,
}

/// Meta's webhook verification: echoes `hub.challenge` when `hub.verify_token` is the inbox secret.
#[utoipa::path(
    get,
    path = "/v1/webhooks/whatsapp/{inbox_id}",
    tag = "ingress",
    params(("inbox_id" = Uuid, Path, description = "The inbox"), Verification),
    responses(
        (status = 200, description = "The challenge, as plain text", content_type = "text/plain"),
        (status = 403, description = "Wrong mode or verify token", body = ErrorBody),
        (status = 404, description = "No WhatsApp inbox with this id", body = ErrorBody),
        (status = 429, description = "Too many failed signatures or verifications from this address to this inbox; see Retry-After", body = ErrorBody),
    )
)]
pub async fn verify(
    State(state): State<AppState>,
    ApiPath(inbox_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<Verification>,
) -> Result<Response, ApiError> {
    let inbox = inbox_of_kind(&state, inbox_id, InboxKind::Whatsapp).await?;
    let token_matches = query.verify_token.as_deref().is_some_and(|token| {
        signature::verify_secret_header("hub.verify_token", Some(token), &inbox.webhook_secret).is_ok()
    });
    match (query.mode.as_deref(), token_matches, query.challenge) {
        (Some("subscribe"), true, Some(challenge)) => Ok((StatusCode::OK, challenge).into_response()),
        _ => Err(ApiError::Forbidden { message: "verification refused: wrong hub.mode or hub.verify_token".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_statuses_of_a_real_notification() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"}},{"from":"16505551234","id":"wamid.2","timestamp":"1749416390","type":"image","image":{"caption":"this one","mime_type":"image/jpeg","sha256":"abc","id":"1003383421387256"}}],"statuses":[{"id":"wamid.out","status":"failed","timestamp":"1749416400","recipient_id":"16505551234","errors":[{"code":131026,"title":"Message undeliverable"}]}]},"field":"messages"}]}]}"#;
        let (messages, statuses) = parse(body).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].text, "Does it come in another color?");
        assert_eq!(messages[0].name.as_deref(), Some("Sheena Nelson"));
        assert_eq!(messages[0].sent_at_ms, Some(1_749_416_383_000));
        assert_eq!(messages[1].text, "this one");
        assert_eq!(messages[1].extra.as_ref().unwrap()["image"]["mime_type"], "image/jpeg");
        assert_eq!(
            statuses,
            vec![StatusUpdate {
                wamid: "wamid.out".into(),
                status: MessageStatus::Failed,
                reason: Some("131026 Message undeliverable".into()),
                code: Some("131026".into()),
                at_ms: Some(1_749_416_400_000),
            }]
        );
    }

    /// A template's quick-reply button keeps both what the customer saw and its payload.
    #[test]
    fn a_pressed_button_is_its_text_with_its_payload_kept() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"1"},"messages":[{"from":"16505551234","id":"wamid.b","timestamp":"1749416383","type":"button","button":{"payload":"STOP_PROMOS","text":"Stop promotions"}}]},"field":"messages"}]}]}"#;
        let (messages, _) = parse(body).unwrap();
        assert_eq!(messages[0].text, "Stop promotions");
        assert_eq!(messages[0].extra.as_ref().unwrap()["button"]["payload"], "STOP_PROMOS");
        assert_eq!(
            messages[0].extra.as_ref().unwrap()["choice"],
            serde_json::json!({"id": "STOP_PROMOS", "title": "Stop promotions"})
        );
    }

    /// A pressed interactive button keeps its id and title; the title is the message's text.
    #[test]
    fn a_pressed_reply_button_keeps_its_id_and_title() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"1"},"messages":[{"context":{"from":"15550001111","id":"wamid.q"},"from":"16505551234","id":"wamid.i","timestamp":"1749416383","type":"interactive","interactive":{"type":"button_reply","button_reply":{"id":"yes","title":"Yes"}}},{"from":"16505551234","id":"wamid.l","timestamp":"1749416384","type":"interactive","interactive":{"type":"list_reply","list_reply":{"id":"large","title":"Large","description":"40 cm"}}}]},"field":"messages"}]}]}"#;
        let (messages, _) = parse(body).unwrap();
        assert_eq!(messages[0].text, "Yes");
        assert_eq!(messages[0].extra.as_ref().unwrap()["choice"], serde_json::json!({"id": "yes", "title": "Yes"}));
        assert_eq!(messages[1].text, "Large");
        assert_eq!(messages[1].extra.as_ref().unwrap()["choice"]["id"], "large");
    }

    #[test]
    fn other_objects_are_refused_by_name() {
        let error = parse(br#"{"object":"page","entry":[]}"#).unwrap_err();
        assert!(error.to_string().starts_with("object:"), "{error}");
    }
}
