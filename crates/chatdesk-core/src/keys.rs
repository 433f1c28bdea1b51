//! The one Redis key scheme. Every key that belongs to a partition carries the hash tag
//! `{<family>:<partition>}`, so a partition's stream, its dead letters and any per-partition
//! bookkeeping hash to the same cluster slot: multi-key commands and Lua scripts that touch them
//! run unchanged on a single Redis and on Redis Cluster.
//!
//! ```text
//! <prefix>:stream:{events:3}       the stream of partition 3 of the `events` family
//! <prefix>:dlq.events:{events:3}   its dead letters (the `dlq.events` family, same slot)
//! ```
//!
//! The prefix isolates deployments (and tests) sharing one Redis.

use crate::ids::TenantId;
use crate::names::StreamName;

/// Builds every key of one deployment. No other code builds key strings: a key's slot, and so
/// what a Lua script may touch together, is decided here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyScheme {
    prefix: String,
}

impl KeyScheme {
    /// `prefix` must not contain `{` or `}`: a brace in it would move the hash tag.
    pub fn new(prefix: impl Into<String>) -> Result<Self, String> {
        let prefix = prefix.into();
        if prefix.is_empty() || prefix.contains(['{', '}']) || prefix.contains(char::is_whitespace) {
            return Err(format!("key prefix {prefix:?} must be non-empty, without braces or spaces"));
        }
        Ok(Self { prefix })
    }

    /// A key of its own slot, named by `tag` (e.g. one rate-limit bucket): `<prefix>:<name>:{<tag>}`.
    pub fn tagged(&self, name: &str, tag: &str) -> String {
        format!("{}:{name}:{{{tag}}}", self.prefix)
    }

    pub fn partition(&self, family: &StreamName, partition: u16) -> PartitionKeys {
        let tag = format!("{{{family}:{partition}}}");
        PartitionKeys {
            family: family.clone(),
            partition,
            stream: format!("{}:stream:{tag}", self.prefix),
            dead_letters: format!("{}:dlq.{family}:{tag}", self.prefix),
            prefix: self.prefix.clone(),
            tag,
        }
    }

    /// Remembers a client's message id (`client_msg_id`) in one conversation.
    pub fn client_message(&self, tenant: &TenantId, conversation: &uuid::Uuid, client_msg_id: &str) -> String {
        format!("{}:client-msg:{tenant}:{conversation}:{client_msg_id}", self.prefix)
    }

    /// The ingress request count of one inbox in one second.
    pub fn ingress_rate(&self, inbox: &uuid::Uuid, unix_second: u64) -> String {
        format!("{}:ingress-rate:{inbox}:{unix_second}", self.prefix)
    }

    /// The pub/sub channel of ephemeral signals (typing, presence) between gateways.
    pub fn ephemeral_channel(&self) -> String {
        format!("{}:ephemeral", self.prefix)
    }

    /// The pub/sub channel on which operators' tools tell a group's consumers to claim now
    /// (message `<family>:<group>`): entries were just handed back to that group.
    pub fn claim_now_channel(&self) -> String {
        format!("{}:claim-now", self.prefix)
    }

    /// The pub/sub channel on which a changed inbox is announced, so every process drops its
    /// cached copy.
    pub fn inbox_changes_channel(&self) -> String {
        format!("{}:inbox-changes", self.prefix)
    }

    /// Failed logins for one account (lower-cased e-mail) in the current window.
    pub fn login_failures_of_account(&self, email: &str, window: u64) -> String {
        format!("{}:login-failures:account:{email}:{window}", self.prefix)
    }

    /// Failed logins from one client address in the current window.
    pub fn login_failures_of_address(&self, address: &std::net::IpAddr, window: u64) -> String {
        format!("{}:login-failures:address:{address}:{window}", self.prefix)
    }

    /// Failed webhook authentications from one client address to one inbox in one minute.
    pub fn webhook_failures_of(&self, address: &std::net::IpAddr, inbox: &uuid::Uuid, minute: u64) -> String {
        format!("{}:webhook-failures:{address}:{inbox}:{minute}", self.prefix)
    }

    /// Widget messages written by one visitor in one minute.
    pub fn widget_messages_of_visitor(&self, visitor: &uuid::Uuid, minute: u64) -> String {
        format!("{}:widget-messages:visitor:{visitor}:{minute}", self.prefix)
    }

