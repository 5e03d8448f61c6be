//! # tp-node
//!
//! A node of the platform, as the binaries run it: [`Platform`] opens the stores its
//! [`PlatformConfig`] names, binds the listeners, starts the broker, the rule engine
//! and the REST API for its roles (all-in-one, `broker`, `api`) and drains them on
//! shutdown. [`cli`] is the command line every node binary shares, so each binary is
//! a thin `main`.
//!
//! Use it to run the whole platform inside your own service; take tp-broker,
//! tp-storage, tp-rules or tp-api alone for less.
//!
//! ```
//! # #[tokio::main]
//! # async fn main() -> anyhow::Result<()> {
//! use tp_node::{Platform, PlatformConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let mut config = PlatformConfig { data_dir: dir.path().to_owned(), ..Default::default() };
//! config.http.listen = "127.0.0.1:0".parse()?;
//! config.mqtt.listen = "127.0.0.1:0".parse()?;
//! let platform = Platform::start(config).await?;
//! println!("REST API on {}, MQTT on {}", platform.http_url(), platform.mqtt_addr());
//! let report = platform.shutdown().await?;
//! assert_eq!(report.accepted, report.consumed);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs, missing_debug_implementations)]

pub mod cli;
pub mod config;
mod http_server;
pub mod platform;

pub use config::{LogFormat, PlatformConfig, Role};
pub use platform::{BootstrapAdmin, Platform, PlatformError, PlatformOptions, shutdown_signal};
