//! The two halves of the `autoreply` role.
//!
//! - [`Watcher`], the `autoreply` group's handler on the events stream (the common runtime): it
//!   only records. A customer message of an inbox with auto-reply on joins its conversation's
//!   pending messages and (re)starts the quiet period; an agent's reply or an assignment hands
//!   the conversation off; a resolve starts the next bot session. It never waits for a model,
//!   so a slow model never holds a partition, and every change is keyed by the entry id, so a
//!   replay changes nothing.
//! - [`Answerer`]: every few milliseconds takes the conversations whose quiet period ended
//!   (one process at a time per conversation, by a lease), and answers each in its own task, at
//!   most `concurrency` at once: the model's reply or the flow's next prompt goes out like an
//!   agent's reply (sender kind `bot`), keyed by the last message it answers, so answering twice
//!   sends once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatdesk_conversations::directory::{Directory, Once};
use chatdesk_conversations::{InboxCache, Reply, ReplyError};
use chatdesk_core::autoreply::{AutoReply, Mode};
use chatdesk_core::events::{
    Actor, ConversationHandoff, ConversationStatus, Direction, Event, HandoffReason, SenderKind, Typing,
};
use chatdesk_core::{Entry, Envelope, EventId, GroupName, KeyScheme, TenantId};
use chatdesk_streams::{Batch, Handler, HandlerError, Outcomes, RedisClient, Unavailable};
use fred::prelude::*;
use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::bot::{Bot, Move, one_message};
use crate::flow::{Action, Progress};
use crate::llm::{Role, Turn};
use crate::metrics;
use crate::state::{Enqueued, Inbound, StateStore};

/// The consumer group on the events stream.
pub const GROUP: &str = "autoreply";
/// How long a handoff event's id is remembered on the events stream.
const HANDOFF_DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 86_400);
/// A first lease, long enough to read the inbox's settings; then extended to the model's
/// timeout.
const FIRST_LEASE: Duration = Duration::from_secs(15);
/// One tenant answers at most this fraction of a process's conversations at once.
const TENANT_SHARE_DIVISOR: usize = 4;
/// Due conversations read per look, per answering slot: enough to find other tenants' past one
/// whose share is full.
const DUE_READ_FACTOR: usize = 8;
/// How long an answer waits for the writer to store a new conversation before it is dropped.
const STORED_WAIT: Duration = Duration::from_secs(300);
/// Conversations whose tenant the answering loop remembers at most.
const TENANT_CACHE_CAPACITY: usize = 100_000;
/// How long a conversation whose answer failed waits before the next try.
const RETRY_AFTER_FAILURE_MS: i64 = 1_000;
/// The namespace of ids chatdesk derives (handoff events, orders).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_3c2e_9b7d_4e51_8a0c_2f6e_4d3b_1c70);

/// The id of the handoff event of a conversation's session: one event per session.
pub fn handoff_event_id(conversation: Uuid, session: u32) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, format!("handoff:{conversation}:{session}").as_bytes())
}

/// The id of the order a flow completed by message `trigger`: a replay inserts nothing new.
pub fn order_id(conversation: Uuid, trigger: &str) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, format!("order:{conversation}:{trigger}").as_bytes())
}

/// What both halves share.
pub struct Shared {
    pub redis: RedisClient,
    pub db: chatdesk_store::Pool,
    pub keys: KeyScheme,
    pub inboxes: InboxCache,
    pub state: StateStore,
    pub directory: Directory,
    pub reply: Reply,
    pub bot: Bot,
    pub http: reqwest::Client,
    pub node: String,
    pub settings: crate::AutoReplySettings,
}

impl Shared {
    async fn settings_of(
        &self,
        inbox: Uuid,
    ) -> Result<Option<(AutoReply, chatdesk_store::directory::InboxRecord)>, String> {
        let record = self.inboxes.get(inbox).await.map_err(|error| error.to_string())?;
        Ok(record.map(|record| (AutoReply::from_stored(&record.auto_reply), record)))
    }

