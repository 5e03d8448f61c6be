//! `/api/v1/devices/{id}/{commands,attributes,attributes/get,telemetry/control}`:
//! downlink to a device and its log.
//!
//! Every downlink is logged first as `pending` with a fresh 8-hex-character
//! `message_id`. If the device is connected and subscribed to the topic, the row is
//! marked `sent` and published on ThingsPanel's topic; otherwise it stays `pending`
//! and the broker delivers it when the device subscribes, unless it expires first
//! (see `tp_broker::downlink`). The device's answer on
//! `devices/command/response/{message_id}` or `devices/attributes/set/response/{message_id}`
//! moves it to `replied` or `failed`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::downlink::{DEFAULT_EXPIRY_SECS, expire_if_stale, issue_downlink};
use tp_core::protocol::MAX_KEY_LEN;
use tp_core::{CommandKind, CommandLog, Device, now_ms};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::devices::load_device;
use super::extract::{DeviceIdPath, Json, Query};
use super::support::{audit, page_of};
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// Longest accepted `expires_in_secs`: 30 days.
pub(crate) const MAX_EXPIRY_SECS: u32 = 30 * 86_400;

/// One downlink and what became of it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CommandLogResponse {
    /// Log row id.
    id: Uuid,
    /// Correlates the device's response (8 lower-case hex characters).
    message_id: String,
    /// `command`, `attribute_set`, `attribute_get` or `telemetry_control`.
    #[schema(example = "command")]
    kind: String,
    /// The payload published to the device.
    payload: serde_json::Value,
    /// `pending`, `sent`, `replied`, `failed` or `expired`.
    #[schema(example = "sent")]
    status: String,
    /// The device's response object, once it answered.
    response: Option<serde_json::Value>,
    /// Creation time (ms).
    created_at: i64,
    /// Last status change (ms).
    updated_at: i64,
    /// Not delivered after this time (ms).
    expires_at: Option<i64>,
    /// The topic it was last published on (for a device behind gateways, its
    /// top-level gateway's `gateway/…` topic); absent until sent.
    published_topic: Option<String>,
    /// The payload as published: for a gateway or a device behind one, the gateway
    /// envelope naming every address it passes through.
    published_payload: Option<serde_json::Value>,
}

impl CommandLogResponse {
    fn from_row(r: CommandLog) -> Self {
        Self {
            id: r.id.0,
            message_id: r.message_id,
            kind: r.kind.as_str().to_owned(),
            payload: r.payload,
            status: r.status.as_str().to_owned(),
            response: r.response,
            created_at: r.created_at,
            updated_at: r.updated_at,
            expires_at: r.expires_at,
            published_topic: r.published.as_ref().map(|p| p.topic.clone()),
            published_payload: r.published.map(|p| p.payload),
        }
    }
}

/// A page of the downlink log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CommandLogList {
    /// The page.
    items: Vec<CommandLogResponse>,
    /// All log rows of the device.
    total: u64,
}

/// A command: published as `{"method","params"}` on `devices/command/{device_number}/{message_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandRequest {
    /// Command identifier, 1 to 255 characters.
    #[schema(example = "ReSet", min_length = 1, max_length = 255)]
    method: String,
    /// Parameters (a JSON object; `{}` when absent).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<serde_json::Value>,
    /// Seconds a queued command waits for an offline device (1 to 2592000, default 86400).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2592000)]
    #[serde(deserialize_with = "tp_core::serde_int::optional")]
    expires_in_secs: Option<u32>,
}

/// Attribute values to set: published on `devices/attributes/set/{device_number}/{message_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttributeSetRequest {
    /// Non-empty object of attribute values.
    #[schema(schema_with = tp_core::openapi::non_empty_values)]
    values: serde_json::Map<String, serde_json::Value>,
    /// Seconds a queued request waits for an offline device (1 to 2592000, default 86400).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2592000)]
    #[serde(deserialize_with = "tp_core::serde_int::optional")]
    expires_in_secs: Option<u32>,
}

/// Ask the device to report attributes: `{"keys":[..]}` on `devices/attributes/get/{device_number}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttributeGetRequest {
    /// Keys to report (each 1 to 255 characters); empty means all.
    #[schema(schema_with = tp_core::openapi::key_list)]
    keys: Vec<String>,
    /// Seconds a queued request waits for an offline device (1 to 2592000, default 86400).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2592000)]
    #[serde(deserialize_with = "tp_core::serde_int::optional")]
    expires_in_secs: Option<u32>,
}

