//! Tenants, users, API keys and inboxes: the rows the admin commands and authentication use.

use sqlx::PgPool;
use uuid::Uuid;

use crate::StoreError;

pub use chatdesk_core::auth::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxKind {
    Generic,
    Whatsapp,
    Telegram,
    Web,
}

impl InboxKind {
    pub const ALL: [InboxKind; 4] = [InboxKind::Generic, InboxKind::Whatsapp, InboxKind::Telegram, InboxKind::Web];

    pub fn as_str(self) -> &'static str {
        match self {
            InboxKind::Generic => "generic",
            InboxKind::Whatsapp => "whatsapp",
            InboxKind::Telegram => "telegram",
            InboxKind::Web => "web",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }

    /// The path a channel posts to for an inbox of this kind.
    pub fn webhook_path(self, inbox: Uuid) -> String {
        match self {
            InboxKind::Web => format!("/v1/widget/{inbox}/sessions"),
            other => format!("/v1/webhooks/{}/{inbox}", other.as_str()),
        }
    }
}

fn query_error(error: sqlx::Error) -> StoreError {
    StoreError::Query(error)
}

pub async fn create_tenant(pool: &PgPool, name: &str) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(name)
        .execute(pool)
        .await
        .map_err(query_error)?;
    Ok(id)
}

pub async fn tenant_exists(pool: &PgPool, tenant: Uuid) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .map_err(query_error)
}

/// A user row as authentication needs it.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub role: String,
    pub password_hash: String,
}

pub async fn create_user(
    pool: &PgPool,
    tenant: Uuid,
    email: &str,
    role: Role,
    password_hash: &str,
) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO users (id, tenant_id, email, role, password_hash) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(tenant)
        .bind(email)
        .bind(role.as_str())
        .bind(password_hash)
        .execute(pool)
        .await
        .map_err(query_error)?;
    Ok(id)
}

/// [`user_by_email`], only when PostgreSQL's `lower()` of `email` is `folded` (the caller's own
/// case folding, which keys its failure counts): a spelling the two fold differently (`İ`) finds
/// no account, so it cannot be a second key for the same account's attempts.
pub async fn user_by_folded_email(pool: &PgPool, email: &str, folded: &str) -> Result<Option<UserRecord>, StoreError> {
    let row: Option<(Uuid, Uuid, String, String, String)> = sqlx::query_as(
        "SELECT id, tenant_id, email, role, password_hash FROM users WHERE lower(email) = lower($1) AND lower($1) = $2",
    )
    .bind(email)
    .bind(folded)
    .fetch_optional(pool)
    .await
    .map_err(query_error)?;
    Ok(row.map(|(id, tenant_id, email, role, password_hash)| UserRecord { id, tenant_id, email, role, password_hash }))
}

pub async fn user_by_email(pool: &PgPool, email: &str) -> Result<Option<UserRecord>, StoreError> {
    let row: Option<(Uuid, Uuid, String, String, String)> =
        sqlx::query_as("SELECT id, tenant_id, email, role, password_hash FROM users WHERE lower(email) = lower($1)")
            .bind(email)
            .fetch_optional(pool)
            .await
            .map_err(query_error)?;
    Ok(row.map(|(id, tenant_id, email, role, password_hash)| UserRecord { id, tenant_id, email, role, password_hash }))
}

/// The first tenant created: the deployment's operators' tenant unless one is configured.
pub async fn first_tenant(pool: &PgPool) -> Result<Option<Uuid>, StoreError> {
    let row: Option<(Uuid,)> = sqlx::query_as("SELECT id FROM tenants ORDER BY created_at, id LIMIT 1")
        .fetch_optional(pool)
        .await
        .map_err(query_error)?;
    Ok(row.map(|(id,)| id))
}

/// The e-mail of a user, for records of who did what.
pub async fn user_email(pool: &PgPool, user: Uuid) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT email FROM users WHERE id = $1")
        .bind(user)
        .fetch_optional(pool)
        .await
        .map_err(query_error)?;
    Ok(row.map(|(email,)| email))
}

pub async fn user_in_tenant(pool: &PgPool, tenant: Uuid, user: Uuid) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE tenant_id = $1 AND id = $2)")
        .bind(tenant)
        .bind(user)
        .fetch_one(pool)
        .await
        .map_err(query_error)
}

