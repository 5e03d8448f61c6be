//! Conformance cases for [`TimeSeriesStore`].
//!
//! Every case writes to its own fresh [`DeviceId`]s, so all cases can run in parallel
//! against one shared database.
//!
//! Run them all against a backend with [`crate::timeseries_conformance!`].

use serde_json::json;

use crate::model::*;
use crate::{Aggregation, Order, TimeSeriesStore, TsQuery};

/// A fixed, recent base time (ms) shared by the cases.
const BASE: Timestamp = 1_700_000_000_000;

fn pt(device: DeviceId, key: &str, ts: Timestamp, value: Value) -> TelemetryPoint {
    TelemetryPoint {
        device_id: device,
        key: key.into(),
        ts,
        value,
    }
}

fn kv(key: &str, ts: Timestamp, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        ts,
        value,
    }
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|k| (*k).to_owned()).collect()
}

fn history(device: DeviceId, keys: Vec<String>, start: Timestamp, end: Timestamp) -> TsQuery {
    TsQuery {
        device_id: device,
        keys,
        start,
        end,
        aggregation: None,
        limit: None,
        order: Order::Asc,
    }
}

/// Compares rows exactly, except floats, which may differ by a relative 1e-9.
#[track_caller]
fn assert_rows(got: &[KeyValue], want: &[KeyValue]) {
    let same = got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            g.key == w.key
                && g.ts == w.ts
                && match (&g.value, &w.value) {
                    (Value::Float(a), Value::Float(b)) => {
                        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
                    }
                    (a, b) => a == b,
                }
        });
    assert!(same, "rows differ\n got: {got:?}\nwant: {want:?}");
}

/// `backend()` is a non-empty name and `healthcheck()` succeeds.
pub async fn backend_and_healthcheck(store: &dyn TimeSeriesStore) {
    assert!(!store.backend().is_empty());
    store.healthcheck().await.expect("healthcheck");
}

/// `latest` returns the newest point per key, keys ascending, even when points arrive
/// out of order across and within batches; `keys` restricts the keys.
pub async fn latest_newest_wins_out_of_order(store: &dyn TimeSeriesStore) {
    let d = DeviceId::new();
    let other = DeviceId::new();
    store
        .write(&[
            pt(d, "temp", BASE + 300, Value::Float(3.0)),
            pt(d, "temp", BASE + 100, Value::Float(1.0)),
            pt(d, "hum", BASE + 100, Value::Integer(40)),
            pt(other, "temp", BASE + 999, Value::Float(9.0)),
        ])
        .await
        .expect("write");
    // Older than what is stored: history grows, latest stays.
    store
        .write(&[pt(d, "temp", BASE + 200, Value::Float(2.0))])
        .await
        .expect("write");
    // Newer: latest moves; several points of one key in a batch, newest not last.
    store
        .write(&[
            pt(d, "hum", BASE + 500, Value::Integer(50)),
            pt(d, "hum", BASE + 400, Value::Integer(45)),
            pt(d, "a_flag", BASE + 1, Value::Bool(true)),
        ])
        .await
        .expect("write");

    assert_rows(
        &store.latest(d, None).await.expect("latest"),
        &[
            kv("a_flag", BASE + 1, Value::Bool(true)),
            kv("hum", BASE + 500, Value::Integer(50)),
            kv("temp", BASE + 300, Value::Float(3.0)),
        ],
    );
    let only = keys(&["temp", "missing"]);
    assert_rows(
        &store.latest(d, Some(&only)).await.expect("latest"),
        &[kv("temp", BASE + 300, Value::Float(3.0))],
    );
    assert_rows(
        &store.latest(other, None).await.expect("latest"),
        &[kv("temp", BASE + 999, Value::Float(9.0))],
    );
    assert!(
        store
            .latest(DeviceId::new(), None)
            .await
            .expect("latest")
            .is_empty()
    );
    // History holds all three temperatures in time order.
    assert_rows(
        &store
            .query(&history(d, keys(&["temp"]), BASE, BASE + 1000))
            .await
            .expect("query"),
        &[
            kv("temp", BASE + 100, Value::Float(1.0)),
            kv("temp", BASE + 200, Value::Float(2.0)),
            kv("temp", BASE + 300, Value::Float(3.0)),
        ],
    );
}

