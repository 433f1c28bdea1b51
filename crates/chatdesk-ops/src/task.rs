//! Long actions (a replay, a redrive) run as tasks: their progress is kept in Redis, so the CLI,
//! the REST routes and the dashboard of any process can follow and cancel them, and a lock per
//! target lets one run at a time. A task whose runner died stops updating and reads as
//! `interrupted`; its lock expires with it.

use std::sync::LazyLock;
use std::time::Duration;

use chatdesk_streams::Script;
use chatdesk_streams::entry::now_ms;
use fred::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Ops, OpsError, Result};

/// A running task refreshes its lock and record at least this often.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A lock (and a running record) not refreshed for this long belongs to a dead runner.
const LOCK_TTL_MS: u64 = 15_000;
/// Finished tasks stay readable for a week.
const KEEP_SECONDS: i64 = 7 * 24 * 3600;
/// Tasks listed at most.
pub const LISTED: i64 = 50;
/// Tasks the index remembers.
const INDEXED: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    /// Cancel was asked; the runner stops before its next entry.
    Cancelling,
    Cancelled,
    Done,
    Failed,
    /// Its runner stopped updating (the process ended): what it did is in `moved`.
    Interrupted,
}

impl TaskState {
    pub fn finished(self) -> bool {
        !matches!(self, TaskState::Running | TaskState::Cancelling)
    }
}

/// A task's progress.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    pub id: String,
    /// `replay` or `redrive`.
    pub kind: String,
    pub actor: String,
    /// What it works on (family, group, range or filters).
    #[schema(value_type = Object)]
    pub target: serde_json::Value,
    pub state: TaskState,
    /// Entries it will move.
    pub total: u64,
    /// Entries handed to their group so far.
    pub moved: u64,
    /// Entries it could not move, with why in `message` (trimmed originals, gone letters).
    pub skipped: u64,
    pub remaining: u64,
    /// Replays: re-delivered entries the group has acknowledged again.
    pub handled: Option<u64>,
    /// Entries per second it is paced to, if any.
    pub rate: Option<f64>,
    /// What it is doing now, or why it stopped.
    pub message: String,
    pub started_ms: u64,
    pub updated_ms: u64,
    pub finished_ms: Option<u64>,
}

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
});
static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
    )
});

/// A task this process runs.
pub struct Running {
    ops: Ops,
    pub task: Task,
    locks: Vec<String>,
    /// Its audit record, kept current as it goes.
    pub record: crate::audit::OnRecord,
    audited_at: std::time::Instant,
}

impl Ops {
    fn task_key(&self, id: &str) -> String {
        self.keys.tagged("ops-task", id)
    }

    fn cancel_key(&self, id: &str) -> String {
        self.keys.tagged("ops-task-cancel", id)
    }

    fn task_index(&self) -> String {
        self.keys.tagged("ops-tasks", "all")
    }

    /// Starts a task holding `locks` (e.g. `replay:events:writer`); `Busy` naming the task that
    /// holds one of them.
    pub async fn start_task(
        &self,
        kind: &str,
        actor: &str,
        target: serde_json::Value,
        locks: &[String],
        total: u64,
        rate: Option<f64>,
    ) -> Result<Running> {
        let id = uuid::Uuid::now_v7().to_string();
        let mut held: Vec<String> = Vec::new();
        for lock in locks {
            let key = self.keys.tagged("ops-lock", lock);
            let taken: Option<String> = self
                .redis
                .set(&key, id.as_str(), Some(Expiration::PX(LOCK_TTL_MS as i64)), Some(SetOptions::NX), false)
                .await?;
            if taken.is_none() {
                let holder: Option<String> = self.redis.get(&key).await?;
                for key in &held {
                    let _: i64 = RELEASE.call(&self.redis, vec![key.clone()], vec![id.clone()]).await?;
                }
                return Err(OpsError::Busy(format!(
                    "another {kind} is running on {lock} (task {}): wait for it or cancel it",
                    holder.unwrap_or_default()
                )));
            }
            held.push(key);
        }
        let now = now_ms();
        let task = Task {
            id: id.clone(),
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            target,
            state: TaskState::Running,
            total,
            moved: 0,
            skipped: 0,
            remaining: total,
            handled: None,
            rate,
            message: "starting".to_owned(),
            started_ms: now,
            updated_ms: now,
            finished_ms: None,
        };
        let running = Running {
            ops: self.clone(),
            task,
            locks: held,
            record: crate::audit::OnRecord::default(),
            audited_at: std::time::Instant::now(),
        };
        running.save().await?;
        let _: i64 = self.redis.zadd(self.task_index(), None, None, false, false, (now as f64, id.as_str())).await?;
        // The index keeps the newest tasks only (their records expire on their own).
        let _: i64 = self.redis.zremrangebyrank(self.task_index(), 0, -(INDEXED + 1)).await?;
        Ok(running)
    }

