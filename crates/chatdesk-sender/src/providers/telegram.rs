//! Telegram Bot API: `POST {base}/bot<token>/sendMessage` with `chat_id` and `text`.

use std::time::Duration;

use chatdesk_store::directory::InboxRecord;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CallOutcome, Endpoints, Outbound, Reply, by_status, credential, excerpt, exchange};
use crate::limits::{Bucket, BucketKind};

#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    result: Option<SentMessage>,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct SentMessage {
    message_id: i64,
}

#[derive(Deserialize)]
struct Parameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

/// Group and supergroup chats have negative ids and a stricter limit than private chats.
pub fn chat_bucket(inbox: &InboxRecord, chat: &str) -> Bucket {
    let kind = if chat.starts_with('-') { BucketKind::TelegramGroup } else { BucketKind::TelegramChat };
    Bucket::new(kind, format!("{}:{chat}", inbox.id))
}

/// `chat_id` as Telegram takes it: a number, or a channel's `@username`.
fn chat_id(to: &str) -> Value {
    to.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(to))
}

/// `sendMessage`'s body: the text, and reply buttons as an inline keyboard (one per row), whose
/// presses come back as `callback_query` with the button's id as `callback_data`.
pub fn body(outbound: &Outbound<'_>) -> Value {
    let request = &outbound.job.request;
    let mut body = json!({"chat_id": chat_id(outbound.to), "text": request.text});
    if !request.buttons.is_empty() {
        let rows: Vec<Value> = request
            .buttons
            .iter()
            .map(|button| json!([{"text": button.title, "callback_data": callback_data(&button.id)}]))
            .collect();
        body["reply_markup"] = json!({ "inline_keyboard": rows });
    }
    body
}

/// Telegram takes at most 64 bytes of `callback_data`; cut at a character boundary.
fn callback_data(id: &str) -> String {
    let mut end = id.len().min(64);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    id[..end].to_owned()
}

pub async fn send(http: &reqwest::Client, endpoints: &Endpoints, outbound: &Outbound<'_>) -> CallOutcome {
    let token = match credential(outbound.inbox, "bot_token") {
        Ok(value) => value,
        Err(failure) => return failure,
    };
    let url = format!("{}/bot{token}/sendMessage", endpoints.telegram.trim_end_matches('/'));
    let body = body(outbound);
    let Reply { status, headers, text } = match exchange(http.post(url).json(&body)).await {
        Ok(reply) => reply,
        Err(failure) => return failure,
    };
    let Ok(answer) = serde_json::from_str::<Answer>(&text) else { return by_status(status, &headers, &text) };
    if answer.ok {
        // The id Telegram's updates use for a message: unique per chat.
        let id = answer.result.map(|message| format!("{}:{}", outbound.to, message.message_id));
        return CallOutcome::Sent { provider_message_id: id };
    }
    let code = answer.error_code.unwrap_or(status.as_u16());
    let reason = format!("Telegram error {code}: {}", excerpt(answer.description.as_deref().unwrap_or_default()));
    let retry_after = answer.parameters.and_then(|parameters| parameters.retry_after).map(Duration::from_secs);
    match code {
        429 => {
            CallOutcome::Throttled { retry_after, bucket: Some(chat_bucket(outbound.inbox, outbound.to).kind), reason }
        }
        500..=599 => CallOutcome::Transient { reason, retry_after },
        _ => CallOutcome::Permanent { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_ids_and_buckets() {
        assert_eq!(chat_id("1111111"), json!(1111111));
        assert_eq!(chat_id("-100123"), json!(-100123));
        assert_eq!(chat_id("@channel"), json!("@channel"));
        let inbox = InboxRecord {
            id: uuid::Uuid::nil(),
            tenant_id: uuid::Uuid::nil(),
            kind: chatdesk_store::directory::InboxKind::Telegram,
            name: "bot".into(),
            webhook_secret: "secret".into(),
            outbound_url: None,
            provider_config: json!({}),
            auto_reply: json!({}),
        };
        assert_eq!(chat_bucket(&inbox, "-100123").kind, BucketKind::TelegramGroup);
        assert_eq!(chat_bucket(&inbox, "1111111").kind, BucketKind::TelegramChat);
    }
}
