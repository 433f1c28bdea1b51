//! Attacks a hostile tenant, visitor or stranger would try, each with the safe outcome asserted
//! (see docs/security.md).

use std::collections::HashMap;

use serde_json::json;

use crate::support::{Client, Env, admin, conversation_of, login, post, post_generic, serve};

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Login is no memory or CPU sink for strangers, and guessing meets a wall.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_bounds_hashing_limits_guessing_and_caps_passwords() {
    let env = Env::start().await;
    env.tenant("owner@login.test", "owner-pass-1");
    env.tenant("second@login.test", "owner-pass-1");
    let (http, server) = serve(&env, &[]).await;
    let pid = server.id().unwrap();

    // Guessing one account: refused with 429 after ten failures, before any hashing.
    let mut refused_at = None;
    for guess in 0..15 {
        let answer = login(http, "owner@login.test", &format!("guess-{guess}")).await;
        if answer.status == 429 {
            assert!(answer.header("retry-after").is_some());
            refused_at = Some(guess);
            break;
        }
        assert_eq!(answer.status, 401, "{}", answer.body);
    }
    assert_eq!(refused_at, Some(10), "the eleventh guess is refused");
    let locked = login(http, "owner@login.test", "owner-pass-1").await;
    assert_eq!(locked.status, 429, "the window holds even for the right password");
    // A refused attempt takes no place and gives none back: the counter stays at the limit
    // however many are refused (so nothing can be handed to the next window).
    for guess in 0..20 {
        assert_eq!(login(http, "owner@login.test", &format!("more-{guess}")).await.status, 429);
    }
    {
        use fred::prelude::*;
        let redis = chatdesk_streams::RedisConnector::new(chatdesk_streams::RedisSettings::new(&env.redis_url))
            .unwrap()
            .shared()
            .await
            .unwrap();
        let pattern = format!("{}:login-failures:account:owner@login.test:*", env.prefix);
        let (mut cursor, mut total) = ("0".to_owned(), 0);
        loop {
            let (next, keys): (String, Vec<String>) =
                redis.scan_page(cursor.clone(), pattern.clone(), Some(1000), None).await.unwrap();
            for key in keys {
                let count: i64 = redis.get(&key).await.unwrap();
                total += count;
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        assert_eq!(total, 10, "the account's counter holds exactly its limit");
        let _ = redis.quit().await;
    }

    // A concurrent burst against another account gets no more checks than the limit: each
    // attempt holds its place before its password is checked.
    let burst: Vec<_> = (0..40)
        .map(|guess| tokio::spawn(async move { login(http, "second@login.test", &format!("guess-{guess}")).await }))
        .collect();
    let mut checked = 0;
    for attempt in burst {
        let answer = attempt.await.unwrap();
        assert!([401, 429, 503].contains(&answer.status), "{}", answer.body);
        checked += usize::from(answer.status == 401);
    }
    assert!(checked <= 10, "{checked} passwords checked in a burst against one account");
    let locked = login(http, "second@login.test", "owner-pass-1").await;
    assert!(checked < 10 || locked.status == 429, "a used-up account stays closed: {}", locked.status);
    let mut address_failures = 10 + checked;

    // 150 concurrent wrong logins for unknown accounts (each a different account): answered
    // 401, 503 with Retry-After while hashing is at capacity, or 429 once this address has
    // failed fifty times; memory stays bounded either way.
    let before = rss_kib(pid);
    let attempts: Vec<_> = (0..150)
        .map(|index| {
            let email = format!("nobody-{index}@login.test");
            tokio::spawn(async move { login(http, &email, "wrong-password").await })
        })
        .collect();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for attempt in attempts {
        let answer = attempt.await.unwrap();
        if answer.status == 503 {
            assert!(answer.header("retry-after").is_some(), "503 says when to retry");
        }
        *statuses.entry(answer.status).or_default() += 1;
    }
    let grown = rss_kib(pid).saturating_sub(before);
    println!("150 concurrent logins: {statuses:?}, resident memory grew {grown} KiB");
    assert!(statuses.keys().all(|status| [401, 429, 503].contains(status)), "{statuses:?}");
    address_failures += statuses.get(&401).copied().unwrap_or(0);
    assert!(address_failures <= 50, "{address_failures} failures counted from one address");
    assert!(grown < 200 * 1024, "hashing is bounded: resident memory grew {grown} KiB");

    // An oversized password is refused before it is hashed.
    let huge = "x".repeat(1025);
    let answer = login(http, "someone@login.test", &huge).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(answer.json()["error"]["details"], json!({"field": "password"}));
}

/// Every door a NUL (U+0000) can come in by: the message is acknowledged and then stored, with the
/// NUL removed; no event is dead-lettered and no conversation black-holed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nul_is_never_acknowledged_and_then_lost() {
    use chatdesk_api::ingress::signature::sign;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let env = Env::start().await;
    let tenant = env.tenant("owner@nul.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let inbox = |kind: &str| admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", kind, "--name", kind]);
    let (generic, whatsapp, telegram, web) = (inbox("generic"), inbox("whatsapp"), inbox("telegram"), inbox("web"));
    let (http, _server) = serve(&env, &[]).await;
    let token = login(http, "owner@nul.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http, token: token.clone() };
    let path = |inbox: &serde_json::Value| inbox["webhook_path"].as_str().unwrap().to_owned();

    // Generic: in the text, the sender's id and name, and an extra field's key and value.
    let body = json!({"message_id": "n\u{0}-1", "from": {"id": "cust\u{0}-1", "name": "A\u{0}na"},
        "text": "hel\u{0}lo", "meta\u{0}": {"note": "x\u{0}y"}})
    .to_string();
    assert_eq!(post_generic(http, &generic, &body).await.status, 200);
    // WhatsApp: in the profile name and the text.
    let notification = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "Shee\u{0}na"}, "wa_id": "16505551234"}],
        "messages": [{"from": "16505551234", "id": "wamid.N1", "timestamp": "1749416383", "type": "text", "text": {"body": "col\u{0}or?"}}]
    }}]}]})
    .to_string();
    let signature = sign(notification.as_bytes(), whatsapp["secret"].as_str().unwrap());
    assert_eq!(post(http, &path(&whatsapp), &[("X-Hub-Signature-256", &signature)], &notification).await.status, 200);
    // A status for an id no message of ours can have is answered, not a server error.
    let receipt = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "statuses": [{"id": "wamid.\u{0}x", "status": "delivered", "timestamp": "1749416383", "recipient_id": "16505551234"}]
    }}]}]})
    .to_string();
    let signature = sign(receipt.as_bytes(), whatsapp["secret"].as_str().unwrap());
    let answered = post(http, &path(&whatsapp), &[("X-Hub-Signature-256", &signature)], &receipt).await;
    assert_eq!(answered.status, 200, "{}", answered.body);
    // A login with a NUL in the e-mail is refused by name.
    let refused =
        post(http, "/v1/auth/login", &[], &json!({"email": "owner@nul.test\u{0}", "password": "x"}).to_string()).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    // Telegram: in the first name and the text.
    let update = json!({"update_id": 1, "message": {"date": 1441645532, "message_id": 7,
        "chat": {"id": 222, "type": "private", "first_name": "Te\u{0}st"},
        "from": {"id": 222, "is_bot": false, "first_name": "Te\u{0}st"}, "text": "/sta\u{0}rt"}})
    .to_string();
    let secret = telegram["secret"].as_str().unwrap();
    assert_eq!(post(http, &path(&telegram), &[("X-Telegram-Bot-Api-Secret-Token", secret)], &update).await.status, 200);
    // The widget: in the name and the text.
    let session = post(http, &path(&web), &[], &json!({"email": "v@nul.test", "name": "Ve\u{0}ra"}).to_string()).await;
    assert_eq!(session.status, 201, "{}", session.body);
    let visitor = format!("Bearer {}", session.json()["token"].as_str().unwrap());
    let written = post(
        http,
        &path(&web).replace("/sessions", "/messages"),
        &[("Authorization", &visitor)],
        &json!({"text": "wid\u{0}get"}).to_string(),
    )
    .await;
    assert_eq!(written.status, 202, "{}", written.body);

    // REST and the WebSocket: an agent's reply with a NUL.
    let conversation = conversation_of(&api, "cust-1").await;
    let conversation_id = conversation["id"].as_str().unwrap().to_owned();
    assert_eq!(conversation["contact"]["name"], "Ana");
    let reply = api
        .call("POST", &format!("/v1/conversations/{conversation_id}/messages"), Some(json!({"text": "re\u{0}st"})))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")).await.unwrap();
    socket.send(Message::Text(json!({"op": "hello", "token": token, "protocol": 1}).to_string().into())).await.unwrap();
    let frame = json!({"op": "send", "conversation": conversation_id, "text": "sock\u{0}et", "client_msg_id": "nul-1"});
    socket.send(Message::Text(frame.to_string().into())).await.unwrap();
    loop {
        let Some(Ok(Message::Text(text))) = socket.next().await else { panic!("the socket closed") };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        if frame["op"] == "ack" {
            break;
        }
        assert_ne!(frame["op"], "error", "{frame}");
    }

    // Everything acknowledged is stored, without the NUL; nothing was dead-lettered.
    let messages = format!("/v1/conversations/{conversation_id}/messages");
    let page = crate::support::eventually(&api, &messages, "the generic conversation's three messages", |page| {
        page["items"].as_array().unwrap().len() == 3
    })
    .await;
    let mut texts: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|item| item["text"].as_str().unwrap()).collect();
    texts.sort();
    assert_eq!(texts, ["hello", "rest", "socket"]);
    for external_id in ["16505551234", "222"] {
        let conversation = conversation_of(&api, external_id).await;
        let name = conversation["contact"]["name"].as_str().unwrap_or_default().to_owned();
        assert!(!name.contains('\u{0}'), "{name:?}");
        let path = format!("/v1/conversations/{}/messages", conversation["id"].as_str().unwrap());
        crate::support::eventually(&api, &path, "the channel's message stored", |page| {
            page["items"][0]["text"].as_str().is_some_and(|text| !text.contains('\u{0}'))
        })
        .await;
    }
    let dead_letters = crate::support::dead_letters(&env, "events").await;
    assert_eq!(dead_letters, 0, "no event was refused by the writer");
}

