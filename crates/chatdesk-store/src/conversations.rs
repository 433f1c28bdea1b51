//! Reading conversations and their history, always scoped to one tenant: a row of another
//! tenant is indistinguishable from a row that does not exist.

use chatdesk_core::events::ConversationStatus;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

#[derive(Debug, Clone, PartialEq)]
pub struct ConversationRow {
    pub id: Uuid,
    pub inbox_id: Uuid,
    /// The channel identity the customer wrote from: where replies go.
    pub contact_id: Uuid,
    /// The person: the contact itself, or the one it was merged into.
    pub person_id: Uuid,
    /// The person's name.
    pub contact_name: Option<String>,
    pub contact_external_id: String,
    pub status: ConversationStatus,
    pub assignee_id: Option<Uuid>,
    pub last_message_id: Option<Uuid>,
    pub last_message_text: Option<String>,
    pub last_message_at: Option<OffsetDateTime>,
    pub last_activity_at: OffsetDateTime,
    pub unread_count: i32,
    pub created_at: OffsetDateTime,
    /// Why the bot handed the conversation to humans (until it is resolved), and its detail.
    pub handoff: Option<(String, Option<String>)>,
}

type ConversationTuple = (
    Uuid,
    Uuid,
    Uuid,
    Uuid,
    Option<String>,
    String,
    String,
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
    Option<OffsetDateTime>,
    OffsetDateTime,
    i32,
    OffsetDateTime,
    Option<String>,
    Option<String>,
);

fn conversation(row: ConversationTuple) -> ConversationRow {
    let (
        id,
        inbox_id,
        contact_id,
        person_id,
        contact_name,
        contact_external_id,
        status,
        assignee_id,
        last_message_id,
        last_message_text,
        last_message_at,
        last_activity_at,
        unread_count,
        created_at,
        handoff_reason,
        handoff_detail,
    ) = row;
    ConversationRow {
        id,
        inbox_id,
        contact_id,
        person_id,
        contact_name,
        contact_external_id,
        // The schema's CHECK admits only the four statuses.
        status: ConversationStatus::parse(&status).unwrap_or(ConversationStatus::Open),
        assignee_id,
        last_message_id,
        last_message_text,
        last_message_at,
        last_activity_at,
        unread_count,
        created_at,
        handoff: handoff_reason.map(|reason| (reason, handoff_detail)),
    }
}

/// A merged contact's conversations keep it (its channel identity is where replies go) and show
/// the person it was merged into: `s`, joined as [`PERSON_JOIN`].
const CONVERSATION_COLUMNS: &str = "c.id, c.inbox_id, c.contact_id, COALESCE(k.merged_into, k.id), \
     COALESCE(s.name, k.name), k.external_id, c.status, c.assignee_id, \
     c.last_message_id, c.last_message_text, c.last_message_at, c.last_activity_at, c.unread_count, c.created_at, \
     c.handoff_reason, c.handoff_detail";

const PERSON_JOIN: &str = "LEFT JOIN contacts s ON s.id = k.merged_into";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssigneeFilter {
    Any,
    Unassigned,
    User(Uuid),
}

#[derive(Debug, Clone)]
pub struct ConversationFilter {
    pub status: Option<String>,
    pub assignee: AssigneeFilter,
    pub inbox: Option<Uuid>,
    /// Only conversations with this label.
    pub label: Option<Uuid>,
    /// Only conversations of these inboxes (an agent's readable ones); `None`: every inbox.
    pub inboxes: Option<Vec<Uuid>>,
    /// Keyset cursor: only conversations after this `(last_activity_at, id)` in list order.
    pub after: Option<(OffsetDateTime, Uuid)>,
    pub limit: i64,
}

