//! `/api/v1/roles` (role:manage) and `/api/v1/api-keys` (apikey:manage).

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::{ApiKey, ApiKeyId, CustomRole, Role, RoleId, hash_secret, now_ms, random_token};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{IdPath, Json, Query};
use super::support::{PageQuery, audit, page_of, valid_name};
use crate::auth::{Caller, Principal, forget_role, role_permissions};
use crate::authz::{Permission, Permissions};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// A custom role.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RoleView {
    /// Role id.
    id: Uuid,
    /// Name, unique in the tenant.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Granted permissions (`device:read`, `device:write`, `device:command`,
    /// `alarm:ack`, `user:manage`, `role:manage`, `apikey:manage`, `group:write`,
    /// `profile:write`, `audit:read`).
    permissions: Vec<String>,
    /// Creation time (ms).
    created_at: i64,
}

impl From<CustomRole> for RoleView {
    fn from(r: CustomRole) -> Self {
        Self {
            id: r.id.0,
            name: r.name,
            permissions: r.permissions,
            created_at: r.created_at,
        }
    }
}

/// A page of roles.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RoleList {
    /// The page, by name.
    items: Vec<RoleView>,
    /// All roles of the tenant.
    total: u64,
}

/// A new custom role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRoleRequest {
    /// Name, unique in the tenant.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Permission names; each must be known and held by the caller.
    #[schema(value_type = Vec<super::names::PermissionName>)]
    permissions: Vec<String>,
}

/// Changes to a role; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateRoleRequest {
    /// Name, unique in the tenant.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: Option<String>,
    /// Permission names replacing the current ones.
    #[serde(default)]
    #[schema(value_type = Option<Vec<super::names::PermissionName>>)]
    permissions: Option<Vec<String>>,
}

/// Parses permission names and checks the caller holds them all.
fn grantable(caller: &Caller, names: &[String]) -> ApiResult<Permissions> {
    let set = Permissions::parse(names)?;
    if !caller.permissions.contains(set) {
        return Err(ApiError::forbidden(
            "cannot grant permissions the caller does not have",
        ));
    }
    Ok(set)
}

async fn load_role(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<CustomRole> {
    state
        .access
        .get_role(caller.tenant_id, RoleId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("role", id).into())
}

/// Creates a custom role.
#[utoipa::path(
    post,
    path = "/roles",
    tag = "roles",
    request_body = CreateRoleRequest,
    responses(
        (status = 201, description = "Created", body = RoleView),
        (status = 400, description = "Invalid input or unknown permission", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing role:manage, or granting a permission the caller lacks", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
    ),
    security(("bearer" = ["role:manage"]), ("api_key" = ["role:manage"]))
)]
pub(crate) async fn create_role(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<CreateRoleRequest>,
) -> ApiResult<(StatusCode, axum::Json<RoleView>)> {
    caller.require(Permission::RoleManage)?;
    let name = valid_name("name", &req.name)?;
    let permissions = grantable(&caller, &req.permissions)?;
    let role = CustomRole {
        id: RoleId::new(),
        tenant_id: caller.tenant_id,
        name,
        permissions: permissions.names(),
        created_at: now_ms(),
    };
    state.access.create_role(&role).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "role.create",
        "role",
        role.id,
        serde_json::json!({"name": role.name, "permissions": role.permissions}),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(role.into())))
}

