//! What an operator (the `sre` role, or the CLI on the servers) does to the streams after an
//! incident, shared by `chatdesk streams …` and the `/v1/ops` REST routes so both behave alike:
//!
//! - [`report`]: every partition's length, first and last entry, dead letters, what holds its
//!   retention back; every group's lag (exact, or counted and marked estimated when Redis cannot
//!   tell), pending entries and their age, consumers and their idle time.
//! - [`replay`]: re-delivering a range of entries to one group while it keeps running
//!   (`XCLAIM … FORCE`), planned first and acting only when told to.
//! - [`dlq`]: listing, showing, redriving (a paced, cancellable task) and purging dead letters.
//! - [`maintenance`]: handing a dead consumer's pending entries over, pruning gone consumers and
//!   gateway groups.
//! - [`task`]: long actions (replay, redrive) as tasks with progress and cancel, kept in Redis so
//!   any process and the dashboard can follow them.
//! - [`audit`]: every action, recorded in PostgreSQL with who did it.
//! - [`sampler`]: the gauges alerts are written against, and an hour of history for charts.

pub mod audit;
pub mod bound;
pub mod dlq;
pub mod maintenance;
pub mod replay;
pub mod report;
pub mod sampler;
pub mod task;

use std::sync::Arc;

use chatdesk_core::{GroupSettings, KeyScheme, StreamSettings, StreamsConfig};
use chatdesk_streams::RedisClient;

pub use audit::Actor;
pub use bound::Bound;

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The request cannot be carried out as asked (bad name, range, time); nothing was done.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// Another operation of the same kind holds the target (one replay per group, one redrive
    /// per stream family).
    #[error("{0}")]
    Busy(String),
    #[error("Redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("PostgreSQL: {0}")]
    Store(#[from] chatdesk_store::StoreError),
}

pub type Result<T, E = OpsError> = std::result::Result<T, E>;

/// The connections and configuration every operation needs.
#[derive(Clone)]
pub struct Ops {
    pub redis: RedisClient,
    /// Needed by actions (their audit records); `status` works without it.
    pub db: Option<chatdesk_store::Pool>,
    pub keys: KeyScheme,
    pub streams: Arc<StreamsConfig>,
}

/// Whether a caller is one of the deployment's operators: the `sre` role of the operators'
/// tenant, which is `configured` (`CHATDESK_OPS_TENANT`) or else the first tenant created.
/// Partitions are shared by tenants and dead letters hold their messages, so no other tenant's
/// people (owners included) see the streams or act on them.
pub async fn is_operator(
    db: &chatdesk_store::Pool,
    configured: Option<uuid::Uuid>,
    tenant: uuid::Uuid,
    role: chatdesk_core::auth::Role,
) -> Result<bool> {
    if role != chatdesk_core::auth::Role::Sre {
        return Ok(false);
    }
    let operators = match configured {
        Some(tenant) => Some(tenant),
        None => chatdesk_store::directory::first_tenant(db).await?,
    };
    Ok(operators == Some(tenant))
}

/// Where the consumer `ops-…` names begin: consumers the tools create to hold entries until a
/// live consumer of the group takes them.
pub const OPS_CONSUMER_PREFIX: &str = "ops-";

/// The idle time given to entries handed to a group: older than any `claim_idle`, so the
/// group's live consumers take them when told to claim (or at their next claim pass).
pub(crate) const HANDOVER_IDLE_MS: u64 = 365 * 24 * 3600 * 1000;

/// Parks `ids` of `group` under the tools' `consumer`, idle [`HANDOVER_IDLE_MS`], so the group's
/// live consumers claim them. `min_idle_ms` leaves alone an entry a consumer touched meanwhile;
/// `replay` also takes entries the group had acknowledged (FORCE) and counts them as delivered
/// afresh (RETRYCOUNT 0). Returns the ids handed over.
pub(crate) async fn hand_over(
    redis: &chatdesk_streams::RedisClient,
    key: &str,
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
    ids: Vec<String>,
    replay: bool,
) -> std::result::Result<Vec<String>, fred::error::Error> {
    use fred::interfaces::StreamsInterface as _;
    redis
        .xclaim(key, group, consumer, min_idle_ms, ids, Some(HANDOVER_IDLE_MS), None, replay.then_some(0), replay, true)
        .await
}

