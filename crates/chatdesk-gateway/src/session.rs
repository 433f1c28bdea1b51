//! One WebSocket connection: handshake, subscriptions, resume, live events, heartbeats.
//!
//! The seam between a replayed gap and live events has neither a hole nor a duplicate: the
//! socket starts listening on the hub *before* it replays, and every subscription remembers the
//! last offset it sent; live events at or below it are dropped. A channel's events all live in
//! one partition, whose offsets are totally ordered, so "at or below" is exact.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use chatdesk_conversations::ReplyError;
use chatdesk_core::auth::{Role, verify_token, verify_visitor_token};
use chatdesk_core::config::EVENTS_STREAM;
use chatdesk_core::events::{Actor, ConversationRead, Event, SenderKind, Typing};
use chatdesk_core::keys::partition_for_tenant;
use chatdesk_core::{EntryId, Envelope, TenantId};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::Gateway;
use crate::channel::{Channel, Identity, authorize};
use crate::hub::Delivery;
use crate::metrics;
use crate::protocol::{ClientFrame, ErrorCode, PROTOCOL_VERSION, ServerFrame, close};
use crate::replay;

struct Subscription {
    key: String,
    conversation: Option<Uuid>,
    /// The last offset sent on this channel.
    last: Option<EntryId>,
}

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

fn identify(gateway: &Gateway, token: &str) -> Result<Identity, String> {
    let tokens = &gateway.inner.tokens;
    match verify_token(tokens, token) {
        Ok(claims) => {
            let role = Role::parse(&claims.role).ok_or("the token has an unknown role")?;
            Ok(Identity::Agent { tenant: claims.tenant, user: claims.sub, role })
        }
        Err(agent_error) => match verify_visitor_token(tokens, token) {
            Ok(visitor) => Ok(Identity::Visitor { tenant: visitor.tenant, conversation: visitor.conversation }),
            Err(_) => Err(agent_error.to_string()),
        },
    }
}

/// Waits for `hello`; returns who is on the socket, or why it must close.
async fn handshake(
    gateway: &Gateway,
    stream: &mut futures::stream::SplitStream<WebSocket>,
) -> Result<Identity, Closing> {
    let timeout = gateway.inner.settings.hello_timeout;
    let first = tokio::time::timeout(timeout, stream.next())
        .await
        .map_err(|_| closing(close::HELLO_EXPECTED, format!("no hello within {}s", timeout.as_secs())))?;
    let Some(Ok(Message::Text(text))) = first else {
        return Err(closing(close::HELLO_EXPECTED, "the first frame must be a hello text frame"));
    };
    ::metrics::counter!(metrics::FRAMES_IN_TOTAL).increment(1);
    match ClientFrame::parse(&text) {
        Ok(ClientFrame::Hello { protocol, .. }) if protocol != PROTOCOL_VERSION => Err(closing(
            close::UNSUPPORTED_PROTOCOL,
            format!("protocol {protocol} is not supported; use {PROTOCOL_VERSION}"),
        )),
        Ok(ClientFrame::Hello { token, .. }) => {
            identify(gateway, token.trim()).map_err(|reason| closing(close::UNAUTHORIZED, reason))
        }
        Ok(_) => Err(closing(close::HELLO_EXPECTED, "the first frame must be hello")),
        Err(error) => Err(closing(close::HELLO_EXPECTED, format!("invalid hello: {error}"))),
    }
}

pub async fn run(gateway: Gateway, socket: WebSocket) {
    ::metrics::gauge!(metrics::CONNECTIONS).increment(1.0);
    let (mut sink, mut stream) = socket.split();
    let identity = match handshake(&gateway, &mut stream).await {
        Ok(identity) => identity,
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
    };
    let ending = session.serve(&mut stream).await;
    gateway.inner.hub.leave(id);
    if let Some((tenant, user)) = agent {
        let _ = crate::ephemeral::presence::change(&gateway, tenant, user, id, false).await;
    }
    ::metrics::gauge!(metrics::SUBSCRIPTIONS)
        .decrement(session.subscriptions.len() as f64 + session.ops.is_some() as u8 as f64);
    gateway.inner.readers.release(partition).await;
    if let Some(ending) = ending {
        send_close(&mut session.sink, ending).await;
    }
    ::metrics::gauge!(metrics::CONNECTIONS).decrement(1.0);
}

