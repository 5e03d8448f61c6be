//! # tp-broker
//!
//! Device access for the platform: our own MQTT connection layer (listeners, one
//! task per connection, [rumqttd]'s packet codecs), which
//! - serves MQTT 3.1, 3.1.1 and 5 on every port (the level is read from CONNECT),
//!   over TCP, TLS, WebSocket and WSS, terminated in the connection's own task;
//! - authenticates each CONNECT by the device's MQTT username/password (cache, then
//!   the metadata store) and refuses disabled devices;
//! - binds the device's identity at CONNECT and checks every packet and field
//!   against it: a device publishes only uplink topics (its will too) and subscribes
//!   only to its own `device_number`'s downlink topics, every filter of a SUBSCRIBE
//!   checked; a client id belongs to one device at a time;
//! - ingests telemetry (through tp-core's [`IngestSink`](tp_core::ingest::IngestSink)), attributes, events and command
//!   responses, acknowledges attribute and event reports as ThingsPanel does;
//! - tracks online/offline per device (several sessions of one device count once);
//! - delivers downlink through [`MqttTransport`], a [`tp_core::DeviceTransport`], and
//!   queued downlink of devices that were offline once they subscribe ([`downlink`]);
//! - drains on shutdown: refuses new publishes, consumes everything acknowledged, and
//!   flushes the writer;
//! - serves the same device operations over HTTP (`http::device_router`, feature
//!   `http`, merged into the node's API server) and CoAP over UDP ([`coap`], when
//!   `coap_listen` is set), with the same credentials, codecs and stores.
//!
//! It depends on tp-core alone: stores, cache and ingest sink are handed in as
//! tp-core trait objects, so any backend (or your own) sits under it.
//!
//! ```
//! # #[tokio::main]
//! # async fn main() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use tp_broker::{BrokerConfig, BrokerDeps, EmbeddedBroker};
//! use tp_storage::{open_cache, open_metadata, open_timeseries, writer::{BatchWriter, WriterConfig}};
//!
//! let metadata = open_metadata("sqlite::memory:").await?;
//! // the broker writes through tp-core's `IngestSink`; tp-storage's batching writer is one
//! let writer = Arc::new(BatchWriter::spawn(open_timeseries("sqlite::memory:").await?, WriterConfig::default()));
//! let cache = open_cache("memory://").await?;
//! let config = BrokerConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() };
//! let broker = EmbeddedBroker::start(&config, BrokerDeps { metadata, cache, writer }).await?;
//! println!("MQTT on {}", broker.local_addr());
//! // refuse new publishes, store everything acknowledged
//! let report = broker.drain(std::time::Duration::from_secs(5)).await?;
//! assert_eq!(report.accepted, report.consumed);
//! # Ok(()) }
//! ```
#![warn(missing_docs, missing_debug_implementations)]

pub mod backplane;
pub mod coap;
mod config;
mod connection;
pub mod downlink;
mod error;
#[cfg(feature = "external")]
pub mod external;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "http")]
pub mod hooks;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "http")]
mod https;
mod ingest;
mod listener;
pub mod ota;
pub mod presence;
mod rate;
#[cfg(feature = "lua")]
pub mod script;
mod session;
pub mod thing_model;
pub mod tls;
mod transport;
mod uplink;
pub mod wal;

#[cfg(feature = "testing")]
pub mod testing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use config::BrokerConfig;

/// Resolves on the first SIGINT (Ctrl-C) or, on Unix, SIGTERM: what a node binary
/// waits for before draining (`EmbeddedBroker::shutdown` / `Platform::shutdown`).
///
/// # Panics
/// When the process cannot install the signal handlers (no signal support), at
/// startup rather than silently never draining.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
pub use error::BrokerError;
pub use tls::TlsSettings;
pub use tp_core::clock::{Clock, ClockRef, ManualClock, MonotonicClock, SystemClock};
pub use transport::MqttTransport;
pub use wal::WalConfig;

use tokio::task::JoinHandle;
use tp_core::ingest::IngestSinkRef;
use tp_core::{CacheRef, DeviceTransportRef, MetadataStoreRef};

use crate::ingest::Ingest;
use crate::session::{Shared, SharedReceivers, StatusChange};
use crate::uplink::Uplinks;

/// What the broker needs from the rest of the platform.
#[derive(Debug, Clone)]
pub struct BrokerDeps {
    /// Devices and credentials, attributes, command log, online state.
    pub metadata: MetadataStoreRef,
    /// Credential cache.
    pub cache: CacheRef,
    /// Telemetry and events go through the batching writer.
    pub writer: IngestSinkRef,
}

