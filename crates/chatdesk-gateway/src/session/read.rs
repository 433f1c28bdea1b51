//! `read`: an agent read a conversation up to an offset.

use chatdesk_core::auth::Role;
use chatdesk_core::events::{Actor, ConversationRead, Event, SenderKind};
use chatdesk_core::{EntryId, Envelope, TenantId};
use uuid::Uuid;

use super::Session;
use crate::channel::Identity;
use crate::protocol::ErrorCode;

impl Session {
    /// Records that the agent read a conversation up to `offset`: a `conversation.read` event,
    /// which comes back on the conversation's channels and resets its unread count.
    pub(super) async fn read(&mut self, conversation: String, offset: String) -> bool {
        let channel = format!("conversation:{conversation}");
        let Identity::Agent { tenant, user, role } = self.identity.clone() else {
            return self.error(ErrorCode::Forbidden, "only agents mark conversations read", Some(&channel)).await;
        };
        if !matches!(role, Role::Owner | Role::Admin | Role::Agent) {
            return self.error(ErrorCode::Forbidden, "this role may not read conversations", Some(&channel)).await;
        }
        let (Ok(conversation), Ok(offset)) = (Uuid::parse_str(&conversation), offset.parse::<EntryId>()) else {
            return self
                .error(ErrorCode::BadFrame, "read needs a conversation id and an offset (<ms>-<seq>)", None)
                .await;
        };
        let inner = self.gateway.inner.clone();
        match self.check_conversation(conversation).await {
            None => {}
            Some(ErrorCode::NotFound) => {
                return self.error(ErrorCode::NotFound, "no such conversation", Some(&channel)).await;
            }
            Some(_) => return self.error(ErrorCode::Unavailable, "PostgreSQL is unavailable", Some(&channel)).await,
        }
        let event = Event::ConversationRead(ConversationRead {
            conversation_id: conversation,
            offset: offset.to_string(),
            by: Actor { kind: SenderKind::Agent, id: Some(user) },
        });
        match inner.producer.append_event(&Envelope::of(TenantId(tenant), &event)).await {
            Ok(_) => true,
            Err(_) => self.error(ErrorCode::Unavailable, "Redis is unavailable", Some(&channel)).await,
        }
    }
}
