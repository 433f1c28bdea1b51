//! The generic channel: a signed `POST` of `{"event_id", "conversation_id", "to", "text"}` to the
//! inbox's outbound URL, with `X-Chatdesk-Signature: sha256=<hex HMAC of the body with the
//! inbox's secret>` and `Idempotency-Key: <event_id>` so the receiver can drop a repeat.

use chatdesk_core::auth::sign_body;
use serde_json::{Value, json};

use super::{CallOutcome, Outbound, Reply, by_status, exchange};
use crate::limits::BucketKind;

pub fn body(outbound: &Outbound<'_>) -> String {
    let request = &outbound.job.request;
    json!({
        "event_id": request.message_id,
        "conversation_id": request.conversation_id,
        "to": outbound.to,
        "text": request.text,
    })
    .to_string()
}

pub async fn send(http: &reqwest::Client, outbound: &Outbound<'_>) -> CallOutcome {
    let Some(url) = outbound.inbox.outbound_url.as_deref() else {
        return CallOutcome::Permanent { reason: "the generic inbox has no outbound URL configured".to_owned() };
    };
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
    match by_status(status, &headers, &text) {
        CallOutcome::Throttled { retry_after, reason, .. } => {
            CallOutcome::Throttled { retry_after, bucket: Some(BucketKind::GenericAccount), reason }
        }
        other => other,
    }
}
