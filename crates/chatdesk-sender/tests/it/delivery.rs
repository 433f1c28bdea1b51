//! Whole deliveries by a running sender, with the rate limits on: each sent message gets one
//! status and leaves the queue; a sender whose lease ran out during its call, whose status goes
//! out together with its record, never makes a second, different one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use chatdesk_core::events::{Event, MessageStatus, MessageStatusChanged};
use chatdesk_core::{Envelope, KeyScheme, StreamsConfig};
use chatdesk_sender::job::{Ending, Job};
use chatdesk_sender::providers::Endpoints;
use chatdesk_sender::queue::{Finished, Following, Queue};
use chatdesk_sender::{Sender, SenderSettings};
use chatdesk_store::directory::InboxKind;
use chatdesk_streams::{RedisConnector, RedisSettings};
use fred::prelude::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const CONFIG: &str = r#"
[streams.events]
partitions = 1

[streams.send]
partitions = 1

[streams.send.groups.sender]
"#;

/// What the WhatsApp stand-in does on its first call, before it answers.
type FirstCall = Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

#[derive(Default)]
struct StandIn {
    calls: Mutex<Vec<Value>>,
    first_call: Mutex<Option<FirstCall>>,
}

/// Accepts every message, as `wamid.<n>` for the n-th call.
async fn accept(State(stand_in): State<Arc<StandIn>>, Json(body): Json<Value>) -> Json<Value> {
    let call = {
        let mut calls = stand_in.calls.lock().unwrap();
        calls.push(body);
        calls.len()
    };
    let first = if call == 1 { stand_in.first_call.lock().unwrap().take() } else { None };
    if let Some(first) = first {
        first().await;
    }
    Json(json!({"messaging_product": "whatsapp", "messages": [{"id": format!("wamid.{call}")}]}))
}

struct Deployment {
    redis: Client,
    keys: KeyScheme,
    config: Arc<StreamsConfig>,
    queue: Queue,
    sender: Sender,
    stand_in: Arc<StandIn>,
    tenant: Uuid,
    inbox: Uuid,
    _postgres: chatdesk_testkit::TestPostgres,
}

