//! The web console: static assets compiled into the binary and served at `/` and
//! `/console/*`.
//!
//! The console is plain HTML, CSS and JavaScript modules (no build step), so it works
//! offline and from any node: every byte comes from this binary. It talks to the
//! public REST API only, with the same bearer token as any other client.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `crates/tp-api/console/`; adding a file means adding a line.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("chart.js", JS),
    asset!("pages.js", JS),
    asset!("device.js", JS),
    asset!("admin.js", JS),
    asset!("manage.js", JS),
    asset!("ota.js", JS),
    asset!("templates.js", JS),
    asset!("scripts.js", JS),
    asset!("dashboards.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The console's own policy: scripts, styles and connections only from this origin,
/// so injected markup cannot load or send anything elsewhere.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    frame-ancestors 'none'; form-action 'self'";

/// Strong validators, computed once: the assets are not fingerprinted in their names,
/// so browsers revalidate (`no-cache`) and get a cheap 304 while the binary is the same.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                format!("\"{}\"", hex::encode(&digest[..12]))
            })
            .collect()
    })
}

/// `/` (the console page) and `/console/{file}` (its assets).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/console/{*file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move {
                serve(&file, &headers)
            }),
        )
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some((i, asset)) = ASSETS.iter().enumerate().find(|(_, a)| a.name == name) else {
        return ApiError::http(StatusCode::NOT_FOUND, "not_found", "no such console file")
            .into_response();
    };
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if name == "index.html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_referenced_and_typed() {
        let index = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(index.contains("/console/app.js"));
        assert!(index.contains("/console/app.css"));
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
        }
        assert_eq!(etags().len(), ASSETS.len());
    }

    #[test]
    fn unknown_files_are_404_and_etags_revalidate() {
        let none = HeaderMap::new();
        assert_eq!(
            serve("../Cargo.toml", &none).status(),
            StatusCode::NOT_FOUND
        );
        let first = serve("app.js", &none);
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[header::CONTENT_TYPE], JS);
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, first.headers()[header::ETAG].clone());
        assert_eq!(serve("app.js", &again).status(), StatusCode::NOT_MODIFIED);
    }
}
