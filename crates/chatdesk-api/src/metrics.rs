//! `/metrics` in the Prometheus text format, and per-request HTTP metrics labelled by route
//! template (never the raw path, which would make labels unbounded).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

pub const HTTP_REQUESTS_TOTAL: &str = "chatdesk_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "chatdesk_http_request_duration_seconds";

pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(HTTP_REQUESTS_TOTAL, Unit::Count, "HTTP requests answered, by route, method and status");
    describe_histogram!(HTTP_REQUEST_DURATION_SECONDS, Unit::Seconds, "HTTP request latency, by route and method");
}

/// Prometheus metrics in the text exposition format. With `CHATDESK_METRICS_TOKEN` set, only
/// for `Authorization: Bearer <token>`.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Metrics", content_type = "text/plain"),
    (status = 401, description = "CHATDESK_METRICS_TOKEN is set and the request does not carry it", body = crate::openapi::ErrorBody),
))]
pub async fn render(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(expected) = &state.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !chatdesk_core::auth::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return crate::error::ApiError::Unauthorized { message: "/metrics needs the metrics token".into() }
                .into_response();
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

pub async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // A fixed set: any token is a valid method name, and labels must stay bounded.
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    ::metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    ::metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}
