//! # tp-core
//!
//! The contracts of the platform, shared by every other crate:
//!
//! - [`model`]: tenants, users, devices with their `device_number` and MQTT credentials,
//!   device profiles, typed [`Value`]s, telemetry points, attributes, events and the
//!   downlink (command) log.
//! - [`protocol`]: the ThingsPanel MQTT device protocol: uplink/downlink topics, the topic
//!   ACL, payload codecs (flat JSON, `{"ts":..,"values":{..}}` and arrays of those), the
//!   response object and the gateway envelope.
//! - [`provision`]: device self-registration with a profile secret (REST and MQTT).
//! - [`thing_model`]: device templates with typed telemetry, attribute, event and
//!   command definitions, the checks run against them and [`ThingModelStore`].
//! - [`downlink`]: issuing a command, attribute set/get or telemetry control: the
//!   command log protocol and the route through gateways (REST API and rules alike).
//! - The async traits every backend implements: [`MetadataStore`], [`TimeSeriesStore`],
//!   [`Cache`] and [`DeviceTransport`], used as `Arc<dyn Trait>` at the boundaries; the
//!   [`ingest::IngestSink`] a broker writes device data through and the
//!   [`cluster::Backplane`] nodes talk over, so the broker and the storage crates
//!   both depend on tp-core and not on each other.
//! - [`Error`]: the one error enum, with semantic, backend-agnostic variants.
//! - `testing` (feature `testing`): the conformance suites every backend must pass.
//!
//! ```
//! use tp_core::protocol::{check_subscribe, decode_telemetry, UplinkKind, UplinkTopic};
//!
//! let topic = UplinkTopic::parse("devices/telemetry")?;
//! assert_eq!(topic.kind, UplinkKind::Telemetry);
//! let samples = decode_telemetry(br#"{"ts":1700000000000,"values":{"temp":21.5}}"#, 0)?;
//! assert_eq!(samples[0].ts, 1_700_000_000_000);
//! // a device may subscribe to its own command topic, not to another device's
//! assert!(check_subscribe("devices/command/dev-1/+", "dev-1").is_ok());
//! assert!(check_subscribe("devices/command/dev-2/+", "dev-1").is_err());
//! # Ok::<(), tp_core::Error>(())
//! ```
#![warn(missing_docs, missing_debug_implementations)]

pub mod access;
pub mod cache;
pub mod clock;
pub mod cluster;
pub mod dashboard;
pub mod downlink;
mod error;
pub mod ingest;
pub mod model;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod ota;
pub mod protocol;
pub mod provision;
pub mod rules;
pub mod script;
pub mod serde_int;
pub mod store;
pub mod thing_model;
pub mod transport;
pub mod trends;

#[cfg(feature = "testing")]
pub mod testing;

pub use access::{AccessStore, AccessStoreRef};
pub use cache::{Cache, CacheExt, CacheRef};
pub use error::{BoxError, Error, Result};
pub use model::*;
pub use store::{
    Aggregation, MetadataStore, MetadataStoreRef, Order, TimeSeriesStore, TimeSeriesStoreRef,
    TsQuery, bucket_phase,
};
pub use thing_model::{ThingModelStore, ThingModelStoreRef};
pub use transport::{DeviceTransport, DeviceTransportRef, Downlink};
