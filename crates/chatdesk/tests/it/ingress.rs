//! Channel webhooks and the web widget against a running `chatdesk serve`, with bodies shaped
//! exactly as the providers send them.

use std::sync::Arc;
use std::time::Duration;

use chatdesk_api::ingress::signature::sign;
use chatdesk_core::Envelope;
use chatdesk_core::events::{Event, MessageStatus, MessageStatusChanged};
use chatdesk_core::{KeyScheme, StreamsConfig, TenantId};
use chatdesk_streams::{Producer, RedisClient, RedisConnector, RedisSettings};
use chatdesk_testkit::{HttpResponse, http_request};
use fred::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{Client, Env, admin, conversation_of, eventually, generic_body, post, post_generic, serve};

struct Inboxes {
    generic: Value,
    whatsapp: Value,
    telegram: Value,
    web: Value,
}

fn id(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_else(|| panic!("{key} in {value}")).to_owned()
}

async fn events_length(redis: &RedisClient, keys: &KeyScheme, streams: &StreamsConfig) -> u64 {
    let events = streams.stream("events").unwrap();
    let mut total = 0;
    for partition in 0..events.partitions {
        let length: u64 = redis.xlen(keys.partition(&events.name, partition).stream).await.unwrap();
        total += length;
    }
    total
}

