//! The HTTP device API: devices that cannot keep an MQTT connection post their
//! telemetry, attributes and events, and poll their downlink, over plain HTTP.
//!
//! # Authentication
//!
//! Every request carries the device's MQTT credentials as HTTP Basic auth
//! (`Authorization: Basic base64(username:password)`, e.g. `curl -u user:pass`); an
//! `ACCESSTOKEN` device sends its token as the username with an empty password
//! (`curl -u <token>:`).
//! They are checked exactly like an MQTT CONNECT (credential cache, then the metadata
//! store; disabled devices refused). A missing or wrong credential is `401` with
//! `WWW-Authenticate: Basic`.
//!
//! # Endpoints
//!
//! | request | body | success |
//! |---|---|---|
//! | `POST /api/v1/device/telemetry` | as MQTT `devices/telemetry`: flat object, `{"ts","values"}` or an array of those | `202` (queued to the batching writer) |
//! | `POST /api/v1/device/attributes` | as MQTT `devices/attributes/{id}`: flat object | `200` |
//! | `POST /api/v1/device/events[?message_id=..]` | `{"method","params"}` | `202` |
//! | `GET /api/v1/device/commands` | - | `200` `{"result":0,"commands":[..]}` |
//! | `POST /api/v1/device/commands/{message_id}/response` | response object `{"result":0,..}` | `200` |
//!
//! Successes answer ThingsPanel's response object (`{"result":0,"message":"success",
//! "ts":..}`); failures answer it with `result` 1, an `errcode` and a `message` naming
//! the problem: `400 invalid_payload`, `401 unauthorized`, `404 not_found` (unknown
//! `message_id`), `413 payload_too_large` (over the broker's `max_payload_size`),
//! `422 thing_model_violation` (the device template rejects a value; the message
//! names the key and nothing of the message was stored),
//! `503 unavailable` (the node is draining or a store is down; retry).
//!
//! | `GET /api/v1/device/ota/packages/{package_id}` | - | `200` the package file (`206` for a `Range`), see [`crate::ota`] |
//!
//! `GET /api/v1/device/commands` returns the device's pending downlink (commands,
//! attribute sets and gets, telemetry control), oldest first, and marks them `sent`;
//! each item has `message_id`, `kind`, `topic` (the MQTT topic it would arrive on),
//! `payload`, `created_at` and `expires_at`. Answer a command or attribute set with
//! `POST .../commands/{message_id}/response`: the log row becomes `replied`
//! (`result` 0) or `failed`.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use tp_core::protocol::{ResponseObject, decode_event, validate_message_id};
use tp_core::{Device, now_ms};

use crate::DeviceApi;
use crate::downlink::{PolledCommand, new_message_id, poll_pending};
use crate::session::Refused;

/// The HTTP device API's routes (see the [module docs](self)), bound to `broker`.
/// Merge them into the node's API server.
pub fn device_router(broker: &crate::EmbeddedBroker) -> Router {
    let api = broker.device_api.clone();
    // Bodies up to the limit are read; anything longer is refused with 413. The
    // headroom lets the handler tell "too large" from "just at the limit".
    let limit = api.max_payload_size.saturating_add(1);
    Router::new()
        .route("/api/v1/device/telemetry", post(telemetry))
        .route("/api/v1/device/attributes", post(attributes))
        .route("/api/v1/device/events", post(events))
        .route("/api/v1/device/commands", get(commands))
        .route(
            "/api/v1/device/commands/{message_id}/response",
            post(command_response),
        )
        .route("/api/v1/device/ota/packages/{package_id}", get(ota_package))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api)
}

/// A failed device request: status plus ThingsPanel's response object.
#[derive(Debug)]
pub(crate) struct DeviceError {
    status: StatusCode,
    errcode: &'static str,
    message: String,
}

impl DeviceError {
    fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
        }
    }
}