impl Deployment {
    async fn start(redis_url: &str) -> Self {
        let postgres = chatdesk_testkit::postgres().await;
        let pool = chatdesk_store::connect(postgres.url(), 4).await.unwrap();
        chatdesk_store::migrate(&pool).await.unwrap();
        let tenant = chatdesk_store::directory::create_tenant(&pool, "Send Co").await.unwrap();
        let config = json!({"phone_number_id": "106540352242922", "access_token": "EAAG-test-token"});
        let inbox =
            chatdesk_store::directory::create_inbox(&pool, tenant, InboxKind::Whatsapp, "WA", "secret", None, &config)
                .await
                .unwrap()
                .id;

        let stand_in = Arc::new(StandIn::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(accept).with_state(stand_in.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let redis = RedisConnector::new(RedisSettings::new(redis_url)).unwrap().shared().await.unwrap();
        let keys = KeyScheme::new(chatdesk_testkit::unique_prefix()).unwrap();
        let config = Arc::new(StreamsConfig::from_toml_str("test", CONFIG).unwrap());
        let settings = SenderSettings {
            timeout: Duration::from_secs(2),
            endpoints: Endpoints { whatsapp: format!("http://{address}"), ..Endpoints::default() },
            ..SenderSettings::default()
        };
        let sender =
            Sender::new(redis.clone(), pool, keys.clone(), config.clone(), "sender-test".to_owned(), settings).unwrap();
        let send = config.stream("send").unwrap().name.clone();
        let queue = Queue::new(redis.clone(), keys.clone(), send);
        Self { redis, keys, config, queue, sender, stand_in, tenant, inbox, _postgres: postgres }
    }

    /// A campaign message (its buckets: the campaign's, the number's and the recipient's).
    fn job(&self) -> Job {
        self.job_in(Uuid::now_v7(), "Our summer sale starts today")
    }

    /// A campaign message with `text` in `conversation`, to a number of its own (so WhatsApp's
    /// pair rate never holds it).
    fn job_in(&self, conversation: Uuid, text: &str) -> Job {
        let to = format!("1555{:07}", Uuid::new_v4().as_u128() % 10_000_000);
        let request = serde_json::from_value(json!({
            "message_id": Uuid::now_v7(),
            "conversation_id": conversation,
            "inbox_id": self.inbox,
            "contact_id": Uuid::now_v7(),
            "text": text,
            "campaign": {"campaign_id": Uuid::now_v7(), "to": to, "rate_per_sec": 50},
        }))
        .unwrap();
        Job::new(self.tenant, "1-0".to_owned(), request)
    }

    fn queue_key(&self, name: &'static str) -> String {
        self.keys.partition(&self.config.stream("send").unwrap().name, 0).key(name)
    }

    /// The `message.status` events of `message` on the events stream.
    async fn statuses(&self, message: Uuid) -> Vec<MessageStatusChanged> {
        let stream = self.keys.partition(&self.config.stream("events").unwrap().name, 0).stream;
        let entries: Vec<(String, HashMap<String, String>)> = self.redis.xrange(stream, "-", "+", None).await.unwrap();
        entries
            .into_iter()
            .filter_map(|(_, fields)| match Envelope::decode(fields).unwrap().event() {
                Ok(Event::MessageStatus(status)) if status.message_id == message => Some(status),
                _ => None,
            })
            .collect()
    }

    /// The sender delivering until the token is cancelled.
    fn dispatch(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let cancel = CancellationToken::new();
        let sender = self.sender.clone();
        let dispatch = tokio::spawn({
            let cancel = cancel.clone();
            async move { sender.dispatch(cancel).await }
        });
        (cancel, dispatch)
    }

    /// The job's holder is gone and its lease has ended: the job is due again for anyone.
    async fn lease_ends(&self, job: &Job) {
        let id = job.id().to_string();
        let _: i64 = self.redis.hdel(self.queue_key("sendq.leases"), &id).await.unwrap();
        let _: i64 =
            self.redis.zadd(self.queue_key("sendq.ready"), None, None, false, false, (0.0, id.as_str())).await.unwrap();
    }

    fn calls(&self) -> usize {
        self.stand_in.calls.lock().unwrap().len()
    }
}

/// The message's one status, once the job has left the queue, and the calls made for it.
async fn delivered(deployment: &Deployment, job: &Job) -> (MessageStatusChanged, usize) {
    chatdesk_testkit::wait_until("the job leaves the queue", Duration::from_secs(20), || async {
        deployment.queue.len(0).await.unwrap() == 0
    })
    .await;
    let statuses = deployment.statuses(job.id()).await;
    assert_eq!(statuses.len(), 1, "one status: {statuses:?}");
    // A finished job is remembered: its stream entry, delivered again, is not admitted again.
    assert_eq!(deployment.queue.admit(0, std::slice::from_ref(job)).await.unwrap(), 0);
    (statuses.into_iter().next().unwrap(), deployment.calls())
}

async fn a_message_is_sent_once_with_one_status(redis_url: &str) {
    let deployment = Deployment::start(redis_url).await;
    let (cancel, dispatch) = deployment.dispatch();
    let job = deployment.job();
    assert_eq!(deployment.queue.admit(0, std::slice::from_ref(&job)).await.unwrap(), 1);
    let (status, calls) = delivered(&deployment, &job).await;
    assert_eq!(
        (status.status, status.provider_message_id.as_deref(), calls),
        (MessageStatus::Sent, Some("wamid.1"), 1)
    );
    cancel.cancel();
    dispatch.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_is_sent_once_with_one_status_on_one_redis() {
    let redis = chatdesk_testkit::redis().await;
    a_message_is_sent_once_with_one_status(redis.url()).await;
}

/// The job's keys, the buckets and the events stream are in different slots of the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_is_sent_once_with_one_status_on_redis_cluster() {
    let cluster = chatdesk_testkit::redis_cluster().await;
    a_message_is_sent_once_with_one_status(&cluster.url()).await;
}

/// The lease runs out while the provider answers (the stand-in hands it to "another sender"):
/// the late sender's `sent` status goes out with its record, which fails; once the other
/// holder is gone the job is sent again (the documented window) and finished, and its status
/// is the same event, appended once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sender_that_lost_its_lease_mid_call_leaves_one_status() {
    let redis = chatdesk_testkit::redis().await;
    let deployment = Deployment::start(redis.url()).await;
    let job = deployment.job();
    let leases = deployment.queue_key("sendq.leases");
    let thief = deployment.redis.clone();
    let (job_id, leases_key) = (job.id().to_string(), leases.clone());
    *deployment.stand_in.first_call.lock().unwrap() = Some(Box::new(move || {
        Box::pin(async move {
            let _: i64 = thief.hset(&leases_key, (job_id.as_str(), "another-sender:1")).await.unwrap();
        })
    }));
    let (cancel, dispatch) = deployment.dispatch();
    assert_eq!(deployment.queue.admit(0, std::slice::from_ref(&job)).await.unwrap(), 1);

    // The late sender's status is out; the job stays, held by the other sender.
    let statuses = chatdesk_testkit::eventually("the late sender's status", Duration::from_secs(20), || async {
        let statuses = deployment.statuses(job.id()).await;
        (!statuses.is_empty()).then_some(statuses)
    })
    .await;
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].provider_message_id.as_deref(), Some("wamid.1"));
    assert_eq!(deployment.queue.len(0).await.unwrap(), 1, "a sender without the lease removes nothing");
    let holder: Option<String> = deployment.redis.hget(&leases, job.id().to_string()).await.unwrap();
    assert_eq!(holder.as_deref(), Some("another-sender:1"));

    // The other sender dies: its lease ends and the job is due again.
    deployment.lease_ends(&job).await;
    let (status, calls) = delivered(&deployment, &job).await;
    assert_eq!(calls, 2, "sent again by the next holder: the call outlived its lease");
    assert_eq!(status.status, MessageStatus::Sent);
    assert_eq!(status.provider_message_id.as_deref(), Some("wamid.1"), "the first status stands");
    cancel.cancel();
    dispatch.await.unwrap();
}

