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
//! - A PUBLISH over the device's rate limit (`max_messages_per_second`, one token
//!   bucket per device across its connections) is refused the same way, before it is
//!   acknowledged, and counted in `tp_mqtt_rate_limited_total`.
//! - A SUBACK written to the device records the granted filters and wakes downlink
//!   delivery ([`crate::downlink`]): queued downlink is published only once the router
//!   holds a matching subscription, so it cannot race the device's SUBSCRIBE.
//! - Dropping the connection's codec marks the session closed (online/offline).
//! - A QoS >= 1 PUBLISH that passed every check is appended to the write-ahead log
//!   ([`crate::wal`]) before the router sees (and acknowledges) it; if the append
//!   fails the publish is refused. The envelope carries the receive time and the
//!   log segment, so ingest stamps server-time values with the time a replay will
//!   use too, and counts what it consumed per segment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::{
    ConnectReturnCode, Error as ProtoError, Packet, Protocol, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tp_core::protocol::{UplinkTopic, check_subscribe};
use tp_core::{
    CacheExt, CacheRef, Device, DeviceId, MetadataStoreRef, credential_cache_key, now_ms,
};

use crate::wal::Wal;

/// Internal topic every accepted device publish is rewritten to.
pub(crate) const INGEST_TOPIC: &str = "tp-internal/ingest";

/// A session opened or closed.
#[derive(Debug, Clone)]
pub(crate) struct StatusChange {
    pub(crate) device_id: DeviceId,
    pub(crate) online: bool,
    /// A close after the device sent DISCONNECT (not a lost connection).
    pub(crate) graceful: bool,
}

