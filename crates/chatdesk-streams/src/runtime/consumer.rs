//! Running one consumer of one group over the partitions of one stream family.

use std::sync::Arc;
use std::time::Duration;

use chatdesk_core::{GroupName, GroupSettings, KeyScheme, StartFrom, StreamSettings};
use fred::prelude::*;
use fred::types::streams::XID;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Handler;
use super::partition::PartitionWorker;
use crate::connection::RedisConnector;
use crate::status;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("group {group:?} is not declared for stream {stream:?} in streams.toml")]
    UnknownGroup { stream: String, group: String },
    #[error("partition {partition} does not exist in stream {stream} ({partitions} partitions)")]
    NoSuchPartition { stream: String, partition: u16, partitions: u16 },
    #[error("cannot connect to Redis for {stream}/{group}")]
    Connect {
        stream: String,
        group: String,
        #[source]
        source: Error,
    },
    #[error("cannot create group {group} on {key}")]
    CreateGroup {
        key: String,
        group: String,
        #[source]
        source: Error,
    },
    #[error("a partition task of {stream}/{group} failed: {message}")]
    TaskFailed { stream: String, group: String, message: String },
}

/// One consumer (one name) in one group, reading some or all partitions of a stream family.
pub struct Consumer<H> {
    connector: RedisConnector,
    keys: KeyScheme,
    stream: StreamSettings,
    group: GroupName,
    settings: GroupSettings,
    consumer_name: String,
    partitions: Vec<u16>,
    handler: Arc<H>,
}

/// Creates `group` on `key` if it does not exist (with MKSTREAM, so the group can exist before
/// the first entry).
pub async fn ensure_group(client: &Client, key: &str, group: &str, start: StartFrom) -> Result<(), Error> {
    let start_id = match start {
        StartFrom::Earliest => XID::Manual("0".into()),
        StartFrom::Latest => XID::Max,
    };
    match client.xgroup_create::<String, _, _, _>(key, group, start_id, true).await {
        Ok(_) => Ok(()),
        Err(error) if error.details().starts_with("BUSYGROUP") => Ok(()),
        Err(error) => Err(error),
    }
}

impl<H: Handler> Consumer<H> {
    /// `group_settings_name` is the group's entry in `streams.toml`; `group` is the Redis group
    /// name (the same, except for per-node groups such as `gateway.<node>`).
    /// `consumer_name` must be unique among the running consumers of the group.
    pub fn new(
        connector: RedisConnector,
        keys: KeyScheme,
        stream: &StreamSettings,
        group_settings_name: &str,
        group: GroupName,
        consumer_name: impl Into<String>,
        handler: H,
    ) -> Result<Self, ConsumerError> {
        let settings = stream.group(group_settings_name).cloned().ok_or_else(|| ConsumerError::UnknownGroup {
            stream: stream.name.to_string(),
            group: group_settings_name.to_owned(),
        })?;
        Ok(Self {
            connector,
            keys,
            partitions: (0..stream.partitions).collect(),
            stream: stream.clone(),
            group,
            settings,
            consumer_name: consumer_name.into(),
            handler: Arc::new(handler),
        })
    }

    /// Overrides the group's settings (tests and benchmarks tune batch sizes and timings).
    pub fn with_settings(mut self, settings: GroupSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Reads only these partitions (a gateway reads just the ones its clients need).
    pub fn with_partitions(mut self, partitions: Vec<u16>) -> Result<Self, ConsumerError> {
        if let Some(&partition) = partitions.iter().find(|&&partition| partition >= self.stream.partitions) {
            return Err(ConsumerError::NoSuchPartition {
                stream: self.stream.name.to_string(),
                partition,
                partitions: self.stream.partitions,
            });
        }
        self.partitions = partitions;
        Ok(self)
    }

    fn connect_error(&self) -> impl Fn(Error) -> ConsumerError + '_ {
        |source| ConsumerError::Connect { stream: self.stream.name.to_string(), group: self.group.to_string(), source }
    }

    /// Runs until `cancel` fires (then finishes and acknowledges the batches in hand) or a
    /// partition task fails for good.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), ConsumerError> {
        let shared = self.connector.shared().await.map_err(self.connect_error())?;
        for &partition in &self.partitions {
            let key = self.keys.partition(&self.stream.name, partition).stream;
            ensure_group(&shared, &key, self.group.as_str(), self.settings.start)
                .await
                .map_err(|source| ConsumerError::CreateGroup { key, group: self.group.to_string(), source })?;
        }
        tracing::info!(
            stream = %self.stream.name,
            group = %self.group,
            consumer = %self.consumer_name,
            partitions = self.partitions.len(),
            "consumer started"
        );

        let permits = Arc::new(Semaphore::new(self.settings.concurrency as usize));
        let mut tasks = JoinSet::new();
        for &partition in &self.partitions {
            let reader = self.connector.dedicated(self.settings.block).await.map_err(self.connect_error())?;
            let worker = PartitionWorker::new(
                shared.clone(),
                reader,
                self.keys.partition(&self.stream.name, partition),
                self.group.clone(),
                self.consumer_name.clone(),
                self.settings.clone(),
                self.handler.clone(),
                permits.clone(),
            );
            tasks.spawn(worker.run(cancel.clone()));
        }
        let monitor_cancel = cancel.child_token();
        let monitor = tokio::spawn(status::monitor_group(
            shared.clone(),
            self.keys.clone(),
            self.stream.clone(),
            self.group.clone(),
            self.partitions.clone(),
            monitor_cancel.clone(),
        ));

        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            if let Err(join_error) = joined {
                tracing::error!(stream = %self.stream.name, group = %self.group, error = %join_error, "partition task failed");
                failure.get_or_insert_with(|| join_error.to_string());
                // One dead partition would silently stop its tenants; stop the consumer so the
                // process supervisor reports it.
                cancel.cancel();
            }
        }
        monitor_cancel.cancel();
        let _ = monitor.await;
        for client in [&shared] {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
        }
        tracing::info!(stream = %self.stream.name, group = %self.group, consumer = %self.consumer_name, "consumer stopped");
        match failure {
            Some(message) => Err(ConsumerError::TaskFailed {
                stream: self.stream.name.to_string(),
                group: self.group.to_string(),
                message,
            }),
            None => Ok(()),
        }
    }
}

/// Creates every durable group declared in `streams.toml` (its stream's
/// `retention.durable_groups`) on every partition. Run at start-up, so a durable group exists,
/// and keeps entries for its consumers, from the moment the first entry is appended.
pub async fn ensure_durable_groups(
    client: &Client,
    keys: &KeyScheme,
    config: &chatdesk_core::StreamsConfig,
) -> Result<(), ConsumerError> {
    for stream in config.streams.values() {
        for group in &stream.retention.durable_groups {
            let start = stream.group(group.as_str()).map(|settings| settings.start).unwrap_or(StartFrom::Earliest);
            for partition in 0..stream.partitions {
                let key = keys.partition(&stream.name, partition).stream;
                ensure_group(client, &key, group.as_str(), start)
                    .await
                    .map_err(|source| ConsumerError::CreateGroup { key, group: group.to_string(), source })?;
            }
        }
    }
    Ok(())
}