/// Finishing a job can lease its conversation's next one to the finisher, under a token of its
/// own; the lease is like any other: the old token finishes nothing, nobody else leases the
/// job meanwhile, and without the request the next job is only made due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_a_job_leases_its_conversations_next_one_to_the_finisher() {
    let redis = chatdesk_testkit::redis().await;
    let deployment = Deployment::start(redis.url()).await;
    // Two connections taken in turn: a job leased on one is finished on the other.
    let second = RedisConnector::new(RedisSettings::new(redis.url())).unwrap().shared().await.unwrap();
    let send = deployment.config.stream("send").unwrap().name.clone();
    let connections = chatdesk_streams::Connections::new(vec![deployment.redis.clone(), second]);
    let queue = &Queue::over(connections, deployment.keys.clone(), send);
    let (talk, other) = (Uuid::now_v7(), Uuid::now_v7());
    let jobs = [
        deployment.job_in(talk, "first"),
        deployment.job_in(talk, "second"),
        deployment.job_in(other, "elsewhere"),
        deployment.job_in(other, "elsewhere again"),
    ];
    assert_eq!(queue.admit(0, &jobs).await.unwrap(), 4);
    let leased = queue.lease(0, 10, 60_000, "a").await.unwrap();
    let texts: Vec<&str> = leased.iter().map(|leased| leased.job.request.text.as_str()).collect();
    assert_eq!(texts, ["first", "elsewhere"], "one job per conversation is due");

    let Finished::Done(Following::Leased(next)) = queue.finish(&leased[0], None, Some((60_000, "a"))).await.unwrap()
    else {
        panic!("the conversation's next job should be leased to the finisher");
    };
    assert_eq!((next.job.id(), next.partition, next.streak), (jobs[1].id(), 0, 1));
    assert_eq!(leased[0].streak, 0, "a job leased by the partition's loop starts a streak");
    assert_ne!(next.token, leased[0].token);
    assert!(queue.lease(0, 10, 60_000, "b").await.unwrap().is_empty(), "nobody else gets the leased job");
    assert!(matches!(queue.finish(&leased[0], None, Some((60_000, "a"))).await.unwrap(), Finished::Lost));
    let stale = chatdesk_sender::queue::Leased { token: leased[0].token.clone(), ..(*next).clone() };
    assert!(!queue.update(&stale, None).await.unwrap(), "the finished job's token holds nothing");
    assert!(queue.update(&next, None).await.unwrap(), "the new token holds the next job");
    assert!(matches!(queue.finish(&next, None, Some((60_000, "a"))).await.unwrap(), Finished::Done(Following::None)));

    // Without asking, the next job is made due for anyone.
    assert!(matches!(queue.finish(&leased[1], None, None).await.unwrap(), Finished::Done(Following::Readied)));
    let leased = queue.lease(0, 10, 60_000, "b").await.unwrap();
    assert_eq!(leased.iter().map(|leased| leased.job.id()).collect::<Vec<_>>(), [jobs[3].id()]);
    assert!(matches!(queue.finish(&leased[0], None, None).await.unwrap(), Finished::Done(Following::None)));
    assert_eq!(queue.len(0).await.unwrap(), 0);
}

