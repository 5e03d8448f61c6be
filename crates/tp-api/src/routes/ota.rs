//! `/api/v1/ota`: OTA packages (uploaded files or external URLs), tasks that send a
//! package to devices, and each device's progress (`ota:read` to read, `ota:write`
//! to change).
//!
//! Creating a task logs and publishes ThingsPanel's inform payload on
//! `ota/devices/inform/{device_number}` to every target device through the normal
//! downlink path (queued for devices that are offline); the device downloads a stored
//! package from `GET /api/v1/device/ota/packages/{id}` with its own credentials and
//! reports on `ota/devices/progress`, which the broker maps onto its task detail.

use std::io::ErrorKind;

use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;
use md5::Digest as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tp_core::ota::{
    OtaCounts, OtaPackage, OtaState, OtaStoreRef, OtaTask, OtaTaskDetail, inform_payload,
};
use tp_core::{
    CommandKind, CommandStatus, Device, DeviceFilter, DeviceId, OtaPackageId, OtaTaskId, Page,
    ProfileId, now_ms,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::downlink::MAX_EXPIRY_SECS;
use super::extract::{IdDevicePath, IdPath, Json, Query};
use super::support::{PageQuery, audit, page_of, valid_name};
use super::users::double_option;
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::ota::{OtaService, download_path};
use crate::state::AppState;

/// Most devices one task may target.
const MAX_TASK_DEVICES: usize = 10_000;
/// How long an inform waits for an offline device by default: 7 days.
const DEFAULT_INFORM_EXPIRY_SECS: u32 = 7 * 86_400;

fn service(state: &AppState) -> ApiResult<&OtaService> {
    state.ota.as_ref().ok_or_else(|| {
        ApiError::http(
            StatusCode::SERVICE_UNAVAILABLE,
            "ota_unavailable",
            "OTA upgrades are not enabled on this node",
        )
    })
}

fn store(state: &AppState) -> ApiResult<&OtaStoreRef> {
    Ok(&service(state)?.store)
}

// ---------------------------------------------------------------- views

/// An OTA package.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct PackageView {
    /// Package id.
    id: Uuid,
    /// Name; `(name, version)` is unique in the tenant.
    #[schema(example = "boiler firmware")]
    name: String,
    /// The version a device reaches by installing it.
    #[schema(example = "1.2.0")]
    version: String,
    /// The module it upgrades (ThingsPanel's `module`).
    #[schema(example = "MCU")]
    module: String,
    /// The profile whose devices it is meant for, if any.
    profile_id: Option<Uuid>,
    /// Free text.
    description: Option<String>,
    /// Handed to the device as `extData`.
    ext_data: Option<serde_json::Value>,
    /// The uploader's own signature method, if any.
    sign_method: Option<String>,
    /// The uploader's own signature, if any.
    sign: Option<String>,
    /// An external download URL; `null` for a package stored here.
    url: Option<String>,
    /// Whether the file is stored on the platform (uploaded).
    stored: bool,
    /// Whether a task can send it (stored, or with a URL).
    ready: bool,
    /// Size in bytes, once uploaded.
    size: Option<u64>,
    /// SHA-256 of the content (lower-case hex), computed on upload.
    sha256: Option<String>,
    /// MD5 of the content (lower-case hex), computed on upload.
    md5: Option<String>,
    /// The uploaded file's name, if given.
    file_name: Option<String>,
    /// Creation time (ms).
    created_at: i64,
    /// Last change (ms).
    updated_at: i64,
}

impl From<OtaPackage> for PackageView {
    fn from(p: OtaPackage) -> Self {
        Self {
            id: p.id.0,
            ready: p.is_ready(),
            name: p.name,
            version: p.version,
            module: p.module,
            profile_id: p.profile_id.map(|p| p.0),
            description: p.description,
            ext_data: p.ext_data,
            sign_method: p.sign_method,
            sign: p.sign,
            url: p.url,
            stored: p.stored,
            size: p.size,
            sha256: p.sha256,
            md5: p.md5,
            file_name: p.file_name,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// A page of packages, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PackageList {
    /// The page.
    items: Vec<PackageView>,
    /// All packages of the tenant.
    total: u64,
}

/// A task's devices by state.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CountsView {
    pending: u64,
    notified: u64,
    downloading: u64,
    upgrading: u64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
    /// Every device of the task.
    total: u64,
}

impl From<OtaCounts> for CountsView {
    fn from(c: OtaCounts) -> Self {
        Self {
            pending: c.pending,
            notified: c.notified,
            downloading: c.downloading,
            upgrading: c.upgrading,
            succeeded: c.succeeded,
            failed: c.failed,
            cancelled: c.cancelled,
            total: c.total(),
        }
    }
}

/// An OTA task.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TaskView {
    /// Task id.
    id: Uuid,
    /// The package it sends.
    package_id: Uuid,
    /// Name.
    name: String,
    /// Free text.
    description: Option<String>,
    /// The profile whose devices it targeted, if created for a profile.
    profile_id: Option<Uuid>,
    /// `in_progress` while any device is pending, notified, downloading or
    /// upgrading; then `failed` (some failed), `succeeded` (all did), `cancelled`
    /// (none succeeded) or `completed` (some succeeded, the rest cancelled).
    #[schema(example = "in_progress")]
    status: String,
    /// Its devices by state.
    counts: CountsView,
    /// Creation time (ms).
    created_at: i64,
}

