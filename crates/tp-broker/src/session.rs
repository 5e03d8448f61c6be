//! Device sessions: who is connected, with which client ids and subscriptions, and
//! the accounting shared by every connection ([`crate::connection`]), ingest,
//! downlink and the HTTP/CoAP device APIs.
//!
//! - Identity is bound once, at CONNECT ([`crate::connection`]): every later packet
//!   of the connection, and its will, is checked against that device.
//! - A client id belongs to one device at a time ([`Shared::register`]): another
//!   device's CONNECT with it is refused; the same device reconnecting takes its own
//!   session over (the old connection is closed first).
//! - Persistent sessions (clean_session=0, MQTT 5 session expiry) are kept per
//!   (device id, client id), so what is restored always belongs to the same device,
//!   and their filters are checked against the device's ACL again when restored.
//! - Downlink goes to the device's own connections whose granted filters match the
//!   topic ([`Shared::publish`]); there is no shared router whose state another
//!   connection could poison.
//! - A QoS >= 1 PUBLISH that passed every check is appended to the write-ahead log
//!   ([`crate::wal`]) before it is acknowledged. The envelope carries the receive
//!   time and the log segment, so ingest stamps server-time values with the time a
//!   replay will use too, and counts what it consumed per segment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tp_core::protocol::check_subscribe;
use tp_core::{
    CacheExt, CacheRef, Device, DeviceId, MetadataStoreRef, VoucherType, access_token_key,
    credential_cache_key,
};

use crate::wal::Wal;

/// Topic name carried in the ingest envelope's size accounting (the envelope no
/// longer travels through a router, but the backlog limit is counted the same way).
pub(crate) const INGEST_TOPIC: &str = "tp-internal/ingest";

/// A session opened or closed, or its device showed a sign of life. All three
/// travel one channel, each sent under the sessions lock, so presence sees them in
/// the order they happened: a message ingested late (ingest runs behind the
/// connections) is never counted before its session's open or after its close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusChange {
    /// The device's first session on this node opened.
    Opened(DeviceId),
    /// The device's last session on this node closed; `graceful` after the device
    /// sent DISCONNECT (not a lost connection).
    Closed { device_id: DeviceId, graceful: bool },
    /// A message of the device was ingested while its session was open.
    Active(DeviceId),
}

/// What a connection task is told from outside (boxed in its queue: the queue's
/// first block is allocated with the connection, so its slots stay pointer-sized).
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Publish to the device (its granted filters decide the QoS).
    Publish { topic: String, payload: Bytes },
    /// Close the connection.
    Close(CloseReason),
}

/// Why the platform closes a device connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The same device connected again with the same client id.
    TakenOver,
    /// The device was disabled or deleted, or its credentials changed.
    Revoked,
}

/// A live connection as the registry sees it.
struct ConnHandle {
    id: u64,
    tx: mpsc::Sender<Box<Outbound>>,
    /// Cancelled when the connection has unregistered (takeover waits for it).
    gone: CancellationToken,
}

struct SessionEntry {
    device: Arc<Device>,
    connections: Vec<ConnHandle>,
    /// Filters granted, with the id of the connection holding each.
    subscriptions: Vec<(u64, String)>,
    /// Serializes downlink delivery passes of this session (see [`crate::downlink`]).
    delivery: Arc<tokio::sync::Mutex<()>>,
}

/// What a persistent session keeps while its device is away.
struct Persisted {
    session: KeptSession,
    expires: Instant,
}

/// A persistent session as a connection hands it over when it ends and a later
/// CONNECT of the same device and client id gets it back.
#[derive(Debug, Default)]
pub(crate) struct KeptSession {
    /// Granted filters with their QoS.
    pub(crate) filters: Vec<(String, u8)>,
    /// Downlink the device had not acknowledged, oldest first, and whether it was
    /// sent already (sent again with DUP set) or was still waiting for the window.
    pub(crate) unacked: Vec<(String, Bytes, bool)>,
}

/// Why [`Shared::register`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegisterRefused {
    /// Another device holds this client id.
    ClientIdInUse,
}

/// A registered connection: what the driver needs from [`Shared::register`].
pub(crate) struct Registered {
    /// The connection this one took over; wait for it before CONNACK.
    pub(crate) took_over: Option<CancellationToken>,
    /// Cancel when unregistering.
    pub(crate) gone: CancellationToken,
}

