//! `typing`: tells the conversation's other subscribers, on every gateway, that the caller types.
//! Never stored.

use chatdesk_core::events::{Actor, Event, SenderKind, Typing};
use uuid::Uuid;

use super::Session;
use crate::channel::{Channel, Identity, authorize};
use crate::protocol::ErrorCode;

impl Session {
    /// Tells the conversation's other subscribers (on every gateway) that the caller types.
    pub(super) async fn typing(&mut self, conversation: String, typing: bool) -> bool {
        let channel = format!("conversation:{conversation}");
        let Ok(conversation) = Uuid::parse_str(&conversation) else {
            return self.error(ErrorCode::BadFrame, "conversation must be a conversation id", None).await;
        };
        if let Err(reason) = authorize(&self.identity, &Channel::Conversation(conversation)) {
            return self.error(ErrorCode::Forbidden, reason, Some(&channel)).await;
        }
        // An agent may type only into its tenant's conversations (a visitor's token names its own).
        if let Identity::Agent { .. } = self.identity
            && let Some(code) = self.check_conversation(conversation).await
        {
            let message =
                if code == ErrorCode::NotFound { "no such conversation" } else { "PostgreSQL is unavailable" };
            return self.error(code, message, Some(&channel)).await;
        }
        let who = match self.identity {
            Identity::Agent { user, .. } => Actor { kind: SenderKind::Agent, id: Some(user) },
            Identity::Visitor { .. } => Actor { kind: SenderKind::Customer, id: None },
        };
        let event = Event::Typing(Typing { conversation_id: conversation, who, typing });
        // A lost typing signal is harmless; the error frame tells a client that keeps trying.
        match crate::ephemeral::publish(&self.gateway, self.identity.tenant(), &event).await {
            Ok(()) => true,
            Err(_) => self.error(ErrorCode::Unavailable, "Redis is unavailable", Some(&channel)).await,
        }
    }
}
