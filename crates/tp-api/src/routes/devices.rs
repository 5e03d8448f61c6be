//! `/api/v1/devices`: device CRUD and credential rotation.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{DeviceIdPath, Json, Query};
use super::support::audit;
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::{AppState, device_cred_cache_key};
use tp_core::protocol::MAX_GATEWAY_DEPTH;
use tp_core::{Device, DeviceCredentials, DeviceFilter, Page, now_ms, validate_device_number};

/// Largest `page_size` of the device list.
pub(crate) const MAX_PAGE_SIZE: u64 = 1000;

/// A device as the API shows it (never the credential hash).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeviceResponse {
    /// Device id.
    id: Uuid,
    /// Display name.
    name: String,
    /// Public identity, used in downlink topics.
    device_number: String,
    /// Free-form label.
    label: Option<String>,
    /// Gateway this sub-device sits behind.
    parent_id: Option<Uuid>,
    /// Address of this sub-device under its gateway.
    sub_device_addr: Option<String>,
    /// Disabled devices cannot connect.
    enabled: bool,
    /// Last known connection state.
    online: bool,
    /// Time of the last message or state change (ms).
    last_seen: Option<i64>,
    /// Creation time (ms).
    created_at: i64,
    /// Last change (ms).
    updated_at: i64,
    /// MQTT login (username only).
    credentials: CredentialsView,
}

/// The MQTT username of a device.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CredentialsView {
    /// MQTT username.
    username: String,
}

/// A device just created, with its MQTT password (shown only once).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedDeviceResponse {
    /// Device id.
    id: Uuid,
    /// Display name.
    name: String,
    /// Public identity, used in downlink topics.
    device_number: String,
    /// Free-form label.
    label: Option<String>,
    /// Gateway this sub-device sits behind.
    parent_id: Option<Uuid>,
    /// Address of this sub-device under its gateway.
    sub_device_addr: Option<String>,
    /// Disabled devices cannot connect.
    enabled: bool,
    /// Last known connection state.
    online: bool,
    /// Time of the last message or state change (ms).
    last_seen: Option<i64>,
    /// Creation time (ms).
    created_at: i64,
    /// Last change (ms).
    updated_at: i64,
    /// MQTT login with the plaintext password.
    credentials: NewCredentials,
}

/// MQTT credentials with the plaintext password; it is not stored and cannot be shown again.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NewCredentials {
    /// MQTT username.
    username: String,
    /// MQTT password.
    password: String,
}

impl DeviceResponse {
    pub(crate) fn from_device(d: Device) -> Self {
        Self {
            id: d.id.0,
            name: d.name,
            device_number: d.device_number,
            label: d.label,
            parent_id: d.parent_id.map(|p| p.0),
            sub_device_addr: d.sub_device_addr,
            enabled: d.enabled,
            online: d.online,
            last_seen: d.last_seen,
            created_at: d.created_at,
            updated_at: d.updated_at,
            credentials: CredentialsView {
                username: d.credentials.username,
            },
        }
    }
}

/// A page of devices.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeviceList {
    /// The page.
    pub(crate) items: Vec<DeviceResponse>,
    /// Devices matching the filter.
    pub(crate) total: u64,
}

/// New device.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDeviceRequest {
    /// Display name, 1 to 255 characters.
    name: String,
    /// Public identity (one MQTT topic level); generated when absent.
    #[serde(default)]
    device_number: Option<String>,
    /// Free-form label.
    #[serde(default)]
    label: Option<String>,
    /// Gateway (a device of the same tenant) this sub-device sits behind.
    #[serde(default)]
    parent_id: Option<Uuid>,
    /// Address under the gateway; required with `parent_id`, unique per gateway.
    #[serde(default)]
    sub_device_addr: Option<String>,
}

/// Changes to a device; absent fields stay as they are, `"label": null` clears the label.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateDeviceRequest {
    /// Display name, 1 to 255 characters.
    #[serde(default)]
    name: Option<String>,
    /// Free-form label; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable)]
    label: Option<Option<String>>,
    /// Disabled devices cannot connect.
    #[serde(default)]
    enabled: Option<bool>,
    /// Gateway this sub-device sits behind; `null` makes it a direct device.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>, nullable)]
    parent_id: Option<Option<Uuid>>,
    /// Address under the gateway; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable)]
    sub_device_addr: Option<Option<String>>,
}

fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Device list paging and filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Page number, from 1 (default 1).
    page: Option<u64>,
    /// Devices per page, 1 to 1000 (default 20).
    page_size: Option<u64>,
    /// Case-insensitive substring of name or device number.
    search: Option<String>,
    /// Only online (`true`) or offline (`false`) devices; `total` then counts them.
    online: Option<bool>,
}

fn validate_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    let len = name.chars().count();
    if len == 0 || len > 255 {
        return Err(ApiError::invalid("name", "must be 1 to 255 characters"));
    }
    Ok(name.to_owned())
}

fn validate_label(label: Option<String>) -> ApiResult<Option<String>> {
    match label {
        Some(l) if l.chars().count() > 255 => {
            Err(ApiError::invalid("label", "must be at most 255 characters"))
        }
        other => Ok(other),
    }
}

/// Checks a device's gateway placement: the parent is another device of the same
/// tenant, not below the device itself, at most [`MAX_GATEWAY_DEPTH`] levels deep; a
/// sub-device has an address (1 to 255 characters, one per gateway); a direct device
/// has none.
async fn validate_placement(state: &AppState, device: &Device) -> ApiResult<()> {
    let Some(parent_id) = device.parent_id else {
        if device.sub_device_addr.is_some() {
            return Err(ApiError::invalid(
                "sub_device_addr",
                "only a device with a parent_id has a sub-device address",
            ));
        }
        return Ok(());
    };
    let addr = match device.sub_device_addr.as_deref() {
        Some(a) if !a.is_empty() && a.chars().count() <= 255 => a,
        _ => {
            return Err(ApiError::invalid(
                "sub_device_addr",
                "a sub-device needs an address of 1 to 255 characters",
            ));
        }
    };
    let mut cursor = Some(parent_id);
    let mut depth = 0;
    while let Some(id) = cursor {
        if id == device.id {
            return Err(ApiError::invalid(
                "parent_id",
                "a device cannot sit behind itself",
            ));
        }
        depth += 1;
        if depth > MAX_GATEWAY_DEPTH {
            return Err(ApiError::invalid(
                "parent_id",
                format!("gateways nest at most {MAX_GATEWAY_DEPTH} levels"),
            ));
        }
        let Some(parent) = state.metadata.get_device(device.tenant_id, id).await? else {
            return Err(ApiError::invalid(
                "parent_id",
                "no such device in the tenant",
            ));
        };
        cursor = parent.parent_id;
    }
    if let Some(other) = state.metadata.get_sub_device(parent_id, addr).await?
        && other.id != device.id
    {
        return Err(tp_core::Error::AlreadyExists {
            entity: "sub_device_addr",
            id: addr.to_owned(),
        }
        .into());
    }
    Ok(())
}

/// Loads a device of the caller's tenant or fails with 404.
pub(crate) async fn load_device(
    state: &AppState,
    caller: &Caller,
    id: tp_core::DeviceId,
) -> ApiResult<Device> {
    state
        .metadata
        .get_device(caller.tenant_id, id)
        .await?
        .ok_or_else(|| tp_core::Error::not_found("device", id).into())
}

/// Forgets what the broker cached for a username.
async fn invalidate_credentials(state: &AppState, username: &str) -> ApiResult<()> {
    state.cache.delete(&device_cred_cache_key(username)).await?;
    Ok(())
}

/// Closes the device's live connections (on every node): its credentials no longer
/// admit it, and a connection authenticated earlier must not outlive that.
async fn disconnect_device(state: &AppState, device: tp_core::DeviceId) {
    if let Some(transport) = state.transport() {
        transport.disconnect(device).await;
    }
}

