//! The campaign runner: one lease-holding task per campaign, handing recipients over at the
//! campaign's rate (see the crate docs).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use chatdesk_core::config::BROADCAST_STREAM;
use chatdesk_core::envelope::{BroadcastRecipient, Template};
use chatdesk_core::{Envelope, EventId, KeyScheme, StreamsConfig, TenantId};
use chatdesk_store::campaigns::{self, CampaignRow, Todo};
use chatdesk_streams::{Producer, RedisClient, Script};
use fred::interfaces::KeysInterface as _;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{BroadcastSettings, DEFERRED_TOTAL, HANDED_OVER_TOTAL, RUNNING_CAMPAIGNS, SKIPPED_TOTAL};

/// How often a runner reads its campaign's state (pause and cancel take effect within this).
pub const STATE_REFRESH: Duration = Duration::from_millis(200);
/// A runner's lease on its campaign; renewed at a third of it.
const LEASE: Duration = Duration::from_secs(10);
/// Recipients read from PostgreSQL at once.
const PAGE: i64 = 200;
/// Hand-overs recorded in PostgreSQL at least this often (and every [`MARK_BATCH`]).
const MARK_EVERY: Duration = Duration::from_millis(250);
const MARK_BATCH: usize = 200;
/// How often a campaign with nothing to hand over looks again (for outcomes, deferrals).
const IDLE: Duration = Duration::from_secs(1);
const QUOTA_WINDOW_MS: u64 = 86_400_000;
/// How far behind its pace a runner may catch up.
const CATCH_UP: Duration = Duration::from_millis(500);
/// How far ahead of its pace a runner hands recipients over. A recipient that reaches the sender
/// just in time for its slot would lose whatever it was late by; one that waits there a moment is
/// sent the moment the slot frees.
const LEAD: Duration = Duration::from_millis(200);

/// The tenant's unique recipients in the last 24 hours: 0 if `address` may be sent to now
/// (already counted, or room left), otherwise milliseconds until the oldest leaves the window.
static QUOTA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"#,
    )
});

pub(crate) struct Inner {
    pub(crate) redis: RedisClient,
    pub(crate) db: chatdesk_store::Pool,
    pub(crate) keys: KeyScheme,
    pub(crate) streams: Arc<StreamsConfig>,
    pub(crate) producer: Producer,
    settings: BroadcastSettings,
    holder: String,
    /// The campaigns this process runs, and the tenant of each.
    running: Mutex<HashMap<Uuid, Uuid>>,
}

/// Why a runner stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    Finished,
    Paused,
    Cancelled,
    LeaseLost,
    Shutdown,
}

