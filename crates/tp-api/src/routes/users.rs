//! `/api/v1/users` (user:manage) and `/api/v1/tenants` (SYS_ADMIN).

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use tp_core::{Role, RoleId, Tenant, TenantId, User, UserId, now_ms};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{IdPath, Json, Query};
use super::support::{PageQuery, audit, page_of, valid_name};
use crate::auth::{
    Caller, forget_user, hash_password, normalize_email, revoke_user_sessions, role_permissions,
    validate_password,
};
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::{AppState, device_cred_cache_key};

/// A user, without credentials.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserView {
    /// User id.
    id: Uuid,
    /// Owning tenant.
    tenant_id: Uuid,
    /// Email address (lower-case).
    email: String,
    /// Display name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// `SYS_ADMIN`, `TENANT_ADMIN` or `TENANT_USER`.
    role: String,
    /// Custom role adding permissions, if any.
    role_id: Option<Uuid>,
    /// Creation time (ms).
    created_at: i64,
}

impl UserView {
    fn new(u: User, role_id: Option<RoleId>) -> Self {
        Self {
            id: u.id.0,
            tenant_id: u.tenant_id.0,
            email: u.email,
            name: u.name,
            role: u.role.as_str().to_owned(),
            role_id: role_id.map(|r| r.0),
            created_at: u.created_at,
        }
    }
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserList {
    /// The page, oldest first.
    items: Vec<UserView>,
    /// All users of the tenant.
    total: u64,
}

/// New user of the caller's tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUserRequest {
    /// Email address, unique installation-wide: 3 to 255 characters with an `@`
    /// (surrounding blanks are trimmed; stored lower-case).
    #[schema(
        min_length = 3,
        max_length = 255,
        pattern = r"^\s*[^\s@]+@[^\s@]+\s*$",
        example = "ops@example.com"
    )]
    email: String,
    /// Display name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Password, 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    /// `TENANT_USER` (default) or `TENANT_ADMIN`.
    #[serde(default)]
    #[schema(value_type = Option<super::names::TenantRoleName>)]
    role: Option<String>,
    /// Custom role of the tenant adding permissions.
    #[serde(default)]
    role_id: Option<Uuid>,
}

/// Changes to a user; absent fields stay, `"role_id": null` removes the custom role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateUserRequest {
    /// Display name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: Option<String>,
    /// New password, 8 to 1024 characters (revokes the user's sessions).
    #[serde(default)]
    #[schema(min_length = 8, max_length = 1024)]
    password: Option<String>,
    /// `TENANT_USER` or `TENANT_ADMIN`.
    #[serde(default)]
    #[schema(value_type = Option<super::names::TenantRoleName>)]
    role: Option<String>,
    /// Custom role; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>, nullable)]
    role_id: Option<Option<Uuid>>,
}

pub(crate) fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A tenant.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TenantView {
    /// Tenant id.
    id: Uuid,
    /// Display name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Creation time (ms).
    created_at: i64,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id.0,
            name: t.name,
            created_at: t.created_at,
        }
    }
}

/// A page of tenants.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TenantList {
    /// The page, oldest first.
    items: Vec<TenantView>,
    /// All tenants.
    total: u64,
}

/// A tenant's name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantRequest {
    /// Display name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
}

/// A new tenant admin.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateAdminRequest {
    /// Email address, unique installation-wide: 3 to 255 characters with an `@`
    /// (surrounding blanks are trimmed; stored lower-case).
    #[schema(
        min_length = 3,
        max_length = 255,
        pattern = r"^\s*[^\s@]+@[^\s@]+\s*$",
        example = "ops@example.com"
    )]
    email: String,
    /// Display name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Password, 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
}

fn tenant_role(raw: Option<&str>) -> ApiResult<Role> {
    match raw.map(str::parse::<Role>).transpose()? {
        None => Ok(Role::TenantUser),
        Some(Role::SysAdmin) => Err(ApiError::invalid(
            "role",
            "must be TENANT_ADMIN or TENANT_USER",
        )),
        Some(r) => Ok(r),
    }
}

