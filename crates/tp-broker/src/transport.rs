//! [`DeviceTransport`] over the embedded broker.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rumqttd::local::LinkTx;
use tp_core::{DeviceId, DeviceTransport, Downlink, Error, Result};

use crate::session::Shared;

/// Publishes into the router through the platform's own local link.
pub(crate) struct LinkPublisher {
    tx: Mutex<LinkTx>,
}

impl LinkPublisher {
    pub(crate) fn new(tx: LinkTx) -> Self {
        Self { tx: Mutex::new(tx) }
    }

    /// Non-blocking publish (the router channel is bounded; a full channel is an error,
    /// not a stalled async task).
    pub(crate) fn publish(&self, topic: String, payload: Vec<u8>) -> Result<()> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.try_publish(topic, payload)
            .map(|_| ())
            .map_err(|e| Error::Unavailable {
                backend: "mqtt",
                source: Box::new(e),
            })
    }
}

/// Downlink to devices connected to this node's embedded broker.
pub struct MqttTransport {
    pub(crate) shared: Arc<Shared>,
    pub(crate) publisher: Arc<LinkPublisher>,
}

impl std::fmt::Debug for MqttTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttTransport").finish_non_exhaustive()
    }
}

#[async_trait]
impl DeviceTransport for MqttTransport {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    async fn is_connected(&self, device: DeviceId) -> bool {
        self.shared.session_device(device).is_some()
    }

    /// Publishes to a connected device. `NotFound` (entity `"connection"`) without a
    /// session, and `NotFound` (entity `"subscription"`) while no subscription of the
    /// device matches the topic yet: the router would drop the message, so the caller
    /// should queue it (queued downlink goes out when the device subscribes).
    async fn send(&self, message: Downlink) -> Result<()> {
        match self.shared.accepts(message.device_id, &message.topic) {
            None => return Err(Error::not_found("connection", message.device_id)),
            Some(false) => return Err(Error::not_found("subscription", &message.topic)),
            Some(true) => {}
        }
        self.publisher
            .publish(message.topic, message.payload.to_vec())?;
        metrics::counter!("tp_downlink_sent_total").increment(1);
        Ok(())
    }
}
