//! Live groups (`live = true`, the gateways' fan-out): read with NOACK, so Redis keeps no
//! pending list for them, and a read whose reply was lost is read again from the last entry the
//! worker handled.

use std::time::Duration;

use chatdesk_testkit::RedisPersistence;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::support::{CONFIG, Record, Setup, entry};

/// The tests' group, made live.
fn live_config() -> String {
    format!("{CONFIG}start = \"latest\"\nlive = true\n")
}

/// Kills every connection blocked in (or running) XREADGROUP: the consumers' readers.
async fn kill_readers(client: &chatdesk_streams::RedisClient) -> usize {
    let list: String = client.custom(fred::cmd!("CLIENT"), vec!["LIST"]).await.unwrap();
    let mut killed = 0;
    for line in list.lines().filter(|line| line.contains("cmd=xreadgroup")) {
        let id = line.split(' ').find_map(|field| field.strip_prefix("id=")).unwrap();
        // A connection gone already is as good.
        let killed_now: Result<Value, _> = client.custom(fred::cmd!("CLIENT"), vec!["KILL", "ID", id]).await;
        killed += usize::from(killed_now.is_ok());
    }
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_group_keeps_no_pending_list_and_reads_a_lost_reply_again() {
    let redis = chatdesk_testkit::private_redis(RedisPersistence::None).await;
    let setup = Setup::with_config(redis.url(), &live_config()).await;
    let record = Record::default();
    let cancel = CancellationToken::new();
    let consumer = setup.spawn_recording(1, &record, &cancel).remove(0);
    let stream = setup.config.stream("events").unwrap();
    let key = setup.keys.partition(&stream.name, 2).stream;

    // The group starts at the newest entry once the worker runs: wait until it reads.
    chatdesk_testkit::wait_until("the readers blocked", Duration::from_secs(30), || async {
        let list: String = setup.client.custom(fred::cmd!("CLIENT"), vec!["LIST"]).await.unwrap();
        list.lines().filter(|line| line.contains("cmd=xreadgroup")).count() == stream.partitions as usize
    })
    .await;
    let before = setup.fill(200, 8).await;
    chatdesk_testkit::wait_until("every entry handled", Duration::from_secs(30), || async {
        before.iter().all(|id| record.contains(id))
    })
    .await;
    assert_eq!(setup.pending().await, 0, "a live group keeps no pending list");

    // A read whose reply never reached the worker: appended and read for the worker's consumer
    // in one transaction (the blocked worker finds nothing new after it), then the worker's
    // connection is cut, as a failover would cut it.
    let lost = entry(10_000, false);
    let fields: Vec<(String, String)> =
        lost.encode().into_iter().map(|(field, value)| (field.to_owned(), value)).collect();
    let transaction = setup.client.multi();
    let _: () = transaction.xadd(&key, false, None, "*", fields).await.unwrap();
    let _: () = transaction
        .custom(
            fred::cmd!("XREADGROUP"),
            vec!["GROUP", "workers", "consumer-0", "COUNT", "10", "NOACK", "STREAMS", key.as_str(), ">"],
        )
        .await
        .unwrap();
    let _: Value = transaction.exec(true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!record.contains(&lost.event_id), "the worker never got the read's reply");
    assert!(kill_readers(&setup.client).await > 0);

    chatdesk_testkit::wait_until("the lost read read again", Duration::from_secs(30), || async {
        record.contains(&lost.event_id)
    })
    .await;
    // And the partitions keep flowing.
    let after = setup.fill(100, 4).await;
    chatdesk_testkit::wait_until("every later entry handled", Duration::from_secs(30), || async {
        after.iter().all(|id| record.contains(id))
    })
    .await;
    assert_eq!(setup.pending().await, 0);
    assert!(record.handled_more_than_once().is_empty(), "set back to the last entry handled, not before it");
    // This server is the test's own: nothing here acknowledged anything.
    let commands: String = setup.client.custom(fred::cmd!("INFO"), vec!["commandstats"]).await.unwrap();
    assert!(!commands.contains("cmdstat_xack:"), "a live group never acknowledges: {commands}");
    assert!(commands.contains("cmdstat_xgroup|setid:"), "the group was set back: {commands}");
    cancel.cancel();
    consumer.await.unwrap();
}
