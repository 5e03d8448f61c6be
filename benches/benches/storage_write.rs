//! Batch write throughput (points/s) of the time-series stores: embedded SQLite (a
//! file in a temp dir, WAL) and PostgreSQL (a fresh schema, dropped afterwards;
//! skipped unless `TP_TEST_POSTGRES_URL` is set).
//!
//! ```text
//! TP_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo bench -p tp-benches --bench storage_write
//! ```
//!
//! Each iteration writes one batch of fresh points (100 devices x 10 keys, new
//! timestamps every time, so nothing is an overwrite) through `TimeSeriesStore::write`:
//! history plus latest values, in one transaction. A second group, `.../1k_devices`,
//! writes the batching writer's default 5 000-point batches over 1 000 devices x 10
//! keys (the ingest target: nearly every point of a batch is a distinct series).
//! PostgreSQL also runs `.../10k_series`: 10,000-point batches over 1,000 devices x
//! 10 keys (10,000 series, one point each per batch), and every PostgreSQL group
//! three times: `storage_write/postgres/..` (the default: binary `COPY` staging from
//! 2,000 points, `UNNEST` staging below), `storage_write/postgres_copy_always/..`
//! (`copy_min_rows=0`) and `storage_write/postgres_insert/..` (`write_method=insert`,
//! the previous `UNNEST` upsert path).
//! Criterion reports the throughput in elements/s = points/s.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tp_core::{DeviceId, TelemetryPoint, TimeSeriesStore, Value};

const BATCHES: [usize; 3] = [500, 2_000, 10_000];
/// The batching writer's default batch size, for the 1 000-device group.
const TARGET_BATCH: [usize; 1] = [5_000];

/// One batch: round-robin over devices and keys, timestamps after `*ts`.
fn batch(devices: &[DeviceId], n: usize, ts: &mut i64) -> Vec<TelemetryPoint> {
    *ts += 1_000_000;
    (0..n)
        .map(|i| TelemetryPoint {
            device_id: devices[i % devices.len()],
            key: format!("k{}", i / devices.len() % 10),
            ts: *ts + i as i64,
            value: Value::Float(i as f64 * 0.5),
        })
        .collect()
}

fn run(
    c: &mut Criterion,
    rt: &Runtime,
    group: &str,
    store: &dyn TimeSeriesStore,
    devices: usize,
    batches: &[usize],
) {
    let devices: Vec<DeviceId> = (0..devices).map(|_| DeviceId::new()).collect();
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    let mut ts = 1_700_000_000_000i64;
    for &n in batches {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_batched(
                || batch(&devices, n, &mut ts),
                |points| rt.block_on(store.write(&points)).unwrap(),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn sqlite(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let store = rt
        .block_on(tp_storage::sqlite::SqliteTimeSeriesStore::open(&path))
        .unwrap();
    run(c, &rt, "storage_write/sqlite", &store, 100, &BATCHES);
    run(
        c,
        &rt,
        "storage_write/sqlite/1k_devices",
        &store,
        1_000,
        &TARGET_BATCH,
    );
}

fn postgres(c: &mut Criterion) {
    let Ok(url) = std::env::var("TP_TEST_POSTGRES_URL") else {
        eprintln!("skipping the postgres benches: TP_TEST_POSTGRES_URL is not set");
        return;
    };
    let rt = Runtime::new().unwrap();
    // The default write path, COPY for every batch, and the previous path (UNNEST
    // upserts, `write_method=insert`) for comparison, each in a fresh schema.
    for (group, params) in [
        ("postgres", ""),
        ("postgres_copy_always", "&copy_min_rows=0"),
        ("postgres_insert", "&write_method=insert"),
    ] {
        let schema = format!("tp_bench_{}", uuid::Uuid::new_v4().simple());
        let sep = if url.contains('?') { '&' } else { '?' };
        let store = rt
            .block_on(tp_storage::postgres::PostgresTimeSeriesStore::connect(
                &format!("{url}{sep}schema={schema}{params}"),
            ))
            .unwrap();
        run(
            c,
            &rt,
            &format!("storage_write/{group}"),
            &store,
            100,
            &BATCHES,
        );
        // The issue's target shape: 10,000 series (1,000 devices x 10 keys),
        // 10,000-point batches, so every point of a batch is a distinct series.
        run(
            c,
            &rt,
            &format!("storage_write/{group}/10k_series"),
            &store,
            1_000,
            &[10_000],
        );
        let drop_schema = format!("DROP SCHEMA {schema} CASCADE");
        rt.block_on(sqlx::query(sqlx::AssertSqlSafe(drop_schema)).execute(store.pool()))
            .unwrap();
    }
}

criterion_group!(benches, sqlite, postgres);
criterion_main!(benches);
