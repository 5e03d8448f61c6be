//! The one place that maps errors to HTTP responses.
//!
//! Every error leaves the API as `{"error":{"code":"<snake_case>","message":"..."}}`
//! (plus `"field"` for invalid input). Server-side failures get a generic message; their
//! detail is attached to the response as an [`ErrorDetail`] extension, which the
//! request middleware logs, so internals never reach the client.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An error returned by a handler or extractor.
#[derive(Debug)]
pub enum ApiError {
    /// A domain or backend error from `tp-core`'s contracts.
    Core(tp_core::Error),
    /// An HTTP-level error that has no domain meaning (no such route, wrong method,
    /// body too large, wrong content type).
    Http {
        /// Response status.
        status: StatusCode,
        /// Stable snake_case code.
        code: &'static str,
        /// Human-readable message.
        message: String,
    },
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// The JSON error envelope.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorInfo {
    /// Stable snake_case code, e.g. `invalid_input`, `not_found`, `unauthenticated`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The offending request field, for `invalid_input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Detail of a server-side failure, attached to the response's extensions for logging.
/// Never serialized to the client.
#[derive(Debug, Clone)]
pub struct ErrorDetail(pub Arc<str>);

impl ApiError {
    /// A 400 naming the offending field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Core(tp_core::Error::invalid(field, reason))
    }

    /// A 422 naming the field: well-formed, but it names something not in the
    /// tenant or contradicts another field.
    pub fn unprocessable(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Core(tp_core::Error::unprocessable(field, reason))
    }

    /// A 401.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError::Core(tp_core::Error::Unauthenticated(message.into()))
    }

    /// A 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Core(tp_core::Error::PermissionDenied(message.into()))
    }

    /// An HTTP-level error.
    pub fn http(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Http {
            status,
            code,
            message: message.into(),
        }
    }

    /// The response status (the single error -> status mapping of the API).
    pub fn status(&self) -> StatusCode {
        use tp_core::Error as E;
        match self {
            ApiError::Http { status, .. } => *status,
            ApiError::Core(e) => match e {
                E::Invalid { .. } => StatusCode::BAD_REQUEST,
                E::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                E::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                E::PermissionDenied(_) => StatusCode::FORBIDDEN,
                E::NotFound { .. } => StatusCode::NOT_FOUND,
                E::AlreadyExists { .. } | E::Conflict(_) => StatusCode::CONFLICT,
                E::NotSupported { .. } => StatusCode::NOT_IMPLEMENTED,
                E::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// The body sent to the client and, for server-side failures, the detail to log.
    /// The field at fault (if any) and the message a client is shown, e.g. for one
    /// row of a bulk request. Server-side detail stays out, as in responses.
    pub(crate) fn field_and_message(&self) -> (Option<String>, String) {
        let (info, detail) = self.public_parts();
        if let Some(detail) = detail {
            tracing::warn!(error = %detail, "request row failed");
        }
        (info.field, info.message)
    }

    fn public_parts(&self) -> (ErrorInfo, Option<String>) {
        use tp_core::Error as E;
        let info = |code: &str, message: String| ErrorInfo {
            code: code.to_owned(),
            message,
            field: None,
        };
        match self {
            ApiError::Http { code, message, .. } => (info(code, message.clone()), None),
            ApiError::Core(e) => match e {
                E::Invalid { field, reason } => (
                    ErrorInfo {
                        code: "invalid_input".to_owned(),
                        message: format!("invalid {field}: {reason}"),
                        field: Some(field.clone()),
                    },
                    None,
                ),
                E::Unprocessable { field, reason } => (
                    ErrorInfo {
                        code: "unprocessable".to_owned(),
                        message: format!("unprocessable {field}: {reason}"),
                        field: Some(field.clone()),
                    },
                    None,
                ),
                E::Unauthenticated(m) => (info("unauthenticated", m.clone()), None),
                E::PermissionDenied(m) => (info("permission_denied", m.clone()), None),
                E::NotFound { entity, .. } => {
                    (info("not_found", format!("{entity} not found")), None)
                }
                E::AlreadyExists { .. } => (info("already_exists", e.to_string()), None),
                E::Conflict(m) => (info("conflict", m.clone()), None),
                E::NotSupported { operation, .. } => (
                    info("not_supported", format!("{operation} is not supported")),
                    None,
                ),
                E::Unavailable { backend, .. } => (
                    info(
                        "unavailable",
                        format!("{backend} is temporarily unavailable, retry later"),
                    ),
                    Some(e.to_string()),
                ),
                other => (
                    info("internal", "internal server error".to_owned()),
                    Some(other.to_string()),
                ),
            },
        }
    }
}

impl From<tp_core::Error> for ApiError {
    fn from(e: tp_core::Error) -> Self {
        ApiError::Core(e)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Core(e) => e.fmt(f),
            ApiError::Http { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::Core(e) => Some(e),
            ApiError::Http { .. } => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (info, detail) = self.public_parts();
        let mut resp = (status, Json(ErrorBody { error: info })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(detail) = detail {
            resp.extensions_mut().insert(ErrorDetail(detail.into()));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_error_kinds() {
        let cases = [
            (ApiError::invalid("name", "empty"), 400),
            (ApiError::unauthenticated("no"), 401),
            (ApiError::forbidden("no"), 403),
            (tp_core::Error::not_found("device", "x").into(), 404),
            (
                tp_core::Error::AlreadyExists {
                    entity: "device",
                    id: "x".into(),
                }
                .into(),
                409,
            ),
            (tp_core::Error::Conflict("has children".into()).into(), 409),
            (
                tp_core::Error::Unavailable {
                    backend: "sqlite",
                    source: "down".into(),
                }
                .into(),
                503,
            ),
            (
                tp_core::Error::backend("sqlite", "disk on fire").into(),
                500,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
        }
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let err: ApiError = tp_core::Error::backend("sqlite", "secret path /var/db").into();
        let resp = err.into_response();
        let detail = resp.extensions().get::<ErrorDetail>().expect("detail");
        assert!(detail.0.contains("/var/db"));
        let (info, _) = ApiError::from(tp_core::Error::backend("sqlite", "/var/db")).public_parts();
        assert_eq!(info.code, "internal");
        assert!(!info.message.contains("/var/db"));
    }
}
