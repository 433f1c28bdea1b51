//! Conversations as the front doors (webhooks, the widget, REST, the WebSocket) change them.
//! Everything here writes through `chatdesk-streams` and reads through `chatdesk-store`; the
//! meaning of an entry lives here, its transport there.
//!
//! - [`directory`]: what a channel sends, appended exactly once and in order, in one Redis round
//!   trip: the inbox's rate limit, the duplicate check, the contact and conversation found or
//!   created, the message appended.
//! - [`reply`]: an agent's reply, validated and appended the same way by REST and the WebSocket.
//! - [`text`]: the checks every message text passes, whichever door it came in by.
//! - [`inboxes`]: inboxes cached in each process and dropped everywhere when one changes, so a
//!   webhook costs no PostgreSQL query.

pub mod directory;
pub mod inboxes;
pub mod reply;
pub mod text;

pub use directory::{Directory, DirectoryError, Ingested, Introduction};
pub use inboxes::InboxCache;
pub use reply::{Accepted, Reply, ReplyError};
