//! The connection layer wrapped around rumqttd: authentication, device identity and
//! the topic ACL.
//!
//! rumqttd 0.20 has an async auth hook but no publish/subscribe hook and does not
//! tell the host who published a message. We wrap its protocol codec
//! ([`DeviceProtocol`]), which rumqttd clones per connection, so every decoded packet
//! of a connection passes through code that knows the connection's device:
//! - CONNECT opens a [`Connection`]; the auth hook resolves and checks the credentials
//!   and parks the device under its username; the successful CONNACK binds it.
//! - PUBLISH must be an uplink topic ([`UplinkTopic::parse`]); it is rewritten to the
//!   internal ingest topic with the device id in an envelope, so identity cannot be
//!   spoofed and nothing outside the ACL reaches the router.
//! - SUBSCRIBE: every filter must be one of the device's own downlink topics.
//! - A violation closes the connection (rumqttd's codec cannot answer with a reason
//!   code) and is counted in `tp_mqtt_acl_denied_total`.
//! - Dropping the connection's codec marks the session closed (online/offline).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::{ConnectReturnCode, Error as ProtoError, Packet, Protocol};
use tokio::sync::mpsc;
use tp_core::protocol::{UplinkTopic, check_subscribe};
use tp_core::{
    CacheExt, CacheRef, Device, DeviceId, MetadataStoreRef, credential_cache_key,
};

/// Internal topic every accepted device publish is rewritten to.
pub(crate) const INGEST_TOPIC: &str = "tp-internal/ingest";

/// A session opened or closed.
#[derive(Debug, Clone)]
pub(crate) struct StatusChange {
    pub(crate) device_id: DeviceId,
    pub(crate) online: bool,
}

struct SessionEntry {
    device: Arc<Device>,
    connections: u32,
}

struct PendingAuth {
    device: Arc<Device>,
    pending: u32,
}