/// Why a publish could not be handed to a device connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undelivered {
    /// The device has no session on this node.
    NoSession,
    /// No granted filter of the device matches the topic.
    NoSubscription,
    /// The connection's outbound queue is full (a slow or stuck device).
    Full,
}

/// State shared by every connection, ingest, downlink and the device APIs.
pub(crate) struct Shared {
    pub(crate) metadata: MetadataStoreRef,
    /// Device profiles (which devices are gateways, for downlink routing), when the
    /// platform has them.
    pub(crate) profiles: Option<tp_core::AccessStoreRef>,
    pub(crate) cache: CacheRef,
    pub(crate) credential_ttl: Duration,
    pub(crate) max_connections: usize,
    pub(crate) open_connections: AtomicUsize,
    sessions: Mutex<HashMap<DeviceId, SessionEntry>>,
    /// Client id -> (device, connection) of the live connection holding it.
    client_ids: Mutex<HashMap<String, (DeviceId, u64)>>,
    /// Persistent sessions of devices that are away, by (device, client id).
    persisted: Mutex<HashMap<(DeviceId, String), Persisted>>,
    pub(crate) draining: AtomicBool,
    /// Publishes accepted (and acknowledged).
    pub(crate) accepted: AtomicU64,
    /// Publishes the ingest loop has finished with.
    pub(crate) consumed: AtomicU64,
    /// Bytes of accepted publishes queued for the ingest loop.
    accepted_bytes: AtomicU64,
    /// Bytes of publishes the ingest loop has taken.
    consumed_bytes: AtomicU64,
    /// Most unconsumed bytes before publishes are refused (see [`Shared::admit`]).
    max_lag_bytes: u64,
    /// Publishes the ingest loop rejected (malformed payloads).
    pub(crate) rejected: AtomicU64,
    /// Publishes refused because the write-ahead log append failed.
    pub(crate) wal_errors: AtomicU64,
    /// Per-device publish rate limit (`max_messages_per_second`), if any.
    rate_limit: Option<crate::rate::RateLimiter>,
    status_tx: mpsc::UnboundedSender<StatusChange>,
    /// Devices whose connection was just granted a subscription (downlink delivery).
    subscribed_tx: mpsc::UnboundedSender<DeviceId>,
    /// Accepted device publishes, as envelopes, for the ingest loop.
    ingest_tx: mpsc::UnboundedSender<Bytes>,
    next_connection_id: AtomicU64,
    /// The write-ahead log, when enabled.
    pub(crate) wal: Option<Arc<Wal>>,
    /// Data scripts for downlink (set once at start, feature `lua`).
    #[cfg(feature = "lua")]
    pub(crate) scripts: std::sync::OnceLock<Arc<crate::script::Scripts>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("open_connections", &self.open_connections)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

/// The receiving ends [`Shared::new`] hands to the broker's tasks.
pub(crate) struct SharedReceivers {
    pub(crate) status: mpsc::UnboundedReceiver<StatusChange>,
    pub(crate) subscribed: mpsc::UnboundedReceiver<DeviceId>,
    pub(crate) ingest: mpsc::UnboundedReceiver<Bytes>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        metadata: MetadataStoreRef,
        profiles: Option<tp_core::AccessStoreRef>,
        cache: CacheRef,
        credential_ttl: Duration,
        max_connections: usize,
        max_lag_bytes: u64,
        max_messages_per_second: Option<u32>,
        wal: Option<Arc<Wal>>,
    ) -> (Arc<Self>, SharedReceivers) {
        let (status_tx, status) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = mpsc::unbounded_channel();
        let (ingest_tx, ingest) = mpsc::unbounded_channel();
        let shared = Arc::new(Self {
            metadata,
            profiles,
            cache,
            credential_ttl,
            max_connections,
            open_connections: AtomicUsize::new(0),
            sessions: Mutex::new(HashMap::new()),
            client_ids: Mutex::new(HashMap::new()),
            persisted: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            accepted_bytes: AtomicU64::new(0),
            consumed_bytes: AtomicU64::new(0),
            max_lag_bytes,
            rejected: AtomicU64::new(0),
            wal_errors: AtomicU64::new(0),
            rate_limit: max_messages_per_second.map(crate::rate::RateLimiter::new),
            status_tx,
            subscribed_tx,
            ingest_tx,
            next_connection_id: AtomicU64::new(1),
            wal,
            #[cfg(feature = "lua")]
            scripts: std::sync::OnceLock::new(),
        });
        (
            shared,
            SharedReceivers {
                status,
                subscribed,
                ingest,
            },
        )
    }

