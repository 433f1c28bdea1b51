//! Outbound delivery: every agent reply, bot answer and broadcast message leaves through here.
//!
//! Two halves, both in every `sender` process:
//!
//! - **Admission** ([`Sender::admission`]): the `sender` consumer group of the send stream (the
//!   common runtime) moves each `send.requested` entry into the delivery [`queue`], which takes
//!   milliseconds, so the stream never waits for a provider.
//! - **Dispatch** ([`Sender::dispatch`]): per partition, lease due jobs, check the shared rate
//!   [`limits`], call the provider ([`providers`]), and record the result: a `message.status`
//!   event (`sent` with the provider's id, or `failed` with the reason and attempt count), a
//!   retry with exponential backoff and jitter, a pause the provider asked for, or after the
//!   last attempt a dead letter in `dlq.send`. A conversation's messages leave in order, one at
//!   a time; a slow or failing conversation never holds up another.
//!
//! **At most once per entry, and the duplicate window.** A job is held under a lease, and every
//! change to it needs the lease's token, so concurrent senders never both work on it. The result
//! is recorded beside the job right after the provider answers, and the job is removed only after
//! its status event is appended; a sender that crashes once the result is recorded leaves a job
//! that finishes (status event, removal) without calling the provider again. Only a crash
//! between the provider accepting a message and that record (one Redis round trip), or a
//! provider call outliving its lease (the lease is twice the HTTP timeout plus 10 s), can send a
//! message twice. The generic channel carries `Idempotency-Key: <event id>` so its receivers
//! can drop even those; the WhatsApp and Telegram APIs offer no idempotency key.
//!
//! **Statuses.** A status event's id is derived from the message and the status (`sent`,
//! `failed`), and it is appended once per id (the id is remembered for 10 minutes, or twice the
//! lease when that is longer), so a result recorded or sent twice shows once. A `sent` status
//! is appended together with the record, not after it: it is true as soon as the provider
//! accepted the message, whoever ends up holding the job, so a sender that finds its lease lost
//! may still have appended it; the holder's `sent` then carries the same id and is dropped. A
//! `failed` status waits for its record: a sender that could not record its failure (a lost
//! lease, a Redis error) leaves the job to be tried again, and a `failed` already shown would
//! outrank that try's `sent` (statuses only move forward). Either way the job is removed only
//! once its status is appended, so no status is lost with it.
//!
//! **Round trips.** Leasing takes due jobs in batches (one script per up to 50 jobs); admission
//! is one script per batch of entries; every script is called by its SHA. A delivery then takes,
//! one after the other: the rate limits of all its buckets (one script, see [`limits`]), the
//! provider call, the record together with the slots' release and a `sent` status, and the
//! removal: three Redis round trips, two without limits. A failed ending appends its status
//! between its record and the removal: one round trip more. A campaign's message also reads
//! its campaign's state, at most every 200 ms per campaign and process. When a call permit is
//! free, the removal also leases the conversation's next message to the same task, which
//! delivers it next: a conversation with messages waiting pays no lease round trip, nor a wait
//! for its partition's loop, between one message and the next (up to 16 in a row, then it waits
//! its turn behind other conversations).

pub mod job;
pub mod limits;
pub mod metrics;
pub mod providers;
pub mod queue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatdesk_core::config::SEND_STREAM;
use chatdesk_core::events::{Event, MessageStatus, MessageStatusChanged};
use chatdesk_core::{DeadLetter, Envelope, GroupName};
use chatdesk_core::{EventId, KeyScheme, StreamsConfig, TenantId};
use chatdesk_store::directory::InboxKind;
use chatdesk_store::directory::{InboxRecord, contact_external_id, inbox_by_id};
use chatdesk_streams::{Batch, Connections, Handler, HandlerError, Outcomes, Producer, RedisClient, Unavailable};
use fred::interfaces::KeysInterface as _;
use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::job::{Ending, Job, SendRequest};
use crate::limits::{Bucket, BucketKind, Limit, Limiter, Limits, Priority};
use crate::providers::{CallOutcome, Endpoints, Outbound, Providers, provider_name};
use crate::queue::{Finished, Following, Leased, Queue};

/// The consumer group of the send stream.
pub const GROUP: &str = "sender";
/// The stream family outbound messages are requested on.
pub const STREAM: &str = SEND_STREAM;