/// The document's email pattern: one `@` with something on both sides, no blanks
/// ([`super::support::is_blank`]) inside; blanks around it are trimmed.
fn valid_email(email: &str) -> ApiResult<String> {
    let blank = super::support::is_blank;
    let trimmed = email.trim_matches(blank);
    let ok = (3..=255).contains(&email.chars().count())
        && trimmed.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !trimmed.chars().any(blank);
    if !ok {
        return Err(ApiError::invalid("email", "must be an email address"));
    }
    Ok(normalize_email(trimmed))
}

/// A custom role of the tenant; an unknown id is a 400 naming `role_id`.
async fn existing_role(state: &AppState, tenant: TenantId, id: Uuid) -> ApiResult<RoleId> {
    let id = RoleId(id);
    state
        .access
        .get_role(tenant, id)
        .await?
        .map(|r| r.id)
        .ok_or_else(|| ApiError::unprocessable("role_id", "no such role in the tenant"))
}

/// Creates a user after the caller's checks; returns it with its custom role.
async fn insert_user(
    state: &AppState,
    tenant: TenantId,
    email: &str,
    name: &str,
    password: String,
    role: Role,
    role_id: Option<RoleId>,
) -> ApiResult<User> {
    let email = valid_email(email)?;
    let name = valid_name("name", name)?;
    validate_password("password", &password)?;
    let permit = state.auth.hash_permit()?;
    let password_hash = hash_password(password).await?;
    drop(permit);
    let user = User {
        id: UserId::new(),
        tenant_id: tenant,
        email,
        name,
        password_hash,
        role,
        created_at: now_ms(),
    };
    state.metadata.create_user(&user).await?;
    if role_id.is_some() {
        state.access.set_user_role(tenant, user.id, role_id).await?;
    }
    Ok(user)
}

/// A user of the caller's tenant, or 404.
async fn load_user(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<User> {
    state
        .metadata
        .get_user(UserId(id))
        .await?
        .filter(|u| u.tenant_id == caller.tenant_id)
        .ok_or_else(|| tp_core::Error::not_found("user", id).into())
}

/// Creates a user of the caller's tenant.
#[utoipa::path(
    post,
    path = "/users",
    tag = "users",
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing user:manage, or the role grants more than the caller has", body = ErrorBody),
        (status = 409, description = "Email taken", body = ErrorBody),
    ),
    security(("bearer" = ["user:manage"]), ("api_key" = ["user:manage"]))
)]
pub(crate) async fn create_user(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<CreateUserRequest>,
) -> ApiResult<(StatusCode, axum::Json<UserView>)> {
    caller.require(Permission::UserManage)?;
    let role = tenant_role(req.role.as_deref())?;
    let role_id = match req.role_id {
        Some(id) => Some(existing_role(&state, caller.tenant_id, id).await?),
        None => None,
    };
    let custom = role_permissions(&state, caller.tenant_id, role_id).await?;
    caller.require_may_grant(role, custom)?;
    let user = insert_user(
        &state,
        caller.tenant_id,
        &req.email,
        &req.name,
        req.password,
        role,
        role_id,
    )
    .await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "user.create",
        "user",
        user.id,
        serde_json::json!({"email": user.email, "role": role.as_str(), "role_id": role_id}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        axum::Json(UserView::new(user, role_id)),
    ))
}

