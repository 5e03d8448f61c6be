//! Decoding and storing what devices report, shared by every way a message arrives:
//! the embedded broker's ingest loop ([`crate::ingest`]), the HTTP ([`crate::http`])
//! and CoAP ([`crate::coap`]) device APIs, and the external-broker consumer
//! (`crate::external`, feature `external`), so every path stores a payload the same
//! way: telemetry, attributes, events, OTA progress, command responses and gateway
//! envelopes with their sub-devices.
//!
//! What differs between the paths stays with them: where the receive time comes
//! from, the write-ahead log, how a message is acknowledged to its broker, and how
//! the acknowledgement of a report ([`Ack`]) reaches the device.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tp_core::ingest::IngestSinkRef;
use tp_core::protocol::{
    DownlinkKind, DownlinkTopic, GatewayEnvelope, MethodCall, ResponseObject, UplinkKind,
    UplinkTopic, decode_attributes, decode_event, decode_telemetry,
};
use tp_core::rules::{RuleInput, RuleInputData, UplinkObserverRef};
use tp_core::script::ScriptType;
use tp_core::{
    CommandStatus, Device, DeviceEvent, DeviceId, KeyValue, MetadataStoreRef, TelemetryPoint,
    now_ms,
};
use tp_core::{ProfileId, TenantId};

use crate::session::Shared;
use crate::thing_model::Checked;

/// Decodes device messages and stores them: telemetry and events through the
/// batching writer (which waits while its queue is full: backpressure), attributes
/// and command responses in the metadata store.
#[derive(Debug, Clone)]
pub(crate) struct Uplinks {
    /// Devices (sub-device addresses, identity), attributes and the command log.
    pub(crate) metadata: MetadataStoreRef,
    pub(crate) writer: IngestSinkRef,
    /// The embedded broker's sessions: a connected device's identity without a store
    /// lookup, and the write-ahead log. `None` in the external consumer.
    pub(crate) sessions: Option<Arc<Shared>>,
    /// Every accepted message is a sign of life ([`crate::presence`]); `None` in the
    /// external consumer.
    pub(crate) presence: Option<Arc<crate::presence::Presence>>,
    /// The rule engine, handed each accepted telemetry, attribute and event message.
    pub(crate) observer: Option<UplinkObserverRef>,
    /// This node's device lookups ([`DeviceCaches`]).
    pub(crate) caches: Arc<DeviceCaches>,
    /// OTA task details, which `ota/devices/progress` reports update.
    pub(crate) ota: Option<tp_core::ota::OtaStoreRef>,
    /// Device templates whose thing model checks telemetry and attributes
    /// ([`crate::thing_model`]); `None`: nothing is checked.
    pub(crate) thing_models: Option<Arc<tp_core::thing_model::TemplateCache>>,
    /// Data scripts run on telemetry and attributes before they are decoded.
    #[cfg(feature = "lua")]
    pub(crate) scripts: Option<Arc<crate::script::Scripts>>,
}

/// The acknowledgement ThingsPanel sends a device for an attribute or event report,
/// on its response topic; the caller publishes it ([`Ack::message`]).
#[derive(Debug)]
pub(crate) struct Ack {
    /// The device (or gateway) that sent the report.
    pub(crate) device_id: DeviceId,
    kind: DownlinkKind,
    mid: String,
    method: Option<String>,
    gateway: bool,
    /// Why the report was not stored.
    error: Option<String>,
    /// A payload of its own instead of the response object (registration answers).
    body: Option<Vec<u8>>,
}

impl Ack {
    fn new(
        device_id: DeviceId,
        kind: DownlinkKind,
        mid: &str,
        result: &tp_core::Result<()>,
        method: Option<String>,
        gateway: bool,
    ) -> Self {
        Self {
            device_id,
            kind,
            mid: mid.to_owned(),
            method,
            gateway,
            error: result.as_ref().err().map(ToString::to_string),
            body: None,
        }
    }