async fn texts(api: &Client, conversation: &str, expected: usize) -> Vec<String> {
    let page =
        eventually(api, &format!("/v1/conversations/{conversation}/messages?limit=200"), "messages stored", |page| {
            page["items"].as_array().unwrap().len() >= expected
        })
        .await;
    page["items"].as_array().unwrap().iter().map(|message| message["text"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn channel_messages_land_once_in_the_right_conversation() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@ingress.test", "owner-pass-1");
    let tenant_id = id(&tenant, "tenant_id");
    let inbox = |kind: &str| admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", kind, "--name", kind]);
    let inboxes = Inboxes {
        generic: inbox("generic"),
        whatsapp: inbox("whatsapp"),
        telegram: inbox("telegram"),
        web: inbox("web"),
    };
    assert_eq!(id(&inboxes.web, "webhook_path"), format!("/v1/widget/{}/sessions", id(&inboxes.web, "inbox_id")));
    let key = admin(&env, &["apikey", "create", "--tenant", &tenant_id, "--role", "admin"]);
    let (http, _server) = serve(&env, &[]).await;
    let api = Client { http, token: id(&key, "key") };
    let redis_client = RedisConnector::new(RedisSettings::new(&env.redis_url)).unwrap().shared().await.unwrap();
    let streams =
        Arc::new(StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap());
    let keys = KeyScheme::new(&env.prefix).unwrap();

    // Generic: one message, one event, one row in the sender's conversation.
    let first = post_generic(http, &inboxes.generic, &generic_body("m-1", "cust-42", "hello")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json(), json!({"accepted": 1, "duplicates": 0, "statuses": 0}));
    let conversation = conversation_of(&api, "cust-42").await;
    assert_eq!(conversation["contact"]["name"], "Ana");
    assert_eq!(conversation["inbox_id"], inboxes.generic["inbox_id"]);
    let conversation_id = id(&conversation, "id");
    assert_eq!(texts(&api, &conversation_id, 1).await, ["hello"]);

    // The same provider message 5 times, 3 of them concurrently: one event.
    let duplicate = generic_body("m-dup", "cust-42", "are you there?");
    let mut accepted = 0;
    for _ in 0..2 {
        accepted += post_generic(http, &inboxes.generic, &duplicate).await.json()["accepted"].as_u64().unwrap();
    }
    let concurrent = futures::future::join_all((0..3).map(|_| post_generic(http, &inboxes.generic, &duplicate))).await;
    for response in &concurrent {
        assert_eq!(response.status, 200);
        accepted += response.json()["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted, 1, "one of five deliveries is appended");

    // 50 concurrent first messages from one new contact: one contact, one conversation.
    let bodies: Vec<String> =
        (0..50).map(|index| generic_body(&format!("burst-{index}"), "cust-new", &format!("burst {index}"))).collect();
    let responses =
        futures::future::join_all(bodies.iter().map(|body| post_generic(http, &inboxes.generic, body))).await;
    assert!(responses.iter().all(|response| response.status == 200 && response.json()["accepted"] == 1));
    let burst = conversation_of(&api, "cust-new").await;
    let stored = texts(&api, &id(&burst, "id"), 50).await;
    assert_eq!(stored.len(), 50);
    let all = api.call("GET", "/v1/conversations?limit=200", None).await.json();
    assert_eq!(
        all["items"].as_array().unwrap().iter().filter(|item| item["contact"]["external_id"] == "cust-new").count(),
        1
    );
    assert_eq!(texts(&api, &conversation_id, 2).await, ["are you there?", "hello"]);

    // Every rejection answers precisely and appends nothing.
    let before = events_length(&redis_client, &keys, &streams).await;
    let body = generic_body("m-bad", "cust-42", "nope");
    let path = inboxes.generic["webhook_path"].as_str().unwrap().to_owned();
    let wrong = sign(body.as_bytes(), "not-the-secret");
    let cases: Vec<(HttpResponse, u16, &str)> = vec![
        (post(http, &path, &[("X-Chatdesk-Signature", &wrong)], &body).await, 401, "unauthorized"),
        (post(http, &path, &[], &body).await, 401, "unauthorized"),
        (post_generic(http, &json!({"webhook_path": format!("/v1/webhooks/generic/{}", Uuid::now_v7()), "secret": "x"}), &body).await, 404, "not_found"),
        (post_generic(http, &json!({"webhook_path": format!("/v1/webhooks/generic/{}", id(&inboxes.whatsapp, "inbox_id")), "secret": "x"}), &body).await, 404, "not_found"),
        (http_request(http, "POST", &path, &[("Content-Type", "text/plain")], Some(&body)).await.unwrap(), 415, "unsupported_media_type"),
        (post_generic(http, &inboxes.generic, &format!("{{\"text\": \"{}\"}}", "x".repeat(300 * 1024))).await, 413, "payload_too_large"),
        (post_generic(http, &inboxes.generic, "{\"message_id\": \"m-x\",").await, 400, "invalid_json"),
        (post_generic(http, &inboxes.generic, r#"{"message_id": "m-x", "text": "hi"}"#).await, 422, "invalid_field"),
        (post_generic(http, &inboxes.generic, r#"{"message_id": "m-x", "from": {"name": "no id"}, "text": "hi"}"#).await, 422, "invalid_field"),
    ];
    for (index, (response, status, code)) in cases.iter().enumerate() {
        assert_eq!(response.status, *status, "case {index}: {}", response.body);
        assert_eq!(response.json()["error"]["code"], *code, "case {index}");
    }
    assert_eq!(cases[7].0.json()["error"]["details"]["field"], "from");
    assert_eq!(cases[8].0.json()["error"]["details"]["field"], "from.id");
    assert!(cases[6].0.json()["error"]["details"]["line"].is_number());
    assert_eq!(events_length(&redis_client, &keys, &streams).await, before, "rejected requests appended something");

    // WhatsApp: verification, a message, then statuses of an outbound reply.
    let whatsapp_path = inboxes.whatsapp["webhook_path"].as_str().unwrap().to_owned();
    let secret = inboxes.whatsapp["secret"].as_str().unwrap().to_owned();
    let verify = http_request(
        http,
        "GET",
        &format!("{whatsapp_path}?hub.mode=subscribe&hub.verify_token={secret}&hub.challenge=1158201444"),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!((verify.status, verify.body.as_str()), (200, "1158201444"));
    let refused = http_request(
        http,
        "GET",
        &format!("{whatsapp_path}?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1"),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 403);
    let notification = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
        "messages": [{"from": "16505551234", "id": "wamid.HBgLMTY1MDUwNzY1MjAVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=", "timestamp": "1749416383", "type": "text", "text": {"body": "Does it come in another color?"}}]
    }}]}]})
    .to_string();
    let unsigned = post(http, &whatsapp_path, &[], &notification).await;
    assert_eq!(unsigned.status, 401);
    let signature = sign(notification.as_bytes(), &secret);
    let delivered = post(http, &whatsapp_path, &[("X-Hub-Signature-256", &signature)], &notification).await;
    assert_eq!(delivered.status, 200, "{}", delivered.body);
    let whatsapp_conversation = conversation_of(&api, "16505551234").await;
    assert_eq!(whatsapp_conversation["contact"]["name"], "Sheena Nelson");
    let whatsapp_id = id(&whatsapp_conversation, "id");
    assert_eq!(texts(&api, &whatsapp_id, 1).await, ["Does it come in another color?"]);

    let reply = api
        .call("POST", &format!("/v1/conversations/{whatsapp_id}/messages"), Some(json!({"text": "Yes, in blue."})))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let message_id: Uuid = reply.json()["event_id"].as_str().unwrap().parse().unwrap();
    // What the sender records once WhatsApp accepted the message: its wamid.
    let producer = Producer::new(redis_client.clone(), keys.clone(), streams.clone());
    let sent = Event::MessageStatus(MessageStatusChanged {
        message_id,
        conversation_id: whatsapp_id.parse().unwrap(),
        status: MessageStatus::Sent,
        reason: None,
        provider_message_id: Some("wamid.OUT-1".into()),
        attempts: Some(1),
        code: None,
    });
    producer.append_event(&Envelope::of(TenantId(tenant_id.parse().unwrap()), &sent)).await.unwrap();
    let status_of = |status: &'static str| {
        let api = &api;
        let path = format!("/v1/conversations/{whatsapp_id}/messages?limit=1");
        async move {
            eventually(api, &path, &format!("reply {status}"), |page| page["items"][0]["status"] == status).await;
        }
    };
    status_of("sent").await;
    let statuses = |status: &str| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "statuses": [{"id": "wamid.OUT-1", "status": status, "timestamp": "1749416500", "recipient_id": "16505551234"}]
        }}]}]})
        .to_string()
    };
    for status in ["delivered", "sent"] {
        let body = statuses(status);
        let signature = sign(body.as_bytes(), &secret);
        let response = post(http, &whatsapp_path, &[("X-Hub-Signature-256", &signature)], &body).await;
        assert_eq!(response.json()["statuses"], 1, "{}", response.body);
    }
    status_of("delivered").await;

    // Telegram: the secret token header, and a real Update.
    let telegram_path = inboxes.telegram["webhook_path"].as_str().unwrap().to_owned();
    let update = json!({"update_id": 10000, "message": {"date": 1441645532, "chat": {"last_name": "Lastname", "id": 1111111, "type": "private", "first_name": "Test", "username": "tester"}, "message_id": 1365, "from": {"last_name": "Lastname", "id": 1111111, "is_bot": false, "first_name": "Test", "username": "tester"}, "text": "/start"}}).to_string();
    assert_eq!(post(http, &telegram_path, &[("X-Telegram-Bot-Api-Secret-Token", "wrong")], &update).await.status, 401);
    let telegram_secret = inboxes.telegram["secret"].as_str().unwrap().to_owned();
    let accepted = post(http, &telegram_path, &[("X-Telegram-Bot-Api-Secret-Token", &telegram_secret)], &update).await;
    assert_eq!(accepted.json()["accepted"], 1, "{}", accepted.body);
    let again = post(http, &telegram_path, &[("X-Telegram-Bot-Api-Secret-Token", &telegram_secret)], &update).await;
    assert_eq!(again.json()["duplicates"], 1);
    let telegram_conversation = conversation_of(&api, "1111111").await;
    assert_eq!(telegram_conversation["contact"]["name"], "Test Lastname");
    assert_eq!(texts(&api, &id(&telegram_conversation, "id"), 1).await, ["/start"]);

    // The widget: a session, a message, and a return within the standby window.
    let sessions = inboxes.web["webhook_path"].as_str().unwrap().to_owned();
    let session = post(http, &sessions, &[], r#"{"email": "Visitor@Example.com", "name": "Vera"}"#).await;
    assert_eq!(session.status, 201, "{}", session.body);
    let session = session.json();
    let token = format!("Bearer {}", id(&session, "token"));
    let messages_path = sessions.replace("/sessions", "/messages");
    let written = post(
        http,
        &messages_path,
        &[("Authorization", &token)],
        r#"{"text": "Hi from the widget", "client_msg_id": "w-1"}"#,
    )
    .await;
    assert_eq!(written.status, 202, "{}", written.body);
    assert_eq!(written.json()["conversation_id"], session["conversation_id"]);
    assert_eq!(post(http, &messages_path, &[], r#"{"text": "no token"}"#).await.status, 401);
    let key = session["visitor_key"].as_str().unwrap();
    let returning =
        post(http, &sessions, &[], &json!({"email": "visitor@example.com", "visitor_key": key}).to_string())
            .await
            .json();
    assert_eq!(
        returning["conversation_id"], session["conversation_id"],
        "a return with the visitor key within the standby window continues"
    );
    // Knowing the e-mail is not enough: without the key, a new visitor with nothing to read.
    let stranger = post(http, &sessions, &[], r#"{"email": "visitor@example.com"}"#).await.json();
    assert_ne!(stranger["conversation_id"], session["conversation_id"], "the same e-mail, another visitor");
    let stranger_token = format!("Bearer {}", stranger["token"].as_str().unwrap());
    let seen = http_request(http, "GET", &messages_path, &[("Authorization", &stranger_token)], None).await.unwrap();
    assert_eq!(seen.json()["items"], json!([]), "a stranger reads nothing of the customer's history");
    let forged_key =
        post(http, &sessions, &[], &json!({"email": "visitor@example.com", "visitor_key": "x.y.z"}).to_string()).await;
    assert_ne!(forged_key.json()["conversation_id"], session["conversation_id"], "a forged key is no key");
    let bad_email = post(http, &sessions, &[], r#"{"email": "not-an-address"}"#).await;
    assert_eq!(bad_email.status, 422);
    assert_eq!(texts(&api, &id(&session, "conversation_id"), 1).await, ["Hi from the widget"]);

    // The visitor reads its conversation so far, with its token only.
    let history = http_request(http, "GET", &messages_path, &[("Authorization", &token)], None).await.unwrap().json();
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{history}");
    assert_eq!(
        (items[0]["text"].as_str(), items[0]["direction"].as_str()),
        (Some("Hi from the widget"), Some("inbound"))
    );
    assert!(items[0]["offset"].as_str().unwrap().contains('-'));
    assert_eq!(history["resume_from"], items[0]["offset"], "resume from the newest message");
    assert_eq!(http_request(http, "GET", &messages_path, &[], None).await.unwrap().status, 401);
    let forged = "Bearer not-a-token";
    assert_eq!(
        http_request(http, "GET", &messages_path, &[("Authorization", forged)], None).await.unwrap().status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_inbox_has_a_rate_limit() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@rate.test", "owner-pass-1");
    let inbox =
        admin(&env, &["inbox", "create", "--tenant", &id(&tenant, "tenant_id"), "--kind", "generic", "--name", "busy"]);
    let (http, _server) = serve(&env, &[("CHATDESK_INGRESS_RATE_PER_INBOX", "3")]).await;
    let bodies: Vec<String> = (0..12).map(|index| generic_body(&format!("r-{index}"), "cust-1", "hi")).collect();
    let responses = futures::future::join_all(bodies.iter().map(|body| post_generic(http, &inbox, body))).await;
    let limited: Vec<&HttpResponse> = responses.iter().filter(|response| response.status == 429).collect();
    assert!(!limited.is_empty(), "12 requests at once against a limit of 3 per second");
    assert!(responses.iter().all(|response| response.status == 200 || response.status == 429));
    for response in limited {
        assert_eq!(response.header("retry-after"), Some("1"));
        assert_eq!(response.json()["error"]["code"], "rate_limited");
    }
}

/// Every command a Redis server receives from clients (not from its own scripts), as `MONITOR`
/// shows them, until dropped.
struct Monitor {
    lines: Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    async fn start(redis_url: &str) -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let address = redis_url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(b"MONITOR\r\n").await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok).await.unwrap();
        assert_eq!(ok.trim(), "+OK");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let collected = lines.clone();
        let task = tokio::spawn(async move {
            let mut line = String::new();
            while reader.read_line(&mut line).await.unwrap_or(0) > 0 {
                // `+<time> [<db> lua] "GET" …` comes from inside a script.
                if !line.contains(" lua] ") {
                    collected.lock().unwrap().push((std::time::Instant::now(), line.trim().to_owned()));
                }
                line.clear();
            }
        });
        Self { lines, task }
    }

    fn commands(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().map(|(_, line)| line.clone()).collect()
    }

    /// Waits until the server has been quiet for a second (the process's start-up work, such as
    /// its first retention pass, is done), then forgets what it saw.
    async fn wait_quiet(&self) {
        chatdesk_testkit::wait_until("Redis to be quiet", Duration::from_secs(60), || async {
            let lines = self.lines.lock().unwrap();
            lines.last().is_none_or(|(at, _)| at.elapsed() >= Duration::from_secs(1))
        })
        .await;
        self.lines.lock().unwrap().clear();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A generic webhook costs one Redis round trip (one script: rate limit, duplicate check,
/// contact and conversation, append) and no PostgreSQL query (the inbox comes from the cache):
/// it is answered 200 while PostgreSQL is down, and Redis sees one command from the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generic_webhook_is_one_redis_round_trip_and_no_postgres_query() {
    let mut env = Env::private().await;
    let tenant = env.tenant("owner@roundtrip.test", "owner-pass-1");
    let inbox = admin(
        &env,
        &["inbox", "create", "--tenant", tenant["tenant_id"].as_str().unwrap(), "--kind", "generic", "--name", "Hooks"],
    );
    let http: std::net::SocketAddr = chatdesk_testkit::free_addr();
    let _api = crate::support::serve_roles(&env, "ingress", http, &[]).await;

    // The first webhook fills the inbox cache and loads the script.
    let first = post_generic(http, &inbox, &generic_body("warm-1", "cust-1", "hello")).await;
    assert_eq!(first.status, 200, "{}", first.body);

    env.postgres.server().expect("a private PostgreSQL").stop().await;
    let monitor = Monitor::start(&env.redis_url).await;
    monitor.wait_quiet().await;
    let answer = post_generic(http, &inbox, &generic_body("m-2", "cust-2", "a new customer")).await;
    assert_eq!(answer.status, 200, "answered with PostgreSQL stopped: {}", answer.body);
    assert_eq!(answer.json()["accepted"], 1);
    let again = post_generic(http, &inbox, &generic_body("m-2", "cust-2", "a new customer")).await;
    assert_eq!(again.json()["duplicates"], 1, "the retry is found in the same script");
    // MONITOR reports asynchronously: wait until it has reported both webhooks' scripts (the
    // commands were sent in order, so any other command of theirs is reported by then too).
    chatdesk_testkit::wait_until("MONITOR to report both webhooks", Duration::from_secs(10), || async {
        monitor.commands().iter().filter(|line| line.to_lowercase().contains(r#""evalsha""#)).count() >= 2
    })
    .await;
    // The process's retention pass and stream-status sampler run on their own schedules, reading
    // and trimming streams and dead letters and keeping their own `ops-…` keys; every other
    // command is the webhooks'.
    let retention = |line: &str| {
        let lower = line.to_lowercase();
        let reads_streams =
            ["\"xinfo\"", "\"xtrim\"", "\"exists\"", "\"xrange\"", "\"xrevrange\"", "\"xpending\"", "\"xlen\""]
                .iter()
                .any(|command| lower.contains(command))
                && (line.contains(":stream:{") || line.contains(":dlq."));
        reads_streams || line.contains(":ops-")
    };
    let commands: Vec<String> = monitor.commands().into_iter().filter(|line| !retention(line)).collect();
    assert_eq!(commands.len(), 2, "one command per webhook: {commands:#?}");
    assert!(commands.iter().all(|line| line.to_lowercase().contains(r#""evalsha""#)), "{commands:#?}");

    // The new customer's contact, conversation and message were appended by that one script.
    let redis = RedisConnector::new(RedisSettings::new(&env.redis_url)).unwrap().shared().await.unwrap();
    let streams = StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap();
    let events = streams.stream("events").unwrap();
    let tenant_id = TenantId(tenant["tenant_id"].as_str().unwrap().parse().unwrap());
    let partition = chatdesk_core::keys::partition_for_tenant(&tenant_id, events.partitions);
    let key = KeyScheme::new(&env.prefix).unwrap().partition(&events.name, partition).stream;
    let entries: Vec<(String, std::collections::HashMap<String, String>)> =
        redis.xrange(key, "-", "+", None).await.unwrap();
    let types: Vec<&str> = entries.iter().map(|(_, fields)| fields["type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "contact.created",
            "conversation.created",
            "message.created",
            "contact.created",
            "conversation.created",
            "message.created"
        ]
    );
    for (_, fields) in &entries {
        let envelope = Envelope::decode(fields.iter().map(|(field, value)| (field.as_str(), value.as_str()))).unwrap();
        envelope.event().expect("every entry the script wrote is a well-formed event");
    }
}

/// Inbox lookups that went to PostgreSQL, as a process's `/metrics` counts them.
async fn inbox_cache_misses(http: std::net::SocketAddr) -> u64 {
    let (_, metrics) = chatdesk_testkit::http_get(http, "/metrics").await.unwrap();
    metrics
        .lines()
        .find(|line| line.starts_with(r#"chatdesk_inbox_cache_lookups_total{outcome="miss"}"#))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// An inbox changed through one process is dropped from every other process's cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inbox_change_reaches_every_process_cache() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@cache.test", "owner-pass-1");
    let inbox = admin(
        &env,
        &["inbox", "create", "--tenant", tenant["tenant_id"].as_str().unwrap(), "--kind", "generic", "--name", "Hooks"],
    );
    let address = || -> std::net::SocketAddr { chatdesk_testkit::free_addr() };
    let (first, second) = (address(), address());
    let _first = crate::support::serve_roles(&env, "ingress", first, &[]).await;
    let _second = crate::support::serve_roles(&env, "ingress", second, &[("CHATDESK_NODE_ID", "second")]).await;
    // Each process drops its copies once its subscription is in place: wait for both.
    let redis = crate::support::redis_client(&env).await;
    let channel = format!("{}:inbox-changes", env.prefix);
    chatdesk_testkit::wait_until("both processes subscribed", Duration::from_secs(30), || async {
        let counts: Vec<fred::types::Value> =
            redis.custom(fred::cmd!("PUBSUB"), vec!["NUMSUB", channel.as_str()]).await.unwrap();
        counts.get(1).and_then(|count| count.as_u64()) == Some(2)
    })
    .await;

    let mut misses = 0;
    for round in 0..2 {
        for index in 0..3 {
            let body = generic_body(&format!("before-{round}-{index}"), "cust-1", "hi");
            let answer = post_generic(second, &inbox, &body).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
        }
        // One lookup in PostgreSQL (two if the first came in just before the process dropped
        // its copies as it subscribed), then the cache.
        let now = inbox_cache_misses(second).await;
        assert!((1..=2).contains(&now), "{now} lookups in PostgreSQL");
        assert!(round == 0 || now == misses, "the cache answered the second round");
        misses = now;
    }

    let token = crate::support::login(first, "owner@cache.test", "owner-pass-1").await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner = Client { http: first, token };
    let path = format!("/v1/inboxes/{}", inbox["inbox_id"].as_str().unwrap());
    let patched = owner.call("PATCH", &path, Some(json!({"outbound_url": "https://93.184.215.14/hook"}))).await;
    assert_eq!(patched.status, 200, "{}", patched.body);

    let mut sent = 0;
    let inbox = &inbox;
    chatdesk_testkit::wait_until("the second process to drop its copy", Duration::from_secs(30), || {
        sent += 1;
        let body = generic_body(&format!("after-{sent}"), "cust-1", "hi");
        async move {
            assert_eq!(post_generic(second, inbox, &body).await.status, 200);
            inbox_cache_misses(second).await == misses + 1
        }
    })
    .await;
}

/// A deployment whose keys predate ids after the hash tag keeps its senders: the old keys are
/// taken over, the message joins the sender's conversation, and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn senders_from_the_old_key_layout_keep_their_conversation() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@legacy.test", "owner-pass-1");
    let tenant_id = TenantId(tenant["tenant_id"].as_str().unwrap().parse().unwrap());
    let inbox =
        admin(&env, &["inbox", "create", "--tenant", &tenant_id.to_string(), "--kind", "generic", "--name", "Hooks"]);
    let inbox_id = inbox["inbox_id"].as_str().unwrap();
    let (http, _server) = serve(&env, &[]).await;
    let api = crate::support::Client {
        http,
        token: crate::support::login(http, "owner@legacy.test", "owner-pass-1").await.json()["token"]
            .as_str()
            .unwrap()
            .to_owned(),
    };
    assert_eq!(post_generic(http, &inbox, &generic_body("old-1", "cust-1", "before the upgrade")).await.status, 200);
    let conversation = conversation_of(&api, "cust-1").await;

    // Put the sender's keys where the previous layout kept them.
    let redis = RedisConnector::new(RedisSettings::new(&env.redis_url)).unwrap().shared().await.unwrap();
    let streams = StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap();
    let events = streams.stream("events").unwrap();
    let partition = chatdesk_core::keys::partition_for_tenant(&tenant_id, events.partitions);
    let keys = KeyScheme::new(&env.prefix).unwrap().partition(&events.name, partition);
    let identity = format!("{inbox_id}:cust-1");
    for (name, id) in [("contact", identity.as_str()), ("conversation", identity.as_str())] {
        let _: () = redis.rename(keys.scoped(name, id), keys.legacy_scoped(name, id).unwrap()).await.unwrap();
    }
    let seen = format!("{inbox_id}:old-1");
    let _: () = redis.rename(keys.scoped("seen", &seen), keys.legacy_scoped("seen", &seen).unwrap()).await.unwrap();

    let retry = post_generic(http, &inbox, &generic_body("old-1", "cust-1", "before the upgrade")).await;
    assert_eq!(retry.json()["duplicates"], 1, "the duplicate window survives the upgrade");
    assert_eq!(post_generic(http, &inbox, &generic_body("new-1", "cust-1", "after the upgrade")).await.status, 200);
    let path = format!("/v1/conversations/{}/messages", conversation["id"].as_str().unwrap());
    eventually(&api, &path, "both messages in the one conversation", |page| {
        page["items"].as_array().unwrap().len() == 2
    })
    .await;
    let dead: u64 = redis.xlen(&keys.dead_letters).await.unwrap();
    assert_eq!(dead, 0, "nothing dead-lettered");
}

/// Channel fields nested deeper than every reader parses are refused with 422, not accepted
/// and lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_channel_fields_are_refused() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@deep.test", "owner-pass-1");
    let inbox = admin(
        &env,
        &["inbox", "create", "--tenant", tenant["tenant_id"].as_str().unwrap(), "--kind", "generic", "--name", "Hooks"],
    );
    let (http, _server) = serve(&env, &[]).await;
    let nested = |levels: usize| {
        format!(
            r#"{{"message_id":"deep-{levels}","from":{{"id":"deep"}},"text":"t","k":{}{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    let refused = post_generic(http, &inbox, &nested(126)).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.json()["error"]["details"]["field"], "extra");
    assert_eq!(post_generic(http, &inbox, &nested(20)).await.status, 200);
}
