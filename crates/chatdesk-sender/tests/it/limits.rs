//! A delivery's rate limits: one script for all its buckets, all or none, on one Redis and on
//! Redis Cluster.

use std::time::Duration;

use chatdesk_core::KeyScheme;
use chatdesk_sender::limits::{Bucket, BucketKind, Limit, Limiter, Limits, Priority};
use chatdesk_streams::{RedisConnector, RedisSettings};
use fred::prelude::*;
use fred::types::InfoKind;

async fn client(url: &str) -> Client {
    RedisConnector::new(RedisSettings::new(url)).unwrap().shared().await.unwrap()
}

/// A WhatsApp campaign message's buckets: the campaign's, the number's, the recipient's.
fn campaign_buckets(inbox: &str, to: &str, campaign_count: u32) -> Vec<Bucket> {
    vec![
        Bucket::new(BucketKind::CampaignSender, inbox)
            .with_limit(Limit { count: campaign_count, window: Duration::from_secs(10) }),
        Bucket::new(BucketKind::WhatsappAccount, inbox),
        Bucket::new(BucketKind::WhatsappRecipient, format!("{inbox}:{to}")),
    ]
}

/// Scripts run so far (`EVALSHA` and `EVAL` calls).
async fn scripts_run(redis: &Client) -> u64 {
    let stats: String = redis.info(Some(InfoKind::CommandStats)).await.unwrap();
    stats
        .lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| line.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliverys_buckets_are_taken_all_or_none_in_one_script() {
    let server = chatdesk_testkit::private_redis(chatdesk_testkit::RedisPersistence::None).await;
    let redis = client(server.url()).await;
    let limits: Limits = "whatsapp.recipient=1/10s".parse().unwrap();
    let limiter = Limiter::new(redis.clone(), KeyScheme::new(chatdesk_testkit::unique_prefix()).unwrap(), limits);
    let inbox = uuid::Uuid::now_v7().to_string();

    // The first calls load the scripts (a server that lacks one answers NOSCRIPT).
    let warm = limiter.acquire(&campaign_buckets(&inbox, "warm", 3), "warm", Priority::Campaign).await.unwrap();
    limiter.release(&warm.unwrap()).await.unwrap();

    let before = scripts_run(&redis).await;
    let taken = limiter.acquire(&campaign_buckets(&inbox, "alice", 3), "alice-1", Priority::Campaign).await.unwrap();
    let taken = taken.expect("every bucket has room");
    assert_eq!(scripts_run(&redis).await - before, 1, "three buckets, one script");
    let before = scripts_run(&redis).await;
    limiter.release(&taken).await.unwrap();
    assert_eq!(scripts_run(&redis).await - before, 1, "three slots given back by one script");

    // Alice's bucket is full: the delivery waits, and takes no slot in the others.
    let full = limiter.acquire(&campaign_buckets(&inbox, "alice", 3), "alice-2", Priority::Campaign).await.unwrap();
    let (wait, bucket) = full.expect_err("alice's bucket is full");
    assert_eq!(bucket, BucketKind::WhatsappRecipient);
    assert!(wait > Duration::ZERO);
    // The campaign's third and last slot is still free for bob; then the campaign is full.
    let bob = limiter.acquire(&campaign_buckets(&inbox, "bob", 3), "bob-1", Priority::Campaign).await.unwrap();
    assert!(bob.is_ok(), "the campaign's last slot was free: {bob:?}");
    let carol = limiter.acquire(&campaign_buckets(&inbox, "carol", 3), "carol-1", Priority::Campaign).await.unwrap();
    assert_eq!(carol.expect_err("the campaign is full").1, BucketKind::CampaignSender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliverys_buckets_share_one_cluster_slot() {
    let cluster = chatdesk_testkit::redis_cluster().await;
    let redis = client(&cluster.url()).await;
    let limiter = Limiter::new(
        redis,
        KeyScheme::new(chatdesk_testkit::unique_prefix()).unwrap(),
        "whatsapp.recipient=2/10s".parse().unwrap(),
    );
    // Inboxes whose account buckets land on different masters.
    for _ in 0..6 {
        let inbox = uuid::Uuid::now_v7().to_string();
        let buckets = campaign_buckets(&inbox, "+15550001111", 10);
        let taken = limiter.acquire(&buckets, "first", Priority::Campaign).await.unwrap().expect("room");
        limiter.release(&taken).await.unwrap();
        // The recipient asked for a pause (as Meta's 131056 does): the next send waits for it.
        limiter.pause(&buckets, &buckets[2], Duration::from_secs(5)).await.unwrap();
        let paused = limiter.acquire(&buckets, "second", Priority::Reply).await.unwrap();
        let (wait, bucket) = paused.expect_err("the recipient is paused");
        assert_eq!(bucket, BucketKind::WhatsappRecipient);
        assert!(wait > Duration::from_secs(1), "{wait:?}");
    }
}
