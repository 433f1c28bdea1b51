//! Applying events to PostgreSQL: the persistence writer's side of the store.
//!
//! One batch is one transaction. The `events` table is the idempotency ledger: a batch first
//! inserts every event there with `ON CONFLICT DO NOTHING` and only the events that were new
//! change anything else. A replay, a redelivery after a crash, or a claim of a slow writer's
//! batch therefore changes nothing twice: not the message rows, not the unread counts.

use std::collections::{HashMap, HashSet};

use chatdesk_core::EntryId;
use chatdesk_core::events::{Direction, Event, MessageStatus, SenderKind};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::StoreError;

/// An event as read from its stream, ready to store.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    pub partition: u16,
    pub offset: EntryId,
    pub occurred_at_ms: u64,
    pub event: Event,
    /// The entry's payload (JSON) as it was appended, kept in the ledger as is: a resume from
    /// PostgreSQL then sends what the stream sent. `None` stores the event's own serialisation.
    pub payload: Option<String>,
}

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Events stored for the first time.
    pub fresh: usize,
    /// Events already stored (replays, redeliveries): nothing changed for them.
    pub duplicates: usize,
}

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What the writer does beyond storing: which words opt a contact out of campaigns (and back
/// in), and how long a recipient deferred by its provider waits before it is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Compared with a message's whole text (or a pressed button's payload), trimmed and
    /// case-insensitively.
    pub opt_out_words: Vec<String>,
    pub opt_in_words: Vec<String>,
    pub defer: std::time::Duration,
}

