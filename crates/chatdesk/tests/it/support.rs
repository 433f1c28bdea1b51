//! Running `chatdesk` as its users do: admin commands, a served process, an HTTP client.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use chatdesk_testkit::{HttpResponse, http_request};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub const JWT_SECRET: &str = "a-test-signing-key-that-is-long-enough-0123456789";

/// Real servers for one test and the settings a `chatdesk` process needs to use them.
pub struct Env {
    pub redis_url: String,
    pub database_url: String,
    pub prefix: String,
    _redis: chatdesk_testkit::TestRedis,
    pub postgres: chatdesk_testkit::TestPostgres,
}

pub fn admin(env: &Env, args: &[&str]) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatdesk"))
        .arg("admin")
        .args(args)
        .env("DATABASE_URL", &env.database_url)
        .output()
        .unwrap();
    assert!(output.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

impl Env {
    /// A Redis and a fresh PostgreSQL database (see chatdesk-testkit).
    pub async fn start() -> Self {
        Self::with(chatdesk_testkit::redis().await, chatdesk_testkit::postgres().await)
    }

    /// Servers of this test alone, which it may stop and whose every command it may watch.
    pub async fn private() -> Self {
        let database = format!("test_{}", uuid::Uuid::now_v7().simple());
        Self::with(
            chatdesk_testkit::private_redis(chatdesk_testkit::RedisPersistence::None).await,
            chatdesk_testkit::private_postgres(&database).await,
        )
    }

    fn with(redis: chatdesk_testkit::TestRedis, postgres: chatdesk_testkit::TestPostgres) -> Self {
        Self {
            redis_url: redis.url().to_owned(),
            database_url: postgres.url().to_owned(),
            prefix: chatdesk_testkit::unique_prefix(),
            _redis: redis,
            postgres,
        }
    }

    /// `chatdesk admin agent create` in `tenant` with `role`; returns its JSON.
    pub fn user(&self, tenant: &str, email: &str, password: &str, role: &str) -> Value {
        admin(self, &["agent", "create", "--tenant", tenant, "--email", email, "--password", password, "--role", role])
    }

    /// `chatdesk admin tenant create` with an owner; returns its JSON.
    pub fn tenant(&self, owner_email: &str, password: &str) -> Value {
        admin(self, &["tenant", "create", "--name", "Acme", "--owner-email", owner_email, "--password", password])
    }
}

/// `chatdesk serve` with every role on a free port, with extra environment; returns once it is
/// ready. The process is killed when the handle drops.
pub async fn serve(env: &Env, extra_env: &[(&str, &str)]) -> (SocketAddr, Child) {
    let http: SocketAddr = chatdesk_testkit::free_addr();
    (http, serve_roles(env, "ingress,writer,gateway", http, extra_env).await)
}

/// `chatdesk serve --roles <roles>` on `http`; returns once it is ready.
pub async fn serve_roles(env: &Env, roles: &str, http: SocketAddr, extra_env: &[(&str, &str)]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatdesk"))
        .args(["serve", "--roles", roles, "--http", &http.to_string()])
        .env("REDIS_URL", &env.redis_url)
        .env("DATABASE_URL", &env.database_url)
        .env("CHATDESK_JWT_SECRET", JWT_SECRET)
        .env("CHATDESK_KEY_PREFIX", &env.prefix)
        .env("CHATDESK_NODE_ID", "test-node")
        .env("CHATDESK_STREAMS", concat!(env!("CARGO_MANIFEST_DIR"), "/../../streams.toml"))
        // The tests' stand-in receivers listen on loopback; a test of the outbound policy
        // passes its own value.
        .env("CHATDESK_OUTBOUND_ALLOW", "127.0.0.1/32")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The port is this test's alone (see chatdesk_testkit::free_port), so a ready answer there
    // is this process's; one that exits instead fails the test at once, with its status.
    chatdesk_testkit::wait_until("the API answers", Duration::from_secs(120), || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("chatdesk serve --roles {roles} on {http} exited before it was ready: {status}");
        }
        async move { matches!(chatdesk_testkit::http_get(http, "/readyz").await, Ok((200, _))) }
    })
    .await;
    child
}

pub struct Client {
    pub http: SocketAddr,
    pub token: String,
}

