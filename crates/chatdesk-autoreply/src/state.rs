//! A conversation's bot state in Redis: one hash per conversation, changed only by the Lua
//! scripts below, so a change and the check it depends on are one step.
//!
//! Fields: `seen` (the last events-stream entry id applied: an entry at or before it is a
//! replay and changes nothing), `session` and `session_start` (a session ends when the
//! conversation is resolved), `handoff` and `announced` (the bot is silent for the rest of the
//! session; `announced` once the `conversation.handoff` event is appended), `replies` (bot
//! replies this session), `pending` (the customer's unanswered messages, JSON), `first` and
//! `due` (the debounce window), `flow` (dialog-flow progress, JSON), and `tenant`, `inbox`,
//! `contact`. The hash expires [`StateStore::ttl`] after its last change.

use std::time::Duration;

use chatdesk_core::KeyScheme;
use chatdesk_streams::{RedisClient, Script};
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Pending messages kept per conversation at most (the oldest are dropped past it): a customer
/// pasting hundreds of lines must not grow the state without bound.
pub const MAX_PENDING: usize = 50;

const NEWER: &str = r#"
local function newer(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not am or not bm then return true end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local function fresh(key, offset)
  if offset == '' then return true end
  local seen = redis.call('HGET', key, 'seen')
  if seen and not newer(offset, seen) then return false end
  redis.call('HSET', key, 'seen', offset)
  return true
end
"#;

/// ARGV: offset, event id, text, choice id, now ms, debounce ms, max wait ms, ttl s, tenant,
/// inbox, contact, max pending. Returns `{outcome, due}`: 0 replay, 1 enqueued, 2 silent (the
/// bot handed off this session).
const ENQUEUE: &str = r#"
if not fresh(KEYS[1], ARGV[1]) then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'due') or '0')}
end
redis.call('HSET', KEYS[1], 'tenant', ARGV[9], 'inbox', ARGV[10], 'contact', ARGV[11])
if not redis.call('HGET', KEYS[1], 'session') then
  redis.call('HSET', KEYS[1], 'session', 1, 'session_start', ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[8])
if redis.call('HGET', KEYS[1], 'handoff') then return {2, 0} end
local raw = redis.call('HGET', KEYS[1], 'pending')
local pending = {}
if raw then pending = cjson.decode(raw) end
local now = tonumber(ARGV[5])
local first = tonumber(redis.call('HGET', KEYS[1], 'first') or ARGV[5])
if #pending == 0 then first = now end
table.insert(pending, {id = ARGV[2], offset = ARGV[1], text = ARGV[3], choice = ARGV[4]})
while #pending > tonumber(ARGV[12]) do table.remove(pending, 1) end
local due = math.min(now + tonumber(ARGV[6]), first + tonumber(ARGV[7]))
redis.call('HSET', KEYS[1], 'pending', cjson.encode(pending), 'first', first, 'due', due)
return {1, due}
"#;

/// ARGV: reason, detail, offset ('' when not from an entry), ttl s, now ms, create ('1': start
/// a state when there is none). Returns `{announce, session}`: announce 1 when the handoff's
/// event must be appended (new, or decided earlier but not yet announced).
const HANDOFF: &str = r#"
local exists = redis.call('EXISTS', KEYS[1]) == 1
if not exists and ARGV[6] ~= '1' then return {0, 0} end
if not fresh(KEYS[1], ARGV[3]) then return {0, 0} end
if not exists then redis.call('HSET', KEYS[1], 'session', 1, 'session_start', ARGV[5]) end
local session = tonumber(redis.call('HGET', KEYS[1], 'session') or '1')
redis.call('EXPIRE', KEYS[1], ARGV[4])
if redis.call('HGET', KEYS[1], 'handoff') then
  if redis.call('HGET', KEYS[1], 'announced') then return {0, session} end
  return {1, session}