pub async fn create_api_key(
    pool: &PgPool,
    tenant: Uuid,
    role: Role,
    key_hash: &[u8],
    key_prefix: &str,
) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO api_keys (id, tenant_id, role, key_hash, key_prefix) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(tenant)
        .bind(role.as_str())
        .bind(key_hash)
        .bind(key_prefix)
        .execute(pool)
        .await
        .map_err(query_error)?;
    Ok(id)
}

/// What decides whether an agent token of `user` is still good: the user's role now, and the
/// moment before which its tokens were revoked (seconds since the epoch). `None`: no such user in
/// the tenant (deleted).
pub async fn token_standing(pool: &PgPool, tenant: Uuid, user: Uuid) -> Result<Option<(String, f64)>, StoreError> {
    sqlx::query_as(
        "SELECT role, CASE WHEN tokens_valid_after = '-infinity' THEN 0 \
                ELSE extract(epoch from tokens_valid_after)::float8 END \
         FROM users WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(pool)
    .await
    .map_err(query_error)
}

/// Whether a signed, unexpired agent token is still good: its user exists with the role it names
/// and has not revoked its tokens since it was issued. `Err(reason)` when it is not.
pub async fn token_is_current(
    pool: &PgPool,
    claims: &chatdesk_core::auth::Claims,
) -> Result<Result<(), &'static str>, StoreError> {
    let Some((role, valid_after)) = token_standing(pool, claims.tenant, claims.sub).await? else {
        return Ok(Err("the token's user no longer exists"));
    };
    if role != claims.role {
        return Ok(Err("the user's role changed since the token was issued; log in again"));
    }
    // Revocation is kept to the microsecond, issue times to the second: a token of the same
    // second as a logout counts as revoked.
    if (claims.iat as f64) < valid_after.ceil() {
        return Ok(Err("the token was revoked; log in again"));
    }
    Ok(Ok(()))
}

/// Revokes every token of `user` issued until now (logout everywhere).
pub async fn revoke_tokens(pool: &PgPool, tenant: Uuid, user: Uuid) -> Result<bool, StoreError> {
    let updated = sqlx::query("UPDATE users SET tokens_valid_after = now() WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(user)
        .execute(pool)
        .await
        .map_err(query_error)?;
    Ok(updated.rows_affected() == 1)
}

/// Revokes the API key `id` of `tenant`; `false` when it has no such live key.
pub async fn revoke_api_key(pool: &PgPool, tenant: Uuid, id: Uuid) -> Result<bool, StoreError> {
    let updated =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL")
            .bind(tenant)
            .bind(id)
            .execute(pool)
            .await
            .map_err(query_error)?;
    Ok(updated.rows_affected() > 0)
}

/// `(key id, tenant, role)` of a live key with this hash.
pub async fn api_key_by_hash(pool: &PgPool, key_hash: &[u8]) -> Result<Option<(Uuid, Uuid, String)>, StoreError> {
    sqlx::query_as("SELECT id, tenant_id, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
        .bind(key_hash)
        .fetch_optional(pool)
        .await
        .map_err(query_error)
}

#[derive(Debug, Clone)]
pub struct InboxRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub kind: InboxKind,
    pub name: String,
    pub webhook_secret: String,
    pub outbound_url: Option<String>,
    /// Sending credentials: `phone_number_id` and `access_token` (WhatsApp), `bot_token`
    /// (Telegram). Never shown over the API.
    pub provider_config: serde_json::Value,
    /// Auto-reply settings (`chatdesk_core::autoreply::AutoReply`); `{}` when never set. Holds
    /// the model's API key: never shown over the API as it is.
    pub auto_reply: serde_json::Value,
}

type InboxRow = (Uuid, Uuid, String, String, String, Option<String>, serde_json::Value, serde_json::Value);
const INBOX_COLUMNS: &str = "id, tenant_id, kind, name, webhook_secret, outbound_url, provider_config, auto_reply";

/// `None` for a kind this build does not know (the schema's CHECK allows only known ones): such
/// an inbox is treated as absent rather than as some other kind.
fn inbox_record(row: InboxRow) -> Option<InboxRecord> {
    let (id, tenant_id, kind, name, webhook_secret, outbound_url, provider_config, auto_reply) = row;
    let kind = InboxKind::parse(&kind)?;
    Some(InboxRecord { id, tenant_id, kind, name, webhook_secret, outbound_url, provider_config, auto_reply })
}

pub async fn create_inbox(
    pool: &PgPool,
    tenant: Uuid,
    kind: InboxKind,
    name: &str,
    webhook_secret: &str,
    outbound_url: Option<&str>,
    provider_config: &serde_json::Value,
) -> Result<InboxRecord, StoreError> {
    let row: InboxRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO inboxes (id, tenant_id, kind, name, webhook_secret, outbound_url, provider_config) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {INBOX_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(tenant)
    .bind(kind.as_str())
    .bind(name)
    .bind(webhook_secret)
    .bind(outbound_url)
    .bind(provider_config)
    .fetch_one(pool)
    .await
    .map_err(query_error)?;
    inbox_record(row)
        .ok_or_else(|| StoreError::Query(sqlx::Error::Protocol(format!("unknown inbox kind {:?}", kind.as_str()))))
}

pub async fn inbox_by_id(pool: &PgPool, inbox: Uuid) -> Result<Option<InboxRecord>, StoreError> {
    let row: Option<InboxRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {INBOX_COLUMNS} FROM inboxes WHERE id = $1")))
            .bind(inbox)
            .fetch_optional(pool)
            .await
            .map_err(query_error)?;
    Ok(row.and_then(inbox_record))
}

/// A tenant's inboxes, oldest first.
pub async fn inboxes_of(pool: &PgPool, tenant: Uuid) -> Result<Vec<InboxRecord>, StoreError> {
    let rows: Vec<InboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INBOX_COLUMNS} FROM inboxes WHERE tenant_id = $1 ORDER BY id"
    )))
    .bind(tenant)
    .fetch_all(pool)
    .await
    .map_err(query_error)?;
    Ok(rows.into_iter().filter_map(inbox_record).collect())
}

