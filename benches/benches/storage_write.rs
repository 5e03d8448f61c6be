//! Batch write throughput (points/s) of the time-series stores: the embedded fjall
//! engine (a directory in a temp dir, journal flushed to the OS per write, as the node
//! runs it), embedded SQLite (a file in a temp dir, WAL) and PostgreSQL (a fresh
//! schema, dropped afterwards; skipped unless `TP_TEST_POSTGRES_URL` is set).
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
//! four times: `storage_write/postgres/..` (the default: binary `COPY` staging from
//! 2,000 points, `UNNEST` staging below, batches of 4,000 points or more split by
//! device over 2 connections), `storage_write/postgres_one_connection/..`
//! (`write_connections=1`), `storage_write/postgres_copy_always/..`
//! (`copy_min_rows=0`) and `storage_write/postgres_insert/..` (`write_method=insert`,
//! the previous `UNNEST` upsert path).
//! Criterion reports the throughput in elements/s = points/s. The `.../10k_series`
//! groups write 10,000-point batches over 10,000 series (1,000 devices x 10 keys, one
//! point per series per batch), the issue-19 target.
//!
//! `TP_BENCH_BYTES_PER_POINT=1` also writes the same 1,000,000 float points (10,000
//! series x 100 samples at 1 s, sensor-like values with two decimals) into a fresh
//! store of each embedded engine, compacts it (fjall: flush + major compaction; SQLite:
//! checkpoint + VACUUM) and prints the bytes on disk per point; with `TP_TEST_POSTGRES_URL`
//! also PostgreSQL's (a fresh schema, `VACUUM FULL`, tables with indexes and TOAST):
//!
//! ```text
//! TP_BENCH_BYTES_PER_POINT=1 cargo bench -p tp-benches --bench storage_write -- 10k_series
//! ```

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tp_core::{DeviceId, TelemetryPoint, TimeSeriesStore, Value};

const BATCHES: [usize; 3] = [500, 2_000, 10_000];
/// The batching writer's default batch size, for the 1 000-device group.
const TARGET_BATCH: [usize; 1] = [5_000];
/// The issue-19 target: 10,000-point batches over 10,000 series.
const BIG_BATCH: [usize; 1] = [10_000];

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
    run(
        c,
        &rt,
        "storage_write/sqlite/10k_series",
        &store,
        1_000,
        &BIG_BATCH,
    );
}

fn fjall(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(tp_storage::fjall::FjallTimeSeriesStore::open(
            &dir.path().join("ts"),
            tp_storage::fjall::FjallOptions::default(),
        ))
        .unwrap();
    run(c, &rt, "storage_write/fjall", &store, 100, &BATCHES);
    run(
        c,
        &rt,
        "storage_write/fjall/1k_devices",
        &store,
        1_000,
        &TARGET_BATCH,
    );
    run(
        c,
        &rt,
        "storage_write/fjall/10k_series",
        &store,
        1_000,
        &BIG_BATCH,
    );
}

