//! Liveness and readiness. `/healthz` says the process serves HTTP; `/readyz` says it can do
//! its work: Redis and PostgreSQL both answer within a second. Load balancers route on
//! `/readyz`; orchestrators restart on `/healthz`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fred::prelude::*;
use serde_json::{Value, json};

use crate::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn check<F, E>(probe: F) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {}ms", CHECK_TIMEOUT.as_millis())),
    }
}

/// Readiness: Redis and PostgreSQL both answer within a second. The body names each check:
/// `{"status": "ready"|"unready", "checks": {"redis": {"status": "ok"|"error", "error"?}, "postgres": {…}}}`.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Not ready; `checks` says which dependency failed and why"),
))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let redis = check(async { state.redis.ping::<String>(None).await.map(|_| ()) });
    let postgres = check(chatdesk_store::ping(&state.db));
    let (redis, postgres) = tokio::join!(redis, postgres);
    let render = |result: &Result<(), String>| match result {
        Ok(()) => json!({ "status": "ok" }),
        Err(error) => json!({ "status": "error", "error": error }),
    };
    let ready = redis.is_ok() && postgres.is_ok();
    let body = json!({
        "status": if ready { "ready" } else { "unready" },
        "checks": { "redis": render(&redis), "postgres": render(&postgres) },
    });
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