const LEASE_BATCH: usize = 50;
/// Deliveries a process keeps at once per provider call it may make: a delivery gives its call
/// permit back when the provider answers, and records the answer while the next call goes out.
const DELIVERIES_PER_CALL: usize = 4;
/// How often an idle partition looks for jobs other processes made due.
const IDLE_POLL: Duration = Duration::from_millis(500);
const QUEUE_GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a provider may throttle one message before it counts as failed.
const THROTTLES_PER_ATTEMPT: u32 = 4;
/// A pause when a provider throttles without saying for how long.
const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(1);
/// When PostgreSQL or Redis cannot be asked, try the job again after this.
const DEPENDENCY_RETRY: Duration = Duration::from_secs(2);
const INBOX_CACHE_TTL: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long a status event's id is remembered at least (twice the lease when that is longer):
/// longer than a dead sender's job takes to be leased and sent again, short enough that the
/// keys stay few.
const STATUS_DEDUPE_WINDOW: Duration = Duration::from_secs(600);
/// Contacts whose provider ids are kept in memory before the cache starts over.
const RECIPIENT_CACHE: usize = 100_000;
/// How often a paused campaign's queued message looks again.
const CAMPAIGN_PAUSE_POLL: Duration = Duration::from_millis(250);
/// How long a sender trusts a campaign's state it read.
const CAMPAIGN_STATE_TTL: Duration = Duration::from_millis(200);
/// When an inbox has its share of calls in flight, its next job waits this long for one to
/// return before it is put back in the queue (for as long again).
const INBOX_BUSY_RETRY: Duration = Duration::from_millis(50);

fn job_is_campaign(job: &Job) -> bool {
    job.request.campaign.is_some()
}

/// Calls in flight per inbox in this process; a guard counts one while it lives.
///
/// An inbox's share of the permits is a fair split among the inboxes with calls in flight, and
/// never less than a quarter: alone, an inbox may use every permit; once others have work, a
/// slow provider gives permits back as its calls return, so it never holds the others up for
/// longer than one call.
#[derive(Default)]
struct InFlightCounts {
    counts: Mutex<HashMap<Uuid, usize>>,
    /// Signalled whenever a call returns, for jobs waiting for their inbox's share.
    returned: Notify,
}

struct InFlight {
    counts: Arc<InFlightCounts>,
    inbox: Uuid,
}

impl InFlight {
    fn enter(counts: &Arc<InFlightCounts>, inbox: Uuid, concurrency: usize) -> Option<Self> {
        let mut map = counts.counts.lock().expect("in-flight counts");
        let inboxes = map.len() + usize::from(!map.contains_key(&inbox));
        let share = (concurrency / inboxes).max(concurrency / 4).max(1);
        let count = map.entry(inbox).or_default();
        if *count >= share {
            return None;
        }
        *count += 1;
        Some(Self { counts: counts.clone(), inbox })
    }

    /// Enters, waiting up to `patience` for the inbox's share to free.
    async fn wait(counts: &Arc<InFlightCounts>, inbox: Uuid, concurrency: usize, patience: Duration) -> Option<Self> {
        let deadline = Instant::now() + patience;
        loop {
            let returned = counts.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(entered) = Self::enter(counts, inbox, concurrency) {
                return Some(entered);
            }
            if tokio::time::timeout_at(deadline, returned).await.is_err() {
                return None;
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.counts.counts.lock().expect("in-flight counts");
        if let Some(count) = map.get_mut(&self.inbox) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.inbox);
            }
        }
        drop(map);
        self.counts.returned.notify_waiters();
    }
}

#[derive(Debug, Clone)]
pub struct SenderSettings {
    /// Provider calls one process makes at once, over all partitions. A delivery holds one from
    /// its lease until the provider answers, not while the answer is recorded.
    pub concurrency: usize,
    /// Failed attempts (5xx, timeout, connection error) before a message is dead-lettered.
    pub max_attempts: u32,
    /// The first retry's delay; each further one doubles (with jitter), up to 5 minutes.
    pub backoff: Duration,
    /// How long one provider call may take.
    pub timeout: Duration,
    pub limits: Limits,
    pub endpoints: Endpoints,
    /// Where a generic inbox's outbound URL may point (`CHATDESK_OUTBOUND_ALLOW`).
    pub outbound: chatdesk_core::outbound::OutboundPolicy,
}

impl Default for SenderSettings {
    fn default() -> Self {
        Self {
            concurrency: 256,
            max_attempts: 8,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            limits: Limits::default(),
            endpoints: Endpoints::default(),
            outbound: chatdesk_core::outbound::OutboundPolicy::default(),
        }
    }
}

impl SenderSettings {
    fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(10)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("streams.toml declares no `{STREAM}` stream")]
    NoSendStream,
    #[error("cannot build the HTTP client")]
    Http(#[from] reqwest::Error),
}

/// The conversation's next job, leased by the call that finished the last one, with the call
/// permit taken for it: the same task delivers it next, without a lease round trip.
struct Chained {
    leased: Leased,
    call: OwnedSemaphorePermit,
}

type Next = Option<Chained>;

/// Jobs of one conversation a task delivers one after the other before it leaves the next to
/// the partition's loop, behind whatever else is due.
const MAX_STREAK: u32 = 16;

