//! Template: plug your own storage into the platform by implementing a tp-core trait,
//! then prove it behaves like every built-in backend by running the conformance suite.
//!
//! Here the "backend" is a plain in-memory `BTreeMap`; replace the bodies with calls to
//! your database. Run with `cargo run -p tp-examples --example custom_timeseries_backend`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tp_core::testing::timeseries as suite;
use tp_core::{
    Aggregation, DeviceEvent, DeviceId, KeyValue, Order, Result, TelemetryPoint, TimeSeriesStore,
    Timestamp, TsQuery, Value,
};

#[derive(Debug, Default)]
struct BTreeTimeSeries {
    points: Mutex<BTreeMap<(DeviceId, String, Timestamp), Value>>,
    events: Mutex<Vec<DeviceEvent>>,
}

fn in_keys(keys: Option<&[String]>, key: &str) -> bool {
    keys.is_none_or(|k| k.is_empty() || k.iter().any(|x| x == key))
}

fn aggregate(agg: Aggregation, values: &[Value]) -> Option<Value> {
    if agg == Aggregation::Count {
        return Some(Value::Integer(values.len() as i64));
    }
    let nums: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
    if nums.is_empty() {
        return None;
    }
    let v = match agg {
        Aggregation::Avg => nums.iter().sum::<f64>() / nums.len() as f64,
        Aggregation::Min => nums.iter().copied().fold(f64::INFINITY, f64::min),
        Aggregation::Max => nums.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Aggregation::Sum => nums.iter().sum(),
        Aggregation::Count => unreachable!("handled above"),
    };
    Some(Value::Float(v))
}

#[async_trait]
impl TimeSeriesStore for BTreeTimeSeries {
    fn backend(&self) -> &'static str {
        "btree-example"
    }

    async fn healthcheck(&self) -> Result<()> {
        Ok(())
    }

    async fn write(&self, points: &[TelemetryPoint]) -> Result<()> {
        let mut map = self.points.lock().unwrap();
        for p in points {
            map.insert((p.device_id, p.key.clone(), p.ts), p.value.clone());
        }
        Ok(())
    }

    async fn latest(&self, device: DeviceId, keys: Option<&[String]>) -> Result<Vec<KeyValue>> {
        let map = self.points.lock().unwrap();
        let mut latest: BTreeMap<String, KeyValue> = BTreeMap::new();
        for ((d, key, ts), value) in map.iter() {
            if *d == device && in_keys(keys, key) {
                // keys then ts ascend, so the last one seen per key is the newest
                latest.insert(
                    key.clone(),
                    KeyValue {
                        key: key.clone(),
                        ts: *ts,
                        value: value.clone(),
                    },
                );
            }
        }
        Ok(latest.into_values().collect())
    }

    async fn query(&self, q: &TsQuery) -> Result<Vec<KeyValue>> {
        let map = self.points.lock().unwrap();
        let mut by_key: BTreeMap<String, Vec<KeyValue>> = BTreeMap::new();
        for ((d, key, ts), value) in map.iter() {
            if *d == q.device_id && in_keys(Some(&q.keys), key) && *ts >= q.start && *ts < q.end {
                by_key.entry(key.clone()).or_default().push(KeyValue {
                    key: key.clone(),
                    ts: *ts,
                    value: value.clone(),
                });
            }
        }
        let mut out = Vec::new();
        for (key, rows) in by_key {
            let mut rows = match q.aggregation {
                None => rows,
                Some((agg, interval)) => {
                    let mut buckets: BTreeMap<Timestamp, Vec<Value>> = BTreeMap::new();
                    for r in rows {
                        let start = q.start + (r.ts - q.start) / interval * interval;
                        buckets.entry(start).or_default().push(r.value);
                    }
                    buckets
                        .into_iter()
                        .filter_map(|(ts, values)| {
                            aggregate(agg, &values).map(|value| KeyValue {
                                key: key.clone(),
                                ts,
                                value,
                            })
                        })
                        .collect()
                }
            };
            if q.order == Order::Desc {
                rows.reverse();
            }
            if let Some(limit) = q.limit {
                rows.truncate(limit as usize);
            }
            out.extend(rows);
        }
        Ok(out)
    }

    async fn delete_range(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<u64> {
        let mut map = self.points.lock().unwrap();
        let before = map.len();
        map.retain(|(d, key, ts), _| {
            !(*d == device && in_keys(keys, key) && *ts >= start && *ts < end)
        });
        Ok((before - map.len()) as u64)
    }

    async fn write_events(&self, events: &[DeviceEvent]) -> Result<()> {
        self.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }

    async fn query_events(
        &self,
        device: DeviceId,
        start: Timestamp,
        end: Timestamp,
        limit: u64,
        order: Order,
    ) -> Result<Vec<DeviceEvent>> {
        let mut events: Vec<DeviceEvent> = self
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.device_id == device && e.ts >= start && e.ts < end)
            .cloned()
            .collect();
        events.sort_by_key(|e| e.ts);
        if order == Order::Desc {
            events.reverse();
        }
        events.truncate(limit as usize);
        Ok(events)
    }
}

#[tokio::main]
async fn main() {
    let store = BTreeTimeSeries::default();
    // The same cases every built-in backend passes (each one panics on a violation).
    suite::run_all(&store).await;
    println!(
        "{} passes the TimeSeriesStore conformance suite",
        store.backend()
    );
}
