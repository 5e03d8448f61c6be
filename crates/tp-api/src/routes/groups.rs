//! `/api/v1/groups`: the tenant's device-group tree (group:write to change,
//! device:read to read).

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::{DeviceGroup, GroupId, now_ms};
use utoipa::ToSchema;
use uuid::Uuid;

use super::devices::{DeviceList, DeviceResponse};
use super::extract::{IdDevicePath, IdPath, Json, Query};
use super::support::{PageQuery, audit, page_of, valid_name};
use super::users::double_option;
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// A device group.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupView {
    /// Group id.
    id: Uuid,
    /// Parent group; `null` for a root.
    parent_id: Option<Uuid>,
    /// Name, unique among siblings.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Free text.
    description: Option<String>,
    /// Creation time (ms).
    created_at: i64,
}

impl From<DeviceGroup> for GroupView {
    fn from(g: DeviceGroup) -> Self {
        Self {
            id: g.id.0,
            parent_id: g.parent_id.map(|p| p.0),
            name: g.name,
            description: g.description,
            created_at: g.created_at,
        }
    }
}

/// Every group of the tenant.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupList {
    /// Groups by name.
    items: Vec<GroupView>,
}

/// A group with its sub-groups.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupNode {
    /// Group id.
    id: Uuid,
    /// Name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Free text.
    description: Option<String>,
    /// Sub-groups by name.
    #[schema(no_recursion)]
    children: Vec<GroupNode>,
}

/// The tenant's group forest.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupTree {
    /// Root groups by name, each with its sub-groups.
    items: Vec<GroupNode>,
}

/// A new group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateGroupRequest {
    /// Name, unique among siblings.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Parent group of the tenant; absent for a root.
    #[serde(default)]
    parent_id: Option<Uuid>,
    /// Free text.
    #[serde(default)]
    description: Option<String>,
}

/// Changes to a group; absent fields stay, `null` clears `parent_id` (making it a
/// root) or `description`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateGroupRequest {
    /// Name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: Option<String>,
    /// New parent; `null` makes the group a root.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>, nullable)]
    parent_id: Option<Option<Uuid>>,
    /// Free text; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable)]
    description: Option<Option<String>>,
}

fn valid_description(d: Option<String>) -> ApiResult<Option<String>> {
    match d {
        Some(d) if d.chars().count() > 1000 => Err(ApiError::invalid(
            "description",
            "must be at most 1000 characters",
        )),
        other => Ok(other),
    }
}

async fn load_group(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<DeviceGroup> {
    state
        .access
        .get_group(caller.tenant_id, GroupId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("group", id).into())
}

/// Creates a group.
#[utoipa::path(
    post,
    path = "/groups",
    tag = "groups",
    request_body = CreateGroupRequest,
    responses(
        (status = 201, description = "Created", body = GroupView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing group:write", body = ErrorBody),
        (status = 404, description = "No such parent group in the tenant", body = ErrorBody),
        (status = 409, description = "Name taken among the siblings", body = ErrorBody),
    ),
    security(("bearer" = ["group:write"]), ("api_key" = ["group:write"]))
)]
pub(crate) async fn create_group(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<CreateGroupRequest>,
) -> ApiResult<(StatusCode, axum::Json<GroupView>)> {
    caller.require(Permission::GroupWrite)?;
    let group = DeviceGroup {
        id: GroupId::new(),
        tenant_id: caller.tenant_id,
        parent_id: req.parent_id.map(GroupId),
        name: valid_name("name", &req.name)?,
        description: valid_description(req.description)?,
        created_at: now_ms(),
    };
    state.access.create_group(&group).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "group.create",
        "group",
        group.id,
        serde_json::json!({"name": group.name, "parent_id": group.parent_id}),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(group.into())))
}

