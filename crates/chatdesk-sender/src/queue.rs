//! The delivery queue: per send-stream partition, jobs waiting for their turn, in Redis.
//!
//! The send stream's `sender` group only *admits* entries here (fast, idempotent), so a slow or
//! failing provider never holds the stream. Jobs then move by these rules, each one Lua script
//! on the partition's slot (every key carries the `{send:<p>}` tag):
//!
//! - Each conversation is a *lane* (a sorted set in admission order). Only a lane's first job is
//!   *ready*; the next one becomes ready when it finishes. A conversation's messages therefore go
//!   out in order, one at a time, while other conversations go out in parallel.
//! - `ready` is a sorted set by due time. A sender *leases* due jobs: their due time moves to
//!   now + lease, and a lease token is recorded. A sender that dies holding a lease loses it when
//!   the lease ends; the job is then leased again by anyone.
//! - A retry or a rate-limit wait *reschedules* the job (new due time, lease released). Every
//!   change requires the current lease token: a sender whose lease ran out cannot finish a job
//!   another sender now holds.
//! - A job's *ending* (sent, or failed for good) is recorded beside the job, in a hash of its
//!   own, with the provider calls made: a few bytes instead of the whole job written again, and
//!   a job leased again after a crash comes back with it. A `failed` status is appended only
//!   after its record, a `sent` one together with it (see the crate docs).
//! - *Finishing* removes the job and its ending, leaves a `done` marker (so a redelivered stream
//!   entry is not admitted again), readies the lane's next job, and dead-letters the job to
//!   `dlq.send` when asked, all at once. A finishing sender may take the next job's lease in the
//!   same call: a busy conversation's messages then follow each other without a lease round
//!   trip between them, as a worker of a job queue takes its next job when it reports the last
//!   one done.
//!
//! Times come from Redis (`TIME`), so every sender process agrees on them.

use std::sync::LazyLock;

use chatdesk_core::{DeadLetter, KeyScheme, PartitionKeys, StreamName};
use chatdesk_streams::{Connections, Script, dead_letter};
use fred::prelude::*;
use uuid::Uuid;

use crate::job::{Ending, Job};

/// How long a finished job's id is remembered: as long as the send stream keeps entries.
const DONE_TTL_SECONDS: u64 = 8 * 86_400;

const NOW: &str =
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// A whole batch in one call: KEYS = jobs, ready, seq, endings, then each job's lane and done
/// marker; ARGV = each job's id and JSON, in stream order (a lane's jobs keep that order).
const ADMIT: &str = r#"
local admitted = 0
for index = 1, #ARGV / 2 do
  local id, job = ARGV[index * 2 - 1], ARGV[index * 2]
  local lane, done = KEYS[3 + index * 2], KEYS[4 + index * 2]
  if redis.call('EXISTS', done) == 0 and redis.call('HEXISTS', KEYS[1], id) == 0 then
    redis.call('HSET', KEYS[1], id, job)
    redis.call('HDEL', KEYS[4], id)
    local seq = redis.call('INCR', KEYS[3])
    redis.call('ZADD', lane, seq, id)
    if redis.call('ZCARD', lane) == 1 then
      redis.call('ZADD', KEYS[2], now, id)
    end
    admitted = admitted + 1
  end
end
return admitted
"#;

