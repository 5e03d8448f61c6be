//! The device transport contract: how the platform reaches a connected device.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::Result;
use crate::model::DeviceId;

/// A message for one device on one of its downlink topics.
#[derive(Debug, Clone, PartialEq)]
pub struct Downlink {
    /// The device.
    pub device_id: DeviceId,
    /// Full topic, e.g. `devices/command/{device_number}/{message_id}`.
    pub topic: String,
    /// Payload bytes.
    pub payload: Bytes,
}

/// Delivers downlink messages to devices connected to this node (or, in a cluster,
/// to whichever node holds the connection).
///
/// # Contract
/// - `is_connected` is true while the device has at least one open session.
/// - `send` to a connected device delivers the payload on the topic to the device's
///   subscription; to a device that is not connected it fails with
///   [`crate::Error::NotFound`] (entity `"connection"`), so callers can queue it.
/// - Implementations must pass every case of `tp_core::testing::transport`.
#[async_trait]
pub trait DeviceTransport: std::fmt::Debug + Send + Sync + 'static {
    /// Stable transport name (`"mqtt"`).
    fn name(&self) -> &'static str;
    /// Whether the device currently has a session here.
    async fn is_connected(&self, device: DeviceId) -> bool;
    /// Sends one message.
    async fn send(&self, message: Downlink) -> Result<()>;
    /// A downlink for `device` (the device holding the connection) was logged as
    /// pending because this transport could not deliver it now. A single node has
    /// nothing to do: it delivers pending rows when the device subscribes, so the
    /// default ignores it. A cluster transport tells the node that holds the
    /// device's connection, which then delivers the pending rows.
    async fn queued(&self, device: DeviceId, message_id: &str) {
        let _ = (device, message_id);
    }
    /// Closes every live connection of `device` and forgets its persistent
    /// sessions: it was disabled or deleted, or its credentials changed. A cluster
    /// transport does so on every node. The default has no connections to close.
    async fn disconnect(&self, device: DeviceId) {
        let _ = device;
    }
}

/// Shared handle to a transport.
pub type DeviceTransportRef = Arc<dyn DeviceTransport>;
