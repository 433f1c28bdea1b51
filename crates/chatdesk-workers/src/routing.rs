//! The router: group `router` on the `events` stream. An inbox in `round_robin` mode gets each
//! new conversation (and each one reopened without an agent) assigned at once, in turn, to one
//! of its members who is online and holds fewer open conversations than the inbox's capacity.
//! When nobody qualifies the conversation stays unassigned, in the list as such.
//!
//! Load is kept in Redis, per tenant: which agent holds each routed conversation and, per agent,
//! the set of open conversations it holds, changed only by scripts keyed by conversation, so a
//! redelivered entry changes nothing twice. Every `conversation.assigned` (an agent's or the
//! router's own) and every resolve moves the counts; the assignment the router decides is
//! appended once, with an id derived from the entry that caused it.
//!
//! Each inbox's routing (mode, capacity, members) is kept in the process once read, so a new
//! conversation costs no PostgreSQL query: the API announces a change of an inbox's routing or
//! members on the inbox changes channel, and [`Router::listen`] drops that inbox's copy. As
//! pub/sub loses announcements until a listener has subscribed and while it reconnects, each
//! subscription drops every copy; none is used longer than [`ROUTING_MAX_AGE`] (an announcement
//! Redis did not take).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use chatdesk_core::events::{Actor, ConversationAssigned, ConversationStatus, Event, SenderKind};
use chatdesk_core::{Envelope, EventId, GroupName, KeyScheme, TenantId};
use chatdesk_store::workspace as store;
use chatdesk_streams::script::Script;
use chatdesk_streams::{Batch, Handler, HandlerError, Outcomes, Producer, Unavailable};
use fred::prelude::*;
use uuid::Uuid;

pub const GROUP: &str = "router";
pub const ROUTED_TOTAL: &str = "chatdesk_router_assignments_total";
pub const ROUTING_LOOKUPS_TOTAL: &str = "chatdesk_router_routing_lookups_total";

/// The longest a kept copy of an inbox's routing is used without reading it again.
pub const ROUTING_MAX_AGE: Duration = Duration::from_secs(60);
/// Inboxes kept at most; past it the copies start over.
const ROUTING_CAPACITY: usize = 10_000;

pub fn describe() {
    metrics::describe_counter!(
        ROUTED_TOTAL,
        metrics::Unit::Count,
        "Conversations the router decided on, by outcome: assigned, waiting (nobody online with room), reassigned (from an agent offline past the grace)"
    );
    metrics::describe_counter!(
        ROUTING_LOOKUPS_TOTAL,
        metrics::Unit::Count,
        "Inboxes' routing the router looked up (new and reopened conversations, the offline sweep), by outcome: hit (kept in the process), miss (read from PostgreSQL)"
    );
}

/// Inboxes' routing read once for a batch, by `(tenant, inbox)`.
type Routings = HashMap<(Uuid, Uuid), Option<store::RoutingRow>>;

/// The kept copies, by inbox, and counts of the changes heard, so that a copy read while its
/// inbox's change was announced is not kept.
#[derive(Default)]
struct RoutingCopies {
    /// By inbox: its tenant, when it was read, and what was read.
    copies: HashMap<Uuid, (Uuid, Instant, Option<store::RoutingRow>)>,
    /// Changes heard per inbox.
    changes: HashMap<Uuid, u64>,
    /// Times every copy was dropped at once.
    drops: u64,
}

impl RoutingCopies {
    /// What has to stay the same while `inbox` is read for its copy to be kept.
    fn version(&self, inbox: Uuid) -> (u64, u64) {
        (self.drops, self.changes.get(&inbox).copied().unwrap_or(0))
    }
}

const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6368_6174_6465_736b_2d72_6f75_7465_7200);

/// Takes the next member in turn with room, unless the conversation already has its agent.
/// KEYS[1] routing hash. ARGV: conversation, capacity, load-set prefix, candidates…
static ASSIGN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local field = 'c:' .. ARGV[1]
local current = redis.call('HGET', KEYS[1], field)
if current then return current end
local capacity = tonumber(ARGV[2])
local count = #ARGV - 3
if count == 0 then return false end
local last = tonumber(redis.call('HGET', KEYS[1], 'rr') or '0')
for step = 1, count do
  local index = ((last + step - 1) % count) + 1
  local agent = ARGV[index + 3]
  if redis.call('SCARD', ARGV[3] .. agent) < capacity then
    redis.call('HSET', KEYS[1], field, agent, 'rr', index)
    redis.call('SADD', ARGV[3] .. agent, ARGV[1])
    return agent
  end