/// Writing the same `(device, key, ts)` again keeps one row; the last write's value wins
/// in history and latest alike.
pub async fn rewrite_same_point_is_idempotent(store: &dyn TimeSeriesStore) {
    let d = DeviceId::new();
    let p = pt(d, "v", BASE, Value::Integer(7));
    store.write(std::slice::from_ref(&p)).await.expect("write");
    store.write(std::slice::from_ref(&p)).await.expect("write");
    store.write(&[p.clone(), p.clone()]).await.expect("write");
    let q = history(d, vec![], BASE - 10, BASE + 10);
    assert_rows(
        &store.query(&q).await.expect("query"),
        &[kv("v", BASE, Value::Integer(7))],
    );

    store
        .write(&[pt(d, "v", BASE, Value::Integer(8))])
        .await
        .expect("write");
    assert_rows(
        &store.query(&q).await.expect("query"),
        &[kv("v", BASE, Value::Integer(8))],
    );
    assert_rows(
        &store.latest(d, None).await.expect("latest"),
        &[kv("v", BASE, Value::Integer(8))],
    );
}

/// Every [`Value`] variant round-trips through history and latest with its type
/// (a float with an integral value stays a float, a numeric string stays a string).
pub async fn value_types_round_trip(store: &dyn TimeSeriesStore) {
    let d = DeviceId::new();
    let values = vec![
        ("b_false", Value::Bool(false)),
        ("b_true", Value::Bool(true)),
        ("f", Value::Float(0.1)),
        ("f_big", Value::Float(-1.5e300)),
        ("f_integral", Value::Float(3.0)),
        ("i_max", Value::Integer(i64::MAX)),
        ("i_min", Value::Integer(i64::MIN)),
        ("i_zero", Value::Integer(0)),
        ("j_arr", Value::Json(json!([1, "x", null]))),
        (
            "j_obj",
            Value::Json(json!({"a": [1, 2, {"b": null}], "c": 1.5})),
        ),
        ("s", Value::String("héllo ✓ \"quoted\"".into())),
        ("s_empty", Value::String(String::new())),
        ("s_numeric", Value::String("42".into())),
    ];
    let points: Vec<TelemetryPoint> = values
        .iter()
        .map(|(k, v)| pt(d, k, BASE, v.clone()))
        .collect();
    store.write(&points).await.expect("write");
    let want: Vec<KeyValue> = values.iter().map(|(k, v)| kv(k, BASE, v.clone())).collect();
    // Exact comparison: round trips must be lossless.
    assert_eq!(store.latest(d, None).await.expect("latest"), want);
    assert_eq!(
        store
            .query(&history(d, vec![], BASE, BASE + 1))
            .await
            .expect("query"),
        want
    );
}

/// `query` filters keys (empty = all), honours `[start, end)` and returns keys
/// ascending with rows in the requested order.
pub async fn query_keys_bounds_and_order(store: &dyn TimeSeriesStore) {
    let d = DeviceId::new();
    let other = DeviceId::new();
    let mut points = Vec::new();
    for key in ["c", "a", "b"] {
        for i in 0..4 {
            points.push(pt(d, key, BASE + i * 10, Value::Integer(i)));
        }
    }
    points.push(pt(other, "a", BASE + 10, Value::Integer(100)));
    store.write(&points).await.expect("write");

    let rows = |key: &str, idx: &[i64]| -> Vec<KeyValue> {
        idx.iter()
            .map(|i| kv(key, BASE + i * 10, Value::Integer(*i)))
            .collect()
    };

    // Filter given out of order and with an unknown key; start inclusive, end exclusive.
    let q = history(d, keys(&["c", "a", "nope"]), BASE + 10, BASE + 30);
    let want: Vec<KeyValue> = [rows("a", &[1, 2]), rows("c", &[1, 2])].concat();
    assert_rows(&store.query(&q).await.expect("query"), &want);

    // Empty keys: all keys.
    let q = history(d, vec![], BASE + 10, BASE + 30);
    let want: Vec<KeyValue> = [rows("a", &[1, 2]), rows("b", &[1, 2]), rows("c", &[1, 2])].concat();
    assert_rows(&store.query(&q).await.expect("query"), &want);

    // Descending within each key; keys still ascending.
    let q = TsQuery {
        order: Order::Desc,
        ..history(d, vec![], BASE, BASE + 1000)
    };
    let want: Vec<KeyValue> = [
        rows("a", &[3, 2, 1, 0]),
        rows("b", &[3, 2, 1, 0]),
        rows("c", &[3, 2, 1, 0]),
    ]
    .concat();
    assert_rows(&store.query(&q).await.expect("query"), &want);

    // Empty and inverted ranges.
    let q = history(d, vec![], BASE + 5, BASE + 10);
    assert!(store.query(&q).await.expect("query").is_empty());
    let q = history(d, vec![], BASE + 30, BASE);
    assert!(store.query(&q).await.expect("query").is_empty());
    // Unknown device.
    let q = history(DeviceId::new(), vec![], BASE, BASE + 1000);
    assert!(store.query(&q).await.expect("query").is_empty());
}

