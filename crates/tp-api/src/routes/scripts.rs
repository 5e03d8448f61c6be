//! `/api/v1/scripts`: data scripts (ThingsPanel's `data_script`), `script:read` to
//! read and `script:write` to change, enable and test-run them.
//!
//! A script belongs to a device profile of the tenant and handles one message type
//! (`telemetry_up`, `telemetry_down`, `attribute_up`, `attribute_down`; TP's `A`–`D`
//! are accepted too). At most one script of a type is enabled per profile (a second
//! is a 409); new scripts start disabled, as in ThingsPanel. `POST /scripts/{id}/test`
//! is TP's `quiz`: it runs the script (or unsaved `content`) on a sample under the
//! same limits as ingest and returns the output or the failure.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::script::{
    DataScript, ScriptFailure, ScriptFilter, ScriptRunnerRef, ScriptStoreRef, ScriptType,
};
use tp_core::{ProfileId, ScriptId, now_ms};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{IdPath, Json, Query};
use super::support::{audit, valid_name};
use crate::auth::Caller;
use crate::authz::Permission;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// Longest script source accepted, in characters.
pub(crate) const MAX_CONTENT_CHARS: usize = 65_536;
/// Longest test sample accepted, in characters of text (or of hex).
const MAX_SAMPLE_CHARS: usize = 262_144;

/// A data script.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ScriptView {
    /// Script id.
    id: Uuid,
    /// The device profile whose messages it handles.
    profile_id: Uuid,
    /// Which messages it handles.
    script_type: ScriptType,
    /// Display name.
    name: String,
    /// Lua source defining `encodeInp(msg, topic)`.
    content: String,
    /// Whether it runs on messages.
    enabled: bool,
    /// Free text.
    description: Option<String>,
    /// Creation time (ms).
    created_at: i64,
    /// Last change (ms).
    updated_at: i64,
}

impl From<DataScript> for ScriptView {
    fn from(s: DataScript) -> Self {
        Self {
            id: s.id.0,
            profile_id: s.profile_id.0,
            script_type: s.script_type,
            name: s.name,
            content: s.content,
            enabled: s.enabled,
            description: s.description,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// The tenant's scripts matching the filter.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ScriptList {
    /// By profile, type (`telemetry_up`, `telemetry_down`, `attribute_up`,
    /// `attribute_down`), then name.
    items: Vec<ScriptView>,
    /// How many there are.
    total: u64,
}

/// Which scripts to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ScriptQuery {
    /// Only this profile's.
    profile_id: Option<Uuid>,
    /// Only this type.
    #[param(value_type = Option<ScriptType>, inline)]
    script_type: Option<String>,
}

/// A new data script (disabled unless `enabled` is true).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateScriptRequest {
    /// A device profile of the tenant (another is a 422).
    profile_id: Uuid,
    /// Which messages it handles.
    script_type: ScriptType,
    /// Display name.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    /// Lua source defining `encodeInp(msg, topic)`, at most 65536 characters.
    #[schema(min_length = 1, max_length = 65536, pattern = r"\S")]
    content: String,
    /// Run it on messages now (default false). A profile has at most one enabled
    /// script per type: another one is a 409.
    #[serde(default)]
    enabled: Option<bool>,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 1000)]
    description: Option<String>,
}

/// Changes to a script; absent fields stay (the profile cannot change).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateScriptRequest {
    /// Display name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: Option<String>,
    /// Which messages it handles.
    #[serde(default)]
    script_type: Option<ScriptType>,
    /// New Lua source, at most 65536 characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 65536, pattern = r"\S")]
    content: Option<String>,
    /// Enable (at most one enabled per profile and type: a 409 otherwise) or disable.
    #[serde(default)]
    enabled: Option<bool>,
    /// Free text; an empty string clears it.
    #[serde(default)]
    #[schema(max_length = 1000)]
    description: Option<String>,
}

/// A sample to run a script on (TP's `quiz`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestScriptRequest {
    /// The sample payload as text (JSON or anything else); empty when absent.
    #[serde(default)]
    #[schema(max_length = 262144)]
    payload: Option<String>,
    /// The sample payload as hex bytes (`01 05 ff`, `0x0105ff`), for binary frames;
    /// instead of `payload`. An odd number of digits is a 422.
    #[serde(default)]
    #[schema(max_length = 262144, pattern = r"^(0x)?[0-9a-fA-F\s]*$")]
    payload_hex: Option<String>,
    /// The topic passed as `topic` (default: the type's ThingsPanel topic, e.g.
    /// `devices/telemetry`).
    #[serde(default)]
    #[schema(max_length = 1024)]
    topic: Option<String>,
    /// Unsaved source to run instead of the stored one (the editor's current text).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 65536, pattern = r"\S")]
    content: Option<String>,
}

