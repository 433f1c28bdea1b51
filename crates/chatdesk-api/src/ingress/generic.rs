//! The generic webhook channel: chatdesk's own small JSON shape, for scripts and systems without
//! a provider of their own.
//!
//! `POST /v1/webhooks/generic/{inbox_id}` with
//! `{"message_id": "m-1", "from": {"id": "cust-42", "name": "Ana"}, "text": "hello", "timestamp": 1763800000}`
//! (other fields, e.g. attachment metadata, are kept), signed with
//! `X-Chatdesk-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" with the inbox
//! secret>` (refused more than 5 minutes from the server's time, so a captured request cannot be
//! replayed later), or the older `X-Chatdesk-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chatdesk_store::directory::{InboxKind, InboxRecord};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Inbound, RawJsonBody, Received, header_text, ingest_all, signature, webhook};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiPath, parse_json};
use crate::openapi::ErrorBody;

pub const SIGNATURE_HEADER: &str = "X-Chatdesk-Signature";

#[derive(Debug, Deserialize, ToSchema)]
pub struct GenericSender {
    /// The sender's id in your system (at most 256 bytes).
    #[schema(min_length = 1, max_length = 256)]
    pub id: String,
    #[schema(max_length = 200)]
    pub name: Option<String>,
    #[schema(max_length = 320)]
    pub email: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct GenericMessage {
    /// Your id of the message (at most 256 bytes): a repeat within 7 days is not appended again.
    #[schema(min_length = 1, max_length = 256)]
    pub message_id: String,
    pub from: GenericSender,
    #[schema(max_length = 4096)]
    pub text: String,
    /// When the message was sent, seconds since the Unix epoch.
    pub timestamp: Option<i64>,
    /// Any other fields are kept with the message.
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

pub fn parse(body: &[u8]) -> Result<Inbound, ApiError> {
    let message: GenericMessage = parse_json(body)?;
    for (field, value) in [("message_id", &message.message_id), ("from.id", &message.from.id)] {
        if value.trim().is_empty() || value.len() > 256 {
            return Err(ApiError::invalid_field(field, "must be 1 to 256 characters"));
        }
    }
    if message.text.trim().is_empty() && message.extra.is_empty() {
        return Err(ApiError::invalid_field("text", "must not be empty"));
    }
    Ok(Inbound {
        provider_message_id: message.message_id,
        external_id: message.from.id,
        name: message.from.name,
        email: message.from.email,
        text: message.text,
        extra: (!message.extra.is_empty()).then_some(serde_json::Value::Object(message.extra)),
        sent_at_ms: message
            .timestamp
            .and_then(|seconds| u64::try_from(seconds).ok())
            .and_then(|seconds| seconds.checked_mul(1000)),
    })
}

/// The generic inbox setting that refuses the untimed `sha256=` signature.
pub const TIMESTAMPED_ONLY: &str = "require_timestamped_signature";

/// Receives one message of the generic channel.
#[utoipa::path(
    post,
    path = "/v1/webhooks/generic/{inbox_id}",
    tag = "ingress",
    params(
        ("inbox_id" = Uuid, Path, description = "The inbox"),
        ("X-Chatdesk-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\" with the inbox secret>` (refused more than 300 s from the server's time), or `sha256=<hex HMAC-SHA256 of the raw body with the inbox secret>`"),
    ),
    request_body = GenericMessage,
    responses(
        (status = 200, description = "Appended (or already appended before)", body = Received),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong signature", body = ErrorBody),
        (status = 404, description = "No generic inbox with this id", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid", body = ErrorBody),
        (status = 429, description = "The inbox's rate limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "Redis is unavailable; nothing was appended, retry", body = ErrorBody),
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
        signature::verify_generic_signature(
            SIGNATURE_HEADER,
            header_text(&headers, SIGNATURE_HEADER),
            body,
            &inbox.webhook_secret,
            chatdesk_core::envelope::now_ms() / 1000,
            inbox.provider_config.get(TIMESTAMPED_ONLY).and_then(serde_json::Value::as_bool).unwrap_or(false),
        )
    };
    webhook(state, InboxKind::Generic, inbox_id, authenticate, |inbox| async move {
        let message = parse(body)?;
        ingest_all(state, &inbox, &[message]).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_shape_parses_and_keeps_extra_fields() {
        let body = br#"{"message_id": "m-1", "from": {"id": "cust-42", "name": "Ana"}, "text": "hello", "timestamp": 1763800000, "attachments": [{"url": "https://x/1.png"}]}"#;
        let inbound = parse(body).unwrap();
        assert_eq!(
            (inbound.provider_message_id.as_str(), inbound.external_id.as_str(), inbound.text.as_str()),
            ("m-1", "cust-42", "hello")
        );
        assert_eq!(inbound.sent_at_ms, Some(1_763_800_000_000));
        assert_eq!(inbound.extra.unwrap()["attachments"][0]["url"], "https://x/1.png");
    }

    #[test]
    fn missing_fields_are_named() {
        let error = parse(br#"{"message_id": "m-1", "text": "hi"}"#).unwrap_err();
        assert_eq!(error.status(), 422);
        assert!(error.to_string().starts_with("from: missing field"), "{error}");
        let error = parse(br#"{"message_id": "m-1", "from": {}, "text": "hi"}"#).unwrap_err();
        assert!(error.to_string().starts_with("from.id: missing field"), "{error}");
        let error = parse(br#"{"message_id": "", "from": {"id": "x"}, "text": "hi"}"#).unwrap_err();
        assert!(error.to_string().starts_with("message_id:"), "{error}");
    }
}
