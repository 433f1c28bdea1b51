//! Broadcast campaigns in PostgreSQL: the campaign, one row per recipient whose status only
//! moves forward, and the addresses that opted out. Every query is scoped to one tenant.

use std::collections::BTreeMap;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

/// Every status a recipient can have, in the order the API lists counts.
pub const RECIPIENT_STATUSES: [&str; 10] =
    ["pending", "queued", "sent", "delivered", "read", "failed", "skipped", "expired", "deferred", "total"];

/// Statuses after which nothing more happens to a recipient.
pub const FINAL_STATUSES: [&str; 6] = ["sent", "delivered", "read", "failed", "skipped", "expired"];

/// The rank a status update must exceed (SQL), so a recipient's status only moves forward: a
/// late `sent` never replaces `delivered`. `deferred` ranks above `sent` because WhatsApp
/// reports its marketing cap after accepting the message. `skipped` and `expired` rank below
/// `sent`: a cancel or an expiry marks what had not gone out yet, and a message already on its
/// way that the provider then took was sent, and counts so.
const RANK: &str = "CASE {} WHEN 'pending' THEN 0 WHEN 'queued' THEN 1 WHEN 'skipped' THEN 2 \
    WHEN 'expired' THEN 2 WHEN 'sent' THEN 3 WHEN 'deferred' THEN 4 WHEN 'failed' THEN 4 \
    WHEN 'delivered' THEN 5 WHEN 'read' THEN 6 ELSE 0 END";

fn rank(column: &str) -> String {
    RANK.replace("{}", column)
}

#[derive(Debug, Clone, PartialEq)]
pub struct CampaignRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub inbox_id: Uuid,
    pub inbox_kind: String,
    pub name: String,
    pub text: String,
    pub template: Option<serde_json::Value>,
    pub rate_per_sec: i32,
    pub status: String,
    pub start_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub total: i32,
    pub created_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
    /// The tenant's unique-recipient quota per 24 hours.
    pub daily_recipients: i32,
    /// When the status last changed (the clock at the change, so later changes are later).
    pub updated_at: OffsetDateTime,
}

impl CampaignRow {
    /// The state's version as senders and runners see it: microseconds of `updated_at`.
    pub fn version(&self) -> i64 {
        (self.updated_at.unix_timestamp_nanos() / 1000) as i64
    }
}

type CampaignTuple = (
    Uuid,
    Uuid,
    Uuid,
    String,
    String,
    String,
    Option<serde_json::Value>,
    i32,
    String,
    OffsetDateTime,
    Option<OffsetDateTime>,
    i32,
    OffsetDateTime,
    Option<OffsetDateTime>,
    i32,
    OffsetDateTime,
);

const CAMPAIGN_COLUMNS: &str = "c.id, c.tenant_id, c.inbox_id, i.kind, c.name, c.text, c.template, c.rate_per_sec, \
    c.status, c.start_at, c.expires_at, c.total, c.created_at, c.finished_at, t.campaign_daily_recipients, \
    c.updated_at \
    FROM campaigns c JOIN inboxes i ON i.id = c.inbox_id JOIN tenants t ON t.id = c.tenant_id";

fn campaign(row: CampaignTuple) -> CampaignRow {
    let (
        id,
        tenant_id,
        inbox_id,
        inbox_kind,
        name,
        text,
        template,
        rate_per_sec,
        status,
        start_at,
        expires_at,
        total,
        created_at,
        finished_at,
        daily_recipients,
        updated_at,
    ) = row;
    CampaignRow {
        id,
        tenant_id,
        inbox_id,
        inbox_kind,
        name,
        text,
        template,
        rate_per_sec,
        status,
        start_at,
        expires_at,
        total,
        created_at,
        finished_at,
        daily_recipients,
        updated_at,
    }
}

