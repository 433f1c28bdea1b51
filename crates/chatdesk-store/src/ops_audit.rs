//! The operators' audit log: one row per action taken on the streams.

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::StoreError;

/// One recorded action.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub target: serde_json::Value,
    pub entries: i64,
    pub outcome: String,
    pub detail: String,
}

/// What an action was; the row's id and time are given by the database.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a serde_json::Value,
    pub entries: i64,
    pub outcome: &'a str,
    pub detail: &'a str,
}

type Row = (i64, OffsetDateTime, String, String, serde_json::Value, i64, String, String);

fn record(row: Row) -> AuditRecord {
    let (id, at, actor, action, target, entries, outcome, detail) = row;
    AuditRecord { id, at, actor, action, target, entries, outcome, detail }
}

/// Records an action; returns the stored row.
pub async fn insert(db: &PgPool, audit: &NewAudit<'_>) -> Result<AuditRecord, StoreError> {
    let row: Row = sqlx::query_as(
        "INSERT INTO ops_audit (actor, action, target, entries, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING id, at, actor, action, target, entries, outcome, detail",
    )
    .bind(audit.actor)
    .bind(audit.action)
    .bind(audit.target)
    .bind(audit.entries)
    .bind(audit.outcome)
    .bind(audit.detail)
    .fetch_one(db)
    .await
    .map_err(StoreError::Query)?;
    Ok(record(row))
}

/// Updates what an action did so far, or how it ended: a record is written when an action
/// starts (so one interrupted midway is still on record) and completed here.
pub async fn update(db: &PgPool, id: i64, entries: i64, outcome: &str, detail: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE ops_audit SET entries = $2, outcome = $3, detail = $4 WHERE id = $1")
        .bind(id)
        .bind(entries)
        .bind(outcome)
        .bind(detail)
        .execute(db)
        .await
        .map_err(StoreError::Query)?;
    Ok(())
}

/// The newest records first, `limit` of them, older than `before` (an id) when given.
pub async fn list(db: &PgPool, limit: i64, before: Option<i64>) -> Result<Vec<AuditRecord>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, at, actor, action, target, entries, outcome, detail FROM ops_audit \
         WHERE $2::int8 IS NULL OR id < $2 ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .bind(before)
    .fetch_all(db)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows.into_iter().map(record).collect())
}

/// Records newer than `after` (an id), oldest first: what a live view has not shown yet.
pub async fn since(db: &PgPool, after: i64, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, at, actor, action, target, entries, outcome, detail FROM ops_audit \
         WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows.into_iter().map(record).collect())
}

/// The newest record's id (0 when there is none): where a live view starts.
pub async fn latest_id(db: &PgPool) -> Result<i64, StoreError> {
    let (id,): (Option<i64>,) =
        sqlx::query_as("SELECT max(id) FROM ops_audit").fetch_one(db).await.map_err(StoreError::Query)?;
    Ok(id.unwrap_or(0))
}
