//! The ingest loop: decodes what devices published and hands it to the stores.
//!
//! Decoding and storing is [`Uplinks`], shared by the MQTT ingest loop and the HTTP
//! ([`crate::http`]) and CoAP ([`crate::coap`]) device APIs, so every transport stores
//! a payload the same way.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rumqttd::Notification;
use rumqttd::local::LinkRx;
use tp_core::protocol::{
    DownlinkKind, DownlinkTopic, GatewayEnvelope, MethodCall, ResponseObject, UplinkKind,
    UplinkTopic, decode_attributes, decode_event, decode_telemetry,
};
use tp_core::{CommandStatus, Device, DeviceEvent, DeviceId, KeyValue, TelemetryPoint, now_ms};
use tp_storage::writer::WriterHandle;

use crate::session::{Shared, decode_envelope, ingest_size};
use crate::transport::LinkPublisher;

/// Everything the ingest loop needs.
pub(crate) struct Ingest {
    pub(crate) uplinks: Uplinks,
    pub(crate) publisher: Arc<LinkPublisher>,
}

/// Decodes device messages and stores them: telemetry and events through the
/// batching writer (which waits while its queue is full: backpressure), attributes
/// and command responses in the metadata store.
#[derive(Debug, Clone)]
pub(crate) struct Uplinks {
    pub(crate) shared: Arc<Shared>,
    pub(crate) writer: WriterHandle,
}

impl Ingest {
    /// Consumes the router link until it closes.
    pub(crate) async fn run(self, mut rx: LinkRx) {
        loop {
            match rx.next().await {
                Ok(Some(Notification::Forward(forward))) => {
                    self.handle(&forward.publish.payload).await;
                    self.uplinks
                        .shared
                        .consumed(ingest_size(&forward.publish.payload));
                }
                // The router pauses a link with many pending notifications until it
                // says it is ready again; without this, delivery stops for good.
                Ok(Some(Notification::Unschedule)) => {
                    if let Err(e) = rx.wake().await {
                        tracing::error!(error = %e, "cannot wake the ingest link");
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "ingest link closed");
                    break;
                }
            }
        }
    }

    async fn handle(&self, envelope: &Bytes) {
        let Some((device_id, topic, payload)) = decode_envelope(envelope) else {
            tracing::error!("malformed internal ingest envelope");
            return;
        };
        let Ok(uplink) = UplinkTopic::parse(topic) else {
            return;
        };
        metrics::counter!("tp_ingest_messages_total", "kind" => kind_name(uplink.kind))
            .increment(1);
        if let Err(e) = self.dispatch(device_id, &uplink, &payload).await {
            self.uplinks.shared.rejected.fetch_add(1, Ordering::AcqRel);
            metrics::counter!("tp_ingest_rejected_total", "kind" => kind_name(uplink.kind))
                .increment(1);
            tracing::warn!(device_id = %device_id, topic, error = %e, "Rejected device message; nothing stored");
        }
    }

    async fn dispatch(
        &self,
        device_id: DeviceId,
        uplink: &UplinkTopic,
        payload: &[u8],
    ) -> tp_core::Result<()> {
        let now = now_ms();
        let mid = uplink.message_id.as_deref().unwrap_or_default();
        if uplink.gateway {
            return self.gateway(device_id, uplink, payload, now).await;
        }
        match uplink.kind {
            UplinkKind::Telemetry => self.uplinks.telemetry(device_id, payload, now).await,
            UplinkKind::Attributes => {
                let result = self.uplinks.attributes(device_id, payload, now).await;
                self.ack(
                    device_id,
                    DownlinkKind::AttributeResponse,
                    mid,
                    &result,
                    None,
                )
                .await;
                result
            }
            UplinkKind::Event => {
                let result = decode_event(payload);
                let method = result.as_ref().ok().map(|c| c.method.clone());
                let stored = match result {
                    Ok(call) => self.uplinks.event(device_id, mid, call, now).await,
                    Err(e) => Err(e),
                };
                self.ack(device_id, DownlinkKind::EventResponse, mid, &stored, method)
                    .await;
                stored
            }
            UplinkKind::CommandResponse | UplinkKind::AttributeSetResponse => {
                self.uplinks.response(device_id, mid, payload, now).await
            }
            UplinkKind::OtaProgress => {
                let params: serde_json::Value = serde_json::from_slice(payload)
                    .map_err(|e| tp_core::Error::invalid("payload", e.to_string()))?;
                self.uplinks
                    .writer
                    .write_events(vec![DeviceEvent {
                        device_id,
                        ts: now,
                        message_id: String::new(),
                        method: "ota_progress".to_owned(),
                        params,
                    }])
                    .await
            }
        }
    }

