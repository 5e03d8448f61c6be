//! Extractors whose rejections use the API's JSON error format and name the field.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tp_core::DeviceId;

use crate::error::ApiError;

/// The field a serde error is about: the path to it, else the field named by a
/// "missing field `x`" / "unknown field `x`" message, else `fallback`.
fn serde_field(path: &serde_path_to_error::Path, message: &str, fallback: &str) -> String {
    let p = path.to_string();
    if p != "." && !p.is_empty() {
        return p;
    }
    for marker in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.split_once(marker).map(|(_, r)| r)
            && let Some((name, _)) = rest.split_once('`')
        {
            return name.to_owned();
        }
    }
    fallback.to_owned()
}

/// Finds the `serde_path_to_error` error with inner error `E` in a source chain.
fn find_path_error<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a serde_path_to_error::Error<E>> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<serde_path_to_error::Error<E>>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// Finds the innermost error of a chain, for its message.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// JSON request body; rejections become 400 (naming the field), 413 or 415.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Json<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, bytes) = read_body(req, state).await?;
        object_body(parts, bytes, state, false)
            .await
            .and_then(|v| v.ok_or_else(|| ApiError::invalid("body", "must be a JSON object")))
            .map(Json)
    }
}

/// Reads the whole body (413 over the limit).
async fn read_body<S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<(axum::http::request::Parts, axum::body::Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    match axum::body::Bytes::from_request(Request::from_parts(parts.clone(), body), state).await {
        Ok(b) => Ok((parts, b)),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::http(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        )),
        Err(r) => Err(ApiError::invalid("body", r.body_text())),
    }
}

/// Parses a JSON body that must be an object (or, with `null_ok`, `null`: `None`).
/// Every request type is a struct, and serde would also fill a struct from an array
/// (`[null, null]`), which the document does not allow: it is refused here.
async fn object_body<S: Send + Sync, T: DeserializeOwned>(
    parts: axum::http::request::Parts,
    bytes: axum::body::Bytes,
    state: &S,
    null_ok: bool,
) -> Result<Option<T>, ApiError> {
    let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace());
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    let value = match axum::Json::<Option<T>>::from_request(req, state).await {
        Ok(axum::Json(v)) => v,
        Err(rejection) => return Err(json_rejection(rejection)),
    };
    match first {
        Some(b'{') => Ok(value),
        Some(b'n') if null_ok => Ok(None),
        _ => Err(ApiError::invalid("body", "must be a JSON object")),
    }
}

/// An optional JSON request body: no body at all is `None`; a body is read like
/// [`Json`] (same 400, 413 and 415 answers).
#[derive(Debug, Clone, Default)]
pub(crate) struct OptionalJson<T>(pub(crate) Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, bytes) = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(OptionalJson(None));
        }
        // `null` is the same as no body: the document declares the body nullable.
        object_body(parts, bytes, state, true)
            .await
            .map(OptionalJson)
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a request with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::http(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is too large",
            )
        }
        JsonRejection::JsonDataError(ref e) => body_error(e),
        JsonRejection::JsonSyntaxError(ref e) => body_error(e),
        other => ApiError::invalid("body", other.body_text()),
    }
}

fn body_error(err: &(dyn std::error::Error + 'static)) -> ApiError {
    match find_path_error::<serde_json::Error>(err) {
        // A type error names its field; malformed JSON is the body's fault.
        Some(e) if e.inner().is_data() => {
            let msg = e.inner().to_string();
            ApiError::invalid(serde_field(e.path(), &msg, "body"), msg)
        }
        Some(e) => ApiError::invalid("body", e.inner().to_string()),
        None => ApiError::invalid("body", innermost(err)),
    }
}

/// Query string; rejections become 400 naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Query<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::try_from_uri(&parts.uri) {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    match find_path_error::<serde::de::value::Error>(rejection) {
        Some(e) => {
            let msg = e.inner().to_string();
            ApiError::invalid(serde_field(e.path(), &msg, "query"), msg)
        }
        None => ApiError::invalid("query", innermost(rejection)),
    }
}

/// The `{id}` path parameter of device routes, parsed as a [`DeviceId`]; a malformed
/// id is a 400 naming `id`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceIdPath(pub(crate) DeviceId);

impl<S: Send + Sync> FromRequestParts<S> for DeviceIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::invalid("id", r.body_text()))?;
        uuid::Uuid::parse_str(&raw)
            .map(|u| DeviceIdPath(DeviceId(u)))
            .map_err(|e| ApiError::invalid("id", format!("not a valid UUID: {e}")))
    }
}

fn parse_uuid(field: &str, raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map_err(|e| ApiError::invalid(field, format!("not a valid UUID: {e}")))
}

/// The single `{id}` path parameter as a UUID; a malformed id is a 400 naming `id`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdPath(pub(crate) uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::invalid("id", r.body_text()))?;
        Ok(IdPath(parse_uuid("id", &raw)?))
    }
}

/// The `{id}` and `{device_id}` path parameters as UUIDs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdDevicePath(pub(crate) uuid::Uuid, pub(crate) DeviceId);

impl<S: Send + Sync> FromRequestParts<S> for IdDevicePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((id, device)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::invalid("id", r.body_text()))?;
        Ok(IdDevicePath(
            parse_uuid("id", &id)?,
            DeviceId(parse_uuid("device_id", &device)?),
        ))
    }
}
