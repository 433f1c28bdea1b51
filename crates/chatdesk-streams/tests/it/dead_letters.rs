//! Poison entries go to the dead-letter stream with their error; the partition keeps flowing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chatdesk_core::DeadLetter;
use chatdesk_streams::{Batch, Handler, HandlerError, Outcomes};
use fred::prelude::*;
use fred::types::streams::XID;
use tokio_util::sync::CancellationToken;

use crate::support::{Record, Setup, TestEvent, entry, spawn};

/// Fails every entry whose payload says `"poison": true`.
struct PoisonAware {
    record: Record,
    poison_attempts: Arc<AtomicU32>,
}

impl Handler for PoisonAware {
    fn group(&self) -> chatdesk_core::GroupName {
        crate::support::group()
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        let mut outcomes = Outcomes::all_done();
        for entry in &batch.entries {
            let event: TestEvent = entry.envelope.record()?;
            if event.poison {
                self.poison_attempts.fetch_add(1, Ordering::SeqCst);
                outcomes.retry(entry.id, "template 42 does not exist");
            } else {
                self.record.add(entry.envelope.event_id, "consumer");
            }
        }
        Ok(outcomes)
    }
}

/// The partition's dead letters, read through the one dead-letter codec.
async fn dead_letters(setup: &Setup, partition: u16) -> Vec<DeadLetter> {
    let stream = setup.config.stream("events").unwrap();
    let key = setup.keys.partition(&stream.name, partition).dead_letters;
    let raw: Vec<(String, HashMap<String, String>)> = setup.client.xrange(key, "-", "+", None).await.unwrap();
    raw.into_iter().map(|(_, fields)| DeadLetter::decode(fields).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_is_dead_lettered_and_the_partition_keeps_flowing() {
    let redis = chatdesk_testkit::redis().await;
    let setup = Setup::new(redis.url()).await;
    let record = Record::default();
    let poison_attempts = Arc::new(AtomicU32::new(0));
    let cancel = CancellationToken::new();
    let consumer = spawn(
        setup.consumer("c", PoisonAware { record: record.clone(), poison_attempts: poison_attempts.clone() }),
        &cancel,
    );

    let poison = entry(0, true);
    let poisoned_at = setup.producer.append_to_partition("events", 2, &poison).await.unwrap();
    let mut behind = Vec::new();
    for sequence in 1..=50 {
        let entry = entry(sequence, false);
        setup.producer.append_to_partition("events", 2, &entry).await.unwrap();
        behind.push(entry.event_id);
    }

    chatdesk_testkit::wait_until("entries behind the poison handled", Duration::from_secs(30), || async {
        record.distinct() == behind.len()
    })
    .await;
    chatdesk_testkit::wait_until("the poison dead-lettered", Duration::from_secs(30), || async {
        !dead_letters(&setup, 2).await.is_empty()
    })
    .await;
    setup.wait_pending_zero().await;
    cancel.cancel();
    consumer.await.unwrap();

    let letters = dead_letters(&setup, 2).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.original_id, poisoned_at.id.to_string());
    assert_eq!((letter.family.as_str(), letter.partition), ("events", 2));
    assert_eq!(letter.group, "workers");
    assert_eq!(letter.deliveries, 3);
    assert_eq!(letter.error, "template 42 does not exist");
    assert!(letter.time_ms > 0);
    assert_eq!(letter.original_envelope().unwrap(), poison, "the original entry, as it was");
    assert_eq!(poison_attempts.load(Ordering::SeqCst), 3, "max_deliveries is 3");
    assert!(behind.iter().all(|id| record.contains(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_entry_is_dead_lettered_at_once() {
    let redis = chatdesk_testkit::redis().await;
    let setup = Setup::new(redis.url()).await;
    let stream = setup.config.stream("events").unwrap();
    let key = setup.keys.partition(&stream.name, 0).stream;
    let record = Record::default();
    let cancel = CancellationToken::new();
    let consumer = spawn(
        setup.consumer("c", PoisonAware { record: record.clone(), poison_attempts: Arc::new(AtomicU32::new(0)) }),
        &cancel,
    );
    let _: String =
        setup.client.xadd(&key, false, None, XID::Auto, vec![("type", "x"), ("tenant", "not-a-uuid")]).await.unwrap();
    let good = entry(1, false);
    setup.producer.append_to_partition("events", 0, &good).await.unwrap();

    chatdesk_testkit::wait_until("the good entry handled", Duration::from_secs(30), || async {
        record.contains(&good.event_id)
    })
    .await;
    chatdesk_testkit::wait_until("the bad entry dead-lettered", Duration::from_secs(30), || async {
        !dead_letters(&setup, 0).await.is_empty()
    })
    .await;
    setup.wait_pending_zero().await;
    cancel.cancel();
    consumer.await.unwrap();
    let letters = dead_letters(&setup, 0).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].deliveries, 1);
    assert!(letters[0].error.contains("tenant"), "{:?}", letters[0]);
    assert!(letters[0].original.contains(&("tenant".to_owned(), "not-a-uuid".to_owned())), "{:?}", letters[0]);
}

/// Retries the entries it is told to, the first time it sees each, and records the delivery
/// count every entry was handed over with.
struct RetryOnce {
    retry: Vec<chatdesk_core::EventId>,
    seen: Arc<std::sync::Mutex<HashMap<chatdesk_core::EventId, Vec<u64>>>>,
}

impl Handler for RetryOnce {
    fn group(&self) -> chatdesk_core::GroupName {
        crate::support::group()
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        let mut outcomes = Outcomes::all_done();
        let mut seen = self.seen.lock().unwrap();
        for entry in &batch.entries {
            let deliveries = seen.entry(entry.envelope.event_id).or_default();
            deliveries.push(entry.delivery_count);
            if deliveries.len() == 1 && self.retry.contains(&entry.envelope.event_id) {
                outcomes.retry(entry.id, "try again");
            }
        }
        Ok(outcomes)
    }
}

/// Under a backlog the next batch is read while one is handled; when the batch in hand is
/// retried, the one read ahead goes back to the pending list unhandled. Redis counted that read
/// as a delivery, and counts it again at every re-read; the runtime does not: a retried entry
/// comes back as its second delivery (one read ahead and put back included), and every other
/// entry is handled once, as its first, so nothing is dead-lettered before its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_read_ahead_and_put_back_is_not_counted_as_delivered() {
    let redis = chatdesk_testkit::redis().await;
    let setup = Setup::with_config(
        redis.url(),
        "[streams.events]\npartitions = 1\n[streams.events.groups.workers]\n\
         batch_size = 10\nblock = \"200ms\"\nmax_deliveries = 2\n",
    )
    .await;
    let mut appended = Vec::new();
    for sequence in 0..35 {
        let entry = entry(sequence, false);
        setup.producer.append_to_partition("events", 0, &entry).await.unwrap();
        appended.push(entry.event_id);
    }
    let seen = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let cancel = CancellationToken::new();
    // Entry 3 is in the batch in hand; entry 12 in the one read ahead, put back, then retried.
    let retried = [appended[3], appended[12]];
    let consumer = spawn(setup.consumer("c", RetryOnce { retry: retried.to_vec(), seen: seen.clone() }), &cancel);

    chatdesk_testkit::wait_until("every entry handled", Duration::from_secs(30), || async {
        seen.lock().unwrap().len() == appended.len()
    })
    .await;
    setup.wait_pending_zero().await;
    cancel.cancel();
    consumer.await.unwrap();

    let letters = dead_letters(&setup, 0).await;
    assert!(letters.is_empty(), "{letters:?}");
    let seen = seen.lock().unwrap();
    for event_id in &retried {
        assert_eq!(seen[event_id], vec![1, 2], "a retried entry, twice: {event_id}");
    }
    for event_id in appended.iter().filter(|id| !retried.contains(id)) {
        assert_eq!(seen[event_id], vec![1], "{event_id} handed over once, as its first delivery");
    }
}
