//! `POST /api/v1/device/provision`: device self-registration with a profile secret
//! (ThingsPanel's one-type-one-secret). Unauthenticated: the profile secret is the
//! credential.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::provision::{Registration, register_device};
use utoipa::ToSchema;
use uuid::Uuid;

use super::devices::NewCredentials;
use super::extract::Json;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// A device registering itself.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProvisionRequest {
    /// The provisioning secret of a profile that allows self-registration.
    profile_secret: String,
    /// The device's number (one MQTT topic level: 1 to 100 characters, none of `/`,
    /// `+`, `#`, `$`, blanks or control characters), unique installation-wide.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^/+#$\s\x00-\x1f\x7f-\x9f]+$"
    )]
    device_number: String,
    /// Display name; the device number when absent.
    #[serde(default)]
    name: Option<String>,
}

/// A provisioned device.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProvisionResponse {
    /// Device id.
    id: Uuid,
    /// Its device number.
    device_number: String,
    /// Its login (the profile's voucher type), shown only here.
    credentials: NewCredentials,
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
    let registration = Registration {
        profile_secret: req.profile_secret,
        device_number: req.device_number,
        name: req.name,
        ..Registration::default()
    };
    let (device, issued) =
        match register_device(state.metadata.as_ref(), state.access.as_ref(), registration).await {
            Ok(done) => done,
            Err(tp_core::Error::Unauthenticated(_)) => return Err(refused()),
            Err(e) => return Err(e.into()),
        };
    tracing::info!(device_id = %device.id, profile_id = ?device.profile_id, tenant_id = %device.tenant_id,
        device_number = %device.device_number, "device provisioned itself");
    Ok((
        StatusCode::CREATED,
        axum::Json(ProvisionResponse {
            id: device.id.0,
            device_number: device.device_number,
            credentials: NewCredentials::from(issued),
        }),
    ))
}