/// Optional parts of a broker beyond [`BrokerDeps`] ([`EmbeddedBroker::start_with`]).
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// Where device profiles are read: their heartbeat and online-timeout windows
    /// (cached, see [`presence`]), which devices are gateways (downlink routing, see
    /// [`downlink::route`]) and the secrets of `devices/register`. Without it every
    /// device is judged by its connection and the default window, none is a gateway
    /// and registration over MQTT is refused.
    pub profiles: Option<tp_core::AccessStoreRef>,
    /// The clock presence windows are measured on; [`MonotonicClock`] when unset. Tests
    /// pass a [`ManualClock`] to step over a window instead of waiting it out.
    pub clock: Option<ClockRef>,
    /// Handed every accepted telemetry, attribute and event message (the rule
    /// engine); `observe` must not block. Online/offline reaches observers through
    /// [`EmbeddedBroker::status_events`].
    pub observer: Option<tp_core::rules::UplinkObserverRef>,
    /// Device ownership leases of a cluster (tp-storage's Redis ones): this node's
    /// devices are marked offline by another node when this one dies, and this node
    /// marks those of dead nodes (see [`tp_core::cluster::DeviceLeases`]). `None`
    /// on a single node.
    pub leases: Option<tp_core::cluster::DeviceLeasesRef>,
    /// Filled in while the write-ahead log replays at start (before any listener
    /// accepts devices), for a readiness probe that says how far it is.
    pub replay_progress: Option<Arc<ReplayProgress>>,
    /// OTA upgrades: `ota/devices/progress` reports update the device's task detail,
    /// and the HTTP device API serves stored packages ([`ota::OtaDownloads`]).
    /// Without it progress is stored as an event only.
    pub ota: Option<ota::OtaDownloads>,
    /// Device templates: telemetry and attributes of devices whose profile's
    /// template validates are checked against its thing model ([`thing_model`]).
    /// The API invalidates the same cache when a template or profile changes.
    pub thing_models: Option<Arc<tp_core::thing_model::TemplateCache>>,
    /// The data script engine (feature `lua`): enabled scripts of a device's profile
    /// run on its uplink telemetry and attributes before decoding, and on its
    /// telemetry control and attribute sets after encoding. Hand the same engine to
    /// the API (as its `ScriptRunner`) so script changes there take effect at once.
    #[cfg(feature = "lua")]
    pub scripts: Option<Arc<script::Scripts>>,
}

/// How far the write-ahead log replay at start is ([`BrokerOptions::replay_progress`]).
#[derive(Debug, Default)]
pub struct ReplayProgress {
    running: std::sync::atomic::AtomicBool,
    done: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}

impl ReplayProgress {
    /// `(replayed, total)` messages while a replay runs; `None` before and after.
    pub fn replaying(&self) -> Option<(u64, u64)> {
        self.running.load(Ordering::Acquire).then(|| {
            (
                self.done.load(Ordering::Acquire),
                self.total.load(Ordering::Acquire),
            )
        })
    }

    /// A replay of `total` messages starts.
    pub fn begin(&self, total: u64) {
        self.done.store(0, Ordering::Release);
        self.total.store(total, Ordering::Release);
        self.running.store(true, Ordering::Release);
    }

    /// One more message replayed.
    pub fn advance(&self) {
        self.done.fetch_add(1, Ordering::AcqRel);
    }

    /// The replay is over (stored and committed, or given up).
    pub fn end(&self) {
        self.running.store(false, Ordering::Release);
    }
}

/// Outcome of [`EmbeddedBroker::drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Publishes accepted (and acknowledged) since start.
    pub accepted: u64,
    /// Publishes fully processed since start.
    pub consumed: u64,
}

/// Counters of a running broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerStats {
    /// Publishes accepted (and acknowledged to QoS 1 publishers).
    pub accepted: u64,
    /// Publishes the ingest loop finished with (stored or rejected).
    pub consumed: u64,
    /// Publishes rejected by the ingest loop (malformed payloads); nothing of them stored.
    pub rejected: u64,
    /// Devices with at least one session.
    pub connected_devices: usize,
    /// Publishes refused because the write-ahead log could not take them (not
    /// acknowledged; the device resends).
    pub wal_errors: u64,
}

/// What the HTTP and CoAP device APIs share with the broker: authentication, the
/// uplink decoding and storing, and the payload limit.
#[derive(Debug, Clone)]
pub(crate) struct DeviceApi {
    pub(crate) shared: Arc<Shared>,
    pub(crate) uplinks: Uplinks,
    pub(crate) max_payload_size: usize,
    /// Package downloads of OTA tasks.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) ota: Option<ota::OtaDownloads>,
}

