//! Test support (feature `testing`): a real MQTT client for end-to-end tests.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// What [`MqttTestClient`] reports when nothing came in time (as opposed to a close).
const TIMED_OUT: &str = "timed out";

/// A device connected over a real socket with rumqttc (MQTT 3.1.1). Events are
/// pumped into a channel; the first connection error ends the session (no reconnects).
#[derive(Debug)]
pub struct MqttTestClient {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Packet, String>>,
    pending: Vec<Packet>,
    session_present: bool,
    pump: tokio::task::JoinHandle<()>,
}

impl MqttTestClient {
    /// Connects and waits for the CONNACK; `Err` with the reason if the broker refused
    /// or closed the connection.
    pub async fn connect(
        addr: std::net::SocketAddr,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Self, String> {
        let opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        Self::connect_with(opts, username, password).await
    }

    /// Like [`Self::connect`], over MQTT-over-WebSocket at `ws://{addr}/mqtt`.
    pub async fn connect_ws(
        addr: std::net::SocketAddr,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Self, String> {
        let mut opts = MqttOptions::new(client_id, format!("ws://{addr}/mqtt"), addr.port());
        opts.set_transport(rumqttc::Transport::ws());
        Self::connect_with(opts, username, password).await
    }

    /// Like [`Self::connect`], over MQTT over TLS, trusting only the PEM certificate
    /// `ca_pem` (ring provider, no process-wide provider needed). `addr`'s IP is the
    /// server name the certificate must hold.
    pub async fn connect_tls(
        addr: std::net::SocketAddr,
        ca_pem: &[u8],
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Self, String> {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_transport(rumqttc::Transport::tls_with_config(trusting(ca_pem)?));
        Self::connect_with(opts, username, password).await
    }

    /// Like [`Self::connect_tls`], over MQTT over WebSocket over TLS at
    /// `wss://{addr}/mqtt`.
    pub async fn connect_wss(
        addr: std::net::SocketAddr,
        ca_pem: &[u8],
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Self, String> {
        let mut opts = MqttOptions::new(client_id, format!("wss://{addr}/mqtt"), addr.port());
        opts.set_transport(rumqttc::Transport::wss_with_config(trusting(ca_pem)?));
        Self::connect_with(opts, username, password).await
    }

    /// Connects with `opts` as given (client id, clean session, last will, ...) plus
    /// the credentials, and waits for the CONNACK like [`Self::connect`].
    pub async fn connect_with(
        mut opts: MqttOptions,
        username: &str,
        password: &str,
    ) -> Result<Self, String> {
        opts.set_credentials(username, password);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        // rumqttc gives up on TCP connect + CONNACK after 5 s by default; a loaded CI
        // machine running many brokers at once can take longer.
        let mut network = eventloop.network_options();
        network.set_connection_timeout(30);
        eventloop.set_network_options(network);
        let (tx, events) = mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut me = Self {
            client,
            events,
            pending: Vec::new(),
            session_present: false,
            pump,
        };
        match me
            .wait_for(|p| matches!(p, Packet::ConnAck(_)), Duration::from_secs(30))
            .await?
        {
            Packet::ConnAck(ack) => me.session_present = ack.session_present,
            _ => unreachable!("waited for a CONNACK"),
        }
        Ok(me)
    }

    /// The CONNACK's session-present flag.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// Publishes at `qos` without waiting for an acknowledgement.
    pub async fn publish_qos(
        &mut self,
        topic: &str,
        qos: QoS,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), String> {
        self.client
            .publish(topic, qos, false, payload.into())
            .await
            .map_err(|e| e.to_string())
    }

    /// Closes the socket without DISCONNECT, as a device that loses its network does.
    pub fn drop_connection(self) {
        // Ending rumqttc's event loop drops the socket; nothing is sent.
        self.pump.abort();
    }

    /// Waits for an incoming packet matching `want`, keeping publishes that arrive
    /// meanwhile for [`Self::recv_publish`]. `Err` if the connection closes or times out.
    async fn wait_for(
        &mut self,
        want: impl Fn(&Packet) -> bool,
        timeout: Duration,
    ) -> Result<Packet, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Err(TIMED_OUT.into()),
                Ok(None) => return Err("connection closed".into()),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(p))) if want(&p) => return Ok(p),
                Ok(Some(Ok(p @ Packet::Publish(_)))) => self.pending.push(p),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), String> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .map_err(|e| e.to_string())?;
        self.wait_for(|p| matches!(p, Packet::PubAck(_)), Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// Publishes at QoS 1 and tells whether the broker closed the connection instead
    /// of acknowledging it (`false`: acknowledged).
    ///
    /// # Panics
    /// When neither happens within 30 s: a test expecting a refusal must see the
    /// close itself, not a withheld acknowledgement.
    pub async fn publish_closes(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> bool {
        match self.publish(topic, payload).await {
            Ok(()) => false,
            Err(e) if e == TIMED_OUT => panic!("no PUBACK and no close for {topic}"),
            Err(_) => true,
        }
    }

    /// Like [`Self::publish_closes`], for a SUBSCRIBE of all `filters`.
    ///
    /// # Panics
    /// When neither a SUBACK nor a close comes within 30 s.
    pub async fn subscribe_closes(&mut self, filters: &[&str]) -> bool {
        match self.subscribe(filters).await {
            Ok(()) => false,
            Err(e) if e == TIMED_OUT => panic!("no SUBACK and no close for {filters:?}"),
            Err(_) => true,
        }
    }

    /// Subscribes at QoS 1 to all `filters` in one SUBSCRIBE and waits for the SUBACK.
    pub async fn subscribe(&mut self, filters: &[&str]) -> Result<(), String> {
        let filters = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce));
        self.client
            .subscribe_many(filters)
            .await
            .map_err(|e| e.to_string())?;
        self.wait_for(|p| matches!(p, Packet::SubAck(_)), Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// The next message received, or `None` after `timeout` or when the connection closed.
    pub async fn recv_publish(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        let p = if self.pending.is_empty() {
            self.wait_for(|p| matches!(p, Packet::Publish(_)), timeout)
                .await
                .ok()?
        } else {
            self.pending.remove(0)
        };
        match p {
            Packet::Publish(p) => Some((p.topic, p.payload.to_vec())),
            _ => None,
        }
    }

    /// Whether the broker closes the connection within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        self.wait_for(|_| false, timeout)
            .await
            .is_err_and(|e| e != TIMED_OUT)
    }

    /// Sends DISCONNECT and waits until the connection is gone.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = self.wait_for(|_| false, Duration::from_secs(5)).await;
    }
}

/// A rustls client configuration (ring provider, no process-wide provider needed)
/// trusting only the PEM certificates in `ca_pem`.
fn trusting(ca_pem: &[u8]) -> Result<rumqttc::TlsConfiguration, String> {
    use rumqttc::tokio_rustls::rustls;
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(
        config,
    )))
}

