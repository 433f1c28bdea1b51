//! Which partitions of the events stream this node reads.
//!
//! A gateway only needs the partitions of the tenants whose sockets it holds. The node's
//! consumer (group `gateway.<node>`) starts with no partition; a partition is assigned when the
//! first socket of one of its tenants arrives and released some time after the last one leaves.
//! A node with a few tenants' agents then reads a few partitions, not the whole stream. The
//! runtime does the reading; this module only counts sockets.
//!
//! A partition assigned (again) recreates the node's group on it at the newest entry
//! ([`Start::Fresh`]): the group is only live fan-out, sockets resume their gaps from their own
//! cursors, and a recreated group cannot carry old pending entries that would arrive out of order.

use std::collections::HashMap;
use std::time::Duration;

use chatdesk_core::GroupName;
use chatdesk_streams::runtime::{Assignments, Start};
use chatdesk_streams::{Consumer, ConsumerError};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Fanout, metrics};

const SWEEP: Duration = Duration::from_secs(1);

/// Sockets of one partition, and since when it has none.
struct Use {
    sockets: usize,
    idle_since: Option<Instant>,
}

pub(crate) struct Readers {
    group: GroupName,
    assignments: Assignments,
    consumer: std::sync::Mutex<Option<Consumer<Fanout>>>,
    used: Mutex<HashMap<u16, Use>>,
    /// See [`crate::GatewaySettings::linger`].
    linger: Duration,
    cancel: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("the node's reader runs already")]
    AlreadyRunning,
    #[error("the node's reader stopped: {0}")]
    Stopped(String),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

impl Readers {
    pub(crate) fn new(consumer: Consumer<Fanout>, linger: Duration, cancel: CancellationToken) -> Self {
        Self {
            group: consumer.group().clone(),
            assignments: consumer.assignments(),
            consumer: std::sync::Mutex::new(Some(consumer)),
            used: Mutex::new(HashMap::new()),
            linger,
            cancel,
        }
    }

    pub(crate) fn group(&self) -> &GroupName {
        &self.group
    }

    /// Makes sure `partition` is read, for one more socket. Returns once the group's position is
    /// set, so anything appended afterwards reaches the hub.
    pub(crate) async fn acquire(&self, partition: u16) -> Result<(), ConsumerError> {
        let mut used = self.used.lock().await;
        if let Some(entry) = used.get_mut(&partition) {
            entry.sockets += 1;
            entry.idle_since = None;
            return Ok(());
        }
        self.assignments.assign(partition, Start::Fresh).await?;
        used.insert(partition, Use { sockets: 1, idle_since: None });
        ::metrics::gauge!(metrics::PARTITIONS_READ).set(used.len() as f64);
        Ok(())
    }

    /// One socket of `partition` is gone.
    pub(crate) async fn release(&self, partition: u16) {
        let mut used = self.used.lock().await;
        if let Some(entry) = used.get_mut(&partition) {
            entry.sockets = entry.sockets.saturating_sub(1);
            if entry.sockets == 0 {
                entry.idle_since = Some(Instant::now());
            }
        }
    }

    /// The partitions read now, in order.
    pub async fn partitions(&self) -> Vec<u16> {
        let mut partitions: Vec<u16> = self.used.lock().await.keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// Runs the node's consumer and releases lingering partitions until cancelled; fails when
    /// the consumer fails (the process then stops, as with any consumer, rather than leave a
    /// partition's sockets silently unfed).
    pub(crate) async fn supervise(&self) -> Result<(), ReaderError> {
        let consumer = self.consumer.lock().expect("reader lock").take().ok_or(ReaderError::AlreadyRunning)?;
        // Its own task: assignments and releases are answered by the running consumer, whatever
        // this loop is waiting for.
        let mut running = tokio::spawn(consumer.run(self.cancel.clone()));
        let mut tick = tokio::time::interval(SWEEP);
        loop {
            tokio::select! {
                result = &mut running => {
                    return match result {
                        Ok(result) => result.map_err(Into::into),
                        Err(join_error) => Err(ReaderError::Stopped(join_error.to_string())),
                    };
                }
                _ = tick.tick() => {}
            }
            // Released under the lock, as `acquire` assigns under it: a socket arriving between
            // the two would otherwise find the partition's worker still running (its assignment a
            // no-op), and the release that follows would leave it unread.
            let mut used = self.used.lock().await;
            let idle: Vec<u16> = used
                .iter()
                .filter(|(_, entry)| entry.idle_since.is_some_and(|since| since.elapsed() >= self.linger))
                .map(|(&partition, _)| partition)
                .collect();
            for partition in idle {
                used.remove(&partition);
                if let Err(error) = self.assignments.release(partition).await {
                    tracing::warn!(partition, error = %error, "cannot release a partition");
                }
            }
            ::metrics::gauge!(metrics::PARTITIONS_READ).set(used.len() as f64);
        }
    }
}