    /// An answer of `kind` with its own payload.
    fn with_body(device_id: DeviceId, kind: DownlinkKind, body: Vec<u8>) -> Self {
        Self {
            device_id,
            kind,
            mid: String::new(),
            method: None,
            gateway: false,
            error: None,
            body: Some(body),
        }
    }

    /// Topic and payload for the device numbered `device_number`, stamped now.
    pub(crate) fn message(self, device_number: &str) -> (String, Vec<u8>) {
        let topic = DownlinkTopic {
            gateway: self.gateway,
            kind: self.kind,
            device_number: device_number.to_owned(),
            message_id: self.kind.has_message_id().then_some(self.mid),
        };
        if let Some(body) = self.body {
            return (topic.to_topic(), body);
        }
        let now = now_ms();
        let response = match self.error {
            None => ResponseObject::success(now, self.method),
            Some(message) => ResponseObject {
                result: 1,
                errcode: Some("invalid_payload".to_owned()),
                message: Some(message),
                ts: Some(now / 1000),
                method: self.method,
            },
        };
        (topic.to_topic(), response.encode())
    }
}

impl Uplinks {
    /// Marks a sign of life of `device_id` (when presence is tracked here).
    pub(crate) fn activity(&self, device_id: DeviceId) {
        if let Some(presence) = &self.presence {
            presence.activity(device_id);
        }
    }

    /// Stores one message `device_id` published on `uplink`, received at `now`.
    /// Returns the outcome and the acknowledgement to send the device, if any:
    /// attribute and event reports are acknowledged whether they were stored or not.
    pub(crate) async fn dispatch(
        &self,
        device_id: DeviceId,
        uplink: &UplinkTopic,
        payload: &[u8],
        now: i64,
    ) -> (tp_core::Result<()>, Option<Ack>) {
        let mid = uplink.message_id.as_deref().unwrap_or_default();
        if uplink.gateway {
            return self.gateway(device_id, uplink, payload, now).await;
        }
        match uplink.kind {
            UplinkKind::Telemetry => (self.telemetry(device_id, payload, now).await, None),
            UplinkKind::Attributes => {
                let result = self.attributes(device_id, payload, now).await;
                let ack = Ack::new(
                    device_id,
                    DownlinkKind::AttributeResponse,
                    mid,
                    &result,
                    None,
                    false,
                );
                (result, Some(ack))
            }
            UplinkKind::Event => {
                let result = decode_event(payload);
                let method = result.as_ref().ok().map(|c| c.method.clone());
                let stored = match result {
                    Ok(call) => self.event(device_id, mid, call, now).await,
                    Err(e) => Err(e),
                };
                let ack = Ack::new(
                    device_id,
                    DownlinkKind::EventResponse,
                    mid,
                    &stored,
                    method,
                    false,
                );
                (stored, Some(ack))
            }
            UplinkKind::CommandResponse | UplinkKind::AttributeSetResponse => {
                (self.response(device_id, mid, payload, now).await, None)
            }
            UplinkKind::OtaProgress => (self.ota_progress(device_id, payload, now).await, None),
            UplinkKind::Register => {
                let outcome = self.register(device_id, payload).await;
                let body = match &outcome {
                    Ok(answer) => answer.clone(),
                    Err(e) => serde_json::json!({
                        "result": 1,
                        "errcode": register_errcode(e),
                        "message": e.to_string(),
                        "ts": now / 1000,
                    }),
                };
                let ack = Ack::with_body(
                    device_id,
                    DownlinkKind::RegisterResponse,
                    serde_json::to_vec(&body).unwrap_or_default(),
                );
                (outcome.map(|_| ()), Some(ack))
            }
        }
    }