/// Lists the tenant's custom roles by name.
#[utoipa::path(
    get,
    path = "/roles",
    tag = "roles",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of roles", body = RoleList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing role:manage", body = ErrorBody),
    ),
    security(("bearer" = ["role:manage"]), ("api_key" = ["role:manage"]))
)]
pub(crate) async fn list_roles(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<RoleList>> {
    caller.require(Permission::RoleManage)?;
    let paged = state
        .access
        .list_roles(caller.tenant_id, page_of(q.page, q.page_size)?)
        .await?;
    Ok(axum::Json(RoleList {
        items: paged.items.into_iter().map(RoleView::from).collect(),
        total: paged.total,
    }))
}

/// One custom role.
#[utoipa::path(
    get,
    path = "/roles/{id}",
    tag = "roles",
    params(("id" = Uuid, Path, description = "Role id")),
    responses(
        (status = 200, description = "The role", body = RoleView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing role:manage", body = ErrorBody),
        (status = 404, description = "No such role in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["role:manage"]), ("api_key" = ["role:manage"]))
)]
pub(crate) async fn get_role(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<RoleView>> {
    caller.require(Permission::RoleManage)?;
    Ok(axum::Json(load_role(&state, &caller, id).await?.into()))
}

/// Renames a role or replaces its permissions (effective at once for its users and keys).
#[utoipa::path(
    patch,
    path = "/roles/{id}",
    tag = "roles",
    params(("id" = Uuid, Path, description = "Role id")),
    request_body = UpdateRoleRequest,
    responses(
        (status = 200, description = "The updated role", body = RoleView),
        (status = 400, description = "Invalid input or unknown permission", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing role:manage, or granting a permission the caller lacks", body = ErrorBody),
        (status = 404, description = "No such role in the tenant", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
    ),
    security(("bearer" = ["role:manage"]), ("api_key" = ["role:manage"]))
)]
pub(crate) async fn update_role(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<UpdateRoleRequest>,
) -> ApiResult<axum::Json<RoleView>> {
    caller.require(Permission::RoleManage)?;
    let name = req
        .name
        .as_deref()
        .map(|n| valid_name("name", n))
        .transpose()?;
    let permissions = req
        .permissions
        .as_deref()
        .map(|p| grantable(&caller, p))
        .transpose()?;
    let mut role = load_role(&state, &caller, id).await?;
    if let Some(name) = name {
        role.name = name;
    }
    if let Some(p) = permissions {
        role.permissions = p.names();
    }
    state.access.update_role(&role).await?;
    forget_role(&state, role.id).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "role.update",
        "role",
        role.id,
        serde_json::json!({"name": role.name, "permissions": role.permissions}),
    )
    .await;
    Ok(axum::Json(role.into()))
}

/// Deletes a custom role that no user or API key uses.
#[utoipa::path(
    delete,
    path = "/roles/{id}",
    tag = "roles",
    params(("id" = Uuid, Path, description = "Role id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing role:manage", body = ErrorBody),
        (status = 404, description = "No such role in the tenant", body = ErrorBody),
        (status = 409, description = "Users or API keys still use it", body = ErrorBody),
    ),
    security(("bearer" = ["role:manage"]), ("api_key" = ["role:manage"]))
)]
pub(crate) async fn delete_role(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::RoleManage)?;
    let role = load_role(&state, &caller, id).await?;
    state.access.delete_role(caller.tenant_id, role.id).await?;
    forget_role(&state, role.id).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "role.delete",
        "role",
        role.id,
        serde_json::json!({"name": role.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// An API key (never the key itself, which is shown once at creation).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ApiKeyView {
    /// Key id.
    id: Uuid,
    /// Display name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// `TENANT_ADMIN` or `TENANT_USER`.
    role: String,
    /// Custom role adding permissions, if any.
    role_id: Option<Uuid>,
    /// Who created it.
    created_by: Uuid,
    /// Creation time (ms).
    created_at: i64,
    /// Refused after this time (ms), if set.
    expires_at: Option<i64>,
}

impl From<&ApiKey> for ApiKeyView {
    fn from(k: &ApiKey) -> Self {
        Self {
            id: k.id.0,
            name: k.name.clone(),
            role: k.role.as_str().to_owned(),
            role_id: k.role_id.map(|r| r.0),
            created_by: k.created_by.0,
            created_at: k.created_at,
            expires_at: k.expires_at,
        }
    }
}

/// A key just created, with the key itself (shown only here).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedApiKey {
    /// The key.
    #[serde(flatten)]
    info: ApiKeyView,
    /// Send as `X-API-Key`; not stored, cannot be shown again.
    key: String,
}

/// A page of API keys.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ApiKeyList {
    /// The page, newest first.
    items: Vec<ApiKeyView>,
    /// All keys of the tenant.
    total: u64,
}

