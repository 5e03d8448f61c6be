//! Unauthenticated operational endpoints: health, readiness, metrics, the OpenAPI document.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ErrorBody, ErrorInfo};
use crate::state::{AppState, BoxFuture};

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthResponse {
    /// Always `ok`.
    status: &'static str,
}

/// Readiness and the result of each check.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReadyResponse {
    /// `ready` or `not_ready`.
    status: &'static str,
    /// Check name -> `ok`, or `failed` (what failed only for a `SYS_ADMIN` caller:
    /// backend error text names hosts and internals).
    checks: BTreeMap<&'static str, String>,
    /// Set when not ready: the first failing check (its detail for admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorInfo>,
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    responses((status = 200, description = "Alive", body = HealthResponse)),
    security(())
)]
pub(crate) async fn healthz() -> axum::Json<HealthResponse> {
    axum::Json(HealthResponse { status: "ok" })
}

/// The node can serve: every store, the cache and every added check are healthy. The
/// status code and check names are public (load balancers probe without credentials);
/// why a check failed is shown to a `SYS_ADMIN` caller only.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "system",
    responses(
        (status = 200, description = "Ready", body = ReadyResponse),
        (status = 503, description = "A check failed", body = ReadyResponse),
    ),
    security(())
)]
pub(crate) async fn readyz(State(state): State<AppState>, parts: Parts) -> Response {
    let detailed = is_sys_admin(&state, parts).await;
    let mut checks: Vec<(&'static str, BoxFuture<tp_core::Result<()>>)> = Vec::new();
    let (m, t, c) = (
        state.metadata.clone(),
        state.timeseries.clone(),
        state.cache.clone(),
    );
    checks.push(("metadata", Box::pin(async move { m.healthcheck().await })));
    checks.push(("timeseries", Box::pin(async move { t.healthcheck().await })));
    checks.push(("cache", Box::pin(async move { c.healthcheck().await })));
    for (name, check) in state.readiness.iter() {
        checks.push((name, check()));
    }
    let mut results = BTreeMap::new();
    let mut error = None;
    for (name, fut) in checks {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {}s", CHECK_TIMEOUT.as_secs())),
        };
        match outcome {
            Ok(()) => {
                results.insert(name, "ok".to_owned());
            }
            Err(msg) => {
                tracing::warn!(check = name, error = %msg, "Readiness check failed.");
                let msg = if detailed { msg } else { "failed".to_owned() };
                if error.is_none() {
                    error = Some(ErrorInfo {
                        code: "unavailable".to_owned(),
                        message: format!("{name}: {msg}"),
                        field: None,
                    });
                }
                results.insert(name, msg);
            }
        }
    }
    let status = if error.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = ReadyResponse {
        status: if error.is_none() {
            "ready"
        } else {
            "not_ready"
        },
        checks: results,
        error,
    };
    (status, axum::Json(body)).into_response()
}

/// Whether the request carries the credentials of a `SYS_ADMIN` (a missing or bad
/// credential is simply not one: readiness stays public).
async fn is_sys_admin(state: &AppState, mut parts: Parts) -> bool {
    let has_credentials = parts.headers.contains_key(header::AUTHORIZATION)
        || parts.headers.contains_key(crate::auth::API_KEY_HEADER);
    has_credentials
        && Caller::from_request_parts(&mut parts, state)
            .await
            .is_ok_and(|c| c.require_sys_admin().is_ok())
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
    security(())
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// This API's OpenAPI document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "system",
    responses(
        (status = 200, description = "OpenAPI 3 document", body = Object, content_type = "application/json"),
        (status = 500, description = "Serialization failed", body = ErrorBody),
    ),
    security(())
)]
pub(crate) async fn openapi_json() -> Response {
    static SPEC: OnceLock<String> = OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        serde_json::to_string(&crate::openapi::openapi()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "Failed to serialize the OpenAPI document.");
            String::new()
        })
    });
    if spec.is_empty() {
        return crate::error::ApiError::Core(tp_core::Error::backend(
            "openapi",
            "serialization failed",
        ))
        .into_response();
    }
    ([(header::CONTENT_TYPE, "application/json")], spec.clone()).into_response()
}
