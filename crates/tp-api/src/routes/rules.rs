//! `/api/v1/rules` (rule:read to read, rule:write to change); trigger groups and
//! actions are checked by [`tp_core::rules::validate`] (shared with scenes).
//!
//! Rules are checked before they are stored, so the engine never loads one it cannot
//! evaluate: every field error is a 400 naming the field by its JSON path (e.g.
//! `trigger_groups[0].conditions[1].value`), and ids of devices, profiles, channels
//! and scenes must exist in the caller's tenant.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::rules::{
    Action, AlarmFilter, AlarmStatus, Rule, RuleId, RuleStoreRef, TriggerGroup, alarm,
};
use tp_core::{Page, TenantId, now_ms};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{IdPath, Json, Query};
use super::support::{PageQuery, audit, page_of, valid_name};
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;
pub(crate) use tp_core::rules::validate::validate_actions;
use tp_core::rules::validate::validate_trigger_groups;

/// The rule store, or 503 when the node runs without one.
pub(crate) fn rule_store(state: &AppState) -> ApiResult<&RuleStoreRef> {
    state.rules.as_ref().ok_or_else(|| {
        ApiError::http(
            StatusCode::SERVICE_UNAVAILABLE,
            "rules_unavailable",
            "rules, scenes and alarms are not enabled on this node",
        )
    })
}

/// Tells the rule engine (if running) that a tenant's rules, scenes or channels changed.
pub(crate) async fn rules_changed(state: &AppState, tenant: TenantId) {
    if let Some(engine) = &state.rule_engine {
        engine.rules_changed(tenant).await;
    }
}

/// A rule.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RuleView {
    /// Rule id.
    id: Uuid,
    /// Name, unique in the tenant.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Free text.
    description: Option<String>,
    /// Disabled rules are not evaluated.
    enabled: bool,
    /// OR of AND-groups of conditions (see `tp_core::rules::Condition`).
    #[schema(min_items = 1)]
    trigger_groups: Vec<TriggerGroup>,
    /// Run in order when the rule fires (see `tp_core::rules::Action`).
    #[schema(min_items = 1)]
    actions: Vec<Action>,
    /// Creation time (ms).
    created_at: i64,
    /// Last change (ms).
    updated_at: i64,
}