impl Default for Rules {
    fn default() -> Self {
        let words = |list: &[&str]| list.iter().map(|word| (*word).to_owned()).collect();
        Self {
            opt_out_words: words(&["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"]),
            opt_in_words: words(&["START", "UNSTOP"]),
            defer: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

impl Rules {
    /// Whether the whole of `said` is one of `words`: case aside, full-width letters (as phone
    /// keyboards in East Asia type them) read as ASCII, and surrounding spaces and punctuation
    /// ("Stop.", "STOP!") ignored. A word inside a longer message does not count.
    fn matches(words: &[String], said: &str) -> bool {
        let said: String = said
            .chars()
            .map(|character| match character {
                '\u{FF01}'..='\u{FF5E}' => char::from_u32(character as u32 - 0xFEE0).unwrap_or(character),
                '\u{3000}' => ' ',
                other => other,
            })
            .collect();
        let said = said.trim_matches(|character: char| character.is_whitespace() || character.is_ascii_punctuation());
        !said.is_empty() && words.iter().any(|word| word.eq_ignore_ascii_case(said))
    }

    /// What an inbound message says about campaigns: `Some(true)` opt out, `Some(false)` opt in.
    fn choice(&self, message: &chatdesk_core::events::MessageCreated) -> Option<bool> {
        let payload = message
            .extra
            .as_ref()
            .and_then(|extra| extra.get("button"))
            .and_then(|button| button.get("payload"))
            .and_then(serde_json::Value::as_str);
        let said = |words: &[String]| {
            Self::matches(words, &message.text) || payload.is_some_and(|payload| Self::matches(words, payload))
        };
        if said(&self.opt_out_words) {
            Some(true)
        } else if said(&self.opt_in_words) {
            Some(false)
        } else {
            None
        }
    }
}

/// Stores `events` (durable ones; others are skipped) in one transaction.
pub async fn apply_events(pool: &PgPool, events: &[StoredEvent]) -> Result<Applied, StoreError> {
    apply_events_with(pool, events, &Rules::default()).await
}

/// [`apply_events`] with explicit [`Rules`].
pub async fn apply_events_with(pool: &PgPool, events: &[StoredEvent], rules: &Rules) -> Result<Applied, StoreError> {
    let durable: Vec<&StoredEvent> = events.iter().filter(|stored| stored.event.is_durable()).collect();
    if durable.is_empty() {
        return Ok(Applied::default());
    }
    let mut tx = pool.begin().await.map_err(StoreError::Query)?;
    let fresh_ids = insert_ledger(&mut tx, &durable).await?;
    let fresh: Vec<&StoredEvent> =
        durable.iter().copied().filter(|stored| fresh_ids.contains(&stored.event_id)).collect();
    insert_contacts(&mut tx, &fresh).await?;
    let (messages, mut deltas) = plan_messages(&mut tx, &fresh).await?;
    insert_conversations(&mut tx, &fresh, &mut deltas).await?;
    insert_messages(&mut tx, messages, deltas).await?;
    update_statuses(&mut tx, &fresh).await?;
    apply_campaign_effects(&mut tx, &fresh, rules).await?;
    apply_conversation_changes(&mut tx, &fresh).await?;
    apply_workspace(&mut tx, &fresh).await?;
    tx.commit().await.map_err(StoreError::Query)?;
    Ok(Applied { fresh: fresh.len(), duplicates: durable.len() - fresh.len() })
}

async fn insert_ledger(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&StoredEvent],
) -> Result<HashSet<Uuid>, StoreError> {
    let ids: Vec<Uuid> = events.iter().map(|stored| stored.event_id).collect();
    let tenants: Vec<Uuid> = events.iter().map(|stored| stored.tenant_id).collect();
    let types: Vec<&str> = events.iter().map(|stored| stored.event.event_type()).collect();
    let conversations: Vec<Option<Uuid>> = events.iter().map(|stored| stored.event.conversation_id()).collect();
    let partitions: Vec<i16> = events.iter().map(|stored| stored.partition as i16).collect();
    let offsets: Vec<String> = events.iter().map(|stored| stored.offset.to_string()).collect();
    let offset_ms: Vec<i64> = events.iter().map(|stored| ms(stored.offset.millis)).collect();
    let offset_seq: Vec<i64> = events.iter().map(|stored| ms(stored.offset.sequence)).collect();
    let occurred: Vec<i64> = events.iter().map(|stored| ms(stored.occurred_at_ms)).collect();
    let payloads: Vec<std::borrow::Cow<'_, str>> = events
        .iter()
        .map(|stored| match &stored.payload {
            Some(payload) => std::borrow::Cow::Borrowed(payload.as_str()),
            None => std::borrow::Cow::Owned(stored.event.to_payload().to_string()),
        })
        .collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO events (event_id, tenant_id, type, conversation_id, stream_partition, stream_offset, \
                             offset_ms, offset_seq, occurred_at, payload) \
         SELECT e.id, e.tenant, e.type, e.conversation, e.part, e.off, e.ms, e.seq, to_timestamp(e.at / 1000.0), \
                e.payload::jsonb \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::int2[], $6::text[], $7::int8[], $8::int8[], \
                     $9::int8[], $10::text[]) AS e(id, tenant, type, conversation, part, off, ms, seq, at, payload) \
         ON CONFLICT (event_id) DO NOTHING \
         RETURNING event_id",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&types)
    .bind(&conversations)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&offset_ms)
    .bind(&offset_seq)
    .bind(&occurred)
    .bind(&payloads)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::Query)?;
    Ok(inserted.into_iter().collect())
}

