//! `batch_wait`: a read that came short waits for more entries, so a trickle is handled in few
//! batches.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatdesk_streams::{Batch, Handler, HandlerError, Outcomes};
use tokio_util::sync::CancellationToken;

use crate::support::Setup;

/// The size of every batch handled.
#[derive(Clone, Default)]
struct Sizes(Arc<Mutex<Vec<usize>>>);

impl Handler for Sizes {
    fn group(&self) -> chatdesk_core::GroupName {
        crate::support::group()
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        self.0.lock().unwrap().push(batch.entries.len());
        Ok(Outcomes::all_done())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_read_waits_for_the_rest_of_its_batch() {
    let redis = chatdesk_testkit::redis().await;
    let config = crate::support::CONFIG
        .replace("[streams.events.groups.workers]\n", "[streams.events.groups.workers]\nbatch_wait = \"1s\"\n");
    let setup = Setup::with_config(redis.url(), &config).await;
    let sizes = Sizes::default();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(setup.consumer("c", sizes.clone()).run(cancel.clone()));
    // Let the consumer block on its read, so the first entry comes back alone: it is in the
    // group's consumers once it has read the partition.
    let key = setup.keys.partition(&setup.config.stream("events").unwrap().name, 2).stream;
    chatdesk_testkit::wait_until("the consumer reading", Duration::from_secs(30), || async {
        use fred::interfaces::StreamsInterface;
        let consumers: Vec<std::collections::HashMap<String, fred::types::Value>> =
            setup.client.xinfo_consumers(key.as_str(), "workers").await.unwrap_or_default();
        !consumers.is_empty()
    })
    .await;

    // A trickle: one entry, then four more a little later, all within the wait.
    for sequence in 0..5 {
        let entry = crate::support::entry(sequence, false);
        setup.producer.append_to_partition("events", 2, &entry).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    chatdesk_testkit::wait_until("all five handled", Duration::from_secs(30), || async {
        sizes.0.lock().unwrap().iter().sum::<usize>() >= 5
    })
    .await;
    assert_eq!(*sizes.0.lock().unwrap(), vec![5], "the five entries are one batch");
    chatdesk_testkit::wait_until("the batch acknowledged", Duration::from_secs(30), || async {
        setup.pending().await == 0
    })
    .await;
    cancel.cancel();
    running.await.unwrap().unwrap();
}
