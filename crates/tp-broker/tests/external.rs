//! The `tp-storage` consumer against a real external broker: a private Mosquitto
//! (shared subscriptions) on a free loopback port, fed by a rumqttc publisher.
//!
//! Skipped when no `mosquitto` binary is installed, unless `TP_REQUIRE_SERVICES` is
//! set (then its absence fails the test). `scripts/test.sh` installs it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::io::{AsyncBufReadExt, BufReader};
use tp_broker::external::{ConsumerDeps, ConsumerStats, ExternalConfig, ExternalConsumer};
use tp_core::{
    Device, DeviceEvent, DeviceId, KeyValue, MetadataStoreRef, Order, TelemetryPoint, TenantId,
    TimeSeriesStore, TimeSeriesStoreRef, Timestamp, TsQuery, Value,
};
use tp_storage::writer::{BatchWriter, WriterConfig};

/// Upper bound on waiting for an outcome (not a timing assertion: tests wait
/// for the outcome and fail only if it never comes).
const PATIENCE: Duration = Duration::from_secs(60);

fn mosquitto_binary() -> Option<PathBuf> {
    let candidates = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"];
    let found = candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("mosquitto"))
                    .find(|p| p.exists())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var_os("TP_REQUIRE_SERVICES").is_none(),
            "TP_REQUIRE_SERVICES is set but no mosquitto binary was found"
        );
        eprintln!("skipping: mosquitto is not installed");
    }
    found
}

/// A private Mosquitto on a free loopback port, killed on drop.
struct Mosquitto {
    port: u16,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// Ports tried before giving up on starting a broker.
const START_ATTEMPTS: usize = 5;

impl Mosquitto {
    async fn start() -> Option<Self> {
        let binary = mosquitto_binary()?;
        // The port is found free, released, then bound by mosquitto: under load
        // something else can take it in between, so a failed start is retried on
        // another port.
        for _ in 0..START_ATTEMPTS {
            if let Some(broker) = Self::try_start(&binary).await {
                return Some(broker);
            }
        }
        panic!("mosquitto did not start on any of {START_ATTEMPTS} free ports");
    }

    /// Mosquitto on a port that was free a moment ago, or `None` if it does not
    /// get to run on it.
    async fn try_start(binary: &Path) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = tp_core::testing::free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 100000\nlog_dest stderr\nlog_type error\n\
                 log_type information\n"
            ),
        )
        .unwrap();
        let mut child = tokio::process::Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Mosquitto logs "... running" once its listener is bound, and exits
        // ("Address already in use") if the bind fails. Connecting to the port would
        // not tell: whoever took the port may be listening on it.
        let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
        let running = tokio::time::timeout(PATIENCE, async {
            while let Ok(Some(line)) = log.next_line().await {
                eprintln!("mosquitto: {line}");
                if line.ends_with(" running") {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !running {
            eprintln!("mosquitto did not start on port {port}, trying another");
            return None;
        }
        tokio::spawn(async move {
            while let Ok(Some(line)) = log.next_line().await {
                eprintln!("mosquitto: {line}");
            }
        });
        Some(Self {
            port,
            _child: child,
            _dir: dir,
        })
    }

    fn config(&self, client_id: &str) -> ExternalConfig {
        ExternalConfig {
            broker: format!("mqtt://127.0.0.1:{}", self.port),
            client_id: client_id.to_owned(),
            share_group: "tp-test".to_owned(),
            ..Default::default()
        }
    }
}

struct Stores {
    metadata: MetadataStoreRef,
    timeseries: TimeSeriesStoreRef,
    tenant: TenantId,
}

async fn stores() -> Stores {
    let metadata = tp_storage::open_metadata("sqlite::memory:").await.unwrap();
    let timeseries = tp_storage::open_timeseries("sqlite::memory:")
        .await
        .unwrap();
    let tenant = tp_core::Tenant {
        id: TenantId::new(),
        name: "ext".into(),
        created_at: tp_core::now_ms(),
    };
    metadata.create_tenant(&tenant).await.unwrap();
    Stores {
        metadata,
        timeseries,
        tenant: tenant.id,
    }
}

impl Stores {
    async fn device(&self, number: &str) -> Device {
        let (device, _) = Device::new(self.tenant, number.into(), Some(number.into()));
        self.metadata.create_device(&device).await.unwrap();
        device
    }

    /// A consumer with its own batch writer over `store` (one tp-storage process).
    fn consumer(&self, config: &ExternalConfig, store: TimeSeriesStoreRef) -> ExternalConsumer {
        let writer = BatchWriter::spawn(
            store,
            WriterConfig {
                max_retries: 0,
                ..Default::default()
            },
        );
        ExternalConsumer::start(
            config,
            ConsumerDeps {
                metadata: self.metadata.clone(),
                writer: std::sync::Arc::new(writer),
            },
        )
        .unwrap()
    }

    async fn seqs(&self, device: DeviceId) -> Vec<i64> {
        let rows = self
            .timeseries
            .query(&TsQuery {
                device_id: device,
                keys: vec!["seq".into()],
                start: 0,
                end: i64::MAX,
                aggregation: None,
                limit: None,
                order: Order::Asc,
            })
            .await
            .unwrap();
        rows.iter()
            .map(|kv| match kv.value {
                Value::Integer(i) => i,
                ref other => panic!("unexpected value {other:?}"),
            })
            .collect()
    }
}

/// Publishes every `(topic, payload)` with QoS 1 and returns once all are acknowledged.
async fn publish_all(port: u16, messages: Vec<(String, Vec<u8>)>) {
    let mut opts = MqttOptions::new("publisher", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, messages.len() + 10);
    let total = messages.len();
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    let pump = async {
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher connection failed: {e}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, pump)
        .await
        .expect("broker acknowledged every publish");
    let client = sender.await.unwrap();
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !matches!(
            eventloop.poll().await,
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
        ) {}
    })
    .await;
}

