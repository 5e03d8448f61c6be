//! Conformance suites and PostgreSQL-specific tests. They need a server: set
//! `TP_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`); each
//! test gets its own schema, dropped when the test ends.

use std::ops::Deref;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tp_core::{Error, MetadataStore, TelemetryPoint, TimeSeriesStore, TsQuery, Value};

use super::*;

/// A store in a fresh schema; dropping it drops the schema.
pub(super) struct InSchema<S> {
    store: Option<S>,
    base_url: String,
    schema: String,
}

impl<S> Deref for InSchema<S> {
    type Target = S;
    fn deref(&self) -> &S {
        self.store.as_ref().expect("store lives until drop")
    }
}

impl<S> Drop for InSchema<S> {
    fn drop(&mut self) {
        // Close the store's pool first, then drop the schema from a thread with its own
        // runtime (drop cannot await, and may run inside the test's runtime).
        drop(self.store.take());
        let (url, schema) = (self.base_url.clone(), self.schema.clone());
        let name = schema.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut conn = PgConnection::connect(&url).await?;
                let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&schema));
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not drop test schema {name}: {done:?}");
        }
    }
}

/// The server URL and a fresh schema name, or `None` to skip.
fn target() -> Option<(String, String)> {
    let url = tp_core::testing::service_url("TP_TEST_POSTGRES_URL")?;
    Some((url, format!("tp_test_{}", uuid::Uuid::new_v4().simple())))
}

fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema={schema}&max_connections=4")
}

async fn metadata_store() -> Option<InSchema<PostgresMetadataStore>> {
    let (url, schema) = target()?;
    let store = PostgresMetadataStore::connect(&with_schema(&url, &schema))
        .await
        .expect("connect");
    Some(InSchema {
        store: Some(store),
        base_url: url,
        schema,
    })
}

async fn timeseries_store() -> Option<InSchema<PostgresTimeSeriesStore>> {
    timeseries_store_with("").await
}

/// A time-series store in a fresh schema with extra URL parameters (`&k=v`).
async fn timeseries_store_with(params: &str) -> Option<InSchema<PostgresTimeSeriesStore>> {
    let (url, schema) = target()?;
    let store =
        PostgresTimeSeriesStore::connect(&format!("{}{params}", with_schema(&url, &schema)))
            .await
            .expect("connect");
    Some(InSchema {
        store: Some(store),
        base_url: url,
        schema,
    })
}

mod metadata {
    tp_core::metadata_conformance!(super::metadata_store());
}

mod timeseries {
    tp_core::timeseries_conformance!(super::timeseries_store());
}

/// Every batch through binary `COPY` (the default stages small ones with `UNNEST`),
/// split over up to 4 connections (a part needs `copy_min_rows` points, here 1), so
/// the suite's batches take the parallel path.
mod timeseries_copy {
    tp_core::timeseries_conformance!(super::timeseries_store_with(
        "&copy_min_rows=0&write_connections=4"
    ));
}

/// The `UNNEST` write path passes the same suite as the default `COPY` one.
mod timeseries_insert {
    tp_core::timeseries_conformance!(super::timeseries_store_with("&write_method=insert"));
}

/// One metadata store in a fresh schema as both the access and the metadata store;
/// the third field drops the schema when the test ends.
async fn access_stores() -> Option<(
    tp_core::AccessStoreRef,
    tp_core::MetadataStoreRef,
    InSchema<()>,
)> {
    let (url, schema) = target()?;
    let store = std::sync::Arc::new(
        PostgresMetadataStore::connect(&with_schema(&url, &schema))
            .await
            .expect("connect"),
    );
    let guard = InSchema {
        store: Some(()),
        base_url: url,
        schema,
    };
    Some((store.clone(), store, guard))
}

/// One metadata store in a fresh schema as the thing-model and the access store.
async fn thing_model_stores() -> Option<(
    tp_core::ThingModelStoreRef,
    tp_core::AccessStoreRef,
    InSchema<()>,
)> {
    let (url, schema) = target()?;
    let store = std::sync::Arc::new(
        PostgresMetadataStore::connect(&with_schema(&url, &schema))
            .await
            .expect("connect"),
    );
    let guard = InSchema {
        store: Some(()),
        base_url: url,
        schema,
    };
    Some((store.clone(), store, guard))
}