/// A tenant's conversations, most recent activity first.
pub async fn list_conversations(
    pool: &PgPool,
    tenant: Uuid,
    filter: &ConversationFilter,
) -> Result<Vec<ConversationRow>, StoreError> {
    let (assignee_mode, assignee) = match filter.assignee {
        AssigneeFilter::Any => ("any", None),
        AssigneeFilter::Unassigned => ("none", None),
        AssigneeFilter::User(user) => ("user", Some(user)),
    };
    let (after_time, after_id) = filter.after.map_or((None, None), |(time, id)| (Some(time), Some(id)));
    let sql = format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations c JOIN contacts k ON k.id = c.contact_id {PERSON_JOIN} \
         WHERE c.tenant_id = $1 \
           AND ($2::text IS NULL OR c.status = $2) \
           AND ($3 = 'any' OR ($3 = 'none' AND c.assignee_id IS NULL) OR ($3 = 'user' AND c.assignee_id = $4)) \
           AND ($5::uuid IS NULL OR c.inbox_id = $5) \
           AND ($6::timestamptz IS NULL OR (c.last_activity_at, c.id) < ($6, $7)) \
           AND (c.last_message_id IS NOT NULL OR NOT EXISTS ( \
                 SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.sender_kind = 'campaign')) \
           AND ($9::uuid IS NULL OR EXISTS ( \
                 SELECT 1 FROM conversation_labels l WHERE l.conversation_id = c.id AND l.label_id = $9)) \
           AND ($10::uuid[] IS NULL OR c.inbox_id = ANY($10)) \
         ORDER BY c.last_activity_at DESC, c.id DESC LIMIT $8"
    );
    let rows: Vec<ConversationTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(&filter.status)
        .bind(assignee_mode)
        .bind(assignee)
        .bind(filter.inbox)
        .bind(after_time)
        .bind(after_id)
        .bind(filter.limit)
        .bind(filter.label)
        .bind(&filter.inboxes)
        .fetch_all(pool)
        .await
        .map_err(StoreError::Query)?;
    Ok(rows.into_iter().map(conversation).collect())
}

/// Where a reply to the conversation goes and whether it may: `(inbox, contact, status)`. One
/// row by its key, without the list's joins: every agent's and bot's reply asks it.
pub async fn reply_target(
    pool: &PgPool,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<(Uuid, Uuid, ConversationStatus)>, StoreError> {
    let row: Option<(Uuid, Uuid, String)> =
        sqlx::query_as("SELECT inbox_id, contact_id, status FROM conversations WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::Query)?;
    Ok(row.map(|(inbox, contact, status)| {
        (inbox, contact, ConversationStatus::parse(&status).unwrap_or(ConversationStatus::Open))
    }))
}

pub async fn get_conversation(pool: &PgPool, tenant: Uuid, id: Uuid) -> Result<Option<ConversationRow>, StoreError> {
    let sql = format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations c JOIN contacts k ON k.id = c.contact_id {PERSON_JOIN} \
         WHERE c.tenant_id = $1 AND c.id = $2"
    );
    let row: Option<ConversationTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::Query)?;
    Ok(row.map(conversation))
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    pub event_id: Uuid,
    pub stream_offset: String,
    pub offset_ms: i64,
    pub offset_seq: i64,
    pub direction: String,
    pub sender_kind: String,
    pub sender_id: Option<Uuid>,
    pub body: String,
    pub extra: Option<serde_json::Value>,
    pub status: Option<String>,
    pub failure_reason: Option<String>,
    pub provider_message_id: Option<String>,
    pub attempts: Option<i16>,
    pub created_at: OffsetDateTime,
}

type MessageTuple = (
    Uuid,
    String,
    i64,
    i64,
    String,
    String,
    Option<Uuid>,
    String,
    Option<serde_json::Value>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i16>,
    OffsetDateTime,
);

/// A conversation's messages, newest first, older than `before` (a stream offset) if given.
pub async fn list_messages(
    pool: &PgPool,
    tenant: Uuid,
    conversation: Uuid,
    before: Option<(i64, i64)>,
    limit: i64,
) -> Result<Vec<MessageRow>, StoreError> {
    let (before_ms, before_seq) = before.map_or((None, None), |(ms, seq)| (Some(ms), Some(seq)));
    let rows: Vec<MessageTuple> = sqlx::query_as(
        "SELECT event_id, stream_offset, offset_ms, offset_seq, direction, sender_kind, sender_id, body, extra, status, \
                failure_reason, provider_message_id, attempts, created_at \
         FROM messages WHERE tenant_id = $1 AND conversation_id = $2 \
           AND ($3::int8 IS NULL OR (offset_ms, offset_seq) < ($3, $4)) \
         ORDER BY offset_ms DESC, offset_seq DESC LIMIT $5",
    )
    .bind(tenant)
    .bind(conversation)
    .bind(before_ms)
    .bind(before_seq)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows
        .into_iter()
        .map(
            |(
                event_id,
                stream_offset,
                offset_ms,
                offset_seq,
                direction,
                sender_kind,
                sender_id,
                body,
                extra,
                status,
                failure_reason,
                provider_message_id,
                attempts,
                created_at,
            )| MessageRow {
                event_id,
                stream_offset,
                offset_ms,
                offset_seq,
                direction,
                sender_kind,
                sender_id,
                body,
                extra,
                status,
                failure_reason,
                provider_message_id,
                attempts,
                created_at,
            },
        )
        .collect())
}

