//! The WebSocket gateway and chatdesk protocol v1 (`docs/protocol.md`).
//!
//! - [`protocol`]: frames, error codes, close codes.
//! - [`channel`]: channel names and who may subscribe.
//! - [`ephemeral`]: typing and presence signals between gateways over Redis pub/sub, never
//!   stored (the same envelope as a stream entry).
//! - [`hub`]: in-memory fan-out of this node's entries to its sockets, with bounded queues.
//! - [`readers`]: which partitions this node reads (only those of its sockets' tenants): counts
//!   sockets and assigns or releases partitions of the node's one consumer.
//! - [`replay`]: the gap of a resuming client, from the stream or from PostgreSQL.
//! - [`session`]: one socket: the frame loop and heartbeats, one module per client operation
//!   (`hello`, `subscribe`, `send`, `typing`, `read`).
//!
//! Each gateway process reads the events stream through its own consumer group
//! (`gateway.<node id>`, starting at the newest entry), only on the partitions its sockets need,
//! and hands every entry to the hub; sockets resume from their own cursors, so any node can serve
//! any client.

pub mod channel;
pub mod ephemeral;
pub mod hub;
pub mod metrics;
pub mod ops;
pub mod protocol;
pub mod readers;
pub mod replay;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use chatdesk_core::auth::TokenKey;
use chatdesk_core::config::EVENTS_STREAM;
use chatdesk_core::{GroupName, KeyScheme, StreamsConfig};
use chatdesk_streams::{
    Batch, Consumer, ConsumerOptions, Handler, HandlerError, Outcomes, Partitions, RedisClient, RedisConnector,
};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::readers::{ReaderError, Readers};

/// Everything sockets share.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub hub: Hub,
    pub redis: RedisClient,
    pub db: chatdesk_store::Pool,
    pub keys: KeyScheme,
    pub streams: Arc<StreamsConfig>,
    pub tokens: TokenKey,
    pub node: String,
    pub settings: GatewaySettings,
    pub sessions: AtomicU64,
    pub shutdown: CancellationToken,
    pub producer: chatdesk_streams::Producer,
    pub reply: chatdesk_conversations::Reply,
    pub readers: Readers,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the node id {node:?} makes an invalid group name: {reason}")]
    InvalidNode { node: String, reason: String },
    #[error("streams.toml declares no `events` stream")]
    NoEventsStream,
    #[error(transparent)]
    Consumer(#[from] chatdesk_streams::ConsumerError),
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// How long a client has to send `hello`.
    pub hello_timeout: Duration,
    /// How often clients should ping; a client silent for 2.5 heartbeats is closed.
    pub heartbeat: Duration,
    /// Frames a socket may have queued before it counts as too slow and is closed.
    pub queue: usize,
    pub max_subscriptions: usize,
    /// How long a partition stays read after its last socket left: reconnecting clients and
    /// short gaps between sessions should not restart its reader.
    pub linger: Duration,
    /// The tenant of the deployment's operators (`CHATDESK_OPS_TENANT`; unset: the first tenant
    /// created): only its SREs may read the `ops` channel, which shows every tenant's streams.
    pub ops_tenant: Option<uuid::Uuid>,
    /// How often an agent's open socket checks that its token still stands (`CHATDESK_WS_TOKEN_RECHECK`):
    /// a logout, a role change or a deleted user closes it within this time (4003).
    pub token_recheck: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(25),
            queue: 1024,
            max_subscriptions: 100,
            linger: Duration::from_secs(60),
            ops_tenant: None,
            token_recheck: Duration::from_secs(30),
        }
    }
}

/// What a gateway is built from.
pub struct GatewayOptions {
    pub connector: RedisConnector,
    pub redis: RedisClient,
    pub db: chatdesk_store::Pool,
    pub keys: KeyScheme,
    pub streams: Arc<StreamsConfig>,
    pub tokens: TokenKey,
    /// Stable across restarts: the node's group is `gateway.<node>`.
    pub node: String,
    pub settings: GatewaySettings,
}

impl Gateway {
    pub fn new(options: GatewayOptions, shutdown: CancellationToken) -> Result<Self, GatewayError> {
        let GatewayOptions { connector, redis, db, keys, streams, tokens, node, settings } = options;
        let group = GroupName::parse(&format!("gateway.{node}"))
            .map_err(|error| GatewayError::InvalidNode { node: node.clone(), reason: error.to_string() })?;
        let events = streams.stream(EVENTS_STREAM).ok_or(GatewayError::NoEventsStream)?.clone();
        let hub = Hub::default();
        let consumer_options =
            ConsumerOptions::new(connector, keys.clone(), &events, node.clone()).partitions(Partitions::Assigned);
        let consumer = Consumer::new(consumer_options, Fanout { hub: hub.clone(), group })?;
        let readers = Readers::new(consumer, settings.linger, shutdown.child_token());
        let producer = chatdesk_streams::Producer::new(redis.clone(), keys.clone(), streams.clone());
        let reply = chatdesk_conversations::Reply::new(producer.clone(), redis.clone(), keys.clone(), db.clone());
        let inner = Inner {
            hub,
            redis,
            db,
            keys,
            streams,
            tokens,
            node,
            settings,
            sessions: AtomicU64::new(0),
            shutdown,
            producer,
            reply,
            readers,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The node's consumer group, `gateway.<node id>`.
    pub fn group(&self) -> &GroupName {
        self.inner.readers.group()
    }

    /// The partitions this node reads now.
    pub async fn partitions_read(&self) -> Vec<u16> {
        self.inner.readers.partitions().await
    }

    /// Supervises the partition readers until shutdown; fails when one fails for good.
    pub async fn run_readers(&self) -> Result<(), ReaderError> {
        self.inner.readers.supervise().await
    }

    /// `GET /v1/ws`.
    pub fn router(&self) -> Router {
        Router::new().route("/v1/ws", get(upgrade)).with_state(self.clone())
    }
}

/// Client frames are small commands: a 64 KiB cap refuses abuse early, and 4 KiB buffers (not
/// the 128 KiB defaults) keep an idle connection cheap; a larger frame grows its buffer as it
/// arrives.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
const SOCKET_BUFFER: usize = 4 * 1024;

async fn upgrade(State(gateway): State<Gateway>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| session::run(gateway, socket))
}

/// Hands every entry the node's group reads to the sockets listening for it.
pub(crate) struct Fanout {
    hub: Hub,
    group: GroupName,
}

impl Handler for Fanout {
    fn group(&self) -> GroupName {
        self.group.clone()
    }

    /// Every node's group shares the `gateway` settings.
    fn settings_key(&self) -> String {
        "gateway".to_owned()
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        let now = chatdesk_core::envelope::now_ms();
        let read_latency = ::metrics::histogram!(metrics::READ_LATENCY_SECONDS);
        for entry in &batch.entries {
            read_latency.record(now.saturating_sub(entry.envelope.time_ms) as f64 / 1000.0);
            self.hub.publish(Arc::new(hub::Delivery::stored(entry.clone())));
        }
        Ok(Outcomes::all_done())
    }
}