const LEASE: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for index, id in ipairs(ids) do
  local job = redis.call('HGET', KEYS[2], id)
  if job then
    local token = ARGV[3] .. ':' .. index
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id)
    redis.call('HSET', KEYS[3], id, token)
    out[#out + 1] = id
    out[#out + 1] = token
    out[#out + 1] = job
    out[#out + 1] = redis.call('HGET', KEYS[4], id) or ''
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
  end
end
return out
"#;

const UPDATE: &str = r#"
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return 1
"#;

/// KEYS = endings, leases; ARGV = id, token, the ending's JSON (see `RecordedEnding`).
const RECORD: &str = r#"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

const FINISH: &str = r#"
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
  return {'lost'}
end
if ARGV[4] == '1' then
  dead_letter(KEYS[6], 7)
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('SET', KEYS[5], '1', 'EX', tonumber(ARGV[3]))
-- A lane entry whose job is gone would hold its conversation forever: it is dropped.
local following, job
repeat
  following = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
  if not following then
    return {'done'}
  end
  job = redis.call('HGET', KEYS[2], following)
  if not job then
    redis.call('ZREM', KEYS[4], following)
    redis.call('ZREM', KEYS[1], following)
    redis.call('HDEL', KEYS[3], following)
    redis.call('HDEL', KEYS[7], following)
  end
until job
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), following)
  redis.call('HSET', KEYS[3], following, ARGV[6])
  return {'done', following, ARGV[6], job, redis.call('HGET', KEYS[7], following) or ''}
end
redis.call('ZADD', KEYS[1], now, following)
return {'done', following}
"#;

const NEXT_DUE: &str = r#"
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not first[1] then
  return -1
end
return math.max(0, tonumber(first[2]) - now)
"#;

/// What is recorded beside a job that ended: the ending and the provider calls made, so a job
/// concluded by its next holder reports them as its last holder would have.
#[derive(serde::Serialize)]
struct RecordedEnding<'a> {
    #[serde(flatten)]
    ending: &'a Ending,
    attempts: u32,
}

#[derive(serde::Deserialize)]
struct StoredEnding {
    #[serde(flatten)]
    ending: Ending,
    #[serde(default)]
    attempts: u32,
}

/// A job as stored, with its ending when one was recorded (`""` when none was); on error, which
/// of the two cannot be read.
fn with_ending(job: &str, ending: &str) -> Result<Job, (&'static str, serde_json::Error)> {
    let mut job: Job = serde_json::from_str(job).map_err(|error| ("job", error))?;
    if !ending.is_empty() {
        let stored: StoredEnding = serde_json::from_str(ending).map_err(|error| ("ending", error))?;
        job.ending = Some(stored.ending);
        job.attempts = job.attempts.max(stored.attempts);
    }
    Ok(job)
}

/// A job this sender holds.
#[derive(Debug, Clone)]
pub struct Leased {
    pub partition: u16,
    pub token: String,
    pub job: Job,
    /// Jobs of the same conversation its holder finished one after the other right before
    /// leasing this one ([`Queue::finish`]); 0 when leased by [`Queue::lease`].
    pub streak: u32,
}

/// What finishing a job did.
#[derive(Debug)]
pub enum Finished {
    /// Nothing: the lease was lost, another sender holds the job now.
    Lost,
    /// The job is gone; its conversation's next job, if any, is as [`Following`] says.
    Done(Following),
}

/// The conversation's next job after a finished one.
#[derive(Debug)]
pub enum Following {
    /// The conversation has no other job queued.
    None,
    /// Due now, for any sender to lease.
    Readied,
    /// Leased to the finishing sender, which asked for it.
    Leased(Box<Leased>),
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Redis(#[from] Error),
    #[error("the {what} of job {id} in partition {partition} is not valid JSON: {source}")]
    Corrupt {
        partition: u16,
        id: String,
        /// `job`, or its recorded `ending`.
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

static ADMIT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(format!("{NOW}{ADMIT}")));
static LEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(format!("{NOW}{LEASE}")));
static UPDATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(format!("{NOW}{UPDATE}")));
static RECORD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD));
static FINISH_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(format!("{NOW}{}{FINISH}", dead_letter::LUA_FUNCTION)));
static NEXT_DUE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(format!("{NOW}{NEXT_DUE}")));

#[derive(Clone)]
pub struct Queue {
    /// Taken in turn: the queue's scripts carry whole jobs (see [`Connections`]).
    connections: Connections,
    keys: KeyScheme,
    family: StreamName,
}

