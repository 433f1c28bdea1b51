//! The persistence writer: group `writer` on the `events` stream. A batch is stored in one
//! transaction, idempotently by event id (see `chatdesk_store::writer`). If PostgreSQL is down the
//! batch waits ([`Unavailable`]) and nothing is dead-lettered; if the batch fails because of one
//! bad event, each event is retried alone so only the bad one is dead-lettered.

use chatdesk_core::GroupName;
use chatdesk_store::writer::{Rules, StoredEvent, apply_events_with};
use chatdesk_streams::{Batch, Handler, HandlerError, Outcomes, Unavailable};

use crate::error_chain;

pub const GROUP: &str = "writer";
pub const EVENTS_STORED_TOTAL: &str = "chatdesk_writer_events_stored_total";
pub const EVENTS_DUPLICATE_TOTAL: &str = "chatdesk_writer_events_duplicate_total";

pub fn describe() {
    metrics::describe_counter!(
        EVENTS_STORED_TOTAL,
        metrics::Unit::Count,
        "Events stored in PostgreSQL for the first time"
    );
    metrics::describe_counter!(
        EVENTS_DUPLICATE_TOTAL,
        metrics::Unit::Count,
        "Events delivered again (replay, redelivery) and found already stored"
    );
}

pub struct Writer {
    pool: chatdesk_store::Pool,
    rules: Rules,
}

impl Writer {
    pub fn new(pool: chatdesk_store::Pool) -> Self {
        Self::with_rules(pool, Rules::default())
    }

    /// A writer with its own opt-out words and deferral (see [`Rules`]).
    pub fn with_rules(pool: chatdesk_store::Pool, rules: Rules) -> Self {
        Self { pool, rules }
    }
}

fn unavailable(error: &chatdesk_store::StoreError) -> HandlerError {
    Box::new(Unavailable(error_chain(error)))
}

impl Handler for Writer {
    fn group(&self) -> GroupName {
        GroupName::parse(GROUP).expect("a valid group name")
    }

    async fn handle(&self, batch: &Batch) -> Result<Outcomes, HandlerError> {
        let mut outcomes = Outcomes::all_done();
        let mut events = Vec::with_capacity(batch.entries.len());
        for entry in &batch.entries {
            match entry.envelope.event() {
                Ok(event) => events.push(StoredEvent {
                    event_id: entry.envelope.event_id.0,
                    tenant_id: entry.envelope.tenant.0,
                    partition: entry.partition,
                    offset: entry.id,
                    occurred_at_ms: entry.envelope.time_ms,
                    event,
                    payload: Some(entry.envelope.payload.clone()),
                }),
                Err(error) => {
                    outcomes.reject(entry.id, error.to_string());
                }
            }
        }
        let stream = batch.stream.to_string();
        match apply_events_with(&self.pool, &events, &self.rules).await {
            Ok(applied) => {
                metrics::counter!(EVENTS_STORED_TOTAL, "stream" => stream.clone()).increment(applied.fresh as u64);
                metrics::counter!(EVENTS_DUPLICATE_TOTAL, "stream" => stream).increment(applied.duplicates as u64);
                Ok(outcomes)
            }
            Err(error) if error.is_transient() => Err(unavailable(&error)),
            Err(batch_error) => {
                tracing::warn!(
                    partition = batch.partition,
                    error = error_chain(&batch_error),
                    "batch refused by PostgreSQL, storing its events one by one"
                );
                for event in &events {
                    match apply_events_with(&self.pool, std::slice::from_ref(event), &self.rules).await {
                        Ok(_) => {}
                        Err(error) if error.is_transient() => return Err(unavailable(&error)),
                        Err(error) => {
                            outcomes.reject(event.offset, error_chain(&error));
                        }
                    }
                }
                Ok(outcomes)
            }
        }
    }
}
