//! Broadcast campaigns: a marketer's one message to thousands of customers, at each sender's
//! rate, once per recipient whatever process dies when.
//!
//! Two halves, both in every `broadcaster` process:
//!
//! - **The runner** ([`Broadcaster::run`]): finds campaigns with work (PostgreSQL holds every
//!   recipient and its status), takes a campaign's lease in Redis (one runner per campaign, so two
//!   runs never overlap), and hands its pending recipients over, in order, at the campaign's
//!   rate: each becomes one `broadcast.recipient` entry of the `broadcast` stream, whose event id
//!   is the message id derived from the campaign, the recipient and the attempt. The recipient is
//!   then marked `queued`. A runner that dies between the two leaves the recipient pending; the
//!   next runner hands it over again under the same id, and everything downstream is idempotent
//!   by that id. Opted-out addresses are skipped, recipients over the tenant's 24-hour
//!   unique-recipient quota (WhatsApp) are deferred until it has room, pause stops the hand-over
//!   within [`STATE_REFRESH`], cancel skips the rest, expiry expires it.
//! - **The handler** ([`Broadcaster::handler`]): the `broadcaster` group of the `broadcast`
//!   stream (the common runtime) turns each entry into an outbound message: the recipient's
//!   contact and conversation (found or created by the directory's one script), a
//!   `message.created` with sender kind `campaign` (appended once per message id), and a
//!   `send.requested` carrying the campaign's rate, pause state key and expiry. The sender paces
//!   it exactly (`campaign.sender` bucket, shared across processes in Redis), and agents' replies
//!   on the same number go first.
//!
//! Recipients' outcomes (sent, delivered, read, failed, deferred by WhatsApp's marketing cap)
//! come back through the writer, which moves each recipient forward; the runner marks a campaign
//! `finished` only when every recipient has a final status.

mod runner;

use std::sync::Arc;
use std::time::Duration;

use chatdesk_conversations::directory::{Directory, DirectoryError, IngestRequest, Ingested, Introduction, Once};
use chatdesk_core::config::BROADCAST_STREAM;
use chatdesk_core::envelope::{BroadcastRecipient, CampaignSend, SendRequest};
use chatdesk_core::events::{Actor, Direction, Event, MessageCreated, SenderKind};
use chatdesk_core::{Envelope, EventId, GroupName, KeyScheme, StreamsConfig};
use chatdesk_streams::{Batch, Handler, HandlerError, Outcomes, Producer, RedisClient, Unavailable};
use tokio_util::sync::CancellationToken;

pub use runner::STATE_REFRESH;

/// The consumer group of the broadcast stream.
pub const GROUP: &str = "broadcaster";
/// The stream family recipients are handed over on.
pub const STREAM: &str = BROADCAST_STREAM;

/// How long a campaign message's id is remembered on the events stream (so a second hand-over
/// appends nothing): as long as the broadcast stream keeps entries.
const MESSAGE_DEDUPE_WINDOW: Duration = Duration::from_secs(14 * 86_400);
/// Entries of one batch turned into messages at once.
const HANDLER_CONCURRENCY: usize = 32;

pub const HANDED_OVER_TOTAL: &str = "chatdesk_broadcast_handed_over_total";
pub const SKIPPED_TOTAL: &str = "chatdesk_broadcast_skipped_total";
pub const DEFERRED_TOTAL: &str = "chatdesk_broadcast_deferred_total";
pub const MESSAGES_TOTAL: &str = "chatdesk_broadcast_messages_total";
pub const RUNNING_CAMPAIGNS: &str = "chatdesk_broadcast_running_campaigns";

pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        HANDED_OVER_TOTAL,
        Unit::Count,
        "Campaign recipients handed to the broadcast stream, by sender (inbox)"
    );
    describe_counter!(SKIPPED_TOTAL, Unit::Count, "Campaign recipients skipped (opted out), by sender");
    describe_counter!(DEFERRED_TOTAL, Unit::Count, "Campaign recipients deferred by the 24-hour quota, by sender");
    describe_counter!(MESSAGES_TOTAL, Unit::Count, "Campaign messages appended to the events and send streams");
    describe_gauge!(RUNNING_CAMPAIGNS, Unit::Count, "Campaigns this process is running");
}

#[derive(Debug, Clone)]
pub struct BroadcastSettings {
    /// Campaigns one process runs at once.
    pub max_campaigns: usize,
    /// How often a process looks for campaigns to run.
    pub poll: Duration,
}

