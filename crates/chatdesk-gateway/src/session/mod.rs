//! One WebSocket connection: the loop that reads client frames, hands live events to the socket
//! and keeps heartbeats, with one module per client operation:
//!
//! - [`hello`]: the handshake (`hello` → `welcome`, or a close with the reason).
//! - [`subscribe`]: `subscribe` / `unsubscribe` of `inbox`, `conversation:<id>` and `ops`, with
//!   the replay of a resuming client's gap.
//! - [`send`]: an agent's reply (`send` → `ack`).
//! - [`typing`]: typing signals to the conversation's other subscribers.
//! - [`read`]: an agent marking a conversation read.
//!
//! The seam between a replayed gap and live events has neither a hole nor a duplicate: the
//! socket starts listening on the hub *before* it replays, and every subscription remembers the
//! last offset it sent; live events at or below it are dropped ([`subscribe::admits`]). A
//! channel's events all live in one partition, whose offsets are totally ordered, so "at or
//! below" is exact.

mod hello;
mod read;
mod send;
mod subscribe;
mod typing;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use chatdesk_core::TenantId;
use chatdesk_core::config::EVENTS_STREAM;
use chatdesk_core::keys::partition_for_tenant;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Gateway;
use crate::channel::Identity;
use crate::hub::Delivery;
use crate::metrics;
use crate::protocol::{ClientFrame, ErrorCode, ServerFrame, close};

use self::subscribe::Subscription;

struct Session {
    gateway: Gateway,
    id: u64,
    identity: Identity,
    sink: futures::stream::SplitSink<WebSocket, Message>,
    subscriptions: HashMap<String, Subscription>,
    queue: Option<mpsc::WeakSender<Arc<Delivery>>>,
    receiver: Option<mpsc::Receiver<Arc<Delivery>>>,
    presence_refreshed: Option<Instant>,
    /// Set while subscribed to `ops`: when the next snapshot is due.
    ops: Option<tokio::time::Interval>,
    /// The last operator action sent on `ops` (the audit log's row id).
    ops_audit_after: i64,
    /// Campaigns followed on `campaign:<id>`, with the progress last sent; checked on one tick.
    campaigns: HashMap<uuid::Uuid, Option<serde_json::Value>>,
    campaign_tick: Option<tokio::time::Interval>,
    /// Conversations this agent's socket has found to be its tenant's (asked once each).
    known_conversations: std::collections::HashSet<uuid::Uuid>,
    /// For an agent: the tenant's inboxes it does not work, as of its last `inbox` subscribe.
    hidden_inboxes: Vec<uuid::Uuid>,
    /// Conversations' and contacts' inboxes, for the inbox channel's filter when `hidden_inboxes`
    /// is not empty.
    conversation_inboxes: HashMap<uuid::Uuid, uuid::Uuid>,
    /// An agent's token: rechecked while the socket is open, so revoking it closes the socket.
    claims: Option<chatdesk_core::auth::Claims>,
}

/// Why a session ends with a close frame.
struct Closing {
    code: u16,
    reason: String,
}

fn closing(code: u16, reason: impl Into<String>) -> Closing {
    Closing { code, reason: reason.into() }
}

async fn send_close(sink: &mut futures::stream::SplitSink<WebSocket, Message>, closing: Closing) {
    let frame = CloseFrame { code: closing.code, reason: closing.reason.into() };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = sink.close().await;
}

