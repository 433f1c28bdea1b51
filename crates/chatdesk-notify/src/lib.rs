//! E-mail notifications: group `notifier` on the `events` stream, and the task that sends.
//!
//! - An agent who is offline (no live dashboard socket) is e-mailed when a conversation is
//!   assigned to it or a note mentions it.
//! - A widget visitor who left the page is e-mailed an agent's or the bot's reply once it has
//!   been away longer than the widget's standby window, with a link back to the conversation.
//!
//! E-mails are batched per recipient: what happens in the first `delay` goes in one e-mail, and a
//! recipient gets at most one e-mail per `interval`. What is waiting lives in Redis (a hash per
//! recipient keyed by event id, so a redelivered entry is one line, and one sorted set of when
//! each recipient's e-mail is due), so any process running the role can send it, and a process
//! that dies leaves nothing behind. A recipient who comes back online before the e-mail goes
//! gets none: the dashboard or the widget has shown it all.

use std::sync::Arc;
use std::time::Duration;

use chatdesk_core::events::{Direction, Event, SenderKind};
use chatdesk_core::{GroupName, KeyScheme, TenantId};
use chatdesk_streams::{Batch, Handler, HandlerError, Outcomes, Unavailable};
use fred::prelude::*;
use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const GROUP: &str = "notifier";
pub const EMAILS_TOTAL: &str = "chatdesk_notify_emails_total";
pub const WAITING: &str = "chatdesk_notify_recipients_waiting";

pub fn describe() {
    metrics::describe_counter!(
        EMAILS_TOTAL,
        metrics::Unit::Count,
        "Notification e-mails by outcome: sent, failed (retried), skipped (the recipient came back), undeliverable (dropped)"
    );
    metrics::describe_gauge!(WAITING, metrics::Unit::Count, "Recipients with notifications waiting to be e-mailed");
}

/// How notifications are sent (`CHATDESK_SMTP_URL` and friends).
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// `smtp://user:password@host:port` (STARTTLS when the server offers it… see lettre's
    /// `from_url`: `smtps://` for TLS from the start, `?tls=required` to insist).
    pub smtp_url: String,
    /// The `From` of every e-mail.
    pub from: String,
    /// Where links point: the dashboard for agents, the widget page for visitors.
    pub public_url: String,
    /// How long an agent's first notification waits for others to join it.
    pub delay: Duration,
    /// At most one e-mail per recipient per this long.
    pub interval: Duration,
    /// How long a visitor must have been away before a reply is e-mailed (the widget's standby).
    pub visitor_delay: Duration,
}

impl NotifySettings {
    pub fn new(smtp_url: impl Into<String>) -> Self {
        Self {
            smtp_url: smtp_url.into(),
            from: "chatdesk <no-reply@localhost>".into(),
            public_url: "http://127.0.0.1:8080".into(),
            delay: Duration::from_secs(60),
            interval: Duration::from_secs(300),
            visitor_delay: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("CHATDESK_SMTP_URL is not a usable SMTP URL: {0}")]
    Url(String),
    #[error("CHATDESK_SMTP_FROM {0:?} is not a mailbox (`Name <address>` or an address)")]
    From(String),
}

/// One thing to tell a recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    /// assigned, mention or reply.
    kind: String,
    tenant: Uuid,
    conversation: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    at_ms: u64,
}

/// Who an e-mail goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recipient {
    Agent { tenant: Uuid, user: Uuid },
    Visitor { tenant: Uuid, conversation: Uuid },
}

