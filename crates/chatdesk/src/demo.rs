//! `chatdesk up --demo`: a demo tenant with two agent logins, a web-widget inbox with a test page,
//! and a simulated customer writing now and then, so a newcomer sees a live inbox at once.
//! Seeding is idempotent: the next `up --demo` on the same data finds and reuses it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use chatdesk_api::auth::{generate_webhook_secret, hash_password};
use chatdesk_store::directory::{self, InboxKind, InboxRecord, Role};
use tokio_util::sync::CancellationToken;

pub const AGENT_EMAIL: &str = "agent@demo.chatdesk.dev";
pub const AGENT_PASSWORD: &str = "demo-agent-1";
pub const SECOND_AGENT_EMAIL: &str = "agent2@demo.chatdesk.dev";
pub const SECOND_AGENT_PASSWORD: &str = "demo-agent-2";
pub const SRE_EMAIL: &str = "sre@demo.chatdesk.dev";
pub const SRE_PASSWORD: &str = "demo-sre-1";
pub const MARKETER_EMAIL: &str = "marketer@demo.chatdesk.dev";
pub const MARKETER_PASSWORD: &str = "demo-marketer-1";
pub const OWNER_EMAIL: &str = "owner@demo.chatdesk.dev";
pub const OWNER_PASSWORD: &str = "demo-owner-1";
const WEB_INBOX: &str = "Website chat";
const SIMULATED_INBOX: &str = "Simulated customers";
/// How often the simulated customers write.
const TRICKLE_EVERY: Duration = Duration::from_secs(20);

const CUSTOMERS: &[(&str, &str)] = &[
    ("ana", "Ana Souza"),
    ("ben", "Ben Carter"),
    ("chloe", "Chloé Martin"),
    ("dev", "Dev Patel"),
    ("emi", "Emi Tanaka"),
];
const LINES: &[&str] = &[
    "Hi! Where is my order #4512?",
    "Do you ship to Portugal?",
    "The tent I got is missing a pole.",
    "Can I change the delivery address?",
    "Is the 2-person stove back in stock?",
    "Thanks, that helped!",
    "How long does a refund take?",
];

pub struct Demo {
    pub web: InboxRecord,
    pub simulated: InboxRecord,
}

/// Finds or creates the demo tenant, its agents and inboxes.
pub async fn seed(db: &chatdesk_store::Pool) -> anyhow::Result<Demo> {
    let tenant = match directory::user_by_email(db, AGENT_EMAIL).await? {
        Some(agent) => agent.tenant_id,
        None => {
            let tenant = directory::create_tenant(db, "Demo Outfitters").await?;
            for (email, password, role) in [
                (OWNER_EMAIL, OWNER_PASSWORD, Role::Owner),
                (AGENT_EMAIL, AGENT_PASSWORD, Role::Agent),
                (SECOND_AGENT_EMAIL, SECOND_AGENT_PASSWORD, Role::Agent),
            ] {
                directory::create_user(db, tenant, email, role, &hash_password(password)).await?;
            }
            tenant
        }
    };
    // Added after the first demos: a demo made before gets it now.
    for (email, password, role) in
        [(SRE_EMAIL, SRE_PASSWORD, Role::Sre), (MARKETER_EMAIL, MARKETER_PASSWORD, Role::Marketer)]
    {
        if directory::user_by_email(db, email).await?.is_none() {
            directory::create_user(db, tenant, email, role, &hash_password(password)).await?;
        }
    }
    let inboxes = directory::inboxes_of(db, tenant).await?;
    let find_or_create = async |kind: InboxKind, name: &str| -> anyhow::Result<InboxRecord> {
        if let Some(inbox) = inboxes.iter().find(|inbox| inbox.kind == kind && inbox.name == name) {
            return Ok(inbox.clone());
        }
        Ok(directory::create_inbox(db, tenant, kind, name, &generate_webhook_secret(), None, &serde_json::json!({}))
            .await?)
    };
    let web = find_or_create(InboxKind::Web, WEB_INBOX).await?;
    let simulated = find_or_create(InboxKind::Generic, SIMULATED_INBOX).await?;
    // A label and a canned response to try the workspace with (each made once: a taken name is
    // left as it is).
    chatdesk_store::workspace::create_label(db, tenant, "VIP", "#f2c94c").await?;
    chatdesk_store::workspace::create_canned(
        db,
        tenant,
        "thanks",
        "Hi {{contact.name}}, thanks for writing! This is {{agent.name}}, I'm looking into it now.",
        None,
    )
    .await?;
    Ok(Demo { web, simulated })
}

