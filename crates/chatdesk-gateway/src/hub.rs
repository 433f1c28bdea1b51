//! In-memory fan-out of this node's stream entries to its sockets. Each socket has one bounded
//! queue; a socket whose queue is full is dropped from the hub (its queue closes), and the
//! socket then closes with the slow-client code: it resumes from its cursor, and never slows
//! the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chatdesk_core::EntryId;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::metrics;

/// One entry of the events stream, as sockets receive it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub partition: u16,
    pub offset: EntryId,
    pub event_id: Uuid,
    pub tenant: Uuid,
    pub conversation: Option<Uuid>,
    pub event_type: String,
    pub payload: Arc<str>,
    /// When the event was appended, for the fan-out latency metric.
    pub time_ms: u64,
    /// A signal that is not stored (typing): it has no offset and is never replayed.
    pub ephemeral: bool,
}

/// Routing keys an entry is published under.
pub fn keys_of(delivery: &Delivery) -> Vec<String> {
    let mut keys = vec![format!("inbox:{}", delivery.tenant)];
    if let Some(conversation) = delivery.conversation {
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