/// Lists the tenant's users, oldest first.
#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of users", body = UserList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing user:manage", body = ErrorBody),
    ),
    security(("bearer" = ["user:manage"]), ("api_key" = ["user:manage"]))
)]
pub(crate) async fn list_users(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<UserList>> {
    caller.require(Permission::UserManage)?;
    let page = page_of(q.page, q.page_size)?;
    let paged = state.metadata.list_users(caller.tenant_id, page).await?;
    let mut items = Vec::with_capacity(paged.items.len());
    for u in paged.items {
        let role_id = state.access.get_user_role(caller.tenant_id, u.id).await?;
        items.push(UserView::new(u, role_id));
    }
    Ok(axum::Json(UserList {
        items,
        total: paged.total,
    }))
}

/// One user of the tenant.
#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing user:manage", body = ErrorBody),
        (status = 404, description = "No such user in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["user:manage"]), ("api_key" = ["user:manage"]))
)]
pub(crate) async fn get_user(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<UserView>> {
    caller.require(Permission::UserManage)?;
    let user = load_user(&state, &caller, id).await?;
    let role_id = state
        .access
        .get_user_role(caller.tenant_id, user.id)
        .await?;
    Ok(axum::Json(UserView::new(user, role_id)))
}

/// Changes a user's name, password, role or custom role.
#[utoipa::path(
    patch,
    path = "/users/{id}",
    tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The updated user", body = UserView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing user:manage, or the user or new role has more rights than the caller", body = ErrorBody),
        (status = 404, description = "No such user in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["user:manage"]), ("api_key" = ["user:manage"]))
)]
pub(crate) async fn update_user(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<UpdateUserRequest>,
) -> ApiResult<axum::Json<UserView>> {
    caller.require(Permission::UserManage)?;
    let mut user = load_user(&state, &caller, id).await?;
    let old_role_id = state
        .access
        .get_user_role(caller.tenant_id, user.id)
        .await?;
    let old_custom = role_permissions(&state, caller.tenant_id, old_role_id).await?;
    caller.require_may_grant(user.role, old_custom)?;
    let name = req
        .name
        .as_deref()
        .map(|n| valid_name("name", n))
        .transpose()?;
    let role = match req.role.as_deref() {
        Some(r) if user.role == Role::SysAdmin && r == Role::SysAdmin.as_str() => {
            Some(Role::SysAdmin)
        }
        Some(r) => Some(tenant_role(Some(r))?),
        None => None,
    };
    if let Some(p) = &req.password {
        // A stolen token must not be enough to take the account over and sign its
        // owner out: one's own password changes through PUT /auth/password, which
        // asks for the current one.
        if caller.user_id() == Some(user.id) {
            return Err(ApiError::unprocessable(
                "password",
                "change your own password with PUT /api/v1/auth/password (it asks for the current one)",
            ));
        }
        validate_password("password", p)?;
    }
    let role_id = match req.role_id {
        Some(Some(r)) => Some(Some(existing_role(&state, caller.tenant_id, r).await?)),
        Some(None) => Some(None),
        None => None,
    };
    let new_role = role.unwrap_or(user.role);
    let new_role_id = role_id.unwrap_or(old_role_id);
    let new_custom = role_permissions(&state, caller.tenant_id, new_role_id).await?;
    caller.require_may_grant(new_role, new_custom)?;
    if let Some(name) = name {
        user.name = name;
    }
    user.role = new_role;
    let password_changed = req.password.is_some();
    if let Some(p) = req.password {
        let _permit = state.auth.hash_permit()?;
        user.password_hash = hash_password(p).await?;
    }
    state.metadata.update_user(&user).await?;
    if new_role_id != old_role_id {
        state
            .access
            .set_user_role(caller.tenant_id, user.id, new_role_id)
            .await?;
    }
    if password_changed {
        revoke_user_sessions(&state, user.id).await?;
    } else {
        forget_user(&state, user.id).await?;
    }
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "user.update",
        "user",
        user.id,
        serde_json::json!({
            "name": user.name,
            "role": user.role.as_str(),
            "role_id": new_role_id,
            "password_changed": password_changed,
        }),
    )
    .await;
    Ok(axum::Json(UserView::new(user, new_role_id)))
}