/// A failure that leaves the job where it is (its lease runs out and it is tried again).
#[derive(Debug, thiserror::Error)]
enum DeliverError {
    #[error("Redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("appending the status event: {0}")]
    Produce(#[from] chatdesk_streams::ProduceError),
}

/// An inbox as looked up at a time (`None`: it did not exist).
type CachedInbox = (Instant, Option<Arc<InboxRecord>>);

#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Queue,
    limiter: Limiter,
    providers: Providers,
    db: chatdesk_store::Pool,
    producer: Producer,
    settings: SenderSettings,
    node: String,
    holder: String,
    partitions: u16,
    wake: Vec<Notify>,
    /// Provider calls in flight (`concurrency`).
    calls: Arc<Semaphore>,
    /// Deliveries under way, calling or recording (see [`DELIVERIES_PER_CALL`]).
    deliveries: Arc<Semaphore>,
    /// Set once dispatch stops: a finished job's next one is no longer leased to its task.
    stopping: AtomicBool,
    inboxes: Mutex<HashMap<Uuid, CachedInbox>>,
    /// Contacts' provider ids (they never change once a contact exists).
    recipients: Mutex<HashMap<(Uuid, Uuid), String>>,
    in_flight: Arc<InFlightCounts>,
    campaign_states: Mutex<HashMap<Uuid, (Instant, Option<String>)>>,
    redis: RedisClient,
    keys: KeyScheme,
}

impl Sender {
    pub fn new(
        redis: RedisClient,
        db: chatdesk_store::Pool,
        keys: KeyScheme,
        streams: Arc<StreamsConfig>,
        node: String,
        settings: SenderSettings,
    ) -> Result<Self, SenderError> {
        Self::over(redis.into(), db, keys, streams, node, settings)
    }

    /// A sender whose delivery queue and status events take `connections` in turn (see
    /// [`Queue::over`]); the first also serves the rate limits and the campaigns' states.
    pub fn over(
        connections: Connections,
        db: chatdesk_store::Pool,
        keys: KeyScheme,
        streams: Arc<StreamsConfig>,
        node: String,
        settings: SenderSettings,
    ) -> Result<Self, SenderError> {
        let send = streams.stream(STREAM).ok_or(SenderError::NoSendStream)?;
        let partitions = send.partitions;
        let redis = connections.first().clone();
        // Status events carry whole entries, one per delivery: they take the connections in
        // turn too, rather than queueing on the first behind the rate limits.
        let producer = Producer::over(connections.clone(), keys.clone(), streams.clone());
        let queue = Queue::over(connections, keys.clone(), send.name.clone());
        let (state_redis, state_keys) = (redis.clone(), keys.clone());
        let limiter = Limiter::new(redis.clone(), keys.clone(), settings.limits.clone());
        let providers = Providers::new(settings.endpoints.clone(), settings.timeout, settings.outbound.clone())?;
        let inner = Inner {
            queue,
            limiter,
            providers,
            db,
            producer,
            // Lease tokens must differ between processes and between runs of one process.
            holder: format!("{node}:{}", Uuid::new_v4().simple()),
            node,
            partitions,
            wake: (0..partitions).map(|_| Notify::new()).collect(),
            calls: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            deliveries: Arc::new(Semaphore::new(settings.concurrency.max(1).saturating_mul(DELIVERIES_PER_CALL))),
            stopping: AtomicBool::new(false),
            settings,
            inboxes: Mutex::new(HashMap::new()),
            recipients: Mutex::new(HashMap::new()),
            in_flight: Arc::new(InFlightCounts::default()),
            campaign_states: Mutex::new(HashMap::new()),
            redis: state_redis,
            keys: state_keys,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The send stream's consumer-group handler: admits requests into the delivery queue.
    pub fn admission(&self) -> Admission {
        Admission { inner: self.inner.clone() }
    }

    /// Delivers queued messages until `cancel` fires, then lets the calls in flight finish and
    /// record their results (up to the HTTP timeout).
    pub async fn dispatch(&self, cancel: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut loops = tokio::task::JoinSet::new();
        for partition in 0..self.inner.partitions {
            loops.spawn(self.inner.clone().run_partition(partition, cancel.clone(), tracker.clone()));
        }
        while loops.join_next().await.is_some() {}
        self.inner.stopping.store(true, Ordering::Relaxed);
        tracker.close();
        if tokio::time::timeout(self.inner.settings.timeout + Duration::from_secs(5), tracker.wait()).await.is_err() {
            tracing::warn!("deliveries still in flight at shutdown; their leases will run out and they are retried");
        }
    }
}

/// Admits `send.requested` entries into the delivery queue.
pub struct Admission {
    inner: Arc<Inner>,
}

impl Handler for Admission {
    fn group(&self) -> GroupName {
        GroupName::parse(GROUP).expect("a valid group name")
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        let mut outcomes = Outcomes::all_done();
        let mut jobs = Vec::with_capacity(batch.entries.len());
        for entry in &batch.entries {
            match entry.envelope.record::<SendRequest>() {
                Ok(request) => jobs.push(Job::new(entry.envelope.tenant.0, entry.id.to_string(), request)),
                Err(error) => {
                    outcomes.reject(entry.id, format!("not a send request: {error}"));
                }
            }
        }
        if let Err(error) = self.inner.queue.admit(batch.partition, &jobs).await {
            return Err(Box::new(Unavailable(format!("Redis: {error}"))));
        }
        if let Some(wake) = self.inner.wake.get(usize::from(batch.partition)) {
            wake.notify_one();
        }
        Ok(outcomes)
    }
}

/// Records how long a step of a delivery took.
fn step(name: &'static str, started: Instant) {
    ::metrics::histogram!(metrics::STEP_SECONDS, "step" => name).record(started.elapsed().as_secs_f64());
}

fn backoff(base: Duration, failures: u32) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20))).min(BACKOFF_MAX);
    // Jitter over the upper half keeps many retries from arriving together.
    let half = exponential / 2;
    half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis().max(1) as u64))
}