/// A campaign to create, with its recipients already validated.
#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub inbox_id: Uuid,
    pub name: String,
    pub text: String,
    pub template: Option<serde_json::Value>,
    pub rate_per_sec: i32,
    pub start_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the create request, kept with the idempotency key.
    pub request_hash: Vec<u8>,
    pub created_by: Option<Uuid>,
    /// `(address, variables)` in the order given.
    pub recipients: Vec<(String, serde_json::Value)>,
}

/// What [`create`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    New(CampaignRow),
    /// The idempotency key was used before: the campaign made then, and whether that request was
    /// this one (the same hash).
    Existing {
        campaign: CampaignRow,
        same_request: bool,
    },
}

/// Creates the campaign and its recipients in one transaction. Recipients who opted out of the
/// inbox are stored as `skipped`, so counts always add up to the total.
pub async fn create(pool: &PgPool, new: &NewCampaign) -> Result<Created, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::Query)?;
    let status = if new.start_at > OffsetDateTime::now_utc() { "scheduled" } else { "running" };
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO campaigns (id, tenant_id, inbox_id, name, text, template, rate_per_sec, status, start_at, \
                                expires_at, idempotency_key, created_by, total, request_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id",
    )
    .bind(new.id)
    .bind(new.tenant_id)
    .bind(new.inbox_id)
    .bind(&new.name)
    .bind(&new.text)
    .bind(&new.template)
    .bind(new.rate_per_sec)
    .bind(status)
    .bind(new.start_at)
    .bind(new.expires_at)
    .bind(&new.idempotency_key)
    .bind(new.created_by)
    .bind(new.recipients.len() as i32)
    .bind(&new.request_hash)
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::Query)?;
    let Some(id) = inserted else {
        tx.rollback().await.map_err(StoreError::Query)?;
        let key = new.idempotency_key.as_deref().unwrap_or_default();
        let existing: CampaignTuple = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CAMPAIGN_COLUMNS} WHERE c.tenant_id = $1 AND c.idempotency_key = $2"
        )))
        .bind(new.tenant_id)
        .bind(key)
        .fetch_one(pool)
        .await
        .map_err(StoreError::Query)?;
        let hash: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT request_hash FROM campaigns WHERE tenant_id = $1 AND idempotency_key = $2")
                .bind(new.tenant_id)
                .bind(key)
                .fetch_one(pool)
                .await
                .map_err(StoreError::Query)?;
        let same_request = hash.as_deref() == Some(new.request_hash.as_slice());
        return Ok(Created::Existing { campaign: campaign(existing), same_request });
    };
    let positions: Vec<i32> = (0..new.recipients.len() as i32).collect();
    let addresses: Vec<&str> = new.recipients.iter().map(|(address, _)| address.as_str()).collect();
    let vars: Vec<&serde_json::Value> = new.recipients.iter().map(|(_, vars)| vars).collect();
    sqlx::query(
        "INSERT INTO campaign_recipients (tenant_id, campaign_id, position, address, vars, status, reason) \
         SELECT $1, $2, r.position, r.address, r.vars, \
                CASE WHEN o.address IS NULL THEN 'pending' ELSE 'skipped' END, \
                CASE WHEN o.address IS NULL THEN NULL ELSE 'opted out: ' || o.reason END \
         FROM UNNEST($3::int4[], $4::text[], $5::jsonb[]) AS r(position, address, vars) \
         LEFT JOIN opt_outs o ON o.tenant_id = $1 AND o.inbox_id = $6 AND o.address = r.address",
    )
    .bind(new.tenant_id)
    .bind(id)
    .bind(&positions)
    .bind(&addresses)
    .bind(&vars)
    .bind(new.inbox_id)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::Query)?;
    tx.commit().await.map_err(StoreError::Query)?;
    let row = get(pool, new.tenant_id, id).await?.ok_or(StoreError::Query(sqlx::Error::RowNotFound))?;
    Ok(Created::New(row))
}