/// New contacts in one statement (a batch of first messages from new customers holds as many
/// as messages), then changes to contacts in stream order. A change always follows its
/// contact's creation in the stream, so it still finds the contact.
async fn insert_contacts(tx: &mut Transaction<'_, Postgres>, events: &[&StoredEvent]) -> Result<(), StoreError> {
    let mut created = NewContacts::default();
    for stored in events {
        if let Event::ContactCreated(contact) = &stored.event {
            created.ids.push(contact.contact_id);
            created.tenants.push(stored.tenant_id);
            created.inboxes.push(contact.inbox_id);
            created.external_ids.push(contact.external_id.as_str());
            created.names.push(contact.name.as_deref());
            created.emails.push(contact.email.as_deref());
            created.times.push(ms(stored.occurred_at_ms));
        }
    }
    if !created.ids.is_empty() {
        // Row by row in input order: of two creations of one contact (or of one channel
        // identity), the first is kept, as separate statements would.
        sqlx::query(
            "INSERT INTO contacts (id, tenant_id, inbox_id, external_id, name, email, created_at, updated_at) \
             SELECT k.id, k.tenant, k.inbox, k.external_id, k.name, k.email, to_timestamp(k.at / 1000.0), \
                    to_timestamp(k.at / 1000.0) \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::int8[]) \
                  WITH ORDINALITY AS k(id, tenant, inbox, external_id, name, email, at, position) \
             ORDER BY k.position \
             ON CONFLICT DO NOTHING",
        )
        .bind(&created.ids)
        .bind(&created.tenants)
        .bind(&created.inboxes)
        .bind(&created.external_ids)
        .bind(&created.names)
        .bind(&created.emails)
        .bind(&created.times)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::Query)?;
    }
    for stored in events {
        match &stored.event {
            Event::ContactUpdated(contact) => {
                sqlx::query(
                    "UPDATE contacts SET name = COALESCE($3, name), email = COALESCE($4, email), \
                     phone = COALESCE($6, phone), \
                     updated_at = greatest(updated_at, to_timestamp($5 / 1000.0)) WHERE id = $1 AND tenant_id = $2",
                )
                .bind(contact.contact_id)
                .bind(stored.tenant_id)
                .bind(&contact.name)
                .bind(&contact.email)
                .bind(ms(stored.occurred_at_ms))
                .bind(&contact.phone)
                .execute(&mut **tx)
                .await
                .map_err(StoreError::Query)?;
            }
            // The merged contact (and any merged into it) becomes an alias of the survivor's
            // person. Conversations keep their contact: its channel identity is where replies go.
            // A survivor that was itself merged meanwhile passes everything on to its own.
            Event::ContactMerged(merged) => {
                sqlx::query(
                    "WITH target AS ( \
                       SELECT COALESCE(merged_into, id) AS id FROM contacts WHERE id = $1 AND tenant_id = $3) \
                     UPDATE contacts SET merged_into = (SELECT id FROM target), \
                       updated_at = greatest(updated_at, to_timestamp($4 / 1000.0)) \
                     WHERE tenant_id = $3 AND (id = $2 OR merged_into = $2) \
                       AND EXISTS (SELECT 1 FROM target) AND (SELECT id FROM target) <> $2",
                )
                .bind(merged.contact_id)
                .bind(merged.merged_id)
                .bind(stored.tenant_id)
                .bind(ms(stored.occurred_at_ms))
                .execute(&mut **tx)
                .await
                .map_err(StoreError::Query)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Column arrays for one multi-row contact insert.
#[derive(Default)]
struct NewContacts<'a> {
    ids: Vec<Uuid>,
    tenants: Vec<Uuid>,
    inboxes: Vec<Uuid>,
    external_ids: Vec<&'a str>,
    names: Vec<Option<&'a str>>,
    emails: Vec<Option<&'a str>>,
    times: Vec<i64>,
}

/// New conversations, each with what this batch's messages make of its projection (last
/// message, unread count): a conversation and its first messages usually arrive in one batch,
/// and updating the row just inserted would write it, and its five index entries, twice. The
/// deltas the inserted rows carried are taken out of `deltas`; a conversation that already
/// existed (a replay) keeps its delta for the update.
async fn insert_conversations(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&StoredEvent],
    deltas: &mut HashMap<Uuid, ProjectionDelta>,
) -> Result<(), StoreError> {
    let mut rows = NewConversations::default();
    // Conversations whose row carries their projection. Only a delta of the same tenant: a
    // message naming another tenant's conversation fails on its own row's foreign key, and must
    // not reach this one's projection first.
    let mut carried = HashSet::new();
    for stored in events {
        if let Event::ConversationCreated(created) = &stored.event {
            rows.ids.push(created.conversation_id);
            rows.tenants.push(stored.tenant_id);
            rows.inboxes.push(created.inbox_id);
            rows.contacts.push(created.contact_id);
            rows.times.push(ms(stored.occurred_at_ms));
            let delta = deltas.get(&created.conversation_id).filter(|delta| delta.tenant == stored.tenant_id);
            if delta.is_some() {
                carried.insert(created.conversation_id);
            }
            let last = delta.and_then(|delta| delta.last.as_ref());
            rows.last_ids.push(last.map(|(id, ..)| *id));
            rows.last_texts.push(last.map(|(_, text, ..)| text.as_str()));
            rows.last_times.push(last.map(|(_, _, at, _)| *at));
            rows.last_offset_ms.push(last.map(|(.., offset)| ms(offset.millis)));
            rows.last_offset_seq.push(last.map(|(.., offset)| ms(offset.sequence)));
            rows.unread.push(delta.map_or(0, |delta| delta.unread));
        }
    }
    if rows.ids.is_empty() {
        return Ok(());
    }
    // A new row has no unread count to add to, and `greatest` skips a missing last message.
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO conversations (id, tenant_id, inbox_id, contact_id, status, last_message_id, last_message_text, \
                                    last_message_at, last_message_offset_ms, last_message_offset_seq, \
                                    last_activity_at, unread_count, created_at) \
         SELECT c.id, c.tenant, c.inbox, c.contact, 'open', c.last_id, c.last_text, to_timestamp(c.last_at / 1000.0), \
                c.off_ms, c.off_seq, greatest(to_timestamp(c.at / 1000.0), to_timestamp(c.last_at / 1000.0)), \
                c.unread, to_timestamp(c.at / 1000.0) \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int8[], $6::uuid[], $7::text[], $8::int8[], \
                     $9::int8[], $10::int8[], $11::int4[]) \
              AS c(id, tenant, inbox, contact, at, last_id, last_text, last_at, off_ms, off_seq, unread) \
         ON CONFLICT (id) DO NOTHING \
         RETURNING id",
    )
    .bind(&rows.ids)
    .bind(&rows.tenants)
    .bind(&rows.inboxes)
    .bind(&rows.contacts)
    .bind(&rows.times)
    .bind(&rows.last_ids)
    .bind(&rows.last_texts)
    .bind(&rows.last_times)
    .bind(&rows.last_offset_ms)
    .bind(&rows.last_offset_seq)
    .bind(&rows.unread)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::Query)?;
    for conversation in inserted {
        if carried.contains(&conversation) {
            deltas.remove(&conversation);
        }
    }
    Ok(())
}

