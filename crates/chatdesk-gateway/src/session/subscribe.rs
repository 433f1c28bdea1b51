//! `subscribe` and `unsubscribe`: channels, their replay from a client's cursor, the `ops` feed.

use chatdesk_core::config::EVENTS_STREAM;
use chatdesk_core::keys::partition_for_tenant;
use chatdesk_core::{EntryId, TenantId};
use uuid::Uuid;

use super::Session;
use crate::channel::{Channel, Identity, authorize};
use crate::hub::Delivery;
use crate::metrics;
use crate::protocol::{ErrorCode, ServerFrame};
use crate::replay;

/// One channel a socket listens on.
pub(super) struct Subscription {
    pub(super) key: String,
    pub(super) conversation: Option<Uuid>,
    /// The last offset sent on this channel.
    pub(super) last: Option<EntryId>,
}

/// What a replay did, for the `subscribed` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Replayed {
    /// `false`: the cursor is of another epoch (the stream was lost): reload from REST.
    pub(super) recovered: bool,
    pub(super) epoch: String,
    /// The partition's newest offset when the replay began.
    pub(super) head: Option<EntryId>,
    pub(super) replayed: u64,
}

/// Why a replay stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ReplayError {
    /// The socket is gone: nothing to answer.
    SocketGone,
    /// A dependency failed: answered with an `unavailable` error frame.
    Unavailable(String),
    /// The cursor cannot be a real one: answered with a `bad_frame` error frame.
    BadCursor(String),
}

fn unavailable(message: &str) -> ReplayError {
    ReplayError::Unavailable(message.to_owned())
}

/// Whether `delivery` goes out on `subscription` of a socket of `tenant`: it is the tenant's, of
/// the subscription's conversation (if any), and newer than the last offset sent (signals
/// without an offset always are). This is the seam between a replay and live events.
pub(super) fn admits(tenant: Uuid, subscription: &Subscription, delivery: &Delivery) -> bool {
    let belongs = delivery.tenant() == tenant
        && subscription.conversation.is_none_or(|conversation| delivery.envelope.conversation == Some(conversation));
    belongs && delivery.offset.zip(subscription.last).is_none_or(|(offset, last)| offset > last)
}

/// How often followed campaigns are checked for progress (at most this many frames per second
/// per campaign: two).
pub(super) const CAMPAIGN_TICK: std::time::Duration = std::time::Duration::from_millis(500);
/// The event type of a campaign's progress frame.
pub(super) const CAMPAIGN_PROGRESS: &str = "campaign.progress";

/// A campaign's progress as `campaign.progress` carries it:
/// `{campaign_id, name, status, rate_per_sec, counts, measured_rate}`.
async fn campaign_progress(
    db: &chatdesk_store::Pool,
    tenant: Uuid,
    campaign: Uuid,
) -> Result<Option<serde_json::Value>, chatdesk_store::StoreError> {
    let Some(row) = chatdesk_store::campaigns::get(db, tenant, campaign).await? else { return Ok(None) };
    let progress = chatdesk_store::campaigns::progress(db, tenant, campaign, 10).await?;
    let measured_rate = if row.status == "running" { progress.measured_rate } else { 0.0 };
    Ok(Some(serde_json::json!({
        "campaign_id": campaign,
        "name": row.name,
        "status": row.status,
        "rate_per_sec": row.rate_per_sec,
        "counts": progress.counts,
        "measured_rate": measured_rate,
    })))
}

