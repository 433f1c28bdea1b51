//! Appending what channels send, exactly once and in order.
//!
//! Two Lua scripts, each on the tenant's partition slot (every key carries the partition's
//! hash tag), so they are atomic with the XADDs they make:
//!
//! - [`Ingest::resolve_conversation`] finds or creates the contact and the open conversation of
//!   an external sender. The caller that creates them appends `contact.created` /
//!   `conversation.created` inside the same script, so whoever resolves the ids afterwards
//!   appends its message behind those events: 50 concurrent first messages from one new contact
//!   make one contact and one conversation, and the writer never sees a message before its
//!   conversation.
//! - [`Ingest::append_once`] appends an entry unless its deduplication key (a provider's message
//!   id) was seen within the window; a duplicate is answered with the first entry's id.

use std::sync::Arc;
use std::time::Duration;

use chatdesk_core::keys::partition_for_tenant;
use chatdesk_core::{EntryId, KeyScheme, StreamsConfig, TenantId};
use fred::prelude::*;
use uuid::Uuid;

use crate::entry::NewEntry;
use crate::producer::ProduceError;

const RESOLVE: &str = r#"
local contact = redis.call('GET', KEYS[2])
local created_contact = 0
if not contact then
  contact = ARGV[1]
  redis.call('SET', KEYS[2], contact)
  created_contact = 1
end
local conversation = redis.call('GET', KEYS[3])
local created_conversation = 0
if not conversation then
  conversation = ARGV[2]
  created_conversation = 1
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[3], conversation, 'EX', ttl)
elseif created_conversation == 1 then
  redis.call('SET', KEYS[3], conversation)
end
local index = 4
local contact_fields = tonumber(ARGV[index])
if created_contact == 1 then
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, index + 1, index + contact_fields))
end
index = index + contact_fields + 1
local conversation_fields = tonumber(ARGV[index])
if created_conversation == 1 then
  local fields = {}
  for position = index + 1, index + conversation_fields do
    fields[#fields + 1] = (string.gsub(ARGV[position], '__CONTACT_ID__', contact))
  end
  redis.call('XADD', KEYS[1], '*', unpack(fields))
end
return {contact, conversation, created_contact, created_conversation}
"#;

const APPEND_ONCE: &str = r#"
local existing = redis.call('GET', KEYS[2])
if existing then
  return {0, existing}
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return {1, id}
"#;

/// Put in a `conversation.created` payload where the contact id goes: the script substitutes the
/// contact id it resolved (an existing contact's, or the new one).
pub const CONTACT_ID_PLACEHOLDER: &str = "__CONTACT_ID__";

/// The contact and conversation a sender's message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationRef {
    pub contact_id: Uuid,
    pub conversation_id: Uuid,
    pub created_contact: bool,
    pub created_conversation: bool,
}

/// What [`Ingest::append_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    New(EntryId),
    /// Seen within the window; this is the first entry's id.
    Duplicate(EntryId),
}

/// The first time an external sender writes: the events that introduce them.
pub struct Introduction {
    pub contact_id: Uuid,
    pub conversation_id: Uuid,
    /// `contact.created`, with `contact_id`.
    pub contact_created: NewEntry,
    /// `conversation.created`, with `conversation_id` and [`CONTACT_ID_PLACEHOLDER`] for the contact.
    pub conversation_created: NewEntry,
}

#[derive(Clone)]
pub struct Ingest {
    client: Client,
    keys: KeyScheme,
    config: Arc<StreamsConfig>,
}

fn field_args(entry: &NewEntry) -> Vec<String> {
    let fields = entry.fields();
    let mut args = Vec::with_capacity(fields.len() * 2 + 1);
    args.push((fields.len() * 2).to_string());
    for (name, value) in fields {
        args.push(name.to_owned());
        args.push(value);
    }
    args
}

fn parse_id(raw: &str) -> Result<Uuid, ProduceError> {
    Uuid::parse_str(raw).map_err(|_| ProduceError::InvalidId { key: "identity".into(), id: raw.to_owned() })
}

impl Ingest {
    pub fn new(client: Client, keys: KeyScheme, config: Arc<StreamsConfig>) -> Self {
        Self { client, keys, config }
    }

    /// The events stream key of `tenant`, and a key in its slot for `what`.
    fn keys_for(&self, tenant: &TenantId, what: &[&str]) -> Result<(String, Vec<String>), ProduceError> {
        let stream = self.config.stream("events").ok_or_else(|| ProduceError::UnknownStream("events".into()))?;
        let partition = partition_for_tenant(tenant, stream.partitions);
        let keys = self.keys.partition(&stream.name, partition);
        let tag = &keys.stream[keys.stream.find('{').unwrap_or(0)..];
        let scoped = what.iter().map(|name| format!("{}:{name}:{tag}", self.keys.prefix())).collect();
        Ok((keys.stream, scoped))
    }

    /// Finds or creates the contact `(inbox, external_id)` and its open conversation. With
    /// `standby` set, the conversation is forgotten after that much silence and the next message
    /// opens a new one; each resolution restarts the window.
    pub async fn resolve_conversation(
        &self,
        tenant: &TenantId,
        inbox: Uuid,
        external_id: &str,
        introduction: &Introduction,
        standby: Option<Duration>,
    ) -> Result<ConversationRef, ProduceError> {
        let identity = format!("{inbox}:{external_id}");
        let (stream, scoped) =
            self.keys_for(tenant, &[&format!("contact:{identity}"), &format!("conversation:{identity}")])?;
        let mut args = vec![
            introduction.contact_id.to_string(),
            introduction.conversation_id.to_string(),
            standby.map_or(0, |window| window.as_secs().max(1)).to_string(),
        ];
        args.extend(field_args(&introduction.contact_created));
        args.extend(field_args(&introduction.conversation_created));
        let keys = vec![stream.clone(), scoped[0].clone(), scoped[1].clone()];
        let (contact, conversation, created_contact, created_conversation): (String, String, i64, i64) = self
            .client
            .eval(RESOLVE, keys, args)
            .await
            .map_err(|source| ProduceError::Redis { key: stream.clone(), source })?;
        Ok(ConversationRef {
            contact_id: parse_id(&contact)?,
            conversation_id: parse_id(&conversation)?,
            created_contact: created_contact == 1,
            created_conversation: created_conversation == 1,
        })
    }

    /// Appends `entry` to its tenant's events partition unless `dedupe_id` was appended within
    /// `window`.
    pub async fn append_once(
        &self,
        entry: &NewEntry,
        dedupe_id: &str,
        window: Duration,
    ) -> Result<Appended, ProduceError> {
        let (stream, scoped) = self.keys_for(&entry.tenant, &[&format!("seen:{dedupe_id}")])?;
        let mut args = vec![window.as_secs().max(1).to_string()];
        args.extend(field_args(entry).into_iter().skip(1));
        let (fresh, id): (i64, String) = self
            .client
            .eval(APPEND_ONCE, vec![stream.clone(), scoped[0].clone()], args)
            .await
            .map_err(|source| ProduceError::Redis { key: stream.clone(), source })?;
        let id = id.parse().map_err(|_| ProduceError::InvalidId { key: stream, id })?;
        if fresh == 1 {
            ::metrics::counter!(crate::metrics::ENTRIES_APPENDED_TOTAL, "stream" => "events").increment(1);
            Ok(Appended::New(id))
        } else {
            Ok(Appended::Duplicate(id))
        }
    }
}
