//! `/api/v1/dashboards`: the tenant's dashboards, `dashboard:read` to view and
//! `dashboard:write` to change them.
//!
//! A dashboard is a 12-column grid of widgets (see [`tp_core::dashboard`]), each
//! bound to devices of the tenant (another tenant's device is a 422). One dashboard
//! per tenant can be its home dashboard (`home: true`; setting it unsets the previous
//! one in the same transaction), served by `GET /dashboards/home`. The data the
//! widgets show is read through the ordinary device routes (latest values, history,
//! alarms) and `GET /dashboards/{id}/stream`, one Server-Sent Events stream of every
//! device the dashboard shows; switches and buttons send through the ordinary
//! downlink routes (`device:command`).

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tp_core::dashboard::{Dashboard, DashboardStoreRef, MAX_WIDGETS, Widget, WidgetConfig};
use tp_core::{DashboardId, DeviceId, now_ms};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{IdPath, Json, Query};
use super::stream::{KEEP_ALIVE, StreamCaller, live_events};
use super::support::{PageQuery, audit, is_blank, page_of, valid_name};
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// A dashboard.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DashboardView {
    /// Dashboard id.
    id: Uuid,
    /// Display name.
    name: String,
    /// Free text.
    description: Option<String>,
    /// Whether it is the tenant's home dashboard.
    home: bool,
    /// The widgets.
    widgets: Vec<Widget>,
    /// The console page that shows it read-only (for users without
    /// `dashboard:write`), relative to the server.
    #[schema(example = "/console/#/dashboards/5f0c2a6e-8d1b-4c3a-9e2f-0a1b2c3d4e5f")]
    view_path: String,
    /// Creation time (ms).
    created_at: i64,
    /// Last change (ms).
    updated_at: i64,
}