impl Client {
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
        let authorization = format!("Bearer {}", self.token);
        let body = body.map(|body| body.to_string());
        let mut headers = vec![("Authorization", authorization.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        http_request(self.http, method, path, &headers, body.as_deref()).await.unwrap()
    }
}

pub async fn login(http: SocketAddr, email: &str, password: &str) -> HttpResponse {
    let body = json!({ "email": email, "password": password }).to_string();
    http_request(http, "POST", "/v1/auth/login", &[("Content-Type", "application/json")], Some(&body)).await.unwrap()
}

/// `GET path` until its JSON answer passes `check` (within 30 s); returns that answer.
pub async fn eventually(client: &Client, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    chatdesk_testkit::eventually(what, Duration::from_secs(30), || async {
        let response = client.call("GET", path, None).await;
        (response.status == 200).then(|| response.json()).filter(|answer| check(answer))
    })
    .await
}

/// POSTs a JSON `body` to `path` with extra headers.
pub async fn post(http: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http_request(http, "POST", path, &all, Some(body)).await.unwrap()
}

/// A generic-channel webhook, signed with the inbox's secret (`inbox` as `admin inbox create` prints it).
pub async fn post_generic(http: SocketAddr, inbox: &Value, body: &str) -> HttpResponse {
    let signature = chatdesk_core::auth::sign_body(body.as_bytes(), inbox["secret"].as_str().unwrap());
    post(http, inbox["webhook_path"].as_str().unwrap(), &[("X-Chatdesk-Signature", &signature)], body).await
}

pub fn generic_body(message_id: &str, from: &str, text: &str) -> String {
    json!({ "message_id": message_id, "from": { "id": from, "name": "Ana" }, "text": text, "timestamp": 1763800000 })
        .to_string()
}

/// The conversation whose contact has `external_id`, once stored.
pub async fn conversation_of(api: &Client, external_id: &str) -> Value {
    eventually(api, "/v1/conversations?limit=200", &format!("a conversation with {external_id}"), |page| {
        page["items"].as_array().unwrap().iter().any(|item| item["contact"]["external_id"] == external_id)
    })
    .await["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["contact"]["external_id"] == external_id)
        .unwrap()
        .clone()
}

/// Every dead letter of a stream family, each as one line of its fields.
pub async fn dead_letter_fields(env: &Env, family: &str) -> Vec<String> {
    use fred::prelude::*;
    let redis = redis_client(env).await;
    let streams = shipped_streams();
    let stream = streams.stream(family).unwrap();
    let keys = chatdesk_core::KeyScheme::new(&env.prefix).unwrap();
    let mut letters = Vec::new();
    for partition in 0..stream.partitions {
        let entries: Vec<(String, std::collections::HashMap<String, String>)> =
            redis.xrange(keys.partition(&stream.name, partition).dead_letters, "-", "+", None).await.unwrap();
        letters.extend(entries.into_iter().map(|(_, fields)| format!("{fields:?}")));
    }
    letters
}

/// Dead letters of a stream family, over all its partitions.
pub async fn dead_letters(env: &Env, family: &str) -> u64 {
    dead_letter_fields(env, family).await.len() as u64
}

/// The app secret the tests' WhatsApp inboxes sign their webhooks with.
pub const WHATSAPP_APP_SECRET: &str = "whatsapp-app-secret";

/// A WhatsApp inbox of `tenant` sending from `phone_number_id` (through a stand-in when the
/// server's `CHATDESK_WHATSAPP_API_URL` points at one).
/// `chatdesk admin inbox create` of a generic inbox that sends to `url`; returns its JSON
/// (`inbox_id`, `webhook_path`, `secret`).
pub fn generic_inbox(env: &Env, tenant: &str, name: &str, url: &str) -> Value {
    admin(env, &["inbox", "create", "--tenant", tenant, "--kind", "generic", "--name", name, "--outbound-url", url])
}

pub fn whatsapp_inbox(env: &Env, tenant: &str, phone_number_id: &str) -> Value {
    admin(
        env,
        &[
            "inbox",
            "create",
            "--tenant",
            tenant,
            "--kind",
            "whatsapp",
            "--name",
            "WA",
            "--secret",
            WHATSAPP_APP_SECRET,
            "--phone-number-id",
            phone_number_id,
            "--access-token",
            "EAAG-test-token",
        ],
    )
}

/// A signed Cloud API notification carrying `value` to `inbox`'s webhook; it must be taken (200).
pub async fn whatsapp_notify(http: SocketAddr, inbox: &Value, value: Value) {
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}]})
        .to_string();
    let signature = chatdesk_core::auth::sign_body(body.as_bytes(), WHATSAPP_APP_SECRET);
    let response =
        post(http, inbox["webhook_path"].as_str().unwrap(), &[("X-Hub-Signature-256", &signature)], &body).await;
    assert_eq!(response.status, 200, "{}", response.body);
}

/// Jobs in the sender's delivery queue, over every partition of the send stream.
pub async fn queued_deliveries(env: &Env) -> u64 {
    queue_entries(env, "sendq.jobs").await
}