pub async fn run(gateway: Gateway, socket: WebSocket) {
    ::metrics::gauge!(metrics::CONNECTIONS).increment(1.0);
    let (mut sink, mut stream) = socket.split();
    let hello::Admitted { identity, claims } = match hello::handshake(&gateway, &mut stream).await {
        Ok(admitted) => admitted,
        Err(reason) => {
            send_close(&mut sink, reason).await;
            ::metrics::gauge!(metrics::CONNECTIONS).decrement(1.0);
            return;
        }
    };
    // The events of every channel this socket may use live in its tenant's partition: this node
    // must read it from now on, before any subscription replays.
    let partition = gateway
        .inner
        .streams
        .stream(EVENTS_STREAM)
        .map(|events| partition_for_tenant(&TenantId(identity.tenant()), events.partitions))
        .unwrap_or(0);
    if let Err(error) = gateway.inner.readers.acquire(partition).await {
        tracing::warn!(error = %error, partition, "cannot read the socket's partition");
        send_close(&mut sink, closing(close::UNAVAILABLE, "the server cannot read events now; reconnect shortly"))
            .await;
        ::metrics::gauge!(metrics::CONNECTIONS).decrement(1.0);
        return;
    }
    let id = gateway.inner.sessions.fetch_add(1, Ordering::Relaxed);
    let agent = match identity {
        Identity::Agent { tenant, user, .. } => Some((tenant, user)),
        Identity::Visitor { .. } => None,
    };
    if let Some((tenant, user)) = agent
        && let Err(error) = crate::ephemeral::presence::change(&gateway, tenant, user, id, true).await
    {
        tracing::debug!(error = %error, "cannot record presence");
    }
    if let Identity::Visitor { conversation, .. } = identity
        && let Err(error) = crate::ephemeral::presence::refresh_visitor(&gateway, conversation, id).await
    {
        tracing::debug!(error = %error, "cannot record a visitor's presence");
    }
    let mut session = Session {
        gateway: gateway.clone(),
        id,
        identity,
        sink,
        subscriptions: HashMap::new(),
        queue: None,
        receiver: None,
        presence_refreshed: None,
        ops: None,
        ops_audit_after: 0,
        campaigns: HashMap::new(),
        campaign_tick: None,
        known_conversations: std::collections::HashSet::new(),
        hidden_inboxes: Vec::new(),
        conversation_inboxes: HashMap::new(),
        claims,
    };
    let ending = session.serve(&mut stream).await;
    gateway.inner.hub.leave(id);
    if let Some((tenant, user)) = agent {
        let _ = crate::ephemeral::presence::change(&gateway, tenant, user, id, false).await;
    }
    if let Identity::Visitor { conversation, .. } = session.identity {
        let _ = crate::ephemeral::presence::visitor_left(&gateway, conversation, id).await;
    }
    ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(
        session.subscriptions.len() as f64 + session.ops.is_some() as u8 as f64 + session.campaigns.len() as f64,
    );
    gateway.inner.readers.release(partition).await;
    if let Some(ending) = ending {
        send_close(&mut session.sink, ending).await;
    }
    ::metrics::gauge!(metrics::CONNECTIONS).decrement(1.0);
}

/// Why the client's side of the socket broke, as a close frame when the client is owed one (its
/// frame was too large or not UTF-8); `None` when the connection is simply gone.
fn broken(error: axum::Error) -> Option<Closing> {
    use tokio_tungstenite::tungstenite::Error as Ws;
    match error.into_inner().downcast::<Ws>().map(|error| *error) {
        Ok(Ws::Capacity(_)) => Some(closing(close::TOO_BIG, "frames are limited to 64 KiB")),
        Ok(Ws::Utf8(_)) => Some(closing(close::INVALID_DATA, "text frames must be UTF-8")),
        Ok(Ws::Protocol(violation)) => Some(closing(close::PROTOCOL_ERROR, violation.to_string())),
        _ => None,
    }
}

/// Event types a widget visitor receives: the conversation's messages and typing. Assignments,
/// status changes, read receipts and statuses are the agents' business.
const VISITOR_EVENT_TYPES: [&str; 2] = ["message.created", "typing"];

/// What a visitor sees of `delivery`, or `None` when it is not for visitors: the allowed types
/// only, without the ids of the agents behind them.
fn for_visitor(delivery: &Delivery) -> Option<Box<serde_json::value::RawValue>> {
    if !VISITOR_EVENT_TYPES.contains(&delivery.envelope.record_type.as_str()) {
        return None;
    }
    let mut data: serde_json::Value = serde_json::from_str(delivery.data.get()).ok()?;
    for actor in ["sender", "who"] {
        if let Some(actor) = data.get_mut(actor).and_then(serde_json::Value::as_object_mut)
            && actor.get("kind").and_then(serde_json::Value::as_str) != Some("customer")
        {
            actor.remove("id");
        }
    }
    serde_json::value::to_raw_value(&data).ok()
}

