//! `/api/v1/devices`: device CRUD and credential rotation.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{DeviceIdPath, Json, OptionalJson, Query};
use super::profiles::parse_voucher_type;
use super::support::audit;
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::{AppState, device_cred_cache_key};
use tp_core::protocol::MAX_GATEWAY_DEPTH;
use tp_core::{
    Device, DeviceCredentials, DeviceFilter, DeviceProfile, IssuedCredentials, Page, ProfileId,
    TenantId, VoucherType, now_ms, validate_device_number,
};

/// A device as the API shows it (never the credential hash).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeviceResponse {
    /// Device id.
    id: Uuid,
    /// Display name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Public identity, used in downlink topics.
    device_number: String,
    /// Free-form label.
    label: Option<String>,
    /// Profile (heartbeat, device type, ...), if any.
    profile_id: Option<Uuid>,
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
    /// How the device logs in (never a secret).
    credentials: CredentialsView,
}

/// How a device logs in, without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CredentialsView {
    /// `BASIC` (username and password) or `ACCESSTOKEN` (a token as the username alone).
    #[schema(example = "BASIC")]
    voucher_type: String,
    /// The MQTT username of a `BASIC` device; `null` for an access token, which is
    /// a secret shown only when it is issued.
    username: Option<String>,
}

/// A device just created, with its MQTT password (shown only once).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedDeviceResponse {
    /// Device id.
    id: Uuid,
    /// Display name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Public identity, used in downlink topics.
    device_number: String,
    /// Free-form label.
    label: Option<String>,
    /// Profile, if any.
    profile_id: Option<Uuid>,
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
    /// The login with its secret.
    credentials: NewCredentials,
}

/// A device's login with its secret, shown only here: only digests are stored.
/// A `BASIC` device connects with `username` and `password`; an `ACCESSTOKEN`
/// device with `username` (the token) and an empty password.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NewCredentials {
    /// `BASIC` or `ACCESSTOKEN`.
    #[schema(example = "BASIC")]
    voucher_type: String,
    /// MQTT username; for `ACCESSTOKEN` the access token itself.
    username: String,
    /// MQTT password; `null` for `ACCESSTOKEN`.
    password: Option<String>,
}

impl From<IssuedCredentials> for NewCredentials {
    fn from(c: IssuedCredentials) -> Self {
        Self {
            voucher_type: c.voucher_type.as_str().to_owned(),
            username: c.username,
            password: c.password,
        }
    }
}

/// Credentials a user sets instead of generated ones (e.g. devices moved from
/// another platform): a `BASIC` `username` and `password`, or an `access_token`.
/// Without any of them, new ones of `voucher_type` are generated.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CredentialsRequest {
    /// `BASIC` or `ACCESSTOKEN`; when absent, what the other fields imply, else the
    /// profile's voucher type, else `BASIC`.
    #[serde(default)]
    #[schema(value_type = Option<super::names::VoucherTypeName>)]
    voucher_type: Option<String>,
    /// `BASIC` username: 1 to 255 characters, no `:` or control characters, unique.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^:\x00-\x1f\x7f-\x9f]+$"
    )]
    username: Option<String>,
    /// `BASIC` password: 6 to 255 characters, no control characters (stored as a
    /// SHA-256 digest; choose a random one).
    #[serde(default)]
    #[schema(
        min_length = 6,
        max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    password: Option<String>,
    /// `ACCESSTOKEN` token: 16 to 255 characters, no `:` or control characters,
    /// unique (stored as a SHA-256 digest).
    #[serde(default)]
    #[schema(
        min_length = 16,
        max_length = 255,
        pattern = r"^[^:\x00-\x1f\x7f-\x9f]+$"
    )]
    access_token: Option<String>,
}

