//! `exclusive`: processes of one group read a partition one at a time, so the partition's
//! order holds across processes, and a holder that stops hands the partition (and what it had
//! pending) to another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatdesk_core::EntryId;
use chatdesk_streams::{Batch, Handler, HandlerError, Outcomes};
use tokio_util::sync::CancellationToken;

use crate::support::Setup;

/// Every entry handled, in the order handled over all consumers; fails on two batches of the
/// partition at once.
#[derive(Clone, Default)]
struct Ordered {
    handled: Arc<Mutex<Vec<(EntryId, String)>>>,
    busy: Arc<AtomicBool>,
    overlaps: Arc<Mutex<u32>>,
}

struct Named(String, Ordered);

impl Handler for Named {
    fn group(&self) -> chatdesk_core::GroupName {
        crate::support::group()
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        if self.1.busy.swap(true, Ordering::SeqCst) {
            *self.1.overlaps.lock().unwrap() += 1;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        self.1.handled.lock().unwrap().extend(batch.entries.iter().map(|entry| (entry.id, self.0.clone())));
        self.1.busy.store(false, Ordering::SeqCst);
        Ok(Outcomes::all_done())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_process_at_a_time_reads_a_partition_in_order_and_hands_it_over() {
    let redis = chatdesk_testkit::redis().await;
    let config = crate::support::CONFIG.replace("partitions = 8", "partitions = 1").replace(
        "[streams.events.groups.workers]\n",
        "[streams.events.groups.workers]\nexclusive = true\nbatch_size = 7\n",
    );
    let setup = Setup::with_config(redis.url(), &config).await;
    let ordered = Ordered::default();
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let a = tokio::spawn(setup.consumer("a", Named("a".into(), ordered.clone())).run(stop_a.clone()));
    let b = tokio::spawn(setup.consumer("b", Named("b".into(), ordered.clone())).run(stop_b.clone()));

    let append = |from: u64, to: u64| {
        let producer = setup.producer.clone();
        async move {
            for sequence in from..to {
                producer.append_to_partition("events", 0, &crate::support::entry(sequence, false)).await.unwrap();
            }
        }
    };
    append(0, 150).await;
    let handled = |count: usize| {
        let ordered = ordered.clone();
        async move { ordered.handled.lock().unwrap().len() >= count }
    };
    chatdesk_testkit::wait_until("the first entries handled", Duration::from_secs(30), || handled(150)).await;
    // The holder stops; the other takes the partition over (at once: the lease is given back).
    let holder = ordered.handled.lock().unwrap().last().unwrap().1.clone();
    if holder == "a" {
        stop_a.cancel()
    } else {
        stop_b.cancel()
    }
    append(150, 300).await;
    chatdesk_testkit::wait_until("every entry handled", Duration::from_secs(30), || handled(300)).await;

    let handled = ordered.handled.lock().unwrap().clone();
    let ids: Vec<EntryId> = handled.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "handled in stream order, each once");
    assert_eq!(*ordered.overlaps.lock().unwrap(), 0, "never two batches of the partition at once");
    let other = if holder == "a" { "b" } else { "a" };
    assert!(handled[150..].iter().all(|(_, by)| by == other), "the other process took over");
    stop_a.cancel();
    stop_b.cancel();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

/// Appends an entry and reads it for consumer `old` of the group in one transaction, so no
/// blocked reader of the group gets it first: a read that landed after its lease lapsed.
async fn read_for_old(setup: &Setup, key: &str, sequence: u64) -> EntryId {
    use fred::prelude::*;
    let late = crate::support::entry(sequence, false);
    let fields: Vec<(String, String)> =
        late.encode().into_iter().map(|(field, value)| (field.to_owned(), value)).collect();
    let transaction = setup.client.multi();
    let _: () = transaction.xadd(key, false, None, "*", fields).await.unwrap();
    let _: () = transaction
        .custom(fred::cmd!("XREADGROUP"), vec!["GROUP", "workers", "old", "COUNT", "10", "STREAMS", key, ">"])
        .await
        .unwrap();
    // The holder may take the entry over at once: its id comes from the XADD's own reply.
    let (id, _read): (String, Value) = transaction.exec(true).await.unwrap();
    id.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_handles_what_another_consumer_held_first_and_takes_a_late_read_over() {
    use fred::prelude::*;
    let redis = chatdesk_testkit::redis().await;
    // Claims of idle entries come too late to matter here: only the take-over finds them.
    let config = crate::support::CONFIG
        .replace("partitions = 8", "partitions = 1")
        .replace("claim_idle = \"1500ms\"", "claim_idle = \"5m\"")
        .replace(
            "[streams.events.groups.workers]\n",
            "[streams.events.groups.workers]\nexclusive = true\nbatch_size = 7\n",
        );
    let setup = Setup::with_config(redis.url(), &config).await;
    let stream = setup.config.stream("events").unwrap();
    let key = setup.keys.partition(&stream.name, 0).stream;
    // A consumer that read ten entries and vanished without its lease: they are pending for it.
    let _: Value = setup
        .client
        .custom(fred::cmd!("XGROUP"), vec!["CREATE", key.as_str(), "workers", "0", "MKSTREAM"])
        .await
        .unwrap();
    for sequence in 0..20 {
        setup.producer.append_to_partition("events", 0, &crate::support::entry(sequence, false)).await.unwrap();
    }
    let _: Value = setup
        .client
        .custom(fred::cmd!("XREADGROUP"), vec!["GROUP", "workers", "old", "COUNT", "10", "STREAMS", key.as_str(), ">"])
        .await
        .unwrap();

    let ordered = Ordered::default();
    let stop = CancellationToken::new();
    let holder = tokio::spawn(setup.consumer("new", Named("new".into(), ordered.clone())).run(stop.clone()));
    let handled = |count: usize| {
        let ordered = ordered.clone();
        async move { ordered.handled.lock().unwrap().len() >= count }
    };
    chatdesk_testkit::wait_until("the first twenty handled", Duration::from_secs(30), || handled(20)).await;
    let ids: Vec<EntryId> = ordered.handled.lock().unwrap().iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "the other consumer's entries first, in order: {ids:?}");

    // While it holds the partition, a read for the vanished consumer lands late: the holder
    // takes it over at its next turn and handles it.
    let late = read_for_old(&setup, &key, 20).await;
    chatdesk_testkit::wait_until("the late read handled", Duration::from_secs(30), || {
        let ordered = ordered.clone();
        async move { ordered.handled.lock().unwrap().iter().any(|(id, _)| *id == late) }
    })
    .await;
    setup.wait_pending_zero().await;
    assert_eq!(ordered.handled.lock().unwrap().len(), 21, "each entry handled once");
    stop.cancel();
    holder.await.unwrap().unwrap();
}