mod access {
    tp_core::access_conformance!(super::access_stores());
}

/// The same suite through URL dispatch: `open_access` hands out one pool for both.
mod access_by_url {
    use super::*;
    tp_core::access_conformance!(async {
        let (url, schema) = target()?;
        let (meta, access) = crate::open_access(&with_schema(&url, &schema))
            .await
            .expect("open_access");
        assert_eq!((meta.backend(), access.backend()), ("postgres", "postgres"));
        Some((
            access,
            meta,
            InSchema {
                store: Some(()),
                base_url: url,
                schema,
            },
        ))
    });
}

mod rules {
    tp_core::rules_conformance!(super::metadata_store());
}

mod ota {
    tp_core::ota_conformance!(super::metadata_store());
}

mod thing_model {
    tp_core::thing_model_conformance!(super::thing_model_stores());
}

mod scripts {
    tp_core::script_conformance!(super::metadata_store());
}

mod dashboards {
    tp_core::dashboard_conformance!(super::metadata_store());
}

mod trends {
    tp_core::trends_conformance!(super::metadata_store());
}

/// The rule suite through URL dispatch: `open_rules` hands out one pool for all three.
mod rules_by_url {
    use super::*;

    /// The rule store and the guard that drops its schema.
    struct Rules(
        tp_core::rules::RuleStoreRef,
        #[allow(dead_code)] InSchema<()>,
    );

    impl Deref for Rules {
        type Target = dyn tp_core::rules::RuleStore;
        fn deref(&self) -> &Self::Target {
            &*self.0
        }
    }

    async fn rules() -> Option<Rules> {
        let (url, schema) = target()?;
        let (_meta, _access, store) = crate::open_rules(&with_schema(&url, &schema))
            .await
            .expect("open_rules");
        assert_eq!(store.backend(), "postgres");
        Some(Rules(
            store,
            InSchema {
                store: Some(()),
                base_url: url,
                schema,
            },
        ))
    }

    tp_core::rules_conformance!(rules());
}

#[test]
fn urls_are_parsed_and_our_parameters_stripped() {
    let t = Target::parse(
        "postgres://u:p@db.example:6543/app?sslmode=disable&schema=tenant_a&max_connections=3&partition_ms=60000",
    )
    .unwrap();
    assert_eq!(t.schema.as_deref(), Some("tenant_a"));
    assert_eq!(t.max_connections, 3);
    assert_eq!(t.host(), "db.example");
    assert_eq!(t.options.get_port(), 6543);
    assert_eq!(t.options.get_database(), Some("app"));
    assert_eq!(
        t.extra,
        vec![("partition_ms".to_owned(), "60000".to_owned())]
    );

    let t = Target::parse("postgresql://localhost/db").unwrap();
    assert_eq!(t.schema, None);

    for bad in [
        "mysql://localhost/db",
        "postgres://localhost/db?schema=",
        "postgres://localhost/db?schema=1abc",
        "postgres://localhost/db?schema=a;drop",
        "postgres://localhost/db?max_connections=0",
        "postgres://localhost:notaport/db",
    ] {
        match Target::parse(bad) {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "postgres url", "{bad}"),
            other => panic!("{bad}: expected Invalid, got {other:?}"),
        }
    }
}

#[test]
fn identifiers_are_quoted_and_counts_clamped() {
    assert_eq!(to_i64(u64::MAX), i64::MAX);
    assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
}

