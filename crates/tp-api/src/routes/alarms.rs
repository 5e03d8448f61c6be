//! `/api/v1/alarms` (alarm:read to read; alarm:ack to acknowledge, clear and comment).
//!
//! Users move an alarm along its lifecycle (active -> acknowledged -> cleared); every
//! step and comment is appended to the alarm's history with the user's id. A cleared
//! alarm is final: acknowledging or clearing it again is 409.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::rules::{
    Alarm, AlarmCounts, AlarmEvent, AlarmEventKind, AlarmFilter, AlarmId, AlarmSeverity,
    AlarmStatus, RuleId,
};
use tp_core::{DeviceId, now_ms};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{IdPath, Json, OptionalJson, Query};
use super::rules::rule_store;
use super::support::{audit, page_of};
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// An alarm.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AlarmView {
    /// Alarm id.
    id: Uuid,
    /// The rule that raised it.
    rule_id: Option<Uuid>,
    /// The device it is about.
    device_id: Option<Uuid>,
    /// `critical`, `major`, `minor`, `warning` or `info`.
    #[schema(example = "major")]
    severity: String,
    /// `active`, `acknowledged` or `cleared`.
    #[schema(example = "active")]
    status: String,
    /// Short title.
    title: String,
    /// Longer text.
    description: Option<String>,
    /// How often the condition fired while the alarm was open.
    occurrences: u32,
    /// The data that last fired it.
    details: serde_json::Value,
    /// Raise time (ms).
    created_at: i64,
    /// Last change (ms).
    updated_at: i64,
    /// Acknowledgement time (ms).
    acknowledged_at: Option<i64>,
    /// Who acknowledged it.
    acknowledged_by: Option<Uuid>,
    /// Clear time (ms).
    cleared_at: Option<i64>,
}

impl From<Alarm> for AlarmView {
    fn from(a: Alarm) -> Self {
        Self {
            id: a.id.0,
            rule_id: a.rule_id.map(|r| r.0),
            device_id: a.device_id.map(|d| d.0),
            severity: a.severity.as_str().to_owned(),
            status: a.status.as_str().to_owned(),
            title: a.title,
            description: a.description,
            occurrences: a.occurrences,
            details: a.details,
            created_at: a.created_at,
            updated_at: a.updated_at,
            acknowledged_at: a.acknowledged_at,
            acknowledged_by: a.acknowledged_by.map(|u| u.0),
            cleared_at: a.cleared_at,
        }
    }
}

/// A page of alarms.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AlarmList {
    /// The page, newest first.
    items: Vec<AlarmView>,
    /// All matching alarms.
    total: u64,
}

/// One entry of an alarm's history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AlarmEventView {
    /// When (ms).
    ts: i64,
    /// `raised`, `repeated`, `acknowledged`, `cleared` or `comment`.
    #[schema(example = "comment")]
    kind: String,
    /// The user who did it (none for the rule engine).
    user_id: Option<Uuid>,
    /// Comment text or a description of the change.
    text: Option<String>,
}

impl From<AlarmEvent> for AlarmEventView {
    fn from(e: AlarmEvent) -> Self {
        Self {
            ts: e.ts,
            kind: serde_json::to_value(e.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            user_id: e.user_id.map(|u| u.0),
            text: e.text,
        }
    }
}

/// An alarm's history, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AlarmHistory {
    /// The entries.
    items: Vec<AlarmEventView>,
}

/// Alarm counts.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AlarmCountsView {
    /// Active alarms.
    active: u64,
    /// Acknowledged, not cleared.
    acknowledged: u64,
    /// Cleared.
    cleared: u64,
    /// Open (active + acknowledged) alarms per severity; every severity is present.
    #[schema(value_type = Object, example = json!({"critical": 1, "major": 0, "minor": 0, "warning": 2, "info": 0}))]
    open_by_severity: std::collections::BTreeMap<String, u64>,
}