/// Deletes a user of the tenant; its tokens stop working on every node.
#[utoipa::path(
    delete,
    path = "/users/{id}",
    tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing user:manage, or the user has more rights than the caller", body = ErrorBody),
        (status = 404, description = "No such user in the tenant", body = ErrorBody),
        (status = 409, description = "Deleting oneself", body = ErrorBody),
    ),
    security(("bearer" = ["user:manage"]), ("api_key" = ["user:manage"]))
)]
pub(crate) async fn delete_user(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::UserManage)?;
    let user = load_user(&state, &caller, id).await?;
    let role_id = state
        .access
        .get_user_role(caller.tenant_id, user.id)
        .await?;
    let custom = role_permissions(&state, caller.tenant_id, role_id).await?;
    caller.require_may_grant(user.role, custom)?;
    if caller.user_id() == Some(user.id) {
        return Err(tp_core::Error::Conflict("users cannot delete themselves".into()).into());
    }
    state
        .metadata
        .delete_user(caller.tenant_id, user.id)
        .await?;
    revoke_user_sessions(&state, user.id).await?;
    // Its API keys already stop working (a key acts for a creator that must exist);
    // they also leave the tenant's key list.
    let revoked_keys = delete_keys_created_by(&state, caller.tenant_id, user.id).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "user.delete",
        "user",
        user.id,
        serde_json::json!({"email": user.email, "api_keys_revoked": revoked_keys}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the tenant's API keys created by `user`; returns how many.
async fn delete_keys_created_by(
    state: &AppState,
    tenant: TenantId,
    user: UserId,
) -> ApiResult<usize> {
    let mut doomed = Vec::new();
    let mut offset = 0;
    loop {
        let page = state
            .access
            .list_api_keys(tenant, tp_core::Page { limit: 500, offset })
            .await?;
        let n = page.items.len() as u64;
        doomed.extend(
            page.items
                .into_iter()
                .filter(|k| k.created_by == user)
                .map(|k| k.id),
        );
        offset += n;
        if n == 0 || offset >= page.total {
            break;
        }
    }
    for key in &doomed {
        state.access.delete_api_key(tenant, *key).await?;
    }
    Ok(doomed.len())
}

async fn load_tenant(state: &AppState, id: Uuid) -> ApiResult<Tenant> {
    state
        .metadata
        .get_tenant(TenantId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("tenant", id).into())
}

/// Creates a tenant.
#[utoipa::path(
    post,
    path = "/tenants",
    tag = "tenants",
    request_body = TenantRequest,
    responses(
        (status = 201, description = "Created", body = TenantView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Not a SYS_ADMIN", body = ErrorBody),
    ),
    security(("bearer" = ["SYS_ADMIN"]))
)]
pub(crate) async fn create_tenant(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<TenantRequest>,
) -> ApiResult<(StatusCode, axum::Json<TenantView>)> {
    caller.require_sys_admin()?;
    let tenant = Tenant {
        id: TenantId::new(),
        name: valid_name("name", &req.name)?,
        created_at: now_ms(),
    };
    state.metadata.create_tenant(&tenant).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "tenant.create",
        "tenant",
        tenant.id,
        serde_json::json!({"name": tenant.name}),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(tenant.into())))
}

/// Lists tenants, oldest first.
#[utoipa::path(
    get,
    path = "/tenants",
    tag = "tenants",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of tenants", body = TenantList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Not a SYS_ADMIN", body = ErrorBody),
    ),
    security(("bearer" = ["SYS_ADMIN"]))
)]
pub(crate) async fn list_tenants(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<TenantList>> {
    caller.require_sys_admin()?;
    let paged = state
        .metadata
        .list_tenants(page_of(q.page, q.page_size)?)
        .await?;
    Ok(axum::Json(TenantList {
        items: paged.items.into_iter().map(TenantView::from).collect(),
        total: paged.total,
    }))
}

/// One tenant.
#[utoipa::path(
    get,
    path = "/tenants/{id}",
    tag = "tenants",
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Not a SYS_ADMIN", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
    security(("bearer" = ["SYS_ADMIN"]))
)]
pub(crate) async fn get_tenant(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<TenantView>> {
    caller.require_sys_admin()?;
    Ok(axum::Json(load_tenant(&state, id).await?.into()))
}

/// Renames a tenant.
#[utoipa::path(
    patch,
    path = "/tenants/{id}",
    tag = "tenants",
    params(("id" = Uuid, Path, description = "Tenant id")),
    request_body = TenantRequest,
    responses(
        (status = 200, description = "The renamed tenant", body = TenantView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Not a SYS_ADMIN", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
    security(("bearer" = ["SYS_ADMIN"]))
)]
pub(crate) async fn update_tenant(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<TenantRequest>,
) -> ApiResult<axum::Json<TenantView>> {
    caller.require_sys_admin()?;
    let name = valid_name("name", &req.name)?;
    let mut tenant = load_tenant(&state, id).await?;
    tenant.name = name;
    state.access.update_tenant(&tenant).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "tenant.update",
        "tenant",
        tenant.id,
        serde_json::json!({"name": tenant.name}),
    )
    .await;
    Ok(axum::Json(tenant.into()))
}

