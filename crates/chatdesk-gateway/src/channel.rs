//! Channels a socket can subscribe to, and who may.

use chatdesk_core::auth::Role;
use uuid::Uuid;

/// A channel, as named in `subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `inbox`: every event of the caller's tenant (conversation list changes, new messages).
    Inbox,
    /// `conversation:<id>`: one conversation's messages, statuses and changes.
    Conversation(Uuid),
    /// `ops`: stream health (length, lag, pending, dead letters per group) every few seconds, for
    /// SREs. Counts only: no tenant's data.
    Ops,
    /// `campaign:<id>`: a broadcast campaign's progress (counts, rate, status) when it changes,
    /// at most twice a second, for the marketer, admin and owner roles.
    Campaign(Uuid),
}

impl Channel {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "inbox" => return Some(Channel::Inbox),
            "ops" => return Some(Channel::Ops),
            _ => {}
        }
        if let Some(id) = name.strip_prefix("campaign:") {
            return Uuid::parse_str(id).ok().map(Channel::Campaign);
        }
        let id = name.strip_prefix("conversation:")?;
        Uuid::parse_str(id).ok().map(Channel::Conversation)
    }

    pub fn name(&self) -> String {
        match self {
            Channel::Inbox => "inbox".to_owned(),
            Channel::Conversation(id) => format!("conversation:{id}"),
            Channel::Ops => "ops".to_owned(),
            Channel::Campaign(id) => format!("campaign:{id}"),
        }
    }
}

/// Who is on the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Agent {
        tenant: Uuid,
        user: Uuid,
        role: Role,
    },
    /// A web-widget visitor: only its own conversation.
    Visitor {
        tenant: Uuid,
        conversation: Uuid,
    },
}

impl Identity {
    pub fn tenant(&self) -> Uuid {
        match self {
            Identity::Agent { tenant, .. } | Identity::Visitor { tenant, .. } => *tenant,
        }
    }
}

/// Why a subscription is refused before any lookup.
pub fn authorize(identity: &Identity, channel: &Channel) -> Result<(), &'static str> {
    match (identity, channel) {
        (Identity::Visitor { conversation, .. }, Channel::Conversation(wanted)) if conversation == wanted => Ok(()),
        (Identity::Visitor { .. }, _) => Err("a visitor may only subscribe to its own conversation"),
        // Partitions are shared by tenants: their figures (and the operators' actions) are the
        // deployment's, for its operators (the `sre` role of the operators' tenant, checked on
        // subscribe), not for a tenant's owner.
        (Identity::Agent { role: Role::Sre, .. }, Channel::Ops) => Ok(()),
        (Identity::Agent { .. }, Channel::Ops) => {
            Err("the ops channel is for the deployment's operators (the sre role)")
        }
        (Identity::Agent { role: Role::Owner | Role::Admin | Role::Marketer, .. }, Channel::Campaign(_)) => Ok(()),
        (Identity::Agent { .. }, Channel::Campaign(_)) => {
            Err("campaign channels are for the marketer, admin and owner roles")
        }
        (Identity::Agent { role: Role::Owner | Role::Admin | Role::Agent, .. }, _) => Ok(()),
        (Identity::Agent { .. }, _) => Err("this role may not read conversations"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_rights_hold() {
        let id = Uuid::now_v7();
        assert_eq!(Channel::parse("inbox"), Some(Channel::Inbox));
        assert_eq!(Channel::parse(&format!("conversation:{id}")), Some(Channel::Conversation(id)));
        assert_eq!(Channel::parse("conversation:nope"), None);
        assert_eq!(Channel::parse("everything"), None);
        let visitor = Identity::Visitor { tenant: Uuid::nil(), conversation: id };
        assert!(authorize(&visitor, &Channel::Conversation(id)).is_ok());
        assert!(authorize(&visitor, &Channel::Conversation(Uuid::now_v7())).is_err());
        assert!(authorize(&visitor, &Channel::Inbox).is_err());
        let marketer = Identity::Agent { tenant: Uuid::nil(), user: id, role: Role::Marketer };
        assert!(authorize(&marketer, &Channel::Inbox).is_err());
        assert!(authorize(&marketer, &Channel::Ops).is_err());
        assert!(authorize(&visitor, &Channel::Ops).is_err());
        let sre = Identity::Agent { tenant: Uuid::nil(), user: id, role: Role::Sre };
        assert!(authorize(&sre, &Channel::Ops).is_ok());
        assert!(authorize(&sre, &Channel::Inbox).is_err());
        let agent = Identity::Agent { tenant: Uuid::nil(), user: id, role: Role::Agent };
        assert!(authorize(&agent, &Channel::Ops).is_err());
        let owner = Identity::Agent { tenant: Uuid::nil(), user: id, role: Role::Owner };
        assert!(authorize(&owner, &Channel::Ops).is_err(), "a tenant's owner sees no deployment figures");
        assert_eq!(Channel::parse("ops"), Some(Channel::Ops));
        assert_eq!(Channel::parse(&format!("campaign:{id}")), Some(Channel::Campaign(id)));
        assert!(authorize(&marketer, &Channel::Campaign(id)).is_ok());
        assert!(authorize(&agent, &Channel::Campaign(id)).is_err());
        assert!(authorize(&visitor, &Channel::Campaign(id)).is_err());
    }
}
