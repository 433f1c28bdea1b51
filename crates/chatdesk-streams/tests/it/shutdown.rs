//! Cancellation during a batch: the batch is finished and acknowledged, then the runtime returns.

use std::sync::Arc;
use std::time::Duration;

use chatdesk_streams::{Batch, Handler, HandlerError, Outcomes};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::{Record, Setup};

/// Signals when it starts a batch, then takes a while to finish it.
struct Slow {
    record: Record,
    started: Arc<Notify>,
}

impl Handler for Slow {
    fn group(&self) -> chatdesk_core::GroupName {
        crate::support::group()
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        self.started.notify_one();
        tokio::time::sleep(Duration::from_millis(500)).await;
        for entry in &batch.entries {
            self.record.add(entry.envelope.event_id, "slow");
        }
        Ok(Outcomes::all_done())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_finishes_and_acknowledges_the_batch_in_hand() {
    let redis = chatdesk_testkit::redis().await;
    let setup = Setup::new(redis.url()).await;
    let record = Record::default();
    let started = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let consumer = setup.consumer("c", Slow { record: record.clone(), started: started.clone() });
    let running = tokio::spawn(consumer.run(cancel.clone()));

    let mut appended = Vec::new();
    for sequence in 0..10 {
        let entry = crate::support::entry(sequence, false);
        setup.producer.append_to_partition("events", 5, &entry).await.unwrap();
        appended.push(entry.event_id);
    }
    tokio::time::timeout(Duration::from_secs(30), started.notified()).await.expect("a batch started");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), running).await.expect("the runtime returns").unwrap().unwrap();

    let handled = record.distinct();
    assert!(handled > 0, "the batch in hand was finished");
    assert_eq!(setup.pending().await, 0, "the finished batch was acknowledged");
    // Nothing was read after cancellation: what was not handled is still undelivered.
    let stream = setup.config.stream("events").unwrap();
    let statuses = chatdesk_streams::status::partition_status(&setup.client, &setup.keys, stream, 5).await.unwrap();
    let group = statuses.iter().find(|status| status.group == "workers").unwrap();
    assert_eq!(group.lag, Some((appended.len() - handled) as u64));
}

/// One partition, batches of 10, and `count` entries waiting before any consumer starts.
async fn backlog(url: &str, count: u64) -> (Setup, Vec<chatdesk_core::EventId>) {
    let setup = Setup::with_config(
        url,
        "[streams.events]\npartitions = 1\n[streams.events.groups.workers]\nbatch_size = 10\nblock = \"200ms\"\n",
    )
    .await;
    let mut appended = Vec::new();
    for sequence in 0..count {
        let entry = crate::support::entry(sequence, false);
        setup.producer.append_to_partition("events", 0, &entry).await.unwrap();
        appended.push(entry.event_id);
    }
    (setup, appended)
}

/// Under a backlog the next batch is read while one is handled: cancelling then finishes both,
/// each entry once, and leaves nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_under_a_backlog_also_finishes_the_batch_read_ahead() {
    let redis = chatdesk_testkit::redis().await;
    let (setup, appended) = backlog(redis.url(), 50).await;
    let record = Record::default();
    let started = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let consumer = setup.consumer("c", Slow { record: record.clone(), started: started.clone() });
    let running = tokio::spawn(consumer.run(cancel.clone()));
    tokio::time::timeout(Duration::from_secs(30), started.notified()).await.expect("a batch started");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), running).await.expect("the runtime returns").unwrap().unwrap();

    let handled = record.distinct();
    assert!(record.handled_more_than_once().is_empty(), "no entry handled twice");
    assert_eq!(handled, 20, "the batch in hand and the one read ahead were finished");
    assert_eq!(setup.pending().await, 0, "both were acknowledged");
    let stream = setup.config.stream("events").unwrap();
    let statuses = chatdesk_streams::status::partition_status(&setup.client, &setup.keys, stream, 0).await.unwrap();
    let group = statuses.iter().find(|status| status.group == "workers").unwrap();
    assert_eq!(group.lag, Some((appended.len() - handled) as u64));
    for event_id in &appended[..handled] {
        assert!(record.contains(event_id), "handled in stream order, from the first entry");
    }
}

/// Its dependency is down: every batch is answered `Unavailable`, and each call is counted.
struct Down {
    record: Record,
    calls: Arc<std::sync::atomic::AtomicU32>,
    started: Arc<Notify>,
}

impl Handler for Down {
    fn group(&self) -> chatdesk_core::GroupName {
        crate::support::group()
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.started.notify_one();
        for entry in &batch.entries {
            self.record.add(entry.envelope.event_id, "down");
        }
        Err(Box::new(chatdesk_streams::Unavailable("database down".into())))
    }
}

/// Cancelled while a batch waits out its dependency under a backlog: that batch stays pending,
/// and the batch read ahead behind it is not handled before it (it stays pending too), so the
/// next consumer handles the partition in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_during_an_outage_leaves_the_batch_and_the_one_behind_it_pending() {
    let redis = chatdesk_testkit::redis().await;
    let (setup, appended) = backlog(redis.url(), 30).await;
    let record = Record::default();
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let started = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let consumer = setup.consumer("c", Down { record: record.clone(), calls: calls.clone(), started: started.clone() });
    let running = tokio::spawn(consumer.run(cancel.clone()));
    tokio::time::timeout(Duration::from_secs(30), started.notified()).await.expect("a batch started");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), running).await.expect("the runtime returns").unwrap().unwrap();

    assert_eq!(record.distinct(), 10, "only the first batch reached the handler");
    for event_id in &appended[..10] {
        assert!(record.contains(event_id), "the first batch, in stream order");
    }
    assert_eq!(setup.pending().await, 20, "the batch in hand and the one read ahead, both still pending");
}