/// The status event of a delivery; its id is derived from the message's, so recording the same
/// result twice (after a crash) stores one event.
fn status_event(
    job: &Job,
    status: MessageStatus,
    reason: Option<String>,
    provider_message_id: Option<String>,
    code: Option<String>,
) -> Envelope {
    let event = Event::MessageStatus(MessageStatusChanged {
        message_id: job.request.message_id,
        conversation_id: job.request.conversation_id,
        status,
        reason,
        provider_message_id,
        attempts: Some(job.attempts),
        code,
    });
    let id = Uuid::new_v5(&job.request.message_id, status.as_str().as_bytes());
    Envelope::of(TenantId(job.tenant), &event).with_event_id(EventId(id))
}

/// A job given up on, in the one dead-letter format: the send-stream entry it came from (a send
/// request's event id is its message's id, its time the entry's), the error, who gave up.
fn dead_letter(job: &Job, partition: u16, error: &str, consumer: &str) -> DeadLetter {
    let mut original = Envelope::of(TenantId(job.tenant), &job.request).with_event_id(EventId(job.request.message_id));
    if let Ok(entry) = job.entry.parse::<chatdesk_core::EntryId>() {
        original.time_ms = entry.millis;
    }
    DeadLetter {
        original_id: job.entry.clone(),
        family: STREAM.to_owned(),
        partition,
        group: GROUP.to_owned(),
        consumer: consumer.to_owned(),
        error: error.to_owned(),
        deliveries: u64::from(job.attempts),
        time_ms: chatdesk_core::envelope::now_ms(),
        original: original.encode().into_iter().map(|(field, value)| (field.to_owned(), value)).collect(),
    }
}

impl Inner {
    /// A campaign's state (running, paused, cancelled), read at most every
    /// [`CAMPAIGN_STATE_TTL`] per campaign: a pause takes effect within that.
    async fn campaign_state(&self, campaign: Uuid) -> Result<Option<String>, fred::error::Error> {
        if let Some((at, state)) = self.campaign_states.lock().expect("campaign states").get(&campaign)
            && at.elapsed() < CAMPAIGN_STATE_TTL
        {
            return Ok(state.clone());
        }
        let state: Option<String> = self.redis.get(self.keys.campaign_state(&campaign)).await?;
        let mut states = self.campaign_states.lock().expect("campaign states");
        if states.len() >= 10_000 {
            states.clear();
        }
        states.insert(campaign, (Instant::now(), state.clone()));
        Ok(state)
    }