/// Every group of the tenant, by name.
#[utoipa::path(
    get,
    path = "/groups",
    tag = "groups",
    responses(
        (status = 200, description = "The groups", body = GroupList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn list_groups(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<GroupList>> {
    caller.require(Permission::DeviceRead)?;
    let groups = state.access.list_groups(caller.tenant_id).await?;
    Ok(axum::Json(GroupList {
        items: groups.into_iter().map(GroupView::from).collect(),
    }))
}

/// Builds the forest of `groups` (by name at every level).
fn build_tree(groups: Vec<DeviceGroup>) -> Vec<GroupNode> {
    let ids: std::collections::HashSet<GroupId> = groups.iter().map(|g| g.id).collect();
    let mut children: HashMap<Option<GroupId>, Vec<DeviceGroup>> = HashMap::new();
    for g in groups {
        // A parent that is not listed (should not happen) makes the group a root.
        let parent = g.parent_id.filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(g);
    }
    fn nodes(
        parent: Option<GroupId>,
        children: &mut HashMap<Option<GroupId>, Vec<DeviceGroup>>,
        depth: usize,
    ) -> Vec<GroupNode> {
        let mut level = children.remove(&parent).unwrap_or_default();
        level.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        level
            .into_iter()
            .map(|g| GroupNode {
                id: g.id.0,
                children: if depth < 64 {
                    nodes(Some(g.id), children, depth + 1)
                } else {
                    Vec::new()
                },
                name: g.name,
                description: g.description,
            })
            .collect()
    }
    nodes(None, &mut children, 0)
}

/// The tenant's groups as a tree.
#[utoipa::path(
    get,
    path = "/groups/tree",
    tag = "groups",
    responses(
        (status = 200, description = "Root groups with their sub-groups", body = GroupTree),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn group_tree(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<GroupTree>> {
    caller.require(Permission::DeviceRead)?;
    let groups = state.access.list_groups(caller.tenant_id).await?;
    Ok(axum::Json(GroupTree {
        items: build_tree(groups),
    }))
}

/// One group.
#[utoipa::path(
    get,
    path = "/groups/{id}",
    tag = "groups",
    params(("id" = Uuid, Path, description = "Group id")),
    responses(
        (status = 200, description = "The group", body = GroupView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such group in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn get_group(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<GroupView>> {
    caller.require(Permission::DeviceRead)?;
    Ok(axum::Json(load_group(&state, &caller, id).await?.into()))
}

/// Renames, describes or moves a group.
#[utoipa::path(
    patch,
    path = "/groups/{id}",
    tag = "groups",
    params(("id" = Uuid, Path, description = "Group id")),
    request_body = UpdateGroupRequest,
    responses(
        (status = 200, description = "The updated group", body = GroupView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing group:write", body = ErrorBody),
        (status = 404, description = "No such group (or parent) in the tenant", body = ErrorBody),
        (status = 409, description = "Name taken, or moving under itself", body = ErrorBody),
    ),
    security(("bearer" = ["group:write"]), ("api_key" = ["group:write"]))
)]
pub(crate) async fn update_group(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<UpdateGroupRequest>,
) -> ApiResult<axum::Json<GroupView>> {
    caller.require(Permission::GroupWrite)?;
    let name = req
        .name
        .as_deref()
        .map(|n| valid_name("name", n))
        .transpose()?;
    let description = req.description.map(valid_description).transpose()?;
    let mut group = load_group(&state, &caller, id).await?;
    if let Some(name) = name {
        group.name = name;
    }
    if let Some(d) = description {
        group.description = d;
    }
    if let Some(parent) = req.parent_id {
        if parent == Some(id) {
            return Err(tp_core::Error::Conflict("a group cannot be its own parent".into()).into());
        }
        group.parent_id = parent.map(GroupId);
    }
    state.access.update_group(&group).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "group.update",
        "group",
        group.id,
        serde_json::json!({"name": group.name, "parent_id": group.parent_id}),
    )
    .await;
    Ok(axum::Json(group.into()))
}

/// Deletes a group without sub-groups (its memberships go with it).
#[utoipa::path(
    delete,
    path = "/groups/{id}",
    tag = "groups",
    params(("id" = Uuid, Path, description = "Group id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing group:write", body = ErrorBody),
        (status = 404, description = "No such group in the tenant", body = ErrorBody),
        (status = 409, description = "The group has sub-groups", body = ErrorBody),
    ),
    security(("bearer" = ["group:write"]), ("api_key" = ["group:write"]))
)]
pub(crate) async fn delete_group(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::GroupWrite)?;
    let group = load_group(&state, &caller, id).await?;
    state
        .access
        .delete_group(caller.tenant_id, group.id)
        .await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "group.delete",
        "group",
        group.id,
        serde_json::json!({"name": group.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Puts a device of the tenant into a group (idempotent).
#[utoipa::path(
    put,
    path = "/groups/{id}/devices/{device_id}",
    tag = "groups",
    params(
        ("id" = Uuid, Path, description = "Group id"),
        ("device_id" = Uuid, Path, description = "Device id"),
    ),
    responses(
        (status = 204, description = "The device is in the group"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing group:write", body = ErrorBody),
        (status = 404, description = "No such group or device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["group:write"]), ("api_key" = ["group:write"]))
)]
pub(crate) async fn add_group_device(
    caller: Caller,
    State(state): State<AppState>,
    IdDevicePath(id, device): IdDevicePath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::GroupWrite)?;
    let group = load_group(&state, &caller, id).await?;
    state
        .access
        .add_group_device(caller.tenant_id, group.id, device)
        .await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "group.add_device",
        "group",
        group.id,
        serde_json::json!({"device_id": device}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Takes a device out of a group (idempotent: a device of the tenant that is not in the
/// group is answered like one just removed, as `PUT` answers one already in it).
#[utoipa::path(
    delete,
    path = "/groups/{id}/devices/{device_id}",
    tag = "groups",
    params(
        ("id" = Uuid, Path, description = "Group id"),
        ("device_id" = Uuid, Path, description = "Device id"),
    ),
    responses(
        (status = 204, description = "The device is not in the group (removed now, or it was not a member)"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing group:write", body = ErrorBody),
        (status = 404, description = "No such group or device in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["group:write"]), ("api_key" = ["group:write"]))
)]
pub(crate) async fn remove_group_device(
    caller: Caller,
    State(state): State<AppState>,
    IdDevicePath(id, device): IdDevicePath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::GroupWrite)?;
    let group = load_group(&state, &caller, id).await?;
    if !state
        .access
        .remove_group_device(caller.tenant_id, group.id, device)
        .await?
    {
        // Not a member: nothing changed, so nothing to audit; only a device the tenant
        // does not have is an error (a retried DELETE must not fail).
        if state
            .metadata
            .get_device(caller.tenant_id, device)
            .await?
            .is_none()
        {
            return Err(tp_core::Error::not_found("device", device).into());
        }
        return Ok(StatusCode::NO_CONTENT);
    }
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "group.remove_device",
        "group",
        group.id,
        serde_json::json!({"device_id": device}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The devices directly in a group, oldest first.
#[utoipa::path(
    get,
    path = "/groups/{id}/devices",
    tag = "groups",
    params(("id" = Uuid, Path, description = "Group id"), PageQuery),
    responses(
        (status = 200, description = "A page of devices", body = DeviceList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such group in the tenant", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn list_group_devices(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<DeviceList>> {
    caller.require(Permission::DeviceRead)?;
    let page = page_of(q.page, q.page_size)?;
    let group = load_group(&state, &caller, id).await?;
    let paged = state
        .access
        .list_group_devices(caller.tenant_id, group.id, page)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tp_core::TenantId;

    #[test]
    fn trees_nest_by_parent_and_sort_by_name() {
        let t = TenantId::new();
        let g = |name: &str, parent: Option<GroupId>| DeviceGroup {
            id: GroupId::new(),
            tenant_id: t,
            parent_id: parent,
            name: name.into(),
            description: None,
            created_at: 0,
        };
        let b = g("b", None);
        let a = g("a", None);
        let a2 = g("a2", Some(a.id));
        let a1 = g("a1", Some(a.id));
        let a11 = g("a11", Some(a1.id));
        let tree = build_tree(vec![a11, b, a2, a, a1]);
        let names = |n: &[GroupNode]| n.iter().map(|x| x.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&tree), ["a", "b"]);
        assert_eq!(names(&tree[0].children), ["a1", "a2"]);
        assert_eq!(names(&tree[0].children[0].children), ["a11"]);
        assert!(tree[1].children.is_empty());
    }
}