/// `limit` applies per key: the first `limit` rows of each key in the requested order.
pub async fn query_limit_per_key(store: &dyn TimeSeriesStore) {
    let d = DeviceId::new();
    let mut points = Vec::new();
    for key in ["x", "y"] {
        for i in 0..5 {
            points.push(pt(d, key, BASE + i, Value::Integer(i)));
        }
    }
    store.write(&points).await.expect("write");

    let q = TsQuery {
        limit: Some(2),
        ..history(d, vec![], BASE, BASE + 100)
    };
    assert_rows(
        &store.query(&q).await.expect("query"),
        &[
            kv("x", BASE, Value::Integer(0)),
            kv("x", BASE + 1, Value::Integer(1)),
            kv("y", BASE, Value::Integer(0)),
            kv("y", BASE + 1, Value::Integer(1)),
        ],
    );
    let q = TsQuery {
        limit: Some(1),
        order: Order::Desc,
        ..history(d, vec![], BASE, BASE + 4)
    };
    assert_rows(
        &store.query(&q).await.expect("query"),
        &[
            kv("x", BASE + 3, Value::Integer(3)),
            kv("y", BASE + 3, Value::Integer(3)),
        ],
    );
    let q = TsQuery {
        limit: Some(100),
        ..history(d, keys(&["y"]), BASE, BASE + 100)
    };
    assert_eq!(store.query(&q).await.expect("query").len(), 5);
}

/// Writes the aggregation fixture and returns `(device, start)`.
///
/// With interval 100 from an unaligned `start`:
/// - `x` bucket 0: 1, 2, 3.0; bucket 1: empty; bucket 2: true, "s", 5.5;
///   bucket 3: "only", {json}; plus points just before `start` and at `end`.
/// - `y` bucket 1: -2.5.
async fn aggregation_fixture(store: &dyn TimeSeriesStore) -> (DeviceId, Timestamp) {
    let d = DeviceId::new();
    let s = BASE + 37;
    store
        .write(&[
            pt(d, "x", s - 1, Value::Integer(1000)),
            pt(d, "x", s, Value::Integer(1)),
            pt(d, "x", s + 10, Value::Integer(2)),
            pt(d, "x", s + 99, Value::Float(3.0)),
            pt(d, "x", s + 200, Value::Bool(true)),
            pt(d, "x", s + 250, Value::String("s".into())),
            pt(d, "x", s + 299, Value::Float(5.5)),
            pt(d, "x", s + 300, Value::String("only".into())),
            pt(d, "x", s + 350, Value::Json(json!({"k": 1}))),
            pt(d, "x", s + 400, Value::Integer(999)),
            pt(d, "y", s + 150, Value::Float(-2.5)),
        ])
        .await
        .expect("write");
    (d, s)
}

fn agg_query(d: DeviceId, s: Timestamp, agg: Aggregation) -> TsQuery {
    TsQuery {
        aggregation: Some((agg, 100)),
        ..history(d, vec![], s, s + 400)
    }
}

