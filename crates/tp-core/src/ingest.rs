//! Where decoded device data goes: the [`IngestSink`] every ingest path (the embedded
//! broker, the HTTP and CoAP device APIs, an external-broker consumer) writes through.
//!
//! tp-storage's batching writer implements it; a broker crate only sees this trait,
//! so device access and storage sit side by side on tp-core instead of one on top of
//! the other, and an integrator can put any sink (a queue, a test double) under the
//! broker.
//!
//! # Contract
//! The write-ahead log acknowledges device messages on the strength of two promises,
//! so every sink keeps them:
//! - [`IngestSink::flush`] is a barrier: after `Ok`, everything handed to `write` or
//!   `write_events` before the call (through any handle) has been committed to the
//!   store, or has been dropped and counted in [`IngestSink::dropped_batches`];
//! - [`IngestSink::dropped_batches`] only grows, so comparing it across a `flush` tells
//!   a caller whether anything it queued earlier failed to reach the store.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use tp_core::ingest::{IngestSink, IngestSinkRef};
//! use tp_core::{DeviceEvent, TelemetryPoint};
//!
//! /// Counts what it is given; everything "commits" at once.
//! #[derive(Debug, Default)]
//! struct Counting(AtomicU64);
//!
//! #[async_trait::async_trait]
//! impl IngestSink for Counting {
//!     async fn write(&self, points: Vec<TelemetryPoint>) -> tp_core::Result<()> {
//!         self.0.fetch_add(points.len() as u64, Ordering::Relaxed);
//!         Ok(())
//!     }
//!     async fn write_events(&self, _events: Vec<DeviceEvent>) -> tp_core::Result<()> {
//!         Ok(())
//!     }
//!     async fn flush(&self) -> tp_core::Result<()> {
//!         Ok(())
//!     }
//!     fn dropped_batches(&self) -> u64 {
//!         0
//!     }
//!     fn backend(&self) -> &'static str {
//!         "counting"
//!     }
//! }
//!
//! let sink: IngestSinkRef = Arc::new(Counting::default());
//! assert_eq!(sink.backend(), "counting");
//! ```

use std::sync::Arc;

use async_trait::async_trait;

use crate::{DeviceEvent, DeviceId, Result, TelemetryPoint, Timestamp};

/// Accepts decoded telemetry and events for storage, with backpressure.
#[async_trait]
pub trait IngestSink: std::fmt::Debug + Send + Sync + 'static {
    /// Queues points; waits while the sink is full (backpressure).
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] once the sink has shut down.
    async fn write(&self, points: Vec<TelemetryPoint>) -> Result<()>;

    /// Queues events; waits while the sink is full (backpressure).
    ///
    /// # Errors
    /// As for [`Self::write`].
    async fn write_events(&self, events: Vec<DeviceEvent>) -> Result<()>;

    /// Returns once everything queued before this call is committed or counted as
    /// dropped (see the module's contract).
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when a batch was dropped since the previous flush;
    /// [`crate::Error::Unavailable`] once the sink has shut down.
    async fn flush(&self) -> Result<()>;

    /// Batches dropped (after exhausting their retries) since the sink started.
    fn dropped_batches(&self) -> u64;

    /// The backend name behind the sink, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Whether the store already holds the event of `device` at `ts` with this
    /// message id and method. Events are plain inserts, so a write-ahead-log replay
    /// asks before storing one again. A sink that cannot tell answers `false` (the
    /// default), and the replay then stores the event a second time.
    ///
    /// # Errors
    /// The store's read error.
    async fn has_event(
        &self,
        device: DeviceId,
        ts: Timestamp,
        message_id: &str,
        method: &str,
    ) -> Result<bool> {
        let _ = (device, ts, message_id, method);
        Ok(false)
    }

    /// The telemetry keys the store already holds for `device`. A broker seeds its
    /// per-device key limit with them the first time it sees the device, so a
    /// restart (or another node) does not hand a device a fresh allowance. A sink
    /// that cannot tell answers none (the default).
    ///
    /// # Errors
    /// The store's read error.
    async fn stored_keys(&self, device: DeviceId) -> Result<Vec<String>> {
        let _ = device;
        Ok(Vec::new())
    }
}

/// Shared handle to an ingest sink.
pub type IngestSinkRef = Arc<dyn IngestSink>;