impl From<Rule> for RuleView {
    fn from(r: Rule) -> Self {
        Self {
            id: r.id.0,
            name: r.name,
            description: r.description,
            enabled: r.enabled,
            trigger_groups: r.trigger_groups,
            actions: r.actions,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A page of rules.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RuleList {
    /// The page, by name.
    items: Vec<RuleView>,
    /// All rules of the tenant.
    total: u64,
}

/// A new rule.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRuleRequest {
    /// Name, unique in the tenant.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Free text.
    #[serde(default)]
    description: Option<String>,
    /// Evaluated right away (default true).
    #[serde(default)]
    enabled: Option<bool>,
    /// At least one group, each with at least one condition.
    #[schema(min_items = 1)]
    trigger_groups: Vec<TriggerGroup>,
    /// At least one action.
    #[schema(min_items = 1)]
    actions: Vec<Action>,
}

/// Changes to a rule; absent fields stay (`{"enabled": false}` disables it).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateRuleRequest {
    /// Name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: Option<String>,
    /// Free text; `""` clears it.
    #[serde(default)]
    description: Option<String>,
    /// Enable or disable.
    #[serde(default)]
    enabled: Option<bool>,
    /// New trigger groups.
    #[serde(default)]
    #[schema(min_items = 1)]
    trigger_groups: Option<Vec<TriggerGroup>>,
    /// New actions.
    #[serde(default)]
    #[schema(min_items = 1)]
    actions: Option<Vec<Action>>,
}

/// Trims a description; empty means none.
pub(crate) fn description(d: Option<String>) -> ApiResult<Option<String>> {
    let Some(d) = d else { return Ok(None) };
    let d = d.trim();
    if d.chars().count() > 2000 {
        return Err(ApiError::invalid(
            "description",
            "must be at most 2000 characters",
        ));
    }
    Ok((!d.is_empty()).then(|| d.to_owned()))
}

async fn load_rule(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<Rule> {
    rule_store(state)?
        .get_rule(caller.tenant_id, RuleId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("rule", id).into())
}

/// Creates a rule.
#[utoipa::path(
    post,
    path = "/rules",
    tag = "rules",
    request_body = CreateRuleRequest,
    responses(
        (status = 201, description = "Created", body = RuleView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 422, description = "Well-formed but not usable: a device, profile, channel or scene it names is not in the tenant, or a value does not fit its operator; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:write", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:write"]), ("api_key" = ["rule:write"]))
)]
pub(crate) async fn create_rule(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<CreateRuleRequest>,
) -> ApiResult<(StatusCode, axum::Json<RuleView>)> {
    caller.require(Permission::RuleWrite)?;
    let store = rule_store(&state)?;
    let rules = store
        .list_rules(
            caller.tenant_id,
            tp_core::Page {
                limit: 1,
                offset: 0,
            },
        )
        .await?
        .total;
    crate::quota::check("rules", "max_rules", rules, state.limits.max_rules)?;
    let name = valid_name("name", &req.name)?;
    let description = description(req.description)?;
    validate_trigger_groups(
        state.metadata.as_ref(),
        state.access.as_ref(),
        caller.tenant_id,
        &req.trigger_groups,
    )
    .await?;
    validate_actions(
        state.metadata.as_ref(),
        rule_store(&state)?.as_ref(),
        caller.tenant_id,
        &req.actions,
        None,
    )
    .await?;
    let now = now_ms();
    let rule = Rule {
        id: RuleId::new(),
        tenant_id: caller.tenant_id,
        name,
        description,
        enabled: req.enabled.unwrap_or(true),
        trigger_groups: req.trigger_groups,
        actions: req.actions,
        created_at: now,
        updated_at: now,
    };
    store.create_rule(&rule).await?;
    rules_changed(&state, caller.tenant_id).await;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "rule.create",
        "rule",
        rule.id,
        serde_json::json!({"name": rule.name, "enabled": rule.enabled}),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(rule.into())))
}