/// `avg/min/max/sum/count` over fixed buckets starting at `start`: exact values,
/// bucket `ts = start + k*interval`, empty buckets omitted, booleans as 0/1, strings
/// and JSON ignored by the numeric functions but counted by `count`.
pub async fn aggregation_buckets(store: &dyn TimeSeriesStore) {
    let (d, s) = aggregation_fixture(store).await;
    let f = Value::Float;
    let cases = [
        (Aggregation::Avg, [2.0, 3.25, -2.5]),
        (Aggregation::Min, [1.0, 1.0, -2.5]),
        (Aggregation::Max, [3.0, 5.5, -2.5]),
        (Aggregation::Sum, [6.0, 6.5, -2.5]),
    ];
    for (agg, [b0, b2, y1]) in cases {
        let got = store.query(&agg_query(d, s, agg)).await.expect("query");
        assert_rows(
            &got,
            &[
                kv("x", s, f(b0)),
                kv("x", s + 200, f(b2)),
                kv("y", s + 100, f(y1)),
            ],
        );
        assert!(
            got.iter().all(|r| matches!(r.value, Value::Float(_))),
            "{agg:?} yields floats: {got:?}"
        );
    }
    assert_eq!(
        store
            .query(&agg_query(d, s, Aggregation::Count))
            .await
            .expect("query"),
        vec![
            kv("x", s, Value::Integer(3)),
            kv("x", s + 200, Value::Integer(3)),
            kv("x", s + 300, Value::Integer(2)),
            kv("y", s + 100, Value::Integer(1)),
        ]
    );
    // Keys filter applies to aggregates too.
    let q = TsQuery {
        keys: keys(&["y"]),
        ..agg_query(d, s, Aggregation::Sum)
    };
    assert_rows(
        &store.query(&q).await.expect("query"),
        &[kv("y", s + 100, f(-2.5))],
    );
}

/// Aggregated buckets follow `order`, and `limit` counts buckets per key.
pub async fn aggregation_order_and_limit(store: &dyn TimeSeriesStore) {
    let (d, s) = aggregation_fixture(store).await;
    let q = TsQuery {
        order: Order::Desc,
        ..agg_query(d, s, Aggregation::Count)
    };
    assert_eq!(
        store.query(&q).await.expect("query"),
        vec![
            kv("x", s + 300, Value::Integer(2)),
            kv("x", s + 200, Value::Integer(3)),
            kv("x", s, Value::Integer(3)),
            kv("y", s + 100, Value::Integer(1)),
        ]
    );
    let q = TsQuery {
        order: Order::Desc,
        limit: Some(1),
        ..agg_query(d, s, Aggregation::Max)
    };
    assert_rows(
        &store.query(&q).await.expect("query"),
        &[
            kv("x", s + 200, Value::Float(5.5)),
            kv("y", s + 100, Value::Float(-2.5)),
        ],
    );
    let q = TsQuery {
        limit: Some(2),
        ..agg_query(d, s, Aggregation::Count)
    };
    assert_eq!(
        store.query(&q).await.expect("query"),
        vec![
            kv("x", s, Value::Integer(3)),
            kv("x", s + 200, Value::Integer(3)),
            kv("y", s + 100, Value::Integer(1)),
        ]
    );
    // One bucket spanning the whole range.
    let q = TsQuery {
        aggregation: Some((Aggregation::Count, 1_000_000)),
        ..history(d, keys(&["x"]), s - 1, s + 401)
    };
    assert_eq!(
        store.query(&q).await.expect("query"),
        vec![kv("x", s - 1, Value::Integer(10))]
    );
    // Buckets counted from a start far below zero: labelled `start + k * interval`
    // all the same, with no overflow on the way.
    let q = TsQuery {
        aggregation: Some((Aggregation::Count, i64::MAX)),
        ..history(d, keys(&["x"]), i64::MIN, i64::MAX)
    };
    assert_eq!(
        store.query(&q).await.expect("query"),
        vec![kv("x", -1, Value::Integer(10))]
    );
    let q = TsQuery {
        aggregation: Some((Aggregation::Count, 100)),
        ..history(d, keys(&["y"]), s % 100 - 1_000_000_000, s + 400)
    };
    assert_eq!(
        store.query(&q).await.expect("query"),
        vec![kv("y", s + 100, Value::Integer(1))]
    );
}

