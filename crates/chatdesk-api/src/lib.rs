//! chatdesk's HTTP surface (axum): the web console at `/`, liveness, readiness and Prometheus
//! metrics in every process, and the public API under `/v1`.
//!
//! - [`ops_router`], [`api_router`] and [`finish`] build the application; [`serve`] runs it
//!   until cancelled.
//! - [`error::ApiError`]: the one error type of every handler, rendered as
//!   `{"error": {"code", "message"}}` with a stable `code`.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`metrics`]: `/metrics` and the per-request metrics middleware.

pub mod error;
pub mod health;
pub mod metrics;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use chatdesk_streams::RedisClient;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub redis: RedisClient,
    pub db: chatdesk_store::Pool,
    pub metrics: PrometheusHandle,
}

/// Health, readiness and metrics: served by every process, whatever its roles.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        .route("/", get(console))
        .with_state(state)
}

/// The web console, compiled into the binary so it works from any directory and offline.
async fn console() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../../dashboard/index.html"))
}

/// The public API under `/v1`, served by the `ingress` role.
pub fn api_router(state: AppState) -> Router {
    Router::new().route("/v1", get(info)).with_state(state)
}

/// Layers every route shares: JSON 404s, request metrics and traces, a request timeout.
pub fn finish(router: Router) -> Router {
    router
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(metrics::track_requests))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
}

/// `GET /v1`: what a client talks to.
async fn info() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "service": "chatdesk",
        "version": env!("CARGO_PKG_VERSION"),
        "api": "v1",
    }))
}

/// Serves `router` on `listener` until `cancel` fires, then lets requests in flight finish.
pub async fn serve(listener: TcpListener, app: Router, cancel: CancellationToken) -> std::io::Result<()> {
    let address: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(address = ?address, "http server listening");
    axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}
