//! `/api/v1/profiles` (profile:write to change, device:read to read) and
//! `/api/v1/audit` (audit:read).

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::thing_model::TemplateId;
use tp_core::{
    AuditEntry, DeviceProfile, DeviceType, ProfileId, VoucherType, hash_secret, now_ms,
    random_token,
};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{IdPath, Json, Query};
use super::support::{PageQuery, audit, page_of, valid_name};
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// A device profile (never the provisioning secret's hash).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProfileView {
    /// Profile id.
    id: Uuid,
    /// Name, unique in the tenant.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// `direct`, `gateway` or `sub_device`.
    #[schema(example = "direct")]
    device_type: String,
    /// Offline after this many seconds without any message.
    heartbeat_secs: Option<u32>,
    /// Connection state honoured, plus offline after this silence.
    online_timeout_secs: Option<u32>,
    /// Whether devices may self-register with the profile secret.
    auto_register: bool,
    /// Whether a provisioning secret is set.
    has_provision_secret: bool,
    /// How devices created in the profile authenticate unless told otherwise:
    /// `BASIC` (username and password) or `ACCESSTOKEN` (a token as the username alone).
    #[schema(example = "BASIC")]
    voucher_type: String,
    /// The device template (thing model) of the profile's devices.
    template_id: Option<Uuid>,
    /// The provisioning secret, only in the response that generated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    provision_secret: Option<String>,
    /// Creation time (ms).
    created_at: i64,
}

impl ProfileView {
    fn new(p: DeviceProfile, secret: Option<String>) -> Self {
        Self {
            id: p.id.0,
            name: p.name,
            device_type: device_type_name(p.device_type).to_owned(),
            heartbeat_secs: p.heartbeat_secs,
            online_timeout_secs: p.online_timeout_secs,
            auto_register: p.auto_register,
            has_provision_secret: p.provision_secret_hash.is_some(),
            voucher_type: p.voucher_type.as_str().to_owned(),
            template_id: p.template_id.map(|t| t.0),
            provision_secret: secret,
            created_at: p.created_at,
        }
    }
}

fn device_type_name(t: DeviceType) -> &'static str {
    match t {
        DeviceType::Direct => "direct",
        DeviceType::Gateway => "gateway",
        DeviceType::SubDevice => "sub_device",
    }
}

fn parse_device_type(s: &str) -> ApiResult<DeviceType> {
    Ok(match s {
        "direct" => DeviceType::Direct,
        "gateway" => DeviceType::Gateway,
        "sub_device" => DeviceType::SubDevice,
        other => {
            return Err(ApiError::invalid(
                "device_type",
                format!("{other:?} is not one of direct, gateway, sub_device"),
            ));
        }
    })
}

/// `BASIC` or `ACCESSTOKEN`, or a 400 naming `voucher_type`.
pub(crate) fn parse_voucher_type(s: &str) -> ApiResult<VoucherType> {
    Ok(s.parse::<VoucherType>()?)
}

/// A page of profiles.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProfileList {
    /// The page, by name.
    items: Vec<ProfileView>,
    /// All profiles of the tenant.
    total: u64,
}

/// A new profile.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateProfileRequest {
    /// Name, unique in the tenant.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// `direct` (default), `gateway` or `sub_device`.
    #[serde(default)]
    #[schema(value_type = Option<super::names::DeviceTypeName>)]
    device_type: Option<String>,
    /// Heartbeat timeout in seconds (at most 30 days).
    #[serde(default)]
    #[schema(maximum = 2592000)]
    #[serde(deserialize_with = "tp_core::serde_int::optional")]
    heartbeat_secs: Option<u32>,
    /// Online timeout in seconds (at most 30 days).
    #[serde(default)]
    #[schema(maximum = 2592000)]
    #[serde(deserialize_with = "tp_core::serde_int::optional")]
    online_timeout_secs: Option<u32>,
    /// Let devices self-register; generates a provisioning secret shown once.
    #[serde(default)]
    auto_register: bool,
    /// `BASIC` (default) or `ACCESSTOKEN`: the voucher type of devices created in
    /// the profile unless their request names one.
    #[serde(default)]
    #[schema(value_type = Option<super::names::VoucherTypeName>)]
    voucher_type: Option<String>,
    /// A device template of the tenant: its thing model types the devices' data.
    #[serde(default)]
    template_id: Option<Uuid>,
}

