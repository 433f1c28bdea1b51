//! Ephemeral signals (typing) never touch the durable streams: a gateway publishes them on one
//! Redis pub/sub channel, every gateway listens and hands them to its hub. They carry no offset,
//! are not stored and are not replayed: a client that missed a typing indicator lost nothing.

use std::sync::Arc;

use chatdesk_core::events::{Event, Presence};
use chatdesk_core::{Envelope, TenantId};
use chatdesk_streams::RedisConnector;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Gateway;
use crate::hub::Delivery;

/// Publishes an ephemeral event (typing, presence) of `tenant` to every gateway, as an envelope
/// (the same fields a stream entry has) encoded as one JSON object.
pub async fn publish(gateway: &Gateway, tenant: Uuid, event: &Event) -> Result<(), Error> {
    debug_assert!(!event.is_durable(), "durable events go to the events stream");
    let text = Envelope::of(TenantId(tenant), event).encode_json();
    let _: i64 = gateway.inner.redis.publish(gateway.inner.keys.ephemeral_channel(), text).await?;
    Ok(())
}

/// Agents' presence per tenant: one sorted-set member per open agent socket
/// (`<user>:<node>:<session>`), scored with the time it lapses unless refreshed. A socket that dies
/// without saying goodbye lapses after 2.5 heartbeats.
pub mod presence {
    use super::*;

    fn key(gateway: &Gateway, tenant: Uuid) -> String {
        gateway.inner.keys.presence(&TenantId(tenant))
    }

    fn lapse_ms(gateway: &Gateway) -> u64 {
        chatdesk_core::envelope::now_ms() + (gateway.inner.settings.heartbeat * 5 / 2).as_millis() as u64
    }

    /// The agents with at least one live socket.
    pub async fn online(gateway: &Gateway, tenant: Uuid) -> Result<Vec<Uuid>, Error> {
        let key = key(gateway, tenant);
        let now = chatdesk_core::envelope::now_ms() as f64;
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

    /// Marks a widget visitor's socket live (again) until it lapses: e-mail notifications wait
    /// for a visitor with no live socket.
    pub async fn refresh_visitor(gateway: &Gateway, conversation: Uuid, session: u64) -> Result<(), Error> {
        let key = gateway.inner.keys.visitor_presence(&conversation);
        let member = format!("{}:{session}", gateway.inner.node);
        let lapse = lapse_ms(gateway);
        let now = chatdesk_core::envelope::now_ms() as f64;
        let _: i64 = gateway.inner.redis.zremrangebyscore(&key, f64::NEG_INFINITY, now).await?;
        let _: i64 = gateway.inner.redis.zadd(&key, None, None, false, false, (lapse as f64, member)).await?;
        let _: bool = gateway.inner.redis.pexpire(&key, (lapse - now as u64) as i64, None).await?;
        Ok(())
    }

    /// A widget visitor's socket closed.
    pub async fn visitor_left(gateway: &Gateway, conversation: Uuid, session: u64) -> Result<(), Error> {
        let member = format!("{}:{session}", gateway.inner.node);
        let _: i64 = gateway.inner.redis.zrem(gateway.inner.keys.visitor_presence(&conversation), member).await?;
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
        publish(gateway, tenant, &Event::Presence(Presence { user_id: user, online })).await
    }
}

/// Listens on the pub/sub channel (its own connection, resubscribing after reconnects) until
/// cancelled.
pub async fn listen(gateway: Gateway, connector: RedisConnector, cancel: CancellationToken) -> Result<(), Error> {
    let name = gateway.inner.keys.ephemeral_channel();
    chatdesk_streams::connection::follow(&connector, &name, &cancel, |heard| {
        // Signals are ephemeral: one missed is not recovered (typing stops on its own).
        if let chatdesk_streams::connection::Heard::Message(text) = heard {
            match Envelope::decode_json(&text) {
                Ok(envelope) => gateway.inner.hub.publish(Arc::new(Delivery::new(None, envelope))),
                Err(error) => tracing::debug!(error = %error, "ignoring a signal that does not decode"),
            }
        }
    })
    .await
}
