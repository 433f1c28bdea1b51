//! The REST API as a client meets it: a real `chatdesk serve --roles ingress,writer` process,
//! tenants and users made with `chatdesk admin`, events appended to the stream as ingress would.

use std::sync::Arc;
use std::time::Duration;

use chatdesk_core::Envelope;
use chatdesk_core::events::{Actor, ContactCreated, ConversationCreated, Direction, Event, MessageCreated, SenderKind};
use chatdesk_core::{KeyScheme, StreamsConfig, TenantId};
use chatdesk_streams::{Producer, RedisConnector, RedisSettings};
use chatdesk_testkit::http_request;
use fred::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{Client, Env, JWT_SECRET, admin, eventually, login, serve};

/// A contact, a conversation and `messages` inbound messages in `inbox` of `tenant`, appended as
/// ingress appends them.
async fn seed_conversation(producer: &Producer, tenant: Uuid, inbox: Uuid, messages: usize) -> Uuid {
    let (contact, conversation) = (Uuid::now_v7(), Uuid::now_v7());
    let mut events = vec![
        Event::ContactCreated(ContactCreated {
            contact_id: contact,
            inbox_id: inbox,
            external_id: format!("cust-{contact}"),
            name: Some("Ana".into()),
            email: None,
        }),
        Event::ConversationCreated(ConversationCreated {
            conversation_id: conversation,
            inbox_id: inbox,
            contact_id: contact,
        }),
    ];
    for index in 0..messages {
        events.push(Event::MessageCreated(MessageCreated {
            conversation_id: conversation,
            inbox_id: inbox,
            contact_id: contact,
            direction: Direction::Inbound,
            sender: Actor { kind: SenderKind::Customer, id: Some(contact) },
            text: format!("hello {index}"),
            extra: None,
            provider_message_id: Some(format!("m-{conversation}-{index}")),
            client_msg_id: None,
            sent_at_ms: None,
        }));
    }
    for event in events {
        producer.append_event(&Envelope::of(TenantId(tenant), &event)).await.unwrap();
    }
    conversation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_history_and_agent_actions_over_rest() {
    let env = Env::start().await;

    let tenant_a = env.tenant("owner@acme.test", "owner-pass-1");
    let tenant_b = admin(
        &env,
        &["tenant", "create", "--name", "Globex", "--owner-email", "owner@globex.test", "--password", "owner-pass-2"],
    );
    let (a, b) =
        (tenant_a["tenant_id"].as_str().unwrap().to_owned(), tenant_b["tenant_id"].as_str().unwrap().to_owned());
    let agent = env.user(&a, "agent@acme.test", "agent-pass-1", "agent");
    env.user(&a, "marketer@acme.test", "market-pass-1", "marketer");
    let inbox_a = admin(&env, &["inbox", "create", "--tenant", &a, "--kind", "generic", "--name", "Support"]);
    let inbox_b = admin(&env, &["inbox", "create", "--tenant", &b, "--kind", "whatsapp", "--name", "Sales"]);
    assert_eq!(inbox_a["webhook_path"], format!("/v1/webhooks/generic/{}", inbox_a["inbox_id"].as_str().unwrap()));
    assert_eq!(inbox_a["secret"].as_str().unwrap().len(), 40);
    let key_a = admin(&env, &["apikey", "create", "--tenant", &a, "--role", "agent"]);
    let key_b = admin(&env, &["apikey", "create", "--tenant", &b, "--role", "admin"]);

    let (http, _server) = serve(&env, &[]).await;

    // The served OpenAPI document is the committed one clients are written from.
    let served = http_request(http, "GET", "/v1/openapi.json", &[], None).await.unwrap();
    assert_eq!(served.status, 200);
    let committed: Value = serde_json::from_str(include_str!("../../../../docs/openapi.json")).unwrap();
    assert_eq!(served.json(), committed);

    // Login: right and wrong.
    let logged_in = login(http, "agent@acme.test", "agent-pass-1").await;
    assert_eq!(logged_in.status, 200, "{}", logged_in.body);
    let session = logged_in.json();
    assert_eq!(session["user"]["role"], "agent");
    assert_eq!(session["user"]["tenant_id"], a.as_str());
    let agent_id = agent["user_id"].as_str().unwrap().to_owned();
    for (email, password) in [("agent@acme.test", "wrong-password"), ("nobody@acme.test", "agent-pass-1")] {
        let refused = login(http, email, password).await;
        assert_eq!(refused.status, 401);
        assert_eq!(refused.json()["error"]["code"], "unauthorized");
    }
    let missing = http_request(
        http,
        "POST",
        "/v1/auth/login",
        &[("Content-Type", "application/json")],
        Some(r#"{"email":"x@y.z"}"#),
    )
    .await
    .unwrap();
    assert_eq!(missing.status, 422);
    assert_eq!(missing.json()["error"]["details"]["field"], "password");
    let malformed =
        http_request(http, "POST", "/v1/auth/login", &[("Content-Type", "application/json")], Some("{")).await.unwrap();
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.json()["error"]["code"], "invalid_json");
    let not_json =
        http_request(http, "POST", "/v1/auth/login", &[("Content-Type", "text/plain")], Some("hi")).await.unwrap();
    assert_eq!(not_json.status, 415);

    let agent_a = Client { http, token: session["token"].as_str().unwrap().to_owned() };
    let key_a = Client { http, token: key_a["key"].as_str().unwrap().to_owned() };
    let key_b = Client { http, token: key_b["key"].as_str().unwrap().to_owned() };
    let marketer = Client {
        http,
        token: login(http, "marketer@acme.test", "market-pass-1").await.json()["token"].as_str().unwrap().to_owned(),
    };

    // Conversations arrive through the stream and the writer.
    let redis_client = RedisConnector::new(RedisSettings::new(&env.redis_url)).unwrap().shared().await.unwrap();
    let streams =
        Arc::new(StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap());
    let keys = KeyScheme::new(&env.prefix).unwrap();
    let producer = Producer::new(redis_client.clone(), keys.clone(), streams.clone());
    let (tenant_a_id, tenant_b_id): (Uuid, Uuid) = (a.parse().unwrap(), b.parse().unwrap());
    let inbox_a_id: Uuid = inbox_a["inbox_id"].as_str().unwrap().parse().unwrap();
    let inbox_b_id: Uuid = inbox_b["inbox_id"].as_str().unwrap().parse().unwrap();
    let first = seed_conversation(&producer, tenant_a_id, inbox_a_id, 5).await;
    let second = seed_conversation(&producer, tenant_a_id, inbox_a_id, 1).await;
    let foreign = seed_conversation(&producer, tenant_b_id, inbox_b_id, 2).await;

    let list = eventually(&agent_a, "/v1/conversations", "two conversations in A", |page| {
        page["items"].as_array().unwrap().len() == 2
    })
    .await;
    assert!(list["next_cursor"].is_null());
    assert_eq!(list["items"][0]["id"], second.to_string(), "most recent activity first");
    let listed_first = list["items"].as_array().unwrap().iter().find(|item| item["id"] == first.to_string()).unwrap();
    assert_eq!(listed_first["unread_count"], 5);
    assert_eq!(listed_first["last_message"]["text"], "hello 4");
    assert_eq!(listed_first["contact"]["name"], "Ana");
    eventually(&key_b, "/v1/conversations", "B's conversation", |page| page["items"].as_array().unwrap().len() == 1)
        .await;

    // Paging.
    let page = agent_a.call("GET", "/v1/conversations?limit=1", None).await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let rest = agent_a.call("GET", &format!("/v1/conversations?limit=1&cursor={cursor}"), None).await.json();
    assert_eq!(rest["items"][0]["id"], first.to_string());
    assert!(rest["next_cursor"].is_null());
    let history = agent_a.call("GET", &format!("/v1/conversations/{first}/messages?limit=3"), None).await.json();
    let texts: Vec<&str> =
        history["items"].as_array().unwrap().iter().map(|message| message["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["hello 4", "hello 3", "hello 2"], "newest first");
    assert_eq!(history["items"][0]["direction"], "inbound");
    assert!(history["items"][0]["status"].is_null());
    assert!(history["items"][0]["offset"].as_str().unwrap().contains('-'));
    let older = agent_a
        .call(
            "GET",
            &format!("/v1/conversations/{first}/messages?limit=3&cursor={}", history["next_cursor"].as_str().unwrap()),
            None,
        )
        .await
        .json();
    let texts: Vec<&str> =
        older["items"].as_array().unwrap().iter().map(|message| message["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["hello 1", "hello 0"]);
    assert!(older["next_cursor"].is_null());

    // Tenant isolation: B's conversation does not exist for A, whatever the credentials.
    for client in [&agent_a, &key_a] {
        for (method, path, body) in [
            ("GET", format!("/v1/conversations/{foreign}"), None),
            ("GET", format!("/v1/conversations/{foreign}/messages"), None),
            ("POST", format!("/v1/conversations/{foreign}/messages"), Some(json!({"text": "hi"}))),
            ("POST", format!("/v1/conversations/{foreign}/assign"), Some(json!({"assignee_id": null}))),
            ("POST", format!("/v1/conversations/{foreign}/resolve"), None),
            ("POST", format!("/v1/conversations/{foreign}/reopen"), None),
            ("POST", format!("/v1/conversations/{foreign}/block"), None),
        ] {
            let response = client.call(method, &path, body).await;
            assert_eq!(response.status, 404, "{method} {path}: {}", response.body);
            assert_eq!(response.json()["error"]["code"], "not_found");
        }
        let mine = client.call("GET", "/v1/conversations", None).await.json();
        assert!(mine["items"].as_array().unwrap().iter().all(|item| item["id"] != foreign.to_string()));
    }

    // Credentials and rights.
    let forged = Client { http, token: format!("{}x", agent_a.token) };
    let expired = Client {
        http,
        token: {
            let key = chatdesk_api::auth::TokenKey::new(JWT_SECRET.as_bytes()).unwrap();
            chatdesk_api::auth::issue_token(
                &key,
                agent_id.parse().unwrap(),
                tenant_a_id,
                chatdesk_store::directory::Role::Agent,
                Duration::ZERO,
            )
            .0
        },
    };
    let other_key = Client { http, token: "cdk_not-a-real-key".into() };
    for client in [&forged, &expired, &other_key] {
        assert_eq!(client.call("GET", "/v1/conversations", None).await.status, 401);
    }
    let anonymous = http_request(http, "GET", "/v1/conversations", &[], None).await.unwrap();
    assert_eq!(anonymous.status, 401);
    let forbidden = marketer.call("GET", "/v1/conversations", None).await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"]["code"], "forbidden");

    // Bad input names what is wrong.
    assert_eq!(agent_a.call("GET", &format!("/v1/conversations/{}", Uuid::now_v7()), None).await.status, 404);
    let bad_id = agent_a.call("GET", "/v1/conversations/not-a-uuid", None).await;
    assert_eq!(bad_id.status, 400);
    assert_eq!(bad_id.json()["error"]["code"], "invalid_path");
    let bad_status = agent_a.call("GET", "/v1/conversations?status=sleeping", None).await;
    assert_eq!(bad_status.status, 400);
    assert_eq!(bad_status.json()["error"]["details"]["parameter"], "status");
    let no_text = agent_a
        .call("POST", &format!("/v1/conversations/{first}/messages"), Some(json!({"client_msg_id": "c1"})))
        .await;
    assert_eq!(no_text.status, 422);
    assert_eq!(no_text.json()["error"]["details"]["field"], "text");
    let wrong_type =
        agent_a.call("POST", &format!("/v1/conversations/{first}/messages"), Some(json!({"text": 5}))).await;
    assert_eq!(wrong_type.status, 422);
    assert_eq!(wrong_type.json()["error"]["details"]["field"], "text");
    let stranger = agent_a
        .call("POST", &format!("/v1/conversations/{first}/assign"), Some(json!({"assignee_id": Uuid::now_v7()})))
        .await;
    assert_eq!(stranger.status, 422);
    assert_eq!(stranger.json()["error"]["details"]["field"], "assignee_id");

    // An agent reply: appended, stored as queued, sent once even when retried.
    let reply = agent_a
        .call(
            "POST",
            &format!("/v1/conversations/{first}/messages"),
            Some(json!({"text": "On its way!", "client_msg_id": "c-1"})),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let accepted = reply.json();
    let again = agent_a
        .call(
            "POST",
            &format!("/v1/conversations/{first}/messages"),
            Some(json!({"text": "On its way!", "client_msg_id": "c-1"})),
        )
        .await;
    assert_eq!(again.json()["event_id"], accepted["event_id"], "a repeated client_msg_id is not sent twice");
    let history =
        eventually(&agent_a, &format!("/v1/conversations/{first}/messages?limit=1"), "the reply stored", |page| {
            page["items"][0]["event_id"] == accepted["event_id"]
        })
        .await;
    let stored = &history["items"][0];
    assert_eq!(
        (stored["direction"].as_str(), stored["sender_kind"].as_str(), stored["status"].as_str()),
        (Some("outbound"), Some("agent"), Some("queued"))
    );
    assert_eq!(stored["offset"], accepted["offset"]);
    assert_eq!(stored["sender_id"], agent_id.as_str());
    let send = streams.stream("send").unwrap();
    let mut requests = 0;
    for partition in 0..send.partitions {
        let length: u64 = redis_client.xlen(keys.partition(&send.name, partition).stream).await.unwrap();
        requests += length;
    }
    assert_eq!(requests, 1, "one delivery request for one reply");
    let conversation = eventually(&agent_a, &format!("/v1/conversations/{first}"), "unread reset by the reply", |c| {
        c["unread_count"] == 0
    })
    .await;
    assert_eq!(conversation["last_message"]["text"], "On its way!");

    // Actions go through the stream and come back through the writer.
    let assigned = agent_a
        .call("POST", &format!("/v1/conversations/{first}/assign"), Some(json!({"assignee_id": agent_id})))
        .await;
    assert_eq!(assigned.status, 202);
    eventually(&agent_a, "/v1/conversations?assignee=me", "assigned to me", |page| {
        page["items"].as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(agent_a.call("POST", &format!("/v1/conversations/{first}/resolve"), None).await.status, 202);
    let resolved = eventually(&agent_a, "/v1/conversations?status=resolved", "resolved", |page| {
        page["items"].as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(resolved["items"][0]["id"], first.to_string());
    assert_eq!(key_a.call("POST", &format!("/v1/conversations/{first}/block"), None).await.status, 202);
    eventually(&agent_a, &format!("/v1/conversations/{first}"), "blocked", |c| c["status"] == "blocked").await;
    let refused =
        agent_a.call("POST", &format!("/v1/conversations/{first}/messages"), Some(json!({"text": "hello?"}))).await;
    assert_eq!(refused.status, 409);
    assert_eq!(key_a.call("POST", &format!("/v1/conversations/{first}/reopen"), None).await.status, 202);
    eventually(&agent_a, &format!("/v1/conversations/{first}"), "reopened", |c| c["status"] == "open").await;
}

/// Every answer is one the OpenAPI document declares for its operation: each operation is called
/// with hostile variants (a malformed id, a body that is not JSON, JSON with the wrong
/// content type, an empty object, a NUL and oversized strings, a huge body), with an agent
/// token, and its status must be listed. No server error, no undeclared status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_declared_by_the_openapi_document() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@contract.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let web = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "web", "--name", "Site"]);
    let (http, _server) = serve(&env, &[]).await;
    let token = login(http, "owner@contract.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let document: Value = serde_json::from_str(include_str!("../../../../docs/openapi.json")).unwrap();
    let real_ids = [web["inbox_id"].as_str().unwrap().to_owned(), Uuid::now_v7().to_string()];
    let bodies: Vec<(Option<&str>, String)> = vec![
        (Some("application/json"), "{".to_owned()),
        (Some("text/plain"), "{}".to_owned()),
        (Some("application/json"), "{}".to_owned()),
        (Some("application/json"), json!({"text": "a\u{0}b", "email": "x\u{0}@y.z", "password": "p"}).to_string()),
        (Some("application/json"), json!({"text": "x".repeat(5000), "name": "n".repeat(300)}).to_string()),
        (Some("application/json"), format!("{{\"text\": \"{}\"}}", "x".repeat(300 * 1024))),
        (None, String::new()),
    ];
    let mut checked = 0;
    for (template, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let declared: Vec<u16> =
                operation["responses"].as_object().unwrap().keys().filter_map(|code| code.parse().ok()).collect();
            let mut paths = vec![template.replace(['{', '}'], "").replace("inbox_id", "not-a-uuid")];
            for id in &real_ids {
                let mut path = template.clone();
                while let (Some(start), Some(end)) = (path.find('{'), path.find('}')) {
                    path.replace_range(start..=end, id);
                }
                paths.push(path);
            }
            let with_body = operation.get("requestBody").is_some();
            for path in &paths {
                let variants: Vec<&(Option<&str>, String)> =
                    if with_body { bodies.iter().collect() } else { vec![bodies.last().unwrap()] };
                for (content_type, body) in variants {
                    // A fresh connection each time: one the server closed under an oversized
                    // body must not be reused for the next request.
                    let mut headers = vec![("Authorization", bearer.as_str()), ("Connection", "close")];
                    if let Some(content_type) = content_type {
                        headers.push(("Content-Type", content_type));
                    }
                    let huge = body.len() > 256 * 1024;
                    let body = (!body.is_empty()).then_some(body.as_str());
                    let answer = match http_request(http, &method.to_uppercase(), path, &headers, body).await {
                        Ok(answer) => answer,
                        // A body past the limit may be answered before it is read and the
                        // connection closed under the client still sending it.
                        Err(_) if huge => continue,
                        Err(error) => panic!("{method} {path}: {error}"),
                    };
                    assert!(
                        declared.contains(&answer.status),
                        "{} {path} answered {} (declared: {declared:?}): {}",
                        method.to_uppercase(),
                        answer.status,
                        answer.body.chars().take(300).collect::<String>()
                    );
                    checked += 1;
                }
            }
        }
    }
    // Requests the HTTP layer refuses before any route: a URI or headers past its limits.
    for (template, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let declared: Vec<u16> =
                operation["responses"].as_object().unwrap().keys().filter_map(|code| code.parse().ok()).collect();
            let path = template.replace(['{', '}'], "");
            let long = format!("{path}?q={}", "x".repeat(70 * 1024));
            let many: Vec<(String, String)> = (0..120).map(|index| (format!("x-h{index}"), "v".into())).collect();
            let many: Vec<(&str, &str)> = many.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
            for (path, headers) in [(long.as_str(), vec![("Connection", "close")]), (path.as_str(), many)] {
                let Ok(answer) = http_request(http, &method.to_uppercase(), path, &headers, None).await else {
                    continue;
                };
                assert!(declared.contains(&answer.status), "{method} {template}: undeclared {}", answer.status);
                checked += 1;
            }
        }
    }
    println!("{checked} requests, every status declared");
    assert!(checked > 100, "the document names the API's operations");
}
