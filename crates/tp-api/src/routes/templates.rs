//! `/api/v1/templates`: device templates and their thing model (template:read to
//! read, template:write to change), and `GET /api/v1/devices/{id}/thing-model`
//! (device:read): a device's latest values typed by its template, with units.
//!
//! A template carries its definitions inline (four typed lists), so a client reads
//! or replaces the whole thing model in one call and never sees half an update.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::thing_model::{
    CommandDef, DeviceTemplate, EventDef, Property, TemplateCache, TemplateId, ValidationMode,
};
use tp_core::{TenantId, Value, now_ms};
use utoipa::ToSchema;
use uuid::Uuid;

use super::devices::load_device;
use super::extract::{DeviceIdPath, IdPath, Json, Query};
use super::support::{PageQuery, audit, page_of, valid_name};
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// The template cache (and its store), or 503 when the node runs without one.
pub(crate) fn templates(state: &AppState) -> ApiResult<&Arc<TemplateCache>> {
    state.thing_models.as_ref().ok_or_else(|| {
        ApiError::http(
            StatusCode::SERVICE_UNAVAILABLE,
            "templates_unavailable",
            "device templates are not enabled on this node",
        )
    })
}

/// The template of `device`'s profile, if templates are enabled and it has one.
pub(crate) async fn device_template(
    state: &AppState,
    device: &tp_core::Device,
) -> ApiResult<Option<Arc<DeviceTemplate>>> {
    let (Some(cache), Some(profile)) = (state.thing_models.as_ref(), device.profile_id) else {
        return Ok(None);
    };
    Ok(cache.for_profile(device.tenant_id, profile).await?)
}

/// A downlink the device's template refuses: 422 naming `{prefix}.{key}`.
pub(crate) fn refused(prefix: &str, v: tp_core::thing_model::Violation) -> ApiError {
    let field = match v.key.as_str() {
        "method" | "params" => v.key,
        key => format!("{prefix}.{key}"),
    };
    ApiError::unprocessable(field, v.reason)
}

/// A device template with its thing model.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TemplateView {
    /// Template id.
    id: Uuid,
    /// Name, unique in the tenant.
    name: String,
    /// What devices it is for.
    description: Option<String>,
    /// What ingest does with values the definitions refuse: `off`, `record`
    /// (store, and record each violation as a `thing_model_violation` event) or
    /// `reject` (store nothing of the message).
    validation: ValidationMode,
    /// Whether keys without a definition are violations too.
    strict_keys: bool,
    /// Telemetry definitions.
    telemetry: Vec<Property>,
    /// Attribute definitions.
    attributes: Vec<Property>,
    /// Event definitions (with their output parameters).
    events: Vec<EventDef>,
    /// Command definitions (with their input parameters).
    commands: Vec<CommandDef>,
    /// Creation time (ms).
    created_at: i64,
    /// Last change (ms).
    updated_at: i64,
}

