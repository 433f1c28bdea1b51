//! Outbound delivery against provider stand-ins: bodies and auth, ticks, retries, throttling,
//! failures, slow conversations, shared rate limits and a sender killed mid-flight.

use chatdesk_testkit::free_addr;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use chatdesk_core::auth::sign_body;
use chatdesk_core::{KeyScheme, StreamsConfig};
use chatdesk_streams::{RedisConnector, RedisSettings};
use fred::prelude::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::standin::{Answer, Received, StandIn};
use crate::support::{
    Client, Env, admin, conversation_of, eventually, generic_body, login, post, post_generic, serve_roles,
    until_deliveries_finished, whatsapp_notify,
};

const WABA_PHONE: &str = "106540352242922";

/// A tenant with an owner; returns (tenant id, API client).
async fn owner(env: &Env, http: SocketAddr) -> (String, Client) {
    let tenant = env.tenant("owner@send.test", "owner-pass-1");
    let token = login(http, "owner@send.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    (tenant["tenant_id"].as_str().unwrap().to_owned(), Client { http, token })
}

async fn reply(api: &Client, conversation: &str, text: &str) -> String {
    let response =
        api.call("POST", &format!("/v1/conversations/{conversation}/messages"), Some(json!({ "text": text }))).await;
    assert_eq!(response.status, 202, "{}", response.body);
    response.json()["event_id"].as_str().unwrap().to_owned()
}

/// The stored message with `event_id`, once `check` holds for it.
async fn message_when(
    api: &Client,
    conversation: &str,
    event_id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let page = eventually(api, &format!("/v1/conversations/{conversation}/messages?limit=200"), what, |page| {
        page["items"].as_array().unwrap().iter().any(|message| message["event_id"] == event_id && check(message))
    })
    .await;
    page["items"].as_array().unwrap().iter().find(|message| message["event_id"] == event_id).unwrap().clone()
}

/// A generic inbox whose outbound URL is `url`, and `count` conversations (one per contact).
async fn generic_conversations(
    env: &Env,
    http: SocketAddr,
    api: &Client,
    tenant: &str,
    url: &str,
    count: usize,
) -> (Value, Vec<String>) {
    let inbox = admin(
        env,
        &["inbox", "create", "--tenant", tenant, "--kind", "generic", "--name", "Out", "--outbound-url", url],
    );
    let mut conversations = Vec::new();
    for index in 0..count {
        let from = format!("customer-{index}");
        let response = post_generic(http, &inbox, &generic_body(&format!("in-{index}"), &from, "hello")).await;
        assert_eq!(response.status, 200, "{}", response.body);
        conversations.push(conversation_of(api, &from).await["id"].as_str().unwrap().to_owned());
    }
    (inbox, conversations)
}

/// A WhatsApp inbox sending through the stand-in's phone number.
fn whatsapp_inbox(env: &Env, tenant: &str) -> Value {
    crate::support::whatsapp_inbox(env, tenant, WABA_PHONE)
}

fn by_text(request: &Received) -> String {
    request.body["text"].as_str().map(str::to_owned).unwrap_or_default()
}

fn ok_generic() -> Answer {
    Answer::json(200, json!({"id": "ext-1"}))
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), socket.next()).await.expect("a frame within 15 s") {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whatsapp_reply_is_sent_once_and_its_ticks_reach_postgres_and_the_socket() {
    let env = Env::start().await;
    let provider = StandIn::start(|request| request.path.clone(), |request, _| {
        let to = request.body["to"].as_str().unwrap_or_default();
        Answer::json(
            200,
            json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": "wamid.OUT-1"}]}),
        )
    })
    .await;
    let http = free_addr();
    let _chatdesk =
        serve_roles(&env, "ingress,writer,gateway,sender", http, &[("CHATDESK_WHATSAPP_API_URL", &provider.url())])
            .await;
    let (tenant, api) = owner(&env, http).await;
    let inbox = whatsapp_inbox(&env, &tenant);
    whatsapp_notify(
        http,
        &inbox,
        json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": WABA_PHONE},
            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
            "messages": [{"from": "16505551234", "id": "wamid.IN-1", "timestamp": "1749416383", "type": "text", "text": {"body": "Is it in stock?"}}],
        }),
    )
    .await;
    let conversation = conversation_of(&api, "16505551234").await["id"].as_str().unwrap().to_owned();

    let mut socket = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")).await.unwrap().0;
    socket
        .send(Message::Text(json!({"op": "hello", "token": api.token, "protocol": 1}).to_string().into()))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut socket).await["op"], "welcome");
    let channel = format!("conversation:{conversation}");
    socket.send(Message::Text(json!({"op": "subscribe", "channel": channel}).to_string().into())).await.unwrap();
    assert_eq!(next_frame(&mut socket).await["op"], "subscribed");

    let message = reply(&api, &conversation, "Yes, in blue.").await;
    let calls = provider.wait_for("the reply at the provider", |received| !received.is_empty()).await;
    let call = &calls[0];
    assert_eq!(call.path, format!("/v21.0/{WABA_PHONE}/messages"));
    assert_eq!(call.headers["authorization"], "Bearer EAAG-test-token");
    assert_eq!(
        call.body,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "16505551234", "type": "text",
               "text": {"preview_url": false, "body": "Yes, in blue."}})
    );
    let sent = message_when(&api, &conversation, &message, "the reply sent", |m| m["status"] == "sent").await;
    assert_eq!(sent["provider_message_id"], "wamid.OUT-1");
    assert_eq!(sent["attempts"], 1);

    // Meta's receipts complete the ticks.
    for status in ["delivered", "read"] {
        whatsapp_notify(
            http,
            &inbox,
            json!({
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": WABA_PHONE},
                "statuses": [{"id": "wamid.OUT-1", "status": status, "timestamp": "1749416400", "recipient_id": "16505551234"}],
            }),
        )
        .await;
    }
    message_when(&api, &conversation, &message, "the reply read", |m| m["status"] == "read").await;

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let frame = next_frame(&mut socket).await;
        assert_eq!(frame["op"], "event", "{frame}");
        match frame["type"].as_str().unwrap() {
            "message.created" => seen.push("created".to_owned()),
            "message.status" => seen.push(frame["data"]["status"].as_str().unwrap().to_owned()),
            _ => {}
        }
    }
    assert_eq!(seen, ["created", "sent", "delivered", "read"]);
    until_deliveries_finished(&env).await;
    assert_eq!(provider.received().len(), 1, "sent exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_throttling_refusals_and_dead_letters() {
    let env = Env::start().await;
    let receiver = StandIn::start(by_text, |request, earlier| match (by_text(request).as_str(), earlier) {
        ("flaky", 0 | 1) => Answer::json(500, json!({"error": "try later"})),
        ("throttled", 0) => Answer::json(429, json!({"error": "slow down"})).with_header("Retry-After", "2"),
        ("refused", _) => Answer::json(400, json!({"error": "unknown recipient"})),
        ("broken", _) => Answer::json(500, json!({"error": "down"})),
        _ => ok_generic(),
    })
    .await;
    let http = free_addr();
    let _chatdesk = serve_roles(
        &env,
        "ingress,writer,sender",
        http,
        &[("CHATDESK_SEND_MAX_ATTEMPTS", "3"), ("CHATDESK_SEND_BACKOFF", "100ms")],
    )
    .await;
    let (tenant, api) = owner(&env, http).await;
    let (inbox, conversations) =
        generic_conversations(&env, http, &api, &tenant, &format!("{}/outbound", receiver.url()), 4).await;
    let texts = ["flaky", "throttled", "refused", "broken"];
    let mut messages = HashMap::new();
    for (conversation, text) in conversations.iter().zip(texts) {
        messages.insert(text, (conversation.clone(), reply(&api, conversation, text).await));
    }

    let (conversation, id) = &messages["flaky"];
    let flaky = message_when(&api, conversation, id, "flaky sent", |m| m["status"] == "sent").await;
    assert_eq!(flaky["attempts"], 3, "{flaky}");
    assert_eq!(flaky["provider_message_id"], "ext-1");

    let (conversation, id) = &messages["throttled"];
    let throttled = message_when(&api, conversation, id, "throttled sent", |m| m["status"] == "sent").await;
    assert_eq!(throttled["attempts"], 2, "{throttled}");
    let calls: Vec<Received> = receiver.received().into_iter().filter(|r| by_text(r) == "throttled").collect();
    assert_eq!(calls.len(), 2);
    let waited = calls[1].at - calls[0].at;
    assert!(waited >= Duration::from_millis(1900), "Retry-After: 2 was honoured ({waited:?})");

    let (conversation, id) = &messages["refused"];
    let refused = message_when(&api, conversation, id, "refused failed", |m| m["status"] == "failed").await;
    assert_eq!(refused["attempts"], 1, "{refused}");
    let reason = refused["failure_reason"].as_str().unwrap();
    assert!(reason.contains("400"), "{reason}");
    assert!(!reason.contains("unknown recipient"), "the receiver's answer stays in the logs: {reason}");

    let (conversation, id) = &messages["broken"];
    let broken = message_when(&api, conversation, id, "broken failed", |m| m["status"] == "failed").await;
    assert_eq!(broken["attempts"], 3, "{broken}");
    assert!(broken["failure_reason"].as_str().unwrap().contains("500"), "{broken}");

    let by_kind: HashMap<String, usize> = receiver.received().iter().fold(HashMap::new(), |mut counts, request| {
        *counts.entry(by_text(request)).or_default() += 1;
        counts
    });
    assert_eq!(by_kind["flaky"], 3);
    assert_eq!(by_kind["refused"], 1);
    assert_eq!(by_kind["broken"], 3);

    // The generic channel's request: signed with the inbox secret, idempotent by event id.
    let request = receiver.received().into_iter().find(|r| by_text(r) == "refused").unwrap();
    assert_eq!(request.path, "/outbound");
    assert_eq!(
        request.headers["x-chatdesk-signature"],
        sign_body(request.raw.as_bytes(), inbox["secret"].as_str().unwrap())
    );
    assert_eq!(request.headers["idempotency-key"], messages["refused"].1);
    assert_eq!(request.body["event_id"], messages["refused"].1);
    assert_eq!(request.body["conversation_id"], messages["refused"].0);
    assert_eq!(request.body["to"], "customer-2");

    // Only the message that kept failing is dead-lettered, with its error.
    let streams = StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap();
    let send = streams.stream("send").unwrap();
    let keys = KeyScheme::new(&env.prefix).unwrap();
    let redis = RedisConnector::new(RedisSettings::new(&env.redis_url)).unwrap().shared().await.unwrap();
    let mut letters = Vec::new();
    for partition in 0..send.partitions {
        let entries: Vec<(String, HashMap<String, String>)> =
            redis.xrange(keys.partition(&send.name, partition).dead_letters, "-", "+", None).await.unwrap();
        letters.extend(entries.into_iter().map(|(_, fields)| chatdesk_core::DeadLetter::decode(fields).unwrap()));
    }
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert!(letter.error.contains("500"), "{letter:?}");
    assert_eq!((letter.family.as_str(), letter.group.as_str(), letter.deliveries), ("send", "sender", 3));
    let request: chatdesk_core::SendRequest = letter.original_envelope().unwrap().record().unwrap();
    assert_eq!(request.text, "broken", "the original send request, ready to re-drive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_conversation_does_not_hold_up_the_others() {
    let env = Env::start().await;
    let receiver = StandIn::start(by_text, |request, _| {
        if by_text(request).starts_with("slow") { ok_generic().after(Duration::from_secs(2)) } else { ok_generic() }
    })
    .await;
    let http = free_addr();
    let _chatdesk = serve_roles(&env, "ingress,writer,sender", http, &[]).await;
    let (tenant, api) = owner(&env, http).await;
    let (_, conversations) = generic_conversations(&env, http, &api, &tenant, &receiver.url(), 2).await;
    for text in ["slow 1", "slow 2", "slow 3"] {
        reply(&api, &conversations[0], text).await;
    }
    receiver.wait_for("the first slow call", |received| !received.is_empty()).await;
    for text in ["fast 1", "fast 2"] {
        reply(&api, &conversations[1], text).await;
    }
    let received = receiver.wait_for("every message", |received| received.len() == 5).await;
    let order: Vec<String> = received.iter().map(by_text).collect();
    let position = |text: &str| order.iter().position(|seen| seen == text).unwrap();
    assert!(position("fast 2") < position("slow 2"), "the other conversation went first: {order:?}");
    assert!(position("slow 1") < position("slow 2") && position("slow 2") < position("slow 3"), "{order:?}");
    assert!(position("fast 1") < position("fast 2"), "{order:?}");
}

/// The most requests in any `window` (arrival times, sorted).
fn busiest(received: &[Received], window: Duration) -> usize {
    let mut times: Vec<_> = received.iter().map(|request| request.at).collect();
    times.sort();
    (0..times.len())
        .map(|start| times[start..].iter().take_while(|at| **at - times[start] < window).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_senders_share_one_account_limit() {
    let env = Env::start().await;
    let receiver = StandIn::start(by_text, |_, _| ok_generic()).await;
    let http = free_addr();
    let limits = [("CHATDESK_SEND_LIMITS", "generic.account=10/1s")];
    let _api_process = serve_roles(&env, "ingress,writer", http, &limits).await;
    let mut senders = Vec::new();
    for node in ["sender-a", "sender-b", "sender-c"] {
        senders.push(serve_roles(&env, "sender", free_addr(), &[limits[0], ("CHATDESK_NODE_ID", node)]).await);
    }
    let (tenant, api) = owner(&env, http).await;
    let (_, conversations) = generic_conversations(&env, http, &api, &tenant, &receiver.url(), 12).await;
    let mut expected = HashSet::new();
    for round in 0..4 {
        for conversation in &conversations {
            expected.insert(reply(&api, conversation, &format!("message {round}")).await);
        }
    }
    receiver.wait_for("all 48 messages", |received| received.len() >= expected.len()).await;
    until_deliveries_finished(&env).await;
    let received = receiver.received();
    let ids: Vec<String> = received.iter().map(|r| r.body["event_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), expected.len(), "each message once");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), expected);
    // Slots are spaced by the limiter's widened window (1.05 s); arrival times also carry the
    // scheduling delay of processes sharing a loaded machine, so arrivals are counted over
    // 950 ms: eleven arrivals that close together would mean the limit was broken.
    let peak = busiest(&received, Duration::from_millis(950));
    println!("peak requests in any 950-ms window: {peak}");
    assert!(peak <= 10, "the stand-in saw {peak} requests within 950 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sender_killed_mid_flight_loses_nothing() {
    let env = Env::start().await;
    let receiver = StandIn::start(by_text, |_, _| ok_generic().after(Duration::from_millis(150))).await;
    let http = free_addr();
    let _api_process = serve_roles(&env, "ingress,writer", http, &[]).await;
    let settings = [("CHATDESK_SEND_TIMEOUT", "1s"), ("CHATDESK_SEND_CONCURRENCY", "4")];
    let start_sender = |node: &'static str| {
        let env = &env;
        async move { serve_roles(env, "sender", free_addr(), &[settings[0], settings[1], ("CHATDESK_NODE_ID", node)]).await }
    };
    let mut doomed = start_sender("sender-a").await;
    let _survivor = start_sender("sender-b").await;
    let (tenant, api) = owner(&env, http).await;
    let (_, conversations) = generic_conversations(&env, http, &api, &tenant, &receiver.url(), 8).await;
    let mut expected = HashSet::new();
    for round in 0..6 {
        for conversation in &conversations {
            expected.insert(reply(&api, conversation, &format!("message {round}")).await);
        }
    }
    receiver.wait_for("some deliveries", |received| received.len() >= 12).await;
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();
    let _restarted = start_sender("sender-a").await;
    let received = receiver
        .wait_for("every message", |received| {
            received.iter().map(|r| r.body["event_id"].as_str().unwrap_or_default()).collect::<HashSet<_>>().len()
                == expected.len()
        })
        .await;
    let distinct: HashSet<String> = received.iter().map(|r| r.body["event_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(distinct, expected, "every message reached the provider");
    let duplicates = received.len() - distinct.len();
    println!("duplicates after killing a sender mid-flight: {duplicates}");
    assert!(duplicates <= 4, "at most the killed sender's in-flight calls are repeated, got {duplicates}");
    // Each conversation's messages still arrived in order (first arrival of each).
    let mut first_seen: Vec<(String, String)> = Vec::new();
    for request in &received {
        let id = request.body["event_id"].as_str().unwrap().to_owned();
        if !first_seen.iter().any(|(seen, _)| *seen == id) {
            first_seen.push((id, format!("{} {}", request.body["conversation_id"], by_text(request))));
        }
    }
    for conversation in &conversations {
        let texts: Vec<&String> =
            first_seen.iter().map(|(_, text)| text).filter(|text| text.contains(conversation.as_str())).collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(texts, sorted, "in order for {conversation}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telegram_and_whatsapp_throttling_answers_pause_and_retry() {
    let env = Env::start().await;
    let provider = StandIn::start(|request| request.path.clone(), |request, earlier| {
        if request.path.ends_with("/sendMessage") {
            return match earlier {
                0 => Answer::json(
                    429,
                    json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1", "parameters": {"retry_after": 1}}),
                ),
                _ => Answer::json(
                    200,
                    json!({"ok": true, "result": {"message_id": 77, "chat": {"id": 1111111, "type": "private"}, "date": 1763800000, "text": request.body["text"]}}),
                ),
            };
        }
        match earlier {
            // Meta's throughput error comes as HTTP 400 with code 130429 and no Retry-After.
            0 => Answer::json(
                400,
                json!({"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429, "error_subcode": 2494055, "fbtrace_id": "AbC"}}),
            ),
            _ => Answer::json(200, json!({"messaging_product": "whatsapp", "messages": [{"id": "wamid.OUT-2"}]})),
        }
    })
    .await;
    let http = free_addr();
    let _chatdesk = serve_roles(
        &env,
        "ingress,writer,sender",
        http,
        &[("CHATDESK_WHATSAPP_API_URL", &provider.url()), ("CHATDESK_TELEGRAM_API_URL", &provider.url())],
    )
    .await;
    let (tenant, api) = owner(&env, http).await;
    let telegram = admin(
        &env,
        &[
            "inbox",
            "create",
            "--tenant",
            &tenant,
            "--kind",
            "telegram",
            "--name",
            "Bot",
            "--bot-token",
            "123456:ABC-DEF",
        ],
    );
    let update = json!({"update_id": 10000, "message": {"message_id": 1365, "date": 1763800000, "text": "Hi bot",
        "chat": {"id": 1111111, "type": "private", "first_name": "Test"}, "from": {"id": 1111111, "is_bot": false, "first_name": "Test"}}})
    .to_string();
    let secret = telegram["secret"].as_str().unwrap();
    let path = telegram["webhook_path"].as_str().unwrap();
    assert_eq!(post(http, path, &[("X-Telegram-Bot-Api-Secret-Token", secret)], &update).await.status, 200);
    let whatsapp = whatsapp_inbox(&env, &tenant);
    whatsapp_notify(
        http,
        &whatsapp,
        json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": WABA_PHONE},
            "contacts": [{"profile": {"name": "Sheena"}, "wa_id": "16505551234"}],
            "messages": [{"from": "16505551234", "id": "wamid.IN-2", "timestamp": "1749416383", "type": "text", "text": {"body": "Hello"}}],
        }),
    )
    .await;

    let telegram_conversation = conversation_of(&api, "1111111").await["id"].as_str().unwrap().to_owned();
    let whatsapp_conversation = conversation_of(&api, "16505551234").await["id"].as_str().unwrap().to_owned();
    let telegram_message = reply(&api, &telegram_conversation, "Hello from the bot").await;
    let whatsapp_message = reply(&api, &whatsapp_conversation, "Hello from WhatsApp").await;

    let sent =
        message_when(&api, &telegram_conversation, &telegram_message, "telegram sent", |m| m["status"] == "sent").await;
    assert_eq!(sent["provider_message_id"], "1111111:77");
    assert_eq!(sent["attempts"], 2);
    let sent =
        message_when(&api, &whatsapp_conversation, &whatsapp_message, "whatsapp sent", |m| m["status"] == "sent").await;
    assert_eq!(sent["provider_message_id"], "wamid.OUT-2");
    assert_eq!(sent["attempts"], 2);

    let received = provider.received();
    for (path, paused) in
        [("/bot123456:ABC-DEF/sendMessage", "retry_after: 1"), (&*format!("/v21.0/{WABA_PHONE}/messages"), "130429")]
    {
        let calls: Vec<&Received> = received.iter().filter(|request| request.path == path).collect();
        assert_eq!(calls.len(), 2, "{path}");
        let waited = calls[1].at - calls[0].at;
        assert!(waited >= Duration::from_millis(950), "{paused} paused the bucket about a second ({waited:?})");
    }
    let telegram_call = received.iter().find(|request| request.path.ends_with("/sendMessage")).unwrap();
    assert_eq!(telegram_call.body, json!({"chat_id": 1111111, "text": "Hello from the bot"}));
}

/// A reply whose first attempt died after claiming its `client_msg_id` (an ingress SIGKILLed
/// between its steps, found by the chaos run) is finished by the client's retry: stored, shown
/// and sent once, under the first attempt's event id, and a further retry sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_finishes_a_reply_whose_first_attempt_died() {
    let env = Env::start().await;
    let receiver = StandIn::start(by_text, |_, _| ok_generic()).await;
    let http = free_addr();
    let _chatdesk = serve_roles(&env, "ingress,writer,sender", http, &[]).await;
    let (tenant, api) = owner(&env, http).await;
    let (_, conversations) = generic_conversations(&env, http, &api, &tenant, &receiver.url(), 1).await;
    let conversation = conversations[0].clone();

    // As the first attempt left it: the id claimed with its event id, nothing appended.
    let first_event = uuid::Uuid::now_v7();
    let redis = RedisConnector::new(RedisSettings::new(&env.redis_url)).unwrap().shared().await.unwrap();
    let key = KeyScheme::new(&env.prefix).unwrap().client_message(
        &chatdesk_core::TenantId(tenant.parse().unwrap()),
        &conversation.parse().unwrap(),
        "retry-1",
    );
    let _: () = redis.set(&key, first_event.to_string(), Some(Expiration::EX(3600)), None, false).await.unwrap();

    let path = format!("/v1/conversations/{conversation}/messages");
    let body = json!({"text": "finished by the retry", "client_msg_id": "retry-1"});
    let answers = futures::future::join_all((0..3).map(|_| api.call("POST", &path, Some(body.clone())))).await;
    for answer in &answers {
        assert_eq!(answer.status, 202, "{}", answer.body);
        assert_eq!(answer.json()["event_id"], first_event.to_string(), "the first attempt's message");
        assert!(answer.json()["offset"].is_string(), "{}", answer.body);
    }
    receiver.wait_for("the reply", |received| !received.is_empty()).await;
    message_when(&api, &conversation, &first_event.to_string(), "the reply sent", |message| {
        message["status"] == "sent"
    })
    .await;
    let again = api.call("POST", &path, Some(body)).await;
    assert_eq!(again.json()["event_id"], first_event.to_string());
    until_deliveries_finished(&env).await;
    let page = api.call("GET", &path, None).await.json();
    let stored =
        page["items"].as_array().unwrap().iter().filter(|item| item["text"] == "finished by the retry").count();
    assert_eq!((receiver.received().len(), stored), (1, 1), "sent once and stored once");
}