/// A new API key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateApiKeyRequest {
    /// Display name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// `TENANT_USER` (default) or `TENANT_ADMIN`.
    #[serde(default)]
    #[schema(value_type = Option<super::names::TenantRoleName>)]
    role: Option<String>,
    /// Custom role of the tenant adding permissions.
    #[serde(default)]
    role_id: Option<Uuid>,
    /// Refuse the key after this time (ms since the epoch); must be in the future.
    #[serde(default)]
    #[serde(deserialize_with = "tp_core::serde_int::optional")]
    expires_at: Option<i64>,
}

/// Creates an API key of the caller's tenant; the key is in the response only.
#[utoipa::path(
    post,
    path = "/api-keys",
    tag = "api-keys",
    request_body = CreateApiKeyRequest,
    responses(
        (status = 201, description = "Created; `key` is shown only here", body = CreatedApiKey),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing apikey:manage, or the key would have rights the caller lacks", body = ErrorBody),
    ),
    security(("bearer" = ["apikey:manage"]), ("api_key" = ["apikey:manage"]))
)]
pub(crate) async fn create_api_key(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, axum::Json<CreatedApiKey>)> {
    caller.require(Permission::ApiKeyManage)?;
    let name = valid_name("name", &req.name)?;
    let role = match req.role.as_deref().map(str::parse::<Role>).transpose()? {
        None => Role::TenantUser,
        Some(Role::SysAdmin) => {
            return Err(ApiError::invalid(
                "role",
                "must be TENANT_ADMIN or TENANT_USER",
            ));
        }
        Some(r) => r,
    };
    if req.expires_at.is_some_and(|t| t <= now_ms()) {
        return Err(ApiError::unprocessable(
            "expires_at",
            "must be in the future",
        ));
    }
    // A key minting keys cannot escape its own expiry.
    if let Principal::ApiKey {
        expires_at: Some(own),
        ..
    } = caller.principal
        && req.expires_at.is_none_or(|t| t > own)
    {
        return Err(ApiError::invalid(
            "expires_at",
            "a key created with an API key must expire no later than that key",
        ));
    }
    let role_id = match req.role_id {
        Some(id) => Some(
            state
                .access
                .get_role(caller.tenant_id, RoleId(id))
                .await?
                .ok_or_else(|| ApiError::unprocessable("role_id", "no such role in the tenant"))?
                .id,
        ),
        None => None,
    };
    let custom = role_permissions(&state, caller.tenant_id, role_id).await?;
    caller.require_may_grant(role, custom)?;
    let secret = format!("tpk_{}", random_token(24));
    let key = ApiKey {
        id: ApiKeyId::new(),
        tenant_id: caller.tenant_id,
        name,
        key_hash: hash_secret(&secret),
        role,
        role_id,
        created_by: caller.responsible_user(),
        created_at: now_ms(),
        expires_at: req.expires_at,
    };
    state.access.create_api_key(&key).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "api_key.create",
        "api_key",
        key.id,
        serde_json::json!({"name": key.name, "role": role.as_str(), "role_id": role_id, "expires_at": key.expires_at}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedApiKey {
            info: (&key).into(),
            key: secret,
        }),
    ))
}

/// Lists the tenant's API keys, newest first.
#[utoipa::path(
    get,
    path = "/api-keys",
    tag = "api-keys",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of keys", body = ApiKeyList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing apikey:manage", body = ErrorBody),
    ),
    security(("bearer" = ["apikey:manage"]), ("api_key" = ["apikey:manage"]))
)]
pub(crate) async fn list_api_keys(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<ApiKeyList>> {
    caller.require(Permission::ApiKeyManage)?;
    let paged = state
        .access
        .list_api_keys(caller.tenant_id, page_of(q.page, q.page_size)?)
        .await?;
    Ok(axum::Json(ApiKeyList {
        items: paged.items.iter().map(ApiKeyView::from).collect(),
        total: paged.total,
    }))
}

/// Revokes an API key at once.
#[utoipa::path(
    delete,
    path = "/api-keys/{id}",
    tag = "api-keys",
    params(("id" = Uuid, Path, description = "API key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing apikey:manage", body = ErrorBody),
        (status = 404, description = "No such key in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["apikey:manage"]), ("api_key" = ["apikey:manage"]))
)]
pub(crate) async fn delete_api_key(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::ApiKeyManage)?;
    state
        .access
        .delete_api_key(caller.tenant_id, ApiKeyId(id))
        .await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "api_key.delete",
        "api_key",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
