//! `send`: an agent's reply, through the same validated command as
//! `POST /v1/conversations/{id}/messages`, answered by `ack` once appended.

use chatdesk_conversations::ReplyError;
use chatdesk_core::auth::Role;
use chatdesk_core::events::{Actor, SenderKind};
use uuid::Uuid;

use super::Session;
use crate::channel::Identity;
use crate::protocol::{ErrorCode, ServerFrame};

impl Session {
    /// An agent's reply, appended exactly as `POST /v1/conversations/{id}/messages` does.
    pub(super) async fn reply(&mut self, conversation: String, text: String, client_msg_id: String) -> bool {
        let channel = format!("conversation:{conversation}");
        let Identity::Agent { tenant, user, role } = self.identity.clone() else {
            return self
                .error(ErrorCode::Forbidden, "visitors write with POST /v1/widget/{inbox_id}/messages", Some(&channel))
                .await;
        };
        if !matches!(role, Role::Owner | Role::Admin | Role::Agent) {
            return self.error(ErrorCode::Forbidden, "this role may not reply", Some(&channel)).await;
        }
        let Ok(conversation) = Uuid::parse_str(&conversation) else {
            return self.error(ErrorCode::BadFrame, "conversation must be a conversation id", None).await;
        };
        // The tenant's, and of an inbox this agent works (asked once per conversation and socket).
        if let Some(code) = self.check_conversation(conversation).await {
            let message =
                if code == ErrorCode::NotFound { "no such conversation" } else { "PostgreSQL is unavailable" };
            return self.error(code, message, Some(&channel)).await;
        }
        let sender = Actor { kind: SenderKind::Agent, id: Some(user) };
        let inner = self.gateway.inner.clone();
        match inner.reply.send(tenant, conversation, sender, &text, Some(&client_msg_id)).await {
            Ok(accepted) => {
                let ack = ServerFrame::Ack {
                    client_msg_id,
                    event_id: accepted.event_id.to_string(),
                    offset: accepted.offset.map(|offset| offset.to_string()),
                };
                self.send(&ack).await
            }
            Err(error) => {
                let code = match &error {
                    ReplyError::Text(_) | ReplyError::ClientMsgId(_) => ErrorCode::BadFrame,
                    ReplyError::NotFound => ErrorCode::NotFound,
                    ReplyError::Blocked => ErrorCode::Conflict,
                    ReplyError::Store(_) | ReplyError::Append(_) => ErrorCode::Unavailable,
                };
                let message = match &error {
                    ReplyError::Append(_) => "Redis is unavailable; send again with the same client_msg_id".to_owned(),
                    other => other.to_string(),
                };
                self.error(code, message, Some(&channel)).await
            }
        }
    }
}