/// State shared by the auth hook, every connection codec, ingest and transport.
pub(crate) struct Shared {
    pub(crate) metadata: MetadataStoreRef,
    pub(crate) cache: CacheRef,
    pub(crate) credential_ttl: Duration,
    pub(crate) max_connections: usize,
    pub(crate) open_connections: AtomicUsize,
    pending: Mutex<HashMap<String, PendingAuth>>,
    sessions: Mutex<HashMap<DeviceId, SessionEntry>>,
    pub(crate) draining: AtomicBool,
    /// Publishes let through to the router.
    pub(crate) accepted: AtomicU64,
    /// Publishes the ingest loop has finished with.
    pub(crate) consumed: AtomicU64,
    /// Publishes the ingest loop rejected (malformed payloads).
    pub(crate) rejected: AtomicU64,
    status_tx: mpsc::UnboundedSender<StatusChange>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("open_connections", &self.open_connections)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        metadata: MetadataStoreRef,
        cache: CacheRef,
        credential_ttl: Duration,
        max_connections: usize,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<StatusChange>) {
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Self {
            metadata,
            cache,
            credential_ttl,
            max_connections,
            open_connections: AtomicUsize::new(0),
            pending: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            status_tx,
        });
        (shared, status_rx)
    }

    /// The auth hook: client id sanity, capacity, credentials, enabled flag.
    pub(crate) async fn authenticate(&self, client_id: String, username: String, password: String) -> bool {
        let refuse = |reason: &'static str| {
            metrics::counter!("tp_mqtt_auth_refused_total", "reason" => reason).increment(1);
            tracing::info!(client_id = %client_id, username = %username, reason, "MQTT connection refused");
            false
        };
        if self.draining.load(Ordering::Acquire) {
            return refuse("draining");
        }
        // rumqttd 0.20 (issue #1062): a client the router refuses *after* auth poisons
        // the listener when it reconnects with the same id. The router refuses ids
        // containing + # / $ and connections beyond its max_connections, so both are
        // refused here, before the router sees them.
        if !valid_client_id(&client_id) {
            return refuse("invalid_client_id");
        }
        if self.open_connections.load(Ordering::Acquire) > self.max_connections {
            return refuse("capacity");
        }
        let device = match self.resolve(&username).await {
            Ok(Some(d)) => d,
            Ok(None) => return refuse("unknown_username"),
            Err(e) => {
                tracing::error!(error = %e, "credential lookup failed");
                return refuse("store_error");
            }
        };
        if !device.credentials.verify(&password) {
            return refuse("bad_password");
        }
        if !device.enabled {
            return refuse("disabled");
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending.entry(username).or_insert_with(|| PendingAuth {
            device: device.clone(),
            pending: 0,
        });
        entry.device = device;
        entry.pending += 1;
        true
    }

    /// Credentials -> device: cache first, then the metadata store.
    async fn resolve(&self, username: &str) -> tp_core::Result<Option<Arc<Device>>> {
        let key = credential_cache_key(username);
        match self.cache.get_json::<Device>(&key).await {
            Ok(Some(d)) => return Ok(Some(Arc::new(d))),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cache read failed; using the metadata store"),
        }
        let Some(device) = self.metadata.get_device_by_username(username).await? else {
            return Ok(None);
        };
        if let Err(e) = self.cache.set_json(&key, &device, Some(self.credential_ttl)).await {
            tracing::warn!(error = %e, "cache write failed");
        }
        Ok(Some(Arc::new(device)))
    }

    fn take_pending(&self, username: &str) -> Option<Arc<Device>> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending.get_mut(username)?;
        let device = entry.device.clone();
        entry.pending -= 1;
        if entry.pending == 0 {
            pending.remove(username);
        }
        Some(device)
    }

    fn session_opened(&self, device: &Arc<Device>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = sessions.entry(device.id).or_insert_with(|| SessionEntry {
            device: device.clone(),
            connections: 0,
        });
        entry.device = device.clone();
        entry.connections += 1;
        metrics::gauge!("tp_mqtt_sessions").increment(1.0);
        if entry.connections == 1 {
            let _ = self.status_tx.send(StatusChange {
                device_id: device.id,
                online: true,
            });
        }
    }

    fn session_closed(&self, device_id: DeviceId) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = sessions.get_mut(&device_id) else {
            return;
        };
        entry.connections -= 1;
        metrics::gauge!("tp_mqtt_sessions").decrement(1.0);
        if entry.connections == 0 {
            sessions.remove(&device_id);
            let _ = self.status_tx.send(StatusChange {
                device_id,
                online: false,
            });
        }
    }

    /// The device of a live session.
    pub(crate) fn session_device(&self, device_id: DeviceId) -> Option<Arc<Device>> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(&device_id).map(|e| e.device.clone())
    }

    /// Devices with at least one session.
    pub(crate) fn connected_devices(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Client ids the router accepts; empty ids are assigned one by rumqttd.
pub(crate) fn valid_client_id(id: &str) -> bool {
    id.len() <= 256 && !id.contains(['+', '#', '/', '$']) && !id.chars().any(char::is_control)
}

/// One device connection, from CONNECT until its codec is dropped.
struct Connection {
    shared: Arc<Shared>,
    username: Option<String>,
    device: OnceLock<Arc<Device>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(device) = self.device.get() {
            self.shared.session_closed(device.id);
        }
    }
}

/// rumqttd protocol codec wrapper that enforces identity and the topic ACL.
#[derive(Clone)]
pub(crate) struct DeviceProtocol<P> {
    inner: P,
    shared: Arc<Shared>,
    conn: Option<Arc<Connection>>,
}

impl<P> DeviceProtocol<P> {
    pub(crate) fn new(inner: P, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            shared,
            conn: None,
        }
    }

    fn device(&self) -> Result<&Arc<Device>, ProtoError> {
        self.conn
            .as_ref()
            .and_then(|c| c.device.get())
            .ok_or(ProtoError::IncorrectPacketFormat)
    }
}

