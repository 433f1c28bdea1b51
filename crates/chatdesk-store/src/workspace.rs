//! The agent's workspace, read and configured: notes, labels, canned responses, contacts,
//! search and inbox membership. Always scoped to one tenant; a row of another tenant is
//! indistinguishable from a row that does not exist. Notes, labels on conversations and
//! contact changes are written by the writer from their events; the tenant's settings here
//! (label definitions, canned responses, inbox members) are written directly.

use std::collections::HashMap;

use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

#[derive(Debug, Clone, PartialEq)]
pub struct NoteRow {
    pub event_id: Uuid,
    pub stream_offset: String,
    pub author_kind: String,
    pub author_id: Option<Uuid>,
    pub body: String,
    pub mentions: Vec<Uuid>,
    pub created_at: OffsetDateTime,
}

type NoteTuple = (Uuid, String, String, Option<Uuid>, String, Vec<Uuid>, OffsetDateTime);

/// A conversation's notes, oldest first.
pub async fn list_notes(pool: &PgPool, tenant: Uuid, conversation: Uuid) -> Result<Vec<NoteRow>, StoreError> {
    let rows: Vec<NoteTuple> = sqlx::query_as(
        "SELECT event_id, stream_offset, author_kind, author_id, body, mentions, created_at FROM notes \
         WHERE conversation_id = $2 AND tenant_id = $1 ORDER BY offset_ms, offset_seq LIMIT 1000",
    )
    .bind(tenant)
    .bind(conversation)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows
        .into_iter()
        .map(|(event_id, stream_offset, author_kind, author_id, body, mentions, created_at)| NoteRow {
            event_id,
            stream_offset,
            author_kind,
            author_id,
            body,
            mentions,
            created_at,
        })
        .collect())
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabelRow {
    pub id: Uuid,
    pub name: String,
    pub colour: String,
}

pub async fn list_labels(pool: &PgPool, tenant: Uuid) -> Result<Vec<LabelRow>, StoreError> {
    let rows: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT id, name, colour FROM labels WHERE tenant_id = $1 ORDER BY lower(name)")
            .bind(tenant)
            .fetch_all(pool)
            .await
            .map_err(StoreError::Query)?;
    Ok(rows.into_iter().map(|(id, name, colour)| LabelRow { id, name, colour }).collect())
}

/// Creates a label; `None` when the tenant has one of that name (case aside).
pub async fn create_label(
    pool: &PgPool,
    tenant: Uuid,
    name: &str,
    colour: &str,
) -> Result<Option<LabelRow>, StoreError> {
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO labels (id, tenant_id, name, colour) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id, lower(name)) DO NOTHING",
    )
    .bind(id)
    .bind(tenant)
    .bind(name)
    .bind(colour)
    .execute(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok((inserted.rows_affected() == 1).then(|| LabelRow { id, name: name.to_owned(), colour: colour.to_owned() }))
}

/// Deletes a label and takes it off every conversation; whether it existed.
pub async fn delete_label(pool: &PgPool, tenant: Uuid, id: Uuid) -> Result<bool, StoreError> {
    let deleted = sqlx::query("DELETE FROM labels WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(pool)
        .await
        .map_err(StoreError::Query)?;
    Ok(deleted.rows_affected() == 1)
}

/// Which of `ids` are labels of the tenant.
pub async fn known_labels(pool: &PgPool, tenant: Uuid, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar("SELECT id FROM labels WHERE tenant_id = $1 AND id = ANY($2)")
        .bind(tenant)
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(StoreError::Query)
}

/// The labels of each of `conversations`.
pub async fn labels_of(
    pool: &PgPool,
    tenant: Uuid,
    conversations: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Vec<Uuid>>, StoreError> {
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT cl.conversation_id, cl.label_id FROM conversation_labels cl JOIN labels l ON l.id = cl.label_id \
         WHERE cl.tenant_id = $1 AND cl.conversation_id = ANY($2) ORDER BY lower(l.name)",
    )
    .bind(tenant)
    .bind(conversations)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    let mut labels: std::collections::HashMap<Uuid, Vec<Uuid>> = Default::default();
    for (conversation, label) in rows {
        labels.entry(conversation).or_default().push(label);
    }
    Ok(labels)
}

#[derive(Debug, Clone, PartialEq)]
pub struct CannedRow {
    pub id: Uuid,
    pub shortcode: String,
    pub body: String,
}

pub async fn list_canned(pool: &PgPool, tenant: Uuid) -> Result<Vec<CannedRow>, StoreError> {
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT id, shortcode, body FROM canned_responses WHERE tenant_id = $1 ORDER BY shortcode LIMIT 1000",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows.into_iter().map(|(id, shortcode, body)| CannedRow { id, shortcode, body }).collect())
}

/// The most canned responses a tenant keeps.
pub const MAX_CANNED: i64 = 1000;

/// What creating a canned response did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created<T> {
    Done(T),
    /// The shortcode (or name) is another row's.
    Taken,
    /// The tenant has as many as it may keep.
    Full,
}

