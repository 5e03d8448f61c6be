//! Importing an older SQLite time-series file into the embedded engine.
//!
//! Before the fjall engine, a node kept its time series in `<data_dir>/timeseries.db`
//! (SQLite). [`sqlite_to_fjall`] copies every series, point and event of such a file
//! into a [`FjallTimeSeriesStore`]; the node runs it on start when it finds the old
//! file (and `thingspanel migrate-timeseries` runs it by hand), so an upgraded node
//! shows its whole history.
//!
//! - **Idempotent**: points are keyed by `(series, ts)`, so copying one again
//!   changes nothing; latest values end up as the newest point of each series.
//! - **Resumable**: progress is kept in the target's `meta` keyspace (the last series
//!   completed, then the last event copied, the events committed in the same atomic
//!   batch as the progress that counts them), so an interrupted import continues where
//!   it stopped without duplicating events.
//! - **Once**: when done, the target records it and later calls return at once without
//!   opening the SQLite file. The SQLite file is left in place, unchanged.

use std::path::Path;

use tp_core::{Result, TelemetryPoint, TimeSeriesStore};

use crate::fjall::FjallTimeSeriesStore;
use crate::sqlite::SqliteTimeSeriesStore;

/// `meta` key of the import progress: `[phase][i64 BE]`.
const PROGRESS: &str = "import.sqlite";
const PHASE_POINTS: u8 = 0;
const PHASE_EVENTS: u8 = 1;
const PHASE_DONE: u8 = 2;
/// Points per read from SQLite and per write into fjall.
const CHUNK: usize = 50_000;

/// What [`sqlite_to_fjall`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The import had completed before: nothing was read.
    pub already_done: bool,
    /// The SQLite file does not exist: nothing to import (nothing recorded either).
    pub no_source: bool,
    /// An earlier, interrupted import was continued.
    pub resumed: bool,
    /// Series copied (in this call).
    pub series: u64,
    /// Points copied (in this call).
    pub points: u64,
    /// Events copied (in this call).
    pub events: u64,
}

fn progress(phase: u8, value: i64) -> Vec<u8> {
    let mut v = vec![phase];
    v.extend_from_slice(&value.to_be_bytes());
    v
}

fn parse_progress(v: &[u8]) -> (u8, i64) {
    match (
        v.first(),
        v.get(1..9).and_then(|b| <[u8; 8]>::try_from(b).ok()),
    ) {
        (Some(&phase), Some(n)) => (phase, i64::from_be_bytes(n)),
        _ => (PHASE_POINTS, 0),
    }
}

/// Whether `target` has completed an import.
///
/// # Errors
/// Backend errors reading the target.
pub async fn is_done(target: &FjallTimeSeriesStore) -> Result<bool> {
    Ok(target
        .meta_get(PROGRESS)
        .await?
        .is_some_and(|v| parse_progress(&v).0 == PHASE_DONE))
}

