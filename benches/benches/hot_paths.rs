//! criterion benches of the ingest hot paths: payload decode, the topic ACL, and a
//! batch write into the embedded SQLite time-series store.
//!
//! `cargo bench -p tp-benches` (results in benches/RESULTS.md with the machine).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tp_core::protocol::{UplinkTopic, check_subscribe, decode_telemetry};
use tp_core::{DeviceId, TelemetryPoint, Value};

fn decode(c: &mut Criterion) {
    let flat = serde_json::to_vec(&serde_json::json!({
        "k0": 1.5, "k1": 2, "k2": true, "k3": "on", "k4": 4.25,
        "k5": 5, "k6": 6.5, "k7": false, "k8": 8, "k9": 9.75
    }))
    .unwrap();
    let stamped: Vec<serde_json::Value> = (0..10)
        .map(|i| serde_json::json!({"ts": 1_700_000_000_000i64 + i, "values": {"temp": i as f64 * 0.5}}))
        .collect();
    let stamped = serde_json::to_vec(&stamped).unwrap();
    let mut g = c.benchmark_group("decode_telemetry");
    g.throughput(Throughput::Elements(10));
    g.bench_function("flat_10_points", |b| {
        b.iter(|| decode_telemetry(&flat, 0).unwrap())
    });
    g.bench_function("ts_array_10_points", |b| {
        b.iter(|| decode_telemetry(&stamped, 0).unwrap())
    });
    g.finish();
}

fn acl(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic_acl");
    g.bench_function("publish_uplink_parse", |b| {
        b.iter(|| UplinkTopic::parse("devices/attributes/set/response/abc123").unwrap())
    });
    g.bench_function("subscribe_own_command", |b| {
        b.iter(|| check_subscribe("devices/command/dev-000123/+", "dev-000123").unwrap())
    });
    g.bench_function("subscribe_denied", |b| {
        b.iter(|| check_subscribe("devices/command/other/+", "dev-000123").unwrap_err())
    });
    g.finish();
}

fn batch_write(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = rt.block_on(tp_storage::open_timeseries(&url)).unwrap();
    let devices: Vec<DeviceId> = (0..100).map(|_| DeviceId::new()).collect();
    let mut g = c.benchmark_group("sqlite_batch_write");
    g.sample_size(10);
    for batch in [1_000usize, 5_000] {
        g.throughput(Throughput::Elements(batch as u64));
        let mut ts = 0i64;
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                ts += 1;
                let points: Vec<TelemetryPoint> = (0..batch)
                    .map(|i| TelemetryPoint {
                        device_id: devices[i % devices.len()],
                        key: format!("k{}", i / devices.len() % 10),
                        ts: ts * 1_000_000 + i as i64,
                        value: Value::Float(i as f64),
                    })
                    .collect();
                rt.block_on(store.write(&points)).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, acl, batch_write);
criterion_main!(benches);
