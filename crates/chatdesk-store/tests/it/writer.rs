//! The writer's SQL against a real PostgreSQL: statuses never move backwards, replays change
//! nothing, and one bad event is reported as a data error, not an outage.

use chatdesk_core::EntryId;
use chatdesk_core::events::{
    Actor, ContactCreated, ContactUpdated, ConversationCreated, Direction, Event, MessageCreated, MessageStatus,
    MessageStatusChanged, SenderKind,
};
use chatdesk_store::directory::{InboxKind, create_inbox, create_tenant};
use chatdesk_store::writer::{StoredEvent, apply_events};
use uuid::Uuid;

struct Fixture {
    pool: chatdesk_store::Pool,
    tenant: Uuid,
    inbox: Uuid,
    conversation: Uuid,
    message: Uuid,
    next_offset: u64,
    _postgres: chatdesk_testkit::TestPostgres,
}

impl Fixture {
    async fn new() -> Self {
        let postgres = chatdesk_testkit::postgres().await;
        let pool = chatdesk_store::connect(postgres.url(), 2).await.unwrap();
        chatdesk_store::migrate(&pool).await.unwrap();
        let tenant = create_tenant(&pool, "Acme").await.unwrap();
        let inbox = create_inbox(&pool, tenant, InboxKind::Whatsapp, "wa", "secret", None, &serde_json::json!({}))
            .await
            .unwrap()
            .id;
        let (contact, conversation, message) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut fixture = Self { pool, tenant, inbox, conversation, message, next_offset: 1, _postgres: postgres };
        let setup = vec![
            fixture.stored(
                Uuid::now_v7(),
                Event::ContactCreated(ContactCreated {
                    contact_id: contact,
                    inbox_id: inbox,
                    external_id: "15551234567".into(),
                    name: None,
                    email: None,
                }),
            ),
            fixture.stored(
                Uuid::now_v7(),
                Event::ConversationCreated(ConversationCreated {
                    conversation_id: conversation,
                    inbox_id: inbox,
                    contact_id: contact,
                }),
            ),
            fixture.stored(
                message,
                Event::MessageCreated(MessageCreated {
                    conversation_id: conversation,
                    inbox_id: inbox,
                    contact_id: contact,
                    direction: Direction::Outbound,
                    sender: Actor { kind: SenderKind::Agent, id: None },
                    text: "Your order shipped".into(),
                    extra: None,
                    provider_message_id: None,
                    client_msg_id: None,
                    sent_at_ms: None,
                }),
            ),
        ];
        apply_events(&fixture.pool, &setup).await.unwrap();
        fixture
    }

    fn stored(&mut self, event_id: Uuid, event: Event) -> StoredEvent {
        self.next_offset += 1;
        StoredEvent {
            event_id,
            tenant_id: self.tenant,
            partition: 0,
            offset: EntryId::new(self.next_offset, 0),
            occurred_at_ms: 1_763_800_000_000 + self.next_offset,
            // As the writer passes it: the entry's payload text.
            payload: Some(event.to_payload().to_string()),
            event,
        }
    }

    fn status(&mut self, status: MessageStatus) -> StoredEvent {
        let event = Event::MessageStatus(MessageStatusChanged {
            message_id: self.message,
            conversation_id: self.conversation,
            status,
            reason: (status == MessageStatus::Failed).then(|| "recipient unreachable".to_owned()),
            provider_message_id: Some("wamid.1".into()),
            attempts: Some(1),
            code: None,
        });
        self.stored(Uuid::now_v7(), event)
    }

    /// A new customer's contact and conversation in the fixture's inbox.
    fn new_customer(&self, contact: Uuid, conversation: Uuid, external_id: &str) -> [Event; 2] {
        [
            Event::ContactCreated(ContactCreated {
                contact_id: contact,
                inbox_id: self.inbox,
                external_id: external_id.into(),
                name: None,
                email: None,
            }),
            Event::ConversationCreated(ConversationCreated {
                conversation_id: conversation,
                inbox_id: self.inbox,
                contact_id: contact,
            }),
        ]
    }