impl From<Dashboard> for DashboardView {
    fn from(d: Dashboard) -> Self {
        Self {
            id: d.id.0,
            view_path: format!("/console/#/dashboards/{}", d.id),
            name: d.name,
            description: d.description,
            home: d.home,
            widgets: d.widgets,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// A page of the tenant's dashboards.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DashboardList {
    /// By name.
    items: Vec<DashboardView>,
    /// How many the tenant has.
    total: u64,
}

/// A dashboard as written: the whole of it (a `PUT` replaces every field).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DashboardRequest {
    /// Display name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Free text (an empty string clears it).
    #[serde(default)]
    #[schema(max_length = 1000)]
    description: Option<String>,
    /// Make it the tenant's home dashboard (the previous one stops being it).
    #[serde(default)]
    home: Option<bool>,
    /// The widgets, at most 64, ids unique.
    #[serde(default)]
    #[schema(max_items = 64)]
    widgets: Vec<Widget>,
}

pub(crate) fn dashboard_store(state: &AppState) -> ApiResult<&DashboardStoreRef> {
    state.dashboards.as_ref().ok_or_else(|| {
        ApiError::http(
            StatusCode::SERVICE_UNAVAILABLE,
            "dashboards_unavailable",
            "dashboards are not enabled on this node",
        )
    })
}

async fn load_dashboard(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<Dashboard> {
    dashboard_store(state)?
        .get_dashboard(caller.tenant_id, DashboardId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("dashboard", id).into())
}

/// Builds the dashboard a request describes and checks it: the model's limits
/// (400 naming the field), then that every device and profile it names is the
/// tenant's (422 naming the widget's field).
async fn dashboard_of(
    state: &AppState,
    caller: &Caller,
    req: DashboardRequest,
    base: Dashboard,
) -> ApiResult<Dashboard> {
    if req.widgets.len() > MAX_WIDGETS {
        return Err(ApiError::invalid(
            "widgets",
            format!("must hold at most {MAX_WIDGETS} widgets"),
        ));
    }
    let description = match req.description {
        Some(d) if d.trim_matches(is_blank).is_empty() => None,
        d => d,
    };
    let dashboard = Dashboard {
        name: valid_name("name", &req.name)?,
        description,
        home: req.home.unwrap_or(false),
        widgets: req.widgets,
        ..base
    };
    dashboard.validate()?;
    let mut checked = HashSet::new();
    for (i, widget) in dashboard.widgets.iter().enumerate() {
        for device in widget.config.devices() {
            if checked.insert(device)
                && state
                    .metadata
                    .get_device(caller.tenant_id, device)
                    .await?
                    .is_none()
            {
                return Err(ApiError::unprocessable(
                    format!("widgets[{i}].config.device_id"),
                    "is not a device of this tenant",
                ));
            }
        }
        if let WidgetConfig::DeviceStatus {
            profile_id: Some(p),
            ..
        }
        | WidgetConfig::Map {
            profile_id: Some(p),
            ..
        } = &widget.config
            && state
                .access
                .get_profile(caller.tenant_id, *p)
                .await?
                .is_none()
        {
            return Err(ApiError::unprocessable(
                format!("widgets[{i}].config.profile_id"),
                "is not a device profile of this tenant",
            ));
        }
    }
    Ok(dashboard)
}

fn summary(d: &Dashboard) -> serde_json::Value {
    serde_json::json!({"name": d.name, "home": d.home, "widgets": d.widgets.len()})
}

/// Creates a dashboard.
#[utoipa::path(
    post,
    path = "/dashboards",
    tag = "dashboards",
    request_body = DashboardRequest,
    responses(
        (status = 201, description = "Created", body = DashboardView),
        (status = 400, description = "Invalid input; `field` names it (`widgets[2].config.keys[0]`)", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing dashboard:write", body = ErrorBody),
        (status = 422, description = "A widget names a device or profile the tenant does not have, or breaks a rule across fields: `x + w` over 12, a gauge's `max` not above `min`, a widget id used twice, a `command` target without `method`", body = ErrorBody),
        (status = 503, description = "Dashboards are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["dashboard:write"]), ("api_key" = ["dashboard:write"]))
)]
pub(crate) async fn create_dashboard(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<DashboardRequest>,
) -> ApiResult<(StatusCode, axum::Json<DashboardView>)> {
    caller.require(Permission::DashboardWrite)?;
    let store = dashboard_store(&state)?;
    let now = now_ms();
    let base = Dashboard {
        id: DashboardId::new(),
        tenant_id: caller.tenant_id,
        name: String::new(),
        description: None,
        home: false,
        widgets: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    let dashboard = dashboard_of(&state, &caller, req, base).await?;
    store.create_dashboard(&dashboard).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "dashboard.create",
        "dashboard",
        dashboard.id,
        summary(&dashboard),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(dashboard.into())))
}

/// Lists the tenant's dashboards by name.
#[utoipa::path(
    get,
    path = "/dashboards",
    tag = "dashboards",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of dashboards", body = DashboardList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing dashboard:read", body = ErrorBody),
        (status = 503, description = "Dashboards are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["dashboard:read"]), ("api_key" = ["dashboard:read"]))
)]
pub(crate) async fn list_dashboards(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<DashboardList>> {
    caller.require(Permission::DashboardRead)?;
    let page = page_of(q.page, q.page_size)?;
    let paged = dashboard_store(&state)?
        .list_dashboards(caller.tenant_id, page)
        .await?;
    Ok(axum::Json(DashboardList {
        items: paged.items.into_iter().map(DashboardView::from).collect(),
        total: paged.total,
    }))
}

/// The tenant's home dashboard.
#[utoipa::path(
    get,
    path = "/dashboards/home",
    tag = "dashboards",
    responses(
        (status = 200, description = "The home dashboard", body = DashboardView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing dashboard:read", body = ErrorBody),
        (status = 404, description = "The tenant has no home dashboard", body = ErrorBody),
        (status = 503, description = "Dashboards are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["dashboard:read"]), ("api_key" = ["dashboard:read"]))
)]
pub(crate) async fn home_dashboard(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<DashboardView>> {
    caller.require(Permission::DashboardRead)?;
    let home = dashboard_store(&state)?
        .home_dashboard(caller.tenant_id)
        .await?
        .ok_or_else(|| {
            ApiError::http(
                StatusCode::NOT_FOUND,
                "not_found",
                "this tenant has no home dashboard",
            )
        })?;
    Ok(axum::Json(home.into()))
}

/// One dashboard.
#[utoipa::path(
    get,
    path = "/dashboards/{id}",
    tag = "dashboards",
    params(("id" = Uuid, Path, description = "Dashboard id")),
    responses(
        (status = 200, description = "The dashboard", body = DashboardView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing dashboard:read", body = ErrorBody),
        (status = 404, description = "No such dashboard in the tenant", body = ErrorBody),
        (status = 503, description = "Dashboards are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["dashboard:read"]), ("api_key" = ["dashboard:read"]))
)]
pub(crate) async fn get_dashboard(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<DashboardView>> {
    caller.require(Permission::DashboardRead)?;
    Ok(axum::Json(
        load_dashboard(&state, &caller, id).await?.into(),
    ))
}

/// Replaces a dashboard: name, description, home flag and every widget.
#[utoipa::path(
    put,
    path = "/dashboards/{id}",
    tag = "dashboards",
    params(("id" = Uuid, Path, description = "Dashboard id")),
    request_body = DashboardRequest,
    responses(
        (status = 200, description = "The updated dashboard", body = DashboardView),
        (status = 400, description = "Invalid input; `field` names it (`widgets[2].config.keys[0]`)", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing dashboard:write", body = ErrorBody),
        (status = 404, description = "No such dashboard in the tenant", body = ErrorBody),
        (status = 422, description = "A widget names a device or profile the tenant does not have, or breaks a rule across fields: `x + w` over 12, a gauge's `max` not above `min`, a widget id used twice, a `command` target without `method`", body = ErrorBody),
        (status = 503, description = "Dashboards are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["dashboard:write"]), ("api_key" = ["dashboard:write"]))
)]
pub(crate) async fn update_dashboard(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<DashboardRequest>,
) -> ApiResult<axum::Json<DashboardView>> {
    caller.require(Permission::DashboardWrite)?;
    let current = load_dashboard(&state, &caller, id).await?;
    let mut dashboard = dashboard_of(&state, &caller, req, current).await?;
    dashboard.updated_at = now_ms().max(dashboard.updated_at);
    dashboard_store(&state)?
        .update_dashboard(&dashboard)
        .await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "dashboard.update",
        "dashboard",
        dashboard.id,
        summary(&dashboard),
    )
    .await;
    Ok(axum::Json(dashboard.into()))
}

/// Deletes a dashboard.
#[utoipa::path(
    delete,
    path = "/dashboards/{id}",
    tag = "dashboards",
    params(("id" = Uuid, Path, description = "Dashboard id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing dashboard:write", body = ErrorBody),
        (status = 404, description = "No such dashboard in the tenant", body = ErrorBody),
        (status = 503, description = "Dashboards are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["dashboard:write"]), ("api_key" = ["dashboard:write"]))
)]
pub(crate) async fn delete_dashboard(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::DashboardWrite)?;
    let dashboard = load_dashboard(&state, &caller, id).await?;
    if !dashboard_store(&state)?
        .delete_dashboard(caller.tenant_id, dashboard.id)
        .await?
    {
        return Err(tp_core::Error::not_found("dashboard", id).into());
    }
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "dashboard.delete",
        "dashboard",
        dashboard.id,
        serde_json::json!({"name": dashboard.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Live telemetry of every device a dashboard shows, as one Server-Sent Events
/// stream (not one per widget).
///
/// Events are those of `GET /devices/{id}/telemetry/stream` (`telemetry` with a
/// LiveSample naming its `device_id`, `lagged`), for the devices the dashboard's
/// widgets name when the stream starts; reopen it after the dashboard changes. It
/// ends after one access-token lifetime. Like the device stream it accepts the
/// token as `?access_token=` for `EventSource`.
#[utoipa::path(
    get,
    path = "/dashboards/{id}/stream",
    tag = "dashboards",
    params(
        ("id" = Uuid, Path, description = "Dashboard id"),
        ("access_token" = Option<String>, Query, description = "Access token, for clients that cannot send the Authorization header (EventSource)"),
    ),
    responses(
        (status = 200, description = "An event stream: `event: telemetry` with a LiveSample as data; `event: lagged` with `{\"skipped\": n}`", content_type = "text/event-stream", body = super::stream::LiveSample),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing dashboard:read or device:read", body = ErrorBody),
        (status = 404, description = "No such dashboard in the tenant", body = ErrorBody),
        (status = 429, description = "The tenant holds limits.max_streams streams open already", body = ErrorBody),
        (status = 503, description = "Dashboards or live telemetry are not available on this node", body = ErrorBody),
    ),
    security(("bearer" = ["dashboard:read"]), ("api_key" = ["dashboard:read"]))
)]
pub(crate) async fn dashboard_stream(
    StreamCaller(caller): StreamCaller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    caller.require(Permission::DashboardRead)?;
    caller.require(Permission::DeviceRead)?;
    let dashboard = load_dashboard(&state, &caller, id).await?;
    let Some(live) = state.live_telemetry().cloned() else {
        return Err(ApiError::http(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "live telemetry is not available on this node",
        ));
    };
    // Only the tenant's devices: a widget's device may have been deleted (or, in a
    // row written before the check, be another tenant's) since the dashboard was saved.
    let mut devices: Vec<DeviceId> = Vec::new();
    for device in dashboard.devices() {
        if state
            .metadata
            .get_device(caller.tenant_id, device)
            .await?
            .is_some()
        {
            devices.push(device);
        }
    }
    let slot = state
        .streams
        .open(caller.tenant_id, state.limits.max_streams)?;
    let receivers = devices.into_iter().map(|d| live.subscribe(d)).collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(state.auth.ttl_secs);
    Ok(Sse::new(live_events(receivers, slot, until))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