impl Inner {
    pub(crate) fn new(
        redis: RedisClient,
        db: chatdesk_store::Pool,
        keys: KeyScheme,
        streams: Arc<StreamsConfig>,
        node: &str,
        settings: BroadcastSettings,
    ) -> Self {
        let producer = Producer::new(redis.clone(), keys.clone(), streams.clone());
        Self {
            redis,
            db,
            keys,
            streams,
            producer,
            settings,
            holder: format!("{node}:{}", Uuid::new_v4().simple()),
            running: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            match campaigns::due(&self.db, self.settings.max_campaigns as i64 * 2).await {
                Ok(due) => {
                    for campaign in due {
                        {
                            let running = self.running.lock().expect("running campaigns");
                            if running.len() >= self.settings.max_campaigns {
                                break;
                            }
                            let of_tenant = running.values().filter(|tenant| **tenant == campaign.tenant_id).count();
                            if running.contains_key(&campaign.id) || of_tenant >= self.tenant_share() {
                                continue;
                            }
                        }
                        match self.take_lease(campaign.id).await {
                            Ok(true) => {
                                self.running.lock().expect("running campaigns").insert(campaign.id, campaign.tenant_id);
                                metrics::gauge!(RUNNING_CAMPAIGNS).increment(1.0);
                                tracker.spawn(self.clone().run_campaign(campaign, cancel.clone()));
                            }
                            Ok(false) => {}
                            Err(error) => tracing::warn!(error = %error, "cannot take a campaign's lease"),
                        }
                    }
                }
                Err(error) => tracing::warn!(error = %error, "cannot look for campaigns to run"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.poll) => {}
                _ = cancel.cancelled() => break,
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Campaigns one tenant may run in this process at once: a tenth of the slots, so one
    /// tenant's campaigns never take them all.
    fn tenant_share(&self) -> usize {
        (self.settings.max_campaigns / 10).max(1)
    }

    async fn take_lease(&self, campaign: Uuid) -> Result<bool, fred::error::Error> {
        let held: i64 = chatdesk_streams::lease::HOLD
            .call(
                &self.redis,
                vec![self.keys.campaign_runner(&campaign)],
                vec![self.holder.clone(), LEASE.as_millis().to_string()],
            )
            .await?;
        Ok(held != 0)
    }

    async fn run_campaign(self: Arc<Self>, campaign: CampaignRow, cancel: CancellationToken) {
        let id = campaign.id;
        let span = tracing::info_span!("campaign", campaign = %id, tenant = %campaign.tenant_id);
        let stop = {
            let _entered = span.enter();
            tracing::info!(rate = campaign.rate_per_sec, total = campaign.total, "running campaign");
            drop(_entered);
            let mut run = Run::new(&self, campaign);
            tracing::Instrument::instrument(run.go(&cancel), span.clone()).await
        };
        let _: Result<i64, _> = chatdesk_streams::lease::RELEASE
            .call(&self.redis, vec![self.keys.campaign_runner(&id)], vec![self.holder.clone()])
            .await;
        self.running.lock().expect("running campaigns").remove(&id);
        metrics::gauge!(RUNNING_CAMPAIGNS).decrement(1.0);
        span.in_scope(|| tracing::info!(stop = ?stop, "campaign runner stopped"));
    }
}

/// One campaign's run in this process.
struct Run<'a> {
    inner: &'a Inner,
    campaign: CampaignRow,
    template: Option<Template>,
    interval: Duration,
    next_slot: Instant,
    lease_renewed: Instant,
    state: Option<String>,
    state_read: Option<Instant>,
    handed: Vec<(i32, Uuid, i32)>,
    marked: Instant,
    sender_label: String,
}

impl<'a> Run<'a> {
    fn new(inner: &'a Inner, campaign: CampaignRow) -> Self {
        let template = campaign.template.clone().and_then(|template| serde_json::from_value(template).ok());
        let interval = Duration::from_secs_f64(1.0 / f64::from(campaign.rate_per_sec.max(1)));
        let sender_label = campaign.inbox_id.to_string();
        Self {
            inner,
            campaign,
            template,
            interval,
            next_slot: Instant::now(),
            lease_renewed: Instant::now(),
            state: None,
            state_read: None,
            handed: Vec::new(),
            marked: Instant::now(),
            sender_label,
        }
    }

    async fn go(&mut self, cancel: &CancellationToken) -> Stop {
        if self.campaign.status == "scheduled"
            && let Err(error) = campaigns::start(&self.inner.db, self.campaign.id).await
        {
            tracing::warn!(error = %error, "cannot mark the campaign running");
        }
        let mut after = -1;
        loop {
            if cancel.is_cancelled() {
                self.flush().await;
                return Stop::Shutdown;
            }
            if let Some(stop) = self.keep_lease().await {
                return stop;
            }
            match self.state().await.as_deref() {
                Some("paused") => {
                    // A paused campaign holds no runner slot: resuming makes it due again, and
                    // some process picks it up within a poll.
                    self.flush().await;
                    return Stop::Paused;
                }
                Some("cancelled") => {
                    self.flush().await;
                    return Stop::Cancelled;
                }
                _ => {}
            }
            if self.expired() {
                self.flush().await;
                if let Err(error) = campaigns::expire_rest(&self.inner.db, self.campaign.id).await {
                    tracing::warn!(error = %error, "cannot expire the campaign's remaining recipients");
                }
                if self.finish_if_done().await {
                    return Stop::Finished;
                }
                self.pause(cancel, IDLE).await;
                continue;
            }
            let page = match campaigns::todo(&self.inner.db, &self.campaign, after, PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot read the campaign's recipients");
                    self.pause(cancel, IDLE).await;
                    continue;
                }
            };
            if page.is_empty() {
                self.flush().await;
                if after >= 0 {
                    // From the start again: deferred recipients whose wait is over.
                    after = -1;
                    continue;
                }
                if self.finish_if_done().await {
                    return Stop::Finished;
                }
                // Statuses change only through the API; re-read the row now and then.
                if let Ok(Some(row)) = campaigns::get(&self.inner.db, self.campaign.tenant_id, self.campaign.id).await
                    && (row.status == "cancelled" || row.status == "finished")
                {
                    return if row.status == "cancelled" { Stop::Cancelled } else { Stop::Finished };
                }
                self.pause(cancel, IDLE).await;
                continue;
            }
            // Message ids are stored before anything is handed over (see `campaigns::reserve`).
            // A pending recipient that has one keeps it: it may have been handed over already.
            let planned: Vec<(Todo, Uuid, i32)> = page
                .into_iter()
                .map(|todo| match todo.message_id {
                    Some(message_id) if todo.status == "pending" => {
                        let attempt = todo.attempt;
                        (todo, message_id, attempt)
                    }
                    _ => {
                        let attempt = todo.attempt + 1;
                        let message_id = message_id_of(self.campaign.id, todo.position, attempt);
                        (todo, message_id, attempt)
                    }
                })
                .collect();
            let fresh: Vec<(i32, Uuid, i32)> = planned
                .iter()
                .filter(|(todo, message_id, _)| todo.message_id != Some(*message_id))
                .map(|(todo, message_id, attempt)| (todo.position, *message_id, *attempt))
                .collect();
            let reserved = match campaigns::reserve(&self.inner.db, self.campaign.id, &fresh).await {
                Ok(reserved) => reserved,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot reserve message ids");
                    self.pause(cancel, IDLE).await;
                    continue;
                }
            };
            // Only recipients whose id is stored are handed over; the others come back on a
            // later pass.
            let planned: Vec<(Todo, Uuid, i32)> = planned
                .into_iter()
                .filter(|(todo, message_id, _)| {
                    todo.message_id == Some(*message_id) || reserved.contains(&todo.position)
                })
                .collect();
            for (todo, message_id, attempt) in planned {
                // A long page at a low rate outlasts the lease: renew it as we go.
                if let Some(stop) = self.keep_lease().await {
                    self.flush().await;
                    return stop;
                }
                after = todo.position;
                match self.hand_over(&todo, message_id, attempt, cancel).await {
                    Step::Next => {}
                    Step::Recheck => {
                        // Paused, cancelled or shut down mid-page: this recipient and the rest
                        // of the page are read again.
                        after = todo.position - 1;
                        break;
                    }
                }
            }
        }
    }