impl From<OtaTask> for TaskView {
    fn from(t: OtaTask) -> Self {
        Self {
            id: t.id.0,
            package_id: t.package_id.0,
            name: t.name,
            description: t.description,
            profile_id: t.profile_id.map(|p| p.0),
            status: t.counts.status().as_str().to_owned(),
            counts: t.counts.into(),
            created_at: t.created_at,
        }
    }
}

/// A page of tasks, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TaskList {
    /// The page.
    items: Vec<TaskView>,
    /// All matching tasks.
    total: u64,
}

/// One device of a task.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DetailView {
    /// The task.
    task_id: Uuid,
    /// The device.
    device_id: Uuid,
    /// `pending` (inform queued), `notified` (inform published), `downloading`
    /// (fetched the package here), `upgrading` (reported 1..99), `succeeded`
    /// (reported 100), `failed` (reported -1..-4, or the inform expired) or
    /// `cancelled`.
    #[schema(example = "upgrading")]
    state: String,
    /// Percent as last reported.
    progress: Option<u8>,
    /// The last step the device reported.
    step: Option<i32>,
    /// The failure code (-1 upgrade, -2 download, -3 verification, -4 flashing).
    code: Option<i32>,
    /// The device's last `desc`, or why it failed or was cancelled.
    description: Option<String>,
    /// Message id of the last inform (see the device's downlink log).
    message_id: Option<String>,
    /// Creation time (ms).
    created_at: i64,
    /// Last change (ms).
    updated_at: i64,
}

impl From<OtaTaskDetail> for DetailView {
    fn from(d: OtaTaskDetail) -> Self {
        Self {
            task_id: d.task_id.0,
            device_id: d.device_id.0,
            state: d.state.as_str().to_owned(),
            progress: d.progress,
            step: d.step,
            code: d.code,
            description: d.description,
            message_id: d.message_id,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// A page of a task's devices.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DetailList {
    /// The page, in the order the devices were added.
    items: Vec<DetailView>,
    /// All devices of the task.
    total: u64,
}

// ---------------------------------------------------------------- requests

/// A new package: give `url` for an external file, or upload the file afterwards
/// with `PUT /api/v1/ota/packages/{id}/file`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreatePackageRequest {
    /// Name; `(name, version)` is unique in the tenant.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// The version a device reaches by installing it.
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    version: String,
    /// The module it upgrades (default `default`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    module: Option<String>,
    /// A profile of the tenant whose devices it is meant for.
    #[serde(default)]
    profile_id: Option<Uuid>,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 1000)]
    description: Option<String>,
    /// Handed to the device as `extData` (an object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    ext_data: Option<serde_json::Value>,
    /// A signature method of your own (`MD5`, `SHA256`, ...), with `sign`.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 32)]
    sign_method: Option<String>,
    /// The signature that goes with `sign_method`.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 1024)]
    sign: Option<String>,
    /// An external `http(s)` download URL (the device downloads it from there).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 2048)]
    url: Option<String>,
}

/// Changes to a package; absent fields stay, `null` clears.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdatePackageRequest {
    /// Name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: Option<String>,
    /// Version.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    version: Option<String>,
    /// Module.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    module: Option<String>,
    /// Free text; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, max_length = 1000)]
    description: Option<Option<String>>,
    /// `extData`; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>, nullable)]
    ext_data: Option<Option<serde_json::Value>>,
}

/// A new task: `device_ids` or `profile_id` (every device of the profile now).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTaskRequest {
    /// The package to send (stored, or with a URL).
    package_id: Uuid,
    /// Name (default: `<package name> <version>`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: Option<String>,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 1000)]
    description: Option<String>,
    /// Devices of the tenant (without `profile_id`).
    #[serde(default)]
    #[schema(min_items = 1, max_items = 10000)]
    device_ids: Option<Vec<Uuid>>,
    /// A profile of the tenant: its devices at creation (without `device_ids`).
    #[serde(default)]
    profile_id: Option<Uuid>,
    /// How long the inform waits for an offline device, 1 s to 30 days (default 7 days).
    #[serde(default, deserialize_with = "tp_core::serde_int::optional")]
    #[schema(minimum = 1, maximum = 2592000)]
    expires_in_secs: Option<u32>,
}

/// Filter of the task list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TaskQuery {
    /// Only tasks of this package.
    package_id: Option<Uuid>,
    /// Page number, from 1 (default 1).
    #[param(minimum = 1, maximum = 1000000000)]
    page: Option<u64>,
    /// Rows per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    page_size: Option<u64>,
}

// ---------------------------------------------------------------- checks

fn short(field: &str, v: &str, max: usize) -> ApiResult<String> {
    let v = v.trim_matches(super::support::is_blank);
    if v.is_empty() || v.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    Ok(v.to_owned())
}

fn description(d: Option<String>) -> ApiResult<Option<String>> {
    match d {
        Some(d) if d.chars().count() > 1000 => Err(ApiError::invalid(
            "description",
            "must be at most 1000 characters",
        )),
        other => Ok(other),
    }
}

/// `extData` is an object, as ThingsPanel's devices expect.
fn ext_data(v: Option<serde_json::Value>) -> ApiResult<Option<serde_json::Value>> {
    match v {
        Some(v) if !v.is_object() => Err(ApiError::invalid("ext_data", "must be a JSON object")),
        other => Ok(other),
    }
}