end
return false
"#,
    )
});

/// Records who holds a conversation now ('' for nobody: unassigned or no longer open).
/// KEYS[1] routing hash. ARGV: conversation, agent or '', load-set prefix.
static TRACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local field = 'c:' .. ARGV[1]
local current = redis.call('HGET', KEYS[1], field)
if current and current ~= ARGV[2] then redis.call('SREM', ARGV[3] .. current, ARGV[1]) end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], field)
  return 0
end
redis.call('HSET', KEYS[1], field, ARGV[2])
redis.call('SADD', ARGV[3] .. ARGV[2], ARGV[1])
return 1
"#,
    )
});

/// Moves a conversation from an offline agent to the next member in turn with room; nothing
/// changes when another change got there first or nobody has room.
/// KEYS[1] routing hash. ARGV: conversation, from-agent, capacity, load-set prefix, candidates…
static REASSIGN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local field = 'c:' .. ARGV[1]
if redis.call('HGET', KEYS[1], field) ~= ARGV[2] then return false end
local capacity = tonumber(ARGV[3])
local count = #ARGV - 4
local last = tonumber(redis.call('HGET', KEYS[1], 'rr') or '0')
for step = 1, count do
  local index = ((last + step - 1) % count) + 1
  local agent = ARGV[index + 4]
  if agent ~= ARGV[2] and redis.call('SCARD', ARGV[4] .. agent) < capacity then
    redis.call('SREM', ARGV[4] .. ARGV[2], ARGV[1])
    redis.call('HSET', KEYS[1], field, agent, 'rr', index)
    redis.call('SADD', ARGV[4] .. agent, ARGV[1])
    return agent
  end
end
return false
"#,
    )
});

/// How often the router looks for agents offline past their inboxes' grace.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Records who holds a conversation when the router has no record of it yet.
/// KEYS[1] routing hash. ARGV: conversation, agent, load-set prefix.
static TRACK_IF_NEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local field = 'c:' .. ARGV[1]
if redis.call('HEXISTS', KEYS[1], field) == 1 then return 0 end
redis.call('HSET', KEYS[1], field, ARGV[2])
redis.call('SADD', ARGV[3] .. ARGV[2], ARGV[1])
return 1
"#,
    )
});

#[derive(Clone)]
pub struct Router {
    redis: Client,
    db: chatdesk_store::Pool,
    keys: KeyScheme,
    producer: Producer,
    routings: Arc<Mutex<RoutingCopies>>,
}

impl Router {
    pub fn new(redis: Client, db: chatdesk_store::Pool, keys: KeyScheme, producer: Producer) -> Self {
        Self { redis, db, keys, producer, routings: Arc::default() }
    }

