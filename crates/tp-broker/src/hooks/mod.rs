//! Authentication and ACL endpoints for an external MQTT cluster: the seed's
//! "webhook service" (VerneMQ webhooks, [`vernemq`]) and EMQX 5 HTTP authentication
//! and authorization ([`emqx`]).
//!
//! Both answer from the same logic as the embedded broker: credentials are resolved
//! cache-first then from the metadata store (the crate's `Credentials`, shared with
//! the MQTT auth hook and the HTTP/CoAP device APIs), a device publishes only uplink
//! topics ([`tp_core::protocol::UplinkTopic::parse`]) and subscribes only to its own
//! downlink topics, every filter checked ([`tp_core::protocol::check_subscribe`]).
//!
//! # Mounting
//! [`router`] serves
//! - `POST /hooks/vernemq/{hook}` (or `POST /hooks/vernemq` with VerneMQ's
//!   `vernemq-hook` header naming the hook), and
//! - `POST /hooks/emqx/authn`, `POST /hooks/emqx/authz`.
//!
//! The platform node mounts it when `[hooks] secret` is set.
//!
//! # Protection
//! Whoever can call these endpoints can learn whether a password is right and
//! mark devices offline, so every request must carry the deployment's shared
//! secret, in one of the forms the brokers can send:
//! - header `x-tp-hook-secret: <secret>` (EMQX: `headers` of the HTTP authenticator
//!   and authorizer);
//! - `Authorization: Bearer <secret>`;
//! - HTTP Basic with the secret as password, any user name (VerneMQ cannot add
//!   headers, but its HTTP client sends the user info of an endpoint URL such as
//!   `http://hooks:<secret>@10.0.0.5:8080/hooks/vernemq/auth_on_register`).
//!
//! Requests without it get `401` with a JSON body; the secret is compared in
//! constant time and never logged. Serve the hooks over HTTPS (`[http.tls]`) or a
//! private network, as the secret travels in each request.
//!
//! # Fail closed
//! A store failure while checking a device answers with an explicit refusal (`200`
//! with VerneMQ's error or EMQX's `deny`), not a `5xx`: EMQX treats any non-200
//! answer as "ignore", which falls through to its `no_match` default (`allow`
//! unless configured otherwise). For the same reason configure EMQX with
//! `authorization.no_match = deny` and this service as the only authorizer: a
//! misconfigured secret then locks devices out instead of letting everything through.
//!
//! # The service account
//! The platform's own consumer (`tp_broker::external`, feature `external`, the `tp-storage` role) connects
//! to the same cluster; [`HooksConfig::service_username`] / `service_password` name
//! the one non-device account that may connect, subscribe to anything (including
//! `$share/...` filters) and publish anything (downlink, acknowledgements). EMQX is
//! told it is a superuser. Leave both unset to allow devices only.

pub mod emqx;
pub mod vernemq;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tp_core::{CacheRef, MetadataStoreRef};

use crate::session::Credentials;

/// Shortest accepted hook secret: a guessable secret is no protection.
pub const MIN_SECRET_LEN: usize = 16;

/// Header carrying the hook secret.
pub const SECRET_HEADER: &str = "x-tp-hook-secret";

pub use tp_core::protocol::INGEST_PREFIX;

/// `[hooks]` settings of a platform node.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Shared secret every hook request must carry (at least [`MIN_SECRET_LEN`]
    /// characters). Unset = the hook endpoints are not served.
    pub secret: Option<String>,
    /// User name of the platform's service account on the external broker (the
    /// `tp-storage` consumer). Unset = no service account.
    pub service_username: Option<String>,
    /// Its password; required with `service_username`.
    pub service_password: Option<String>,
}

impl std::fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("HooksConfig")
            .field("secret", &redacted(&self.secret))
            .field("service_username", &self.service_username)
            .field("service_password", &redacted(&self.service_password))
            .finish()
    }
}

/// A [`HooksConfig`] that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HooksConfigError {
    /// No secret, or one too short to protect anything.
    #[error("hooks.secret must be set and at least {MIN_SECRET_LEN} characters long")]
    WeakSecret,
    /// Only one of `service_username` / `service_password` is set.
    #[error("hooks.service_username and hooks.service_password must be set together")]
    HalfServiceAccount,
}

/// What the hook endpoints read and write.
#[derive(Debug, Clone)]
pub struct HookDeps {
    /// Devices, credentials and online state.
    pub metadata: MetadataStoreRef,
    /// The credential cache (shared with the embedded broker, Redis in a cluster),
    /// also holding the VerneMQ client id -> device map for the offline hooks.
    pub cache: CacheRef,
    /// How long a resolved credential stays in the cache.
    pub credential_ttl: Duration,
}

/// The state behind every hook endpoint.
#[derive(Clone)]
pub(crate) struct Hooks {
    pub(crate) credentials: Credentials,
    pub(crate) metadata: MetadataStoreRef,
    pub(crate) cache: CacheRef,
    secret: Arc<[u8]>,
    service: Option<Arc<(String, String)>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

impl Hooks {
    /// Whether `username` is the service account (no password check).
    pub(crate) fn is_service(&self, username: Option<&str>) -> bool {
        matches!((&self.service, username), (Some(s), Some(u)) if s.0 == u)
    }

