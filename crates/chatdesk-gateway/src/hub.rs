//! In-memory fan-out of this node's stream entries to its sockets. Each socket has one bounded
//! queue; a socket whose queue is full is dropped from the hub (its queue closes), and the
//! socket then closes with the slow-client code: it resumes from its cursor, and never slows
//! the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chatdesk_core::{Entry, EntryId, Envelope};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::metrics;

/// One event as sockets receive it: an entry of the events stream (or a row stored from one),
/// or an ephemeral signal. Its payload is parsed once here, not once per socket.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The stream entry id; `None` for a signal that is not stored (typing, presence): it is
    /// never replayed.
    pub offset: Option<EntryId>,
    pub envelope: Envelope,
    /// The payload, checked to be JSON once (a string holding the raw text if it is not).
    pub data: Box<serde_json::value::RawValue>,
}

impl Delivery {
    pub fn new(offset: Option<EntryId>, envelope: Envelope) -> Self {
        let data = serde_json::value::RawValue::from_string(envelope.payload.clone())
            .or_else(|_| serde_json::value::to_raw_value(&envelope.payload))
            .expect("a string is always JSON");
        Self { offset, envelope, data }
    }

    pub fn stored(entry: Entry) -> Self {
        Self::new(Some(entry.id), entry.envelope)
    }

    pub fn tenant(&self) -> Uuid {
        self.envelope.tenant.0
    }
}

/// Routing keys an entry is published under.
pub fn keys_of(delivery: &Delivery) -> Vec<String> {
    let mut keys = vec![format!("inbox:{}", delivery.tenant())];
    if let Some(conversation) = delivery.envelope.conversation {
        keys.push(format!("conversation:{conversation}"));
    }
    keys
}

type Queue = mpsc::Sender<Arc<Delivery>>;

#[derive(Default)]
struct Routes {
    /// routing key → session → its queue
    by_key: HashMap<String, HashMap<u64, Queue>>,
    /// session → the keys it listens on
    by_session: HashMap<u64, Vec<String>>,
}

#[derive(Clone, Default)]
pub struct Hub {
    routes: Arc<Mutex<Routes>>,
}

impl Hub {
    pub fn listen(&self, session: u64, key: String, queue: Queue) {
        let mut routes = self.routes.lock().expect("hub lock");
        routes.by_key.entry(key.clone()).or_default().insert(session, queue);
        let keys = routes.by_session.entry(session).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    pub fn unlisten(&self, session: u64, key: &str) {
        let mut routes = self.routes.lock().expect("hub lock");
        if let Some(sessions) = routes.by_key.get_mut(key) {
            sessions.remove(&session);
            if sessions.is_empty() {
                routes.by_key.remove(key);
            }
        }
        if let Some(keys) = routes.by_session.get_mut(&session) {
            keys.retain(|existing| existing != key);
        }
    }

    /// Forgets a session entirely (its queue closes once no route holds it).
    pub fn leave(&self, session: u64) {
        let mut routes = self.routes.lock().expect("hub lock");
        Self::remove_session(&mut routes, session);
    }

    fn remove_session(routes: &mut Routes, session: u64) {
        for key in routes.by_session.remove(&session).unwrap_or_default() {
            if let Some(sessions) = routes.by_key.get_mut(&key) {
                sessions.remove(&session);
                if sessions.is_empty() {
                    routes.by_key.remove(&key);
                }
            }
        }
    }

    /// Hands `delivery` to every socket listening on one of its keys, once per socket.
    pub fn publish(&self, delivery: Arc<Delivery>) {
        let mut routes = self.routes.lock().expect("hub lock");
        let mut sent: Vec<u64> = Vec::new();
        let mut slow: Vec<u64> = Vec::new();
        for key in keys_of(&delivery) {
            let Some(sessions) = routes.by_key.get(&key) else { continue };
            for (session, queue) in sessions {
                if sent.contains(session) {
                    continue;
                }
                sent.push(*session);
                if queue.try_send(delivery.clone()).is_err() {
                    slow.push(*session);
                }
            }
        }
        for session in slow {
            ::metrics::counter!(metrics::SLOW_CLIENT_CLOSES_TOTAL).increment(1);
            Self::remove_session(&mut routes, session);
        }
    }
}

#[cfg(test)]
mod tests {
    use chatdesk_core::events::{Actor, Event, SenderKind, Typing};
    use chatdesk_core::{Envelope, TenantId};

    use super::*;

    fn typing(tenant: Uuid, conversation: Uuid) -> Arc<Delivery> {
        let event = Event::Typing(Typing {
            conversation_id: conversation,
            who: Actor { kind: SenderKind::Agent, id: None },
            typing: true,
        });
        Arc::new(Delivery::new(None, Envelope::of(TenantId(tenant), &event)))
    }

    #[test]
    fn a_socket_on_both_of_an_events_keys_gets_it_once() {
        let hub = Hub::default();
        let (tenant, conversation) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (queue, mut received) = mpsc::channel(8);
        hub.listen(7, format!("inbox:{tenant}"), queue.clone());
        hub.listen(7, format!("conversation:{conversation}"), queue);
        hub.publish(typing(tenant, conversation));
        assert!(received.try_recv().is_ok());
        assert!(received.try_recv().is_err(), "one copy per socket");
        hub.publish(typing(Uuid::from_u128(3), Uuid::from_u128(4)));
        assert!(received.try_recv().is_err(), "another tenant's event reaches no one here");
    }

    #[test]
    fn a_socket_that_falls_behind_is_dropped_and_the_others_keep_receiving() {
        let hub = Hub::default();
        let (tenant, conversation) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (slow_queue, mut slow) = mpsc::channel(1);
        let (fast_queue, mut fast) = mpsc::channel(8);
        hub.listen(1, format!("inbox:{tenant}"), slow_queue);
        hub.listen(2, format!("inbox:{tenant}"), fast_queue);
        for _ in 0..3 {
            hub.publish(typing(tenant, conversation));
        }
        assert!(slow.try_recv().is_ok());
        assert!(
            matches!(slow.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)),
            "the hub let go of the slow socket's queue, which then closes"
        );
        assert_eq!(std::iter::from_fn(|| fast.try_recv().ok()).count(), 3);
    }
}