/// An embedded broker on an ephemeral loopback port over in-memory SQLite stores,
/// with one tenant to create devices in.
#[derive(Debug)]
pub struct TestBroker {
    /// The broker.
    pub broker: crate::EmbeddedBroker,
    /// Its metadata store.
    pub metadata: tp_core::MetadataStoreRef,
    /// Its time-series store.
    pub timeseries: tp_core::TimeSeriesStoreRef,
    /// The writer in front of `timeseries`.
    pub writer: tp_storage::writer::WriterHandle,
    /// The tenant devices are created in.
    pub tenant: tp_core::TenantId,
}

impl TestBroker {
    /// Starts with `configure` applied to a config listening on `127.0.0.1:0`.
    pub async fn start(configure: impl FnOnce(&mut crate::BrokerConfig)) -> Self {
        let timeseries = tp_storage::open_timeseries("sqlite::memory:")
            .await
            .expect("timeseries");
        Self::start_with(configure, timeseries, Default::default()).await
    }

    /// Like [`Self::start`], over the given time-series store and writer settings.
    pub async fn start_with(
        configure: impl FnOnce(&mut crate::BrokerConfig),
        timeseries: tp_core::TimeSeriesStoreRef,
        writer: tp_storage::writer::WriterConfig,
    ) -> Self {
        let metadata = tp_storage::open_metadata("sqlite::memory:")
            .await
            .expect("metadata");
        let cache = tp_storage::open_cache("memory://").await.expect("cache");
        let writer = tp_storage::writer::BatchWriter::spawn(timeseries.clone(), writer);
        let tenant = tp_core::Tenant {
            id: tp_core::TenantId::new(),
            name: "test".into(),
            created_at: tp_core::now_ms(),
        };
        metadata.create_tenant(&tenant).await.expect("tenant");
        let mut config = crate::BrokerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..Default::default()
        };
        configure(&mut config);
        let broker = crate::EmbeddedBroker::start(
            &config,
            crate::BrokerDeps {
                metadata: metadata.clone(),
                cache,
                writer: std::sync::Arc::new(writer.clone()),
            },
        )
        .await
        .expect("broker starts");
        Self {
            broker,
            metadata,
            timeseries,
            writer,
            tenant: tenant.id,
        }
    }

    /// Registers a device; returns it with its plaintext password.
    pub async fn create_device(&self) -> (tp_core::Device, String) {
        let (device, password) = tp_core::Device::new(self.tenant, "test device".into(), None);
        self.metadata.create_device(&device).await.expect("device");
        (device, password)
    }

    /// Values of telemetry `key` stored for `device`, oldest first (any time).
    pub async fn stored_points(&self, device: tp_core::DeviceId, key: &str) -> Vec<tp_core::Value> {
        self.timeseries
            .query(&tp_core::TsQuery {
                device_id: device,
                keys: vec![key.into()],
                start: 0,
                end: i64::MAX,
                aggregation: None,
                limit: None,
                order: tp_core::Order::Asc,
            })
            .await
            .expect("query")
            .into_iter()
            .map(|kv| kv.value)
            .collect()
    }

    /// Connects a device with its own credentials and client id `mqtt_<number>`.
    pub async fn connect(
        &self,
        device: &tp_core::Device,
        password: &str,
    ) -> Result<MqttTestClient, String> {
        MqttTestClient::connect(
            self.broker.local_addr(),
            &format!("mqtt_{}", device.device_number),
            &device.credentials.username,
            password,
        )
        .await
    }
}

struct HarnessSession {
    device: tp_core::Device,
    client: MqttTestClient,
}

#[async_trait::async_trait]
impl tp_core::testing::transport::DeviceSession for HarnessSession {
    fn device_id(&self) -> tp_core::DeviceId {
        self.device.id
    }

    fn device_number(&self) -> String {
        self.device.device_number.clone()
    }

    async fn recv(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        self.client.recv_publish(timeout).await
    }

    async fn disconnect(self: Box<Self>) {
        self.client.disconnect().await
    }
}

#[async_trait::async_trait]
impl tp_core::testing::transport::TransportHarness for TestBroker {
    fn transport(&self) -> tp_core::DeviceTransportRef {
        self.broker.transport()
    }

    async fn connect_device(&self) -> Box<dyn tp_core::testing::transport::DeviceSession> {
        let (device, password) = self.create_device().await;
        let mut client = self.connect(&device, &password).await.expect("connect");
        let n = &device.device_number;
        client
            .subscribe(&[
                &format!("devices/command/{n}/+"),
                &format!("devices/telemetry/control/{n}"),
            ])
            .await
            .expect("subscribe");
        Box::new(HarnessSession { device, client })
    }
}