/// Creates a canned response, unless the shortcode is taken or the tenant has [`MAX_CANNED`].
pub async fn create_canned(
    pool: &PgPool,
    tenant: Uuid,
    shortcode: &str,
    body: &str,
    created_by: Option<Uuid>,
) -> Result<Created<CannedRow>, StoreError> {
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO canned_responses (id, tenant_id, shortcode, body, created_by) \
         SELECT $1, $2, $3, $4, $5 WHERE (SELECT count(*) FROM canned_responses WHERE tenant_id = $2) < $6 \
         ON CONFLICT (tenant_id, shortcode) DO NOTHING",
    )
    .bind(id)
    .bind(tenant)
    .bind(shortcode)
    .bind(body)
    .bind(created_by)
    .bind(MAX_CANNED)
    .execute(pool)
    .await
    .map_err(StoreError::Query)?;
    if inserted.rows_affected() == 1 {
        return Ok(Created::Done(CannedRow { id, shortcode: shortcode.to_owned(), body: body.to_owned() }));
    }
    let taken: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM canned_responses WHERE tenant_id = $1 AND shortcode = $2)")
            .bind(tenant)
            .bind(shortcode)
            .fetch_one(pool)
            .await
            .map_err(StoreError::Query)?;
    Ok(if taken { Created::Taken } else { Created::Full })
}

