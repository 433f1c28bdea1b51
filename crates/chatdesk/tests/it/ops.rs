//! The operators' tools as an SRE uses them after an incident: replaying a window into one
//! group, redriving dead letters, honest lag, retention held back, the audit log, and refusals.

use chatdesk_testkit::free_addr;
use std::collections::HashMap;
use std::process::Output;
use std::time::{Duration, Instant};

use chatdesk_core::KeyScheme;
use fred::prelude::*;
use serde_json::{Value, json};

use crate::standin::{Answer, StandIn};
use crate::support::{Client, Env, generic_body, generic_inbox, login, post_generic, quick_claims, serve_roles};

const SHIPPED_STREAMS: &str = include_str!("../../../../streams.toml");

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// `chatdesk <args>` against the test's servers.
fn cli(env: &Env, streams: &std::path::Path, args: &[&str]) -> Output {
    command(env, streams, args).output().unwrap()
}

fn command(env: &Env, streams: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_chatdesk"));
    command
        .args(args)
        .env("REDIS_URL", &env.redis_url)
        .env("DATABASE_URL", &env.database_url)
        .env("CHATDESK_KEY_PREFIX", &env.prefix)
        .env("CHATDESK_STREAMS", streams)
        .env_remove("CHATDESK_LOG_FORMAT");
    command
}

fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{:?}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn count(pool: &sqlx::PgPool, sql: &'static str, tenant: uuid::Uuid) -> i64 {
    let (count,): (i64,) = sqlx::query_as(sql).bind(tenant).fetch_one(pool).await.unwrap();
    count
}

async fn until_count(pool: &sqlx::PgPool, what: &str, sql: &'static str, tenant: uuid::Uuid, expected: i64) {
    chatdesk_testkit::wait_until(what, Duration::from_secs(60), || async {
        count(pool, sql, tenant).await == expected
    })
    .await;
}

