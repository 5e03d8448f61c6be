//! The write-ahead log: a node killed after acknowledging QoS 1 publishes that its
//! store had not committed stores them, exactly once, when it starts again.
//!
//! The "crash" drops the first node's whole Tokio runtime while its time-series store
//! is blocked: nothing is drained or flushed, as with SIGKILL (the log's bytes are in
//! the page cache, which a killed process does not lose).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tp_broker::testing::MqttTestClient;
use tp_broker::{BrokerConfig, BrokerDeps, EmbeddedBroker};
use tp_core::testing::eventually;
use tp_core::{
    Device, DeviceEvent, KeyValue, MetadataStoreRef, Order, TimeSeriesStoreRef, TsQuery, Value,
};
use tp_storage::writer::{BatchWriter, WriterConfig};

/// A time-series store whose point writes never complete (a store that hangs), so
/// everything acknowledged after the first point write stays uncommitted. Events
/// pass through.
#[derive(Debug)]
struct HungStore {
    inner: TimeSeriesStoreRef,
    never: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl tp_core::TimeSeriesStore for HungStore {
    fn backend(&self) -> &'static str {
        "hung"
    }
    async fn healthcheck(&self) -> tp_core::Result<()> {
        Ok(())
    }
    async fn write(&self, _: &[tp_core::TelemetryPoint]) -> tp_core::Result<()> {
        let _never = self.never.acquire().await;
        Err(tp_core::Error::backend("hung", "closed"))
    }
    async fn latest(
        &self,
        d: tp_core::DeviceId,
        k: Option<&[String]>,
    ) -> tp_core::Result<Vec<KeyValue>> {
        self.inner.latest(d, k).await
    }
    async fn query(&self, q: &TsQuery) -> tp_core::Result<Vec<KeyValue>> {
        self.inner.query(q).await
    }
    async fn delete_range(
        &self,
        d: tp_core::DeviceId,
        k: Option<&[String]>,
        s: i64,
        e: i64,
    ) -> tp_core::Result<u64> {
        self.inner.delete_range(d, k, s, e).await
    }
    async fn write_events(&self, e: &[DeviceEvent]) -> tp_core::Result<()> {
        self.inner.write_events(e).await
    }
    async fn query_events(
        &self,
        d: tp_core::DeviceId,
        s: i64,
        e: i64,
        l: u64,
        o: Order,
    ) -> tp_core::Result<Vec<DeviceEvent>> {
        self.inner.query_events(d, s, e, l, o).await
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

struct Stores {
    metadata: MetadataStoreRef,
    timeseries: TimeSeriesStoreRef,
}

/// The node's stores are SQLite files in `dir`, so they outlive a runtime.
async fn stores(dir: &Path) -> Stores {
    let url = |f: &str| format!("sqlite://{}", dir.join(f).display());
    Stores {
        metadata: tp_storage::open_metadata(&url("metadata.db"))
            .await
            .expect("metadata"),
        timeseries: tp_storage::open_timeseries(&url("timeseries.db"))
            .await
            .expect("timeseries"),
    }
}

async fn start(
    wal_dir: &Path,
    metadata: MetadataStoreRef,
    timeseries: TimeSeriesStoreRef,
) -> EmbeddedBroker {
    let mut config = BrokerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    config.wal.dir = Some(wal_dir.to_owned());
    // One segment for the whole test, so nothing is collected behind its back.
    config.wal.rotate_interval_ms = 3_600_000;
    EmbeddedBroker::start(
        &config,
        BrokerDeps {
            metadata,
            cache: tp_storage::open_cache("memory://").await.expect("cache"),
            writer: std::sync::Arc::new(BatchWriter::spawn(timeseries, WriterConfig::default())),
        },
    )
    .await
    .expect("broker starts")
}

/// A device (with its password) in a tenant of its own.
async fn device_of_a_new_tenant(metadata: &MetadataStoreRef) -> (Device, String) {
    let tenant = tp_core::Tenant {
        id: tp_core::TenantId::new(),
        name: "t".into(),
        created_at: tp_core::now_ms(),
    };
    metadata.create_tenant(&tenant).await.expect("tenant");
    let (device, password) = Device::new(tenant.id, "d".into(), None);
    metadata.create_device(&device).await.expect("device");
    (device, password)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

async fn points(ts: &TimeSeriesStoreRef, device: &Device) -> Vec<KeyValue> {
    ts.query(&TsQuery {
        device_id: device.id,
        keys: vec![],
        start: 0,
        end: i64::MAX,
        aggregation: None,
        limit: None,
        order: Order::Asc,
    })
    .await
    .expect("query")
}

async fn events(ts: &TimeSeriesStoreRef, device: &Device) -> Vec<DeviceEvent> {
    ts.query_events(device.id, 0, i64::MAX, 1000, Order::Asc)
        .await
        .expect("events")
}

const SERVER_STAMPED: i64 = 10;
const DEVICE_STAMPED: i64 = 5;

#[test]
fn acknowledged_but_uncommitted_messages_are_stored_exactly_once_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_dir = dir.path().join("wal");

    // Node 1: acknowledges everything, commits the event and the attribute, then its
    // store hangs on the telemetry; the node dies without draining.
    let node1 = runtime();
    let (device, event_ts) = node1.block_on(async {
        let s = stores(dir.path()).await;
        let (device, password) = device_of_a_new_tenant(&s.metadata).await;
        let hung: TimeSeriesStoreRef = Arc::new(HungStore {
            inner: s.timeseries.clone(),
            never: tokio::sync::Semaphore::new(0),
        });
        let broker = start(&wal_dir, s.metadata.clone(), hung).await;
        let mut client = MqttTestClient::connect(
            broker.local_addr(),
            "mqtt_crash",
            &device.credentials.username,
            &password,
        )
        .await
        .expect("connect");

        // committed before the crash and still in the log: replay must not repeat it
        client
            .publish("devices/event/e1", r#"{"method":"alarm","params":{"x":1}}"#)
            .await
            .expect("event acknowledged");
        let ts = s.timeseries.clone();
        eventually("the event is committed", || {
            let (ts, device) = (ts.clone(), device.clone());
            async move { events(&ts, &device).await.len() == 1 }
        })
        .await;
        client
            .publish("devices/attributes/a1", r#"{"fw":"1.0"}"#)
            .await
            .expect("attribute acknowledged");
        // acknowledged, never committed (the store hangs); one key per message, as
        // two messages received in the same millisecond share a server timestamp
        for i in 0..SERVER_STAMPED {
            client
                .publish("devices/telemetry", format!(r#"{{"server{i:02}":{i}}}"#))
                .await
                .expect("telemetry acknowledged");
        }
        for i in 0..DEVICE_STAMPED {
            client
                .publish(
                    "devices/telemetry",
                    format!(r#"{{"ts":{},"values":{{"device":{i}}}}}"#, 1_000 + i),
                )
                .await
                .expect("telemetry acknowledged");
        }
        let event_ts = events(&s.timeseries, &device).await[0].ts;
        assert!(
            points(&s.timeseries, &device).await.is_empty(),
            "nothing of the telemetry is committed before the crash"
        );
        // No drain, no flush: dropping the handles stops nothing (the tasks run on
        // until the runtime goes).
        drop((client, broker));
        (device, event_ts)
    });
    // The crash: every task of node 1 is dropped where it stands.
    node1.shutdown_background();

    // What the log holds: the receive times the replay must reuse.
    let logged: Vec<tp_broker::wal::Record> = segments(&wal_dir)
        .iter()
        .flat_map(|p| {
            tp_broker::wal::decode_records(&Bytes::from(std::fs::read(p).expect("segment"))).records
        })
        .collect();
    assert_eq!(
        logged.len() as i64,
        2 + SERVER_STAMPED + DEVICE_STAMPED,
        "every acknowledged publish is logged"
    );
    let mut server_ts: Vec<i64> = logged
        .iter()
        .filter(|r| r.topic == "devices/telemetry" && r.payload.starts_with(b"{\"server"))
        .map(|r| r.ts)
        .collect();
    server_ts.sort_unstable();
    let attribute_ts = logged
        .iter()
        .find(|r| r.topic == "devices/attributes/a1")
        .expect("attribute logged")
        .ts;
    let saved: Vec<(PathBuf, Vec<u8>)> = segments(&wal_dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("segment");
            (p, bytes)
        })
        .collect();

    let server_ts = &server_ts;
    let check = |ts: TimeSeriesStoreRef, metadata: MetadataStoreRef, device: Device| async move {
        let stored = points(&ts, &device).await;
        assert_eq!(
            stored.len() as i64,
            SERVER_STAMPED + DEVICE_STAMPED,
            "every acknowledged point exactly once: {stored:?}"
        );
        let mut got_server: Vec<i64> = stored
            .iter()
            .filter(|kv| kv.key.starts_with("server"))
            .map(|kv| kv.ts)
            .collect();
        got_server.sort_unstable();
        assert_eq!(&got_server, server_ts, "stamped with the receive time");
        let mut values: Vec<(String, Value)> = stored
            .iter()
            .filter(|kv| kv.key.starts_with("server"))
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<(String, Value)> = (0..SERVER_STAMPED)
            .map(|i| (format!("server{i:02}"), Value::Integer(i)))
            .collect();
        assert_eq!(values, want);
        let device_ts: Vec<i64> = stored
            .iter()
            .filter(|kv| kv.key == "device")
            .map(|kv| kv.ts)
            .collect();
        assert_eq!(
            device_ts,
            (0..DEVICE_STAMPED).map(|i| 1_000 + i).collect::<Vec<_>>()
        );
        let evs = events(&ts, &device).await;
        assert_eq!(evs.len(), 1, "the committed event is not repeated: {evs:?}");
        assert_eq!(
            (
                evs[0].ts,
                evs[0].message_id.as_str(),
                evs[0].method.as_str()
            ),
            (event_ts, "e1", "alarm")
        );
        let attrs = metadata
            .get_attributes(device.id, None)
            .await
            .expect("attributes");
        assert_eq!(attrs.len(), 1);
        assert_eq!((attrs[0].key.as_str(), attrs[0].ts), ("fw", attribute_ts));
    };

    // Node 2 on the same log and stores, with a working store: replays at start.
    let node2 = runtime();
    node2.block_on(async {
        let s = stores(dir.path()).await;
        let broker = start(&wal_dir, s.metadata.clone(), s.timeseries.clone()).await;
        check(s.timeseries.clone(), s.metadata.clone(), device.clone()).await;
        let report = broker.drain(Duration::from_secs(10)).await.expect("drain");
        assert_eq!(report.accepted, report.consumed);
        assert!(
            segments(&wal_dir).is_empty(),
            "replayed and drained: no segment left"
        );
    });
    node2.shutdown_background();

    // Replaying the same log again (a crash right after the replay committed, before
    // the segments were deleted) changes nothing.
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).expect("restore segment");
    }
    let node3 = runtime();
    node3.block_on(async {
        let s = stores(dir.path()).await;
        let broker = start(&wal_dir, s.metadata.clone(), s.timeseries.clone()).await;
        check(s.timeseries.clone(), s.metadata.clone(), device.clone()).await;
        broker.drain(Duration::from_secs(10)).await.expect("drain");
    });
    node3.shutdown_background();
}

#[test]
fn a_torn_tail_is_ignored_and_the_records_before_it_are_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_dir = dir.path().join("wal");
    std::fs::create_dir_all(&wal_dir).expect("wal dir");
    let rt = runtime();
    rt.block_on(async {
        let s = stores(dir.path()).await;
        let tenant = tp_core::Tenant {
            id: tp_core::TenantId::new(),
            name: "t".into(),
            created_at: tp_core::now_ms(),
        };
        s.metadata.create_tenant(&tenant).await.expect("tenant");
        let (device, _) = Device::new(tenant.id, "d".into(), None);
        s.metadata.create_device(&device).await.expect("device");
        // what a node killed in the middle of a write leaves
        let mut segment = Vec::new();
        for i in 0..3 {
            segment.extend(tp_broker::wal::encode_record(
                device.id,
                5_000 + i,
                "devices/telemetry",
                format!(r#"{{"v":{i}}}"#).as_bytes(),
            ));
        }
        let torn =
            tp_broker::wal::encode_record(device.id, 6_000, "devices/telemetry", br#"{"v":9}"#);
        segment.extend(&torn[..torn.len() - 3]);
        std::fs::write(wal_dir.join(format!("{:020}.wal", 7)), segment).expect("segment");

        let broker = start(&wal_dir, s.metadata.clone(), s.timeseries.clone()).await;
        let stored = points(&s.timeseries, &device).await;
        assert_eq!(
            stored.iter().map(|kv| kv.ts).collect::<Vec<_>>(),
            vec![5_000, 5_001, 5_002]
        );
        assert!(
            !wal_dir.join(format!("{:020}.wal", 7)).exists(),
            "a replayed segment is deleted"
        );
        broker.drain(Duration::from_secs(10)).await.expect("drain");
    });
    rt.shutdown_background();
}

/// Makes `path` immutable (`chattr +i`) for as long as the guard lives: even root
/// cannot write to it then, so the log's next append fails as on a full or broken
/// disk. `None` where the file system or the container does not allow it.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(paths: Vec<PathBuf>) -> Option<Self> {
        let mut guard = Immutable(Vec::new());
        for p in paths {
            let ok = std::process::Command::new("chattr")
                .arg("+i")
                .arg(&p)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return None;
            }
            guard.0.push(p);
        }
        Some(guard)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(p)
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_log_cannot_take_is_not_acknowledged_and_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_dir = dir.path().join("wal");
    let s = stores(dir.path()).await;
    let (device, password) = device_of_a_new_tenant(&s.metadata).await;
    let broker = start(&wal_dir, s.metadata.clone(), s.timeseries.clone()).await;
    let addr = broker.local_addr();
    let mut c = MqttTestClient::connect(addr, "wal-1", &device.credentials.username, &password)
        .await
        .expect("connect");
    c.publish("devices/telemetry", r#"{"before":1}"#)
        .await
        .expect("acknowledged while the log works");
    let mut files = segments(&wal_dir);
    files.push(wal_dir.clone());
    // Needs CAP_LINUX_IMMUTABLE (root), not a service: skipped without it.
    let Some(_unwritable) = Immutable::set(files) else {
        eprintln!("skipping: cannot make the log unwritable (chattr +i needs root)");
        return;
    };
    // Not acknowledged: the connection is closed instead (the device keeps the
    // message and resends it), counted, and nothing of it is stored.
    assert!(
        c.publish_closes("devices/telemetry", r#"{"after":2}"#)
            .await
    );
    assert_eq!(broker.stats().wal_errors, 1);
    eventually("the first message stored", || async {
        points(&s.timeseries, &device).await.len() == 1
    })
    .await;
    drop(_unwritable);
    // Once the log can be written again, the device's resend is acknowledged.
    let mut c = MqttTestClient::connect(addr, "wal-1", &device.credentials.username, &password)
        .await
        .expect("reconnect");
    c.publish("devices/telemetry", r#"{"after":2}"#)
        .await
        .expect("acknowledged again");
    eventually("the resend stored", || async {
        points(&s.timeseries, &device)
            .await
            .iter()
            .any(|kv| kv.key == "after")
    })
    .await;
}