/// The message (event id and conversation) a provider knows by `provider_message_id`.
pub async fn message_by_provider_id(
    pool: &PgPool,
    tenant: Uuid,
    inbox: Uuid,
    provider_message_id: &str,
) -> Result<Option<(Uuid, Uuid)>, StoreError> {
    // Only an outbound message of the same inbox: a status never moves a customer's message or
    // another inbox's message that happens to carry the same provider id.
    sqlx::query_as(
        "SELECT m.event_id, m.conversation_id FROM messages m \
         JOIN conversations c ON c.tenant_id = m.tenant_id AND c.id = m.conversation_id \
         WHERE m.tenant_id = $1 AND m.provider_message_id = $2 AND m.direction = 'outbound' AND c.inbox_id = $3 \
         ORDER BY m.offset_ms DESC LIMIT 1",
    )
    .bind(tenant)
    .bind(provider_message_id)
    .bind(inbox)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::Query)
}

/// A stored event, as a resuming client receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEventRow {
    pub event_id: Uuid,
    pub event_type: String,
    pub conversation_id: Option<Uuid>,
    pub partition: i16,
    pub offset_ms: i64,
    pub offset_seq: i64,
    pub payload: serde_json::Value,
    pub occurred_at_ms: i64,
}

type StoredEventTuple = (Uuid, String, Option<Uuid>, i16, i64, i64, serde_json::Value, i64);

/// A tenant's stored events (of one conversation, if given) with offsets after `after` and
/// before `before`, in stream order: the part of a client's gap that the stream no longer holds.
/// The offset of a conversation's first stored event (its `conversation.created`), if any.
pub async fn first_event_offset(
    pool: &PgPool,
    tenant: Uuid,
    conversation: Uuid,
) -> Result<Option<(i64, i64)>, StoreError> {
    sqlx::query_as(
        "SELECT offset_ms, offset_seq FROM events WHERE conversation_id = $2 AND tenant_id = $1 \
         ORDER BY offset_ms, offset_seq LIMIT 1",
    )
    .bind(tenant)
    .bind(conversation)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::Query)
}

pub async fn events_between(
    pool: &PgPool,
    tenant: Uuid,
    conversation: Option<Uuid>,
    after: (i64, i64),
    before: Option<(i64, i64)>,
    limit: i64,
) -> Result<Vec<StoredEventRow>, StoreError> {
    let (before_ms, before_seq) = before.map_or((None, None), |(ms, seq)| (Some(ms), Some(seq)));
    // Two statements, not one with `$2 IS NULL OR …`: a prepared statement's generic plan would
    // then serve a conversation's replay from the tenant's index, reading all its events.
    let filter = match conversation {
        Some(_) => "conversation_id = $2 AND tenant_id = $1",
        None => "tenant_id = $1 AND $2::uuid IS NULL",
    };
    let rows: Vec<StoredEventTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT event_id, type, conversation_id, stream_partition, offset_ms, offset_seq, payload, \
                (extract(epoch from occurred_at) * 1000)::int8 \
         FROM events WHERE {filter} \
           AND (offset_ms, offset_seq) > ($3, $4) \
           AND ($5::int8 IS NULL OR (offset_ms, offset_seq) < ($5, $6)) \
         ORDER BY offset_ms, offset_seq LIMIT $7"
    )))
    .bind(tenant)
    .bind(conversation)
    .bind(after.0)
    .bind(after.1)
    .bind(before_ms)
    .bind(before_seq)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows
        .into_iter()
        .map(|(event_id, event_type, conversation_id, partition, offset_ms, offset_seq, payload, occurred_at_ms)| {
            StoredEventRow {
                event_id,
                event_type,
                conversation_id,
                partition,
                offset_ms,
                offset_seq,
                payload,
                occurred_at_ms,
            }
        })
        .collect())
}