/// 1,000,000 float points: 10,000 series x 100 samples 1 s apart, values like a
/// sensor's (a slow walk around 20 with two decimals), in 100 batches of one sample
/// per series.
fn sensor_batches() -> Vec<Vec<TelemetryPoint>> {
    let devices: Vec<DeviceId> = (0..1_000).map(|_| DeviceId::new()).collect();
    let mut state: Vec<f64> = vec![20.0; 10_000];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    (0..100i64)
        .map(|step| {
            (0..10_000usize)
                .map(|s| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let delta = (seed % 21) as f64 / 100.0 - 0.10;
                    state[s] = ((state[s] + delta) * 100.0).round() / 100.0;
                    TelemetryPoint {
                        device_id: devices[s % 1_000],
                        key: format!("k{}", s / 1_000),
                        ts: 1_700_000_000_000 + step * 1_000,
                        value: Value::Float(state[s]),
                    }
                })
                .collect()
        })
        .collect()
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn bytes_per_point(_c: &mut Criterion) {
    if std::env::var_os("TP_BENCH_BYTES_PER_POINT").is_none() {
        return;
    }
    let rt = Runtime::new().unwrap();
    let batches = sensor_batches();
    let points: usize = batches.iter().map(Vec::len).sum();

    let dir = tempfile::tempdir().unwrap();
    let fjall_dir = dir.path().join("fjall");
    let store = rt
        .block_on(tp_storage::fjall::FjallTimeSeriesStore::open(
            &fjall_dir,
            tp_storage::fjall::FjallOptions::default(),
        ))
        .unwrap();
    for b in &batches {
        rt.block_on(store.write(b)).unwrap();
    }
    rt.block_on(store.compact()).unwrap();
    let space = store.disk_space().unwrap();
    let fjall_bytes = space.tables;
    let fjall_dir_bytes = dir_size(&fjall_dir);
    drop(store);

    let sqlite_dir = dir.path().join("sqlite");
    let sqlite_path = sqlite_dir.join("ts.db");
    let store = rt
        .block_on(tp_storage::sqlite::SqliteTimeSeriesStore::open(
            &sqlite_path,
        ))
        .unwrap();
    for b in &batches {
        rt.block_on(store.write(b)).unwrap();
    }
    drop(store);
    rt.block_on(async {
        use sqlx::Connection;
        let url = format!("sqlite://{}", sqlite_path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("VACUUM").execute(&mut conn).await.unwrap();
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut conn)
            .await
            .unwrap();
    });
    let sqlite_bytes = dir_size(&sqlite_dir);
    println!(
        "bytes per stored float point ({points} points, 10,000 series, compacted): \
         fjall tables {fjall_bytes} B = {:.2} B/point (journal {} B preallocated, \
         directory {fjall_dir_bytes} B); sqlite {sqlite_bytes} B = {:.2} B/point",
        fjall_bytes as f64 / points as f64,
        space.journal,
        sqlite_bytes as f64 / points as f64,
    );
    match postgres_bytes(&rt, &batches) {
        Some(pg_bytes) => println!(
            "postgres (same points, fresh schema, VACUUM FULL, tables + indexes + TOAST): \
             {pg_bytes} B = {:.2} B/point",
            pg_bytes as f64 / points as f64,
        ),
        None => eprintln!("postgres bytes per point skipped: TP_TEST_POSTGRES_URL is not set"),
    }
}

/// Bytes PostgreSQL keeps for `batches` after `VACUUM FULL`: every relation of a fresh
/// schema (history partitions, latest values, their indexes and TOAST).
fn postgres_bytes(rt: &Runtime, batches: &[Vec<TelemetryPoint>]) -> Option<i64> {
    let url = std::env::var("TP_TEST_POSTGRES_URL").ok()?;
    let schema = format!("tp_bytes_{}", uuid::Uuid::new_v4().simple());
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = rt
        .block_on(tp_storage::postgres::PostgresTimeSeriesStore::connect(
            &format!("{url}{sep}schema={schema}"),
        ))
        .unwrap();
    rt.block_on(async {
        for b in batches {
            store.write(b).await.unwrap();
        }
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r'",
        )
        .bind(&schema)
        .fetch_all(store.pool())
        .await
        .unwrap();
        for table in tables {
            let vacuum = format!("VACUUM FULL \"{schema}\".\"{table}\"");
            sqlx::query(sqlx::AssertSqlSafe(vacuum))
                .execute(store.pool())
                .await
                .unwrap();
        }
        let bytes: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
        )
        .bind(&schema)
        .fetch_one(store.pool())
        .await
        .unwrap();
        let drop_schema = format!("DROP SCHEMA {schema} CASCADE");
        sqlx::query(sqlx::AssertSqlSafe(drop_schema))
            .execute(store.pool())
            .await
            .unwrap();
        Some(bytes)
    })
}

fn postgres(c: &mut Criterion) {
    let Ok(url) = std::env::var("TP_TEST_POSTGRES_URL") else {
        eprintln!("skipping the postgres benches: TP_TEST_POSTGRES_URL is not set");
        return;
    };
    let rt = Runtime::new().unwrap();
    // The default write path (batches split over 2 connections), the same on one
    // connection, COPY for every batch, and the previous path (UNNEST upserts,
    // `write_method=insert`) for comparison, each in a fresh schema.
    for (group, params) in [
        ("postgres", ""),
        ("postgres_one_connection", "&write_connections=1"),
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

criterion_group!(benches, fjall, sqlite, postgres, bytes_per_point);
criterion_main!(benches);