impl Session {
    /// Whether `conversation` is the tenant's: `None` if it is, else the error to answer
    /// (`not_found`, or `unavailable` when PostgreSQL cannot say).
    async fn check_conversation(&mut self, conversation: uuid::Uuid) -> Option<ErrorCode> {
        if self.known_conversations.contains(&conversation) {
            return None;
        }
        let tenant = self.identity.tenant();
        match chatdesk_store::conversations::get_conversation(&self.gateway.inner.db, tenant, conversation).await {
            Ok(Some(row)) => {
                // An agent reads only the inboxes it works (those without members are everyone's).
                if let Identity::Agent { user, role: chatdesk_core::auth::Role::Agent, .. } = self.identity {
                    match chatdesk_store::workspace::unreadable_inboxes(&self.gateway.inner.db, tenant, user).await {
                        Ok(hidden) if hidden.contains(&row.inbox_id) => return Some(ErrorCode::NotFound),
                        Ok(_) => {}
                        Err(_) => return Some(ErrorCode::Unavailable),
                    }
                }
                self.known_conversations.insert(conversation);
                None
            }
            Ok(None) => Some(ErrorCode::NotFound),
            Err(_) => Some(ErrorCode::Unavailable),
        }
    }

    /// Whether the inbox channel may carry `delivery` to this agent: events of a conversation
    /// in an inbox it does not work are left out. A conversation's inbox is looked up once per
    /// socket; PostgreSQL not answering leaves the event out rather than leak it.
    async fn inbox_readable(&mut self, delivery: &Delivery) -> bool {
        let payload_inbox = || {
            serde_json::from_str::<serde_json::Value>(delivery.data.get())
                .ok()
                .and_then(|data| data.get("inbox_id")?.as_str()?.parse::<uuid::Uuid>().ok())
        };
        // A contact's own events name their inbox when they have one (a new contact does); the
        // others (edits, merges) are the inbox channel's only if the contact's inbox is readable.
        let Some(conversation) = delivery.envelope.conversation else {
            if let Some(inbox) = payload_inbox() {
                return !self.hidden_inboxes.contains(&inbox);
            }
            let contact = serde_json::from_str::<serde_json::Value>(delivery.data.get())
                .ok()
                .and_then(|data| data.get("contact_id")?.as_str()?.parse::<uuid::Uuid>().ok());
            let Some(contact) = contact else { return true };
            if let Some(inbox) = self.conversation_inboxes.get(&contact) {
                return !self.hidden_inboxes.contains(inbox);
            }
            let tenant = self.identity.tenant();
            return match chatdesk_store::workspace::get_contact(&self.gateway.inner.db, tenant, contact).await {
                Ok(Some(row)) => {
                    self.conversation_inboxes.insert(contact, row.inbox_id);
                    !self.hidden_inboxes.contains(&row.inbox_id)
                }
                Ok(None) | Err(_) => false,
            };
        };
        if let Some(inbox) = self.conversation_inboxes.get(&conversation) {
            return !self.hidden_inboxes.contains(inbox);
        }
        let tenant = self.identity.tenant();
        match chatdesk_store::workspace::conversation_routing(&self.gateway.inner.db, tenant, conversation).await {
            Ok(Some((inbox, _))) => {
                if self.conversation_inboxes.len() >= 10_000 {
                    self.conversation_inboxes.clear();
                }
                self.conversation_inboxes.insert(conversation, inbox);
                !self.hidden_inboxes.contains(&inbox)
            }
            // Not stored yet (a conversation's first events): its inbox is in the payload.
            Ok(None) => payload_inbox().is_some_and(|inbox| {
                self.conversation_inboxes.insert(conversation, inbox);
                !self.hidden_inboxes.contains(&inbox)
            }),
            Err(_) => false,
        }
    }

