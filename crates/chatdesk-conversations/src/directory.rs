//! What channels send, appended exactly once and in order, in one Redis round trip.
//!
//! One Lua script on the tenant's events partition (every key it touches carries the partition's
//! hash tag, so it runs unchanged on Redis Cluster) does, atomically:
//!
//! 1. counts the request against the inbox's per-second limit (and stops there when over it);
//! 2. checks the message's deduplication key (a provider's message id seen within the window is
//!    answered with the first entry's id);
//! 3. finds or creates the sender's contact and open conversation (with a standby window, a
//!    conversation silent for that long is forgotten and the next message opens a new one);
//! 4. appends `contact.created` / `conversation.created` when it created them, then the message.
//!
//! 50 concurrent first messages from one new contact therefore make one contact and one
//! conversation, and the writer never sees a message before its conversation.
//!
//! Before step 1 the script takes over, once, a sender's keys from where deployments made before
//! ids moved after the hash tag kept them ([`chatdesk_core::PartitionKeys::legacy_scoped`]).
//!
//! The script is given each record as its typed routing fields (from the one encoder,
//! [`Envelope::encode`]) and its payload without the ids only the script can know (the contact's
//! and the conversation's, which may already exist); it adds those as JSON members.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chatdesk_core::config::EVENTS_STREAM;
use chatdesk_core::envelope::{FIELD_CONVERSATION, FIELD_PAYLOAD};
use chatdesk_core::events::{Actor, ContactCreated, ConversationCreated, Direction, Event, MessageCreated, SenderKind};
use chatdesk_core::keys::partition_for_tenant;
use chatdesk_core::{EntryId, Envelope, EventId, KeyScheme, PartitionKeys, StreamsConfig, TenantId};
use chatdesk_streams::{Connections, Script};
use fred::prelude::*;
use uuid::Uuid;

/// How long a sender with a standby window (a widget visitor) is remembered without a message.
pub const VISITOR_FORGET: Duration = Duration::from_secs(30 * 86_400);

/// How long a provider's message id is remembered: providers retry for up to 7 days.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

static INGEST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- Keys of deployments made before ids moved after the hash tag (KEYS[6..8]) are taken over
-- once, so their senders keep their contact, conversation and duplicate window.
for index = 2, 4 do
  local legacy = KEYS[index + 4]
  if legacy ~= KEYS[index] and redis.call('EXISTS', legacy) == 1 and redis.call('EXISTS', KEYS[index]) == 0 then
    redis.call('RENAME', legacy, KEYS[index])
  end
end
local limit = tonumber(ARGV[1])
if limit > 0 then
  local count = redis.call('INCR', KEYS[5])
  if count == 1 then
    redis.call('EXPIRE', KEYS[5], 2)
  end
  if count > limit then
    return {'limited'}
  end
end
local has_message = ARGV[4] == '1'
if has_message then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    return {'duplicate', seen}
  end
end
-- A widget session keeps ids for its visitor without announcing them ('~' before the id, and
-- only for the standby window); the first message announces them. Sessions alone leave nothing
-- for the writer, and no key without a time to live.
local reserve = ARGV[10] == '1'
local standby = tonumber(ARGV[2])
local forget = tonumber(ARGV[9])
local function resolve(key, fresh, ttl, reserved_ttl)
  local value = redis.call('GET', key)
  local id, announce = value, 0
  if not value then
    id, announce = fresh, 1
  elseif string.sub(value, 1, 1) == '~' then
    id, announce = string.sub(value, 2), 1
  end
  if reserve and announce == 1 then
    redis.call('SET', key, '~' .. id, 'EX', reserved_ttl)
    return id, 0
  end
  if ttl > 0 then
    redis.call('SET', key, id, 'EX', ttl)
  elseif value ~= id then
    redis.call('SET', key, id)
  end
  return id, announce