/// Column arrays for one multi-row conversation insert.
#[derive(Default)]
struct NewConversations<'a> {
    ids: Vec<Uuid>,
    tenants: Vec<Uuid>,
    inboxes: Vec<Uuid>,
    contacts: Vec<Uuid>,
    times: Vec<i64>,
    last_ids: Vec<Option<Uuid>>,
    last_texts: Vec<Option<&'a str>>,
    last_times: Vec<Option<i64>>,
    last_offset_ms: Vec<Option<i64>>,
    last_offset_seq: Vec<Option<i64>>,
    unread: Vec<i32>,
}

/// The conversation projection's change from one batch.
#[derive(Default)]
struct ProjectionDelta {
    last: Option<(Uuid, String, i64, EntryId)>,
    unread: i32,
    /// An agent replied in this batch: unread counts only inbound messages after that.
    reset: bool,
    tenant: Uuid,
}

/// The batch's message rows, and what they change in each conversation's projection. Read
/// before the batch's new conversations are inserted, which take their share of it.
async fn plan_messages(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&StoredEvent],
) -> Result<(MessageColumns, HashMap<Uuid, ProjectionDelta>), StoreError> {
    let mut columns = MessageColumns::default();
    let mut deltas: HashMap<Uuid, ProjectionDelta> = HashMap::new();
    let applied = applied_offsets(tx, events).await?;
    for stored in events {
        let Event::MessageCreated(message) = &stored.event else { continue };
        columns.push(stored, message);
        // A campaign's message is kept in its recipient's history but does not make the
        // conversation active: a broadcast to thousands must not flood agents' inbox lists.
        if message.sender.kind == SenderKind::Campaign {
            continue;
        }
        // A message older than the conversation's last one is a replay restoring a lost row
        // (`chatdesk streams replay`): the row comes back, the counts it once moved stay.
        if applied.get(&message.conversation_id).is_some_and(|last| stored.offset <= *last) {
            continue;
        }
        let delta = deltas.entry(message.conversation_id).or_default();
        delta.tenant = stored.tenant_id;
        match (message.direction, message.sender.kind) {
            (Direction::Inbound, _) => delta.unread += 1,
            (Direction::Outbound, SenderKind::Agent) => {
                delta.reset = true;
                delta.unread = 0;
            }
            (Direction::Outbound, _) => {}
        }
        let newer = delta.last.as_ref().is_none_or(|(_, _, _, offset)| stored.offset > *offset);
        if newer {
            delta.last = Some((stored.event_id, message.text.clone(), ms(stored.occurred_at_ms), stored.offset));
        }
    }
    Ok((columns, deltas))
}