impl From<tp_core::Error> for DeviceError {
    fn from(e: tp_core::Error) -> Self {
        use tp_core::Error as E;
        match e {
            E::Invalid { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_payload", e.to_string())
            }
            E::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            // The thing model refused a value (the message names the key).
            E::Unprocessable { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "thing_model_violation",
                e.to_string(),
            ),
            e if e.is_retryable() => {
                tracing::warn!(error = %e, "device API: backend unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "try again later",
                )
            }
            e => {
                tracing::error!(error = %e, "device API request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for DeviceError {
    fn into_response(self) -> Response {
        let body = ResponseObject {
            result: 1,
            errcode: Some(self.errcode.to_owned()),
            message: Some(self.message),
            ts: Some(now_ms() / 1000),
            method: None,
        };
        let mut resp = (self.status, json(&body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"thingspanel-device\""),
            );
        }
        resp
    }
}

fn json(body: &impl serde::Serialize) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::to_vec(body).unwrap_or_default(),
    )
}

fn success(status: StatusCode, method: Option<String>) -> Response {
    (status, json(&ResponseObject::success(now_ms(), method))).into_response()
}

/// The device of the Basic credentials in `headers`.
async fn authenticate(api: &DeviceApi, headers: &HeaderMap) -> Result<Device, DeviceError> {
    let unauthorized = |m: &str| DeviceError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let (username, password) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_credentials)
        .ok_or_else(|| {
            unauthorized("HTTP Basic credentials (the device's MQTT username:password) required")
        })?;
    match api.shared.check_credentials(&username, &password).await {
        // The same per-device budget as MQTT publishes (`max_messages_per_second`).
        Ok(device) if !api.shared.within_rate(&device) => Err(DeviceError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "the device exceeds max_messages_per_second; retry later",
        )),
        Ok(device) => {
            api.uplinks.activity(device.id);
            Ok(Device::clone(&device))
        }
        Err(Refused::Store(e)) => Err(e.into()),
        Err(refused) => {
            metrics::counter!("tp_device_api_auth_refused_total", "transport" => "http", "reason" => refused.reason())
                .increment(1);
            tracing::info!(login = %crate::connection::login_hint(&username), reason = refused.reason(), "HTTP device request refused");
            Err(unauthorized("wrong device credentials"))
        }
    }
}

/// `Basic base64(username:password)` -> (username, password).
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    // An access token alone (`curl -u <token>:` sends the colon; some clients do not).
    let (user, pass) = decoded.split_once(':').unwrap_or((&decoded, ""));
    Some((user.to_owned(), pass.to_owned()))
}

/// Authenticates, then checks the node is accepting work and the body fits.
async fn accept(
    api: &DeviceApi,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Device, Bytes), DeviceError> {
    let device = authenticate(api, headers).await?;
    if api.shared.draining.load(Ordering::Acquire) {
        return Err(DeviceError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the node is shutting down; try again later",
        ));
    }
    let too_large = || {
        DeviceError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("payload larger than {} bytes", api.max_payload_size),
        )
    };
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            DeviceError::new(rejection.status(), "invalid_payload", rejection.body_text())
        }
    })?;
    if body.len() > api.max_payload_size {
        return Err(too_large());
    }
    Ok((device, body))
}

