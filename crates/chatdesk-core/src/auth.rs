//! Who may do what: the roles of users and API keys, and the signed tokens that carry them.
//!
//! Tokens are HS256 JWTs signed with the deployment's key (`CHATDESK_JWT_SECRET`):
//! - **agent tokens** ([`Claims`]): user, tenant, role, expiry; issued by `POST /v1/auth/login`;
//! - **visitor tokens** ([`VisitorClaims`]): one web-widget visitor and its conversation.
//!
//! Each kind refuses to be read as the other (`deny_unknown_fields` plus the visitor `typ`), so a
//! visitor token can never act as an agent. Verification checks the signature in constant time
//! before reading anything, then the algorithm and the expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// How long an agent or visitor token is valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// The roles a user or API key can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Owner,
    Admin,
    Agent,
    Marketer,
    Sre,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Owner, Role::Admin, Role::Agent, Role::Marketer, Role::Sre];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Agent => "agent",
            Role::Marketer => "marketer",
            Role::Sre => "sre",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == raw)
    }
}

/// Whether `text` looks like an e-mail address (a local part, `@`, a dotted domain, no spaces):
/// logins and widget visitors are identified by one.
pub fn is_email(text: &str) -> bool {
    text.chars().count() <= 320
        && !text.contains(crate::spaces::is_space)
        && !text.contains(char::is_control)
        && text
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.contains('@'))
}

/// A random string of `length` letters and digits (secrets, keys).
pub fn random_token(length: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..length).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// The key tokens are signed with (`CHATDESK_JWT_SECRET`).
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
    /// The visitor's identity in the inbox (from its visitor key, never from what it typed).
    pub visitor: Uuid,
    /// The e-mail address the visitor gave (contact data, not proof of anything).
    pub email: String,
    /// The name the visitor gave, if any: its first message makes the contact with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub exp: u64,
}

pub const VISITOR_TYPE: &str = "visitor";
pub const VISITOR_KEY_TYPE: &str = "visitor-key";

/// How long a visitor key lasts: a returning visitor is recognised for this long.
pub const VISITOR_KEY_TTL: Duration = Duration::from_secs(365 * 86_400);

/// A web-widget visitor's secret: the widget keeps it and presents it to resume its
/// conversation. Whoever does not hold it is a new visitor, whatever e-mail it gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorKeyClaims {
    /// Always `"visitor-key"`.
    pub typ: String,
    pub inbox: Uuid,
    pub visitor: Uuid,
    pub exp: u64,
}

/// A new visitor key for `visitor` of `inbox`.
pub fn issue_visitor_key(key: &TokenKey, inbox: Uuid, visitor: Uuid) -> String {
    let claims = VisitorKeyClaims {
        typ: VISITOR_KEY_TYPE.to_owned(),
        inbox,
        visitor,
        exp: now_seconds() + VISITOR_KEY_TTL.as_secs(),
    };
    sign(key, &claims)
}

/// The visitor a key names, if it was issued here for `inbox` and has not expired.
pub fn verify_visitor_key(key: &TokenKey, inbox: Uuid, visitor_key: &str) -> Result<Uuid, TokenError> {
    let claims: VisitorKeyClaims = verify(key, visitor_key)?;
    if claims.typ != VISITOR_KEY_TYPE || claims.inbox != inbox {
        return Err(TokenError::Malformed);
    }
    Ok(claims.visitor)
}

/// Whose a visitor token is and what it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitorGrant<'a> {
    pub tenant: Uuid,
    pub inbox: Uuid,
    pub contact: Uuid,
    pub conversation: Uuid,
    pub visitor: Uuid,
    pub email: &'a str,
    pub name: Option<&'a str>,
}

/// Signs a visitor token valid for `ttl`; returns it and its expiry.
pub fn issue_visitor_token(key: &TokenKey, grant: &VisitorGrant<'_>, ttl: Duration) -> (String, u64) {
    let claims = VisitorClaims {
        typ: VISITOR_TYPE.to_owned(),
        tenant: grant.tenant,
        inbox: grant.inbox,
        contact: grant.contact,
        conversation: grant.conversation,
        visitor: grant.visitor,
        email: grant.email.to_owned(),
        name: grant.name.map(str::to_owned),
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

/// Whether two secrets are equal, in time that depends only on their lengths.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0u8, |difference, (a, b)| difference | (a ^ b)) == 0
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`: the signature of a webhook body, as the
/// generic channel sends it (`X-Chatdesk-Signature`) both ways and WhatsApp sends it to us.
pub fn sign_body(body: &[u8], secret: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", digest.iter().map(|byte| format!("{byte:02x}")).collect::<String>())
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
        let grant = VisitorGrant {
            tenant: ids.0,
            inbox: ids.1,
            contact: ids.2,
            conversation: ids.3,
            visitor: ids.0,
            email: "ana@example.com",
            name: Some("Ana"),
        };
        let (visitor, _) = issue_visitor_token(&key(), &grant, TOKEN_TTL);
        let claims = verify_visitor_token(&key(), &visitor).unwrap();
        assert_eq!((claims.conversation, claims.name.as_deref()), (ids.3, Some("Ana")));
        assert_eq!(verify_token(&key(), &visitor), Err(TokenError::Malformed));
        let (agent, _) = issue_token(&key(), ids.0, ids.1, Role::Agent, TOKEN_TTL);
        assert_eq!(verify_visitor_token(&key(), &agent), Err(TokenError::Malformed));
        let visitor_key = issue_visitor_key(&key(), ids.1, ids.2);
        assert_eq!(verify_visitor_key(&key(), ids.1, &visitor_key), Ok(ids.2));
        assert_eq!(verify_visitor_key(&key(), ids.0, &visitor_key), Err(TokenError::Malformed), "another inbox");
        assert!(verify_visitor_key(&key(), ids.1, &visitor).is_err(), "a visitor token is not a key");
        assert!(verify_visitor_token(&key(), &visitor_key).is_err(), "a key is not a visitor token");
    }
}