impl From<AlarmCounts> for AlarmCountsView {
    fn from(c: AlarmCounts) -> Self {
        Self {
            active: c.active,
            acknowledged: c.acknowledged,
            cleared: c.cleared,
            open_by_severity: c.open_by_severity,
        }
    }
}

/// Filters and paging of the alarm list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AlarmQuery {
    /// Only this device's alarms.
    device_id: Option<Uuid>,
    /// Only this rule's alarms.
    rule_id: Option<Uuid>,
    /// Comma-separated states (`active,acknowledged`); default all.
    #[param(value_type = Option<Vec<AlarmStatus>>, style = Form, explode = false, min_items = 1)]
    status: Option<String>,
    /// Only this severity.
    #[param(value_type = Option<super::names::SeverityName>, inline)]
    severity: Option<String>,
    /// Page number, from 1 (default 1).
    #[param(minimum = 1, maximum = 1000000000)]
    page: Option<u64>,
    /// Rows per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    page_size: Option<u64>,
}

/// Which device to count.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CountQuery {
    /// Count one device's alarms only.
    device_id: Option<Uuid>,
}

/// A comment on an alarm.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommentRequest {
    /// 1 to 2000 characters.
    #[schema(min_length = 1, max_length = 2000, pattern = r"\S")]
    text: String,
}

/// An optional note with an acknowledgement or clear.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransitionRequest {
    /// Recorded in the alarm's history (blank: no note).
    #[serde(default)]
    #[schema(max_length = 2000)]
    text: Option<String>,
}

fn parse_statuses(s: Option<&str>) -> ApiResult<Vec<AlarmStatus>> {
    // Absent: every state. Present: every item must be a state (`status=` and
    // `a,,b` name an empty state).
    let Some(s) = s else {
        return Ok(Vec::new());
    };
    s.split(',')
        .map(|p| {
            AlarmStatus::parse(p).map_err(|_| {
                ApiError::invalid(
                    "status",
                    format!("{p:?} is not one of active, acknowledged, cleared"),
                )
            })
        })
        .collect()
}

fn parse_severity(s: &str) -> ApiResult<AlarmSeverity> {
    AlarmSeverity::parse(s).map_err(|_| {
        ApiError::invalid(
            "severity",
            format!("{s:?} is not one of critical, major, minor, warning, info"),
        )
    })
}

/// The optional JSON body of acknowledge/clear (an empty body is no note).
fn note(text: Option<String>) -> ApiResult<Option<String>> {
    let Some(t) = text else { return Ok(None) };
    let t = t.trim();
    if t.chars().count() > 2000 {
        return Err(ApiError::invalid("text", "must be at most 2000 characters"));
    }
    Ok((!t.is_empty()).then(|| t.to_owned()))
}

