//! The agent's workspace as agents meet it over REST and the WebSocket: private notes, labels,
//! canned responses, the contact panel, search, inbox membership and round-robin routing.

use chatdesk_testkit::free_addr;
use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::gateway::{hello, next, next_event, send, subscribe};
use crate::standin::{Answer, StandIn};
use crate::support::{
    Client, Env, admin, conversation_of, eventually, generic_body, login, metric, post_generic, serve_roles,
};

async fn client(http: SocketAddr, email: &str, password: &str) -> Client {
    let answer = login(http, email, password).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    Client { http, token: answer.json()["token"].as_str().unwrap().to_owned() }
}

async fn webhook(http: SocketAddr, inbox: &Value, message_id: &str, from: &str, text: &str) {
    let response = post_generic(http, inbox, &generic_body(message_id, from, text)).await;
    assert_eq!(response.status, 200, "{}", response.body);
}

fn id(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_note_reaches_agents_and_never_the_customer() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@notes.test", "owner-pass-1");
    let tenant_id = id(&tenant["tenant_id"]);
    let bob = env.user(&tenant_id, "bob@notes.test", "bob-pass-1", "agent");
    let other = admin(
        &env,
        &["tenant", "create", "--name", "Globex", "--owner-email", "owner@globex.test", "--password", "owner-pass-2"],
    );
    let provider = StandIn::start(|_| String::new(), |_, _| Answer::json(200, json!({"id": "x"}))).await;
    let generic = admin(
        &env,
        &[
            "inbox",
            "create",
            "--tenant",
            &tenant_id,
            "--kind",
            "generic",
            "--name",
            "Mail",
            "--outbound-url",
            &provider.url(),
        ],
    );
    let web = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "web", "--name", "Site"]);
    let http = free_addr();
    let _server = serve_roles(&env, "ingress,writer,gateway,sender", http, &[]).await;
    let owner = client(http, "owner@notes.test", "owner-pass-1").await;
    let stranger = client(http, "owner@globex.test", "owner-pass-2").await;

    // A customer on a provider's channel; an agent follows the conversation.
    webhook(http, &generic, "n-1", "cust-1", "my parcel never arrived").await;
    let conversation = id(&conversation_of(&owner, "cust-1").await["id"]);
    let mut agent = hello(http, &owner.token).await;
    subscribe(&mut agent, json!({"op": "subscribe", "channel": format!("conversation:{conversation}")})).await;

    let note = owner
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/notes"),
            Some(json!({"text": "  @bob she was promised a refund  ", "mentions": [bob["user_id"]]})),
        )
        .await;
    assert_eq!(note.status, 202, "{}", note.body);
    let note_id = id(&note.json()["event_id"]);
    let live = next_event(&mut agent).await;
    assert_eq!(
        (live["type"].as_str(), live["data"]["text"].as_str()),
        (Some("note.created"), Some("@bob she was promised a refund"))
    );
    assert_eq!(live["data"]["mentions"], json!([bob["user_id"]]));
    let notes = eventually(&owner, &format!("/v1/conversations/{conversation}/notes"), "the note stored", |page| {
        page["items"].as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(notes["items"][0]["id"], note_id.as_str());
    assert_eq!(notes["items"][0]["author_kind"], "agent");

    // A reply after the note reaches the provider; the note never does, and is no message.
    let reply = owner
        .call("POST", &format!("/v1/conversations/{conversation}/messages"), Some(json!({"text": "we are on it"})))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let received = provider.wait_for("the reply at the provider", |received| !received.is_empty()).await;
    assert_eq!(received.len(), 1);
    assert!(received[0].raw.contains("we are on it"));
    let messages =
        eventually(&owner, &format!("/v1/conversations/{conversation}/messages"), "the reply stored", |page| {
            page["items"].as_array().unwrap().len() == 2
        })
        .await;
    assert!(
        messages["items"].as_array().unwrap().iter().all(|message| message["text"] != "@bob she was promised a refund")
    );
    assert!(provider.received().iter().all(|request| !request.raw.contains("refund")), "a note reached the provider");

    // A merge joins two contacts of one person; each conversation's replies still go to the
    // identity its customer wrote from.
    webhook(http, &generic, "n-2", "cust-9", "same person, other phone").await;
    let second_phone = conversation_of(&owner, "cust-9").await;
    let first_contact = id(&conversation_of(&owner, "cust-1").await["contact"]["id"]);
    let merge = owner
        .call(
            "POST",
            &format!("/v1/contacts/{first_contact}/merge"),
            Some(json!({"contact_id": second_phone["contact"]["id"]})),
        )
        .await;
    assert_eq!(merge.status, 202, "{}", merge.body);
    let other_id = id(&second_phone["id"]);
    eventually(&owner, &format!("/v1/conversations/{other_id}"), "the merged person shown", |c| {
        c["contact"]["id"] == first_contact.as_str() && c["contact"]["external_id"] == "cust-9"
    })
    .await;
    let answer = owner
        .call("POST", &format!("/v1/conversations/{other_id}/messages"), Some(json!({"text": "to the other phone"})))
        .await;
    assert_eq!(answer.status, 202);
    let received = provider.wait_for("the second reply", |received| received.len() == 2).await;
    assert_eq!(received[1].body["to"], "cust-9", "{}", received[1].raw);

    // Refused by name: no text, a mention of another tenant's user, another tenant's conversation.
    let blank =
        owner.call("POST", &format!("/v1/conversations/{conversation}/notes"), Some(json!({"text": "\u{0}  "}))).await;
    assert_eq!((blank.status, blank.json()["error"]["details"]["field"].as_str()), (422, Some("text")));
    let foreign = owner
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/notes"),
            Some(json!({"text": "hi", "mentions": [other["user_id"]]})),
        )
        .await;
    assert_eq!((foreign.status, foreign.json()["error"]["details"]["field"].as_str()), (422, Some("mentions")));
    for (method, body) in [("POST", Some(json!({"text": "peek"}))), ("GET", None)] {
        let answer = stranger.call(method, &format!("/v1/conversations/{conversation}/notes"), body).await;
        assert_eq!(answer.status, 404, "{method}: {}", answer.body);
    }

    // A widget visitor: its socket and its history carry messages, never a note.
    let sessions = id(&web["webhook_path"]);
    let session = chatdesk_testkit::http_request(
        http,
        "POST",
        &sessions,
        &[("Content-Type", "application/json")],
        Some(r#"{"email": "vera@example.com", "name": "Vera"}"#),
    )
    .await
    .unwrap()
    .json();
    let visit = id(&session["conversation_id"]);
    let visitor_auth = format!("Bearer {}", session["token"].as_str().unwrap());
    let visitor_headers = [("Content-Type", "application/json"), ("Authorization", visitor_auth.as_str())];
    let messages_path = sessions.replace("/sessions", "/messages");
    let mut visitor = hello(http, session["token"].as_str().unwrap()).await;
    subscribe(&mut visitor, json!({"op": "subscribe", "channel": format!("conversation:{visit}")})).await;
    let first =
        chatdesk_testkit::http_request(http, "POST", &messages_path, &visitor_headers, Some(r#"{"text": "hello?"}"#))
            .await
            .unwrap();
    assert_eq!(first.status, 202, "{}", first.body);
    eventually(&owner, &format!("/v1/conversations/{visit}"), "the visitor's conversation", |c| {
        c["id"] == visit.as_str()
    })
    .await;
    let secret = owner
        .call("POST", &format!("/v1/conversations/{visit}/notes"), Some(json!({"text": "looks like a reseller"})))
        .await;
    assert_eq!(secret.status, 202, "{}", secret.body);
    send(&mut agent, json!({"op": "subscribe", "channel": format!("conversation:{visit}")})).await;
    let answer = owner
        .call("POST", &format!("/v1/conversations/{visit}/messages"), Some(json!({"text": "hello visitor"})))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let mut seen = Vec::new();
    loop {
        let frame = next_event(&mut visitor).await;
        seen.push((frame["type"].as_str().unwrap_or_default().to_owned(), frame["data"]["text"].clone()));
        if frame["data"]["text"] == "hello visitor" {
            break;
        }
    }
    assert!(seen.iter().all(|(kind, _)| kind == "message.created" || kind == "typing"), "{seen:?}");
    let history = chatdesk_testkit::http_request(http, "GET", &messages_path, &visitor_headers, None).await.unwrap();
    assert_eq!(history.status, 200, "{}", history.body);
    assert!(!history.body.contains("reseller"), "a note in the visitor's history: {}", history.body);
    eventually(&owner, &format!("/v1/conversations/{visit}/notes"), "the widget note stored", |page| {
        page["items"][0]["text"] == "looks like a reseller"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_canned_responses_contacts_and_search() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@desk.test", "owner-pass-1");
    let tenant_id = id(&tenant["tenant_id"]);
    env.user(&tenant_id, "alice@desk.test", "alice-pass-1", "agent");
    let other = admin(
        &env,
        &["tenant", "create", "--name", "Globex", "--owner-email", "owner@globex.test", "--password", "owner-pass-2"],
    );
    let inbox = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "Mail"]);
    let foreign_inbox =
        admin(&env, &["inbox", "create", "--tenant", &id(&other["tenant_id"]), "--kind", "generic", "--name", "Mail"]);
    let http = free_addr();
    let _server = serve_roles(&env, "ingress,writer,gateway", http, &[]).await;
    let owner = client(http, "owner@desk.test", "owner-pass-1").await;
    let alice = client(http, "alice@desk.test", "alice-pass-1").await;
    let stranger = client(http, "owner@globex.test", "owner-pass-2").await;

    webhook(http, &inbox, "s-1", "cust-1", "my parcel never arrived, order 5521").await;
    webhook(http, &inbox, "s-2", "cust-2", "how do I change my address").await;
    webhook(http, &foreign_inbox, "g-1", "g-cust", "globex parcel question").await;
    let first = conversation_of(&owner, "cust-1").await;
    let second = conversation_of(&owner, "cust-2").await;
    let (first_id, second_id) = (id(&first["id"]), id(&second["id"]));

    // Labels: defined by admins, put on conversations by agents, filtered on.
    let vip = owner.call("POST", "/v1/labels", Some(json!({"name": " VIP ", "colour": "#FF0000"}))).await;
    assert_eq!(vip.status, 201, "{}", vip.body);
    let vip = vip.json();
    assert_eq!((vip["name"].as_str(), vip["colour"].as_str()), (Some("VIP"), Some("#ff0000")));
    let vip_id = id(&vip["id"]);
    assert_eq!(owner.call("POST", "/v1/labels", Some(json!({"name": "vip", "colour": "#00ff00"}))).await.status, 409);
    assert_eq!(owner.call("POST", "/v1/labels", Some(json!({"name": "x", "colour": "red"}))).await.status, 422);
    assert_eq!(alice.call("POST", "/v1/labels", Some(json!({"name": "y", "colour": "#000000"}))).await.status, 403);
    for spoof in ["\u{202e}evil", "\u{200b}", "a\u{2066}b"] {
        let refused = owner.call("POST", "/v1/labels", Some(json!({"name": spoof, "colour": "#000000"}))).await;
        assert_eq!(refused.status, 422, "{spoof:?}: {}", refused.body);
    }
    let foreign_label =
        stranger.call("POST", "/v1/labels", Some(json!({"name": "Theirs", "colour": "#0000ff"}))).await.json();
    let labelled =
        alice.call("POST", &format!("/v1/conversations/{first_id}/labels"), Some(json!({"add": [vip_id]}))).await;
    assert_eq!(labelled.status, 202, "{}", labelled.body);
    let filtered =
        eventually(&alice, &format!("/v1/conversations?label={vip_id}"), "the labelled conversation", |page| {
            page["items"].as_array().unwrap().len() == 1
        })
        .await;
    assert_eq!(filtered["items"][0]["id"], first_id.as_str());
    assert_eq!(filtered["items"][0]["labels"], json!([vip_id]));
    let unlabelled = alice.call("GET", &format!("/v1/conversations/{second_id}"), None).await.json();
    assert_eq!(unlabelled["labels"], json!([]));
    let wrong = alice
        .call("POST", &format!("/v1/conversations/{first_id}/labels"), Some(json!({"add": [foreign_label["id"]]})))
        .await;
    assert_eq!((wrong.status, wrong.json()["error"]["details"]["field"].as_str()), (422, Some("add")));
    let empty = alice.call("POST", &format!("/v1/conversations/{first_id}/labels"), Some(json!({}))).await;
    assert_eq!(empty.status, 422);
    let theirs = stranger
        .call("POST", &format!("/v1/conversations/{first_id}/labels"), Some(json!({"add": [foreign_label["id"]]})))
        .await;
    assert_eq!(theirs.status, 404);
    assert_eq!(stranger.call("DELETE", &format!("/v1/labels/{vip_id}"), None).await.status, 404);

    // Canned responses: shared, found by shortcode, filled in for the conversation and the agent.
    let canned = alice
        .call(
            "POST",
            "/v1/canned_responses",
            Some(json!({"shortcode": "thanks", "text": "Hi {{contact.name}}, this is {{agent.name}}. {{ticket.id}}"})),
        )
        .await;
    assert_eq!(canned.status, 201, "{}", canned.body);
    assert_eq!(
        alice.call("POST", "/v1/canned_responses", Some(json!({"shortcode": "thanks", "text": "again"}))).await.status,
        409
    );
    let bad = alice.call("POST", "/v1/canned_responses", Some(json!({"shortcode": "Thanks!", "text": "x"}))).await;
    assert_eq!((bad.status, bad.json()["error"]["details"]["field"].as_str()), (422, Some("shortcode")));
    // Shared, but an agent changes only its own; owners and admins any.
    let owners =
        owner.call("POST", "/v1/canned_responses", Some(json!({"shortcode": "bye", "text": "Bye!"}))).await.json();
    let theirs = alice
        .call("PATCH", &format!("/v1/canned_responses/{}", owners["id"].as_str().unwrap()), Some(json!({"text": "x"})))
        .await;
    assert_eq!(theirs.status, 403, "{}", theirs.body);
    assert_eq!(
        alice.call("DELETE", &format!("/v1/canned_responses/{}", owners["id"].as_str().unwrap()), None).await.status,
        403
    );
    let own = canned.json();
    let edited = alice
        .call(
            "PATCH",
            &format!("/v1/canned_responses/{}", own["id"].as_str().unwrap()),
            Some(json!({"shortcode": "thanks"})),
        )
        .await;
    assert_eq!(edited.status, 200, "{}", edited.body);
    assert_eq!(
        owner.call("DELETE", &format!("/v1/canned_responses/{}", owners["id"].as_str().unwrap()), None).await.status,
        204
    );
    let rendered = alice.call("GET", &format!("/v1/conversations/{first_id}/canned_responses"), None).await;
    assert_eq!(rendered.status, 200, "{}", rendered.body);
    assert_eq!(rendered.json()["items"][0]["rendered"], "Hi Ana, this is alice. {{ticket.id}}");
    assert_eq!(stranger.call("GET", "/v1/canned_responses", None).await.json()["items"], json!([]));
    assert_eq!(stranger.call("GET", &format!("/v1/conversations/{first_id}/canned_responses"), None).await.status, 404);

    // The contact panel: details, identities, conversations; edited and merged through the stream.
    let contact_id = id(&first["contact"]["id"]);
    let duplicate_id = id(&second["contact"]["id"]);
    let panel = alice.call("GET", &format!("/v1/contacts/{contact_id}"), None).await;
    assert_eq!(panel.status, 200, "{}", panel.body);
    let panel = panel.json();
    assert_eq!(panel["name"], "Ana");
    assert_eq!(panel["identities"][0]["external_id"], "cust-1");
    assert_eq!(panel["conversations"].as_array().unwrap().len(), 1);
    assert!(panel["last_seen_at"].is_string());
    let edited = alice
        .call("PATCH", &format!("/v1/contacts/{contact_id}"), Some(json!({"name": "Ana Lima", "phone": "+1 555 0100"})))
        .await;
    assert_eq!(edited.status, 202, "{}", edited.body);
    eventually(&alice, &format!("/v1/contacts/{contact_id}"), "the edit stored", |contact| {
        contact["name"] == "Ana Lima" && contact["phone"] == "+1 555 0100"
    })
    .await;
    let refused = alice.call("PATCH", &format!("/v1/contacts/{contact_id}"), Some(json!({"email": "not-mail"}))).await;
    assert_eq!((refused.status, refused.json()["error"]["details"]["field"].as_str()), (422, Some("email")));
    assert_eq!(stranger.call("GET", &format!("/v1/contacts/{contact_id}"), None).await.status, 404);
    let merge = alice
        .call("POST", &format!("/v1/contacts/{contact_id}/merge"), Some(json!({"contact_id": duplicate_id})))
        .await;
    assert_eq!(merge.status, 202, "{}", merge.body);
    let merged = eventually(&alice, &format!("/v1/contacts/{contact_id}"), "the conversations moved", |contact| {
        contact["conversations"].as_array().unwrap().len() == 2
    })
    .await;
    assert_eq!(merged["identities"].as_array().unwrap().len(), 2);
    let alias = alice.call("GET", &format!("/v1/contacts/{duplicate_id}"), None).await.json();
    assert_eq!(alias["id"], contact_id.as_str(), "a merged contact answers as the one it joined");
    let moved = alice.call("GET", &format!("/v1/conversations/{second_id}"), None).await.json();
    assert_eq!(moved["contact"]["id"], contact_id.as_str());
    let again = alice
        .call("POST", &format!("/v1/contacts/{contact_id}/merge"), Some(json!({"contact_id": duplicate_id})))
        .await;
    assert_eq!(again.status, 422, "{}", again.body);
    // The merged identity writes again: its conversation, now the survivor's, gets the message.
    webhook(http, &inbox, "s-3", "cust-2", "any news on the address").await;
    eventually(&alice, &format!("/v1/conversations/{second_id}/messages"), "the new message", |page| {
        page["items"].as_array().unwrap().len() == 2
    })
    .await;

    // Every route, called by another tenant with this tenant's ids: 404, and nothing changes.
    let canned_id = id(&alice.call("GET", "/v1/canned_responses", None).await.json()["items"][0]["id"]);
    let inbox_id = id(&inbox["inbox_id"]);
    let calls: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/v1/conversations/{first_id}"), None),
        ("GET", format!("/v1/conversations/{first_id}/notes"), None),
        ("POST", format!("/v1/conversations/{first_id}/notes"), Some(json!({"text": "x"}))),
        ("POST", format!("/v1/conversations/{first_id}/labels"), Some(json!({"remove": [foreign_label["id"]]}))),
        ("GET", format!("/v1/conversations/{first_id}/canned_responses"), None),
        ("DELETE", format!("/v1/labels/{vip_id}"), None),
        ("PATCH", format!("/v1/canned_responses/{canned_id}"), Some(json!({"text": "taken over"}))),
        ("DELETE", format!("/v1/canned_responses/{canned_id}"), None),
        ("GET", format!("/v1/contacts/{contact_id}"), None),
        ("PATCH", format!("/v1/contacts/{contact_id}"), Some(json!({"name": "Mallory"}))),
        ("POST", format!("/v1/contacts/{contact_id}/merge"), Some(json!({"contact_id": duplicate_id}))),
        ("GET", format!("/v1/inboxes/{inbox_id}/members"), None),
        ("PUT", format!("/v1/inboxes/{inbox_id}/members"), Some(json!({"user_ids": []}))),
        ("GET", format!("/v1/inboxes/{inbox_id}/routing"), None),
        ("PUT", format!("/v1/inboxes/{inbox_id}/routing"), Some(json!({"mode": "manual", "agent_capacity": 3}))),
    ];
    for (method, path, body) in calls {
        let answer = stranger.call(method, &path, body).await;
        assert_eq!(answer.status, 404, "{method} {path}: {}", answer.body);
    }
    // With another tenant's ids in the body: refused by field.
    let foreign_contact = conversation_of(&stranger, "g-cust").await["contact"]["id"].clone();
    let merge_theirs = alice
        .call("POST", &format!("/v1/contacts/{contact_id}/merge"), Some(json!({"contact_id": foreign_contact})))
        .await;
    assert_eq!(merge_theirs.status, 404, "{}", merge_theirs.body);
    assert_eq!(
        alice.call("GET", "/v1/canned_responses", None).await.json()["items"][0]["text"]
            .as_str()
            .map(|text| text.starts_with("Hi ")),
        Some(true)
    );
    assert_eq!(alice.call("GET", &format!("/v1/contacts/{contact_id}"), None).await.json()["name"], "Ana Lima");

    // Search: a word of a message, ranked and marked, never another tenant's.
    let found = alice.call("GET", "/v1/search?q=parcel", None).await;
    assert_eq!(found.status, 200, "{}", found.body);
    let found = found.json();
    let hits = found["messages"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{found}");
    assert_eq!(hits[0]["conversation_id"], first_id.as_str());
    assert!(hits[0]["snippet"].as_str().unwrap().contains("\u{2063}[parcel]\u{2063}"), "{found}");
    let theirs = stranger.call("GET", "/v1/search?q=parcel", None).await.json();
    assert_eq!(theirs["messages"].as_array().unwrap().len(), 1);
    assert!(theirs["messages"][0]["snippet"].as_str().unwrap().contains("globex"), "{theirs}");
    let people = alice.call("GET", "/v1/search?q=lima", None).await.json();
    assert_eq!(people["contacts"][0]["id"], contact_id.as_str());
    assert_eq!(alice.call("GET", "/v1/search?q=%20%20", None).await.status, 400);
    let paged = alice.call("GET", "/v1/search?q=my&limit=1", None).await.json();
    assert_eq!(paged["messages"].as_array().unwrap().len(), 1);
    let cursor = id(&paged["next_cursor"]);
    let rest = alice.call("GET", &format!("/v1/search?q=my&limit=1&cursor={cursor}"), None).await.json();
    assert_ne!(rest["messages"][0]["message_id"], paged["messages"][0]["message_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_gives_online_members_turns_up_to_their_capacity() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@route.test", "owner-pass-1");
    let tenant_id = id(&tenant["tenant_id"]);
    let mut members = Vec::new();
    for name in ["ann", "ben", "cat"] {
        members.push(id(
            &env.user(&tenant_id, &format!("{name}@route.test"), &format!("{name}-pass-1"), "agent")["user_id"],
        ));
    }
    let dan_id = id(&env.user(&tenant_id, "dan@route.test", "dan-pass-1", "agent")["user_id"]);
    let inbox = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "Queue"]);
    let inbox_id = id(&inbox["inbox_id"]);
    let open = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "Open"]);
    let http = free_addr();
    let _server = serve_roles(&env, "ingress,writer,gateway,autoreply", http, &[]).await;
    let owner = client(http, "owner@route.test", "owner-pass-1").await;
    let dan = client(http, "dan@route.test", "dan-pass-1").await;

    let set = owner.call("PUT", &format!("/v1/inboxes/{inbox_id}/members"), Some(json!({"user_ids": members}))).await;
    assert_eq!(set.status, 200, "{}", set.body);
    let routing = owner
        .call(
            "PUT",
            &format!("/v1/inboxes/{inbox_id}/routing"),
            Some(json!({"mode": "round_robin", "agent_capacity": 10})),
        )
        .await;
    assert_eq!(routing.status, 200, "{}", routing.body);
    assert_eq!(
        owner
            .call(
                "PUT",
                &format!("/v1/inboxes/{inbox_id}/routing"),
                Some(json!({"mode": "random", "agent_capacity": 10}))
            )
            .await
            .status,
        422
    );
    let outsider = owner
        .call("PUT", &format!("/v1/inboxes/{inbox_id}/members"), Some(json!({"user_ids": [uuid::Uuid::now_v7()]})))
        .await;
    assert_eq!(outsider.status, 422);

    // The three members are online (a socket each); the owner watches presence.
    let mut sockets = Vec::new();
    for name in ["ann", "ben", "cat"] {
        let agent = client(http, &format!("{name}@route.test"), &format!("{name}-pass-1")).await;
        sockets.push(hello(http, &agent.token).await);
    }
    let mut watcher = hello(http, &owner.token).await;
    subscribe(&mut watcher, json!({"op": "subscribe", "channel": "inbox"})).await;

    // Open conversations an agent holds.
    let counts = |page: &Value, agent: &str| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| item["assignee_id"] == agent && item["status"] == "open")
            .count()
    };
    for index in 0..30 {
        webhook(http, &inbox, &format!("r-{index}"), &format!("cust-{index}"), "hello").await;
    }
    let list = format!("/v1/conversations?inbox={inbox_id}&limit=200");
    let page = eventually(&owner, &list, "30 conversations assigned", |page| {
        let items = page["items"].as_array().unwrap();
        items.len() == 30 && items.iter().all(|item| item["assignee_id"].is_string())
    })
    .await;
    for member in &members {
        assert_eq!(counts(&page, member), 10, "{member} of {members:?}");
    }

    // A member who is not in the inbox sees none of it; the open inbox is everyone's.
    webhook(http, &open, "o-1", "walk-in", "anyone there?").await;
    let visible = eventually(&dan, "/v1/conversations?limit=200", "the open inbox's conversation", |page| {
        !page["items"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(visible["items"].as_array().unwrap().len(), 1, "only the open inbox: {visible}");
    let hidden = id(&page["items"][0]["id"]);
    assert_eq!(dan.call("GET", &format!("/v1/conversations/{hidden}"), None).await.status, 404);
    assert_eq!(dan.call("GET", &format!("/v1/conversations/{hidden}/messages"), None).await.status, 404);
    let reply = dan.call("POST", &format!("/v1/conversations/{hidden}/messages"), Some(json!({"text": "hi"}))).await;
    assert_eq!(reply.status, 404);
    assert_eq!(dan.call("GET", "/v1/search?q=hello", None).await.json()["messages"], json!([]));
    // Nor over the WebSocket: the conversation's channel is refused, the inbox channel leaves it out.
    let mut dan_socket = hello(http, &dan.token).await;
    send(&mut dan_socket, json!({"op": "subscribe", "channel": format!("conversation:{hidden}")})).await;
    assert_eq!(next(&mut dan_socket).await["code"], "not_found");
    send(&mut dan_socket, json!({"op": "send", "conversation": hidden, "text": "hi", "client_msg_id": "d-1"})).await;
    assert_eq!(next(&mut dan_socket).await["code"], "not_found");
    send(&mut dan_socket, json!({"op": "read", "conversation": hidden, "offset": "1-0"})).await;
    assert_eq!(next(&mut dan_socket).await["code"], "not_found");
    let hidden_contact = id(&page["items"][0]["contact"]["id"]);
    assert_eq!(dan.call("GET", &format!("/v1/contacts/{hidden_contact}"), None).await.status, 404);
    let patched =
        dan.call("PATCH", &format!("/v1/contacts/{hidden_contact}"), Some(json!({"email": "x@evil.test"}))).await;
    assert_eq!(patched.status, 404);
    let query = format!("/v1/search?q={}", page["items"][0]["contact"]["external_id"].as_str().unwrap());
    let found = dan.call("GET", &query, None).await;
    assert_eq!(found.json()["contacts"], json!([]));
    let outsider = id(&env.user(&tenant_id, "eve@route.test", "eve-pass-1", "agent")["user_id"]);
    let mention = owner
        .call(
            "POST",
            &format!("/v1/conversations/{hidden}/notes"),
            Some(json!({"text": "see this", "mentions": [outsider]})),
        )
        .await;
    assert_eq!((mention.status, mention.json()["error"]["details"]["field"].as_str()), (422, Some("mentions")));
    subscribe(&mut dan_socket, json!({"op": "subscribe", "channel": "inbox"})).await;
    let edit =
        owner.call("PATCH", &format!("/v1/contacts/{hidden_contact}"), Some(json!({"name": "Members Only"}))).await;
    assert_eq!(edit.status, 202, "{}", edit.body);
    webhook(http, &inbox, "h-1", "cust-0", "members only words").await;
    webhook(http, &open, "o-2", "walk-in-2", "open words").await;
    let seen = loop {
        let frame = next_event(&mut dan_socket).await;
        if frame["type"] == "message.created" {
            break frame;
        }
        assert_ne!(frame["data"]["inbox_id"], inbox_id.as_str(), "the queue's event reached a non-member: {frame}");
        assert_ne!(frame["type"], "contact.updated", "the queue's contact reached a non-member: {frame}");
    };
    assert_eq!(seen["data"]["text"], "open words");

    // Two of each member's conversations resolved; the third member goes offline.
    for member in &members {
        let theirs: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| item["assignee_id"] == member.as_str())
            .take(2)
            .map(|item| id(&item["id"]))
            .collect();
        for conversation in theirs {
            let resolved = owner.call("POST", &format!("/v1/conversations/{conversation}/resolve"), None).await;
            assert_eq!(resolved.status, 202);
        }
    }
    let gone = sockets.pop().unwrap();
    drop(gone);
    loop {
        let frame = next_event(&mut watcher).await;
        if frame["type"] == "presence"
            && frame["data"]["user_id"] == members[2].as_str()
            && frame["data"]["online"] == false
        {
            break;
        }
    }
    for index in 30..34 {
        webhook(http, &inbox, &format!("r-{index}"), &format!("cust-{index}"), "hello again").await;
    }
    let page = eventually(&owner, &list, "the new ones assigned", |page| {
        let items = page["items"].as_array().unwrap();
        items.len() == 34
            && items.iter().filter(|item| item["status"] == "open").all(|item| item["assignee_id"].is_string())
    })
    .await;
    let newest: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| {
            item["contact"]["external_id"]
                .as_str()
                .is_some_and(|external| (30..34).any(|index| external == format!("cust-{index}")))
        })
        .collect();
    assert_eq!(newest.len(), 4);
    assert!(newest.iter().all(|item| item["assignee_id"] != members[2].as_str()), "an offline member got one");
    assert_eq!(counts(&page, &members[0]), 10);
    assert_eq!(counts(&page, &members[1]), 10);

    // Everyone online is full: the next one waits, unassigned and listed as such.
    let waited = r#"chatdesk_router_assignments_total{outcome="waiting"}"#;
    assert_eq!(metric(http, waited).await, 0.0);
    webhook(http, &inbox, "r-34", "cust-34", "still waiting").await;
    chatdesk_testkit::eventually("the router's decision", std::time::Duration::from_secs(30), || async {
        (metric(http, waited).await == 1.0).then_some(())
    })
    .await;
    let waiting =
        eventually(&owner, &format!("/v1/conversations?inbox={inbox_id}&assignee=none"), "one waiting", |page| {
            page["items"].as_array().unwrap().len() == 1
        })
        .await;
    assert_eq!(waiting["items"][0]["contact"]["external_id"], "cust-34");

    // The router keeps each inbox's routing once read; a change of members or routing reaches
    // it at once, not when its copy ages out.
    let hits = r#"chatdesk_router_routing_lookups_total{outcome="hit"}"#;
    assert!(metric(http, hits).await > 0.0, "the router read the inbox's routing for every conversation");
    let with_dan = json!({"user_ids": [members[0], members[1], members[2], dan_id]});
    assert_eq!(owner.call("PUT", &format!("/v1/inboxes/{inbox_id}/members"), Some(with_dan)).await.status, 200);
    let assignee_of = |external: &'static str| {
        let owner = &owner;
        let list = list.clone();
        async move {
            let page = eventually(owner, &list, external, |page| {
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|item| item["contact"]["external_id"] == external && item["assignee_id"].is_string())
            })
            .await;
            let items = page["items"].as_array().unwrap();
            let item = items.iter().find(|item| item["contact"]["external_id"] == external).unwrap();
            id(&item["assignee_id"])
        }
    };
    webhook(http, &inbox, "r-35", "cust-35", "a new member is online").await;
    assert_eq!(assignee_of("cust-35").await, dan_id);
    let without_dan = json!({"user_ids": [members[0], members[1]]});
    assert_eq!(owner.call("PUT", &format!("/v1/inboxes/{inbox_id}/members"), Some(without_dan)).await.status, 200);
    webhook(http, &inbox, "r-36", "cust-36", "only full members left").await;
    chatdesk_testkit::eventually("the router's decision", std::time::Duration::from_secs(30), || async {
        (metric(http, waited).await == 2.0).then_some(())
    })
    .await;
    let roomier = json!({"mode": "round_robin", "agent_capacity": 11});
    assert_eq!(owner.call("PUT", &format!("/v1/inboxes/{inbox_id}/routing"), Some(roomier)).await.status, 200);
    webhook(http, &inbox, "r-37", "cust-37", "room again").await;
    let chosen = assignee_of("cust-37").await;
    assert!(chosen == members[0] || chosen == members[1], "{chosen} is not one of the members left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_agent_gets_one_email_for_what_happened_while_away() {
    use fred::prelude::*;

    let env = Env::start().await;
    let tenant = env.tenant("owner@mail.test", "owner-pass-1");
    let tenant_id = id(&tenant["tenant_id"]);
    let ann = id(&env.user(&tenant_id, "ann@mail.test", "ann-pass-1", "agent")["user_id"]);
    let bob = id(&env.user(&tenant_id, "bob@mail.test", "bob-pass-1", "agent")["user_id"]);
    let inbox = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "Mail"]);
    let web = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "web", "--name", "Site"]);
    let smtp = crate::smtp::SmtpStandIn::start().await;
    let smtp_url = smtp.url();
    let http = free_addr();
    let settings = [
        ("CHATDESK_SMTP_URL", smtp_url.as_str()),
        ("CHATDESK_SMTP_FROM", "Desk <desk@mail.test>"),
        ("CHATDESK_PUBLIC_URL", "https://desk.example"),
        ("CHATDESK_NOTIFY_DELAY", "1s"),
        ("CHATDESK_NOTIFY_INTERVAL", "1h"),
        ("CHATDESK_WIDGET_STANDBY", "2s"),
    ];
    let _server = serve_roles(&env, "ingress,writer,gateway,sender", http, &settings).await;
    let owner = client(http, "owner@mail.test", "owner-pass-1").await;
    let bob_client = client(http, "bob@mail.test", "bob-pass-1").await;
    let _bob_online = hello(http, &bob_client.token).await;

    // Three conversations assigned to Ann while she is away, a note naming her and Bob (who is
    // online), and the customers writing on: one e-mail, to Ann alone, with all of it.
    let mut conversations = Vec::new();
    for index in 0..3 {
        webhook(http, &inbox, &format!("m-{index}"), &format!("cust-{index}"), "hello").await;
        conversations.push(id(&conversation_of(&owner, &format!("cust-{index}")).await["id"]));
    }
    for conversation in &conversations {
        let assigned = owner
            .call("POST", &format!("/v1/conversations/{conversation}/assign"), Some(json!({"assignee_id": ann})))
            .await;
        assert_eq!(assigned.status, 202, "{}", assigned.body);
    }
    let note = owner
        .call(
            "POST",
            &format!("/v1/conversations/{}/notes", conversations[0]),
            Some(json!({"text": "@ann @bob VIP customer", "mentions": [ann, bob]})),
        )
        .await;
    assert_eq!(note.status, 202, "{}", note.body);
    for index in 0..3 {
        webhook(http, &inbox, &format!("m-more-{index}"), &format!("cust-{index}"), "anyone?").await;
    }
    let mails = smtp.wait_for(1).await;
    assert_eq!(mails[0].to, ["ann@mail.test"]);
    assert!(mails[0].from.contains("desk@mail.test"), "{}", mails[0].from);
    let data = &mails[0].text();
    assert!(data.contains("Subject: chatdesk: 3 conversations assigned to you, 1 mention"), "{data}");
    for conversation in &conversations {
        assert!(data.contains(&format!("https://desk.example/#/inbox/{conversation}")), "{data}");
    }
    assert!(data.contains("VIP customer"), "{data}");

    // Another assignment within the interval waits for it instead of making a second e-mail.
    let more = owner
        .call("POST", &format!("/v1/conversations/{}/assign", conversations[1]), Some(json!({"assignee_id": bob})))
        .await;
    assert_eq!(more.status, 202);
    let again = owner
        .call("POST", &format!("/v1/conversations/{}/assign", conversations[1]), Some(json!({"assignee_id": ann})))
        .await;
    assert_eq!(again.status, 202);
    let redis = crate::support::redis_client(&env).await;
    let keys = chatdesk_core::KeyScheme::new(&env.prefix).unwrap();
    let recipient = format!("agent:{tenant_id}:{ann}");
    let pending = keys.notify_pending(&recipient);
    chatdesk_testkit::eventually("the new assignment held back", std::time::Duration::from_secs(30), || async {
        let waiting: i64 = redis.hlen(&pending).await.unwrap();
        let due: Option<f64> = redis.zscore(keys.notify_due(), &recipient).await.unwrap();
        let held = due.is_some_and(|due| due > (chatdesk_core::envelope::now_ms() + 30 * 60 * 1000) as f64);
        (waiting == 1 && held).then_some(())
    })
    .await;
    assert_eq!(smtp.mails().len(), 1, "one e-mail per interval");

    // A widget visitor who left gets the reply by e-mail; one still on the page does not.
    let sessions = id(&web["webhook_path"]);
    let session = chatdesk_testkit::http_request(
        http,
        "POST",
        &sessions,
        &[("Content-Type", "application/json")],
        Some(r#"{"email": "vera@example.com", "name": "Vera"}"#),
    )
    .await
    .unwrap()
    .json();
    let visit = id(&session["conversation_id"]);
    let visitor_auth = format!("Bearer {}", session["token"].as_str().unwrap());
    let visitor_headers = [("Content-Type", "application/json"), ("Authorization", visitor_auth.as_str())];
    let mut visitor = hello(http, session["token"].as_str().unwrap()).await;
    subscribe(&mut visitor, json!({"op": "subscribe", "channel": format!("conversation:{visit}")})).await;
    let first = chatdesk_testkit::http_request(
        http,
        "POST",
        &sessions.replace("/sessions", "/messages"),
        &visitor_headers,
        Some(r#"{"text": "is anyone there?"}"#),
    )
    .await
    .unwrap();
    assert_eq!(first.status, 202, "{}", first.body);
    eventually(&owner, &format!("/v1/conversations/{visit}"), "the visit", |c| c["id"] == visit.as_str()).await;
    let seen = owner
        .call("POST", &format!("/v1/conversations/{visit}/messages"), Some(json!({"text": "yes, seen live"})))
        .await;
    assert_eq!(seen.status, 202);
    let visitor_recipient = format!("visitor:{tenant_id}:{visit}");
    let skipped = r#"chatdesk_notify_emails_total{outcome="skipped"}"#;
    chatdesk_testkit::eventually("the live reply not e-mailed", std::time::Duration::from_secs(30), || async {
        let due: Option<f64> = redis.zscore(keys.notify_due(), &visitor_recipient).await.unwrap();
        (due.is_none() && metric(http, skipped).await == 1.0).then_some(())
    })
    .await;
    drop(visitor);
    let later = owner
        .call(
            "POST",
            &format!("/v1/conversations/{visit}/messages"),
            Some(json!({"text": "your refund is on its way"})),
        )
        .await;
    assert_eq!(later.status, 202);
    let mails = smtp.wait_for(2).await;
    assert_eq!(mails[1].to, ["vera@example.com"]);
    let text = mails[1].text();
    assert!(text.contains("your refund is on its way"), "{text}");
    assert!(!text.contains("seen live"), "{text}");
    let link = format!("https://desk.example/demo?inbox={}", id(&web["inbox_id"]));
    assert!(text.contains(&link), "{link} in {text}");

    // The same address in another visitor's conversation waits for the address's interval.
    let again = chatdesk_testkit::http_request(
        http,
        "POST",
        &sessions,
        &[("Content-Type", "application/json")],
        Some(r#"{"email": "Vera@Example.com", "name": "Vera again"}"#),
    )
    .await
    .unwrap()
    .json();
    let second_visit = id(&again["conversation_id"]);
    let again_auth = format!("Bearer {}", again["token"].as_str().unwrap());
    let written = chatdesk_testkit::http_request(
        http,
        "POST",
        &sessions.replace("/sessions", "/messages"),
        &[("Content-Type", "application/json"), ("Authorization", again_auth.as_str())],
        Some(r#"{"text": "me again"}"#),
    )
    .await
    .unwrap();
    assert_eq!(written.status, 202, "{}", written.body);
    eventually(&owner, &format!("/v1/conversations/{second_visit}"), "the second visit", |c| {
        c["id"] == second_visit.as_str()
    })
    .await;
    let reply = owner
        .call("POST", &format!("/v1/conversations/{second_visit}/messages"), Some(json!({"text": "hello again"})))
        .await;
    assert_eq!(reply.status, 202);
    let second_recipient = format!("visitor:{tenant_id}:{second_visit}");
    chatdesk_testkit::eventually(
        "the second visit's e-mail held for the address",
        std::time::Duration::from_secs(30),
        || async {
            let due: Option<f64> = redis.zscore(keys.notify_due(), &second_recipient).await.unwrap();
            due.is_some_and(|due| due > (chatdesk_core::envelope::now_ms() + 30 * 60 * 1000) as f64).then_some(())
        },
    )
    .await;
    assert_eq!(smtp.mails().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_agents_unanswered_conversations_go_to_others_after_the_grace() {
    let env = Env::start().await;
    let tenant = env.tenant("owner@grace.test", "owner-pass-1");
    let tenant_id = id(&tenant["tenant_id"]);
    let ann = id(&env.user(&tenant_id, "ann@grace.test", "ann-pass-1", "agent")["user_id"]);
    let ben = id(&env.user(&tenant_id, "ben@grace.test", "ben-pass-1", "agent")["user_id"]);
    let inbox = admin(&env, &["inbox", "create", "--tenant", &tenant_id, "--kind", "generic", "--name", "Queue"]);
    let inbox_id = id(&inbox["inbox_id"]);
    let http = free_addr();
    let _server = serve_roles(&env, "ingress,writer,gateway,autoreply", http, &[]).await;
    let owner = client(http, "owner@grace.test", "owner-pass-1").await;
    let ann_client = client(http, "ann@grace.test", "ann-pass-1").await;
    let ben_client = client(http, "ben@grace.test", "ben-pass-1").await;
    let members =
        owner.call("PUT", &format!("/v1/inboxes/{inbox_id}/members"), Some(json!({"user_ids": [ann, ben]}))).await;
    assert_eq!(members.status, 200, "{}", members.body);
    let routing = json!({"mode": "round_robin", "agent_capacity": 10, "reassign_after_seconds": 1});
    let set = owner.call("PUT", &format!("/v1/inboxes/{inbox_id}/routing"), Some(routing.clone())).await;
    assert_eq!((set.status, set.json()), (200, routing));
    let ann_socket = hello(http, &ann_client.token).await;
    let _ben_socket = hello(http, &ben_client.token).await;
    let mut watcher = hello(http, &owner.token).await;
    subscribe(&mut watcher, json!({"op": "subscribe", "channel": "inbox"})).await;

    for index in 0..4 {
        webhook(http, &inbox, &format!("g-{index}"), &format!("cust-{index}"), "help").await;
    }
    let list = format!("/v1/conversations?inbox={inbox_id}&limit=200");
    let page = eventually(&owner, &list, "four assigned", |page| {
        let items = page["items"].as_array().unwrap();
        items.len() == 4 && items.iter().all(|item| item["assignee_id"].is_string())
    })
    .await;
    let anns: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["assignee_id"] == ann.as_str())
        .map(|item| id(&item["id"]))
        .collect();
    assert_eq!(anns.len(), 2, "{page}");
    // Ann answers one of hers, then leaves.
    let answered = &anns[0];
    let reply = ann_client
        .call("POST", &format!("/v1/conversations/{answered}/messages"), Some(json!({"text": "on it"})))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    eventually(&owner, &format!("/v1/conversations/{answered}"), "the answer stored", |c| c["unread_count"] == 0).await;
    drop(ann_socket);
    loop {
        let frame = next_event(&mut watcher).await;
        if frame["type"] == "presence" && frame["data"]["user_id"] == ann.as_str() && frame["data"]["online"] == false {
            break;
        }
    }
    let waiting = &anns[1];
    eventually(&owner, &format!("/v1/conversations/{waiting}"), "the unanswered one moved to Ben", |c| {
        c["assignee_id"] == ben.as_str()
    })
    .await;
    let kept = owner.call("GET", &format!("/v1/conversations/{answered}"), None).await.json();
    assert_eq!(kept["assignee_id"], ann.as_str(), "an answered conversation stays with its agent");
    assert_eq!(metric(http, r#"chatdesk_router_assignments_total{outcome="reassigned"}"#).await, 1.0);
    let refused = owner
        .call(
            "PUT",
            &format!("/v1/inboxes/{inbox_id}/routing"),
            Some(json!({"mode": "round_robin", "agent_capacity": 10, "reassign_after_seconds": 0})),
        )
        .await;
    assert_eq!(
        (refused.status, refused.json()["error"]["details"]["field"].as_str()),
        (422, Some("reassign_after_seconds"))
    );
}