/// Changes to a profile; absent fields stay, `null` clears a timeout.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateProfileRequest {
    /// Name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: Option<String>,
    /// `direct`, `gateway` or `sub_device`.
    #[serde(default)]
    #[schema(value_type = Option<super::names::DeviceTypeName>)]
    device_type: Option<String>,
    /// Heartbeat timeout in seconds; `null` clears it.
    #[serde(default, deserialize_with = "tp_core::serde_int::nullable")]
    #[schema(value_type = Option<u32>, nullable, maximum = 2592000)]
    heartbeat_secs: Option<Option<u32>>,
    /// Online timeout in seconds; `null` clears it.
    #[serde(default, deserialize_with = "tp_core::serde_int::nullable")]
    #[schema(value_type = Option<u32>, nullable, maximum = 2592000)]
    online_timeout_secs: Option<Option<u32>>,
    /// Self-registration; turning it on without a secret generates one (shown once).
    #[serde(default)]
    auto_register: Option<bool>,
    /// Replace the provisioning secret with a new one (shown once).
    #[serde(default)]
    rotate_provision_secret: bool,
    /// `BASIC` or `ACCESSTOKEN` for devices created from now on (existing devices
    /// keep their credentials).
    #[serde(default)]
    #[schema(value_type = Option<super::names::VoucherTypeName>)]
    voucher_type: Option<String>,
    /// A device template of the tenant; `null` detaches the template.
    #[serde(default, deserialize_with = "super::devices::double_option")]
    #[schema(value_type = Option<Uuid>, nullable)]
    template_id: Option<Option<Uuid>>,
}

async fn load_profile(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<DeviceProfile> {
    state
        .access
        .get_profile(caller.tenant_id, ProfileId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("profile", id).into())
}

fn new_secret(profile: &mut DeviceProfile) -> String {
    let secret = random_token(16);
    profile.provision_secret_hash = Some(hash_secret(&secret));
    secret
}

/// Creates a device profile.
#[utoipa::path(
    post,
    path = "/profiles",
    tag = "profiles",
    request_body = CreateProfileRequest,
    responses(
        (status = 201, description = "Created; a generated provisioning secret is shown only here", body = ProfileView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing profile:write", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
    ),
    security(("bearer" = ["profile:write"]), ("api_key" = ["profile:write"]))
)]
pub(crate) async fn create_profile(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<CreateProfileRequest>,
) -> ApiResult<(StatusCode, axum::Json<ProfileView>)> {
    caller.require(Permission::ProfileWrite)?;
    let mut profile = DeviceProfile {
        id: ProfileId::new(),
        tenant_id: caller.tenant_id,
        name: valid_name("name", &req.name)?,
        device_type: req
            .device_type
            .as_deref()
            .map(parse_device_type)
            .transpose()?
            .unwrap_or_default(),
        heartbeat_secs: timeout_secs("heartbeat_secs", req.heartbeat_secs)?,
        online_timeout_secs: timeout_secs("online_timeout_secs", req.online_timeout_secs)?,
        auto_register: req.auto_register,
        provision_secret_hash: None,
        voucher_type: req
            .voucher_type
            .as_deref()
            .map(parse_voucher_type)
            .transpose()?
            .unwrap_or_default(),
        template_id: req.template_id.map(TemplateId),
        created_at: now_ms(),
    };
    let secret = req.auto_register.then(|| new_secret(&mut profile));
    state
        .access
        .create_profile(&profile)
        .await
        .map_err(template_reference)?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "profile.create",
        "profile",
        profile.id,
        serde_json::json!({"name": profile.name, "device_type": device_type_name(profile.device_type)}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        axum::Json(ProfileView::new(profile, secret)),
    ))
}

/// Lists the tenant's profiles by name.
#[utoipa::path(
    get,
    path = "/profiles",
    tag = "profiles",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of profiles", body = ProfileList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn list_profiles(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<ProfileList>> {
    caller.require(Permission::DeviceRead)?;
    let paged = state
        .access
        .list_profiles(caller.tenant_id, page_of(q.page, q.page_size)?)
        .await?;
    Ok(axum::Json(ProfileList {
        items: paged
            .items
            .into_iter()
            .map(|p| ProfileView::new(p, None))
            .collect(),
        total: paged.total,
    }))
}

