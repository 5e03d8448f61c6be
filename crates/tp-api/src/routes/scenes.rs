//! `/api/v1/scenes`: manual scenes (rule:read to read, rule:write to change and run).

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::now_ms;
use tp_core::rules::{Action, ActionOutcome, Scene, SceneId};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{IdPath, Json, Query};
use super::rules::{description, rule_store, rules_changed, validate_actions};
use super::support::{PageQuery, audit, page_of, valid_name};
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// A manual scene.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SceneView {
    /// Scene id.
    id: Uuid,
    /// Name, unique in the tenant.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Free text.
    description: Option<String>,
    /// Run in order (see `tp_core::rules::Action`).
    #[schema(min_items = 1)]
    actions: Vec<Action>,
    /// Creation time (ms).
    created_at: i64,
    /// Last change (ms).
    updated_at: i64,
}

impl From<Scene> for SceneView {
    fn from(s: Scene) -> Self {
        Self {
            id: s.id.0,
            name: s.name,
            description: s.description,
            actions: s.actions,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A page of scenes.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SceneList {
    /// The page, by name.
    items: Vec<SceneView>,
    /// All scenes of the tenant.
    total: u64,
}

/// A new scene.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSceneRequest {
    /// Name, unique in the tenant.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Free text.
    #[serde(default)]
    description: Option<String>,
    /// At least one action.
    #[schema(min_items = 1)]
    actions: Vec<Action>,
}

/// Changes to a scene; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateSceneRequest {
    /// Name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: Option<String>,
    /// Free text; `""` clears it.
    #[serde(default)]
    description: Option<String>,
    /// New actions.
    #[serde(default)]
    #[schema(min_items = 1)]
    actions: Option<Vec<Action>>,
}

/// What a scene run did, action by action.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SceneRunView {
    /// The scene.
    scene_id: Uuid,
    /// One entry per action, in order.
    outcomes: Vec<ActionOutcome>,
}

async fn load_scene(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<Scene> {
    rule_store(state)?
        .get_scene(caller.tenant_id, SceneId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("scene", id).into())
}

/// Creates a scene.
#[utoipa::path(
    post,
    path = "/scenes",
    tag = "scenes",
    request_body = CreateSceneRequest,
    responses(
        (status = 201, description = "Created", body = SceneView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 422, description = "Well-formed but not usable: a device, profile, channel or scene it names is not in the tenant, or a value does not fit its operator; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:write", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:write"]), ("api_key" = ["rule:write"]))
)]
pub(crate) async fn create_scene(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<CreateSceneRequest>,
) -> ApiResult<(StatusCode, axum::Json<SceneView>)> {
    caller.require(Permission::RuleWrite)?;
    let store = rule_store(&state)?;
    let id = SceneId::new();
    let name = valid_name("name", &req.name)?;
    let description = description(req.description)?;
    validate_actions(
        state.metadata.as_ref(),
        rule_store(&state)?.as_ref(),
        caller.tenant_id,
        &req.actions,
        Some(id),
    )
    .await?;
    let now = now_ms();
    let scene = Scene {
        id,
        tenant_id: caller.tenant_id,
        name,
        description,
        actions: req.actions,
        created_at: now,
        updated_at: now,
    };
    store.create_scene(&scene).await?;
    rules_changed(&state, caller.tenant_id).await;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "scene.create",
        "scene",
        scene.id,
        serde_json::json!({"name": scene.name}),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(scene.into())))
}