/// The inbox's contacts (address and name), oldest first, optionally only those whose
/// conversation was active within `seen_within_days`; at most `limit`.
pub async fn audience(
    pool: &PgPool,
    tenant: Uuid,
    inbox: Uuid,
    seen_within_days: Option<i64>,
    limit: i64,
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    sqlx::query_as(
        "SELECT k.external_id, k.name FROM contacts k WHERE k.tenant_id = $1 AND k.inbox_id = $2 \
           AND ($3::int8 IS NULL OR EXISTS (SELECT 1 FROM conversations c WHERE c.contact_id = k.id \
                AND c.tenant_id = $1 AND c.last_activity_at > now() - make_interval(days => $3::int4))) \
         ORDER BY k.created_at, k.id LIMIT $4",
    )
    .bind(tenant)
    .bind(inbox)
    .bind(seen_within_days)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)
}

/// Which of `addresses` opted out of `inbox`.
pub async fn opted_out(
    pool: &PgPool,
    tenant: Uuid,
    inbox: Uuid,
    addresses: &[String],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT address FROM opt_outs WHERE tenant_id = $1 AND inbox_id = $2 AND address = ANY($3)")
            .bind(tenant)
            .bind(inbox)
            .bind(addresses)
            .fetch_all(pool)
            .await
            .map_err(StoreError::Query)?;
    Ok(rows.into_iter().collect())
}

pub async fn get(pool: &PgPool, tenant: Uuid, id: Uuid) -> Result<Option<CampaignRow>, StoreError> {
    let row: Option<CampaignTuple> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {CAMPAIGN_COLUMNS} WHERE c.tenant_id = $1 AND c.id = $2")))
            .bind(tenant)
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::Query)?;
    Ok(row.map(campaign))
}

/// The tenant's campaigns, newest first, up to `limit`.
pub async fn list(pool: &PgPool, tenant: Uuid, limit: i64) -> Result<Vec<CampaignRow>, StoreError> {
    let rows: Vec<CampaignTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CAMPAIGN_COLUMNS} WHERE c.tenant_id = $1 ORDER BY c.created_at DESC, c.id DESC LIMIT $2"
    )))
    .bind(tenant)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows.into_iter().map(campaign).collect())
}

/// A campaign's progress: recipients per status, and the rate of its recent sends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub counts: BTreeMap<String, i64>,
    /// Sends per second among the sends of the last `window_seconds`: the intervals between
    /// them, so it is the pace itself, never more than the campaign's rate because a window
    /// happened to catch a few more. 0 with fewer than two sends in the window.
    pub measured_rate: f64,
}

pub async fn progress(pool: &PgPool, tenant: Uuid, id: Uuid, window_seconds: i64) -> Result<Progress, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM campaign_recipients WHERE tenant_id = $1 AND campaign_id = $2 GROUP BY status",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    let (sent_in_window, first, last): (i64, Option<OffsetDateTime>, Option<OffsetDateTime>) = sqlx::query_as(
        "SELECT count(*), min(sent_at), max(sent_at) FROM campaign_recipients \
         WHERE tenant_id = $1 AND campaign_id = $2 AND sent_at > now() - make_interval(secs => $3)",
    )
    .bind(tenant)
    .bind(id)
    .bind(window_seconds as f64)
    .fetch_one(pool)
    .await
    .map_err(StoreError::Query)?;
    let mut counts: BTreeMap<String, i64> = RECIPIENT_STATUSES.iter().map(|status| ((*status).to_owned(), 0)).collect();
    let mut total = 0;
    for (status, count) in rows {
        total += count;
        counts.insert(status, count);
    }
    counts.insert("total".to_owned(), total);
    let measured_rate = match (first, last) {
        (Some(first), Some(last)) if sent_in_window >= 2 && last > first => {
            let rate = (sent_in_window - 1) as f64 / (last - first).as_seconds_f64();
            (rate * 10.0).round() / 10.0
        }
        _ => 0.0,
    };
    Ok(Progress { counts, measured_rate })
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecipientRow {
    pub position: i32,
    pub address: String,
    pub vars: serde_json::Value,
    pub status: String,
    pub reason: Option<String>,
    pub attempt: i32,
    pub message_id: Option<Uuid>,
    pub updated_at: OffsetDateTime,
}