    /// `devices/register`: the publishing device registers a new device with a
    /// profile secret of its own tenant (ThingsPanel's dynamic registration, with
    /// the fields of its `device/auth` request). With `sub_device_addr` the new device
    /// sits behind the publisher, or behind `parent_device_number` when that is the
    /// publisher or a gateway below it. Returns the answer published on
    /// `devices/register/response/{device_number}` (the publisher's number), with the
    /// new device's credentials.
    async fn register(
        &self,
        device_id: DeviceId,
        payload: &[u8],
    ) -> tp_core::Result<serde_json::Value> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Request {
            #[serde(alias = "template_secret")]
            profile_secret: String,
            device_number: String,
            #[serde(default, alias = "device_name")]
            name: Option<String>,
            #[serde(default)]
            sub_device_addr: Option<String>,
            #[serde(default)]
            parent_device_number: Option<String>,
            /// Accepted for ThingsPanel clients; the secret names the profile.
            #[serde(default)]
            #[allow(dead_code)]
            product_key: Option<String>,
        }
        let req: Request = serde_json::from_slice(payload)
            .map_err(|e| tp_core::Error::invalid("payload", format!("not a registration: {e}")))?;
        let Some(profiles) = self.sessions.as_ref().and_then(|s| s.profiles.clone()) else {
            return Err(tp_core::Error::NotSupported {
                backend: "broker without device profiles",
                operation: "devices/register",
            });
        };
        let Some(publisher) = self.metadata.get_device_by_id(device_id).await? else {
            return Err(tp_core::Error::not_found("device", device_id));
        };
        let parent = match (&req.sub_device_addr, &req.parent_device_number) {
            (None, _) => None,
            (Some(_), None) => Some(publisher.id),
            (Some(_), Some(number)) => Some(self.behind(&publisher, number).await?),
        };
        let registration = tp_core::provision::Registration {
            profile_secret: req.profile_secret,
            device_number: req.device_number,
            name: req.name,
            parent,
            sub_device_addr: req.sub_device_addr,
            tenant: Some(publisher.tenant_id),
        };
        let (device, issued) = tp_core::provision::register_device(
            self.metadata.as_ref(),
            profiles.as_ref(),
            registration,
        )
        .await?;
        tracing::info!(device_id = %device.id, registered_by = %publisher.id,
            device_number = %device.device_number, "device registered over MQTT");
        Ok(serde_json::json!({
            "result": 0,
            "message": "success",
            "ts": now_ms() / 1000,
            "device_id": device.id.0,
            "device_number": device.device_number,
            "voucher": {
                "voucher_type": issued.voucher_type.as_str(),
                "username": issued.username,
                "password": issued.password,
            },
        }))
    }

    /// The device numbered `number`, if it is `publisher` or sits below it.
    async fn behind(&self, publisher: &Device, number: &str) -> tp_core::Result<DeviceId> {
        let not_below = || {
            tp_core::Error::invalid(
                "parent_device_number",
                "must be the registering gateway or a device behind it",
            )
        };
        let Some(target) = self.metadata.get_device_by_number(number).await? else {
            return Err(not_below());
        };
        let mut cursor = Some(target.clone());
        for _ in 0..=tp_core::protocol::MAX_GATEWAY_DEPTH {
            let Some(d) = cursor else { break };
            if d.id == publisher.id {
                return Ok(target.id);
            }
            cursor = match d.parent_id {
                Some(p) => self.metadata.get_device_by_id(p).await?,
                None => None,
            };
        }
        Err(not_below())
    }

    /// An OTA progress report, stored as an `ota_progress` event and mapped onto the
    /// device's OTA task detail ([`crate::ota::record_progress`]).
    async fn ota_progress(
        &self,
        device_id: DeviceId,
        payload: &[u8],
        now: i64,
    ) -> tp_core::Result<()> {
        let params: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| tp_core::Error::invalid("payload", e.to_string()))?;
        self.writer
            .write_events(vec![DeviceEvent {
                device_id,
                ts: now,
                message_id: String::new(),
                method: "ota_progress".to_owned(),
                params,
            }])
            .await?;
        if let Some(ota) = &self.ota {
            let Some(device) = self.device(device_id).await else {
                return Ok(());
            };
            crate::ota::record_progress(ota.as_ref(), &device, payload, now).await?;
        }
        Ok(())
    }

    /// Gateway messages (ThingsPanel's envelope): `gateway_data` is stored for the
    /// gateway itself, `sub_device_data[addr]` for the device whose parent is this
    /// gateway and whose `sub_device_addr` is `addr`, `sub_gateway_data[addr]`
    /// recursively for the nested gateway found the same way. Unknown addresses are
    /// logged and counted; the rest of the envelope is still stored. Attribute and event
    /// reports are acknowledged once, on the gateway's response topic.
    async fn gateway(
        &self,
        device_id: DeviceId,
        uplink: &UplinkTopic,
        payload: &[u8],
        now: i64,
    ) -> (tp_core::Result<()>, Option<Ack>) {
        let mid = uplink.message_id.as_deref().unwrap_or_default();
        if matches!(
            uplink.kind,
            UplinkKind::CommandResponse | UplinkKind::AttributeSetResponse
        ) {
            return (
                self.gateway_response(device_id, uplink.kind, mid, payload, now)
                    .await,
                None,
            );
        }
        let envelope = match GatewayEnvelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                let ack = gateway_ack_kind(uplink.kind).map(|kind| {
                    let failed = Err(tp_core::Error::invalid("payload", e.to_string()));
                    Ack::new(device_id, kind, mid, &failed, None, true)
                });
                return (Err(e), ack);
            }
        };
        let method = envelope
            .gateway_data
            .as_ref()
            .and_then(|v| v.get("method"))
            .and_then(|m| m.as_str())
            .map(str::to_owned);
        let result = self
            .route_envelope(device_id, uplink.kind, mid, envelope, now)
            .await;
        let ack = gateway_ack_kind(uplink.kind)
            .map(|kind| Ack::new(device_id, kind, mid, &result, method, true));
        (result, ack)
    }

    /// Stores every part of `envelope` reported through gateway `gateway_id`; returns
    /// the first error after trying every part.
    async fn route_envelope(
        &self,
        gateway_id: DeviceId,
        kind: UplinkKind,
        mid: &str,
        envelope: GatewayEnvelope,
        now: i64,
    ) -> tp_core::Result<()> {
        // (gateway, envelope) pairs still to store; depth is bounded by decode().
        let mut todo = vec![(gateway_id, envelope)];
        let mut first_err = None;
        while let Some((gw, env)) = todo.pop() {
            if let Some(own) = env.gateway_data
                && let Err(e) = self.store_part(gw, kind, mid, own, now).await
            {
                first_err.get_or_insert(e);
            }
            for (addr, data) in env.sub_device_data {
                let Some(sub) = self.resolve_sub_device(gw, &addr).await? else {
                    continue;
                };
                if let Err(e) = self.store_part(sub, kind, mid, data, now).await {
                    first_err.get_or_insert(e);
                }
            }
            for (addr, nested) in env.sub_gateway_data {
                if let Some(sub_gw) = self.resolve_sub_device(gw, &addr).await? {
                    todo.push((sub_gw, nested));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// One device's part of a gateway envelope, stored as if the device had sent it.
    async fn store_part(
        &self,
        device_id: DeviceId,
        kind: UplinkKind,
        mid: &str,
        data: serde_json::Value,
        now: i64,
    ) -> tp_core::Result<()> {
        self.activity(device_id);
        let bytes = serde_json::to_vec(&data).unwrap_or_default();
        match kind {
            UplinkKind::Telemetry => self.telemetry(device_id, &bytes, now).await,
            UplinkKind::Attributes => self.attributes(device_id, &bytes, now).await,
            UplinkKind::Event => {
                let call = decode_event(&bytes)?;
                self.event(device_id, mid, call, now).await
            }
            UplinkKind::CommandResponse | UplinkKind::AttributeSetResponse => {
                self.response(device_id, mid, &bytes, now).await
            }
            UplinkKind::OtaProgress | UplinkKind::Register => Ok(()),
        }
    }

    /// A gateway's answer to a command or an attribute set, in any of the forms
    /// gateways use: a plain response object answers the downlink that went out
    /// on the gateway's topic with this message id (its own, or one for a device
    /// behind it: the log records the published topic), else the gateway's own row
    /// with the id; an envelope answers per device (`gateway_data` the gateway's own,
    /// `sub_device_data`/`sub_gateway_data` the devices behind it).
    async fn gateway_response(
        &self,
        gateway_id: DeviceId,
        kind: UplinkKind,
        mid: &str,
        payload: &[u8],
        now: i64,
    ) -> tp_core::Result<()> {
        let value: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| tp_core::Error::invalid("payload", e.to_string()))?;
        if value.get("result").is_some() {
            let target = self.published_through(gateway_id, kind, mid).await?;
            return self
                .response(target.unwrap_or(gateway_id), mid, payload, now)
                .await;
        }
        let envelope = GatewayEnvelope::decode(payload)?;
        self.route_envelope(gateway_id, kind, mid, envelope, now)
            .await
    }

    /// The device a downlink with `mid` published on `gateway_id`'s `gateway/…`
    /// topic was for, if the log has one.
    async fn published_through(
        &self,
        gateway_id: DeviceId,
        kind: UplinkKind,
        mid: &str,
    ) -> tp_core::Result<Option<DeviceId>> {
        let kind = match kind {
            UplinkKind::AttributeSetResponse => DownlinkKind::AttributeSet,
            _ => DownlinkKind::Command,
        };
        let Some(gateway) = self.metadata.get_device_by_id(gateway_id).await? else {
            return Ok(None);
        };
        let topic = DownlinkTopic {
            gateway: true,
            kind,
            device_number: gateway.device_number,
            message_id: Some(mid.to_owned()),
        }
        .to_topic();
        Ok(self
            .metadata
            .get_command_by_published_topic(gateway.tenant_id, &topic)
            .await?
            .map(|row| row.device_id))
    }

    /// The device at `addr` under gateway `parent`, cached; an unknown address is
    /// logged and counted and yields `None`.
    async fn resolve_sub_device(
        &self,
        parent: DeviceId,
        addr: &str,
    ) -> tp_core::Result<Option<DeviceId>> {
        if let Some(id) = self.caches.sub_device_get(parent, addr) {
            return Ok(Some(id));
        }
        match self.metadata.get_sub_device(parent, addr).await? {
            Some(device) => {
                self.caches.sub_device_put(parent, addr, device.id);
                Ok(Some(device.id))
            }
            None => {
                self.caches.sub_device_remove(parent, addr);
                metrics::counter!("tp_ingest_gateway_unknown_subdevice_total").increment(1);
                tracing::warn!(gateway_id = %parent, addr, "gateway reported data for an unknown sub-device address; that part is dropped");
                Ok(None)
            }
        }
    }

    /// A device connected here (its session), else from the store.
    pub(crate) async fn device(&self, device_id: DeviceId) -> Option<Arc<Device>> {
        if let Some(d) = self.session_device(device_id) {
            return Some(d);
        }
        self.metadata
            .get_device_by_id(device_id)
            .await
            .ok()
            .flatten()
            .map(Arc::new)
    }

    fn session_device(&self, device_id: DeviceId) -> Option<Arc<Device>> {
        self.sessions.as_ref()?.session_device(device_id)
    }

    /// Queues a decoded event (`{"method","params"}`) reported with message id `mid`.
    pub(crate) async fn event(
        &self,
        device_id: DeviceId,
        mid: &str,
        call: MethodCall,
        now: i64,
    ) -> tp_core::Result<()> {
        let observed = self.observer.is_some().then(|| RuleInputData::Event {
            method: call.method.clone(),
            params: call.params.clone(),
        });
        self.writer
            .write_events(vec![DeviceEvent {
                device_id,
                ts: now,
                message_id: mid.to_owned(),
                method: call.method,
                params: call.params,
            }])
            .await?;
        if let Some(data) = observed {
            self.observe(device_id, now, data).await;
        }
        Ok(())
    }

    /// Decodes a telemetry payload (flat, `{"ts","values"}` or an array of those)
    /// and queues its points.
    pub(crate) async fn telemetry(
        &self,
        device_id: DeviceId,
        payload: &[u8],
        now: i64,
    ) -> tp_core::Result<()> {
        let payload = &*self
            .scripted(
                device_id,
                ScriptType::TelemetryUp,
                payload,
                "devices/telemetry",
            )
            .await?;
        let points: Vec<TelemetryPoint> = decode_telemetry(payload, now)?
            .into_iter()
            .map(|s| TelemetryPoint {
                device_id,
                key: s.key,
                ts: s.ts,
                value: s.value,
            })
            .collect();
        let violations = self
            .check_model(device_id, Checked::Telemetry, || {
                points.iter().map(|p| (p.key.as_str(), &p.value))
            })
            .await?;
        let keys = || points.iter().map(|p| p.key.as_str());
        let admitted = match self.caches.admit_keys(device_id, keys()) {
            Some(admitted) => admitted,
            None => {
                // First message of this device on this node: start from what the store
                // holds, so a restart does not reset the device's key allowance.
                let stored = self.writer.stored_keys(device_id).await.unwrap_or_else(|e| {
                    tracing::warn!(device_id = %device_id, error = %e,
                        "cannot read the device's stored telemetry keys; counting from this message");
                    Vec::new()
                });
                self.caches.seed_keys(device_id, &stored);
                self.caches.admit_keys(device_id, keys()) == Some(true)
            }
        };
        if !admitted {
            metrics::counter!("tp_ingest_key_limit_refused_total").increment(1);
            tracing::warn!(device_id = %device_id, limit = self.caches.max_keys,
                "telemetry refused: the device would exceed max_telemetry_keys_per_device");
            return Err(tp_core::Error::invalid(
                "telemetry",
                format!(
                    "the device would have more than {} distinct telemetry keys (max_telemetry_keys_per_device)",
                    self.caches.max_keys
                ),
            ));
        }
        metrics::counter!("tp_ingest_points_total").increment(points.len() as u64);
        let observed = self.observer.is_some().then(|| RuleInputData::Telemetry {
            values: points
                .iter()
                .map(|p| KeyValue {
                    key: p.key.clone(),
                    ts: p.ts,
                    value: p.value.clone(),
                })
                .collect(),
        });
        self.writer.write(points).await?;
        self.record_violations(device_id, Checked::Telemetry, violations, now)
            .await;
        if let Some(data) = observed {
            self.observe(device_id, now, data).await;
        }
        Ok(())
    }

    /// Decodes an attributes payload (a flat object) and upserts the attributes.
    pub(crate) async fn attributes(
        &self,
        device_id: DeviceId,
        payload: &[u8],
        now: i64,
    ) -> tp_core::Result<()> {
        let payload = &*self
            .scripted(
                device_id,
                ScriptType::AttributeUp,
                payload,
                "devices/attributes",
            )
            .await?;
        let attrs: Vec<KeyValue> = decode_attributes(payload)?
            .into_iter()
            .map(|(key, value)| KeyValue {
                key,
                ts: now,
                value,
            })
            .collect();
        let violations = self
            .check_model(device_id, Checked::Attributes, || {
                attrs.iter().map(|a| (a.key.as_str(), &a.value))
            })
            .await?;
        self.metadata.upsert_attributes(device_id, &attrs).await?;
        self.record_violations(device_id, Checked::Attributes, violations, now)
            .await;
        if self.observer.is_some() {
            self.observe(device_id, now, RuleInputData::Attributes { values: attrs })
                .await;
        }
        Ok(())
    }

    /// Runs the enabled data script of `script_type` of the device's profile on an
    /// uplink payload (what a device sent, any bytes): its output is what gets
    /// decoded. Without a script the payload passes as it is.
    ///
    /// # Errors
    /// [`tp_core::Error::Invalid`] (field `payload`) naming the script when it fails;
    /// nothing of the message is stored.
    async fn scripted<'a>(
        &self,
        device_id: DeviceId,
        script_type: ScriptType,
        payload: &'a [u8],
        topic: &str,
    ) -> tp_core::Result<Cow<'a, [u8]>> {
        #[cfg(feature = "lua")]
        if let Some(scripts) = &self.scripts
            && !scripts.none_enabled()
        {
            // Boxed: the script path's future is large, and inline it would make
            // every message's future (the no-script ones too) carry its size.
            let out =
                Box::pin(self.run_script(scripts, device_id, script_type, payload, topic)).await?;
            return Ok(out.map_or(Cow::Borrowed(payload), Cow::Owned));
        }
        let _ = (device_id, script_type, topic);
        Ok(Cow::Borrowed(payload))
    }

    /// The script path of [`Self::scripted`]: the device's profile, then its script
    /// when the profile has one (`None`: the payload passes as it is).
    #[cfg(feature = "lua")]
    async fn run_script(
        &self,
        scripts: &crate::script::Scripts,
        device_id: DeviceId,
        script_type: ScriptType,
        payload: &[u8],
        topic: &str,
    ) -> tp_core::Result<Option<Vec<u8>>> {
        if !scripts.any_enabled().await {
            return Ok(None);
        }
        let profile = self.identity(device_id).await.and_then(|(_, p)| p);
        scripts
            .transform(device_id, profile, script_type, payload, topic)
            .await
            .map_err(|rejected| {
                tp_core::Error::invalid(
                    "payload",
                    format!(
                        "data script {:?} ({}) failed: {}",
                        rejected.script_name, rejected.script_id, rejected.failure
                    ),
                )
            })
    }

    /// Hands an accepted message to the observer (the rule engine), with the device's
    /// tenant and profile from its session or a short-lived cache, so a connected
    /// device costs no store lookup.
    async fn observe(&self, device_id: DeviceId, now: i64, data: RuleInputData) {
        let Some(observer) = &self.observer else {
            return;
        };
        if let Some((tenant_id, profile_id)) = self.identity(device_id).await {
            observer.observe(RuleInput {
                device_id,
                tenant_id,
                profile_id,
                ts: now,
                data,
            });
        }
    }

    /// A device's tenant and profile from its session or a short-lived cache, so a
    /// connected device costs no store lookup.
    pub(crate) async fn identity(
        &self,
        device_id: DeviceId,
    ) -> Option<(TenantId, Option<ProfileId>)> {
        match self.session_device(device_id) {
            Some(d) => Some((d.tenant_id, d.profile_id)),
            None => match self.caches.identity_get(device_id) {
                Some(i) => Some(i),
                None => match self.metadata.get_device_by_id(device_id).await {
                    Ok(Some(d)) => {
                        self.caches
                            .identity_put(device_id, (d.tenant_id, d.profile_id));
                        Some((d.tenant_id, d.profile_id))
                    }
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(device_id = %device_id, error = %e, "cannot resolve the device's tenant and profile");
                        None
                    }
                },
            },
        }
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
        self.metadata.update_command(&log).await
    }
}

