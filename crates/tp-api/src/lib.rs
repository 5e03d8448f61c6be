//! # tp-api
//!
//! REST API of the platform (axum on hyper) and the all-in-one node composition.
#![warn(missing_docs, missing_debug_implementations)]

pub mod auth;
pub mod authz;
pub mod config;
mod console;
pub mod error;
/// Notification delivery (webhook, email), in the tp-rules crate.
pub use tp_rules::notify;
pub mod openapi;
pub mod platform;
mod routes;
/// The rule engine runtime, in the tp-rules crate.
pub use tp_rules as rules;
pub mod state;

pub use openapi::openapi;
pub use routes::router;
pub use routes::stream::{LiveTelemetry, ObserverFanout};
