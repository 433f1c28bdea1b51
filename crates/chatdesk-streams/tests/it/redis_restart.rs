//! Redis is killed (SIGKILL) and restarted (AOF, appendfsync always) while entries are appended
//! and consumed: every acknowledged XADD is handled, none twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatdesk_testkit::RedisPersistence;
use tokio_util::sync::CancellationToken;

use crate::support::{Record, Setup, entry};

const ENTRIES: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_entry_is_handled_once_across_a_redis_crash() {
    let mut redis = chatdesk_testkit::private_redis(RedisPersistence::AofAlways).await;
    let setup = Arc::new(Setup::new(redis.url()).await);
    let record = Record::default();
    let cancel = CancellationToken::new();
    let consumers = setup.spawn_recording(2, &record, &cancel);

    // The producer keeps appending through the crash; only ids Redis acknowledged count. It
    // goes on past ENTRIES until Redis is back, so the crash always falls inside its appends.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(0u64));
    let restarted = Arc::new(AtomicBool::new(false));
    let producer = {
        let (setup, acknowledged, failures, restarted) =
            (setup.clone(), acknowledged.clone(), failures.clone(), restarted.clone());
        tokio::spawn(async move {
            let mut sequence = 0;
            while sequence < ENTRIES || !restarted.load(Ordering::Relaxed) {
                let entry = entry(sequence, false);
                match setup.producer.append_to_partition("events", (sequence % 8) as u16, &entry).await {
                    Ok(_) => {
                        acknowledged.lock().unwrap().push(entry.event_id);
                        sequence += 1;
                    }
                    Err(_) => {
                        *failures.lock().unwrap() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        })
    };

    chatdesk_testkit::wait_until("a third appended", Duration::from_secs(60), || async {
        acknowledged.lock().unwrap().len() as u64 >= ENTRIES / 3
    })
    .await;
    let server = redis.server().expect("a private server");
    server.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().await.expect("redis restarts from its AOF");
    let at_restart = acknowledged.lock().unwrap().len();
    restarted.store(true, Ordering::Relaxed);

    producer.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    chatdesk_testkit::wait_until("every acknowledged entry handled", Duration::from_secs(120), || async {
        acknowledged.iter().all(|id| record.contains(id))
    })
    .await;
    setup.wait_pending_zero().await;
    cancel.cancel();
    for consumer in consumers {
        consumer.await.unwrap();
    }
    assert!(record.handled_more_than_once().is_empty(), "handled twice: {:?}", record.handled_more_than_once());
    // The crash fell inside the appends: an append in flight at the kill fails, and one made while
    // the connection was down waits for the reconnection, so either some failed or some were
    // acknowledged only after the restart.
    assert!(
        *failures.lock().unwrap() > 0 || acknowledged.len() > at_restart,
        "the producer should have appended across the crash ({} acknowledged, {at_restart} at the restart)",
        acknowledged.len()
    );
}