/// The message rows, then the projection of every conversation that was not inserted with it.
async fn insert_messages(
    tx: &mut Transaction<'_, Postgres>,
    columns: MessageColumns,
    deltas: HashMap<Uuid, ProjectionDelta>,
) -> Result<(), StoreError> {
    if columns.ids.is_empty() {
        return Ok(());
    }
    columns.insert(tx).await?;

    let (
        mut conversations,
        mut tenants,
        mut last_ids,
        mut texts,
        mut times,
        mut offset_ms,
        mut offset_seq,
        mut unread,
        mut reset,
    ) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (conversation, delta) in deltas {
        let Some((id, text, at, offset)) = delta.last else { continue };
        conversations.push(conversation);
        tenants.push(delta.tenant);
        last_ids.push(id);
        texts.push(text);
        times.push(at);
        offset_ms.push(ms(offset.millis));
        offset_seq.push(ms(offset.sequence));
        unread.push(delta.unread);
        reset.push(delta.reset);
    }
    if conversations.is_empty() {
        return Ok(());
    }
    // `newer` guards the last-message columns: a batch never replaces a later message.
    sqlx::query(
        "UPDATE conversations c SET \
           last_message_id = CASE WHEN n.newer THEN n.id ELSE c.last_message_id END, \
           last_message_text = CASE WHEN n.newer THEN n.body ELSE c.last_message_text END, \
           last_message_at = CASE WHEN n.newer THEN to_timestamp(n.at / 1000.0) ELSE c.last_message_at END, \
           last_message_offset_ms = CASE WHEN n.newer THEN n.off_ms ELSE c.last_message_offset_ms END, \
           last_message_offset_seq = CASE WHEN n.newer THEN n.off_seq ELSE c.last_message_offset_seq END, \
           last_activity_at = greatest(c.last_activity_at, to_timestamp(n.at / 1000.0)), \
           unread_count = CASE WHEN n.reset THEN n.unread ELSE c.unread_count + n.unread END, \
           updated_at = now() \
         FROM (SELECT u.*, (c2.last_message_offset_ms IS NULL \
                 OR (u.off_ms, u.off_seq) > (c2.last_message_offset_ms, c2.last_message_offset_seq)) AS newer \
               FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int8[], $6::int8[], $7::int8[], \
                           $8::int4[], $9::bool[]) AS u(conversation, tenant, id, body, at, off_ms, off_seq, unread, reset) \
               JOIN conversations c2 ON c2.id = u.conversation) AS n \
         WHERE c.id = n.conversation AND c.tenant_id = n.tenant",
    )
    .bind(&conversations)
    .bind(&tenants)
    .bind(&last_ids)
    .bind(&texts)
    .bind(&times)
    .bind(&offset_ms)
    .bind(&offset_seq)
    .bind(&unread)
    .bind(&reset)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::Query)?;
    Ok(())
}

/// The stream offset of the last message each conversation of `events` has applied.
async fn applied_offsets(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&StoredEvent],
) -> Result<HashMap<Uuid, EntryId>, StoreError> {
    let mut conversations: Vec<Uuid> = events
        .iter()
        .filter_map(|stored| match &stored.event {
            Event::MessageCreated(message) => Some(message.conversation_id),
            _ => None,
        })
        .collect();
    conversations.sort_unstable();
    conversations.dedup();
    if conversations.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT id, last_message_offset_ms, last_message_offset_seq FROM conversations \
         WHERE id = ANY($1) AND last_message_offset_ms IS NOT NULL AND last_message_offset_seq IS NOT NULL",
    )
    .bind(&conversations)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::Query)?;
    Ok(rows.into_iter().map(|(id, millis, sequence)| (id, EntryId::new(millis as u64, sequence as u64))).collect())
}