async fn load_alarm(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<Alarm> {
    rule_store(state)?
        .get_alarm(caller.tenant_id, AlarmId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("alarm", id).into())
}

async fn append(
    state: &AppState,
    caller: &Caller,
    alarm: &Alarm,
    kind: AlarmEventKind,
    ts: i64,
    text: Option<String>,
) -> ApiResult<AlarmEvent> {
    let event = AlarmEvent {
        alarm_id: alarm.id,
        tenant_id: caller.tenant_id,
        ts,
        kind,
        user_id: caller.user_id(),
        text,
    };
    rule_store(state)?.append_alarm_event(&event).await?;
    Ok(event)
}

/// Lists the tenant's alarms, newest first, optionally filtered.
#[utoipa::path(
    get,
    path = "/alarms",
    tag = "alarms",
    params(AlarmQuery),
    responses(
        (status = 200, description = "A page of alarms", body = AlarmList),
        (status = 400, description = "Invalid filter or paging", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing alarm:read", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["alarm:read"]), ("api_key" = ["alarm:read"]))
)]
pub(crate) async fn list_alarms(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<AlarmQuery>,
) -> ApiResult<axum::Json<AlarmList>> {
    caller.require(Permission::AlarmRead)?;
    let filter = AlarmFilter {
        device_id: q.device_id.map(DeviceId),
        rule_id: q.rule_id.map(RuleId),
        statuses: parse_statuses(q.status.as_deref())?,
        severity: q.severity.as_deref().map(parse_severity).transpose()?,
        page: page_of(q.page, q.page_size)?,
    };
    let paged = rule_store(&state)?
        .list_alarms(caller.tenant_id, &filter)
        .await?;
    Ok(axum::Json(AlarmList {
        items: paged.items.into_iter().map(AlarmView::from).collect(),
        total: paged.total,
    }))
}

/// Alarm counts of the tenant, or of one device.
#[utoipa::path(
    get,
    path = "/alarms/counts",
    tag = "alarms",
    params(CountQuery),
    responses(
        (status = 200, description = "The counts", body = AlarmCountsView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing alarm:read", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["alarm:read"]), ("api_key" = ["alarm:read"]))
)]
pub(crate) async fn alarm_counts(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<CountQuery>,
) -> ApiResult<axum::Json<AlarmCountsView>> {
    caller.require(Permission::AlarmRead)?;
    let counts = rule_store(&state)?
        .count_alarms(caller.tenant_id, q.device_id.map(DeviceId))
        .await?;
    Ok(axum::Json(counts.into()))
}

/// One alarm.
#[utoipa::path(
    get,
    path = "/alarms/{id}",
    tag = "alarms",
    params(("id" = Uuid, Path, description = "Alarm id")),
    responses(
        (status = 200, description = "The alarm", body = AlarmView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing alarm:read", body = ErrorBody),
        (status = 404, description = "No such alarm in the tenant", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["alarm:read"]), ("api_key" = ["alarm:read"]))
)]
pub(crate) async fn get_alarm(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<AlarmView>> {
    caller.require(Permission::AlarmRead)?;
    Ok(axum::Json(load_alarm(&state, &caller, id).await?.into()))
}

/// An alarm's history (raise, repeats, acknowledgement, clear, comments), oldest first.
#[utoipa::path(
    get,
    path = "/alarms/{id}/history",
    tag = "alarms",
    params(("id" = Uuid, Path, description = "Alarm id")),
    responses(
        (status = 200, description = "The history", body = AlarmHistory),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing alarm:read", body = ErrorBody),
        (status = 404, description = "No such alarm in the tenant", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["alarm:read"]), ("api_key" = ["alarm:read"]))
)]
pub(crate) async fn alarm_history(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<AlarmHistory>> {
    caller.require(Permission::AlarmRead)?;
    let alarm = load_alarm(&state, &caller, id).await?;
    let events = rule_store(&state)?
        .list_alarm_events(caller.tenant_id, alarm.id)
        .await?;
    Ok(axum::Json(AlarmHistory {
        items: events.into_iter().map(AlarmEventView::from).collect(),
    }))
}

/// Acknowledges an open alarm (again: no change). A cleared alarm is 409.
#[utoipa::path(
    post,
    path = "/alarms/{id}/acknowledge",
    tag = "alarms",
    params(("id" = Uuid, Path, description = "Alarm id")),
    request_body(content = Option<TransitionRequest>, description = "Optional note"),
    responses(
        (status = 200, description = "The acknowledged alarm", body = AlarmView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing alarm:ack", body = ErrorBody),
        (status = 404, description = "No such alarm in the tenant", body = ErrorBody),
        (status = 409, description = "The alarm is cleared", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["alarm:ack"]), ("api_key" = ["alarm:ack"]))
)]
pub(crate) async fn acknowledge_alarm(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    OptionalJson(body): OptionalJson<TransitionRequest>,
) -> ApiResult<axum::Json<AlarmView>> {
    caller.require(Permission::AlarmAck)?;
    let text = note(body.unwrap_or_default().text)?;
    let mut alarm = load_alarm(&state, &caller, id).await?;
    match alarm.status {
        AlarmStatus::Cleared => {
            return Err(tp_core::Error::Conflict(format!(
                "alarm {id} is cleared and cannot be acknowledged"
            ))
            .into());
        }
        AlarmStatus::Acknowledged => return Ok(axum::Json(alarm.into())),
        AlarmStatus::Active => {}
    }
    let now = now_ms();
    alarm.status = AlarmStatus::Acknowledged;
    alarm.acknowledged_at = Some(now);
    alarm.acknowledged_by = caller.user_id();
    alarm.updated_at = now;
    rule_store(&state)?.update_alarm(&alarm).await?;
    append(
        &state,
        &caller,
        &alarm,
        AlarmEventKind::Acknowledged,
        now,
        text,
    )
    .await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "alarm.acknowledge",
        "alarm",
        alarm.id,
        serde_json::json!({"title": alarm.title}),
    )
    .await;
    Ok(axum::Json(alarm.into()))
}

