//! What the bot reads and writes in PostgreSQL: a conversation's recent history (the model's
//! context), whether a human holds the conversation, and the orders flows take.

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

/// One earlier message, oldest first in [`recent_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryMessage {
    pub event_id: Uuid,
    /// `customer`, `agent`, `bot`, `system` or `campaign`.
    pub sender_kind: String,
    pub text: String,
}

/// The last `limit` messages of a conversation, oldest first.
pub async fn recent_messages(
    pool: &PgPool,
    tenant: Uuid,
    conversation: Uuid,
    limit: i64,
) -> Result<Vec<HistoryMessage>, StoreError> {
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT event_id, sender_kind, body FROM ( \
           SELECT event_id, sender_kind, body, offset_ms, offset_seq FROM messages \
           WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY offset_ms DESC, offset_seq DESC LIMIT $3) recent \
         ORDER BY offset_ms, offset_seq",
    )
    .bind(tenant)
    .bind(conversation)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows.into_iter().map(|(event_id, sender_kind, text)| HistoryMessage { event_id, sender_kind, text }).collect())
}

/// How a human holds a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Assigned,
    AgentReplied,
}

/// Whether a human holds the conversation as PostgreSQL knows it: assigned to an agent, or an
/// agent has written in it since `since_ms` (the bot session's start). `None` too when the
/// writer has not stored the conversation yet.
pub async fn human_holds(
    pool: &PgPool,
    tenant: Uuid,
    conversation: Uuid,
    since_ms: i64,
) -> Result<Option<Holder>, StoreError> {
    let held: Option<(bool, bool)> = sqlx::query_as(
        "SELECT c.assignee_id IS NOT NULL, EXISTS ( \
           SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.sender_kind = 'agent' \
             AND m.offset_ms >= $3) \
         FROM conversations c WHERE c.tenant_id = $1 AND c.id = $2",
    )
    .bind(tenant)
    .bind(conversation)
    .bind(since_ms)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(match held {
        Some((true, _)) => Some(Holder::Assigned),
        Some((false, true)) => Some(Holder::AgentReplied),
        _ => None,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder<'a> {
    pub id: Uuid,
    pub tenant: Uuid,
    pub inbox: Uuid,
    pub conversation: Uuid,
    pub contact: Uuid,
    pub flow: &'a str,
    pub fields: &'a serde_json::Value,
}

/// Inserts an order once per id; `true` when this call inserted it. The conversation must be
/// stored already (a foreign key): a flow finishes many messages after the conversation began.
pub async fn insert_order(pool: &PgPool, order: &NewOrder<'_>) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO orders (id, tenant_id, inbox_id, conversation_id, contact_id, flow, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
    )
    .bind(order.id)
    .bind(order.tenant)
    .bind(order.inbox)
    .bind(order.conversation)
    .bind(order.contact)
    .bind(order.flow)
    .bind(order.fields)
    .execute(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(inserted.rows_affected() == 1)
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub id: Uuid,
    /// `None` for an order no flow took.
    pub inbox_id: Option<Uuid>,
    pub conversation_id: Uuid,
    pub contact_id: Uuid,
    pub flow: String,
    pub fields: serde_json::Value,
    /// new, confirmed or cancelled.
    pub status: String,
    pub created_at: OffsetDateTime,
}

type OrderTuple = (Uuid, Option<Uuid>, Uuid, Uuid, Option<String>, serde_json::Value, String, OffsetDateTime);

/// A tenant's orders, newest first, `limit` after the `(created_at, id)` cursor.
pub async fn orders(
    pool: &PgPool,
    tenant: Uuid,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<OrderRow>, StoreError> {
    let (at, id) = after.unzip();
    let rows: Vec<OrderTuple> = sqlx::query_as(
        "SELECT id, inbox_id, conversation_id, contact_id, flow, details, status, created_at FROM orders \
         WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(tenant)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows
        .into_iter()
        .map(|(id, inbox_id, conversation_id, contact_id, flow, fields, status, created_at)| OrderRow {
            id,
            inbox_id,
            conversation_id,
            contact_id,
            flow: flow.unwrap_or_default(),
            fields,
            status,
            created_at,
        })
        .collect())
}
