//! A data dir of an older version keeps its time series in SQLite
//! (`<data_dir>/timeseries.db`); the node now stores them in the embedded engine
//! (`<data_dir>/timeseries/`). Its history must not silently disappear: the node
//! imports the old file on its first start (once), and `migrate-timeseries` runs the
//! same import alone.

mod common;

use common::*;
use tp_core::{DeviceEvent, DeviceId, Order, TelemetryPoint, TsQuery, Value};
use tp_storage::sqlite::SqliteTimeSeriesStore;

fn history(device: DeviceId) -> TsQuery {
    TsQuery {
        device_id: device,
        keys: vec![],
        start: 0,
        end: i64::MAX,
        aggregation: None,
        limit: None,
        order: Order::Asc,
    }
}

/// An old-style data dir: `timeseries.db` with 3 points over 2 keys and one event.
async fn old_data_dir(dir: &std::path::Path) -> (DeviceId, DeviceEvent) {
    let device = DeviceId::new();
    let event = DeviceEvent {
        device_id: device,
        ts: 1_700_000_000_500,
        message_id: "m1".into(),
        method: "alarm".into(),
        params: serde_json::json!({"level": 2}),
    };
    let old = SqliteTimeSeriesStore::open(&dir.join("timeseries.db"))
        .await
        .unwrap();
    let p = |key: &str, ts, v| TelemetryPoint {
        device_id: device,
        key: key.into(),
        ts,
        value: Value::Float(v),
    };
    tp_core::TimeSeriesStore::write(
        &old,
        &[
            p("temp", 1_700_000_000_000, 20.5),
            p("temp", 1_700_000_001_000, 21.0),
            p("hum", 1_700_000_000_000, 40.0),
        ],
    )
    .await
    .unwrap();
    tp_core::TimeSeriesStore::write_events(&old, std::slice::from_ref(&event))
        .await
        .unwrap();
    (device, event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_an_old_data_dir_imports_its_sqlite_history_on_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let (device, event) = old_data_dir(dir.path()).await;

    let platform = Platform::start(config(dir.path())).await.unwrap();
    let ts = platform.timeseries().clone();
    assert_eq!(ts.backend(), "fjall");
    assert!(dir.path().join("timeseries").is_dir());
    let rows = ts.query(&history(device)).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.key.as_str(), r.ts))
            .collect::<Vec<_>>(),
        [
            ("hum", 1_700_000_000_000),
            ("temp", 1_700_000_000_000),
            ("temp", 1_700_000_001_000)
        ]
    );
    let latest = ts.latest(device, Some(&["temp".to_owned()])).await.unwrap();
    assert_eq!(latest[0].value, Value::Float(21.0));
    assert_eq!(
        ts.query_events(device, 0, i64::MAX, 10, Order::Asc)
            .await
            .unwrap(),
        vec![event.clone()]
    );
    drop(ts);
    platform.shutdown().await.unwrap();

    // Done once: the command finds nothing to do, and nothing is duplicated.
    let report = tp_node::cli::migrate_timeseries(&config(dir.path()), None)
        .await
        .unwrap();
    assert!(report.already_done, "{report:?}");
    let platform = Platform::start(config(dir.path())).await.unwrap();
    let ts = platform.timeseries();
    assert_eq!(ts.query(&history(device)).await.unwrap().len(), 3);
    assert_eq!(
        ts.query_events(device, 0, i64::MAX, 10, Order::Asc)
            .await
            .unwrap()
            .len(),
        1
    );
    platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_timeseries_imports_a_data_dir_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (device, _) = old_data_dir(dir.path()).await;
    let cfg = config(dir.path());
    let report = tp_node::cli::migrate_timeseries(&cfg, None).await.unwrap();
    assert_eq!((report.series, report.points, report.events), (2, 3, 1));

    let store = tp_storage::open_timeseries(&cfg.timeseries_url())
        .await
        .unwrap();
    assert_eq!(store.query(&history(device)).await.unwrap().len(), 3);
    drop(store);

    // A file that is not there is an error naming it.
    let missing = dir.path().join("nope.db");
    let err = tp_node::cli::migrate_timeseries(&cfg, Some(&missing))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope.db"), "{err}");

    // Only into the embedded engine.
    let sqlite = config_with(
        dir.path(),
        &[(
            "storage.timeseries",
            format!("sqlite://{}", dir.path().join("other.db").display()),
        )],
    );
    let err = tp_node::cli::migrate_timeseries(&sqlite, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("embedded engine"), "{err}");
}