    /// A fresh connection id.
    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The enabled device these credentials belong to (the MQTT connection driver
    /// and the HTTP and CoAP device APIs all authenticate devices here).
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

    /// Backpressure: while the unread bytes queued for ingest are at the limit (the
    /// store is slower than the devices), publishes are refused *before* they are
    /// acknowledged: the connection is closed and the device resends after
    /// reconnecting.
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
    pub(crate) fn unadmit(&self, bytes: u64) {
        self.accepted_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.accepted.fetch_sub(1, Ordering::AcqRel);
    }

    /// Hands an admitted envelope to the ingest loop.
    pub(crate) fn ingest(&self, envelope: Bytes) {
        if let Err(e) = self.ingest_tx.send(envelope) {
            // Only after the ingest loop ended (shutdown): count it as consumed so
            // a drain does not wait for it.
            self.consumed(ingest_size(&e.0));
        }
    }

    /// Whether `device` may publish once more now (the per-device rate limit).
    pub(crate) fn within_rate(&self, device: &Device) -> bool {
        let Some(limiter) = &self.rate_limit else {
            return true;
        };
        if limiter.try_acquire(device.id, std::time::Instant::now()) {
            return true;
        }
        metrics::counter!("tp_mqtt_rate_limited_total").increment(1);
        tracing::warn!(device_id = %device.id, device_number = %device.device_number,
            "device exceeds max_messages_per_second; refusing the message");
        false
    }

    /// The ingest loop finished with a publish of `bytes` (as counted by [`Self::admit`]).
    pub(crate) fn consumed(&self, bytes: u64) {
        self.consumed_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.consumed.fetch_add(1, Ordering::AcqRel);
    }

    /// Registers a connection of `device` under `client_id` and opens (or joins) the
    /// device's session. A client id held by another device is refused; one held by
    /// the same device is taken over (the old connection is told to close).
    pub(crate) fn register(
        &self,
        device: &Arc<Device>,
        client_id: &str,
        connection_id: u64,
        tx: mpsc::Sender<Box<Outbound>>,
    ) -> Result<Registered, RegisterRefused> {
        let mut ids = self.client_ids.lock().unwrap_or_else(|p| p.into_inner());
        let previous = match ids.get(client_id) {
            Some((owner, _)) if *owner != device.id => {
                return Err(RegisterRefused::ClientIdInUse);
            }
            Some((_, conn)) => Some(*conn),
            None => None,
        };
        ids.insert(client_id.to_owned(), (device.id, connection_id));
        let gone = CancellationToken::new();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        drop(ids);
        let entry = sessions.entry(device.id).or_insert_with(|| SessionEntry {
            device: device.clone(),
            connections: Vec::new(),
            subscriptions: Vec::new(),
            delivery: Arc::default(),
        });
        entry.device = device.clone();
        let took_over = previous.and_then(|old| {
            let handle = entry.connections.iter().find(|c| c.id == old)?;
            let _ = handle
                .tx
                .try_send(Box::new(Outbound::Close(CloseReason::TakenOver)));
            Some(handle.gone.clone())
        });
        entry.connections.push(ConnHandle {
            id: connection_id,
            tx,
            gone: gone.clone(),
        });
        metrics::gauge!("tp_mqtt_sessions").increment(1.0);
        if entry.connections.len() == 1 {
            let _ = self.status_tx.send(StatusChange::Opened(device.id));
        }
        drop(sessions);
        Ok(Registered { took_over, gone })
    }

    /// The persistent session of `device` under `client_id`: with `clean_session`
    /// it is dropped, otherwise it is returned with each filter re-checked against
    /// the device's ACL today, and the unacknowledged downlink whose topic a kept
    /// filter still covers (`None` = no session to restore).
    pub(crate) fn restore_session(
        &self,
        device: &Device,
        client_id: &str,
        clean_session: bool,
    ) -> Option<KeptSession> {
        let key = (device.id, client_id.to_owned());
        let stored = self
            .persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)?;
        if clean_session || stored.expires <= Instant::now() {
            return None;
        }
        let KeptSession { filters, unacked } = stored.session;
        let filters: Vec<(String, u8)> = filters
            .into_iter()
            .filter(|(f, _)| check_subscribe(f, &device.device_number).is_ok())
            .collect();
        let unacked = unacked
            .into_iter()
            .filter(|(topic, _, _)| {
                filters
                    .iter()
                    .any(|(f, _)| crate::downlink::topic_matches(f, topic))
            })
            .collect();
        Some(KeptSession { filters, unacked })
    }