    /// A delivery's permits: its place among the deliveries, then a call, always in that order
    /// (a call is never held while waiting for a place). A conversation's next job takes its
    /// call without waiting, or is not leased to its task (see `remove`).
    async fn permits(&self) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        let delivery = self.deliveries.clone().acquire_owned().await.expect("the semaphore is never closed");
        let call = self.calls.clone().acquire_owned().await.expect("the semaphore is never closed");
        (delivery, call)
    }

    async fn run_partition(self: Arc<Self>, partition: u16, cancel: CancellationToken, tracker: TaskTracker) {
        let lease_ms = self.settings.lease().as_millis() as u64;
        let mut gauge_at = Instant::now();
        let mut errors = 0u32;
        loop {
            let permits = tokio::select! {
                permits = self.permits() => permits,
                _ = cancel.cancelled() => return,
            };
            if Instant::now() >= gauge_at {
                gauge_at = Instant::now() + QUEUE_GAUGE_INTERVAL;
                if let Ok(queued) = self.queue.len(partition).await {
                    ::metrics::gauge!(metrics::QUEUED_JOBS, "partition" => partition.to_string()).set(queued as f64);
                }
            }
            let free = self.calls.available_permits().min(self.deliveries.available_permits());
            let want = (1 + free).min(LEASE_BATCH);
            let started = Instant::now();
            let leased = self.queue.lease(partition, want, lease_ms, &self.holder).await;
            step("lease", started);
            let leased = match leased {
                Ok(leased) => {
                    errors = 0;
                    leased
                }
                Err(error) => {
                    errors += 1;
                    tracing::warn!(partition, error = %error, "cannot lease deliveries");
                    drop(permits);
                    let pause = backoff(Duration::from_millis(200), errors).min(Duration::from_secs(5));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = cancel.cancelled() => return,
                    }
                    continue;
                }
            };
            if leased.is_empty() {
                drop(permits);
                self.wait_for_work(partition, &cancel).await;
                continue;
            }
            let mut permits = Some(permits);
            for job in leased {
                let (delivery, call) = match permits.take() {
                    Some(permits) => permits,
                    None => self.permits().await,
                };
                tracker.spawn(self.clone().process(job, delivery, call, cancel.clone()));
            }
        }
    }

    async fn wait_for_work(&self, partition: u16, cancel: &CancellationToken) {
        let due = self.queue.next_due_in(partition).await.ok().flatten().map(Duration::from_millis);
        let pause = due.map_or(IDLE_POLL, |due| due.min(IDLE_POLL));
        if pause.is_zero() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.wake[usize::from(partition)].notified() => {}
            _ = cancel.cancelled() => {}
        }
    }

    /// Delivers `leased`, then each next job of its conversation that finishing the last one
    /// leased to this task together with a call permit.
    async fn process(
        self: Arc<Self>,
        mut leased: Leased,
        _delivery: OwnedSemaphorePermit,
        mut call: OwnedSemaphorePermit,
        cancel: CancellationToken,
    ) {
        loop {
            ::metrics::gauge!(metrics::IN_FLIGHT).increment(1.0);
            let span = tracing::info_span!(
                "delivery",
                message = %leased.job.request.message_id,
                conversation = %leased.job.request.conversation_id,
                attempt = leased.job.attempts + 1,
            );
            let next = match self.deliver(&mut leased, call).instrument(span).await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(message = %leased.job.request.message_id, error = %error, "delivery not recorded; it will be tried again");
                    None
                }
            };
            ::metrics::gauge!(metrics::IN_FLIGHT).decrement(1.0);
            let Some(next) = next else { return };
            if cancel.is_cancelled() {
                drop(next.call);
                self.give_back(&next.leased).await;
                return;
            }
            (leased, call) = (next.leased, next.call);
        }
    }

    /// Stopping: a job leased to this task goes back to the queue now rather than when its lease
    /// ends.
    async fn give_back(&self, leased: &Leased) {
        if let Err(error) = self.queue.update(leased, Some(0)).await {
            tracing::warn!(message = %leased.job.request.message_id, error = %error, "cannot give back a leased job; it is leased again when its lease ends");
        }
    }

    /// The inbox, if it exists in the job's tenant (cached briefly).
    async fn inbox(&self, tenant: Uuid, id: Uuid) -> Result<Option<Arc<InboxRecord>>, chatdesk_store::StoreError> {
        if let Some((at, inbox)) = self.inboxes.lock().expect("inbox cache").get(&id)
            && at.elapsed() < INBOX_CACHE_TTL
        {
            return Ok(inbox.clone().filter(|inbox| inbox.tenant_id == tenant));
        }
        let inbox = inbox_by_id(&self.db, id).await?.map(Arc::new);
        self.inboxes.lock().expect("inbox cache").insert(id, (Instant::now(), inbox.clone()));
        Ok(inbox.filter(|inbox| inbox.tenant_id == tenant))
    }

    /// The contact's provider id, if the contact exists in the job's tenant.
    async fn recipient(&self, tenant: Uuid, contact: Uuid) -> Result<Option<String>, chatdesk_store::StoreError> {
        if let Some(to) = self.recipients.lock().expect("recipient cache").get(&(tenant, contact)) {
            return Ok(Some(to.clone()));
        }
        let to = contact_external_id(&self.db, tenant, contact).await?;
        if let Some(to) = &to {
            let mut cache = self.recipients.lock().expect("recipient cache");
            if cache.len() >= RECIPIENT_CACHE {
                cache.clear();
            }
            cache.insert((tenant, contact), to.clone());
        }
        Ok(to)
    }

    /// One delivery; `call` is given back as soon as the provider answers (before the answer is
    /// recorded).
    async fn deliver(&self, leased: &mut Leased, call: OwnedSemaphorePermit) -> Result<Next, DeliverError> {
        if let Some(ending) = leased.job.ending.clone() {
            // Recorded before a crash: finish without calling the provider again.
            return self.conclude(leased, ending, "unknown").await;
        }
        let job = &leased.job;
        let prepared = Instant::now();
        let inbox = match self.inbox(job.tenant, job.request.inbox_id).await {
            Ok(Some(inbox)) => inbox,
            Ok(None) => {
                let ending =
                    Ending::Failed { reason: "the inbox no longer exists".to_owned(), dead_letter: false, code: None };
                return self.end(leased, ending, "unknown").await;
            }
            Err(error) => return self.postpone(leased, DEPENDENCY_RETRY, &format!("PostgreSQL: {error}")).await,
        };
        let provider = provider_name(inbox.kind);
        let to = if inbox.kind == InboxKind::Web {
            String::new()
        } else if let Some(campaign) = &job.request.campaign {
            campaign.to.clone()
        } else {
            match self.recipient(job.tenant, job.request.contact_id).await {
                Ok(Some(to)) => to,
                Ok(None) => {
                    let ending = Ending::Failed {
                        reason: "the contact no longer exists".to_owned(),
                        dead_letter: false,
                        code: None,
                    };
                    return self.end(leased, ending, provider).await;
                }
                Err(error) => return self.postpone(leased, DEPENDENCY_RETRY, &format!("PostgreSQL: {error}")).await,
            }
        };
        let mut buckets = Providers::buckets(&inbox, &to);
        let mut priority = Priority::Reply;
        if let Some(campaign) = &job.request.campaign {
            priority = Priority::Campaign;
            if campaign.expires_at_ms.is_some_and(|expires| chatdesk_core::envelope::now_ms() >= expires) {
                let ending = Ending::Failed {
                    reason: "the campaign's expiry passed before the message could be sent".to_owned(),
                    dead_letter: false,
                    code: Some("expired".to_owned()),
                };
                return self.end(leased, ending, provider).await;
            }
            let state = self.campaign_state(campaign.campaign_id).await?;
            match state.as_deref().map(chatdesk_core::campaign::state_in) {
                Some("paused") => {
                    ::metrics::counter!(metrics::CAMPAIGN_HELD_TOTAL, "provider" => provider).increment(1);
                    self.queue.update(leased, Some(CAMPAIGN_PAUSE_POLL.as_millis() as u64)).await?;
                    return Ok(None);
                }
                Some("cancelled") => {
                    let ending = Ending::Failed {
                        reason: "the campaign was cancelled".to_owned(),
                        dead_letter: false,
                        code: Some("campaign_cancelled".to_owned()),
                    };
                    return self.end(leased, ending, provider).await;
                }
                _ => {}
            }
            let limit = Limit { count: campaign.rate_per_sec.max(1), window: Duration::from_secs(1) };
            buckets.insert(0, Bucket::new(BucketKind::CampaignSender, inbox.id.to_string()).with_limit(limit));
        }
        step("prepare", prepared);
        // Past its share of the permits (see `InFlight`), an inbox's job waits briefly for one of
        // its calls to return, then goes back to the queue.
        let concurrency = self.settings.concurrency;
        let Some(in_flight) = InFlight::wait(&self.in_flight, inbox.id, concurrency, INBOX_BUSY_RETRY).await else {
            ::metrics::counter!(metrics::INBOX_BUSY_TOTAL).increment(1);
            self.queue.update(leased, Some(INBOX_BUSY_RETRY.as_millis() as u64)).await?;
            return Ok(None);
        };
        // Unique per try: the lease token is.
        let member = format!("{}:{}", job.request.message_id, leased.token);
        let limited = Instant::now();
        let acquired = self.limiter.acquire(&buckets, &member, priority).await?;
        step("limits", limited);
        let taken = match acquired {
            Ok(taken) => taken,
            Err((wait, bucket)) => {
                ::metrics::counter!(metrics::RATE_LIMIT_WAITS_TOTAL, "provider" => provider, "bucket" => bucket.name())
                    .increment(1);
                ::metrics::histogram!(metrics::RATE_LIMIT_WAIT_SECONDS, "provider" => provider, "bucket" => bucket.name())
                    .record(wait.as_secs_f64());
                if priority == Priority::Campaign {
                    ::metrics::histogram!(metrics::CAMPAIGN_THROTTLED_SECONDS, "inbox" => inbox.id.to_string())
                        .record(wait.as_secs_f64());
                }
                self.queue.update(leased, Some(wait.as_millis() as u64)).await?;
                // The partition's loop may be asleep until a later due time: let it see this one.
                self.wake[usize::from(leased.partition)].notify_one();
                return Ok(None);
            }
        };

        leased.job.attempts += 1;
        let started = Instant::now();
        let delivery = self.providers.send(&Outbound { job: &leased.job, inbox: &inbox, to: &to }).await;
        if job_is_campaign(&leased.job) {
            ::metrics::counter!(metrics::CAMPAIGN_SENDS_TOTAL, "inbox" => inbox.id.to_string()).increment(1);
        }
        ::metrics::histogram!(metrics::PROVIDER_LATENCY_SECONDS, "provider" => provider)
            .record(started.elapsed().as_secs_f64());
        step("call", started);
        // The call is over: the next one may go out while this answer is recorded.
        drop((call, in_flight));
        // Giving the slots back and recording the outcome touch different keys: they go together.
        let (released, recorded) =
            tokio::join!(self.limiter.release(&taken), self.record_outcome(leased, delivery, &buckets, provider));
        if let Err(error) = released {
            tracing::warn!(error = %error, "cannot give back a rate-limit slot; it lapses by itself");
        }
        recorded
    }

    /// The provider accepted the message: records that on the job and appends the `sent` status
    /// at once, then removes the job once both are done (see the crate docs for why the status
    /// need not wait for the record).
    async fn sent(
        &self,
        leased: &mut Leased,
        provider_message_id: Option<String>,
        provider: &'static str,
    ) -> Result<Next, DeliverError> {
        let ending = Ending::Sent { provider_message_id };
        leased.job.ending = Some(ending.clone());
        let started = Instant::now();
        let (recorded, appended) =
            tokio::join!(self.queue.record(leased, &ending), self.append_status(&leased.job, &ending));
        step("record", started);
        if !recorded? {
            // Another sender holds the job: it finishes it. The status appended here is true (this
            // call was accepted) and carries the id that sender's `sent` would have.
            ::metrics::counter!(metrics::LEASES_LOST_TOTAL).increment(1);
            return Ok(None);
        }
        appended?;
        self.remove(leased, &ending, provider).await
    }

    /// What follows the provider's answer: the ending recorded and concluded, or a retry.
    async fn record_outcome(
        &self,
        leased: &mut Leased,
        delivery: CallOutcome,
        buckets: &[Bucket],
        provider: &'static str,
    ) -> Result<Next, DeliverError> {
        let outcome = match &delivery {
            CallOutcome::Sent { .. } => "sent",
            CallOutcome::Throttled { .. } => "throttled",
            CallOutcome::Transient { .. } => "transient",
            CallOutcome::Permanent { .. } => "permanent",
        };
        ::metrics::counter!(metrics::SENDS_TOTAL, "provider" => provider, "outcome" => outcome).increment(1);
        match delivery {
            CallOutcome::Sent { provider_message_id } => self.sent(leased, provider_message_id, provider).await,
            CallOutcome::Permanent { reason } => {
                tracing::info!(reason = %reason, "the provider refused the message");
                self.end(leased, Ending::Failed { reason, dead_letter: false, code: None }, provider).await
            }
            CallOutcome::Throttled { retry_after, bucket, reason } => {
                let pause = retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE);
                let throttled = bucket.and_then(|kind| buckets.iter().find(|bucket| bucket.kind == kind));
                let pause_bucket = async {
                    match throttled {
                        Some(bucket) => self.limiter.pause(buckets, bucket, pause).await,
                        None => Ok(()),
                    }
                };
                if leased.job.attempts >= self.settings.max_attempts.saturating_mul(THROTTLES_PER_ATTEMPT) {
                    pause_bucket.await?;
                    let reason = format!("still throttled after {} attempts: {reason}", leased.job.attempts);
                    return self.end(leased, Ending::Failed { reason, dead_letter: true, code: None }, provider).await;
                }
                ::metrics::counter!(metrics::RETRIES_TOTAL, "provider" => provider).increment(1);
                leased.job.last_error = Some(reason);
                // The pause and the retry touch different keys: they go together.
                let (paused, updated) =
                    tokio::join!(pause_bucket, self.queue.update(leased, Some(pause.as_millis() as u64)));
                updated?;
                paused?;
                Ok(None)
            }
            CallOutcome::Transient { reason, retry_after } => {
                leased.job.failures += 1;
                if leased.job.failures >= self.settings.max_attempts {
                    return self.end(leased, Ending::Failed { reason, dead_letter: true, code: None }, provider).await;
                }
                tracing::info!(reason = %reason, failures = leased.job.failures, "delivery failed, retrying");
                ::metrics::counter!(metrics::RETRIES_TOTAL, "provider" => provider).increment(1);
                let delay = backoff(self.settings.backoff, leased.job.failures).max(retry_after.unwrap_or_default());
                leased.job.last_error = Some(reason);
                self.queue.update(leased, Some(delay.as_millis() as u64)).await?;
                Ok(None)
            }
        }
    }

    /// Tries the job again later without counting an attempt (a dependency of ours failed).
    async fn postpone(&self, leased: &mut Leased, delay: Duration, why: &str) -> Result<Next, DeliverError> {
        tracing::warn!(error = %why, "cannot prepare a delivery, postponing it");
        self.queue.update(leased, Some(delay.as_millis() as u64)).await?;
        Ok(None)
    }

    /// Records how the job ended, then concludes it. For a failed ending (and any ending without
    /// a provider call) the record comes before the status, see the crate docs.
    async fn end(&self, leased: &mut Leased, ending: Ending, provider: &'static str) -> Result<Next, DeliverError> {
        leased.job.ending = Some(ending.clone());
        let started = Instant::now();
        let recorded = self.queue.record(leased, &ending).await?;
        step("record", started);
        if !recorded {
            ::metrics::counter!(metrics::LEASES_LOST_TOTAL).increment(1);
            return Ok(None);
        }
        self.conclude(leased, ending, provider).await
    }

    /// Appends the status event, then removes the job (dead-lettering it when it gave up).
    async fn conclude(&self, leased: &Leased, ending: Ending, provider: &'static str) -> Result<Next, DeliverError> {
        // A sender that dies after this append and before the removal leaves the job to be
        // concluded again, and its status appended again under the same event id: appended
        // once, so no socket shows it twice.
        self.append_status(&leased.job, &ending).await?;
        self.remove(leased, &ending, provider).await
    }

    /// Appends the job's status event for `ending`, once per event id (see [`status_event`]).
    async fn append_status(&self, job: &Job, ending: &Ending) -> Result<(), DeliverError> {
        let entry = match ending {
            Ending::Sent { provider_message_id } => {
                status_event(job, MessageStatus::Sent, None, provider_message_id.clone(), None)
            }
            Ending::Failed { reason, code, .. } => {
                status_event(job, MessageStatus::Failed, Some(reason.clone()), None, code.clone())
            }
        };
        // Longer than a lease, so a status appended again by the job's next holder is still
        // recognised.
        let window = STATUS_DEDUPE_WINDOW.max(self.settings.lease() * 2);
        let started = Instant::now();
        let once = format!("status:{}", entry.event_id);
        self.producer.append_once(chatdesk_core::config::EVENTS_STREAM, &entry, &once, window).await?;
        step("status", started);
        Ok(())
    }

    /// Removes the job whose status is appended (dead-lettering it when it gave up) and leases
    /// its conversation's next one to this task.
    async fn remove(&self, leased: &Leased, ending: &Ending, provider: &'static str) -> Result<Next, DeliverError> {
        let job = &leased.job;
        if job_is_campaign(job) {
            let result = match ending {
                Ending::Sent { .. } => "sent",
                Ending::Failed { code: Some(code), .. } if code == "campaign_cancelled" => "skipped",
                Ending::Failed { code: Some(code), .. } if code == "expired" => "expired",
                Ending::Failed { .. } => "failed",
            };
            ::metrics::counter!(metrics::CAMPAIGN_RESULTS_TOTAL, "inbox" => job.request.inbox_id.to_string(), "result" => result)
                .increment(1);
        }
        let dead_letter_reason = match ending {
            Ending::Failed { reason, dead_letter: true, .. } => Some(reason.as_str()),
            _ => None,
        };
        let letter = dead_letter_reason.map(|error| dead_letter(job, leased.partition, error, &self.node));
        let started = Instant::now();
        // The next job is leased to this task only with a call permit free now (so its lease
        // never runs while it waits for one), while no partition loop may be waiting for a place,
        // and for at most `MAX_STREAK` jobs in a row: a busy conversation does not keep others
        // waiting.
        let chain = !self.stopping.load(Ordering::Relaxed)
            && leased.streak + 1 < MAX_STREAK
            && self.deliveries.available_permits() > 0;
        let call = if chain { self.calls.clone().try_acquire_owned().ok() } else { None };
        let lease = call.as_ref().map(|_| (self.settings.lease().as_millis() as u64, self.holder.as_str()));
        let finished = self.queue.finish(leased, letter.as_ref(), lease).await?;
        step("finish", started);
        let Finished::Done(following) = finished else {
            ::metrics::counter!(metrics::LEASES_LOST_TOTAL).increment(1);
            return Ok(None);
        };
        if dead_letter_reason.is_some() {
            ::metrics::counter!(metrics::DEAD_LETTERS_TOTAL, "provider" => provider).increment(1);
            tracing::warn!(message = %job.request.message_id, attempts = job.attempts, "delivery dead-lettered");
        }
        Ok(match (following, call) {
            (Following::Leased(next), Some(call)) => Some(Chained { leased: *next, call }),
            // Not asked for: cannot happen; the job's lease lapses and it is leased again.
            (Following::Leased(_), None) => None,
            (Following::Readied, _) => {
                // Due now for any sender, and this partition's loop may be asleep.
                self.wake[usize::from(leased.partition)].notify_one();
                None
            }
            (Following::None, _) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for failures in 1..12 {
            let ceiling = Duration::from_secs(1).saturating_mul(1 << (failures - 1)).min(BACKOFF_MAX);
            let delay = backoff(Duration::from_secs(1), failures);
            assert!(delay >= ceiling / 2 && delay <= ceiling + Duration::from_millis(1), "{failures}: {delay:?}");
        }
    }
}