impl Recipient {
    fn name(&self) -> String {
        match self {
            Recipient::Agent { tenant, user } => format!("agent:{tenant}:{user}"),
            Recipient::Visitor { tenant, conversation } => format!("visitor:{tenant}:{conversation}"),
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.split(':');
        let (kind, tenant, id) = (parts.next()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        match kind {
            "agent" => Some(Recipient::Agent { tenant, user: id }),
            "visitor" => Some(Recipient::Visitor { tenant, conversation: id }),
            _ => None,
        }
    }
}

/// How long a process holds a due recipient while it sends.
const LEASE_MS: u64 = 60_000;

/// Leases a due recipient: moves its score to the lease's end if it is due now.
/// KEYS[1] the due set. ARGV: recipient, now, lease end.
static CLAIM: std::sync::LazyLock<chatdesk_streams::Script> = std::sync::LazyLock::new(|| {
    chatdesk_streams::Script::new(
        r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"#,
    )
});

#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Client,
    db: chatdesk_store::Pool,
    keys: KeyScheme,
    settings: NotifySettings,
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Notifier {
    pub fn new(
        redis: Client,
        db: chatdesk_store::Pool,
        keys: KeyScheme,
        settings: NotifySettings,
    ) -> Result<Self, NotifyError> {
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(&settings.smtp_url)
            .map_err(|error| NotifyError::Url(error.to_string()))?
            .timeout(Some(Duration::from_secs(20)))
            .build();
        let from = settings.from.parse().map_err(|_| NotifyError::From(settings.from.clone()))?;
        Ok(Self { inner: Arc::new(Inner { redis, db, keys, settings, mailer, from }) })
    }

    /// The group's handler: records what to tell whom.
    pub fn handler(&self) -> NotifyHandler {
        NotifyHandler { notifier: self.clone() }
    }

    fn now_ms() -> u64 {
        chatdesk_core::envelope::now_ms()
    }

    async fn agent_online(&self, tenant: Uuid, user: Uuid) -> Result<bool, Error> {
        let members: Vec<String> = self
            .inner
            .redis
            .zrangebyscore(
                self.inner.keys.presence(&TenantId(tenant)),
                Self::now_ms() as f64,
                f64::INFINITY,
                false,
                None,
            )
            .await?;
        let user = user.to_string();
        Ok(members.iter().any(|member| member.split(':').next() == Some(user.as_str())))
    }

    async fn visitor_present(&self, conversation: Uuid) -> Result<bool, Error> {
        let live: i64 = self
            .inner
            .redis
            .zcount(self.inner.keys.visitor_presence(&conversation), Self::now_ms() as f64, f64::INFINITY)
            .await?;
        Ok(live > 0)
    }

    /// Keeps `item` for `recipient` (once per `event_id`) and makes its e-mail due after `delay`,
    /// or when the last e-mail's interval is over, whichever is later.
    async fn enqueue(&self, recipient: Recipient, event_id: Uuid, item: &Item, delay: Duration) -> Result<(), Error> {
        let name = recipient.name();
        let value = serde_json::to_string(item).expect("items serialise");
        let _: i64 =
            self.inner.redis.hset(self.inner.keys.notify_pending(&name), (event_id.to_string(), value)).await?;
        let held: i64 = self.inner.redis.pttl(self.inner.keys.notify_last(&name)).await?;
        let wait = delay.as_millis().max(u128::try_from(held.max(0)).unwrap_or(0)) as u64;
        let due = (Self::now_ms() + wait) as f64;
        let _: i64 = self
            .inner
            .redis
            .zadd(self.inner.keys.notify_due(), Some(SetOptions::NX), None, false, false, (due, name))
            .await?;
        Ok(())
    }

    async fn record(&self, tenant: Uuid, event_id: Uuid, event: &Event) -> Result<(), HandlerError> {
        let at_ms = Self::now_ms();
        match event {
            Event::ConversationAssigned(assigned) => {
                let Some(user) = assigned.assignee_id else { return Ok(()) };
                // Taking a conversation oneself needs no e-mail.
                if assigned.by.id == Some(user) || self.agent_online(tenant, user).await.map_err(redis_down)? {
                    return Ok(());
                }
                let item =
                    Item { kind: "assigned".into(), tenant, conversation: assigned.conversation_id, text: None, at_ms };
                let delay = self.inner.settings.delay;
                self.enqueue(Recipient::Agent { tenant, user }, event_id, &item, delay).await.map_err(redis_down)
            }
            Event::NoteCreated(note) => {
                for user in &note.mentions {
                    if note.author.id == Some(*user) || self.agent_online(tenant, *user).await.map_err(redis_down)? {
                        continue;
                    }
                    let item = Item {
                        kind: "mention".into(),
                        tenant,
                        conversation: note.conversation_id,
                        text: Some(note.text.chars().take(300).collect()),
                        at_ms,
                    };
                    let recipient = Recipient::Agent { tenant, user: *user };
                    let delay = self.inner.settings.delay;
                    self.enqueue(recipient, event_id, &item, delay).await.map_err(redis_down)?;
                }
                Ok(())
            }
            Event::MessageCreated(message)
                if message.direction == Direction::Outbound
                    && matches!(message.sender.kind, SenderKind::Agent | SenderKind::Bot) =>
            {
                // Only a web widget's visitor, who gave an address, hears from us by e-mail; whether
                // it is still away is decided when the e-mail is due.
                let email = chatdesk_store::workspace::visitor_email(&self.inner.db, tenant, message.conversation_id)
                    .await
                    .map_err(|error| -> HandlerError { Box::new(Unavailable(error.to_string())) })?;
                if email.is_none() {
                    return Ok(());
                }
                let item = Item {
                    kind: "reply".into(),
                    tenant,
                    conversation: message.conversation_id,
                    text: Some(message.text.chars().take(2000).collect()),
                    at_ms,
                };
                let recipient = Recipient::Visitor { tenant, conversation: message.conversation_id };
                let delay = self.inner.settings.visitor_delay;
                self.enqueue(recipient, event_id, &item, delay).await.map_err(redis_down)
            }
            _ => Ok(()),
        }
    }

    /// Sends what is due until `cancel` fires.
    pub async fn run(&self, cancel: CancellationToken) {
        let tick = self.inner.settings.delay.clamp(Duration::from_millis(200), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            if let Err(error) = self.send_due().await {
                tracing::warn!(error = %error, "cannot send notifications now");
            }
        }
    }

    async fn send_due(&self) -> Result<(), Error> {
        let due_key = self.inner.keys.notify_due();
        let waiting: i64 = self.inner.redis.zcard(&due_key).await?;
        metrics::gauge!(WAITING).set(waiting as f64);
        let due: Vec<String> = self
            .inner
            .redis
            .zrangebyscore(&due_key, f64::NEG_INFINITY, Self::now_ms() as f64, false, Some((0, 50)))
            .await?;
        let now = Self::now_ms();
        for name in due {
            // Whoever leases the recipient sends its e-mail: one process at a time; a process that
            // dies holding the lease leaves it to run out, and another sends.
            let leased: i64 = CLAIM
                .call(
                    &self.inner.redis,
                    vec![due_key.clone()],
                    vec![name.clone(), now.to_string(), (now + LEASE_MS).to_string()],
                )
                .await?;
            if leased == 0 {
                continue;
            }
            let Some(recipient) = Recipient::parse(&name) else {
                let _: i64 = self.inner.redis.zrem(&due_key, &name).await?;
                continue;
            };
            let next = match self.send_one(recipient, &name).await {
                Ok(Some(at)) => Some(at),
                Ok(None) => {
                    // What arrived while this e-mail went waits for the interval.
                    let left: i64 = self.inner.redis.hlen(self.inner.keys.notify_pending(&name)).await?;
                    (left > 0).then(|| now + self.inner.settings.interval.as_millis() as u64)
                }
                Err(error) => {
                    metrics::counter!(EMAILS_TOTAL, "outcome" => "failed").increment(1);
                    tracing::warn!(error = %error, recipient = %name, "notification e-mail failed; retrying in 30 s");
                    Some(now + 30_000)
                }
            };
            match next {
                Some(at) => {
                    let _: i64 = self
                        .inner
                        .redis
                        .zadd(&due_key, Some(SetOptions::XX), None, false, false, (at as f64, name))
                        .await?;
                }
                None => {
                    let _: i64 = self.inner.redis.zrem(&due_key, &name).await?;
                }
            }
        }
        Ok(())
    }

    /// Sends `recipient`'s waiting notifications in one e-mail; `Ok(Some(at))` when its address
    /// had an e-mail within the interval (another conversation's visitor with the same address),
    /// so this one waits until `at`.
    async fn send_one(
        &self,
        recipient: Recipient,
        name: &str,
    ) -> Result<Option<u64>, Box<dyn std::error::Error + Send + Sync>> {
        let pending_key = self.inner.keys.notify_pending(name);
        let pending: std::collections::HashMap<String, String> = self.inner.redis.hgetall(&pending_key).await?;
        if pending.is_empty() {
            return Ok(None);
        }
        let mut items: Vec<Item> = pending.values().filter_map(|value| serde_json::from_str(value).ok()).collect();
        items.sort_by_key(|item| item.at_ms);
        let fields: Vec<String> = pending.keys().cloned().collect();
        let back = match recipient {
            Recipient::Agent { tenant, user } => self.agent_online(tenant, user).await?,
            Recipient::Visitor { conversation, .. } => self.visitor_present(conversation).await?,
        };
        if back {
            metrics::counter!(EMAILS_TOTAL, "outcome" => "skipped").increment(1);
        } else {
            let found = match recipient {
                Recipient::Agent { user, .. } => chatdesk_store::directory::user_email(&self.inner.db, user)
                    .await?
                    .map(|address| (address, agent_email(&self.inner.settings.public_url, &items))),
                Recipient::Visitor { tenant, conversation } => {
                    chatdesk_store::workspace::visitor_email(&self.inner.db, tenant, conversation).await?.map(
                        |(address, inbox)| (address, visitor_email(&self.inner.settings.public_url, inbox, &items)),
                    )
                }
            };
            let Some((address, (subject, body))) = found else {
                let _: i64 = self.inner.redis.hdel(&pending_key, fields).await?;
                return Ok(None);
            };
            // An address a visitor typed is anyone's: it gets at most one e-mail per interval
            // whatever the conversation or tenant, so sessions opened in bulk cannot flood it.
            let address_key = self.inner.keys.notify_last(&format!("address:{}", address.to_lowercase()));
            if matches!(recipient, Recipient::Visitor { .. }) {
                let held: i64 = self.inner.redis.pttl(&address_key).await?;
                if held > 0 {
                    return Ok(Some(Self::now_ms() + held as u64));
                }
            }
            let interval = self.inner.settings.interval.as_millis().max(1) as i64;
            match self.deliver(&address, subject, body).await {
                Ok(()) => {
                    metrics::counter!(EMAILS_TOTAL, "outcome" => "sent").increment(1);
                    for key in [self.inner.keys.notify_last(name), address_key] {
                        let _: () = self.inner.redis.set(key, "1", Some(Expiration::PX(interval)), None, false).await?;
                    }
                }
                // No retry can help an address that does not parse or that the server refuses
                // for good: what it was told is dropped, not retried forever.
                Err(Delivery::Permanent(reason)) => {
                    metrics::counter!(EMAILS_TOTAL, "outcome" => "undeliverable").increment(1);
                    tracing::warn!(recipient = %name, reason = %reason, "notification e-mail undeliverable; dropped");
                }
                Err(Delivery::Transient(error)) => return Err(error),
            }
        }
        // Only what this e-mail told: an item that arrived meanwhile made the recipient due again.
        let _: i64 = self.inner.redis.hdel(&pending_key, fields).await?;
        Ok(None)
    }

    async fn deliver(&self, address: &str, subject: String, body: String) -> Result<(), Delivery> {
        let to: Mailbox = address.parse().map_err(|error| Delivery::Permanent(format!("address: {error}")))?;
        let message = Message::builder()
            .from(self.inner.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|error| Delivery::Permanent(error.to_string()))?;
        match self.inner.mailer.send(message).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_permanent() => Err(Delivery::Permanent(error.to_string())),
            Err(error) => Err(Delivery::Transient(Box::new(error))),
        }
    }
}

/// Why an e-mail did not go.
enum Delivery {
    /// The address or the server's answer says it never will.
    Permanent(String),
    Transient(Box<dyn std::error::Error + Send + Sync>),
}

/// Subject and text of an agent's e-mail: what was assigned to it and where it was mentioned.
fn agent_email(public_url: &str, items: &[Item]) -> (String, String) {
    let assigned = items.iter().filter(|item| item.kind == "assigned").count();
    let mentions = items.iter().filter(|item| item.kind == "mention").count();
    let mut parts = Vec::new();
    if assigned > 0 {
        parts.push(format!("{assigned} conversation{} assigned to you", if assigned == 1 { "" } else { "s" }));
    }
    if mentions > 0 {
        parts.push(format!("{mentions} mention{}", if mentions == 1 { "" } else { "s" }));
    }
    let subject = format!("chatdesk: {}", parts.join(", "));
    let base = public_url.trim_end_matches('/');
    let mut body = String::from("While you were away:\n\n");
    for item in items {
        let link = format!("{base}/#/inbox/{}", item.conversation);
        match item.kind.as_str() {
            "mention" => body.push_str(&format!(
                "- You were mentioned in a note: \"{}\"\n  {link}\n",
                item.text.as_deref().unwrap_or_default()
            )),
            _ => body.push_str(&format!("- A conversation was assigned to you\n  {link}\n")),
        }
    }
    (subject, body)
}

/// Subject and text of a visitor's e-mail: the replies it has not seen, whole, and where to write
/// back (the inbox's widget page).
fn visitor_email(public_url: &str, inbox: Uuid, items: &[Item]) -> (String, String) {
    let base = public_url.trim_end_matches('/');
    let mut body = String::from("You have a reply to your conversation:\n\n");
    for item in items {
        body.push_str(item.text.as_deref().unwrap_or_default());
        body.push_str("\n\n");
    }
    body.push_str(&format!("Write back: {base}/demo?inbox={inbox}\n"));
    ("You have a new reply".into(), body)
}

fn redis_down(error: Error) -> HandlerError {
    Box::new(Unavailable(format!("Redis: {error}")))
}

/// The `notifier` group's handler.
pub struct NotifyHandler {
    notifier: Notifier,
}

impl Handler for NotifyHandler {
    fn group(&self) -> GroupName {
        GroupName::parse(GROUP).expect("a valid group name")
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        for entry in &batch.entries {
            let relevant = matches!(
                entry.envelope.record_type.as_str(),
                "conversation.assigned" | "note.created" | "message.created"
            );
            if !relevant {
                continue;
            }
            let Ok(event) = entry.envelope.event() else { continue };
            self.notifier.record(entry.envelope.tenant.0, entry.envelope.event_id.0, &event).await?;
        }
        Ok(Outcomes::all_done())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_round_trip() {
        let (tenant, id) = (Uuid::now_v7(), Uuid::now_v7());
        for recipient in [Recipient::Agent { tenant, user: id }, Recipient::Visitor { tenant, conversation: id }] {
            assert_eq!(Recipient::parse(&recipient.name()), Some(recipient));
        }
        assert_eq!(Recipient::parse("agent:nope"), None);
    }

    #[test]
    fn an_agents_email_lists_everything_once() {
        let item = |kind: &str, text: Option<&str>| Item {
            kind: kind.into(),
            tenant: Uuid::nil(),
            conversation: Uuid::nil(),
            text: text.map(str::to_owned),
            at_ms: 0,
        };
        let (subject, body) = agent_email(
            "https://desk.example/",
            &[item("assigned", None), item("assigned", None), item("mention", Some("@ann look"))],
        );
        assert_eq!(subject, "chatdesk: 2 conversations assigned to you, 1 mention");
        assert!(body.contains("https://desk.example/#/inbox/00000000-0000-0000-0000-000000000000"), "{body}");
        assert!(body.contains("\"@ann look\""), "{body}");
    }
}
