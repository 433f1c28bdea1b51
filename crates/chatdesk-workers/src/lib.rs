//! chatdesk's stream consumers, one module per role. Each is a [`chatdesk_streams::Handler`]
//! run by the consumer-group runtime.
//!
//! - [`writer`]: persists every durable event to PostgreSQL (group `writer` on `events`).
//! - [`routing`]: assigns inboxes' new conversations to online members in turn (group `router`
//!   on `events`; it appends the assignments it decides and keeps agents' load in Redis).

pub mod routing;
pub mod writer;

/// Renders an error with its causes, for dead-letter reasons and logs.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors repeat their cause in their own text (sqlx's database errors do): say it once.
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}