/// The `errcode` of a failed registration.
fn register_errcode(e: &tp_core::Error) -> &'static str {
    match e {
        tp_core::Error::Unauthenticated(_) => "unauthorized",
        tp_core::Error::AlreadyExists { .. } => "already_exists",
        tp_core::Error::Invalid { .. } => "invalid_payload",
        _ => "unavailable",
    }
}

/// The acknowledgement ThingsPanel sends for a gateway report of `kind`, if any.
fn gateway_ack_kind(kind: UplinkKind) -> Option<DownlinkKind> {
    match kind {
        UplinkKind::Attributes => Some(DownlinkKind::AttributeResponse),
        UplinkKind::Event => Some(DownlinkKind::EventResponse),
        _ => None,
    }
}

/// How long a resolved (gateway, address) -> sub-device mapping is trusted.
const SUB_DEVICE_TTL: Duration = Duration::from_secs(30);
/// Entries kept before the cache is emptied.
const SUB_DEVICE_CACHE_MAX: usize = 100_000;

/// What a node's uplink path remembers about devices without a session here:
/// (gateway, address) -> sub-device, and device -> (tenant, profile) of HTTP, CoAP
/// and sub-devices (for [`Uplinks::observe`]). Per node, so nodes in one process
/// (tests, embedders) never share state. Entries expire after [`SUB_DEVICE_TTL`];
/// a sub-device entry is dropped when the store no longer knows the address.
/// A device's tenant and profile, and when they were looked up.
type Identity = (TenantId, Option<ProfileId>, Instant);