    /// Renews the lease every third of it; `Some` when another process holds it now.
    async fn keep_lease(&mut self) -> Option<Stop> {
        if self.lease_renewed.elapsed() < LEASE / 3 {
            return None;
        }
        match self.inner.take_lease(self.campaign.id).await {
            Ok(true) => {
                self.lease_renewed = Instant::now();
                None
            }
            Ok(false) => {
                tracing::warn!("another process took over the campaign");
                Some(Stop::LeaseLost)
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot renew the campaign's lease");
                // Past the lease, another process may run it: stop rather than overlap.
                (self.lease_renewed.elapsed() >= LEASE * 2 / 3).then_some(Stop::LeaseLost)
            }
        }
    }

    /// The campaign's state (`running`, `paused`, `cancelled`), read at most every
    /// [`STATE_REFRESH`]; from PostgreSQL when Redis has none (it lost the key).
    async fn state(&mut self) -> Option<String> {
        if self.state_read.is_none_or(|read| read.elapsed() >= STATE_REFRESH) {
            match self.inner.redis.get::<Option<String>, _>(self.inner.keys.campaign_state(&self.campaign.id)).await {
                Ok(Some(value)) => {
                    self.state = Some(chatdesk_core::campaign::state_in(&value).to_owned());
                    self.state_read = Some(Instant::now());
                }
                Ok(None) => {
                    if let Ok(Some(row)) =
                        campaigns::get(&self.inner.db, self.campaign.tenant_id, self.campaign.id).await
                    {
                        self.state = Some(chatdesk_core::campaign::state_of_status(&row.status).to_owned());
                        self.state_read = Some(Instant::now());
                    }
                }
                Err(error) => tracing::warn!(error = %error, "cannot read the campaign's state"),
            }
        }
        self.state.clone()
    }