fn deny(device: &Device, what: &'static str, topic: &str) -> ProtoError {
    metrics::counter!("tp_mqtt_acl_denied_total", "action" => what).increment(1);
    tracing::warn!(device_id = %device.id, device_number = %device.device_number, topic, action = what,
        "Topic outside the device's ACL; closing the connection");
    ProtoError::IncorrectPacketFormat
}

/// `[16-byte device id][u16 topic length][topic][payload]`.
pub(crate) fn encode_envelope(device: DeviceId, topic: &[u8], payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(18 + topic.len() + payload.len());
    b.put_slice(device.0.as_bytes());
    b.put_u16(topic.len() as u16);
    b.put_slice(topic);
    b.put_slice(payload);
    b.freeze()
}

/// Inverse of [`encode_envelope`].
pub(crate) fn decode_envelope(b: &Bytes) -> Option<(DeviceId, &str, Bytes)> {
    if b.len() < 18 {
        return None;
    }
    let id = uuid::Uuid::from_slice(&b[..16]).ok()?;
    let len = u16::from_be_bytes([b[16], b[17]]) as usize;
    let topic = std::str::from_utf8(b.get(18..18 + len)?).ok()?;
    Some((DeviceId(id), topic, b.slice(18 + len..)))
}

impl<P: Protocol> Protocol for DeviceProtocol<P> {
    fn read_mut(&mut self, stream: &mut BytesMut, max_size: usize) -> Result<Packet, ProtoError> {
        let packet = self.inner.read_mut(stream, max_size)?;
        match packet {
            Packet::Connect(ref _connect, _, _, _, ref login) => {
                if self.conn.is_some() {
                    return Err(ProtoError::IncorrectPacketFormat);
                }
                self.shared.open_connections.fetch_add(1, Ordering::AcqRel);
                self.conn = Some(Arc::new(Connection {
                    shared: self.shared.clone(),
                    username: login.as_ref().map(|l| l.username.clone()),
                    device: OnceLock::new(),
                }));
                Ok(packet)
            }
            Packet::Publish(mut publish, props) => {
                let device = self.device()?;
                let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
                if UplinkTopic::parse(topic).is_err() {
                    return Err(deny(device, "publish", topic));
                }
                if self.shared.draining.load(Ordering::Acquire) {
                    // Not acknowledged, so the device keeps it and retries elsewhere.
                    return Err(ProtoError::IncorrectPacketFormat);
                }
                publish.payload = encode_envelope(device.id, &publish.topic, &publish.payload);
                publish.topic = Bytes::from_static(INGEST_TOPIC.as_bytes());
                publish.retain = false;
                self.shared.accepted.fetch_add(1, Ordering::AcqRel);
                Ok(Packet::Publish(publish, props))
            }
            Packet::Subscribe(ref subscribe, _) => {
                let device = self.device()?;
                for filter in &subscribe.filters {
                    if check_subscribe(&filter.path, &device.device_number).is_err() {
                        return Err(deny(device, "subscribe", &filter.path));
                    }
                }
                Ok(packet)
            }
            other => Ok(other),
        }
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, ProtoError> {
        if let (Packet::ConnAck(ack, _), Some(conn)) = (&packet, &self.conn)
            && ack.code == ConnectReturnCode::Success
            && let Some(username) = &conn.username
            && let Some(device) = self.shared.take_pending(username)
            && conn.device.set(device.clone()).is_ok()
        {
            self.shared.session_opened(&device);
        }
        self.inner.write(packet, write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let id = DeviceId::new();
        let b = encode_envelope(id, b"devices/telemetry", b"{\"a\":1}");
        let (d, t, p) = decode_envelope(&b).unwrap();
        assert_eq!((d, t, &p[..]), (id, "devices/telemetry", &b"{\"a\":1}"[..]));
        assert!(decode_envelope(&Bytes::from_static(b"short")).is_none());
    }

    #[test]
    fn client_ids_the_router_refuses_are_invalid() {
        assert!(valid_client_id("mqtt_abc-1"));
        assert!(valid_client_id(""));
        for bad in ["site/dev5", "a+b", "a#", "$SYS"] {
            assert!(!valid_client_id(bad), "{bad}");
        }
    }
}