end
local reserved_ttl = standby > 0 and standby or 600
local contact, created_contact = resolve(KEYS[2], ARGV[5], forget, reserved_ttl)
local conversation, created_conversation = resolve(KEYS[3], ARGV[6], standby, reserved_ttl)
-- A record's arguments: the number of routing values, the routing fields, the payload's other
-- members (a JSON object's inside, possibly empty).
local function append(at, in_conversation, ids)
  local count = tonumber(ARGV[at])
  local fields = {unpack(ARGV, at + 1, at + count)}
  if in_conversation then
    fields[#fields + 1] = ARGV[7]
    fields[#fields + 1] = conversation
  end
  local rest = ARGV[at + count + 1]
  local payload = '{' .. ids .. '}'
  if rest ~= '' then
    payload = '{' .. ids .. ',' .. rest .. '}'
  end
  fields[#fields + 1] = ARGV[8]
  fields[#fields + 1] = payload
  return redis.call('XADD', KEYS[1], '*', unpack(fields)), at + count + 2
end
local contact_member = '"contact_id":"' .. contact .. '"'
local conversation_member = '"conversation_id":"' .. conversation .. '"'
local next_record = 11
local skip = function(at) return at + tonumber(ARGV[at]) + 2 end
if created_contact == 1 then
  local _, after = append(next_record, false, contact_member)
  next_record = after
else
  next_record = skip(next_record)
end
if created_conversation == 1 then
  local _, after = append(next_record, true, conversation_member .. ',' .. contact_member)
  next_record = after
else
  next_record = skip(next_record)
end
if not has_message then
  return {'resolved', contact, conversation, created_contact, created_conversation}
end
local id = append(next_record, true,
  conversation_member .. ',' .. contact_member .. ',"sender":{"kind":"customer","id":"' .. contact .. '"}')
redis.call('SET', KEYS[4], id .. ' ' .. conversation, 'EX', tonumber(ARGV[3]))
return {'appended', contact, conversation, created_contact, created_conversation, id}
"#,
    )
});

static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('EXPIRE', KEYS[1], 2)
end
return count
"#,
    )
});

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("streams.toml declares no `{EVENTS_STREAM}` stream")]
    NoEventsStream,
    #[error("the ingest script on {key} failed")]
    Redis {
        key: String,
        #[source]
        source: Error,
    },
    #[error("the ingest script answered {0:?}")]
    Answer(String),
    /// The sender's input cannot be stored as it is (the caller answers 422).
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The longest external sender id and provider message id, in bytes: both are keys of
/// PostgreSQL indexes, whose entries have a size limit; a longer one would be acknowledged
/// here and then refused by the writer.
pub const MAX_ID_BYTES: usize = 256;
/// The longest contact name and e-mail, in characters.
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_EMAIL_CHARS: usize = 320;

/// How deep a message's channel fields (`extra`) may nest. Every reader parses the payload
/// again, with a recursion limit; a depth near it would pass here and fail there.
pub const MAX_EXTRA_DEPTH: usize = 32;

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DirectoryError {
    DirectoryError::Invalid { field, reason: reason.into() }
}

/// Checks what a sender supplied against what PostgreSQL will store, before anything is
/// appended: an acknowledged message must never be refused later by the writer.
fn checked(
    sender: &Introduction,
    message: Option<&InboundMessage>,
) -> Result<(String, Option<String>), DirectoryError> {
    let external_id = chatdesk_core::envelope::text_without_nul(&sender.external_id).into_owned();
    if external_id.trim().is_empty() || external_id.len() > MAX_ID_BYTES {
        return Err(invalid("from", format!("the sender id must be 1 to {MAX_ID_BYTES} bytes")));
    }
    if sender.name.as_ref().is_some_and(|name| name.chars().count() > MAX_NAME_CHARS) {
        return Err(invalid("name", format!("must be at most {MAX_NAME_CHARS} characters")));
    }
    if sender.email.as_ref().is_some_and(|email| email.chars().count() > MAX_EMAIL_CHARS) {
        return Err(invalid("email", format!("must be at most {MAX_EMAIL_CHARS} characters")));
    }
    if let Some(extra) = message.and_then(|message| message.extra.as_ref())
        && depth(extra) > MAX_EXTRA_DEPTH
    {
        return Err(invalid("extra", format!("must not be nested deeper than {MAX_EXTRA_DEPTH} levels")));
    }
    if let Some(message) = message
        && message.text.chars().count() > crate::text::MAX_TEXT_CHARS
    {
        return Err(invalid("text", format!("must be at most {} characters", crate::text::MAX_TEXT_CHARS)));
    }
    let provider_message_id = match message {
        Some(message) => {
            let id = chatdesk_core::envelope::text_without_nul(&message.provider_message_id).into_owned();
            if id.trim().is_empty() || id.len() > MAX_ID_BYTES {
                return Err(invalid("message_id", format!("must be 1 to {MAX_ID_BYTES} bytes")));
            }
            Some(id)
        }
        None => None,
    };
    Ok((external_id, provider_message_id))
}