/// What a test run produced.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TestScriptResult {
    /// Whether `encodeInp` returned a string.
    ok: bool,
    /// The output as text (when it is UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    /// The output as hex (always, when `ok`).
    #[serde(skip_serializing_if = "Option::is_none")]
    output_hex: Option<String>,
    /// For an uplink script: the output parsed as JSON, what ingest would decode (null
    /// when it is not JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    output_json: Option<serde_json::Value>,
    /// Why it failed: `compile`, `runtime`, `instructions`, `memory`, `timeout` or
    /// `output`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "runtime")]
    reason: Option<String>,
    /// The failure message.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Wall-clock time of the run (ms).
    elapsed_ms: u64,
}

pub(crate) fn script_store(state: &AppState) -> ApiResult<&ScriptStoreRef> {
    state.scripts.as_ref().ok_or_else(|| {
        ApiError::http(
            StatusCode::SERVICE_UNAVAILABLE,
            "scripts_unavailable",
            "data scripts are not enabled on this node",
        )
    })
}

fn script_runner(state: &AppState) -> ApiResult<&ScriptRunnerRef> {
    state.script_runner.as_ref().ok_or_else(|| {
        ApiError::http(
            StatusCode::SERVICE_UNAVAILABLE,
            "script_engine_unavailable",
            "this node has no data script engine (built without the `lua` feature)",
        )
    })
}

/// Tells this node's engine that a profile's scripts changed (other nodes see it
/// within their lookup cache's lifetime).
fn scripts_changed(state: &AppState, profile: ProfileId) {
    if let Some(runner) = &state.script_runner {
        runner.invalidate(profile);
    }
}

fn valid_content(field: &str, content: &str) -> ApiResult<String> {
    if content.trim().is_empty() || content.chars().count() > MAX_CONTENT_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {MAX_CONTENT_CHARS} characters of Lua source, not all blank"),
        ));
    }
    Ok(content.to_owned())
}

fn valid_description(description: Option<String>) -> ApiResult<Option<String>> {
    match description {
        Some(d) if d.chars().count() > 1000 => Err(ApiError::invalid(
            "description",
            "must be at most 1000 characters",
        )),
        Some(d) if d.trim().is_empty() => Ok(None),
        d => Ok(d),
    }
}

async fn load_script(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<DataScript> {
    script_store(state)?
        .get_script(caller.tenant_id, ScriptId(id))
        .await?
        .ok_or_else(|| tp_core::Error::not_found("script", id).into())
}

/// Creates a data script on a profile.
#[utoipa::path(
    post,
    path = "/scripts",
    tag = "scripts",
    request_body = CreateScriptRequest,
    responses(
        (status = 201, description = "Created", body = ScriptView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing script:write", body = ErrorBody),
        (status = 409, description = "Enabled, and the profile already has an enabled script of this type", body = ErrorBody),
        (status = 422, description = "`profile_id` is not a device profile of the tenant", body = ErrorBody),
        (status = 503, description = "Data scripts are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["script:write"]), ("api_key" = ["script:write"]))
)]
pub(crate) async fn create_script(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<CreateScriptRequest>,
) -> ApiResult<(StatusCode, axum::Json<ScriptView>)> {
    caller.require(Permission::ScriptWrite)?;
    let store = script_store(&state)?;
    let now = now_ms();
    let script = DataScript {
        id: ScriptId::new(),
        tenant_id: caller.tenant_id,
        profile_id: ProfileId(req.profile_id),
        script_type: req.script_type,
        name: valid_name("name", &req.name)?,
        content: valid_content("content", &req.content)?,
        enabled: req.enabled.unwrap_or(false),
        description: valid_description(req.description)?,
        created_at: now,
        updated_at: now,
    };
    store.create_script(&script).await?;
    scripts_changed(&state, script.profile_id);
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "script.create",
        "script",
        script.id,
        serde_json::json!({"name": script.name, "profile_id": script.profile_id,
            "script_type": script.script_type, "enabled": script.enabled}),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(script.into())))
}

