//! Gateway metric names.

pub const CONNECTIONS: &str = "chatdesk_gateway_connections";
pub const SUBSCRIPTIONS: &str = "chatdesk_gateway_subscriptions";
pub const FRAMES_IN_TOTAL: &str = "chatdesk_gateway_frames_in_total";
pub const FRAMES_OUT_TOTAL: &str = "chatdesk_gateway_frames_out_total";
pub const REPLAYED_EVENTS_TOTAL: &str = "chatdesk_gateway_replayed_events_total";
pub const REPLAY_READ_TOTAL: &str = "chatdesk_gateway_replay_read_total";
pub const SLOW_CLIENT_CLOSES_TOTAL: &str = "chatdesk_gateway_slow_client_closes_total";
pub const READ_LATENCY_SECONDS: &str = "chatdesk_gateway_read_latency_seconds";
pub const FANOUT_LATENCY_SECONDS: &str = "chatdesk_gateway_fanout_latency_seconds";
pub const PARTITIONS_READ: &str = "chatdesk_gateway_partitions_read";
pub const OPS_SNAPSHOTS_TOTAL: &str = "chatdesk_gateway_ops_snapshots_total";

pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(CONNECTIONS, Unit::Count, "Open WebSocket connections");
    describe_gauge!(SUBSCRIPTIONS, Unit::Count, "Channel subscriptions on open connections");
    describe_counter!(FRAMES_IN_TOTAL, Unit::Count, "Frames received from clients");
    describe_counter!(FRAMES_OUT_TOTAL, Unit::Count, "Frames sent to clients");
    describe_counter!(REPLAYED_EVENTS_TOTAL, Unit::Count, "Events replayed to resuming clients, by source");
    describe_counter!(
        REPLAY_READ_TOTAL,
        Unit::Count,
        "Events and entries read to fill resuming clients' gaps (sent or skipped as another conversation's), by source"
    );
    describe_counter!(SLOW_CLIENT_CLOSES_TOTAL, Unit::Count, "Connections closed because the client fell behind");
    describe_gauge!(PARTITIONS_READ, Unit::Count, "Partitions of the events stream this node reads for its sockets");
    describe_counter!(OPS_SNAPSHOTS_TOTAL, Unit::Count, "Stream status snapshots pushed on the ops channel");
    describe_histogram!(
        READ_LATENCY_SECONDS,
        Unit::Seconds,
        "From the event's append to this node's read of it (before the hub and the sockets)"
    );
    describe_histogram!(FANOUT_LATENCY_SECONDS, Unit::Seconds, "From the event's append to its frame being written");
}