struct SessionEntry {
    device: Arc<Device>,
    connections: u32,
    /// Filters the router granted, with the id of the connection holding each.
    subscriptions: Vec<(u64, String)>,
    /// Serializes downlink delivery passes of this session (see [`crate::downlink`]).
    delivery: Arc<tokio::sync::Mutex<()>>,
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
    /// Bytes of accepted publishes the router holds for the ingest loop.
    accepted_bytes: AtomicU64,
    /// Bytes of publishes the ingest loop has taken from the router.
    consumed_bytes: AtomicU64,
    /// Most unconsumed bytes before publishes are refused (see [`Shared::admit`]).
    max_lag_bytes: u64,
    /// Publishes the ingest loop rejected (malformed payloads).
    pub(crate) rejected: AtomicU64,
    /// Per-device publish rate limit (`max_messages_per_second`), if any.
    rate_limit: Option<crate::rate::RateLimiter>,
    status_tx: mpsc::UnboundedSender<StatusChange>,
    /// Devices whose connection was just granted a subscription (downlink delivery).
    subscribed_tx: mpsc::UnboundedSender<DeviceId>,
    next_connection_id: AtomicU64,
    /// The write-ahead log, when enabled.
    pub(crate) wal: Option<Arc<Wal>>,
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
        max_lag_bytes: u64,
        max_messages_per_second: Option<u32>,
        wal: Option<Arc<Wal>>,
    ) -> (
        Arc<Self>,
        mpsc::UnboundedReceiver<StatusChange>,
        mpsc::UnboundedReceiver<DeviceId>,
    ) {
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = mpsc::unbounded_channel();
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
            accepted_bytes: AtomicU64::new(0),
            consumed_bytes: AtomicU64::new(0),
            max_lag_bytes,
            rejected: AtomicU64::new(0),
            rate_limit: max_messages_per_second.map(crate::rate::RateLimiter::new),
            status_tx,
            subscribed_tx,
            next_connection_id: AtomicU64::new(1),
            wal,
        });
        (shared, status_rx, subscribed_rx)
    }

    /// The auth hook: client id sanity, capacity, credentials, enabled flag.
    pub(crate) async fn authenticate(
        &self,
        client_id: String,
        username: String,
        password: String,
    ) -> bool {
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
        let device = match self.check_credentials(&username, &password).await {
            Ok(d) => d,
            Err(refused) => return refuse(refused.reason()),
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending.entry(username).or_insert_with(|| PendingAuth {
            device: device.clone(),
            pending: 0,
        });
        entry.device = device;
        entry.pending += 1;
        true
    }

    /// The enabled device these credentials belong to (the MQTT auth hook and the
    /// HTTP and CoAP device APIs all authenticate devices here).
    pub(crate) async fn check_credentials(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Arc<Device>, Refused> {
        self.credentials()
            .check_credentials(username, password)
            .await
    }

    /// The credential lookup of this broker (also used by the external-broker hooks).
    pub(crate) fn credentials(&self) -> Credentials {
        Credentials {
            metadata: self.metadata.clone(),
            cache: self.cache.clone(),
            ttl: self.credential_ttl,
        }
    }

    /// Backpressure. rumqttd acknowledges a QoS 1 publish once it is in the router's
    /// in-memory log, and when that log is full it drops its oldest segment, even if
    /// our ingest loop has not read it: acknowledged data would be lost. So while the
    /// unread bytes are at the limit (the store is slower than the devices), publishes
    /// are refused *before* they are acknowledged: the connection is closed and the
    /// device resends after reconnecting.
    pub(crate) fn admit(&self, bytes: u64) -> bool {
        let lag = self
            .accepted_bytes
            .load(Ordering::Acquire)
            .saturating_sub(self.consumed_bytes.load(Ordering::Acquire));
        if lag + bytes > self.max_lag_bytes {
            metrics::counter!("tp_ingest_overload_refused_total").increment(1);
            return false;
        }
        self.accepted_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.accepted.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Takes back an [`Self::admit`] of a publish that is refused after all.
    fn unadmit(&self, bytes: u64) {
        self.accepted_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.accepted.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether `device` may publish once more now (the per-device rate limit).
    fn within_rate(&self, device: &Device) -> bool {
        let Some(limiter) = &self.rate_limit else {
            return true;
        };
        if limiter.try_acquire(device.id, std::time::Instant::now()) {
            return true;
        }
        metrics::counter!("tp_mqtt_rate_limited_total").increment(1);
        tracing::warn!(device_id = %device.id, device_number = %device.device_number,
            "device exceeds max_messages_per_second; refusing the publish and closing the connection");
        false
    }

    /// The ingest loop finished with a publish of `bytes` (as counted by [`Self::admit`]).
    pub(crate) fn consumed(&self, bytes: u64) {
        self.consumed_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.consumed.fetch_add(1, Ordering::AcqRel);
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
            subscriptions: Vec::new(),
            delivery: Arc::default(),
        });
        entry.device = device.clone();
        entry.connections += 1;
        metrics::gauge!("tp_mqtt_sessions").increment(1.0);
        if entry.connections == 1 {
            let _ = self.status_tx.send(StatusChange {
                device_id: device.id,
                online: true,
                graceful: false,
            });
        }
    }

    fn session_closed(&self, device_id: DeviceId, connection_id: u64, graceful: bool) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = sessions.get_mut(&device_id) else {
            return;
        };
        entry.subscriptions.retain(|(c, _)| *c != connection_id);
        entry.connections -= 1;
        metrics::gauge!("tp_mqtt_sessions").decrement(1.0);
        if entry.connections == 0 {
            sessions.remove(&device_id);
            let _ = self.status_tx.send(StatusChange {
                device_id,
                online: false,
                graceful,
            });
        }
    }

    /// The device of a live session.
    pub(crate) fn session_device(&self, device_id: DeviceId) -> Option<Arc<Device>> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(&device_id).map(|e| e.device.clone())
    }

    /// The router granted `filters` to a connection of the device: remember them and
    /// wake downlink delivery for the device.
    fn subscribed(&self, device_id: DeviceId, connection_id: u64, filters: Vec<String>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = sessions.get_mut(&device_id) else {
            return;
        };
        entry
            .subscriptions
            .extend(filters.into_iter().map(|f| (connection_id, f)));
        drop(sessions);
        let _ = self.subscribed_tx.send(device_id);
    }

    /// A connection of the device unsubscribes `filters`: stop counting them.
    fn unsubscribed(&self, device_id: DeviceId, connection_id: u64, filters: &[String]) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = sessions.get_mut(&device_id) {
            entry
                .subscriptions
                .retain(|(c, f)| *c != connection_id || !filters.contains(f));
        }
    }

    /// Whether a downlink on `topic` reaches the device now: `None` without a session,
    /// `Some(false)` when no granted subscription of the device matches the topic.
    pub(crate) fn accepts(&self, device_id: DeviceId, topic: &str) -> Option<bool> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = sessions.get(&device_id)?;
        Some(
            entry
                .subscriptions
                .iter()
                .any(|(_, f)| crate::downlink::topic_matches(f, topic)),
        )
    }

    /// The device of a live session with the lock serializing its delivery passes.
    pub(crate) fn delivery_slot(
        &self,
        device_id: DeviceId,
    ) -> Option<(Arc<Device>, Arc<tokio::sync::Mutex<()>>)> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .get(&device_id)
            .map(|e| (e.device.clone(), e.delivery.clone()))
    }

    /// Devices with at least one session.
    pub(crate) fn connected_devices(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// Device credential resolution and checking: cache first, then the metadata store.
/// One implementation for the embedded broker's auth hook, the HTTP and CoAP device
/// APIs and the external-broker hooks ([`crate::hooks`]), so every way in accepts
/// exactly the same devices.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pub(crate) metadata: MetadataStoreRef,
    pub(crate) cache: CacheRef,
    /// How long a resolved device stays in the cache.
    pub(crate) ttl: Duration,
}