    /// A customer's message in `conversation`.
    fn inbound(&self, contact: Uuid, conversation: Uuid, text: &str) -> Event {
        Event::MessageCreated(MessageCreated {
            conversation_id: conversation,
            inbox_id: self.inbox,
            contact_id: contact,
            direction: Direction::Inbound,
            sender: Actor { kind: SenderKind::Customer, id: None },
            text: text.into(),
            extra: None,
            provider_message_id: None,
            client_msg_id: None,
            sent_at_ms: None,
        })
    }

    async fn current(&self) -> (String, Option<String>) {
        sqlx::query_as("SELECT status, failure_reason FROM messages WHERE event_id = $1")
            .bind(self.message)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn statuses_never_move_backwards() {
    let mut fixture = Fixture::new().await;
    assert_eq!(fixture.current().await.0, "queued");
    let delivered = fixture.status(MessageStatus::Delivered);
    apply_events(&fixture.pool, std::slice::from_ref(&delivered)).await.unwrap();
    let late_sent = fixture.status(MessageStatus::Sent);
    apply_events(&fixture.pool, &[late_sent]).await.unwrap();
    assert_eq!(fixture.current().await.0, "delivered", "a late `sent` after `delivered` is ignored");

    let read = fixture.status(MessageStatus::Read);
    let failed = fixture.status(MessageStatus::Failed);
    apply_events(&fixture.pool, &[read, failed]).await.unwrap();
    assert_eq!(fixture.current().await, ("read".to_owned(), None), "the highest status of a batch wins");

    let replay = apply_events(&fixture.pool, &[delivered]).await.unwrap();
    assert_eq!((replay.fresh, replay.duplicates), (0, 1));
    assert_eq!(fixture.current().await.0, "read");
}

#[tokio::test]
async fn a_failure_before_delivery_keeps_its_reason() {
    let mut fixture = Fixture::new().await;
    let sent = fixture.status(MessageStatus::Sent);
    let failed = fixture.status(MessageStatus::Failed);
    apply_events(&fixture.pool, &[sent]).await.unwrap();
    apply_events(&fixture.pool, &[failed]).await.unwrap();
    assert_eq!(fixture.current().await, ("failed".to_owned(), Some("recipient unreachable".to_owned())));
}

#[tokio::test]
async fn an_event_pointing_into_nothing_is_a_data_error() {
    let mut fixture = Fixture::new().await;
    let orphan = fixture.stored(
        Uuid::now_v7(),
        Event::ConversationCreated(ConversationCreated {
            conversation_id: Uuid::now_v7(),
            inbox_id: Uuid::now_v7(),
            contact_id: Uuid::now_v7(),
        }),
    );
    let error = apply_events(&fixture.pool, &[orphan]).await.unwrap_err();
    assert!(!error.is_transient(), "{error:?}");
}

#[tokio::test]
async fn a_batch_of_new_contacts_keeps_the_first_of_an_identity_and_applies_later_changes() {
    let mut fixture = Fixture::new().await;
    let contact = |id: Uuid, external_id: &str, name: &str| {
        Event::ContactCreated(ContactCreated {
            contact_id: id,
            inbox_id: fixture.inbox,
            external_id: external_id.into(),
            name: Some(name.into()),
            email: None,
        })
    };
    let (first, second, twin) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let events = [
        contact(first, "15550000001", "First"),
        contact(second, "15550000002", "Second"),
        // The same channel identity again under another id: the first creation stands.
        contact(twin, "15550000001", "Twin"),
        Event::ContactUpdated(ContactUpdated {
            contact_id: second,
            name: Some("Second, renamed".into()),
            email: Some("second@example.com".into()),
            phone: None,
            by: None,
        }),
    ];
    let batch: Vec<StoredEvent> = events.into_iter().map(|event| fixture.stored(Uuid::now_v7(), event)).collect();
    let applied = apply_events(&fixture.pool, &batch).await.unwrap();
    assert_eq!(applied.fresh, 4);
    let rows: Vec<(Uuid, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, external_id, name, email FROM contacts WHERE tenant_id = $1 AND external_id LIKE '1555000000%' \
         ORDER BY external_id",
    )
    .bind(fixture.tenant)
    .fetch_all(&fixture.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (first, "15550000001".to_owned(), Some("First".to_owned()), None),
            (
                second,
                "15550000002".to_owned(),
                Some("Second, renamed".to_owned()),
                Some("second@example.com".to_owned())
            ),
        ]
    );
}

#[tokio::test]
async fn a_conversation_created_with_its_first_messages_shows_them_at_once() {
    let mut fixture = Fixture::new().await;
    let (contact, conversation) = (Uuid::now_v7(), Uuid::now_v7());
    let [contact_created, conversation_created] = fixture.new_customer(contact, conversation, "15559990000");
    let events = [
        contact_created,
        conversation_created,
        fixture.inbound(contact, conversation, "Hello"),
        fixture.inbound(contact, conversation, "Where is my order?"),
    ];
    let batch: Vec<StoredEvent> = events.into_iter().map(|event| fixture.stored(Uuid::now_v7(), event)).collect();
    apply_events(&fixture.pool, &batch).await.unwrap();
    let projection = || async {
        sqlx::query_as::<_, (Option<Uuid>, Option<String>, i32, bool, Option<i64>)>(
            "SELECT last_message_id, last_message_text, unread_count, last_activity_at = last_message_at, \
                    last_message_offset_ms FROM conversations WHERE id = $1",
        )
        .bind(conversation)
        .fetch_one(&fixture.pool)
        .await
        .unwrap()
    };
    let last = &batch[3];
    assert_eq!(
        projection().await,
        (Some(last.event_id), Some("Where is my order?".to_owned()), 2, true, Some(last.offset.millis as i64))
    );

    // The same batch again, its ledger rows lost (as after an operator's cleanup): the row is
    // there already, and nothing is counted twice.
    sqlx::query("DELETE FROM events WHERE conversation_id = $1 OR event_id = $2")
        .bind(conversation)
        .bind(batch[0].event_id)
        .execute(&fixture.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM messages WHERE conversation_id = $1")
        .bind(conversation)
        .execute(&fixture.pool)
        .await
        .unwrap();
    apply_events(&fixture.pool, &batch).await.unwrap();
    assert_eq!(projection().await.2, 2, "a replay restores rows without counting them again");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE conversation_id = $1")
        .bind(conversation)
        .fetch_one(&fixture.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn a_message_naming_another_tenants_new_conversation_never_reaches_its_projection() {
    let mut fixture = Fixture::new().await;
    let (contact, conversation) = (Uuid::now_v7(), Uuid::now_v7());
    let mut batch: Vec<StoredEvent> = fixture
        .new_customer(contact, conversation, "15558880000")
        .into_iter()
        .map(|event| fixture.stored(Uuid::now_v7(), event))
        .collect();
    // Another tenant's message naming that conversation, under the id of a message row that
    // exists already (its ledger row lost), so that the row's own foreign key is never checked.
    sqlx::query("DELETE FROM events WHERE event_id = $1").bind(fixture.message).execute(&fixture.pool).await.unwrap();
    let intruder = fixture.inbound(contact, conversation, "not yours");
    let mut intruder = fixture.stored(fixture.message, intruder);
    intruder.tenant_id = Uuid::now_v7();
    batch.push(intruder);
    apply_events(&fixture.pool, &batch).await.unwrap();
    let (last, unread): (Option<String>, i32) =
        sqlx::query_as("SELECT last_message_text, unread_count FROM conversations WHERE id = $1")
            .bind(conversation)
            .fetch_one(&fixture.pool)
            .await
            .unwrap();
    assert_eq!((last, unread), (None, 0));
}