type RecipientTuple = (i32, String, serde_json::Value, String, Option<String>, i32, Option<Uuid>, OffsetDateTime);

fn recipient(row: RecipientTuple) -> RecipientRow {
    let (position, address, vars, status, reason, attempt, message_id, updated_at) = row;
    RecipientRow { position, address, vars, status, reason, attempt, message_id, updated_at }
}

/// Recipients after `after` (a position), in order, optionally of one status.
pub async fn recipients(
    pool: &PgPool,
    tenant: Uuid,
    campaign: Uuid,
    status: Option<&str>,
    after: i32,
    limit: i64,
) -> Result<Vec<RecipientRow>, StoreError> {
    let rows: Vec<RecipientTuple> = sqlx::query_as(
        "SELECT position, address, vars, status, reason, attempt, message_id, updated_at FROM campaign_recipients \
         WHERE tenant_id = $1 AND campaign_id = $2 AND ($3::text IS NULL OR status = $3) AND position > $4 \
         ORDER BY position LIMIT $5",
    )
    .bind(tenant)
    .bind(campaign)
    .bind(status)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows.into_iter().map(recipient).collect())
}

/// Sets a campaign's status if it is now one of `from`; returns the campaign as it is then,
/// and whether it changed.
pub async fn transition(
    pool: &PgPool,
    tenant: Uuid,
    id: Uuid,
    from: &[&str],
    to: &str,
) -> Result<Option<(CampaignRow, bool)>, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::Query)?;
    let from: Vec<String> = from.iter().map(|status| (*status).to_owned()).collect();
    let changed: Option<Uuid> = sqlx::query_scalar(
        "UPDATE campaigns SET status = $4, updated_at = clock_timestamp(), \
           finished_at = CASE WHEN $4 IN ('cancelled', 'finished') THEN now() ELSE finished_at END \
         WHERE tenant_id = $1 AND id = $2 AND status = ANY($3) RETURNING id",
    )
    .bind(tenant)
    .bind(id)
    .bind(&from)
    .bind(to)
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::Query)?;
    if changed.is_some() && to == "cancelled" {
        sqlx::query(
            "UPDATE campaign_recipients SET status = 'skipped', reason = 'the campaign was cancelled', updated_at = now() \
             WHERE tenant_id = $1 AND campaign_id = $2 AND status IN ('pending', 'deferred')",
        )
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::Query)?;
    }
    tx.commit().await.map_err(StoreError::Query)?;
    Ok(get(pool, tenant, id).await?.map(|row| (row, changed.is_some())))
}

/// Campaigns with work to do now (running, or scheduled and due): each tenant's oldest first,
/// then their second, and so on, so one tenant's many campaigns never keep another's waiting.
pub async fn due(pool: &PgPool, limit: i64) -> Result<Vec<CampaignRow>, StoreError> {
    let rows: Vec<CampaignTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CAMPAIGN_COLUMNS} WHERE c.status IN ('scheduled', 'running') AND c.start_at <= now() \
         ORDER BY row_number() OVER (PARTITION BY c.tenant_id ORDER BY c.start_at, c.id), c.start_at LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows.into_iter().map(campaign).collect())
}

/// Marks a scheduled campaign running (its start time came).
pub async fn start(pool: &PgPool, id: Uuid) -> Result<(), StoreError> {
    sqlx::query("UPDATE campaigns SET status = 'running', updated_at = clock_timestamp() WHERE id = $1 AND status = 'scheduled'")
        .bind(id)
        .execute(pool)
        .await
        .map_err(StoreError::Query)?;
    Ok(())
}

/// A recipient the broadcaster may hand over now, and whether its address opted out since the
/// campaign was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Todo {
    pub position: i32,
    pub address: String,
    pub vars: serde_json::Value,
    pub attempt: i32,
    pub status: String,
    /// Set when a message id was reserved for the recipient (it may have been handed over).
    pub message_id: Option<Uuid>,
    pub opted_out: Option<String>,
}