impl Credentials {
    /// The enabled device these credentials belong to.
    pub(crate) async fn check_credentials(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Arc<Device>, Refused> {
        let device = self.lookup(username).await?;
        if !device.credentials.verify(password) {
            return Err(Refused::BadPassword);
        }
        if !device.enabled {
            return Err(Refused::Disabled);
        }
        Ok(device)
    }

    /// The enabled device with this username, without a password check: for hooks
    /// of an external broker about a connection it already authenticated.
    pub(crate) async fn enabled_device(&self, username: &str) -> Result<Arc<Device>, Refused> {
        let device = self.lookup(username).await?;
        if !device.enabled {
            return Err(Refused::Disabled);
        }
        Ok(device)
    }

    async fn lookup(&self, username: &str) -> Result<Arc<Device>, Refused> {
        match self.resolve(username).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(Refused::UnknownUsername),
            Err(e) => {
                tracing::error!(error = %e, "credential lookup failed");
                Err(Refused::Store(e))
            }
        }
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
        if let Err(e) = self.cache.set_json(&key, &device, Some(self.ttl)).await {
            tracing::warn!(error = %e, "cache write failed");
        }
        Ok(Some(Arc::new(device)))
    }
}

/// Why [`Shared::check_credentials`] refused a device.
#[derive(Debug)]
pub(crate) enum Refused {
    /// No device has this username.
    UnknownUsername,
    /// The password does not match.
    BadPassword,
    /// The device is disabled.
    Disabled,
    /// The credential lookup failed (not the device's fault).
    Store(tp_core::Error),
}

impl Refused {
    /// Short reason for logs and metrics labels.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::UnknownUsername => "unknown_username",
            Self::BadPassword => "bad_password",
            Self::Disabled => "disabled",
            Self::Store(_) => "store_error",
        }
    }
}

/// Client ids the router accepts; empty ids are assigned one by rumqttd.
pub(crate) fn valid_client_id(id: &str) -> bool {
    id.len() <= 256 && !id.contains(['+', '#', '/', '$']) && !id.chars().any(char::is_control)
}

