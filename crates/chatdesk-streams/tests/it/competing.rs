//! 20,000 entries over 8 partitions, 3 competing consumers of one group: each entry handled
//! exactly once and acknowledged, on a single Redis and on a 3-master Redis Cluster.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::support::{Record, Setup};

const ENTRIES: usize = 20_000;

async fn exactly_once_with_competing_consumers(url: &str) {
    let setup = Setup::new(url).await;
    let record = Record::default();
    let cancel = CancellationToken::new();
    let consumers = setup.spawn_recording(3, &record, &cancel);

    let appended = setup.fill(ENTRIES, 16).await;
    assert_eq!(appended.len(), ENTRIES);

    chatdesk_testkit::wait_until("every entry handled", Duration::from_secs(180), || async {
        record.distinct() == ENTRIES
    })
    .await;
    setup.wait_pending_zero().await;
    cancel.cancel();
    for consumer in consumers {
        consumer.await.unwrap();
    }

    assert!(record.handled_more_than_once().is_empty(), "handled twice: {:?}", record.handled_more_than_once());
    assert!(appended.iter().all(|id| record.contains(id)));
    let per_consumer = record.per_consumer();
    assert!(per_consumer.len() >= 2, "the group's work was not shared: {per_consumer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_redis() {
    let redis = chatdesk_testkit::redis().await;
    exactly_once_with_competing_consumers(redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster() {
    let cluster = chatdesk_testkit::redis_cluster().await;
    exactly_once_with_competing_consumers(&cluster.url()).await;
}
