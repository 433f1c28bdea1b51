//! `POST /v1/auth/login`: e-mail and password for an agent token.
//!
//! Password hashing is deliberately expensive (Argon2id, 19 MiB and tens of milliseconds each),
//! so an unauthenticated caller must not be able to make a process hash without bound:
//! - at most [`Guard`]'s threads hash at once per process; a login that waits longer than
//!   [`HASH_WAIT`] for one is answered 503 with `Retry-After`;
//! - failed logins are counted in Redis (shared by every process) per account and per client
//!   address; past [`MAX_ACCOUNT_FAILURES`] / [`MAX_ADDRESS_FAILURES`] in [`FAILURE_WINDOW`]
//!   the next attempt is answered 429 before any hashing;
//! - passwords longer than [`MAX_PASSWORD_CHARS`] characters are refused before hashing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{TOKEN_TTL, burn_password_check, issue_token, verify_password};
use crate::error::ApiError;
use crate::extract::ApiJson;

/// The longest password accepted, in bytes.
pub const MAX_PASSWORD_CHARS: usize = 1024;
/// How long a login may wait for a hashing slot before it is answered 503.
pub const HASH_WAIT: Duration = Duration::from_secs(2);
/// Failed logins are counted over this window (from the first failure).
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failed logins of one account within the window before further attempts are refused.
pub const MAX_ACCOUNT_FAILURES: u64 = 10;
/// Failed logins from one client address within the window before further attempts are refused.
pub const MAX_ADDRESS_FAILURES: u64 = 50;

type HashJob = Box<dyn FnOnce() + Send>;

/// Bounds password hashing in one process: hashes run on a few dedicated threads, one at a
/// time each. Dedicated threads matter as much as the bound: the allocator keeps a freed 19 MiB
/// block for the thread that used it, so hashes spread over a large blocking pool would leave
/// that much resident per pool thread.
#[derive(Clone)]
pub struct Guard {
    hashing: Arc<Semaphore>,
    jobs: std::sync::mpsc::Sender<HashJob>,
}

impl Guard {
    /// `threads` hashes at once (each holds about 19 MiB while it runs).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let (jobs, queue) = std::sync::mpsc::channel::<HashJob>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for index in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("password-hash-{index}")).spawn(move || {
                loop {
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
            if let Err(error) = spawned {
                tracing::error!(error = %error, "cannot start a password hashing thread");
            }
        }
        Self { hashing: Arc::new(Semaphore::new(threads)), jobs }
    }

    /// Runs `hash` on a hashing thread, waiting at most [`HASH_WAIT`] for one to be free.
    async fn run<T: Send + 'static>(&self, hash: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let busy =
            || ApiError::Busy { message: "too many logins in progress; retry shortly".into(), retry_after_seconds: 1 };
        let permit = tokio::time::timeout(HASH_WAIT, self.hashing.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .expect("the hashing semaphore is never closed");
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            // Held until the hash is done, so the bound counts hashes running.
            let _permit = permit;
            let _ = answer.send(hash());
        });
        self.jobs.send(job).map_err(|_| busy())?;
        answered.await.map_err(|_| busy())
    }
}

impl Default for Guard {
    /// One hash per core: more only queue on the blocking pool while each holds its memory.
    fn default() -> Self {
        Self::new(std::thread::available_parallelism().map(usize::from).unwrap_or(2))
    }
}

fn redis_down(_: Error) -> ApiError {
    ApiError::Unavailable { dependency: "Redis" }
}

/// Takes a place in one failure counter unless it is used up: the check, the increment and the
/// counter's time to live are one step, so a refused attempt takes nothing and has nothing to
/// give back. Answers the count, or -1 when the counter is full.
const RESERVE: &str = r#"
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then return -1 end
count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return count
"#;

/// Gives a place back to the counter it was taken from (never below zero, never recreating a
/// counter whose window is over).
const RELEASE: &str = r#"
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 0 then redis.call('DECR', KEYS[1]) end
return count
"#;

static RESERVE_SCRIPT: std::sync::LazyLock<chatdesk_streams::Script> =
    std::sync::LazyLock::new(|| chatdesk_streams::Script::new(RESERVE));
static RELEASE_SCRIPT: std::sync::LazyLock<chatdesk_streams::Script> =
    std::sync::LazyLock::new(|| chatdesk_streams::Script::new(RELEASE));

/// The failure counters of one attempt, in the window it started in: a place is always given
/// back to the window it was taken from, never to the next one.
struct Places {
    keys: [String; 2],
    retry_after_seconds: u64,
}

fn places(state: &AppState, account: &str, address: &IpAddr) -> Places {
    let window_seconds = FAILURE_WINDOW.as_secs();
    let now = chatdesk_core::envelope::now_ms() / 1000;
    let window = now / window_seconds;
    Places {
        keys: [
            state.keys.login_failures_of_account(account, window),
            state.keys.login_failures_of_address(address, window),
        ],
        retry_after_seconds: (window + 1) * window_seconds - now,
    }
}