struct QueueKeys {
    jobs: String,
    endings: String,
    ready: String,
    leases: String,
    seq: String,
    dead_letters: String,
    partition: PartitionKeys,
}

impl Queue {
    pub fn new(redis: Client, keys: KeyScheme, family: StreamName) -> Self {
        Self::over(redis.into(), keys, family)
    }

    /// A queue whose calls take `connections` in turn.
    pub fn over(connections: Connections, keys: KeyScheme, family: StreamName) -> Self {
        Self { connections, keys, family }
    }

    fn redis(&self) -> &Client {
        self.connections.next()
    }

    fn partition_keys(&self, partition: u16) -> QueueKeys {
        let keys = self.keys.partition(&self.family, partition);
        QueueKeys {
            jobs: keys.key("sendq.jobs"),
            endings: keys.key("sendq.endings"),
            ready: keys.key("sendq.ready"),
            leases: keys.key("sendq.leases"),
            seq: keys.key("sendq.seq"),
            dead_letters: keys.dead_letters.clone(),
            partition: keys,
        }
    }

    fn lane(keys: &QueueKeys, conversation: Uuid) -> String {
        keys.partition.scoped("sendq.lane", &conversation.to_string())
    }

    fn done(keys: &QueueKeys, id: Uuid) -> String {
        keys.partition.scoped("sendq.done", &id.to_string())
    }