impl Session {
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
                _ = async { self.ops.as_mut().expect("subscribed to ops").tick().await }, if self.ops.is_some() => {
                    if !self.push_ops().await {
                        return None;
                    }
                }
                frame = stream.next() => {
                    idle_deadline = Instant::now() + idle;
                    match frame {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
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
        let Identity::Agent { tenant, user, .. } = self.identity else { return };
        let now = Instant::now();
        if self.presence_refreshed.is_some_and(|at| now.duration_since(at) < self.gateway.inner.settings.heartbeat / 2)
        {
            return;
        }
        self.presence_refreshed = Some(now);
        let _ = crate::ephemeral::presence::refresh(&self.gateway, tenant, user, self.id).await;
    }

    /// Handles one client frame; `false` when the socket is gone.
    async fn on_frame(&mut self, text: &str) -> bool {
        match ClientFrame::parse(text) {
            Err(error) => self.error(ErrorCode::BadFrame, error, None).await,
            Ok(ClientFrame::Hello { .. }) => {
                self.error(ErrorCode::AlreadyAuthenticated, "hello was already accepted", None).await
            }
            Ok(ClientFrame::Ping { id }) => self.send(&ServerFrame::Pong { id }).await,
            Ok(ClientFrame::Unsubscribe { channel }) if channel == "ops" && self.ops.is_some() => {
                self.ops = None;
                ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(1.0);
                self.send(&ServerFrame::Unsubscribed { channel }).await
            }
            Ok(ClientFrame::Unsubscribe { channel }) => {
                let Some(subscription) = self.subscriptions.remove(&channel) else {
                    return self
                        .error(ErrorCode::UnknownChannel, format!("not subscribed to {channel}"), Some(&channel))
                        .await;
                };
                self.gateway.inner.hub.unlisten(self.id, &subscription.key);
                ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(1.0);
                self.send(&ServerFrame::Unsubscribed { channel }).await
            }
            Ok(ClientFrame::Subscribe { channel, since, epoch }) => self.subscribe(channel, since, epoch).await,
            Ok(ClientFrame::Send { conversation, text, client_msg_id }) => {
                self.reply(conversation, text, client_msg_id).await
            }
            Ok(ClientFrame::Typing { conversation, typing }) => self.typing(conversation, typing).await,
            Ok(ClientFrame::Read { conversation, offset }) => self.read(conversation, offset).await,
        }
    }

    /// Records that the agent read a conversation up to `offset`: a `conversation.read` event,
    /// which comes back on the conversation's channels and resets its unread count.
    async fn read(&mut self, conversation: String, offset: String) -> bool {
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
        match chatdesk_store::conversations::get_conversation(&inner.db, tenant, conversation).await {
            Ok(Some(_)) => {}
            Ok(None) => return self.error(ErrorCode::NotFound, "no such conversation", Some(&channel)).await,
            Err(_) => return self.error(ErrorCode::Unavailable, "PostgreSQL is unavailable", Some(&channel)).await,
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

    /// Tells the conversation's other subscribers (on every gateway) that the caller types.
    async fn typing(&mut self, conversation: String, typing: bool) -> bool {
        let channel = format!("conversation:{conversation}");
        let Ok(conversation) = Uuid::parse_str(&conversation) else {
            return self.error(ErrorCode::BadFrame, "conversation must be a conversation id", None).await;
        };
        if let Err(reason) = authorize(&self.identity, &Channel::Conversation(conversation)) {
            return self.error(ErrorCode::Forbidden, reason, Some(&channel)).await;
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

    /// An agent's reply, appended exactly as `POST /v1/conversations/{id}/messages` does.
    async fn reply(&mut self, conversation: String, text: String, client_msg_id: String) -> bool {
        let channel = format!("conversation:{conversation}");
        let Identity::Agent { tenant, user, role } = self.identity.clone() else {
            return self
                .error(ErrorCode::Forbidden, "visitors write with POST /v1/widget/{inbox_id}/messages", Some(&channel))
                .await;
        };
        if !matches!(role, Role::Owner | Role::Admin | Role::Agent) {
            return self.error(ErrorCode::Forbidden, "this role may not reply", Some(&channel)).await;
        }
        let Ok(conversation) = Uuid::parse_str(&conversation) else {
            return self.error(ErrorCode::BadFrame, "conversation must be a conversation id", None).await;
        };
        let sender = Actor { kind: SenderKind::Agent, id: Some(user) };
        let inner = self.gateway.inner.clone();
        match inner.reply.send(tenant, conversation, sender, &text, Some(&client_msg_id)).await {
            Ok(accepted) => {
                let ack = ServerFrame::Ack {
                    client_msg_id,
                    event_id: accepted.event_id.to_string(),
                    offset: accepted.offset.map(|offset| offset.to_string()),
                };
                self.send(&ack).await
            }
            Err(error) => {
                let code = match &error {
                    ReplyError::Text(_) | ReplyError::ClientMsgId(_) => ErrorCode::BadFrame,
                    ReplyError::NotFound => ErrorCode::NotFound,
                    ReplyError::Blocked => ErrorCode::Conflict,
                    ReplyError::Store(_) | ReplyError::Append(_) => ErrorCode::Unavailable,
                };
                let message = match &error {
                    ReplyError::Append(_) => "Redis is unavailable; send again with the same client_msg_id".to_owned(),
                    other => other.to_string(),
                };
                self.error(code, message, Some(&channel)).await
            }
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

    async fn subscribe(&mut self, name: String, since: Option<String>, epoch: Option<String>) -> bool {
        let Some(channel) = Channel::parse(&name) else {
            return self
                .error(ErrorCode::UnknownChannel, "channels are `inbox`, `conversation:<id>` and `ops`", Some(&name))
                .await;
        };
        if let Err(reason) = authorize(&self.identity, &channel) {
            return self.error(ErrorCode::Forbidden, reason, Some(&name)).await;
        }
        if channel == Channel::Ops {
            return self.subscribe_ops().await;
        }
        if self.subscriptions.contains_key(&name) {
            self.gateway.inner.hub.unlisten(self.id, &self.subscriptions[&name].key);
            self.subscriptions.remove(&name);
            ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(1.0);
        }
        if self.subscriptions.len() >= self.gateway.inner.settings.max_subscriptions {
            return self.error(ErrorCode::TooManySubscriptions, "unsubscribe from a channel first", Some(&name)).await;
        }
        let since = match since.as_deref().map(str::parse::<EntryId>) {
            Some(Err(_)) => {
                return self.error(ErrorCode::BadFrame, "since must be an offset (<ms>-<seq>)", Some(&name)).await;
            }
            Some(Ok(offset)) => Some(offset),
            None => None,
        };
        let tenant = self.identity.tenant();
        let (key, conversation) = match channel {
            Channel::Inbox => (format!("inbox:{tenant}"), None),
            Channel::Ops => unreachable!("handled above"),
            Channel::Conversation(id) => {
                if let Identity::Agent { .. } = self.identity {
                    match chatdesk_store::conversations::get_conversation(&self.gateway.inner.db, tenant, id).await {
                        Ok(Some(_)) => {}
                        Ok(None) => return self.error(ErrorCode::NotFound, "no such conversation", Some(&name)).await,
                        Err(_) => {
                            return self.error(ErrorCode::Unavailable, "PostgreSQL is unavailable", Some(&name)).await;
                        }
                    }
                }
                (format!("conversation:{id}"), Some(id))
            }
        };
        let queue = self.queue();
        // Listen before replaying: whatever is appended meanwhile arrives live, and the offset
        // check drops what the replay already sent.
        self.gateway.inner.hub.listen(self.id, key.clone(), queue);
        ::metrics::gauge!(metrics::SUBSCRIPTIONS).increment(1.0);
        let mut subscription = Subscription { key, conversation, last: since };
        match self.replay(&name, &mut subscription, since, epoch).await {
            Ok((recovered, epoch, head, replayed)) => {
                self.subscriptions.insert(name.clone(), subscription);
                let presence = match channel {
                    Channel::Inbox => crate::ephemeral::presence::online(&self.gateway, tenant)
                        .await
                        .ok()
                        .map(|users| users.iter().map(Uuid::to_string).collect()),
                    Channel::Conversation(_) | Channel::Ops => None,
                };
                let frame = ServerFrame::Subscribed {
                    channel: name,
                    recovered,
                    epoch,
                    head: head.map(|offset| offset.to_string()),
                    replayed,
                    presence,
                };
                self.send(&frame).await
            }
            Err(Some(message)) => {
                self.gateway.inner.hub.unlisten(self.id, &subscription.key);
                ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(1.0);
                self.error(ErrorCode::Unavailable, message, Some(&name)).await
            }
            Err(None) => false,
        }
    }

    /// `ops` has no offsets (snapshots are not stored): `subscribed`, then a snapshot now and
    /// every few seconds.
    async fn subscribe_ops(&mut self) -> bool {
        if self.ops.is_none() {
            ::metrics::gauge!(metrics::SUBSCRIPTIONS).increment(1.0);
        }
        let mut interval = tokio::time::interval(crate::ops::INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.ops = Some(interval);
        let frame = ServerFrame::Subscribed {
            channel: "ops".to_owned(),
            recovered: true,
            epoch: String::new(),
            head: None,
            replayed: 0,
            presence: None,
        };
        self.send(&frame).await
    }

    async fn push_ops(&mut self) -> bool {
        let inner = self.gateway.inner.clone();
        match crate::ops::snapshot(&inner.redis, &inner.keys, &inner.streams).await {
            Ok(snapshot) => {
                ::metrics::counter!(metrics::OPS_SNAPSHOTS_TOTAL).increment(1);
                let frame = ServerFrame::Event {
                    channel: "ops".to_owned(),
                    offset: None,
                    event_id: None,
                    event_type: crate::ops::EVENT_TYPE.to_owned(),
                    data: serde_json::to_value(snapshot).expect("snapshots serialise"),
                };
                self.send(&frame).await
            }
            Err(_) => self.error(ErrorCode::Unavailable, "Redis is unavailable", Some("ops")).await,
        }
    }

    /// Sends the gap after `since`; returns (recovered, epoch, head, replayed). `Err(None)`: the
    /// socket is gone; `Err(Some)`: a dependency failed.
    async fn replay(
        &mut self,
        name: &str,
        subscription: &mut Subscription,
        since: Option<EntryId>,
        client_epoch: Option<String>,
    ) -> Result<(bool, String, Option<EntryId>, u64), Option<String>> {
        let inner = self.gateway.inner.clone();
        let tenant = self.identity.tenant();
        let events =
            inner.streams.stream(EVENTS_STREAM).ok_or_else(|| Some("no events stream is configured".to_owned()))?;
        let partition = partition_for_tenant(&TenantId(tenant), events.partitions);
        let keys = inner.keys.partition(&events.name, partition);
        let redis_down = |_| Some("Redis is unavailable".to_owned());
        let epoch = replay::epoch(&inner.redis, &keys).await.map_err(redis_down)?;
        let (first, head) = replay::bounds(&inner.redis, &keys).await.map_err(redis_down)?;
        let Some(since) = since else { return Ok((true, epoch, head, 0)) };
        if client_epoch.as_ref().is_some_and(|client| *client != epoch) {
            // The stream was lost and recreated: offsets of the old one mean nothing now.
            subscription.last = None;
            return Ok((false, epoch, head, 0));
        }
        let mut replayed = 0;
        let mut cursor = since;
        if first.is_none_or(|first| since < first) {
            loop {
                let page = replay::stored_page(&inner.db, tenant, subscription.conversation, cursor, first)
                    .await
                    .map_err(|_| Some("PostgreSQL is unavailable".to_owned()))?;
                let full = page.len() as u64 == replay::PAGE;
                for delivery in page {
                    cursor = delivery.offset.unwrap_or(cursor);
                    if self.send_event(name, subscription, &delivery).await.ok_or(None)? {
                        replayed += 1;
                        ::metrics::counter!(metrics::REPLAYED_EVENTS_TOTAL, "source" => "postgres").increment(1);
                    }
                }
                if !full {
                    break;
                }
            }
        }
        loop {
            let page = replay::stream_page(&inner.redis, &keys, cursor).await.map_err(redis_down)?;
            let full = page.len() as u64 == replay::PAGE;
            for delivery in page {
                cursor = delivery.offset.unwrap_or(cursor);
                if self.send_event(name, subscription, &delivery).await.ok_or(None)? {
                    replayed += 1;
                    ::metrics::counter!(metrics::REPLAYED_EVENTS_TOTAL, "source" => "stream").increment(1);
                }
            }
            if !full {
                break;
            }
        }
        Ok((true, epoch, head, replayed))
    }

    /// Sends `delivery` on `name` if it belongs there and is newer than what was sent; `None`
    /// when the socket is gone, `Some(sent)` otherwise.
    async fn send_event(&mut self, name: &str, subscription: &mut Subscription, delivery: &Delivery) -> Option<bool> {
        let belongs = delivery.tenant() == self.identity.tenant()
            && subscription
                .conversation
                .is_none_or(|conversation| delivery.envelope.conversation == Some(conversation));
        if !belongs || delivery.offset.zip(subscription.last).is_some_and(|(offset, last)| offset <= last) {
            return Some(false);
        }
        if let Some(offset) = delivery.offset {
            subscription.last = Some(offset);
        }
        let frame = ServerFrame::Event {
            channel: name.to_owned(),
            offset: delivery.offset.map(|offset| offset.to_string()),
            event_id: delivery.offset.map(|_| delivery.envelope.event_id.to_string()),
            event_type: delivery.envelope.record_type.clone(),
            data: delivery.data.clone(),
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
