//! A consumer dies mid-batch: a survivor claims its entries after claim_idle.

use std::sync::Arc;
use std::time::Duration;

use chatdesk_streams::{Batch, Handler, HandlerError, Outcomes};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::{Record, Recording, Setup, spawn};

/// Takes a batch and never finishes it.
struct Stuck {
    took_batch: Arc<Notify>,
}

impl Handler for Stuck {
    fn group(&self) -> chatdesk_core::GroupName {
        crate::support::group()
    }

    async fn handle(&self, _batch: &Batch) -> Result<Outcomes, HandlerError> {
        self.took_batch.notify_one();
        std::future::pending::<()>().await;
        unreachable!()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_entries_are_claimed_and_handled_once() {
    let redis = chatdesk_testkit::redis().await;
    let setup = Setup::new(redis.url()).await;
    let appended = setup.fill(400, 4).await;

    let took_batch = Arc::new(Notify::new());
    let doomed =
        tokio::spawn(setup.consumer("doomed", Stuck { took_batch: took_batch.clone() }).run(CancellationToken::new()));
    tokio::time::timeout(Duration::from_secs(30), took_batch.notified())
        .await
        .expect("the doomed consumer took a batch");
    // Let every partition of the doomed consumer read its first batch, then kill it.
    chatdesk_testkit::wait_until("the doomed consumer holds entries", Duration::from_secs(10), || async {
        setup.pending().await >= 8
    })
    .await;
    doomed.abort();
    let _ = doomed.await;
    let held = setup.pending().await;
    assert!(held > 0);

    let record = Record::default();
    let cancel = CancellationToken::new();
    let survivor =
        spawn(setup.consumer("survivor", Recording { name: "survivor".into(), record: record.clone() }), &cancel);
    chatdesk_testkit::wait_until("every entry handled by the survivor", Duration::from_secs(60), || async {
        record.distinct() == appended.len()
    })
    .await;
    setup.wait_pending_zero().await;
    cancel.cancel();
    survivor.await.unwrap();

    assert!(record.handled_more_than_once().is_empty());
    assert!(appended.iter().all(|id| record.contains(id)));
}
