//! Shared set-up: a deployment's streams on a test's Redis, a recording handler, helpers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatdesk_core::{EventId, GroupName, KeyScheme, StreamsConfig, TenantId};
use chatdesk_streams::status::partition_status;
use chatdesk_streams::{
    Batch, Consumer, ConsumerOptions, Envelope, Handler, HandlerError, Outcomes, Producer, RedisConnector,
    RedisSettings,
};
use tokio_util::sync::CancellationToken;

/// Short timings so claims and retries happen within a test.
pub const CONFIG: &str = r#"
[defaults]
batch_size = 100
block = "200ms"
claim_idle = "1500ms"
max_deliveries = 3

[streams.events]
partitions = 8

[streams.events.groups.workers]
"#;

pub struct Setup {
    pub connector: RedisConnector,
    pub keys: KeyScheme,
    pub config: Arc<StreamsConfig>,
    pub producer: Producer,
    pub client: chatdesk_streams::RedisClient,
}

impl Setup {
    pub async fn new(url: &str) -> Self {
        Self::with_config(url, CONFIG).await
    }

    pub async fn with_config(url: &str, config: &str) -> Self {
        let connector = RedisConnector::new(RedisSettings::new(url)).expect("valid redis url");
        let client = connector.shared().await.expect("redis reachable");
        let keys = KeyScheme::new(chatdesk_testkit::unique_prefix()).unwrap();
        let config = Arc::new(StreamsConfig::from_toml_str("test", config).unwrap());
        let producer = Producer::new(client.clone(), keys.clone(), config.clone());
        Self { connector, keys, config, producer, client }
    }

    pub fn consumer<H: Handler>(&self, name: &str, handler: H) -> Consumer<H> {
        let stream = self.config.stream("events").unwrap();
        Consumer::new(ConsumerOptions::new(self.connector.clone(), self.keys.clone(), stream, name), handler).unwrap()
    }

    /// Appends `count` entries round-robin over all partitions, `parallel` appenders at a time.
    /// Returns the event ids in append order per partition.
    pub async fn fill(&self, count: usize, parallel: usize) -> Vec<EventId> {
        let partitions = self.config.stream("events").unwrap().partitions as usize;
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..parallel {
            let producer = self.producer.clone();
            tasks.spawn(async move {
                let mut ids = Vec::new();
                let mut index = worker;
                while index < count {
                    let entry = entry(index as u64, false);
                    producer.append_to_partition("events", (index % partitions) as u16, &entry).await.expect("append");
                    ids.push(entry.event_id);
                    index += parallel;
                }
                ids
            });
        }
        let mut all = Vec::with_capacity(count);
        while let Some(ids) = tasks.join_next().await {
            all.extend(ids.unwrap());
        }
        all
    }

    /// Starts `count` consumers named `consumer-<n>` that record what they handle.
    pub fn spawn_recording(
        &self,
        count: usize,
        record: &Record,
        cancel: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..count)
            .map(|index| {
                let name = format!("consumer-{index}");
                spawn(self.consumer(&name, Recording { name: name.clone(), record: record.clone() }), cancel)
            })
            .collect()
    }

    /// Pending entries of the group, summed over partitions.
    pub async fn pending(&self) -> u64 {
        let stream = self.config.stream("events").unwrap();
        let mut total = 0;
        for partition in 0..stream.partitions {
            let statuses = partition_status(&self.client, &self.keys, stream, partition).await.unwrap();
            total +=
                statuses.iter().filter(|status| status.group == "workers").map(|status| status.pending).sum::<u64>();
        }
        total
    }

    pub async fn wait_pending_zero(&self) {
        chatdesk_testkit::wait_until("no pending entries", Duration::from_secs(30), || async {
            self.pending().await == 0
        })
        .await;
    }
}

/// The group every test consumer reads as.
pub fn group() -> GroupName {
    GroupName::parse("workers").unwrap()
}

pub fn tenant() -> TenantId {
    TenantId(uuid::Uuid::from_u128(42))
}

/// The tests' own record: a sequence number, and whether handlers should fail it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TestEvent {
    pub sequence: u64,
    pub poison: bool,
}

impl chatdesk_core::Record for TestEvent {
    fn record_type(&self) -> &'static str {
        "test.event"
    }

    fn conversation(&self) -> Option<uuid::Uuid> {
        None
    }

    fn to_payload(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap()
    }

    fn from_payload(_: &str, payload: &str) -> Result<Self, chatdesk_core::envelope::PayloadError> {
        Ok(serde_json::from_str(payload)?)
    }
}

pub fn entry(sequence: u64, poison: bool) -> Envelope {
    Envelope::of(tenant(), &TestEvent { sequence, poison })
}

/// How many times each event was handled to completion, and by which consumer.
#[derive(Clone, Default)]
pub struct Record {
    inner: Arc<Mutex<HashMap<EventId, Vec<String>>>>,
}

impl Record {
    pub fn add(&self, event_id: EventId, consumer: &str) {
        self.inner.lock().unwrap().entry(event_id).or_default().push(consumer.to_owned());
    }

    pub fn distinct(&self) -> usize {
        self.inner.lock().unwrap().len()
    }

    pub fn handled_more_than_once(&self) -> Vec<EventId> {
        self.inner.lock().unwrap().iter().filter(|(_, by)| by.len() > 1).map(|(id, _)| *id).collect()
    }

    pub fn contains(&self, event_id: &EventId) -> bool {
        self.inner.lock().unwrap().contains_key(event_id)
    }

    pub fn per_consumer(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for consumers in self.inner.lock().unwrap().values() {
            for consumer in consumers {
                *counts.entry(consumer.clone()).or_default() += 1;
            }
        }
        counts
    }
}

/// Records every entry as done.
pub struct Recording {
    pub name: String,
    pub record: Record,
}

impl Handler for Recording {
    fn group(&self) -> chatdesk_core::GroupName {
        crate::support::group()
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        // A little work per batch lets competing consumers interleave.
        tokio::time::sleep(Duration::from_millis(1)).await;
        for entry in &batch.entries {
            self.record.add(entry.envelope.event_id, &self.name);
        }
        Ok(Outcomes::all_done())
    }
}

/// Runs a consumer in the background.
pub fn spawn<H: Handler>(consumer: Consumer<H>, cancel: &CancellationToken) -> tokio::task::JoinHandle<()> {
    let cancel = cancel.clone();
    tokio::spawn(async move { consumer.run(cancel).await.expect("consumer failed") })
}