/// Who made a canned response: `None` if there is no such response in the tenant.
pub async fn canned_creator(pool: &PgPool, tenant: Uuid, id: Uuid) -> Result<Option<Option<Uuid>>, StoreError> {
    sqlx::query_scalar("SELECT created_by FROM canned_responses WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::Query)
}

/// What an update found.
#[derive(Debug, Clone, PartialEq)]
pub enum Updated<T> {
    Done(T),
    NotFound,
    /// The new shortcode (or name) is another row's.
    Taken,
}

pub async fn update_canned(
    pool: &PgPool,
    tenant: Uuid,
    id: Uuid,
    shortcode: Option<&str>,
    body: Option<&str>,
) -> Result<Updated<CannedRow>, StoreError> {
    let row: Result<Option<(Uuid, String, String)>, sqlx::Error> = sqlx::query_as(
        "UPDATE canned_responses SET shortcode = COALESCE($3, shortcode), body = COALESCE($4, body), \
           updated_at = now() WHERE tenant_id = $1 AND id = $2 RETURNING id, shortcode, body",
    )
    .bind(tenant)
    .bind(id)
    .bind(shortcode)
    .bind(body)
    .fetch_optional(pool)
    .await;
    match row {
        Ok(Some((id, shortcode, body))) => Ok(Updated::Done(CannedRow { id, shortcode, body })),
        Ok(None) => Ok(Updated::NotFound),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(Updated::Taken),
        Err(error) => Err(StoreError::Query(error)),
    }
}

pub async fn delete_canned(pool: &PgPool, tenant: Uuid, id: Uuid) -> Result<bool, StoreError> {
    let deleted = sqlx::query("DELETE FROM canned_responses WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(pool)
        .await
        .map_err(StoreError::Query)?;
    Ok(deleted.rows_affected() == 1)
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContactRow {
    pub id: Uuid,
    pub inbox_id: Uuid,
    pub external_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub created_at: OffsetDateTime,
    /// Set when this contact was merged into another.
    pub merged_into: Option<Uuid>,
}

type ContactTuple = (Uuid, Uuid, String, Option<String>, Option<String>, Option<String>, OffsetDateTime, Option<Uuid>);

fn contact((id, inbox_id, external_id, name, email, phone, created_at, merged_into): ContactTuple) -> ContactRow {
    ContactRow { id, inbox_id, external_id, name, email, phone, created_at, merged_into }
}

pub async fn get_contact(pool: &PgPool, tenant: Uuid, id: Uuid) -> Result<Option<ContactRow>, StoreError> {
    let row: Option<ContactTuple> = sqlx::query_as(
        "SELECT id, inbox_id, external_id, name, email, phone, created_at, merged_into FROM contacts \
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(row.map(contact))
}

/// A channel identity of a contact, with its inbox's name and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityRow {
    pub contact_id: Uuid,
    pub inbox_id: Uuid,
    pub inbox_name: String,
    pub inbox_kind: String,
    pub external_id: String,
}

/// A contact's conversations as [`contact_conversations`] lists them.
pub type ContactConversation = (Uuid, Uuid, String, OffsetDateTime);

/// [`identities`], [`contact_conversations`] and [`last_seen`] of one contact, read in one
/// snapshot: a merge the writer commits between two separate reads would show the merged
/// contact's conversations without its identity, or the other way round.
pub async fn contact_panel(
    pool: &PgPool,
    tenant: Uuid,
    id: Uuid,
) -> Result<(Vec<IdentityRow>, Vec<ContactConversation>, Option<OffsetDateTime>), StoreError> {
    let mut snapshot = pool.begin().await.map_err(StoreError::Query)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *snapshot)
        .await
        .map_err(StoreError::Query)?;
    let identities = identities(&mut *snapshot, tenant, id).await?;
    let conversations = contact_conversations(&mut *snapshot, tenant, id).await?;
    let last_seen = last_seen(&mut *snapshot, tenant, id).await?;
    snapshot.commit().await.map_err(StoreError::Query)?;
    Ok((identities, conversations, last_seen))
}

/// The channel identities of a contact: its own and those of the contacts merged into it.
pub async fn identities(db: impl PgExecutor<'_>, tenant: Uuid, id: Uuid) -> Result<Vec<IdentityRow>, StoreError> {
    let rows: Vec<(Uuid, Uuid, String, String, String)> = sqlx::query_as(
        "SELECT k.id, k.inbox_id, i.name, i.kind, k.external_id FROM contacts k JOIN inboxes i ON i.id = k.inbox_id \
         WHERE k.tenant_id = $1 AND (k.id = $2 OR k.merged_into = $2) ORDER BY k.created_at",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(db)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows
        .into_iter()
        .map(|(contact_id, inbox_id, inbox_name, inbox_kind, external_id)| IdentityRow {
            contact_id,
            inbox_id,
            inbox_name,
            inbox_kind,
            external_id,
        })
        .collect())
}

/// A contact's conversations, newest activity first: `(id, inbox, status, last activity)`.
pub async fn contact_conversations(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    contact: Uuid,
) -> Result<Vec<ContactConversation>, StoreError> {
    sqlx::query_as(
        "SELECT id, inbox_id, status, last_activity_at FROM conversations WHERE tenant_id = $1 AND contact_id IN ( \
           SELECT id FROM contacts WHERE tenant_id = $1 AND (id = $2 OR merged_into = $2)) \
         ORDER BY last_activity_at DESC LIMIT 100",
    )
    .bind(tenant)
    .bind(contact)
    .fetch_all(db)
    .await
    .map_err(StoreError::Query)
}

/// When the contact last wrote (its newest inbound message), if ever.
pub async fn last_seen(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    contact: Uuid,
) -> Result<Option<OffsetDateTime>, StoreError> {
    sqlx::query_scalar(
        "SELECT max(m.created_at) FROM messages m JOIN conversations c ON c.id = m.conversation_id \
         WHERE c.tenant_id = $1 AND m.direction = 'inbound' AND c.contact_id IN ( \
           SELECT id FROM contacts WHERE tenant_id = $1 AND (id = $2 OR merged_into = $2))",
    )
    .bind(tenant)
    .bind(contact)
    .fetch_one(db)
    .await
    .map_err(StoreError::Query)
}

/// A message search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageHit {
    pub event_id: Uuid,
    pub conversation_id: Uuid,
    pub stream_offset: String,
    pub direction: String,
    pub snippet: String,
    pub rank: f32,
    pub created_at: OffsetDateTime,
}

/// Marks around the matched words in snippets; the client escapes the text, then turns these
/// into highlighting, so a customer's `<b>` is never markup.
pub const HIT_START: &str = "\u{2063}[";
pub const HIT_END: &str = "]\u{2063}";

type HitTuple = (Uuid, Uuid, String, String, String, f32, OffsetDateTime);

/// How many of the newest matches a search ranks.
pub const RANKED: i64 = 1000;

/// Messages of the tenant matching `query` (web search syntax: words, "phrases", -not, or): of the
/// newest [`RANKED`] matches (more when paging past them), the best first, then the newest;
/// `offset` pages. Readable inboxes only, when `inboxes` is given.
pub async fn search_messages(
    pool: &PgPool,
    tenant: Uuid,
    query: &str,
    inboxes: Option<&[Uuid]>,
    offset: i64,
    limit: i64,
) -> Result<Option<Vec<MessageHit>>, StoreError> {
    let options = format!("StartSel={HIT_START}, StopSel={HIT_END}, MaxWords=20, MinWords=8, MaxFragments=2");
    // One statement may not hold a connection of the shared pool for long: a search that runs
    // past the timeout is cancelled and answered as such.
    let mut tx = pool.begin().await.map_err(StoreError::Query)?;
    sqlx::query("SELECT set_config('statement_timeout', '3s', true)")
        .execute(&mut *tx)
        .await
        .map_err(StoreError::Query)?;
    // Ranked among the newest RANKED matches: a word in a tenth of all messages would otherwise
    // read them all to rank them.
    let rows: Result<Vec<HitTuple>, sqlx::Error> = sqlx::query_as(
        "WITH recent AS ( \
           SELECT m.event_id, m.conversation_id, m.stream_offset, m.direction, m.body, m.created_at, m.search \
           FROM messages m \
           WHERE m.tenant_id = $1 AND m.search @@ websearch_to_tsquery('simple', $2) \
             AND ($3::uuid[] IS NULL OR EXISTS ( \
                   SELECT 1 FROM conversations c WHERE c.id = m.conversation_id AND c.inbox_id = ANY($3))) \
           ORDER BY m.created_at DESC LIMIT greatest($7, $4 + $5)), \
         hits AS ( \
           SELECT r.*, ts_rank(r.search, websearch_to_tsquery('simple', $2)) AS rank FROM recent r \
           ORDER BY rank DESC, r.created_at DESC, r.event_id LIMIT $5 OFFSET $4) \
         SELECT h.event_id, h.conversation_id, h.stream_offset, h.direction, \
                ts_headline('simple', h.body, websearch_to_tsquery('simple', $2), $6), h.rank, h.created_at \
         FROM hits h ORDER BY h.rank DESC, h.created_at DESC, h.event_id",
    )
    .bind(tenant)
    .bind(query)
    .bind(inboxes)
    .bind(offset)
    .bind(limit)
    .bind(options)
    .bind(RANKED)
    // Not prepared: planned for these very values, the planner sees how frequent the words are
    // and walks the tenant's newest messages for a frequent word instead of reading every match
    // (a prepared statement's generic plan would not).
    .persistent(false)
    .fetch_all(&mut *tx)
    .await;
    let rows = match rows {
        // query_canceled: the statement timeout.
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("57014") => return Ok(None),
        other => other.map_err(StoreError::Query)?,
    };
    tx.commit().await.map_err(StoreError::Query)?;
    Ok(Some(
        rows.into_iter()
            .map(|(event_id, conversation_id, stream_offset, direction, snippet, rank, created_at)| MessageHit {
                event_id,
                conversation_id,
                stream_offset,
                direction,
                snippet,
                rank,
                created_at,
            })
            .collect(),
    ))
}

/// Contacts of the tenant whose name, e-mail, phone or channel id contains `query` (case aside),
/// merged ones left out; known in one of `inboxes` (itself or a contact merged into it), when given.
pub async fn search_contacts(
    pool: &PgPool,
    tenant: Uuid,
    query: &str,
    inboxes: Option<&[Uuid]>,
    limit: i64,
) -> Result<Vec<ContactRow>, StoreError> {
    let pattern = format!("%{}%", query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let rows: Vec<ContactTuple> = sqlx::query_as(
        "SELECT id, inbox_id, external_id, name, email, phone, created_at, merged_into FROM contacts \
         WHERE tenant_id = $1 AND merged_into IS NULL \
           AND (name ILIKE $2 OR email ILIKE $2 OR phone ILIKE $2 OR external_id ILIKE $2) \
           AND ($4::uuid[] IS NULL OR inbox_id = ANY($4) OR EXISTS ( \
                 SELECT 1 FROM contacts a WHERE a.merged_into = contacts.id AND a.inbox_id = ANY($4))) \
         ORDER BY created_at DESC LIMIT $3",
    )
    .bind(tenant)
    .bind(pattern)
    .bind(limit)
    .bind(inboxes)
    // Not prepared: a generic plan for `ILIKE $2` cannot use the trigram index.
    .persistent(false)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows.into_iter().map(contact).collect())
}

/// An inbox's members (user ids).
pub async fn inbox_members(pool: &PgPool, tenant: Uuid, inbox: Uuid) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar("SELECT user_id FROM inbox_members WHERE tenant_id = $1 AND inbox_id = $2 ORDER BY user_id")
        .bind(tenant)
        .bind(inbox)
        .fetch_all(pool)
        .await
        .map_err(StoreError::Query)
}