    /// Whether these are the service account's credentials (constant-time password
    /// comparison).
    pub(crate) fn is_service_login(&self, username: Option<&str>, password: &str) -> bool {
        self.is_service(username)
            && self
                .service
                .as_ref()
                .is_some_and(|s| bool::from(s.1.as_bytes().ct_eq(password.as_bytes())))
    }
}

/// The hook endpoints (see the module docs for paths and protection).
///
/// # Errors
/// [`HooksConfigError`] for a missing or short secret or half a service account.
pub fn router(deps: HookDeps, config: &HooksConfig) -> Result<Router, HooksConfigError> {
    let secret = config
        .secret
        .as_deref()
        .filter(|s| s.len() >= MIN_SECRET_LEN)
        .ok_or(HooksConfigError::WeakSecret)?;
    let service = match (&config.service_username, &config.service_password) {
        (Some(u), Some(p)) => Some(Arc::new((u.clone(), p.clone()))),
        (None, None) => None,
        _ => return Err(HooksConfigError::HalfServiceAccount),
    };
    let hooks = Hooks {
        credentials: Credentials {
            metadata: deps.metadata.clone(),
            cache: deps.cache.clone(),
            ttl: deps.credential_ttl,
        },
        metadata: deps.metadata,
        cache: deps.cache,
        secret: Arc::from(secret.as_bytes()),
        service,
    };
    Ok(Router::new()
        .merge(vernemq::routes())
        .merge(emqx::routes())
        .layer(axum::middleware::from_fn_with_state(
            hooks.clone(),
            require_secret,
        ))
        .with_state(hooks))
}

/// Refuses requests without the hook secret (`401`, JSON body).
async fn require_secret(State(hooks): State<Hooks>, request: Request, next: Next) -> Response {
    if carries_secret(request.headers(), &hooks.secret) {
        return next.run(request).await;
    }
    metrics::counter!("tp_hooks_unauthorized_total").increment(1);
    tracing::warn!(path = %request.uri().path(), "hook request without the hook secret refused");
    HookError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("missing or wrong hook secret ({SECRET_HEADER}, Bearer or Basic)"),
    )
    .into_response()
}

fn carries_secret(headers: &HeaderMap, secret: &[u8]) -> bool {
    let matches = |given: &[u8]| bool::from(given.ct_eq(secret));
    if let Some(v) = headers.get(SECRET_HEADER) {
        return matches(v.as_bytes());
    }
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(token) = auth.strip_prefix("Bearer ") {
        return matches(token.trim().as_bytes());
    }
    if let Some(encoded) = auth.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        return match decoded.iter().position(|b| *b == b':') {
            Some(colon) => matches(&decoded[colon + 1..]),
            None => false,
        };
    }
    false
}

/// A refused hook request: status and a JSON body `{"error","message"}`.
#[derive(Debug)]
pub(crate) struct HookError {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl HookError {
    pub(crate) fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
        }
    }

    /// A request body that is not the documented JSON.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl IntoResponse for HookError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": self.error, "message": self.message})),
        )
            .into_response()
    }
}

/// Parses a hook body; malformed JSON or missing fields are a `400`, not a panic.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, HookError> {
    serde_json::from_slice(body).map_err(|e| HookError::bad_request(e.to_string()))
}

/// The internal topic a device's uplink `topic` is delivered on.
pub fn ingest_topic(device_id: tp_core::DeviceId, topic: &str) -> String {
    format!("{INGEST_PREFIX}{}/{topic}", device_id.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn secret_forms() {
        let secret = b"0123456789abcdef";
        let with = |name: &'static str, value: String| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_str(&value).unwrap());
            carries_secret(&h, secret)
        };
        assert!(with(SECRET_HEADER, "0123456789abcdef".into()));
        assert!(!with(SECRET_HEADER, "0123456789abcdeX".into()));
        assert!(with("authorization", "Bearer 0123456789abcdef".into()));
        let basic = base64::engine::general_purpose::STANDARD.encode("hooks:0123456789abcdef");
        assert!(with("authorization", format!("Basic {basic}")));
        let wrong = base64::engine::general_purpose::STANDARD.encode("0123456789abcdef");
        assert!(!with("authorization", format!("Basic {wrong}")), "no colon");
        assert!(!with("authorization", "Basic %%%".into()));
        assert!(!carries_secret(&HeaderMap::new(), secret));
    }

    #[test]
    fn config_debug_hides_secrets() {
        let c = HooksConfig {
            secret: Some("s3cr3t-s3cr3t-s3cr3t".into()),
            service_username: Some("tp-storage".into()),
            service_password: Some("pw-pw-pw".into()),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("pw-pw-pw"),
            "{shown}"
        );
        assert!(shown.contains("tp-storage"));
    }
}