/// Lists the tenant's scenes by name.
#[utoipa::path(
    get,
    path = "/scenes",
    tag = "scenes",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of scenes", body = SceneList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:read", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:read"]), ("api_key" = ["rule:read"]))
)]
pub(crate) async fn list_scenes(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<SceneList>> {
    caller.require(Permission::RuleRead)?;
    let paged = rule_store(&state)?
        .list_scenes(caller.tenant_id, page_of(q.page, q.page_size)?)
        .await?;
    Ok(axum::Json(SceneList {
        items: paged.items.into_iter().map(SceneView::from).collect(),
        total: paged.total,
    }))
}

/// One scene.
#[utoipa::path(
    get,
    path = "/scenes/{id}",
    tag = "scenes",
    params(("id" = Uuid, Path, description = "Scene id")),
    responses(
        (status = 200, description = "The scene", body = SceneView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:read", body = ErrorBody),
        (status = 404, description = "No such scene in the tenant", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:read"]), ("api_key" = ["rule:read"]))
)]
pub(crate) async fn get_scene(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<SceneView>> {
    caller.require(Permission::RuleRead)?;
    Ok(axum::Json(load_scene(&state, &caller, id).await?.into()))
}

/// Changes a scene (absent fields stay).
#[utoipa::path(
    put,
    path = "/scenes/{id}",
    tag = "scenes",
    params(("id" = Uuid, Path, description = "Scene id")),
    request_body = UpdateSceneRequest,
    responses(
        (status = 200, description = "The updated scene", body = SceneView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 422, description = "Well-formed but not usable: a device, profile, channel or scene it names is not in the tenant, or a value does not fit its operator; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:write", body = ErrorBody),
        (status = 404, description = "No such scene in the tenant", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:write"]), ("api_key" = ["rule:write"]))
)]
pub(crate) async fn update_scene(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<UpdateSceneRequest>,
) -> ApiResult<axum::Json<SceneView>> {
    caller.require(Permission::RuleWrite)?;
    let mut scene = load_scene(&state, &caller, id).await?;
    if let Some(n) = req.name {
        scene.name = valid_name("name", &n)?;
    }
    if req.description.is_some() {
        scene.description = description(req.description)?;
    }
    if let Some(actions) = req.actions {
        validate_actions(
            state.metadata.as_ref(),
            rule_store(&state)?.as_ref(),
            caller.tenant_id,
            &actions,
            Some(scene.id),
        )
        .await?;
        scene.actions = actions;
    }
    scene.updated_at = now_ms();
    rule_store(&state)?.update_scene(&scene).await?;
    rules_changed(&state, caller.tenant_id).await;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "scene.update",
        "scene",
        scene.id,
        serde_json::json!({"name": scene.name}),
    )
    .await;
    Ok(axum::Json(scene.into()))
}

/// Deletes a scene.
#[utoipa::path(
    delete,
    path = "/scenes/{id}",
    tag = "scenes",
    params(("id" = Uuid, Path, description = "Scene id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:write", body = ErrorBody),
        (status = 404, description = "No such scene in the tenant", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:write"]), ("api_key" = ["rule:write"]))
)]
pub(crate) async fn delete_scene(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::RuleWrite)?;
    let scene = load_scene(&state, &caller, id).await?;
    rule_store(&state)?
        .delete_scene(caller.tenant_id, scene.id)
        .await?;
    rules_changed(&state, caller.tenant_id).await;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "scene.delete",
        "scene",
        scene.id,
        serde_json::json!({"name": scene.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a scene's actions now, in order, and reports each.
#[utoipa::path(
    post,
    path = "/scenes/{id}/run",
    tag = "scenes",
    params(("id" = Uuid, Path, description = "Scene id")),
    responses(
        (status = 200, description = "What each action did", body = SceneRunView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:write", body = ErrorBody),
        (status = 404, description = "No such scene in the tenant", body = ErrorBody),
        (status = 503, description = "No rule engine runs on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:write"]), ("api_key" = ["rule:write"]))
)]
pub(crate) async fn run_scene(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<SceneRunView>> {
    caller.require(Permission::RuleWrite)?;
    let scene = load_scene(&state, &caller, id).await?;
    let Some(engine) = state.rule_engine.as_ref() else {
        return Err(ApiError::http(
            StatusCode::SERVICE_UNAVAILABLE,
            "rule_engine_unavailable",
            "no rule engine runs on this node",
        ));
    };
    let outcomes = engine.run_scene(caller.tenant_id, scene.id).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "scene.run",
        "scene",
        scene.id,
        serde_json::json!({
            "name": scene.name,
            "failed": outcomes.iter().filter(|o| !o.ok).count(),
        }),
    )
    .await;
    Ok(axum::Json(SceneRunView {
        scene_id: scene.id.0,
        outcomes,
    }))
}