fn sized(field: &str, v: Option<String>, max: usize) -> ApiResult<Option<String>> {
    match v {
        Some(v) if v.is_empty() || v.chars().count() > max => Err(ApiError::invalid(
            field,
            format!("must be 1 to {max} characters"),
        )),
        other => Ok(other),
    }
}

async fn load_package(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<OtaPackage> {
    store(state)?
        .get_package(caller.tenant_id, OtaPackageId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("ota_package", id).into())
}

async fn load_task(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<OtaTask> {
    store(state)?
        .get_task(caller.tenant_id, OtaTaskId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("ota_task", id).into())
}

// ---------------------------------------------------------------- packages

/// Creates a package (upload its file next, unless it has a `url`).
#[utoipa::path(
    post,
    path = "/ota/packages",
    tag = "ota",
    request_body = CreatePackageRequest,
    responses(
        (status = 201, description = "Created", body = PackageView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:write", body = ErrorBody),
        (status = 409, description = "The tenant has a package of this name and version", body = ErrorBody),
        (status = 422, description = "`profile_id` is not a profile of the tenant, `sign` and `sign_method` come without each other, or `url` is not an http(s) URL", body = ErrorBody),
    ),
    security(("bearer" = ["ota:write"]), ("api_key" = ["ota:write"]))
)]
pub(crate) async fn create_package(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<CreatePackageRequest>,
) -> ApiResult<(StatusCode, axum::Json<PackageView>)> {
    caller.require(Permission::OtaWrite)?;
    let ota = store(&state)?;
    let name = valid_name("name", &req.name)?;
    let version = short("version", &req.version, 64)?;
    let module = match req.module {
        Some(m) => short("module", &m, 64)?,
        None => tp_core::ota::DEFAULT_MODULE.to_owned(),
    };
    let description = description(req.description)?;
    let sign_method = sized("sign_method", req.sign_method, 32)?;
    let sign = sized("sign", req.sign, 1024)?;
    let url = sized("url", req.url, 2048)?;
    if sign_method.is_some() != sign.is_some() {
        return Err(ApiError::unprocessable(
            "sign",
            "`sign` and `sign_method` go together",
        ));
    }
    if let Some(u) = &url {
        let parsed = url::Url::parse(u)
            .map_err(|e| ApiError::unprocessable("url", format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ApiError::unprocessable("url", "must be an http(s) URL"));
        }
    }
    if let Some(p) = req.profile_id
        && state
            .access
            .get_profile(caller.tenant_id, ProfileId(p))
            .await?
            .is_none()
    {
        return Err(ApiError::unprocessable(
            "profile_id",
            "not a profile of the tenant",
        ));
    }
    let now = now_ms();
    let package = OtaPackage {
        id: OtaPackageId::new(),
        tenant_id: caller.tenant_id,
        name,
        version,
        module,
        profile_id: req.profile_id.map(ProfileId),
        description,
        ext_data: ext_data(req.ext_data)?,
        sign_method,
        sign,
        url,
        stored: false,
        size: None,
        sha256: None,
        md5: None,
        file_name: None,
        created_at: now,
        updated_at: now,
    };
    ota.create_package(&package).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "ota_package.create",
        "ota_package",
        package.id,
        serde_json::json!({"name": package.name, "version": package.version, "url": package.url}),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(package.into())))
}