    /// Widget messages written from one client address in one minute.
    pub fn widget_messages_of_address(&self, address: &std::net::IpAddr, minute: u64) -> String {
        format!("{}:widget-messages:address:{address}:{minute}", self.prefix)
    }

    /// Widget sessions started from one client address in one minute.
    pub fn widget_sessions_of_address(&self, address: &std::net::IpAddr, minute: u64) -> String {
        format!("{}:widget-sessions:{address}:{minute}", self.prefix)
    }

    /// A campaign's state as senders check it before each of its messages (running, paused,
    /// cancelled).
    pub fn campaign_state(&self, campaign: &uuid::Uuid) -> String {
        format!("{}:campaign-state:{campaign}", self.prefix)
    }

    /// A conversation's bot state (a hash): pending messages, session, handoff, replies, flow
    /// progress, the last event handled.
    pub fn autoreply_conversation(&self, conversation: &uuid::Uuid) -> String {
        format!("{}:autoreply:conversation:{conversation}", self.prefix)
    }

    /// Conversations waiting for the bot (a sorted set: `<tenant>:<conversation>` scored by when
    /// their quiet period ends).
    pub fn autoreply_due(&self) -> String {
        format!("{}:autoreply:due", self.prefix)
    }

    /// Which process answers a conversation right now: one at a time.
    pub fn autoreply_lease(&self, conversation: &uuid::Uuid) -> String {
        format!("{}:autoreply:lease:{conversation}", self.prefix)
    }

    /// A tenant's model use on one UTC day (`calls`, `tokens`).
    pub fn autoreply_budget(&self, tenant: &TenantId, day: u64) -> String {
        format!("{}:autoreply:budget:{tenant}:{day}", self.prefix)
    }

    /// Which broadcaster process runs a campaign: one at a time.
    pub fn campaign_runner(&self, campaign: &uuid::Uuid) -> String {
        format!("{}:campaign-runner:{campaign}", self.prefix)
    }

    /// Addresses a tenant's campaigns reached in the last 24 hours (its unique-recipient quota).
    pub fn campaign_quota(&self, tenant: &TenantId) -> String {
        format!("{}:campaign-quota:{{{tenant}}}", self.prefix)
    }

    /// The live agent sockets of one tenant.
    pub fn presence(&self, tenant: &TenantId) -> String {
        format!("{}:presence:{tenant}", self.prefix)
    }

    /// A widget visitor's live sockets on its conversation, scored like agents' presence; the
    /// key lapses with its last socket.
    pub fn visitor_presence(&self, conversation: &uuid::Uuid) -> String {
        format!("{}:visitor-presence:{conversation}", self.prefix)
    }

    /// A tenant's routing state: which agent holds each open routed conversation, and the
    /// round-robin position. Its load sets ([`KeyScheme::routing_load_prefix`]) share its slot.
    pub fn routing(&self, tenant: &TenantId) -> String {
        format!("{}:routing:{{{tenant}}}", self.prefix)
    }

    /// Notifications waiting for one recipient (`agent:<user>` or `visitor:<conversation>`),
    /// by event id, until its e-mail goes.
    pub fn notify_pending(&self, recipient: &str) -> String {
        format!("{}:notify:{{{recipient}}}", self.prefix)
    }

    /// When a recipient's last e-mail went: its presence holds the next one back.
    pub fn notify_last(&self, recipient: &str) -> String {
        format!("{}:notify-last:{{{recipient}}}", self.prefix)
    }

    /// Recipients with notifications waiting, scored by when their e-mail is due.
    pub fn notify_due(&self) -> String {
        format!("{}:notify-due", self.prefix)
    }

    /// Prefix of a tenant's per-agent load sets (`<prefix><agent id>`: the open conversations the
    /// agent holds), in the slot of [`KeyScheme::routing`].
    pub fn routing_load_prefix(&self, tenant: &TenantId) -> String {
        format!("{}:routing-load:{{{tenant}}}:", self.prefix)
    }
}

/// The keys of one partition of one stream family; all in one cluster slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKeys {
    pub family: StreamName,
    pub partition: u16,
    pub stream: String,
    pub dead_letters: String,
    prefix: String,
    tag: String,
}

