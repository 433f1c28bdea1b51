//! Metric names of the streams layer, stable for dashboards and alerts. Labels are bounded:
//! `stream`, `group`, `partition`, `operation`; never tenant or conversation ids.

pub const ENTRIES_APPENDED_TOTAL: &str = "chatdesk_stream_entries_appended_total";
pub const APPEND_DURATION_SECONDS: &str = "chatdesk_stream_append_duration_seconds";
pub const ENTRIES_PROCESSED_TOTAL: &str = "chatdesk_stream_entries_processed_total";
pub const ENTRIES_FAILED_TOTAL: &str = "chatdesk_stream_entries_failed_total";
pub const ENTRIES_DEAD_LETTERED_TOTAL: &str = "chatdesk_stream_entries_dead_lettered_total";
pub const ENTRIES_CLAIMED_TOTAL: &str = "chatdesk_stream_entries_claimed_total";
pub const ENTRIES_LOST_TOTAL: &str = "chatdesk_stream_entries_lost_total";
pub const LIVE_SET_BACKS_TOTAL: &str = "chatdesk_stream_live_set_backs_total";
pub const HANDLER_UNAVAILABLE_TOTAL: &str = "chatdesk_stream_handler_unavailable_total";
pub const BATCH_DURATION_SECONDS: &str = "chatdesk_stream_batch_duration_seconds";
pub const REDIS_ERRORS_TOTAL: &str = "chatdesk_stream_redis_errors_total";
pub const GROUP_LAG_ENTRIES: &str = "chatdesk_stream_group_lag_entries";
pub const GROUP_PENDING_ENTRIES: &str = "chatdesk_stream_group_pending_entries";
pub const GROUP_CONSUMERS: &str = "chatdesk_stream_group_consumers";
pub const STREAM_LENGTH_ENTRIES: &str = "chatdesk_stream_length_entries";
pub const ENTRIES_TRIMMED_TOTAL: &str = "chatdesk_stream_entries_trimmed_total";

/// Registers descriptions with the installed recorder; call once at start-up.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(ENTRIES_APPENDED_TOTAL, Unit::Count, "Entries appended (XADD acknowledged by Redis)");
    describe_histogram!(APPEND_DURATION_SECONDS, Unit::Seconds, "Time for one XADD round trip");
    describe_counter!(ENTRIES_PROCESSED_TOTAL, Unit::Count, "Entries a handler finished and the group acknowledged");
    describe_counter!(
        ENTRIES_FAILED_TOTAL,
        Unit::Count,
        "Entry deliveries that failed and will be retried or dead-lettered (a live group: skipped)"
    );
    describe_counter!(ENTRIES_DEAD_LETTERED_TOTAL, Unit::Count, "Entries moved to the dead-letter stream");
    describe_counter!(ENTRIES_CLAIMED_TOTAL, Unit::Count, "Entries claimed from consumers idle longer than claim_idle");
    describe_counter!(
        ENTRIES_LOST_TOTAL,
        Unit::Count,
        "Pending entries deleted from the stream before they were handled, and entries a live group skipped"
    );
    describe_counter!(
        LIVE_SET_BACKS_TOTAL,
        Unit::Count,
        "Times a live group was set back to the last entry it handled after a Redis error"
    );
    describe_counter!(
        HANDLER_UNAVAILABLE_TOTAL,
        Unit::Count,
        "Handler calls that found a dependency down (batch kept and retried)"
    );
    describe_histogram!(BATCH_DURATION_SECONDS, Unit::Seconds, "Time to handle and acknowledge one batch");
    describe_counter!(REDIS_ERRORS_TOTAL, Unit::Count, "Redis commands of the consumer runtime that failed");
    describe_gauge!(
        GROUP_LAG_ENTRIES,
        Unit::Count,
        "Entries in the partition not yet delivered to the group (XINFO GROUPS lag)"
    );
    describe_gauge!(GROUP_PENDING_ENTRIES, Unit::Count, "Entries delivered to the group but not acknowledged");
    describe_gauge!(GROUP_CONSUMERS, Unit::Count, "Consumers registered in the group");
    describe_gauge!(STREAM_LENGTH_ENTRIES, Unit::Count, "Entries in the partition (XLEN)");
}

pub(crate) fn record_redis_error(labels: &[(&'static str, String); 3], operation: &'static str) {
    let mut labels = labels.to_vec();
    labels.push(("operation", operation.to_owned()));
    metrics::counter!(REDIS_ERRORS_TOTAL, &labels).increment(1);
}
