//! Sender metric names.

pub const SENDS_TOTAL: &str = "chatdesk_sender_sends_total";
pub const PROVIDER_LATENCY_SECONDS: &str = "chatdesk_sender_provider_latency_seconds";
pub const RETRIES_TOTAL: &str = "chatdesk_sender_retries_total";
pub const RATE_LIMIT_WAITS_TOTAL: &str = "chatdesk_sender_rate_limit_waits_total";
pub const DEAD_LETTERS_TOTAL: &str = "chatdesk_sender_dead_letters_total";
pub const IN_FLIGHT: &str = "chatdesk_sender_in_flight";
pub const QUEUED_JOBS: &str = "chatdesk_sender_queued_jobs";
pub const LEASES_LOST_TOTAL: &str = "chatdesk_sender_leases_lost_total";
pub const RATE_LIMIT_WAIT_SECONDS: &str = "chatdesk_sender_rate_limit_wait_seconds";
pub const CAMPAIGN_SENDS_TOTAL: &str = "chatdesk_sender_campaign_sends_total";
pub const CAMPAIGN_HELD_TOTAL: &str = "chatdesk_sender_campaign_held_total";
pub const CAMPAIGN_RESULTS_TOTAL: &str = "chatdesk_sender_campaign_results_total";
pub const STEP_SECONDS: &str = "chatdesk_sender_step_seconds";
pub const INBOX_BUSY_TOTAL: &str = "chatdesk_sender_inbox_busy_total";
pub const CAMPAIGN_THROTTLED_SECONDS: &str = "chatdesk_sender_campaign_throttled_seconds";

pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        SENDS_TOTAL,
        Unit::Count,
        "Provider calls, by provider and outcome (sent, throttled, transient, permanent)"
    );
    describe_histogram!(
        STEP_SECONDS,
        Unit::Seconds,
        "Time of each step of a delivery, by step (lease, prepare, limits, call, record, status, finish)"
    );
    describe_counter!(
        INBOX_BUSY_TOTAL,
        Unit::Count,
        "Leased messages put back because their inbox had its share of calls in flight"
    );
    describe_histogram!(PROVIDER_LATENCY_SECONDS, Unit::Seconds, "Time a provider took to answer, by provider");
    describe_counter!(RETRIES_TOTAL, Unit::Count, "Messages scheduled for another attempt, by provider");
    describe_counter!(
        RATE_LIMIT_WAITS_TOTAL,
        Unit::Count,
        "Sends postponed by a rate-limit bucket, by provider and bucket"
    );
    describe_counter!(DEAD_LETTERS_TOTAL, Unit::Count, "Messages dead-lettered after their last attempt, by provider");
    describe_gauge!(IN_FLIGHT, Unit::Count, "Deliveries this process is working on");
    describe_gauge!(QUEUED_JOBS, Unit::Count, "Messages waiting in the delivery queue, by partition");
    describe_histogram!(
        RATE_LIMIT_WAIT_SECONDS,
        Unit::Seconds,
        "How long a send was told to wait by a full bucket, by provider and bucket (campaign.sender: the campaign's throttle)"
    );
    describe_counter!(
        CAMPAIGN_SENDS_TOTAL,
        Unit::Count,
        "Campaign messages handed to their provider, by sender (inbox)"
    );
    describe_counter!(
        CAMPAIGN_RESULTS_TOTAL,
        Unit::Count,
        "Campaign messages concluded by the sender, by sender (inbox) and result (sent, failed, skipped, expired)"
    );
    describe_histogram!(
        CAMPAIGN_THROTTLED_SECONDS,
        Unit::Seconds,
        "How long a campaign message was told to wait for its sender's rate, by sender (inbox)"
    );
    describe_counter!(CAMPAIGN_HELD_TOTAL, Unit::Count, "Campaign messages held back because their campaign is paused");
    describe_counter!(LEASES_LOST_TOTAL, Unit::Count, "Deliveries whose lease ran out before they were recorded");
}