end
redis.call('HSET', KEYS[1], 'handoff', ARGV[1], 'handoff_detail', ARGV[2])
redis.call('HDEL', KEYS[1], 'pending', 'due', 'first', 'flow')
return {1, session}
"#;

/// ARGV: offset, now ms, ttl s. Starts the next session (after a resolve). Returns the new
/// session, or 0 when nothing changed.
const NEW_SESSION: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if not fresh(KEYS[1], ARGV[1]) then return 0 end
local session = redis.call('HINCRBY', KEYS[1], 'session', 1)
redis.call('HDEL', KEYS[1], 'handoff', 'handoff_detail', 'announced', 'pending', 'due', 'first', 'flow', 'replies')
redis.call('HSET', KEYS[1], 'session_start', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return session
"#;

/// ARGV: session, handled message ids (JSON array), flow ('' unchanged, '-' cleared, else
/// JSON), replies added, now ms, debounce ms, ttl s. Removes the handled messages by id; those
/// that arrived meanwhile wait for their own quiet period. Returns the due time of what is left,
/// 0 when nothing is.
const FINISH: &str = r#"
if tonumber(redis.call('HGET', KEYS[1], 'session') or '0') ~= tonumber(ARGV[1]) then return 0 end
local raw = redis.call('HGET', KEYS[1], 'pending')
local pending = {}
if raw then pending = cjson.decode(raw) end
local handled = {}
for _, id in ipairs(cjson.decode(ARGV[2])) do handled[id] = true end
local left = {}
for _, message in ipairs(pending) do
  if not handled[message.id] then table.insert(left, message) end
end
if ARGV[3] == '-' then redis.call('HDEL', KEYS[1], 'flow')
elseif ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'flow', ARGV[3]) end
if tonumber(ARGV[4]) > 0 then redis.call('HINCRBY', KEYS[1], 'replies', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[7])
if #left == 0 then
  redis.call('HDEL', KEYS[1], 'pending', 'due', 'first')
  return 0
end
local due = tonumber(ARGV[5]) + tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'pending', cjson.encode(left), 'first', ARGV[5], 'due', due)
return due
"#;

/// One unanswered customer message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The message's event id.
    pub id: String,
    /// Its events-stream entry id.
    pub offset: String,
    pub text: String,
    /// The id of the button or list row the customer pressed ('' when none).
    #[serde(default)]
    pub choice: String,
}

/// A conversation's state as the answering task reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    pub tenant: Option<Uuid>,
    pub inbox: Option<Uuid>,
    pub contact: Option<Uuid>,
    pub session: u32,
    pub session_start_ms: i64,
    pub handoff: Option<String>,
    pub replies: u32,
    pub pending: Vec<Pending>,
    pub due_ms: i64,
    pub flow: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The entry was applied before: a replay.
    Replay { due_ms: i64 },
    /// Waiting for the bot until `due_ms`.
    Waiting { due_ms: i64 },
    /// The bot handed this session off: it stays silent.
    Silent,
}

/// A message to enqueue.
pub struct Inbound<'a> {
    pub offset: &'a str,
    pub event_id: Uuid,
    pub text: &'a str,
    pub choice: Option<&'a str>,
    pub tenant: Uuid,
    pub inbox: Uuid,
    pub contact: Uuid,
}

#[derive(Clone)]
pub struct StateStore {
    redis: RedisClient,
    keys: KeyScheme,
    pub ttl: Duration,
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    enqueue: Script,
    handoff: Script,
    new_session: Script,
    finish: Script,
}

fn now_ms() -> i64 {
    chatdesk_core::envelope::now_ms() as i64
}

impl StateStore {
    pub fn new(redis: RedisClient, keys: KeyScheme, ttl: Duration) -> Self {
        let scripts = Scripts {
            enqueue: Script::new(format!("{NEWER}{ENQUEUE}")),
            handoff: Script::new(format!("{NEWER}{HANDOFF}")),
            new_session: Script::new(format!("{NEWER}{NEW_SESSION}")),
            finish: Script::new(format!("{NEWER}{FINISH}")),
        };
        Self { redis, keys, ttl, scripts: std::sync::Arc::new(scripts) }
    }

