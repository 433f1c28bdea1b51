//! Telegram Bot API webhooks: `POST /v1/webhooks/telegram/{inbox_id}` with one `Update` per
//! request, authenticated by `X-Telegram-Bot-Api-Secret-Token` (the `secret_token` given to
//! `setWebhook`, which is the inbox secret). `message` and `edited_message` become
//! `message.created`; a `callback_query` (the customer pressed an inline-keyboard button a bot
//! sent) becomes a `message.created` whose text is the button's title and whose `extra.choice`
//! keeps its id and title, answered in the webhook's response with `answerCallbackQuery` (so the
//! customer's client stops its spinner without another call); `my_chat_member` of a private chat
//! (the user blocked or restarted the bot) becomes `contact.reachability`; other update kinds are
//! acknowledged and ignored, since Telegram retries anything but a 2xx.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chatdesk_store::directory::{InboxKind, InboxRecord};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use chatdesk_conversations::directory::DEDUPE_WINDOW;
use chatdesk_core::events::{ContactReachability, Event};
use chatdesk_core::{Envelope, TenantId};

use super::{Inbound, RawJsonBody, Received, header_text, ingest_all, signature, webhook};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiPath, parse_json};
use crate::openapi::ErrorBody;

pub const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";

#[derive(Debug, Deserialize, ToSchema)]
pub struct Update {
    pub update_id: i64,
    pub message: Option<TelegramMessage>,
    pub edited_message: Option<TelegramMessage>,
    pub my_chat_member: Option<ChatMemberUpdated>,
    pub callback_query: Option<CallbackQuery>,
}

/// A pressed inline-keyboard button.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CallbackQuery {
    pub id: String,
    pub from: TelegramUser,
    /// The bot's message the button was under (absent when it is too old for Telegram to send).
    pub message: Option<CallbackMessage>,
    /// The button's `callback_data`: the id chatdesk gave it.
    pub data: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CallbackMessage {
    pub message_id: i64,
    pub chat: TelegramChat,
    #[schema(value_type = Option<Object>)]
    pub reply_markup: Option<serde_json::Value>,
}

/// The id of an update's `callback_query`, which the webhook's answer acknowledges.
pub fn callback_query_id(body: &[u8]) -> Option<String> {
    let update: Update = serde_json::from_slice(body).ok()?;
    update.callback_query.map(|query| query.id)
}

/// A pressed button as a customer message: from the chat the button was in, its title as text.
fn pressed(update_id: i64, query: CallbackQuery) -> Option<Inbound> {
    let data = query.data?;
    let message = query.message?;
    let title = message
        .reply_markup
        .as_ref()
        .and_then(|markup| markup.get("inline_keyboard"))
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_array)
        .flatten()
        .find(|button| button.get("callback_data").and_then(serde_json::Value::as_str) == Some(data.as_str()))
        .and_then(|button| button.get("text"))
        .and_then(serde_json::Value::as_str)
        .map_or_else(|| data.clone(), str::to_owned);
    let name = match &query.from.last_name {
        Some(last) => format!("{} {last}", query.from.first_name),
        None => query.from.first_name.clone(),
    };
    let extra = serde_json::json!({
        "choice": {"id": data, "title": title},
        "callback_query_id": query.id,
        "update_id": update_id,
        "chat_type": message.chat.kind,
        "from_id": query.from.id,
        "in_reply_to": format!("{}:{}", message.chat.id, message.message_id),
    });
    Some(Inbound {
        // One press is one message, however often Telegram delivers the update.
        provider_message_id: format!("{}:callback:{}", message.chat.id, query.id),
        external_id: message.chat.id.to_string(),
        name: Some(name),
        email: None,
        text: title,
        extra: Some(extra),
        sent_at_ms: None,
    })
}

/// The bot's membership in a chat changed: in a private chat, `kicked` means the user blocked
/// the bot, `member` that they started it again.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMemberUpdated {
    pub chat: TelegramChat,
    pub new_chat_member: ChatMember,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMember {
    pub status: String,
}