#[tokio::test]
async fn unreachable_server_is_unavailable_naming_host_and_port() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let url = "postgres://postgres@127.0.0.1:1/postgres";
    for result in [
        PostgresMetadataStore::connect(url).await.map(drop),
        PostgresTimeSeriesStore::connect(url).await.map(drop),
    ] {
        match result {
            Err(e @ Error::Unavailable { backend, .. }) => {
                assert_eq!(backend, "postgres");
                assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}

const DAY: i64 = 86_400_000;

/// Every history row of `device`, oldest first.
fn all_history(device: tp_core::DeviceId) -> TsQuery {
    TsQuery {
        device_id: device,
        keys: vec![],
        start: 0,
        end: i64::MAX,
        aggregation: None,
        limit: None,
        order: tp_core::Order::Asc,
    }
}

fn point(device: tp_core::DeviceId, ts: i64, v: i64) -> TelemetryPoint {
    TelemetryPoint {
        device_id: device,
        key: "t".into(),
        ts,
        value: Value::Integer(v),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_partitions() {
    let Some(store) = timeseries_store().await else {
        return;
    };
    assert_eq!(store.layout(), TsLayout::Partitioned { partition_ms: DAY });
    let d = tp_core::DeviceId::new();
    let day0 = 19_675 * DAY;
    // Two points in each of three days.
    let points: Vec<TelemetryPoint> = (0..3)
        .flat_map(|day| {
            [
                point(d, day0 + day * DAY, day),
                point(d, day0 + day * DAY + 5, day),
            ]
        })
        .collect();
    store.write(&points).await.expect("write");
    let partitions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'ts_kv'::regclass")
            .fetch_one(store.pool())
            .await
            .expect("count partitions");
    assert_eq!(partitions, 3);

    // A cut inside day 1 drops day 0 only: day 1 straddles it.
    assert_eq!(
        store
            .drop_partitions_before(day0 + DAY + 1)
            .await
            .expect("drop"),
        1
    );
    let all = all_history(d);
    let ts: Vec<i64> = store
        .query(&all)
        .await
        .expect("query")
        .iter()
        .map(|r| r.ts)
        .collect();
    assert_eq!(
        ts,
        vec![
            day0 + DAY,
            day0 + DAY + 5,
            day0 + 2 * DAY,
            day0 + 2 * DAY + 5
        ]
    );
    assert_eq!(
        store.drop_partitions_before(day0 + DAY + 1).await.unwrap(),
        0
    );

    // Writing into the dropped day again recreates its partition.
    store
        .write(&[point(d, day0 + 1, 7)])
        .await
        .expect("write after drop");
    assert_eq!(store.query(&all).await.expect("query").len(), 5);

    // Latest survives retention: it is current state, not history.
    assert_eq!(
        store.drop_partitions_before(day0 + 3 * DAY).await.unwrap(),
        3
    );
    assert!(store.query(&all).await.expect("query").is_empty());
    let latest = store.latest(d, None).await.expect("latest");
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].ts, day0 + 2 * DAY + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_dropped_elsewhere_is_recreated_on_write() {
    let Some(store) = timeseries_store().await else {
        return;
    };
    let d = tp_core::DeviceId::new();
    store.write(&[point(d, 5, 1)]).await.expect("write");
    // Another process drops the partition behind the store's cache.
    sqlx::query("DROP TABLE ts_kv_p0")
        .execute(store.pool())
        .await
        .expect("drop");
    store.write(&[point(d, 6, 2)]).await.expect("write again");
    let latest = store.latest(d, None).await.expect("latest");
    assert_eq!(latest[0].ts, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_one_schema() {
    let Some((url, schema)) = target() else {
        return;
    };
    let full = with_schema(&url, &schema);
    let meta = PostgresMetadataStore::connect(&full).await.expect("meta");
    let ts = PostgresTimeSeriesStore::connect(&full).await.expect("ts");
    let again = PostgresTimeSeriesStore::connect(&full)
        .await
        .expect("reconnect");
    meta.healthcheck().await.expect("meta health");
    ts.healthcheck().await.expect("ts health");
    assert_eq!(again.layout(), ts.layout());
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 \
         AND table_name IN ('devices', 'ts_latest', 'ts_kv')",
    )
    .bind(&schema)
    .fetch_one(meta.pool())
    .await
    .expect("count");
    assert_eq!(tables, 3);
    drop((meta, ts, again));
    drop(InSchema::<()> {
        store: Some(()),
        base_url: url,
        schema,
    });
}

#[tokio::test]
async fn url_dispatch_reaches_the_postgres_backends() {
    // Offline: a bad schema is rejected by this module's parser, for both schemes.
    for url in [
        "postgres://localhost/db?schema=bad-name",
        "postgresql://localhost/db?schema=bad-name",
    ] {
        match crate::open_metadata(url).await {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "postgres url"),
            other => panic!("{url}: expected Invalid, got {other:?}"),
        }
        match crate::open_timeseries(url).await {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "postgres url"),
            other => panic!("{url}: expected Invalid, got {other:?}"),
        }
    }
    let Some((url, schema)) = target() else {
        return;
    };
    let meta = crate::open_metadata(&with_schema(&url, &schema))
        .await
        .expect("metadata");
    let ts = crate::open_timeseries(&with_schema(&url, &schema))
        .await
        .expect("timeseries");
    assert_eq!((meta.backend(), ts.backend()), ("postgres", "postgres"));
    drop((meta, ts));
    drop(InSchema::<()> {
        store: Some(()),
        base_url: url,
        schema,
    });
}

/// The hand-written binary `COPY` encoder against the server's own parser: every
/// supported type, edge values and NULLs, read back with SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_encoding_is_what_the_server_reads() {
    let Some((url, _)) = target() else {
        return;
    };
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    sqlx::raw_sql(
        "CREATE TEMP TABLE copy_probe (n int8 NOT NULL, u uuid, t text, s int2, i int8, \
         f float8, b bool, at timestamptz, j jsonb)",
    )
    .execute(&mut conn)
    .await
    .expect("create");
    let id = uuid::Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
    let floats = [
        0.0,
        -0.0,
        1.5,
        -2.25e-300,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    let mut c = copy::CopyBuffer::new(9, 0);
    for (n, f) in floats.iter().enumerate() {
        let n = n as i64;
        c.row()
            .int8(n)
            .uuid(&id)
            .text(&format!("ключ-{n} \\ \t \"q\" 🚀"))
            .int2(i16::MIN + n as i16)
            .int8(i64::MAX - n)
            .float8(*f)
            .bool(n % 2 == 0)
            .timestamptz_ms(1_700_000_000_123 - n * 86_400_000_000)
            .jsonb(&serde_json::json!({"n": n, "s": "é", "a": [1, 2.5, null]}).to_string());
    }
    c.row()
        .int8(100)
        .null()
        .null()
        .null()
        .null()
        .null()
        .null()
        .null()
        .null();
    let payload = c.finish();
    let mut copy = conn
        .copy_in_raw("COPY copy_probe FROM STDIN (FORMAT binary)")
        .await
        .expect("copy");
    copy.send(payload).await.expect("send");
    assert_eq!(
        copy.finish().await.expect("finish"),
        floats.len() as u64 + 1
    );

    type Row = (
        i64,
        Option<uuid::Uuid>,
        Option<String>,
        Option<i16>,
        Option<i64>,
        Option<f64>,
        Option<bool>,
        Option<i64>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT n, u, t, s, i, f, b, (extract(epoch FROM at) * 1000)::int8, j::text \
         FROM copy_probe ORDER BY n",
    )
    .fetch_all(&mut conn)
    .await
    .expect("select");
    assert_eq!(rows.len(), floats.len() + 1);
    for (n, f) in floats.iter().enumerate() {
        let r = &rows[n];
        let ni = n as i64;
        assert_eq!(r.0, ni);
        assert_eq!(r.1, Some(id));
        assert_eq!(
            r.2.as_deref(),
            Some(format!("ключ-{n} \\ \t \"q\" 🚀").as_str())
        );
        assert_eq!(r.3, Some(i16::MIN + n as i16));
        assert_eq!(r.4, Some(i64::MAX - ni));
        let got = r.5.expect("float");
        assert!(
            got.to_bits() == f.to_bits() || (got.is_nan() && f.is_nan()),
            "float {f} read back as {got}"
        );
        assert_eq!(r.6, Some(n % 2 == 0));
        assert_eq!(r.7, Some(1_700_000_000_123 - ni * 86_400_000_000));
        let j: serde_json::Value =
            serde_json::from_str(r.8.as_deref().expect("json")).expect("json");
        assert_eq!(
            j,
            serde_json::json!({"n": n, "s": "é", "a": [1, 2.5, null]})
        );
    }
    assert_eq!(
        rows[floats.len()],
        (100, None, None, None, None, None, None, None, None)
    );
    conn.close().await.expect("close");
}

/// A tiny deterministic generator (no dependency, same sequence every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Batches with every value type, repeated points inside a batch (the last one
/// wins), points repeated across batches (replay) and out-of-order timestamps.
fn mixed_batches(devices: &[tp_core::DeviceId]) -> Vec<Vec<TelemetryPoint>> {
    let mut rng = Lcg(19);
    let keys = ["temp", "on", "name", "cfg", "n", "Ä-ключ"];
    let base = 19_675 * DAY;
    (0..4)
        .map(|_| {
            (0..1_500)
                .map(|_| {
                    let v = rng.next(1_000) as i64;
                    let value = match rng.next(6) {
                        0 => Value::Bool(v % 2 == 0),
                        1 => Value::Integer(v - 500),
                        2 => Value::Float(v as f64 / 7.0),
                        3 => Value::String(format!("s{v} \"quoted\" \\ é")),
                        4 => Value::Json(serde_json::json!({"v": v, "l": [v, "x"]})),
                        _ => Value::Float(if v % 3 == 0 { -0.0 } else { f64::MAX }),
                    };
                    TelemetryPoint {
                        device_id: devices[rng.next(devices.len() as u64) as usize],
                        key: keys[rng.next(keys.len() as u64) as usize].to_owned(),
                        // ~3 days of partitions, few enough distinct times to collide
                        ts: base + rng.next(300) as i64 * 900_000,
                        value,
                    }
                })
                .collect()
        })
        .collect()
}

/// Everything a store holds for `devices`: history, latest values and events.
async fn dump(
    store: &PostgresTimeSeriesStore,
    devices: &[tp_core::DeviceId],
) -> Vec<(
    Vec<tp_core::KeyValue>,
    Vec<tp_core::KeyValue>,
    Vec<(i64, String, String, serde_json::Value)>,
)> {
    let mut out = Vec::new();
    for d in devices {
        let history = store.query(&all_history(*d)).await.expect("query");
        let latest = store.latest(*d, None).await.expect("latest");
        let events = store
            .query_events(*d, 0, i64::MAX, 10_000, tp_core::Order::Asc)
            .await
            .expect("events")
            .into_iter()
            .map(|e| (e.ts, e.message_id, e.method, e.params))
            .collect();
        out.push((history, latest, events));
    }
    out
}

/// The `COPY` path stores exactly what the `INSERT` path (and the default, which
/// stages small batches with `UNNEST`) stores, batch after batch, and writing
/// everything again (a replay) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_insert_store_the_same_rows() {
    let Some(copy) = timeseries_store_with("&copy_min_rows=0").await else {
        return;
    };
    let insert = timeseries_store_with("&write_method=insert")
        .await
        .expect("second schema");
    let staged = timeseries_store().await.expect("third schema");
    let devices: Vec<tp_core::DeviceId> = (0..7).map(|_| tp_core::DeviceId::new()).collect();
    let batches = mixed_batches(&devices);
    assert!(
        batches.iter().any(|b| {
            let mut seen = std::collections::HashSet::new();
            b.iter()
                .any(|p| !seen.insert((p.device_id, p.key.clone(), p.ts)))
        }),
        "the batches repeat points"
    );
    let events: Vec<tp_core::DeviceEvent> = (0..50)
        .map(|i| tp_core::DeviceEvent {
            device_id: devices[i % devices.len()],
            ts: 19_675 * DAY + (i as i64 % 5),
            message_id: format!("m{i}"),
            method: "alarm".into(),
            params: serde_json::json!({"i": i, "text": "é \"q\""}),
        })
        .collect();
    for store in [&*copy, &*insert, &*staged] {
        for b in &batches {
            store.write(b).await.expect("write");
        }
        store.write_events(&events).await.expect("events");
    }
    let first = dump(&copy, &devices).await;
    assert_eq!(first, dump(&insert, &devices).await, "same rows both ways");
    assert_eq!(
        first,
        dump(&staged, &devices).await,
        "same rows staged by UNNEST"
    );
    assert!(first.iter().map(|(h, ..)| h.len()).sum::<usize>() > 1_000);

    // Last write wins inside a batch: the value of the last occurrence is stored.
    let last = batches[3].last().expect("point").clone();
    let (history, ..) = &first[devices
        .iter()
        .position(|d| *d == last.device_id)
        .expect("device")];
    let stored = history
        .iter()
        .find(|kv| kv.key == last.key && kv.ts == last.ts)
        .expect("stored");
    assert_eq!(stored.value, last.value);

    // A replay of every batch, in order, changes no point.
    for b in &batches {
        copy.write(b).await.expect("replay");
    }
    let again = dump(&copy, &devices).await;
    for (a, b) in again.iter().zip(&first) {
        assert_eq!((&a.0, &a.1), (&b.0, &b.1), "replay is idempotent");
    }
}

/// The history table of earlier releases, keyed by `(device_id, key, ts)`.
const OLD_TS_KV_SQL: &str = "DROP TABLE ts_kv; CREATE TABLE ts_kv (device_id uuid NOT NULL, \
     key text COLLATE \"C\" NOT NULL, ts bigint NOT NULL, vtype smallint NOT NULL, \
     v_int bigint, v_real double precision, v_text text, PRIMARY KEY (device_id, key, ts)) \
     PARTITION BY RANGE (ts)";

/// A schema an earlier release wrote, with history keyed by `(device_id, key, ts)`,
/// is converted to the series-keyed layout when a store connects: every point,
/// latest value and event reads back as before, partitions keep their names and
/// ranges, and writing on continues with the converted series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_layout_is_converted_on_connect() {
    let Some(reference) = timeseries_store().await else {
        return;
    };
    let old = timeseries_store().await.expect("second schema");
    let devices: Vec<tp_core::DeviceId> = (0..5).map(|_| tp_core::DeviceId::new()).collect();
    let batches = mixed_batches(&devices);
    for b in &batches {
        reference.write(b).await.expect("write");
    }
    let events: Vec<tp_core::DeviceEvent> = (0..20)
        .map(|i| tp_core::DeviceEvent {
            device_id: devices[i % devices.len()],
            ts: 19_675 * DAY + i as i64,
            message_id: format!("m{i}"),
            method: "alarm".into(),
            params: serde_json::json!({ "i": i }),
        })
        .collect();
    reference.write_events(&events).await.expect("events");
    let expected = dump(&reference, &devices).await;
    assert!(expected.iter().map(|(h, ..)| h.len()).sum::<usize>() > 1_000);

    // The same data in the earlier layout, in partitions named as that release named
    // them (one of them before 1970, empty).
    let r = quote_ident(&reference.schema);
    let mut setup = vec![OLD_TS_KV_SQL.to_owned()];
    for k in 19_675..19_680 {
        setup.push(create_old_partition(k));
    }
    setup.push(create_old_partition(-1));
    setup.push(format!(
        "INSERT INTO ts_kv SELECT s.device_id, s.key, t.ts, t.vtype, t.v_int, t.v_real, \
         t.v_text FROM {r}.ts_kv t JOIN {r}.ts_series s ON s.id = t.series"
    ));
    setup.push(format!("INSERT INTO ts_latest SELECT * FROM {r}.ts_latest"));
    setup.push(format!(
        "INSERT INTO ts_events (device_id, ts, message_id, method, params) \
         SELECT device_id, ts, message_id, method, params FROM {r}.ts_events ORDER BY id"
    ));
    for sql in setup {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(old.pool())
            .await
            .expect("earlier layout");
    }

    let url = with_schema(&old.base_url, &old.schema);
    let converted = PostgresTimeSeriesStore::connect(&url)
        .await
        .expect("connect converts");
    assert_eq!(
        dump(&converted, &devices).await,
        expected,
        "same rows after"
    );
    let pool = converted.pool();
    let leftover: Option<String> = sqlx::query_scalar("SELECT to_regclass('ts_kv_v1')::text")
        .fetch_one(pool)
        .await
        .expect("old table");
    assert_eq!(leftover, None, "the old table is dropped");
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'ts_kv'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("partitions");
    assert_eq!(
        partitions,
        [
            "ts_kv_m1",
            "ts_kv_p19675",
            "ts_kv_p19676",
            "ts_kv_p19677",
            "ts_kv_p19678",
            "ts_kv_p19679"
        ]
    );
    let series = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ts_series")
                .fetch_one(&pool)
                .await
                .expect("series")
        }
    };
    assert_eq!(series(pool).await, series(reference.pool()).await);

    // Writing on: a replay of every batch changes nothing, on either store.
    for b in &batches {
        converted.write(b).await.expect("write after");
    }
    assert_eq!(dump(&converted, &devices).await, expected, "replay after");
    // A later connection finds nothing to convert.
    let again = PostgresTimeSeriesStore::connect(&url)
        .await
        .expect("reconnect");
    assert_eq!(again.layout(), converted.layout());
    assert_eq!(dump(&again, &devices).await, expected);
}