/// Entries of one of the delivery queue's hashes (`sendq.jobs`, `sendq.endings`), over every
/// partition of the send stream.
async fn queue_entries(env: &Env, hash: &'static str) -> u64 {
    use fred::interfaces::HashesInterface as _;
    let streams = shipped_streams();
    let send = streams.stream("send").unwrap();
    let keys = chatdesk_core::KeyScheme::new(&env.prefix).unwrap();
    let redis = redis_client(env).await;
    let mut entries = 0u64;
    for partition in 0..send.partitions {
        let count: u64 = redis.hlen(keys.partition(&send.name, partition).key(hash)).await.unwrap();
        entries += count;
    }
    entries
}

/// Waits until the delivery queue holds no job: every message was sent, failed or dead-lettered,
/// so no further provider call can come. No recorded ending outlives its job.
pub async fn until_deliveries_finished(env: &Env) {
    chatdesk_testkit::wait_until("the delivery queue to drain", Duration::from_secs(60), || async {
        queued_deliveries(env).await == 0
    })
    .await;
    assert_eq!(queue_entries(env, "sendq.endings").await, 0, "an ending was left behind its job");
}

/// The value of a metric line (`name` with its labels, as `/metrics` prints it) of the process at
/// `http`; 0 when it has not been recorded yet.
pub async fn metric(http: SocketAddr, name: &str) -> f64 {
    let (status, text) = chatdesk_testkit::http_get(http, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .next()
        .unwrap_or(0.0)
}

/// A fault for operators' drills: the store refuses every message whose text starts with
/// "poison", as a faulty trigger would, so the writer dead-letters them.
pub async fn refuse_poison(pool: &sqlx::PgPool) {
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.body LIKE 'poison%' THEN RAISE EXCEPTION 'poison message refused by a faulty trigger'; END IF; \
           RETURN NEW; END $$; \
         CREATE TRIGGER refuse_poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// The fix for [`refuse_poison`].
pub async fn accept_poison(pool: &sqlx::PgPool) {
    sqlx::raw_sql("DROP TRIGGER refuse_poison ON messages").execute(pool).await.unwrap();
}

/// The shipped streams.toml with short claim times (4 s), so entries an operator hands back to a
/// group (replay, redrive) are taken within seconds instead of minutes.
pub fn quick_claims() -> tempfile::NamedTempFile {
    let text = include_str!("../../../../streams.toml")
        .replace("claim_idle = \"2m\"", "claim_idle = \"4s\"")
        .replace("claim_idle = \"30s\"", "claim_idle = \"4s\"")
        .replace("claim_idle = \"20s\"", "claim_idle = \"4s\"");
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file
}

/// `chatdesk streams replay --group <group> --from <from> --execute` against the test's servers;
/// returns its output once the group has handled everything replayed.
pub fn replay_into(env: &Env, streams: &std::path::Path, group: &str, from: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatdesk"))
        .args(["streams", "replay", "--group", group, "--from", from, "--execute"])
        .env("REDIS_URL", &env.redis_url)
        .env("DATABASE_URL", &env.database_url)
        .env("CHATDESK_KEY_PREFIX", &env.prefix)
        .env("CHATDESK_STREAMS", streams)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "replay into {group}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Waits until `group` has read and acknowledged everything on every partition of `family`.
pub async fn until_group_caught_up(env: &Env, family: &str, group: &str) {
    use fred::prelude::*;
    let streams = shipped_streams();
    let stream = streams.stream(family).unwrap();
    let keys = chatdesk_core::KeyScheme::new(&env.prefix).unwrap();
    let redis = redis_client(env).await;
    chatdesk_testkit::wait_until(&format!("{group} caught up on {family}"), Duration::from_secs(60), || async {
        for partition in 0..stream.partitions {
            let key = keys.partition(&stream.name, partition).stream;
            let exists: u64 = redis.exists(&key).await.unwrap();
            if exists == 0 {
                continue;
            }
            let groups: Vec<std::collections::HashMap<String, fred::types::Value>> =
                redis.xinfo_groups(&key).await.unwrap();
            let Some(info) =
                groups.iter().find(|info| info.get("name").and_then(|name| name.as_string()).as_deref() == Some(group))
            else {
                return false;
            };
            let number = |field: &str| match info.get(field) {
                Some(fred::types::Value::Null) | None => None,
                Some(value) => value.as_u64(),
            };
            if number("lag") != Some(0) || number("pending") != Some(0) {
                return false;
            }
        }
        true
    })
    .await;
}

/// A client of the test's Redis.
pub async fn redis_client(env: &Env) -> fred::clients::Client {
    chatdesk_streams::RedisConnector::new(chatdesk_streams::RedisSettings::new(&env.redis_url))
        .unwrap()
        .shared()
        .await
        .unwrap()
}

/// The shipped `streams.toml`.
pub fn shipped_streams() -> chatdesk_core::StreamsConfig {
    chatdesk_core::StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap()
}