/// The sender of a channel message, as the channel names them.
#[derive(Debug, Clone, PartialEq)]
pub struct Introduction {
    pub inbox: Uuid,
    /// The sender's id on the channel (phone number, Telegram chat id, visitor id, …).
    pub external_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// One inbound message, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// The provider's id of the message: the deduplication key.
    pub provider_message_id: String,
    pub text: String,
    /// Channel fields kept as they came (attachment metadata, …).
    pub extra: Option<serde_json::Value>,
    pub sent_at_ms: Option<u64>,
}

/// One call of the ingest script.
#[derive(Debug, Clone)]
pub struct IngestRequest<'a> {
    pub tenant: TenantId,
    pub sender: &'a Introduction,
    /// `None`: only find or create the conversation (a widget session starting).
    pub message: Option<&'a InboundMessage>,
    /// With a window, the conversation is forgotten after that much silence; each call restarts it.
    /// Such a sender (a widget visitor) is also forgotten after [`VISITOR_FORGET`] without a
    /// message, so no key of theirs lives forever; their contact id is derived from who they are,
    /// so a visitor who comes back later is the same contact again.
    pub standby: Option<Duration>,
    /// Count this request against the inbox's per-second limit of this many requests.
    pub rate_per_second: Option<u32>,
    /// With no message: keep the contact's and conversation's ids for the sender (for the
    /// standby window) without appending anything; the sender's first message announces them.
    /// A widget session starts so: sessions alone make no conversation for agents or the writer.
    pub reserve: bool,
}

/// What the ingest script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// The message was appended (with its contact and conversation, when they were new).
    Appended { contact_id: Uuid, conversation_id: Uuid, event_id: EventId, offset: EntryId },
    /// Seen within the window: the first entry's offset and conversation.
    Duplicate { conversation_id: Option<Uuid>, offset: EntryId },
    /// No message: the contact and conversation found or created (or reserved).
    Resolved { contact_id: Uuid, conversation_id: Uuid },
    /// The inbox is over its per-second limit; nothing was appended.
    RateLimited,
}

/// What [`Directory::append_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Once {
    New(EntryId),
    /// Seen within the window; this is the first entry's id.
    Duplicate(EntryId),
}

#[derive(Clone)]
pub struct Directory {
    /// Taken in turn: every webhook's message goes through here (see [`Connections`]).
    connections: Connections,
    keys: KeyScheme,
    config: Arc<StreamsConfig>,
}