    fn key(&self, conversation: Uuid) -> String {
        self.keys.autoreply_conversation(&conversation)
    }

    fn ttl_seconds(&self) -> String {
        self.ttl.as_secs().max(60).to_string()
    }

    /// Adds a customer message to the conversation's pending ones and schedules the answer.
    pub async fn enqueue(
        &self,
        conversation: Uuid,
        message: &Inbound<'_>,
        debounce_ms: i64,
        max_wait_ms: i64,
    ) -> Result<Enqueued, Error> {
        let args = vec![
            message.offset.to_owned(),
            message.event_id.to_string(),
            message.text.to_owned(),
            message.choice.unwrap_or_default().to_owned(),
            now_ms().to_string(),
            debounce_ms.to_string(),
            max_wait_ms.to_string(),
            self.ttl_seconds(),
            message.tenant.to_string(),
            message.inbox.to_string(),
            message.contact.to_string(),
            MAX_PENDING.to_string(),
        ];
        let (outcome, due_ms): (i64, i64) =
            self.scripts.enqueue.call(&self.redis, vec![self.key(conversation)], args).await?;
        let enqueued = match outcome {
            0 => Enqueued::Replay { due_ms },
            1 => Enqueued::Waiting { due_ms },
            _ => Enqueued::Silent,
        };
        // Scheduled even for a replay of a message still pending: the first delivery may have
        // died between the script and this.
        if let Enqueued::Waiting { due_ms } | Enqueued::Replay { due_ms } = enqueued
            && due_ms > 0
        {
            self.schedule(conversation, due_ms).await?;
        }
        Ok(enqueued)
    }

    pub async fn schedule(&self, conversation: Uuid, due_ms: i64) -> Result<(), Error> {
        let _: i64 = self
            .redis
            .zadd(self.keys.autoreply_due(), None, None, false, false, (due_ms as f64, conversation.to_string()))
            .await?;
        Ok(())
    }

    pub async fn unschedule(&self, conversation: Uuid) -> Result<(), Error> {
        let _: i64 = self.redis.zrem(self.keys.autoreply_due(), conversation.to_string()).await?;
        Ok(())
    }

    /// Conversations whose quiet period has ended, at most `limit`.
    pub async fn due(&self, limit: i64) -> Result<Vec<Uuid>, Error> {
        let members: Vec<String> = self
            .redis
            .zrangebyscore(self.keys.autoreply_due(), "-inf", now_ms() as f64, false, Some((0, limit)))
            .await?;
        Ok(members.iter().filter_map(|member| member.parse().ok()).collect())
    }

    /// Records a handoff; `Some(session)` when its event must be appended (then call
    /// [`Self::announced`]). `offset` is the entry that caused it, `None` for the bot's own
    /// decisions; `create` starts a state for a conversation the bot has not seen yet.
    pub async fn handoff(
        &self,
        conversation: Uuid,
        reason: &str,
        detail: Option<&str>,
        offset: Option<&str>,
        create: bool,
    ) -> Result<Option<u32>, Error> {
        let args = vec![
            reason.to_owned(),
            detail.unwrap_or_default().to_owned(),
            offset.unwrap_or_default().to_owned(),
            self.ttl_seconds(),
            now_ms().to_string(),
            if create { "1" } else { "0" }.to_owned(),
        ];
        let (announce, session): (i64, i64) =
            self.scripts.handoff.call(&self.redis, vec![self.key(conversation)], args).await?;
        Ok((announce == 1).then_some(session as u32))
    }

    pub async fn announced(&self, conversation: Uuid) -> Result<(), Error> {
        let _: i64 = self.redis.hset(self.key(conversation), ("announced", "1")).await?;
        Ok(())
    }