    /// Gateway messages: the gateway's own part is stored like a direct device's.
    /// Sub-device routing (by sub-device address under the gateway) is not wired yet:
    /// those parts are counted and logged, not stored.
    async fn gateway(
        &self,
        device_id: DeviceId,
        uplink: &UplinkTopic,
        payload: &[u8],
        now: i64,
    ) -> tp_core::Result<()> {
        let envelope = GatewayEnvelope::decode(payload)?;
        if !envelope.sub_device_data.is_empty() || !envelope.sub_gateway_data.is_empty() {
            metrics::counter!("tp_ingest_gateway_subdevice_unrouted_total").increment(1);
            tracing::debug!(device_id = %device_id, "gateway sub-device data is not routed yet");
        }
        let Some(own) = envelope.gateway_data else {
            return Ok(());
        };
        let own = serde_json::to_vec(&own).unwrap_or_default();
        let direct = UplinkTopic {
            gateway: false,
            kind: uplink.kind,
            message_id: uplink.message_id.clone(),
        };
        match direct.kind {
            UplinkKind::Telemetry => self.uplinks.telemetry(device_id, &own, now).await,
            UplinkKind::Attributes => self.uplinks.attributes(device_id, &own, now).await,
            _ => Box::pin(self.dispatch(device_id, &direct, &own)).await,
        }
    }

    async fn device(&self, device_id: DeviceId) -> Option<Arc<Device>> {
        if let Some(d) = self.uplinks.shared.session_device(device_id) {
            return Some(d);
        }
        self.uplinks
            .shared
            .metadata
            .get_device_by_id(device_id)
            .await
            .ok()
            .flatten()
            .map(Arc::new)
    }

    /// ThingsPanel acknowledges attribute and event reports on the device's response topic.
    async fn ack(
        &self,
        device_id: DeviceId,
        kind: DownlinkKind,
        mid: &str,
        result: &tp_core::Result<()>,
        method: Option<String>,
    ) {
        let Some(device) = self.device(device_id).await else {
            return;
        };
        let now = now_ms();
        let response = match result {
            Ok(()) => ResponseObject::success(now, method),
            Err(e) => ResponseObject {
                result: 1,
                errcode: Some("invalid_payload".to_owned()),
                message: Some(e.to_string()),
                ts: Some(now / 1000),
                method,
            },
        };
        let topic = DownlinkTopic {
            gateway: false,
            kind,
            device_number: device.device_number.clone(),
            message_id: Some(mid.to_owned()),
        };
        if let Err(e) = self.publisher.publish(topic.to_topic(), response.encode()) {
            tracing::warn!(device_id = %device_id, error = %e, "cannot send acknowledgement");
        }
    }
}

impl Uplinks {
    /// Queues a decoded event (`{"method","params"}`) reported with message id `mid`.
    pub(crate) async fn event(
        &self,
        device_id: DeviceId,
        mid: &str,
        call: MethodCall,
        now: i64,
    ) -> tp_core::Result<()> {
        self.writer
            .write_events(vec![DeviceEvent {
                device_id,
                ts: now,
                message_id: mid.to_owned(),
                method: call.method,
                params: call.params,
            }])
            .await
    }

    /// Decodes a telemetry payload (flat, `{"ts","values"}` or an array of those)
    /// and queues its points.
    pub(crate) async fn telemetry(
        &self,
        device_id: DeviceId,
        payload: &[u8],
        now: i64,
    ) -> tp_core::Result<()> {
        let points: Vec<TelemetryPoint> = decode_telemetry(payload, now)?
            .into_iter()
            .map(|s| TelemetryPoint {
                device_id,
                key: s.key,
                ts: s.ts,
                value: s.value,
            })
            .collect();
        metrics::counter!("tp_ingest_points_total").increment(points.len() as u64);
        self.writer.write(points).await
    }

    /// Decodes an attributes payload (a flat object) and upserts the attributes.
    pub(crate) async fn attributes(
        &self,
        device_id: DeviceId,
        payload: &[u8],
        now: i64,
    ) -> tp_core::Result<()> {
        let attrs: Vec<KeyValue> = decode_attributes(payload)?
            .into_iter()
            .map(|(key, value)| KeyValue {
                key,
                ts: now,
                value,
            })
            .collect();
        self.shared
            .metadata
            .upsert_attributes(device_id, &attrs)
            .await
    }

    /// A device answered a command or an attribute set: update its log row.
    pub(crate) async fn response(
        &self,
        device_id: DeviceId,
        mid: &str,
        payload: &[u8],
        now: i64,
    ) -> tp_core::Result<()> {
        let response = ResponseObject::decode(payload)?;
        let Some(mut log) = self
            .shared
            .metadata
            .get_command_by_message_id(device_id, mid)
            .await?
        else {
            return Err(tp_core::Error::not_found("command", mid));
        };
        log.status = if response.is_success() {
            CommandStatus::Replied
        } else {
            CommandStatus::Failed
        };
        log.response = serde_json::to_value(&response).ok();
        log.updated_at = now;
        self.shared.metadata.update_command(&log).await
    }
}

fn kind_name(kind: UplinkKind) -> &'static str {
    match kind {
        UplinkKind::Telemetry => "telemetry",
        UplinkKind::Attributes => "attributes",
        UplinkKind::Event => "event",
        UplinkKind::CommandResponse => "command_response",
        UplinkKind::AttributeSetResponse => "attribute_set_response",
        UplinkKind::OtaProgress => "ota_progress",
    }
}
