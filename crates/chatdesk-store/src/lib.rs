//! chatdesk's PostgreSQL store.
//!
//! - [`connect`] opens a pool; [`ping`] is what `/readyz` asks.
//! - [`migrate`] applies the migrations in the repository's `migrations/` folder, which are
//!   compiled into the binary (no files needed at run time, no build-time database). sqlx's
//!   migrator takes an advisory lock, so several processes starting at once apply each
//!   migration exactly once.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};

pub mod autoreply;
pub mod campaigns;
pub mod conversations;
pub mod directory;
pub mod ops_audit;
pub mod workspace;
pub mod writer;

pub use sqlx::PgPool as Pool;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot apply migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("PostgreSQL query failed")]
    Query(#[source] sqlx::Error),
}

/// `(version, description, sql)` of every migration, in order. A unit test checks that this list
/// and the `migrations/` folder agree.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "tenants", include_str!("../../../migrations/0001_tenants.sql")),
    (2, "conversations", include_str!("../../../migrations/0002_conversations.sql")),
    (3, "provider_message_index", include_str!("../../../migrations/0003_provider_message_index.sql")),
    (4, "delivery_attempts", include_str!("../../../migrations/0004_delivery_attempts.sql")),
    (5, "token_validity", include_str!("../../../migrations/0005_token_validity.sql")),
    (6, "role_change_revokes", include_str!("../../../migrations/0006_role_change_revokes.sql")),
    (7, "campaigns", include_str!("../../../migrations/0007_campaigns.sql")),
    (8, "campaign_request_hash", include_str!("../../../migrations/0008_campaign_request_hash.sql")),
    (9, "autoreply", include_str!("../../../migrations/0009_autoreply.sql")),
    (10, "ops_audit", include_str!("../../../migrations/0010_ops_audit.sql")),
    (11, "workspace", include_str!("../../../migrations/0011_workspace.sql")),
];

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            // A password-only URL (`redis://:secret@host`) says that one was given.
            let user = if user.is_empty() && credentials.contains(':') { ":***" } else { user };
            format!("{}://{user}@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl StoreError {
    /// The database could not be reached or asked us to come back later (connection lost,
    /// shutting down, overloaded, serialization conflict): retrying later will work. Anything
    /// else is about the data and will fail again.
    pub fn is_transient(&self) -> bool {
        let error = match self {
            StoreError::Connect { .. } => return true,
            StoreError::Migrate(_) => return false,
            StoreError::Query(error) => error,
        };
        match error {
            sqlx::Error::Database(database) => {
                let code = database.code().unwrap_or_default();
                ["08", "53", "57", "40"].iter().any(|class| code.starts_with(class))
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            _ => false,
        }
    }
}

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|source| StoreError::Connect { url: redact(url), source })
}

pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    migrator().run(pool).await.map_err(StoreError::Migrate)
}

pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ()).map_err(StoreError::Query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> =
            MIGRATIONS.iter().map(|(version, description, _)| format!("{version:04}_{description}.sql")).collect();
        assert_eq!(files, embedded);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://app:secret@db:5432/chatdesk"), "postgres://app@db:5432/chatdesk");
        assert_eq!(redact("postgres://db/chatdesk"), "postgres://db/chatdesk");
        assert_eq!(redact("redis://:secret@127.0.0.1:6379"), "redis://:***@127.0.0.1:6379");
    }
}
