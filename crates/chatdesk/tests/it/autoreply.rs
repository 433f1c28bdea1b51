//! Auto-reply against a model stand-in speaking the chat-completions API and a generic-channel
//! receiver: one answer per burst of messages, with the system prompt and history; timeouts,
//! errors and the model's handoff tool; the order flow end to end; every handoff reason once;
//! a full replay of the events stream answering nothing; bad settings refused.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Child;

use crate::standin::{Answer, Received, StandIn};
use crate::support::{
    Client, Env, admin, conversation_of, generic_body, generic_inbox, login, metric, post_generic, serve_roles,
};

const ROLES: &str = "ingress,writer,gateway,sender,autoreply";
const SYSTEM_PROMPT: &str = "You are Acme's assistant. Answer in one sentence.";

/// A chat completion whose message is `text`.
fn completion(text: &str) -> Answer {
    Answer::json(
        200,
        json!({
            "id": "chatcmpl-test", "object": "chat.completion", "created": 1_764_000_000, "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}
        }),
    )
}

/// A chat completion calling the `handoff` tool.
fn handoff_call(reason: &str) -> Answer {
    let arguments = json!({ "reason": reason }).to_string();
    Answer::json(
        200,
        json!({
            "id": "chatcmpl-tool", "object": "chat.completion", "created": 1_764_000_000, "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "handoff", "arguments": arguments}}]}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}
        }),
    )
}

