//! The WebSocket gateway as a client meets it: handshake, channels, live events, and resume
//! after a disconnect, a gateway restart, and a trimmed stream.

use std::net::SocketAddr;
use std::time::Duration;

use chatdesk_core::events::{Actor, Event, SenderKind, Typing};
use chatdesk_core::{Envelope, KeyScheme, StreamsConfig, TenantId};
use chatdesk_streams::{RedisConnector, RedisSettings};
use fred::prelude::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, Env, admin, eventually, generic_body, login, post_generic, serve_roles};

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn connect(http: SocketAddr) -> Socket {
    tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")).await.expect("websocket upgrade").0
}

pub(crate) async fn send(socket: &mut Socket, frame: Value) {
    socket.send(Message::Text(frame.to_string().into())).await.unwrap();
}

/// The next protocol frame (JSON), or the close frame as `{"close": code, "reason": …}`.
pub(crate) async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), socket.next()).await.expect("a frame within 15 s");
        match message {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|frame| (u16::from(frame.code), frame.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return json!({ "close": code, "reason": reason });
            }
            Some(Ok(_)) => continue,
            other => return json!({ "close": 1006, "reason": format!("{other:?}") }),
        }
    }
}

pub(crate) async fn hello(http: SocketAddr, token: &str) -> Socket {
    let mut socket = connect(http).await;
    send(&mut socket, json!({"op": "hello", "token": token, "protocol": 1})).await;
    let welcome = next(&mut socket).await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    assert!(welcome["heartbeat_ms"].as_u64().unwrap() > 0);
    socket
}

/// Subscribes and collects the replayed events up to `subscribed`.
pub(crate) async fn subscribe(socket: &mut Socket, frame: Value) -> (Vec<Value>, Value) {
    send(socket, frame).await;
    let mut events = Vec::new();
    loop {
        let frame = next(socket).await;
        match frame["op"].as_str() {
            Some("event") => events.push(frame),
            Some("subscribed") => return (events, frame),
            _ => panic!("unexpected frame while subscribing: {frame}"),
        }
    }
}

async fn post(http: SocketAddr, inbox: &Value, message_id: &str, from: &str, text: &str) {
    let response = post_generic(http, inbox, &generic_body(message_id, from, text)).await;
    assert_eq!(response.status, 200, "{}", response.body);
}