    /// Records a handoff and appends its event once per session.
    async fn hand_off(
        &self,
        tenant: Uuid,
        conversation: Uuid,
        reason: HandoffReason,
        detail: Option<String>,
        offset: Option<&str>,
        create: bool,
    ) -> Result<(), String> {
        let decided = self
            .state
            .handoff(conversation, reason.as_str(), detail.as_deref(), offset, create)
            .await
            .map_err(|error| error.to_string())?;
        let Some(session) = decided else { return Ok(()) };
        let event =
            Event::ConversationHandoff(ConversationHandoff { conversation_id: conversation, reason, detail, session });
        let event_id = handoff_event_id(conversation, session);
        let entry = Envelope::of(TenantId(tenant), &event).with_event_id(EventId(event_id));
        match self.directory.append_once(&entry, &format!("handoff:{event_id}"), HANDOFF_DEDUPE_WINDOW).await {
            Ok(Once::New(_)) => {
                ::metrics::counter!(metrics::HANDOFFS_TOTAL, "reason" => reason.as_str()).increment(1);
                tracing::info!(%conversation, reason = reason.as_str(), "handed the conversation to humans");
            }
            Ok(Once::Duplicate(_)) => {}
            Err(error) => return Err(error.to_string()),
        }
        self.state.announced(conversation).await.map_err(|error| error.to_string())?;
        self.state.unschedule(conversation).await.map_err(|error| error.to_string())
    }

    async fn typing(&self, tenant: Uuid, conversation: Uuid, typing: bool) {
        let event = Event::Typing(Typing {
            conversation_id: conversation,
            who: Actor { kind: SenderKind::Bot, id: None },
            typing,
        });
        let text = Envelope::of(TenantId(tenant), &event).encode_json();
        // A lost typing signal is harmless.
        let _: Result<i64, _> = self.redis.publish(self.keys.ephemeral_channel(), text).await;
    }
}

/// The `autoreply` group's handler.
pub struct Watcher {
    pub(crate) shared: Arc<Shared>,
}

/// The event types the `autoreply` group acts on.
const WATCHED_TYPES: [&str; 3] = ["message.created", "conversation.assigned", "conversation.status_changed"];

enum Seen {
    Done,
    Unavailable(String),
}

impl Watcher {
    async fn watch(&self, entry: &Entry) -> Seen {
        // Most entries (statuses, reads, typing, contacts) mean nothing to the bot: decided by
        // the entry's type field, without decoding their payload.
        if !WATCHED_TYPES.contains(&entry.envelope.record_type.as_str()) {
            return Seen::Done;
        }
        let Ok(event) = entry.envelope.event() else { return Seen::Done };
        let offset = entry.id.to_string();
        let tenant = entry.envelope.tenant.0;
        let shared = &self.shared;
        let result = match &event {
            Event::MessageCreated(message)
                if message.direction == Direction::Inbound && message.sender.kind == SenderKind::Customer =>
            {
                // A message read long after it came is history (a replay, a backlog after an
                // outage): the customer is not waiting for this bot answer any more.
                let age = chatdesk_core::envelope::now_ms().saturating_sub(entry.id.millis);
                if age > shared.settings.stale_after.as_millis() as u64 {
                    ::metrics::counter!(metrics::SKIPPED_TOTAL, "why" => "stale").increment(1);
                    return Seen::Done;
                }
                let settings = match shared.settings_of(message.inbox_id).await {
                    Ok(Some((settings, _))) if settings.is_on() => settings,
                    Ok(_) => return Seen::Done,
                    Err(error) => return Seen::Unavailable(error),
                };
                let choice = message
                    .extra
                    .as_ref()
                    .and_then(|extra| extra.get("choice"))
                    .and_then(|choice| choice.get("id"))
                    .and_then(serde_json::Value::as_str);
                let inbound = Inbound {
                    offset: &offset,
                    event_id: entry.envelope.event_id.0,
                    text: &message.text,
                    choice,
                    tenant,
                    inbox: message.inbox_id,
                    contact: message.contact_id,
                };
                match shared
                    .state
                    .enqueue(message.conversation_id, &inbound, settings.debounce_ms, settings.max_wait_ms)
                    .await
                {
                    Ok(Enqueued::Waiting { .. }) => {
                        ::metrics::counter!(metrics::MESSAGES_TOTAL, "outcome" => "waiting").increment(1);
                        Ok(())
                    }
                    Ok(Enqueued::Silent) => {
                        ::metrics::counter!(metrics::MESSAGES_TOTAL, "outcome" => "human").increment(1);
                        Ok(())
                    }
                    Ok(Enqueued::Replay { .. }) => {
                        ::metrics::counter!(metrics::MESSAGES_TOTAL, "outcome" => "replay").increment(1);
                        Ok(())
                    }
                    Err(error) => Err(error.to_string()),
                }
            }
            Event::MessageCreated(message) if message.sender.kind == SenderKind::Agent => {
                shared
                    .hand_off(tenant, message.conversation_id, HandoffReason::AgentReplied, None, Some(&offset), false)
                    .await
            }
            Event::ConversationAssigned(assigned) if assigned.assignee_id.is_some() => {
                shared
                    .hand_off(tenant, assigned.conversation_id, HandoffReason::Assigned, None, Some(&offset), false)
                    .await
            }
            Event::ConversationStatusChanged(changed) if changed.status == ConversationStatus::Resolved => {
                let conversation = changed.conversation_id;
                match shared.state.inbox_of(conversation).await {
                    Ok(None) => Ok(()),
                    Ok(Some(inbox)) => match shared.settings_of(inbox).await {
                        Ok(Some((settings, _))) if settings.reenable_on_resolve => shared
                            .state
                            .new_session(conversation, &offset)
                            .await
                            .map(|_| ())
                            .map_err(|error| error.to_string()),
                        Ok(_) => Ok(()),
                        Err(error) => Err(error),
                    },
                    Err(error) => Err(error.to_string()),
                }
            }
            _ => Ok(()),
        };
        match result {
            Ok(()) => Seen::Done,
            Err(error) => Seen::Unavailable(error),
        }
    }
}