/// A running sender delivers a conversation's queued messages in order, each once, each with
/// its status, handing the conversation from one message to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conversations_queued_messages_leave_in_order_once_each() {
    let redis = chatdesk_testkit::redis().await;
    let deployment = Deployment::start(redis.url()).await;
    let conversation = Uuid::now_v7();
    let texts: Vec<String> = (1..=6).map(|index| format!("message {index}")).collect();
    let jobs: Vec<Job> = texts.iter().map(|text| deployment.job_in(conversation, text)).collect();
    assert_eq!(deployment.queue.admit(0, &jobs).await.unwrap(), jobs.len());
    let (cancel, dispatch) = deployment.dispatch();
    chatdesk_testkit::wait_until("the queue empties", Duration::from_secs(20), || async {
        deployment.queue.len(0).await.unwrap() == 0
    })
    .await;
    let called: Vec<String> = deployment
        .stand_in
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|body| body["text"]["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(called, texts, "each message once, in the conversation's order");
    for job in &jobs {
        let statuses = deployment.statuses(job.id()).await;
        assert_eq!(statuses.iter().map(|status| status.status).collect::<Vec<_>>(), [MessageStatus::Sent]);
    }
    cancel.cancel();
    dispatch.await.unwrap();
}

/// A lane entry whose job is gone (a hand-edited or half-restored queue) is skipped when the job
/// before it finishes, so its conversation's later messages still go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_entry_without_its_job_does_not_hold_its_conversation() {
    let redis = chatdesk_testkit::redis().await;
    let deployment = Deployment::start(redis.url()).await;
    let queue = &deployment.queue;
    let talk = Uuid::now_v7();
    let jobs = [
        deployment.job_in(talk, "first"),
        deployment.job_in(talk, "lost"),
        deployment.job_in(talk, "third"),
        deployment.job_in(talk, "fourth"),
    ];
    assert_eq!(queue.admit(0, &jobs).await.unwrap(), 4);
    let _: i64 = deployment.redis.hdel(deployment.queue_key("sendq.jobs"), jobs[1].id().to_string()).await.unwrap();
    let leased = queue.lease(0, 10, 60_000, "a").await.unwrap();
    assert_eq!(leased.len(), 1);
    let Finished::Done(Following::Leased(next)) = queue.finish(&leased[0], None, Some((60_000, "a"))).await.unwrap()
    else {
        panic!("the job after the lost one should be leased");
    };
    assert_eq!(next.job.id(), jobs[2].id());
    // Without a lease asked for, the same: the next job with a body is made due.
    assert!(matches!(queue.finish(&next, None, None).await.unwrap(), Finished::Done(Following::Readied)));
    let leased = queue.lease(0, 10, 60_000, "b").await.unwrap();
    assert_eq!(leased.iter().map(|leased| leased.job.id()).collect::<Vec<_>>(), [jobs[3].id()]);
}

