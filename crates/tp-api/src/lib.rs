//! # tp-api
//!
//! REST API of the platform (axum on hyper) and the all-in-one node composition.
#![warn(missing_docs, missing_debug_implementations)]

pub mod config;
pub mod platform;