impl Handler for Watcher {
    fn group(&self) -> GroupName {
        GroupName::parse(GROUP).expect("a valid group name")
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        // In order: a conversation's message, assignment and resolve must apply as they happened.
        for entry in &batch.entries {
            if let Seen::Unavailable(reason) = self.watch(entry).await {
                // Everything already applied is keyed by its entry id: the retry skips it.
                return Err(Box::new(Unavailable(reason)));
            }
        }
        Ok(Outcomes::all_done())
    }
}

/// Answers conversations whose quiet period ended.
pub struct Answerer {
    pub(crate) shared: Arc<Shared>,
}

impl Answerer {
    pub async fn run(self, cancel: CancellationToken) {
        let shared = self.shared;
        let permits = Arc::new(Semaphore::new(shared.settings.concurrency.max(1)));
        let in_hand: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
        let by_tenant: Arc<Mutex<std::collections::HashMap<Uuid, usize>>> = Arc::default();
        let tenant_share = (shared.settings.concurrency / TENANT_SHARE_DIVISOR).max(1);
        let tasks = TaskTracker::new();
        // A finished answer frees a slot: look again at once rather than at the next poll.
        let freed = Arc::new(tokio::sync::Notify::new());
        // A conversation's tenant never changes: remembered, so a backlog costs no lookups.
        let mut tenants: std::collections::HashMap<Uuid, Uuid> = std::collections::HashMap::new();
        let mut polls: u64 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(shared.settings.poll) => {}
                _ = freed.notified() => {}
                _ = cancel.cancelled() => break,
            }
            if permits.available_permits() == 0 {
                continue;
            }
            polls += 1;
            if polls.is_multiple_of(20) {
                let waiting: Result<i64, _> = shared.redis.zcard(shared.keys.autoreply_due()).await;
                if let Ok(waiting) = waiting {
                    ::metrics::gauge!(metrics::WAITING).set(waiting as f64);
                }
            }
            let due = match shared.state.due((shared.settings.concurrency * DUE_READ_FACTOR) as i64).await {
                Ok(due) => due,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot read the conversations waiting for the bot");
                    continue;
                }
            };
            for conversation in due {
                if in_hand.lock().expect("in-hand lock").contains(&conversation) {
                    continue;
                }
                // One tenant's slow model may hold at most its share of the slots: the other
                // tenants' customers are answered meanwhile.
                let tenant = match tenants.get(&conversation) {
                    Some(tenant) => *tenant,
                    None => match shared.state.tenant_of(conversation).await {
                        Ok(tenant) => {
                            let tenant = tenant.unwrap_or_default();
                            if tenants.len() >= TENANT_CACHE_CAPACITY {
                                tenants.clear();
                            }
                            tenants.insert(conversation, tenant);
                            tenant
                        }
                        Err(error) => {
                            tracing::warn!(error = %error, "cannot read a conversation's tenant");
                            break;
                        }
                    },
                };
                if by_tenant.lock().expect("tenant lock").get(&tenant).copied().unwrap_or(0) >= tenant_share {
                    continue;
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else { break };
                match shared.state.lease(conversation, &shared.node, FIRST_LEASE).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot take a conversation's lease");
                        break;
                    }
                }
                in_hand.lock().expect("in-hand lock").insert(conversation);
                *by_tenant.lock().expect("tenant lock").entry(tenant).or_default() += 1;
                let (shared, in_hand, by_tenant, freed) =
                    (shared.clone(), in_hand.clone(), by_tenant.clone(), freed.clone());
                let span = tracing::info_span!("autoreply_answer", %conversation);
                tasks.spawn(tracing::Instrument::instrument(
                    async move {
                        // A panic answering one conversation (a bug, a hostile answer) must not
                        // leave it in hand forever: the cleanup below always runs.
                        let answered = std::panic::AssertUnwindSafe(answer(&shared, conversation)).catch_unwind().await;
                        let failed = match answered {
                            Ok(Ok(())) => None,
                            Ok(Err(error)) => Some(error),
                            Err(_) => {
                                // It would panic again: humans take the conversation instead.
                                tracing::error!(%conversation, "answering a conversation panicked; handing it to humans");
                                give_up(&shared, conversation).await.err()
                            }
                        };
                        if let Some(error) = failed {
                            tracing::warn!(%conversation, error = %error, "cannot answer now; trying again shortly");
                            let retry_at = chatdesk_core::envelope::now_ms() as i64 + RETRY_AFTER_FAILURE_MS;
                            let _ = shared.state.schedule(conversation, retry_at).await;
                        }
                        let _ = shared.state.release(conversation).await;
                        in_hand.lock().expect("in-hand lock").remove(&conversation);
                        let mut answering = by_tenant.lock().expect("tenant lock");
                        if let Some(count) = answering.get_mut(&tenant) {
                            *count -= 1;
                            if *count == 0 {
                                answering.remove(&tenant);
                            }
                        }
                        drop(answering);
                        drop(permit);
                        freed.notify_one();
                    },
                    span,
                ));
            }
        }
        tasks.close();
        // Answers in hand finish (a model call ends within its timeout); the rest wait in Redis.
        let _ = tokio::time::timeout(Duration::from_secs(20), tasks.wait()).await;
    }
}

