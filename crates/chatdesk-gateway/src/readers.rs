//! Which partitions of the events stream this node reads.
//!
//! A gateway only needs the partitions of the tenants whose sockets it holds, so each partition
//! gets its own reader (a one-partition consumer in the node's group) when the first socket of
//! one of its tenants arrives, and loses it some time after the last one leaves. A node with a
//! few tenants' agents then reads a few partitions, not the whole stream.
//!
//! A reader that starts (again) recreates the node's group on its partition at the newest entry:
//! the group is only live fan-out, sockets resume their gaps from their own cursors, and a
//! recreated group cannot carry old pending entries that would arrive out of order.

use std::collections::HashMap;
use std::time::Duration;

use chatdesk_core::{GroupName, StartFrom, StreamSettings};
use chatdesk_streams::runtime::ensure_group;
use chatdesk_streams::{Consumer, ConsumerError, RedisClient, RedisConnector};
use fred::prelude::*;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Fanout, Gateway, metrics};

/// How long a partition keeps its reader after its last socket left: reconnecting clients and
/// short gaps between sessions should not restart it.
const LINGER: Duration = Duration::from_secs(60);
const SWEEP: Duration = Duration::from_secs(1);

struct Reader {
    sockets: usize,
    idle_since: Option<Instant>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), ConsumerError>>,
}

pub(crate) struct Readers {
    connector: RedisConnector,
    stream: StreamSettings,
    group: GroupName,
    running: Mutex<HashMap<u16, Reader>>,
    cancel: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("cannot start the reader of partition {partition}")]
    Start {
        partition: u16,
        #[source]
        source: Error,
    },
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

impl Readers {
    pub(crate) fn new(
        connector: RedisConnector,
        stream: StreamSettings,
        group: GroupName,
        cancel: CancellationToken,
    ) -> Self {
        Self { connector, stream, group, running: Mutex::new(HashMap::new()), cancel }
    }

    pub(crate) fn group(&self) -> &GroupName {
        &self.group
    }

    /// Makes sure `partition` is read, for one more socket. Returns once the reader's group
    /// position is set, so anything appended afterwards reaches the hub.
    pub(crate) async fn acquire(&self, gateway: &Gateway, partition: u16) -> Result<(), ReaderError> {
        let mut running = self.running.lock().await;
        if let Some(reader) = running.get_mut(&partition)
            && !reader.task.is_finished()
        {
            reader.sockets += 1;
            reader.idle_since = None;
            return Ok(());
        }
        let inner = &gateway.inner;
        let key = inner.keys.partition(&self.stream.name, partition).stream;
        restart_group(&inner.redis, &key, self.group.as_str())
            .await
            .map_err(|source| ReaderError::Start { partition, source })?;
        let consumer = Consumer::new(
            self.connector.clone(),
            inner.keys.clone(),
            &self.stream,
            "gateway",
            self.group.clone(),
            inner.node.clone(),
            Fanout { gateway: gateway.clone() },
        )?
        .with_partitions(vec![partition])?;
        let cancel = self.cancel.child_token();
        let task = tokio::spawn(consumer.run(cancel.clone()));
        tracing::debug!(partition, group = %self.group, "partition reader started");
        running.insert(partition, Reader { sockets: 1, idle_since: None, cancel, task });
        ::metrics::gauge!(metrics::PARTITIONS_READ).set(running.len() as f64);
        Ok(())
    }

    /// One socket of `partition` is gone.
    pub(crate) async fn release(&self, partition: u16) {
        let mut running = self.running.lock().await;
        if let Some(reader) = running.get_mut(&partition) {
            reader.sockets = reader.sockets.saturating_sub(1);
            if reader.sockets == 0 {
                reader.idle_since = Some(Instant::now());
            }
        }
    }

    /// The partitions read now, in order.
    pub async fn partitions(&self) -> Vec<u16> {
        let mut partitions: Vec<u16> = self.running.lock().await.keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// Stops lingering readers until cancelled; fails when a reader fails (the process then
    /// stops, as with any consumer, rather than leave a partition's sockets silently unfed).
    pub(crate) async fn supervise(&self) -> Result<(), ReaderError> {
        let mut tick = tokio::time::interval(SWEEP);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let mut running = self.running.lock().await;
            let failed: Vec<u16> = running
                .iter()
                .filter(|(_, reader)| reader.task.is_finished())
                .map(|(&partition, _)| partition)
                .collect();
            for partition in failed {
                let reader = running.remove(&partition).expect("listed above");
                if let Ok(Err(error)) = reader.task.await {
                    self.cancel.cancel();
                    return Err(error.into());
                }
            }
            let idle: Vec<u16> = running
                .iter()
                .filter(|(_, reader)| reader.idle_since.is_some_and(|since| since.elapsed() >= LINGER))
                .map(|(&partition, _)| partition)
                .collect();
            for partition in idle {
                let reader = running.remove(&partition).expect("listed above");
                reader.cancel.cancel();
                let _ = reader.task.await;
                tracing::debug!(partition, group = %self.group, "partition reader stopped: no sockets");
            }
            ::metrics::gauge!(metrics::PARTITIONS_READ).set(running.len() as f64);
        }
        // Shutdown: let every reader acknowledge what it holds.
        let readers: Vec<Reader> = self.running.lock().await.drain().map(|(_, reader)| reader).collect();
        for reader in readers {
            if let Ok(Err(error)) = reader.task.await {
                tracing::warn!(error = %error, "partition reader stopped with an error");
            }
        }
        Ok(())
    }
}

/// Recreates `group` on `key` at the newest entry (see the module comment).
async fn restart_group(redis: &RedisClient, key: &str, group: &str) -> Result<(), Error> {
    let _: Value = redis.xgroup_destroy(key, group).await?;
    ensure_group(redis, key, group, StartFrom::Latest).await
}
