//! VerneMQ webhooks (`vmq_webhooks`), speaking the documented JSON
//! (<https://docs.vernemq.com/plugin-development/webhookplugins>).
//!
//! | hook | request | answer |
//! |---|---|---|
//! | `auth_on_register` | `{peer_addr, peer_port, username, password, mountpoint, client_id, clean_session}` | `{"result":"ok"}` for a device's (or the service account's) credentials, else `{"result":{"error":"not_allowed"}}` |
//! | `auth_on_subscribe` | `{username, client_id, mountpoint, topics:[{topic,qos}]}` | `ok` when every filter is one of the device's downlink topics, else `ok` with `topics` where each refused filter has `qos` 128 |
//! | `auth_on_publish` | `{username, client_id, mountpoint, qos, topic, payload, retain}` | uplink topic: `ok` with `modifiers` rewriting the topic to `tp/ingest/{device_id}/{topic}` (retain off); anything else: `not_allowed` |
//! | `on_register` | `{peer_addr, peer_port, username, mountpoint, client_id}` | `{}`; the device is recorded online |
//! | `on_client_offline`, `on_client_gone` | `{client_id, mountpoint}` | `{}`; the device is recorded offline |
//!
//! # Why the publish topic is rewritten
//! ThingsPanel's broker plugin wraps every device publish in `{"device_id","values"}`
//! so the platform never trusts a device to say who it is. We rewrite the *topic*
//! instead: `devices/telemetry` from device `D` travels as
//! `tp/ingest/D/devices/telemetry`, payload untouched (no base64 round trip, no size
//! growth, the same codecs decode it). Devices cannot publish under `tp/ingest/`
//! themselves (it is outside the uplink ACL), so a message there carries an identity
//! the hook established. The `tp-storage` consumer (`tp_broker::external`) subscribes
//! to `$share/{group}/tp/ingest/#`. With a VerneMQ mountpoint the rewritten topic
//! lives in the same mountpoint; the consumer must connect to it.
//!
//! # Presence
//! `auth_on_register` remembers which device a client id belongs to (cache key per
//! mountpoint and client id; the offline hooks carry nothing else), `on_register`
//! records the device online, `on_client_offline` / `on_client_gone` offline
//! (reason `connection_lost`: VerneMQ does not say whether the client sent
//! DISCONNECT). Register `on_register`, `on_client_offline` and `on_client_gone`
//! for online state. A device connected twice (two client ids) is shown offline when
//! either session ends.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, http::StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tp_core::protocol::{UplinkTopic, check_subscribe};
use tp_core::{CacheExt, DeviceId, DeviceStatusEvent, StatusReason, now_ms};

use super::{HookError, Hooks, ingest_topic, parse};
use crate::session::Refused;

/// How long a client id -> device entry is kept without a new registration.
const CLIENT_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// QoS VerneMQ reads as "subscription refused".
const SUBSCRIBE_REFUSED: u8 = 128;

pub(super) fn routes() -> Router<Hooks> {
    Router::new()
        .route("/hooks/vernemq", post(by_header))
        .route("/hooks/vernemq/{hook}", post(by_path))
}

async fn by_header(State(hooks): State<Hooks>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(hook) = headers.get("vernemq-hook").and_then(|v| v.to_str().ok()) else {
        return HookError::bad_request("missing vernemq-hook header").into_response();
    };
    dispatch(&hooks, hook, &body).await
}

async fn by_path(
    State(hooks): State<Hooks>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(named) = headers.get("vernemq-hook").and_then(|v| v.to_str().ok())
        && named != hook
    {
        return HookError::bad_request(format!(
            "vernemq-hook header {named:?} does not match the path's {hook:?}"
        ))
        .into_response();
    }
    dispatch(&hooks, &hook, &body).await
}