/// Pending recipients (and deferred ones whose wait is over) after `after`, in order.
pub async fn todo(pool: &PgPool, campaign: &CampaignRow, after: i32, limit: i64) -> Result<Vec<Todo>, StoreError> {
    type Row = (i32, String, serde_json::Value, i32, String, Option<Uuid>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.position, r.address, r.vars, r.attempt, r.status, r.message_id, o.reason FROM campaign_recipients r \
         LEFT JOIN opt_outs o ON o.tenant_id = r.tenant_id AND o.inbox_id = $3 AND o.address = r.address \
         WHERE r.campaign_id = $1 AND r.tenant_id = $2 AND r.status IN ('pending', 'deferred') \
           AND (r.not_before IS NULL OR r.not_before <= now()) AND r.position > $4 \
         ORDER BY r.position LIMIT $5",
    )
    .bind(campaign.id)
    .bind(campaign.tenant_id)
    .bind(campaign.inbox_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows
        .into_iter()
        .map(|(position, address, vars, attempt, status, message_id, opted_out)| Todo {
            position,
            address,
            vars,
            attempt,
            status,
            message_id,
            opted_out,
        })
        .collect())
}

/// Reserves message ids before recipients are handed over: `(position, message id, attempt)`.
/// The writer finds a recipient by its message id, so the id must be stored before any status of
/// that message can come back; a deferred recipient becomes pending again under its new id.
pub async fn reserve(
    pool: &PgPool,
    campaign: Uuid,
    reserved: &[(i32, Uuid, i32)],
) -> Result<std::collections::HashSet<i32>, StoreError> {
    if reserved.is_empty() {
        return Ok(Default::default());
    }
    let positions: Vec<i32> = reserved.iter().map(|(position, _, _)| *position).collect();
    let messages: Vec<Uuid> = reserved.iter().map(|(_, message, _)| *message).collect();
    let attempts: Vec<i32> = reserved.iter().map(|(_, _, attempt)| *attempt).collect();
    // Rows the writer holds right now are skipped (and reserved on a later pass): the runner
    // never waits on the writer, so the two can never deadlock.
    let done: Vec<i32> = sqlx::query_scalar(
        "UPDATE campaign_recipients r SET status = 'pending', message_id = u.message, attempt = u.attempt, \
           reason = NULL, not_before = NULL, updated_at = now() \
         FROM UNNEST($2::int4[], $3::uuid[], $4::int4[]) AS u(position, message, attempt) \
         WHERE r.campaign_id = $1 AND r.position = u.position AND r.position IN ( \
           SELECT position FROM campaign_recipients WHERE campaign_id = $1 AND position = ANY($2) \
             AND (status = 'deferred' OR (status = 'pending' AND message_id IS NULL)) \
           ORDER BY position FOR UPDATE SKIP LOCKED) \
         RETURNING r.position",
    )
    .bind(campaign)
    .bind(&positions)
    .bind(&messages)
    .bind(&attempts)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(done.into_iter().collect())
}