/// Deletes a tenant with everything in it; its users' tokens and its devices'
/// cached MQTT logins stop working at once.
#[utoipa::path(
    delete,
    path = "/tenants/{id}",
    tag = "tenants",
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Not a SYS_ADMIN", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The caller's own tenant", body = ErrorBody),
    ),
    security(("bearer" = ["SYS_ADMIN"]))
)]
pub(crate) async fn delete_tenant(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require_sys_admin()?;
    let tenant = load_tenant(&state, id).await?;
    if tenant.id == caller.tenant_id {
        return Err(
            tp_core::Error::Conflict("cannot delete the caller's own tenant".into()).into(),
        );
    }
    let mut users = Vec::new();
    let mut page = tp_core::Page {
        offset: 0,
        limit: 500,
    };
    loop {
        let batch = state.metadata.list_users(tenant.id, page).await?;
        let n = batch.items.len() as u64;
        users.extend(batch.items.into_iter().map(|u| u.id));
        if n < page.limit {
            break;
        }
        page.offset += n;
    }
    let mut usernames = Vec::new();
    let mut filter = tp_core::DeviceFilter::default();
    filter.page.limit = 500;
    loop {
        let batch = state.metadata.list_devices(tenant.id, &filter).await?;
        let n = batch.items.len() as u64;
        usernames.extend(
            batch
                .items
                .into_iter()
                .map(|d| (d.id, d.credentials.username)),
        );
        if n < filter.page.limit {
            break;
        }
        filter.page.offset += n;
    }
    state.access.delete_tenant(tenant.id).await?;
    for user in users {
        revoke_user_sessions(&state, user).await?;
    }
    for (device_id, username) in usernames {
        state
            .cache
            .delete(&device_cred_cache_key(&username))
            .await?;
        if let Some(transport) = state.transport() {
            transport.disconnect(device_id).await;
        }
    }
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "tenant.delete",
        "tenant",
        tenant.id,
        serde_json::json!({"name": tenant.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a `TENANT_ADMIN` of a tenant.
#[utoipa::path(
    post,
    path = "/tenants/{id}/admins",
    tag = "tenants",
    params(("id" = Uuid, Path, description = "Tenant id")),
    request_body = CreateAdminRequest,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Not a SYS_ADMIN", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "Email taken", body = ErrorBody),
    ),
    security(("bearer" = ["SYS_ADMIN"]))
)]
pub(crate) async fn create_tenant_admin(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<CreateAdminRequest>,
) -> ApiResult<(StatusCode, axum::Json<UserView>)> {
    caller.require_sys_admin()?;
    let tenant = load_tenant(&state, id).await?;
    let user = insert_user(
        &state,
        tenant.id,
        &req.email,
        &req.name,
        req.password,
        Role::TenantAdmin,
        None,
    )
    .await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "user.create",
        "user",
        user.id,
        serde_json::json!({"email": user.email, "role": Role::TenantAdmin.as_str(), "tenant_id": tenant.id}),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(UserView::new(user, None))))
}
