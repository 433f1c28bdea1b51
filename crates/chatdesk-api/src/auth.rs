//! Authentication and authorisation.
//!
//! Two kinds of bearer token reach the API in `Authorization: Bearer <token>`:
//! - **agent tokens**: JWTs (HS256) from `POST /v1/auth/login`, carrying user, tenant, role and
//!   expiry; verified without a database round trip;
//! - **API keys** (`cdk_…`) for server-to-server calls, created by `chatdesk admin apikey create`;
//!   stored as SHA-256 hashes (they are long random strings, so a fast hash is enough) and
//!   looked up per request.
//!
//! Passwords are stored as argon2id hashes. Every request resolves to a [`Principal`]: a tenant
//! and a role, which every handler scopes its queries and checks its rights with.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
pub use chatdesk_core::auth::{
    Claims, Role, TOKEN_TTL, TokenError, TokenKey, VisitorClaims, issue_token, issue_visitor_token, random_token,
    verify_token, verify_visitor_token,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// The prefix of every API key: recognisable in logs and by secret scanners.
pub const API_KEY_PREFIX: &str = "cdk_";

/// An argon2id hash of `password` in PHC string format.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with valid parameters")
        .to_string()
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// Verifies against a fixed hash, so a login for an unknown e-mail takes as long as one with a
/// wrong password and does not reveal which addresses exist.
pub fn burn_password_check(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = DUMMY.get_or_init(|| hash_password("not a real password"));
    let _ = verify_password(password, hash);
}

/// A new API key: the key to hand out once, its hash to store, and a short prefix to show.
pub fn generate_api_key() -> (String, Vec<u8>, String) {
    let key = format!("{API_KEY_PREFIX}{}", random_token(40));
    let hash = hash_api_key(&key);
    let prefix = key[..API_KEY_PREFIX.len() + 6].to_owned();
    (key, hash, prefix)
}

pub fn hash_api_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A random webhook secret for a new inbox.
pub fn generate_webhook_secret() -> String {
    random_token(40)
}

/// Who is calling: resolved from the bearer token of every authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Uuid,
    /// The agent's user id; `None` for API keys.
    pub user: Option<Uuid>,
    /// The API key's id (`key_id`); `None` for agents.
    pub key: Option<Uuid>,
    pub role: Role,
}

impl Principal {
    /// `403 forbidden` unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role], action: &str) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        Err(ApiError::Forbidden { message: format!("role {} may not {action}", self.role.as_str()) })
    }
}

/// Roles that work conversations.
pub const CONVERSATION_ROLES: &[Role] = &[Role::Owner, Role::Admin, Role::Agent];

/// Roles that configure a tenant (its inboxes).
pub const ADMIN_ROLES: &[Role] = &[Role::Owner, Role::Admin];

/// A signed, unexpired token is good only while its user exists with the role it names and has
/// not revoked it (logout): deleting a user, changing a role or logging out ends its tokens.
pub async fn check_standing(db: &chatdesk_store::Pool, claims: &chatdesk_core::auth::Claims) -> Result<(), ApiError> {
    chatdesk_store::directory::token_is_current(db, claims)
        .await
        .map_err(ApiError::store)?
        .map_err(|reason| ApiError::Unauthorized { message: reason.to_owned() })
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let unauthorized = |message: &str| ApiError::Unauthorized { message: message.to_owned() };
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization header (expected `Bearer <token>`)"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        if token.starts_with(API_KEY_PREFIX) {
            let found = chatdesk_store::directory::api_key_by_hash(&state.db, &hash_api_key(token))
                .await
                .map_err(ApiError::store)?;
            let (key, tenant, role) = found.ok_or_else(|| unauthorized("unknown or revoked API key"))?;
            let role = Role::parse(&role).ok_or_else(|| unauthorized("API key has an unknown role"))?;
            return Ok(Principal { tenant, user: None, key: Some(key), role });
        }
        let claims = verify_token(&state.auth, token).map_err(|error| unauthorized(&error.to_string()))?;
        let role = Role::parse(&claims.role).ok_or_else(|| unauthorized("the token has an unknown role"))?;
        check_standing(&state.db, &claims).await?;
        Ok(Principal { tenant: claims.tenant, user: Some(claims.sub), key: None, role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_keys() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong", &hash));
        let (key, hash, prefix) = generate_api_key();
        assert!(key.starts_with("cdk_") && key.len() == 44);
        assert_eq!(hash_api_key(&key), hash);
        assert!(key.starts_with(&prefix));
        assert!(TokenKey::new(b"short").is_err());
    }
}
