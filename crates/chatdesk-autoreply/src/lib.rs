//! Auto-reply for bot builders: an inbox answered by an AI model (any OpenAI-compatible
//! endpoint) or by a scripted dialog flow, stepping aside the moment a human takes over.
//!
//! - [`answer`]: the `autoreply` role: the events-stream handler that records customer
//!   messages, handoffs and resolves ([`Watcher`]), and the task that answers conversations
//!   whose quiet period ended ([`Answerer`]).
//! - [`state`]: a conversation's bot state in Redis (pending messages, session, handoff, flow
//!   progress, the last entry applied), changed only by Lua scripts.
//! - [`bot`]: what the bot says next: the model's answer or the flow's prompt, within budget,
//!   failures turned into the fallback or a handoff. The API's test chat uses it too.
//! - [`llm`]: one chat-completions call through the outbound guard, bounded and retried once.
//! - [`flow`]: dialog flows declared in TOML, validated at load with every problem listed.
//! - [`budget`]: a tenant's daily ceiling on model calls and tokens.

pub mod answer;
pub mod bot;
pub mod budget;
pub mod flow;
pub mod llm;
pub mod metrics;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use chatdesk_conversations::{Directory, InboxCache, Reply};
use chatdesk_core::outbound::OutboundPolicy;
use chatdesk_core::{KeyScheme, StreamsConfig};
use chatdesk_streams::{Producer, RedisClient};
use tokio_util::sync::CancellationToken;

pub use answer::{Answerer, GROUP, Watcher};
pub use bot::Bot;
pub use flow::Flows;

/// The role's settings (`CHATDESK_AUTOREPLY_*`).
#[derive(Clone)]
pub struct AutoReplySettings {
    /// Conversations one process answers at once: a slow model holds one of these each, never
    /// a stream partition.
    pub concurrency: usize,
    /// The operator's ceiling per tenant and day.
    pub limits: budget::Limits,
    /// How long a conversation's bot state lives after its last change.
    pub state_ttl: Duration,
    /// How often a process looks for conversations whose quiet period ended.
    pub poll: Duration,
    /// Customer messages older than this when the bot reads them are not answered.
    pub stale_after: Duration,
    /// Where model endpoints and flow webhooks may be (`CHATDESK_OUTBOUND_ALLOW`).
    pub policy: OutboundPolicy,
    pub flows: Arc<Flows>,
}

impl Default for AutoReplySettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            limits: budget::Limits::default(),
            state_ttl: Duration::from_secs(86_400),
            poll: Duration::from_millis(50),
            stale_after: Duration::from_secs(3_600),
            policy: OutboundPolicy::default(),
            flows: Arc::new(Flows::builtin()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AutoReplyError {
    #[error("cannot build the HTTP client for model endpoints")]
    Http(#[source] reqwest::Error),
}

/// Builds the bot: the model client behind the outbound guard, the flows, the budget.
pub fn bot(redis: RedisClient, keys: KeyScheme, settings: &AutoReplySettings) -> Result<Bot, AutoReplyError> {
    let policy = Arc::new(settings.policy.clone());
    let http = chatdesk_outbound::guarded_client(policy.clone(), None).map_err(AutoReplyError::Http)?;
    Ok(Bot {
        model: llm::Model::new(http, policy),
        flows: settings.flows.clone(),
        budget: budget::Budget::new(redis, keys, settings.limits),
    })
}

/// The `autoreply` role: [`AutoReply::watcher`] for the consumer group, [`AutoReply::run`] for
/// the answering task.
pub struct AutoReply {
    shared: Arc<answer::Shared>,
}

impl AutoReply {
    pub fn new(
        redis: RedisClient,
        db: chatdesk_store::Pool,
        keys: KeyScheme,
        streams: Arc<StreamsConfig>,
        node: &str,
        settings: AutoReplySettings,
    ) -> Result<Self, AutoReplyError> {
        let http =
            chatdesk_outbound::guarded_client(Arc::new(settings.policy.clone()), None).map_err(AutoReplyError::Http)?;
        let producer = Producer::new(redis.clone(), keys.clone(), streams.clone());
        let shared = answer::Shared {
            bot: bot(redis.clone(), keys.clone(), &settings)?,
            inboxes: InboxCache::new(db.clone(), redis.clone(), keys.clone()),
            state: state::StateStore::new(redis.clone(), keys.clone(), settings.state_ttl),
            directory: Directory::new(redis.clone(), keys.clone(), streams),
            reply: Reply::new(producer, redis.clone(), keys.clone(), db.clone()),
            http,
            node: node.to_owned(),
            settings,
            redis,
            db,
            keys,
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    pub fn watcher(&self) -> Watcher {
        Watcher { shared: self.shared.clone() }
    }

    /// Answers conversations until `cancel` fires; answers in hand finish first.
    pub async fn run(&self, cancel: CancellationToken) {
        Answerer { shared: self.shared.clone() }.run(cancel).await
    }

    /// The inbox cache, so the role's process can listen for inbox changes.
    pub fn inboxes(&self) -> InboxCache {
        self.shared.inboxes.clone()
    }
}