/// One profile.
#[utoipa::path(
    get,
    path = "/profiles/{id}",
    tag = "profiles",
    params(("id" = Uuid, Path, description = "Profile id")),
    responses(
        (status = 200, description = "The profile", body = ProfileView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such profile in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn get_profile(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<ProfileView>> {
    caller.require(Permission::DeviceRead)?;
    let profile = load_profile(&state, &caller, id).await?;
    Ok(axum::Json(ProfileView::new(profile, None)))
}

/// Changes a profile.
#[utoipa::path(
    patch,
    path = "/profiles/{id}",
    tag = "profiles",
    params(("id" = Uuid, Path, description = "Profile id")),
    request_body = UpdateProfileRequest,
    responses(
        (status = 200, description = "The updated profile; a generated secret is shown only here", body = ProfileView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing profile:write", body = ErrorBody),
        (status = 404, description = "No such profile in the tenant", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
    ),
    security(("bearer" = ["profile:write"]), ("api_key" = ["profile:write"]))
)]
pub(crate) async fn update_profile(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<UpdateProfileRequest>,
) -> ApiResult<axum::Json<ProfileView>> {
    caller.require(Permission::ProfileWrite)?;
    let name = req
        .name
        .as_deref()
        .map(|n| valid_name("name", n))
        .transpose()?;
    let device_type = req
        .device_type
        .as_deref()
        .map(parse_device_type)
        .transpose()?;
    let voucher_type = req
        .voucher_type
        .as_deref()
        .map(parse_voucher_type)
        .transpose()?;
    let mut profile = load_profile(&state, &caller, id).await?;
    if let Some(v) = voucher_type {
        profile.voucher_type = v;
    }
    if let Some(n) = name {
        profile.name = n;
    }
    if let Some(t) = device_type {
        profile.device_type = t;
    }
    if let Some(h) = req.heartbeat_secs {
        profile.heartbeat_secs = timeout_secs("heartbeat_secs", h)?;
    }
    if let Some(o) = req.online_timeout_secs {
        profile.online_timeout_secs = timeout_secs("online_timeout_secs", o)?;
    }
    if let Some(a) = req.auto_register {
        profile.auto_register = a;
    }
    if let Some(t) = req.template_id {
        profile.template_id = t.map(TemplateId);
    }
    let secret = if req.rotate_provision_secret
        || (profile.auto_register && profile.provision_secret_hash.is_none())
    {
        Some(new_secret(&mut profile))
    } else {
        None
    };
    state
        .access
        .update_profile(&profile)
        .await
        .map_err(template_reference)?;
    if let Some(cache) = &state.thing_models {
        cache.invalidate();
    }
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "profile.update",
        "profile",
        profile.id,
        serde_json::json!({
            "name": profile.name,
            "device_type": device_type_name(profile.device_type),
            "auto_register": profile.auto_register,
            "secret_rotated": secret.is_some(),
        }),
    )
    .await;
    Ok(axum::Json(ProfileView::new(profile, secret)))
}

/// Deletes a profile no device uses.
#[utoipa::path(
    delete,
    path = "/profiles/{id}",
    tag = "profiles",
    params(("id" = Uuid, Path, description = "Profile id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing profile:write", body = ErrorBody),
        (status = 404, description = "No such profile in the tenant", body = ErrorBody),
        (status = 409, description = "Devices still use it", body = ErrorBody),
    ),
    security(("bearer" = ["profile:write"]), ("api_key" = ["profile:write"]))
)]
pub(crate) async fn delete_profile(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::ProfileWrite)?;
    let profile = load_profile(&state, &caller, id).await?;
    state
        .access
        .delete_profile(caller.tenant_id, profile.id)
        .await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "profile.delete",
        "profile",
        profile.id,
        serde_json::json!({"name": profile.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// One audit log entry.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditView {
    /// Entry id.
    id: Uuid,
    /// Acting user, if a user acted.
    user_id: Option<Uuid>,
    /// An email or `api-key:<name>`.
    actor: String,
    /// What was done, e.g. `device.create`.
    action: String,
    /// Kind of resource, e.g. `device`.
    resource_type: String,
    /// The resource's id.
    resource_id: String,
    /// Extra facts (never secrets).
    detail: serde_json::Value,
    /// When (ms).
    at: i64,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id.0,
            user_id: e.user_id.map(|u| u.0),
            actor: e.actor,
            action: e.action,
            resource_type: e.resource_type,
            resource_id: e.resource_id,
            detail: e.detail,
            at: e.at,
        }
    }
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditList {
    /// The page, newest first.
    items: Vec<AuditView>,
    /// All entries of the tenant.
    total: u64,
}

/// The tenant's audit log, newest first.
#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the log", body = AuditList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing audit:read", body = ErrorBody),
    ),
    security(("bearer" = ["audit:read"]), ("api_key" = ["audit:read"]))
)]
pub(crate) async fn list_audit(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<AuditList>> {
    caller.require(Permission::AuditRead)?;
    let paged = state
        .access
        .list_audit(caller.tenant_id, page_of(q.page, q.page_size)?)
        .await?;
    Ok(axum::Json(AuditList {
        items: paged.items.into_iter().map(AuditView::from).collect(),
        total: paged.total,
    }))
}

/// A profile naming a template that is not in the tenant is a 422 (a reference
/// the request cannot act on), not a 404 of the profile.
fn template_reference(e: tp_core::Error) -> ApiError {
    match e {
        tp_core::Error::NotFound {
            entity: "template", ..
        } => ApiError::unprocessable("template_id", "no such template in the tenant"),
        e => e.into(),
    }
}

/// Longest heartbeat or online timeout a profile may set: 30 days (the document says
/// so too, so clients and property-based testers see the same bound).
const MAX_TIMEOUT_SECS: u32 = 30 * 86_400;

fn timeout_secs(field: &str, secs: Option<u32>) -> ApiResult<Option<u32>> {
    match secs {
        Some(s) if s > MAX_TIMEOUT_SECS => Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_TIMEOUT_SECS} (30 days)"),
        )),
        other => Ok(other),
    }
}
