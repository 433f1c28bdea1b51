//! A deployment with tenants and inboxes, a writer, and 100,000 message events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chatdesk_core::Envelope;
use chatdesk_core::events::{Actor, ContactCreated, ConversationCreated, Direction, Event, MessageCreated, SenderKind};
use chatdesk_core::{KeyScheme, StreamsConfig, TenantId};
use chatdesk_store::directory::{InboxKind, create_inbox, create_tenant};
use chatdesk_streams::status::partition_status;
use chatdesk_streams::{Consumer, ConsumerOptions, Producer, RedisClient, RedisConnector, RedisSettings};
use chatdesk_workers::writer::Writer;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const TENANTS: usize = 4;
pub const CONVERSATIONS_PER_TENANT: usize = 25;
pub const MESSAGES_PER_CONVERSATION: usize = 1_000;
pub const MESSAGES: i64 = (TENANTS * CONVERSATIONS_PER_TENANT * MESSAGES_PER_CONVERSATION) as i64;

const CONFIG: &str = r#"
[streams.events]
partitions = 8
retention = { durable_groups = ["writer"] }

[streams.events.groups.writer]
batch_size = 500
block = "200ms"
claim_idle = "2s"
max_deliveries = 3
"#;

/// What the projection of one conversation must be after all its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub tenant: Uuid,
    pub last_message_id: Uuid,
    pub unread: i32,
}

pub struct Deployment {
    pub redis: RedisClient,
    pub connector: RedisConnector,
    pub keys: KeyScheme,
    pub config: Arc<StreamsConfig>,
    pub pool: chatdesk_store::Pool,
    pub producer: Producer,
    tenants: Vec<(Uuid, Uuid)>,
}

impl Deployment {
    pub async fn new(redis_url: &str, database_url: &str) -> Self {
        let connector = RedisConnector::new(RedisSettings::new(redis_url)).unwrap();
        let redis = connector.shared().await.unwrap();
        let keys = KeyScheme::new(chatdesk_testkit::unique_prefix()).unwrap();
        let config = Arc::new(StreamsConfig::from_toml_str("test", CONFIG).unwrap());
        let pool = chatdesk_store::connect(database_url, 8).await.unwrap();
        chatdesk_store::migrate(&pool).await.unwrap();
        chatdesk_streams::runtime::ensure_durable_groups(&redis, &keys, &config).await.unwrap();
        let mut tenants = Vec::new();
        for index in 0..TENANTS {
            let tenant = create_tenant(&pool, &format!("tenant {index}")).await.unwrap();
            let inbox =
                create_inbox(&pool, tenant, InboxKind::Generic, "support", "secret", None, &serde_json::json!({}))
                    .await
                    .unwrap();
            tenants.push((tenant, inbox.id));
        }
        let producer = Producer::new(redis.clone(), keys.clone(), config.clone());
        Self { redis, connector, keys, config, pool, producer, tenants }
    }

    pub fn writer(&self, name: &str) -> Consumer<Writer> {
        let stream = self.config.stream("events").unwrap();
        Consumer::new(
            ConsumerOptions::new(self.connector.clone(), self.keys.clone(), stream, name),
            Writer::new(self.pool.clone()),
        )
        .unwrap()
    }

    pub fn spawn_writer(&self, name: &str, cancel: &CancellationToken) -> tokio::task::JoinHandle<()> {
        let writer = self.writer(name);
        let cancel = cancel.clone();
        tokio::spawn(async move { writer.run(cancel).await.expect("writer failed") })
    }