/// A consumer group as an operator names it, resolved against the configuration.
#[derive(Debug, Clone)]
pub struct GroupTarget {
    pub stream: StreamSettings,
    /// The group's name in Redis (a gateway's is `gateway.<node>`).
    pub group: String,
    pub settings: GroupSettings,
    pub durable: bool,
}

impl Ops {
    pub fn stream(&self, family: &str) -> Result<&StreamSettings> {
        self.streams.stream(family).ok_or_else(|| {
            let known: Vec<&str> = self.streams.streams.keys().map(|name| name.as_str()).collect();
            OpsError::Invalid(format!("unknown stream family {family:?} (known: {})", known.join(", ")))
        })
    }

    /// The families `family` selects: one, or all when `None`.
    pub fn families(&self, family: Option<&str>) -> Result<Vec<StreamSettings>> {
        match family {
            Some(family) => Ok(vec![self.stream(family)?.clone()]),
            None => Ok(self.streams.streams.values().cloned().collect()),
        }
    }

    /// Finds `group` (in `family` when given, else in the one family that has it). A gateway
    /// node's group `gateway.<node>` takes the `gateway` settings.
    pub fn group(&self, family: Option<&str>, group: &str) -> Result<GroupTarget> {
        if group.is_empty() || group.len() > 200 || group.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(OpsError::Invalid(format!("{group:?} is not a consumer group name")));
        }
        let configured = group.split_once('.').map_or(group, |(base, _)| base);
        let mut found = Vec::new();
        for stream in self.families(family)? {
            // `<base>.<node>` names a node's own group, which only live-only groups have.
            let per_node = configured != group;
            if let Some((_, settings)) = stream.groups.iter().find(|(name, settings)| {
                name.as_str() == configured && (!per_node || settings.start == chatdesk_core::config::StartFrom::Latest)
            }) {
                let durable = stream.retention.durable_groups.iter().any(|durable| durable.as_str() == group);
                found.push(GroupTarget { settings: settings.clone(), stream, group: group.to_owned(), durable });
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => {
                let known: Vec<String> = self
                    .families(family)?
                    .iter()
                    .flat_map(|stream| stream.groups.keys().map(move |name| format!("{}/{name}", stream.name)))
                    .collect();
                Err(OpsError::Invalid(format!("unknown consumer group {group:?} (known: {})", known.join(", "))))
            }
            _ => Err(OpsError::Invalid(format!("group {group:?} exists in several families: name one with --family"))),
        }
    }

    /// Tells `group`'s consumers to claim now: entries were just handed back to it. Without the
    /// signal they would be taken at the next claim pass, within `claim_idle / 2`.
    pub(crate) async fn claim_now(&self, family: &str, group: &str) {
        use fred::interfaces::PubsubInterface as _;
        let published: std::result::Result<i64, _> =
            self.redis.publish(self.keys.claim_now_channel(), format!("{family}:{group}")).await;
        if let Err(error) = published {
            tracing::debug!(error = %error, "cannot signal a claim; the group claims at its interval");
        }
    }

    /// The partitions `partition` selects: one (checked against the family), or all.
    pub fn partitions(&self, stream: &StreamSettings, partition: Option<u16>) -> Result<Vec<u16>> {
        match partition {
            Some(partition) if partition >= stream.partitions => Err(OpsError::Invalid(format!(
                "partition {partition} is out of range: {} has partitions 0 to {}",
                stream.name,
                stream.partitions - 1
            ))),
            Some(partition) => Ok(vec![partition]),
            None => Ok((0..stream.partitions).collect()),
        }
    }
}