/// Clears an open alarm. A cleared alarm is 409.
#[utoipa::path(
    post,
    path = "/alarms/{id}/clear",
    tag = "alarms",
    params(("id" = Uuid, Path, description = "Alarm id")),
    request_body(content = Option<TransitionRequest>, description = "Optional note"),
    responses(
        (status = 200, description = "The cleared alarm", body = AlarmView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing alarm:ack", body = ErrorBody),
        (status = 404, description = "No such alarm in the tenant", body = ErrorBody),
        (status = 409, description = "Already cleared", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["alarm:ack"]), ("api_key" = ["alarm:ack"]))
)]
pub(crate) async fn clear_alarm(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    OptionalJson(body): OptionalJson<TransitionRequest>,
) -> ApiResult<axum::Json<AlarmView>> {
    caller.require(Permission::AlarmAck)?;
    let text = note(body.unwrap_or_default().text)?;
    let mut alarm = load_alarm(&state, &caller, id).await?;
    if alarm.status == AlarmStatus::Cleared {
        return Err(tp_core::Error::Conflict(format!("alarm {id} is already cleared")).into());
    }
    let now = now_ms();
    alarm.status = AlarmStatus::Cleared;
    alarm.cleared_at = Some(now);
    alarm.updated_at = now;
    rule_store(&state)?.update_alarm(&alarm).await?;
    append(&state, &caller, &alarm, AlarmEventKind::Cleared, now, text).await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "alarm.clear",
        "alarm",
        alarm.id,
        serde_json::json!({"title": alarm.title}),
    )
    .await;
    Ok(axum::Json(alarm.into()))
}

/// Comments on an alarm (any state).
#[utoipa::path(
    post,
    path = "/alarms/{id}/comments",
    tag = "alarms",
    params(("id" = Uuid, Path, description = "Alarm id")),
    request_body = CommentRequest,
    responses(
        (status = 201, description = "The history entry", body = AlarmEventView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing alarm:ack", body = ErrorBody),
        (status = 404, description = "No such alarm in the tenant", body = ErrorBody),
        (status = 503, description = "Rules are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["alarm:ack"]), ("api_key" = ["alarm:ack"]))
)]
pub(crate) async fn comment_alarm(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<CommentRequest>,
) -> ApiResult<(StatusCode, axum::Json<AlarmEventView>)> {
    caller.require(Permission::AlarmAck)?;
    let Some(text) = note(Some(req.text))? else {
        return Err(ApiError::invalid("text", "must not be empty"));
    };
    let alarm = load_alarm(&state, &caller, id).await?;
    let event = append(
        &state,
        &caller,
        &alarm,
        AlarmEventKind::Comment,
        now_ms(),
        Some(text),
    )
    .await?;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "alarm.comment",
        "alarm",
        alarm.id,
        serde_json::json!({"title": alarm.title}),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(event.into())))
}