/// A stand-in for the simulated customers' own system: it takes the replies the sender POSTs to
/// their inbox and answers 200, so a reply in the demo goes queued → sent like a real one.
/// Returns where it listens (loopback, a free port) and runs until cancelled.
pub async fn receiver(cancel: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the demo receiver")?;
    let address = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/replies",
        axum::routing::post(|| async { axum::Json(serde_json::json!({ "id": uuid::Uuid::now_v7() })) }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await;
        if let Err(error) = served {
            tracing::warn!(error = %error, "the demo receiver stopped");
        }
    });
    Ok(address)
}

/// Points the simulated customers' inbox at the demo receiver (its port changes every run).
pub async fn connect_receiver(db: &chatdesk_store::Pool, demo: &mut Demo, receiver: SocketAddr) -> anyhow::Result<()> {
    let url = format!("http://{receiver}/replies");
    if let Some(updated) = directory::update_inbox(
        db,
        demo.simulated.tenant_id,
        demo.simulated.id,
        Some(Some(&url)),
        &serde_json::json!({}),
    )
    .await?
    {
        demo.simulated = updated;
    }
    Ok(())
}

pub fn banner(http: SocketAddr, demo: &Demo) -> String {
    format!(
        "\nchatdesk demo is ready:\n  dashboard  http://{http}/  sign in as {AGENT_EMAIL} / {AGENT_PASSWORD}\n             \
         (a second agent: {SECOND_AGENT_EMAIL} / {SECOND_AGENT_PASSWORD}; the Streams page: {SRE_EMAIL} / {SRE_PASSWORD};\n             \
         the Campaigns page: {MARKETER_EMAIL} / {MARKETER_PASSWORD}; the Bots page: {OWNER_EMAIL} / {OWNER_PASSWORD})\n  widget     http://{http}/demo?inbox={}\n  \
         a simulated customer writes every {}s on the \"{SIMULATED_INBOX}\" inbox\n",
        demo.web.id,
        TRICKLE_EVERY.as_secs()
    )
}

/// Posts a simulated customer's message to the generic webhook every little while, signed like a
/// real channel's, until cancelled.
pub async fn trickle(http: SocketAddr, inbox: InboxRecord, cancel: CancellationToken) {
    let target = if http.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], http.port())) } else { http };
    let url = format!("http://{target}{}", InboxKind::Generic.webhook_path(inbox.id));
    let client = match chatdesk_sender::providers::http_client(Duration::from_secs(5)) {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(error = %error, "demo: cannot build an HTTP client; no simulated messages");
            return;
        }
    };
    let mut turn: usize = 0;
    let mut pause = Duration::from_secs(3);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = cancel.cancelled() => return,
        }
        pause = TRICKLE_EVERY;
        let (id, name) = CUSTOMERS[turn % CUSTOMERS.len()];
        let body = serde_json::json!({
            "message_id": format!("demo-{}-{turn}", chatdesk_streams::entry::now_ms()),
            "from": {"id": format!("demo-{id}"), "name": name},
            "text": LINES[turn % LINES.len()],
        })
        .to_string();
        turn += 1;
        let signature = chatdesk_core::auth::sign_body(body.as_bytes(), &inbox.webhook_secret);
        let sent = client
            .post(&url)
            .header("Content-Type", "application/json")
            .header("X-Chatdesk-Signature", signature)
            .body(body)
            .send()
            .await
            .context("posting a simulated message");
        match sent {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => tracing::warn!(status = %response.status(), "demo: a simulated message was refused"),
            Err(error) => tracing::debug!(error = format!("{error:#}"), "demo: cannot post a simulated message yet"),
        }
    }
}