async fn dispatch(hooks: &Hooks, hook: &str, body: &Bytes) -> Response {
    let result = match hook {
        "auth_on_register" => auth_on_register(hooks, body).await,
        "auth_on_subscribe" => auth_on_subscribe(hooks, body).await,
        "auth_on_publish" => auth_on_publish(hooks, body).await,
        "on_register" => on_register(hooks, body).await,
        "on_client_offline" | "on_client_gone" => offline(hooks, body, hook).await,
        other => Err(HookError::new(
            StatusCode::NOT_FOUND,
            "unknown_hook",
            format!("hook {other:?} is not served"),
        )),
    };
    metrics::counter!("tp_hooks_requests_total", "broker" => "vernemq", "hook" => hook_label(hook))
        .increment(1);
    match result {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => e.into_response(),
    }
}

fn hook_label(hook: &str) -> &'static str {
    match hook {
        "auth_on_register" => "auth_on_register",
        "auth_on_subscribe" => "auth_on_subscribe",
        "auth_on_publish" => "auth_on_publish",
        "on_register" => "on_register",
        "on_client_offline" => "on_client_offline",
        "on_client_gone" => "on_client_gone",
        _ => "unknown",
    }
}

fn ok() -> Value {
    json!({"result": "ok"})
}

/// VerneMQ's refusal; `reason` is logged by VerneMQ.
fn refused(reason: &str) -> Value {
    json!({"result": {"error": reason}})
}

/// A refusal for a device check that failed: the store failing refuses too (fail
/// closed), under its own reason so VerneMQ's log tells the two apart.
fn refusal(hook: &'static str, client_id: &str, why: &Refused) -> Value {
    metrics::counter!("tp_hooks_refused_total", "broker" => "vernemq", "hook" => hook, "reason" => why.reason())
        .increment(1);
    tracing::info!(
        client_id,
        hook,
        reason = why.reason(),
        "VerneMQ hook refused"
    );
    match why {
        Refused::Store(_) => refused("store_unavailable"),
        _ => refused("not_allowed"),
    }
}

#[derive(Debug, Deserialize)]
struct Register {
    username: Option<String>,
    password: Option<String>,
    #[serde(default)]
    mountpoint: String,
    client_id: String,
}

async fn auth_on_register(hooks: &Hooks, body: &Bytes) -> Result<Value, HookError> {
    let r: Register = parse(body)?;
    let password = r.password.as_deref().unwrap_or_default();
    if hooks.is_service_login(r.username.as_deref(), password) {
        return Ok(ok());
    }
    let Some(username) = r.username.as_deref() else {
        return Ok(refusal(
            "auth_on_register",
            &r.client_id,
            &Refused::UnknownUsername,
        ));
    };
    // The service account's name never authenticates as a device.
    if hooks.is_service(Some(username)) {
        return Ok(refusal(
            "auth_on_register",
            &r.client_id,
            &Refused::BadPassword,
        ));
    }
    match hooks
        .credentials
        .check_credentials(username, password)
        .await
    {
        Ok(device) => {
            let key = client_key(&r.mountpoint, &r.client_id);
            if let Err(e) = hooks
                .cache
                .set_json(&key, &device.id, Some(CLIENT_TTL))
                .await
            {
                // Without the entry the offline hooks cannot name the device; the
                // connection itself is fine.
                tracing::warn!(error = %e, "cannot remember the VerneMQ client id");
            }
            Ok(ok())
        }
        Err(why) => Ok(refusal("auth_on_register", &r.client_id, &why)),
    }
}

#[derive(Debug, Deserialize)]
struct Subscribe {
    username: Option<String>,
    client_id: String,
    topics: Vec<SubscribeTopic>,
}

#[derive(Debug, Deserialize)]
struct SubscribeTopic {
    topic: String,
    qos: u8,
}

async fn auth_on_subscribe(hooks: &Hooks, body: &Bytes) -> Result<Value, HookError> {
    let s: Subscribe = parse(body)?;
    if hooks.is_service(s.username.as_deref()) {
        return Ok(ok());
    }
    let device = match device_of(hooks, s.username.as_deref()).await {
        Ok(d) => d,
        Err(why) => return Ok(refusal("auth_on_subscribe", &s.client_id, &why)),
    };
    let mut any_refused = false;
    let topics: Vec<Value> = s
        .topics
        .iter()
        .map(|t| {
            let qos = if check_subscribe(&t.topic, &device.device_number).is_ok() {
                t.qos
            } else {
                any_refused = true;
                metrics::counter!("tp_mqtt_acl_denied_total", "action" => "subscribe").increment(1);
                tracing::warn!(device_id = %device.id, topic = %t.topic,
                    "VerneMQ subscription outside the device's ACL refused");
                SUBSCRIBE_REFUSED
            };
            json!({"topic": t.topic, "qos": qos})
        })
        .collect();
    if any_refused {
        Ok(json!({"result": "ok", "topics": topics}))
    } else {
        Ok(ok())
    }
}

