//! Online/offline tracking: MQTT connection state, per-profile heartbeat and
//! online-timeout windows, and activity of devices without a connection (HTTP, CoAP,
//! gateway sub-devices).
//!
//! # Modes (ThingsPanel's, from the device profile)
//!
//! | profile | online when | offline when |
//! |---|---|---|
//! | `heartbeat_secs = N` | any accepted message (an MQTT CONNECT counts) | no message for N s ([`StatusReason::HeartbeatTimeout`]); DISCONNECT and lost connections are ignored, as ThingsPanel ignores status messages in this mode: devices that connect only to report are not flapping |
//! | `online_timeout_secs = N` | MQTT connect or any message | DISCONNECT / lost connection, or no message for N s even while connected ([`StatusReason::OnlineTimeout`]) |
//! | neither (or no profile) | MQTT connect or any message | DISCONNECT / lost connection; a device with no MQTT connection after [`BrokerConfig::http_online_secs`](crate::BrokerConfig::http_online_secs) without a message ([`StatusReason::InactivityTimeout`]) |
//!
//! Messages are publishes (not PINGREQ: a keepalive proves the socket, which
//! the connection driver already watches, not that the device works; refreshing the online-timeout
//! on it would make that mode the same as no mode), authenticated HTTP and CoAP
//! requests, and the parts of a gateway envelope addressed to a sub-device.
//!
//! # Cost
//!
//! A message takes one mutex and a map update: no store query. The profile of a
//! device is looked up (device row, then the profile, cached per profile) when the
//! device is first seen and again after [`MODE_TTL`], in a background task. Each online
//! device has at most one scheduled check (the earliest moment its window can pass); a
//! sweeper runs every [`SWEEP_INTERVAL`] and looks only at due checks, so a state flips
//! at most one sweep interval after its window passes.
//!
//! Transitions are written in order by one task ([`MetadataStore::append_status`]:
//! history row plus the device's `online`/`last_seen`) and then broadcast to
//! [`crate::EmbeddedBroker::status_events`] subscribers (the rule engine). Between
//! transitions, the last activity of devices that sent something is written every
//! [`LAST_SEEN_FLUSH_INTERVAL`] in one batch ([`MetadataStore::touch_devices`]), so a
//! device's `last_seen` is at most that old without a store write per message.
//!
//! Windows are measured on a [`Clock`], so tests can move time forward instead of
//! sleeping through a timeout ([`ManualClock`]).
//!
//! Presence is per node: the node a device talks to tracks it. In a cluster
//! ([`crate::BrokerOptions::leases`]) every transition also records which node holds
//! the device (before the store write), each node renews a lease on its devices, and
//! a node whose lease expired has the devices it still held marked offline by another
//! node ([`StatusReason::NodeLost`], once: see [`tp_core::cluster::DeviceLeases`]);
//! a node restarted under the same id marks its previous run's devices offline at
//! once. Messages processed after the device's MQTT session closed (ingest runs
//! behind the connections under load) are no sign of life (`Ingest::process`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, broadcast, mpsc};
use tp_core::clock::ClockRef;
#[cfg(doc)]
use tp_core::clock::{Clock, ManualClock};
use tp_core::cluster::DeviceLeasesRef;
use tp_core::{
    AccessStoreRef, DeviceId, DeviceStatusEvent, Error, MetadataStoreRef, ProfileId, StatusReason,
    Timestamp,
};

/// How often due checks are swept: the most a state flip lags behind its window.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How often the last activity of active devices is written to the store.
pub const LAST_SEEN_FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// How long a device's resolved mode is trusted before its profile is looked up again
/// (profile edits and device moves between profiles take effect within this).
pub const MODE_TTL: Duration = Duration::from_secs(300);
/// How long a profile read from the access store is reused.
const PROFILE_TTL: Duration = Duration::from_secs(60);
/// Profile lookups in flight at once (a reconnect storm must not starve the store).
const RESOLVE_CONCURRENCY: usize = 8;
/// Status events a slow [`crate::EmbeddedBroker::status_events`] subscriber may fall
/// behind before it misses some (it then gets `RecvError::Lagged`).
const BROADCAST_CAPACITY: usize = 4096;