    /// A task's progress as last saved (`interrupted` when its runner went quiet).
    pub async fn task(&self, id: &str) -> Result<Task> {
        let raw: Option<String> = self.redis.get(self.task_key(id)).await?;
        let raw = raw.ok_or_else(|| OpsError::NotFound(format!("no task {id:?}")))?;
        let mut task: Task = serde_json::from_str(&raw)
            .map_err(|error| OpsError::Invalid(format!("task {id:?} cannot be read: {error}")))?;
        if !task.state.finished() && now_ms().saturating_sub(task.updated_ms) > LOCK_TTL_MS {
            task.state = TaskState::Interrupted;
            task.message = format!("its runner stopped updating it: {}", task.message);
        }
        Ok(task)
    }

    /// The newest tasks first.
    pub async fn tasks(&self) -> Result<Vec<Task>> {
        let ids: Vec<String> = self.redis.zrevrange(self.task_index(), 0, LISTED - 1, false).await?;
        let mut tasks = Vec::new();
        for id in ids {
            match self.task(&id).await {
                Ok(task) => tasks.push(task),
                Err(OpsError::NotFound(_)) => {
                    let _: i64 = self.redis.zrem(self.task_index(), id.as_str()).await?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(tasks)
    }

    /// Asks a running task to stop; returns it as it stands.
    pub async fn cancel_task(&self, id: &str) -> Result<Task> {
        let mut task = self.task(id).await?;
        if task.state.finished() {
            return Err(OpsError::Invalid(format!("task {id} has already finished ({:?})", task.state)));
        }
        let _: () = self.redis.set(self.cancel_key(id), "1", Some(Expiration::EX(KEEP_SECONDS)), None, false).await?;
        task.state = TaskState::Cancelling;
        Ok(task)
    }
}

impl Running {
    pub async fn save(&self) -> Result<()> {
        let json = serde_json::to_string(&self.task).map_err(|error| OpsError::Invalid(error.to_string()))?;
        let _: () = self
            .ops
            .redis
            .set(self.ops.task_key(&self.task.id), json, Some(Expiration::EX(KEEP_SECONDS)), None, false)
            .await?;
        for key in &self.locks {
            let _: i64 = REFRESH
                .call(&self.ops.redis, vec![key.clone()], vec![self.task.id.clone(), LOCK_TTL_MS.to_string()])
                .await?;
        }
        Ok(())
    }

    /// Records progress; returns whether cancel was asked.
    pub async fn progress(&mut self, message: impl Into<String>) -> Result<bool> {
        self.task.message = message.into();
        self.task.remaining = self.task.total.saturating_sub(self.task.moved + self.task.skipped);
        self.task.updated_ms = now_ms();
        let cancelled: Option<String> = self.ops.redis.get(self.ops.cancel_key(&self.task.id)).await?;
        if cancelled.is_some() {
            self.task.state = TaskState::Cancelling;
        }
        self.save().await?;
        if self.audited_at.elapsed() >= HEARTBEAT {
            self.audited_at = std::time::Instant::now();
            self.ops.audit_progress(&self.record, self.task.moved, &self.task.message).await;
        }
        Ok(cancelled.is_some())
    }

    /// Ends the task in `state`, releasing its locks.
    pub async fn finish(mut self, state: TaskState, message: impl Into<String>) -> Result<Task> {
        let now = now_ms();
        self.task.state = state;
        self.task.message = message.into();
        self.task.remaining = self.task.total.saturating_sub(self.task.moved + self.task.skipped);
        self.task.updated_ms = now;
        self.task.finished_ms = Some(now);
        self.save().await?;
        for key in &self.locks {
            let _: i64 = RELEASE.call(&self.ops.redis, vec![key.clone()], vec![self.task.id.clone()]).await?;
        }
        Ok(self.task)
    }
}