/// Column arrays for one multi-row message insert.
#[derive(Default)]
struct MessageColumns {
    ids: Vec<Uuid>,
    tenants: Vec<Uuid>,
    conversations: Vec<Uuid>,
    offsets: Vec<String>,
    offset_ms: Vec<i64>,
    offset_seq: Vec<i64>,
    directions: Vec<&'static str>,
    sender_kinds: Vec<&'static str>,
    sender_ids: Vec<Option<Uuid>>,
    bodies: Vec<String>,
    extras: Vec<Option<serde_json::Value>>,
    provider_ids: Vec<Option<String>>,
    client_ids: Vec<Option<String>>,
    statuses: Vec<Option<&'static str>>,
    ranks: Vec<i16>,
    times: Vec<i64>,
}

fn sender_kind(kind: SenderKind) -> &'static str {
    match kind {
        SenderKind::Customer => "customer",
        SenderKind::Agent => "agent",
        SenderKind::Bot => "bot",
        SenderKind::System => "system",
        SenderKind::Campaign => "campaign",
    }
}

impl MessageColumns {
    fn push(&mut self, stored: &StoredEvent, message: &chatdesk_core::events::MessageCreated) {
        self.ids.push(stored.event_id);
        self.tenants.push(stored.tenant_id);
        self.conversations.push(message.conversation_id);
        self.offsets.push(stored.offset.to_string());
        self.offset_ms.push(ms(stored.offset.millis));
        self.offset_seq.push(ms(stored.offset.sequence));
        let outbound = message.direction == Direction::Outbound;
        self.directions.push(if outbound { "outbound" } else { "inbound" });
        self.sender_kinds.push(sender_kind(message.sender.kind));
        self.sender_ids.push(message.sender.id);
        self.bodies.push(message.text.clone());
        self.extras.push(message.extra.clone());
        self.provider_ids.push(message.provider_message_id.clone());
        self.client_ids.push(message.client_msg_id.clone());
        // Outbound messages start queued; inbound ones have no delivery status.
        self.statuses.push(outbound.then_some(MessageStatus::Queued.as_str()));
        self.ranks.push(if outbound { MessageStatus::Queued.rank() } else { -1 });
        self.times.push(ms(stored.occurred_at_ms));
    }

    async fn insert(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO messages (event_id, tenant_id, conversation_id, stream_offset, offset_ms, offset_seq, direction, \
                                   sender_kind, sender_id, body, extra, provider_message_id, client_msg_id, status, \
                                   status_rank, created_at) \
             SELECT m.id, m.tenant, m.conversation, m.off, m.off_ms, m.off_seq, m.direction, m.sender_kind, m.sender_id, \
                    m.body, m.extra, m.provider_id, m.client_id, m.status, m.rank, to_timestamp(m.at / 1000.0) \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int8[], $6::int8[], $7::text[], $8::text[], \
                         $9::uuid[], $10::text[], $11::jsonb[], $12::text[], $13::text[], $14::text[], $15::int2[], \
                         $16::int8[]) \
                  AS m(id, tenant, conversation, off, off_ms, off_seq, direction, sender_kind, sender_id, body, extra, \
                       provider_id, client_id, status, rank, at) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&self.ids)
        .bind(&self.tenants)
        .bind(&self.conversations)
        .bind(&self.offsets)
        .bind(&self.offset_ms)
        .bind(&self.offset_seq)
        .bind(&self.directions)
        .bind(&self.sender_kinds)
        .bind(&self.sender_ids)
        .bind(&self.bodies)
        .bind(&self.extras)
        .bind(&self.provider_ids)
        .bind(&self.client_ids)
        .bind(&self.statuses)
        .bind(&self.ranks)
        .bind(&self.times)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::Query)?;
        Ok(())
    }
}