/// The tenant's packages, newest first.
#[utoipa::path(
    get,
    path = "/ota/packages",
    tag = "ota",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of packages", body = PackageList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:read", body = ErrorBody),
    ),
    security(("bearer" = ["ota:read"]), ("api_key" = ["ota:read"]))
)]
pub(crate) async fn list_packages(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<PackageList>> {
    caller.require(Permission::OtaRead)?;
    let page = page_of(q.page, q.page_size)?;
    let list = store(&state)?.list_packages(caller.tenant_id, page).await?;
    Ok(axum::Json(PackageList {
        items: list.items.into_iter().map(PackageView::from).collect(),
        total: list.total,
    }))
}

/// One package.
#[utoipa::path(
    get,
    path = "/ota/packages/{id}",
    tag = "ota",
    params(("id" = Uuid, Path, description = "Package id")),
    responses(
        (status = 200, description = "The package", body = PackageView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:read", body = ErrorBody),
        (status = 404, description = "No such package in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["ota:read"]), ("api_key" = ["ota:read"]))
)]
pub(crate) async fn get_package(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<PackageView>> {
    caller.require(Permission::OtaRead)?;
    Ok(axum::Json(load_package(&state, &caller, id).await?.into()))
}

/// Changes a package's description fields (its content changes by uploading).
#[utoipa::path(
    patch,
    path = "/ota/packages/{id}",
    tag = "ota",
    params(("id" = Uuid, Path, description = "Package id")),
    request_body = UpdatePackageRequest,
    responses(
        (status = 200, description = "Updated", body = PackageView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:write", body = ErrorBody),
        (status = 404, description = "No such package in the tenant", body = ErrorBody),
        (status = 409, description = "The tenant has a package of this name and version", body = ErrorBody),
    ),
    security(("bearer" = ["ota:write"]), ("api_key" = ["ota:write"]))
)]
pub(crate) async fn update_package(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<UpdatePackageRequest>,
) -> ApiResult<axum::Json<PackageView>> {
    caller.require(Permission::OtaWrite)?;
    let mut p = load_package(&state, &caller, id).await?;
    if let Some(n) = req.name {
        p.name = valid_name("name", &n)?;
    }
    if let Some(v) = req.version {
        p.version = short("version", &v, 64)?;
    }
    if let Some(m) = req.module {
        p.module = short("module", &m, 64)?;
    }
    if let Some(d) = req.description {
        p.description = description(d)?;
    }
    if let Some(e) = req.ext_data {
        p.ext_data = ext_data(e)?;
    }
    p.updated_at = now_ms();
    store(&state)?.update_package(&p).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "ota_package.update",
        "ota_package",
        p.id,
        serde_json::json!({"name": p.name, "version": p.version}),
    )
    .await;
    Ok(axum::Json(p.into()))
}

/// Deletes a package and its stored file.
#[utoipa::path(
    delete,
    path = "/ota/packages/{id}",
    tag = "ota",
    params(("id" = Uuid, Path, description = "Package id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:write", body = ErrorBody),
        (status = 404, description = "No such package in the tenant", body = ErrorBody),
        (status = 409, description = "A task sends the package; delete its tasks first", body = ErrorBody),
    ),
    security(("bearer" = ["ota:write"]), ("api_key" = ["ota:write"]))
)]
pub(crate) async fn delete_package(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::OtaWrite)?;
    let svc = service(&state)?;
    let p = load_package(&state, &caller, id).await?;
    svc.store.delete_package(caller.tenant_id, p.id).await?;
    if p.stored
        && let Err(e) = tokio::fs::remove_file(svc.package_file(p.id)).await
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!(package_id = %p.id, error = %e, "cannot remove a deleted package's file");
    }
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "ota_package.delete",
        "ota_package",
        p.id,
        serde_json::json!({"name": p.name, "version": p.version}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A multipart upload: the file is the form's first part.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct UploadForm {
    /// The package file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// What an upload wrote.
struct Written {
    size: u64,
    sha256: String,
    md5: String,
}

/// Streams `chunks` into `path` (via a temporary file in the same directory, renamed
/// at the end), hashing on the way; refuses more than `max` bytes with 413.
async fn write_package<S, E>(
    dir: &std::path::Path,
    path: &std::path::Path,
    mut chunks: S,
    max: u64,
) -> ApiResult<Written>
where
    S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let io =
        |e: std::io::Error| ApiError::Core(tp_core::Error::backend("ota files", e.to_string()));
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let tmp = dir.join(format!(".upload-{}", Uuid::new_v4()));
    let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
    let mut sha = <sha2::Sha256 as sha2::Digest>::new();
    let mut md5 = md5::Md5::new();
    let mut size: u64 = 0;
    let result: ApiResult<()> = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| {
                let text = e.to_string();
                if text.contains("length limit") || text.contains("too large") {
                    too_large(max)
                } else {
                    ApiError::invalid("body", format!("cannot read the upload: {text}"))
                }
            })?;
            size += chunk.len() as u64;
            if size > max {
                return Err(too_large(max));
            }
            sha2::Digest::update(&mut sha, &chunk);
            md5.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    if size == 0 {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ApiError::invalid("body", "the package file is empty"));
    }
    tokio::fs::rename(&tmp, path).await.map_err(io)?;
    Ok(Written {
        size,
        sha256: hex::encode(sha2::Digest::finalize(sha)),
        md5: hex::encode(md5.finalize()),
    })
}

fn too_large(max: u64) -> ApiError {
    ApiError::http(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("a package may be at most {max} bytes (ota.max_package_bytes)"),
    )
}

/// Uploads (or replaces) a package's file: the raw bytes as
/// `application/octet-stream`, or `multipart/form-data` with the file as its first part.
/// Size, SHA-256 and MD5 are computed while it streams to disk; an external `url`
/// of the package is dropped. Refused while a task sends the package.
#[utoipa::path(
    put,
    path = "/ota/packages/{id}/file",
    tag = "ota",
    params(
        ("id" = Uuid, Path, description = "Package id"),
        ("file_name" = Option<String>, Query, description = "The file's name, kept for display (a multipart part's own name wins)"),
    ),
    request_body(content(
        (Vec<u8> = "application/octet-stream"),
        (UploadForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "Stored; the package with its size and checksums", body = PackageView),
        (status = 400, description = "Empty or unreadable upload", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:write", body = ErrorBody),
        (status = 404, description = "No such package in the tenant", body = ErrorBody),
        (status = 409, description = "A task sends the package: its content cannot change", body = ErrorBody),
        (status = 413, description = "Larger than `ota.max_package_bytes` (default 256 MiB)", body = ErrorBody),
        (status = 415, description = "Neither `application/octet-stream` nor `multipart/form-data`", body = ErrorBody),
    ),
    security(("bearer" = ["ota:write"]), ("api_key" = ["ota:write"]))
)]
pub(crate) async fn upload_package(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Query(q): Query<FileNameQuery>,
    request: Request,
) -> ApiResult<axum::Json<PackageView>> {
    caller.require(Permission::OtaWrite)?;
    let svc = service(&state)?;
    let mut p = load_package(&state, &caller, id).await?;
    let used = svc
        .store
        .list_tasks(
            caller.tenant_id,
            Some(p.id),
            Page {
                offset: 0,
                limit: 1,
            },
        )
        .await?;
    if used.total > 0 {
        return Err(tp_core::Error::Conflict(
            "the package is sent by a task, so its content cannot change: create a new version"
                .to_owned(),
        )
        .into());
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if let Some(len) = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > svc.max_package_bytes.saturating_add(64 * 1024)
    {
        return Err(too_large(svc.max_package_bytes));
    }
    let path = svc.package_file(p.id);
    let mut file_name = q.file_name.filter(|n| !n.is_empty() && n.len() <= 255);
    let written = if content_type.starts_with("multipart/form-data") {
        let mut form = axum::extract::Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::invalid("body", e.body_text()))?;
        // The file is the form's first part.
        let field = form
            .next_field()
            .await
            .map_err(|e| multipart_error(&e, svc.max_package_bytes))?
            .ok_or_else(|| ApiError::invalid("body", "the form holds no file"))?;
        if let Some(n) = field
            .file_name()
            .filter(|n| !n.is_empty() && n.len() <= 255)
        {
            file_name = Some(n.to_owned());
        }
        write_package(&svc.dir, &path, field, svc.max_package_bytes).await?
    } else if content_type.starts_with("application/octet-stream") {
        let stream = request.into_body().into_data_stream();
        write_package(&svc.dir, &path, stream, svc.max_package_bytes).await?
    } else {
        return Err(ApiError::http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the package as application/octet-stream or multipart/form-data",
        ));
    };
    p.stored = true;
    p.url = None;
    p.size = Some(written.size);
    p.sha256 = Some(written.sha256);
    p.md5 = Some(written.md5);
    p.file_name = file_name;
    p.updated_at = now_ms();
    svc.store.update_package(&p).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "ota_package.upload",
        "ota_package",
        p.id,
        serde_json::json!({"size": p.size, "sha256": p.sha256, "md5": p.md5}),
    )
    .await;
    Ok(axum::Json(p.into()))
}