impl Default for BroadcastSettings {
    fn default() -> Self {
        Self { max_campaigns: 2_000, poll: Duration::from_secs(1) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    #[error("streams.toml declares no `{STREAM}` stream")]
    NoBroadcastStream,
}

#[derive(Clone)]
pub struct Broadcaster {
    inner: Arc<runner::Inner>,
}

impl Broadcaster {
    pub fn new(
        redis: RedisClient,
        db: chatdesk_store::Pool,
        keys: KeyScheme,
        streams: Arc<StreamsConfig>,
        node: &str,
        settings: BroadcastSettings,
    ) -> Result<Self, BroadcastError> {
        streams.stream(STREAM).ok_or(BroadcastError::NoBroadcastStream)?;
        let inner = runner::Inner::new(redis, db, keys, streams, node, settings);
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Runs campaigns until `cancel` fires; each runner stops after the recipient in hand.
    pub async fn run(&self, cancel: CancellationToken) {
        self.inner.clone().run(cancel).await
    }

    /// The broadcast stream's consumer-group handler.
    pub fn handler(&self) -> Handoff {
        Handoff {
            directory: Directory::new(self.inner.redis.clone(), self.inner.keys.clone(), self.inner.streams.clone()),
            producer: self.inner.producer.clone(),
            db: self.inner.db.clone(),
        }
    }
}

/// Turns handed-over recipients into outbound messages.
pub struct Handoff {
    directory: Directory,
    producer: Producer,
    db: chatdesk_store::Pool,
}

/// What became of one entry.
enum Turned {
    Done,
    /// Can never become a message: the recipient fails with this reason.
    Reject(Option<(uuid::Uuid, u32)>, String),
    Unavailable(String),
}

impl Handoff {
    async fn turn(&self, envelope: &Envelope) -> Turned {
        let recipient: BroadcastRecipient = match envelope.record() {
            Ok(recipient) => recipient,
            Err(error) => return Turned::Reject(None, format!("not a broadcast recipient: {error}")),
        };
        let sender =
            Introduction { inbox: recipient.inbox_id, external_id: recipient.address.clone(), name: None, email: None };
        let request = IngestRequest {
            tenant: envelope.tenant,
            sender: &sender,
            message: None,
            standby: None,
            rate_per_second: None,
            reserve: false,
        };
        let (contact_id, conversation_id) = match self.directory.ingest(&request).await {
            Ok(Ingested::Resolved { contact_id, conversation_id }) => (contact_id, conversation_id),
            Ok(other) => return Turned::Unavailable(format!("the directory answered {other:?}")),
            Err(DirectoryError::Invalid { field, reason }) => {
                return Turned::Reject(Some((recipient.campaign_id, recipient.position)), format!("{field}: {reason}"));
            }
            Err(error) => return Turned::Unavailable(error.to_string()),
        };
        let message = Event::MessageCreated(MessageCreated {
            conversation_id,
            inbox_id: recipient.inbox_id,
            contact_id,
            direction: Direction::Outbound,
            sender: Actor { kind: SenderKind::Campaign, id: Some(recipient.campaign_id) },
            text: recipient.text.clone(),
            extra: Some(serde_json::json!({
                "campaign_id": recipient.campaign_id,
                "template": recipient.template.as_ref().map(|template| template.name.clone()),
            })),
            provider_message_id: None,
            client_msg_id: None,
            sent_at_ms: None,
        });
        let entry = Envelope::of(envelope.tenant, &message).with_event_id(EventId(recipient.message_id));
        let dedupe = format!("campaign-message:{}", recipient.message_id);
        match self.directory.append_once(&entry, &dedupe, MESSAGE_DEDUPE_WINDOW).await {
            Ok(Once::New(_) | Once::Duplicate(_)) => {}
            Err(error) => return Turned::Unavailable(error.to_string()),
        }
        let send = SendRequest {
            message_id: recipient.message_id,
            conversation_id,
            inbox_id: recipient.inbox_id,
            contact_id,
            text: recipient.text,
            template: recipient.template,
            campaign: Some(CampaignSend {
                campaign_id: recipient.campaign_id,
                to: recipient.address.clone(),
                rate_per_sec: recipient.rate_per_sec,
                expires_at_ms: recipient.expires_at_ms,
            }),
            buttons: Vec::new(),
        };
        // The sender admits a message id once, so a second append (after a crash here) sends
        // nothing twice.
        let entry = Envelope::of(envelope.tenant, &send).with_event_id(EventId(recipient.message_id));
        if let Err(error) = self.producer.append_send(&entry).await {
            return Turned::Unavailable(error.to_string());
        }
        metrics::counter!(MESSAGES_TOTAL).increment(1);
        Turned::Done
    }
}

impl Handler for Handoff {
    fn group(&self) -> GroupName {
        GroupName::parse(GROUP).expect("a valid group name")
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        // Recipients of one batch are different conversations: their order does not matter.
        let mut results = Vec::with_capacity(batch.entries.len());
        for chunk in batch.entries.chunks(HANDLER_CONCURRENCY) {
            let turned = futures::future::join_all(chunk.iter().map(|entry| self.turn(&entry.envelope))).await;
            results.extend(chunk.iter().map(|entry| entry.id).zip(turned));
        }
        let mut outcomes = Outcomes::all_done();
        for (id, turned) in results {
            match turned {
                Turned::Done => {}
                // A dependency is down: the whole batch waits for it (entries already turned
                // are turned again harmlessly, by their message ids), and no recipient is ever
                // dead-lettered for an outage.
                Turned::Unavailable(reason) => return Err(Box::new(Unavailable(reason))),
                Turned::Reject(recipient, reason) => {
                    if let Some((campaign, position)) = recipient {
                        chatdesk_store::campaigns::fail_queued(&self.db, campaign, position as i32, &reason)
                            .await
                            .map_err(|error| Box::new(Unavailable(error.to_string())) as HandlerError)?;
                    }
                    outcomes.reject(id, reason);
                }
            }
        }
        Ok(outcomes)
    }
}