/// Lists the tenant's data scripts, optionally of one profile and type.
#[utoipa::path(
    get,
    path = "/scripts",
    tag = "scripts",
    params(ScriptQuery),
    responses(
        (status = 200, description = "The matching scripts", body = ScriptList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing script:read", body = ErrorBody),
        (status = 503, description = "Data scripts are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["script:read"]), ("api_key" = ["script:read"]))
)]
pub(crate) async fn list_scripts(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<ScriptQuery>,
) -> ApiResult<axum::Json<ScriptList>> {
    caller.require(Permission::ScriptRead)?;
    let script_type = q
        .script_type
        .as_deref()
        .map(ScriptType::parse)
        .transpose()?;
    let items = script_store(&state)?
        .list_scripts(
            caller.tenant_id,
            ScriptFilter {
                profile_id: q.profile_id.map(ProfileId),
                script_type,
            },
        )
        .await?;
    Ok(axum::Json(ScriptList {
        total: items.len() as u64,
        items: items.into_iter().map(ScriptView::from).collect(),
    }))
}

/// One data script.
#[utoipa::path(
    get,
    path = "/scripts/{id}",
    tag = "scripts",
    params(("id" = Uuid, Path, description = "Script id")),
    responses(
        (status = 200, description = "The script", body = ScriptView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing script:read", body = ErrorBody),
        (status = 404, description = "No such script in the tenant", body = ErrorBody),
        (status = 503, description = "Data scripts are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["script:read"]), ("api_key" = ["script:read"]))
)]
pub(crate) async fn get_script(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<axum::Json<ScriptView>> {
    caller.require(Permission::ScriptRead)?;
    Ok(axum::Json(load_script(&state, &caller, id).await?.into()))
}

/// Changes a data script: its source, name, type, description, or enables/disables it.
#[utoipa::path(
    patch,
    path = "/scripts/{id}",
    tag = "scripts",
    params(("id" = Uuid, Path, description = "Script id")),
    request_body = UpdateScriptRequest,
    responses(
        (status = 200, description = "The updated script", body = ScriptView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing script:write", body = ErrorBody),
        (status = 404, description = "No such script in the tenant", body = ErrorBody),
        (status = 409, description = "Enabling it while the profile has another enabled script of its type", body = ErrorBody),
        (status = 503, description = "Data scripts are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["script:write"]), ("api_key" = ["script:write"]))
)]
pub(crate) async fn update_script(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<UpdateScriptRequest>,
) -> ApiResult<axum::Json<ScriptView>> {
    caller.require(Permission::ScriptWrite)?;
    let mut script = load_script(&state, &caller, id).await?;
    if let Some(name) = req.name {
        script.name = valid_name("name", &name)?;
    }
    if let Some(content) = req.content {
        script.content = valid_content("content", &content)?;
    }
    if let Some(script_type) = req.script_type {
        script.script_type = script_type;
    }
    if let Some(enabled) = req.enabled {
        script.enabled = enabled;
    }
    if req.description.is_some() {
        script.description = valid_description(req.description)?;
    }
    // a new version even within the same millisecond: engines cache by it
    script.updated_at = now_ms().max(script.updated_at + 1);
    script_store(&state)?.update_script(&script).await?;
    scripts_changed(&state, script.profile_id);
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "script.update",
        "script",
        script.id,
        serde_json::json!({"name": script.name, "script_type": script.script_type,
            "enabled": script.enabled}),
    )
    .await;
    Ok(axum::Json(script.into()))
}

/// Deletes a data script.
#[utoipa::path(
    delete,
    path = "/scripts/{id}",
    tag = "scripts",
    params(("id" = Uuid, Path, description = "Script id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing script:write", body = ErrorBody),
        (status = 404, description = "No such script in the tenant", body = ErrorBody),
        (status = 503, description = "Data scripts are not enabled on this node", body = ErrorBody),
    ),
    security(("bearer" = ["script:write"]), ("api_key" = ["script:write"]))
)]
pub(crate) async fn delete_script(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    caller.require(Permission::ScriptWrite)?;
    let script = load_script(&state, &caller, id).await?;
    if !script_store(&state)?
        .delete_script(caller.tenant_id, script.id)
        .await?
    {
        return Err(tp_core::Error::not_found("script", id).into());
    }
    scripts_changed(&state, script.profile_id);
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "script.delete",
        "script",
        script.id,
        serde_json::json!({"name": script.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The sample's bytes: `payload_hex` decoded, else `payload`'s text.
fn sample(req: &TestScriptRequest) -> ApiResult<Vec<u8>> {
    for (field, text) in [("payload", &req.payload), ("payload_hex", &req.payload_hex)] {
        if text
            .as_ref()
            .is_some_and(|t| t.chars().count() > MAX_SAMPLE_CHARS)
        {
            return Err(ApiError::invalid(
                field,
                format!("must be at most {MAX_SAMPLE_CHARS} characters"),
            ));
        }
    }
    let bytes = match (&req.payload, &req.payload_hex) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "payload_hex",
                "send either payload or payload_hex",
            ));
        }
        (_, Some(hex_text)) => {
            let body = hex_text.strip_prefix("0x").unwrap_or(hex_text);
            if !body
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c.is_whitespace())
            {
                return Err(ApiError::invalid(
                    "payload_hex",
                    "must be hex digits and blanks, with an optional 0x",
                ));
            }
            let digits: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            // the pattern allows any number of digits: pairing them is the 422
            hex::decode(&digits).map_err(|e| {
                ApiError::unprocessable("payload_hex", format!("is not whole bytes: {e}"))
            })?
        }
        (Some(text), None) => text.clone().into_bytes(),
        (None, None) => Vec::new(),
    };
    Ok(bytes)
}