/// Copies the SQLite time-series file `source` into `target` (see the module docs);
/// returns at once when done before or when `source` does not exist.
///
/// # Errors
/// Backend errors of either store; the import can be run again and continues.
pub async fn sqlite_to_fjall(source: &Path, target: &FjallTimeSeriesStore) -> Result<ImportReport> {
    let mut report = ImportReport::default();
    let (mut phase, mut done_upto) = match target.meta_get(PROGRESS).await? {
        Some(v) => {
            report.resumed = true;
            parse_progress(&v)
        }
        None => (PHASE_POINTS, 0),
    };
    if phase == PHASE_DONE {
        report.already_done = true;
        report.resumed = false;
        return Ok(report);
    }
    if !source.exists() {
        report.no_source = true;
        report.resumed = false;
        return Ok(report);
    }
    let src = SqliteTimeSeriesStore::open(source).await?;
    if phase == PHASE_POINTS && done_upto == 0 && !src.has_data().await? {
        target.meta_set(PROGRESS, progress(PHASE_DONE, 0)).await?;
        return Ok(report);
    }

    if phase == PHASE_POINTS {
        let mut buffer: Vec<TelemetryPoint> = Vec::with_capacity(CHUNK);
        // The last series whose points are all in `target` or in `buffer`.
        let mut completed = done_upto;
        for (id, device, key) in src.export_series().await? {
            if id <= done_upto {
                continue;
            }
            let mut after = i64::MIN;
            loop {
                let rows = src.export_points(id, after, CHUNK as i64).await?;
                let Some((last, _)) = rows.last() else {
                    break;
                };
                after = *last;
                let full = rows.len() == CHUNK;
                buffer.extend(rows.into_iter().map(|(ts, value)| TelemetryPoint {
                    device_id: device,
                    key: key.clone(),
                    ts,
                    value,
                }));
                if buffer.len() >= CHUNK {
                    report.points += buffer.len() as u64;
                    target.write(&buffer).await?;
                    buffer.clear();
                    target
                        .meta_set(PROGRESS, progress(PHASE_POINTS, completed))
                        .await?;
                }
                if !full {
                    break;
                }
            }
            completed = id;
            report.series += 1;
        }
        report.points += buffer.len() as u64;
        target.write(&buffer).await?;
        phase = PHASE_EVENTS;
        done_upto = 0;
        target
            .meta_set(PROGRESS, progress(phase, done_upto))
            .await?;
    }

    if phase == PHASE_EVENTS {
        loop {
            let rows = src.export_events(done_upto, CHUNK as i64).await?;
            let Some((last, _)) = rows.last() else {
                break;
            };
            done_upto = *last;
            report.events += rows.len() as u64;
            let events = rows.into_iter().map(|(_, e)| e).collect();
            target
                .write_events_with_progress(events, PROGRESS, progress(PHASE_EVENTS, done_upto))
                .await?;
        }
    }
    // Everything copied is on disk before the import is recorded as done.
    target.sync().await?;
    target.meta_set(PROGRESS, progress(PHASE_DONE, 0)).await?;
    target.sync().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fjall::FjallOptions;
    use tp_core::{DeviceEvent, DeviceId, Order, TsQuery, Value};

    fn all(d: DeviceId) -> TsQuery {
        TsQuery {
            device_id: d,
            keys: vec![],
            start: i64::MIN,
            end: i64::MAX,
            aggregation: None,
            limit: None,
            order: Order::Asc,
        }
    }

    /// Everything is copied once; a second run (and a partial rerun after progress was
    /// reset to the events phase) neither duplicates nor loses anything.
    #[tokio::test]
    async fn imports_everything_once_and_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("timeseries.db");
        let devices = [DeviceId::new(), DeviceId::new()];
        let mut points = Vec::new();
        // More than one chunk for one series, several series, every value type.
        for i in 0..(CHUNK as i64 + 10) {
            points.push(TelemetryPoint {
                device_id: devices[0],
                key: "temp".into(),
                ts: 1_000 + i,
                value: Value::Float(i as f64 / 2.0),
            });
        }
        for (k, v) in [
            ("on", Value::Bool(true)),
            ("n", Value::Integer(-3)),
            ("s", Value::String("x".into())),
            ("j", Value::Json(serde_json::json!({"a": 1}))),
        ] {
            points.push(TelemetryPoint {
                device_id: devices[1],
                key: k.into(),
                ts: 5,
                value: v,
            });
        }
        let events: Vec<DeviceEvent> = (0..3)
            .map(|i| DeviceEvent {
                device_id: devices[1],
                ts: 10 + i,
                message_id: format!("m{i}"),
                method: "alarm".into(),
                params: serde_json::json!({"i": i}),
            })
            .collect();
        {
            let sqlite = SqliteTimeSeriesStore::open(&old).await.expect("sqlite");
            sqlite.write(&points).await.expect("write");
            sqlite.write_events(&events).await.expect("events");
        }

        let target = FjallTimeSeriesStore::open(&dir.path().join("ts"), FjallOptions::default())
            .await
            .expect("fjall");
        assert!(!is_done(&target).await.expect("done?"));
        let report = sqlite_to_fjall(&old, &target).await.expect("import");
        assert_eq!(
            (report.series, report.points, report.events),
            (5, points.len() as u64, 3)
        );
        assert!(is_done(&target).await.expect("done?"));

        let check = || async {
            assert_eq!(
                target.query(&all(devices[0])).await.expect("q").len(),
                CHUNK + 10
            );
            let latest = target.latest(devices[1], None).await.expect("latest");
            assert_eq!(
                latest.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
                ["j", "n", "on", "s"]
            );
            assert_eq!(
                target.latest(devices[0], None).await.expect("latest")[0].ts,
                1_000 + CHUNK as i64 + 9
            );
            assert_eq!(
                target
                    .query_events(devices[1], 0, 100, 10, Order::Asc)
                    .await
                    .expect("events"),
                events
            );
        };
        check().await;

        // Done: nothing is read again.
        let again = sqlite_to_fjall(&old, &target).await.expect("again");
        assert!(again.already_done);
        check().await;

        // Interrupted after the last event batch committed but before "done": the
        // rerun copies nothing more.
        target
            .meta_set(PROGRESS, progress(PHASE_EVENTS, 3))
            .await
            .expect("rewind");
        let resumed = sqlite_to_fjall(&old, &target).await.expect("resume");
        assert!(resumed.resumed);
        assert_eq!((resumed.points, resumed.events), (0, 0));
        check().await;

        // Interrupted in the points phase, with points written past the recorded
        // progress: they are copied again, without duplicates.
        let second = FjallTimeSeriesStore::open(&dir.path().join("ts2"), FjallOptions::default())
            .await
            .expect("fjall");
        second.write(&points[..1000]).await.expect("partial");
        second
            .meta_set(PROGRESS, progress(PHASE_POINTS, 0))
            .await
            .expect("progress");
        let resumed = sqlite_to_fjall(&old, &second).await.expect("resume");
        assert!(resumed.resumed);
        assert_eq!(
            second.query(&all(devices[0])).await.expect("q").len(),
            CHUNK + 10
        );
        assert_eq!(
            second
                .query_events(devices[1], 0, 100, 10, Order::Asc)
                .await
                .expect("events"),
            events
        );

        // A missing source is reported, not an error.
        let fresh = FjallTimeSeriesStore::temporary(FjallOptions::default())
            .await
            .expect("fresh");
        let none = sqlite_to_fjall(&dir.path().join("absent.db"), &fresh)
            .await
            .expect("absent");
        assert!(none.no_source);
        assert!(!is_done(&fresh).await.expect("done?"));
    }
}