/// Recipients handed over under their reserved message ids: pending becomes queued (a status
/// that came back meanwhile has moved it further already, and stays). A row the writer holds is
/// skipped: the writer is moving it past `queued` anyway.
pub async fn mark_queued(pool: &PgPool, campaign: Uuid, handed: &[(i32, Uuid, i32)]) -> Result<(), StoreError> {
    if handed.is_empty() {
        return Ok(());
    }
    let positions: Vec<i32> = handed.iter().map(|(position, _, _)| *position).collect();
    let messages: Vec<Uuid> = handed.iter().map(|(_, message, _)| *message).collect();
    let attempts: Vec<i32> = handed.iter().map(|(_, _, attempt)| *attempt).collect();
    sqlx::query(
        "UPDATE campaign_recipients r SET status = 'queued', updated_at = now() \
         FROM UNNEST($2::int4[], $3::uuid[], $4::int4[]) AS u(position, message, attempt) \
         WHERE r.campaign_id = $1 AND r.position = u.position AND r.status = 'pending' \
           AND r.message_id = u.message AND r.attempt = u.attempt AND r.position IN ( \
             SELECT position FROM campaign_recipients WHERE campaign_id = $1 AND position = ANY($2) \
             ORDER BY position FOR UPDATE SKIP LOCKED)",
    )
    .bind(campaign)
    .bind(&positions)
    .bind(&messages)
    .bind(&attempts)
    .execute(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(())
}

/// Moves pending or deferred recipients to `status` (skipped, expired, deferred) with a reason;
/// `not_before` says when a deferred one may be tried again.
pub async fn mark(
    pool: &PgPool,
    campaign: Uuid,
    positions: &[i32],
    status: &str,
    reason: &str,
    not_before: Option<OffsetDateTime>,
) -> Result<(), StoreError> {
    if positions.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE campaign_recipients SET status = $3, reason = $4, not_before = $5, updated_at = now() \
         WHERE campaign_id = $1 AND position = ANY($2) AND status IN ('pending', 'deferred')",
    )
    .bind(campaign)
    .bind(positions)
    .bind(status)
    .bind(reason)
    .bind(not_before)
    .execute(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(())
}

/// A handed-over recipient that can never become a message fails with `reason`.
pub async fn fail_queued(pool: &PgPool, campaign: Uuid, position: i32, reason: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE campaign_recipients SET status = 'failed', reason = $3, updated_at = now() \
         WHERE campaign_id = $1 AND position = $2 AND status IN ('pending', 'queued', 'deferred')",
    )
    .bind(campaign)
    .bind(position)
    .bind(reason)
    .execute(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(())
}

/// Every pending or deferred recipient of an expired campaign becomes `expired`.
pub async fn expire_rest(pool: &PgPool, campaign: Uuid) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE campaign_recipients SET status = 'expired', reason = 'the campaign expired before it was sent', \
           updated_at = now() WHERE campaign_id = $1 AND status IN ('pending', 'deferred')",
    )
    .bind(campaign)
    .execute(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(done.rows_affected())
}

/// Marks the campaign finished when every recipient has a final status; `true` when it did.
pub async fn finish_if_done(pool: &PgPool, campaign: Uuid) -> Result<bool, StoreError> {
    let finished: Option<Uuid> = sqlx::query_scalar(
        "UPDATE campaigns SET status = 'finished', finished_at = now(), updated_at = clock_timestamp() \
         WHERE id = $1 AND status = 'running' AND NOT EXISTS ( \
           SELECT 1 FROM campaign_recipients WHERE campaign_id = $1 AND status IN ('pending', 'queued', 'deferred')) \
         RETURNING id",
    )
    .bind(campaign)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(finished.is_some())
}

/// A delivery status of a campaign message, as the writer applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageOutcome {
    pub message_id: Uuid,
    pub tenant_id: Uuid,
    /// The recipient status it means (sent, delivered, read, failed, skipped, expired, deferred).
    pub status: &'static str,
    pub reason: Option<String>,
    pub at_ms: i64,
}

/// The recipient status a message status means: WhatsApp's per-user marketing cap (131049)
/// defers, chatdesk's own codes skip or expire.
pub fn recipient_status(status: chatdesk_core::events::MessageStatus, code: Option<&str>) -> Option<&'static str> {
    use chatdesk_core::events::MessageStatus;
    Some(match (status, code) {
        (MessageStatus::Queued, _) => return None,
        (MessageStatus::Sent, _) => "sent",
        (MessageStatus::Delivered, _) => "delivered",
        (MessageStatus::Read, _) => "read",
        (MessageStatus::Failed, Some("131049")) => "deferred",
        (MessageStatus::Failed, Some("campaign_cancelled")) => "skipped",
        (MessageStatus::Failed, Some("expired")) => "expired",
        (MessageStatus::Failed, _) => "failed",
    })
}