/// The last customer message of a chat-completions request.
fn last_user(request: &Received) -> String {
    request.body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|message| message["role"] == "user"))
        .and_then(|message| message["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Every user message of a request, in order.
fn user_texts(request: &Received) -> Vec<String> {
    request.body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter(|message| message["role"] == "user")
                .filter_map(|message| message["content"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A model that answers by what the customer said last: "slow" takes 30 s, "boom" fails with
/// 500, "escalate" calls `handoff`, anything else is echoed back.
fn scripted_model(request: &Received, _earlier: usize) -> Answer {
    let said = last_user(request);
    if said.contains("slow") {
        return completion("too late").after(Duration::from_secs(30));
    }
    if said.contains("boom") {
        return Answer::json(500, json!({"error": {"message": "the model is down", "type": "server_error"}}));
    }
    if said.contains("escalate") {
        return handoff_call("the customer wants a refund decision");
    }
    if said.contains("overflow") {
        // A hostile endpoint's usage figures: counted bounded, never overflowing.
        return Answer::json(
            200,
            json!({"choices": [{"message": {"role": "assistant", "content": "Bot: counted"}}],
                "usage": {"prompt_tokens": u64::MAX, "completion_tokens": 5, "total_tokens": 1}}),
        );
    }
    completion(&format!("Bot: {said}"))
}

struct Bots {
    env: Env,
    http: SocketAddr,
    _server: Child,
    admin: Client,
    agent: Client,
    agent_id: String,
    inbox: Value,
    receiver: StandIn,
    model: StandIn,
}

impl Bots {
    async fn start(extra_env: &[(&str, &str)]) -> Self {
        let env = Env::start().await;
        let receiver = StandIn::start(
            |request| request.body["to"].as_str().unwrap_or_default().to_owned(),
            |_, _| Answer::json(200, json!({"id": "delivered"})),
        )
        .await;
        let model = StandIn::start(last_user, scripted_model).await;
        let http: SocketAddr = chatdesk_testkit::free_addr();
        let server = serve_roles(&env, ROLES, http, extra_env).await;
        let tenant = env.tenant("owner@bots.test", "owner-pass-1")["tenant_id"].as_str().unwrap().to_owned();
        let agent = env.user(&tenant, "agent@bots.test", "agent-pass-1", "agent");
        let agent_id = agent["user_id"].as_str().unwrap().to_owned();
        let admin_token =
            login(http, "owner@bots.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
        let agent_token =
            login(http, "agent@bots.test", "agent-pass-1").await.json()["token"].as_str().unwrap().to_owned();
        let inbox = generic_inbox(&env, &tenant, "Support", &format!("{}/replies", receiver.url()));
        Self {
            env,
            http,
            _server: server,
            admin: Client { http, token: admin_token },
            agent: Client { http, token: agent_token },
            agent_id,
            inbox,
            receiver,
            model,
        }
    }

    fn inbox_id(&self) -> &str {
        self.inbox["inbox_id"].as_str().unwrap()
    }

    async fn configure(&self, settings: Value) {
        let path = format!("/v1/inboxes/{}/autoreply", self.inbox_id());
        let response = self.admin.call("PUT", &path, Some(settings)).await;
        assert_eq!(response.status, 200, "{}", response.body);
    }

    fn llm(&self, extra: Value) -> Value {
        let mut llm = json!({
            "base_url": format!("{}/v1", self.model.url()),
            "api_key": "sk-test-key",
            "model": "test-model",
            "system_prompt": SYSTEM_PROMPT,
            "timeout_ms": 3000,
        });
        for (key, value) in extra.as_object().unwrap() {
            llm[key] = value.clone();
        }
        llm
    }

    async fn customer_says(&self, message_id: &str, from: &str, text: &str) {
        let response = post_generic(self.http, &self.inbox, &generic_body(message_id, from, text)).await;
        assert!(response.status < 300, "{}", response.body);
    }

    /// Waits until the receiver got a message to `to` containing `text`; returns all it got for `to`.
    async fn delivered(&self, to: &str, text: &str) -> Vec<String> {
        let received = self
            .receiver
            .wait_for(&format!("a reply to {to} containing {text:?}"), |received| {
                received.iter().any(|request| request.body["to"] == to && request.raw.contains(text))
            })
            .await;
        deliveries_to(&received, to)
    }

    fn model_calls_about(&self, text: &str) -> usize {
        self.model
            .received()
            .iter()
            .filter(|request| user_texts(request).iter().any(|said| said.contains(text)))
            .count()
    }

    async fn conversation(&self, external_id: &str) -> String {
        conversation_of(&self.agent, external_id).await["id"].as_str().unwrap().to_owned()
    }

    /// The reasons of the conversation's stored handoff events, once `count` are stored.
    async fn handoffs(&self, conversation: &str, count: usize) -> Vec<String> {
        let pool = sqlx::PgPool::connect(&self.env.database_url).await.unwrap();
        let conversation: uuid::Uuid = conversation.parse().unwrap();
        let reasons = chatdesk_testkit::eventually(
            &format!("{count} handoff event(s) stored"),
            Duration::from_secs(30),
            || async {
                let reasons: Vec<(String,)> = sqlx::query_as(
                    "SELECT payload->>'reason' FROM events WHERE type = 'conversation.handoff' AND conversation_id = $1 \
                     ORDER BY offset_ms, offset_seq",
                )
                .bind(conversation)
                .fetch_all(&pool)
                .await
                .unwrap();
                (reasons.len() >= count).then_some(reasons)
            },
        )
        .await;
        pool.close().await;
        reasons.into_iter().map(|(reason,)| reason).collect()
    }

    /// A customer in a new conversation gets the bot's answer: everything the bot had to do
    /// before (it answers in due order) is done.
    async fn sentinel(&self, name: &str) {
        let from = format!("sentinel-{name}");
        self.customer_says(&format!("m-{from}"), &from, &format!("sentinel {name}")).await;
        self.receiver
            .wait_for(&format!("the bot's answer to {from}"), |received| !deliveries_to(received, &from).is_empty())
            .await;
    }

    /// Replays the whole events stream into the `autoreply` group, as an operator would; returns
    /// once the group has handled it. The server must run with `streams` (short claim times).
    async fn replay_events(&self, streams: &std::path::Path) {
        let output = crate::support::replay_into(&self.env, streams, "autoreply", "0");
        assert!(output.contains("[Done]"), "{output}");
    }
}

fn deliveries_to(received: &[Received], to: &str) -> Vec<String> {
    received
        .iter()
        .filter(|request| request.body["to"] == to)
        .map(|request| request.body["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn wait_metric(http: SocketAddr, name: &str, at_least: f64) {
    chatdesk_testkit::wait_until(&format!("{name} reaches {at_least}"), Duration::from_secs(60), || async {
        metric(http, name).await >= at_least
    })
    .await;
}

#[tokio::test]
async fn the_model_answers_a_burst_once_with_prompt_and_history_and_a_replay_answers_nothing() {
    let streams = crate::support::quick_claims();
    let streams_path = streams.path().display().to_string();
    let bots = Bots::start(&[("CHATDESK_STREAMS", &streams_path)]).await;
    let llm = bots.llm(json!({}));
    // A quiet period long enough that three webhooks sent back to back fall into one burst.
    bots.configure(json!({"mode": "llm", "llm": llm, "debounce_ms": 1500})).await;

    for (index, text) in ["Hi there", "my order #123 is late", "can you check?"].iter().enumerate() {
        bots.customer_says(&format!("m-ana-{index}"), "ana", text).await;
    }
    let replies = bots.delivered("ana", "Bot: can you check?").await;
    assert_eq!(replies, ["Bot: can you check?"], "one answer for the burst");
    let calls = bots.model.received();
    assert_eq!(calls.len(), 1, "one model call for three messages");
    let call = &calls[0];
    assert_eq!(call.path, "/v1/chat/completions");
    assert_eq!(call.headers.get("authorization").map(String::as_str), Some("Bearer sk-test-key"));
    assert_eq!(call.body["model"], "test-model");
    assert_eq!(call.body["messages"][0], json!({"role": "system", "content": SYSTEM_PROMPT}));
    assert_eq!(user_texts(call), ["Hi there", "my order #123 is late", "can you check?"]);
    assert_eq!(call.body["tools"][0]["function"]["name"], "handoff");

    // The next message carries the history with roles: the customer's and the bot's.
    bots.customer_says("m-ana-3", "ana", "thanks").await;
    bots.delivered("ana", "Bot: thanks").await;
    let second = bots.model.received().pop().unwrap();
    let roles: Vec<&str> =
        second.body["messages"].as_array().unwrap().iter().map(|message| message["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "user", "user", "assistant", "user"]);
    assert_eq!(second.body["messages"][4]["content"], "Bot: can you check?");

    // Agents see the answers as the bot's.
    let conversation = bots.conversation("ana").await;
    let history = crate::support::eventually(
        &bots.agent,
        &format!("/v1/conversations/{conversation}/messages"),
        "both bot replies stored",
        |page| page["items"].as_array().unwrap().iter().filter(|item| item["sender_kind"] == "bot").count() == 2,
    )
    .await;
    assert!(history["items"].as_array().unwrap().iter().any(|item| item["text"] == "Bot: thanks"));
    assert!(metric(bots.http, "chatdesk_autoreply_replies_total{mode=\"llm\"}").await >= 2.0);

    // A full replay of the events stream into `autoreply`: nothing is sent, no model is called.
    let calls_before = bots.model.received().len();
    let sent_before = bots.receiver.received().len();
    bots.replay_events(streams.path()).await;
    wait_metric(bots.http, "chatdesk_autoreply_messages_total{outcome=\"replay\"}", 4.0).await;
    bots.sentinel("after-replay").await;
    assert_eq!(bots.model.received().len(), calls_before + 1, "only the sentinel reached the model");
    assert_eq!(bots.receiver.received().len(), sent_before + 1, "only the sentinel was answered");
    assert_eq!(deliveries_to(&bots.receiver.received(), "ana").len(), 2);
}

#[tokio::test]
async fn a_slow_or_failing_model_falls_back_or_hands_off_while_others_are_answered() {
    let bots = Bots::start(&[]).await;
    let llm = bots.llm(json!({"timeout_ms": 2000}));
    bots.configure(json!({"mode": "llm", "llm": llm, "debounce_ms": 200})).await;

    // The model hangs for one customer; another is answered meanwhile.
    bots.customer_says("m-slow", "bea", "this will be slow").await;
    bots.model
        .wait_for("the slow call started", |received| {
            received.iter().any(|request| last_user(request).contains("slow"))
        })
        .await;
    bots.customer_says("m-quick", "carl", "quick question").await;
    bots.delivered("carl", "Bot: quick question").await;
    let bea = bots.conversation("bea").await;
    assert_eq!(bots.handoffs(&bea, 1).await, ["timeout"]);
    assert!(
        deliveries_to(&bots.receiver.received(), "bea").is_empty(),
        "nothing sent after a timeout without fallback"
    );
    assert_eq!(bots.model_calls_about("this will be slow"), 1, "a timeout is not retried");

    // A 500 is retried once, then handed off.
    bots.customer_says("m-boom", "dan", "boom").await;
    let dan = bots.conversation("dan").await;
    assert_eq!(bots.handoffs(&dan, 1).await, ["error"]);
    assert_eq!(bots.model_calls_about("boom"), 2, "one retry, never a storm");

    // With a fallback text, the same failure sends it and keeps the bot on.
    let llm =
        bots.llm(json!({"timeout_ms": 2000, "on_error": "fallback", "fallback_text": "Sorry, one moment please."}));
    bots.configure(json!({"mode": "llm", "llm": llm, "debounce_ms": 200})).await;
    bots.customer_says("m-boom-2", "eve", "boom again").await;
    bots.delivered("eve", "Sorry, one moment please.").await;
    bots.customer_says("m-eve-2", "eve", "hello?").await;
    bots.delivered("eve", "Bot: hello?").await;

    // The model's handoff tool: one event with its reason, and silence afterwards.
    bots.customer_says("m-esc", "fay", "please escalate this").await;
    let fay = bots.conversation("fay").await;
    assert_eq!(bots.handoffs(&fay, 1).await, ["model"]);
    bots.customer_says("m-fay-2", "fay", "are you there?").await;
    bots.sentinel("after-handoff").await;
    assert_eq!(bots.model_calls_about("are you there?"), 0, "the bot is silent after a handoff");
    assert!(deliveries_to(&bots.receiver.received(), "fay").is_empty());
    assert_eq!(bots.handoffs(&fay, 1).await.len(), 1, "one handoff event");
    assert!(metric(bots.http, "chatdesk_autoreply_handoffs_total{reason=\"model\"}").await >= 1.0);
}

#[tokio::test]
async fn humans_keywords_caps_and_budgets_hand_off_once_and_the_bot_stays_silent() {
    let bots = Bots::start(&[("CHATDESK_AUTOREPLY_DAILY_CALLS", "6")]).await;
    let llm = bots.llm(json!({}));
    let notice = "A teammate will take it from here.";
    bots.configure(json!({"mode": "llm", "llm": llm, "debounce_ms": 200, "max_replies": 2, "handoff_text": notice}))
        .await;

    // An agent's reply: the bot steps aside.
    bots.customer_says("m-gus-1", "gus", "hello").await;
    bots.delivered("gus", "Bot: hello").await;
    let gus = bots.conversation("gus").await;
    let reply = bots
        .agent
        .call("POST", &format!("/v1/conversations/{gus}/messages"), Some(json!({"text": "Hi, Sam here."})))
        .await;
    assert!(reply.status < 300, "{}", reply.body);
    assert_eq!(bots.handoffs(&gus, 1).await, ["agent_replied"]);
    bots.customer_says("m-gus-2", "gus", "thanks Sam").await;

    // An assignment: the bot steps aside.
    bots.customer_says("m-hal-1", "hal", "first words").await;
    bots.delivered("hal", "Bot: first words").await;
    let hal = bots.conversation("hal").await;
    let assigned = bots
        .admin
        .call("POST", &format!("/v1/conversations/{hal}/assign"), Some(json!({"assignee_id": bots.agent_id})))
        .await;
    assert!(assigned.status < 300, "{}", assigned.body);
    assert_eq!(bots.handoffs(&hal, 1).await, ["assigned"]);
    bots.customer_says("m-hal-2", "hal", "anyone?").await;

    // A keyword: no model call at all.
    bots.customer_says("m-ivy-1", "ivy", "I want to talk to a HUMAN").await;
    let ivy = bots.conversation("ivy").await;
    assert_eq!(bots.handoffs(&ivy, 1).await, ["keyword"]);
    let shown =
        crate::support::eventually(&bots.agent, &format!("/v1/conversations/{ivy}"), "the handoff shown", |view| {
            view["handoff"]["reason"] == "keyword"
        })
        .await;
    assert_eq!(shown["handoff"]["detail"], "I want to talk to a HUMAN");
    // The bot tells the customer it hands them over (not when a human took over by themselves).
    assert_eq!(bots.delivered("ivy", notice).await, [notice]);

    // The cap: two replies, then a handoff instead of the third.
    for (index, text) in ["one", "two", "three"].iter().enumerate() {
        bots.customer_says(&format!("m-jo-{index}"), "jo", text).await;
        if index < 2 {
            bots.delivered("jo", &format!("Bot: {text}")).await;
        }
    }
    let jo = bots.conversation("jo").await;
    assert_eq!(bots.handoffs(&jo, 1).await, ["cap"]);
    assert_eq!(bots.delivered("jo", notice).await, ["Bot: one", "Bot: two", notice]);

    bots.sentinel("humans").await;
    assert_eq!(bots.model_calls_about("thanks Sam"), 0);
    assert_eq!(bots.model_calls_about("anyone?"), 0);
    assert_eq!(bots.model_calls_about("HUMAN"), 0);
    assert_eq!(bots.model_calls_about("three"), 0);
    assert_eq!(deliveries_to(&bots.receiver.received(), "gus"), ["Bot: hello", "Hi, Sam here."]);
    assert_eq!(deliveries_to(&bots.receiver.received(), "hal"), ["Bot: first words"]);
    for conversation in [&gus, &hal, &ivy, &jo] {
        assert_eq!(bots.handoffs(conversation, 1).await.len(), 1, "one event per handoff");
    }

    // Resolving ends the bot's session: the bot answers the conversation again.
    let resolved = bots.agent.call("POST", &format!("/v1/conversations/{ivy}/resolve"), None).await;
    assert!(resolved.status < 300, "{}", resolved.body);
    crate::support::eventually(&bots.agent, &format!("/v1/conversations/{ivy}"), "the handoff cleared", |view| {
        view["handoff"].is_null()
    })
    .await;
    // The resolve reaches the bot before the customer's next message: both travel in order.
    bots.customer_says("m-ivy-2", "ivy", "back again").await;
    bots.delivered("ivy", "Bot: back again").await;

    // The budget: 6 calls a day for the tenant (gus, hal, jo twice, the sentinel, ivy).
    bots.customer_says("m-max-1", "max", "seven").await;
    let max = bots.conversation("max").await;
    assert_eq!(bots.handoffs(&max, 1).await, ["budget"]);
    assert_eq!(bots.model_calls_about("seven"), 0);
    let usage = bots.admin.call("GET", "/v1/autoreply/usage", None).await.json();
    assert_eq!(usage["calls_used"], 6, "{usage}");
    assert_eq!(usage["calls_limit"], 6, "{usage}");
    assert!(metric(bots.http, "chatdesk_autoreply_budget_refused_total").await >= 1.0);
}

#[tokio::test]
async fn the_order_flow_takes_one_order_through_webhooks_and_a_replay_takes_none() {
    let streams = crate::support::quick_claims();
    let streams_path = streams.path().display().to_string();
    let bots = Bots::start(&[("CHATDESK_STREAMS", &streams_path)]).await;
    bots.configure(json!({"mode": "flow", "flow": "order", "debounce_ms": 100})).await;
    let steps: [(&str, &str); 13] = [
        ("hi", "What is the delivery address?"),
        ("abc", "An address is 5 to 200 characters long"),
        ("12 Main Street, Springfield", "Which phone number"),
        ("12345", "Which phone number"),
        ("+1 (415) 555-0123", "How many would you like"),
        ("0", "How many would you like"),
        ("fifty", "How many would you like"),
        ("3", "Please confirm: 3 to 12 Main Street, Springfield, phone +14155550123"),
        ("no", "let's start over"),
        ("7 Ocean Drive, Miami", "Which phone number"),
        ("+14155550123", "How many would you like"),
        ("2", "Please confirm: 2 to 7 Ocean Drive, Miami"),
        ("yes", "Thank you! Your order"),
    ];
    for (index, (said, expected)) in steps.iter().enumerate() {
        bots.customer_says(&format!("m-flow-{index}"), "nia", said).await;
        let replies = bots
            .receiver
            .wait_for(&format!("answer {index} ({expected:?})"), |received| {
                deliveries_to(received, "nia").len() > index
            })
            .await;
        let reply = deliveries_to(&replies, "nia")[index].clone();
        assert!(reply.contains(expected), "step {index}: {said:?} got {reply:?}, expected {expected:?}");
    }
    let orders = bots.agent.call("GET", "/v1/orders", None).await.json();
    let items = orders["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{orders}");
    assert_eq!(items[0]["flow"], "order");
    assert_eq!(items[0]["fields"], json!({"address": "7 Ocean Drive, Miami", "phone": "+14155550123", "quantity": 2}));
    assert_eq!(items[0]["conversation_id"], bots.conversation("nia").await.as_str());
    let thanks = deliveries_to(&bots.receiver.received(), "nia").pop().unwrap();
    let short = items[0]["id"].as_str().unwrap().replace('-', "")[..8].to_uppercase();
    assert!(thanks.contains(&short), "{thanks:?} names the order {short}");

    let sent_before = bots.receiver.received().len();
    bots.replay_events(streams.path()).await;
    wait_metric(bots.http, "chatdesk_autoreply_messages_total{outcome=\"replay\"}", steps.len() as f64).await;
    bots.sentinel("after-replay").await;
    assert_eq!(bots.receiver.received().len(), sent_before + 1, "only the sentinel was answered");
    let orders = bots.agent.call("GET", "/v1/orders", None).await.json();
    assert_eq!(orders["items"].as_array().unwrap().len(), 1, "no second order");
    assert!(bots.model.received().is_empty(), "a flow calls no model");
}

#[tokio::test]
async fn bad_settings_and_strangers_are_refused() {
    let bots = Bots::start(&[]).await;
    let path = format!("/v1/inboxes/{}/autoreply", bots.inbox_id());
    let off = bots.admin.call("GET", &path, None).await;
    assert_eq!(off.status, 200, "{}", off.body);
    assert_eq!(off.json()["mode"], "off");

    let cases = [
        (json!({"mode": "flow", "flow": "no-such-flow"}), "flow"),
        (json!({"mode": "flow"}), "flow"),
        (json!({"mode": "llm", "llm": bots.llm(json!({"timeout_ms": -5}))}), "llm.timeout_ms"),
        (json!({"mode": "llm", "llm": bots.llm(json!({"base_url": "ftp://models.example.com/v1"}))}), "llm.base_url"),
        (json!({"mode": "llm", "llm": bots.llm(json!({"base_url": "http://10.0.0.7:6379/v1"}))}), "llm.base_url"),
        (json!({"mode": "llm", "llm": bots.llm(json!({"base_url": "http://[::1]:6379/v1"}))}), "llm.base_url"),
        (json!({"mode": "llm", "llm": bots.llm(json!({"model": ""}))}), "llm.model"),
        (json!({"mode": "llm", "llm": bots.llm(json!({"system_prompt": "evil\u{0}"}))}), "llm.system_prompt"),
        (json!({"mode": "robot"}), "mode"),
        (json!({"mode": "off", "surprise": true}), "surprise"),
        (json!({"mode": "off", "debounce_ms": -1}), "debounce_ms"),
        (
            json!({"mode": "off", "hours": {"when": "outside", "days": [8], "from": "09:00", "to": "17:00"}}),
            "hours.days",
        ),
        (
            json!({"mode": "off", "hours": {"when": "outside", "days": [1], "from": "+9:00", "to": "17:00"}}),
            "hours.from",
        ),
        (json!([]), "body"),
        // Spellings the HTTP client reads as loopback addresses (the tests allow only 127.0.0.1),
        // and credentials in the URL.
        (json!({"mode": "llm", "llm": bots.llm(json!({"base_url": "http://127.0.0.2.:6379/v1"}))}), "llm.base_url"),
        (json!({"mode": "llm", "llm": bots.llm(json!({"base_url": "http://2130706434.:6379/v1"}))}), "llm.base_url"),
        (json!({"mode": "llm", "llm": bots.llm(json!({"base_url": "http://127.2.:6379/v1"}))}), "llm.base_url"),
        (json!({"mode": "llm", "llm": bots.llm(json!({"base_url": "http://0x7f000002.:6379/v1"}))}), "llm.base_url"),
        (
            json!({"mode": "llm", "llm": bots.llm(json!({"base_url": "http://user:pw@models.example.com/v1"}))}),
            "llm.base_url",
        ),
    ];
    for (body, field) in cases {
        let response = bots.admin.call("PUT", &path, Some(body.clone())).await;
        assert_eq!(response.status, 422, "{body}: {}", response.body);
        let error = response.json();
        assert!(
            error["error"]["message"].as_str().unwrap_or_default().contains(field)
                || error["error"]["details"]["field"].as_str().unwrap_or_default().contains(field),
            "{body}: {error}"
        );
    }
    let agent = bots.agent.call("PUT", &path, Some(json!({"mode": "off"}))).await;
    assert_eq!(agent.status, 403, "{}", agent.body);
    assert_eq!(bots.agent.call("GET", &path, None).await.status, 403);
    let test = format!("{path}/test");
    let off = bots.admin.call("POST", &test, Some(json!({"messages": [{"role": "customer", "text": "hi"}]}))).await;
    assert_eq!(off.status, 409, "a bot that is off cannot be tested: {}", off.body);
    let unknown = bots.admin.call("GET", "/v1/inboxes/00000000-0000-7000-8000-000000000000/autoreply", None).await;
    assert_eq!(unknown.status, 404);

    // The key is write-only and kept when left out.
    let llm = bots.llm(json!({}));
    bots.configure(json!({"mode": "llm", "llm": llm})).await;
    let mut without_key = bots.llm(json!({"model": "other-model"}));
    without_key.as_object_mut().unwrap().remove("api_key");
    bots.configure(json!({"mode": "llm", "llm": without_key})).await;
    let shown = bots.admin.call("GET", &path, None).await;
    assert!(!shown.body.contains("sk-test-key"), "{}", shown.body);
    assert_eq!(shown.json()["llm"]["api_key_set"], true);
    assert_eq!(shown.json()["llm"]["model"], "other-model");

    // The test chat talks to the saved bot (and sends the kept key).
    let answer =
        bots.admin.call("POST", &test, Some(json!({"messages": [{"role": "customer", "text": "test drive"}]}))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["replies"][0]["text"], "Bot: test drive");
    let call = bots.model.received().pop().unwrap();
    assert_eq!(call.body["model"], "other-model");
    assert_eq!(call.headers.get("authorization").map(String::as_str), Some("Bearer sk-test-key"));
    let bad_role = bots.admin.call("POST", &test, Some(json!({"messages": [{"role": "wizard", "text": "x"}]}))).await;
    assert_eq!(bad_role.status, 422, "{}", bad_role.body);
    // Moving the endpoint drops the stored key: it never follows the settings to a new server.
    let mut moved = bots.llm(json!({"base_url": format!("http://{}/elsewhere/v1", bots.receiver.addr)}));
    moved.as_object_mut().unwrap().remove("api_key");
    bots.configure(json!({"mode": "llm", "llm": moved})).await;
    assert_eq!(bots.admin.call("GET", &path, None).await.json()["llm"]["api_key_set"], false);

    // A stored URL is held to the policy the process runs with now, on every call: one written
    // around the API (an older row, a changed allowlist) reaches nothing internal.
    let pool = sqlx::PgPool::connect(&bots.env.database_url).await.unwrap();
    let inbox: uuid::Uuid = bots.inbox_id().parse().unwrap();
    let redis_port = bots.env.redis_url.rsplit(':').next().unwrap().trim_end_matches('/').to_owned();
    let smuggled = json!({"mode": "llm", "llm": {"base_url": format!("http://127.2.:{redis_port}/v1"), "model": "m", "api_key": "sk-test-key"}});
    sqlx::query("UPDATE inboxes SET auto_reply = $2 WHERE id = $1")
        .bind(inbox)
        .bind(&smuggled)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let refused = bots.admin.call("POST", &test, Some(json!({"messages": [{"role": "customer", "text": "hi"}]}))).await;
    assert_eq!(refused.status, 200, "{}", refused.body);
    let handoff = refused.json()["handoff"].clone();
    assert_eq!(handoff["reason"], "error", "{handoff}");
    assert!(handoff["detail"].as_str().unwrap().contains("refused"), "{handoff}");
    bots.configure(json!({"mode": "llm", "llm": bots.llm(json!({}))})).await;
    // Absurd usage figures from the model are counted bounded (and spend the tenant's own budget).
    let counted =
        bots.admin.call("POST", &test, Some(json!({"messages": [{"role": "customer", "text": "overflow"}]}))).await;
    assert_eq!(counted.status, 200, "{}", counted.body);
    assert_eq!(counted.json()["replies"][0]["text"], "Bot: counted");

    // The flows the deployment loaded.
    let flows = bots.admin.call("GET", "/v1/autoreply/flows", None).await.json();
    assert!(flows["items"].as_array().unwrap().iter().any(|flow| flow["name"] == "order"), "{flows}");
    assert_eq!(bots.admin.call("GET", "/v1/orders?limit=0", None).await.status, 422);
    assert_eq!(bots.admin.call("GET", "/v1/orders?cursor=nope", None).await.status, 422);
    let huge = "/v1/orders?cursor=99999999999999999999999999999999999999_0193a000-0000-7000-8000-000000000000";
    assert_eq!(bots.admin.call("GET", huge, None).await.status, 422);
}

#[test]
fn a_broken_flow_file_is_refused_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        r#"
start = "nowhere"
surprise = 1
[states.ask]
prompt = "Hi {{unknown_field}}"
expect = { kind = "integer", min = 9, max = 1 }
next = "missing"
[finish]
action = "webhook"
url = "ftp://example.com/hook"
text = "done"
"#,
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatdesk"))
        .args(["flows", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let errors = String::from_utf8_lossy(&output.stderr);
    for expected in ["start", "surprise", "states.ask.prompt", "states.ask.expect", "states.ask.next", "finish.url"] {
        assert!(errors.contains(expected), "{expected} missing from:\n{errors}");
    }
    assert!(errors.contains("broken.toml"), "{errors}");
    let good = std::process::Command::new(env!("CARGO_BIN_EXE_chatdesk"))
        .args(["flows", "check", concat!(env!("CARGO_MANIFEST_DIR"), "/../../flows")])
        .output()
        .unwrap();
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(String::from_utf8_lossy(&good.stdout).contains("order: address"));
}

/// Buttons both ways on Telegram: the flow's yes/no question goes out as an inline keyboard, the
/// customer's press comes back as a `callback_query` (answered in the webhook's response) and is
/// the answer.
#[tokio::test]
async fn a_flow_offers_buttons_on_telegram_and_a_press_answers_it() {
    let env = Env::start().await;
    let telegram = StandIn::start(
        |request| request.path.clone(),
        |request, earlier| {
            Answer::json(
                200,
                json!({"ok": true, "result": {"message_id": 500 + earlier, "chat": {"id": 1111111, "type": "private"},
                "date": 1_763_800_000, "text": request.body["text"]}}),
            )
        },
    )
    .await;
    let http: SocketAddr = chatdesk_testkit::free_addr();
    let _server = serve_roles(&env, ROLES, http, &[("CHATDESK_TELEGRAM_API_URL", &telegram.url())]).await;
    let tenant = env.tenant("owner@tg.test", "owner-pass-1")["tenant_id"].as_str().unwrap().to_owned();
    let owner = Client {
        http,
        token: login(http, "owner@tg.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned(),
    };
    let inbox = admin(
        &env,
        &[
            "inbox",
            "create",
            "--tenant",
            &tenant,
            "--kind",
            "telegram",
            "--name",
            "Shop bot",
            "--bot-token",
            "123456:ABC-DEF",
        ],
    );
    let path = format!("/v1/inboxes/{}/autoreply", inbox["inbox_id"].as_str().unwrap());
    let configured = owner.call("PUT", &path, Some(json!({"mode": "flow", "flow": "order", "debounce_ms": 100}))).await;
    assert_eq!(configured.status, 200, "{}", configured.body);
    let webhook = inbox["webhook_path"].as_str().unwrap().to_owned();
    let secret = inbox["secret"].as_str().unwrap().to_owned();
    let deliver = |update: Value| {
        let (webhook, secret) = (webhook.clone(), secret.clone());
        async move {
            crate::support::post(http, &webhook, &[("X-Telegram-Bot-Api-Secret-Token", &secret)], &update.to_string())
                .await
        }
    };
    let sent = |count: usize| {
        let telegram = telegram.clone();
        async move { telegram.wait_for(&format!("{count} bot messages"), |received| received.len() >= count).await }
    };
    for (index, text) in ["hi", "12 Main Street, Springfield", "+14155550123", "3"].iter().enumerate() {
        let update = json!({"update_id": 100 + index, "message": {"message_id": 10 + index, "date": 1_763_800_000,
            "text": text, "chat": {"id": 1111111, "type": "private"}, "from": {"id": 1111111, "is_bot": false, "first_name": "Ana"}}});
        assert_eq!(deliver(update).await.status, 200);
        sent(index + 1).await;
    }
    let question = telegram.received()[3].clone();
    assert!(
        question.body["text"].as_str().unwrap().starts_with("Please confirm: 3 to 12 Main Street"),
        "{}",
        question.body
    );
    let keyboard = question.body["reply_markup"]["inline_keyboard"].clone();
    assert_eq!(keyboard, json!([[{"text": "Yes", "callback_data": "yes"}], [{"text": "No", "callback_data": "no"}]]));

    let press = json!({"update_id": 200, "callback_query": {"id": "cb-1", "from": {"id": 1111111, "first_name": "Ana"},
        "chat_instance": "-1", "data": "yes",
        "message": {"message_id": 503, "date": 1_763_800_000, "chat": {"id": 1111111, "type": "private"},
            "text": question.body["text"], "reply_markup": {"inline_keyboard": keyboard}}}});
    let answered = deliver(press.clone()).await;
    assert_eq!(answered.status, 200, "{}", answered.body);
    assert_eq!(answered.json(), json!({"method": "answerCallbackQuery", "callback_query_id": "cb-1"}));
    let received = sent(5).await;
    assert!(received[4].body["text"].as_str().unwrap().starts_with("Thank you! Your order"), "{}", received[4].body);
    // Telegram delivering the press again changes nothing.
    assert_eq!(deliver(press).await.status, 200);
    let orders = chatdesk_testkit::eventually("one order", Duration::from_secs(30), || async {
        let page = owner.call("GET", "/v1/orders", None).await.json();
        (page["items"].as_array().map(Vec::len) == Some(1)).then_some(page)
    })
    .await;
    assert_eq!(orders["items"][0]["fields"]["quantity"], 3);
    // Agents see the pressed button's title, with its id kept.
    let agent = owner.call("GET", "/v1/conversations", None).await.json();
    let conversation = agent["items"][0]["id"].as_str().unwrap().to_owned();
    let history = owner.call("GET", &format!("/v1/conversations/{conversation}/messages"), None).await.json();
    let pressed =
        history["items"].as_array().unwrap().iter().find(|item| item["sender_kind"] == "customer").unwrap().clone();
    assert_eq!(pressed["text"], "Yes");
    assert_eq!(pressed["extra"]["choice"], json!({"id": "yes", "title": "Yes"}), "{pressed}");
    let offered = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["text"].as_str().unwrap_or_default().starts_with("Please confirm"))
        .unwrap()
        .clone();
    assert_eq!(offered["extra"]["buttons"][0], json!({"id": "yes", "title": "Yes"}), "{offered}");
}

/// A tenant whose model hangs holds at most its share of the answering slots: another tenant's
/// customers are answered meanwhile.
#[tokio::test]
async fn one_tenants_slow_model_leaves_room_for_the_others() {
    // Four slots, one per tenant.
    let bots = Bots::start(&[("CHATDESK_AUTOREPLY_CONCURRENCY", "4")]).await;
    let llm = bots.llm(json!({"timeout_ms": 20000}));
    bots.configure(json!({"mode": "llm", "llm": llm, "debounce_ms": 0})).await;
    for index in 0..5 {
        bots.customer_says(&format!("m-slow-{index}"), &format!("slow-{index}"), "this is slow").await;
    }
    bots.model.wait_for("the first slow call", |received| !received.is_empty()).await;

    // Another tenant, same model, quick questions.
    let other = bots.env.tenant("owner@other.test", "owner-pass-1")["tenant_id"].as_str().unwrap().to_owned();
    let token = login(bots.http, "owner@other.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let owner = Client { http: bots.http, token };
    let inbox = generic_inbox(&bots.env, &other, "Other", &format!("{}/replies", bots.receiver.url()));
    let path = format!("/v1/inboxes/{}/autoreply", inbox["inbox_id"].as_str().unwrap());
    let configured =
        owner.call("PUT", &path, Some(json!({"mode": "llm", "llm": bots.llm(json!({})), "debounce_ms": 0}))).await;
    assert_eq!(configured.status, 200, "{}", configured.body);
    let body = generic_body("m-quick-other", "quick-other", "quick question");
    assert!(post_generic(bots.http, &inbox, &body).await.status < 300);
    bots.delivered("quick-other", "Bot: quick question").await;
    // Meanwhile the slow tenant had one call in flight, not all four slots.
    let slow_calls = bots.model.received().iter().filter(|request| last_user(request).contains("slow")).count();
    assert_eq!(slow_calls, 1, "the slow tenant holds one slot");
}

/// A flow of the operator's own (from `CHATDESK_FLOWS`) posts what it collected to a webhook,
/// signed like the generic channel; business hours keep the bot out while agents are in.
#[tokio::test]
async fn a_flow_posts_its_fields_to_a_signed_webhook_and_hours_keep_the_bot_out() {
    let hooks = StandIn::start(|request| request.path.clone(), |_, _| Answer::json(200, json!({"ok": true}))).await;
    let flows = tempfile::tempdir().unwrap();
    std::fs::write(
        flows.path().join("callback.toml"),
        format!(
            r#"
description = "Books a call back"
start = "name"
[states.name]
prompt = "Who should we call?"
expect = {{ kind = "length", min = 2, max = 60 }}
save_as = "name"
next = "when"
[states.when]
prompt = "When suits you, {{{{name}}}}?"
expect = {{ kind = "choice", options = [{{ id = "am", title = "Morning" }}, {{ id = "pm", title = "Afternoon" }}] }}
save_as = "slot"
next = "finish"
[finish]
action = "webhook"
url = "{}/hooks/callback"
text = "Booked: {{{{name}}}}, {{{{slot}}}}."
"#,
            hooks.url()
        ),
    )
    .unwrap();
    let bots = Bots::start(&[("CHATDESK_FLOWS", flows.path().to_str().unwrap())]).await;
    let listed = bots.admin.call("GET", "/v1/autoreply/flows", None).await.json();
    let names: Vec<&str> =
        listed["items"].as_array().unwrap().iter().map(|flow| flow["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["callback", "order"]);
    bots.configure(json!({"mode": "flow", "flow": "callback", "debounce_ms": 0})).await;
    bots.customer_says("m-cb-1", "pia", "hello").await;
    bots.delivered("pia", "Who should we call?").await;
    bots.customer_says("m-cb-2", "pia", "Pia").await;
    bots.delivered("pia", "When suits you, Pia?").await;
    bots.customer_says("m-cb-3", "pia", "2").await;
    bots.delivered("pia", "Booked: Pia, pm.").await;
    let hook = hooks.wait_for("the flow's webhook", |received| !received.is_empty()).await.remove(0);
    assert_eq!(hook.path, "/hooks/callback");
    assert_eq!(hook.body["flow"], "callback");
    assert_eq!(hook.body["fields"], json!({"name": "Pia", "slot": "pm"}));
    assert_eq!(hook.body["conversation_id"], bots.conversation("pia").await.as_str());
    let expected = chatdesk_core::auth::sign_body(hook.raw.as_bytes(), bots.inbox["secret"].as_str().unwrap());
    assert_eq!(hook.headers.get("x-chatdesk-signature"), Some(&expected));
    assert_eq!(hook.headers.get("idempotency-key").map(String::as_str), hook.body["order_id"].as_str());
    assert_eq!(
        bots.agent.call("GET", "/v1/orders", None).await.json()["items"],
        json!([]),
        "a webhook flow stores no order"
    );

    // Open all week, all day: a bot for outside business hours stays out, and the agents answer.
    let always = json!({"when": "outside", "utc_offset_minutes": 0, "days": [1, 2, 3, 4, 5, 6, 7], "from": "00:00", "to": "24:00"});
    bots.configure(json!({"mode": "flow", "flow": "callback", "debounce_ms": 0, "hours": always})).await;
    bots.customer_says("m-hours-1", "quinn", "hello?").await;
    wait_metric(bots.http, "chatdesk_autoreply_skipped_total{why=\"hours\"}", 1.0).await;
    assert!(deliveries_to(&bots.receiver.received(), "quinn").is_empty(), "the bot stayed out");
}

/// A bot quicker than the writer (no quiet period, the writer not running yet) waits for the
/// conversation to be stored instead of dropping its answer.
#[tokio::test]
async fn the_bot_waits_for_a_conversation_the_writer_has_not_stored_yet() {
    let env = Env::start().await;
    let receiver = StandIn::start(
        |request| request.body["to"].as_str().unwrap_or_default().to_owned(),
        |_, _| Answer::json(200, json!({"id": "delivered"})),
    )
    .await;
    let http: SocketAddr = chatdesk_testkit::free_addr();
    let _front = serve_roles(&env, "ingress,sender,autoreply", http, &[]).await;
    let tenant = env.tenant("owner@early.test", "owner-pass-1")["tenant_id"].as_str().unwrap().to_owned();
    let token = login(http, "owner@early.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let owner = Client { http, token };
    let inbox = generic_inbox(&env, &tenant, "Early", &format!("{}/replies", receiver.url()));
    let path = format!("/v1/inboxes/{}/autoreply", inbox["inbox_id"].as_str().unwrap());
    let configured = owner.call("PUT", &path, Some(json!({"mode": "flow", "flow": "order", "debounce_ms": 0}))).await;
    assert_eq!(configured.status, 200, "{}", configured.body);
    assert!(post_generic(http, &inbox, &generic_body("m-early", "rae", "hi")).await.status < 300);
    // The bot has tried and found no conversation yet.
    wait_metric(http, "chatdesk_autoreply_messages_total{outcome=\"waiting\"}", 1.0).await;
    let writer_http: SocketAddr = chatdesk_testkit::free_addr();
    let _writer = serve_roles(&env, "writer", writer_http, &[]).await;
    let replies = receiver.wait_for("the bot's answer", |received| !deliveries_to(received, "rae").is_empty()).await;
    assert!(deliveries_to(&replies, "rae")[0].contains("What is the delivery address?"));
}