fn create_old_partition(k: i64) -> String {
    let name = if k >= 0 {
        format!("ts_kv_p{k}")
    } else {
        format!("ts_kv_m{}", -k)
    };
    format!(
        "CREATE TABLE {name} PARTITION OF ts_kv FOR VALUES FROM ({}) TO ({})",
        k * DAY,
        (k + 1) * DAY
    )
}

/// Two stores (two nodes) writing the same new series at the same time both
/// succeed and name each series once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_create_each_series_once() {
    let Some(first) = timeseries_store_with("&write_connections=4&copy_min_rows=1").await else {
        return;
    };
    let second = PostgresTimeSeriesStore::connect(&format!(
        "{}&write_connections=4&copy_min_rows=1",
        with_schema(&first.base_url, &first.schema)
    ))
    .await
    .expect("second store");
    let devices: Vec<tp_core::DeviceId> = (0..40).map(|_| tp_core::DeviceId::new()).collect();
    let batch: Vec<TelemetryPoint> = devices
        .iter()
        .flat_map(|d| {
            (0..25).map(move |k| TelemetryPoint {
                device_id: *d,
                key: format!("k{k}"),
                ts: 19_675 * DAY + k,
                value: Value::Integer(k),
            })
        })
        .collect();
    let mut reversed = batch.clone();
    reversed.reverse();
    let (a, b) = tokio::join!(first.write(&batch), second.write(&reversed));
    a.expect("first writer");
    b.expect("second writer");
    let (series, rows): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM ts_series), (SELECT count(*) FROM ts_kv)")
            .fetch_one(first.pool())
            .await
            .expect("counts");
    assert_eq!((series, rows), (1_000, 1_000));
    for d in &devices {
        assert_eq!(second.latest(*d, None).await.expect("latest").len(), 25);
    }
}