/// A tenant admin cannot make the shared sender call the deployment's own services, follow a
/// redirect there, or read a receiver's answer back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_outbound_url_cannot_reach_internal_services() {
    use crate::standin::{Answer, StandIn};

    let env = Env::start().await;
    let tenant = env.tenant("owner@ssrf.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let redis_port = env.redis_url.rsplit(':').next().unwrap().trim_end_matches('/').to_owned();
    let receiver = StandIn::start(
        |request| request.body["text"].as_str().unwrap_or_default().to_owned(),
        move |request, _| match request.body["text"].as_str().unwrap_or_default() {
            "redirect me" => Answer::json(302, json!({})).with_header("Location", "http://127.0.0.1:1/"),
            _ => Answer::json(400, json!({"error": "internal secret 4242"})),
        },
    )
    .await;
    // Only the stand-in receiver is allowed, by host and port: not the rest of loopback.
    let allowed = receiver.url().trim_start_matches("http://").to_owned();
    let http: std::net::SocketAddr = chatdesk_testkit::free_addr();
    let _server =
        crate::support::serve_roles(&env, "ingress,writer,sender", http, &[("CHATDESK_OUTBOUND_ALLOW", &allowed)])
            .await;
    let token = login(http, "owner@ssrf.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http, token };

    // At PATCH time: internal addresses, spelled any way, are refused with the reason.
    let inbox = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "Out"]);
    let path = format!("/v1/inboxes/{}", inbox["inbox_id"].as_str().unwrap());
    for internal in [
        format!("http://127.0.0.1:{redis_port}/"),
        format!("http://localhost:{redis_port}/"),
        "http://[::ffff:127.0.0.1]:5432/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
    ] {
        let refused = api.call("PATCH", &path, Some(json!({"outbound_url": internal}))).await;
        assert_eq!(refused.status, 422, "{internal}: {}", refused.body);
        assert!(refused.body.contains("not a public one"), "{}", refused.body);
    }

    // At send time (an inbox set up before the check, by the operator's CLI): the call is not
    // made, and the message fails with a fixed reason.
    let internal = admin(
        &env,
        &[
            "inbox",
            "create",
            "--tenant",
            &tenant_id,
            "--kind",
            "generic",
            "--name",
            "Internal",
            "--outbound-url",
            &format!("http://localhost:{redis_port}/"),
        ],
    );
    let allowed_inbox = admin(
        &env,
        &[
            "inbox",
            "create",
            "--tenant",
            &tenant_id,
            "--kind",
            "generic",
            "--name",
            "Receiver",
            "--outbound-url",
            &receiver.url(),
        ],
    );
    let mut outcomes = Vec::new();
    for (inbox, from, text) in [
        (&internal, "cust-internal", "to redis"),
        (&allowed_inbox, "cust-a", "redirect me"),
        (&allowed_inbox, "cust-b", "read back"),
    ] {
        assert_eq!(
            post_generic(http, inbox, &crate::support::generic_body(&format!("in-{from}"), from, "hi")).await.status,
            200
        );
        let conversation = conversation_of(&api, from).await["id"].as_str().unwrap().to_owned();
        let sent =
            api.call("POST", &format!("/v1/conversations/{conversation}/messages"), Some(json!({"text": text}))).await;
        assert_eq!(sent.status, 202, "{}", sent.body);
        let page = crate::support::eventually(
            &api,
            &format!("/v1/conversations/{conversation}/messages"),
            "the reply failed",
            |page| page["items"][0]["status"] == "failed",
        )
        .await;
        outcomes.push(page["items"][0]["failure_reason"].as_str().unwrap().to_owned());
    }
    assert!(outcomes[0].contains("not a public one"), "{outcomes:?}");
    assert!(outcomes[1].contains("302") && outcomes[1].contains("not followed"), "{outcomes:?}");
    assert!(outcomes[2].contains("400") && !outcomes[2].contains("4242"), "no read-back: {outcomes:?}");
    let calls: Vec<String> = receiver
        .received()
        .iter()
        .map(|request| request.body["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(calls, ["redirect me", "read back"], "only the allowed receiver was called, once each");
}

/// Smaller holes: bounded metric labels, inbound text and timestamps, `client_msg_id` per
/// conversation, one spelling per WebSocket channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_holes_stay_closed() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let env = Env::start().await;
    let tenant = env.tenant("owner@small.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let generic = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "Hooks"]);
    let (http, _server) = serve(&env, &[("CHATDESK_INGRESS_RATE_PER_INBOX", "1000")]).await;
    let token = login(http, "owner@small.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http, token: token.clone() };

    // Any token is a valid HTTP method; the metrics keep a fixed set of method labels.
    for index in 0..40 {
        let _ = chatdesk_testkit::http_request(http, &format!("PROBE{index}"), "/healthz", &[], None).await;
    }
    let metrics = chatdesk_testkit::http_get(http, "/metrics").await.unwrap().1;
    assert!(!metrics.contains("PROBE"), "method names never become labels");
    assert!(metrics.contains(r#"method="other""#));

    // The agent app, which keeps its token in the browser, runs only its own scripts and is
    // never framed.
    let app = chatdesk_testkit::http_request(http, "GET", "/", &[], None).await.unwrap();
    let policy = app.header("content-security-policy").unwrap_or_default().to_owned();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(app.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(app.header("x-frame-options"), Some("DENY"));

    // Inbound text is bounded like REST's, and an absurd timestamp is no crash.
    let long = json!({"message_id": "long", "from": {"id": "cust-1"}, "text": "x".repeat(4097)}).to_string();
    let refused = post_generic(http, &generic, &long).await;
    assert_eq!((refused.status, refused.json()["error"]["details"]["field"].as_str()), (422, Some("text")));
    let far = json!({"message_id": "far", "from": {"id": "cust-1"}, "text": "hi", "timestamp": i64::MAX}).to_string();
    assert_eq!(post_generic(http, &generic, &far).await.status, 200);
    let other = crate::support::generic_body("second", "cust-2", "hello");
    assert_eq!(post_generic(http, &generic, &other).await.status, 200);

    // The same client_msg_id in two conversations is two messages; in one, one.
    let first = conversation_of(&api, "cust-1").await["id"].as_str().unwrap().to_owned();
    let second = conversation_of(&api, "cust-2").await["id"].as_str().unwrap().to_owned();
    let send = |conversation: String| {
        let api = &api;
        async move {
            let body = json!({"text": "same id", "client_msg_id": "c-1"});
            let answer = api.call("POST", &format!("/v1/conversations/{conversation}/messages"), Some(body)).await;
            assert_eq!(answer.status, 202, "{}", answer.body);
            answer.json()["event_id"].as_str().unwrap().to_owned()
        }
    };
    let in_first = send(first.clone()).await;
    let in_second = send(second.clone()).await;
    assert_ne!(in_first, in_second, "another conversation, another message");
    assert_eq!(send(first.clone()).await, in_first, "a retry in the same conversation is the first message");

    // One channel, whatever spelling of its id: frames name it canonically, one unsubscribe ends it.
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")).await.unwrap();
    let mut frames = Vec::new();
    let mut exchange = async |frame: serde_json::Value| {
        socket.send(Message::Text(frame.to_string().into())).await.unwrap();
        loop {
            let Some(Ok(Message::Text(text))) = socket.next().await else { panic!("the socket closed") };
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
            if answer["op"] != "event" {
                return answer;
            }
        }
    };
    assert_eq!(exchange(json!({"op": "hello", "token": token, "protocol": 1})).await["op"], "welcome");
    for spelling in [first.to_uppercase(), format!("{{{first}}}"), first.replace('-', "")] {
        frames.push(exchange(json!({"op": "subscribe", "channel": format!("conversation:{spelling}")})).await);
    }
    let canonical = format!("conversation:{first}");
    assert!(
        frames.iter().all(|frame| frame["op"] == "subscribed" && frame["channel"] == canonical.as_str()),
        "{frames:?}"
    );
    let gone =
        exchange(json!({"op": "unsubscribe", "channel": format!("conversation:{}", first.to_uppercase())})).await;
    assert_eq!((gone["op"].as_str(), gone["channel"].as_str()), (Some("unsubscribed"), Some(canonical.as_str())));
    let again = exchange(json!({"op": "unsubscribe", "channel": canonical})).await;
    assert_eq!(again["code"], "unknown_channel", "one subscription, ended once: {again}");

    // A resume from the very beginning replays the conversation from its own first event, and
    // only its events, read through its own index: the other conversation's 150 messages are
    // never read, from PostgreSQL or from the stream.
    for index in 0..150 {
        let body = crate::support::generic_body(&format!("busy-{index}"), "cust-2", "busy");
        assert_eq!(post_generic(http, &generic, &body).await.status, 200);
    }
    crate::support::until_group_caught_up(&env, "events", "writer").await;
    let read = async |source: &str| {
        crate::support::metric(http, &format!("chatdesk_gateway_replay_read_total{{source=\"{source}\"}}")).await
    };
    let (stream_before, stored_before) = (read("stream").await, read("postgres").await);
    socket
        .send(Message::Text(json!({"op": "subscribe", "channel": canonical, "since": "0-0"}).to_string().into()))
        .await
        .unwrap();
    let mut replayed = Vec::new();
    let subscribed = loop {
        let Some(Ok(Message::Text(text))) = socket.next().await else { panic!("the socket closed") };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        if frame["op"] == "subscribed" {
            break frame;
        }
        if frame["op"] == "event" {
            replayed.push(frame);
        }
    };
    assert_eq!(subscribed["replayed"], replayed.len());
    assert_eq!(replayed.first().map(|frame| frame["type"].clone()), Some(json!("conversation.created")));
    assert!(replayed.iter().all(|frame| frame["data"]["conversation_id"] == first.as_str()), "{replayed:?}");
    let (stream_read, stored_read) = (read("stream").await - stream_before, read("postgres").await - stored_before);
    assert_eq!(stored_read as usize, replayed.len(), "only the conversation's own events are read");
    assert!(stream_read < 10.0, "{stream_read} stream entries read for a conversation the writer has stored");
}

/// The WebSocket answers protocol abuse with the documented codes, and an agent cannot reach
/// into another tenant's conversation, even with an ephemeral signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_abuse_gets_the_documented_answers() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let env = Env::start().await;
    env.tenant("owner@ws-a.test", "owner-pass-1");
    let other = env.tenant("owner@ws-b.test", "owner-pass-1");
    let other_inbox = admin(
        &env,
        &["inbox", "create", "--tenant", other["tenant_id"].as_str().unwrap(), "--kind", "generic", "--name", "B"],
    );
    let (http, _server) = serve(&env, &[]).await;
    assert_eq!(
        post_generic(http, &other_inbox, &crate::support::generic_body("b-1", "cust-b", "hi")).await.status,
        200
    );
    let other_api = Client {
        http,
        token: login(http, "owner@ws-b.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned(),
    };
    let theirs = conversation_of(&other_api, "cust-b").await["id"].as_str().unwrap().to_owned();
    let token = login(http, "owner@ws-a.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();

    type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
    let open = || async {
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")).await.unwrap();
        socket
            .send(Message::Text(json!({"op": "hello", "token": token, "protocol": 1}).to_string().into()))
            .await
            .unwrap();
        socket
    };
    // The next frame that is not an event, or the close code.
    async fn answer(socket: &mut Socket) -> serde_json::Value {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if frame["op"] != "event" && frame["op"] != "welcome" {
                        return frame;
                    }
                }
                Some(Ok(Message::Close(Some(close)))) => return json!({"close": u16::from(close.code)}),
                Some(Ok(_)) => {}
                other => return json!({"ended": format!("{other:?}")}),
            }
        }
    }

    let mut socket = open().await;
    socket
        .send(Message::Text(json!({"op": "typing", "conversation": theirs, "typing": true}).to_string().into()))
        .await
        .unwrap();
    assert_eq!(answer(&mut socket).await["code"], "not_found", "another tenant's conversation does not exist here");
    let since = json!({"op": "subscribe", "channel": "inbox", "since": "18446744073709551615-18446744073709551615"});
    socket.send(Message::Text(since.to_string().into())).await.unwrap();
    assert_eq!(answer(&mut socket).await["code"], "bad_frame", "a cursor from the future is not a Redis outage");

    socket.send(Message::Text("x".repeat(70 * 1024).into())).await.unwrap();
    assert_eq!(answer(&mut socket).await["close"], 1009, "an oversized frame is closed with 1009");

    let mut socket = open().await;
    socket.send(Message::Frame(Frame::message(vec![0xc3, 0x28], OpCode::Data(Data::Text), true))).await.unwrap();
    assert_eq!(answer(&mut socket).await["close"], 1007, "a text frame that is not UTF-8 is closed with 1007");
}

/// Widget sessions are limited per client address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_sessions_are_limited_per_address() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@bulk.test", "owner-pass-1");
    let web = admin(
        &env,
        &["inbox", "create", "--tenant", tenant["tenant_id"].as_str().unwrap(), "--kind", "web", "--name", "Site"],
    );
    let (http, _server) = serve(&env, &[]).await;
    let path = web["webhook_path"].as_str().unwrap();
    let mut statuses = Vec::new();
    for index in 0..40 {
        let body = json!({"email": format!("bulk-{index}@bulk.test")}).to_string();
        // A forged X-Forwarded-For changes nothing when no proxy is trusted.
        let forged = format!("203.0.113.{index}");
        statuses.push(post(http, path, &[("X-Forwarded-For", &forged)], &body).await.status);
    }
    let created = statuses.iter().filter(|status| **status == 201).count();
    assert!(created <= 30, "at most 30 sessions a minute from one address: {statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
}

/// Behind a trusted reverse proxy, per-address limits count the client it names, not the proxy;
/// what a client writes to the left of the proxy's own entry proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@proxy.test", "owner-pass-1");
    let web = admin(
        &env,
        &["inbox", "create", "--tenant", tenant["tenant_id"].as_str().unwrap(), "--kind", "web", "--name", "Site"],
    );
    let (http, _server) = serve(&env, &[("CHATDESK_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let path = web["webhook_path"].as_str().unwrap();
    // Forty clients behind the proxy: none shares another's budget.
    for index in 0..40 {
        let body = json!({"email": format!("client-{index}@proxy.test")}).to_string();
        let client = format!("198.51.100.{index}");
        let answer = post(http, path, &[("X-Forwarded-For", &client)], &body).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    // One client that writes its own X-Forwarded-For in front of the proxy's entry is counted
    // by the address the proxy saw.
    let mut statuses = Vec::new();
    for index in 0..40 {
        let body = json!({"email": format!("liar-{index}@proxy.test")}).to_string();
        let chain = format!("192.0.2.{index}, 198.51.100.200");
        statuses.push(post(http, path, &[("X-Forwarded-For", &chain)], &body).await.status);
    }
    let created = statuses.iter().filter(|status| **status == 201).count();
    assert!(created <= 30, "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
}

/// One widget visitor writing in a loop meets its own limit, and other visitors of the inbox
/// still write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_widget_visitor_cannot_take_the_inbox() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@chatty.test", "owner-pass-1");
    let web = admin(
        &env,
        &["inbox", "create", "--tenant", tenant["tenant_id"].as_str().unwrap(), "--kind", "web", "--name", "Site"],
    );
    let (http, _server) = serve(&env, &[]).await;
    let sessions = web["webhook_path"].as_str().unwrap();
    let messages = sessions.replace("/sessions", "/messages");
    let visitor = |email: &'static str| {
        let sessions = sessions.to_owned();
        async move {
            let session = post(http, &sessions, &[], &json!({"email": email}).to_string()).await;
            assert_eq!(session.status, 201, "{}", session.body);
            format!("Bearer {}", session.json()["token"].as_str().unwrap())
        }
    };
    let (spammer, neighbour) = (visitor("spam@chatty.test").await, visitor("real@chatty.test").await);
    let minute = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 60;
    let started = minute();
    let mut statuses = Vec::new();
    for index in 0..40 {
        let body = json!({"text": format!("buy now {index}")}).to_string();
        let answer = post(http, &messages, &[("Authorization", &spammer)], &body).await;
        if answer.status == 429 {
            assert!(answer.header("retry-after").is_some());
        }
        statuses.push(answer.status);
    }
    let accepted = statuses.iter().filter(|status| **status == 202).count();
    if minute() == started {
        assert_eq!(accepted, 30, "30 messages a minute from one visitor: {statuses:?}");
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let body = json!({"text": "hello, is anyone there?"}).to_string();
    let theirs = post(http, &messages, &[("Authorization", &neighbour)], &body).await;
    assert_eq!(theirs.status, 202, "{}", theirs.body);
}

/// A Telegram bot token is part of the API's URL: no failure reason, dead letter or frame may
/// carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bot_token_never_appears_in_a_failure() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@token.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let bot_token = "123456:SECRET-bot-token-never-shown";
    let telegram = admin(
        &env,
        &["inbox", "create", "--tenant", &tenant_id, "--kind", "telegram", "--name", "Bot", "--bot-token", bot_token],
    );
    // Nothing listens there: every call fails to connect.
    let nowhere = format!("http://127.0.0.1:{}", chatdesk_testkit::free_port());
    let http: std::net::SocketAddr = chatdesk_testkit::free_addr();
    let settings = [
        ("CHATDESK_TELEGRAM_API_URL", nowhere.as_str()),
        ("CHATDESK_SEND_MAX_ATTEMPTS", "2"),
        ("CHATDESK_SEND_BACKOFF", "100ms"),
    ];
    let _server = crate::support::serve_roles(&env, "ingress,writer,sender", http, &settings).await;
    let token = login(http, "owner@token.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http, token };
    let update = json!({"update_id": 1, "message": {"date": 1441645532, "message_id": 7,
        "chat": {"id": 333, "type": "private", "first_name": "T"}, "from": {"id": 333, "is_bot": false, "first_name": "T"},
        "text": "hi"}})
    .to_string();
    let secret = telegram["secret"].as_str().unwrap();
    let path = telegram["webhook_path"].as_str().unwrap();
    assert_eq!(post(http, path, &[("X-Telegram-Bot-Api-Secret-Token", secret)], &update).await.status, 200);
    let conversation = conversation_of(&api, "333").await["id"].as_str().unwrap().to_owned();
    let sent =
        api.call("POST", &format!("/v1/conversations/{conversation}/messages"), Some(json!({"text": "hello"}))).await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let page = crate::support::eventually(
        &api,
        &format!("/v1/conversations/{conversation}/messages"),
        "the reply failed",
        |page| page["items"][0]["status"] == "failed",
    )
    .await;
    let reason = page["items"][0]["failure_reason"].as_str().unwrap();
    assert!(!reason.contains("SECRET") && !reason.contains(&nowhere), "{reason}");
    assert_eq!(crate::support::dead_letters(&env, "send").await, 1);
    let letters = crate::support::dead_letter_fields(&env, "send").await;
    assert!(letters.iter().all(|fields| !fields.contains("SECRET")), "{letters:?}");
}

/// A stranger probing an inbox's webhook secret is refused unheard after 100 failures a minute; the
/// inbox's own rate limit counts only authenticated requests, so the probing never made the
/// provider's signed webhooks fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_webhook_signatures_are_limited_per_address_and_inbox() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@probe.test", "owner-pass-1");
    let other = env.tenant("owner@neighbour.test", "owner-pass-1");
    let generic = admin(
        &env,
        &["inbox", "create", "--tenant", tenant["tenant_id"].as_str().unwrap(), "--kind", "generic", "--name", "Hooks"],
    );
    // An inbox limit below the number of probes: only authenticated requests count against it.
    let (http, _server) = serve(&env, &[("CHATDESK_INGRESS_RATE_PER_INBOX", "50")]).await;
    let path = generic["webhook_path"].as_str().unwrap();
    let body = crate::support::generic_body("m-1", "cust-1", "hi");
    let mut unsigned = Vec::new();
    for _ in 0..60 {
        unsigned.push(post(http, path, &[("X-Chatdesk-Signature", "sha256=00")], &body).await.status);
    }
    assert!(unsigned.iter().all(|status| *status == 401), "{unsigned:?}");
    assert_eq!(
        post_generic(http, &generic, &body).await.status,
        200,
        "the signed webhook is not limited by the probes"
    );
    for _ in 0..40 {
        unsigned.push(post(http, path, &[("X-Chatdesk-Signature", "sha256=00")], &body).await.status);
    }
    let refused = post(http, path, &[("X-Chatdesk-Signature", "sha256=00")], &body).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.header("retry-after").is_some());
    // A tenant pointing its provider's webhooks at this inbox (failing, from the provider's shared
    // address) cannot shut the provider's real webhooks out of it.
    let signed = crate::support::generic_body("m-2", "cust-1", "still here");
    let real = post_generic(http, &generic, &signed).await;
    assert_eq!(real.status, 200, "{}", real.body);
    // Providers deliver every tenant's webhooks from shared addresses: another tenant's inbox
    // still takes its signed webhooks from the same address.
    let neighbour = admin(
        &env,
        &["inbox", "create", "--tenant", other["tenant_id"].as_str().unwrap(), "--kind", "generic", "--name", "Hooks"],
    );
    let theirs = post_generic(http, &neighbour, &body).await;
    assert_eq!(theirs.status, 200, "{}", theirs.body);
}

/// With a metrics token set, `/metrics` answers only to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() {
    let env = Env::start().await;
    let (http, _server) = serve(&env, &[("CHATDESK_METRICS_TOKEN", "scrape-me-0123456789")]).await;
    let anonymous = chatdesk_testkit::http_request(http, "GET", "/metrics", &[], None).await.unwrap();
    assert_eq!(anonymous.status, 401);
    let wrong = [("Authorization", "Bearer scrape-me-0123456780")];
    assert_eq!(chatdesk_testkit::http_request(http, "GET", "/metrics", &wrong, None).await.unwrap().status, 401);
    let right = [("Authorization", "Bearer scrape-me-0123456789")];
    let scraped = chatdesk_testkit::http_request(http, "GET", "/metrics", &right, None).await.unwrap();
    assert_eq!(scraped.status, 200);
    assert!(scraped.body.contains("chatdesk_http_requests_total"));
}

/// A client that dribbles its headers is disconnected, and past the connection cap new
/// connections are closed at once while the open ones keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_too_many_connections_are_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = Env::start().await;
    let settings = [("CHATDESK_HTTP_HEADER_TIMEOUT", "1s"), ("CHATDESK_HTTP_MAX_CONNECTIONS", "8")];
    let (http, _server) = serve(&env, &settings).await;
    // Whether the server closed `stream` (a read ends) within `wait`.
    async fn closed(stream: &mut tokio::net::TcpStream, wait: std::time::Duration) -> bool {
        let mut buffer = [0u8; 1024];
        loop {
            match tokio::time::timeout(wait, stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    // Slowloris: half a request, then nothing.
    let mut slow = tokio::net::TcpStream::connect(http).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(closed(&mut slow, std::time::Duration::from_secs(30)).await, "a dribbling client is disconnected");
    // A connection that never says anything, and a kept-alive one that falls silent after a
    // request, are closed too.
    let mut silent = tokio::net::TcpStream::connect(http).await.unwrap();
    assert!(closed(&mut silent, std::time::Duration::from_secs(30)).await, "a silent connection is closed");
    let mut kept_alive = tokio::net::TcpStream::connect(http).await.unwrap();
    kept_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 12];
    kept_alive.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    assert!(
        closed(&mut kept_alive, std::time::Duration::from_secs(30)).await,
        "an idle kept-alive connection is closed"
    );

    // The cap: eight idle connections fill it; the ninth is closed at once.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(http).await.unwrap());
    }
    let mut ninth = tokio::net::TcpStream::connect(http).await.unwrap();
    assert!(closed(&mut ninth, std::time::Duration::from_millis(500)).await, "a connection past the cap is closed");
    drop(held);
    chatdesk_testkit::wait_until("the server to serve again", std::time::Duration::from_secs(30), || async {
        matches!(chatdesk_testkit::http_get(http, "/healthz").await, Ok((200, _)))
    })
    .await;

    // WebSockets keep their slot after the upgrade: eight fill the cap too.
    let mut sockets = Vec::new();
    for _ in 0..8 {
        // A slot still held by the last check's connection is given back within the header timeout.
        let socket = chatdesk_testkit::eventually("a free slot", std::time::Duration::from_secs(30), || async {
            tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")).await.ok().map(|(socket, _)| socket)
        })
        .await;
        sockets.push(socket);
    }
    let mut past = tokio::net::TcpStream::connect(http).await.unwrap();
    assert!(closed(&mut past, std::time::Duration::from_millis(500)).await, "a connection past the cap is closed");
    drop(sockets);
    chatdesk_testkit::wait_until("the server to serve again", std::time::Duration::from_secs(30), || async {
        matches!(chatdesk_testkit::http_get(http, "/healthz").await, Ok((200, _)))
    })
    .await;
}

/// Tokens end with their session: logout revokes every token of the user (REST and the
/// WebSocket), a role change or a deleted user ends theirs, and an API key can be revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_can_be_revoked() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let env = Env::start().await;
    let tenant = env.tenant("owner@revoke.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let agent = env.user(&tenant_id, "agent@revoke.test", "agent-pass-1", "agent");
    let (http, _server) = serve(&env, &[("CHATDESK_WS_TOKEN_RECHECK", "1s")]).await;
    let token = login(http, "agent@revoke.test", "agent-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http, token: token.clone() };
    assert_eq!(api.call("GET", "/v1/conversations", None).await.status, 200);
    // A socket opened before the logout.
    let (mut open_socket, _) = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")).await.unwrap();
    open_socket
        .send(Message::Text(json!({"op": "hello", "token": token, "protocol": 1}).to_string().into()))
        .await
        .unwrap();
    let welcome = open_socket.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome:?}");

    // Logout: this token and any other of the user stop working, on REST and the WebSocket.
    let other = login(http, "agent@revoke.test", "agent-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(api.call("POST", "/v1/auth/logout", None).await.status, 204);
    // The open socket is closed at its next check, with the reason.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match open_socket.next().await {
                Some(Ok(Message::Close(Some(frame)))) => break (u16::from(frame.code), frame.reason.to_string()),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("the revoked token's open socket is closed");
    assert_eq!(ended.0, 4003, "{ended:?}");
    assert!(ended.1.contains("revoked"), "{ended:?}");
    assert_eq!(api.call("GET", "/v1/conversations", None).await.status, 401);
    assert_eq!(Client { http, token: other.clone() }.call("GET", "/v1/conversations", None).await.status, 401);
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")).await.unwrap();
    socket.send(Message::Text(json!({"op": "hello", "token": other, "protocol": 1}).to_string().into())).await.unwrap();
    let closed = loop {
        match socket.next().await {
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(closed, 4003, "a revoked token is refused at hello");
    // A new login works again (tokens carry their issue time to the second: one issued in the
    // logout's own second counts as revoked, so log in until a token is from a later second).
    let fresh =
        chatdesk_testkit::eventually("a login after the logout works", std::time::Duration::from_secs(10), || async {
            let token = login(http, "agent@revoke.test", "agent-pass-1").await.json()["token"].as_str()?.to_owned();
            let works =
                Client { http, token: token.clone() }.call("GET", "/v1/conversations", None).await.status == 200;
            works.then_some(token)
        })
        .await;
    assert_eq!(Client { http, token: fresh.clone() }.call("GET", "/v1/conversations", None).await.status, 200);

    // A role change or a deleted user ends the user's tokens.
    let database = chatdesk_store::connect(&env.database_url, 1).await.unwrap();
    let user: uuid::Uuid = agent["user_id"].as_str().unwrap().parse().unwrap();
    sqlx::query("UPDATE users SET role = 'marketer' WHERE id = $1").bind(user).execute(&database).await.unwrap();
    let changed = Client { http, token: fresh.clone() }.call("GET", "/v1/inboxes", None).await;
    assert_eq!(changed.status, 401, "{}", changed.body);
    // Changing the role back does not revive the tokens of before.
    sqlx::query("UPDATE users SET role = 'agent' WHERE id = $1").bind(user).execute(&database).await.unwrap();
    let back = Client { http, token: fresh }.call("GET", "/v1/conversations", None).await;
    assert_eq!(back.status, 401, "{}", back.body);

    // An API key revoked with the CLI stops at once.
    let key = admin(&env, &["apikey", "create", "--tenant", &tenant_id, "--role", "admin"]);
    let key_client = Client { http, token: key["key"].as_str().unwrap().to_owned() };
    assert_eq!(key_client.call("GET", "/v1/inboxes", None).await.status, 200);
    let revoked = admin(&env, &["apikey", "revoke", "--tenant", &tenant_id, "--key", key["key_id"].as_str().unwrap()]);
    assert_eq!(revoked["revoked"], true);
    assert_eq!(key_client.call("GET", "/v1/inboxes", None).await.status, 401);
    database.close().await;
}

/// A timestamped generic signature is accepted while fresh and refused when replayed late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_replayed_webhook_is_refused() {
    use chatdesk_api::ingress::signature::sign_timestamped;

    let env = Env::start().await;
    let tenant = env.tenant("owner@replay.test", "owner-pass-1");
    let generic = admin(
        &env,
        &["inbox", "create", "--tenant", tenant["tenant_id"].as_str().unwrap(), "--kind", "generic", "--name", "Hooks"],
    );
    let (http, _server) = serve(&env, &[]).await;
    let path = generic["webhook_path"].as_str().unwrap();
    let secret = generic["secret"].as_str().unwrap();
    let body = crate::support::generic_body("t-1", "cust-1", "hi");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let fresh = sign_timestamped(body.as_bytes(), secret, now);
    assert_eq!(post(http, path, &[("X-Chatdesk-Signature", &fresh)], &body).await.status, 200);
    let captured = sign_timestamped(body.as_bytes(), secret, now - 3600);
    let replayed = post(http, path, &[("X-Chatdesk-Signature", &captured)], &body).await;
    assert_eq!(replayed.status, 401, "{}", replayed.body);

    // The untimed form can be replayed at any time: an inbox's admin can refuse it.
    let untimed = crate::support::generic_body("t-2", "cust-1", "again");
    let signature = chatdesk_core::auth::sign_body(untimed.as_bytes(), secret);
    assert_eq!(post(http, path, &[("X-Chatdesk-Signature", &signature)], &untimed).await.status, 200);
    let token = login(http, "owner@replay.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let owner = crate::support::Client { http, token };
    let inbox_path = format!("/v1/inboxes/{}", generic["inbox_id"].as_str().unwrap());
    let set = owner.call("PATCH", &inbox_path, Some(json!({"require_timestamped_signature": true}))).await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.json()["require_timestamped_signature"], true);
    let refused = post(http, path, &[("X-Chatdesk-Signature", &signature)], &untimed).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("only timestamped"), "{}", refused.body);
    let fresh = sign_timestamped(untimed.as_bytes(), secret, now);
    assert_eq!(post(http, path, &[("X-Chatdesk-Signature", &fresh)], &untimed).await.status, 200);
}

/// With an operators' tenant set, stream health (every tenant's) is theirs alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operators_see_stream_health() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let env = Env::start().await;
    let operators = env.tenant("owner@ops-a.test", "owner-pass-1");
    env.tenant("owner@ops-b.test", "owner-pass-1");
    let operators_id = operators["tenant_id"].as_str().unwrap().to_owned();
    let other = env.tenant("owner@ops-b2.test", "owner-pass-1");
    env.user(&operators_id, "sre@ops-a.test", "owner-pass-1", "sre");
    env.user(other["tenant_id"].as_str().unwrap(), "sre@ops-b.test", "owner-pass-1", "sre");
    let (http, _server) = serve(&env, &[("CHATDESK_OPS_TENANT", &operators_id)]).await;
    // Only the operators' SREs: not another tenant's SRE, and not a tenant's owner either.
    for (email, expected) in [
        ("sre@ops-a.test", "subscribed"),
        ("sre@ops-b.test", "error"),
        ("owner@ops-a.test", "error"),
        ("owner@ops-b.test", "error"),
    ] {
        let token = login(http, email, "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")).await.unwrap();
        for frame in
            [json!({"op": "hello", "token": token, "protocol": 1}), json!({"op": "subscribe", "channel": "ops"})]
        {
            socket.send(Message::Text(frame.to_string().into())).await.unwrap();
        }
        let answer = loop {
            let Some(Ok(Message::Text(text))) = socket.next().await else { panic!("the socket closed") };
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            if frame["op"] != "welcome" {
                break frame;
            }
        };
        assert_eq!(answer["op"], expected, "{email}: {answer}");
        if expected == "error" {
            assert_eq!(answer["code"], "forbidden");
        }
    }
}

/// A WhatsApp status moves only an outbound message of the same inbox: not a customer's own
/// message that happens to carry the same provider id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_never_moves_a_customers_message() {
    use chatdesk_api::ingress::signature::sign;

    let env = Env::start().await;
    let tenant = env.tenant("owner@status.test", "owner-pass-1");
    let whatsapp = admin(
        &env,
        &["inbox", "create", "--tenant", tenant["tenant_id"].as_str().unwrap(), "--kind", "whatsapp", "--name", "WA"],
    );
    let (http, _server) = serve(&env, &[]).await;
    let token = login(http, "owner@status.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http, token };
    let path = whatsapp["webhook_path"].as_str().unwrap();
    let secret = whatsapp["secret"].as_str().unwrap();
    let notify = |value: serde_json::Value| {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]})
            .to_string();
        let signature = sign(body.as_bytes(), secret);
        async move { post(http, path, &[("X-Hub-Signature-256", &signature)], &body).await }
    };
    let metadata = json!({"display_phone_number": "15550783881", "phone_number_id": "106540352242922"});
    let inbound = notify(json!({"messaging_product": "whatsapp", "metadata": metadata,
        "contacts": [{"profile": {"name": "Sheena"}, "wa_id": "16505551234"}],
        "messages": [{"from": "16505551234", "id": "wamid.IN-1", "timestamp": "1749416383", "type": "text", "text": {"body": "hello"}}]}))
    .await;
    assert_eq!(inbound.status, 200, "{}", inbound.body);
    let conversation = conversation_of(&api, "16505551234").await["id"].as_str().unwrap().to_owned();
    let messages = format!("/v1/conversations/{conversation}/messages");
    crate::support::eventually(&api, &messages, "the customer's message stored", |page| {
        page["items"].as_array().unwrap().len() == 1
    })
    .await;

    // A status naming the customer's own message id (an old one: not waited for).
    let status = notify(json!({"messaging_product": "whatsapp", "metadata": metadata,
        "statuses": [{"id": "wamid.IN-1", "status": "read", "timestamp": "1749416500", "recipient_id": "16505551234"}]}))
    .await;
    assert_eq!((status.status, status.json()["statuses"].as_u64()), (200, Some(0)), "{}", status.body);
    let page = api.call("GET", &messages, None).await.json();
    assert_eq!(page["items"][0]["status"], serde_json::Value::Null, "the customer's message has no delivery status");
}

