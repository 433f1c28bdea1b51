//! Ingress: where customers' messages enter. One webhook route per inbox and channel kind,
//! plus the web widget.
//!
//! Every request goes through the same steps, and a rejected request appends nothing:
//! 1. the inbox exists and is of the route's kind (else 404), from the process's inbox cache
//!    (`chatdesk_conversations::inboxes`: no PostgreSQL query);
//! 2. the body is JSON (415), within the size limit (413), and its signature or secret is valid
//!    (401), checked on the raw bytes before parsing;
//! 3. the body parses into messages (400 with the JSON position, 422 naming the missing field);
//! 4. each message goes through one Redis script (`chatdesk_conversations::directory`): the
//!    per-inbox rate limit shared by every process (else 429 with `Retry-After`), the duplicate
//!    check (a provider message id seen in the last 7 days is answered 200 without appending
//!    again), the contact and open conversation found or created, the message appended.
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
use chatdesk_conversations::directory::{InboundMessage, IngestRequest, Introduction};
use chatdesk_conversations::{DirectoryError, Ingested};
use chatdesk_core::TenantId;
use chatdesk_store::directory::{InboxKind, InboxRecord};
use fred::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

pub use chatdesk_conversations::directory::DEDUPE_WINDOW;

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
    /// Where outbound URLs may point (`CHATDESK_OUTBOUND_ALLOW`), checked when an inbox is
    /// changed.
    pub outbound: chatdesk_core::outbound::OutboundPolicy,
}

impl Default for IngressSettings {
    fn default() -> Self {
        Self {
            rate_per_inbox: 200,
            widget_standby: Duration::from_secs(600),
            websocket_url: None,
            outbound: chatdesk_core::outbound::OutboundPolicy::default(),
        }
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

/// The inbox of a webhook route (from the process's inbox cache), or 404 when there is none of
/// that kind.
pub async fn inbox_of_kind(state: &AppState, inbox: Uuid, kind: InboxKind) -> Result<InboxRecord, ApiError> {
    match state.inboxes.get(inbox).await.map_err(ApiError::store)? {
        Some(record) if record.kind == kind => Ok(record),
        _ => Err(ApiError::NotFound { message: format!("no {} inbox {inbox}", kind.as_str()) }),
    }
}

pub fn directory_error(error: DirectoryError) -> ApiError {
    if let DirectoryError::Invalid { field, reason } = error {
        return ApiError::invalid_field(field, reason);
    }
    tracing::warn!(error = %error, "ingest failed");
    ApiError::Unavailable { dependency: "Redis" }
}

fn rate_limited(state: &AppState, inbox: Uuid) -> ApiError {
    ApiError::TooManyRequests {
        message: format!("inbox {inbox} is limited to {} requests per second", state.ingress.rate_per_inbox),
        retry_after_seconds: 1,
    }
}

/// Runs the directory's one script for `message` (or, without one, only finds or reserves the
/// sender's conversation), counting the request against the inbox's rate limit when `counted`.
pub async fn ingest(
    state: &AppState,
    inbox: &InboxRecord,
    sender: &Introduction,
    message: Option<&InboundMessage>,
    standby: Option<Duration>,
    counted: bool,
) -> Result<Ingested, ApiError> {
    let request = IngestRequest {
        tenant: TenantId(inbox.tenant_id),
        sender,
        message,
        standby,
        rate_per_second: counted.then_some(state.ingress.rate_per_inbox),
        // Without a message this is a widget session starting: it keeps ids for the visitor, and
        // the first message makes the conversation.
        reserve: message.is_none(),
    };
    match state.directory.ingest(&request).await.map_err(directory_error)? {
        Ingested::RateLimited => Err(rate_limited(state, inbox.id)),
        ingested => Ok(ingested),
    }
}

/// Ingests every message of one webhook (the first one counted against the inbox's rate limit);
/// answers with what was done.
pub async fn ingest_all(state: &AppState, inbox: &InboxRecord, messages: &[Inbound]) -> Result<Received, ApiError> {
    let mut received = Received::default();
    if messages.is_empty() {
        // Status callbacks and other updates count against the inbox's limit too.
        let tenant = TenantId(inbox.tenant_id);
        let admitted = state
            .directory
            .admit_request(&tenant, inbox.id, state.ingress.rate_per_inbox)
            .await
            .map_err(directory_error)?;
        if !admitted {
            return Err(rate_limited(state, inbox.id));
        }
    }
    for (index, message) in messages.iter().enumerate() {
        let sender = Introduction {
            inbox: inbox.id,
            external_id: message.external_id.clone(),
            name: message.name.clone(),
            email: message.email.clone(),
        };
        let inbound = InboundMessage {
            provider_message_id: message.provider_message_id.clone(),
            text: message.text.clone(),
            extra: message.extra.clone(),
            sent_at_ms: message.sent_at_ms,
        };
        match ingest(state, inbox, &sender, Some(&inbound), None, index == 0).await? {
            Ingested::Duplicate { .. } => {
                received.duplicates += 1;
                ::metrics::counter!(DUPLICATES_TOTAL, "kind" => inbox.kind.as_str()).increment(1);
            }
            _ => received.accepted += 1,
        }
    }
    Ok(received)
}

/// The steps every webhook shares: the inbox of this kind (404, from the cache), the caller's
/// proof (401), then `receive` (parse, then one script that counts the inbox's rate limit (429)
/// and appends); outcome and latency are recorded.
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
        authenticate(&inbox)?;
        ok(receive(inbox).await?)
    }
    .await;
    observe(kind, started, result)
}

