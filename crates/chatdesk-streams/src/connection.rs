//! Connections to Redis (a single server or a cluster, chosen by the URL scheme:
//! `redis://` or `redis-cluster://host:port?node=host2:port2`).
//!
//! A blocking `XREADGROUP` occupies its connection for the whole BLOCK time, so every blocking
//! reader gets a connection of its own ([`RedisConnector::dedicated`]); everything else shares
//! one client ([`RedisConnector::shared`]), except the paths whose scripts carry whole messages
//! at a high rate (webhook ingest, the sender's queue and status events), which take a few
//! connections in turn ([`Connections`]).
//!
//! fred reconnects forever with exponential backoff after the server goes away. Commands are
//! attempted once: a command whose connection dropped fails instead of being re-sent, because
//! re-sending an XADD that Redis already executed would append it twice. Callers that can
//! safely repeat a command (XACK, reads) retry it themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{ReconnectPolicy, TcpConfig, UnresponsiveConfig};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Upper bound for any non-blocking command, so nothing hangs while Redis is away.
    pub command_timeout: Duration,
}

impl RedisSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), command_timeout: Duration::from_secs(10) }
    }
}

/// Builds connected fred clients from one configuration.
#[derive(Clone)]
pub struct RedisConnector {
    settings: RedisSettings,
    config: Config,
}

impl std::fmt::Debug for RedisConnector {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("RedisConnector").field("url", &redact(&self.settings.url)).finish()
    }
}

/// The URL without a password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl RedisConnector {
    pub fn new(settings: RedisSettings) -> Result<Self, Error> {
        let config = Config::from_url(&settings.url)?;
        Ok(Self { settings, config })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    fn build(&self, command_timeout: Duration) -> Result<Client, Error> {
        Builder::from_config(self.config.clone())
            .with_performance_config(|performance| {
                performance.default_command_timeout = command_timeout;
            })
            .with_connection_config(|connection| {
                // A command goes out at once instead of waiting, under Nagle's algorithm, for the
                // acknowledgement of the one before it (ioredis does the same by default).
                connection.tcp = TcpConfig { nodelay: Some(true), ..TcpConfig::default() };
                connection.connection_timeout = Duration::from_secs(5);
                connection.internal_command_timeout = Duration::from_secs(5);
                connection.max_command_attempts = 1;
                connection.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(command_timeout + Duration::from_secs(5)),
                    interval: Duration::from_secs(1),
                };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
    }

    /// A connected client for ordinary (non-blocking) commands; cheap to clone and share.
    pub async fn shared(&self) -> Result<Client, Error> {
        let client = self.build(self.settings.command_timeout)?;
        client.init().await?;
        Ok(client)
    }

    /// `count` connected clients of their own, taken in turn (see [`Connections`]).
    pub async fn connections(&self, count: usize) -> Result<Connections, Error> {
        let mut clients = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            clients.push(self.shared().await?);
        }
        Ok(Connections::new(clients))
    }

    /// A connected client of its own for a blocking reader whose BLOCK is at most `block`.
    pub async fn dedicated(&self, block: Duration) -> Result<Client, Error> {
        let client = self.build(block + self.settings.command_timeout)?;
        client.init().await?;
        Ok(client)
    }
}

/// Connections taken in turn by the commands of one busy path (webhook ingest, the delivery
/// queue and its status events). Redis reads at most 16 KiB of one connection's commands per event-loop turn, and with
/// AOF `always` every turn waits for an fsync: on one connection, a path whose scripts carry
/// whole messages gets only that much through per fsync, and its callers queue behind each other.
#[derive(Clone)]
pub struct Connections {
    clients: Arc<[Client]>,
    turn: Arc<AtomicUsize>,
}

impl Connections {
    /// `clients` taken in turn; at least one.
    pub fn new(clients: Vec<Client>) -> Self {
        assert!(!clients.is_empty(), "connections need at least one client");
        Self { clients: clients.into(), turn: Arc::default() }
    }

    /// The connection for the next command.
    pub fn next(&self) -> &Client {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        &self.clients[turn % self.clients.len()]
    }

    /// The first connection, for the path's rarer commands.
    pub fn first(&self) -> &Client {
        &self.clients[0]
    }

    /// Closes every connection (at shutdown, before the server goes away).
    pub async fn quit(&self) {
        for client in self.clients.iter() {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
        }
    }
}

impl From<Client> for Connections {
    fn from(client: Client) -> Self {
        Self::new(vec![client])
    }
}

/// What a pub/sub subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A message's text.
    Message(String),
    /// Messages may have been missed: the connection came back after a loss, or the subscriber
    /// fell behind. Whatever the messages keep current must be refreshed.
    Missed,
}

/// Subscribes to `channel` on a connection of its own (subscribing again after reconnects) and
/// calls `on` with what it hears, until cancelled. It hears [`Heard::Missed`] first, once the
/// subscription is in place: what was kept before may have missed a message.
pub async fn follow(
    connector: &RedisConnector,
    channel: &str,
    cancel: &tokio_util::sync::CancellationToken,
    mut on: impl FnMut(Heard),
) -> Result<(), Error> {
    let client = connector.dedicated(Duration::from_secs(1)).await?;
    let mut messages = client.message_rx();
    let mut reconnects = client.reconnect_rx();
    client.subscribe(channel).await?;
    on(Heard::Missed);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            reconnected = reconnects.recv() => {
                if reconnected.is_ok() {
                    let _ = client.subscribe(channel).await;
                }
                on(Heard::Missed);
            }
            message = messages.recv() => match message {
                Ok(message) => {
                    if let Some(text) = message.value.as_str() {
                        on(Heard::Message(text.into_owned()));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => on(Heard::Missed),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://user:secret@host:6379"), "redis://***@host:6379");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn connections_are_taken_in_turn() {
        let connector = RedisConnector::new(RedisSettings::new("redis://127.0.0.1:6379")).unwrap();
        let clients: Vec<Client> = (0..3).map(|_| connector.build(Duration::from_secs(1)).unwrap()).collect();
        let ids: Vec<&str> = clients.iter().map(|client| client.id()).collect();
        let connections = Connections::new(clients.clone());
        let taken: Vec<&str> = (0..7).map(|_| connections.next().id()).collect();
        assert_eq!(taken, [ids[0], ids[1], ids[2], ids[0], ids[1], ids[2], ids[0]]);
        assert_eq!(connections.first().id(), ids[0]);
        let single = Connections::from(clients[1].clone());
        assert_eq!((single.next().id(), single.next().id()), (ids[1], ids[1]));
    }
}