    /// A connection ends: frees its client id, keeps `keep` (how long, and the
    /// session) when the session persists, and closes the device's session with its
    /// last connection.
    pub(crate) fn unregister(
        &self,
        device_id: DeviceId,
        client_id: &str,
        connection_id: u64,
        graceful: bool,
        keep: Option<(Duration, KeptSession)>,
    ) {
        let mut ids = self.client_ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.get(client_id).is_some_and(|(_, c)| *c == connection_id) {
            ids.remove(client_id);
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        drop(ids);
        if let Some(entry) = sessions.get_mut(&device_id) {
            entry.subscriptions.retain(|(c, _)| *c != connection_id);
            let before = entry.connections.len();
            // Not cancelled here: the connection cancels `gone` once this returns, so a
            // takeover waiting for it finds the persistent session already stored.
            entry.connections.retain(|c| c.id != connection_id);
            if entry.connections.len() < before {
                metrics::gauge!("tp_mqtt_sessions").decrement(1.0);
            }
            if entry.connections.is_empty() {
                sessions.remove(&device_id);
                let _ = self.status_tx.send(StatusChange::Closed {
                    device_id,
                    graceful,
                });
            }
        }
        drop(sessions);
        if let Some((keep_for, session)) = keep {
            let now = Instant::now();
            let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
            persisted.retain(|_, p| p.expires > now);
            persisted.insert(
                (device_id, client_id.to_owned()),
                Persisted {
                    session,
                    expires: now + keep_for,
                },
            );
        }
    }

    /// Closes every connection of `device_id` on this node and forgets its
    /// persistent sessions (disabled or deleted device, rotated credentials).
    /// Returns how many connections were told to close.
    pub(crate) fn close_device(&self, device_id: DeviceId, reason: CloseReason) -> usize {
        self.persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(d, _), _| *d != device_id);
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = sessions.get(&device_id) else {
            return 0;
        };
        for c in &entry.connections {
            // A full queue means the connection is stuck; the close is retried by
            // the connection's own keepalive, and the channel closing ends it too.
            let _ = c.tx.try_send(Box::new(Outbound::Close(reason)));
        }
        entry.connections.len()
    }