    /// Drops the kept routing of `inbox` as its changes are announced, until cancelled; what
    /// may have been missed (a reconnect, an unreadable announcement) drops every copy.
    pub async fn listen(
        self,
        connector: chatdesk_streams::RedisConnector,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<(), Error> {
        use chatdesk_streams::connection::Heard;
        let channel = self.keys.inbox_changes_channel();
        chatdesk_streams::connection::follow(&connector, &channel, &cancel, |heard| {
            let inbox = match heard {
                Heard::Message(text) => text.parse::<Uuid>().ok(),
                Heard::Missed => None,
            };
            self.forget(inbox);
        })
        .await
    }

    /// Drops the kept routing of `inbox`, or of every inbox.
    fn forget(&self, inbox: Option<Uuid>) {
        let mut routings = self.routings.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match inbox {
            Some(inbox) if routings.changes.len() < ROUTING_CAPACITY => {
                routings.copies.remove(&inbox);
                *routings.changes.entry(inbox).or_default() += 1;
            }
            _ => {
                routings.copies.clear();
                routings.changes.clear();
                routings.drops += 1;
            }
        }
    }

    /// The routing of `inboxes`, from the kept copies or, for the rest, in one query.
    async fn routings(&self, inboxes: &[(Uuid, Uuid)]) -> Result<Routings, HandlerError> {
        let mut known = Routings::with_capacity(inboxes.len());
        let mut missing = Vec::new();
        {
            let routings = self.routings.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for &(tenant, inbox) in inboxes {
                match routings.copies.get(&inbox) {
                    Some((of, read_at, routing)) if *of == tenant && read_at.elapsed() < ROUTING_MAX_AGE => {
                        known.insert((tenant, inbox), routing.clone());
                    }
                    _ => missing.push(((tenant, inbox), routings.version(inbox))),
                }
            }
        }
        metrics::counter!(ROUTING_LOOKUPS_TOTAL, "outcome" => "hit").increment(known.len() as u64);
        if missing.is_empty() {
            return Ok(known);
        }
        metrics::counter!(ROUTING_LOOKUPS_TOTAL, "outcome" => "miss").increment(missing.len() as u64);
        let read_at = Instant::now();
        let keys: Vec<(Uuid, Uuid)> = missing.iter().map(|(key, _)| *key).collect();
        let mut read = store::inbox_routings(&self.db, &keys).await.map_err(store_down)?;
        let mut routings = self.routings.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if routings.copies.len() + missing.len() > ROUTING_CAPACITY {
            routings.copies.clear();
        }
        for ((tenant, inbox), version) in missing {
            let routing = read.remove(&(tenant, inbox)).flatten();
            // A change of this inbox announced during the query may not be in what it read: use
            // it for this batch only (the entries that caused it came before the change).
            if routings.version(inbox) == version {
                routings.copies.insert(inbox, (tenant, read_at, routing.clone()));
            }
            known.insert((tenant, inbox), routing);
        }
        Ok(known)
    }

    /// The agents of the tenant with a live socket now (the gateways' presence set).
    async fn online(&self, tenant: &TenantId) -> Result<Vec<Uuid>, Error> {
        let now = chatdesk_core::envelope::now_ms() as f64;
        let members: Vec<String> =
            self.redis.zrangebyscore(self.keys.presence(tenant), now, f64::INFINITY, false, None).await?;
        let mut users: Vec<Uuid> = members.iter().filter_map(|member| member.split(':').next()?.parse().ok()).collect();
        users.sort_unstable();
        users.dedup();
        Ok(users)
    }

    async fn track(&self, tenant: &TenantId, conversation: Uuid, agent: Option<Uuid>) -> Result<(), HandlerError> {
        let agent = agent.map(|agent| agent.to_string()).unwrap_or_default();
        let _: i64 = TRACK
            .call(
                &self.redis,
                vec![self.keys.routing(tenant)],
                vec![conversation.to_string(), agent, self.keys.routing_load_prefix(tenant)],
            )
            .await
            .map_err(redis_down)?;
        Ok(())
    }

    /// Assigns `conversation` of `inbox` if the inbox routes automatically. `known` holds the
    /// routing of inboxes already read for this batch.
    async fn route(
        &self,
        tenant: &TenantId,
        conversation: Uuid,
        inbox: Uuid,
        trigger: Uuid,
        known: &Routings,
    ) -> Result<(), HandlerError> {
        let read;
        let routing = match known.get(&(tenant.0, inbox)) {
            Some(routing) => routing.as_ref(),
            None => {
                // A reopened conversation's inbox: kept like the others.
                read = self.routings(&[(tenant.0, inbox)]).await?.remove(&(tenant.0, inbox)).flatten();
                read.as_ref()
            }
        };
        let Some(routing) = routing else {
            return Ok(());
        };
        if routing.mode != "round_robin" {
            return Ok(());
        }
        let online = self.online(tenant).await.map_err(redis_down)?;
        let candidates: Vec<String> =
            routing.members.iter().filter(|member| online.contains(member)).map(Uuid::to_string).collect();
        let mut args = vec![
            conversation.to_string(),
            routing.agent_capacity.max(1).to_string(),
            self.keys.routing_load_prefix(tenant),
        ];
        args.extend(candidates);
        let chosen: Option<String> =
            ASSIGN.call(&self.redis, vec![self.keys.routing(tenant)], args).await.map_err(redis_down)?;
        let Some(agent) = chosen.and_then(|agent| agent.parse::<Uuid>().ok()) else {
            metrics::counter!(ROUTED_TOTAL, "outcome" => "waiting").increment(1);
            tracing::debug!(%conversation, "nobody online with room: the conversation waits unassigned");
            return Ok(());
        };
        // Derived from the entry that caused it: a redelivery appends the same event once.
        self.announce(tenant, conversation, agent, trigger).await?;
        metrics::counter!(ROUTED_TOTAL, "outcome" => "assigned").increment(1);
        Ok(())
    }

    /// Hands the unanswered conversations of members offline longer than their inbox's grace to
    /// members online with room, until `cancel` fires. Every process running the router may do
    /// it at once: the script moves a conversation only from the agent it still belongs to, and
    /// the assignment's event id is derived from that move.
    pub async fn sweep(&self, cancel: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            if let Err(error) = self.sweep_once().await {
                tracing::debug!(error = %error, "cannot look for offline agents now");
            }
        }
    }