impl PartitionKeys {
    /// A key of the partition's own bookkeeping: `<prefix>:<name>:{<family>:<p>}`.
    pub fn key(&self, name: &'static str) -> String {
        format!("{}:{name}:{}", self.prefix, self.tag)
    }

    /// One item of the partition's bookkeeping: `<prefix>:<name>:{<family>:<p>}:<id>`. `id` comes
    /// after the tag, so braces in it (ids are often user input) cannot move the key's slot.
    pub fn scoped(&self, name: &'static str, id: &str) -> String {
        format!("{}:{name}:{}:{id}", self.prefix, self.tag)
    }

    /// Where [`PartitionKeys::scoped`]'s key was kept before ids moved after the hash tag
    /// (`<prefix>:<name>:<id>:{<family>:<p>}`), so a deployment created then finds its senders
    /// again. `None` for an id with braces: such a key was never in this slot.
    pub fn legacy_scoped(&self, name: &'static str, id: &str) -> Option<String> {
        (!id.contains(['{', '}'])).then(|| format!("{}:{name}:{id}:{}", self.prefix, self.tag))
    }

    /// The partition's epoch: made once with the stream, lost with its data.
    pub fn epoch(&self) -> String {
        self.key("epoch")
    }
}

/// FNV-1a, 64 bit. Chosen because it is tiny, has no dependency and, unlike `std`'s
/// `DefaultHasher`, is guaranteed never to change between Rust releases: a tenant must map to
/// the same partition forever, or its resume cursors would point into the wrong stream.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `partition = hash(tenant) % partitions`: all of a tenant's events land in one partition, so
/// they are totally ordered and one entry id is a complete resume cursor.
pub fn partition_for_tenant(tenant: &TenantId, partitions: u16) -> u16 {
    assert!(partitions > 0, "partition count is validated to be at least 1");
    (fnv1a_64(tenant.0.as_bytes()) % u64::from(partitions)) as u16
}

/// Redis Cluster's slot for a key (CRC16/XMODEM of the hash tag, mod 16384), used by tests and
/// tooling to check that keys that must share a slot do.
pub fn cluster_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    let mut crc: u16 = 0;
    for byte in hashed {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16_384
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn partition_keys_share_one_slot() {
        let scheme = KeyScheme::new("chatdesk").unwrap();
        let events = StreamName::parse("events").unwrap();
        let keys = scheme.partition(&events, 3);
        assert_eq!(keys.stream, "chatdesk:stream:{events:3}");
        assert_eq!(keys.dead_letters, "chatdesk:dlq.events:{events:3}");
        assert_eq!(cluster_slot(&keys.stream), cluster_slot(&keys.dead_letters));
        assert_ne!(cluster_slot(&keys.stream), cluster_slot(&scheme.partition(&events, 4).stream));
        assert_eq!(keys.epoch(), "chatdesk:epoch:{events:3}");
        let hostile = keys.scoped("contact", "inbox:{evil}");
        assert_eq!(hostile, "chatdesk:contact:{events:3}:inbox:{evil}");
        assert_eq!(cluster_slot(&hostile), cluster_slot(&keys.stream));
    }

    #[test]
    fn cluster_slot_matches_redis() {
        // Values from CLUSTER KEYSLOT on Redis 7.
        assert_eq!(cluster_slot("foo"), 12182);
        assert_eq!(cluster_slot("{user1000}.following"), cluster_slot("{user1000}.followers"));
        assert_eq!(cluster_slot("123456789"), 12739);
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        let tenant = TenantId(Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001));
        assert_eq!(partition_for_tenant(&tenant, 8), partition_for_tenant(&tenant, 8));
        let mut seen = [0u32; 8];
        for index in 0..800u128 {
            let tenant = TenantId(Uuid::from_u128(index * 7919));
            seen[partition_for_tenant(&tenant, 8) as usize] += 1;
        }
        assert!(seen.iter().all(|count| *count > 50), "uneven spread: {seen:?}");
    }

    #[test]
    fn prefixes_with_braces_are_refused() {
        assert!(KeyScheme::new("a{b").is_err());
        assert!(KeyScheme::new("").is_err());
        assert!(KeyScheme::new("test-1").is_ok());
    }
}