/// Creates a device with fresh MQTT credentials.
#[utoipa::path(
    post,
    path = "/devices",
    tag = "devices",
    request_body = CreateDeviceRequest,
    responses(
        (status = 201, description = "Created; the password is shown only here", body = CreatedDeviceResponse),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:write", body = ErrorBody),
        (status = 409, description = "Device number taken", body = ErrorBody),
    ),
    security(("bearer" = ["device:write"]), ("api_key" = ["device:write"]))
)]
pub(crate) async fn create_device(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<CreateDeviceRequest>,
) -> ApiResult<(StatusCode, axum::Json<CreatedDeviceResponse>)> {
    caller.require(Permission::DeviceWrite)?;
    let name = validate_name(&req.name)?;
    if let Some(n) = &req.device_number {
        validate_device_number(n)?;
    }
    let label = validate_label(req.label)?;
    let (mut device, password) = Device::new(caller.tenant_id, name, req.device_number);
    device.label = label;
    device.parent_id = req.parent_id.map(tp_core::DeviceId);
    device.sub_device_addr = req.sub_device_addr;
    validate_placement(&state, &device).await?;
    state.metadata.create_device(&device).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "device.create",
        "device",
        device.id,
        serde_json::json!({"name": device.name, "device_number": device.device_number}),
    )
    .await;
    let d = DeviceResponse::from_device(device);
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedDeviceResponse {
            id: d.id,
            name: d.name,
            device_number: d.device_number,
            label: d.label,
            parent_id: d.parent_id,
            sub_device_addr: d.sub_device_addr,
            enabled: d.enabled,
            online: d.online,
            last_seen: d.last_seen,
            created_at: d.created_at,
            updated_at: d.updated_at,
            credentials: NewCredentials {
                username: d.credentials.username,
                password,
            },
        }),
    ))
}

/// Lists the tenant's devices, oldest first.
#[utoipa::path(
    get,
    path = "/devices",
    tag = "devices",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of devices", body = DeviceList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn list_devices(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<DeviceList>> {
    caller.require(Permission::DeviceRead)?;
    let page = q.page.unwrap_or(1);
    if page == 0 {
        return Err(ApiError::invalid("page", "must be at least 1"));
    }
    let page_size = q.page_size.unwrap_or(20);
    if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(ApiError::invalid(
            "page_size",
            format!("must be 1 to {MAX_PAGE_SIZE}"),
        ));
    }
    let offset = (page - 1)
        .checked_mul(page_size)
        .filter(|o| *o <= i64::MAX as u64)
        .ok_or_else(|| ApiError::invalid("page", "too large"))?;
    let search = q
        .search
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if search.as_ref().is_some_and(|s| s.chars().count() > 255) {
        return Err(ApiError::invalid(
            "search",
            "must be at most 255 characters",
        ));
    }
    let filter = DeviceFilter {
        search,
        online: q.online,
        page: Page {
            offset,
            limit: page_size,
        },
    };
    let paged = state
        .metadata
        .list_devices(caller.tenant_id, &filter)
        .await?;
    Ok(axum::Json(DeviceList {
        items: paged
            .items
            .into_iter()
            .map(DeviceResponse::from_device)
            .collect(),
        total: paged.total,
    }))
}

/// One device.
#[utoipa::path(
    get,
    path = "/devices/{id}",
    tag = "devices",
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device", body = DeviceResponse),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn get_device(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
) -> ApiResult<axum::Json<DeviceResponse>> {
    caller.require(Permission::DeviceRead)?;
    let device = load_device(&state, &caller, id).await?;
    Ok(axum::Json(DeviceResponse::from_device(device)))
}

/// Changes name, label or enabled flag.
#[utoipa::path(
    patch,
    path = "/devices/{id}",
    tag = "devices",
    params(("id" = Uuid, Path, description = "Device id")),
    request_body = UpdateDeviceRequest,
    responses(
        (status = 200, description = "The updated device", body = DeviceResponse),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:write", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:write"]), ("api_key" = ["device:write"]))
)]
pub(crate) async fn update_device(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Json(req): Json<UpdateDeviceRequest>,
) -> ApiResult<axum::Json<DeviceResponse>> {
    caller.require(Permission::DeviceWrite)?;
    let name = req.name.as_deref().map(validate_name).transpose()?;
    let label = req.label.map(validate_label).transpose()?;
    let mut device = load_device(&state, &caller, id).await?;
    if let Some(name) = name {
        device.name = name;
    }
    if let Some(label) = label {
        device.label = label;
    }
    if let Some(enabled) = req.enabled {
        device.enabled = enabled;
    }
    if let Some(parent) = req.parent_id {
        device.parent_id = parent.map(tp_core::DeviceId);
    }
    if let Some(addr) = req.sub_device_addr {
        device.sub_device_addr = addr;
    }
    validate_placement(&state, &device).await?;
    device.updated_at = now_ms();
    state.metadata.update_device(&device).await?;
    // The broker must not keep using a cached copy (e.g. of a now disabled device).
    invalidate_credentials(&state, &device.credentials.username).await?;
    if !device.enabled {
        disconnect_device(&state, device.id).await;
    }
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "device.update",
        "device",
        device.id,
        serde_json::json!({"name": device.name, "label": device.label, "enabled": device.enabled}),
    )
    .await;
    Ok(axum::Json(DeviceResponse::from_device(device)))
}

