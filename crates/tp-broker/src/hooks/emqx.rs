//! EMQX 5 HTTP authentication and authorization.
//!
//! Configure EMQX's HTTP authenticator with `POST {node}/hooks/emqx/authn`, body
//! `{"clientid":"${clientid}","username":"${username}","password":"${password}","peerhost":"${peerhost}"}`,
//! and its HTTP authorizer with `POST {node}/hooks/emqx/authz`, body
//! `{"clientid":"${clientid}","username":"${username}","topic":"${topic}","action":"${action}"}`;
//! both with header `x-tp-hook-secret` (see [`super`]).
//!
//! - authn: `{"result":"allow","is_superuser":false,"client_attrs":{"tp_device_id":..,"tp_device_number":..}}`
//!   for a device's credentials, `{"result":"allow","is_superuser":true}` for the
//!   service account, else `{"result":"deny"}` (also when the store fails: fail closed).
//! - authz: `{"result":"allow"}` for an uplink publish or a subscription to the
//!   device's own downlink topic, else `{"result":"deny"}`.
//!
//! # Device identity downstream
//! EMQX's authorizer cannot rewrite a message, so the device id travels as a client
//! attribute (EMQX >= 5.7 keeps `client_attrs` from the authentication answer): a
//! rule `SELECT * FROM "devices/#", "gateway/#", "ota/devices/progress"` with a
//! republish action to `tp/ingest/${client_attrs.tp_device_id}/${topic}` (payload
//! `${payload}`, QoS `${qos}`) produces what the `tp-storage` consumer reads, the
//! same internal topic the VerneMQ hook rewrites to. Devices cannot publish under
//! `tp/ingest/` themselves (denied here), so the identity is the broker's.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use tp_core::protocol::{UplinkTopic, check_subscribe};

use super::{HookError, Hooks, parse};
use crate::session::Refused;

pub(super) fn routes() -> Router<Hooks> {
    Router::new()
        .route("/hooks/emqx/authn", post(authn))
        .route("/hooks/emqx/authz", post(authz))
}

fn deny(hook: &'static str, clientid: &str, why: &str) -> Response {
    metrics::counter!("tp_hooks_refused_total", "broker" => "emqx", "hook" => hook, "reason" => why.to_owned())
        .increment(1);
    tracing::info!(clientid, hook, reason = why, "EMQX hook denied");
    Json(json!({"result": "deny"})).into_response()
}

#[derive(Debug, Deserialize)]
struct Authn {
    clientid: String,
    username: Option<String>,
    password: Option<String>,
}

async fn authn(State(hooks): State<Hooks>, body: Bytes) -> Response {
    metrics::counter!("tp_hooks_requests_total", "broker" => "emqx", "hook" => "authn")
        .increment(1);
    let a: Authn = match parse(&body) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let password = a.password.as_deref().unwrap_or_default();
    if hooks.is_service_login(a.username.as_deref(), password) {
        return Json(json!({"result": "allow", "is_superuser": true})).into_response();
    }
    let Some(username) = a.username.as_deref() else {
        return deny("authn", &a.clientid, Refused::UnknownUsername.reason());
    };
    if hooks.is_service(Some(username)) {
        return deny("authn", &a.clientid, Refused::BadPassword.reason());
    }
    match hooks
        .credentials
        .check_credentials(username, password)
        .await
    {
        Ok(device) => Json(json!({
            "result": "allow",
            "is_superuser": false,
            "client_attrs": {
                "tp_device_id": device.id.0.to_string(),
                "tp_device_number": device.device_number,
            },
        }))
        .into_response(),
        Err(why) => deny("authn", &a.clientid, why.reason()),
    }
}

#[derive(Debug, Deserialize)]
struct Authz {
    clientid: String,
    username: Option<String>,
    topic: String,
    action: String,
}

async fn authz(State(hooks): State<Hooks>, body: Bytes) -> Response {
    metrics::counter!("tp_hooks_requests_total", "broker" => "emqx", "hook" => "authz")
        .increment(1);
    let a: Authz = match parse(&body) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if !matches!(a.action.as_str(), "publish" | "subscribe") {
        return HookError::bad_request(format!(
            "action must be publish or subscribe, not {:?}",
            a.action
        ))
        .into_response();
    }
    // The service account is a superuser, which EMQX does not authorize; should
    // EMQX ask anyway, it may do anything.
    if hooks.is_service(a.username.as_deref()) {
        return allow();
    }
    let Some(username) = a.username.as_deref() else {
        return deny("authz", &a.clientid, Refused::UnknownUsername.reason());
    };
    let device = match hooks.credentials.enabled_device(username).await {
        Ok(d) => d,
        Err(why) => return deny("authz", &a.clientid, why.reason()),
    };
    let allowed = match a.action.as_str() {
        "publish" => UplinkTopic::parse(&a.topic).is_ok(),
        _ => check_subscribe(&a.topic, &device.device_number).is_ok(),
    };
    if allowed {
        allow()
    } else {
        metrics::counter!("tp_mqtt_acl_denied_total", "action" => if a.action == "publish" { "publish" } else { "subscribe" })
            .increment(1);
        tracing::warn!(device_id = %device.id, topic = %a.topic, action = %a.action,
            "EMQX request outside the device's ACL denied");
        deny("authz", &a.clientid, "acl")
    }
}

fn allow() -> Response {
    Json(json!({"result": "allow"})).into_response()
}