/// How a device's liveness is judged (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Only messages count, within this many ms.
    Heartbeat(i64),
    /// Connection state honoured, plus this many ms of silence.
    Timeout(i64),
    /// No profile window: the connection decides; without one, the default window.
    Connection,
}

impl Mode {
    fn from_profile(heartbeat_secs: Option<u32>, online_timeout_secs: Option<u32>) -> Self {
        let ms = |s: u32| i64::from(s) * 1000;
        match (heartbeat_secs, online_timeout_secs) {
            (Some(h), _) if h > 0 => Mode::Heartbeat(ms(h)),
            (_, Some(t)) if t > 0 => Mode::Timeout(ms(t)),
            _ => Mode::Connection,
        }
    }

    fn timeout_reason(self) -> StatusReason {
        match self {
            Mode::Heartbeat(_) => StatusReason::HeartbeatTimeout,
            Mode::Timeout(_) => StatusReason::OnlineTimeout,
            Mode::Connection => StatusReason::InactivityTimeout,
        }
    }
}

#[derive(Debug)]
struct Entry {
    online: bool,
    /// Holds at least one MQTT session on this node.
    connected: bool,
    /// Last message or connect (clock ms).
    last: Timestamp,
    /// The `last` written to the store as `last_seen` (a transition writes it too).
    saved: Timestamp,
    mode: Mode,
    /// When `mode` was looked up; `None` = never.
    resolved: Option<Instant>,
    resolving: bool,
    /// The one scheduled check of this device, if any.
    check_at: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct State {
    devices: HashMap<DeviceId, Entry>,
    /// Due time -> devices to look at then (stale ids are skipped, see `check_at`).
    checks: BTreeMap<Timestamp, Vec<DeviceId>>,
}

impl State {
    /// Makes sure `id` is looked at no later than `at`.
    fn schedule(&mut self, id: DeviceId, at: Timestamp) {
        let Some(entry) = self.devices.get_mut(&id) else {
            return;
        };
        if entry.check_at.is_some_and(|x| x <= at) {
            return;
        }
        entry.check_at = Some(at);
        self.checks.entry(at).or_default().push(id);
    }
}

/// The presence tracker of one broker (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct Presence {
    clock: ClockRef,
    metadata: MetadataStoreRef,
    default_window_ms: i64,
    /// Off while the write-ahead log replays old messages at startup.
    armed: AtomicBool,
    state: Mutex<State>,
    transitions: mpsc::UnboundedSender<DeviceStatusEvent>,
    resolve: mpsc::UnboundedSender<DeviceId>,
    events: broadcast::Sender<DeviceStatusEvent>,
}