/// Replaces an inbox's members; `false` when one of `users` is not an agent-capable user of the
/// tenant (nothing changed then).
pub async fn set_inbox_members(pool: &PgPool, tenant: Uuid, inbox: Uuid, users: &[Uuid]) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::Query)?;
    let known: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE tenant_id = $1 AND id = ANY($2) AND role IN ('owner', 'admin', 'agent')",
    )
    .bind(tenant)
    .bind(users)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::Query)?;
    if known != users.len() as i64 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM inbox_members WHERE tenant_id = $1 AND inbox_id = $2")
        .bind(tenant)
        .bind(inbox)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::Query)?;
    sqlx::query("INSERT INTO inbox_members (tenant_id, inbox_id, user_id) SELECT $1, $2, unnest($3::uuid[])")
        .bind(tenant)
        .bind(inbox)
        .bind(users)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::Query)?;
    tx.commit().await.map_err(StoreError::Query)?;
    Ok(true)
}

/// The inboxes an agent may read: those that have it as a member, and those with no members at
/// all (an inbox nobody was put on is the whole team's).
pub async fn readable_inboxes(pool: &PgPool, tenant: Uuid, user: Uuid) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar(
        "SELECT i.id FROM inboxes i WHERE i.tenant_id = $1 AND ( \
           EXISTS (SELECT 1 FROM inbox_members m WHERE m.inbox_id = i.id AND m.user_id = $2) \
           OR NOT EXISTS (SELECT 1 FROM inbox_members m WHERE m.inbox_id = i.id))",
    )
    .bind(tenant)
    .bind(user)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)
}

