//! Rough SQLite write throughput, printed rather than asserted (timings are not
//! test conditions). Run with
//! `cargo test -p tp-storage --release --test throughput -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use tp_core::{DeviceId, TelemetryPoint, TimeSeriesStore, Value};
use tp_storage::sqlite::SqliteTimeSeriesStore;
use tp_storage::writer::{BatchWriter, WriterConfig};

const DEVICES: usize = 100;
const KEYS: usize = 10;
const STEPS: i64 = 200; // 100 devices x 10 keys x 200 = 200 000 points

fn points(step: i64, devices: &[DeviceId]) -> Vec<TelemetryPoint> {
    let mut out = Vec::with_capacity(devices.len() * KEYS);
    for d in devices {
        for k in 0..KEYS {
            out.push(TelemetryPoint {
                device_id: *d,
                key: format!("key{k}"),
                ts: 1_700_000_000_000 + step * 1000,
                value: Value::Float(step as f64 * 0.5),
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn sqlite_write_throughput() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devices: Vec<DeviceId> = (0..DEVICES).map(|_| DeviceId::new()).collect();
    let total = DEVICES * KEYS * STEPS as usize;

    // Direct: 5 000-point batches straight into the store.
    let store = SqliteTimeSeriesStore::open(&dir.path().join("direct.db"))
        .await
        .expect("open");
    let started = Instant::now();
    for chunk in (0..STEPS).collect::<Vec<_>>().chunks(5) {
        let batch: Vec<TelemetryPoint> = chunk.iter().flat_map(|s| points(*s, &devices)).collect();
        store.write(&batch).await.expect("write");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "direct write: {total} points in {secs:.2}s = {:.0} points/s",
        total as f64 / secs
    );

    // Through the batching writer, one device message (10 points) per write() call.
    let store = Arc::new(
        SqliteTimeSeriesStore::open(&dir.path().join("writer.db"))
            .await
            .expect("open"),
    );
    let writer = BatchWriter::spawn(store.clone(), WriterConfig::default());
    let started = Instant::now();
    for step in 0..STEPS {
        for d in &devices {
            let msg: Vec<TelemetryPoint> = points(step, std::slice::from_ref(d));
            writer.write(msg).await.expect("write");
        }
    }
    writer.shutdown().await.expect("shutdown");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "batch writer (10-point messages): {total} points in {secs:.2}s = {:.0} points/s",
        total as f64 / secs
    );
    let latest = store.latest(devices[0], None).await.expect("latest");
    assert_eq!(latest.len(), KEYS);
}