/// One device connection, from CONNECT until its codec is dropped.
struct Connection {
    shared: Arc<Shared>,
    id: u64,
    username: Option<String>,
    device: OnceLock<Arc<Device>>,
    /// Filters of SUBSCRIBEs not yet acknowledged, by packet id.
    subscribing: Mutex<HashMap<u16, Vec<String>>>,
    /// The device sent DISCONNECT (presence tells it from a lost connection).
    disconnected: AtomicBool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(device) = self.device.get() {
            let graceful = self.disconnected.load(Ordering::Acquire);
            self.shared.session_closed(device.id, self.id, graceful);
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

/// Bytes a publish occupies in the router's ingest log, as counted for backpressure.
pub(crate) fn ingest_size(envelope: &[u8]) -> u64 {
    (envelope.len() + INGEST_TOPIC.len()) as u64
}

/// Envelope bytes before the topic.
const ENVELOPE_HEADER: usize = 16 + 8 + 8 + 2;
/// Where the segment id sits in an envelope.
const SEGMENT_AT: std::ops::Range<usize> = 24..32;

/// What the connection layer hands the ingest loop for one device publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub(crate) device_id: DeviceId,
    /// When the node received the publish (ms); server-time values are stamped with it.
    pub(crate) ts: i64,
    /// Write-ahead log segment holding the publish; 0 = not logged (QoS 0, no log).
    pub(crate) segment: u64,
    pub(crate) topic: &'a str,
    pub(crate) payload: Bytes,
}

/// `[16-byte device id][i64 receive ms][u64 log segment][u16 topic length][topic][payload]`,
/// segment 0 (set it with [`set_envelope_segment`]).
pub(crate) fn encode_envelope(device: DeviceId, ts: i64, topic: &[u8], payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(ENVELOPE_HEADER + topic.len() + payload.len());
    b.put_slice(device.0.as_bytes());
    b.put_i64(ts);
    b.put_u64(0);
    b.put_u16(topic.len() as u16);
    b.put_slice(topic);
    b.put_slice(payload);
    b
}

/// Records the log segment in an envelope from [`encode_envelope`] (its length,
/// which backpressure counts, does not change).
pub(crate) fn set_envelope_segment(envelope: &mut BytesMut, segment: u64) {
    envelope[SEGMENT_AT].copy_from_slice(&segment.to_be_bytes());
}

/// Inverse of [`encode_envelope`].
pub(crate) fn decode_envelope(b: &Bytes) -> Option<Envelope<'_>> {
    let header = b.get(..ENVELOPE_HEADER)?;
    let id = uuid::Uuid::from_slice(&header[..16]).ok()?;
    let ts = i64::from_be_bytes(header[16..24].try_into().ok()?);
    let segment = u64::from_be_bytes(header[SEGMENT_AT].try_into().ok()?);
    let len = u16::from_be_bytes([header[32], header[33]]) as usize;
    let end = ENVELOPE_HEADER + len;
    let topic = std::str::from_utf8(b.get(ENVELOPE_HEADER..end)?).ok()?;
    Some(Envelope {
        device_id: DeviceId(id),
        ts,
        segment,
        topic,
        payload: b.slice(end..),
    })
}

/// Whether the MQTT fixed header byte of a PUBLISH asks for QoS 1 or 2 (an
/// acknowledgement). rumqttd keeps a decoded publish's QoS private, so the codec
/// looks at the header before decoding.
fn acknowledged_qos(first_byte: u8) -> bool {
    (first_byte >> 1) & 0b11 != 0
}