/// Applies message outcomes to the recipients they belong to (others match no row), forward
/// only; a deferred recipient waits `defer` before it is tried again.
pub async fn apply_outcomes(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    outcomes: &[MessageOutcome],
    defer_seconds: i64,
) -> Result<(), StoreError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = outcomes.iter().map(|outcome| outcome.message_id).collect();
    let tenants: Vec<Uuid> = outcomes.iter().map(|outcome| outcome.tenant_id).collect();
    let statuses: Vec<&str> = outcomes.iter().map(|outcome| outcome.status).collect();
    let reasons: Vec<Option<String>> = outcomes.iter().map(|outcome| outcome.reason.clone()).collect();
    let times: Vec<i64> = outcomes.iter().map(|outcome| outcome.at_ms).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE campaign_recipients r SET status = u.status, \
           reason = CASE WHEN u.status IN ('failed', 'deferred', 'skipped', 'expired') THEN u.reason ELSE r.reason END, \
           sent_at = CASE WHEN u.status IN ('sent', 'delivered', 'read') THEN \
                       COALESCE(r.sent_at, to_timestamp(u.at / 1000.0)) ELSE r.sent_at END, \
           not_before = CASE WHEN u.status = 'deferred' THEN now() + make_interval(secs => $6) ELSE r.not_before END, \
           updated_at = now() \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[]) AS u(id, tenant, status, reason, at) \
         WHERE r.message_id = u.id AND r.tenant_id = u.tenant AND {} < {}",
        rank("r.status"),
        rank("u.status")
    )))
    .bind(&ids)
    .bind(&tenants)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&times)
    .bind(defer_seconds as f64)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::Query)?;
    Ok(())
}

/// Records that `address` of `inbox` wants no campaigns (`reason`: what it did).
pub async fn opt_out(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: Uuid,
    contact: Uuid,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO opt_outs (tenant_id, inbox_id, address, reason) \
         SELECT tenant_id, inbox_id, external_id, $3 FROM contacts WHERE tenant_id = $1 AND id = $2 \
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(contact)
    .bind(reason)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::Query)?;
    Ok(())
}

/// The reason an unreachable address's opt-out carries, so reaching it again lifts only that one
/// (a STOP stays).
const UNREACHABLE: &str = "unreachable: ";

/// Records what a channel said about an address: unreachable ones are opted out, and lifted
/// when the channel says they are reachable again.
pub async fn set_reachable(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: Uuid,
    change: &chatdesk_core::events::ContactReachability,
) -> Result<(), StoreError> {
    let query = if change.reachable {
        sqlx::query(
            "DELETE FROM opt_outs WHERE tenant_id = $1 AND inbox_id = $2 AND address = $3 AND starts_with(reason, $4)",
        )
        .bind(tenant)
        .bind(change.inbox_id)
        .bind(&change.external_id)
        .bind(UNREACHABLE)
    } else {
        sqlx::query(
            "INSERT INTO opt_outs (tenant_id, inbox_id, address, reason) \
             SELECT $1, id, $3, $4 FROM inboxes WHERE tenant_id = $1 AND id = $2 ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(change.inbox_id)
        .bind(&change.external_id)
        .bind(format!("{UNREACHABLE}{}", change.reason))
    };
    query.execute(&mut **tx).await.map_err(StoreError::Query)?;
    Ok(())
}

/// Removes the contact's opt-out (it asked to receive campaigns again).
pub async fn opt_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: Uuid,
    contact: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM opt_outs o USING contacts c \
         WHERE c.tenant_id = $1 AND c.id = $2 AND o.tenant_id = c.tenant_id AND o.inbox_id = c.inbox_id \
           AND o.address = c.external_id",
    )
    .bind(tenant)
    .bind(contact)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::Query)?;
    Ok(())
}

/// Sets the tenant's unique-recipient quota per 24 hours.
pub async fn set_daily_recipients(pool: &PgPool, tenant: Uuid, quota: i32) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE tenants SET campaign_daily_recipients = $2 WHERE id = $1")
        .bind(tenant)
        .bind(quota)
        .execute(pool)
        .await
        .map_err(StoreError::Query)?;
    Ok(done.rows_affected() == 1)
}