/// The credentials a request asks for: chosen ones when given, else generated
/// ones of the requested voucher type, else of `profile`'s.
fn credentials_for(
    req: &CredentialsRequest,
    profile: Option<&DeviceProfile>,
) -> ApiResult<(DeviceCredentials, IssuedCredentials)> {
    let asked = req
        .voucher_type
        .as_deref()
        .map(parse_voucher_type)
        .transpose()?;
    let chosen_basic = req.username.is_some() || req.password.is_some();
    if chosen_basic && req.access_token.is_some() {
        return Err(ApiError::unprocessable(
            "access_token",
            "give either username and password (BASIC) or access_token (ACCESSTOKEN)",
        ));
    }
    if let Some(token) = &req.access_token {
        if asked == Some(VoucherType::Basic) {
            return Err(ApiError::unprocessable(
                "voucher_type",
                "an access_token is an ACCESSTOKEN voucher",
            ));
        }
        return Ok(DeviceCredentials::chosen(
            VoucherType::AccessToken,
            token,
            None,
        )?);
    }
    if chosen_basic {
        if asked == Some(VoucherType::AccessToken) {
            return Err(ApiError::unprocessable(
                "voucher_type",
                "an ACCESSTOKEN voucher has an access_token, not a username and password",
            ));
        }
        let Some(username) = &req.username else {
            return Err(ApiError::unprocessable(
                "username",
                "a BASIC voucher needs a username",
            ));
        };
        let Some(password) = &req.password else {
            return Err(ApiError::unprocessable(
                "password",
                "a BASIC voucher needs a password",
            ));
        };
        return Ok(DeviceCredentials::chosen(
            VoucherType::Basic,
            username,
            Some(password),
        )?);
    }
    let voucher_type = asked
        .or(profile.map(|p| p.voucher_type))
        .unwrap_or_default();
    Ok(DeviceCredentials::generate_for(voucher_type))
}

/// The tenant's profile `id`, or a 422 naming `profile_id`.
async fn tenant_profile(state: &AppState, tenant: TenantId, id: Uuid) -> ApiResult<DeviceProfile> {
    state
        .access
        .get_profile(tenant, ProfileId(id))
        .await?
        .ok_or_else(|| ApiError::unprocessable("profile_id", "no such profile in the tenant"))
}

impl DeviceResponse {
    pub(crate) fn from_device(d: Device) -> Self {
        Self {
            id: d.id.0,
            name: d.name,
            device_number: d.device_number,
            label: d.label,
            profile_id: d.profile_id.map(|p| p.0),
            parent_id: d.parent_id.map(|p| p.0),
            sub_device_addr: d.sub_device_addr,
            enabled: d.enabled,
            online: d.online,
            last_seen: d.last_seen,
            created_at: d.created_at,
            updated_at: d.updated_at,
            credentials: CredentialsView {
                voucher_type: d.credentials.voucher_type.as_str().to_owned(),
                username: d.credentials.visible_username().map(str::to_owned),
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
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Public identity (one MQTT topic level: 1 to 100 characters, none of `/`, `+`,
    /// `#`, `$`, blanks or control characters); generated when absent.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^/+#$\s\x00-\x1f\x7f-\x9f]+$"
    )]
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
    /// Profile of the tenant (heartbeat, device type, default voucher type).
    #[serde(default)]
    profile_id: Option<Uuid>,
    /// `BASIC` or `ACCESSTOKEN` for generated credentials; default: the profile's,
    /// else `BASIC`.
    #[serde(default)]
    #[schema(value_type = Option<super::names::VoucherTypeName>)]
    voucher_type: Option<String>,
    /// Credentials to use instead of generated ones.
    #[serde(default)]
    credentials: Option<CredentialsRequest>,
}

/// Changes to a device; absent fields stay as they are, `"label": null` clears the label.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateDeviceRequest {
    /// Display name, 1 to 255 characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
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
    /// Profile of the tenant; `null` removes the device from its profile. Downlink
    /// routing (device type) follows at once, heartbeat and online-timeout windows
    /// within five minutes, without the device reconnecting.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>, nullable)]
    profile_id: Option<Option<Uuid>>,
}

pub(crate) fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Device list paging and filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Page number, from 1 (default 1).
    #[param(minimum = 1, maximum = 1000000000)]
    page: Option<u64>,
    /// Devices per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    page_size: Option<u64>,
    /// Case-insensitive substring of name or device number.
    search: Option<String>,
    /// Only online (`true`) or offline (`false`) devices; `total` then counts them.
    online: Option<bool>,
}

fn validate_name(name: &str) -> ApiResult<String> {
    super::support::valid_name("name", name)
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
            return Err(ApiError::unprocessable(
                "sub_device_addr",
                "only a device with a parent_id has a sub-device address",
            ));
        }
        return Ok(());
    };
    let addr = match device.sub_device_addr.as_deref() {
        Some(a) if !a.is_empty() && a.chars().count() <= 255 => a,
        _ => {
            return Err(ApiError::unprocessable(
                "sub_device_addr",
                "a sub-device needs an address of 1 to 255 characters",
            ));
        }
    };
    let mut cursor = Some(parent_id);
    let mut depth = 0;
    while let Some(id) = cursor {
        if id == device.id {
            return Err(ApiError::unprocessable(
                "parent_id",
                "a device cannot sit behind itself",
            ));
        }
        depth += 1;
        if depth > MAX_GATEWAY_DEPTH {
            return Err(ApiError::unprocessable(
                "parent_id",
                format!("gateways nest at most {MAX_GATEWAY_DEPTH} levels"),
            ));
        }
        let Some(parent) = state.metadata.get_device(device.tenant_id, id).await? else {
            return Err(ApiError::unprocessable(
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
    let (device, issued) = create_one(&state, &caller, req).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedDeviceResponse::new(device, issued)),
    ))
}