impl From<DeviceTemplate> for TemplateView {
    fn from(t: DeviceTemplate) -> Self {
        Self {
            id: t.id.0,
            name: t.name,
            description: t.description,
            validation: t.validation,
            strict_keys: t.strict_keys,
            telemetry: t.telemetry,
            attributes: t.attributes,
            events: t.events,
            commands: t.commands,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A page of templates.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TemplateList {
    /// The page, by name.
    items: Vec<TemplateView>,
    /// All templates of the tenant.
    total: u64,
}

/// A template: on create the new one, on `PUT` the whole replacement (absent lists
/// are empty, absent settings take their defaults).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TemplateRequest {
    /// Name, unique in the tenant.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// What devices it is for.
    #[serde(default)]
    #[schema(max_length = 1000)]
    description: Option<String>,
    /// `off` (default), `record` or `reject`.
    #[serde(default)]
    validation: ValidationMode,
    /// Keys without a definition are violations too (default false).
    #[serde(default)]
    strict_keys: bool,
    /// Telemetry definitions (identifiers unique).
    #[serde(default)]
    #[schema(max_items = 500)]
    telemetry: Vec<Property>,
    /// Attribute definitions (identifiers unique).
    #[serde(default)]
    #[schema(max_items = 500)]
    attributes: Vec<Property>,
    /// Event definitions (identifiers unique).
    #[serde(default)]
    #[schema(max_items = 500)]
    events: Vec<EventDef>,
    /// Command definitions (identifiers unique).
    #[serde(default)]
    #[schema(max_items = 500)]
    commands: Vec<CommandDef>,
}

/// Most definitions of one kind.
const MAX_DEFINITIONS: usize = 500;

impl TemplateRequest {
    /// Fills `t` from the request and checks the result.
    fn apply(self, t: &mut DeviceTemplate) -> ApiResult<()> {
        t.name = valid_name("name", &self.name)?;
        t.description = match self.description {
            Some(d) if d.chars().count() > 1000 => {
                return Err(ApiError::invalid("description", "at most 1000 characters"));
            }
            d => d,
        };
        t.validation = self.validation;
        t.strict_keys = self.strict_keys;
        for (field, n) in [
            ("telemetry", self.telemetry.len()),
            ("attributes", self.attributes.len()),
            ("events", self.events.len()),
            ("commands", self.commands.len()),
        ] {
            if n > MAX_DEFINITIONS {
                return Err(ApiError::invalid(
                    field,
                    format!("at most {MAX_DEFINITIONS} definitions"),
                ));
            }
        }
        t.telemetry = self.telemetry;
        t.attributes = self.attributes;
        t.events = self.events;
        t.commands = self.commands;
        t.check_definitions()?;
        Ok(())
    }
}

/// Where a copy goes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CopyTemplateRequest {
    /// Name of the copy (default: the original's name, with ` (copy)` in the same tenant).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: Option<String>,
    /// Tenant to copy into (default: the caller's); another tenant needs `SYS_ADMIN`.
    #[serde(default)]
    tenant_id: Option<Uuid>,
}

async fn load_template(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<DeviceTemplate> {
    templates(state)?
        .store()
        .get_template(caller.tenant_id, TemplateId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("template", id).into())
}

fn summary(t: &DeviceTemplate) -> serde_json::Value {
    serde_json::json!({
        "name": t.name,
        "validation": t.validation,
        "telemetry": t.telemetry.len(),
        "attributes": t.attributes.len(),
        "events": t.events.len(),
        "commands": t.commands.len(),
    })
}

/// Creates a template.
#[utoipa::path(
    post,
    path = "/templates",
    tag = "templates",
    request_body = TemplateRequest,
    responses(
        (status = 201, description = "Created", body = TemplateView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing template:write", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 422, description = "Definitions that contradict each other: an identifier defined twice, `min` above `max`, a range on a non-number, an enum without values", body = ErrorBody),
        (status = 503, description = "Templates are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["template:write"]), ("api_key" = ["template:write"]))
)]
pub(crate) async fn create_template(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<TemplateRequest>,
) -> ApiResult<(StatusCode, axum::Json<TemplateView>)> {
    caller.require(Permission::TemplateWrite)?;
    let cache = templates(&state)?;
    let mut t = DeviceTemplate::new(caller.tenant_id, "");
    req.apply(&mut t)?;
    cache.store().create_template(&t).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "template.create",
        "template",
        t.id,
        summary(&t),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(t.into())))
}

/// Lists the tenant's templates by name.
#[utoipa::path(
    get,
    path = "/templates",
    tag = "templates",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of templates", body = TemplateList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing template:read", body = ErrorBody),
        (status = 503, description = "Templates are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["template:read"]), ("api_key" = ["template:read"]))
)]
pub(crate) async fn list_templates(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<TemplateList>> {
    caller.require(Permission::TemplateRead)?;
    let page = page_of(q.page, q.page_size)?;
    let paged = templates(&state)?
        .store()
        .list_templates(caller.tenant_id, page)
        .await?;
    Ok(axum::Json(TemplateList {
        items: paged.items.into_iter().map(TemplateView::from).collect(),
        total: paged.total,
    }))
}

/// One template.
#[utoipa::path(
    get,
    path = "/templates/{id}",
    tag = "templates",
    params(("id" = Uuid, Path, description = "Template id")),
    responses(
        (status = 200, description = "The template", body = TemplateView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing template:read", body = ErrorBody),
        (status = 404, description = "No such template in the tenant", body = ErrorBody),
        (status = 503, description = "Templates are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["template:read"]), ("api_key" = ["template:read"]))
)]
pub(crate) async fn get_template(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<TemplateView>> {
    caller.require(Permission::TemplateRead)?;
    Ok(axum::Json(load_template(&state, &caller, id).await?.into()))
}

/// Replaces a template's settings and definitions.
#[utoipa::path(
    put,
    path = "/templates/{id}",
    tag = "templates",
    params(("id" = Uuid, Path, description = "Template id")),
    request_body = TemplateRequest,
    responses(
        (status = 200, description = "The updated template", body = TemplateView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing template:write", body = ErrorBody),
        (status = 404, description = "No such template in the tenant", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 422, description = "Definitions that contradict each other (see create)", body = ErrorBody),
        (status = 503, description = "Templates are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["template:write"]), ("api_key" = ["template:write"]))
)]
pub(crate) async fn update_template(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<TemplateRequest>,
) -> ApiResult<axum::Json<TemplateView>> {
    caller.require(Permission::TemplateWrite)?;
    let cache = templates(&state)?;
    let mut t = load_template(&state, &caller, id).await?;
    req.apply(&mut t)?;
    t.updated_at = now_ms().max(t.updated_at);
    cache.store().update_template(&t).await?;
    cache.invalidate();
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "template.update",
        "template",
        t.id,
        summary(&t),
    )
    .await;
    Ok(axum::Json(t.into()))
}

/// Deletes a template no profile refers to.
#[utoipa::path(
    delete,
    path = "/templates/{id}",
    tag = "templates",
    params(("id" = Uuid, Path, description = "Template id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing template:write", body = ErrorBody),
        (status = 404, description = "No such template in the tenant", body = ErrorBody),
        (status = 409, description = "A device profile refers to it", body = ErrorBody),
        (status = 503, description = "Templates are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["template:write"]), ("api_key" = ["template:write"]))
)]
pub(crate) async fn delete_template(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::TemplateWrite)?;
    let cache = templates(&state)?;
    let t = load_template(&state, &caller, id).await?;
    cache
        .store()
        .delete_template(caller.tenant_id, t.id)
        .await?;
    cache.invalidate();
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "template.delete",
        "template",
        t.id,
        serde_json::json!({"name": t.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Copies a template, within the tenant or (SYS_ADMIN) into another tenant.
#[utoipa::path(
    post,
    path = "/templates/{id}/copy",
    tag = "templates",
    params(("id" = Uuid, Path, description = "Template id")),
    request_body = CopyTemplateRequest,
    responses(
        (status = 201, description = "The copy", body = TemplateView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing template:write, or another tenant without SYS_ADMIN", body = ErrorBody),
        (status = 404, description = "No such template in the tenant", body = ErrorBody),
        (status = 409, description = "The name is taken in the target tenant", body = ErrorBody),
        (status = 422, description = "`tenant_id` names no tenant", body = ErrorBody),
        (status = 503, description = "Templates are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["template:write"]), ("api_key" = ["template:write"]))
)]
pub(crate) async fn copy_template(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<CopyTemplateRequest>,
) -> ApiResult<(StatusCode, axum::Json<TemplateView>)> {
    caller.require(Permission::TemplateWrite)?;
    let cache = templates(&state)?;
    let name = req
        .name
        .as_deref()
        .map(|n| valid_name("name", n))
        .transpose()?;
    let source = load_template(&state, &caller, id).await?;
    let target = match req.tenant_id.map(TenantId) {
        Some(t) if t != caller.tenant_id => {
            caller.require_sys_admin()?;
            if state.metadata.get_tenant(t).await?.is_none() {
                return Err(ApiError::unprocessable("tenant_id", "no such tenant"));
            }
            t
        }
        _ => caller.tenant_id,
    };
    let name = name.unwrap_or_else(|| {
        if target == caller.tenant_id {
            let copy: String = source.name.chars().take(248).collect();
            format!("{copy} (copy)")
        } else {
            source.name.clone()
        }
    });
    let now = now_ms();
    let copy = DeviceTemplate {
        id: TemplateId::new(),
        tenant_id: target,
        name,
        created_at: now,
        updated_at: now,
        ..source.clone()
    };
    cache.store().create_template(&copy).await?;
    let detail = serde_json::json!({
        "name": copy.name,
        "source": source.id,
        "source_tenant": source.tenant_id,
    });
    audit(
        &state,
        &caller,
        target,
        "template.copy",
        "template",
        copy.id,
        detail.clone(),
    )
    .await;
    if target != caller.tenant_id {
        audit(
            &state,
            &caller,
            caller.tenant_id,
            "template.copy",
            "template",
            copy.id,
            detail,
        )
        .await;
    }
    Ok((StatusCode::CREATED, axum::Json(copy.into())))
}

/// One key of a device with its definition and latest value.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TypedValue {
    /// The key.
    key: String,
    /// Its definition in the device's template (type, unit, range), if any.
    definition: Option<Property>,
    /// When the latest value was reported (ms), if one was.
    ts: Option<i64>,
    /// The latest value, if one was reported.
    value: Option<serde_json::Value>,
    /// Why the latest value does not fit the definition (stored in `off` or
    /// `record` mode, or before the definition changed).
    violation: Option<String>,
}

/// A device's thing model and latest values.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeviceThingModel {
    /// The template of the device's profile, if it has one.
    template_id: Option<Uuid>,
    /// Its name.
    template_name: Option<String>,
    /// Its validation mode.
    validation: Option<ValidationMode>,
    /// Defined telemetry first (in definition order, with or without a value), then
    /// reported keys without a definition (ascending).
    telemetry: Vec<TypedValue>,
    /// Attributes, ordered like `telemetry`.
    attributes: Vec<TypedValue>,
    /// The commands the device takes (the console builds its forms from them).
    commands: Vec<CommandDef>,
    /// The events the device reports.
    events: Vec<EventDef>,
}

fn typed(
    defs: &[Property],
    values: Vec<tp_core::KeyValue>,
    check: impl Fn(&str, &Value) -> Option<String>,
) -> Vec<TypedValue> {
    let mut latest: BTreeMap<String, (i64, Value)> = values
        .into_iter()
        .map(|kv| (kv.key, (kv.ts, kv.value)))
        .collect();
    let mut out: Vec<TypedValue> = defs
        .iter()
        .map(|d| {
            let v = latest.remove(&d.identifier);
            TypedValue {
                key: d.identifier.clone(),
                definition: Some(d.clone()),
                violation: v.as_ref().and_then(|(_, v)| check(&d.identifier, v)),
                ts: v.as_ref().map(|(ts, _)| *ts),
                value: v.map(|(_, v)| v.to_json()),
            }
        })
        .collect();
    out.extend(latest.into_iter().map(|(key, (ts, v))| TypedValue {
        violation: check(&key, &v),
        key,
        definition: None,
        ts: Some(ts),
        value: Some(v.to_json()),
    }));
    out
}

/// A device's latest telemetry and attributes typed by its template (name, type,
/// unit, range), and the template's commands and events.
#[utoipa::path(
    get,
    path = "/devices/{id}/thing-model",
    tag = "telemetry",
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 200, description = "Typed latest values", body = DeviceThingModel),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing device:read", body = ErrorBody),
        (status = 404, description = "No such device in the tenant", body = ErrorBody),
        (status = 503, description = "Templates are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["device:read"]), ("api_key" = ["device:read"]))
)]
pub(crate) async fn device_thing_model(
    caller: Caller,
    State(state): State<AppState>,
    DeviceIdPath(id): DeviceIdPath,
) -> ApiResult<axum::Json<DeviceThingModel>> {
    caller.require(Permission::DeviceRead)?;
    let cache = templates(&state)?;
    let device = load_device(&state, &caller, id).await?;
    let template = match device.profile_id {
        Some(p) => cache.for_profile(caller.tenant_id, p).await?,
        None => None,
    };
    let telemetry = state.timeseries.latest(id, None).await?;
    let attributes = state.metadata.get_attributes(id, None).await?;
    let Some(t) = template else {
        return Ok(axum::Json(DeviceThingModel {
            template_id: None,
            template_name: None,
            validation: None,
            telemetry: typed(&[], telemetry, |_, _| None),
            attributes: typed(&[], attributes, |_, _| None),
            commands: Vec::new(),
            events: Vec::new(),
        }));
    };
    let first = |v: Vec<tp_core::thing_model::Violation>| v.into_iter().next().map(|v| v.reason);
    Ok(axum::Json(DeviceThingModel {
        template_id: Some(t.id.0),
        template_name: Some(t.name.clone()),
        validation: Some(t.validation),
        telemetry: typed(&t.telemetry, telemetry, |k, v| {
            first(t.check_telemetry([(k, v)]))
        }),
        attributes: typed(&t.attributes, attributes, |k, v| {
            first(t.check_attributes([(k, v)]))
        }),
        commands: t.commands.clone(),
        events: t.events.clone(),
    }))
}
