//! `/api/v1/auth/*`: sign-in, refresh, sign-out, password change and the current user.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::Json;
use super::support::audit;
use crate::auth::{
    Caller, ClientAddr, Principal, TokenPair, check_lock, clear_failures, end_session,
    hash_password, normalize_email, record_failure, refresh_session, revoke_user_sessions,
    start_session, validate_password, verify_password,
};
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

/// Refresh request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshRequest {
    /// The refresh token of the last pair (single use).
    refresh_token: String,
}

/// Password change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordRequest {
    /// The current password.
    current_password: String,
    /// The new password, at least 8 characters.
    new_password: String,
}

/// The caller.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MeResponse {
    /// User id.
    id: Uuid,
    /// Email address.
    email: String,
    /// Display name.
    name: String,
    /// `SYS_ADMIN`, `TENANT_ADMIN` or `TENANT_USER`.
    role: String,
    /// Custom role, if any.
    role_id: Option<Uuid>,
    /// Effective permissions inside the tenant.
    permissions: Vec<String>,
    /// Owning tenant.
    tenant_id: Uuid,
}

const BAD_LOGIN: &str = "invalid email or password";

/// Exchanges email and password for an access token and a refresh token. After
/// repeated failures from one address that address is locked out of the email for a
/// while (429); after failures from many addresses every attempt on the email waits a
/// growing delay (429 with the seconds to wait). Unknown emails are treated alike. When
/// too many passwords are being checked at once the sign-in is refused with 503.
#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenPair),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Wrong email or password", body = ErrorBody),
        (status = 429, description = "Too many failed sign-ins from this address, or the account is in backoff", body = ErrorBody),
        (status = 503, description = "Too many sign-ins at once; retry", body = ErrorBody),
    ),
    security(())
)]
pub(crate) async fn login(
    State(state): State<AppState>,
    from: ClientAddr,
    Json(req): Json<LoginRequest>,
) -> ApiResult<axum::Json<TokenPair>> {
    let email = normalize_email(&req.email);
    check_lock(&state, &email, from).await?;
    if req.password.len() > crate::auth::MAX_PASSWORD_LEN {
        return Err(ApiError::unauthenticated(BAD_LOGIN));
    }
    let permit = state.auth.hash_permit()?;
    let user = state.metadata.get_user_by_email(&email).await?;
    // Unknown users cost one hash verification too, and get the same answer.
    let ok = verify_password(req.password, user.as_ref().map(|u| u.password_hash.clone())).await?;
    drop(permit);
    let user = match user {
        Some(u) if ok => u,
        _ => {
            record_failure(&state, &email, from).await?;
            return Err(ApiError::unauthenticated(BAD_LOGIN));
        }
    };
    clear_failures(&state, &email, from).await?;
    Ok(axum::Json(start_session(&state, &user).await?))
}

/// Exchanges a refresh token for a new pair; the presented refresh token stops working.
#[utoipa::path(
    post,
    path = "/auth/refresh",
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair", body = TokenPair),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Unknown, used, revoked or expired refresh token", body = ErrorBody),
    ),
    security(())
)]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<axum::Json<TokenPair>> {
    Ok(axum::Json(
        refresh_session(&state, req.refresh_token.trim()).await?,
    ))
}

/// Signs out: revokes this access token (on every node) and its refresh token.
#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "auth",
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "API keys have no session", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn logout(caller: Caller, State(state): State<AppState>) -> ApiResult<StatusCode> {
    let (_, session) = caller.require_user()?;
    end_session(&state, session).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Changes the caller's password, revokes every other session of the user and
/// returns a new pair for this one. Wrong current passwords count towards the lockout.
#[utoipa::path(
    put,
    path = "/auth/password",
    tag = "auth",
    request_body = PasswordRequest,
    responses(
        (status = 200, description = "Changed; the new pair replaces the caller's tokens", body = TokenPair),
        (status = 400, description = "New password too short or too long", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Wrong current password, or an API key", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "Too many passwords checked at once; retry", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn change_password(
    caller: Caller,
    State(state): State<AppState>,
    from: ClientAddr,
    Json(req): Json<PasswordRequest>,
) -> ApiResult<axum::Json<TokenPair>> {
    let (user_id, _) = caller.require_user()?;
    validate_password("new_password", &req.new_password)?;
    let mut user = state
        .metadata
        .get_user(user_id)
        .await?
        .ok_or_else(|| ApiError::unauthenticated("the token's user no longer exists"))?;
    check_lock(&state, &user.email, from).await?;
    let permit = state.auth.hash_permit()?;
    if req.current_password.len() > crate::auth::MAX_PASSWORD_LEN
        || !verify_password(req.current_password, Some(user.password_hash.clone())).await?
    {
        drop(permit);
        record_failure(&state, &user.email, from).await?;
        return Err(ApiError::forbidden("the current password is wrong"));
    }
    user.password_hash = hash_password(req.new_password).await?;
    drop(permit);
    state.metadata.update_user(&user).await?;
    revoke_user_sessions(&state, user.id).await?;
    audit(
        &state,
        &caller,
        user.tenant_id,
        "user.password_change",
        "user",
        user.id,
        serde_json::json!({}),
    )
    .await;
    Ok(axum::Json(start_session(&state, &user).await?))
}

/// The signed-in user and its effective permissions.
#[utoipa::path(
    get,
    path = "/auth/me",
    tag = "auth",
    responses(
        (status = 200, description = "The caller", body = MeResponse),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "API keys have no user", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub(crate) async fn me(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<MeResponse>> {
    let (user_id, _) = caller.require_user()?;
    let user = state
        .metadata
        .get_user(user_id)
        .await?
        .filter(|u| u.tenant_id == caller.tenant_id)
        .ok_or_else(|| ApiError::unauthenticated("the token's user no longer exists"))?;
    debug_assert!(matches!(caller.principal, Principal::User { .. }));
    Ok(axum::Json(MeResponse {
        id: user.id.0,
        email: user.email,
        name: user.name,
        role: user.role.as_str().to_owned(),
        role_id: caller.role_id.map(|r| r.0),
        permissions: caller.permissions.names(),
        tenant_id: user.tenant_id.0,
    }))
}
