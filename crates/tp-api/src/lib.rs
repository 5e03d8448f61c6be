//! # tp-api
//!
//! The platform's REST API as an axum [`router`] over tp-core's traits: JWT and API-key
//! authentication, tenant-scoped RBAC, the OpenAPI document ([`openapi`]), the live
//! telemetry stream and the web console (feature `console`, on by default). It opens no stores and binds no port: hand
//! it an [`state::AppState`] and serve the router with your own server (tp-node's
//! `Platform` does this for the platform's binaries).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use tower::ServiceExt;
//! use tp_api::auth::AuthConfig;
//! use tp_api::state::AppState;
//!
//! let (metadata, access) = tp_storage::open_access("sqlite::memory:").await?;
//! let state = AppState::new(
//!     metadata,
//!     access,
//!     tp_storage::open_timeseries("sqlite::memory:").await?,
//!     tp_storage::open_cache("memory://").await?,
//!     AuthConfig { jwt_secret: "a secret of at least 32 characters!".into(), ..Default::default() },
//! );
//! let app = tp_api::router(state);
//! let request = axum::http::Request::get("/api/v1/devices").body(axum::body::Body::empty())?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), 401); // every API call is authenticated
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs, missing_debug_implementations)]

pub mod auth;
pub mod authz;
#[cfg(feature = "console")]
mod console;
pub mod error;
pub mod openapi;
pub mod ota;
pub mod quota;
mod routes;
pub mod state;
pub mod traffic;

pub use openapi::openapi;
pub use routes::stream::{LiveTelemetry, ObserverFanout};
pub use routes::{router, system_router};
pub use traffic::TenantTraffic;