    /// Publishes `payload` on `topic` to the connections of `device_id` holding a
    /// granted filter that matches it.
    pub(crate) fn publish(
        &self,
        device_id: DeviceId,
        topic: &str,
        payload: Bytes,
    ) -> Result<(), Undelivered> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = sessions.get(&device_id).ok_or(Undelivered::NoSession)?;
        let alias = tp_core::protocol::down_alias(topic);
        // The topic a connection receives the message on: the topic itself when one
        // of its filters matches, else the `{device_number}/down` alias.
        let receives = |connection: u64| {
            let mut via_alias = None;
            for (_, filter) in entry.subscriptions.iter().filter(|(c, _)| *c == connection) {
                match received_as(filter, topic, alias.as_deref()) {
                    Some(t) if t == topic => return Some(topic),
                    Some(t) => via_alias = Some(t),
                    None => {}
                }
            }
            via_alias
        };
        let mut targets = entry
            .connections
            .iter()
            .filter_map(|c| receives(c.id).map(|t| (c, t)))
            .peekable();
        if targets.peek().is_none() {
            return Err(Undelivered::NoSubscription);
        }
        let mut delivered = false;
        for (c, topic) in targets {
            let message = Box::new(Outbound::Publish {
                topic: topic.to_owned(),
                payload: payload.clone(),
            });
            delivered |= c.tx.try_send(message).is_ok();
        }
        if delivered {
            Ok(())
        } else {
            Err(Undelivered::Full)
        }
    }

    /// The device of a live session.
    pub(crate) fn session_device(&self, device_id: DeviceId) -> Option<Arc<Device>> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(&device_id).map(|e| e.device.clone())
    }

    /// A message of `device_id` was ingested: a sign of life only while the device
    /// still has a session here (see [`StatusChange`] for why under the lock).
    pub(crate) fn session_activity(&self, device_id: DeviceId) {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.contains_key(&device_id) {
            let _ = self.status_tx.send(StatusChange::Active(device_id));
        }
    }

    /// A connection of the device was granted `filters`: remember them and wake
    /// downlink delivery for the device.
    pub(crate) fn subscribed(&self, device_id: DeviceId, connection_id: u64, filters: Vec<String>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = sessions.get_mut(&device_id) else {
            return;
        };
        for f in filters {
            if !entry
                .subscriptions
                .iter()
                .any(|(c, g)| *c == connection_id && *g == f)
            {
                entry.subscriptions.push((connection_id, f));
            }
        }
        drop(sessions);
        let _ = self.subscribed_tx.send(device_id);
    }

    /// A connection of the device unsubscribes `filters`: stop counting them.
    pub(crate) fn unsubscribed(&self, device_id: DeviceId, connection_id: u64, filters: &[String]) {
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
        let alias = tp_core::protocol::down_alias(topic);
        Some(
            entry
                .subscriptions
                .iter()
                .any(|(_, f)| received_as(f, topic, alias.as_deref()).is_some()),
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

/// The topic a subscription `filter` receives a publish on `topic` as: the topic
/// itself when the filter matches it, else `alias` (the `{device_number}/down` form
/// ThingsPanel devices may subscribe to instead) when the filter is exactly that.
fn received_as<'t>(filter: &str, topic: &'t str, alias: Option<&'t str>) -> Option<&'t str> {
    if crate::downlink::topic_matches(filter, topic) {
        Some(topic)
    } else {
        alias.filter(|a| *a == filter)
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
    /// The enabled device these credentials belong to: a `BASIC` device by username
    /// and password, or an `ACCESSTOKEN` device by its token sent as the username
    /// (the password empty or ignored).
    pub(crate) async fn check_credentials(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Arc<Device>, Refused> {
        // No BASIC password is empty, so an empty one can only be an access token's.
        let device = self.lookup(username, !password.is_empty()).await?;
        if !device.credentials.verify(password) {
            return Err(Refused::BadPassword);
        }
        if !device.enabled {
            return Err(Refused::Disabled);
        }
        Ok(device)
    }

    /// The enabled device with this username (or access token), without a password
    /// check: for hooks of an external broker about a connection it already
    /// authenticated.
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // the auth hooks' lookup
    pub(crate) async fn enabled_device(&self, username: &str) -> Result<Arc<Device>, Refused> {
        let device = self.lookup(username, true).await?;
        if !device.enabled {
            return Err(Refused::Disabled);
        }
        Ok(device)
    }

    /// The device a login names: with `basic`, a `BASIC` device whose username it
    /// is; else (or when there is none) the `ACCESSTOKEN` device whose token it is.
    /// Each kind is only found through its own key, so a token's stored digest
    /// never works as a username.
    async fn lookup(&self, username: &str, basic: bool) -> Result<Arc<Device>, Refused> {
        if username.is_empty() {
            return Err(Refused::UnknownUsername);
        }
        let store_error = |e: tp_core::Error| {
            tracing::error!(error = %e, "credential lookup failed");
            Refused::Store(e)
        };
        if basic
            && let Some(d) = self.resolve(username).await.map_err(store_error)?
            && d.credentials.voucher_type == VoucherType::Basic
        {
            return Ok(d);
        }
        match self
            .resolve(&access_token_key(username))
            .await
            .map_err(store_error)?
        {
            Some(d) if d.credentials.voucher_type == VoucherType::AccessToken => Ok(d),
            _ => Err(Refused::UnknownUsername),
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

/// Client ids accepted at CONNECT: at most 256 bytes, no control characters (they
/// end up in logs); empty ids get one assigned by the connection driver.
pub(crate) fn valid_client_id(id: &str) -> bool {
    id.len() <= 256 && !id.chars().any(char::is_control)
}

/// Bytes a publish occupies in the ingest queue, as counted for backpressure.
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
    fn client_ids_with_control_characters_or_too_long_are_invalid() {
        for good in ["mqtt_abc-1", "", "site/dev5", "a+b"] {
            assert!(valid_client_id(good), "{good}");
        }
        for bad in ["a\nb", "\u{1b}[31m", &"x".repeat(257)] {
            assert!(!valid_client_id(bad), "{bad:?}");
        }
    }
}