/// `delete_range` removes `[start, end)` (optionally for some keys), returns the
/// number of rows removed, and `latest` reflects what remains.
pub async fn delete_range_recomputes_latest(store: &dyn TimeSeriesStore) {
    let d = DeviceId::new();
    let other = DeviceId::new();
    let int = Value::Integer;
    store
        .write(&[
            pt(d, "a", BASE + 100, int(1)),
            pt(d, "a", BASE + 200, int(2)),
            pt(d, "a", BASE + 300, int(3)),
            pt(d, "a", BASE + 400, int(4)),
            pt(d, "b", BASE + 100, int(10)),
            pt(d, "b", BASE + 400, int(40)),
            pt(other, "a", BASE + 200, int(99)),
        ])
        .await
        .expect("write");
    let all = history(d, vec![], 0, BASE + 10_000);
    let a_only = keys(&["a"]);

    // Middle of one key: latest unchanged.
    let n = store
        .delete_range(d, Some(&a_only), BASE + 200, BASE + 400)
        .await
        .expect("delete");
    assert_eq!(n, 2);
    assert_rows(
        &store.query(&all).await.expect("query"),
        &[
            kv("a", BASE + 100, int(1)),
            kv("a", BASE + 400, int(4)),
            kv("b", BASE + 100, int(10)),
            kv("b", BASE + 400, int(40)),
        ],
    );
    assert_rows(
        &store.latest(d, None).await.expect("latest"),
        &[kv("a", BASE + 400, int(4)), kv("b", BASE + 400, int(40))],
    );

    // The newest point of every key: latest falls back to what remains.
    let n = store
        .delete_range(d, None, BASE + 400, BASE + 401)
        .await
        .expect("delete");
    assert_eq!(n, 2);
    assert_rows(
        &store.latest(d, None).await.expect("latest"),
        &[kv("a", BASE + 100, int(1)), kv("b", BASE + 100, int(10))],
    );

    // Nothing in range.
    let n = store
        .delete_range(d, None, BASE + 1000, BASE + 2000)
        .await
        .expect("delete");
    assert_eq!(n, 0);

    // Everything: latest is empty, the other device is untouched.
    let n = store
        .delete_range(d, None, 0, BASE + 10_000)
        .await
        .expect("delete");
    assert_eq!(n, 2);
    assert!(store.latest(d, None).await.expect("latest").is_empty());
    assert!(store.query(&all).await.expect("query").is_empty());
    assert_rows(
        &store.latest(other, None).await.expect("latest"),
        &[kv("a", BASE + 200, int(99))],
    );

    // Writing again after a full delete works as on a fresh key.
    store
        .write(&[pt(d, "a", BASE + 50, int(5))])
        .await
        .expect("write");
    assert_rows(
        &store.latest(d, None).await.expect("latest"),
        &[kv("a", BASE + 50, int(5))],
    );
}

/// Events round-trip and are queried by `[start, end)`, order and limit per device.
pub async fn events_write_and_query(store: &dyn TimeSeriesStore) {
    let d = DeviceId::new();
    let other = DeviceId::new();
    let ev = |device: DeviceId, ts: Timestamp, n: u32| DeviceEvent {
        device_id: device,
        ts,
        message_id: format!("msg-{n}"),
        method: "alarm".into(),
        params: json!({"level": n, "text": "over temperature", "list": [1, 2]}),
    };
    let e1 = ev(d, BASE + 100, 1);
    let e2 = ev(d, BASE + 200, 2);
    let e3 = ev(d, BASE + 300, 3);
    store
        .write_events(&[e2.clone(), ev(other, BASE + 150, 9), e3.clone()])
        .await
        .expect("write_events");
    store
        .write_events(std::slice::from_ref(&e1))
        .await
        .expect("write_events");

    let q = |start, end, limit, order| store.query_events(d, start, end, limit, order);
    assert_eq!(
        q(BASE + 100, BASE + 300, 10, Order::Asc)
            .await
            .expect("query"),
        vec![e1.clone(), e2.clone()]
    );
    assert_eq!(
        q(0, BASE + 1000, 10, Order::Desc).await.expect("query"),
        vec![e3.clone(), e2.clone(), e1.clone()]
    );
    assert_eq!(
        q(0, BASE + 1000, 2, Order::Desc).await.expect("query"),
        vec![e3.clone(), e2.clone()]
    );
    assert_eq!(
        q(0, BASE + 1000, 1, Order::Asc).await.expect("query"),
        vec![e1.clone()]
    );
    assert!(
        q(BASE + 301, BASE + 1000, 10, Order::Asc)
            .await
            .expect("query")
            .is_empty()
    );
    assert!(
        store
            .query_events(DeviceId::new(), 0, BASE + 1000, 10, Order::Asc)
            .await
            .expect("query")
            .is_empty()
    );
}