/// Reserves one failed attempt against the account and the address before the password is
/// checked, refusing (429) when either is used up for the current window. Counting first is
/// what bounds a concurrent burst: every attempt in flight holds its place, so no more than the
/// limit are ever checked. A correct password gives its places back ([`release_attempt`]).
async fn reserve_attempt(state: &AppState, places: &Places) -> Result<(), ApiError> {
    let limits = [MAX_ACCOUNT_FAILURES, MAX_ADDRESS_FAILURES];
    let ttl = FAILURE_WINDOW.as_secs() + 60;
    for (index, (key, limit)) in places.keys.iter().zip(limits).enumerate() {
        let reserved: Result<i64, _> = RESERVE_SCRIPT.call(&state.redis, vec![key.clone()], vec![limit, ttl]).await;
        let refused = match reserved {
            Ok(count) => count < 0,
            Err(error) => {
                release(state, &places.keys[..index]).await;
                return Err(redis_down(error));
            }
        };
        if refused {
            release(state, &places.keys[..index]).await;
            return Err(ApiError::TooManyRequests {
                message: "too many failed logins; try again later".into(),
                retry_after_seconds: places.retry_after_seconds.max(1),
            });
        }
    }
    Ok(())
}

/// Gives back the places [`reserve_attempt`] took: the attempt did not fail on its password.
async fn release_attempt(state: &AppState, places: &Places) {
    release(state, &places.keys).await;
}

async fn release(state: &AppState, keys: &[String]) {
    for key in keys {
        let _: Result<i64, _> = RELEASE_SCRIPT.call(&state.redis, vec![key.clone()], Vec::<String>::new()).await;
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// 1 to 320 characters, not only spaces, no control characters.
    #[schema(
        min_length = 1,
        max_length = 320,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0085\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub email: String,
    /// At most 1,024 characters.
    #[schema(max_length = 1024)]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginUser {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// owner, admin, agent, marketer or sre.
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
    pub user: LoginUser,
}

/// Exchanges e-mail and password for an agent token (HS256 JWT, valid 12 hours).
#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 401, description = "Wrong e-mail or password", body = crate::openapi::ErrorBody),
        (status = 422, description = "A field is missing or invalid", body = crate::openapi::ErrorBody),
        (status = 429, description = "Too many failed logins for this account or from this address; see Retry-After", body = crate::openapi::ErrorBody),
        (status = 503, description = "Too many logins in progress; see Retry-After", body = crate::openapi::ErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    // Counted as sent, as the document's `maxLength` counts it.
    if request.email.chars().count() > 320 || chatdesk_core::spaces::is_blank(&request.email) {
        return Err(ApiError::invalid_field("email", "must be 1 to 320 characters, not only spaces"));
    }
    let email = chatdesk_core::spaces::trim(&request.email);
    if email.chars().any(char::is_control) {
        return Err(ApiError::invalid_field("email", "must not contain control characters"));
    }
    if request.password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(ApiError::invalid_field("password", format!("must be at most {MAX_PASSWORD_CHARS} characters")));
    }
    let account = email.to_lowercase();
    let address = peer.ip();
    let places = places(&state, &account, &address);
    reserve_attempt(&state, &places).await?;
    let password = request.password;
    let checked = async {
        let user = chatdesk_store::directory::user_by_folded_email(&state.db, email, &account)
            .await
            .map_err(ApiError::store)?;
        state
            .logins
            .run(move || match user {
                Some(user) if verify_password(&password, &user.password_hash) => Some(user),
                Some(_) => None,
                None => {
                    burn_password_check(&password);
                    None
                }
            })
            .await
    }
    .await;
    let user = match checked {
        // A wrong password keeps the place it reserved: that is the failure counted.
        Ok(None) => return Err(ApiError::Unauthorized { message: "wrong e-mail or password".into() }),
        Ok(Some(user)) => {
            release_attempt(&state, &places).await;
            user
        }
        Err(error) => {
            release_attempt(&state, &places).await;
            return Err(error);
        }
    };
    let role = chatdesk_store::directory::Role::parse(&user.role)
        .ok_or_else(|| ApiError::Internal(format!("user {} has unknown role {:?}", user.id, user.role).into()))?;
    let (token, expires_at) = issue_token(&state.auth, user.id, user.tenant_id, role, TOKEN_TTL);
    Ok(Json(LoginResponse {
        token,
        expires_at,
        user: LoginUser { id: user.id, tenant_id: user.tenant_id, role: user.role },
    }))
}

/// Ends every session of the caller: every token it was issued until now stops working, here and
/// on the WebSocket (live sockets are closed on their next check, when they reconnect).
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out: the caller's tokens are revoked"),
        (status = 401, description = "Missing or invalid credentials", body = crate::openapi::ErrorBody),
        (status = 422, description = "An API key cannot log out (revoke it with `chatdesk admin apikey revoke`)", body = crate::openapi::ErrorBody),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    principal: crate::auth::Principal,
) -> Result<axum::http::StatusCode, ApiError> {
    let Some(user) = principal.user else {
        return Err(ApiError::invalid_field("Authorization", "an API key cannot log out; revoke it instead"));
    };
    chatdesk_store::directory::revoke_tokens(&state.db, principal.tenant, user).await.map_err(ApiError::store)?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