impl<P: Protocol> Protocol for DeviceProtocol<P> {
    fn read_mut(&mut self, stream: &mut BytesMut, max_size: usize) -> Result<Packet, ProtoError> {
        // The fixed header of the packet about to be decoded (the QoS of a PUBLISH).
        let first_byte = stream.first().copied().unwrap_or(0);
        let packet = self.inner.read_mut(stream, max_size)?;
        match packet {
            Packet::Connect(ref _connect, _, _, _, ref login) => {
                if self.conn.is_some() {
                    return Err(ProtoError::IncorrectPacketFormat);
                }
                self.shared.open_connections.fetch_add(1, Ordering::AcqRel);
                self.conn = Some(Arc::new(Connection {
                    shared: self.shared.clone(),
                    id: self
                        .shared
                        .next_connection_id
                        .fetch_add(1, Ordering::Relaxed),
                    username: login.as_ref().map(|l| l.username.clone()),
                    device: OnceLock::new(),
                    subscribing: Mutex::new(HashMap::new()),
                    disconnected: AtomicBool::new(false),
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
                if !self.shared.within_rate(device) {
                    // Not acknowledged either: the device resends after reconnecting.
                    return Err(ProtoError::IncorrectPacketFormat);
                }
                let received = now_ms();
                let mut envelope =
                    encode_envelope(device.id, received, &publish.topic, &publish.payload);
                let size = ingest_size(&envelope);
                if !self.shared.admit(size) {
                    tracing::debug!(device_id = %device.id, "ingest backlog full; refusing publish");
                    return Err(ProtoError::IncorrectPacketFormat);
                }
                // Last, so nothing refused is logged: an acknowledged publish must be
                // in the log before the router (which acknowledges it) sees it. QoS 0
                // is never acknowledged, so it is not logged.
                if let Some(wal) = &self.shared.wal
                    && acknowledged_qos(first_byte)
                {
                    match wal.append(device.id, received, topic, &publish.payload) {
                        Ok(segment) => set_envelope_segment(&mut envelope, segment),
                        Err(e) => {
                            self.shared.unadmit(size);
                            tracing::error!(device_id = %device.id, error = %e,
                                "cannot log the publish to the write-ahead log; refusing it (not acknowledged)");
                            return Err(ProtoError::IncorrectPacketFormat);
                        }
                    }
                }
                publish.payload = envelope.freeze();
                publish.topic = Bytes::from_static(INGEST_TOPIC.as_bytes());
                publish.retain = false;
                Ok(Packet::Publish(publish, props))
            }
            Packet::Subscribe(ref subscribe, _) => {
                let device = self.device()?;
                for filter in &subscribe.filters {
                    if check_subscribe(&filter.path, &device.device_number).is_err() {
                        return Err(deny(device, "subscribe", &filter.path));
                    }
                }
                if let Some(conn) = &self.conn {
                    let filters = subscribe.filters.iter().map(|f| f.path.clone()).collect();
                    conn.subscribing
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(subscribe.pkid, filters);
                }
                Ok(packet)
            }
            Packet::Unsubscribe(ref unsubscribe, _) => {
                if let Some(conn) = &self.conn
                    && let Some(device) = conn.device.get()
                {
                    self.shared
                        .unsubscribed(device.id, conn.id, &unsubscribe.filters);
                }
                Ok(packet)
            }
            Packet::Disconnect(..) => {
                if let Some(conn) = &self.conn {
                    conn.disconnected.store(true, Ordering::Release);
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
        // The router sends the SUBACK only after it registered the filters, so from
        // here on a downlink published on a matching topic reaches this connection.
        if let (Packet::SubAck(ack, _), Some(conn)) = (&packet, &self.conn)
            && let Some(device) = conn.device.get()
        {
            let requested = conn
                .subscribing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ack.pkid)
                .unwrap_or_default();
            let granted: Vec<String> = requested
                .into_iter()
                .zip(&ack.return_codes)
                .filter(|(_, code)| granted(code))
                .map(|(f, _)| f)
                .collect();
            if !granted.is_empty() {
                self.shared.subscribed(device.id, conn.id, granted);
            }
        }
        self.inner.write(packet, write)
    }
}

fn granted(code: &SubscribeReasonCode) -> bool {
    matches!(
        code,
        SubscribeReasonCode::QoS0
            | SubscribeReasonCode::QoS1
            | SubscribeReasonCode::QoS2
            | SubscribeReasonCode::Success(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let id = DeviceId::new();
        let mut b = encode_envelope(id, 1_700_000_000_123, b"devices/telemetry", b"{\"a\":1}");
        let len = b.len();
        set_envelope_segment(&mut b, 42);
        assert_eq!(b.len(), len, "the segment does not change the counted size");
        let b = b.freeze();
        let e = decode_envelope(&b).unwrap();
        assert_eq!(
            (e.device_id, e.ts, e.segment, e.topic, &e.payload[..]),
            (
                id,
                1_700_000_000_123,
                42,
                "devices/telemetry",
                &b"{\"a\":1}"[..]
            )
        );
        assert!(decode_envelope(&Bytes::from_static(b"short")).is_none());
        let cut = b.slice(..ENVELOPE_HEADER + 3);
        assert!(decode_envelope(&cut).is_none(), "topic cut short");
    }

    #[test]
    fn publish_qos_comes_from_the_fixed_header() {
        assert!(!acknowledged_qos(0x30)); // QoS 0
        assert!(!acknowledged_qos(0x31)); // QoS 0, retain
        assert!(acknowledged_qos(0x32)); // QoS 1
        assert!(acknowledged_qos(0x3a)); // QoS 1, dup
        assert!(acknowledged_qos(0x34)); // QoS 2
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