/// Changes an inbox's outbound URL (`Some(None)` clears it) and merges `provider_patch` into
/// its credentials (a `null` value removes a key). `None` when the tenant has no such inbox.
pub async fn update_inbox(
    pool: &PgPool,
    tenant: Uuid,
    inbox: Uuid,
    outbound_url: Option<Option<&str>>,
    provider_patch: &serde_json::Value,
) -> Result<Option<InboxRecord>, StoreError> {
    let row: Option<InboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE inboxes SET outbound_url = CASE WHEN $3 THEN $4 ELSE outbound_url END, \
           provider_config = jsonb_strip_nulls(provider_config || $5) \
         WHERE tenant_id = $1 AND id = $2 RETURNING {INBOX_COLUMNS}"
    )))
    .bind(tenant)
    .bind(inbox)
    .bind(outbound_url.is_some())
    .bind(outbound_url.flatten())
    .bind(provider_patch)
    .fetch_optional(pool)
    .await
    .map_err(query_error)?;
    Ok(row.and_then(inbox_record))
}

/// The provider's id of a contact (WhatsApp wa_id, Telegram chat id, the generic channel's id).
/// Replaces an inbox's auto-reply settings. `None` when the tenant has no such inbox.
pub async fn set_auto_reply(
    pool: &PgPool,
    tenant: Uuid,
    inbox: Uuid,
    settings: &serde_json::Value,
) -> Result<Option<InboxRecord>, StoreError> {
    let row: Option<InboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE inboxes SET auto_reply = $3 WHERE tenant_id = $1 AND id = $2 RETURNING {INBOX_COLUMNS}"
    )))
    .bind(tenant)
    .bind(inbox)
    .bind(settings)
    .fetch_optional(pool)
    .await
    .map_err(query_error)?;
    Ok(row.and_then(inbox_record))
}

pub async fn contact_external_id(pool: &PgPool, tenant: Uuid, contact: Uuid) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT external_id FROM contacts WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(contact)
        .fetch_optional(pool)
        .await
        .map_err(query_error)?;
    Ok(row.map(|(id,)| id))
}