    async fn send(&mut self, frame: &ServerFrame) -> bool {
        let text = serde_json::to_string(frame).expect("frames serialise");
        ::metrics::counter!(metrics::FRAMES_OUT_TOTAL).increment(1);
        self.sink.send(Message::Text(text.into())).await.is_ok()
    }

    async fn error(&mut self, code: ErrorCode, message: impl Into<String>, channel: Option<&str>) -> bool {
        self.send(&ServerFrame::Error { code, message: message.into(), channel: channel.map(str::to_owned) }).await
    }

    /// Runs until the client leaves (`None`) or the session must close (`Some`).
    async fn serve(&mut self, stream: &mut futures::stream::SplitStream<WebSocket>) -> Option<Closing> {
        let settings = self.gateway.inner.settings.clone();
        let welcome = ServerFrame::Welcome {
            session: format!("{}-{}", self.gateway.inner.node, self.id),
            node: self.gateway.inner.node.clone(),
            heartbeat_ms: settings.heartbeat.as_millis() as u64,
        };
        if !self.send(&welcome).await {
            return None;
        }
        let idle = settings.heartbeat * 5 / 2;
        let mut idle_deadline = Instant::now() + idle;
        let shutdown = self.gateway.inner.shutdown.clone();
        let mut recheck = tokio::time::interval_at(Instant::now() + settings.token_recheck, settings.token_recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let listening = !self.subscriptions.is_empty() && self.receiver.is_some();
            tokio::select! {
                _ = shutdown.cancelled() => return Some(closing(close::RESTARTING, "the server is restarting; reconnect and resume")),
                _ = tokio::time::sleep_until(idle_deadline) => {
                    return Some(closing(close::IDLE, format!("nothing from the client for {}s; send ping", idle.as_secs())));
                }
                delivery = async { self.receiver.as_mut().expect("listening").recv().await }, if listening => {
                    match delivery {
                        Some(delivery) => {
                            if !self.deliver(&delivery).await {
                                return None;
                            }
                        }
                        // The hub dropped this socket's queue: it fell behind.
                        None => return Some(closing(close::SLOW_CLIENT, "too far behind; reconnect and resume from your last offset")),
                    }
                }
                _ = recheck.tick(), if self.claims.is_some() => {
                    let claims = self.claims.as_ref().expect("an agent's token");
                    // A database that cannot answer now does not end a working session.
                    if let Some(Err(reason)) = hello::standing(&self.gateway, claims).await {
                        return Some(reason);
                    }
                }
                _ = async { self.ops.as_mut().expect("subscribed to ops").tick().await }, if self.ops.is_some() => {
                    if !self.push_ops().await {
                        return None;
                    }
                }
                _ = async { self.campaign_tick.as_mut().expect("following campaigns").tick().await }, if self.campaign_tick.is_some() => {
                    if !self.push_campaigns().await {
                        return None;
                    }
                }
                frame = stream.next() => {
                    idle_deadline = Instant::now() + idle;
                    match frame {
                        None | Some(Ok(Message::Close(_))) => return None,
                        Some(Err(error)) => return broken(error),
                        Some(Ok(Message::Text(text))) => {
                            ::metrics::counter!(metrics::FRAMES_IN_TOTAL).increment(1);
                            self.refresh_presence().await;
                            if !self.on_frame(&text).await {
                                return None;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            if !self.error(ErrorCode::BadFrame, "only text frames carry the protocol", None).await {
                                return None;
                            }
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }

    /// Keeps an agent's presence from lapsing while the socket talks (at most every heartbeat).
    async fn refresh_presence(&mut self) {
        let now = Instant::now();
        if self.presence_refreshed.is_some_and(|at| now.duration_since(at) < self.gateway.inner.settings.heartbeat / 2)
        {
            return;
        }
        self.presence_refreshed = Some(now);
        let _ = match self.identity {
            Identity::Agent { tenant, user, .. } => {
                crate::ephemeral::presence::refresh(&self.gateway, tenant, user, self.id).await
            }
            Identity::Visitor { conversation, .. } => {
                crate::ephemeral::presence::refresh_visitor(&self.gateway, conversation, self.id).await
            }
        };
    }

    /// Handles one client frame; `false` when the socket is gone.
    /// Handles one client frame; `false` when the socket is gone.
    async fn on_frame(&mut self, text: &str) -> bool {
        match ClientFrame::parse(text) {
            Err(error) => self.error(ErrorCode::BadFrame, error, None).await,
            Ok(ClientFrame::Hello { .. }) => {
                self.error(ErrorCode::AlreadyAuthenticated, "hello was already accepted", None).await
            }
            Ok(ClientFrame::Ping { id }) => self.send(&ServerFrame::Pong { id }).await,
            Ok(ClientFrame::Unsubscribe { channel }) => self.unsubscribe(channel).await,
            Ok(ClientFrame::Subscribe { channel, since, epoch }) => self.subscribe(channel, since, epoch).await,
            Ok(ClientFrame::Send { conversation, text, client_msg_id }) => {
                self.reply(conversation, text, client_msg_id).await
            }
            Ok(ClientFrame::Typing { conversation, typing }) => self.typing(conversation, typing).await,
            Ok(ClientFrame::Read { conversation, offset }) => self.read(conversation, offset).await,
        }
    }

    /// A queue the hub can hand this socket's events to (a new one after every subscription
    /// was dropped, since a queue whose senders are all gone stays closed).
    fn queue(&mut self) -> mpsc::Sender<Arc<Delivery>> {
        if let Some(sender) = self.queue.as_ref().and_then(mpsc::WeakSender::upgrade) {
            return sender;
        }
        let (sender, receiver) = mpsc::channel(self.gateway.inner.settings.queue);
        self.queue = Some(sender.downgrade());
        self.receiver = Some(receiver);
        sender
    }

    /// Sends `delivery` on `name` if [`subscribe::admits`] it; `None` when the socket is gone,
    /// `Some(sent)` otherwise.
    async fn send_event(&mut self, name: &str, subscription: &mut Subscription, delivery: &Delivery) -> Option<bool> {
        if !subscribe::admits(self.identity.tenant(), subscription, delivery) {
            return Some(false);
        }
        if subscription.conversation.is_none()
            && !self.hidden_inboxes.is_empty()
            && !self.inbox_readable(delivery).await
        {
            // Not this agent's inbox: the offset moves on, so a resume does not send it again.
            if let Some(offset) = delivery.offset {
                subscription.last = Some(offset);
            }
            return Some(false);
        }
        if let Some(offset) = delivery.offset {
            subscription.last = Some(offset);
        }
        let data = match self.identity {
            Identity::Agent { .. } => delivery.data.clone(),
            Identity::Visitor { .. } => match for_visitor(delivery) {
                Some(data) => data,
                // Not for visitors: the offset still moves, so a resume does not send it again.
                None => return Some(false),
            },
        };
        let frame = ServerFrame::Event {
            channel: name.to_owned(),
            offset: delivery.offset.map(|offset| offset.to_string()),
            event_id: delivery.offset.map(|_| delivery.envelope.event_id.to_string()),
            event_type: delivery.envelope.record_type.clone(),
            data,
        };
        if !self.send(&frame).await {
            return None;
        }
        Some(true)
    }

    /// A live delivery, to every subscription it belongs to.
    async fn deliver(&mut self, delivery: &Delivery) -> bool {
        let names: Vec<String> = self.subscriptions.keys().cloned().collect();
        for name in names {
            let Some(mut subscription) = self.subscriptions.remove(&name) else { continue };
            let sent = self.send_event(&name, &mut subscription, delivery).await;
            self.subscriptions.insert(name, subscription);
            match sent {
                None => return false,
                Some(true) => {
                    let now = chatdesk_core::envelope::now_ms();
                    ::metrics::histogram!(metrics::FANOUT_LATENCY_SECONDS)
                        .record(now.saturating_sub(delivery.envelope.time_ms) as f64 / 1000.0);
                }
                Some(false) => {}
            }
        }
        true
    }
}