/// A running embedded broker with its ingest loop.
#[derive(Debug)]
pub struct EmbeddedBroker {
    shared: Arc<Shared>,
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // read by the HTTP device API
    device_api: DeviceApi,
    presence: Arc<presence::Presence>,
    transport: Arc<MqttTransport>,
    writer: IngestSinkRef,
    local_addr: SocketAddr,
    v5_addr: Option<SocketAddr>,
    ws_addr: Option<SocketAddr>,
    coap_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    tls_v5_addr: Option<SocketAddr>,
    wss_addr: Option<SocketAddr>,
    listeners: Vec<JoinHandle<()>>,
    ingest: JoinHandle<()>,
    /// Wakes a delivery pass of a device's pending downlink ([`Self::deliver_queued`]).
    queued_tx: tokio::sync::mpsc::UnboundedSender<tp_core::DeviceId>,
}

impl EmbeddedBroker {
    /// Binds the listeners and starts them, the ingest loop and status tracking.
    ///
    /// # Errors
    /// [`BrokerError::Bind`] when the listen address is taken or not bindable.
    pub async fn start(config: &BrokerConfig, deps: BrokerDeps) -> Result<Self, BrokerError> {
        Self::start_with(config, deps, BrokerOptions::default()).await
    }

    /// Like [`Self::start`], with device profiles (per-profile heartbeat and
    /// online-timeout) and a clock for presence.
    ///
    /// # Errors
    /// [`BrokerError::Bind`] when the listen address is taken or not bindable.
    pub async fn start_with(
        config: &BrokerConfig,
        deps: BrokerDeps,
        options: BrokerOptions,
    ) -> Result<Self, BrokerError> {
        // Every listener is bound here, once: a taken port is a clear startup error,
        // and port 0 resolves to the port the listener holds from now on.
        let (plain, local_addr) = listener::bind(config.listen, "--mqtt-listen or mqtt.listen")?;
        let v5 = config
            .v5_listen
            .map(|a| listener::bind(a, "mqtt.v5_listen"))
            .transpose()?;
        let ws = config
            .ws_listen
            .map(|a| listener::bind(a, "mqtt.ws_listen"))
            .transpose()?;
        let (v5_addr, ws_addr) = (v5.as_ref().map(|l| l.1), ws.as_ref().map(|l| l.1));
        let tls = config
            .tls
            .as_ref()
            .map(tls::MqttTlsListeners::bind)
            .transpose()?;
        let tls_addr = |port| tls.as_ref().and_then(|t| t.addr(port));
        let (tls_addr, tls_v5_addr, wss_addr) = (
            tls_addr(tls::TlsPort::V4),
            tls_addr(tls::TlsPort::V5),
            tls_addr(tls::TlsPort::Ws),
        );
        let (coap_socket, coap_addr) = match config.coap_listen {
            Some(addr) => {
                let bind_error = |source| BrokerError::Bind {
                    addr,
                    setting: "mqtt.coap_listen",
                    source,
                };
                let socket = tokio::net::UdpSocket::bind(addr)
                    .await
                    .map_err(bind_error)?;
                let bound = socket.local_addr().map_err(bind_error)?;
                (Some(socket), Some(bound))
            }
            None => (None, None),
        };

        // Acknowledged messages are logged before they are acknowledged; see [`wal`].
        let wal = wal::Wal::open(&config.wal, &deps.writer)?;
        let (shared, receivers) = Shared::new(
            deps.metadata.clone(),
            options.profiles.clone(),
            deps.cache.clone(),
            Duration::from_secs(config.credential_cache_ttl_secs),
            config.max_connections,
            config.max_ingest_backlog_bytes(),
            config.max_messages_per_second,
            wal.as_ref().map(|(w, _)| w.clone()),
        );
        #[cfg(feature = "lua")]
        if let Some(scripts) = &options.scripts {
            let _ = shared.scripts.set(scripts.clone());
        }
        let SharedReceivers {
            status: mut status_rx,
            subscribed: subscribed_rx,
            ingest: ingest_rx,
        } = receivers;
        // Unarmed until the write-ahead log has replayed (old messages are no sign of life).
        let presence = presence::Presence::spawn(
            deps.metadata.clone(),
            options.profiles,
            options
                .clock
                .unwrap_or_else(|| Arc::new(MonotonicClock::new())),
            Duration::from_secs(config.http_online_secs.into()),
            options.leases.clone(),
        );
        if let Some(leases) = &options.leases {
            presence::start_leases(&presence, leases).await;
            tokio::spawn(presence::keep_leases(
                Arc::downgrade(&presence),
                leases.clone(),
            ));
        }

        let caches = Arc::new(uplink::DeviceCaches::new(
            config.max_telemetry_keys_per_device,
        ));
        // Before any listener accepts devices, store what a killed node acknowledged
        // but had not committed.
        if let Some((wal, leftovers)) = &wal {
            let replay = Arc::new(Ingest {
                uplinks: Uplinks {
                    metadata: deps.metadata.clone(),
                    writer: deps.writer.clone(),
                    sessions: Some(shared.clone()),
                    presence: Some(presence.clone()),
                    observer: options.observer.clone(),
                    caches: caches.clone(),
                    ota: options.ota.as_ref().map(|o| o.store.clone()),
                    thing_models: options.thing_models.clone(),
                    #[cfg(feature = "lua")]
                    scripts: options.scripts.clone(),
                },
                shared: shared.clone(),
            });
            let progress = options.replay_progress.clone().unwrap_or_default();
            replay.replay(wal, leftovers, &progress).await;
            tokio::spawn(wal.clone().maintain(deps.writer.clone()));
        }
        presence.arm();

        let context = listener::Context {
            shared: shared.clone(),
            limits: Arc::new(connection::Limits {
                connect_timeout: Duration::from_millis(config.connection_timeout_ms.into()),
                max_packet_size: config.max_payload_size,
                max_inflight: config.max_inflight_count.max(1),
                session_expiry: Duration::from_secs(config.session_expiry_secs),
            }),
            pending: Arc::new(tokio::sync::Semaphore::new(
                config.max_pending_connections.max(1),
            )),
        };
        let plain_listeners = [
            Some((plain, listener::Framing::Mqtt)),
            v5.map(|(l, _)| (l, listener::Framing::Mqtt)),
            ws.map(|(l, _)| (l, listener::Framing::WebSocket)),
        ];
        let mut listeners: Vec<JoinHandle<()>> = plain_listeners
            .into_iter()
            .flatten()
            .map(|(l, framing)| listener::spawn(l, context.clone(), framing, None))
            .collect();
        if let Some(tls) = tls {
            for (port, bound, addr) in tls.bound {
                let framing = match port {
                    tls::TlsPort::V4 | tls::TlsPort::V5 => listener::Framing::Mqtt,
                    tls::TlsPort::Ws => listener::Framing::WebSocket,
                };
                tracing::info!(%addr, ?port, "MQTT over TLS listening");
                listeners.push(listener::spawn(
                    bound,
                    context.clone(),
                    framing,
                    Some(tls.acceptor.clone()),
                ));
            }
        }

        let uplinks = Uplinks {
            metadata: deps.metadata.clone(),
            writer: deps.writer.clone(),
            sessions: Some(shared.clone()),
            presence: Some(presence.clone()),
            observer: options.observer.clone(),
            caches,
            ota: options.ota.as_ref().map(|o| o.store.clone()),
            thing_models: options.thing_models.clone(),
            #[cfg(feature = "lua")]
            scripts: options.scripts.clone(),
        };
        let device_api = DeviceApi {
            shared: shared.clone(),
            uplinks: uplinks.clone(),
            max_payload_size: config.max_payload_size,
            ota: options.ota.clone(),
        };
        if let Some(socket) = coap_socket {
            listeners.push(tokio::spawn(coap::serve(
                coap::CoapHandler::new(device_api.clone()),
                socket,
            )));
            tracing::info!(addr = ?coap_addr, "CoAP listening");
        }
        let ingest = tokio::spawn(
            Ingest {
                uplinks,
                shared: shared.clone(),
            }
            .run(ingest_rx),
        );

        tokio::spawn(
            downlink::Delivery {
                shared: shared.clone(),
            }
            .run(subscribed_rx),
        );
        // Passes asked for from outside (the cluster backplane); passes of one session
        // are serialized by its lock, so both delivery tasks may run one at once.
        let (queued_tx, queued_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(
            downlink::Delivery {
                shared: shared.clone(),
            }
            .run(queued_rx),
        );

        // Sessions opening and closing feed presence, which records and broadcasts.
        let sessions = presence.clone();
        tokio::spawn(async move {
            while let Some(change) = status_rx.recv().await {
                match change {
                    StatusChange::Opened(id) => sessions.connected(id),
                    StatusChange::Closed {
                        device_id,
                        graceful,
                    } => sessions.disconnected(device_id, graceful),
                    StatusChange::Active(id) => sessions.activity(id),
                }
            }
        });

        tracing::info!(%local_addr, "MQTT listening");
        Ok(Self {
            transport: Arc::new(MqttTransport {
                shared: shared.clone(),
            }),
            shared,
            device_api,
            presence,
            writer: deps.writer,
            local_addr,
            v5_addr,
            ws_addr,
            coap_addr,
            tls_addr,
            tls_v5_addr,
            wss_addr,
            listeners,
            ingest,
            queued_tx,
        })
    }

    /// Delivers the pending downlink of `device` (and of the devices behind it, for
    /// a gateway) if the device has a session on this node: the same pass as after
    /// its SUBACK, for downlink another node logged. `false` when the device is not
    /// connected here.
    pub fn deliver_queued(&self, device: tp_core::DeviceId) -> bool {
        self.shared.session_device(device).is_some() && self.queued_tx.send(device).is_ok()
    }

    /// Closes every MQTT connection of `device` on this node and forgets its
    /// persistent sessions: for a device that was disabled or deleted, or whose
    /// credentials changed (MQTT 5 clients get DISCONNECT "not authorized"). Returns
    /// how many connections were told to close; each closes within its task's next
    /// turn. Other nodes hear of it through the cluster backplane.
    pub fn disconnect_device(&self, device: tp_core::DeviceId) -> usize {
        self.shared
            .close_device(device, session::CloseReason::Revoked)
    }

    /// The bound MQTT address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Downlink to this node's devices.
    pub fn transport(&self) -> DeviceTransportRef {
        self.transport.clone()
    }

    /// Online/offline transitions of this node's devices, after they are recorded
    /// (for the rule engine and live views). A receiver that falls more than 4096
    /// events behind gets `RecvError::Lagged` and misses the oldest.
    pub fn status_events(&self) -> tokio::sync::broadcast::Receiver<tp_core::DeviceStatusEvent> {
        self.presence.subscribe()
    }

    /// Devices with at least one open session.
    pub fn connected_devices(&self) -> usize {
        self.shared.connected_devices()
    }

    /// Current counters.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            accepted: self.shared.accepted.load(Ordering::Acquire),
            consumed: self.shared.consumed.load(Ordering::Acquire),
            rejected: self.shared.rejected.load(Ordering::Acquire),
            connected_devices: self.shared.connected_devices(),
            wal_errors: self.shared.wal_errors.load(Ordering::Acquire),
        }
    }

    /// The bound MQTT 5 address, when `v5_listen` is set.
    pub fn v5_addr(&self) -> Option<SocketAddr> {
        self.v5_addr
    }

    /// The bound MQTT-over-WebSocket address, when `ws_listen` is set.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// The bound CoAP (UDP) address, when `coap_listen` is set.
    pub fn coap_addr(&self) -> Option<SocketAddr> {
        self.coap_addr
    }

    /// The bound MQTT 3.1.1-over-TLS address, when `tls.listen` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The bound MQTT 5-over-TLS address, when `tls.v5_listen` is set.
    pub fn tls_v5_addr(&self) -> Option<SocketAddr> {
        self.tls_v5_addr
    }

    /// The bound MQTT-over-WebSocket-over-TLS (WSS) address, when `tls.wss_listen`
    /// is set; clients connect to `wss://{addr}/mqtt`.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    /// Healthy while the listeners and the ingest loop run.
    pub fn is_healthy(&self) -> bool {
        self.listeners.iter().all(|l| !l.is_finished()) && !self.ingest.is_finished()
    }

    /// Stops accepting connections and publishes (unacknowledged publishes stay with
    /// their devices), waits up to `timeout` until every acknowledged publish has been
    /// processed, then flushes the writer so it is all in the store.
    pub async fn drain(&self, timeout: Duration) -> Result<DrainReport, BrokerError> {
        self.shared.draining.store(true, Ordering::Release);
        for listener in &self.listeners {
            listener.abort();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let accepted = self.shared.accepted.load(Ordering::Acquire);
            let consumed = self.shared.consumed.load(Ordering::Acquire);
            if consumed >= accepted
                || tokio::time::Instant::now() >= deadline
                || self.ingest.is_finished()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.writer.flush().await?;
        if let Some(wal) = &self.shared.wal {
            // Deletes the processed log and unlocks its directory for the next node.
            wal.close(&self.writer).await;
        }
        let report = DrainReport {
            accepted: self.shared.accepted.load(Ordering::Acquire),
            consumed: self.shared.consumed.load(Ordering::Acquire),
        };
        if report.consumed < report.accepted {
            tracing::error!(
                ?report,
                "drain timed out before every acknowledged message was processed"
            );
        }
        Ok(report)
    }
}