fn multipart_error(e: &axum::extract::multipart::MultipartError, max: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(max)
    } else {
        ApiError::invalid("body", e.body_text())
    }
}

/// The upload's optional file name.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FileNameQuery {
    /// The file's name, kept for display.
    file_name: Option<String>,
}

// ---------------------------------------------------------------- tasks

/// The URL a device downloads `package` from.
fn download_url(svc: &OtaService, headers: &HeaderMap, package: &OtaPackage) -> String {
    if let Some(url) = &package.url {
        return url.clone();
    }
    let base = match &svc.public_url {
        Some(base) => base.trim_end_matches('/').to_owned(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let scheme = if svc.https { "https" } else { "http" };
            format!("{scheme}://{host}")
        }
    };
    format!("{base}{}", download_path(package.id))
}

/// Logs and publishes (or queues) the inform of `detail` to `device`, recording the
/// message id and whether it went out.
async fn inform(
    state: &AppState,
    task: &OtaTask,
    package: &OtaPackage,
    url: &str,
    device: &Device,
    detail: &mut OtaTaskDetail,
    lifetime_ms: i64,
) -> ApiResult<()> {
    let payload = inform_payload(&task.id.to_string(), package, url);
    let row = tp_core::downlink::issue_downlink(
        &state.metadata,
        Some(&state.access),
        state.transport.as_ref(),
        device,
        CommandKind::OtaInform,
        payload,
        lifetime_ms,
    )
    .await?;
    detail.message_id = Some(row.message_id);
    detail.state = if row.status == CommandStatus::Sent {
        OtaState::Notified
    } else {
        OtaState::Pending
    };
    detail.progress = None;
    detail.step = None;
    detail.code = None;
    detail.description = None;
    detail.updated_at = now_ms();
    Ok(())
}

/// Every device of a profile in the tenant.
async fn profile_devices(
    state: &AppState,
    caller: &Caller,
    profile: ProfileId,
) -> ApiResult<Vec<Device>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = state
            .metadata
            .list_devices(
                caller.tenant_id,
                &DeviceFilter {
                    search: None,
                    online: None,
                    page: Page {
                        offset,
                        limit: 1000,
                    },
                },
            )
            .await?;
        let n = page.items.len() as u64;
        out.extend(
            page.items
                .into_iter()
                .filter(|d| d.profile_id == Some(profile)),
        );
        if out.len() > MAX_TASK_DEVICES {
            return Err(ApiError::unprocessable(
                "profile_id",
                format!("the profile has more than {MAX_TASK_DEVICES} devices"),
            ));
        }
        offset += n;
        if n == 0 || offset >= page.total {
            break;
        }
    }
    Ok(out)
}