/// The bot hands the conversation over on its own account (a keyword, the model, a limit, a
/// failure): it records the handoff and, once per session, tells the customer the inbox's
/// `handoff_text` if it has one.
async fn step_aside(
    shared: &Shared,
    settings: &AutoReply,
    state: &crate::state::Conversation,
    tenant: Uuid,
    conversation: Uuid,
    reason: HandoffReason,
    detail: Option<String>,
) -> Result<(), String> {
    shared.hand_off(tenant, conversation, reason, detail, None, false).await?;
    let Some(text) = settings.handoff_text.as_deref() else { return Ok(()) };
    let client_msg_id = format!("bot-handoff-{}", state.session);
    let sender = Actor { kind: SenderKind::Bot, id: None };
    match shared.reply.send(tenant, conversation, sender, text, Some(&client_msg_id)).await {
        Ok(_) | Err(ReplyError::NotFound | ReplyError::Blocked | ReplyError::Text(_)) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// Whether the oldest unanswered message is older than a customer waits for a bot.
fn waited_too_long(pending: &[crate::state::Pending]) -> bool {
    let oldest = pending
        .iter()
        .filter_map(|message| message.offset.parse::<chatdesk_core::EntryId>().ok())
        .map(|id| id.millis)
        .min();
    oldest
        .is_some_and(|millis| chatdesk_core::envelope::now_ms().saturating_sub(millis) > STORED_WAIT.as_millis() as u64)
}

/// Hands a conversation the bot cannot answer to humans (reason `error`).
async fn give_up(shared: &Shared, conversation: Uuid) -> Result<(), String> {
    let state = shared.state.load(conversation).await.map_err(|error| error.to_string())?;
    let Some(tenant) = state.and_then(|state| state.tenant) else {
        return shared.state.unschedule(conversation).await.map_err(|error| error.to_string());
    };
    let detail = Some("the bot failed on this conversation".to_owned());
    shared.hand_off(tenant, conversation, HandoffReason::Error, detail, None, false).await
}

/// Drops the conversation's pending messages without an answer (the bot is off, out of hours,
/// or handed off).
async fn leave_unanswered(
    shared: &Shared,
    conversation: Uuid,
    state: &crate::state::Conversation,
) -> Result<(), String> {
    shared
        .state
        .finish(conversation, state.session, &state.pending, None, 0, 0)
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// Answers one conversation's pending messages. An `Err` leaves them pending for a retry.
async fn answer(shared: &Shared, conversation: Uuid) -> Result<(), String> {
    let redis_error = |error: fred::error::Error| error.to_string();
    let Some(state) = shared.state.load(conversation).await.map_err(redis_error)? else {
        return shared.state.unschedule(conversation).await.map_err(redis_error);
    };
    if state.pending.is_empty() || state.handoff.is_some() {
        return leave_unanswered(shared, conversation, &state).await;
    }
    let now = chatdesk_core::envelope::now_ms() as i64;
    if state.due_ms > now {
        // The customer wrote again: the quiet period moved.
        return shared.state.schedule(conversation, state.due_ms).await.map_err(redis_error);
    }
    let (Some(tenant), Some(inbox)) = (state.tenant, state.inbox) else {
        return leave_unanswered(shared, conversation, &state).await;
    };
    let handled = &state.pending;
    let (settings, record) = match shared.settings_of(inbox).await? {
        Some((settings, record)) if settings.is_on() => (settings, record),
        _ => {
            return leave_unanswered(shared, conversation, &state).await;
        }
    };
    if let Some(hours) = &settings.hours
        && !hours.bot_answers(now)
    {
        ::metrics::counter!(metrics::SKIPPED_TOTAL, "why" => "hours").increment(1);
        return leave_unanswered(shared, conversation, &state).await;
    }
    let timeout_ms = settings.llm.as_ref().map_or(10_000, |llm| llm.timeout_ms.max(0) as u64);
    let hold = Duration::from_millis(timeout_ms * 2) + FIRST_LEASE;
    let _: Result<bool, _> =
        shared.redis.pexpire(shared.keys.autoreply_lease(&conversation), hold.as_millis() as i64, None).await;

    // A human may hold the conversation already (an assignment or reply the bot has not read yet).
    let since = if state.session <= 1 { 0 } else { state.session_start_ms };
    match chatdesk_store::autoreply::human_holds(&shared.db, tenant, conversation, since).await {
        Ok(Some(chatdesk_store::autoreply::Holder::Assigned)) => {
            return shared.hand_off(tenant, conversation, HandoffReason::Assigned, None, None, false).await;
        }
        Ok(Some(chatdesk_store::autoreply::Holder::AgentReplied)) => {
            return shared.hand_off(tenant, conversation, HandoffReason::AgentReplied, None, None, false).await;
        }
        Ok(None) => {}
        Err(error) => return Err(error.to_string()),
    }
    if let Some(asked) = state.pending.iter().find(|message| settings.asks_for_human(&message.text)) {
        let detail = Some(asked.text.chars().take(200).collect());
        return step_aside(shared, &settings, &state, tenant, conversation, HandoffReason::Keyword, detail).await;
    }
    let trigger = state.pending.last().map(|message| message.id.clone()).unwrap_or_default();
    let contact = state.contact.unwrap_or_default();
    let (bot_move, flow_progress) = match settings.mode {
        Mode::Off => return Ok(()),
        Mode::Llm => {
            let Some(llm) = settings.llm.as_ref() else { return Ok(()) };
            if state.replies >= settings.max_replies {
                let detail = Some(format!("the bot sent {} replies, its maximum", state.replies));
                return step_aside(shared, &settings, &state, tenant, conversation, HandoffReason::Cap, detail).await;
            }
            let history = history(shared, tenant, conversation, llm.max_context_messages, &state.pending).await?;
            shared.typing(tenant, conversation, true).await;
            let bot_move = shared.bot.llm_move(tenant, llm, &history).await;
            shared.typing(tenant, conversation, false).await;
            (bot_move, None)
        }
        Mode::Flow => {
            let flow_name = settings.flow.clone().unwrap_or_default();
            let progress: Option<Progress> = state.flow.as_deref().and_then(|raw| serde_json::from_str(raw).ok());
            let messages: Vec<(String, Option<String>)> = state
                .pending
                .iter()
                .map(|message| (message.text.clone(), Some(message.choice.clone()).filter(|choice| !choice.is_empty())))
                .collect();
            let Some(step) = shared.bot.flow_step(&flow_name, progress, &messages) else {
                let detail = Some(format!("the flow {flow_name:?} is not loaded"));
                return step_aside(shared, &settings, &state, tenant, conversation, HandoffReason::Error, detail).await;
            };
            let mut say = step.say;
            if let Some((completed, index)) = &step.completed {
                let trigger = &state.pending[*index].id;
                let order = order_id(conversation, trigger);
                let done =
                    complete(shared, tenant, inbox, conversation, contact, &flow_name, order, completed, &record).await;
                if let Err(detail) = done {
                    let reason = HandoffReason::Error;
                    return step_aside(shared, &settings, &state, tenant, conversation, reason, Some(detail)).await;
                }
                say.push(crate::flow::Prompt {
                    text: shared.bot.finish_text(&flow_name, &completed.fields, &short_order_id(order)),
                    buttons: Vec::new(),
                });
            }
            let progress = serde_json::to_string(&step.progress).map_err(|error| error.to_string())?;
            (Move::Say(say), Some(progress))
        }
    };
    match bot_move {
        Move::Handoff { reason, detail } => {
            step_aside(shared, &settings, &state, tenant, conversation, reason, detail).await
        }
        Move::Say(prompts) => {
            let Some((text, buttons)) = one_message(&prompts) else {
                let flow = flow_progress.as_deref().map(Some);
                return shared
                    .state
                    .finish(conversation, state.session, handled, flow, 0, 0)
                    .await
                    .map(|_| ())
                    .map_err(redis_error);
            };
            // Still the bot's turn? An agent may have taken over while the model thought.
            if let Some(current) = shared.state.load(conversation).await.map_err(redis_error)?
                && (current.handoff.is_some() || current.session != state.session)
            {
                return Ok(());
            }
            let client_msg_id = format!("bot-{trigger}");
            let sender = Actor { kind: SenderKind::Bot, id: None };
            let buttons = buttons
                .into_iter()
                .map(|button| chatdesk_core::envelope::Button { id: button.id, title: button.title })
                .collect();
            match shared.reply.send_with(tenant, conversation, sender, &text, Some(&client_msg_id), buttons).await {
                Ok(_) => {
                    let mode = if settings.mode == Mode::Flow { "flow" } else { "llm" };
                    ::metrics::counter!(metrics::REPLIES_TOTAL, "mode" => mode).increment(1);
                }
                // The writer stores a new conversation a moment after its first message: a bot
                // quicker than that (no quiet period, a busy writer) tries again shortly, for
                // as long as the customer would still be waiting.
                Err(ReplyError::NotFound) if !waited_too_long(&state.pending) => {
                    return Err("the conversation is not stored yet".to_owned());
                }
                Err(ReplyError::NotFound | ReplyError::Blocked) => {}
                Err(ReplyError::Text(error)) => {
                    tracing::warn!(%conversation, error = %error, "the bot's reply is not a valid message; dropped");
                }
                Err(error) => return Err(error.to_string()),
            }
            let flow = flow_progress.as_deref().map(Some);
            shared
                .state
                .finish(conversation, state.session, handled, flow, 1, settings.debounce_ms)
                .await
                .map(|_| ())
                .map_err(redis_error)
        }
    }
}

/// The model's context: the conversation's last messages from PostgreSQL, then the customer's
/// pending ones the writer may not have stored yet, `max` in all.
async fn history(
    shared: &Shared,
    tenant: Uuid,
    conversation: Uuid,
    max: u32,
    pending: &[crate::state::Pending],
) -> Result<Vec<Turn>, String> {
    let stored = chatdesk_store::autoreply::recent_messages(&shared.db, tenant, conversation, i64::from(max))
        .await
        .map_err(|error| error.to_string())?;
    let pending_ids: HashSet<&str> = pending.iter().map(|message| message.id.as_str()).collect();
    let mut turns: Vec<Turn> = stored
        .into_iter()
        .filter(|message| !pending_ids.contains(message.event_id.to_string().as_str()))
        .filter_map(|message| {
            let role = match message.sender_kind.as_str() {
                "customer" => Role::User,
                "agent" | "bot" | "campaign" => Role::Assistant,
                _ => return None,
            };
            Some(Turn { role, text: message.text })
        })
        .collect();
    turns.extend(pending.iter().map(|message| Turn { role: Role::User, text: message.text.clone() }));
    let excess = turns.len().saturating_sub(max as usize);
    turns.drain(..excess);
    Ok(turns)
}

fn short_order_id(order: Uuid) -> String {
    order.simple().to_string()[..8].to_uppercase()
}

/// Runs a completed flow's action: an order row, or a signed webhook call.
#[allow(clippy::too_many_arguments)]
async fn complete(
    shared: &Shared,
    tenant: Uuid,
    inbox: Uuid,
    conversation: Uuid,
    contact: Uuid,
    flow: &str,
    order: Uuid,
    completed: &crate::flow::Completed,
    record: &chatdesk_store::directory::InboxRecord,
) -> Result<(), String> {
    let fields = serde_json::to_value(&completed.fields).map_err(|error| error.to_string())?;
    match &completed.action {
        Action::Order => {
            let new = chatdesk_store::autoreply::NewOrder {
                id: order,
                tenant,
                inbox,
                conversation,
                contact,
                flow,
                fields: &fields,
            };
            let inserted =
                chatdesk_store::autoreply::insert_order(&shared.db, &new).await.map_err(|error| error.to_string())?;
            if inserted {
                ::metrics::counter!(metrics::ORDERS_TOTAL).increment(1);
            }
            Ok(())
        }
        Action::Webhook { url } => {
            let secret = &record.webhook_secret;
            let body = serde_json::json!({
                "order_id": order, "flow": flow, "inbox_id": inbox, "conversation_id": conversation,
                "contact_id": contact, "fields": fields,
            })
            .to_string();
            let signature = chatdesk_core::auth::sign_body(body.as_bytes(), secret);
            let mut last_error = String::new();
            // One retry, as for the model: the receiver's own idempotency key is the order id.
            let url = chatdesk_outbound::checked_url(&shared.settings.policy, url)
                .map_err(|error| format!("the flow's webhook URL is refused: {error}"))?;
            for _ in 0..2 {
                let call = shared
                    .http
                    .post(url.clone())
                    .timeout(Duration::from_secs(10))
                    .header("Content-Type", "application/json")
                    .header("X-Chatdesk-Signature", &signature)
                    .header("Idempotency-Key", order.to_string())
                    .body(body.clone())
                    .send()
                    .await;
                match call {
                    Ok(response) if response.status().is_success() => return Ok(()),
                    Ok(response) => {
                        last_error = format!("the flow's webhook answered HTTP {}", response.status().as_u16())
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot call a flow's webhook");
                        last_error = "the flow's webhook cannot be reached".to_owned();
                    }
                }
            }
            Err(last_error)
        }
        Action::None => Ok(()),
    }
}