    /// Queues each job behind its conversation's earlier jobs, in the order given, in one round
    /// trip. Returns how many were new: a job queued or finished before (a redelivered stream
    /// entry) is skipped.
    pub async fn admit(&self, partition: u16, jobs: &[Job]) -> Result<usize, Error> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let keys = self.partition_keys(partition);
        let mut script_keys = Vec::with_capacity(4 + jobs.len() * 2);
        let mut args = Vec::with_capacity(jobs.len() * 2);
        for job in jobs {
            script_keys.push(Self::lane(&keys, job.request.conversation_id));
            script_keys.push(Self::done(&keys, job.id()));
            args.push(job.id().to_string());
            args.push(serde_json::to_string(job).expect("jobs serialise"));
        }
        script_keys.splice(0..0, [keys.jobs, keys.ready, keys.seq, keys.endings]);
        let admitted: i64 = ADMIT_SCRIPT.call(self.redis(), script_keys, args).await?;
        Ok(usize::try_from(admitted).unwrap_or(0))
    }

    /// Leases up to `limit` due jobs for `lease_ms`; `holder` names the process in the tokens,
    /// and each call adds its own random part, so no two leases ever share a token.
    pub async fn lease(
        &self,
        partition: u16,
        limit: usize,
        lease_ms: u64,
        holder: &str,
    ) -> Result<Vec<Leased>, QueueError> {
        let keys = self.partition_keys(partition);
        let flat: Vec<String> = LEASE_SCRIPT
            .call(
                self.redis(),
                vec![keys.ready, keys.jobs, keys.leases, keys.endings],
                vec![lease_ms.to_string(), limit.to_string(), format!("{holder}:{}", Uuid::new_v4().simple())],
            )
            .await?;
        // A job that cannot be read is left to its lease's end, reported each time, and holds
        // up no other job of the batch.
        Ok(flat
            .chunks_exact(4)
            .filter_map(|chunk| match with_ending(&chunk[2], &chunk[3]) {
                Ok(job) => Some(Leased { partition, token: chunk[1].clone(), job, streak: 0 }),
                Err((what, source)) => {
                    let error = QueueError::Corrupt { partition, id: chunk[0].clone(), what, source };
                    tracing::error!(error = %error, "a leased job cannot be read; it stays queued");
                    None
                }
            })
            .collect())
    }

    /// Stores the job's new state; with `delay_ms`, makes it due again then and releases the
    /// lease. `false`: the lease was lost (another sender holds the job now).
    pub async fn update(&self, leased: &Leased, delay_ms: Option<u64>) -> Result<bool, Error> {
        let keys = self.partition_keys(leased.partition);
        let updated: i64 = UPDATE_SCRIPT
            .call(
                self.redis(),
                vec![keys.ready, keys.jobs, keys.leases],
                vec![
                    leased.job.id().to_string(),
                    leased.token.clone(),
                    serde_json::to_string(&leased.job).expect("jobs serialise"),
                    delay_ms.map(|delay| delay.to_string()).unwrap_or_default(),
                ],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records how the job ended (see the module docs); the job itself is not written again.
    /// `false`: the lease was lost (another sender holds the job now).
    pub async fn record(&self, leased: &Leased, ending: &Ending) -> Result<bool, Error> {
        let keys = self.partition_keys(leased.partition);
        let recorded: i64 = RECORD_SCRIPT
            .call(
                self.redis(),
                vec![keys.endings, keys.leases],
                vec![
                    leased.job.id().to_string(),
                    leased.token.clone(),
                    serde_json::to_string(&RecordedEnding { ending, attempts: leased.job.attempts })
                        .expect("endings serialise"),
                ],
            )
            .await?;
        Ok(recorded == 1)
    }

    /// Removes the finished job (dead-lettering it when `dead_letter` is given) and readies the
    /// next job of its conversation, or with `lease` (`(lease_ms, holder)`, as for
    /// [`Queue::lease`]) leases it to the caller.
    pub async fn finish(
        &self,
        leased: &Leased,
        dead_letter: Option<&DeadLetter>,
        lease: Option<(u64, &str)>,
    ) -> Result<Finished, Error> {
        let keys = self.partition_keys(leased.partition);
        let job = &leased.job;
        let (lease_ms, token) = match lease {
            Some((lease_ms, holder)) => (lease_ms.to_string(), format!("{holder}:{}", Uuid::new_v4().simple())),
            None => (String::new(), String::new()),
        };
        let leading = vec![
            job.id().to_string(),
            leased.token.clone(),
            DONE_TTL_SECONDS.to_string(),
            if dead_letter.is_some() { "1" } else { "0" }.to_owned(),
            lease_ms,
            token,
        ];
        let args = match dead_letter {
            Some(letter) => dead_letter::arguments(leading, letter),
            None => leading,
        };
        let (lane, done) = (Self::lane(&keys, job.request.conversation_id), Self::done(&keys, job.id()));
        let reply: Vec<String> = FINISH_SCRIPT
            .call(
                self.redis(),
                vec![keys.ready, keys.jobs, keys.leases, lane, done, keys.dead_letters, keys.endings],
                args,
            )
            .await?;
        let partition = leased.partition;
        Ok(match reply.as_slice() {
            [state] if state == "done" => Finished::Done(Following::None),
            [state, _] if state == "done" => Finished::Done(Following::Readied),
            [state, id, token, job, ending] if state == "done" => match with_ending(job, ending) {
                Ok(job) => Finished::Done(Following::Leased(Box::new(Leased {
                    partition,
                    token: token.clone(),
                    job,
                    streak: leased.streak + 1,
                }))),
                // Finished all the same; the leasing loop reports the broken job when its lease ends.
                Err((what, error)) => {
                    tracing::warn!(partition, id = %id, what, error = %error, "the conversation's next job cannot be read");
                    Finished::Done(Following::None)
                }
            },
            _ => Finished::Lost,
        })
    }

    /// Milliseconds until the partition's next job is due (0: due now); `None` when none waits.
    pub async fn next_due_in(&self, partition: u16) -> Result<Option<u64>, Error> {
        let due: i64 = NEXT_DUE_SCRIPT
            .call(self.redis(), vec![self.partition_keys(partition).ready], Vec::<String>::new())
            .await?;
        Ok(u64::try_from(due).ok())
    }

    /// Jobs queued in a partition (waiting, leased or backing off).
    pub async fn len(&self, partition: u16) -> Result<u64, Error> {
        self.redis().hlen(self.partition_keys(partition).jobs).await
    }
}