/// Creates a task and sends the inform to each of its devices (queued for those
/// offline: they get it when they subscribe to `ota/devices/inform/{device_number}`).
#[utoipa::path(
    post,
    path = "/ota/tasks",
    tag = "ota",
    request_body = CreateTaskRequest,
    responses(
        (status = 201, description = "Created; informs sent or queued", body = TaskView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:write", body = ErrorBody),
        (status = 422, description = "The package is not in the tenant or has no file yet; not exactly one of `device_ids` and `profile_id`; a device or the profile is not in the tenant; a device is listed twice; or the profile has no devices", body = ErrorBody),
    ),
    security(("bearer" = ["ota:write"]), ("api_key" = ["ota:write"]))
)]
pub(crate) async fn create_task(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<CreateTaskRequest>,
) -> ApiResult<(StatusCode, axum::Json<TaskView>)> {
    caller.require(Permission::OtaWrite)?;
    let svc = service(&state)?;
    let name = req.name.map(|n| valid_name("name", &n)).transpose()?;
    let description = description(req.description)?;
    let lifetime_secs = req.expires_in_secs.unwrap_or(DEFAULT_INFORM_EXPIRY_SECS);
    if !(1..=MAX_EXPIRY_SECS).contains(&lifetime_secs) {
        return Err(ApiError::invalid(
            "expires_in_secs",
            format!("must be 1 to {MAX_EXPIRY_SECS}"),
        ));
    }
    if let Some(ids) = &req.device_ids
        && (ids.is_empty() || ids.len() > MAX_TASK_DEVICES)
    {
        return Err(ApiError::invalid(
            "device_ids",
            format!("must list 1 to {MAX_TASK_DEVICES} devices"),
        ));
    }
    let Some(package) = svc
        .store
        .get_package(caller.tenant_id, OtaPackageId(req.package_id))
        .await?
    else {
        return Err(ApiError::unprocessable(
            "package_id",
            "not a package of the tenant",
        ));
    };
    if !package.is_ready() {
        return Err(ApiError::unprocessable(
            "package_id",
            "the package has no file yet: upload it first",
        ));
    }
    let devices = match (&req.device_ids, req.profile_id) {
        (Some(ids), None) => {
            let mut devices = Vec::with_capacity(ids.len());
            let mut seen = std::collections::HashSet::new();
            for id in ids {
                if !seen.insert(*id) {
                    return Err(ApiError::unprocessable(
                        "device_ids",
                        format!("device {id} is listed twice"),
                    ));
                }
                match state
                    .metadata
                    .get_device(caller.tenant_id, DeviceId(*id))
                    .await?
                {
                    Some(d) => devices.push(d),
                    None => {
                        return Err(ApiError::unprocessable(
                            "device_ids",
                            format!("device {id} is not a device of the tenant"),
                        ));
                    }
                }
            }
            devices
        }
        (None, Some(profile)) => {
            if state
                .access
                .get_profile(caller.tenant_id, ProfileId(profile))
                .await?
                .is_none()
            {
                return Err(ApiError::unprocessable(
                    "profile_id",
                    "not a profile of the tenant",
                ));
            }
            let devices = profile_devices(&state, &caller, ProfileId(profile)).await?;
            if devices.is_empty() {
                return Err(ApiError::unprocessable(
                    "profile_id",
                    "the profile has no devices",
                ));
            }
            devices
        }
        _ => {
            return Err(ApiError::unprocessable(
                "device_ids",
                "give exactly one of `device_ids` and `profile_id`",
            ));
        }
    };
    let now = now_ms();
    let task = OtaTask {
        id: OtaTaskId::new(),
        tenant_id: caller.tenant_id,
        package_id: package.id,
        name: name.unwrap_or_else(|| format!("{} {}", package.name, package.version)),
        description,
        profile_id: req.profile_id.map(ProfileId),
        created_at: now,
        counts: OtaCounts::default(),
    };
    let details: Vec<OtaTaskDetail> = devices
        .iter()
        .map(|d| OtaTaskDetail::new(caller.tenant_id, task.id, package.id, d.id, now))
        .collect();
    // Stored before anything is published, so a device's first report finds it.
    svc.store.create_task(&task, &details).await?;
    let url = download_url(svc, &headers, &package);
    let lifetime_ms = i64::from(lifetime_secs) * 1000;
    for (device, mut detail) in devices.iter().zip(details) {
        match inform(
            &state,
            &task,
            &package,
            &url,
            device,
            &mut detail,
            lifetime_ms,
        )
        .await
        {
            Ok(()) => svc.store.update_detail(&detail).await?,
            Err(e) => {
                tracing::warn!(device_id = %device.id, task_id = %task.id, error = ?e, "cannot send the OTA inform");
                detail.state = OtaState::Failed;
                detail.description = Some("the inform could not be sent".into());
                detail.updated_at = now_ms();
                svc.store.update_detail(&detail).await?;
            }
        }
    }
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "ota_task.create",
        "ota_task",
        task.id,
        serde_json::json!({"package_id": package.id, "devices": devices.len(), "profile_id": task.profile_id}),
    )
    .await;
    let task = load_task(&state, &caller, task.id.0).await?;
    Ok((StatusCode::CREATED, axum::Json(task.into())))
}

/// The tenant's tasks, newest first.
#[utoipa::path(
    get,
    path = "/ota/tasks",
    tag = "ota",
    params(TaskQuery),
    responses(
        (status = 200, description = "A page of tasks", body = TaskList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:read", body = ErrorBody),
    ),
    security(("bearer" = ["ota:read"]), ("api_key" = ["ota:read"]))
)]
pub(crate) async fn list_tasks(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<TaskQuery>,
) -> ApiResult<axum::Json<TaskList>> {
    caller.require(Permission::OtaRead)?;
    let page = page_of(q.page, q.page_size)?;
    let list = store(&state)?
        .list_tasks(caller.tenant_id, q.package_id.map(OtaPackageId), page)
        .await?;
    Ok(axum::Json(TaskList {
        items: list.items.into_iter().map(TaskView::from).collect(),
        total: list.total,
    }))
}