async fn wait_for(consumers: &[&ExternalConsumer], done: impl Fn(&[ConsumerStats]) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats: Vec<ConsumerStats> = consumers.iter().map(|c| c.stats()).collect();
        if done(&stats) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumers never got there: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn telemetry(device: &Device, i: i64) -> (String, Vec<u8>) {
    (
        tp_broker::hooks::ingest_topic(device.id, "devices/telemetry"),
        format!(
            r#"{{"ts":{},"values":{{"seq":{i}}}}}"#,
            1_700_000_000_000 + i
        )
        .into_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_in_a_share_group_store_each_message_once() {
    let Some(broker) = Mosquitto::start().await else {
        return;
    };
    let stores = stores().await;
    let device = stores.device("ext-1").await;
    let a = stores.consumer(&broker.config("tp-storage-a"), stores.timeseries.clone());
    let b = stores.consumer(&broker.config("tp-storage-b"), stores.timeseries.clone());
    a.subscribed().await;
    b.subscribed().await;

    const N: i64 = 300;
    publish_all(broker.port, (0..N).map(|i| telemetry(&device, i)).collect()).await;
    wait_for(&[&a, &b], |s| s[0].committed + s[1].committed >= N as u64).await;

    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        sa.committed + sb.committed,
        N as u64,
        "every message stored once across the group: {sa:?} {sb:?}"
    );
    assert_eq!(sa.received + sb.received, N as u64, "no redelivery");
    assert!(
        sa.committed > 0 && sb.committed > 0,
        "the share group split the stream: {sa:?} {sb:?}"
    );
    assert_eq!(
        (
            sa.rejected,
            sb.rejected,
            sa.failed_commits,
            sb.failed_commits
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(stores.seqs(device.id).await, (0..N).collect::<Vec<_>>());

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidentifiable_messages_are_dropped_and_wrapped_thingspanel_payloads_stored() {
    let Some(broker) = Mosquitto::start().await else {
        return;
    };
    let stores = stores().await;
    let device = stores.device("ext-2").await;
    let config = ExternalConfig {
        thingspanel_wrapped: true,
        ..broker.config("tp-storage-w")
    };
    let consumer = stores.consumer(&config, stores.timeseries.clone());
    consumer.subscribed().await;

    use base64::Engine;
    let wrapped_values = base64::engine::general_purpose::STANDARD.encode(br#"{"seq":7}"#);
    publish_all(
        broker.port,
        vec![
            // Unknown device, malformed payload, not an uplink topic, raw device
            // telemetry without ThingsPanel's wrapper: nothing to store, ever.
            telemetry(&Device::new(stores.tenant, "ghost".into(), None).0, 1),
            (
                tp_broker::hooks::ingest_topic(device.id, "devices/telemetry"),
                b"{not json".to_vec(),
            ),
            (
                tp_broker::hooks::ingest_topic(device.id, "devices/command/ext-2/m1"),
                b"{}".to_vec(),
            ),
            ("devices/telemetry".to_owned(), br#"{"seq":1}"#.to_vec()),
            // ThingsPanel's broker-wrapped form.
            (
                "devices/telemetry".to_owned(),
                format!(
                    r#"{{"device_id":"{}","values":"{wrapped_values}"}}"#,
                    device.id.0
                )
                .into_bytes(),
            ),
            // An attribute report through the ingest topic.
            (
                tp_broker::hooks::ingest_topic(device.id, "devices/attributes/m1"),
                br#"{"fw":"1.2"}"#.to_vec(),
            ),
        ],
    )
    .await;
    wait_for(&[&consumer], |s| s[0].committed + s[0].rejected >= 6).await;
    let stats = consumer.stats();
    assert_eq!((stats.committed, stats.rejected), (2, 4), "{stats:?}");
    assert_eq!(stores.seqs(device.id).await, vec![7]);
    let attrs = stores
        .metadata
        .get_attributes(device.id, None)
        .await
        .unwrap();
    assert_eq!(
        attrs
            .iter()
            .map(|a| (a.key.as_str(), &a.value))
            .collect::<Vec<_>>(),
        vec![("fw", &Value::String("1.2".into()))]
    );
    consumer.shutdown().await;
}

/// A time-series store that fails every write while `failing` is set.
#[derive(Debug)]
struct Flaky {
    inner: TimeSeriesStoreRef,
    failing: AtomicBool,
}

impl Flaky {
    fn check(&self) -> tp_core::Result<()> {
        if self.failing.load(Ordering::Acquire) {
            return Err(tp_core::Error::Unavailable {
                backend: "flaky",
                source: "injected failure".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl TimeSeriesStore for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn healthcheck(&self) -> tp_core::Result<()> {
        self.check()
    }
    async fn write(&self, points: &[TelemetryPoint]) -> tp_core::Result<()> {
        self.check()?;
        self.inner.write(points).await
    }
    async fn latest(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
    ) -> tp_core::Result<Vec<KeyValue>> {
        self.inner.latest(device, keys).await
    }
    async fn query(&self, query: &TsQuery) -> tp_core::Result<Vec<KeyValue>> {
        self.inner.query(query).await
    }
    async fn delete_range(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
        start: Timestamp,
        end: Timestamp,
    ) -> tp_core::Result<u64> {
        self.inner.delete_range(device, keys, start, end).await
    }
    async fn write_events(&self, events: &[DeviceEvent]) -> tp_core::Result<()> {
        self.check()?;
        self.inner.write_events(events).await
    }
    async fn query_events(
        &self,
        device: DeviceId,
        start: Timestamp,
        end: Timestamp,
        limit: u64,
        order: Order,
    ) -> tp_core::Result<Vec<DeviceEvent>> {
        self.inner
            .query_events(device, start, end, limit, order)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_acknowledged_only_after_the_store_commits() {
    let Some(broker) = Mosquitto::start().await else {
        return;
    };
    let stores = stores().await;
    let device = stores.device("ext-3").await;
    let flaky = Arc::new(Flaky {
        inner: stores.timeseries.clone(),
        failing: AtomicBool::new(true),
    });
    let consumer = stores.consumer(&broker.config("tp-storage-f"), flaky.clone());
    consumer.subscribed().await;

    const N: i64 = 20;
    publish_all(broker.port, (0..N).map(|i| telemetry(&device, i)).collect()).await;
    // The store refuses: nothing is acknowledged, the consumer reconnects and the
    // broker delivers the messages again.
    wait_for(&[&consumer], |s| s[0].failed_commits >= 2).await;
    assert_eq!(consumer.stats().committed, 0);
    assert!(stores.seqs(device.id).await.is_empty());

    flaky.failing.store(false, Ordering::Release);
    wait_for(&[&consumer], |s| s[0].committed >= N as u64).await;
    assert_eq!(stores.seqs(device.id).await, (0..N).collect::<Vec<_>>());
    let stats = consumer.stats();
    assert!(
        stats.received > N as u64,
        "the failed messages were delivered again: {stats:?}"
    );
    consumer.shutdown().await;
}