/// The tenant's last stored message offset (ms), once the clock has passed it.
async fn clock_past(pool: &sqlx::PgPool, tenant: uuid::Uuid) -> u64 {
    let (last,): (i64,) = sqlx::query_as("SELECT max(offset_ms) FROM messages WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap();
    let last = last as u64;
    chatdesk_testkit::wait_until("the clock past the last offset", Duration::from_secs(5), || async {
        now_ms() > last
    })
    .await;
    last
}

const MESSAGES: &str = "SELECT count(*) FROM messages WHERE tenant_id = $1";
const DISTINCT_MESSAGES: &str = "SELECT count(DISTINCT body) FROM messages WHERE tenant_id = $1";

fn audit(env: &Env, streams: &std::path::Path) -> Vec<Value> {
    succeeded(&cli(env, streams, &["audit", "list", "--json"]))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Rows of a time window are deleted from PostgreSQL; replaying that window into the writer
/// restores them exactly, as the plan said, without touching unread counts.
#[tokio::test]
async fn an_incident_drill_restores_a_deleted_window_exactly() {
    let env = Env::start().await;
    // The shipped settings (the writer claims every 15 s): the replay tells it to claim at once.
    let streams = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(streams.path(), SHIPPED_STREAMS).unwrap();
    let tenant = env.tenant("owner@drill.test", "owner-pass-1");
    let tenant_id: uuid::Uuid = tenant["tenant_id"].as_str().unwrap().parse().unwrap();
    let inbox = generic_inbox(&env, tenant["tenant_id"].as_str().unwrap(), "Web", "http://127.0.0.1:9/out");
    let http = free_addr();
    let streams_path = streams.path().display().to_string();
    let _server = serve_roles(&env, "ingress,writer,gateway", http, &[("CHATDESK_STREAMS", &streams_path)]).await;
    let pool = sqlx::PgPool::connect(&env.database_url).await.unwrap();

    let mut sent = 0;
    let mut send_ten = async |label: &str| {
        for index in 0..10 {
            let from = format!("customer-{}", index % 3);
            let body = generic_body(&format!("{label}-{index}"), &from, &format!("{label} message {index}"));
            assert_eq!(post_generic(http, &inbox, &body).await.status, 200);
        }
        sent += 10;
        until_count(&pool, "the messages stored", MESSAGES, tenant_id, sent).await;
    };
    // The window is the stream offsets of the "during" messages: each batch is sent once the
    // clock has passed the previous one's last offset, so no millisecond holds two batches.
    send_ten("before").await;
    let window_start = clock_past(&pool, tenant_id).await + 1;
    send_ten("during").await;
    let window_end = clock_past(&pool, tenant_id).await;
    send_ten("after").await;

    let unread_before: Vec<(uuid::Uuid, i32, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT id, unread_count, last_message_id FROM conversations WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    let events_before = count(&pool, "SELECT count(*) FROM events WHERE tenant_id = $1", tenant_id).await;

    // The incident: a window of rows is lost.
    for delete in [
        "DELETE FROM messages WHERE tenant_id = $1 AND offset_ms BETWEEN $2 AND $3",
        "DELETE FROM events WHERE tenant_id = $1 AND offset_ms BETWEEN $2 AND $3",
    ] {
        sqlx::query(delete)
            .bind(tenant_id)
            .bind(window_start as i64)
            .bind(window_end as i64)
            .execute(&pool)
            .await
            .unwrap();
    }
    assert_eq!(count(&pool, MESSAGES, tenant_id).await, 20);
    let lost_events = events_before - count(&pool, "SELECT count(*) FROM events WHERE tenant_id = $1", tenant_id).await;
    assert!(lost_events >= 10, "{lost_events}");

    // The plan, then the replay.
    let (from, to) = (rfc3339(window_start), rfc3339(window_end));
    let args = ["streams", "replay", "--group", "writer", "--from", &from, "--to", &to];
    let plan = succeeded(&cli(&env, streams.path(), &args));
    assert!(plan.contains(&format!("{lost_events} entries")), "{plan}");
    assert!(plan.contains("nothing done"), "{plan}");
    assert_eq!(count(&pool, MESSAGES, tenant_id).await, 20, "a plan changes nothing");

    let mut execute = args.to_vec();
    execute.push("--execute");
    let output = succeeded(&cli(&env, streams.path(), &execute));
    assert!(output.contains(&format!("moved {lost_events}/{lost_events}")), "{output}");

    assert_eq!(count(&pool, MESSAGES, tenant_id).await, 30, "every lost row is back");
    assert_eq!(count(&pool, DISTINCT_MESSAGES, tenant_id).await, 30, "no duplicates");
    assert_eq!(count(&pool, "SELECT count(*) FROM events WHERE tenant_id = $1", tenant_id).await, events_before);
    let unread_after: Vec<(uuid::Uuid, i32, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT id, unread_count, last_message_id FROM conversations WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(unread_after, unread_before, "unread counts and last messages unchanged");

    // A second replay of the same window changes nothing.
    succeeded(&cli(&env, streams.path(), &execute));
    assert_eq!(count(&pool, MESSAGES, tenant_id).await, 30);

    let records = audit(&env, streams.path());
    let replays: Vec<&Value> = records.iter().filter(|record| record["action"] == "replay").collect();
    assert_eq!(replays.len(), 2, "{records:?}");
    assert!(replays.iter().all(|record| record["actor"] == "cli" && record["outcome"] == "done"), "{replays:?}");
    assert_eq!(replays[1]["entries"], json!(lost_events));
    assert_eq!(replays[1]["target"]["group"], "writer");
}

/// Replaying the sender's range re-sends nothing that was sent: the stand-in counts calls.
#[tokio::test]
async fn a_replay_into_the_sender_sends_nothing_twice() {
    let env = Env::start().await;
    let streams = quick_claims();
    let receiver = StandIn::start(|request| request.path.clone(), |_, _| Answer::json(200, json!({"id": "ext"}))).await;
    let tenant = env.tenant("owner@resend.test", "owner-pass-1");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    let inbox = generic_inbox(&env, &tenant_id, "Out", &format!("{}/replies", receiver.url()));
    let http = free_addr();
    let streams_path = streams.path().display().to_string();
    let _server =
        serve_roles(&env, "ingress,writer,gateway,sender", http, &[("CHATDESK_STREAMS", &streams_path)]).await;
    let token = login(http, "owner@resend.test", "owner-pass-1").await.json()["token"].as_str().unwrap().to_owned();
    let api = Client { http, token };
    assert_eq!(post_generic(http, &inbox, &generic_body("in-1", "ana", "hello")).await.status, 200);
    let conversation = crate::support::conversation_of(&api, "ana").await["id"].as_str().unwrap().to_owned();
    let started = now_ms();
    for index in 0..5 {
        let response = api
            .call(
                "POST",
                &format!("/v1/conversations/{conversation}/messages"),
                Some(json!({"text": format!("reply {index}")})),
            )
            .await;
        assert_eq!(response.status, 202, "{}", response.body);
    }
    receiver.wait_for("five replies delivered", |received| received.len() == 5).await;
    crate::support::until_deliveries_finished(&env).await;

    let from = format!("{started}");
    let output = succeeded(&cli(
        &env,
        streams.path(),
        &["streams", "replay", "--group", "sender", "--from", &from, "--execute"],
    ));
    assert!(output.contains("moved 5/5"), "{output}");
    // The command returned once the sender had acknowledged every replayed entry, and the sender
    // queues a job before it acknowledges the entry: a wrongly admitted job is in the queue now,
    // and has reached the receiver once the queue is empty.
    crate::support::until_deliveries_finished(&env).await;
    assert_eq!(receiver.received().len(), 5, "nothing was sent twice");
}

/// A poison entry is dead-lettered; once the cause is fixed, a paced redrive (progress, cancel)
/// gets each handled once and gone from the dead letters.
#[tokio::test]
async fn dead_letters_are_redriven_once_the_cause_is_fixed() {
    let env = Env::start().await;
    let streams = quick_claims();
    let tenant = env.tenant("owner@poison.test", "owner-pass-1");
    let tenant_id: uuid::Uuid = tenant["tenant_id"].as_str().unwrap().parse().unwrap();
    let inbox = generic_inbox(&env, &tenant_id.to_string(), "Web", "http://127.0.0.1:9/out");
    let pool = sqlx::PgPool::connect(&env.database_url).await.unwrap();
    let http = free_addr();
    let streams_path = streams.path().display().to_string();
    let _server = serve_roles(&env, "ingress,writer,gateway", http, &[("CHATDESK_STREAMS", &streams_path)]).await;
    // The bug: the store refuses some messages.
    crate::support::refuse_poison(&pool).await;
    assert_eq!(post_generic(http, &inbox, &generic_body("hello", "ana", "hello first")).await.status, 200);
    until_count(&pool, "the first message stored", MESSAGES, tenant_id, 1).await;
    const POISON: usize = 110;
    for index in 0..POISON {
        let body = generic_body(&format!("poison-{index}"), "ana", &format!("poison {index}"));
        assert_eq!(post_generic(http, &inbox, &body).await.status, 200);
    }
    chatdesk_testkit::wait_until("every poison message dead-lettered", Duration::from_secs(60), || async {
        crate::support::dead_letters(&env, "events").await == POISON as u64
    })
    .await;

    let listed: Value = serde_json::from_str(&succeeded(&cli(
        &env,
        streams.path(),
        &["streams", "dlq", "list", "--error", "POISON", "--json", "--limit", "5"],
    )))
    .unwrap();
    assert_eq!(listed["total"], POISON);
    assert_eq!(listed["letters"].as_array().unwrap().len(), 5);
    let reference = listed["letters"][0]["reference"].as_str().unwrap().to_owned();
    let shown: Value =
        serde_json::from_str(&succeeded(&cli(&env, streams.path(), &["streams", "dlq", "show", &reference]))).unwrap();
    assert_eq!(shown["group"], "writer");
    assert!(shown["error"].as_str().unwrap().contains("faulty trigger"), "{shown}");
    let fields: HashMap<String, String> = serde_json::from_value(shown["fields"].clone())
        .map(|pairs: Vec<(String, String)>| pairs.into_iter().collect())
        .unwrap();
    assert_eq!(fields["type"], "message.created");
    assert!(fields["payload"].contains("poison"), "{fields:?}");

    // The fix.
    crate::support::accept_poison(&pool).await;

    // A redrive at 10/s, cancelled after a few entries.
    let first = command(&env, streams.path(), &["streams", "dlq", "redrive", "--error", "poison", "--rate", "10"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let task = chatdesk_testkit::eventually("the redrive moving", Duration::from_secs(30), || async {
        let output = cli(&env, streams.path(), &["streams", "tasks", "--json"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|task| task["kind"] == "redrive" && task["moved"].as_u64().unwrap_or(0) >= 3)
    })
    .await;
    let id = task["id"].as_str().unwrap();
    succeeded(&cli(&env, streams.path(), &["streams", "cancel", id]));
    let output = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap()).await.unwrap();
    assert_eq!(
        output.status.code(),
        Some(3),
        "a cancelled redrive says so: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cancelled: Value =
        serde_json::from_str(succeeded(&cli(&env, streams.path(), &["streams", "tasks", id, "--json"])).trim())
            .unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    let moved = cancelled["moved"].as_u64().unwrap();
    assert!((3..=12).contains(&moved), "stopped soon after cancel: {cancelled}");
    assert_eq!(cancelled["remaining"].as_u64().unwrap(), POISON as u64 - moved);
    assert_eq!(
        crate::support::dead_letters(&env, "events").await,
        POISON as u64 - moved,
        "the rest stays dead-lettered"
    );

    // A slow redrive (one letter per 10 s) keeps its lock and notices a cancel while it waits.
    let listed: Value = serde_json::from_str(&succeeded(&cli(
        &env,
        streams.path(),
        &["streams", "dlq", "list", "--json", "--limit", "3"],
    )))
    .unwrap();
    let three: Vec<&str> =
        listed["letters"].as_array().unwrap().iter().map(|letter| letter["reference"].as_str().unwrap()).collect();
    let ids = three.join(",");
    let slow = command(&env, streams.path(), &["streams", "dlq", "redrive", "--ids", &ids, "--rate", "0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let slow_task =
        chatdesk_testkit::eventually("the slow redrive moving its first letter", Duration::from_secs(30), || async {
            let output = cli(&env, streams.path(), &["streams", "tasks", "--json"]);
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|task| task["kind"] == "redrive" && task["state"] == "running" && task["moved"] == 1)
        })
        .await;
    let slow_id = slow_task["id"].as_str().unwrap().to_owned();
    // Past the lock's 15 s (the second letter went at 10 s, the third is due at 20 s): still
    // running, still holding the family.
    let task = chatdesk_testkit::eventually("the slow redrive running past 16 s", Duration::from_secs(30), || async {
        let output = cli(&env, streams.path(), &["streams", "tasks", &slow_id, "--json"]);
        let task: Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).ok()?;
        let started = task["started_ms"].as_u64()?;
        (task["state"] != "running" || now_ms() >= started + 16_000).then_some(task)
    })
    .await;
    assert_eq!(task["state"], "running", "{task}");
    let second = cli(&env, streams.path(), &["streams", "dlq", "redrive", "--group", "writer"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another redrive is running on redrive:events"), "{stderr}");
    succeeded(&cli(&env, streams.path(), &["streams", "cancel", &slow_id]));
    let output = tokio::task::spawn_blocking(move || slow.wait_with_output().unwrap()).await.unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    let moved = moved + 2;

    // The rest, at 10/s: paced, with progress.
    let remaining = POISON as u64 - moved;
    let started = Instant::now();
    let output = cli(&env, streams.path(), &["streams", "dlq", "redrive", "--group", "writer", "--rate", "10"]);
    let elapsed = started.elapsed();
    let stdout = succeeded(&output);
    assert!(stdout.contains(&format!("moved {remaining}/{remaining}")), "{stdout}");
    assert!(
        elapsed >= Duration::from_secs_f64((remaining - 1) as f64 / 10.0),
        "paced at 10/s: {elapsed:?} for {remaining}"
    );
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(
        progress.lines().filter(|line| line.contains("[Running] moved")).count() >= 5,
        "progress reported: {progress}"
    );

    // Each handled once, gone from the dead letters.
    until_count(&pool, "every redriven message stored", MESSAGES, tenant_id, 1 + POISON as i64).await;
    assert_eq!(count(&pool, DISTINCT_MESSAGES, tenant_id).await, 1 + POISON as i64);
    assert_eq!(crate::support::dead_letters(&env, "events").await, 0);
    let records = audit(&env, streams.path());
    let redrives: Vec<&Value> = records.iter().filter(|record| record["action"] == "dlq.redrive").collect();
    assert_eq!(redrives.len(), 3, "{records:?}");
    assert_eq!(redrives[0]["outcome"], "done");
    assert_eq!(redrives[1]["outcome"], "cancelled");
    assert_eq!(redrives[1]["entries"], 2);
    assert_eq!(redrives[2]["outcome"], "cancelled");
    assert_eq!(redrives[2]["actor"], "cli");
}

/// XADDs `count` entries at `millis` (sequence 1, 2, …) into a partition of `events`.
async fn add_entries(redis: &fred::clients::Client, key: &str, millis: u64, count: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for sequence in 1..=count {
        let id = format!("{millis}-{sequence}");
        let added: String =
            redis.xadd(key, false, None, id.as_str(), vec![("type", "test"), ("n", "1")]).await.unwrap();
        ids.push(added);
    }
    ids
}

type ReadResponse = HashMap<String, Vec<(String, HashMap<String, String>)>>;

async fn read_as(redis: &fred::clients::Client, key: &str, group: &str, count: u64) -> Vec<String> {
    let read: ReadResponse = redis
        .xreadgroup_map(group, "reader", Some(count), None, false, key, fred::types::streams::XID::NewInGroup)
        .await
        .unwrap();
    read.into_values().flatten().map(|(id, _)| id).collect()
}

/// Retention never passes what the durable group has not acknowledged, `status` names the
/// group holding it back, and once caught up the stream is trimmed to its retention. After
/// `XGROUP SETID` and a trim, the lag Redis cannot tell is counted and marked estimated.
#[tokio::test]
async fn status_names_what_holds_retention_and_marks_estimated_lag() {
    let env = Env::start().await;
    let streams = quick_claims();
    let redis = crate::support::redis_client(&env).await;
    let config = crate::support::shipped_streams();
    let events = config.stream("events").unwrap();
    let keys = KeyScheme::new(&env.prefix).unwrap();
    let key = keys.partition(&events.name, 2).stream;
    let week_ago = now_ms() - 8 * 24 * 3600 * 1000;
    let old = add_entries(&redis, &key, week_ago, 10).await;
    let _: () = redis.xgroup_create(&key, "writer", "0", true).await.unwrap();
    let read = read_as(&redis, &key, "writer", 5).await;
    assert_eq!(read, old[..5]);
    let _: u64 = redis.xack(&key, "writer", old[..3].to_vec()).await.unwrap();
    let recent = add_entries(&redis, &key, now_ms(), 2).await;

    let trimmed = chatdesk_streams::retention::trim_partition(&redis, &keys, events, 2, now_ms()).await.unwrap();
    assert_eq!(trimmed.removed, 3, "only what the writer acknowledged");
    let status = |family: &str| -> Vec<Value> {
        succeeded(&cli(&env, streams.path(), &["streams", "status", "--json", "--family", family]))
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let partition = status("events").into_iter().find(|report| report["partition"] == 2).unwrap();
    assert_eq!(partition["length"], 9);
    assert_eq!(partition["retention_held_by"]["group"], "writer", "{partition}");
    assert_eq!(partition["retention_held_by"]["reason"], "pending");
    assert_eq!(partition["retention_held_by"]["since_id"], old[3]);
    let writer =
        partition["groups"].as_array().unwrap().iter().find(|group| group["group"] == "writer").unwrap().clone();
    assert_eq!(writer["pending"], 2);
    assert_eq!(writer["lag"], 7);
    assert_eq!(writer["lag_estimated"], false);
    assert!(writer["oldest_pending_age_ms"].as_u64().unwrap() >= 8 * 24 * 3600 * 1000);
    let table = succeeded(&cli(&env, streams.path(), &["streams", "status", "--family", "events"]));
    assert!(table.contains("events/2: retention held back by writer (an entry pending since"), "{table}");

    // Caught up: trimmed to retention, only the recent entries stay.
    let rest = read_as(&redis, &key, "writer", 100).await;
    assert_eq!(rest.len(), 7);
    let _: u64 = redis.xack(&key, "writer", old[3..].iter().chain(&recent).cloned().collect::<Vec<_>>()).await.unwrap();
    let trimmed = chatdesk_streams::retention::trim_partition(&redis, &keys, events, 2, now_ms()).await.unwrap();
    assert_eq!(trimmed.removed, 7);
    let partition = status("events").into_iter().find(|report| report["partition"] == 2).unwrap();
    assert_eq!(partition["length"], 2);
    assert!(partition["retention_held_by"].is_null(), "{partition}");

    // An operator moves the group back without ENTRIESREAD, then an entry is deleted: Redis
    // reports no lag; status counts it and says so.
    let more = add_entries(&redis, &key, now_ms() + 1, 4).await;
    let _: () = redis.xgroup_setid(&key, "writer", recent[0].as_str()).await.unwrap();
    let _: u64 = redis.xdel(&key, more[0].as_str()).await.unwrap();
    let partition = status("events").into_iter().find(|report| report["partition"] == 2).unwrap();
    let writer =
        partition["groups"].as_array().unwrap().iter().find(|group| group["group"] == "writer").unwrap().clone();
    assert_eq!(writer["lag_estimated"], true, "{writer}");
    assert_eq!(writer["lag"], 4, "the second recent entry and three of the four new: {writer}");
    let table = succeeded(&cli(&env, streams.path(), &["streams", "status", "--family", "events"]));
    assert!(table.contains("4~"), "{table}");
    assert!(table.contains("lag counted in the stream"), "{table}");

    // A durable group missing from a partition holds everything there.
    let other = keys.partition(&events.name, 5).stream;
    add_entries(&redis, &other, week_ago, 1).await;
    let partition = status("events").into_iter().find(|report| report["partition"] == 5).unwrap();
    assert_eq!(partition["retention_held_by"]["reason"], "missing", "{partition}");

    // A replay reaching into what retention trimmed: the plan says so, and it is refused with
    // what the stream still holds.
    let from = week_ago.to_string();
    let args = ["streams", "replay", "--group", "writer", "--from", from.as_str(), "--partition", "2"];
    let plan = succeeded(&cli(&env, streams.path(), &args));
    assert!(plan.contains(&format!("partly trimmed (holds from {})", recent[0])), "{plan}");
    let mut execute = args.to_vec();
    execute.push("--execute");
    let refused = cli(&env, streams.path(), &execute);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("part of the range was trimmed by retention"), "{stderr}");
    assert!(stderr.contains(&format!("it holds entries from {}", recent[0])), "{stderr}");

    // One replay per group: while one waits for the writer (no process runs it here: what it
    // handed over stays pending), a second is refused; cancelling the first frees the group.
    let _: () = redis.xgroup_setid(&key, "writer", "$").await.unwrap();
    let from = recent[0].clone();
    let first =
        command(&env, streams.path(), &["streams", "replay", "--group", "writer", "--from", &from, "--execute"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let task = chatdesk_testkit::eventually("the first replay waiting", Duration::from_secs(30), || async {
        let output = cli(&env, streams.path(), &["streams", "tasks", "--json"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|task| task["kind"] == "replay" && task["state"] == "running" && task["moved"].as_u64() > Some(0))
    })
    .await;
    let second = cli(&env, streams.path(), &["streams", "replay", "--group", "writer", "--from", &from, "--execute"]);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another replay is running on replay:events:writer"), "{stderr}");
    succeeded(&cli(&env, streams.path(), &["streams", "cancel", task["id"].as_str().unwrap()]));
    let output = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap()).await.unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    let again = succeeded(&cli(&env, streams.path(), &["streams", "replay", "--group", "writer", "--from", &from]));
    assert!(again.contains("nothing done"), "{again}");

    // `XGROUP SETID` back to the start, then a trim: whatever Redis makes of it, the lag shown is
    // the entries after the group's position that are still there, never 0.
    let fresh = keys.partition(&events.name, 6).stream;
    let entries = add_entries(&redis, &fresh, now_ms() + 10, 5).await;
    let _: () = redis.xgroup_create(&fresh, "writer", "$", false).await.unwrap();
    let _: () = redis.xgroup_setid(&fresh, "writer", entries[0].as_str()).await.unwrap();
    let trimmed: u64 = redis.xtrim(&fresh, ("MINID", "=", entries[2].as_str())).await.unwrap();
    assert_eq!(trimmed, 2);
    let partition = status("events").into_iter().find(|report| report["partition"] == 6).unwrap();
    let writer =
        partition["groups"].as_array().unwrap().iter().find(|group| group["group"] == "writer").unwrap().clone();
    assert_eq!(writer["lag"], 3, "{writer}");
}

/// Bad input gets a clear error and nothing is done (nothing in the audit log).
#[tokio::test]
async fn operator_commands_refuse_bad_input() {
    let env = Env::start().await;
    env.tenant("owner@refuse.test", "owner-pass-1");
    let streams = quick_claims();
    let cases: &[(&[&str], &str)] = &[
        (&["streams", "replay", "--group", "nobody", "--from", "-1h"], "unknown consumer group \"nobody\""),
        (
            &["streams", "replay", "--family", "letters", "--group", "writer", "--from", "-1h"],
            "unknown stream family \"letters\"",
        ),
        (
            &[
                "streams",
                "replay",
                "--group",
                "writer",
                "--from",
                "2026-12-06T10:00:00Z",
                "--to",
                "2026-12-06T09:00:00Z",
            ],
            "--from 2026-12-06T10:00:00Z is after --to 2026-12-06T09:00:00Z",
        ),
        (&["streams", "replay", "--group", "writer", "--from", "yesterday"], "--from \"yesterday\""),
        (
            &["streams", "replay", "--group", "writer", "--from", "-1h", "--partition", "8"],
            "partition 8 is out of range",
        ),
        (&["streams", "replay", "--group", "gateway", "--from", "-1h"], "only follows live traffic"),
        (&["streams", "claim", "--group", "writer", "--idle", "soon"], "invalid value 'soon' for '--idle <IDLE>'"),
        (&["streams", "claim", "--group", "writer", "--idle", "0s"], "idle must be at least 1s"),
        (&["streams", "dlq", "show", "events/x/1-0"], "is not a dead-letter reference"),
        (&["streams", "dlq", "show", "events/3/1-0"], "no dead letter events/3/1-0"),
        (&["streams", "dlq", "redrive"], "name what to redrive"),
        (&["streams", "dlq", "redrive", "--error", " "], "name what to redrive"),
        (&["streams", "dlq", "redrive", "--all", "--rate", "0"], "rate must be 0.1 to 10000 per second"),
        (&["streams", "dlq", "redrive", "--all", "--rate", "1e-300"], "rate must be 0.1 to 10000 per second"),
        (&["streams", "dlq", "redrive", "--ids", "send/99/1-0"], "partition 99 is out of range"),
        (&["streams", "dlq", "list", "--limit", "0"], "0 is not in 1..=1000"),
        (&["streams", "claim", "--group", "writer", "--idle", "2s"], "at least the group's claim_idle (4s)"),
        (&["streams", "claim", "--group", "writer", "--idle", "400d"], "at most 365d"),
        (&["streams", "claim", "--group", "writer.evil", "--idle", "5m"], "unknown consumer group \"writer.evil\""),
        (&["streams", "claim", "--group", "writer", "--idle", "5m"], "does not exist on any partition"),
        (&["streams", "dlq", "list", "--since", "-1h", "--until", "-2h"], "since is after until"),
        (&["streams", "tasks", "no-such-task"], "no task \"no-such-task\""),
    ];
    for (args, message) in cases {
        let output = cli(&env, streams.path(), args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(audit(&env, streams.path()).is_empty(), "nothing done, nothing recorded");
    // Purge without --execute only counts.
    let output = succeeded(&cli(&env, streams.path(), &["streams", "dlq", "purge"]));
    assert!(output.contains("0 dead letters match; nothing done"), "{output}");
    assert!(audit(&env, streams.path()).is_empty());
}

/// The `/v1/ops` routes are for the operators' SREs only; they plan, act and record under the
/// caller's e-mail like the CLI does under `cli`.
#[tokio::test]
async fn the_ops_routes_are_for_the_operators_and_audit_who_acted() {
    let env = Env::start().await;
    let streams = quick_claims();
    let operators = env.tenant("owner@operators.test", "owner-pass-1");
    let operators_id = operators["tenant_id"].as_str().unwrap().to_owned();
    let customer = env.tenant("owner@customer.test", "owner-pass-1");
    env.user(&operators_id, "sre@operators.test", "sre-pass-1", "sre");
    env.user(customer["tenant_id"].as_str().unwrap(), "sre@customer.test", "sre-pass-1", "sre");
    let http = free_addr();
    let streams_path = streams.path().display().to_string();
    // No CHATDESK_OPS_TENANT: the first tenant created is the operators'.
    let _server = serve_roles(&env, "ingress,writer,gateway", http, &[("CHATDESK_STREAMS", &streams_path)]).await;
    let client = async |email: &str, password: &str| {
        let token = login(http, email, password).await.json()["token"].as_str().unwrap().to_owned();
        Client { http, token }
    };
    let sre = client("sre@operators.test", "sre-pass-1").await;
    for outsider in [
        client("owner@operators.test", "owner-pass-1").await,
        client("sre@customer.test", "sre-pass-1").await,
        client("owner@customer.test", "owner-pass-1").await,
    ] {
        for (method, path, body) in [
            ("GET", "/v1/ops/streams", None),
            ("GET", "/v1/ops/dlq", None),
            ("POST", "/v1/ops/replay", Some(json!({"group": "writer", "from": "-1h", "execute": true}))),
            ("POST", "/v1/ops/dlq/purge", Some(json!({"execute": true}))),
            ("GET", "/v1/ops/audit", None),
        ] {
            let response = outsider.call(method, path, body).await;
            assert_eq!(response.status, 403, "{method} {path}: {}", response.body);
        }
    }

    let status = sre.call("GET", "/v1/ops/streams?family=events", None).await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.json()["partitions"].as_array().unwrap().len(), 8);
    let plan = sre.call("POST", "/v1/ops/replay", Some(json!({"group": "writer", "from": "-1h"}))).await;
    assert_eq!(plan.status, 200, "{}", plan.body);
    assert_eq!(plan.json()["task"], Value::Null, "a plan does nothing");
    for (body, message) in [
        (json!({"group": "nobody", "from": "-1h"}), "unknown consumer group"),
        (json!({"group": "writer", "from": "-1h", "partition": 99}), "partition 99 is out of range"),
        (json!({"group": "writer", "from": "soon"}), "--from \"soon\""),
        (json!({"group": "writer", "from": "-1h", "to": "-2h"}), "is after --to"),
    ] {
        let response = sre.call("POST", "/v1/ops/replay", Some(body.clone())).await;
        assert_eq!(response.status, 422, "{body}: {}", response.body);
        assert!(response.json()["error"]["message"].as_str().unwrap().contains(message), "{}", response.body);
    }
    let replay =
        sre.call("POST", "/v1/ops/replay", Some(json!({"group": "writer", "from": "-1h", "execute": true}))).await;
    assert_eq!(replay.status, 202, "{}", replay.body);
    let task = replay.json()["task"]["id"].as_str().unwrap().to_owned();
    crate::support::eventually(&sre, &format!("/v1/ops/tasks/{task}"), "the replay done", |task| {
        task["state"] == "done"
    })
    .await;
    let claim = sre.call("POST", "/v1/ops/claim", Some(json!({"group": "writer", "idle": "5m"}))).await;
    assert_eq!(claim.status, 200, "{}", claim.body);
    let bad_idle = sre.call("POST", "/v1/ops/claim", Some(json!({"group": "writer", "idle": "later"}))).await;
    assert_eq!(bad_idle.status, 422, "{}", bad_idle.body);
    // A gone gateway node's group and a gone consumer of the writer; this node's are alive.
    let redis = crate::support::redis_client(&env).await;
    let keys = KeyScheme::new(&env.prefix).unwrap();
    let config = crate::support::shipped_streams();
    let key = keys.partition(&config.stream("events").unwrap().name, 0).stream;
    let _: () = redis.xgroup_create(&key, "gateway.gone-node", "$", true).await.unwrap();
    let _: () = redis.xgroup_createconsumer(&key, "writer", "gone-consumer").await.unwrap();
    chatdesk_testkit::wait_until("this node reported alive", Duration::from_secs(30), || async {
        let nodes: Vec<String> =
            redis.zrange(keys.tagged("ops-nodes", "live"), 0, -1, None, false, None, false).await.unwrap();
        nodes.contains(&"test-node".to_owned())
    })
    .await;
    chatdesk_testkit::wait_until("the gone consumer idle for 1 s", Duration::from_secs(30), || async {
        let consumers: Vec<HashMap<String, fred::types::Value>> = redis.xinfo_consumers(&key, "writer").await.unwrap();
        consumers.iter().any(|consumer| {
            consumer.get("name").and_then(|name| name.as_string()).as_deref() == Some("gone-consumer")
                && consumer.get("idle").and_then(|idle| idle.as_u64()).unwrap_or(0) >= 1_000
        })
    })
    .await;
    let prune = sre.call("POST", "/v1/ops/groups/prune", Some(json!({"idle": "1s"}))).await;
    assert_eq!(prune.status, 200, "{}", prune.body);
    let pruned = prune.json();
    assert!(pruned["groups_removed"].as_array().unwrap().contains(&json!("gateway.gone-node@0")), "{pruned}");
    assert!(pruned["consumers_removed"].as_array().unwrap().contains(&json!("writer/gone-consumer@0")), "{pruned}");
    assert!(!pruned.to_string().contains("test-node"), "a live process's consumers stay: {pruned}");
    let purge_plan = sre.call("POST", "/v1/ops/dlq/purge", Some(json!({"group": "writer"}))).await;
    assert_eq!(purge_plan.json(), json!({"count": 0, "executed": false, "more": false}));
    let purge = sre.call("POST", "/v1/ops/dlq/purge", Some(json!({"group": "writer", "execute": true}))).await;
    assert_eq!(purge.json(), json!({"count": 0, "executed": true, "more": false}));
    let unnamed = sre.call("POST", "/v1/ops/dlq/redrive", Some(json!({"rate": 5}))).await;
    assert_eq!(unnamed.status, 422, "{}", unnamed.body);
    assert!(unnamed.body.contains("name what to redrive"), "{}", unnamed.body);
    let nothing = sre.call("POST", "/v1/ops/dlq/redrive", Some(json!({"family": "events", "rate": 5}))).await;
    assert_eq!(nothing.status, 422, "{}", nothing.body);
    assert!(nothing.body.contains("no dead letter matches"), "{}", nothing.body);
    let tiny = sre.call("POST", "/v1/ops/dlq/redrive", Some(json!({"all": true, "rate": 1e-300}))).await;
    assert_eq!(tiny.status, 422, "{}", tiny.body);
    let missing = sre.call("GET", "/v1/ops/dlq/events/3/1-0", None).await;
    assert_eq!(missing.status, 404, "{}", missing.body);

    let recorded = crate::support::eventually(&sre, "/v1/ops/audit", "every action recorded", |page| {
        page["items"].as_array().unwrap().len() == 4
    })
    .await;
    let actions: Vec<&str> =
        recorded["items"].as_array().unwrap().iter().map(|item| item["action"].as_str().unwrap()).collect();
    assert!(recorded["items"].as_array().unwrap().iter().all(|item| item["outcome"] == "done"), "{recorded}");
    for action in ["replay", "claim", "prune", "dlq.purge"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    assert!(
        recorded["items"].as_array().unwrap().iter().all(|item| item["actor"] == "sre@operators.test"),
        "{recorded}"
    );
    // The planned purge did nothing and is not an action.
    assert_eq!(actions.iter().filter(|action| **action == "dlq.purge").count(), 1);
    let cli_view = audit(&env, streams.path());
    assert_eq!(cli_view.len(), 4, "the CLI reads the same log");
}

/// The shipped alert rules read only metrics a running deployment exports, and each points at a
/// section of the runbook.
#[tokio::test]
async fn every_metric_the_alert_rules_read_is_exported() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let runbook = std::fs::read_to_string(format!("{root}/docs/runbook.md")).unwrap();
    let anchors: Vec<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|heading| {
            heading
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                .collect::<String>()
                .replace(' ', "-")
        })
        .collect();
    let alerts: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert!(alerts.len() >= 6, "lag, pending age, dead letters, retention, consumers, writer");
    let mut metrics = std::collections::BTreeSet::new();
    for alert in &alerts {
        let name = alert.lines().next().unwrap();
        for key in ["expr: ", "for: ", "severity: ", "summary: ", "runbook: "] {
            assert!(alert.contains(key), "{name} has no {key}");
        }
        let runbook_link =
            alert.lines().find_map(|line| line.trim().strip_prefix("runbook: docs/runbook.md#")).unwrap();
        assert!(
            anchors.iter().any(|anchor| anchor == runbook_link),
            "{name}: no section #{runbook_link} in {anchors:?}"
        );
        let expr = alert.lines().find_map(|line| line.trim().strip_prefix("expr: ")).unwrap();
        for piece in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if piece.starts_with("chatdesk_") {
                metrics.insert(piece.to_owned());
            }
        }
    }
    let env = Env::start().await;
    let http = free_addr();
    let _server = serve_roles(&env, "ingress,writer,gateway,sender,broadcaster,autoreply", http, &[]).await;
    chatdesk_testkit::wait_until("every metric the alerts read exported", Duration::from_secs(60), || async {
        let (_, text) = chatdesk_testkit::http_get(http, "/metrics").await.unwrap();
        metrics.iter().all(|metric| text.lines().any(|line| line.starts_with(&format!("{metric}{{"))))
    })
    .await;
    // A group's consumer exists once it has read; the sample taken at start may predate that,
    // so the next one (every 15 s) shows it.
    chatdesk_testkit::wait_until("every durable group has live consumers", Duration::from_secs(60), || async {
        let (_, text) = chatdesk_testkit::http_get(http, "/metrics").await.unwrap();
        ["writer", "sender", "broadcaster", "autoreply"].iter().all(|group| {
            text.lines().any(|line| {
                line.starts_with("chatdesk_stream_group_consumers{")
                    && line.contains(&format!("group=\"{group}\""))
                    && !line.ends_with(" 0")
            })
        })
    })
    .await;
}

/// A gateway's group is live and reads no pending list: a dead letter a gateway group left
/// (before groups were live) is not redriven into it, where it would sit for good; the redrive
/// says why, and the letter stays to be purged.
#[tokio::test]
async fn a_redrive_skips_letters_of_a_live_group() {
    let env = Env::start().await;
    let streams = quick_claims();
    let config = chatdesk_core::StreamsConfig::from_toml_str("streams.toml", SHIPPED_STREAMS).unwrap();
    let events = config.stream("events").unwrap();
    let keys = KeyScheme::new(&env.prefix).unwrap().partition(&events.name, 0);
    let redis = chatdesk_streams::RedisConnector::new(chatdesk_streams::RedisSettings::new(&env.redis_url))
        .unwrap()
        .shared()
        .await
        .unwrap();
    let group = "gateway.old-node";
    let _: () = redis.xgroup_create(&keys.stream, group, "$", true).await.unwrap();
    let id: String = redis.xadd(&keys.stream, false, None, "*", vec![("type", "typing")]).await.unwrap();
    let _: fred::types::Value =
        redis.xreadgroup(group, "old-node", Some(10), None, false, &keys.stream, ">").await.unwrap();
    let letter = chatdesk_core::DeadLetter {
        original_id: id,
        family: "events".to_owned(),
        partition: 0,
        group: group.to_owned(),
        consumer: "old-node".to_owned(),
        error: "delivered 5 times".to_owned(),
        deliveries: 5,
        time_ms: now_ms(),
        original: vec![("type".to_owned(), "typing".to_owned())],
    };
    assert!(chatdesk_streams::dead_letter::dead_letter_pending(&redis, &keys, &letter).await.unwrap());

    let output = cli(&env, streams.path(), &["streams", "dlq", "redrive", "--group", group]);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("is live and reads no pending list"), "{text}");
    assert_eq!(crate::support::dead_letters(&env, "events").await, 1, "the letter stays: {text}");
    let pending: Vec<(String, String, u64, u64)> = redis.xpending(&keys.stream, group, ("-", "+", 10)).await.unwrap();
    assert!(pending.is_empty(), "nothing moved into the live group: {pending:?}");
}