async fn telemetry(
    State(api): State<DeviceApi>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, DeviceError> {
    let (device, body) = accept(&api, &headers, body).await?;
    // 202 means "stored": logged first, so a crash before the commit does not lose it.
    let ts = now_ms();
    let _logged = api.uplinks.log(device.id, "devices/telemetry", &body, ts)?;
    api.uplinks.telemetry(device.id, &body, ts).await?;
    metrics::counter!("tp_device_api_messages_total", "transport" => "http", "kind" => "telemetry")
        .increment(1);
    Ok(success(StatusCode::ACCEPTED, None))
}

async fn attributes(
    State(api): State<DeviceApi>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, DeviceError> {
    let (device, body) = accept(&api, &headers, body).await?;
    api.uplinks.attributes(device.id, &body, now_ms()).await?;
    metrics::counter!("tp_device_api_messages_total", "transport" => "http", "kind" => "attributes")
        .increment(1);
    Ok(success(StatusCode::OK, None))
}

/// Query of `POST /api/v1/device/events`.
#[derive(Debug, Deserialize)]
struct EventQuery {
    /// Correlation id stored with the event; a fresh one when absent.
    message_id: Option<String>,
}

async fn events(
    State(api): State<DeviceApi>,
    Query(query): Query<EventQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, DeviceError> {
    let (device, body) = accept(&api, &headers, body).await?;
    let mid = match query.message_id {
        Some(mid) => {
            validate_message_id(&mid)?;
            mid
        }
        None => new_message_id(),
    };
    let call = decode_event(&body)?;
    let method = call.method.clone();
    let ts = now_ms();
    let _logged = api
        .uplinks
        .log(device.id, &format!("devices/event/{mid}"), &body, ts)?;
    api.uplinks.event(device.id, &mid, call, ts).await?;
    metrics::counter!("tp_device_api_messages_total", "transport" => "http", "kind" => "event")
        .increment(1);
    Ok(success(StatusCode::ACCEPTED, Some(method)))
}

/// Body of `GET /api/v1/device/commands`.
#[derive(Debug, serde::Serialize)]
struct Commands {
    result: i64,
    commands: Vec<PolledCommand>,
}

async fn commands(
    State(api): State<DeviceApi>,
    headers: HeaderMap,
) -> Result<Response, DeviceError> {
    let device = authenticate(&api, &headers).await?;
    let commands = poll_pending(api.shared.metadata.as_ref(), &device, None).await?;
    Ok((
        StatusCode::OK,
        json(&Commands {
            result: 0,
            commands,
        }),
    )
        .into_response())
}

async fn command_response(
    State(api): State<DeviceApi>,
    Path(message_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, DeviceError> {
    let (device, body) = accept(&api, &headers, body).await?;
    validate_message_id(&message_id)?;
    api.uplinks
        .response(device.id, &message_id, &body, now_ms())
        .await?;
    Ok(success(StatusCode::OK, None))
}

/// `GET /api/v1/device/ota/packages/{package_id}`: a package of one of the device's
/// OTA tasks, with `Range` support (see [`crate::ota`]).
async fn ota_package(
    State(api): State<DeviceApi>,
    Path(package_id): Path<String>,
    request: axum::extract::Request,
) -> Response {
    match serve_package(&api, &package_id, request).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn serve_package(
    api: &DeviceApi,
    package_id: &str,
    request: axum::extract::Request,
) -> Result<Response, DeviceError> {
    use tower::ServiceExt;
    let device = authenticate(api, request.headers()).await?;
    let not_found = || {
        DeviceError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such package among this device's OTA tasks",
        )
    };
    let Some(ota) = &api.ota else {
        return Err(not_found());
    };
    let id = uuid::Uuid::parse_str(package_id)
        .map(tp_core::OtaPackageId)
        .map_err(|_| not_found())?;
    let detail = ota
        .store
        .package_detail(device.tenant_id, device.id, id)
        .await?
        .ok_or_else(not_found)?;
    let package = ota
        .store
        .get_package(device.tenant_id, id)
        .await?
        .filter(|p| p.stored)
        .ok_or_else(not_found)?;
    crate::ota::mark_downloading(ota.store.as_ref(), detail).await?;
    let path = ota.dir.join(id.to_string());
    let served = tower_http::services::ServeFile::new(&path)
        .oneshot(request)
        .await;
    let mut resp = match served {
        Ok(resp) => resp.map(axum::body::Body::new),
        Err(e) => {
            tracing::error!(package_id = %id, error = %e, "cannot serve an OTA package");
            return Err(DeviceError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ));
        }
    };
    if resp.status() == StatusCode::NOT_FOUND {
        tracing::error!(package_id = %id, path = %path.display(), "a stored OTA package's file is missing");
        return Err(not_found());
    }
    let headers = resp.headers_mut();
    for (name, value) in [
        ("x-checksum-sha256", package.sha256.as_deref()),
        ("x-checksum-md5", package.md5.as_deref()),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    }
    metrics::counter!("tp_ota_downloads_total").increment(1);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse() {
        let enc = base64::engine::general_purpose::STANDARD.encode("dev1:p:w");
        assert_eq!(
            basic_credentials(&format!("Basic {enc}")),
            Some(("dev1".into(), "p:w".into()))
        );
        assert_eq!(
            basic_credentials(&format!("basic  {enc}")),
            Some(("dev1".into(), "p:w".into()))
        );
        assert_eq!(basic_credentials(&format!("Bearer {enc}")), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        let no_colon = base64::engine::general_purpose::STANDARD.encode("dev1");
        // An access token alone, as some clients send it.
        assert_eq!(
            basic_credentials(&format!("Basic {no_colon}")),
            Some(("dev1".into(), String::new()))
        );
    }
}
