//! [`DeviceTransport`] over the broker's own device connections.

use std::sync::Arc;

use async_trait::async_trait;
use tp_core::{DeviceId, DeviceTransport, Downlink, Error, Result};

use crate::session::{Shared, Undelivered};

/// Downlink to devices connected to this node's broker.
pub struct MqttTransport {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for MqttTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttTransport").finish_non_exhaustive()
    }
}

/// Runs the down-script of the device's profile for this topic's message type (the
/// device's own telemetry control or attribute set topics) on an encoded downlink
/// payload; without one the payload goes out as it is.
///
/// # Errors
/// [`Error::Invalid`] (field `payload`) naming the script when it fails: the message
/// is not published.
pub(crate) async fn down_scripted(
    shared: &Shared,
    device: DeviceId,
    topic: &str,
    payload: bytes::Bytes,
) -> Result<bytes::Bytes> {
    #[cfg(feature = "lua")]
    if let (Some(scripts), Some(script_type)) = (
        shared.scripts.get(),
        crate::script::downlink_script_type(topic),
    ) {
        let profile = shared.session_device(device).and_then(|d| d.profile_id);
        return match scripts
            .transform(device, profile, script_type, &payload, topic)
            .await
        {
            Ok(Some(out)) => Ok(out.into()),
            Ok(None) => Ok(payload),
            Err(rejected) => Err(Error::invalid(
                "payload",
                format!(
                    "data script {:?} ({}) failed: {}",
                    rejected.script_name, rejected.script_id, rejected.failure
                ),
            )),
        };
    }
    let _ = (shared, device, topic);
    Ok(payload)
}

/// The error a downlink that reached no connection is reported as.
pub(crate) fn undelivered(device: DeviceId, topic: &str, why: Undelivered) -> Error {
    match why {
        Undelivered::NoSession => Error::not_found("connection", device),
        Undelivered::NoSubscription => Error::not_found("subscription", topic),
        Undelivered::Full => Error::Unavailable {
            backend: "mqtt",
            source: "the device's outbound queue is full".into(),
        },
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
    /// device matches the topic yet: nothing would receive the message, so the
    /// caller should queue it (queued downlink goes out when the device subscribes).
    async fn send(&self, message: Downlink) -> Result<()> {
        let payload = down_scripted(
            &self.shared,
            message.device_id,
            &message.topic,
            message.payload,
        )
        .await?;
        self.shared
            .publish(message.device_id, &message.topic, payload)
            .map_err(|why| undelivered(message.device_id, &message.topic, why))?;
        metrics::counter!("tp_downlink_sent_total").increment(1);
        Ok(())
    }

    async fn disconnect(&self, device: DeviceId) {
        let closed = self
            .shared
            .close_device(device, crate::session::CloseReason::Revoked);
        if closed > 0 {
            tracing::info!(device_id = %device, connections = closed, "closed the connections of a revoked device");
        }
    }
}
