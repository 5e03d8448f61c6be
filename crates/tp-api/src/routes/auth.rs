//! `/api/v1/auth/*`: login and the current user.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::Json;
use crate::auth::{Caller, normalize_email, verify_password};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// Login request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    /// Email address.
    email: String,
    /// Password.
    password: String,
}

/// A bearer token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenResponse {
    /// JWT for `Authorization: Bearer <token>`.
    token: String,
    /// Seconds until the token expires.
    expires_in: u64,
}

/// A user, without credentials.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserResponse {
    /// User id.
    id: Uuid,
    /// Email address.
    email: String,
    /// Display name.
    name: String,
    /// `SYS_ADMIN`, `TENANT_ADMIN` or `TENANT_USER`.
    role: String,
    /// Owning tenant.
    tenant_id: Uuid,
}

const BAD_LOGIN: &str = "invalid email or password";

/// Exchanges email and password for a token.
#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Wrong email or password", body = ErrorBody),
    ),
    security(())
)]
pub(crate) async fn login(
    State(state): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<axum::Json<TokenResponse>> {
    let user = state
        .metadata
        .get_user_by_email(&normalize_email(&req.email))
        .await?;
    // Unknown users cost one hash verification too, and get the same answer.
    let ok = verify_password(req.password, user.as_ref().map(|u| u.password_hash.clone())).await?;
    let user = match user {
        Some(u) if ok => u,
        _ => return Err(ApiError::unauthenticated(BAD_LOGIN)),
    };
    let (token, expires_in) = state.auth.issue(&user)?;
    Ok(axum::Json(TokenResponse { token, expires_in }))
}

/// The signed-in user.
#[utoipa::path(
    get,
    path = "/auth/me",
    tag = "auth",
    responses(
        (status = 200, description = "The caller", body = UserResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn me(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<UserResponse>> {
    let user = state
        .metadata
        .get_user(caller.user_id)
        .await?
        .filter(|u| u.tenant_id == caller.tenant_id)
        .ok_or_else(|| ApiError::unauthenticated("the token's user no longer exists"))?;
    Ok(axum::Json(UserResponse {
        id: user.id.0,
        email: user.email,
        name: user.name,
        role: user.role.as_str().to_owned(),
        tenant_id: user.tenant_id.0,
    }))
}