impl Session {
    pub(super) async fn subscribe(&mut self, name: String, since: Option<String>, epoch: Option<String>) -> bool {
        let Some(channel) = Channel::parse(&name) else {
            return self
                .error(
                    ErrorCode::UnknownChannel,
                    "channels are `inbox`, `conversation:<id>`, `campaign:<id>` and `ops`",
                    Some(&name),
                )
                .await;
        };
        // One spelling per channel (a conversation id in any UUID form names the same channel):
        // frames name it canonically, and one unsubscribe ends it.
        let name = channel.name();
        if let Err(reason) = authorize(&self.identity, &channel) {
            return self.error(ErrorCode::Forbidden, reason, Some(&name)).await;
        }
        if channel == Channel::Ops {
            // Stream health is the deployment's, not a tenant's: only the operators' tenant's
            // SREs see it.
            let Identity::Agent { tenant, role, .. } = &self.identity else {
                return self.error(ErrorCode::Forbidden, "the ops channel is for operators", Some(&name)).await;
            };
            let inner = &self.gateway.inner;
            match chatdesk_ops::is_operator(&inner.db, inner.settings.ops_tenant, *tenant, *role).await {
                Ok(true) => {}
                Ok(false) => {
                    return self
                        .error(ErrorCode::Forbidden, "the ops channel is for the operators' tenant", Some(&name))
                        .await;
                }
                Err(_) => return self.error(ErrorCode::Unavailable, "PostgreSQL is unavailable", Some(&name)).await,
            }
            return self.subscribe_ops().await;
        }
        if let Channel::Campaign(campaign) = channel {
            return self.subscribe_campaign(campaign, name).await;
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
            Channel::Inbox => {
                if let Identity::Agent { user, role: chatdesk_core::auth::Role::Agent, .. } = self.identity {
                    match chatdesk_store::workspace::unreadable_inboxes(&self.gateway.inner.db, tenant, user).await {
                        Ok(hidden) => self.hidden_inboxes = hidden,
                        Err(_) => {
                            return self.error(ErrorCode::Unavailable, "PostgreSQL is unavailable", Some(&name)).await;
                        }
                    }
                }
                (format!("inbox:{tenant}"), None)
            }
            Channel::Ops | Channel::Campaign(_) => unreachable!("handled above"),
            Channel::Conversation(id) => {
                if let Identity::Agent { .. } = self.identity
                    && let Some(code) = self.check_conversation(id).await
                {
                    let message = match code {
                        ErrorCode::NotFound => "no such conversation",
                        _ => "PostgreSQL is unavailable",
                    };
                    return self.error(code, message, Some(&name)).await;
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
            Ok(Replayed { recovered, epoch, head, replayed }) => {
                self.subscriptions.insert(name.clone(), subscription);
                let presence = match channel {
                    Channel::Inbox => crate::ephemeral::presence::online(&self.gateway, tenant)
                        .await
                        .ok()
                        .map(|users| users.iter().map(Uuid::to_string).collect()),
                    Channel::Conversation(_) | Channel::Ops | Channel::Campaign(_) => None,
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
            Err(ReplayError::Unavailable(message)) => {
                self.gateway.inner.hub.unlisten(self.id, &subscription.key);
                ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(1.0);
                self.error(ErrorCode::Unavailable, message, Some(&name)).await
            }
            Err(ReplayError::BadCursor(message)) => {
                self.gateway.inner.hub.unlisten(self.id, &subscription.key);
                ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(1.0);
                self.error(ErrorCode::BadFrame, message, Some(&name)).await
            }
            Err(ReplayError::SocketGone) => false,
        }
    }

    /// Stops a channel (its queue keeps serving the others).
    pub(super) async fn unsubscribe(&mut self, channel: String) -> bool {
        let channel = Channel::parse(&channel).map(|channel| channel.name()).unwrap_or(channel);
        if let Some(Channel::Campaign(campaign)) = Channel::parse(&channel)
            && self.campaigns.remove(&campaign).is_some()
        {
            if self.campaigns.is_empty() {
                self.campaign_tick = None;
            }
            ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(1.0);
            return self.send(&ServerFrame::Unsubscribed { channel }).await;
        }
        if channel == "ops" && self.ops.is_some() {
            self.ops = None;
            ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(1.0);
            return self.send(&ServerFrame::Unsubscribed { channel }).await;
        }
        let Some(subscription) = self.subscriptions.remove(&channel) else {
            return self.error(ErrorCode::UnknownChannel, format!("not subscribed to {channel}"), Some(&channel)).await;
        };
        self.gateway.inner.hub.unlisten(self.id, &subscription.key);
        ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(1.0);
        self.send(&ServerFrame::Unsubscribed { channel }).await
    }

    /// `ops` has no offsets (snapshots are not stored): `subscribed`, then a snapshot now and
    /// every few seconds.
    async fn subscribe_ops(&mut self) -> bool {
        if self.ops.is_none() {
            ::metrics::gauge!(metrics::SUBSCRIPTIONS).increment(1.0);
        }
        // Operator actions are sent from now on; earlier ones are in `GET /v1/ops/audit`.
        match chatdesk_store::ops_audit::latest_id(&self.gateway.inner.db).await {
            Ok(latest) => self.ops_audit_after = latest,
            Err(_) => return self.error(ErrorCode::Unavailable, "PostgreSQL is unavailable", Some("ops")).await,
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

    /// `campaign:<id>` has no offsets either: `subscribed`, then the progress now and whenever it
    /// changes (checked every [`CAMPAIGN_TICK`]).
    async fn subscribe_campaign(&mut self, campaign: Uuid, name: String) -> bool {
        let tenant = self.identity.tenant();
        match chatdesk_store::campaigns::get(&self.gateway.inner.db, tenant, campaign).await {
            Ok(Some(_)) => {}
            Ok(None) => return self.error(ErrorCode::NotFound, "no such campaign", Some(&name)).await,
            Err(_) => return self.error(ErrorCode::Unavailable, "PostgreSQL is unavailable", Some(&name)).await,
        }
        if !self.campaigns.contains_key(&campaign) {
            if self.subscriptions.len() + self.campaigns.len() >= self.gateway.inner.settings.max_subscriptions {
                return self
                    .error(ErrorCode::TooManySubscriptions, "unsubscribe from a channel first", Some(&name))
                    .await;
            }
            ::metrics::gauge!(metrics::SUBSCRIPTIONS).increment(1.0);
        }
        // Progress already sent is sent again after a new subscribe.
        self.campaigns.insert(campaign, None);
        if self.campaign_tick.is_none() {
            let mut interval = tokio::time::interval(CAMPAIGN_TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            self.campaign_tick = Some(interval);
        }
        let frame = ServerFrame::Subscribed {
            channel: name,
            recovered: true,
            epoch: String::new(),
            head: None,
            replayed: 0,
            presence: None,
        };
        self.send(&frame).await
    }

    /// Sends each followed campaign's progress if it changed since the last frame.
    pub(super) async fn push_campaigns(&mut self) -> bool {
        let tenant = self.identity.tenant();
        let followed: Vec<Uuid> = self.campaigns.keys().copied().collect();
        for campaign in followed {
            let db = &self.gateway.inner.db;
            let progress = match campaign_progress(db, tenant, campaign).await {
                Ok(Some(progress)) => progress,
                Ok(None) => continue,
                Err(_) => {
                    let name = format!("campaign:{campaign}");
                    return self.error(ErrorCode::Unavailable, "PostgreSQL is unavailable", Some(&name)).await;
                }
            };
            if self.campaigns.get(&campaign).is_some_and(|last| last.as_ref() == Some(&progress)) {
                continue;
            }
            let frame = ServerFrame::Event {
                channel: format!("campaign:{campaign}"),
                offset: None,
                event_id: None,
                event_type: CAMPAIGN_PROGRESS.to_owned(),
                data: serde_json::value::to_raw_value(&progress).expect("progress serialises"),
            };
            self.campaigns.insert(campaign, Some(progress));
            if !self.send(&frame).await {
                return false;
            }
        }
        true
    }

    pub(super) async fn push_ops(&mut self) -> bool {
        let inner = self.gateway.inner.clone();
        match crate::ops::snapshot(&inner.redis, &inner.keys, &inner.streams).await {
            Ok(snapshot) => {
                ::metrics::counter!(metrics::OPS_SNAPSHOTS_TOTAL).increment(1);
                let frame = ServerFrame::Event {
                    channel: "ops".to_owned(),
                    offset: None,
                    event_id: None,
                    event_type: crate::ops::EVENT_TYPE.to_owned(),
                    data: serde_json::value::to_raw_value(&snapshot).expect("snapshots serialise"),
                };
                if !self.send(&frame).await {
                    return false;
                }
            }
            Err(_) => return self.error(ErrorCode::Unavailable, "Redis is unavailable", Some("ops")).await,
        }
        self.push_ops_audit().await
    }

    /// Operator actions recorded since the last frame, one `ops.audit` event each.
    async fn push_ops_audit(&mut self) -> bool {
        let records = match chatdesk_store::ops_audit::since(&self.gateway.inner.db, self.ops_audit_after, 100).await {
            Ok(records) => records,
            Err(_) => return self.error(ErrorCode::Unavailable, "PostgreSQL is unavailable", Some("ops")).await,
        };
        for record in records {
            self.ops_audit_after = record.id;
            let entry = chatdesk_ops::audit::AuditEntry::from(record);
            let frame = ServerFrame::Event {
                channel: "ops".to_owned(),
                offset: None,
                event_id: None,
                event_type: crate::ops::AUDIT_EVENT_TYPE.to_owned(),
                data: serde_json::value::to_raw_value(&entry).expect("audit entries serialise"),
            };
            if !self.send(&frame).await {
                return false;
            }
        }
        true
    }

    /// Sends the gap after `since` (from PostgreSQL, then the stream) on `name`.
    async fn replay(
        &mut self,
        name: &str,
        subscription: &mut Subscription,
        since: Option<EntryId>,
        client_epoch: Option<String>,
    ) -> Result<Replayed, ReplayError> {
        let inner = self.gateway.inner.clone();
        let tenant = self.identity.tenant();
        let events =
            inner.streams.stream(EVENTS_STREAM).ok_or_else(|| unavailable("no events stream is configured"))?;
        let partition = partition_for_tenant(&TenantId(tenant), events.partitions);
        let keys = inner.keys.partition(&events.name, partition);
        let redis_down = |_| unavailable("Redis is unavailable");
        let epoch = replay::epoch(&inner.redis, &keys).await.map_err(redis_down)?;
        let (first, head) = replay::bounds(&inner.redis, &keys).await.map_err(redis_down)?;
        let Some(since) = since else { return Ok(Replayed { recovered: true, epoch, head, replayed: 0 }) };
        // No offset is ever ahead of the clock by more than a clock's drift.
        if since.millis > chatdesk_core::envelope::now_ms().saturating_add(86_400_000) {
            return Err(ReplayError::BadCursor("since is later than any event".into()));
        }
        if client_epoch.as_ref().is_some_and(|client| *client != epoch) {
            // The stream was lost and recreated: offsets of the old one mean nothing now.
            subscription.last = None;
            return Ok(Replayed { recovered: false, epoch, head, replayed: 0 });
        }
        let mut replayed = 0;
        let mut cursor = since;
        // A conversation has no events before its first one: a cursor older than that (a visitor
        // resuming from `0-0`) starts there instead of walking the whole partition.
        if let Some(conversation) = subscription.conversation
            && let Ok(Some((millis, sequence))) =
                chatdesk_store::conversations::first_event_offset(&inner.db, tenant, conversation).await
        {
            let before_first = replay::predecessor(EntryId::new(millis as u64, sequence as u64));
            if cursor < before_first {
                cursor = before_first;
            }
        }
        // What PostgreSQL answers for: the part trimmed from the stream and, for one
        // conversation, everything the writer has acknowledged, read through the conversation's
        // own index. The stream is then read only past that, instead of walking every other
        // conversation's entries of the partition.
        let stored_until = match subscription.conversation {
            Some(_) => replay::stored_floor(&inner.redis, &keys, events).await.map_err(redis_down)?,
            None => None,
        };
        let from_postgres = match (first, stored_until) {
            (Some(first), Some(stored)) => Some(first.max(stored)),
            (first, None) => first,
            (None, stored) => stored,
        };
        if from_postgres.is_none_or(|before| cursor < before) {
            loop {
                let page = replay::stored_page(&inner.db, tenant, subscription.conversation, cursor, from_postgres)
                    .await
                    .map_err(|_| unavailable("PostgreSQL is unavailable"))?;
                let full = page.len() as u64 == replay::PAGE;
                ::metrics::counter!(metrics::REPLAY_READ_TOTAL, "source" => "postgres").increment(page.len() as u64);
                for delivery in page {
                    cursor = delivery.offset.unwrap_or(cursor);
                    if self.send_event(name, subscription, &delivery).await.ok_or(ReplayError::SocketGone)? {
                        replayed += 1;
                        ::metrics::counter!(metrics::REPLAYED_EVENTS_TOTAL, "source" => "postgres").increment(1);
                    }
                }
                if !full {
                    break;
                }
            }
            if let Some(before) = from_postgres {
                cursor = cursor.max(replay::predecessor(before));
            }
        }
        loop {
            let page = replay::stream_page(&inner.redis, &keys, cursor).await.map_err(redis_down)?;
            let full = page.len() as u64 == replay::PAGE;
            ::metrics::counter!(metrics::REPLAY_READ_TOTAL, "source" => "stream").increment(page.len() as u64);
            for delivery in page {
                cursor = delivery.offset.unwrap_or(cursor);
                if self.send_event(name, subscription, &delivery).await.ok_or(ReplayError::SocketGone)? {
                    replayed += 1;
                    ::metrics::counter!(metrics::REPLAYED_EVENTS_TOTAL, "source" => "stream").increment(1);
                }
            }
            if !full {
                break;
            }
        }
        Ok(Replayed { recovered: true, epoch, head, replayed })
    }
}

#[cfg(test)]
mod tests {
    use chatdesk_core::events::{Actor, ContactUpdated, Event, SenderKind, Typing};
    use chatdesk_core::{Envelope, TenantId};

    use super::*;

    fn tenant() -> Uuid {
        Uuid::from_u128(1)
    }

    fn typing(conversation: Uuid) -> Delivery {
        let event = Event::Typing(Typing {
            conversation_id: conversation,
            who: Actor { kind: SenderKind::Agent, id: None },
            typing: true,
        });
        Delivery::new(None, Envelope::of(TenantId(tenant()), &event))
    }

    fn stored(tenant: Uuid, offset: u64) -> Delivery {
        let event = Event::ContactUpdated(ContactUpdated {
            contact_id: Uuid::from_u128(9),
            name: None,
            email: None,
            phone: None,
            by: None,
        });
        Delivery::new(Some(EntryId::new(offset, 0)), Envelope::of(TenantId(tenant), &event))
    }

    fn inbox(last: Option<u64>) -> Subscription {
        Subscription { key: "inbox".into(), conversation: None, last: last.map(|ms| EntryId::new(ms, 0)) }
    }

    #[test]
    fn the_seam_drops_what_the_replay_already_sent() {
        let subscription = inbox(Some(10));
        assert!(!admits(tenant(), &subscription, &stored(tenant(), 9)), "older than the last sent");
        assert!(!admits(tenant(), &subscription, &stored(tenant(), 10)), "the last sent itself");
        assert!(admits(tenant(), &subscription, &stored(tenant(), 11)));
        assert!(admits(tenant(), &inbox(None), &stored(tenant(), 1)), "nothing sent yet");
    }

    #[test]
    fn only_the_tenants_and_the_conversations_events_pass() {
        assert!(!admits(tenant(), &inbox(None), &stored(Uuid::from_u128(2), 11)), "another tenant");
        let conversation = Uuid::from_u128(7);
        let subscription =
            Subscription { key: "c".into(), conversation: Some(conversation), last: Some(EntryId::new(50, 0)) };
        assert!(admits(tenant(), &subscription, &typing(conversation)), "signals have no offset to compare");
        assert!(!admits(tenant(), &subscription, &typing(Uuid::from_u128(8))), "another conversation");
        assert!(!admits(tenant(), &subscription, &stored(tenant(), 60)), "no conversation: not this channel's");
    }
}