/// A batch of 10 000 points over several devices and keys is stored by one `write`.
pub async fn large_batch(store: &dyn TimeSeriesStore) {
    let devices = [DeviceId::new(), DeviceId::new()];
    let key_names: Vec<String> = (0..5).map(|k| format!("k{k}")).collect();
    let mut points = Vec::with_capacity(10_000);
    for d in devices {
        for key in &key_names {
            for i in 0..1000i64 {
                points.push(pt(d, key, BASE + i * 1000, Value::Float(i as f64 / 4.0)));
            }
        }
    }
    assert_eq!(points.len(), 10_000);
    store.write(&points).await.expect("write 10k points");

    for d in devices {
        let rows = store
            .query(&history(d, vec![], BASE, BASE + 1_000_000))
            .await
            .expect("query");
        assert_eq!(rows.len(), 5000);
        for (k, chunk) in rows.chunks(1000).enumerate() {
            for (i, row) in chunk.iter().enumerate() {
                assert_eq!(row.key, key_names[k]);
                assert_eq!(row.ts, BASE + i as i64 * 1000);
                assert_eq!(row.value, Value::Float(i as f64 / 4.0));
            }
        }
        let latest = store.latest(d, None).await.expect("latest");
        let want: Vec<KeyValue> = key_names
            .iter()
            .map(|k| kv(k, BASE + 999_000, Value::Float(999.0 / 4.0)))
            .collect();
        assert_eq!(latest, want);
        let counts = store
            .query(&TsQuery {
                aggregation: Some((Aggregation::Count, 500_000)),
                ..history(d, keys(&["k0"]), BASE, BASE + 1_000_000)
            })
            .await
            .expect("count");
        assert_eq!(
            counts,
            vec![
                kv("k0", BASE, Value::Integer(500)),
                kv("k0", BASE + 500_000, Value::Integer(500)),
            ]
        );
    }
}

/// An empty batch is accepted and changes nothing.
pub async fn empty_writes_are_noops(store: &dyn TimeSeriesStore) {
    store.write(&[]).await.expect("empty write");
    store.write_events(&[]).await.expect("empty write_events");
    let d = DeviceId::new();
    assert!(store.latest(d, None).await.expect("latest").is_empty());
}

/// Stamps out one `#[tokio::test]` per [`crate::testing::timeseries`] case.
///
/// The argument is an expression evaluating to a future whose output is
/// `Option<S>`, where `&*s` is a `&dyn TimeSeriesStore` (for example
/// `Option<Arc<dyn TimeSeriesStore>>`); `None` skips the test. It is evaluated once
/// per test. The calling crate needs `tokio`; invoke the macro inside its own module.
///
/// ```ignore
/// mod sqlite_memory {
///     tp_core::timeseries_conformance!(async {
///         Some(std::sync::Arc::new(MyStore::in_memory().await.unwrap()))
///     });
/// }
/// ```
#[macro_export]
macro_rules! timeseries_conformance {
    ($make:expr $(,)?) => {
        $crate::__conformance_tests!(timeseries, $make;
            backend_and_healthcheck,
            latest_newest_wins_out_of_order,
            rewrite_same_point_is_idempotent,
            value_types_round_trip,
            query_keys_bounds_and_order,
            query_limit_per_key,
            aggregation_buckets,
            aggregation_order_and_limit,
            delete_range_recomputes_latest,
            events_write_and_query,
            large_batch,
            empty_writes_are_noops,
        );
    };
}

/// Runs every case in turn against one store: for backends outside a test harness
/// (see `examples/custom_timeseries_backend.rs`). Keep the list in step with
/// [`timeseries_conformance!`]; `every_case_is_in_run_all` below checks it.
pub async fn run_all(store: &dyn TimeSeriesStore) {
    backend_and_healthcheck(store).await;
    latest_newest_wins_out_of_order(store).await;
    rewrite_same_point_is_idempotent(store).await;
    value_types_round_trip(store).await;
    query_keys_bounds_and_order(store).await;
    query_limit_per_key(store).await;
    aggregation_buckets(store).await;
    aggregation_order_and_limit(store).await;
    delete_range_recomputes_latest(store).await;
    events_write_and_query(store).await;
    large_batch(store).await;
    empty_writes_are_noops(store).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_case_is_in_run_all() {
        let src = include_str!("timeseries.rs");
        let (macro_part, run_all_part) = (
            &src[src.find("macro_rules! timeseries_conformance").unwrap()..],
            &src[src.find("pub async fn run_all").unwrap()..],
        );
        let macro_part = &macro_part[..macro_part.find(");").unwrap()];
        let run_all_part = &run_all_part[..run_all_part.find("\n}").unwrap()];
        for case in src
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .filter_map(|l| l.split('(').next())
        {
            if case == "run_all" {
                continue;
            }
            assert!(macro_part.contains(case), "{case} missing from the macro");
            assert!(
                run_all_part.contains(&format!("{case}(store)")),
                "{case} missing from run_all"
            );
        }
    }
}