    /// Starts the next bot session (the conversation was resolved); `true` when it did.
    pub async fn new_session(&self, conversation: Uuid, offset: &str) -> Result<bool, Error> {
        let args = vec![offset.to_owned(), now_ms().to_string(), self.ttl_seconds()];
        let session: i64 = self.scripts.new_session.call(&self.redis, vec![self.key(conversation)], args).await?;
        Ok(session > 0)
    }

    /// The tenant a conversation's state belongs to.
    pub async fn tenant_of(&self, conversation: Uuid) -> Result<Option<Uuid>, Error> {
        let tenant: Option<String> = self.redis.hget(self.key(conversation), "tenant").await?;
        Ok(tenant.and_then(|tenant| tenant.parse().ok()))
    }

    /// The inbox a conversation's state belongs to, if the bot has state for it.
    pub async fn inbox_of(&self, conversation: Uuid) -> Result<Option<Uuid>, Error> {
        let inbox: Option<String> = self.redis.hget(self.key(conversation), "inbox").await?;
        Ok(inbox.and_then(|inbox| inbox.parse().ok()))
    }

    pub async fn load(&self, conversation: Uuid) -> Result<Option<Conversation>, Error> {
        let fields: std::collections::HashMap<String, String> = self.redis.hgetall(self.key(conversation)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let number = |name: &str| fields.get(name).and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
        let id = |name: &str| fields.get(name).and_then(|value| value.parse::<Uuid>().ok());
        let pending = fields
            .get("pending")
            // cjson writes an empty array as `{}`.
            .and_then(|raw| serde_json::from_str::<Vec<Pending>>(raw).ok())
            .unwrap_or_default();
        Ok(Some(Conversation {
            tenant: id("tenant"),
            inbox: id("inbox"),
            contact: id("contact"),
            session: number("session").max(1.0) as u32,
            session_start_ms: number("session_start") as i64,
            handoff: fields.get("handoff").cloned(),
            replies: number("replies") as u32,
            pending,
            due_ms: number("due") as i64,
            flow: fields.get("flow").cloned(),
        }))
    }

    /// Commits an answer: drops the `handled` pending messages (by id), stores the flow progress
    /// (`None` unchanged, `Some(None)` cleared), counts replies. Returns when what is left is
    /// due (`None`: nothing left), or `None` too when the session changed meanwhile.
    pub async fn finish(
        &self,
        conversation: Uuid,
        session: u32,
        handled: &[Pending],
        flow: Option<Option<&str>>,
        replies: u32,
        debounce_ms: i64,
    ) -> Result<Option<i64>, Error> {
        let flow = match flow {
            None => String::new(),
            Some(None) => "-".to_owned(),
            Some(Some(json)) => json.to_owned(),
        };
        let handled: Vec<&str> = handled.iter().map(|message| message.id.as_str()).collect();
        let args = vec![
            session.to_string(),
            serde_json::to_string(&handled).unwrap_or_else(|_| "[]".to_owned()),
            flow,
            replies.to_string(),
            now_ms().to_string(),
            debounce_ms.to_string(),
            self.ttl_seconds(),
        ];
        let due: i64 = self.scripts.finish.call(&self.redis, vec![self.key(conversation)], args).await?;
        if due > 0 {
            self.schedule(conversation, due).await?;
            return Ok(Some(due));
        }
        self.unschedule(conversation).await?;
        Ok(None)
    }

    /// Takes the right to answer `conversation` for `hold`; `false` when another task has it.
    pub async fn lease(&self, conversation: Uuid, holder: &str, hold: Duration) -> Result<bool, Error> {
        let taken: Option<String> = self
            .redis
            .set(
                self.keys.autoreply_lease(&conversation),
                holder,
                Some(Expiration::PX(hold.as_millis().max(1) as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        Ok(taken.is_some())
    }

    pub async fn release(&self, conversation: Uuid) -> Result<(), Error> {
        let _: i64 = self.redis.del(self.keys.autoreply_lease(&conversation)).await?;
        Ok(())
    }
}
