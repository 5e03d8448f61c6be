//! The ingest loop: decodes what devices published and hands it to the stores.
//!
//! Decoding and storing is [`Uplinks`], shared by the MQTT ingest loop and the HTTP
//! ([`crate::http`]) and CoAP ([`crate::coap`]) device APIs, so every transport stores
//! a payload the same way.
//!
//! Server-time values are stamped with the time the node *received* the message
//! (carried in the ingest envelope and in the write-ahead log), not the time ingest
//! gets to it, so a message replayed from the log after a crash
//! ([`Ingest::replay`]) writes exactly the rows its first pass did.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::Notification;
use rumqttd::local::LinkRx;
use tp_core::protocol::{
    DownlinkKind, DownlinkTopic, GatewayEnvelope, MethodCall, ResponseObject, UplinkKind,
    UplinkTopic, decode_attributes, decode_event, decode_telemetry,
};
use tp_core::rules::{RuleInput, RuleInputData, UplinkObserverRef};
use tp_core::{
    CommandStatus, Device, DeviceEvent, DeviceId, KeyValue, Order, TelemetryPoint, now_ms,
};
use tp_core::{ProfileId, TenantId};
use tp_storage::writer::WriterHandle;

use crate::session::{Shared, decode_envelope, ingest_size};
use crate::transport::LinkPublisher;
use crate::wal::{Leftover, Wal, read_leftover};

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
    /// Every accepted message is a sign of life ([`crate::presence`]).
    pub(crate) presence: Arc<crate::presence::Presence>,
    /// The rule engine, handed each accepted telemetry, attribute and event message.
    pub(crate) observer: Option<UplinkObserverRef>,
}