/// The texts of the message events among `events`, in order.
fn texts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|event| event["type"] == "message.created")
        .map(|event| event["data"]["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

pub(crate) async fn next_event(socket: &mut Socket) -> Value {
    let frame = next(socket).await;
    assert_eq!(frame["op"], "event", "{frame}");
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_deliver_live_and_resume_without_gaps_or_duplicates() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@ws.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    env.user(&tenant_id, "marketer@ws.test", "market-pass-1", "marketer");
    let inbox = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "Support"]);
    let other = admin(
        &env,
        &[
            "tenant",
            "create",
            "--name",
            "Globex",
            "--owner-email",
            "owner@globex-ws.test",
            "--password",
            "owner-pass-2",
        ],
    );
    let other_inbox = admin(
        &env,
        &["inbox", "create", "--tenant", other["tenant_id"].as_str().unwrap(), "--kind", "generic", "--name", "Sales"],
    );

    // Ingress and writer in one process, the gateway in another, so the gateway can be
    // restarted while customers keep writing.
    let api_http: SocketAddr = chatdesk_testkit::free_addr();
    let ws_http: SocketAddr = chatdesk_testkit::free_addr();
    let _api = serve_roles(&env, "ingress,writer", api_http, &[]).await;
    let mut gateway = serve_roles(&env, "gateway", ws_http, &[]).await;

    let token = login(api_http, "owner@ws.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http: api_http, token: token.clone() };
    post(api_http, &inbox, "m-0", "cust-1", "first").await;
    let conversation =
        eventually(&api, "/v1/conversations", "the conversation", |page| page["items"].as_array().unwrap().len() == 1)
            .await["items"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let channel = format!("conversation:{conversation}");
    post(api_http, &other_inbox, "x-0", "cust-1", "elsewhere").await;
    let other_owner =
        login(api_http, "owner@globex-ws.test", "owner-pass-2").await.json()["token"].as_str().unwrap().to_owned();
    let other_api = Client { http: api_http, token: other_owner };
    let foreign = eventually(&other_api, "/v1/conversations", "Globex's conversation", |page| {
        page["items"].as_array().unwrap().len() == 1
    })
    .await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Handshake failures close with documented codes.
    let mut early = connect(ws_http).await;
    send(&mut early, json!({"op": "subscribe", "channel": "inbox"})).await;
    assert_eq!(next(&mut early).await["close"], 4001);
    let mut forged = connect(ws_http).await;
    send(&mut forged, json!({"op": "hello", "token": format!("{token}x"), "protocol": 1})).await;
    assert_eq!(next(&mut forged).await["close"], 4003);
    let mut future = connect(ws_http).await;
    send(&mut future, json!({"op": "hello", "token": token, "protocol": 2})).await;
    assert_eq!(next(&mut future).await["close"], 4002);

    // Bad frames get error frames; the socket stays usable.
    let mut socket = hello(ws_http, &token).await;
    send(&mut socket, json!({"op": "teleport"})).await;
    let error = next(&mut socket).await;
    assert_eq!((error["op"].as_str(), error["code"].as_str()), (Some("error"), Some("bad_frame")));
    socket.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(next(&mut socket).await["code"], "bad_frame");
    send(&mut socket, json!({"op": "subscribe", "channel": "everything"})).await;
    assert_eq!(next(&mut socket).await["code"], "unknown_channel");
    send(&mut socket, json!({"op": "subscribe", "channel": format!("conversation:{foreign}")})).await;
    assert_eq!(next(&mut socket).await["code"], "not_found", "another tenant's conversation does not exist");
    send(&mut socket, json!({"op": "ping", "id": 7})).await;
    assert_eq!(next(&mut socket).await, json!({"op": "pong", "id": 7}));
    let marketer =
        login(api_http, "marketer@ws.test", "market-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let mut refused = hello(ws_http, &marketer).await;
    send(&mut refused, json!({"op": "subscribe", "channel": "inbox"})).await;
    assert_eq!(next(&mut refused).await["code"], "forbidden");

    // Live: a subscription sees new events with their offsets; another tenant's never.
    let (replayed, subscribed) = subscribe(&mut socket, json!({"op": "subscribe", "channel": channel})).await;
    assert!(replayed.is_empty());
    assert_eq!(subscribed["recovered"], true);
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    let (_, inbox_subscribed) = subscribe(&mut socket, json!({"op": "subscribe", "channel": "inbox"})).await;
    assert_eq!(inbox_subscribed["channel"], "inbox");
    post(api_http, &other_inbox, "x-1", "cust-1", "not for you").await;
    post(api_http, &inbox, "m-1", "cust-1", "live one").await;
    let mut live = vec![next_event(&mut socket).await, next_event(&mut socket).await];
    live.sort_by_key(|event| event["channel"].as_str().unwrap().to_owned());
    assert_eq!(live[0]["channel"], channel);
    assert_eq!(live[1]["channel"], "inbox");
    for event in &live {
        assert_eq!(event["type"], "message.created");
        assert_eq!(event["data"]["text"], "live one");
    }
    let seen = live[0]["offset"].as_str().unwrap().to_owned();
    socket.close(None).await.unwrap();

    // A disconnect: the gap is replayed, then live continues, nothing twice.
    for index in 1..=3 {
        post(api_http, &inbox, &format!("g-{index}"), "cust-1", &format!("gap {index}")).await;
    }
    let mut socket = hello(ws_http, &token).await;
    let (replayed, subscribed) =
        subscribe(&mut socket, json!({"op": "subscribe", "channel": channel, "since": seen, "epoch": epoch})).await;
    assert_eq!(texts(&replayed), ["gap 1", "gap 2", "gap 3"]);
    assert_eq!((subscribed["recovered"].as_bool(), subscribed["replayed"].as_u64()), (Some(true), Some(3)));
    post(api_http, &inbox, "m-2", "cust-1", "live two").await;
    assert_eq!(next_event(&mut socket).await["data"]["text"], "live two");
    let last_seen = replayed[2]["offset"].as_str().unwrap().to_owned();

    // An agent replies over the socket: acked with the event, which also arrives as an event;
    // the same client_msg_id again is acked with the same event and not sent twice.
    let reply = json!({"op": "send", "conversation": conversation, "text": "from the socket", "client_msg_id": "ws-1"});
    send(&mut socket, reply.clone()).await;
    let (mut ack, mut echoed) = (Value::Null, Value::Null);
    while ack.is_null() || echoed.is_null() {
        let frame = next(&mut socket).await;
        match frame["op"].as_str() {
            Some("ack") => ack = frame,
            Some("event") => echoed = frame,
            _ => panic!("unexpected frame: {frame}"),
        }
    }
    assert_eq!(ack["client_msg_id"], "ws-1");
    assert_eq!(echoed["event_id"], ack["event_id"]);
    assert_eq!(echoed["offset"], ack["offset"]);
    assert_eq!(
        (echoed["data"]["direction"].as_str(), echoed["data"]["text"].as_str()),
        (Some("outbound"), Some("from the socket"))
    );
    send(&mut socket, reply).await;
    let again = next(&mut socket).await;
    assert_eq!((again["op"].as_str(), &again["event_id"]), (Some("ack"), &ack["event_id"]));
    send(&mut socket, json!({"op": "send", "conversation": conversation, "text": " ", "client_msg_id": "ws-2"})).await;
    assert_eq!(next(&mut socket).await["code"], "bad_frame");

    // The gateway restarts while the customer keeps writing.
    let pid = gateway.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-s", "TERM", &pid]).status().unwrap();
    let goodbye = next(&mut socket).await;
    assert_eq!(goodbye["close"], 1012, "{goodbye}");
    let _ = gateway.wait().await;
    post(api_http, &inbox, "r-1", "cust-1", "while restarting").await;
    gateway = serve_roles(&env, "gateway", ws_http, &[]).await;
    let mut socket = hello(ws_http, &token).await;
    let (replayed, _) =
        subscribe(&mut socket, json!({"op": "subscribe", "channel": channel, "since": last_seen, "epoch": epoch}))
            .await;
    assert_eq!(texts(&replayed), ["live two", "from the socket", "while restarting"]);
    let after_restart = replayed[2]["offset"].as_str().unwrap().to_owned();

    // The stream is trimmed: the gap comes from PostgreSQL under the same offsets.
    eventually(&api, &format!("/v1/conversations/{conversation}/messages?limit=200"), "every message stored", |page| {
        page["items"].as_array().unwrap().len() == 8
    })
    .await;
    let redis_client = RedisConnector::new(RedisSettings::new(&env.redis_url)).unwrap().shared().await.unwrap();
    let streams = StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap();
    let events = streams.stream("events").unwrap();
    let partition = chatdesk_core::keys::partition_for_tenant(&TenantId(tenant_id.parse().unwrap()), events.partitions);
    let stream_key = KeyScheme::new(&env.prefix).unwrap().partition(&events.name, partition).stream;
    let _: u64 = redis_client.xtrim(&stream_key, ("MAXLEN", "=", 0)).await.unwrap();
    let mut socket = hello(ws_http, &token).await;
    let (from_postgres, subscribed) =
        subscribe(&mut socket, json!({"op": "subscribe", "channel": channel, "since": seen, "epoch": epoch})).await;
    assert_eq!(texts(&from_postgres), ["gap 1", "gap 2", "gap 3", "live two", "from the socket", "while restarting"]);
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(from_postgres[5]["offset"], after_restart.as_str(), "the same offsets as the stream had");
    assert_eq!(from_postgres[4]["event_id"], ack["event_id"], "the same event ids as the stream had");

    // A cursor of another epoch (a lost stream) cannot be served: reload through REST.
    let mut socket = hello(ws_http, &token).await;
    let (nothing, subscribed) =
        subscribe(&mut socket, json!({"op": "subscribe", "channel": channel, "since": seen, "epoch": "an-old-epoch"}))
            .await;
    assert!(nothing.is_empty());
    assert_eq!(subscribed["recovered"], false);
    let _ = gateway.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_see_their_own_conversation_and_typing_flows_both_ways() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@typing.test", "owner-pass-1");
    let inbox = admin(
        &env,
        &["inbox", "create", "--tenant", tenant["tenant_id"].as_str().unwrap(), "--kind", "web", "--name", "Site"],
    );
    let http: SocketAddr = chatdesk_testkit::free_addr();
    let _server = serve_roles(&env, "ingress,writer,gateway", http, &[]).await;
    let token = login(http, "owner@typing.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let sessions = inbox["webhook_path"].as_str().unwrap();
    let session = chatdesk_testkit::http_request(
        http,
        "POST",
        sessions,
        &[("Content-Type", "application/json")],
        Some(r#"{"email": "vera@example.com", "name": "Vera"}"#),
    )
    .await
    .unwrap()
    .json();
    let conversation = session["conversation_id"].as_str().unwrap().to_owned();
    let channel = format!("conversation:{conversation}");
    let api = Client { http, token: token.clone() };
    let visitor_auth = format!("Bearer {}", session["token"].as_str().unwrap());
    let visitor_headers = [("Content-Type", "application/json"), ("Authorization", visitor_auth.as_str())];
    let messages = sessions.replace("/sessions", "/messages");

    // The session only reserved the conversation: the visitor follows it at once, and its first
    // message makes it, with the name given at the session.
    let mut visitor = hello(http, session["token"].as_str().unwrap()).await;
    subscribe(&mut visitor, json!({"op": "subscribe", "channel": channel})).await;
    let first =
        chatdesk_testkit::http_request(http, "POST", &messages, &visitor_headers, Some(r#"{"text": "first words"}"#))
            .await
            .unwrap();
    assert_eq!((first.status, first.json()["conversation_id"].as_str()), (202, Some(conversation.as_str())));
    let own = next_event(&mut visitor).await;
    assert_eq!((own["type"].as_str(), own["data"]["text"].as_str()), (Some("message.created"), Some("first words")));
    eventually(&api, &format!("/v1/conversations/{conversation}"), "the visitor's conversation", |c| {
        c["id"] == conversation.as_str() && c["contact"]["name"] == "Vera"
    })
    .await;

    let mut agent = hello(http, &token).await;
    subscribe(&mut agent, json!({"op": "subscribe", "channel": channel})).await;

    // Presence: the inbox channel starts with who is online and follows arrivals and departures.
    let owner = tenant["user_id"].as_str().unwrap().to_owned();
    let mut watcher = hello(http, &token).await;
    let (_, inbox_subscribed) = subscribe(&mut watcher, json!({"op": "subscribe", "channel": "inbox"})).await;
    assert_eq!(inbox_subscribed["presence"], json!([owner]));
    let mut colleague = hello(http, &token).await;
    colleague.close(None).await.unwrap();
    let mut presence = Vec::new();
    while presence.len() < 2 {
        let frame = next_event(&mut watcher).await;
        if frame["type"] == "presence" {
            assert_eq!(frame["data"]["user_id"], owner.as_str());
            presence.push(frame["data"]["online"].as_bool().unwrap());
        }
    }
    assert_eq!(presence, [true, true], "still online through the other sockets");

    send(&mut visitor, json!({"op": "subscribe", "channel": "inbox"})).await;
    assert_eq!(next(&mut visitor).await["code"], "forbidden", "a visitor sees only its conversation");
    send(&mut visitor, json!({"op": "send", "conversation": conversation, "text": "hi", "client_msg_id": "v-1"})).await;
    assert_eq!(next(&mut visitor).await["code"], "forbidden", "visitors write over REST");

    send(&mut visitor, json!({"op": "typing", "conversation": conversation, "typing": true})).await;
    let typing = next_event(&mut agent).await;
    assert_eq!((typing["type"].as_str(), typing["channel"].as_str()), (Some("typing"), Some(channel.as_str())));
    assert!(typing["offset"].is_null(), "typing is ephemeral: no offset");
    assert_eq!(
        (typing["data"]["typing"].as_bool(), typing["data"]["who"]["kind"].as_str()),
        (Some(true), Some("customer"))
    );
    send(&mut agent, json!({"op": "typing", "conversation": conversation, "typing": true})).await;
    let mut seen_by_visitor = next_event(&mut visitor).await;
    if seen_by_visitor["data"]["who"]["kind"] == "customer" {
        // Its own typing signal comes back first.
        seen_by_visitor = next_event(&mut visitor).await;
    }
    assert_eq!(seen_by_visitor["data"]["who"]["kind"], "agent");

    // The visitor's message reaches the agent live, with its offset.
    let written = chatdesk_testkit::http_request(
        http,
        "POST",
        &messages,
        &visitor_headers,
        Some(r#"{"text": "hello agent", "client_msg_id": "w-1"}"#),
    )
    .await
    .unwrap();
    assert_eq!(written.status, 202, "{}", written.body);
    let message = loop {
        let frame = next_event(&mut agent).await;
        if frame["type"] == "message.created" {
            break frame;
        }
    };
    assert_eq!(message["data"]["text"], "hello agent");
    assert_eq!(message["offset"], written.json()["offset"]);

    // Reading it resets the unread count, through the stream like every change.
    eventually(&api, &format!("/v1/conversations/{conversation}"), "two unread messages", |c| c["unread_count"] == 2)
        .await;
    send(&mut agent, json!({"op": "read", "conversation": conversation, "offset": message["offset"]})).await;
    let read = next_event(&mut agent).await;
    assert_eq!((read["type"].as_str(), &read["data"]["offset"]), (Some("conversation.read"), &message["offset"]));
    eventually(&api, &format!("/v1/conversations/{conversation}"), "nothing unread", |c| c["unread_count"] == 0).await;
    send(&mut agent, json!({"op": "read", "conversation": conversation, "offset": "yesterday"})).await;
    assert_eq!(next(&mut agent).await["code"], "bad_frame");

    // The visitor sees messages and typing only, without the agents' ids: its own message, then
    // an agent's reply; not the read receipt, the assignment or the status change between them.
    let reply = api
        .call("POST", &format!("/v1/conversations/{conversation}/assign"), Some(json!({"assignee_id": owner})))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    send(
        &mut agent,
        json!({"op": "send", "conversation": conversation, "text": "hello visitor", "client_msg_id": "a-1"}),
    )
    .await;
    let mut types = Vec::new();
    let answer = loop {
        let frame = next_event(&mut visitor).await;
        types.push(frame["type"].as_str().unwrap_or_default().to_owned());
        if frame["type"] == "message.created" && frame["data"]["text"] == "hello agent" {
            assert_eq!(frame["data"]["sender"]["kind"], "customer");
        }
        if frame["type"] == "message.created" && frame["data"]["text"] == "hello visitor" {
            break frame;
        }
    };
    assert!(types.iter().all(|kind| kind == "message.created" || kind == "typing"), "{types:?}");
    assert_eq!(answer["data"]["sender"]["kind"], "agent");
    assert!(answer["data"]["sender"].get("id").is_none(), "no agent id for visitors: {answer}");
}

/// Reads event frames of `channel` until `count` arrived; returns their texts, in order.
async fn read_texts(socket: &mut Socket, count: usize) -> Result<Vec<String>, Value> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let frame = next(socket).await;
        match frame["op"].as_str() {
            Some("event") => seen.push(frame["data"]["text"].as_str().unwrap_or_default().to_owned()),
            _ => return Err(json!({"frame": frame, "seen": seen})),
        }
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_after_a_long_gap_a_killed_gateway_and_a_move_to_another_node() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@resume.test", "owner-pass-1");
    let inbox = admin(
        &env,
        &[
            "inbox",
            "create",
            "--tenant",
            tenant["tenant_id"].as_str().unwrap(),
            "--kind",
            "generic",
            "--name",
            "Support",
        ],
    );
    let api_http: SocketAddr = chatdesk_testkit::free_addr();
    let first_http: SocketAddr = chatdesk_testkit::free_addr();
    let second_http: SocketAddr = chatdesk_testkit::free_addr();
    let _api = serve_roles(&env, "ingress,writer", api_http, &[("CHATDESK_INGRESS_RATE_PER_INBOX", "100000")]).await;
    let mut first = serve_roles(&env, "gateway", first_http, &[("CHATDESK_NODE_ID", "gw-1")]).await;
    let _second = serve_roles(&env, "gateway", second_http, &[("CHATDESK_NODE_ID", "gw-2")]).await;
    let token = login(api_http, "owner@resume.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http: api_http, token: token.clone() };
    post(api_http, &inbox, "m-0", "cust-1", "m-0").await;
    let conversation =
        eventually(&api, "/v1/conversations", "the conversation", |page| page["items"].as_array().unwrap().len() == 1)
            .await["items"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let channel = format!("conversation:{conversation}");

    // No hello within 5 s.
    let mut silent = connect(first_http).await;
    assert_eq!(next(&mut silent).await["close"], 4001);

    // 1,000 messages while the client is away: exactly those, in order, then live.
    let mut socket = hello(first_http, &token).await;
    let (history, subscribed) =
        subscribe(&mut socket, json!({"op": "subscribe", "channel": channel, "since": "0-0"})).await;
    assert_eq!(texts(&history), ["m-0"]);
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    let mut last = history.last().unwrap()["offset"].as_str().unwrap().to_owned();
    socket.close(None).await.unwrap();
    let expected: Vec<String> = (1..=1000).map(|index| format!("m-{index}")).collect();
    for text in &expected {
        post(api_http, &inbox, text, "cust-1", text).await;
    }
    let mut socket = hello(first_http, &token).await;
    let (replayed, subscribed) =
        subscribe(&mut socket, json!({"op": "subscribe", "channel": channel, "since": last, "epoch": epoch})).await;
    assert_eq!(texts(&replayed), expected, "exactly the 1,000 missed messages, in order");
    assert_eq!(subscribed["replayed"], 1000);
    post(api_http, &inbox, "live", "cust-1", "live").await;
    let live = next_event(&mut socket).await;
    assert_eq!(live["data"]["text"], "live", "then live, with nothing repeated at the seam");
    last = live["offset"].as_str().unwrap().to_owned();

    // The gateway is killed while messages flow; it comes back under the same node id.
    let flow: Vec<String> = (0..500).map(|index| format!("f-{index}")).collect();
    let posting = {
        let (flow, inbox) = (flow.clone(), inbox.clone());
        tokio::spawn(async move {
            for text in flow {
                post(api_http, &inbox, &text, "cust-1", &text).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut received: Vec<String> = Vec::new();
    while received.len() < 50 {
        let event = next_event(&mut socket).await;
        received.push(event["data"]["text"].as_str().unwrap().to_owned());
        last = event["offset"].as_str().unwrap().to_owned();
    }
    let pid = first.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-s", "KILL", &pid]).status().unwrap();
    let _ = first.wait().await;
    // Drain what the dead socket delivered before it went.
    loop {
        let frame = next(&mut socket).await;
        if frame["op"] != "event" {
            break;
        }
        received.push(frame["data"]["text"].as_str().unwrap().to_owned());
        last = frame["offset"].as_str().unwrap().to_owned();
    }
    first = serve_roles(&env, "gateway", first_http, &[("CHATDESK_NODE_ID", "gw-1")]).await;
    let mut socket = hello(first_http, &token).await;
    let (replayed, _) =
        subscribe(&mut socket, json!({"op": "subscribe", "channel": channel, "since": last, "epoch": epoch})).await;
    received.extend(texts(&replayed));
    let remaining = flow.len() - received.len();
    received.extend(read_texts(&mut socket, remaining).await.unwrap_or_else(|stuck| panic!("resume stalled: {stuck}")));
    posting.await.unwrap();
    assert_eq!(received, flow, "every message exactly once, in order, across the kill");
    let last_flow = replayed.last().map(|event| event["offset"].as_str().unwrap().to_owned());

    // The client moves to another node and resumes there.
    socket.close(None).await.unwrap();
    // The last stored message is the flow's end only once the writer has stored all of it.
    eventually(&api, &format!("/v1/conversations/{conversation}/messages?limit=1"), "the flow stored", |page| {
        page["items"][0]["text"] == "f-499"
    })
    .await;
    let since = match last_flow {
        Some(offset) if remaining == 0 => offset,
        _ => {
            let history =
                api.call("GET", &format!("/v1/conversations/{conversation}/messages?limit=1"), None).await.json();
            history["items"][0]["offset"].as_str().unwrap().to_owned()
        }
    };
    let mut moved = hello(second_http, &token).await;
    let (nothing, _) =
        subscribe(&mut moved, json!({"op": "subscribe", "channel": channel, "since": since, "epoch": epoch})).await;
    assert!(texts(&nothing).iter().all(|text| text == "f-499") && nothing.len() <= 1);
    for index in 0..10 {
        post(api_http, &inbox, &format!("g-{index}"), "cust-1", &format!("g-{index}")).await;
    }
    let after_move = read_texts(&mut moved, 10).await.unwrap();
    assert_eq!(after_move, (0..10).map(|index| format!("g-{index}")).collect::<Vec<_>>());
    let _ = first.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_is_closed_and_others_keep_up() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@slow.test", "owner-pass-1");
    let tenant_id: uuid::Uuid = tenant["tenant_id"].as_str().unwrap().parse().unwrap();
    let http: SocketAddr = chatdesk_testkit::free_addr();
    // The default queue (1,024 frames) is ten batches of the gateway group: room for a client
    // that reads, none for one that does not, once its socket buffers are full too.
    let _server = serve_roles(&env, "ingress,writer,gateway", http, &[("CHATDESK_WS_QUEUE", "1024")]).await;
    let token = login(http, "owner@slow.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();

    let mut slow = hello(http, &token).await;
    subscribe(&mut slow, json!({"op": "subscribe", "channel": "inbox"})).await;
    let mut fast = hello(http, &token).await;
    subscribe(&mut fast, json!({"op": "subscribe", "channel": "inbox"})).await;

    // Large entries on the stream, more than any socket buffer holds: typing events padded with
    // a field readers ignore, so the writer skips them (typing is never stored) and only the
    // gateway is loaded.
    const EVENTS: usize = 3_000;
    let reader = tokio::spawn(async move {
        let mut offsets = Vec::with_capacity(EVENTS);
        while offsets.len() < EVENTS {
            let frame = next(&mut fast).await;
            assert_eq!(frame["op"], "event", "the fast client was disturbed: {frame}");
            offsets.push(frame["offset"].as_str().unwrap().parse::<chatdesk_core::EntryId>().unwrap());
        }
        offsets
    });
    let redis_client = RedisConnector::new(RedisSettings::new(&env.redis_url)).unwrap().shared().await.unwrap();
    let streams = std::sync::Arc::new(
        StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap(),
    );
    let producer = chatdesk_streams::Producer::new(redis_client, KeyScheme::new(&env.prefix).unwrap(), streams);
    let padding = "x".repeat(16 * 1024);
    for _ in 0..EVENTS {
        let event = Event::Typing(Typing {
            conversation_id: uuid::Uuid::nil(),
            who: Actor { kind: SenderKind::System, id: None },
            typing: true,
        });
        let mut entry = Envelope::of(TenantId(tenant_id), &event);
        let mut payload = event.to_payload();
        payload["padding"] = json!(padding);
        entry.payload = payload.to_string();
        entry.conversation = None;
        producer.append_event(&entry).await.unwrap();
    }
    let offsets =
        tokio::time::timeout(Duration::from_secs(120), reader).await.expect("the fast client keeps up").unwrap();
    assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]), "in order, once each");

    let closed = loop {
        let frame = next(&mut slow).await;
        if frame["op"] != "event" {
            break frame;
        }
    };
    assert_eq!(closed["close"], 4008, "{closed}");
}

/// The gateway groups on each partition of the events stream (`gateway.<node>` names).
async fn gateway_groups(
    redis: &fred::clients::Client,
    keys: &KeyScheme,
    events: &chatdesk_core::StreamSettings,
) -> Vec<(u16, String)> {
    let mut found = Vec::new();
    for partition in 0..events.partitions {
        let key = keys.partition(&events.name, partition).stream;
        let groups: Vec<std::collections::HashMap<String, fred::types::Value>> =
            redis.xinfo_groups(&key).await.unwrap_or_default();
        for group in groups {
            let name = group.get("name").and_then(|name| name.as_string()).unwrap_or_default();
            if name.starts_with("gateway.") {
                found.push((partition, name));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reads_only_its_sockets_partitions_and_sres_get_the_ops_feed() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@ops.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    env.user(&tenant_id, "sre@ops.test", "sre-pass-1", "sre");
    admin(
        &env,
        &["agent", "create", "--tenant", &tenant_id, "--email", "agent@ops.test", "--password", "agent-pass-1"],
    );
    let http: SocketAddr = chatdesk_testkit::free_addr();
    let _server = serve_roles(&env, "ingress,writer,gateway", http, &[]).await;

    let streams = StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap();
    let events_stream = streams.stream("events").unwrap();
    let partitions = events_stream.partitions;
    let keys = KeyScheme::new(&env.prefix).unwrap();
    let redis = RedisConnector::new(RedisSettings::new(&env.redis_url)).unwrap().shared().await.unwrap();
    assert_eq!(gateway_groups(&redis, &keys, events_stream).await, vec![], "no socket yet, nothing read");

    let sre_token = login(http, "sre@ops.test", "sre-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let agent_token = login(http, "agent@ops.test", "agent-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let mut sre = hello(http, &sre_token).await;
    let own = chatdesk_core::keys::partition_for_tenant(&TenantId(tenant_id.parse().unwrap()), partitions);
    assert_eq!(
        gateway_groups(&redis, &keys, events_stream).await,
        vec![(own, "gateway.test-node".to_owned())],
        "a socket makes the node read its tenant's partition, and only that one"
    );

    // The ops feed: a snapshot at once, with every stream and its groups.
    let (_, subscribed) = subscribe(&mut sre, json!({"op": "subscribe", "channel": "ops"})).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let snapshot = next_event(&mut sre).await;
    assert_eq!(snapshot["channel"], "ops");
    assert_eq!(snapshot["type"], "ops.streams");
    assert_eq!(snapshot["offset"], Value::Null, "snapshots are not stored");
    let all = snapshot["data"]["streams"].as_array().unwrap();
    let events = all.iter().find(|stream| stream["stream"] == "events").expect("the events stream");
    assert_eq!(events["partitions"], partitions);
    let groups: Vec<&str> = events["groups"].as_array().unwrap().iter().map(|g| g["group"].as_str().unwrap()).collect();
    assert!(groups.contains(&"writer") && groups.contains(&"gateway.test-node"), "{groups:?}");
    assert!(events["dead_letters"].is_u64(), "{events}");
    // An operator's action reaches the feed as it is recorded.
    let operator = crate::support::Client { http, token: sre_token.clone() };
    let pruned = operator.call("POST", "/v1/ops/groups/prune", Some(json!({"idle": "1h"}))).await;
    assert_eq!(pruned.status, 200, "{}", pruned.body);
    let action = loop {
        let frame = next_event(&mut sre).await;
        if frame["type"] == "ops.audit" {
            break frame;
        }
    };
    assert_eq!(action["data"]["action"], "prune", "{action}");
    assert_eq!(action["data"]["actor"], "sre@ops.test", "{action}");
    // An SRE reads stream health, not conversations.
    send(&mut sre, json!({"op": "subscribe", "channel": "inbox"})).await;
    let refused = next(&mut sre).await;
    assert_eq!((refused["op"].as_str(), refused["code"].as_str()), (Some("error"), Some("forbidden")), "{refused}");
    send(&mut sre, json!({"op": "unsubscribe", "channel": "ops"})).await;
    assert_eq!(next(&mut sre).await["op"], "unsubscribed");

    // An agent may not read the ops feed.
    let mut agent = hello(http, &agent_token).await;
    send(&mut agent, json!({"op": "subscribe", "channel": "ops"})).await;
    let refused = next(&mut agent).await;
    assert_eq!((refused["code"].as_str(), refused["channel"].as_str()), (Some("forbidden"), Some("ops")), "{refused}");
    let metrics = chatdesk_testkit::http_get(http, "/metrics").await.unwrap().1;
    assert!(metrics.contains("chatdesk_gateway_partitions_read 1"), "{metrics}");
}

/// A partition whose last socket left is released after the linger, and the next socket of its
/// tenant is served again at once: the node reads it anew and live events flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_released_partition_is_read_again_for_the_next_socket() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@linger.test", "owner-pass-1");
    let inbox = admin(
        &env,
        &["inbox", "create", "--tenant", tenant["tenant_id"].as_str().unwrap(), "--kind", "generic", "--name", "Hooks"],
    );
    let http: SocketAddr = chatdesk_testkit::free_addr();
    let _server = serve_roles(&env, "ingress,writer,gateway", http, &[("CHATDESK_GATEWAY_LINGER", "1s")]).await;
    let token = login(http, "owner@linger.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let partitions_read = || async move {
        let metrics = chatdesk_testkit::http_get(http, "/metrics").await.unwrap().1;
        metrics.lines().find_map(|line| line.strip_prefix("chatdesk_gateway_partitions_read ")?.parse::<u64>().ok())
    };

    for round in 0..3 {
        let mut socket = hello(http, &token).await;
        assert_eq!(partitions_read().await, Some(1), "round {round}: the tenant's partition is read");
        subscribe(&mut socket, json!({"op": "subscribe", "channel": "inbox"})).await;
        let text = format!("round {round}");
        assert_eq!(post_generic(http, &inbox, &generic_body(&format!("m-{round}"), "cust-1", &text)).await.status, 200);
        let delivered = loop {
            let frame = next_event(&mut socket).await;
            if frame["type"] == "message.created" {
                break frame;
            }
        };
        assert_eq!(delivered["data"]["text"], text.as_str());
        drop(socket);
        chatdesk_testkit::wait_until("the partition released after the linger", Duration::from_secs(30), || async {
            partitions_read().await == Some(0)
        })
        .await;
    }
}

/// A gateway's group is live (`live = true`): read with NOACK, so Redis keeps no pending list
/// for it. An entry its read took but whose reply never arrived (the XREADGROUP answered into a
/// connection a Redis failover cut) is read again: the node sets its group back to the last
/// entry it handled. The socket gets it once, in order, and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_a_gateway_read_but_never_received_is_read_again() {
    // Its own servers: it cuts every reading connection of its Redis.
    let env = Env::private().await;
    let tenant = env.tenant("owner@redeliver.test", "owner-pass-1");
    let tenant_id: TenantId = TenantId(tenant["tenant_id"].as_str().unwrap().parse().unwrap());
    let inbox =
        admin(&env, &["inbox", "create", "--tenant", &tenant_id.to_string(), "--kind", "generic", "--name", "Hooks"]);
    let http: SocketAddr = chatdesk_testkit::free_addr();
    let _server = serve_roles(&env, "ingress,writer,gateway", http, &[]).await;
    let token = login(http, "owner@redeliver.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let mut socket = hello(http, &token).await;
    subscribe(&mut socket, json!({"op": "subscribe", "channel": "inbox"})).await;

    let mut offsets: Vec<(u64, u64)> = Vec::new();
    let mut until_message = async |socket: &mut Socket, text: &str| -> Value {
        loop {
            let frame = next_event(socket).await;
            // Ephemeral events (presence, typing) have no offset.
            let Some(offset) = frame["offset"].as_str().map(str::to_owned) else { continue };
            let (ms, seq) = offset.split_once('-').unwrap();
            offsets.push((ms.parse().unwrap(), seq.parse().unwrap()));
            if frame["type"] == "message.created" && frame["data"]["text"] == text {
                return frame;
            }
        }
    };
    assert_eq!(post_generic(http, &inbox, &generic_body("m-1", "cust-1", "first")).await.status, 200);
    let first = until_message(&mut socket, "first").await;

    let streams = StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap();
    let events = streams.stream("events").unwrap();
    let keys = KeyScheme::new(&env.prefix).unwrap();
    let stream_key =
        keys.partition(&events.name, chatdesk_core::keys::partition_for_tenant(&tenant_id, events.partitions)).stream;
    let redis = RedisConnector::new(RedisSettings::new(&env.redis_url)).unwrap().shared().await.unwrap();
    let pending = || async {
        let summary: fred::types::Value = redis.xpending(&stream_key, "gateway.test-node", ()).await.unwrap();
        summary.into_array().first().and_then(|count| count.as_u64()).unwrap_or(0)
    };
    assert_eq!(pending().await, 0, "a gateway's group keeps no pending list");

    // A message appended and read for the node's consumer in one transaction, so the node's
    // blocked read finds nothing new after it: the read whose reply was lost. Then the node's
    // connection is cut, as a failover cuts it.
    let consumers: Vec<std::collections::HashMap<String, fred::types::Value>> =
        redis.xinfo_consumers(&stream_key, "gateway.test-node").await.unwrap();
    let consumer = consumers[0]["name"].as_string().unwrap();
    let id = |field: &str| first["data"][field].as_str().unwrap().parse::<uuid::Uuid>().unwrap();
    let contact = id("contact_id");
    let event = Event::MessageCreated(chatdesk_core::events::MessageCreated {
        conversation_id: id("conversation_id"),
        inbox_id: id("inbox_id"),
        contact_id: contact,
        direction: chatdesk_core::events::Direction::Inbound,
        sender: Actor { kind: SenderKind::Customer, id: Some(contact) },
        text: "lost on the way".to_owned(),
        extra: None,
        provider_message_id: Some("m-lost".to_owned()),
        client_msg_id: None,
        sent_at_ms: None,
    });
    let fields: Vec<(String, String)> =
        Envelope::of(tenant_id, &event).encode().into_iter().map(|(field, value)| (field.to_owned(), value)).collect();
    let transaction = redis.multi();
    let _: () = transaction.xadd(&stream_key, false, None, "*", fields).await.unwrap();
    let _: () = transaction
        .custom(
            fred::cmd!("XREADGROUP"),
            vec!["GROUP", "gateway.test-node", consumer.as_str(), "COUNT", "10", "NOACK", "STREAMS", &stream_key, ">"],
        )
        .await
        .unwrap();
    let _: fred::types::Value = transaction.exec(true).await.unwrap();
    let list: String = redis.custom(fred::cmd!("CLIENT"), vec!["LIST"]).await.unwrap();
    for line in list.lines().filter(|line| line.contains("cmd=xreadgroup")) {
        let id = line.split(' ').find_map(|field| field.strip_prefix("id=")).unwrap();
        // Gone already is as good.
        let _: Result<fred::types::Value, _> = redis.custom(fred::cmd!("CLIENT"), vec!["KILL", "ID", id]).await;
    }
    until_message(&mut socket, "lost on the way").await;

    // Once, in order, and live events keep flowing.
    assert_eq!(post_generic(http, &inbox, &generic_body("m-2", "cust-1", "second")).await.status, 200);
    until_message(&mut socket, "second").await;
    assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]), "each event once, in order: {offsets:?}");
    assert_eq!(pending().await, 0);
    assert_eq!(crate::support::dead_letters(&env, "events").await, 0, "nothing dead-lettered");
    let group: Vec<std::collections::HashMap<String, fred::types::Value>> =
        redis.xinfo_consumers(&stream_key, "gateway.test-node").await.unwrap();
    assert!(group.iter().all(|consumer| consumer["pending"].as_u64() == Some(0)), "{group:?}");
}