/// Batches with several points per series are copied straight into history; one
/// that holds only stored points (a replay) is staged and merged, and its values
/// win; one whose points another writer committed without the store seeing it falls
/// back to merging; a direct copy into a partition dropped behind the store's back
/// recreates it; one overlapping the stored points merges the older ones and copies
/// the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_copies_fall_back_to_merging_on_stored_points() {
    let Some(store) = timeseries_store_with("&copy_min_rows=1").await else {
        return;
    };
    let d = tp_core::DeviceId::new();
    let day0 = 19_675 * DAY;
    let batch = |from: i64, v: i64| -> Vec<TelemetryPoint> {
        (from..from + 6)
            .map(|i| point(d, day0 + i, v + i))
            .collect()
    };
    let all = all_history(d);
    let values = |rows: Vec<tp_core::KeyValue>| -> Vec<Value> {
        rows.into_iter().map(|r| r.value).collect()
    };
    let ints = |r: std::ops::Range<i64>| -> Vec<Value> { r.map(Value::Integer).collect() };

    store.write(&batch(0, 0)).await.expect("direct copy");
    assert_eq!(store.history_paths(), [1, 0, 0], "direct, staged, merged");
    assert_eq!(values(store.query(&all).await.expect("query")), ints(0..6));

    // The same points again with other values: merged, the later values win.
    store.write(&batch(0, 100)).await.expect("merge");
    assert_eq!(store.history_paths(), [1, 0, 1]);
    assert_eq!(
        values(store.query(&all).await.expect("query")),
        ints(100..106)
    );
    let latest = store.latest(d, None).await.expect("latest");
    assert_eq!(
        (latest[0].ts, &latest[0].value),
        (day0 + 5, &Value::Integer(105))
    );

    // A point stored behind `ts_latest`'s back (as by a writer whose commit came
    // after the check): the copy meets it, rolls back and merges.
    sqlx::query(
        "INSERT INTO ts_kv (series, ts, vtype, v_int) \
         SELECT id, $1, 1, -1 FROM ts_series WHERE device_id = $2",
    )
    .bind(day0 + 8)
    .bind(d.0)
    .execute(store.pool())
    .await
    .expect("insert behind the store");
    store.write(&batch(6, 0)).await.expect("copy falls back");
    assert_eq!(store.history_paths(), [1, 0, 2]);
    assert_eq!(
        values(store.query(&all).await.expect("query")),
        [ints(100..106), ints(6..12)].concat()
    );

    // One point per series: staged and inserted.
    store
        .write(&[point(d, day0 + 20, 20)])
        .await
        .expect("staged");
    assert_eq!(store.history_paths(), [1, 1, 2]);
    assert_eq!(
        store.latest(d, None).await.expect("latest")[0].ts,
        day0 + 20
    );

    // A direct copy into a partition another process dropped.
    sqlx::query("DROP TABLE ts_kv_p19675")
        .execute(store.pool())
        .await
        .expect("drop");
    store.write(&batch(30, 30)).await.expect("recreated");
    assert_eq!(store.history_paths(), [2, 1, 2]);
    assert_eq!(
        values(store.query(&all).await.expect("query")),
        ints(60..66)
    );

    // Overlapping the stored points: the older part merged, the rest copied.
    store.write(&batch(33, 1_000)).await.expect("split");
    assert_eq!(store.history_paths(), [3, 1, 2]);
    assert_eq!(
        values(store.query(&all).await.expect("query")),
        [ints(60..63), ints(1_033..1_039)].concat()
    );
    let latest = store.latest(d, None).await.expect("latest");
    assert_eq!(
        (latest[0].ts, &latest[0].value),
        (day0 + 38, &Value::Integer(1_038))
    );
}

/// A merge leaves a stored point with the same value alone and overwrites one with
/// another value, bit for bit (-0.0 after 0.0), on both write methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_overwrite_only_changed_values() {
    for params in ["&copy_min_rows=1", "&write_method=insert"] {
        let Some(store) = timeseries_store_with(params).await else {
            return;
        };
        let d = tp_core::DeviceId::new();
        let day0 = 19_675 * DAY;
        let floats = |v: [f64; 3]| -> Vec<TelemetryPoint> {
            (0..3)
                .map(|i| TelemetryPoint {
                    device_id: d,
                    key: "f".into(),
                    ts: day0 + i as i64,
                    value: Value::Float(v[i]),
                })
                .collect()
        };
        store.write(&floats([0.0, 1.5, 2.5])).await.expect("first");
        store.write(&floats([-0.0, 1.5, 9.0])).await.expect("merge");
        let stored: Vec<u64> = store
            .query(&all_history(d))
            .await
            .expect("query")
            .into_iter()
            .map(|kv| match kv.value {
                Value::Float(f) => f.to_bits(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            stored,
            [(-0.0f64).to_bits(), 1.5f64.to_bits(), 9.0f64.to_bits()],
            "{params}"
        );
    }
}
