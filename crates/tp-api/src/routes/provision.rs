//! `POST /api/v1/device/provision`: device self-registration with a profile secret
//! (ThingsPanel's one-type-one-secret). Unauthenticated: the profile secret is the
//! credential.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::{Device, hash_secret, validate_device_number};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::Json;
use super::support::valid_name;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// A device registering itself.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProvisionRequest {
    /// The provisioning secret of a profile that allows self-registration.
    profile_secret: String,
    /// The device's number (one MQTT topic level), unique installation-wide.
    device_number: String,
    /// Display name; the device number when absent.
    #[serde(default)]
    name: Option<String>,
}

/// MQTT credentials of a provisioned device; the password is shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProvisionedCredentials {
    /// MQTT username.
    username: String,
    /// MQTT password.
    password: String,
}

/// A provisioned device.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProvisionResponse {
    /// Device id.
    id: Uuid,
    /// Its device number.
    device_number: String,
    /// Its MQTT login.
    credentials: ProvisionedCredentials,
}

fn refused() -> ApiError {
    ApiError::http(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid provisioning secret",
    )
}

/// Registers a device in the tenant and profile the secret belongs to.
#[utoipa::path(
    post,
    path = "/device/provision",
    tag = "devices",
    request_body = ProvisionRequest,
    responses(
        (status = 201, description = "Registered; the password is shown only here", body = ProvisionResponse),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Unknown secret or a profile without self-registration", body = ErrorBody),
        (status = 409, description = "Device number taken", body = ErrorBody),
    ),
    security(())
)]
pub(crate) async fn provision(
    State(state): State<AppState>,
    Json(req): Json<ProvisionRequest>,
) -> ApiResult<(StatusCode, axum::Json<ProvisionResponse>)> {
    if req.profile_secret.is_empty() {
        return Err(refused());
    }
    let Some(profile) = state
        .access
        .get_profile_by_provision_secret(&hash_secret(&req.profile_secret))
        .await?
    else {
        return Err(refused());
    };
    if !profile.auto_register {
        return Err(refused());
    }
    validate_device_number(&req.device_number)?;
    let name = valid_name("name", req.name.as_deref().unwrap_or(&req.device_number))?;
    let (mut device, password) =
        Device::new(profile.tenant_id, name, Some(req.device_number.clone()));
    device.profile_id = Some(profile.id);
    state.metadata.create_device(&device).await?;
    tracing::info!(device_id = %device.id, profile_id = %profile.id, tenant_id = %profile.tenant_id,
        device_number = %device.device_number, "device provisioned itself");
    Ok((
        StatusCode::CREATED,
        axum::Json(ProvisionResponse {
            id: device.id.0,
            device_number: device.device_number,
            credentials: ProvisionedCredentials {
                username: device.credentials.username,
                password,
            },
        }),
    ))
}
