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
    conversation: Uuid,
    event: serde_json::Value,
}

fn channel(gateway: &Gateway) -> String {
    format!("{}:ephemeral", gateway.inner.keys.prefix())
}

/// Publishes `event` (a typing event) to every gateway.
pub async fn publish(gateway: &Gateway, tenant: Uuid, conversation: Uuid, event: &Event) -> Result<(), Error> {
    let signal = Signal { tenant, conversation, event: event.to_payload() };
    let text = serde_json::to_string(&signal).expect("signals serialise");
    let _: i64 = gateway.inner.redis.publish(channel(gateway), text).await?;
    Ok(())
}

fn delivery(text: &str) -> Option<Delivery> {
    let signal: Signal = serde_json::from_str(text).ok()?;
    let event_type = signal.event.get("type")?.as_str()?.to_owned();
    Some(Delivery {
        partition: 0,
        offset: EntryId::ZERO,
        event_id: Uuid::nil(),
        tenant: signal.tenant,
        conversation: Some(signal.conversation),
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