#[derive(Debug)]
pub(crate) struct DeviceCaches {
    sub_devices: Mutex<HashMap<(DeviceId, String), (DeviceId, Instant)>>,
    identities: Mutex<HashMap<DeviceId, Identity>>,
    /// Hashes of the telemetry keys each device has: those the store held when this
    /// node first saw the device, and those sent through this node since, for the
    /// per-device key limit.
    telemetry_keys: Mutex<HashMap<DeviceId, HashSet<u64>>>,
    /// Most distinct telemetry keys per device (`max_telemetry_keys_per_device`).
    max_keys: usize,
    /// Keyed per process, so nobody can pick key names that collide on purpose.
    key_hasher: std::hash::RandomState,
}

impl Default for DeviceCaches {
    fn default() -> Self {
        Self::new(crate::BrokerConfig::default().max_telemetry_keys_per_device)
    }
}

impl DeviceCaches {
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            sub_devices: Mutex::default(),
            identities: Mutex::default(),
            telemetry_keys: Mutex::default(),
            max_keys,
            key_hasher: std::hash::RandomState::new(),
        }
    }

    /// Whether `device` may use `keys`: all already known, or few enough new ones to
    /// stay within the limit (then they are remembered). A device can otherwise grow
    /// the stores without bound by sending a new key name in every message. `None`
    /// when this node has not counted the device's keys yet ([`Self::seed_keys`]).
    fn admit_keys<'a>(
        &self,
        device: DeviceId,
        keys: impl Iterator<Item = &'a str>,
    ) -> Option<bool> {
        use std::hash::BuildHasher;
        let mut map = self
            .telemetry_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let known = map.get_mut(&device)?;
        let mut new = Vec::new();
        for key in keys {
            let h = self.key_hasher.hash_one(key);
            if !known.contains(&h) && !new.contains(&h) {
                new.push(h);
            }
        }
        if known.len() + new.len() > self.max_keys {
            return Some(false);
        }
        known.extend(new);
        Some(true)
    }

    /// Counts `keys` (the store's) as known for `device`, beyond the limit if the
    /// store already holds more (the limit then refuses every new key).
    fn seed_keys(&self, device: DeviceId, keys: &[String]) {
        use std::hash::BuildHasher;
        let mut map = self
            .telemetry_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let known = map.entry(device).or_default();
        known.extend(keys.iter().map(|k| self.key_hasher.hash_one(k.as_str())));
    }

    fn sub_device_get(&self, parent: DeviceId, addr: &str) -> Option<DeviceId> {
        let map = self.sub_devices.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(parent, addr.to_owned()))
            .filter(|(_, at)| at.elapsed() < SUB_DEVICE_TTL)
            .map(|(id, _)| *id)
    }

    fn sub_device_put(&self, parent: DeviceId, addr: &str, id: DeviceId) {
        let mut map = self.sub_devices.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SUB_DEVICE_CACHE_MAX {
            map.clear();
        }
        map.insert((parent, addr.to_owned()), (id, Instant::now()));
    }

    fn sub_device_remove(&self, parent: DeviceId, addr: &str) {
        let mut map = self.sub_devices.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(parent, addr.to_owned()));
    }

    fn identity_get(&self, device: DeviceId) -> Option<(TenantId, Option<ProfileId>)> {
        let map = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&device)
            .filter(|(.., at)| at.elapsed() < SUB_DEVICE_TTL)
            .map(|(t, p, _)| (*t, *p))
    }

    fn identity_put(&self, device: DeviceId, identity: (TenantId, Option<ProfileId>)) {
        let mut map = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SUB_DEVICE_CACHE_MAX {
            map.clear();
        }
        map.insert(device, (identity.0, identity.1, Instant::now()));
    }
}