/// One task with its counts.
#[utoipa::path(
    get,
    path = "/ota/tasks/{id}",
    tag = "ota",
    params(("id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:read", body = ErrorBody),
        (status = 404, description = "No such task in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["ota:read"]), ("api_key" = ["ota:read"]))
)]
pub(crate) async fn get_task(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<TaskView>> {
    caller.require(Permission::OtaRead)?;
    refresh_pending(&state, &caller, OtaTaskId(id)).await?;
    Ok(axum::Json(load_task(&state, &caller, id).await?.into()))
}

/// Deletes a task and its details; informs still queued are withdrawn.
#[utoipa::path(
    delete,
    path = "/ota/tasks/{id}",
    tag = "ota",
    params(("id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:write", body = ErrorBody),
        (status = 404, description = "No such task in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["ota:write"]), ("api_key" = ["ota:write"]))
)]
pub(crate) async fn delete_task(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::OtaWrite)?;
    let task = load_task(&state, &caller, id).await?;
    for mut d in all_details(&state, &caller, task.id).await? {
        if d.state.is_active() {
            withdraw(&state, &mut d).await?;
        }
    }
    store(&state)?
        .delete_task(caller.tenant_id, task.id)
        .await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "ota_task.delete",
        "ota_task",
        task.id,
        serde_json::json!({"name": task.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn all_details(
    state: &AppState,
    caller: &Caller,
    task: OtaTaskId,
) -> ApiResult<Vec<OtaTaskDetail>> {
    let ota = store(state)?;
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = ota
            .list_details(
                caller.tenant_id,
                task,
                Page {
                    offset,
                    limit: 1000,
                },
            )
            .await?;
        let n = page.items.len() as u64;
        out.extend(page.items);
        offset += n;
        if n == 0 || offset >= page.total {
            return Ok(out);
        }
    }
}

/// Takes back a still-queued inform (marks its log row failed, so it is never
/// delivered) and marks the detail cancelled.
async fn withdraw(state: &AppState, d: &mut OtaTaskDetail) -> ApiResult<()> {
    if let Some(mid) = &d.message_id
        && let Some(mut row) = state
            .metadata
            .get_command_by_message_id(d.device_id, mid)
            .await?
        && row.status == CommandStatus::Pending
    {
        row.status = CommandStatus::Failed;
        row.response = Some(serde_json::json!({"result": 1, "message": "OTA task cancelled"}));
        row.updated_at = now_ms();
        state.metadata.update_command(&row).await?;
    }
    d.state = OtaState::Cancelled;
    d.description = Some("cancelled".into());
    d.updated_at = now_ms();
    Ok(())
}

/// Pending details whose queued inform has since gone out become `notified`; those
/// whose inform expired undelivered become `failed`.
async fn refresh_pending(state: &AppState, caller: &Caller, task: OtaTaskId) -> ApiResult<()> {
    let Some(ota) = state.ota.as_ref().map(|o| &o.store) else {
        return Ok(());
    };
    for mut d in all_details(state, caller, task).await? {
        if d.state != OtaState::Pending {
            continue;
        }
        let Some(mid) = &d.message_id else { continue };
        let Some(row) = state
            .metadata
            .get_command_by_message_id(d.device_id, mid)
            .await?
        else {
            continue;
        };
        let expired =
            row.status == CommandStatus::Expired || tp_core::downlink::is_expired(&row, now_ms());
        if matches!(row.status, CommandStatus::Sent | CommandStatus::Replied) {
            d.state = OtaState::Notified;
        } else if expired {
            d.state = OtaState::Failed;
            d.description = Some("the inform expired before the device received it".into());
        } else {
            continue;
        }
        d.updated_at = now_ms();
        ota.update_detail(&d).await?;
    }
    Ok(())
}

/// Cancels every device of the task still under way.
#[utoipa::path(
    post,
    path = "/ota/tasks/{id}/cancel",
    tag = "ota",
    params(("id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task after cancelling", body = TaskView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:write", body = ErrorBody),
        (status = 404, description = "No such task in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["ota:write"]), ("api_key" = ["ota:write"]))
)]
pub(crate) async fn cancel_task(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<TaskView>> {
    caller.require(Permission::OtaWrite)?;
    let task = load_task(&state, &caller, id).await?;
    let ota = store(&state)?;
    let mut n = 0;
    for mut d in all_details(&state, &caller, task.id).await? {
        if d.state.is_active() {
            withdraw(&state, &mut d).await?;
            ota.update_detail(&d).await?;
            n += 1;
        }
    }
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "ota_task.cancel",
        "ota_task",
        task.id,
        serde_json::json!({"devices": n}),
    )
    .await;
    Ok(axum::Json(load_task(&state, &caller, id).await?.into()))
}

/// Sends the inform again to every failed or cancelled device of the task.
#[utoipa::path(
    post,
    path = "/ota/tasks/{id}/retry",
    tag = "ota",
    params(("id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task after retrying", body = TaskView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:write", body = ErrorBody),
        (status = 404, description = "No such task in the tenant", body = ErrorBody),
        (status = 422, description = "The task's package has no file any more", body = ErrorBody),
    ),
    security(("bearer" = ["ota:write"]), ("api_key" = ["ota:write"]))
)]
pub(crate) async fn retry_task(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<TaskView>> {
    caller.require(Permission::OtaWrite)?;
    let task = load_task(&state, &caller, id).await?;
    let mut n = 0;
    for d in all_details(&state, &caller, task.id).await? {
        if matches!(d.state, OtaState::Failed | OtaState::Cancelled) {
            retry(&state, &caller, &headers, &task, d).await?;
            n += 1;
        }
    }
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "ota_task.retry",
        "ota_task",
        task.id,
        serde_json::json!({"devices": n}),
    )
    .await;
    Ok(axum::Json(load_task(&state, &caller, id).await?.into()))
}

/// Sends the inform of `d` again (a device deleted meanwhile stays as it was).
async fn retry(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    task: &OtaTask,
    mut d: OtaTaskDetail,
) -> ApiResult<OtaTaskDetail> {
    let svc = service(state)?;
    let package = svc
        .store
        .get_package(caller.tenant_id, task.package_id)
        .await?
        .filter(OtaPackage::is_ready)
        .ok_or_else(|| ApiError::unprocessable("package_id", "the task's package has no file"))?;
    let Some(device) = state
        .metadata
        .get_device(caller.tenant_id, d.device_id)
        .await?
    else {
        return Ok(d);
    };
    let url = download_url(svc, headers, &package);
    let lifetime_ms = i64::from(DEFAULT_INFORM_EXPIRY_SECS) * 1000;
    inform(state, task, &package, &url, &device, &mut d, lifetime_ms).await?;
    svc.store.update_detail(&d).await?;
    Ok(d)
}

/// The task's devices and where each stands.
#[utoipa::path(
    get,
    path = "/ota/tasks/{id}/devices",
    tag = "ota",
    params(
        ("id" = Uuid, Path, description = "Task id"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of the task's devices", body = DetailList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:read", body = ErrorBody),
        (status = 404, description = "No such task in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["ota:read"]), ("api_key" = ["ota:read"]))
)]
pub(crate) async fn list_task_devices(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<DetailList>> {
    caller.require(Permission::OtaRead)?;
    let page = page_of(q.page, q.page_size)?;
    let task = load_task(&state, &caller, id).await?;
    refresh_pending(&state, &caller, task.id).await?;
    let list = store(&state)?
        .list_details(caller.tenant_id, task.id, page)
        .await?;
    Ok(axum::Json(DetailList {
        items: list.items.into_iter().map(DetailView::from).collect(),
        total: list.total,
    }))
}

async fn load_detail(
    state: &AppState,
    caller: &Caller,
    task: OtaTaskId,
    device: DeviceId,
) -> ApiResult<OtaTaskDetail> {
    store(state)?
        .get_detail(caller.tenant_id, task, device)
        .await?
        .ok_or_else(|| tp_core::Error::not_found("ota_task_detail", device).into())
}

/// Cancels one device of a task (it must still be under way).
#[utoipa::path(
    post,
    path = "/ota/tasks/{id}/devices/{device_id}/cancel",
    tag = "ota",
    params(
        ("id" = Uuid, Path, description = "Task id"),
        ("device_id" = Uuid, Path, description = "Device id"),
    ),
    responses(
        (status = 200, description = "The device's detail, cancelled", body = DetailView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:write", body = ErrorBody),
        (status = 404, description = "No such task in the tenant, or the device is not in it", body = ErrorBody),
        (status = 409, description = "The device already succeeded, failed or was cancelled", body = ErrorBody),
    ),
    security(("bearer" = ["ota:write"]), ("api_key" = ["ota:write"]))
)]
pub(crate) async fn cancel_task_device(
    caller: Caller,
    State(state): State<AppState>,
    IdDevicePath(id, device): IdDevicePath,
) -> ApiResult<axum::Json<DetailView>> {
    caller.require(Permission::OtaWrite)?;
    let task = load_task(&state, &caller, id).await?;
    let mut d = load_detail(&state, &caller, task.id, device).await?;
    if !d.state.is_active() {
        return Err(tp_core::Error::Conflict(format!(
            "the device is {} already",
            d.state.as_str()
        ))
        .into());
    }
    withdraw(&state, &mut d).await?;
    store(&state)?.update_detail(&d).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "ota_task.cancel_device",
        "ota_task",
        task.id,
        serde_json::json!({"device_id": device}),
    )
    .await;
    Ok(axum::Json(d.into()))
}

/// Sends the inform again to one failed or cancelled device of a task.
#[utoipa::path(
    post,
    path = "/ota/tasks/{id}/devices/{device_id}/retry",
    tag = "ota",
    params(
        ("id" = Uuid, Path, description = "Task id"),
        ("device_id" = Uuid, Path, description = "Device id"),
    ),
    responses(
        (status = 200, description = "The device's detail, informed again", body = DetailView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing ota:write", body = ErrorBody),
        (status = 404, description = "No such task in the tenant, or the device is not in it (or was deleted)", body = ErrorBody),
        (status = 409, description = "The device is still under way or succeeded", body = ErrorBody),
        (status = 422, description = "The task's package has no file any more", body = ErrorBody),
    ),
    security(("bearer" = ["ota:write"]), ("api_key" = ["ota:write"]))
)]
pub(crate) async fn retry_task_device(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    IdDevicePath(id, device): IdDevicePath,
) -> ApiResult<axum::Json<DetailView>> {
    caller.require(Permission::OtaWrite)?;
    let task = load_task(&state, &caller, id).await?;
    let d = load_detail(&state, &caller, task.id, device).await?;
    if !matches!(d.state, OtaState::Failed | OtaState::Cancelled) {
        return Err(tp_core::Error::Conflict(format!(
            "only a failed or cancelled device can be retried; it is {}",
            d.state.as_str()
        ))
        .into());
    }
    if state
        .metadata
        .get_device(caller.tenant_id, device)
        .await?
        .is_none()
    {
        return Err(tp_core::Error::not_found("device", device).into());
    }
    let d = retry(&state, &caller, &headers, &task, d).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "ota_task.retry_device",
        "ota_task",
        task.id,
        serde_json::json!({"device_id": device}),
    )
    .await;
    Ok(axum::Json(d.into()))
}