/// Applies statuses, highest per message first; `status_rank <` makes a status never move back.
async fn update_statuses(tx: &mut Transaction<'_, Postgres>, events: &[&StoredEvent]) -> Result<(), StoreError> {
    let mut best: HashMap<Uuid, (&StoredEvent, &chatdesk_core::events::MessageStatusChanged)> = HashMap::new();
    for stored in events {
        let Event::MessageStatus(status) = &stored.event else { continue };
        let replace =
            best.get(&status.message_id).is_none_or(|(_, current)| status.status.rank() > current.status.rank());
        if replace {
            best.insert(status.message_id, (stored, status));
        }
    }
    if best.is_empty() {
        return Ok(());
    }
    let (mut ids, mut tenants, mut statuses, mut ranks, mut reasons, mut provider_ids, mut times, mut attempts) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (message_id, (stored, status)) in best {
        ids.push(message_id);
        tenants.push(stored.tenant_id);
        statuses.push(status.status.as_str());
        ranks.push(status.status.rank());
        reasons.push(status.reason.clone());
        provider_ids.push(status.provider_message_id.clone());
        times.push(ms(stored.occurred_at_ms));
        attempts.push(status.attempts.map(|count| count.min(i16::MAX as u32) as i16));
    }
    sqlx::query(
        "UPDATE messages m SET status = u.status, status_rank = u.rank, \
           failure_reason = CASE WHEN u.status = 'failed' THEN u.reason ELSE m.failure_reason END, \
           provider_message_id = COALESCE(u.provider_id, m.provider_message_id), \
           attempts = COALESCE(u.attempts, m.attempts), \
           status_at = to_timestamp(u.at / 1000.0) \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int2[], $5::text[], $6::text[], $7::int8[], $8::int2[]) \
              AS u(id, tenant, status, rank, reason, provider_id, at, attempts) \
         WHERE m.event_id = u.id AND m.tenant_id = u.tenant AND m.status_rank < u.rank",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&statuses)
    .bind(&ranks)
    .bind(&reasons)
    .bind(&provider_ids)
    .bind(&times)
    .bind(&attempts)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::Query)?;
    Ok(())
}

/// What events mean for campaigns: delivery statuses move their recipients forward, and a
/// customer's STOP (typed, or a template's button) opts its address out.
async fn apply_campaign_effects(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&StoredEvent],
    rules: &Rules,
) -> Result<(), StoreError> {
    let mut outcomes = Vec::new();
    for stored in events {
        match &stored.event {
            Event::MessageStatus(status) => {
                if let Some(recipient) = crate::campaigns::recipient_status(status.status, status.code.as_deref()) {
                    outcomes.push(crate::campaigns::MessageOutcome {
                        message_id: status.message_id,
                        tenant_id: stored.tenant_id,
                        status: recipient,
                        reason: status.reason.clone(),
                        at_ms: ms(stored.occurred_at_ms),
                    });
                }
            }
            Event::ContactReachability(change) => {
                crate::campaigns::set_reachable(tx, stored.tenant_id, change).await?;
            }
            Event::MessageCreated(message) if message.direction == Direction::Inbound => match rules.choice(message) {
                Some(true) => {
                    let reason = format!("the customer sent {:?}", message.text.trim());
                    crate::campaigns::opt_out(tx, stored.tenant_id, message.contact_id, &reason).await?;
                }
                Some(false) => crate::campaigns::opt_in(tx, stored.tenant_id, message.contact_id).await?,
                None => {}
            },
            _ => {}
        }
    }
    crate::campaigns::apply_outcomes(tx, &outcomes, rules.defer.as_secs() as i64).await
}

