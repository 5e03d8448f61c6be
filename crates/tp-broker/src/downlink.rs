//! Queued downlink: delivery of logged commands, attribute sets/gets and telemetry
//! control to devices that were offline when they were issued. How a downlink is
//! logged and routed (topics, gateway envelopes, message ids, expiry) is
//! [`tp_core::downlink`], re-exported here.
//!
//! # Delivery design
//!
//! A downlink is logged as a [`CommandLog`] row with status `pending`. Whoever
//! publishes it (the API for a reachable device, the delivery pass below otherwise)
//! first marks the row `sent` and then publishes; a failed publish puts it back to
//! `pending`. Marking before publishing means a fast device response (which marks the
//! row `replied`/`failed` in ingest) can never be overwritten by a late `sent`.
//!
//! Publishing right after the CONNACK would race the device's SUBSCRIBE: a message
//! that matches no subscription yet reaches nobody. So delivery is driven by the
//! SUBSCRIBE instead of the CONNACK: the connection driver (the `connection`
//! module) records the granted filters before it writes the SUBACK (and forgets
//! them on UNSUBSCRIBE and disconnect) and wakes the delivery task, which then
//! publishes exactly the pending rows whose topic matches a granted filter; rows
//! for topics the device has not subscribed to yet stay pending and go out on a
//! later SUBSCRIBE that covers them. [`crate::MqttTransport`]'s `send` applies the
//! same rule: a connected device without a matching subscription is
//! [`tp_core::Error::NotFound`], so the API leaves the row queued. No timers are
//! involved, so nothing depends on how quickly a device subscribes.
//!
//! Passes of one session are serialized by a per-session lock, so two SUBACKs cannot
//! deliver a row twice. A downlink issued through the API in the very instant the
//! device's SUBACK is processed may still be published by both the API and the pass:
//! delivery is at-least-once (as MQTT QoS 1 is), and the `message_id` lets a device
//! drop the duplicate. The other way round, a message published to a connection that
//! drops at that very moment is marked `sent`; a QoS 1 downlink the device had not
//! acknowledged is kept with a persistent session and sent again when the device
//! resumes it, but without one (clean session) it never arrives.
//!
//! A sub-device has no connection of its own: its rows go out through its top-level
//! gateway ([`route`]). So a delivery pass for a device also covers every device
//! behind it (its sub-devices, and theirs through nested gateways), each row wrapped
//! in the gateway envelope and published on the gateway's topic once the gateway is
//! subscribed to it.
//!
//! Rows past their `expires_at` are marked `expired` instead of delivered (here and
//! whenever the API lists them), so a stale command never reaches a device.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;
use tp_core::protocol::MAX_GATEWAY_DEPTH;
use tp_core::{
    CommandKind, CommandLog, CommandStatus, Device, DeviceId, MetadataStore, PublishedDownlink,
    Result, Timestamp, now_ms,
};

use crate::session::Shared;

pub use tp_core::downlink::{
    DEFAULT_EXPIRY_SECS, Route, downlink_topic, expire_if_stale, is_expired, is_gateway,
    new_message_id, pending_commands, route,
};

/// A downlink handed to a device that polls for it over HTTP or CoAP.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PolledCommand {
    /// Correlates the device's response.
    pub(crate) message_id: String,
    /// What it is.
    pub(crate) kind: CommandKind,
    /// The MQTT topic it would be published on, so a device can treat it alike.
    pub(crate) topic: String,
    /// The payload (as published over MQTT).
    pub(crate) payload: serde_json::Value,
    /// When it was issued (ms).
    pub(crate) created_at: Timestamp,
    /// When it expires (ms), if ever.
    pub(crate) expires_at: Option<Timestamp>,
}

/// Takes a polling device's pending downlink, oldest first: expires stale rows and
/// marks the others `sent` (before returning them, as with MQTT). With `max_bytes`,
/// stops before the JSON list would grow past it, always taking at least one row;
/// the rest stay pending for the next poll. Two polls racing may both return a row
/// (at-least-once, as over MQTT; the `message_id` identifies duplicates).
pub(crate) async fn poll_pending(
    metadata: &dyn MetadataStore,
    device: &Device,
    max_bytes: Option<usize>,
) -> Result<Vec<PolledCommand>> {
    let rows = pending_commands(metadata, device.tenant_id, device.id).await?;
    let mut taken = Vec::new();
    let mut size = 2; // "[]"
    for mut row in rows {
        let now = now_ms();
        if expire_if_stale(metadata, &mut row, now).await? {
            continue;
        }
        let polled = PolledCommand {
            topic: downlink_topic(row.kind, &device.device_number, &row.message_id),
            message_id: row.message_id.clone(),
            kind: row.kind,
            payload: row.payload.clone(),
            created_at: row.created_at,
            expires_at: row.expires_at,
        };
        if let Some(max) = max_bytes {
            let len = serde_json::to_vec(&polled).map(|v| v.len()).unwrap_or(0) + 1;
            if !taken.is_empty() && size + len > max {
                break;
            }
            size += len;
        }
        row.status = CommandStatus::Sent;
        row.updated_at = now;
        row.published = Some(PublishedDownlink {
            topic: polled.topic.clone(),
            payload: polled.payload.clone(),
        });
        metadata.update_command(&row).await?;
        metrics::counter!("tp_downlink_sent_total").increment(1);
        taken.push(polled);
    }
    Ok(taken)
}

