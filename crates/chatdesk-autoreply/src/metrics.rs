//! The bot's metrics, described once at start.

pub const MESSAGES_TOTAL: &str = "chatdesk_autoreply_messages_total";
pub const REPLIES_TOTAL: &str = "chatdesk_autoreply_replies_total";
pub const HANDOFFS_TOTAL: &str = "chatdesk_autoreply_handoffs_total";
pub const SKIPPED_TOTAL: &str = "chatdesk_autoreply_skipped_total";
pub const MODEL_CALLS_TOTAL: &str = "chatdesk_autoreply_model_calls_total";
pub const MODEL_RETRIES_TOTAL: &str = "chatdesk_autoreply_model_retries_total";
pub const MODEL_LATENCY_SECONDS: &str = "chatdesk_autoreply_model_latency_seconds";
pub const TOKENS_TOTAL: &str = "chatdesk_autoreply_tokens_total";
pub const BUDGET_REFUSED_TOTAL: &str = "chatdesk_autoreply_budget_refused_total";
pub const ORDERS_TOTAL: &str = "chatdesk_autoreply_orders_total";
pub const WAITING: &str = "chatdesk_autoreply_waiting_conversations";

pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        MESSAGES_TOTAL,
        Unit::Count,
        "Customer messages the bot read, by outcome (waiting, human: the bot handed off, replay)"
    );
    describe_counter!(REPLIES_TOTAL, Unit::Count, "Bot replies sent, by mode (llm, flow)");
    describe_counter!(HANDOFFS_TOTAL, Unit::Count, "Conversations handed to humans, by reason");
    describe_counter!(SKIPPED_TOTAL, Unit::Count, "Customer messages the bot left alone, by why (stale, hours)");
    describe_counter!(MODEL_CALLS_TOTAL, Unit::Count, "Model calls, by outcome (ok, error, timeout)");
    describe_counter!(MODEL_RETRIES_TOTAL, Unit::Count, "Model calls that needed their one retry");
    describe_histogram!(MODEL_LATENCY_SECONDS, Unit::Seconds, "How long the model took to answer, retry included");
    describe_counter!(TOKENS_TOTAL, Unit::Count, "Model tokens used (prompt and completion)");
    describe_counter!(
        BUDGET_REFUSED_TOTAL,
        Unit::Count,
        "Model calls refused because a tenant's daily budget was spent"
    );
    describe_counter!(ORDERS_TOTAL, Unit::Count, "Orders dialog flows inserted");
    describe_gauge!(
        WAITING,
        Unit::Count,
        "Conversations waiting for the bot (in their quiet period or being answered)"
    );
}
