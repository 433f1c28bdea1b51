//! The generic channel: a signed `POST` of `{"event_id", "conversation_id", "to", "text"}` (and
//! `buttons`, `[{"id", "title"}]`, when a bot offers choices) to the
//! inbox's outbound URL, with `X-Chatdesk-Signature: sha256=<hex HMAC of the body with the
//! inbox's secret>` and `Idempotency-Key: <event_id>` so the receiver can drop a repeat.

use chatdesk_core::auth::sign_body;
use serde_json::{Value, json};

use chatdesk_core::outbound::OutboundPolicy;

use super::{CallOutcome, Outbound, Reply, by_status, excerpt, exchange};
use crate::limits::BucketKind;

pub fn body(outbound: &Outbound<'_>) -> String {
    let request = &outbound.job.request;
    let mut body = json!({
        "event_id": request.message_id,
        "conversation_id": request.conversation_id,
        "to": outbound.to,
        "text": request.text,
    });
    if !request.buttons.is_empty() {
        body["buttons"] = json!(request.buttons);
    }
    body.to_string()
}

/// Sends through `http`, a client whose resolver connects only where `policy` allows; an address
/// written in the URL is checked here, before any connection.
pub async fn send(http: &reqwest::Client, policy: &OutboundPolicy, outbound: &Outbound<'_>) -> CallOutcome {
    let Some(url) = outbound.inbox.outbound_url.as_deref() else {
        return CallOutcome::Permanent { reason: "the generic inbox has no outbound URL configured".to_owned() };
    };
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return CallOutcome::Permanent { reason: "the generic inbox's outbound URL is not a valid URL".to_owned() };
    };
    if let Err(refused) =
        policy.check_url(parsed.scheme(), parsed.host_str(), parsed.port_or_known_default().unwrap_or(0))
    {
        return CallOutcome::Permanent { reason: refused.to_string() };
    }
    let body = body(outbound);
    let signature = sign_body(body.as_bytes(), &outbound.inbox.webhook_secret);
    let request = http
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Chatdesk-Signature", signature)
        .header("Idempotency-Key", outbound.job.request.message_id.to_string())
        .body(body);
    let Reply { status, headers, text } = match exchange(request).await {
        Ok(reply) => reply,
        Err(failure) => return failure,
    };
    if status.is_success() {
        // The receiver may name its own id for the message (`id` or `message_id`).
        let id = serde_json::from_str::<Value>(&text).ok().and_then(|answer| {
            ["id", "message_id"].iter().find_map(|field| match &answer[*field] {
                Value::String(id) => Some(id.clone()),
                Value::Number(id) => Some(id.to_string()),
                _ => None,
            })
        });
        return CallOutcome::Sent { provider_message_id: id };
    }
    // The receiver is the tenant's choice: its answer goes to the logs, never into a reason that
    // agents read (an internal service's answer must not be read back through chatdesk).
    tracing::info!(inbox = %outbound.inbox.id, status = status.as_u16(), answer = %excerpt(&text), "receiver refused a message");
    let reason = format!("the receiver answered HTTP {} ({})", status.as_u16(), status_class(status));
    match by_status(status, &headers, "") {
        CallOutcome::Throttled { retry_after, .. } => {
            CallOutcome::Throttled { retry_after, bucket: Some(BucketKind::GenericAccount), reason }
        }
        CallOutcome::Transient { retry_after, .. } => CallOutcome::Transient { reason, retry_after },
        CallOutcome::Permanent { .. } => CallOutcome::Permanent { reason },
        sent @ CallOutcome::Sent { .. } => sent,
    }
}

fn status_class(status: reqwest::StatusCode) -> &'static str {
    match status.as_u16() {
        300..=399 => "redirect, not followed",
        408 => "timeout",
        429 => "too many requests",
        400..=499 => "refused",
        _ => "server error",
    }
}