/// Whether an MQTT topic filter matches a topic name (`+` one level, `#` the rest).
pub(crate) fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        match (f, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// The delivery task: one pass per granted subscription of a device.
pub(crate) struct Delivery {
    pub(crate) shared: Arc<Shared>,
}

impl Delivery {
    /// Runs until the broker's session layer goes away.
    pub(crate) async fn run(self, mut subscribed: mpsc::UnboundedReceiver<DeviceId>) {
        let this = Arc::new(self);
        while let Some(device_id) = subscribed.recv().await {
            let this = this.clone();
            tokio::spawn(async move {
                if let Err(e) = this.pass(device_id).await {
                    tracing::error!(device_id = %device_id, error = %e, "queued downlink delivery failed");
                }
            });
        }
    }

    /// Expires stale pending rows of the device and of every device behind it (a
    /// gateway's sub-devices, nested sub-gateways' too: their downlink goes out
    /// through this connection in the gateway envelope, see [`route`]) and publishes
    /// the others whose topic the device is subscribed to.
    async fn pass(&self, device_id: DeviceId) -> Result<()> {
        let Some((device, lock)) = self.shared.delivery_slot(device_id) else {
            return Ok(());
        };
        let _serialized = lock.lock().await;
        let metadata = self.shared.metadata.as_ref();
        for target in behind(metadata, &device).await? {
            let rows = pending_commands(metadata, target.tenant_id, target.id).await?;
            for row in rows {
                if !self.deliver(&device, &target, row).await? {
                    return Ok(()); // disconnected; the next session delivers
                }
            }
        }
        Ok(())
    }

    /// Expires or publishes one pending row of `target` through `device`'s
    /// connection; `false` once the device has no session any more.
    async fn deliver(&self, device: &Device, target: &Device, mut row: CommandLog) -> Result<bool> {
        let metadata = self.shared.metadata.as_ref();
        let now = now_ms();
        if expire_if_stale(metadata, &mut row, now).await? {
            tracing::info!(device_id = %target.id, message_id = %row.message_id, "queued downlink expired");
            return Ok(true);
        }
        let profiles = self.shared.profiles.as_deref();
        let route = match route(
            metadata,
            profiles,
            target,
            row.kind,
            &row.message_id,
            &row.payload,
        )
        .await
        {
            Ok(r) if r.device_id == device.id => r,
            Ok(_) => return Ok(true), // moved behind another gateway meanwhile
            Err(e) => {
                tracing::warn!(device_id = %target.id, message_id = %row.message_id, error = %e,
                    "cannot route queued downlink; it stays pending");
                return Ok(true);
            }
        };
        let topic = route.topic.clone();
        match self.shared.accepts(device.id, &topic) {
            None => return Ok(false),
            Some(false) => return Ok(true), // not subscribed to this topic (yet)
            Some(true) => {}
        }
        row.status = CommandStatus::Sent;
        row.updated_at = now;
        row.published = Some(route.published());
        metadata.update_command(&row).await?;
        let bytes = serde_json::to_vec(&route.payload).unwrap_or_default();
        let scripted =
            crate::transport::down_scripted(&self.shared, device.id, &topic, bytes.into()).await;
        match scripted.and_then(|bytes| {
            self.shared
                .publish(device.id, &topic, bytes)
                .map_err(|why| crate::transport::undelivered(device.id, &topic, why))
        }) {
            Ok(()) => {
                metrics::counter!("tp_downlink_sent_total").increment(1);
                tracing::info!(device_id = %target.id, via = %device.id, message_id = %row.message_id, "queued downlink delivered");
            }
            Err(e) => {
                tracing::warn!(device_id = %target.id, message_id = %row.message_id, error = %e,
                    "cannot publish queued downlink; it stays pending");
                row.status = CommandStatus::Pending;
                row.updated_at = now_ms();
                metadata.update_command(&row).await?;
            }
        }
        Ok(true)
    }
}

/// `device` and every device behind it (sub-devices, and theirs through nested
/// gateways, at most [`MAX_GATEWAY_DEPTH`] levels), breadth first.
async fn behind(metadata: &dyn MetadataStore, device: &Device) -> Result<Vec<Device>> {
    let mut all = vec![device.clone()];
    let mut seen: HashSet<DeviceId> = HashSet::from([device.id]);
    let mut level = vec![device.id];
    for _ in 0..MAX_GATEWAY_DEPTH {
        let mut next = Vec::new();
        for parent in level {
            for sub in metadata.list_sub_devices(parent).await? {
                if seen.insert(sub.id) {
                    next.push(sub.id);
                    all.push(sub);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(topic_matches(
            "devices/command/d1/+",
            "devices/command/d1/ab12cd34"
        ));
        assert!(!topic_matches("devices/command/d1/+", "devices/command/d1"));
        assert!(!topic_matches(
            "devices/command/d1/+",
            "devices/command/d2/m"
        ));
        assert!(topic_matches(
            "devices/command/d1/#",
            "devices/command/d1/m"
        ));
        assert!(topic_matches(
            "devices/telemetry/control/d1",
            "devices/telemetry/control/d1"
        ));
        assert!(!topic_matches(
            "devices/telemetry/control/d1",
            "devices/telemetry/control/d1/x"
        ));
        assert!(topic_matches("#", "a/b"));
    }

    #[test]
    fn topics_follow_thingspanel() {
        assert_eq!(
            downlink_topic(CommandKind::Command, "d1", "ab12cd34"),
            "devices/command/d1/ab12cd34"
        );
        assert_eq!(
            downlink_topic(CommandKind::AttributeSet, "d1", "m1"),
            "devices/attributes/set/d1/m1"
        );
        assert_eq!(
            downlink_topic(CommandKind::AttributeGet, "d1", "m1"),
            "devices/attributes/get/d1"
        );
        assert_eq!(
            downlink_topic(CommandKind::TelemetryControl, "d1", "m1"),
            "devices/telemetry/control/d1"
        );
    }

    #[test]
    fn message_ids_are_eight_hex_chars() {
        let a = new_message_id();
        assert_eq!(a.len(), 8);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, new_message_id());
    }
}
