//! Running one consumer of one group over partitions of one stream family. The consumer owns
//! which partitions it reads: all of them, a fixed list, or whatever its [`Assignments`] handle
//! assigns and releases while it runs (a gateway reads only its sockets' partitions).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatdesk_core::{GroupName, GroupSettings, KeyScheme, StartFrom, StreamSettings};
use fred::prelude::*;
use fred::types::streams::XID;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{Id as TaskId, JoinSet};
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
    #[error("the consumer of {stream}/{group} is not running")]
    Stopped { stream: String, group: String },
}

/// Which partitions a consumer reads from the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitions {
    /// Every partition of the stream (durable consumers).
    All,
    /// These partitions.
    Only(Vec<u16>),
    /// None until [`Assignments::assign`] adds them.
    Assigned,
}

/// Everything a consumer needs besides its handler (which names the group).
#[derive(Clone)]
pub struct ConsumerOptions {
    pub connector: RedisConnector,
    pub keys: KeyScheme,
    pub stream: StreamSettings,
    /// Unique among the running consumers of the group (a restarted process reuses its name and
    /// so picks up what it had in hand).
    pub consumer_name: String,
    pub partitions: Partitions,
    /// Replaces the group's settings from `streams.toml` (tests and benchmarks tune them).
    pub settings: Option<GroupSettings>,
}

impl ConsumerOptions {
    /// Every partition of `stream`, with the group's settings from `streams.toml`.
    pub fn new(
        connector: RedisConnector,
        keys: KeyScheme,
        stream: &StreamSettings,
        consumer_name: impl Into<String>,
    ) -> Self {
        Self {
            connector,
            keys,
            stream: stream.clone(),
            consumer_name: consumer_name.into(),
            partitions: Partitions::All,
            settings: None,
        }
    }

    pub fn partitions(mut self, partitions: Partitions) -> Self {
        self.partitions = partitions;
        self
    }

    pub fn settings(mut self, settings: GroupSettings) -> Self {
        self.settings = Some(settings);
        self
    }
}

/// How a partition assigned at run time starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Continue the group where it is (created at the group's `start` if missing).
    Continue,
    /// Recreate the group at the newest entry first: a live-only group (a gateway's) must not
    /// carry old pending entries that would arrive out of order.
    Fresh,
}

enum Command {
    Assign { partition: u16, start: Start, done: oneshot::Sender<Result<(), ConsumerError>> },
    Release { partition: u16, done: oneshot::Sender<()> },
}

/// Assigns and releases partitions of a running consumer.
#[derive(Clone)]
pub struct Assignments {
    commands: mpsc::Sender<Command>,
    stream: String,
    group: String,
}

impl Assignments {
    fn stopped(&self) -> ConsumerError {
        ConsumerError::Stopped { stream: self.stream.clone(), group: self.group.clone() }
    }

    /// Starts reading `partition` (nothing if it is read already). Returns once the group's
    /// position is set, so anything appended afterwards is read.
    pub async fn assign(&self, partition: u16, start: Start) -> Result<(), ConsumerError> {
        let (done, answer) = oneshot::channel();
        self.commands.send(Command::Assign { partition, start, done }).await.map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Stops reading `partition` once the batch in hand is finished and acknowledged.
    pub async fn release(&self, partition: u16) -> Result<(), ConsumerError> {
        let (done, answer) = oneshot::channel();
        self.commands.send(Command::Release { partition, done }).await.map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())
    }
}

/// One consumer (one name) in one group, reading partitions of a stream family.
pub struct Consumer<H> {
    options: ConsumerOptions,
    group: GroupName,
    settings: GroupSettings,
    handler: Arc<H>,
    commands: mpsc::Receiver<Command>,
    assignments: Assignments,
    /// Bumped when an operator hands entries back to this group: workers claim at once.
    claim_now: Arc<std::sync::atomic::AtomicU64>,
}

