//! Online/offline over real sockets: per-profile heartbeat and online-timeout modes,
//! connections dropped without DISCONNECT, HTTP devices, the status history and the
//! status event stream.
//!
//! Windows are stepped over with a [`ManualClock`] instead of waited out; the tests
//! only wait (with generous deadlines) for the broker to get somewhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tp_broker::testing::MqttTestClient;
use tp_broker::{BrokerConfig, BrokerDeps, BrokerOptions, EmbeddedBroker, ManualClock};
use tp_core::{
    AccessStoreRef, Device, DeviceProfile, DeviceStatusEvent, MetadataStoreRef, StatusHistoryQuery,
    StatusReason, Tenant, TenantId, now_ms,
};

/// How long a test waits for the broker to reach a state before failing.
const DEADLINE: Duration = Duration::from_secs(30);

struct Node {
    broker: EmbeddedBroker,
    metadata: MetadataStoreRef,
    access: AccessStoreRef,
    clock: Arc<ManualClock>,
    tenant: TenantId,
    http_base: String,
    http: reqwest::Client,
}

/// A broker over in-memory SQLite with profiles, a manual clock and the HTTP device
/// API; devices without a profile window stay online `http_online_secs` after a message.
async fn start(http_online_secs: u32) -> Node {
    let (metadata, access) = tp_storage::open_access("sqlite::memory:").await.unwrap();
    let writer = std::sync::Arc::new(tp_storage::writer::BatchWriter::spawn(
        tp_storage::open_timeseries("sqlite::memory:")
            .await
            .unwrap(),
        Default::default(),
    ));
    let tenant = Tenant {
        id: TenantId::new(),
        name: "presence".into(),
        created_at: now_ms(),
    };
    metadata.create_tenant(&tenant).await.unwrap();
    let clock = ManualClock::new(tp_core::now_ms());
    let config = BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_online_secs,
        ..Default::default()
    };
    let broker = EmbeddedBroker::start_with(
        &config,
        BrokerDeps {
            metadata: metadata.clone(),
            cache: tp_storage::open_cache("memory://").await.unwrap(),
            writer,
        },
        BrokerOptions {
            profiles: Some(access.clone()),
            clock: Some(clock.clone()),
            observer: None,
            leases: None,
            replay_progress: None,
            ota: None,
            thing_models: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let app = tp_broker::http::device_router(&broker);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Node {
        broker,
        metadata,
        access,
        clock,
        tenant: tenant.id,
        http_base: format!("http://{addr}/api/v1/device"),
        http: reqwest::Client::new(),
    }
}

impl Node {
    /// A device, in a new profile with these windows when either is set.
    async fn device(
        &self,
        heartbeat: Option<u32>,
        online_timeout: Option<u32>,
    ) -> (Device, String) {
        let (mut device, password) = Device::new(self.tenant, "presence device".into(), None);
        if heartbeat.is_some() || online_timeout.is_some() {
            let profile = DeviceProfile {
                heartbeat_secs: heartbeat,
                online_timeout_secs: online_timeout,
                ..DeviceProfile::new(self.tenant, format!("profile-{}", device.device_number))
            };
            self.access.create_profile(&profile).await.unwrap();
            device.profile_id = Some(profile.id);
        }
        self.metadata.create_device(&device).await.unwrap();
        (device, password)
    }

    async fn connect(&self, device: &Device, password: &str) -> MqttTestClient {
        MqttTestClient::connect(
            self.broker.local_addr(),
            &format!("mqtt_{}", device.device_number),
            &device.credentials.username,
            password,
        )
        .await
        .unwrap()
    }

    /// The device's status history, oldest first.
    async fn history(&self, device: &Device) -> Vec<(bool, StatusReason)> {
        let mut page = self
            .metadata
            .list_status_history(self.tenant, device.id, &StatusHistoryQuery::default())
            .await
            .unwrap()
            .items;
        page.reverse();
        page.into_iter().map(|e| (e.online, e.reason)).collect()
    }

    /// Waits until the history has `n` transitions and returns it; the device row's
    /// `online` then agrees with the last one.
    async fn wait_history(&self, device: &Device, n: usize) -> Vec<(bool, StatusReason)> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let history = self.history(device).await;
            if history.len() >= n || tokio::time::Instant::now() >= deadline {
                let row = self
                    .metadata
                    .get_device_by_id(device.id)
                    .await
                    .unwrap()
                    .unwrap();
                if let Some((online, _)) = history.last() {
                    assert_eq!(row.online, *online, "device row disagrees with {history:?}");
                }
                return history;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Moves the presence clock past a window of `secs`.
    fn pass(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs + 1));
    }

    async fn post_telemetry(&self, device: &Device, password: &str) -> reqwest::StatusCode {
        self.http
            .post(format!("{}/telemetry", self.http_base))
            .basic_auth(&device.credentials.username, Some(password))
            .header("content-type", "application/json")
            .body(r#"{"t":1}"#)
            .send()
            .await
            .unwrap()
            .status()
    }
}

use StatusReason::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_mode_silence_is_offline_and_any_message_is_online() {
    let node = start(300).await;
    let (device, password) = node.device(Some(60), None).await;
    let mut client = node.connect(&device, &password).await;
    assert_eq!(node.wait_history(&device, 1).await, vec![(true, Connect)]);

    // Silent past the heartbeat window while still connected: offline.
    node.pass(60);
    assert_eq!(
        node.wait_history(&device, 2).await,
        vec![(true, Connect), (false, HeartbeatTimeout)]
    );

    // Any message brings it back.
    client
        .publish("devices/telemetry", r#"{"t":1}"#)
        .await
        .unwrap();
    assert_eq!(
        node.wait_history(&device, 3).await,
        vec![(true, Connect), (false, HeartbeatTimeout), (true, Activity)]
    );

    // Heartbeat mode ignores the connection: after a DISCONNECT the device is still
    // online until the window passes (a `Disconnect` row would show up below).
    client.disconnect().await;
    node.pass(60);
    assert_eq!(
        node.wait_history(&device, 4).await,
        vec![
            (true, Connect),
            (false, HeartbeatTimeout),
            (true, Activity),
            (false, HeartbeatTimeout)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_timeout_mode_honours_the_connection_and_silence() {
    let node = start(300).await;
    let mut events = node.broker.status_events();
    let (device, password) = node.device(None, Some(60)).await;
    let mut client = node.connect(&device, &password).await;
    assert_eq!(node.wait_history(&device, 1).await, vec![(true, Connect)]);

    // Connected but silent past the window: offline.
    node.pass(60);
    assert_eq!(
        node.wait_history(&device, 2).await,
        vec![(true, Connect), (false, OnlineTimeout)]
    );
    client
        .publish("devices/telemetry", r#"{"t":2}"#)
        .await
        .unwrap();
    assert_eq!(node.wait_history(&device, 3).await[2], (true, Activity));

    // DISCONNECT is offline at once.
    client.disconnect().await;
    let history = node.wait_history(&device, 4).await;
    assert_eq!(
        history,
        vec![
            (true, Connect),
            (false, OnlineTimeout),
            (true, Activity),
            (false, Disconnect)
        ]
    );

    // The rule engine's feed saw the same transitions, in order, after they were stored.
    let mut seen: Vec<DeviceStatusEvent> = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(DEADLINE, events.recv())
            .await
            .expect("status event")
            .expect("not lagged");
        if event.device_id == device.id {
            seen.push(event);
        }
    }
    let seen: Vec<_> = seen.into_iter().map(|e| (e.online, e.reason)).collect();
    assert_eq!(seen, history);
}

/// An MQTT 3.1.1 session over a bare socket, so the test controls how it ends.
async fn raw_connect(
    addr: SocketAddr,
    device: &Device,
    password: &str,
    keepalive: u16,
) -> TcpStream {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0xC2); // username, password, clean session
    body.extend_from_slice(&keepalive.to_be_bytes());
    string(&mut body, &format!("raw_{}", device.device_number));
    string(&mut body, &device.credentials.username);
    string(&mut body, password);
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_without_disconnect_are_offline() {
    let node = start(300).await;

    // The socket is reset (the process died): no DISCONNECT.
    let (device, password) = node.device(None, None).await;
    let stream = raw_connect(node.broker.local_addr(), &device, &password, 60).await;
    assert_eq!(node.wait_history(&device, 1).await, vec![(true, Connect)]);
    stream.set_zero_linger().unwrap();
    drop(stream);
    assert_eq!(
        node.wait_history(&device, 2).await,
        vec![(true, Connect), (false, ConnectionLost)]
    );

    // The device goes quiet with the socket open (power loss behind a NAT): the broker
    // closes it after 1.5 keepalive intervals.
    let (device, password) = node.device(None, Some(600)).await;
    let _silent = raw_connect(node.broker.local_addr(), &device, &password, 1).await;
    assert_eq!(
        node.wait_history(&device, 2).await,
        vec![(true, Connect), (false, ConnectionLost)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_devices_are_online_while_they_post() {
    let node = start(30).await;
    let (device, password) = node.device(None, None).await;
    assert_eq!(node.history(&device).await, vec![]);
    assert_eq!(
        node.post_telemetry(&device, &password).await,
        reqwest::StatusCode::ACCEPTED
    );
    assert_eq!(node.wait_history(&device, 1).await, vec![(true, Activity)]);

    // Posting again within the window changes nothing; silence past it is offline.
    node.clock.advance(Duration::from_secs(20));
    node.post_telemetry(&device, &password).await;
    node.clock.advance(Duration::from_secs(20));
    node.pass(30);
    assert_eq!(
        node.wait_history(&device, 2).await,
        vec![(true, Activity), (false, InactivityTimeout)]
    );
    node.post_telemetry(&device, &password).await;
    assert_eq!(
        node.wait_history(&device, 3).await,
        vec![
            (true, Activity),
            (false, InactivityTimeout),
            (true, Activity)
        ]
    );

    // A profile's heartbeat window applies to HTTP devices too; wrong credentials
    // are no sign of life.
    let (hb, hb_password) = node.device(Some(120), None).await;
    assert_eq!(
        node.post_telemetry(&hb, "wrong").await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    node.post_telemetry(&hb, &hb_password).await;
    assert_eq!(node.wait_history(&hb, 1).await, vec![(true, Activity)]);
    node.pass(120);
    assert_eq!(
        node.wait_history(&hb, 2).await,
        vec![(true, Activity), (false, HeartbeatTimeout)]
    );
}