/// A sender that dies once it has recorded how a job ended leaves the job to the next holder,
/// which gets the ending back with the job and finishes it without calling the provider again.
/// Only the lease's holder records an ending, and finishing removes it with the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_ending_comes_back_with_its_job_and_is_not_sent_again() {
    let redis = chatdesk_testkit::redis().await;
    let deployment = Deployment::start(redis.url()).await;
    let queue = &deployment.queue;
    let job = deployment.job();
    assert_eq!(queue.admit(0, std::slice::from_ref(&job)).await.unwrap(), 1);
    let mut leased = queue.lease(0, 10, 60_000, "crashed").await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job.ending, None);
    leased[0].job.attempts = 2;
    let ending = Ending::Sent { provider_message_id: Some("wamid.before-the-crash".to_owned()) };
    let stale = chatdesk_sender::queue::Leased { token: "another-sender:1".to_owned(), ..leased[0].clone() };
    assert!(!queue.record(&stale, &ending).await.unwrap(), "only the lease's holder records");
    assert!(queue.record(&leased[0], &ending).await.unwrap());

    // The sender dies: its lease ends and the job is due again, with its ending.
    deployment.lease_ends(&job).await;
    let again = queue.lease(0, 10, 60_000, "next").await.unwrap();
    assert_eq!(again[0].job.ending.as_ref(), Some(&ending));
    assert_eq!(again[0].job.attempts, 2, "the calls made come back with the ending");
    deployment.lease_ends(&job).await;

    let (cancel, dispatch) = deployment.dispatch();
    let (status, calls) = delivered(&deployment, &job).await;
    assert_eq!(calls, 0, "the provider accepted it before the crash");
    assert_eq!(status.status, MessageStatus::Sent);
    assert_eq!(status.provider_message_id.as_deref(), Some("wamid.before-the-crash"));
    let endings: u64 = deployment.redis.hlen(deployment.queue_key("sendq.endings")).await.unwrap();
    assert_eq!(endings, 0, "the ending leaves with its job");
    cancel.cancel();
    dispatch.await.unwrap();
}

/// A leased job that cannot be read (its JSON or its recorded ending) stays queued and holds up
/// no other job leased with it; a job admitted again after its `done` marker lapsed does not
/// inherit an ending left from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_be_read_holds_up_no_other() {
    let redis = chatdesk_testkit::redis().await;
    let deployment = Deployment::start(redis.url()).await;
    let queue = &deployment.queue;
    let endings = deployment.queue_key("sendq.endings");
    let jobs = [deployment.job(), deployment.job(), deployment.job()];
    let stale = json!({"result": "sent", "provider_message_id": "wamid.old", "attempts": 1}).to_string();
    let _: i64 = deployment.redis.hset(&endings, (jobs[2].id().to_string(), stale.as_str())).await.unwrap();
    assert_eq!(queue.admit(0, &jobs).await.unwrap(), 3);
    let _: i64 = deployment.redis.hset(&endings, (jobs[0].id().to_string(), "{not json")).await.unwrap();
    let _: i64 =
        deployment.redis.hset(deployment.queue_key("sendq.jobs"), (jobs[1].id().to_string(), "[]")).await.unwrap();

    let leased = queue.lease(0, 10, 60_000, "a").await.unwrap();
    assert_eq!(leased.iter().map(|leased| leased.job.id()).collect::<Vec<_>>(), [jobs[2].id()]);
    assert_eq!(leased[0].job.ending, None, "admitted afresh, with no ending");
    assert!(matches!(queue.finish(&leased[0], None, None).await.unwrap(), Finished::Done(Following::None)));
    assert_eq!(queue.len(0).await.unwrap(), 2, "the unreadable jobs stay queued");
}
