//! Exactly one row per event, whatever crashes, outages or replays happen.

use std::time::Duration;

use chatdesk_testkit::RedisPersistence;
use tokio_util::sync::CancellationToken;

use crate::support::{Deployment, MESSAGES};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_row_per_event_and_a_full_replay_changes_nothing() {
    let redis = chatdesk_testkit::redis().await;
    let postgres = chatdesk_testkit::postgres().await;
    let deployment = Deployment::new(redis.url(), postgres.url()).await;
    let cancel = CancellationToken::new();
    let writer = deployment.spawn_writer("writer-a", &cancel);

    let expected = deployment.append_conversations().await;
    deployment.wait_for_messages(MESSAGES, Duration::from_secs(300)).await;
    deployment.wait_caught_up().await;
    assert_eq!(deployment.message_rows().await, MESSAGES);
    deployment.assert_projections(&expected).await;
    let before = deployment.projections().await;

    deployment.rewind_writer().await;
    deployment.wait_caught_up().await;
    assert_eq!(deployment.message_rows().await, MESSAGES, "a replay adds no rows");
    assert_eq!(deployment.projections().await, before, "a replay leaves projections unchanged");
    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&deployment.pool).await.unwrap();
    assert_eq!(ledger, MESSAGES + 2 * expected.len() as i64, "one ledger row per event");
    assert_eq!(deployment.dead_letters().await, 0);
    cancel.cancel();
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_writer_is_replaced_without_duplicates() {
    let redis = chatdesk_testkit::redis().await;
    let postgres = chatdesk_testkit::postgres().await;
    let deployment = Deployment::new(redis.url(), postgres.url()).await;
    let doomed = tokio::spawn(deployment.writer("writer-doomed").run(CancellationToken::new()));

    let appending = {
        let producer_side = Deployment::append_conversations(&deployment);
        tokio::time::timeout(Duration::from_secs(300), producer_side)
    };
    let kill = async {
        deployment.wait_for_messages(MESSAGES / 5, Duration::from_secs(300)).await;
        doomed.abort();
        let _ = doomed.await;
    };
    let (expected, ()) = tokio::join!(appending, kill);
    let expected = expected.expect("appending finished");

    let cancel = CancellationToken::new();
    let fresh = deployment.spawn_writer("writer-fresh", &cancel);
    deployment.wait_for_messages(MESSAGES, Duration::from_secs(300)).await;
    deployment.wait_caught_up().await;
    assert_eq!(deployment.message_rows().await, MESSAGES);
    deployment.assert_projections(&expected).await;
    assert_eq!(deployment.dead_letters().await, 0);
    cancel.cancel();
    fresh.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_writer_waits_out_a_postgres_outage() {
    let redis = chatdesk_testkit::private_redis(RedisPersistence::None).await;
    let mut postgres = chatdesk_testkit::private_postgres("chatdesk").await;
    let deployment = Deployment::new(redis.url(), postgres.url()).await;
    let cancel = CancellationToken::new();
    let writer = deployment.spawn_writer("writer-a", &cancel);

    let outage = async {
        deployment.wait_for_messages(MESSAGES / 5, Duration::from_secs(300)).await;
        let server = postgres.server().expect("a private server");
        server.stop().await;
        // The writer hits the outage: each partition holds the batch it read, unacknowledged.
        chatdesk_testkit::wait_until("the writer held back by the outage", Duration::from_secs(60), || async {
            deployment.backlog().await.1 > 0
        })
        .await;
        // An outage of some seconds: what is held stays held.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (_, held) = deployment.backlog().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (lag, pending) = deployment.backlog().await;
        assert_eq!(pending, held, "nothing acknowledged, nothing more taken while PostgreSQL is down");
        assert!(lag > 0, "entries appended during the outage wait in the stream");
        server.restart().await.expect("PostgreSQL restarts");
    };
    let (expected, ()) = tokio::join!(deployment.append_conversations(), outage);

    deployment.wait_for_messages(MESSAGES, Duration::from_secs(300)).await;
    deployment.wait_caught_up().await;
    assert_eq!(deployment.message_rows().await, MESSAGES);
    deployment.assert_projections(&expected).await;
    assert_eq!(deployment.dead_letters().await, 0, "an outage dead-letters nothing");
    cancel.cancel();
    writer.await.unwrap();
}