    fn expired(&self) -> bool {
        self.campaign.expires_at.is_some_and(|expires| expires <= OffsetDateTime::now_utc())
    }

    async fn finish_if_done(&self) -> bool {
        match campaigns::finish_if_done(&self.inner.db, self.campaign.id).await {
            Ok(finished) => finished,
            Err(error) => {
                tracing::warn!(error = %error, "cannot check whether the campaign is finished");
                false
            }
        }
    }

    async fn pause(&self, cancel: &CancellationToken, how_long: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(how_long) => {}
            _ = cancel.cancelled() => {}
        }
    }

    async fn hand_over(&mut self, todo: &Todo, message_id: Uuid, attempt: i32, cancel: &CancellationToken) -> Step {
        let campaign = self.campaign.id;
        if let Some(reason) = &todo.opted_out {
            let reason = format!("opted out: {reason}");
            if let Err(error) =
                campaigns::mark(&self.inner.db, campaign, &[todo.position], "skipped", &reason, None).await
            {
                tracing::warn!(error = %error, "cannot skip an opted-out recipient");
            }
            metrics::counter!(SKIPPED_TOTAL, "inbox" => self.sender_label.clone()).increment(1);
            return Step::Next;
        }
        if self.campaign.inbox_kind == "whatsapp" {
            match self.quota(&todo.address).await {
                Ok(0) => {}
                Ok(wait_ms) => {
                    let until = OffsetDateTime::now_utc() + time::Duration::milliseconds(wait_ms);
                    let reason = format!(
                        "over the tenant's {} unique recipients per 24 hours; waits for the window",
                        self.campaign.daily_recipients
                    );
                    if let Err(error) =
                        campaigns::mark(&self.inner.db, campaign, &[todo.position], "deferred", &reason, Some(until))
                            .await
                    {
                        tracing::warn!(error = %error, "cannot defer a recipient");
                    }
                    metrics::counter!(DEFERRED_TOTAL, "inbox" => self.sender_label.clone()).increment(1);
                    return Step::Next;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "cannot count the tenant's 24-hour quota");
                    self.pause(cancel, IDLE).await;
                    return Step::Recheck;
                }
            }
        }
        // The campaign's pace: one recipient per interval. A runner held up briefly (a busy
        // process, a slow query) makes up at most [`CATCH_UP`] of missed slots: the sender's
        // bucket keeps the rate at the provider exact whatever arrives early.
        let now = Instant::now();
        if self.next_slot + CATCH_UP < now {
            self.next_slot = now - CATCH_UP;
        }
        let slot = self.next_slot;
        self.next_slot += self.interval;
        // Handed over a little ahead of its slot, so the sender already holds it when its bucket
        // frees: the bucket, not this loop's timing, sets the pace at the provider.
        tokio::select! {
            _ = tokio::time::sleep_until(slot.checked_sub(LEAD).unwrap_or(slot)) => {}
            _ = cancel.cancelled() => return Step::Recheck,
        }
        if matches!(self.state().await.as_deref(), Some("paused" | "cancelled")) {
            return Step::Recheck;
        }
        let text = match chatdesk_core::campaign::render(&self.campaign.text, &todo.vars) {
            Ok(text) => text,
            Err(error) => {
                let _ = campaigns::fail_queued(&self.inner.db, campaign, todo.position, &error.to_string()).await;
                return Step::Next;
            }
        };
        let recipient = BroadcastRecipient {
            campaign_id: campaign,
            position: todo.position as u32,
            message_id,
            inbox_id: self.campaign.inbox_id,
            address: todo.address.clone(),
            text,
            template: self.template.as_ref().map(|template| fill_template(template, &todo.vars)),
            rate_per_sec: self.campaign.rate_per_sec as u32,
            expires_at_ms: self.campaign.expires_at.map(|at| (at.unix_timestamp_nanos() / 1_000_000) as u64),
        };
        let entry = Envelope::of(TenantId(self.campaign.tenant_id), &recipient).with_event_id(EventId(message_id));
        if let Err(error) = self.inner.producer.append(BROADCAST_STREAM, &entry).await {
            tracing::warn!(error = %error, "cannot hand a recipient over; trying again");
            self.pause(cancel, IDLE).await;
            return Step::Recheck;
        }
        metrics::counter!(HANDED_OVER_TOTAL, "inbox" => self.sender_label.clone()).increment(1);
        self.handed.push((todo.position, message_id, attempt));
        if self.handed.len() >= MARK_BATCH || self.marked.elapsed() >= MARK_EVERY {
            self.flush().await;
        }
        Step::Next
    }

    /// Records hand-overs as `queued`. If PostgreSQL cannot take them now they are kept and
    /// recorded later; a runner that dies first leaves them pending, and the next one hands them
    /// over again under the same ids.
    async fn flush(&mut self) {
        self.marked = Instant::now();
        if self.handed.is_empty() {
            return;
        }
        match campaigns::mark_queued(&self.inner.db, self.campaign.id, &self.handed).await {
            Ok(()) => self.handed.clear(),
            Err(error) => tracing::warn!(error = %error, "cannot record hand-overs yet"),
        }
    }

    async fn quota(&self, address: &str) -> Result<i64, fred::error::Error> {
        QUOTA
            .call(
                &self.inner.redis,
                vec![self.inner.keys.campaign_quota(&TenantId(self.campaign.tenant_id))],
                vec![address.to_owned(), self.campaign.daily_recipients.to_string(), QUOTA_WINDOW_MS.to_string()],
            )
            .await
    }
}

/// A recipient's message id for one attempt: the same campaign, recipient and attempt always
/// make the same id, so a second hand-over is recognised downstream.
fn message_id_of(campaign: Uuid, position: i32, attempt: i32) -> Uuid {
    Uuid::new_v5(&campaign, format!("{position}:{attempt}").as_bytes())
}

enum Step {
    Next,
    Recheck,
}

/// The template with the recipient's variables in its body parameters: every parameter whose
/// text is `{{name}}` becomes the recipient's value.
fn fill_template(template: &Template, vars: &serde_json::Value) -> Template {
    let mut filled = template.clone();
    if let Some(components) = filled.components.as_mut() {
        fill_value(components, vars);
    }
    filled
}

fn fill_value(value: &mut serde_json::Value, vars: &serde_json::Value) {
    match value {
        serde_json::Value::String(text) if text.contains("{{") => {
            if let Ok(rendered) = chatdesk_core::campaign::render(text, vars) {
                *text = rendered;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|item| fill_value(item, vars)),
        serde_json::Value::Object(members) => members.values_mut().for_each(|member| fill_value(member, vars)),
        _ => {}
    }
}