#[derive(Debug, Deserialize)]
struct Publish {
    username: Option<String>,
    client_id: String,
    topic: String,
}

async fn auth_on_publish(hooks: &Hooks, body: &Bytes) -> Result<Value, HookError> {
    let p: Publish = parse(body)?;
    if hooks.is_service(p.username.as_deref()) {
        return Ok(ok());
    }
    let device = match device_of(hooks, p.username.as_deref()).await {
        Ok(d) => d,
        Err(why) => return Ok(refusal("auth_on_publish", &p.client_id, &why)),
    };
    if UplinkTopic::parse(&p.topic).is_err() {
        metrics::counter!("tp_mqtt_acl_denied_total", "action" => "publish").increment(1);
        tracing::warn!(device_id = %device.id, topic = %p.topic,
            "VerneMQ publish outside the device's ACL refused");
        return Ok(refused("not_allowed"));
    }
    Ok(json!({
        "result": "ok",
        "modifiers": {"topic": ingest_topic(device.id, &p.topic), "retain": false},
    }))
}

async fn on_register(hooks: &Hooks, body: &Bytes) -> Result<Value, HookError> {
    let r: Register = parse(body)?;
    if hooks.is_service(r.username.as_deref()) {
        return Ok(json!({}));
    }
    let device = device_of(hooks, r.username.as_deref())
        .await
        .map_err(|why| {
            HookError::new(
                StatusCode::NOT_FOUND,
                "unknown_device",
                format!("no enabled device for this client ({})", why.reason()),
            )
        })?;
    record(hooks, device.id, true, StatusReason::Connect).await?;
    Ok(json!({}))
}

#[derive(Debug, Deserialize)]
struct Offline {
    #[serde(default)]
    mountpoint: String,
    client_id: String,
}

async fn offline(hooks: &Hooks, body: &Bytes, hook: &str) -> Result<Value, HookError> {
    let o: Offline = parse(body)?;
    let key = client_key(&o.mountpoint, &o.client_id);
    let device_id = match hooks.cache.get_json::<DeviceId>(&key).await {
        Ok(Some(id)) => id,
        // A client we never authenticated (the service account, or a cache that
        // lost the entry): nothing to record.
        Ok(None) => return Ok(json!({})),
        Err(e) => {
            return Err(HookError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cache_unavailable",
                e.to_string(),
            ));
        }
    };
    record(hooks, device_id, false, StatusReason::ConnectionLost).await?;
    if hook == "on_client_gone"
        && let Err(e) = hooks.cache.delete(&key).await
    {
        tracing::warn!(error = %e, "cannot forget the VerneMQ client id");
    }
    Ok(json!({}))
}

async fn device_of(
    hooks: &Hooks,
    username: Option<&str>,
) -> Result<std::sync::Arc<tp_core::Device>, Refused> {
    let username = username.ok_or(Refused::UnknownUsername)?;
    hooks.credentials.enabled_device(username).await
}

async fn record(
    hooks: &Hooks,
    device_id: DeviceId,
    online: bool,
    reason: StatusReason,
) -> Result<(), HookError> {
    let event = DeviceStatusEvent {
        device_id,
        online,
        reason,
        at: now_ms(),
    };
    hooks.metadata.append_status(&event).await.map_err(|e| {
        tracing::error!(device_id = %device_id, error = %e, "cannot record device status");
        HookError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    })
}

/// Cache key of a VerneMQ session; JSON-encoded so no mountpoint / client id pair
/// can collide with another.
fn client_key(mountpoint: &str, client_id: &str) -> String {
    format!(
        "hooks:vernemq:client:{}",
        serde_json::to_string(&(mountpoint, client_id)).unwrap_or_default()
    )
}
