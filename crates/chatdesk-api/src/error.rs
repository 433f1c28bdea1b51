//! The single error type of the HTTP API. Every error answers
//! `{"error": {"code": "<stable_code>", "message": "<for humans>", "details": <object or null>}}`
//! with the matching status; internals are logged, never sent.

use axum::Json;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read (malformed JSON, bad path or query parameter).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String, details: Option<Value> },
    /// 401: no valid credentials.
    #[error("{message}")]
    Unauthorized { message: String },
    /// 403: valid credentials without the right.
    #[error("{message}")]
    Forbidden { message: String },
    #[error("{message}")]
    NotFound { message: String },
    /// 429: slow down; `Retry-After` says for how long.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_seconds: u64 },
    /// 409: the resource's state does not allow it.
    #[error("{message}")]
    Conflict { message: String },
    #[error("{message}")]
    PayloadTooLarge { message: String },
    #[error("{message}")]
    UnsupportedMediaType { message: String },
    /// 422: well-formed JSON that does not say something valid.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String, details: Option<Value> },
    #[error("{dependency} is unavailable")]
    Unavailable { dependency: &'static str },
    /// 503: this process is at capacity for this kind of work; `Retry-After` says when to retry.
    #[error("{message}")]
    Busy { message: String, retry_after_seconds: u64 },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
    details: &'a Option<Value>,
}

const NO_DETAILS: Option<Value> = None;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable { .. } | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::Unprocessable { code, .. } => code,
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::NotFound { .. } => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Busy { .. } => "busy",
            ApiError::Internal(_) => "internal",
        }
    }

    fn details(&self) -> &Option<Value> {
        match self {
            ApiError::BadRequest { details, .. } | ApiError::Unprocessable { details, .. } => details,
            _ => &NO_DETAILS,
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound { message: format!("{what} not found") }
    }

    /// 422 naming the offending field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        ApiError::Unprocessable {
            code: "invalid_field",
            message: format!("{field}: {}", message.into()),
            details: Some(serde_json::json!({ "field": field })),
        }
    }

    /// A store failure: 503 when the database is unreachable, else 500.
    pub fn store(error: chatdesk_store::StoreError) -> Self {
        if error.is_transient() {
            tracing::warn!(error = %error, "database unavailable");
            return ApiError::Unavailable { dependency: "PostgreSQL" };
        }
        ApiError::Internal(Box::new(error))
    }

    /// A failed append: Redis did not take the event, so nothing happened.
    pub fn append(error: chatdesk_streams::ProduceError) -> Self {
        tracing::warn!(error = %error, "append failed");
        ApiError::Unavailable { dependency: "Redis" }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(source) = &self {
            tracing::error!(error = %source, "request failed");
        }
        let body = Body { error: Detail { code: self.code(), message: self.to_string(), details: self.details() } };
        let mut response = (self.status(), Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after_seconds, .. } | ApiError::Busy { retry_after_seconds, .. } =
            &self
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(*retry_after_seconds));
        }
        response
    }
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound { message: format!("no route for {}", uri.path()) }
}