/// Control values: published as the object itself on `devices/telemetry/control/{device_number}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TelemetryControlRequest {
    /// Non-empty object of values, e.g. `{"switch":true}`.
    #[schema(schema_with = tp_core::openapi::non_empty_values)]
    values: serde_json::Map<String, serde_json::Value>,
    /// Seconds a queued request waits for an offline device (1 to 2592000, default 86400).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2592000)]
    #[serde(deserialize_with = "tp_core::serde_int::optional")]
    expires_in_secs: Option<u32>,
}

/// Log paging.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogQuery {
    /// Page number, from 1 (default 1).
    #[param(minimum = 1, maximum = 1000000000)]
    page: Option<u64>,
    /// Rows per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    page_size: Option<u64>,
}

fn expiry(secs: Option<u32>) -> ApiResult<i64> {
    let secs = secs.unwrap_or(DEFAULT_EXPIRY_SECS);
    if !(1..=MAX_EXPIRY_SECS).contains(&secs) {
        return Err(ApiError::invalid(
            "expires_in_secs",
            format!("must be 1 to {MAX_EXPIRY_SECS}"),
        ));
    }
    Ok(i64::from(secs) * 1000)
}

fn check_values(
    values: serde_json::Map<String, serde_json::Value>,
) -> ApiResult<serde_json::Value> {
    if values.is_empty() {
        return Err(ApiError::invalid("values", "must be a non-empty object"));
    }
    if let Some(k) = values
        .keys()
        .find(|k| k.is_empty() || k.chars().count() > MAX_KEY_LEN)
    {
        return Err(ApiError::invalid(
            "values",
            format!("key {k:?} must be 1 to {MAX_KEY_LEN} characters"),
        ));
    }
    Ok(serde_json::Value::Object(values))
}

/// Logs a downlink as pending and publishes it if the device can receive it now.
async fn issue(
    state: &AppState,
    device: &Device,
    kind: CommandKind,
    payload: serde_json::Value,
    lifetime_ms: i64,
) -> ApiResult<CommandLog> {
    Ok(issue_downlink(
        &state.metadata,
        Some(&state.access),
        state.transport.as_ref(),
        device,
        kind,
        payload,
        lifetime_ms,
    )
    .await?)
}

/// Audits a logged downlink and answers 201 with it.
async fn created(
    state: &AppState,
    caller: &Caller,
    row: CommandLog,
) -> (StatusCode, axum::Json<CommandLogResponse>) {
    audit(
        state,
        caller,
        caller.tenant_id,
        &format!("downlink.{}", row.kind.as_str()),
        "device",
        row.device_id,
        serde_json::json!({"message_id": row.message_id, "status": row.status.as_str()}),
    )
    .await;
    (
        StatusCode::CREATED,
        axum::Json(CommandLogResponse::from_row(row)),
    )
}

/// Sends a command `{"method","params"}` to the device.
#[utoipa::path(
    post,
    path = "/devices/{id}/commands",
    tag = "downlink",
    params(("id" = Uuid, Path, description = "Device id")),
    request_body = CommandRequest,
    responses(
        (status = 201, description = "Logged; `sent` if the device was reachable, else `pending` until it subscribes", body = CommandLogResponse),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:command", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:command"]), ("api_key" = ["device:command"]))
)]
pub(crate) async fn send_command(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Json(req): Json<CommandRequest>,
) -> ApiResult<(StatusCode, axum::Json<CommandLogResponse>)> {
    caller.require(Permission::DeviceCommand)?;
    if req.method.is_empty() || req.method.chars().count() > MAX_KEY_LEN {
        return Err(ApiError::invalid(
            "method",
            format!("must be 1 to {MAX_KEY_LEN} characters"),
        ));
    }
    let params = match req.params {
        None => serde_json::Value::Object(Default::default()),
        Some(p @ serde_json::Value::Object(_)) => p,
        Some(_) => return Err(ApiError::invalid("params", "must be a JSON object")),
    };
    let lifetime = expiry(req.expires_in_secs)?;
    let device = load_device(&state, &caller, id).await?;
    if let Some(t) = super::templates::device_template(&state, &device).await? {
        t.check_command(&req.method, &params)
            .map_err(|v| super::templates::refused("params", v))?;
    }
    // Exactly ThingsPanel's command payload (tp_core::protocol::MethodCall).
    let payload = serde_json::json!({ "method": req.method, "params": params });
    let row = issue(&state, &device, CommandKind::Command, payload, lifetime).await?;
    Ok(created(&state, &caller, row).await)
}

