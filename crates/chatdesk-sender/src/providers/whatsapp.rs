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
        None if !request.buttons.is_empty() && request.text.chars().count() <= MAX_INTERACTIVE_BODY => json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": outbound.to,
            "type": "interactive",
            "interactive": interactive(&request.text, &request.buttons),
        }),
        None => json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": outbound.to,
            "type": "text",
            "text": {"preview_url": false, "body": request.text},
        }),
    }
}

/// The longest body an interactive message takes; a longer text goes as plain text (its
/// choices are written in it).
const MAX_INTERACTIVE_BODY: usize = 1024;

fn clip(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// Reply buttons (up to 3, titles of at most 20 characters) or, for more choices, a list (up to
/// 10 rows, titles of at most 24): what the Cloud API accepts. The customer's press comes back
/// as `interactive.button_reply` / `list_reply` with the id.
fn interactive(text: &str, buttons: &[chatdesk_core::envelope::Button]) -> Value {
    if buttons.len() <= 3 {
        let buttons: Vec<Value> = buttons
            .iter()
            .map(|button| json!({"type": "reply", "reply": {"id": clip(&button.id, 256), "title": clip(&button.title, 20)}}))
            .collect();
        return json!({"type": "button", "body": {"text": text}, "action": {"buttons": buttons}});
    }
    let rows: Vec<Value> = buttons
        .iter()
        .take(10)
        .map(|button| json!({"id": clip(&button.id, 200), "title": clip(&button.title, 24)}))
        .collect();
    json!({
        "type": "list",
        "body": {"text": text},
        "action": {"button": "Choose", "sections": [{"title": "Options", "rows": rows}]},
    })
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
            buttons: Vec::new(),
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
        job.request.buttons = vec![
            chatdesk_core::envelope::Button { id: "yes".into(), title: "Yes".into() },
            chatdesk_core::envelope::Button { id: "no".into(), title: "No, start over please".into() },
        ];
        let buttons = body(&Outbound { job: &job, inbox: &inbox, to: "16505551234" });
        assert_eq!(buttons["type"], "interactive");
        assert_eq!(buttons["interactive"]["type"], "button");
        assert_eq!(buttons["interactive"]["body"]["text"], "Hello");
        assert_eq!(
            buttons["interactive"]["action"]["buttons"][1]["reply"],
            json!({"id": "no", "title": "No, start over pleas"})
        );
        job.request.buttons = (0..5)
            .map(|index| chatdesk_core::envelope::Button { id: format!("o{index}"), title: format!("Option {index}") })
            .collect();
        let list = body(&Outbound { job: &job, inbox: &inbox, to: "16505551234" });
        assert_eq!(list["interactive"]["type"], "list");
        assert_eq!(list["interactive"]["action"]["sections"][0]["rows"][4]["id"], "o4");
        job.request.buttons.clear();
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