/// Users of the tenant by id: `(id, name, email)`, for mentions and variables.
pub async fn users_of(pool: &PgPool, tenant: Uuid) -> Result<Vec<(Uuid, Option<String>, String, String)>, StoreError> {
    sqlx::query_as("SELECT id, name, email, role FROM users WHERE tenant_id = $1 ORDER BY email LIMIT 1000")
        .bind(tenant)
        .fetch_all(pool)
        .await
        .map_err(StoreError::Query)
}

/// How an inbox's new conversations find an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingRow {
    /// `manual` or `round_robin`.
    pub mode: String,
    /// Open conversations the router gives one agent at most.
    pub agent_capacity: i32,
    /// Seconds an agent may be offline before its unanswered conversations go to others.
    pub reassign_after_seconds: Option<i32>,
    pub members: Vec<Uuid>,
}

pub async fn inbox_routing(pool: &PgPool, tenant: Uuid, inbox: Uuid) -> Result<Option<RoutingRow>, StoreError> {
    Ok(inbox_routings(pool, &[(tenant, inbox)]).await?.remove(&(tenant, inbox)).flatten())
}

/// [`inbox_routing`] of many inboxes in one query, by `(tenant, inbox)`; an inbox that does not
/// exist (in that tenant) maps to `None`.
pub async fn inbox_routings(
    pool: &PgPool,
    inboxes: &[(Uuid, Uuid)],
) -> Result<HashMap<(Uuid, Uuid), Option<RoutingRow>>, StoreError> {
    let mut found: HashMap<(Uuid, Uuid), Option<RoutingRow>> = inboxes.iter().map(|key| (*key, None)).collect();
    if inboxes.is_empty() {
        return Ok(found);
    }
    let (tenants, ids): (Vec<Uuid>, Vec<Uuid>) = inboxes.iter().copied().unzip();
    type Row = (Uuid, Uuid, String, i32, Option<i32>, Vec<Uuid>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.tenant_id, i.id, i.assignment, i.agent_capacity, i.reassign_after_seconds, \
                COALESCE(ARRAY(SELECT m.user_id FROM inbox_members m WHERE m.inbox_id = i.id ORDER BY m.user_id), '{}') \
         FROM inboxes i JOIN UNNEST($1::uuid[], $2::uuid[]) AS w(tenant, inbox) ON i.tenant_id = w.tenant AND i.id = w.inbox",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    for (tenant, inbox, mode, agent_capacity, reassign_after_seconds, members) in rows {
        found.insert((tenant, inbox), Some(RoutingRow { mode, agent_capacity, reassign_after_seconds, members }));
    }
    Ok(found)
}