/// Bumps `claim_now` whenever `wanted` (`<family>:<group>`) is announced on `channel`, until
/// cancelled. Without the signal (Redis unreachable, the subscription lost) workers still claim
/// every `claim_idle / 2`: it only makes a replay or redrive start sooner.
async fn listen_for_claims(
    connector: RedisConnector,
    channel: String,
    wanted: String,
    claim_now: Arc<std::sync::atomic::AtomicU64>,
    cancel: CancellationToken,
) {
    let heard = crate::connection::follow(&connector, &channel, &cancel, |heard| {
        let now = match heard {
            crate::connection::Heard::Message(text) => text == wanted,
            // A signal may have been lost: claiming once more costs one XAUTOCLAIM.
            crate::connection::Heard::Missed => true,
        };
        if now {
            claim_now.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .await;
    if let Err(error) = heard {
        tracing::debug!(error = %error, "no claim signals: claims wait for their interval");
    }
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

/// Destroys `group` on `key` and creates it again at `start`.
pub async fn recreate_group(client: &Client, key: &str, group: &str, start: StartFrom) -> Result<(), Error> {
    let _: Value = client.xgroup_destroy(key, group).await?;
    ensure_group(client, key, group, start).await
}

/// The partitions being read, each with its worker's cancellation and task. A released
/// partition leaves this map at once (its worker finishes its batch on its own), so assigning
/// it again right away starts a new worker rather than finding the leaving one.
struct Running {
    by_partition: HashMap<u16, (CancellationToken, TaskId)>,
    read: Arc<Mutex<BTreeSet<u16>>>,
}

impl<H: Handler> Consumer<H> {
    pub fn new(options: ConsumerOptions, handler: H) -> Result<Self, ConsumerError> {
        let group = handler.group();
        let stream = &options.stream;
        let settings = match &options.settings {
            Some(settings) => settings.clone(),
            None => {
                let key = handler.settings_key();
                stream.group(&key).cloned().ok_or_else(|| ConsumerError::UnknownGroup {
                    stream: stream.name.to_string(),
                    group: key.clone(),
                })?
            }
        };
        if let Partitions::Only(partitions) = &options.partitions
            && let Some(&partition) = partitions.iter().find(|&&partition| partition >= stream.partitions)
        {
            return Err(ConsumerError::NoSuchPartition {
                stream: stream.name.to_string(),
                partition,
                partitions: stream.partitions,
            });
        }
        let (sender, commands) = mpsc::channel(64);
        let assignments = Assignments { commands: sender, stream: stream.name.to_string(), group: group.to_string() };
        Ok(Self {
            options,
            group,
            settings,
            handler: Arc::new(handler),
            commands,
            assignments,
            claim_now: Arc::default(),
        })
    }

    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// A handle to assign and release partitions while the consumer runs.
    pub fn assignments(&self) -> Assignments {
        self.assignments.clone()
    }

    fn connect_error(&self) -> impl Fn(Error) -> ConsumerError + '_ {
        |source| ConsumerError::Connect {
            stream: self.options.stream.name.to_string(),
            group: self.group.to_string(),
            source,
        }
    }

    fn check_partition(&self, partition: u16) -> Result<(), ConsumerError> {
        let stream = &self.options.stream;
        if partition >= stream.partitions {
            return Err(ConsumerError::NoSuchPartition {
                stream: stream.name.to_string(),
                partition,
                partitions: stream.partitions,
            });
        }
        Ok(())
    }

    /// Starts a worker for `partition` (after setting up its group as `start` says).
    #[allow(clippy::too_many_arguments)]
    async fn start_partition(
        &self,
        shared: &Client,
        partition: u16,
        start: Start,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        running: &mut Running,
        cancel: &CancellationToken,
    ) -> Result<(), ConsumerError> {
        self.check_partition(partition)?;
        if running.by_partition.contains_key(&partition) {
            return Ok(());
        }
        let keys = self.options.keys.partition(&self.options.stream.name, partition);
        let created = match start {
            Start::Continue => ensure_group(shared, &keys.stream, self.group.as_str(), self.settings.start).await,
            Start::Fresh => recreate_group(shared, &keys.stream, self.group.as_str(), StartFrom::Latest).await,
        };
        created.map_err(|source| ConsumerError::CreateGroup {
            key: keys.stream.clone(),
            group: self.group.to_string(),
            source,
        })?;
        let reader = self.options.connector.dedicated(self.settings.block).await.map_err(self.connect_error())?;
        let worker = PartitionWorker::new(
            shared.clone(),
            reader,
            keys,
            self.group.clone(),
            self.options.consumer_name.clone(),
            self.settings.clone(),
            self.handler.clone(),
            permits.clone(),
            self.claim_now.clone(),
        );
        let partition_cancel = cancel.child_token();
        let task = tasks.spawn(worker.run(partition_cancel.clone()));
        running.by_partition.insert(partition, (partition_cancel, task.id()));
        running.read.lock().expect("partition set lock").insert(partition);
        tracing::debug!(stream = %self.options.stream.name, group = %self.group, partition, "partition assigned");
        Ok(())
    }

    /// Runs until `cancel` fires (then finishes and acknowledges the batches in hand) or a
    /// partition task fails for good.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), ConsumerError> {
        let shared = self.options.connector.shared().await.map_err(self.connect_error())?;
        let initial: Vec<u16> = match &self.options.partitions {
            Partitions::All => (0..self.options.stream.partitions).collect(),
            Partitions::Only(partitions) => partitions.clone(),
            Partitions::Assigned => Vec::new(),
        };
        let permits = Arc::new(Semaphore::new(self.settings.concurrency as usize));
        let mut tasks = JoinSet::new();
        let mut running = Running { by_partition: HashMap::new(), read: Arc::default() };
        for partition in initial {
            self.start_partition(&shared, partition, Start::Continue, &permits, &mut tasks, &mut running, &cancel)
                .await?;
        }
        tracing::info!(
            stream = %self.options.stream.name,
            group = %self.group,
            consumer = %self.options.consumer_name,
            partitions = running.by_partition.len(),
            "consumer started"
        );
        let monitor_cancel = cancel.child_token();
        let signals = tokio::spawn(listen_for_claims(
            self.options.connector.clone(),
            self.options.keys.claim_now_channel(),
            format!("{}:{}", self.options.stream.name, self.group),
            self.claim_now.clone(),
            monitor_cancel.clone(),
        ));
        let monitor = tokio::spawn(status::monitor_group(
            shared.clone(),
            self.options.keys.clone(),
            self.options.stream.clone(),
            self.group.clone(),
            running.read.clone(),
            monitor_cancel.clone(),
        ));

        let mut failure = None;
        let mut commands_open = true;
        loop {
            tokio::select! {
                joined = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let finished = match &joined {
                        Some(Ok((id, ()))) => Some(*id),
                        Some(Err(error)) => Some(error.id()),
                        None => None,
                    };
                    let partition = running.by_partition.iter().find(|(_, (_, task))| Some(*task) == finished).map(|(&partition, _)| partition);
                    if let Some(partition) = partition {
                        running.by_partition.remove(&partition);
                        running.read.lock().expect("partition set lock").remove(&partition);
                    }
                    if let Some(Err(join_error)) = joined {
                        tracing::error!(stream = %self.options.stream.name, group = %self.group, error = %join_error, "partition task failed");
                        failure.get_or_insert_with(|| join_error.to_string());
                        // One dead partition would silently stop its tenants; stop the consumer
                        // so the process supervisor reports it.
                        cancel.cancel();
                    }
                }
                command = self.commands.recv(), if commands_open => match command {
                    Some(Command::Assign { partition, start, done }) => {
                        let result = self.start_partition(&shared, partition, start, &permits, &mut tasks, &mut running, &cancel).await;
                        let _ = done.send(result);
                    }
                    Some(Command::Release { partition, done }) => {
                        if let Some((partition_cancel, _)) = running.by_partition.remove(&partition) {
                            // The worker finishes its batch; its task is reaped above.
                            partition_cancel.cancel();
                            running.read.lock().expect("partition set lock").remove(&partition);
                            tracing::debug!(stream = %self.options.stream.name, group = %self.group, partition, "partition released");
                        }
                        let _ = done.send(());
                    }
                    None => commands_open = false,
                },
                _ = cancel.cancelled(), if tasks.is_empty() => break,
            }
            if cancel.is_cancelled() && tasks.is_empty() {
                break;
            }
        }
        monitor_cancel.cancel();
        let _ = monitor.await;
        let _ = signals.await;
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.quit()).await;
        tracing::info!(stream = %self.options.stream.name, group = %self.group, consumer = %self.options.consumer_name, "consumer stopped");
        match failure {
            Some(message) => Err(ConsumerError::TaskFailed {
                stream: self.options.stream.name.to_string(),
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
