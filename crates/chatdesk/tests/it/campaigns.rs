//! Broadcast campaigns against provider stand-ins: the rate at arrival, many senders across
//! broadcaster processes, a broadcaster killed mid-campaign, pause / resume / cancel,
//! idempotent creation, WhatsApp's marketing cap and quota, STOP, and bad input.

use chatdesk_testkit::free_addr;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatdesk_testkit::http_request;
use fred::prelude::*;
use futures::SinkExt;
use serde_json::{Value, json};

use crate::standin::{Answer, Received, StandIn};
use crate::support::{
    Client, Env, admin, login, metric, post, queued_deliveries, serve_roles, until_deliveries_finished, whatsapp_inbox,
    whatsapp_notify,
};

/// A tenant with an owner and a marketer; returns (tenant id, the marketer's client).
async fn marketer(env: &Env, http: SocketAddr, name: &str) -> (String, Client) {
    let owner = format!("owner@{name}.test");
    let tenant = env.tenant(&owner, "owner-pass-1")["tenant_id"].as_str().unwrap().to_owned();
    let email = format!("marketing@{name}.test");
    env.user(&tenant, &email, "marketer-pass-1", "marketer");
    let token = login(http, &email, "marketer-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    (tenant, Client { http, token })
}

fn generic_inbox(env: &Env, tenant: &str, url: &str) -> String {
    crate::support::generic_inbox(env, tenant, "Out", url)["inbox_id"].as_str().unwrap().to_owned()
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_frame(socket: &mut Socket) -> Value {
    use futures::StreamExt;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), socket.next()).await.expect("a frame within 15 s") {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                return serde_json::from_str(&text).unwrap();
            }
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

fn ok_generic() -> Answer {
    Answer::json(200, json!({"id": "ext-1"}))
}

fn by_to(request: &Received) -> String {
    request.body["to"].as_str().map(str::to_owned).unwrap_or_default()
}

async fn create(api: &Client, body: Value) -> Value {
    let response = api.call("POST", "/v1/campaigns", Some(body)).await;
    assert_eq!(response.status, 201, "{}", response.body);
    response.json()["campaign"].clone()
}

fn recipients(prefix: &str, count: usize) -> Vec<Value> {
    (0..count).map(|index| json!({"to": format!("{prefix}-{index}"), "vars": {"name": format!("N{index}")}})).collect()
}

/// The campaign once `check` holds for it (within `timeout`).
async fn campaign_when(api: &Client, id: &str, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
    chatdesk_testkit::eventually(what, timeout, || async {
        let response = api.call("GET", &format!("/v1/campaigns/{id}"), None).await;
        (response.status == 200).then(|| response.json()).filter(|campaign| check(campaign))
    })
    .await
}

fn counts_add_up(campaign: &Value) {
    let counts = &campaign["counts"];
    let sum: i64 = ["pending", "queued", "sent", "delivered", "read", "failed", "skipped", "expired", "deferred"]
        .iter()
        .map(|status| counts[*status].as_i64().unwrap())
        .sum();
    assert_eq!(sum, counts["total"].as_i64().unwrap(), "{counts}");
}

/// Arrival times in seconds from the first, sorted.
fn arrivals(received: &[Received]) -> Vec<f64> {
    let first = received.iter().map(|request| request.at).min().unwrap();
    let mut times: Vec<f64> = received.iter().map(|request| (request.at - first).as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    times
}

/// The most requests in any 1-s window (windows starting at each arrival).
fn busiest_second(times: &[f64]) -> usize {
    let mut most = 0;
    let mut end = 0;
    for start in 0..times.len() {
        while end < times.len() && times[end] < times[start] + 1.0 {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

fn each_once(received: &[Received], expected: usize) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for request in received {
        *seen.entry(by_to(request)).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(seen.len(), expected, "every recipient once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_recipients_at_fifty_a_second_arrive_once_each_at_that_rate() {
    let env = Env::start().await;
    let receiver = StandIn::start(by_to, |_, _| ok_generic()).await;
    let http = free_addr();
    let _chatdesk = serve_roles(&env, "ingress,writer,sender,broadcaster", http, &[]).await;
    let (tenant, api) = marketer(&env, http, "fifty").await;
    let inbox = generic_inbox(&env, &tenant, &receiver.url());

    let campaign = create(
        &api,
        json!({"inbox_id": inbox, "name": "Winter sale", "text": "Hi {{name}}, 20% off today", "rate_per_sec": 50,
               "recipients": recipients("cust", 2000)}),
    )
    .await;
    assert_eq!(campaign["counts"]["total"], 2000);
    let id = campaign["id"].as_str().unwrap();

    let received = receiver
        .wait_for_within("2,000 sends at the receiver", Duration::from_secs(150), |got| got.len() >= 2000)
        .await;
    let first = received.iter().find(|request| by_to(request) == "cust-0").unwrap();
    assert_eq!(first.body["text"], "Hi N0, 20% off today");
    each_once(&received, 2000);

    let times = arrivals(&received);
    let busiest = busiest_second(&times);
    assert!(busiest <= 50, "{busiest} requests arrived within one second");
    // Every whole 5-s window after the first holds 50/s ± 5 %.
    let end = *times.last().unwrap();
    let mut window = 5.0;
    while window + 5.0 <= end {
        let count = times.iter().filter(|time| **time >= window && **time < window + 5.0).count();
        let per_second: Vec<usize> = (0..end.ceil() as usize)
            .map(|second| times.iter().filter(|time| **time as usize == second).count())
            .collect();
        assert!((238..=262).contains(&count), "{count} sends in the 5 s from {window} s; per second: {per_second:?}");
        window += 5.0;
    }

    let finished =
        campaign_when(&api, id, "the campaign finished", Duration::from_secs(60), |c| c["status"] == "finished").await;
    assert_eq!(finished["counts"]["sent"], 2000, "{finished}");
    counts_add_up(&finished);
    // Per-sender figures for the operator.
    let (status, metrics) = chatdesk_testkit::http_get(http, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let sent = format!("chatdesk_sender_campaign_results_total{{inbox=\"{inbox}\",result=\"sent\"}} 2000");
    assert!(metrics.contains(&sent), "{sent} in /metrics");
    assert!(metrics.contains(&format!("chatdesk_sender_campaign_throttled_seconds_count{{inbox=\"{inbox}\"}}")));
    let page = api.call("GET", &format!("/v1/campaigns/{id}/recipients?status=sent&limit=2"), None).await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_after"], 1);
    // The campaign's messages are in each recipient's history, not in agents' inbox list.
    let owner = login(http, "owner@fifty.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let owner = Client { http, token: owner };
    let list = owner.call("GET", "/v1/conversations?limit=10", None).await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_senders_keep_their_own_rates_across_three_broadcasters_and_a_slow_one_slows_nobody() {
    let env = Env::start().await;
    let receiver = StandIn::start(
        |request| request.path.clone(),
        |request, _| {
            if request.path == "/slow" { ok_generic().after(Duration::from_secs(2)) } else { ok_generic() }
        },
    )
    .await;
    let http = free_addr();
    let _chatdesk = serve_roles(&env, "ingress,writer,sender", http, &[]).await;
    let mut broadcasters = Vec::new();
    for _ in 0..3 {
        broadcasters.push(serve_roles(&env, "broadcaster", free_addr(), &[]).await);
    }
    let (tenant, api) = marketer(&env, http, "twenty").await;
    let seconds = 12;
    let mut rates = HashMap::new();
    // 20 senders at 2 to 11 messages per second (130 per second together).
    for sender in 0..20 {
        let rate = 2 + sender % 10;
        let inbox = generic_inbox(&env, &tenant, &format!("{}/s{sender}", receiver.url()));
        create(
            &api,
            json!({"inbox_id": inbox, "text": "Hi {{name}}", "rate_per_sec": rate,
                   "recipients": recipients(&format!("s{sender}"), rate * seconds)}),
        )
        .await;
        rates.insert(format!("/s{sender}"), rate);
    }
    let slow = generic_inbox(&env, &tenant, &format!("{}/slow", receiver.url()));
    create(
        &api,
        json!({"inbox_id": slow, "text": "Hi {{name}}", "rate_per_sec": 5, "recipients": recipients("slow", 20)}),
    )
    .await;
    let total: usize = rates.values().map(|rate| rate * seconds).sum();
    let received = receiver
        .wait_for_within("every fast sender's sends", Duration::from_secs(120), |got| {
            got.iter().filter(|request| request.path != "/slow").count() >= total
        })
        .await;
    for (path, rate) in &rates {
        let mine: Vec<Received> = received.iter().filter(|request| &request.path == path).cloned().collect();
        each_once(&mine, rate * seconds);
        let times = arrivals(&mine);
        assert!(busiest_second(&times) <= *rate, "{path}: {} in one second at {rate}/s", busiest_second(&times));
        let measured = (times.len() - 1) as f64 / times.last().unwrap();
        let error = (measured - *rate as f64).abs() / *rate as f64;
        let per_second: Vec<usize> = (0..times.last().unwrap().ceil() as usize)
            .map(|second| times.iter().filter(|time| **time as usize == second).count())
            .collect();
        assert!(error <= 0.05, "{path}: {measured:.2}/s against {rate}/s; per second: {per_second:?}");
    }
}

/// An operator replays the campaign's hand-over entries into the broadcaster and then into the
/// sender: nobody gets the campaign twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_into_the_broadcaster_or_the_sender_sends_no_recipient_twice() {
    let env = Env::start().await;
    let streams = crate::support::quick_claims();
    let streams_path = streams.path().display().to_string();
    let receiver = StandIn::start(by_to, |_, _| ok_generic()).await;
    let http = free_addr();
    let _chatdesk =
        serve_roles(&env, "ingress,writer,sender,broadcaster", http, &[("CHATDESK_STREAMS", &streams_path)]).await;
    let (tenant, api) = marketer(&env, http, "replayed").await;
    let inbox = generic_inbox(&env, &tenant, &receiver.url());
    let campaign = create(
        &api,
        json!({"inbox_id": inbox, "text": "Hi {{name}}", "rate_per_sec": 50, "recipients": recipients("r", 30)}),
    )
    .await;
    let id = campaign["id"].as_str().unwrap();
    campaign_when(&api, id, "the campaign finished", Duration::from_secs(60), |c| c["status"] == "finished").await;
    until_deliveries_finished(&env).await;
    each_once(&receiver.received(), 30);

    for group in ["broadcaster", "sender"] {
        let output = crate::support::replay_into(&env, streams.path(), group, "0");
        assert!(output.contains("[Done]"), "{group}: {output}");
        // The command returned once the group had acknowledged every replayed entry. Whatever a
        // wrong replay would send has then been appended to the send stream: once the sender has
        // read all of it and its queue is empty, all of it has arrived.
        crate::support::until_group_caught_up(&env, "send", "sender").await;
        until_deliveries_finished(&env).await;
        each_once(&receiver.received(), 30);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broadcaster_killed_mid_campaign_sends_every_recipient_exactly_once() {
    let env = Env::start().await;
    let receiver = StandIn::start(by_to, |_, _| ok_generic()).await;
    let http = free_addr();
    let _chatdesk = serve_roles(&env, "ingress,writer,sender", http, &[]).await;
    let mut first = serve_roles(&env, "broadcaster", free_addr(), &[]).await;
    let (tenant, api) = marketer(&env, http, "killed").await;
    let inbox = generic_inbox(&env, &tenant, &receiver.url());
    let campaign = create(
        &api,
        json!({"inbox_id": inbox, "text": "Hi {{name}}", "rate_per_sec": 40, "recipients": recipients("k", 400)}),
    )
    .await;
    receiver.wait_for("a quarter sent", |received| received.len() >= 100).await;
    first.kill().await.unwrap();
    let _second = serve_roles(&env, "broadcaster", free_addr(), &[]).await;
    let received = receiver.wait_for_within("all 400 sent", Duration::from_secs(120), |got| got.len() >= 400).await;
    let id = campaign["id"].as_str().unwrap();
    let finished =
        campaign_when(&api, id, "the campaign finished", Duration::from_secs(60), |c| c["status"] == "finished").await;
    assert_eq!(finished["counts"]["sent"], 400, "{finished}");
    // Nothing more arrives late: the sender has nothing left.
    until_deliveries_finished(&env).await;
    each_once(&receiver.received(), 400);
    assert_eq!(received.len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_and_cancel_take_effect_and_counts_add_up() {
    let env = Env::start().await;
    let receiver = StandIn::start(by_to, |_, _| ok_generic()).await;
    let http = free_addr();
    let _chatdesk = serve_roles(&env, "ingress,writer,gateway,sender,broadcaster", http, &[]).await;
    let (tenant, api) = marketer(&env, http, "control").await;
    let inbox = generic_inbox(&env, &tenant, &receiver.url());
    let body =
        json!({"inbox_id": inbox, "text": "Hi {{name}}", "rate_per_sec": 10, "recipients": recipients("c", 300)});

    // A create retried with the same key makes one campaign.
    let key = ("Idempotency-Key", "spring-2027-launch");
    let auth = format!("Bearer {}", api.token);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json"), key];
    let first = http_request(http, "POST", "/v1/campaigns", &headers, Some(&body.to_string())).await.unwrap();
    assert_eq!(first.status, 201, "{}", first.body);
    let again = http_request(http, "POST", "/v1/campaigns", &headers, Some(&body.to_string())).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["replayed"], true);
    let id = first.json()["campaign"]["id"].as_str().unwrap().to_owned();
    assert_eq!(again.json()["campaign"]["id"], id.as_str());
    // The same key with another request cannot be a retry.
    let other =
        json!({"inbox_id": inbox, "text": "Other {{name}}", "rate_per_sec": 10, "recipients": recipients("c", 3)});
    let reused = http_request(http, "POST", "/v1/campaigns", &headers, Some(&other.to_string())).await.unwrap();
    assert_eq!(reused.status, 409, "{}", reused.body);
    let list = api.call("GET", "/v1/campaigns", None).await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // Progress is pushed on the campaign's channel.
    let mut socket = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")).await.unwrap().0;
    let send = |frame: Value| tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into());
    socket.send(send(json!({"op": "hello", "token": api.token, "protocol": 1}))).await.unwrap();
    assert_eq!(next_frame(&mut socket).await["op"], "welcome");
    socket.send(send(json!({"op": "subscribe", "channel": format!("campaign:{id}")}))).await.unwrap();
    assert_eq!(next_frame(&mut socket).await["op"], "subscribed");
    let progress = next_frame(&mut socket).await;
    assert_eq!(progress["type"], "campaign.progress", "{progress}");
    assert_eq!(progress["data"]["counts"]["total"], 300, "{progress}");
    let other = format!("campaign:{}", uuid::Uuid::now_v7());
    socket.send(send(json!({"op": "subscribe", "channel": other}))).await.unwrap();
    let refused = next_frame(&mut socket).await;
    assert_eq!(refused["code"], "not_found", "{refused}");

    receiver.wait_for("some sent", |received| received.len() >= 20).await;
    let paused = api.call("POST", &format!("/v1/campaigns/{id}/pause"), None).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["status"], "paused");
    let paused_at = Instant::now();
    // The pause has reached both stages: the runner gave its slot up (nothing more is handed
    // over), and the sender either holds what it still had or has nothing left.
    chatdesk_testkit::wait_until("the pause to reach runner and sender", Duration::from_secs(30), || async {
        metric(http, "chatdesk_broadcast_running_campaigns").await == 0.0
            && (metric(http, "chatdesk_sender_campaign_held_total{provider=\"generic\"}").await > 0.0
                || queued_deliveries(&env).await == 0)
    })
    .await;
    let late: Vec<_> =
        receiver.received().into_iter().filter(|request| request.at > paused_at + Duration::from_secs(1)).collect();
    assert!(late.is_empty(), "{} sent after the pause took effect", late.len());
    let at_pause = receiver.received().len();
    let resuming_at = Instant::now();

    let resumed = api.call("POST", &format!("/v1/campaigns/{id}/resume"), None).await;
    assert_eq!(resumed.json()["status"], "running");
    // Nothing went out in the whole paused time, however long it was.
    let while_paused = receiver
        .received()
        .into_iter()
        .filter(|request| request.at > paused_at + Duration::from_secs(1) && request.at < resuming_at)
        .count();
    assert_eq!(while_paused, 0, "sent while paused");
    receiver.wait_for("sending continues", |received| received.len() >= at_pause + 20).await;

    // Controls racing each other leave Redis (what senders read) where PostgreSQL ends.
    let redis = chatdesk_streams::RedisConnector::new(chatdesk_streams::RedisSettings::new(&env.redis_url))
        .unwrap()
        .shared()
        .await
        .unwrap();
    let state_key = chatdesk_core::KeyScheme::new(&env.prefix).unwrap().campaign_state(&id.parse().unwrap());
    for _ in 0..15 {
        let calls = ["pause", "resume", "pause", "resume"].map(|verb| {
            let path = format!("/v1/campaigns/{id}/{verb}");
            let api = Client { http, token: api.token.clone() };
            tokio::spawn(async move { api.call("POST", &path, None).await.status })
        });
        for call in calls {
            assert_eq!(call.await.unwrap(), 200);
        }
        let status = api.call("GET", &format!("/v1/campaigns/{id}"), None).await.json()["status"].clone();
        let stored: String = redis.get(&state_key).await.unwrap();
        let expected = if status == "paused" { "paused" } else { "running" };
        assert_eq!(stored.split(':').next().unwrap(), expected, "PostgreSQL says {status}");
    }
    api.call("POST", &format!("/v1/campaigns/{id}/resume"), None).await;

    let cancelled = api.call("POST", &format!("/v1/campaigns/{id}/cancel"), None).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let done = campaign_when(&api, &id, "nothing left in flight", Duration::from_secs(30), |c| {
        c["counts"]["queued"] == 0 && c["counts"]["pending"] == 0
    })
    .await;
    assert_eq!(done["status"], "cancelled");
    counts_add_up(&done);
    // What the sender held when the cancel came is dropped, not sent. Outcomes reach the counts
    // through the writer, a moment after the provider's answer.
    until_deliveries_finished(&env).await;
    let sent = receiver.received().len() as i64;
    let done = campaign_when(&api, &id, "every outcome counted", Duration::from_secs(30), |c| {
        c["counts"]["sent"].as_i64() == Some(sent) && c["counts"]["skipped"].as_i64() == Some(300 - sent)
    })
    .await;
    counts_add_up(&done);
    assert_eq!(done["counts"]["sent"].as_i64().unwrap(), sent, "{done}");
    assert_eq!(done["counts"]["skipped"].as_i64().unwrap(), 300 - sent, "{done}");
    each_once(&receiver.received(), sent as usize);
    let resume = api.call("POST", &format!("/v1/campaigns/{id}/resume"), None).await;
    assert_eq!(resume.status, 409, "{}", resume.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whatsapp_marketing_cap_defers_the_daily_quota_holds_across_numbers_and_stop_opts_out() {
    let env = Env::start().await;
    let provider = StandIn::start(by_to, |request, _| {
        let to = by_to(request);
        Answer::json(200, json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": format!("wamid.{to}")}]}))
    })
    .await;
    let http = free_addr();
    let _chatdesk =
        serve_roles(&env, "ingress,writer,sender,broadcaster", http, &[("CHATDESK_WHATSAPP_API_URL", &provider.url())])
            .await;
    let (tenant, api) = marketer(&env, http, "wa").await;
    admin(&env, &["tenant", "set-quota", "--tenant", &tenant, "--daily-recipients", "3"]);
    let first = whatsapp_inbox(&env, &tenant, "1111111111");
    let second = whatsapp_inbox(&env, &tenant, "2222222222");
    let to = |number: &str| json!({"to": number, "vars": {}});

    // Quota 3 across both numbers: the fourth unique recipient waits.
    let a = create(
        &api,
        json!({"inbox_id": first["inbox_id"], "text": "Sale!", "rate_per_sec": 10,
                                "recipients": [to("+16505550001"), to("+16505550002")]}),
    )
    .await;
    provider.wait_for("the first two", |received| received.len() >= 2).await;
    let b = create(
        &api,
        json!({"inbox_id": second["inbox_id"], "text": "Sale!", "rate_per_sec": 10,
                                "recipients": [to("+16505550003"), to("+16505550004")]}),
    )
    .await;
    let b = campaign_when(&api, b["id"].as_str().unwrap(), "one sent, one deferred", Duration::from_secs(30), |c| {
        c["counts"]["sent"] == 1 && c["counts"]["deferred"] == 1
    })
    .await;
    assert_eq!(b["status"], "running", "a deferred recipient is not final");
    let deferred = api
        .call("GET", &format!("/v1/campaigns/{}/recipients?status=deferred", b["id"].as_str().unwrap()), None)
        .await
        .json();
    assert!(
        deferred["items"][0]["reason"].as_str().unwrap().contains("3 unique recipients per 24 hours"),
        "{deferred}"
    );
    assert_eq!(provider.received().len(), 3);

    // WhatsApp's per-user marketing cap (131049), reported after it took the message, defers.
    let a_id = a["id"].as_str().unwrap();
    campaign_when(&api, a_id, "both sent", Duration::from_secs(30), |c| c["counts"]["sent"] == 2).await;
    whatsapp_notify(
        http,
        &first,
        json!({"messaging_product": "whatsapp", "metadata": {"phone_number_id": "1111111111"},
               "statuses": [{"id": "wamid.16505550001", "status": "failed", "timestamp": "1749416400", "recipient_id": "16505550001",
                             "errors": [{"code": 131049, "title": "This message was not delivered to maintain healthy ecosystem engagement."}]}]}),
    )
    .await;
    let a = campaign_when(&api, a_id, "the capped recipient deferred", Duration::from_secs(30), |c| {
        c["counts"]["deferred"] == 1 && c["counts"]["sent"] == 1
    })
    .await;
    counts_add_up(&a);
    let capped = api.call("GET", &format!("/v1/campaigns/{a_id}/recipients?status=deferred"), None).await.json();
    assert!(capped["items"][0]["reason"].as_str().unwrap().starts_with("131049"), "{capped}");

    // STOP, typed or pressed as a template's button, opts the address out of later campaigns.
    whatsapp_notify(
        http,
        &first,
        json!({"messaging_product": "whatsapp", "metadata": {"phone_number_id": "1111111111"},
               "contacts": [{"profile": {"name": "Ana"}, "wa_id": "16505550002"}, {"profile": {"name": "Bo"}, "wa_id": "16505550005"}],
               "messages": [
                   {"from": "16505550002", "id": "wamid.in-stop", "timestamp": "1749416383", "type": "text", "text": {"body": " stop "}},
                   {"from": "16505550005", "id": "wamid.in-button", "timestamp": "1749416384", "type": "button",
                    "button": {"payload": "STOP", "text": "Stop promotions"}}]}),
    )
    .await;
    let dry_run = json!({"inbox_id": first["inbox_id"], "text": "More!", "rate_per_sec": 5, "dry_run": true,
                         "recipients": [to("16505550002"), to("16505550005"), to("16505550002")]});
    chatdesk_testkit::eventually("both opted out", Duration::from_secs(30), || async {
        let response = api.call("POST", "/v1/campaigns", Some(dry_run.clone())).await;
        let body = response.json();
        (response.status == 422 && body["error"]["code"] == "no_recipients").then_some(body)
    })
    .await;
    let c = create(
        &api,
        json!({"inbox_id": first["inbox_id"], "text": "More!", "rate_per_sec": 5,
                                "recipients": [to("16505550002"), to("16505550005"), to("16505550001")]}),
    )
    .await;
    assert_eq!(c["counts"]["skipped"], 2, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_campaigns_are_refused_with_a_reason_and_nothing_is_enqueued() {
    let env = Env::start().await;
    let http = free_addr();
    let _chatdesk = serve_roles(&env, "ingress,writer,sender,broadcaster", http, &[]).await;
    let (tenant, api) = marketer(&env, http, "bad").await;
    let inbox = generic_inbox(&env, &tenant, "http://127.0.0.1:9/hook");
    let (other_tenant, _) = marketer(&env, http, "other").await;
    let other_inbox = generic_inbox(&env, &other_tenant, "http://127.0.0.1:9/hook");
    let telegram = admin(&env, &["inbox", "create", "--tenant", &tenant, "--kind", "telegram", "--name", "TG"]);
    let web = admin(&env, &["inbox", "create", "--tenant", &tenant, "--kind", "web", "--name", "Site"]);
    let one = json!([{"to": "a", "vars": {"name": "A"}}]);
    let refused = |body: Value| {
        let api = &api;
        async move {
            let response = api.call("POST", "/v1/campaigns", Some(body)).await;
            (response.status, response.json())
        }
    };
    for (body, status, says) in [
        (
            json!({"inbox_id": uuid::Uuid::now_v7(), "text": "Hi", "rate_per_sec": 5, "recipients": one}),
            422,
            "inbox_id: no such inbox",
        ),
        (
            json!({"inbox_id": other_inbox, "text": "Hi", "rate_per_sec": 5, "recipients": one}),
            422,
            "inbox_id: no such inbox",
        ),
        (json!({"inbox_id": web["inbox_id"], "text": "Hi", "rate_per_sec": 5, "recipients": one}), 422, "web widget"),
        (
            json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 0, "recipients": one}),
            422,
            "rate_per_sec: must be 1 to 1000",
        ),
        (
            json!({"inbox_id": telegram["inbox_id"], "text": "Hi", "rate_per_sec": 31, "recipients": [{"to": "12345"}]}),
            422,
            "1 to 30",
        ),
        (json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 5, "recipients": []}), 422, "recipients: is empty"),
        (json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 5}), 422, "recipients: is required"),
        (json!({"inbox_id": inbox, "text": "", "rate_per_sec": 5, "recipients": one}), 422, "text"),
        (json!({"inbox_id": inbox, "text": "A{{}}B", "rate_per_sec": 5, "recipients": one}), 422, "is not a variable"),
        (json!({"inbox_id": inbox, "text": "\u{0}", "rate_per_sec": 5, "recipients": one}), 422, "text"),
        (
            json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 5, "recipients_csv": "to,name,NAME\na,A,B\n"}),
            422,
            "appears twice",
        ),
        (
            json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 5, "recipients": one, "start_at": "9999-12-31T23:59:00Z"}),
            422,
            "within a year",
        ),
        (
            json!({"inbox_id": inbox, "text": "Hi {{name}}", "rate_per_sec": 5,
                   "recipients": [{"to": "a"}, {"to": "b", "vars": {"x": 1}}, {"to": "c", "vars": {"name": " "}}]}),
            422,
            "nothing left to send: 3 rejected",
        ),
        (
            json!({"inbox_id": telegram["inbox_id"], "text": "Hi", "rate_per_sec": 5, "recipients": [{"to": "@someone"}]}),
            422,
            "nothing left to send",
        ),
        (
            json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 5, "recipients_csv": "to,name\na,A\nb\n"}),
            422,
            "CSV line 3",
        ),
        (
            json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 5, "recipients_csv": "name\nA\n"}),
            422,
            "no `to` column",
        ),
        (
            json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 5, "recipients": one, "template": {"name": "promo", "language": "en"}}),
            422,
            "only WhatsApp",
        ),
        (
            json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 5, "recipients": one, "expires_at": "2020-01-01T00:00:00Z"}),
            422,
            "expires_at",
        ),
        (
            json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 5, "recipients": one, "start_at": "tomorrow"}),
            422,
            "start_at: must be an RFC 3339",
        ),
        (
            json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 5, "recipients": one, "colour": "red"}),
            422,
            "colour",
        ),
    ] {
        let (got, answer) = refused(body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(says), "{body}: {answer}");
    }
    // A template whose parameter needs a variable a recipient lacks: that recipient is reported.
    let whatsapp = whatsapp_inbox(&env, &tenant, "3333333333");
    let (status, answer) = refused(json!({"inbox_id": whatsapp["inbox_id"], "text": "Promo", "rate_per_sec": 5,
        "template": {"name": "pro\u{0}mo", "language": "en_US"}, "recipients": [{"to": "+16505550001"}]}))
    .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("U+0000"), "{answer}");
    let (status, answer) = refused(json!({"inbox_id": whatsapp["inbox_id"], "text": "Promo", "rate_per_sec": 5, "dry_run": true,
        "template": {"name": "promo", "language": "en_US", "components": [{"type": "body", "parameters": [{"type": "text", "text": "{{code}}"}]}]},
        "recipients": [{"to": "+16505550001", "vars": {"code": "X1"}}, {"to": "+16505550002"}]}))
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["report"]["rejected"][0]["index"], 1, "{answer}");
    assert!(answer["report"]["rejected"][0]["reason"].as_str().unwrap().contains("\"code\""), "{answer}");
    // When no recipient has it, nothing is left to send: a 4xx with the report.
    let (status, answer) = refused(json!({"inbox_id": whatsapp["inbox_id"], "text": "Promo", "rate_per_sec": 5,
        "template": {"name": "promo", "language": "en_US", "components": [{"type": "body", "parameters": [{"type": "text", "text": "{{code}}"}]}]},
        "recipients": [{"to": "+16505550002"}]}))
    .await;
    assert_eq!((status, answer["error"]["code"].as_str()), (422, Some("no_recipients")), "{answer}");
    assert_eq!(answer["error"]["details"]["rejected"][0]["reason"], "no value for the variable \"code\"", "{answer}");

    // A CSV body: the bad row is reported by its line; duplicates removed.
    let auth = format!("Bearer {}", api.token);
    let path = format!("/v1/campaigns?inbox_id={inbox}&text=Hi%20%7B%7Bname%7D%7D&rate_per_sec=5&dry_run=true");
    let csv = "to,name\n+1 650 555 0001,Ana\n\"\",Bo\n+1 650 555 0001,Ana again\n";
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "text/csv")];
    let response = http_request(http, "POST", &path, &headers, Some(csv)).await.unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let report = &response.json()["report"];
    assert_eq!(report["accepted"], 1, "{report}");
    assert_eq!(report["duplicates"], 1, "{report}");
    assert_eq!(report["rejected"][0]["line"], 3, "{report}");

    // An agent may not run campaigns.
    env.user(&tenant, "agent@bad.test", "agent-pass-1", "agent");
    let token = login(http, "agent@bad.test", "agent-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let agent = Client { http, token };
    let response = agent
        .call(
            "POST",
            "/v1/campaigns",
            Some(json!({"inbox_id": inbox, "text": "Hi", "rate_per_sec": 5, "recipients": one})),
        )
        .await;
    assert_eq!(response.status, 403, "{}", response.body);
    assert_eq!(agent.call("GET", "/v1/campaigns", None).await.status, 403);
    let response = api.call("GET", &format!("/v1/campaigns/{}", uuid::Uuid::now_v7()), None).await;
    assert_eq!(response.status, 404);

    // Nothing was created or enqueued.
    assert_eq!(api.call("GET", "/v1/campaigns", None).await.json()["items"].as_array().unwrap().len(), 0);
    let redis = chatdesk_streams::RedisConnector::new(chatdesk_streams::RedisSettings::new(&env.redis_url))
        .unwrap()
        .shared()
        .await
        .unwrap();
    let keys = chatdesk_core::KeyScheme::new(&env.prefix).unwrap();
    let streams =
        chatdesk_core::StreamsConfig::from_toml_str("streams.toml", include_str!("../../../../streams.toml")).unwrap();
    let broadcast = streams.stream("broadcast").unwrap();
    for partition in 0..broadcast.partitions {
        let length: u64 = redis.xlen(keys.partition(&broadcast.name, partition).stream).await.unwrap();
        assert_eq!(length, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_telegram_user_who_blocks_the_bot_is_skipped_until_they_start_it_again() {
    let env = Env::start().await;
    let http = free_addr();
    let _chatdesk = serve_roles(&env, "ingress,writer", http, &[]).await;
    let (tenant, api) = marketer(&env, http, "tg").await;
    let inbox = admin(
        &env,
        &["inbox", "create", "--tenant", &tenant, "--kind", "telegram", "--name", "Bot", "--bot-token", "1:A"],
    );
    let membership = |update: i64, status: &str| {
        json!({"update_id": update, "my_chat_member": {"chat": {"id": 4242, "type": "private", "first_name": "Ana"},
               "from": {"id": 4242, "first_name": "Ana"}, "date": 1_749_416_383,
               "old_chat_member": {"status": "member", "user": {"id": 1, "first_name": "bot"}},
               "new_chat_member": {"status": status, "user": {"id": 1, "first_name": "bot"}}}})
        .to_string()
    };
    let secret = inbox["secret"].as_str().unwrap();
    let path = inbox["webhook_path"].as_str().unwrap();
    let response = post(http, path, &[("X-Telegram-Bot-Api-Secret-Token", secret)], &membership(1, "kicked")).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let dry_run = json!({"inbox_id": inbox["inbox_id"], "text": "News", "rate_per_sec": 5, "dry_run": true,
                         "recipients": [{"to": "4242"}, {"to": "4343"}]});
    let report = |api: &Client| {
        let body = dry_run.clone();
        let api = Client { http: api.http, token: api.token.clone() };
        async move { api.call("POST", "/v1/campaigns", Some(body)).await.json()["report"].clone() }
    };
    chatdesk_testkit::eventually("the blocked chat opted out", Duration::from_secs(30), || async {
        let report = report(&api).await;
        (report["opted_out"] == 1).then_some(())
    })
    .await;
    let response = post(http, path, &[("X-Telegram-Bot-Api-Secret-Token", secret)], &membership(2, "member")).await;
    assert_eq!(response.status, 200, "{}", response.body);
    chatdesk_testkit::eventually("the restarted chat reachable again", Duration::from_secs(30), || async {
        let report = report(&api).await;
        (report["opted_out"] == 0 && report["accepted"] == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_sent_after_a_campaign_expires_and_the_rest_is_expired() {
    let env = Env::start().await;
    let receiver = StandIn::start(by_to, |_, _| ok_generic()).await;
    let http = free_addr();
    let _chatdesk = serve_roles(&env, "ingress,writer,sender,broadcaster", http, &[]).await;
    let (tenant, api) = marketer(&env, http, "expiry").await;
    let inbox = generic_inbox(&env, &tenant, &receiver.url());
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    let expires_at = expires.format(&time::format_description::well_known::Rfc3339).unwrap();
    let campaign = create(
        &api,
        json!({"inbox_id": inbox, "text": "Today only", "rate_per_sec": 2, "expires_at": expires_at,
               "recipients": recipients("e", 30)}),
    )
    .await;
    let id = campaign["id"].as_str().unwrap();
    let done =
        campaign_when(&api, id, "the campaign finished", Duration::from_secs(30), |c| c["status"] == "finished").await;
    counts_add_up(&done);
    let sent = done["counts"]["sent"].as_i64().unwrap();
    assert!((1..30).contains(&sent), "{done}");
    assert_eq!(done["counts"]["expired"].as_i64().unwrap(), 30 - sent, "{done}");
    let expired_at = std::time::SystemTime::UNIX_EPOCH + Duration::from_nanos(expires.unix_timestamp_nanos() as u64);
    until_deliveries_finished(&env).await;
    let late = receiver
        .received()
        .iter()
        .filter(|request| {
            // The stand-in's clock is monotonic: compare through the elapsed time.
            let ago = request.at.elapsed();
            std::time::SystemTime::now() - ago > expired_at
        })
        .count();
    assert_eq!(late, 0, "sent after the campaign expired");
    assert_eq!(receiver.received().len() as i64, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_audience_of_stored_contacts_is_sent_to_with_their_names() {
    let env = Env::start().await;
    let receiver = StandIn::start(by_to, |_, _| ok_generic()).await;
    let http = free_addr();
    let _chatdesk = serve_roles(&env, "ingress,writer,sender,broadcaster", http, &[]).await;
    let (tenant, api) = marketer(&env, http, "audience").await;
    let inbox = admin(
        &env,
        &[
            "inbox",
            "create",
            "--tenant",
            &tenant,
            "--kind",
            "generic",
            "--name",
            "Out",
            "--outbound-url",
            &receiver.url(),
        ],
    );
    for (index, name) in ["Ana", "Bo", "Cy"].iter().enumerate() {
        let body = json!({"message_id": format!("m-{index}"), "from": {"id": format!("cust-{index}"), "name": name}, "text": "hi"})
            .to_string();
        let response = crate::support::post_generic(http, &inbox, &body).await;
        assert_eq!(response.status, 200, "{}", response.body);
    }
    let id = inbox["inbox_id"].as_str().unwrap();
    let refused = api
        .call(
            "POST",
            "/v1/campaigns",
            Some(
                json!({"inbox_id": id, "text": "Hi {{name}}", "rate_per_sec": 5, "audience": {"seen_within_days": 0}}),
            ),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let both = api
        .call(
            "POST",
            "/v1/campaigns",
            Some(json!({"inbox_id": id, "text": "Hi", "rate_per_sec": 5, "audience": {}, "recipients": []})),
        )
        .await;
    assert_eq!(both.status, 422, "{}", both.body);
    // The writer stores the contacts a moment after the webhooks were taken.
    let campaign = chatdesk_testkit::eventually("three stored contacts", Duration::from_secs(30), || async {
        let response = api
            .call(
                "POST",
                "/v1/campaigns",
                Some(json!({"inbox_id": id, "text": "Hi {{name}}", "rate_per_sec": 5,
                                                        "audience": {"seen_within_days": 30}, "dry_run": true})),
            )
            .await;
        (response.status == 200 && response.json()["report"]["accepted"] == 3).then_some(())
    })
    .await;
    let () = campaign;
    let campaign = create(
        &api,
        json!({"inbox_id": id, "text": "Hi {{name}}", "rate_per_sec": 5, "audience": {"seen_within_days": 30}}),
    )
    .await;
    let received = receiver.wait_for("three sends", |received| received.len() >= 3).await;
    let mut texts: Vec<String> =
        received.iter().map(|request| request.body["text"].as_str().unwrap().to_owned()).collect();
    texts.sort();
    assert_eq!(texts, ["Hi Ana", "Hi Bo", "Hi Cy"]);
    campaign_when(&api, campaign["id"].as_str().unwrap(), "finished", Duration::from_secs(30), |c| {
        c["status"] == "finished"
    })
    .await;
}
