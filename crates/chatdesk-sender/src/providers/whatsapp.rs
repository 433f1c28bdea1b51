//! WhatsApp Cloud API: `POST {base}/{version}/{phone_number_id}/messages` with a bearer token.
//!
//! Throttling comes back as error codes in the body (130429: the number's throughput; 131056:
//! too many messages to one user; 80007: the business account's rate), not always as HTTP 429.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{CallOutcome, Endpoints, Outbound, Reply, by_status, credential, exchange, retry_after};
use crate::limits::BucketKind;

/// How long to pause when Meta throttles without saying for how long.
const ACCOUNT_PAUSE: Duration = Duration::from_secs(1);
const RECIPIENT_PAUSE: Duration = Duration::from_secs(6);

#[derive(Deserialize)]
struct Accepted {
    messages: Vec<AcceptedMessage>,
}

#[derive(Deserialize)]
struct AcceptedMessage {
    id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: GraphError,
}

#[derive(Deserialize)]
struct GraphError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: i64,
}

/// The request body for a text or template message.
pub fn body(outbound: &Outbound<'_>) -> Value {
    let request = &outbound.job.request;
    match &request.template {
        Some(template) => {
            let mut template_body = json!({"name": template.name, "language": {"code": template.language}});
            if let Some(components) = &template.components {
                template_body["components"] = components.clone();
            }
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": outbound.to,
                "type": "template",
                "template": template_body,
            })
        }
        None => json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": outbound.to,
            "type": "text",
            "text": {"preview_url": false, "body": request.text},
        }),
    }
}

pub async fn send(http: &reqwest::Client, endpoints: &Endpoints, outbound: &Outbound<'_>) -> CallOutcome {
    let phone_number_id = match credential(outbound.inbox, "phone_number_id") {
        Ok(value) => value,
        Err(failure) => return failure,
    };
    let token = match credential(outbound.inbox, "access_token") {
        Ok(value) => value,
        Err(failure) => return failure,
    };
    let url = format!(
        "{}/{}/{}/messages",
        endpoints.whatsapp.trim_end_matches('/'),
        endpoints.whatsapp_version,
        phone_number_id
    );
    let Reply { status, headers, text } = match exchange(http.post(url).bearer_auth(token).json(&body(outbound))).await
    {
        Ok(reply) => reply,
        Err(failure) => return failure,
    };
    if status.is_success() {
        return match serde_json::from_str::<Accepted>(&text)
            .ok()
            .and_then(|accepted| accepted.messages.into_iter().next())
        {
            Some(message) => CallOutcome::Sent { provider_message_id: Some(message.id) },
            // Accepted, but without the wamid we cannot match its receipts; still sent.
            None => CallOutcome::Sent { provider_message_id: None },
        };
    }
    if let Ok(ErrorBody { error }) = serde_json::from_str::<ErrorBody>(&text) {
        let reason = format!("WhatsApp error {}: {}", error.code, error.message);
        let throttled = |bucket, pause| CallOutcome::Throttled {
            retry_after: Some(retry_after(&headers).unwrap_or(pause)),
            bucket: Some(bucket),
            reason: reason.clone(),
        };
        match error.code {
            130429 | 80007 | 4 => return throttled(BucketKind::WhatsappAccount, ACCOUNT_PAUSE),
            131056 => return throttled(BucketKind::WhatsappRecipient, RECIPIENT_PAUSE),
            // "Something went wrong" / service unavailable / temporarily unavailable.
            1 | 2 | 131000 | 131016 => return CallOutcome::Transient { reason, retry_after: retry_after(&headers) },
            _ if status.is_server_error() => {
                return CallOutcome::Transient { reason, retry_after: retry_after(&headers) };
            }
            _ => return CallOutcome::Permanent { reason },
        }
    }
    by_status(status, &headers, &text)
}

#[cfg(test)]
mod tests {
    use chatdesk_store::directory::InboxRecord;
    use uuid::Uuid;

    use super::*;
    use crate::job::{Job, SendRequest, Template};

    #[test]
    fn bodies_follow_the_cloud_api() {
        let id = Uuid::now_v7();
        let request = SendRequest {
            message_id: id,
            conversation_id: id,
            inbox_id: id,
            contact_id: id,
            text: "Hello".into(),
            template: None,
            campaign: None,
        };
        let inbox = InboxRecord {
            id,
            tenant_id: id,
            kind: chatdesk_store::directory::InboxKind::Whatsapp,
            name: "wa".into(),
            webhook_secret: "secret".into(),
            outbound_url: None,
            provider_config: json!({}),
            auto_reply: json!({}),
        };
        let mut job = Job::new(id, "1-0".into(), request);
        let text = body(&Outbound { job: &job, inbox: &inbox, to: "16505551234" });
        assert_eq!(text["type"], "text");
        assert_eq!(text["text"]["body"], "Hello");
        assert_eq!(text["to"], "16505551234");
        assert_eq!(text["messaging_product"], "whatsapp");
        job.request.template = Some(Template {
            name: "order_update".into(),
            language: "en_US".into(),
            components: Some(json!([{"type": "body", "parameters": [{"type": "text", "text": "42"}]}])),
        });
        let template = body(&Outbound { job: &job, inbox: &inbox, to: "16505551234" });
        assert_eq!(template["type"], "template");
        assert_eq!(template["template"]["language"]["code"], "en_US");
        assert_eq!(template["template"]["components"][0]["parameters"][0]["text"], "42");
    }
}