/// A record's script arguments: its routing fields (no conversation, no payload; the script adds
/// them) and its payload's members without `without`, from [`Envelope::unfinished`].
fn record_arguments((envelope, mut payload): (Envelope, serde_json::Value), without: &[&str]) -> Vec<String> {
    let routing: Vec<(&'static str, String)> = envelope
        .encode()
        .into_iter()
        .filter(|(field, _)| *field != FIELD_CONVERSATION && *field != FIELD_PAYLOAD)
        .collect();
    let mut args = Vec::with_capacity(routing.len() * 2 + 2);
    args.push((routing.len() * 2).to_string());
    for (field, value) in routing {
        args.push(field.to_owned());
        args.push(value);
    }
    if let Some(object) = payload.as_object_mut() {
        for member in without {
            object.remove(*member);
        }
    }
    let text = payload.to_string();
    args.push(text[1..text.len() - 1].to_owned());
    args
}

fn parse_uuid(raw: &str) -> Result<Uuid, DirectoryError> {
    Uuid::parse_str(raw).map_err(|_| DirectoryError::Answer(raw.to_owned()))
}

fn parse_offset(raw: &str) -> Result<EntryId, DirectoryError> {
    raw.parse().map_err(|_| DirectoryError::Answer(raw.to_owned()))
}

impl Directory {
    pub fn new(client: Client, keys: KeyScheme, config: Arc<StreamsConfig>) -> Self {
        Self::over(client.into(), keys, config)
    }

    /// A directory whose scripts take `connections` in turn.
    pub fn over(connections: Connections, keys: KeyScheme, config: Arc<StreamsConfig>) -> Self {
        Self { connections, keys, config }
    }

    fn partition(&self, tenant: &TenantId) -> Result<PartitionKeys, DirectoryError> {
        let stream = self.config.stream(EVENTS_STREAM).ok_or(DirectoryError::NoEventsStream)?;
        Ok(self.keys.partition(&stream.name, partition_for_tenant(tenant, stream.partitions)))
    }

    /// Runs the ingest script once (see the module docs).
    pub async fn ingest(&self, request: &IngestRequest<'_>) -> Result<Ingested, DirectoryError> {
        let partition = self.partition(&request.tenant)?;
        let sender = request.sender;
        let (external_id, provider_message_id) = checked(sender, request.message)?;
        let identity = format!("{}:{external_id}", sender.inbox);
        let dedupe = provider_message_id.as_ref().map(|id| format!("{}:{id}", sender.inbox));
        let second = chatdesk_core::envelope::now_ms() / 1000;
        let dedupe = dedupe.as_deref().unwrap_or("-");
        let scoped = [("contact", identity.as_str()), ("conversation", identity.as_str()), ("seen", dedupe)];
        let mut keys = vec![partition.stream.clone()];
        keys.extend(scoped.iter().map(|(name, id)| partition.scoped(name, id)));
        keys.push(partition.scoped("ingress-rate", &format!("{}:{second}", sender.inbox)));
        // Where the first three were kept before (the key itself when there is no such place).
        for (index, (name, id)) in scoped.iter().enumerate() {
            let current = keys[index + 1].clone();
            keys.push(partition.legacy_scoped(name, id).unwrap_or(current));
        }
        // A visitor that is forgotten and comes back must be the same contact (PostgreSQL keeps
        // it): its id is derived from the inbox and its identity.
        let contact_id = match request.standby {
            Some(_) => Uuid::new_v5(&sender.inbox, external_id.as_bytes()),
            None => Uuid::now_v7(),
        };
        let (conversation_id, event_id) = (Uuid::now_v7(), EventId::new());
        let mut args = vec![
            request.rate_per_second.unwrap_or(0).to_string(),
            request.standby.map_or(0, |window| window.as_secs().max(1)).to_string(),
            DEDUPE_WINDOW.as_secs().to_string(),
            if request.message.is_some() { "1" } else { "0" }.to_owned(),
            contact_id.to_string(),
            conversation_id.to_string(),
            FIELD_CONVERSATION.to_owned(),
            FIELD_PAYLOAD.to_owned(),
            request.standby.map_or(0, |_| VISITOR_FORGET.as_secs()).to_string(),
            if request.reserve && request.message.is_none() { "1" } else { "0" }.to_owned(),
        ];
        let contact = Event::ContactCreated(ContactCreated {
            contact_id,
            inbox_id: sender.inbox,
            external_id: external_id.clone(),
            name: sender.name.clone(),
            email: sender.email.clone(),
        });
        args.extend(record_arguments(Envelope::unfinished(request.tenant, &contact), &["contact_id"]));
        let conversation =
            Event::ConversationCreated(ConversationCreated { conversation_id, inbox_id: sender.inbox, contact_id });
        args.extend(record_arguments(
            Envelope::unfinished(request.tenant, &conversation),
            &["conversation_id", "contact_id"],
        ));
        if let Some(message) = request.message {
            let event = Event::MessageCreated(MessageCreated {
                conversation_id,
                inbox_id: sender.inbox,
                contact_id,
                direction: Direction::Inbound,
                sender: Actor { kind: SenderKind::Customer, id: Some(contact_id) },
                text: message.text.clone(),
                extra: message.extra.clone(),
                provider_message_id: provider_message_id.clone(),
                client_msg_id: None,
                sent_at_ms: message.sent_at_ms,
            });
            let (envelope, payload) = Envelope::unfinished(request.tenant, &event);
            args.extend(record_arguments(
                (envelope.with_event_id(event_id), payload),
                &["conversation_id", "contact_id", "sender"],
            ));
        }
        let started = std::time::Instant::now();
        let answer: Vec<String> = INGEST
            .call(self.connections.next(), keys, args)
            .await
            .map_err(|source| DirectoryError::Redis { key: partition.stream.clone(), source })?;
        ::metrics::histogram!(chatdesk_streams::metrics::APPEND_DURATION_SECONDS, "stream" => EVENTS_STREAM, "by" => "ingest")
            .record(started.elapsed().as_secs_f64());
        let field = |index: usize| answer.get(index).map(String::as_str).unwrap_or_default();
        let ingested = match field(0) {
            "limited" => Ingested::RateLimited,
            "duplicate" => {
                let mut parts = field(1).splitn(2, ' ');
                let offset = parse_offset(parts.next().unwrap_or_default())?;
                Ingested::Duplicate { offset, conversation_id: parts.next().and_then(|id| id.parse().ok()) }
            }
            "resolved" => {
                Ingested::Resolved { contact_id: parse_uuid(field(1))?, conversation_id: parse_uuid(field(2))? }
            }
            "appended" => Ingested::Appended {
                contact_id: parse_uuid(field(1))?,
                conversation_id: parse_uuid(field(2))?,
                event_id,
                offset: parse_offset(field(5))?,
            },
            other => return Err(DirectoryError::Answer(other.to_owned())),
        };
        let appended = u64::from(field(3) == "1") + u64::from(field(4) == "1") + u64::from(field(0) == "appended");
        if appended > 0 {
            ::metrics::counter!(chatdesk_streams::metrics::ENTRIES_APPENDED_TOTAL, "stream" => EVENTS_STREAM)
                .increment(appended);
        }
        Ok(ingested)
    }

    /// Counts a request that carries no message (a provider's status callback) against the
    /// inbox's per-second limit; `false` when the inbox is over it.
    pub async fn admit_request(&self, tenant: &TenantId, inbox: Uuid, per_second: u32) -> Result<bool, DirectoryError> {
        let partition = self.partition(tenant)?;
        let second = chatdesk_core::envelope::now_ms() / 1000;
        let key = partition.scoped("ingress-rate", &format!("{inbox}:{second}"));
        let count: i64 = COUNT
            .call(self.connections.next(), vec![key], vec![per_second.to_string()])
            .await
            .map_err(|source| DirectoryError::Redis { key: partition.stream.clone(), source })?;
        Ok(count <= i64::from(per_second))
    }

    /// Appends `entry` to its tenant's events partition unless `dedupe_id` was appended within
    /// `window` (a provider's status callback delivered again).
    pub async fn append_once(
        &self,
        entry: &Envelope,
        dedupe_id: &str,
        window: Duration,
    ) -> Result<Once, DirectoryError> {
        let partition = self.partition(&entry.tenant)?;
        let mut args = vec![window.as_secs().max(1).to_string()];
        for (field, value) in entry.encode() {
            args.push(field.to_owned());
            args.push(value);
        }
        let keys = vec![partition.stream.clone(), partition.scoped("seen", dedupe_id)];
        let (fresh, id): (i64, String) = chatdesk_streams::producer::APPEND_ONCE
            .call(self.connections.next(), keys, args)
            .await
            .map_err(|source| DirectoryError::Redis { key: partition.stream.clone(), source })?;
        let id = parse_offset(&id)?;
        if fresh == 1 {
            ::metrics::counter!(chatdesk_streams::metrics::ENTRIES_APPENDED_TOTAL, "stream" => EVENTS_STREAM)
                .increment(1);
            Ok(Once::New(id))
        } else {
            Ok(Once::Duplicate(id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the script builds from a record's arguments is the event Rust would have written.
    #[test]
    fn a_record_with_its_ids_added_is_the_event() {
        let (contact_id, conversation_id) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let event = Event::ConversationCreated(ConversationCreated {
            conversation_id,
            inbox_id: Uuid::from_u128(3),
            contact_id,
        });
        let args = record_arguments(
            Envelope::unfinished(TenantId(Uuid::from_u128(4)), &event),
            &["conversation_id", "contact_id"],
        );
        let rest = args.last().unwrap();
        let payload = format!(r#"{{"conversation_id":"{conversation_id}","contact_id":"{contact_id}",{rest}}}"#);
        assert_eq!(Event::from_payload(&payload).unwrap(), event);
        assert_eq!(args[0], "8", "type, tenant, event_id and time");
    }
}