/// Lists the tenant's rules by name.
#[utoipa::path(
    get,
    path = "/rules",
    tag = "rules",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of rules", body = RuleList),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:read", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:read"]), ("api_key" = ["rule:read"]))
)]
pub(crate) async fn list_rules(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<RuleList>> {
    caller.require(Permission::RuleRead)?;
    let paged = rule_store(&state)?
        .list_rules(caller.tenant_id, page_of(q.page, q.page_size)?)
        .await?;
    Ok(axum::Json(RuleList {
        items: paged.items.into_iter().map(RuleView::from).collect(),
        total: paged.total,
    }))
}

/// One rule.
#[utoipa::path(
    get,
    path = "/rules/{id}",
    tag = "rules",
    params(("id" = Uuid, Path, description = "Rule id")),
    responses(
        (status = 200, description = "The rule", body = RuleView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:read", body = ErrorBody),
        (status = 404, description = "No such rule in the tenant", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:read"]), ("api_key" = ["rule:read"]))
)]
pub(crate) async fn get_rule(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<RuleView>> {
    caller.require(Permission::RuleRead)?;
    Ok(axum::Json(load_rule(&state, &caller, id).await?.into()))
}

/// Changes a rule (absent fields stay); enables or disables it with `enabled`.
/// Disabling clears the rule's open alarms (nothing would clear them otherwise) and
/// its evaluation state, so re-enabling starts afresh.
#[utoipa::path(
    put,
    path = "/rules/{id}",
    tag = "rules",
    params(("id" = Uuid, Path, description = "Rule id")),
    request_body = UpdateRuleRequest,
    responses(
        (status = 200, description = "The updated rule", body = RuleView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 422, description = "Well-formed but not usable: a device, profile, channel or scene it names is not in the tenant, or a value does not fit its operator; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:write", body = ErrorBody),
        (status = 404, description = "No such rule in the tenant", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:write"]), ("api_key" = ["rule:write"]))
)]
pub(crate) async fn update_rule(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<UpdateRuleRequest>,
) -> ApiResult<axum::Json<RuleView>> {
    caller.require(Permission::RuleWrite)?;
    let mut rule = load_rule(&state, &caller, id).await?;
    let was_enabled = rule.enabled;
    if let Some(n) = req.name {
        rule.name = valid_name("name", &n)?;
    }
    if req.description.is_some() {
        rule.description = description(req.description)?;
    }
    if let Some(e) = req.enabled {
        rule.enabled = e;
    }
    if let Some(groups) = req.trigger_groups {
        validate_trigger_groups(
            state.metadata.as_ref(),
            state.access.as_ref(),
            caller.tenant_id,
            &groups,
        )
        .await?;
        rule.trigger_groups = groups;
    }
    if let Some(actions) = req.actions {
        validate_actions(
            state.metadata.as_ref(),
            rule_store(&state)?.as_ref(),
            caller.tenant_id,
            &actions,
            None,
        )
        .await?;
        rule.actions = actions;
    }
    let disabled = was_enabled && !rule.enabled;
    rule.updated_at = now_ms();
    rule_store(&state)?.update_rule(&rule).await?;
    rules_changed(&state, caller.tenant_id).await;
    if disabled {
        clear_open_alarms(&state, &caller, rule.id, "the rule was disabled").await?;
        // A disabled rule is not evaluated: re-enabled, it starts afresh (a value
        // still out of range fires again, a "held for" window starts again) rather
        // than resuming a "firing" state whose alarm was just cleared.
        let store = rule_store(&state)?;
        for s in store.list_rule_states(rule.id).await? {
            store.delete_rule_state(rule.id, &s.scope).await?;
        }
    }
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "rule.update",
        "rule",
        rule.id,
        serde_json::json!({"name": rule.name, "enabled": rule.enabled}),
    )
    .await;
    Ok(axum::Json(rule.into()))
}

/// Clears the open (active or acknowledged) alarms of a rule that no longer runs:
/// nothing would ever clear them otherwise. Each gets a `cleared` history entry by
/// the caller with `reason`. Called after the engines have dropped the rule, so no
/// evaluation reopens or repeats them meanwhile.
async fn clear_open_alarms(
    state: &AppState,
    caller: &Caller,
    rule: RuleId,
    reason: &str,
) -> ApiResult<()> {
    let store = rule_store(state)?;
    let filter = AlarmFilter {
        rule_id: Some(rule),
        statuses: vec![AlarmStatus::Active, AlarmStatus::Acknowledged],
        // Cleared alarms leave the filter, so the first page is re-read until empty.
        page: Page {
            offset: 0,
            limit: 500,
        },
        ..Default::default()
    };
    loop {
        let open = store.list_alarms(caller.tenant_id, &filter).await?.items;
        if open.is_empty() {
            return Ok(());
        }
        for mut alarm in open {
            let mut event = alarm::clear(&mut alarm, now_ms());
            event.user_id = caller.user_id();
            event.text = Some(reason.to_owned());
            store.update_alarm(&alarm).await?;
            store.append_alarm_event(&event).await?;
        }
    }
}

/// Deletes a rule and its evaluation state; its alarms stay, and the open ones are
/// cleared (nothing would clear them once the rule is gone).
#[utoipa::path(
    delete,
    path = "/rules/{id}",
    tag = "rules",
    params(("id" = Uuid, Path, description = "Rule id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing rule:write", body = ErrorBody),
        (status = 404, description = "No such rule in the tenant", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["rule:write"]), ("api_key" = ["rule:write"]))
)]
pub(crate) async fn delete_rule(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::RuleWrite)?;
    let rule = load_rule(&state, &caller, id).await?;
    rule_store(&state)?
        .delete_rule(caller.tenant_id, rule.id)
        .await?;
    rules_changed(&state, caller.tenant_id).await;
    clear_open_alarms(&state, &caller, rule.id, "the rule was deleted").await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "rule.delete",
        "rule",
        rule.id,
        serde_json::json!({"name": rule.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