    /// Appends, per conversation in order: contact.created, conversation.created, then its
    /// messages, all inbound except one agent reply in the middle. Conversations are appended
    /// concurrently. Returns what each conversation's projection must end as.
    pub async fn append_conversations(&self) -> HashMap<Uuid, Expected> {
        let mut tasks = tokio::task::JoinSet::new();
        for &(tenant, inbox) in &self.tenants {
            for _ in 0..CONVERSATIONS_PER_TENANT {
                let producer = self.producer.clone();
                tasks.spawn(async move {
                    let (contact, conversation) = (Uuid::now_v7(), Uuid::now_v7());
                    let append = |event: Event| {
                        let producer = producer.clone();
                        async move {
                            let entry = Envelope::of(TenantId(tenant), &event);
                            producer.append_event(&entry).await.unwrap();
                            entry.event_id.0
                        }
                    };
                    append(Event::ContactCreated(ContactCreated {
                        contact_id: contact,
                        inbox_id: inbox,
                        external_id: contact.to_string(),
                        name: Some("Customer".into()),
                        email: None,
                    }))
                    .await;
                    append(Event::ConversationCreated(ConversationCreated {
                        conversation_id: conversation,
                        inbox_id: inbox,
                        contact_id: contact,
                    }))
                    .await;
                    let mut last = Uuid::nil();
                    for index in 0..MESSAGES_PER_CONVERSATION {
                        let agent_reply = index == MESSAGES_PER_CONVERSATION / 2;
                        last = append(Event::MessageCreated(MessageCreated {
                            conversation_id: conversation,
                            inbox_id: inbox,
                            contact_id: contact,
                            direction: if agent_reply { Direction::Outbound } else { Direction::Inbound },
                            sender: if agent_reply {
                                Actor { kind: SenderKind::Agent, id: None }
                            } else {
                                Actor { kind: SenderKind::Customer, id: Some(contact) }
                            },
                            text: format!("message {index}"),
                            extra: None,
                            provider_message_id: None,
                            client_msg_id: None,
                            sent_at_ms: None,
                        }))
                        .await;
                    }
                    let unread = (MESSAGES_PER_CONVERSATION - MESSAGES_PER_CONVERSATION / 2 - 1) as i32;
                    (conversation, Expected { tenant, last_message_id: last, unread })
                });
            }
        }
        let mut expected = HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (conversation, projection) = joined.unwrap();
            expected.insert(conversation, projection);
        }
        expected
    }

    pub async fn message_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&self.pool).await.unwrap_or(-1)
    }

    pub async fn wait_for_messages(&self, at_least: i64, timeout: Duration) {
        chatdesk_testkit::wait_until(&format!("{at_least} message rows"), timeout, || async {
            self.message_rows().await >= at_least
        })
        .await;
    }

    /// Lag and pending of the writer group over all partitions.
    pub async fn backlog(&self) -> (u64, u64) {
        let stream = self.config.stream("events").unwrap();
        let (mut lag, mut pending) = (0, 0);
        for partition in 0..stream.partitions {
            let statuses = partition_status(&self.redis, &self.keys, stream, partition).await.unwrap();
            match statuses.iter().find(|status| status.group == "writer") {
                Some(status) => {
                    lag += status.lag.unwrap_or(u64::MAX / 16);
                    pending += status.pending;
                }
                // Not created yet: everything in the partition is still to be read.
                None => {
                    let key = self.keys.partition(&stream.name, partition).stream;
                    lag += self.redis.xlen::<u64, _>(key.as_str()).await.unwrap();
                }
            }
        }
        (lag, pending)
    }

    pub async fn wait_caught_up(&self) {
        chatdesk_testkit::wait_until("the writer caught up", Duration::from_secs(120), || async {
            self.backlog().await == (0, 0)
        })
        .await;
    }

    /// `(conversation, tenant, last message, unread, status)` of every conversation.
    pub async fn projections(&self) -> Vec<(Uuid, Uuid, Option<Uuid>, i32, String)> {
        sqlx::query_as("SELECT id, tenant_id, last_message_id, unread_count, status FROM conversations ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    pub async fn assert_projections(&self, expected: &HashMap<Uuid, Expected>) {
        let projections = self.projections().await;
        assert_eq!(projections.len(), expected.len());
        for (conversation, tenant, last, unread, status) in projections {
            let want = &expected[&conversation];
            assert_eq!(tenant, want.tenant);
            assert_eq!(last, Some(want.last_message_id), "last message of {conversation}");
            assert_eq!(unread, want.unread, "unread count of {conversation}");
            assert_eq!(status, "open");
        }
    }

    pub async fn dead_letters(&self) -> u64 {
        let stream = self.config.stream("events").unwrap();
        let mut total = 0;
        for partition in 0..stream.partitions {
            let length: u64 = self.redis.xlen(self.keys.partition(&stream.name, partition).dead_letters).await.unwrap();
            total += length;
        }
        total
    }

    /// Rewinds the writer group to the start of every partition: a full replay.
    pub async fn rewind_writer(&self) {
        let stream = self.config.stream("events").unwrap();
        for partition in 0..stream.partitions {
            let key = self.keys.partition(&stream.name, partition).stream;
            let _: String = self
                .redis
                .custom(fred::cmd!("XGROUP"), vec!["SETID", &key, "writer", "0", "ENTRIESREAD", "0"])
                .await
                .unwrap();
        }
    }
}