pub async fn set_inbox_routing(
    pool: &PgPool,
    tenant: Uuid,
    inbox: Uuid,
    mode: &str,
    agent_capacity: i32,
    reassign_after_seconds: Option<i32>,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE inboxes SET assignment = $3, agent_capacity = $4, reassign_after_seconds = $5 \
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(inbox)
    .bind(mode)
    .bind(agent_capacity)
    .bind(reassign_after_seconds)
    .execute(pool)
    .await
    .map_err(StoreError::Query)?;
    Ok(updated.rows_affected() == 1)
}

/// A conversation's inbox and assignee, as stored.
pub async fn conversation_routing(
    pool: &PgPool,
    tenant: Uuid,
    conversation: Uuid,
) -> Result<Option<(Uuid, Option<Uuid>)>, StoreError> {
    sqlx::query_as("SELECT inbox_id, assignee_id FROM conversations WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(conversation)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::Query)
}

/// The inboxes of the tenant an agent may not read: those with members, of which it is not one.
pub async fn unreadable_inboxes(pool: &PgPool, tenant: Uuid, user: Uuid) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar(
        "SELECT i.id FROM inboxes i WHERE i.tenant_id = $1 \
           AND EXISTS (SELECT 1 FROM inbox_members m WHERE m.inbox_id = i.id) \
           AND NOT EXISTS (SELECT 1 FROM inbox_members m WHERE m.inbox_id = i.id AND m.user_id = $2)",
    )
    .bind(tenant)
    .bind(user)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)
}

/// The address a web widget's visitor gave, and its inbox, for the conversation; `None` for other
/// channels and for visitors without one.
pub async fn visitor_email(
    pool: &PgPool,
    tenant: Uuid,
    conversation: Uuid,
) -> Result<Option<(String, Uuid)>, StoreError> {
    sqlx::query_as(
        "SELECT k.email, c.inbox_id FROM conversations c JOIN contacts k ON k.id = c.contact_id \
         JOIN inboxes i ON i.id = c.inbox_id \
         WHERE c.tenant_id = $1 AND c.id = $2 AND i.kind = 'web' AND k.email IS NOT NULL",
    )
    .bind(tenant)
    .bind(conversation)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::Query)
}

/// Inboxes that hand an offline agent's unanswered conversations to others:
/// `(tenant, inbox, capacity, seconds)`.
pub async fn reassigning_inboxes(pool: &PgPool) -> Result<Vec<(Uuid, Uuid, i32, i32)>, StoreError> {
    sqlx::query_as(
        "SELECT tenant_id, id, agent_capacity, reassign_after_seconds FROM inboxes \
         WHERE assignment = 'round_robin' AND reassign_after_seconds IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)
}

/// An inbox's open conversations with an agent and customer messages no agent has answered:
/// `(conversation, assignee)`.
pub async fn unanswered_assigned(pool: &PgPool, tenant: Uuid, inbox: Uuid) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
    sqlx::query_as(
        "SELECT id, assignee_id FROM conversations WHERE tenant_id = $1 AND inbox_id = $2 AND status = 'open' \
           AND assignee_id IS NOT NULL AND unread_count > 0 LIMIT 5000",
    )
    .bind(tenant)
    .bind(inbox)
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)
}
