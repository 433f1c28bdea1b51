//! Inboxes cached in each process, so a webhook costs no PostgreSQL query.
//!
//! An inbox changes rarely (its secret, its sending credentials) and is read on every webhook.
//! Each process keeps the inboxes it has looked up; a change (`PATCH /v1/inboxes/{id}`) is
//! announced on a Redis pub/sub channel ([`InboxCache::announce_change`]) and every process's
//! listener ([`InboxCache::listen`]) drops its copy. Pub/sub loses messages while a listener is
//! disconnected, so a listener that reconnects drops everything, and no copy is kept longer
//! than [`MAX_AGE`] in any case.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatdesk_core::KeyScheme;
use chatdesk_store::StoreError;
use chatdesk_store::directory::InboxRecord;
use chatdesk_streams::RedisConnector;
use chatdesk_streams::connection::Heard;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The longest a cached inbox is used without asking PostgreSQL again.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// How long an id that has no inbox is remembered (ids probed by strangers cost one query each
/// per this period, not one per request).
const ABSENT_MAX_AGE: Duration = Duration::from_secs(5);
/// Entries kept at most; past it the cache starts over (a bound against probing with random ids).
const CAPACITY: usize = 10_000;

pub const LOOKUPS_TOTAL: &str = "chatdesk_inbox_cache_lookups_total";

pub fn describe() {
    ::metrics::describe_counter!(LOOKUPS_TOTAL, ::metrics::Unit::Count, "Inbox lookups by outcome (hit, miss)");
}

#[derive(Clone)]
pub struct InboxCache {
    db: chatdesk_store::Pool,
    redis: Client,
    keys: KeyScheme,
    entries: Arc<Mutex<HashMap<Uuid, Cached>>>,
}

/// When an inbox was read, and what was found (`None`: no such inbox).
type Cached = (Instant, Option<InboxRecord>);

impl InboxCache {
    pub fn new(db: chatdesk_store::Pool, redis: Client, keys: KeyScheme) -> Self {
        Self { db, redis, keys, entries: Arc::default() }
    }

    /// The inbox `id`, from the cache or from PostgreSQL.
    pub async fn get(&self, id: Uuid) -> Result<Option<InboxRecord>, StoreError> {
        if let Some((at, record)) = self.entries.lock().expect("inbox cache lock").get(&id) {
            let max_age = if record.is_some() { MAX_AGE } else { ABSENT_MAX_AGE };
            if at.elapsed() < max_age {
                ::metrics::counter!(LOOKUPS_TOTAL, "outcome" => "hit").increment(1);
                return Ok(record.clone());
            }
        }
        ::metrics::counter!(LOOKUPS_TOTAL, "outcome" => "miss").increment(1);
        let record = chatdesk_store::directory::inbox_by_id(&self.db, id).await?;
        let mut entries = self.entries.lock().expect("inbox cache lock");
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(id, (Instant::now(), record.clone()));
        Ok(record)
    }

    /// Drops this process's copy of `id`.
    pub fn forget(&self, id: Uuid) {
        self.entries.lock().expect("inbox cache lock").remove(&id);
    }

    fn forget_all(&self) {
        self.entries.lock().expect("inbox cache lock").clear();
    }

    /// Tells every process that `id` changed (this one at once).
    pub async fn announce_change(&self, id: Uuid) -> Result<(), Error> {
        self.forget(id);
        let _: i64 = self.redis.publish(self.keys.inbox_changes_channel(), id.to_string()).await?;
        Ok(())
    }

    /// Drops changed inboxes as they are announced, until cancelled. Once the subscription is
    /// in place, and after every reconnect (either may have missed announcements), it drops
    /// everything.
    pub async fn listen(self, connector: RedisConnector, cancel: CancellationToken) -> Result<(), Error> {
        let channel = self.keys.inbox_changes_channel();
        chatdesk_streams::connection::follow(&connector, &channel, &cancel, |heard| match heard {
            Heard::Message(text) => match text.parse() {
                Ok(id) => self.forget(id),
                Err(_) => self.forget_all(),
            },
            Heard::Missed => self.forget_all(),
        })
        .await
    }
}
