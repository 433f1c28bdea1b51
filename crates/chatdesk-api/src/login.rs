//! `POST /v1/auth/login`: e-mail and password for an agent token.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{TOKEN_TTL, burn_password_check, issue_token, verify_password};
use crate::error::ApiError;
use crate::extract::ApiJson;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
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
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    if request.email.trim().is_empty() {
        return Err(ApiError::invalid_field("email", "must not be empty"));
    }
    let user =
        chatdesk_store::directory::user_by_email(&state.db, request.email.trim()).await.map_err(ApiError::store)?;
    let password = request.password;
    let checked = tokio::task::spawn_blocking(move || match user {
        Some(user) if verify_password(&password, &user.password_hash) => Some(user),
        Some(_) => None,
        None => {
            burn_password_check(&password);
            None
        }
    })
    .await
    .map_err(|error| ApiError::Internal(Box::new(error)))?;
    let user = checked.ok_or_else(|| ApiError::Unauthorized { message: "wrong e-mail or password".into() })?;
    let role = chatdesk_store::directory::Role::parse(&user.role)
        .ok_or_else(|| ApiError::Internal(format!("user {} has unknown role {:?}", user.id, user.role).into()))?;
    let (token, expires_at) = issue_token(&state.auth, user.id, user.tenant_id, role, TOKEN_TTL);
    Ok(Json(LoginResponse {
        token,
        expires_at,
        user: LoginUser { id: user.id, tenant_id: user.tenant_id, role: user.role },
    }))
}