/// Checks, stores and audits one new device.
async fn create_one(
    state: &AppState,
    caller: &Caller,
    req: CreateDeviceRequest,
) -> ApiResult<(Device, IssuedCredentials)> {
    let devices = state
        .metadata
        .list_devices(
            caller.tenant_id,
            &tp_core::DeviceFilter {
                search: None,
                online: None,
                page: tp_core::Page {
                    limit: 1,
                    offset: 0,
                },
            },
        )
        .await?
        .total;
    crate::quota::check("devices", "max_devices", devices, state.limits.max_devices)?;
    let name = validate_name(&req.name)?;
    if let Some(n) = &req.device_number {
        validate_device_number(n)?;
    }
    let label = validate_label(req.label)?;
    let profile = match req.profile_id {
        Some(id) => Some(tenant_profile(state, caller.tenant_id, id).await?),
        None => None,
    };
    let mut credentials = req.credentials.unwrap_or_default();
    match (&req.voucher_type, &credentials.voucher_type) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::unprocessable(
                "voucher_type",
                "differs from credentials.voucher_type",
            ));
        }
        (Some(a), None) => credentials.voucher_type = Some(a.clone()),
        _ => {}
    }
    let (creds, issued) = credentials_for(&credentials, profile.as_ref())?;
    let (mut device, _) = Device::new(caller.tenant_id, name, req.device_number);
    device.credentials = creds;
    device.profile_id = profile.map(|p| p.id);
    device.label = label;
    device.parent_id = req.parent_id.map(tp_core::DeviceId);
    device.sub_device_addr = req.sub_device_addr;
    validate_placement(state, &device).await?;
    state.metadata.create_device(&device).await?;
    audit(
        state,
        caller,
        caller.tenant_id,
        "device.create",
        "device",
        device.id,
        serde_json::json!({
            "name": device.name,
            "device_number": device.device_number,
            "profile_id": device.profile_id,
            "voucher_type": device.credentials.voucher_type.as_str(),
        }),
    )
    .await;
    Ok((device, issued))
}

/// Most devices one import request may hold.
pub(crate) const MAX_IMPORT_ROWS: usize = 1000;

/// One device of an import: the fields of a device create, flat (CSV columns of
/// the same names).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportRow {
    /// Display name, 1 to 255 characters.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Public identity; generated when absent.
    #[serde(default, deserialize_with = "empty_is_none")]
    device_number: Option<String>,
    /// Free-form label.
    #[serde(default, deserialize_with = "empty_is_none")]
    label: Option<String>,
    /// Profile of the tenant.
    #[serde(default, deserialize_with = "empty_is_none")]
    profile_id: Option<Uuid>,
    /// Gateway this sub-device sits behind (created earlier, or in an earlier row).
    #[serde(default, deserialize_with = "empty_is_none")]
    parent_id: Option<Uuid>,
    /// Address under the gateway.
    #[serde(default, deserialize_with = "empty_is_none")]
    sub_device_addr: Option<String>,
    /// `BASIC` or `ACCESSTOKEN`.
    #[serde(default, deserialize_with = "empty_is_none")]
    voucher_type: Option<String>,
    /// `BASIC` username to keep (e.g. from ThingsPanel's voucher).
    #[serde(default, deserialize_with = "empty_is_none")]
    username: Option<String>,
    /// `BASIC` password to keep.
    #[serde(default, deserialize_with = "empty_is_none")]
    password: Option<String>,
    /// `ACCESSTOKEN` token to keep.
    #[serde(default, deserialize_with = "empty_is_none")]
    access_token: Option<String>,
}