impl Ingest {
    /// Consumes the router link until it closes.
    pub(crate) async fn run(self, mut rx: LinkRx) {
        loop {
            match rx.next().await {
                Ok(Some(Notification::Forward(forward))) => {
                    let segment = self.handle(&forward.publish.payload).await;
                    // Handed to the writer (or rejected): the log may drop it once
                    // the writer has committed what is queued.
                    if let Some(wal) = &self.uplinks.shared.wal {
                        wal.consumed(segment);
                    }
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

    /// Processes one envelope; returns its write-ahead log segment (0 = none).
    async fn handle(&self, envelope: &Bytes) -> u64 {
        let Some(e) = decode_envelope(envelope) else {
            tracing::error!("malformed internal ingest envelope");
            return 0;
        };
        self.process(e.device_id, e.topic, &e.payload, e.ts).await;
        e.segment
    }

    /// Decodes and stores one device message received at `ts`.
    async fn process(&self, device_id: DeviceId, topic: &str, payload: &[u8], ts: i64) {
        self.uplinks.presence.activity(device_id);
        let Ok(uplink) = UplinkTopic::parse(topic) else {
            return;
        };
        metrics::counter!("tp_ingest_messages_total", "kind" => kind_name(uplink.kind))
            .increment(1);
        if let Err(e) = self.dispatch(device_id, &uplink, payload, ts).await {
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
        now: i64,
    ) -> tp_core::Result<()> {
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
                    false,
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
                self.ack(
                    device_id,
                    DownlinkKind::EventResponse,
                    mid,
                    &stored,
                    method,
                    false,
                )
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

    /// Replays the records a previous run left in the write-ahead log, through the
    /// same path as live messages, waits until the writer has committed them, and
    /// deletes the segments. Runs before any listener accepts devices.
    pub(crate) async fn replay(&self, wal: &Wal, leftovers: &[Leftover]) {
        if leftovers.is_empty() {
            return;
        }
        let (mut replayed, mut skipped, mut bad_tails) = (0u64, 0u64, 0u64);
        for leftover in leftovers {
            let decoded = read_leftover(leftover);
            if decoded.bad_tail_bytes > 0 {
                bad_tails += 1;
                tracing::warn!(path = %leftover.path.display(), valid_records = decoded.records.len(),
                    ignored_bytes = decoded.bad_tail_bytes,
                    "write-ahead log segment ends in a torn or corrupt record; replaying the records before it");
            }
            for r in decoded.records {
                if self.event_already_stored(&r).await {
                    skipped += 1;
                    continue;
                }
                self.process(r.device_id, &r.topic, &r.payload, r.ts).await;
                replayed += 1;
            }
        }
        match wal.finish_replay(&self.uplinks.writer, leftovers).await {
            Ok(()) => tracing::info!(
                segments = leftovers.len(),
                skipped_duplicate_events = skipped,
                torn_segments = bad_tails,
                "replayed {replayed} messages from the write-ahead log"
            ),
            Err(e) => tracing::error!(error = %e, replayed,
                "replayed the write-ahead log but the store did not commit all of it; keeping the segments for the next start"),
        }
    }

    /// Whether `record` is a device event (or OTA progress report) the store already
    /// holds: events are plain inserts, so replaying one committed before the crash
    /// would store it twice. Gateway envelopes are not checked.
    async fn event_already_stored(&self, record: &crate::wal::Record) -> bool {
        let Ok(uplink) = UplinkTopic::parse(&record.topic) else {
            return false;
        };
        let (mid, method) = match uplink.kind {
            _ if uplink.gateway => return false,
            UplinkKind::Event => match decode_event(&record.payload) {
                Ok(call) => (uplink.message_id.unwrap_or_default(), call.method),
                Err(_) => return false,
            },
            UplinkKind::OtaProgress => (String::new(), "ota_progress".to_owned()),
            _ => return false,
        };
        let stored = self
            .uplinks
            .writer
            .store()
            .query_events(
                record.device_id,
                record.ts,
                record.ts.saturating_add(1),
                1000,
                Order::Asc,
            )
            .await;
        match stored {
            Ok(events) => events
                .iter()
                .any(|e| e.ts == record.ts && e.message_id == mid && e.method == method),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check for a replayed event; storing it again");
                false
            }
        }
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
    ) -> tp_core::Result<()> {
        let mid = uplink.message_id.as_deref().unwrap_or_default();
        if matches!(
            uplink.kind,
            UplinkKind::CommandResponse | UplinkKind::AttributeSetResponse
        ) {
            return self.gateway_response(device_id, mid, payload, now).await;
        }
        let envelope = match GatewayEnvelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                if let Some(kind) = gateway_ack_kind(uplink.kind) {
                    let failed = Err(tp_core::Error::invalid("payload", e.to_string()));
                    self.ack(device_id, kind, mid, &failed, None, true).await;
                }
                return Err(e);
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
        if let Some(kind) = gateway_ack_kind(uplink.kind) {
            self.ack(device_id, kind, mid, &result, method, true).await;
        }
        result
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
        self.uplinks.presence.activity(device_id);
        let bytes = serde_json::to_vec(&data).unwrap_or_default();
        match kind {
            UplinkKind::Telemetry => self.uplinks.telemetry(device_id, &bytes, now).await,
            UplinkKind::Attributes => self.uplinks.attributes(device_id, &bytes, now).await,
            UplinkKind::Event => {
                let call = decode_event(&bytes)?;
                self.uplinks.event(device_id, mid, call, now).await
            }
            UplinkKind::CommandResponse | UplinkKind::AttributeSetResponse => {
                self.uplinks.response(device_id, mid, &bytes, now).await
            }
            UplinkKind::OtaProgress => Ok(()),
        }
    }

    /// A gateway's answer to a command or attribute set. A plain response object
    /// answers a downlink of the gateway itself, or of whichever device below it the
    /// message id was issued for (downlink to sub-devices goes through the top-level
    /// gateway, see [`crate::downlink::route`]); an envelope answers per device.
    async fn gateway_response(
        &self,
        gateway_id: DeviceId,
        mid: &str,
        payload: &[u8],
        now: i64,
    ) -> tp_core::Result<()> {
        let value: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| tp_core::Error::invalid("payload", e.to_string()))?;
        if value.get("result").is_some() {
            if let Some(target) = crate::downlink::take_gateway_route(gateway_id, mid) {
                return self.uplinks.response(target, mid, payload, now).await;
            }
            return self.uplinks.response(gateway_id, mid, payload, now).await;
        }
        let envelope = GatewayEnvelope::decode(payload)?;
        crate::downlink::take_gateway_route(gateway_id, mid);
        self.route_envelope(gateway_id, UplinkKind::CommandResponse, mid, envelope, now)
            .await
    }

    /// The device at `addr` under gateway `parent`, cached; an unknown address is
    /// logged and counted and yields `None`.
    async fn resolve_sub_device(
        &self,
        parent: DeviceId,
        addr: &str,
    ) -> tp_core::Result<Option<DeviceId>> {
        if let Some(id) = sub_device_cache_get(parent, addr) {
            return Ok(Some(id));
        }
        match self
            .uplinks
            .shared
            .metadata
            .get_sub_device(parent, addr)
            .await?
        {
            Some(device) => {
                sub_device_cache_put(parent, addr, device.id);
                Ok(Some(device.id))
            }
            None => {
                sub_device_cache_remove(parent, addr);
                metrics::counter!("tp_ingest_gateway_unknown_subdevice_total").increment(1);
                tracing::warn!(gateway_id = %parent, addr, "gateway reported data for an unknown sub-device address; that part is dropped");
                Ok(None)
            }
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
        gateway: bool,
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
            gateway,
            kind,
            device_number: device.device_number.clone(),
            message_id: Some(mid.to_owned()),
        };
        if let Err(e) = self.publisher.publish(topic.to_topic(), response.encode()) {
            tracing::warn!(device_id = %device_id, error = %e, "cannot send acknowledgement");
        }
    }
}

/// A message in the write-ahead log that a device API is handing to the stores;
/// dropping it (once the message is queued, or refused) tells the log.
#[derive(Debug)]
pub(crate) struct Logged {
    wal: Option<Arc<Wal>>,
    segment: u64,
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(wal) = &self.wal {
            wal.consumed(self.segment);
        }
    }
}

impl Uplinks {
    /// Logs a message received over the HTTP or CoAP device API at `ts` as if it had
    /// been published on `topic`, before it is queued to the batching writer: the
    /// API answers success once it is queued, so a crash before the commit must not
    /// lose it. Keep the returned guard until the message is queued.
    ///
    /// # Errors
    /// [`tp_core::Error::Unavailable`] when the log cannot be written (answer 503:
    /// the device retries).
    pub(crate) fn log(
        &self,
        device_id: DeviceId,
        topic: &str,
        payload: &[u8],
        ts: i64,
    ) -> tp_core::Result<Logged> {
        let Some(wal) = &self.shared.wal else {
            return Ok(Logged {
                wal: None,
                segment: 0,
            });
        };
        match wal.append(device_id, ts, topic, payload) {
            Ok(segment) => Ok(Logged {
                wal: Some(wal.clone()),
                segment,
            }),
            Err(e) => {
                tracing::error!(device_id = %device_id, error = %e, "cannot log a device API message to the write-ahead log; refusing it");
                Err(tp_core::Error::Unavailable {
                    backend: "wal",
                    source: Box::new(e),
                })
            }
        }
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
            .await?;
        if self.observer.is_some() {
            self.observe(device_id, now, RuleInputData::Attributes { values: attrs })
                .await;
        }
        Ok(())
    }

    /// Hands an accepted message to the observer (the rule engine), with the device's
    /// tenant and profile from its session or a short-lived cache, so a connected
    /// device costs no store lookup.
    async fn observe(&self, device_id: DeviceId, now: i64, data: RuleInputData) {
        let Some(observer) = &self.observer else {
            return;
        };
        let identity = match self.shared.session_device(device_id) {
            Some(d) => Some((d.tenant_id, d.profile_id)),
            None => match identity_cache_get(device_id) {
                Some(i) => Some(i),
                None => match self.shared.metadata.get_device_by_id(device_id).await {
                    Ok(Some(d)) => {
                        identity_cache_put(device_id, (d.tenant_id, d.profile_id));
                        Some((d.tenant_id, d.profile_id))
                    }
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(device_id = %device_id, error = %e, "cannot resolve the device for the rule engine; message not evaluated");
                        None
                    }
                },
            },
        };
        if let Some((tenant_id, profile_id)) = identity {
            observer.observe(RuleInput {
                device_id,
                tenant_id,
                profile_id,
                ts: now,
                data,
            });
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

type SubDeviceCache = Mutex<HashMap<(DeviceId, String), (DeviceId, Instant)>>;

/// (gateway, address) -> sub-device. Device ids are unique, so one process-wide map
/// serves every broker of the process. Entries expire after [`SUB_DEVICE_TTL`] and are
/// dropped when the store no longer knows the address.
static SUB_DEVICES: LazyLock<SubDeviceCache> = LazyLock::new(Default::default);

fn sub_device_cache_get(parent: DeviceId, addr: &str) -> Option<DeviceId> {
    let map = SUB_DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    map.get(&(parent, addr.to_owned()))
        .filter(|(_, at)| at.elapsed() < SUB_DEVICE_TTL)
        .map(|(id, _)| *id)
}

fn sub_device_cache_put(parent: DeviceId, addr: &str, id: DeviceId) {
    let mut map = SUB_DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= SUB_DEVICE_CACHE_MAX {
        map.clear();
    }
    map.insert((parent, addr.to_owned()), (id, Instant::now()));
}

fn sub_device_cache_remove(parent: DeviceId, addr: &str) {
    let mut map = SUB_DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    map.remove(&(parent, addr.to_owned()));
}

type IdentityCache = Mutex<HashMap<DeviceId, (TenantId, Option<ProfileId>, Instant)>>;

/// Device -> (tenant, profile) of devices without a session here (HTTP, CoAP,
/// sub-devices), for [`Uplinks::observe`]; same expiry and size bound as the
/// sub-device cache.
static IDENTITIES: LazyLock<IdentityCache> = LazyLock::new(Default::default);

fn identity_cache_get(device: DeviceId) -> Option<(TenantId, Option<ProfileId>)> {
    let map = IDENTITIES.lock().unwrap_or_else(|p| p.into_inner());
    map.get(&device)
        .filter(|(.., at)| at.elapsed() < SUB_DEVICE_TTL)
        .map(|(t, p, _)| (*t, *p))
}

fn identity_cache_put(device: DeviceId, identity: (TenantId, Option<ProfileId>)) {
    let mut map = IDENTITIES.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= SUB_DEVICE_CACHE_MAX {
        map.clear();
    }
    map.insert(device, (identity.0, identity.1, Instant::now()));
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