/// ThingsPanel's topic of a script type's messages, the default `topic` of a test run.
fn default_topic(script_type: ScriptType) -> &'static str {
    match script_type {
        ScriptType::TelemetryUp => "devices/telemetry",
        ScriptType::TelemetryDown => "devices/telemetry/control",
        ScriptType::AttributeUp => "devices/attributes",
        ScriptType::AttributeDown => "devices/attributes/set",
    }
}

/// Runs a script on a sample (ThingsPanel's `quiz`): the stored source, or unsaved
/// `content`, under the same limits as ingest. A failing script is a 200 with `ok`
/// false and the reason.
#[utoipa::path(
    post,
    path = "/scripts/{id}/test",
    tag = "scripts",
    params(("id" = Uuid, Path, description = "Script id")),
    request_body = TestScriptRequest,
    responses(
        (status = 200, description = "What the script produced, or why it failed", body = TestScriptResult),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing script:write", body = ErrorBody),
        (status = 404, description = "No such script in the tenant", body = ErrorBody),
        (status = 422, description = "Both `payload` and `payload_hex` were sent, or `payload_hex` has an odd number of digits", body = ErrorBody),
        (status = 503, description = "No data script engine on this node", body = ErrorBody),
    ),
    security(("bearer" = ["script:write"]), ("api_key" = ["script:write"]))
)]
pub(crate) async fn test_script(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath,
    Json(req): Json<TestScriptRequest>,
) -> ApiResult<axum::Json<TestScriptResult>> {
    caller.require(Permission::ScriptWrite)?;
    let script = load_script(&state, &caller, id).await?;
    let payload = sample(&req)?;
    let content = match &req.content {
        Some(c) => valid_content("content", c)?,
        None => script.content.clone(),
    };
    let topic = req
        .topic
        .clone()
        .unwrap_or_else(|| default_topic(script.script_type).to_owned());
    let runner = script_runner(&state)?;
    let started = std::time::Instant::now();
    let outcome = runner.run_source(&content, &payload, &topic).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    audit(
        &state,
        &caller,
        caller.tenant_id,
        "script.test",
        "script",
        script.id,
        serde_json::json!({"name": script.name, "ok": outcome.is_ok(),
            "reason": outcome.as_ref().err().map(ScriptFailure::reason)}),
    )
    .await;
    Ok(axum::Json(match outcome {
        Ok(out) => TestScriptResult {
            ok: true,
            output_json: script
                .script_type
                .is_uplink()
                .then(|| serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null)),
            output_hex: Some(hex::encode(&out)),
            output: String::from_utf8(out).ok(),
            reason: None,
            error: None,
            elapsed_ms,
        },
        Err(failure) => TestScriptResult {
            ok: false,
            output: None,
            output_hex: None,
            output_json: None,
            reason: Some(failure.reason().to_owned()),
            error: Some(failure.to_string()),
            elapsed_ms,
        },
    }))
}