    async fn sweep_once(&self) -> Result<(), HandlerError> {
        let inboxes = store::reassigning_inboxes(&self.db).await.map_err(store_down)?;
        // Their members from the kept copies, like a new conversation's: no query per inbox and
        // second.
        let keys: Vec<(Uuid, Uuid)> = inboxes.iter().map(|(tenant, inbox, ..)| (*tenant, *inbox)).collect();
        let mut routings = self.routings(&keys).await?;
        let now = chatdesk_core::envelope::now_ms();
        for (tenant, inbox, capacity, seconds) in inboxes {
            let Some(routing) = routings.remove(&(tenant, inbox)).flatten() else {
                continue;
            };
            let tenant = TenantId(tenant);
            let online = self.online(&tenant).await.map_err(redis_down)?;
            let key = self.keys.routing(&tenant);
            // Back online: the grace starts afresh next time.
            let back: Vec<String> = online.iter().map(|user| format!("off:{user}")).collect();
            if !back.is_empty() {
                let _: i64 = self.redis.hdel(&key, back).await.map_err(redis_down)?;
            }
            let held = store::unanswered_assigned(&self.db, tenant.0, inbox).await.map_err(store_down)?;
            let candidates: Vec<String> =
                routing.members.iter().filter(|member| online.contains(member)).map(Uuid::to_string).collect();
            for (conversation, agent) in held {
                if online.contains(&agent) {
                    continue;
                }
                let field = format!("off:{agent}");
                let _: bool = self.redis.hsetnx(&key, &field, now.to_string()).await.map_err(redis_down)?;
                let since: Option<String> = self.redis.hget(&key, &field).await.map_err(redis_down)?;
                let since: u64 = since.and_then(|since| since.parse().ok()).unwrap_or(now);
                if now.saturating_sub(since) < u64::from(seconds.max(1) as u32) * 1000 || candidates.is_empty() {
                    continue;
                }
                let mut args = vec![
                    conversation.to_string(),
                    agent.to_string(),
                    capacity.max(1).to_string(),
                    self.keys.routing_load_prefix(&tenant),
                ];
                args.extend(candidates.iter().cloned());
                // The router tracks the conversation from its assignment; one assigned before
                // routing was on is taken into the count first.
                let _: i64 = TRACK_IF_NEW
                    .call(
                        &self.redis,
                        vec![key.clone()],
                        vec![conversation.to_string(), agent.to_string(), self.keys.routing_load_prefix(&tenant)],
                    )
                    .await
                    .map_err(redis_down)?;
                let chosen: Option<String> =
                    REASSIGN.call(&self.redis, vec![key.clone()], args).await.map_err(redis_down)?;
                let Some(chosen) = chosen.and_then(|chosen| chosen.parse::<Uuid>().ok()) else { continue };
                let trigger = Uuid::new_v5(&ID_NAMESPACE, format!("offline:{agent}:{since}").as_bytes());
                self.announce(&tenant, conversation, chosen, trigger).await?;
                metrics::counter!(ROUTED_TOTAL, "outcome" => "reassigned").increment(1);
                tracing::info!(%conversation, from = %agent, to = %chosen, "reassigned from an offline agent");
            }
        }
        Ok(())
    }

