//! Ephemeral signals (typing) never touch the durable streams: a gateway publishes them on one
//! Redis pub/sub channel, every gateway listens and hands them to its hub. They carry no offset,
//! are not stored and are not replayed: a client that missed a typing indicator lost nothing.

use std::sync::Arc;
use std::time::Duration;

use chatdesk_core::EntryId;
use chatdesk_core::events::Event;
use chatdesk_streams::RedisConnector;
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Gateway;
use crate::hub::Delivery;

#[derive(Debug, Serialize, Deserialize)]
struct Signal {
    tenant: Uuid,
    /// `None` for tenant-wide signals (presence), which reach the `inbox` channel only.
    conversation: Option<Uuid>,
    event: serde_json::Value,
}

fn channel(gateway: &Gateway) -> String {
    format!("{}:ephemeral", gateway.inner.keys.prefix())
}

/// Publishes `event` (a typing event) to every gateway.
pub async fn publish(gateway: &Gateway, tenant: Uuid, conversation: Uuid, event: &Event) -> Result<(), Error> {
    send(gateway, Signal { tenant, conversation: Some(conversation), event: event.to_payload() }).await
}

async fn send(gateway: &Gateway, signal: Signal) -> Result<(), Error> {
    let text = serde_json::to_string(&signal).expect("signals serialise");
    let _: i64 = gateway.inner.redis.publish(channel(gateway), text).await?;
    Ok(())
}

/// Agents' presence per tenant: one sorted-set member per open agent socket
/// (`<user>:<node>:<session>`), scored with the time it lapses unless refreshed. A socket that dies
/// without saying goodbye lapses after 2.5 heartbeats.
pub mod presence {
    use super::*;

    fn key(gateway: &Gateway, tenant: Uuid) -> String {
        format!("{}:presence:{tenant}", gateway.inner.keys.prefix())
    }

    fn lapse_ms(gateway: &Gateway) -> u64 {
        chatdesk_streams::entry::now_ms() + (gateway.inner.settings.heartbeat * 5 / 2).as_millis() as u64
    }

    /// The agents with at least one live socket.
    pub async fn online(gateway: &Gateway, tenant: Uuid) -> Result<Vec<Uuid>, Error> {
        let key = key(gateway, tenant);
        let now = chatdesk_streams::entry::now_ms() as f64;
        let _: i64 = gateway.inner.redis.zremrangebyscore(&key, f64::NEG_INFINITY, now).await?;
        let members: Vec<String> = gateway.inner.redis.zrange(&key, 0, -1, None, false, None, false).await?;
        let mut users: Vec<Uuid> = members.iter().filter_map(|member| member.split(':').next()?.parse().ok()).collect();
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// Marks a socket live (again) until it lapses.
    pub async fn refresh(gateway: &Gateway, tenant: Uuid, user: Uuid, session: u64) -> Result<(), Error> {
        let member = format!("{user}:{}:{session}", gateway.inner.node);
        let _: i64 = gateway
            .inner
            .redis
            .zadd(key(gateway, tenant), None, None, false, false, (lapse_ms(gateway) as f64, member))
            .await?;
        Ok(())
    }

    /// Records a socket arriving or leaving and tells the tenant's `inbox` subscribers whether
    /// the agent is online now.
    pub async fn change(
        gateway: &Gateway,
        tenant: Uuid,
        user: Uuid,
        session: u64,
        arriving: bool,
    ) -> Result<(), Error> {
        if arriving {
            refresh(gateway, tenant, user, session).await?;
        } else {
            let member = format!("{user}:{}:{session}", gateway.inner.node);
            let _: i64 = gateway.inner.redis.zrem(key(gateway, tenant), member).await?;
        }
        let online = online(gateway, tenant).await?.contains(&user);
        let event = serde_json::json!({ "type": "presence", "v": 1, "user_id": user, "online": online });
        send(gateway, Signal { tenant, conversation: None, event }).await
    }
}

fn delivery(text: &str) -> Option<Delivery> {
    let signal: Signal = serde_json::from_str(text).ok()?;
    let event_type = signal.event.get("type")?.as_str()?.to_owned();
    Some(Delivery {
        partition: 0,
        offset: EntryId::ZERO,
        event_id: Uuid::nil(),
        tenant: signal.tenant,
        conversation: signal.conversation,
        event_type,
        payload: Arc::from(signal.event.to_string()),
        time_ms: chatdesk_streams::entry::now_ms(),
        ephemeral: true,
    })
}

/// Listens on the pub/sub channel (its own connection, resubscribing after reconnects) until
/// cancelled.
pub async fn listen(gateway: Gateway, connector: RedisConnector, cancel: CancellationToken) -> Result<(), Error> {
    let client = connector.dedicated(Duration::from_secs(1)).await?;
    let name = channel(&gateway);
    let mut messages = client.message_rx();
    let mut reconnects = client.reconnect_rx();
    client.subscribe(name.as_str()).await?;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            reconnected = reconnects.recv() => {
                if reconnected.is_ok() {
                    let _ = client.subscribe(name.as_str()).await;
                }
            }
            message = messages.recv() => match message {
                Ok(message) => {
                    if let Some(text) = message.value.as_str()
                        && let Some(delivery) = delivery(&text)
                    {
                        gateway.inner.hub.publish(Arc::new(delivery));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    let _ = client.quit().await;
    Ok(())
}