impl Presence {
    /// Starts the tracker with its recorder, resolver and sweeper tasks (they end when
    /// the tracker is dropped). Devices without a profile window and without an MQTT
    /// connection are online for `default_window` after each message.
    pub(crate) fn spawn(
        metadata: MetadataStoreRef,
        profiles: Option<AccessStoreRef>,
        clock: ClockRef,
        default_window: Duration,
        leases: Option<DeviceLeasesRef>,
    ) -> Arc<Self> {
        let (transitions, transitions_rx) = mpsc::unbounded_channel();
        let (resolve, resolve_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let presence = Arc::new(Self {
            clock,
            metadata: metadata.clone(),
            default_window_ms: i64::try_from(default_window.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
            armed: AtomicBool::new(false),
            state: Mutex::default(),
            transitions,
            resolve,
            events: events.clone(),
        });
        tokio::spawn(record(metadata.clone(), leases, transitions_rx, events));
        tokio::spawn(resolve_modes(
            Arc::downgrade(&presence),
            Resolver {
                metadata,
                profiles,
                cache: Mutex::default(),
            },
            resolve_rx,
        ));
        tokio::spawn(sweep_periodically(Arc::downgrade(&presence)));
        presence
    }

    /// Starts counting messages and connections (after the write-ahead log replayed
    /// what a previous run received, which says nothing about who is online now).
    pub(crate) fn arm(&self) {
        self.armed.store(true, Ordering::Release);
    }

    /// Subscribes to status transitions.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<DeviceStatusEvent> {
        self.events.subscribe()
    }

    /// The device sent a message (any transport, or a gateway on its behalf).
    pub(crate) fn activity(&self, id: DeviceId) {
        self.touch(id, false);
    }

    /// The device's first MQTT session on this node opened.
    pub(crate) fn connected(&self, id: DeviceId) {
        self.touch(id, true);
    }

    /// The device's last MQTT session on this node closed, with DISCONNECT
    /// (`graceful`) or without.
    pub(crate) fn disconnected(&self, id: DeviceId, graceful: bool) {
        if !self.armed.load(Ordering::Acquire) {
            return;
        }
        let reason = if graceful {
            StatusReason::Disconnect
        } else {
            StatusReason::ConnectionLost
        };
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let Some(entry) = state.devices.get_mut(&id) else {
            return;
        };
        entry.connected = false;
        if entry.online && !matches!(entry.mode, Mode::Heartbeat(_)) {
            entry.online = false;
            self.emit(id, false, reason, now);
        }
        if !entry.online {
            state.devices.remove(&id);
        }
    }

    /// Another node's lease expired (or this node's previous run's, at start) and
    /// these devices were handed to this node to mark offline
    /// ([`StatusReason::NodeLost`]). A device online here meanwhile (it reconnected
    /// to this node) is left alone. Returns how many were marked.
    pub(crate) fn lost(&self, ids: &[DeviceId]) -> usize {
        let now = self.clock.now_ms();
        let state = self.lock();
        let mut marked = 0;
        for id in ids {
            if state
                .devices
                .get(id)
                .is_some_and(|e| e.online || e.connected)
            {
                continue;
            }
            self.emit(*id, false, StatusReason::NodeLost, now);
            marked += 1;
        }
        marked
    }

    /// This node's lease had lapsed (Redis unreachable for the lease time): another
    /// node may have marked its devices offline. Records every device online here
    /// as online again (and as this node's).
    pub(crate) fn reassert(&self) {
        let now = self.clock.now_ms();
        let state = self.lock();
        for (id, entry) in &state.devices {
            if entry.online {
                self.emit(*id, true, StatusReason::Activity, now);
            }
        }
    }

    fn touch(&self, id: DeviceId, connect: bool) {
        if !self.armed.load(Ordering::Acquire) {
            return;
        }
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let entry = state.devices.entry(id).or_insert_with(|| Entry {
            online: false,
            connected: false,
            last: now,
            saved: Timestamp::MIN,
            mode: Mode::Connection,
            resolved: None,
            resolving: false,
            check_at: None,
        });
        entry.last = entry.last.max(now);
        entry.connected |= connect;
        if !entry.online {
            entry.online = true;
            let reason = if connect {
                StatusReason::Connect
            } else {
                StatusReason::Activity
            };
            self.emit(id, true, reason, now);
        }
        let resolve = !entry.resolving && entry.resolved.is_none_or(|t| t.elapsed() > MODE_TTL);
        entry.resolving |= resolve;
        let due = entry.last.saturating_add(self.window(entry.mode));
        state.schedule(id, due);
        drop(state);
        if resolve {
            let _ = self.resolve.send(id);
        }
    }

    /// The profile lookup for `id` finished.
    fn resolved(&self, id: DeviceId, mode: Mode) {
        let mut state = self.lock();
        let Some(entry) = state.devices.get_mut(&id) else {
            return;
        };
        entry.mode = mode;
        entry.resolving = false;
        entry.resolved = Some(Instant::now());
        if entry.online {
            let due = entry.last.saturating_add(self.window(mode));
            state.schedule(id, due);
        }
    }

    /// Looks at every due check: devices whose window passed go offline.
    pub(crate) fn sweep(&self) {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let later = state.checks.split_off(&now.saturating_add(1));
        let due = std::mem::replace(&mut state.checks, later);
        for (at, ids) in due {
            for id in ids {
                let Some(entry) = state.devices.get_mut(&id) else {
                    continue;
                };
                if entry.check_at != Some(at) {
                    continue; // superseded by an earlier check
                }
                entry.check_at = None;
                if !entry.online {
                    continue;
                }
                let deadline = entry.last.saturating_add(self.window(entry.mode));
                if deadline > now {
                    state.schedule(id, deadline);
                    continue;
                }
                if entry.resolved.is_none() {
                    continue; // judged once its profile is known (`resolved` reschedules)
                }
                if entry.mode == Mode::Connection && entry.connected {
                    continue; // the connection holds it online; its close decides
                }
                entry.online = false;
                let (reason, connected) = (entry.mode.timeout_reason(), entry.connected);
                self.emit(id, false, reason, now);
                if !connected {
                    state.devices.remove(&id);
                }
            }
        }
    }

    fn window(&self, mode: Mode) -> i64 {
        match mode {
            Mode::Heartbeat(ms) | Mode::Timeout(ms) => ms,
            Mode::Connection => self.default_window_ms,
        }
    }

    /// Writes the last activity of devices that were active since the previous call
    /// (one batch); entries whose write fails are retried next time.
    pub(crate) async fn flush_last_seen(&self) {
        let batch: Vec<(DeviceId, Timestamp)> = {
            let mut state = self.lock();
            state
                .devices
                .iter_mut()
                .filter(|(_, e)| e.last > e.saved)
                .map(|(id, e)| {
                    e.saved = e.last;
                    (*id, e.last)
                })
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.metadata.touch_devices(&batch).await {
            tracing::warn!(devices = batch.len(), error = %e, "cannot record last_seen; retrying later");
            let mut state = self.lock();
            for (id, _) in &batch {
                if let Some(entry) = state.devices.get_mut(id) {
                    entry.saved = Timestamp::MIN;
                }
            }
        }
    }

    /// Queues a transition for the recorder (called under the state lock, so the
    /// transitions of a device are recorded in the order they happened).
    fn emit(&self, device_id: DeviceId, online: bool, reason: StatusReason, at: Timestamp) {
        metrics::counter!("tp_device_status_changes_total",
            "online" => if online { "true" } else { "false" }, "reason" => reason.as_str())
        .increment(1);
        tracing::info!(%device_id, online, %reason, "device status");
        let _ = self.transitions.send(DeviceStatusEvent {
            device_id,
            online,
            reason,
            at,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Marks offline every device the store still shows online (reason
/// [`StatusReason::ConnectionLost`], at `at`), with a status-history row each; returns
/// how many. For a node that is the only broker of its store, at startup before it
/// accepts devices: a previous run that crashed (or was killed) could not record its
/// devices going offline, and those that do not come back would otherwise stay
/// online for good. Not for a cluster, where other nodes hold devices online.
///
/// # Errors
/// What the store reports listing tenants or devices; a device deleted meanwhile
/// is skipped.
pub async fn mark_stale_offline(
    metadata: &MetadataStoreRef,
    at: Timestamp,
) -> tp_core::Result<u64> {
    const PAGE: u64 = 500;
    let mut marked = 0;
    let mut tenants_offset = 0;
    loop {
        let tenants = metadata
            .list_tenants(tp_core::Page {
                offset: tenants_offset,
                limit: PAGE,
            })
            .await?;
        let n = tenants.items.len() as u64;
        for tenant in tenants.items {
            // Marked devices leave the filter: the first page is read until empty.
            loop {
                let online = metadata
                    .list_devices(
                        tenant.id,
                        &tp_core::DeviceFilter {
                            online: Some(true),
                            page: tp_core::Page {
                                offset: 0,
                                limit: PAGE,
                            },
                            ..Default::default()
                        },
                    )
                    .await?;
                if online.items.is_empty() {
                    break;
                }
                for d in online.items {
                    let event = DeviceStatusEvent {
                        device_id: d.id,
                        online: false,
                        reason: StatusReason::ConnectionLost,
                        at,
                    };
                    match metadata.append_status(&event).await {
                        Ok(()) => marked += 1,
                        Err(Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if n < PAGE {
            return Ok(marked);
        }
        tenants_offset += n;
    }
}

/// Most status transitions written in one store call.
const STATUS_BATCH: usize = 1_000;

/// Writes transitions to the store in order, then broadcasts them.
async fn record(
    metadata: MetadataStoreRef,
    leases: Option<DeviceLeasesRef>,
    mut transitions: mpsc::UnboundedReceiver<DeviceStatusEvent>,
    events: broadcast::Sender<DeviceStatusEvent>,
) {
    // What has queued up is written in one batch: when thousands of devices
    // connect at once, one transaction each would cost the store more than the
    // connections themselves.
    let mut batch = Vec::with_capacity(STATUS_BATCH);
    while transitions.recv_many(&mut batch, STATUS_BATCH).await > 0 {
        // Ownership first: a device is this node's before it shows online, so a
        // node lost later never takes a device that moved here.
        if let Some(leases) = &leases {
            let changes: Vec<(DeviceId, bool)> = batch
                .iter()
                .filter(|e| e.reason != StatusReason::NodeLost)
                .map(|e| (e.device_id, e.online))
                .collect();
            if let Err(e) = leases.record(&changes).await {
                tracing::warn!(devices = changes.len(), error = %e,
                    "cannot record device ownership; a loss of this node may not mark them offline");
            }
        }
        match metadata.append_statuses(&batch).await {
            Ok(recorded) if recorded < batch.len() => {
                tracing::debug!(
                    missing = batch.len() - recorded,
                    "status of deleted devices not recorded"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(events = batch.len(), error = %e, "cannot record device status");
            }
        }
        // No subscribers is not an error.
        for event in batch.drain(..) {
            let _ = events.send(event);
        }
    }
}

async fn sweep_periodically(presence: std::sync::Weak<Presence>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let flush_every = (LAST_SEEN_FLUSH_INTERVAL.as_millis() / SWEEP_INTERVAL.as_millis()).max(1);
    let mut n: u128 = 0;
    loop {
        tick.tick().await;
        let Some(presence) = presence.upgrade() else {
            return;
        };
        presence.sweep();
        n += 1;
        if n.is_multiple_of(flush_every) {
            presence.flush_last_seen().await;
        }
    }
}

/// At start, before devices are accepted: takes this node's lease and marks
/// offline what a previous run under the same node id still owned (a killed node
/// restarted within its lease time; none of those connections exist any more).
pub(crate) async fn start_leases(presence: &Presence, leases: &DeviceLeasesRef) {
    if let Err(e) = leases.renew().await {
        tracing::warn!(error = %e, "cannot take this node's device lease; retrying in the background");
        return;
    }
    match leases.take_own().await {
        Ok(ids) if !ids.is_empty() => {
            let marked = presence.lost(&ids);
            tracing::info!(
                devices = marked,
                node_id = leases.node_id(),
                "marked offline the devices a previous run of this node held"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read what a previous run of this node held"),
    }
}

/// Renews this node's lease every third of the lease time (at least every second)
/// and marks offline,
/// once across the cluster, the devices of nodes whose lease expired; ends when
/// the tracker is dropped.
pub(crate) async fn keep_leases(presence: std::sync::Weak<Presence>, leases: DeviceLeasesRef) {
    // At least every second: a lost node is noticed at most that long after its
    // lease expired.
    let every = (leases.lease() / 3)
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held = true;
    loop {
        tick.tick().await;
        let Some(presence) = presence.upgrade() else {
            return;
        };
        match leases.renew().await {
            Ok(true) => held = true,
            Ok(false) => {
                if held {
                    tracing::warn!(
                        node_id = leases.node_id(),
                        "this node's device lease had lapsed; recording its devices online again"
                    );
                }
                presence.reassert();
                held = true;
            }
            Err(e) => {
                if held {
                    tracing::warn!(error = %e, "cannot renew this node's device lease");
                }
                held = false;
                continue;
            }
        }
        match leases.reap_lost().await {
            Ok(lost) => {
                for (node, ids) in lost {
                    let marked = presence.lost(&ids);
                    metrics::counter!("tp_node_lost_devices_total").increment(marked as u64);
                    tracing::warn!(lost_node = %node, marked_offline = marked,
                        "a broker node's lease expired; the devices it still held are offline \
                         (node_lost), those that reconnected elsewhere kept their state");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for lost broker nodes"),
        }
    }
}

/// Device -> mode lookups, with profiles cached.
struct Resolver {
    metadata: MetadataStoreRef,
    profiles: Option<AccessStoreRef>,
    cache: Mutex<HashMap<ProfileId, (Mode, Instant)>>,
}

impl Resolver {
    async fn mode(&self, id: DeviceId) -> tp_core::Result<Mode> {
        let Some(profiles) = &self.profiles else {
            return Ok(Mode::Connection);
        };
        let Some(device) = self.metadata.get_device_by_id(id).await? else {
            return Ok(Mode::Connection);
        };
        let Some(profile_id) = device.profile_id else {
            return Ok(Mode::Connection);
        };
        if let Some((mode, at)) = self.cached(profile_id)
            && at.elapsed() < PROFILE_TTL
        {
            return Ok(mode);
        }
        let mode = match profiles.get_profile(device.tenant_id, profile_id).await? {
            Some(p) => Mode::from_profile(p.heartbeat_secs, p.online_timeout_secs),
            None => Mode::Connection,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= 100_000 {
            cache.clear();
        }
        cache.insert(profile_id, (mode, Instant::now()));
        Ok(mode)
    }

    fn cached(&self, id: ProfileId) -> Option<(Mode, Instant)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&id).copied()
    }
}

async fn resolve_modes(
    presence: std::sync::Weak<Presence>,
    resolver: Resolver,
    mut requests: mpsc::UnboundedReceiver<DeviceId>,
) {
    let resolver = Arc::new(resolver);
    let limit = Arc::new(Semaphore::new(RESOLVE_CONCURRENCY));
    while let Some(id) = requests.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (resolver, presence) = (resolver.clone(), presence.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mode = resolver.mode(id).await.unwrap_or_else(|e| {
                // Judged by its connection until the next lookup.
                tracing::warn!(device_id = %id, error = %e, "cannot look up the device's profile");
                Mode::Connection
            });
            if let Some(presence) = presence.upgrade() {
                presence.resolved(id, mode);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tp_core::clock::{Clock, ManualClock};

    #[test]
    fn profile_windows_pick_the_mode() {
        assert_eq!(
            Mode::from_profile(Some(30), Some(60)),
            Mode::Heartbeat(30_000)
        );
        assert_eq!(Mode::from_profile(None, Some(60)), Mode::Timeout(60_000));
        assert_eq!(Mode::from_profile(Some(0), None), Mode::Connection);
        assert_eq!(Mode::from_profile(None, None), Mode::Connection);
    }

    #[tokio::test]
    async fn last_activity_is_written_in_batches_and_never_moves_back() {
        use tp_core::{Device, MetadataStore, Tenant, TenantId};
        let store = Arc::new(
            tp_storage::sqlite::SqliteMetadataStore::in_memory()
                .await
                .expect("store"),
        );
        let tenant = Tenant {
            id: TenantId::new(),
            name: "t".into(),
            created_at: 0,
        };
        store.create_tenant(&tenant).await.expect("tenant");
        let mut ids = Vec::new();
        for name in ["a", "b"] {
            let (d, _) = Device::new(tenant.id, name.into(), None);
            store.create_device(&d).await.expect("device");
            ids.push(d.id);
        }
        let clock = ManualClock::new(tp_core::now_ms());
        let presence = Presence::spawn(
            store.clone(),
            None,
            clock.clone(),
            Duration::from_secs(300),
            None,
        );
        presence.arm();
        let last_seen = |id| {
            let store = store.clone();
            async move {
                store
                    .get_device_by_id(id)
                    .await
                    .expect("get")
                    .expect("device")
                    .last_seen
            }
        };
        let t0 = clock.now_ms();
        let mut events = presence.subscribe();
        presence.activity(ids[0]);
        presence.activity(ids[1]);
        // Their online transitions are recorded first (they write last_seen too).
        for _ in 0..2 {
            assert!(events.recv().await.expect("event").online);
        }
        clock.advance(Duration::from_secs(5));
        presence.activity(ids[0]);
        presence.flush_last_seen().await;
        assert_eq!(last_seen(ids[0]).await, Some(t0 + 5_000));
        assert!(last_seen(ids[1]).await >= Some(t0), "written once active");
        // Nothing new: nothing written (a later transition row would not be undone).
        store
            .set_device_online(ids[1], true, t0 + 60_000)
            .await
            .expect("set");
        presence.flush_last_seen().await;
        assert_eq!(last_seen(ids[1]).await, Some(t0 + 60_000));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(tp_core::now_ms());
        let t = clock.now_ms();
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now_ms(), t + 90_000);
    }
}