/// Assignments and status changes, in stream order (rare next to messages).
async fn apply_conversation_changes(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&StoredEvent],
) -> Result<(), StoreError> {
    for stored in events {
        let query = match &stored.event {
            Event::ConversationAssigned(assigned) => sqlx::query(
                "UPDATE conversations SET assignee_id = $3, \
                   last_activity_at = greatest(last_activity_at, to_timestamp($4 / 1000.0)), updated_at = now() \
                 WHERE id = $1 AND tenant_id = $2",
            )
            .bind(assigned.conversation_id)
            .bind(stored.tenant_id)
            .bind(assigned.assignee_id)
            .bind(ms(stored.occurred_at_ms)),
            // Resolving ends the bot's session, and with it the handoff's standing.
            Event::ConversationStatusChanged(changed) => sqlx::query(
                "UPDATE conversations SET status = $3, \
                   last_activity_at = greatest(last_activity_at, to_timestamp($4 / 1000.0)), updated_at = now(), \
                   handoff_reason = CASE WHEN $3 = 'resolved' THEN NULL ELSE handoff_reason END, \
                   handoff_detail = CASE WHEN $3 = 'resolved' THEN NULL ELSE handoff_detail END \
                 WHERE id = $1 AND tenant_id = $2",
            )
            .bind(changed.conversation_id)
            .bind(stored.tenant_id)
            .bind(changed.status.as_str())
            .bind(ms(stored.occurred_at_ms)),
            Event::ConversationHandoff(handoff) => sqlx::query(
                "UPDATE conversations SET handoff_reason = $3, handoff_detail = $4, \
                   handoff_at = to_timestamp($5 / 1000.0), updated_at = now() \
                 WHERE id = $1 AND tenant_id = $2",
            )
            .bind(handoff.conversation_id)
            .bind(stored.tenant_id)
            .bind(handoff.reason.as_str())
            .bind(handoff.detail.as_deref())
            .bind(ms(stored.occurred_at_ms)),
            Event::ConversationRead(read) => {
                let Ok(offset) = read.offset.parse::<EntryId>() else { continue };
                sqlx::query(
                    "UPDATE conversations c SET unread_count = ( \
                       SELECT count(*) FROM messages m WHERE m.conversation_id = c.id AND m.direction = 'inbound' \
                         AND (m.offset_ms, m.offset_seq) > ($3, $4)), updated_at = now() \
                     WHERE c.id = $1 AND c.tenant_id = $2",
                )
                .bind(read.conversation_id)
                .bind(stored.tenant_id)
                .bind(ms(offset.millis))
                .bind(ms(offset.sequence))
            }
            _ => continue,
        };
        query.execute(&mut **tx).await.map_err(StoreError::Query)?;
    }
    Ok(())
}

/// Notes and labels: an agent's additions to a conversation (rare next to messages).
async fn apply_workspace(tx: &mut Transaction<'_, Postgres>, events: &[&StoredEvent]) -> Result<(), StoreError> {
    for stored in events {
        match &stored.event {
            Event::NoteCreated(note) => {
                let kind = serde_json::to_value(note.author.kind).ok();
                sqlx::query(
                    "INSERT INTO notes (event_id, tenant_id, conversation_id, author_kind, author_id, body, mentions, \
                                        stream_offset, offset_ms, offset_seq, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_timestamp($11 / 1000.0)) \
                     ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(stored.event_id)
                .bind(stored.tenant_id)
                .bind(note.conversation_id)
                .bind(kind.as_ref().and_then(serde_json::Value::as_str).unwrap_or("agent"))
                .bind(note.author.id)
                .bind(&note.text)
                .bind(&note.mentions)
                .bind(stored.offset.to_string())
                .bind(ms(stored.offset.millis))
                .bind(ms(stored.offset.sequence))
                .bind(ms(stored.occurred_at_ms))
                .execute(&mut **tx)
                .await
                .map_err(StoreError::Query)?;
            }
            Event::ConversationLabels(change) => {
                // A label deleted after the event was accepted is skipped, not an error: the
                // event stays in the ledger, and a deleted label labels nothing.
                sqlx::query(
                    "INSERT INTO conversation_labels (tenant_id, conversation_id, label_id) \
                     SELECT $1, $2, l.id FROM labels l WHERE l.tenant_id = $1 AND l.id = ANY($3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(stored.tenant_id)
                .bind(change.conversation_id)
                .bind(&change.added)
                .execute(&mut **tx)
                .await
                .map_err(StoreError::Query)?;
                sqlx::query(
                    "DELETE FROM conversation_labels WHERE tenant_id = $1 AND conversation_id = $2 AND label_id = ANY($3)",
                )
                .bind(stored.tenant_id)
                .bind(change.conversation_id)
                .bind(&change.removed)
                .execute(&mut **tx)
                .await
                .map_err(StoreError::Query)?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_out_words_are_whole_messages_however_they_are_typed() {
        let words = Rules::default().opt_out_words;
        for said in ["STOP", "stop", " Stop. ", "STOP!", "\u{FF33}\u{FF34}\u{FF2F}\u{FF30}", "unsubscribe"] {
            assert!(Rules::matches(&words, said), "{said:?}");
        }
        for said in ["Stop please", "don't stop", "", "!!", "STOPS"] {
            assert!(!Rules::matches(&words, said), "{said:?}");
        }
    }
}