/// What a `my_chat_member` update says about a private chat: `(update id, chat id, reachable)`.
pub fn parse_membership(body: &[u8]) -> Result<Option<(i64, String, bool)>, ApiError> {
    let update: Update = parse_json(body)?;
    let Some(member) = update.my_chat_member else { return Ok(None) };
    if member.chat.kind != "private" {
        return Ok(None);
    }
    let reachable = match member.new_chat_member.status.as_str() {
        "kicked" => false,
        "member" => true,
        _ => return Ok(None),
    };
    Ok(Some((update.update_id, member.chat.id.to_string(), reachable)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TelegramMessage {
    pub message_id: i64,
    pub from: Option<TelegramUser>,
    pub chat: TelegramChat,
    /// Seconds since the epoch.
    pub date: i64,
    pub edit_date: Option<i64>,
    pub text: Option<String>,
    pub caption: Option<String>,
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TelegramUser {
    pub id: i64,
    pub first_name: String,
    pub last_name: Option<String>,
    pub username: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TelegramChat {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
}

pub fn parse(body: &[u8]) -> Result<Vec<Inbound>, ApiError> {
    let update: Update = parse_json(body)?;
    if let Some(query) = update.callback_query {
        return Ok(pressed(update.update_id, query).into_iter().collect());
    }
    let (message, edited) = match (update.message, update.edited_message) {
        (Some(message), _) => (message, false),
        (None, Some(message)) => (message, true),
        (None, None) => return Ok(Vec::new()),
    };
    let name = message.from.as_ref().map(|user| match &user.last_name {
        Some(last) => format!("{} {last}", user.first_name),
        None => user.first_name.clone(),
    });
    let text = message.text.clone().or_else(|| message.caption.clone()).unwrap_or_else(|| {
        let kind = message
            .rest
            .keys()
            .find(|key| ["photo", "document", "voice", "video", "sticker", "location"].contains(&key.as_str()));
        format!("[{}]", kind.map_or("message", String::as_str))
    });
    let mut extra = message.rest.clone();
    extra.insert("update_id".into(), serde_json::Value::from(update.update_id));
    extra.insert("chat_type".into(), serde_json::Value::from(message.chat.kind.clone()));
    if let Some(user) = &message.from {
        extra.insert("from_id".into(), serde_json::Value::from(user.id));
        if let Some(username) = &user.username {
            extra.insert("username".into(), serde_json::Value::from(username.clone()));
        }
    }
    // Message ids are unique per chat; an edit is a new message that says what it edits.
    let provider_message_id = if edited {
        extra.insert("edits".into(), serde_json::Value::from(format!("{}:{}", message.chat.id, message.message_id)));
        format!("{}:{}:edit:{}", message.chat.id, message.message_id, message.edit_date.unwrap_or(message.date))
    } else {
        format!("{}:{}", message.chat.id, message.message_id)
    };
    Ok(vec![Inbound {
        provider_message_id,
        external_id: message.chat.id.to_string(),
        name,
        email: None,
        text,
        extra: Some(serde_json::Value::Object(extra)),
        sent_at_ms: u64::try_from(message.date).ok().and_then(|seconds| seconds.checked_mul(1000)),
    }])
}

/// Receives one Telegram `Update`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/telegram/{inbox_id}",
    tag = "ingress",
    params(
        ("inbox_id" = Uuid, Path, description = "The inbox"),
        ("X-Telegram-Bot-Api-Secret-Token" = String, Header, description = "The inbox secret, as given to setWebhook's secret_token"),
    ),
    request_body = Update,
    responses(
        (status = 200, description = "Appended, already appended, or an update kind that carries no message; for a \
            `callback_query`, the answer is the Bot API call `{\"method\": \"answerCallbackQuery\", \"callback_query_id\"}`, which \
            Telegram performs", body = Received),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong secret token", body = ErrorBody),
        (status = 404, description = "No Telegram inbox with this id", body = ErrorBody),
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
        signature::verify_secret_header(SECRET_HEADER, header_text(&headers, SECRET_HEADER), &inbox.webhook_secret)
    };
    let callback = callback_query_id(body);
    let response = webhook(state, InboxKind::Telegram, inbox_id, authenticate, |inbox| async move {
        let messages = parse(body)?;
        let received = ingest_all(state, &inbox, &messages).await?;
        if let Some((update_id, chat, reachable)) = parse_membership(body)? {
            let change = Event::ContactReachability(ContactReachability {
                inbox_id: inbox.id,
                external_id: chat,
                reachable,
                reason: if reachable { "started the bot again" } else { "blocked the bot" }.to_owned(),
            });
            let entry = Envelope::of(TenantId(inbox.tenant_id), &change);
            // Telegram delivers an update again until it gets a 2xx: record it once.
            let dedupe = format!("{}:update:{update_id}", inbox.id);
            state.directory.append_once(&entry, &dedupe, DEDUPE_WINDOW).await.map_err(super::directory_error)?;
        }
        Ok(received)
    })
    .await;
    match callback {
        // Telegram performs a Bot API method named in a webhook's answer.
        Some(id) if response.status().is_success() => axum::response::IntoResponse::into_response(axum::Json(
            serde_json::json!({ "method": "answerCallbackQuery", "callback_query_id": id }),
        )),
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_update_parses() {
        let body = br#"{"update_id":10000,"message":{"date":1441645532,"chat":{"last_name":"Test Lastname","id":1111111,"type":"private","first_name":"Test Firstname","username":"Testusername"},"message_id":1365,"from":{"last_name":"Test Lastname","id":1111111,"is_bot":false,"first_name":"Test Firstname","username":"Testusername"},"text":"/start"}}"#;
        let messages = parse(body).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].external_id, "1111111");
        assert_eq!(messages[0].provider_message_id, "1111111:1365");
        assert_eq!(messages[0].name.as_deref(), Some("Test Firstname Test Lastname"));
        assert_eq!(messages[0].text, "/start");
    }

    #[test]
    fn a_blocked_bot_is_an_unreachable_chat() {
        let body = br#"{"update_id":7,"my_chat_member":{"chat":{"id":1111111,"type":"private","first_name":"T"},"from":{"id":1111111,"first_name":"T"},"date":1441645532,"old_chat_member":{"status":"member","user":{"id":1,"first_name":"bot"}},"new_chat_member":{"status":"kicked","until_date":0,"user":{"id":1,"first_name":"bot"}}}}"#;
        assert!(parse(body).unwrap().is_empty());
        assert_eq!(parse_membership(body).unwrap(), Some((7, "1111111".to_owned(), false)));
        let group = br#"{"update_id":8,"my_chat_member":{"chat":{"id":-5,"type":"group"},"new_chat_member":{"status":"kicked"}}}"#;
        assert_eq!(parse_membership(group).unwrap(), None);
    }

    #[test]
    fn updates_without_messages_are_ignored_and_bad_ones_named() {
        assert!(
            parse(br#"{"update_id":1,"callback_query":{"id":"1","from":{"id":5,"first_name":"T"}}}"#)
                .unwrap()
                .is_empty()
        );
        let press = br#"{"update_id":2,"callback_query":{"id":"4382","from":{"id":1111111,"first_name":"Test","last_name":"User"},"message":{"message_id":77,"date":1441645532,"chat":{"id":1111111,"type":"private"},"text":"Is that right?","reply_markup":{"inline_keyboard":[[{"text":"Yes","callback_data":"yes"}],[{"text":"No","callback_data":"no"}]]}},"chat_instance":"-1","data":"no"}}"#;
        let messages = parse(press).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].text, "No");
        assert_eq!(messages[0].external_id, "1111111");
        assert_eq!(messages[0].provider_message_id, "1111111:callback:4382");
        assert_eq!(messages[0].extra.as_ref().unwrap()["choice"], serde_json::json!({"id": "no", "title": "No"}));
        assert_eq!(callback_query_id(press).as_deref(), Some("4382"));
        let error = parse(br#"{"update_id":1,"message":{"message_id":1,"date":1}}"#).unwrap_err();
        assert!(error.to_string().starts_with("message.chat: missing field"), "{error}");
    }
}