/// Sets attributes on the device.
#[utoipa::path(
    put,
    path = "/devices/{id}/attributes",
    tag = "downlink",
    params(("id" = Uuid, Path, description = "Device id")),
    request_body = AttributeSetRequest,
    responses(
        (status = 201, description = "Logged; `sent` if the device was reachable, else `pending` until it subscribes", body = CommandLogResponse),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:command", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:command"]), ("api_key" = ["device:command"]))
)]
pub(crate) async fn set_attributes(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Json(req): Json<AttributeSetRequest>,
) -> ApiResult<(StatusCode, axum::Json<CommandLogResponse>)> {
    caller.require(Permission::DeviceCommand)?;
    let payload = check_values(req.values)?;
    let lifetime = expiry(req.expires_in_secs)?;
    let device = load_device(&state, &caller, id).await?;
    if let Some(t) = super::templates::device_template(&state, &device).await? {
        t.check_attribute_set(&payload)
            .map_err(|v| super::templates::refused("values", v))?;
    }
    let row = issue(
        &state,
        &device,
        CommandKind::AttributeSet,
        payload,
        lifetime,
    )
    .await?;
    Ok(created(&state, &caller, row).await)
}

/// Asks the device to report attributes (ThingsPanel's topic has no message id, so
/// the row goes only from `pending` to `sent`).
#[utoipa::path(
    post,
    path = "/devices/{id}/attributes/get",
    tag = "downlink",
    params(("id" = Uuid, Path, description = "Device id")),
    request_body = AttributeGetRequest,
    responses(
        (status = 201, description = "Logged; `sent` if the device was reachable, else `pending` until it subscribes", body = CommandLogResponse),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:command", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:command"]), ("api_key" = ["device:command"]))
)]
pub(crate) async fn get_attributes(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Json(req): Json<AttributeGetRequest>,
) -> ApiResult<(StatusCode, axum::Json<CommandLogResponse>)> {
    caller.require(Permission::DeviceCommand)?;
    if let Some(k) = req
        .keys
        .iter()
        .find(|k| k.is_empty() || k.chars().count() > MAX_KEY_LEN)
    {
        return Err(ApiError::invalid(
            "keys",
            format!("key {k:?} must be 1 to {MAX_KEY_LEN} characters"),
        ));
    }
    let lifetime = expiry(req.expires_in_secs)?;
    let device = load_device(&state, &caller, id).await?;
    let payload = serde_json::json!({ "keys": req.keys });
    let row = issue(
        &state,
        &device,
        CommandKind::AttributeGet,
        payload,
        lifetime,
    )
    .await?;
    Ok(created(&state, &caller, row).await)
}

/// Sends control values to the device (ThingsPanel's topic has no message id, so the
/// row goes only from `pending` to `sent`).
#[utoipa::path(
    post,
    path = "/devices/{id}/telemetry/control",
    tag = "downlink",
    params(("id" = Uuid, Path, description = "Device id")),
    request_body = TelemetryControlRequest,
    responses(
        (status = 201, description = "Logged; `sent` if the device was reachable, else `pending` until it subscribes", body = CommandLogResponse),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:command", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:command"]), ("api_key" = ["device:command"]))
)]
pub(crate) async fn telemetry_control(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Json(req): Json<TelemetryControlRequest>,
) -> ApiResult<(StatusCode, axum::Json<CommandLogResponse>)> {
    caller.require(Permission::DeviceCommand)?;
    let payload = check_values(req.values)?;
    let lifetime = expiry(req.expires_in_secs)?;
    let device = load_device(&state, &caller, id).await?;
    let row = issue(
        &state,
        &device,
        CommandKind::TelemetryControl,
        payload,
        lifetime,
    )
    .await?;
    Ok(created(&state, &caller, row).await)
}

/// The device's downlink log, newest first. Pending rows past their expiry are marked
/// `expired` as they are listed.
#[utoipa::path(
    get,
    path = "/devices/{id}/commands",
    tag = "downlink",
    params(("id" = Uuid, Path, description = "Device id"), LogQuery),
    responses(
        (status = 200, description = "A page of the log", body = CommandLogList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn list_commands(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    Query(q): Query<LogQuery>,
) -> ApiResult<axum::Json<CommandLogList>> {
    caller.require(Permission::DeviceRead)?;
    let page = page_of(q.page, q.page_size)?;
    let device = load_device(&state, &caller, id).await?;
    let mut paged = state
        .metadata
        .list_commands(caller.tenant_id, device.id, page)
        .await?;
    let now = now_ms();
    for row in &mut paged.items {
        expire_if_stale(state.metadata.as_ref(), row, now).await?;
    }
    Ok(axum::Json(CommandLogList {
        items: paged
            .items
            .into_iter()
            .map(CommandLogResponse::from_row)
            .collect(),
        total: paged.total,
    }))
}