/// Failed webhook authentications one client address may make to one inbox per minute before
/// its webhooks to that inbox are refused unheard.
pub const MAX_FAILED_SIGNATURES_PER_MINUTE: u64 = 100;

/// (address, inbox) pairs whose webhooks are refused unheard until a moment, as this process
/// learned it.
#[derive(Clone, Default)]
pub struct SignatureGate {
    blocked: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(std::net::IpAddr, Uuid), Instant>>>,
}

impl SignatureGate {
    fn blocked_for(&self, address: std::net::IpAddr, inbox: Uuid) -> Option<Duration> {
        let blocked = self.blocked.lock().expect("signature gate lock");
        blocked.get(&(address, inbox)).and_then(|until| until.checked_duration_since(Instant::now()))
    }

    fn block(&self, address: std::net::IpAddr, inbox: Uuid, for_: Duration) {
        let mut blocked = self.blocked.lock().expect("signature gate lock");
        if blocked.len() >= 10_000 {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert((address, inbox), Instant::now() + for_);
    }
}

/// Counts failed webhook authentications (401, and 403 for a wrong WhatsApp verify token) per
/// client address **and inbox**, in Redis (shared by every process), and refuses that address's
/// webhooks to that inbox with 429 for the rest of the minute once it failed too often: a
/// stranger probing one inbox's secret is slowed down. Per inbox, because providers deliver
/// every tenant's webhooks from a few shared addresses: one tenant's wrong secret (or a stranger
/// probing it) must never hold up another inbox's correctly signed webhooks. An inbox's own rate
/// limit is separate and counts only authenticated requests. Only a failure costs a Redis call:
/// the refusal is decided from what this process learned when counting.
pub async fn limit_failed_signatures(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let is_webhook = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .is_some_and(|path| path.as_str().starts_with("/v1/webhooks/"));
    // The inbox is the path's last segment; a path without one is refused by its route.
    let inbox = request.uri().path().rsplit('/').next().and_then(|id| id.parse::<Uuid>().ok());
    let Some(inbox) = inbox.filter(|_| is_webhook) else {
        return next.run(request).await;
    };
    // A blocked address still gets its correctly signed webhooks through: providers send every
    // tenant's webhooks from shared addresses, so one tenant pointing its provider at another's
    // inbox must not shut the provider out of it. Only failures are answered 429 (an HMAC
    // cannot be guessed, so the block only tells a prober to stop).
    let blocked = state.signature_gate.blocked_for(peer.ip(), inbox);
    let response = next.run(request).await;
    let failed = matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if let Some(wait) = blocked.filter(|_| failed) {
        return ApiError::TooManyRequests {
            message: "too many failed webhook signatures from this address to this inbox".into(),
            retry_after_seconds: wait.as_secs().max(1),
        }
        .into_response();
    }
    if failed {
        let minute = chatdesk_core::envelope::now_ms() / 60_000;
        let key = state.keys.webhook_failures_of(&peer.ip(), &inbox, minute);
        let counted: Result<u64, _> = state.redis.incr(&key).await;
        if counted == Ok(1) {
            let _: Result<bool, _> = state.redis.expire(&key, 120, None).await;
        }
        if counted.is_ok_and(|failures| failures >= MAX_FAILED_SIGNATURES_PER_MINUTE) {
            let rest_of_minute = 60 - (chatdesk_core::envelope::now_ms() / 1000) % 60;
            state.signature_gate.block(peer.ip(), inbox, Duration::from_secs(rest_of_minute));
        }
    }
    response
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
