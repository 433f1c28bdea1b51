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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chatdesk_store::directory::Role;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// The prefix of every API key: recognisable in logs and by secret scanners.
pub const API_KEY_PREFIX: &str = "cdk_";
/// How long an agent token is valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// The key agent tokens are signed with (`CHATDESK_JWT_SECRET`).
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl TokenKey {
    /// At least 32 bytes: shorter HMAC keys can be brute-forced offline from one token.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err(format!("must be at least 32 bytes long, got {}", secret.len()));
        }
        Ok(Self(secret.to_vec()))
    }

    /// A random key, for `chatdesk up` to persist when none is configured.
    pub fn generate_secret() -> String {
        random_token(48)
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TokenKey(***)")
    }
}

/// What an agent token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    pub tenant: Uuid,
    pub role: String,
    pub iat: u64,
    pub exp: u64,
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

const JWT_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Signs `claims` as an HS256 JWT.
pub fn sign<T: Serialize>(key: &TokenKey, claims: &T) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(JWT_HEADER),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"))
    );
    let mut mac = key.mac();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Signs an agent token for `user`; returns the token and its expiry (seconds since the epoch).
pub fn issue_token(key: &TokenKey, user: Uuid, tenant: Uuid, role: Role, ttl: Duration) -> (String, u64) {
    let iat = now_seconds();
    let claims = Claims { sub: user, tenant, role: role.as_str().to_owned(), iat, exp: iat + ttl.as_secs() };
    (sign(key, &claims), claims.exp)
}

/// Why a token was refused; all answer 401, the message says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
}

/// Verifies signature, algorithm and expiry (`exp`) of an HS256 JWT and decodes its claims.
pub fn verify<T: DeserializeOwned>(key: &TokenKey, token: &str) -> Result<T, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    let mut mac = key.mac();
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
    // Only after the signature: the header must say HS256 (no "none", no algorithm confusion).
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Malformed)?)
            .map_err(|_| TokenError::Malformed)?;
    if header.get("alg").and_then(serde_json::Value::as_str) != Some("HS256") {
        return Err(TokenError::Malformed);
    }
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?)
            .map_err(|_| TokenError::Malformed)?;
    let expiry = claims.get("exp").and_then(serde_json::Value::as_u64).ok_or(TokenError::Malformed)?;
    if expiry <= now_seconds() {
        return Err(TokenError::Expired);
    }
    serde_json::from_value(claims).map_err(|_| TokenError::Malformed)
}

/// Verifies an agent token.
pub fn verify_token(key: &TokenKey, token: &str) -> Result<Claims, TokenError> {
    verify(key, token)
}

/// What a web-widget visitor token says: the visitor may only write to and read its own
/// conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorClaims {
    /// Always `"visitor"`: an agent token can never be read as a visitor token or back.
    pub typ: String,
    pub tenant: Uuid,
    pub inbox: Uuid,
    pub contact: Uuid,
    pub conversation: Uuid,
    /// The visitor's e-mail address (its identity in the inbox).
    pub email: String,
    pub exp: u64,
}

pub const VISITOR_TYPE: &str = "visitor";

/// Signs a visitor token valid for `ttl`; returns it and its expiry.
pub fn issue_visitor_token(
    key: &TokenKey,
    tenant: Uuid,
    inbox: Uuid,
    contact: Uuid,
    conversation: Uuid,
    email: &str,
    ttl: Duration,
) -> (String, u64) {
    let claims = VisitorClaims {
        typ: VISITOR_TYPE.to_owned(),
        tenant,
        inbox,
        contact,
        conversation,
        email: email.to_owned(),
        exp: now_seconds() + ttl.as_secs(),
    };
    (sign(key, &claims), claims.exp)
}

pub fn verify_visitor_token(key: &TokenKey, token: &str) -> Result<VisitorClaims, TokenError> {
    let claims: VisitorClaims = verify(key, token)?;
    if claims.typ != VISITOR_TYPE {
        return Err(TokenError::Malformed);
    }
    Ok(claims)
}

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

fn random_token(length: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..length).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
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
            let (_, tenant, role) = found.ok_or_else(|| unauthorized("unknown or revoked API key"))?;
            let role = Role::parse(&role).ok_or_else(|| unauthorized("API key has an unknown role"))?;
            return Ok(Principal { tenant, user: None, role });
        }
        let claims = verify_token(&state.auth, token).map_err(|error| unauthorized(&error.to_string()))?;
        let role = Role::parse(&claims.role).ok_or_else(|| unauthorized("the token has an unknown role"))?;
        Ok(Principal { tenant: claims.tenant, user: Some(claims.sub), role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::new(&[7u8; 32]).unwrap()
    }

    #[test]
    fn tokens_round_trip_and_expire() {
        let (user, tenant) = (Uuid::now_v7(), Uuid::now_v7());
        let (token, _) = issue_token(&key(), user, tenant, Role::Agent, TOKEN_TTL);
        let claims = verify_token(&key(), &token).unwrap();
        assert_eq!((claims.sub, claims.tenant, claims.role.as_str()), (user, tenant, "agent"));
        let (expired, _) = issue_token(&key(), user, tenant, Role::Agent, Duration::ZERO);
        assert_eq!(verify_token(&key(), &expired), Err(TokenError::Expired));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let (token, _) = issue_token(&key(), Uuid::now_v7(), Uuid::now_v7(), Role::Agent, TOKEN_TTL);
        let other = TokenKey::new(&[8u8; 32]).unwrap();
        assert_eq!(verify_token(&other, &token), Err(TokenError::BadSignature));
        // Same signature, claims swapped for an owner role.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&serde_json::json!({"sub": Uuid::nil(), "tenant": Uuid::nil(), "role": "owner", "iat": 0, "exp": u64::MAX}))
                .unwrap(),
        );
        assert_eq!(
            verify_token(&key(), &format!("{}.{forged_claims}.{}", parts[0], parts[2])),
            Err(TokenError::BadSignature)
        );
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        assert_eq!(verify_token(&key(), &format!("{none_header}.{}.", parts[1])), Err(TokenError::BadSignature));
        assert_eq!(verify_token(&key(), "not-a-token"), Err(TokenError::Malformed));
    }

    #[test]
    fn visitor_and_agent_tokens_do_not_mix() {
        let ids = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (visitor, _) = issue_visitor_token(&key(), ids.0, ids.1, ids.2, ids.3, "ana@example.com", TOKEN_TTL);
        assert_eq!(verify_visitor_token(&key(), &visitor).unwrap().conversation, ids.3);
        assert_eq!(verify_token(&key(), &visitor), Err(TokenError::Malformed));
        let (agent, _) = issue_token(&key(), ids.0, ids.1, Role::Agent, TOKEN_TTL);
        assert_eq!(verify_visitor_token(&key(), &agent), Err(TokenError::Malformed));
    }

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