    /// Appends the router's assignment of `conversation` to `agent`, once per `trigger`.
    async fn announce(
        &self,
        tenant: &TenantId,
        conversation: Uuid,
        agent: Uuid,
        trigger: Uuid,
    ) -> Result<(), HandlerError> {
        let event_id = Uuid::new_v5(&ID_NAMESPACE, format!("route:{conversation}:{trigger}").as_bytes());
        let event = Event::ConversationAssigned(ConversationAssigned {
            conversation_id: conversation,
            assignee_id: Some(agent),
            by: Actor { kind: SenderKind::System, id: None },
        });
        let entry = Envelope::of(*tenant, &event).with_event_id(EventId(event_id));
        self.producer
            .append_once(
                chatdesk_core::config::EVENTS_STREAM,
                &entry,
                &event_id.to_string(),
                Duration::from_secs(24 * 3600),
            )
            .await
            .map_err(|error| -> HandlerError { Box::new(Unavailable(crate::error_chain(&error))) })?;
        Ok(())
    }

    async fn handle_event(&self, envelope: &Envelope, event: &Event, known: &Routings) -> Result<(), HandlerError> {
        let tenant = envelope.tenant;
        match event {
            Event::ConversationCreated(created) => {
                self.route(&tenant, created.conversation_id, created.inbox_id, envelope.event_id.0, known).await
            }
            Event::ConversationAssigned(assigned) => {
                self.track(&tenant, assigned.conversation_id, assigned.assignee_id).await
            }
            Event::ConversationStatusChanged(changed) => match changed.status {
                ConversationStatus::Resolved | ConversationStatus::Blocked => {
                    self.track(&tenant, changed.conversation_id, None).await
                }
                ConversationStatus::Open => {
                    // Reopened: its agent holds it again; without one, it is routed like a new one.
                    let stored = store::conversation_routing(&self.db, tenant.0, changed.conversation_id)
                        .await
                        .map_err(store_down)?;
                    match stored {
                        Some((_, Some(agent))) => self.track(&tenant, changed.conversation_id, Some(agent)).await,
                        Some((inbox, None)) => {
                            self.route(&tenant, changed.conversation_id, inbox, envelope.event_id.0, known).await
                        }
                        None => Ok(()),
                    }
                }
                ConversationStatus::Pending => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

fn redis_down(error: Error) -> HandlerError {
    Box::new(Unavailable(format!("Redis: {error}")))
}

fn store_down(error: chatdesk_store::StoreError) -> HandlerError {
    Box::new(Unavailable(crate::error_chain(&error)))
}

impl Handler for Router {
    fn group(&self) -> GroupName {
        GroupName::parse(GROUP).expect("a valid group name")
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        let outcomes = Outcomes::all_done();
        let events: Vec<(&Envelope, Event)> = batch
            .entries
            .iter()
            .filter(|entry| {
                matches!(
                    entry.envelope.record_type.as_str(),
                    "conversation.created" | "conversation.assigned" | "conversation.status_changed"
                )
            })
            // What does not decode is the writer's to dead-letter; routing skips it.
            .filter_map(|entry| Some((&entry.envelope, entry.envelope.event().ok()?)))
            .collect();
        // The routing of every inbox with a new conversation in the batch, kept or in one query:
        // a burst of first messages from new customers would otherwise cost a query each.
        let mut inboxes: Vec<(Uuid, Uuid)> = events
            .iter()
            .filter_map(|(envelope, event)| match event {
                Event::ConversationCreated(created) => Some((envelope.tenant.0, created.inbox_id)),
                _ => None,
            })
            .collect();
        inboxes.sort_unstable();
        inboxes.dedup();
        let known = self.routings(&inboxes).await?;
        // In order: a conversation's creation, assignment and resolve must be seen as they happened.
        for (envelope, event) in &events {
            self.handle_event(envelope, event, &known).await?;
        }
        Ok(outcomes)
    }
}