/// A receiver answering hundreds of megabytes cannot make a sender hold them: it reads a small
/// part, and the message fails with a fixed reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_answer_is_not_read_whole() {
    // 256 MiB of answer, streamed: nothing in this test holds it either.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/replies",
        axum::routing::post(|| async {
            let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
            let body = futures::stream::iter((0..4096).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
            (axum::http::StatusCode::INTERNAL_SERVER_ERROR, axum::body::Body::from_stream(body))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let env = Env::start().await;
    let tenant = env.tenant("owner@huge.test", "owner-pass-1");
    let url = format!("http://{receiver}/replies");
    let generic = admin(
        &env,
        &[
            "inbox",
            "create",
            "--tenant",
            tenant["tenant_id"].as_str().unwrap(),
            "--kind",
            "generic",
            "--name",
            "Out",
            "--outbound-url",
            &url,
        ],
    );
    let settings = [("CHATDESK_SEND_MAX_ATTEMPTS", "2"), ("CHATDESK_SEND_BACKOFF", "100ms")];
    let http: std::net::SocketAddr = chatdesk_testkit::free_addr();
    let server = crate::support::serve_roles(&env, "ingress,writer,sender", http, &settings).await;
    let pid = server.id().unwrap();
    let token = login(http, "owner@huge.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http, token };
    assert_eq!(post_generic(http, &generic, &crate::support::generic_body("h-1", "cust-1", "hi")).await.status, 200);
    let conversation = conversation_of(&api, "cust-1").await["id"].as_str().unwrap().to_owned();
    let before = rss_kib(pid);
    let path = format!("/v1/conversations/{conversation}/messages");
    assert_eq!(api.call("POST", &path, Some(json!({"text": "hello"}))).await.status, 202);
    let page =
        crate::support::eventually(&api, &path, "the reply failed", |page| page["items"][0]["status"] == "failed")
            .await;
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(page["items"][0]["failure_reason"].as_str().unwrap().contains("HTTP 500"), "{page}");
    assert!(grown < 64 * 1024, "the sender read a bounded part of each answer: resident memory grew {grown} KiB");
}

/// Sessions leave no key without a time to live, and a visitor forgotten after a long silence is
/// the same contact when it comes back with its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_visitors_leave_no_key_forever() {
    use fred::interfaces::{ClientLike, KeysInterface};

    let env = Env::start().await;
    let tenant = env.tenant("owner@ttl.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let web = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "web", "--name", "Site"]);
    let (http, _server) = serve(&env, &[]).await;
    let path = web["webhook_path"].as_str().unwrap();
    let first = post(http, path, &[], r#"{"email": "v@ttl.test"}"#).await.json();

    let redis = chatdesk_streams::RedisConnector::new(chatdesk_streams::RedisSettings::new(&env.redis_url))
        .unwrap()
        .shared()
        .await
        .unwrap();
    let keys: Vec<String> = redis.custom(fred::cmd!("KEYS"), vec![format!("{}:*", env.prefix)]).await.unwrap();
    let visitor_keys: Vec<&String> =
        keys.iter().filter(|key| key.contains(":contact:") || key.contains(":conversation:")).collect();
    assert_eq!(visitor_keys.len(), 2, "{keys:?}");
    for key in &visitor_keys {
        let ttl: i64 = redis.ttl(key.as_str()).await.unwrap();
        assert!(ttl > 0, "{key} has no time to live");
    }

    // Forgotten (as after a month of silence), then back with its key: the same contact.
    for key in &visitor_keys {
        let _: i64 = redis.del(key.as_str()).await.unwrap();
    }
    let body = json!({"email": "v@ttl.test", "visitor_key": first["visitor_key"]}).to_string();
    let again = post(http, path, &[], &body).await.json();
    assert_eq!(again["contact_id"], first["contact_id"], "the same contact");
    assert_ne!(again["conversation_id"], first["conversation_id"], "a new conversation after the silence");
    let visitor = format!("Bearer {}", again["token"].as_str().unwrap());
    let written =
        post(http, &path.replace("/sessions", "/messages"), &[("Authorization", &visitor)], r#"{"text": "back"}"#)
            .await;
    assert_eq!(written.status, 202, "{}", written.body);
    let token = login(http, "owner@ttl.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http, token };
    let conversation = again["conversation_id"].as_str().unwrap();
    crate::support::eventually(
        &api,
        &format!("/v1/conversations/{conversation}"),
        "the new conversation stored",
        |found| found["contact"]["id"] == first["contact_id"],
    )
    .await;
    assert_eq!(crate::support::dead_letters(&env, "events").await, 0, "the contact was not refused as a duplicate");
}

/// Opening widget sessions in bulk makes no conversation: nothing is appended, agents see
/// nothing, and every key a session leaves expires with the standby window. The first message
/// makes the reserved conversation, with the name given at the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_sessions_make_no_conversation_until_a_message() {
    use fred::interfaces::{ClientLike, KeysInterface, StreamsInterface};

    let env = Env::start().await;
    let tenant = env.tenant("owner@quiet.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let web = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "web", "--name", "Site"]);
    let (http, _server) = serve(&env, &[]).await;
    let path = web["webhook_path"].as_str().unwrap();
    let mut sessions = Vec::new();
    for index in 0..12 {
        let body = json!({"email": format!("quiet-{index}@quiet.test"), "name": format!("Quiet {index}")}).to_string();
        let session = post(http, path, &[], &body).await;
        assert_eq!(session.status, 201, "{}", session.body);
        sessions.push(session.json());
    }

    let redis = chatdesk_streams::RedisConnector::new(chatdesk_streams::RedisSettings::new(&env.redis_url))
        .unwrap()
        .shared()
        .await
        .unwrap();
    let keys =
        async |pattern: String| -> Vec<String> { redis.custom(fred::cmd!("KEYS"), vec![pattern]).await.unwrap() };
    let streams = keys(format!("{}:stream:*", env.prefix)).await;
    let mut appended = 0;
    for stream in &streams {
        let length: u64 = redis.xlen(stream.as_str()).await.unwrap();
        appended += length;
    }
    assert_eq!(appended, 0, "sessions append nothing: {streams:?}");
    let all = keys(format!("{}:*", env.prefix)).await;
    for key in all.iter().filter(|key| key.contains(":contact:") || key.contains(":conversation:")) {
        let ttl: i64 = redis.ttl(key.as_str()).await.unwrap();
        assert!((1..=600).contains(&ttl), "{key} lives {ttl} s, past the standby window");
    }

    // One visitor writes: its reserved conversation is made, and only that one.
    let chosen = &sessions[3];
    let visitor = format!("Bearer {}", chosen["token"].as_str().unwrap());
    let messages = path.replace("/sessions", "/messages");
    let written = post(http, &messages, &[("Authorization", &visitor)], r#"{"text": "hello?"}"#).await;
    assert_eq!(written.status, 202, "{}", written.body);
    assert_eq!(written.json()["conversation_id"], chosen["conversation_id"]);
    let token = login(http, "owner@quiet.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http, token };
    let conversation = chosen["conversation_id"].as_str().unwrap();
    let stored = crate::support::eventually(
        &api,
        &format!("/v1/conversations/{conversation}"),
        "the conversation made by the first message",
        |found| found["contact"]["id"] == chosen["contact_id"],
    )
    .await;
    assert_eq!(stored["contact"]["name"], "Quiet 3", "{stored}");
    let listed = api.call("GET", "/v1/conversations", None).await.json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    // A second message goes to the same conversation, whose contact and creation came once.
    let again = post(http, &messages, &[("Authorization", &visitor)], r#"{"text": "anyone?"}"#).await;
    assert_eq!(again.json()["conversation_id"], chosen["conversation_id"]);
    let mut created = 0;
    for stream in &keys(format!("{}:stream:*", env.prefix)).await {
        let entries: Vec<(String, HashMap<String, String>)> =
            redis.xrange(stream.as_str(), "-", "+", None).await.unwrap();
        created += entries
            .iter()
            .filter(|(_, fields)| {
                fields.values().any(|value| value == "conversation.created" || value == "contact.created")
            })
            .count();
    }
    assert_eq!(created, 2, "one contact.created and one conversation.created");
}

/// What a hostile client forges around the edges of the contract is refused by name, never a
/// server error: cursors out of any range, NUL-only texts, control characters in settings and
/// ids, and a client's own X-Forwarded-For without a trusted proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cursors_and_control_characters_are_refused_by_name() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@edges.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let generic = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "Hooks"]);
    let (http, _server) = serve(&env, &[]).await;
    let token = login(http, "owner@edges.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http, token };
    let body = crate::support::generic_body("edge-1", "cust-1", "hello");
    assert_eq!(post_generic(http, &generic, &body).await.status, 200);
    let conversation = conversation_of(&api, "cust-1").await["id"].as_str().unwrap().to_owned();
    let id = uuid::Uuid::now_v7();

    for cursor in [format!("-377705116800000000000_{id}"), format!("99999999999999999999_{id}"), "0_x".into()] {
        let answer = api.call("GET", &format!("/v1/conversations?cursor={cursor}"), None).await;
        assert_eq!(answer.status, 400, "{cursor}: {}", answer.body);
    }
    let answer = api.call("GET", &format!("/v1/orders?cursor=-300000000000000000_{id}"), None).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    // Past the largest offset every message is older: the newest page, not an empty one.
    let page = format!("/v1/conversations/{conversation}/messages");
    let huge = api.call("GET", &format!("{page}?cursor=9999999999999999999-0"), None).await;
    assert_eq!(huge.status, 200, "{}", huge.body);
    assert_eq!(huge.json()["items"].as_array().unwrap().len(), 1, "{}", huge.body);

    for text in ["\u{0}", "\u{0} \u{0}", "\u{0}\u{feff}\u{0}"] {
        let answer = api.call("POST", &page, Some(json!({"text": text}))).await;
        assert_eq!((answer.status, answer.json()["error"]["details"]["field"].as_str()), (422, Some("text")));
    }
    let id_with_nul = api.call("POST", &page, Some(json!({"text": "hi", "client_msg_id": "a\u{0}b"}))).await;
    assert_eq!(id_with_nul.status, 422, "{}", id_with_nul.body);
    let inbox = generic["inbox_id"].as_str().unwrap();
    for url in ["https://example.com/\u{0}", "https://example.com/\u{1}x"] {
        let answer = api.call("PATCH", &format!("/v1/inboxes/{inbox}"), Some(json!({"outbound_url": url}))).await;
        assert_eq!((answer.status, answer.json()["error"]["details"]["field"].as_str()), (422, Some("outbound_url")));
    }
    assert_eq!(crate::support::dead_letters(&env, "events").await, 0);
}