/// CSV cells are strings: an empty cell is an absent value.
fn empty_is_none<'de, D: Deserializer<'de>, T: std::str::FromStr>(
    d: D,
) -> Result<Option<T>, D::Error>
where
    T::Err: std::fmt::Display,
{
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

impl From<ImportRow> for CreateDeviceRequest {
    fn from(r: ImportRow) -> Self {
        Self {
            name: r.name,
            device_number: r.device_number,
            label: r.label,
            parent_id: r.parent_id,
            sub_device_addr: r.sub_device_addr,
            profile_id: r.profile_id,
            voucher_type: None,
            credentials: Some(CredentialsRequest {
                voucher_type: r.voucher_type,
                username: r.username,
                password: r.password,
                access_token: r.access_token,
            }),
        }
    }
}

/// A JSON import.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportRequest {
    /// 1 to 1000 devices, created in order.
    #[schema(min_items = 1, max_items = 1000)]
    devices: Vec<serde_json::Value>,
}

/// Why one row of an import was not created.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ImportRowError {
    /// Row number: 1 for the first device (the first line after a CSV header).
    row: usize,
    /// The field at fault, when one is.
    field: Option<String>,
    /// What is wrong.
    message: String,
}

/// What an import did: every valid row is created, each other row is reported.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ImportResponse {
    /// Devices created, with their credentials (shown only here).
    created: Vec<CreatedDeviceResponse>,
    /// Rows not created.
    errors: Vec<ImportRowError>,
}

/// The CSV form of an import: a header line naming the columns, then at least one line
/// per device (a file without a device line is a 422; the pattern says so). It only
/// documents the `text/csv` body, which the handler reads as bytes.
pub(crate) struct CsvImport;

impl utoipa::PartialSchema for CsvImport {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(
                r#"^[^\r\n"]*[^\s"][^\r\n"]*\r?\n[^\r\n"]*[^\s",][^\r\n"]*"#,
            ))
            .description(Some(
                "CSV: a header line naming the columns, then one line per device",
            ))
            .into()
    }
}

impl ToSchema for CsvImport {
    fn name() -> std::borrow::Cow<'static, str> {
        "CsvImport".into()
    }
}

/// Creates many devices at once from JSON (`{"devices":[...]}`) or CSV (`text/csv`
/// with a header line naming the columns: `name`, `device_number`, `label`,
/// `profile_id`, `parent_id`, `sub_device_addr`, `voucher_type`, `username`,
/// `password`, `access_token`). Rows are independent: each valid row is created,
/// each invalid one is reported with its row number and field; credentials given
/// in a row are kept (devices moved from ThingsPanel keep their vouchers).
#[utoipa::path(
    post,
    path = "/devices/import",
    tag = "devices",
    request_body(content(
        (ImportRequest = "application/json"),
        (CsvImport = "text/csv", example = "name,device_number,voucher_type,access_token\nPump 1,pump-1,ACCESSTOKEN,3f6c0b1e-2c4d-4a8e-9"),
    )),
    responses(
        (status = 200, description = "What was created and which rows were not", body = ImportResponse),
        (status = 400, description = "Unreadable body, no rows or more than 1000", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:write", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Neither application/json nor text/csv", body = ErrorBody),
    ),
    security(("bearer" = ["device:write"]), ("api_key" = ["device:write"]))
)]
pub(crate) async fn import_devices(
    caller: Caller,
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<ImportResponse>> {
    caller.require(Permission::DeviceWrite)?;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let rows: Vec<Result<ImportRow, ImportRowError>> = match content_type.as_str() {
        "application/json" => {
            let req: ImportRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::invalid("devices", e.to_string()))?;
            req.devices
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    serde_json::from_value::<ImportRow>(v).map_err(|e| row_error(i + 1, &e))
                })
                .collect()
        }
        "text/csv" => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(body.as_ref());
            reader
                .deserialize::<ImportRow>()
                .enumerate()
                .map(|(i, r)| r.map_err(|e| row_error(i + 1, &e)))
                .collect()
        }
        _ => {
            return Err(ApiError::http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json or text/csv",
            ));
        }
    };
    // A CSV's row count is not something its schema (a string) can state: 422.
    if rows.is_empty() || rows.len() > MAX_IMPORT_ROWS {
        return Err(ApiError::unprocessable(
            "devices",
            format!("must hold 1 to {MAX_IMPORT_ROWS} devices"),
        ));
    }
    let mut created = Vec::new();
    let mut errors = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        let outcome = match row {
            Ok(row) => create_one(&state, &caller, row.into()).await.map_err(|e| {
                let (field, message) = e.field_and_message();
                ImportRowError {
                    row: i + 1,
                    field,
                    message,
                }
            }),
            Err(e) => Err(e),
        };
        match outcome {
            Ok((device, issued)) => created.push(CreatedDeviceResponse::new(device, issued)),
            Err(e) => errors.push(e),
        }
    }
    Ok(axum::Json(ImportResponse { created, errors }))
}

