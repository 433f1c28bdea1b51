//! Poison entries go to the dead-letter stream with their error; the partition keeps flowing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chatdesk_streams::{Batch, Handler, HandlerError, Outcomes};
use fred::prelude::*;
use fred::types::streams::XID;
use tokio_util::sync::CancellationToken;

use crate::support::{Record, Setup, entry, spawn};

/// Fails every entry whose payload says `"poison": true`.
struct PoisonAware {
    record: Record,
    poison_attempts: Arc<AtomicU32>,
}

impl Handler for PoisonAware {
    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        let mut outcomes = Outcomes::all_done();
        for entry in &batch.entries {
            let payload: serde_json::Value = entry.payload_json()?;
            if payload["poison"] == true {
                self.poison_attempts.fetch_add(1, Ordering::SeqCst);
                outcomes.retry(entry.id, "template 42 does not exist");
            } else {
                self.record.add(entry.event_id, "consumer");
            }
        }
        Ok(outcomes)
    }
}

type DeadLetters = Vec<(String, HashMap<String, String>)>;

async fn dead_letters(setup: &Setup, partition: u16) -> DeadLetters {
    let stream = setup.config.stream("events").unwrap();
    let key = setup.keys.partition(&stream.name, partition).dead_letters;
    setup.client.xrange(key, "-", "+", None).await.unwrap()
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
    let fields = &letters[0].1;
    assert_eq!(fields["original_id"], poisoned_at.id.to_string());
    assert_eq!(fields["group"], "workers");
    assert_eq!(fields["delivery_count"], "3");
    assert_eq!(fields["error"], "template 42 does not exist");
    assert_eq!(fields["event_id"], poison.event_id.to_string());
    assert_eq!(fields["payload"], poison.payload);
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
    assert_eq!(letters[0].1["delivery_count"], "1");
    assert!(letters[0].1["error"].starts_with("cannot decode entry"), "{:?}", letters[0].1);
    assert_eq!(letters[0].1["tenant"], "not-a-uuid");
}