/// Deletes a device with its attributes and downlink log.
#[utoipa::path(
    delete,
    path = "/devices/{id}",
    tag = "devices",
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:write", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:write"]), ("api_key" = ["device:write"]))
)]
pub(crate) async fn delete_device(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::DeviceWrite)?;
    let device = load_device(&state, &caller, id).await?;
    state.metadata.delete_device(caller.tenant_id, id).await?;
    invalidate_credentials(&state, &device.credentials.username).await?;
    disconnect_device(&state, id).await;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "device.delete",
        "device",
        id,
        serde_json::json!({"device_number": device.device_number}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the device's MQTT credentials; the old ones stop working.
#[utoipa::path(
    post,
    path = "/devices/{id}/credentials",
    tag = "devices",
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 200, description = "The new credentials; the password is shown only here", body = NewCredentials),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:write", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:write"]), ("api_key" = ["device:write"]))
)]
pub(crate) async fn rotate_credentials(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
) -> ApiResult<axum::Json<NewCredentials>> {
    caller.require(Permission::DeviceWrite)?;
    let mut device = load_device(&state, &caller, id).await?;
    let (credentials, password) = DeviceCredentials::generate();
    let old = std::mem::replace(&mut device.credentials, credentials);
    device.updated_at = now_ms();
    state.metadata.update_device(&device).await?;
    invalidate_credentials(&state, &old.username).await?;
    disconnect_device(&state, device.id).await;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "device.rotate_credentials",
        "device",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(axum::Json(NewCredentials {
        username: device.credentials.username,
        password,
    }))
}

/// Status history paging and time range.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StatusHistoryParams {
    /// Inclusive start (ms since the epoch).
    start: Option<i64>,
    /// Exclusive end (ms since the epoch).
    end: Option<i64>,
    /// Page number, from 1 (default 1).
    page: Option<u64>,
    /// Events per page, 1 to 1000 (default 20).
    page_size: Option<u64>,
}

/// One online/offline transition.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatusEventResponse {
    /// The state the device went to.
    online: bool,
    /// Why: `connect`, `disconnect`, `connection_lost`, `activity`,
    /// `heartbeat_timeout`, `online_timeout` or `inactivity_timeout`.
    reason: String,
    /// When (ms).
    at: i64,
}

/// A page of status history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatusHistoryList {
    /// The page.
    items: Vec<StatusEventResponse>,
    /// Events in the range.
    total: u64,
}

/// A device's online/offline transitions, newest first, with the reason of each
/// (ThingsPanel's `device/status/history`).
#[utoipa::path(
    get,
    path = "/devices/{id}/status-history",
    tag = "devices",
    params(("id" = Uuid, Path, description = "Device id"), StatusHistoryParams),
    responses(
        (status = 200, description = "A page of transitions", body = StatusHistoryList),
        (status = 400, description = "Malformed id, paging or range", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn status_history(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Query(q): Query<StatusHistoryParams>,
) -> ApiResult<axum::Json<StatusHistoryList>> {
    caller.require(Permission::DeviceRead)?;
    let page = q.page.unwrap_or(1);
    if page == 0 {
        return Err(ApiError::invalid("page", "must be at least 1"));
    }
    let page_size = q.page_size.unwrap_or(20);
    if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(ApiError::invalid(
            "page_size",
            format!("must be 1 to {MAX_PAGE_SIZE}"),
        ));
    }
    let offset = (page - 1)
        .checked_mul(page_size)
        .filter(|o| *o <= i64::MAX as u64)
        .ok_or_else(|| ApiError::invalid("page", "too large"))?;
    if let (Some(start), Some(end)) = (q.start, q.end)
        && start > end
    {
        return Err(ApiError::invalid("end", "must not be before start"));
    }
    // 404 for another tenant's device, not an empty page.
    let device = load_device(&state, &caller, id).await?;
    let query = tp_core::StatusHistoryQuery {
        start: q.start,
        end: q.end,
        page: Page {
            offset,
            limit: page_size,
        },
    };
    let paged = state
        .metadata
        .list_status_history(caller.tenant_id, device.id, &query)
        .await?;
    Ok(axum::Json(StatusHistoryList {
        items: paged
            .items
            .into_iter()
            .map(|e| StatusEventResponse {
                online: e.online,
                reason: e.reason.as_str().to_owned(),
                at: e.at,
            })
            .collect(),
        total: paged.total,
    }))
}