/// A row that could not even be read.
fn row_error(row: usize, e: &dyn std::fmt::Display) -> ImportRowError {
    let message = e.to_string();
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|marker| {
            let rest = message.split_once(marker)?.1;
            Some(rest.split_once('`')?.0.to_owned())
        });
    ImportRowError {
        row,
        field,
        message,
    }
}

impl CreatedDeviceResponse {
    fn new(device: Device, issued: IssuedCredentials) -> Self {
        let d = DeviceResponse::from_device(device);
        Self {
            id: d.id,
            name: d.name,
            device_number: d.device_number,
            label: d.label,
            profile_id: d.profile_id,
            parent_id: d.parent_id,
            sub_device_addr: d.sub_device_addr,
            enabled: d.enabled,
            online: d.online,
            last_seen: d.last_seen,
            created_at: d.created_at,
            updated_at: d.updated_at,
            credentials: issued.into(),
        }
    }
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
    let Page {
        offset,
        limit: page_size,
    } = super::support::page_of(q.page, q.page_size)?;
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

/// Changes name, label, enabled flag, profile or gateway placement.
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
    let profile_id = match req.profile_id {
        Some(Some(pid)) => Some(Some(
            tenant_profile(&state, caller.tenant_id, pid).await?.id,
        )),
        Some(None) => Some(None),
        None => None,
    };
    let mut device = load_device(&state, &caller, id).await?;
    if let Some(profile_id) = profile_id {
        device.profile_id = profile_id;
    }
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
        serde_json::json!({
            "name": device.name,
            "label": device.label,
            "enabled": device.enabled,
            "profile_id": device.profile_id,
        }),
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

/// Replaces the device's credentials; the old ones stop working and its live
/// connections are closed. Without a body, new credentials of the same voucher type
/// are generated; a body may change the voucher type or set chosen credentials.
#[utoipa::path(
    post,
    path = "/devices/{id}/credentials",
    tag = "devices",
    params(("id" = Uuid, Path, description = "Device id")),
    request_body(content = Option<CredentialsRequest>, description = "Optional: voucher type or chosen credentials"),
    responses(
        (status = 200, description = "The new credentials; the secret is shown only here", body = NewCredentials),
        (status = 400, description = "Malformed id or invalid credentials", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:write", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
        (status = 409, description = "Username or access token taken", body = ErrorBody),
    ),
    security(("bearer" = ["device:write"]), ("api_key" = ["device:write"]))
)]
pub(crate) async fn rotate_credentials(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
    OptionalJson(req): OptionalJson<CredentialsRequest>,
) -> ApiResult<axum::Json<NewCredentials>> {
    caller.require(Permission::DeviceWrite)?;
    let mut device = load_device(&state, &caller, id).await?;
    let mut req = req.unwrap_or_default();
    if req.voucher_type.is_none()
        && req.username.is_none()
        && req.password.is_none()
        && req.access_token.is_none()
    {
        req.voucher_type = Some(device.credentials.voucher_type.as_str().to_owned());
    }
    let (credentials, issued) = credentials_for(&req, None)?;
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
        serde_json::json!({"voucher_type": issued.voucher_type.as_str()}),
    )
    .await;
    Ok(axum::Json(issued.into()))
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
    #[param(minimum = 1, maximum = 1000000000)]
    page: Option<u64>,
    /// Events per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    page_size: Option<u64>,
}

/// One online/offline transition.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatusEventResponse {
    /// The state the device went to.
    online: bool,
    /// Why: `connect`, `disconnect`, `connection_lost`, `activity`,
    /// `heartbeat_timeout`, `online_timeout`, `inactivity_timeout` or `node_lost` (the
    /// broker node holding the connection died; another node marked the device offline).
    #[schema(schema_with = status_reasons)]
    reason: String,
    /// When (ms).
    at: i64,
}

/// The `reason` of a status event: one of [`tp_core::StatusReason::ALL`].
fn status_reasons() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(tp_core::StatusReason::ALL.map(|r| r.as_str())))
        .description(Some("Why the device went online or offline"))
        .build()
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
    let Page {
        offset,
        limit: page_size,
    } = super::support::page_of(q.page, q.page_size)?;
    if let (Some(start), Some(end)) = (q.start, q.end)
        && start > end
    {
        return Err(ApiError::unprocessable("end", "must not be before start"));
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
