//! TDengine [`TimeSeriesStore`] over WebSocket (`taos` crate, `ws-rustls`; no native
//! `libtaos` needed).
//!
//! [`TdengineTimeSeriesStore::connect`] takes a `taos` DSN
//! (`taos+ws://root:taosdata@host:6041`, `taos+wss://host:443?token=...`, `ws://...`)
//! and [`TdengineOptions`], creates the database (`PRECISION 'ms'`, `KEEP`, `COMP`,
//! `CACHEMODEL`, ...) and the two super tables when missing, and checks the server
//! answers. [`parse_url`] turns the `taos+ws://host:port/database?keep_days=..` form of
//! configuration files into a DSN and options.
//!
//! Layout (see the `sql` module for the exact statements):
//! - telemetry: super table `ts_kv` with typed columns (`bool_v`, `int_v`, `float_v`,
//!   `str_v` for strings and JSON text), a type tag `vtype` and a numeric view `num_v`;
//!   tags `device_id`, `k`, `tenant_id`, `profile_id`; one child table per device and
//!   key, named from the full device UUID and a digest of the key;
//! - `latest`: `LAST_ROW` per key (served from TDengine's last-row cache);
//! - aggregation: `INTERVAL` windows with an offset that aligns them to the query
//!   start, so buckets are exactly `start + k*interval`;
//! - events: super table `events`, one child table per device.
//!
//! Limits: strings and JSON longer than [`TdengineOptions::max_string_chars`] and
//! strings containing NUL are rejected as invalid; two events of one device with the
//! same millisecond timestamp keep only the last (TDengine identifies a row by table
//! and timestamp); the `tenant_id` / `profile_id` tags are created but not yet filled,
//! because [`TimeSeriesStore::write`] does not carry them.
//!
//! Connections: one WebSocket, multiplexing concurrent requests. A transport error
//! (refused, closed, timed out) is [`Error::Unavailable`] naming the address, and the
//! next call opens a fresh WebSocket.
//!
//! Testing: no TDengine server can be installed in CI, so the SQL is unit-tested
//! exactly, and the conformance suite runs only when `TP_TEST_TDENGINE_DSN` is set
//! (for example `taos+ws://root:taosdata@127.0.0.1:6041`). Unlike the other
//! services, a missing `TP_TEST_TDENGINE_DSN` skips even under `TP_REQUIRE_SERVICES`.

mod options;
mod sql;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use taos::{AsyncFetchable, AsyncQueryable, AsyncTBuilder, Taos, TaosBuilder};
use tp_core::{
    DeviceEvent, DeviceId, Error, KeyValue, Order, Result, TelemetryPoint, TimeSeriesStore,
    Timestamp, TsQuery, Value,
};

pub use options::{CacheModel, TdengineOptions, parse_url};
use sql::TableRows;

/// Backend name used in errors.
const BACKEND: &str = "tdengine";

/// What went wrong talking to TDengine; mapped into [`tp_core::Error`].
#[derive(Debug, thiserror::Error)]
enum TdengineError {
    #[error("tdengine at {addr}: {source}")]
    Taos { addr: String, source: taos::Error },
    #[error("column {column} of a tdengine result holds {found}")]
    Decode { column: &'static str, found: String },
}

/// Client-side transport error codes of `taos-ws` (websocket error, connection
/// closed, send and receive timeouts, I/O).
fn is_transport(e: &taos::Error) -> bool {
    (0xE001..=0xE005).contains(&i32::from(e.code()))
}

impl From<TdengineError> for Error {
    fn from(e: TdengineError) -> Self {
        match &e {
            TdengineError::Taos { source, .. } if is_transport(source) => Error::Unavailable {
                backend: BACKEND,
                source: Box::new(e),
            },
            _ => Error::backend(BACKEND, e),
        }
    }
}

fn decode_err(column: &'static str, found: &taos::Value) -> Error {
    TdengineError::Decode {
        column,
        found: format!("{found:?}"),
    }
    .into()
}

/// A [`TimeSeriesStore`] in TDengine. See the [module docs](self).
pub struct TdengineTimeSeriesStore {
    builder: TaosBuilder,
    conn: RwLock<Arc<Taos>>,
    options: TdengineOptions,
    addr: String,
}

impl std::fmt::Debug for TdengineTimeSeriesStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TdengineTimeSeriesStore")
            .field("addr", &self.addr)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl TdengineTimeSeriesStore {
    /// Connects with a `taos` DSN, creates the database and super tables if missing and
    /// checks the server answers. A database in the DSN path overrides
    /// `options.database`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed DSN (field `"tdengine url"`) or bad options;
    /// [`Error::Unavailable`] naming the address when the server cannot be reached;
    /// [`Error::Backend`] when it rejects the schema statements.
    pub async fn connect(dsn: &str, mut options: TdengineOptions) -> Result<Self> {
        let mut parsed: taos::Dsn = dsn
            .parse()
            .map_err(|e: taos::DsnError| Error::invalid(options::URL_FIELD, e.to_string()))?;
        if let Some(db) = parsed.subject.take().filter(|s| !s.is_empty()) {
            options.database = db;
        }
        options.validate()?;
        let addr = parsed
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let builder = TaosBuilder::from_dsn(parsed)
            .map_err(|e| Error::invalid(options::URL_FIELD, e.to_string()))?;
        let taos = AsyncTBuilder::build(&builder)
            .await
            .map_err(|source| TdengineError::Taos {
                addr: addr.clone(),
                source,
            })?;
        let store = Self {
            builder,
            conn: RwLock::new(Arc::new(taos)),
            options,
            addr,
        };
        store.healthcheck().await?;
        for statement in [
            sql::create_database(&store.options),
            sql::create_telemetry_stable(&store.options),
            sql::create_events_stable(&store.options),
        ] {
            store.exec(&statement).await?;
        }
        Ok(store)
    }

    /// The options in force.
    pub fn options(&self) -> &TdengineOptions {
        &self.options
    }

    fn db(&self) -> &str {
        &self.options.database
    }

    fn connection(&self) -> Arc<Taos> {
        self.conn
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Maps an error; after a transport error the next call gets a fresh WebSocket.
    async fn fail(&self, used: &Arc<Taos>, source: taos::Error) -> Error {
        if is_transport(&source)
            && let Ok(fresh) = AsyncTBuilder::build(&self.builder).await
        {
            let mut slot = self
                .conn
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if Arc::ptr_eq(&slot, used) {
                *slot = Arc::new(fresh);
            }
        }
        TdengineError::Taos {
            addr: self.addr.clone(),
            source,
        }
        .into()
    }

    /// Runs a statement; returns the affected rows.
    async fn exec(&self, statement: &str) -> Result<usize> {
        let conn = self.connection();
        let result = conn.exec(statement).await;
        match result {
            Ok(n) => Ok(n),
            Err(e) => Err(self.fail(&conn, e).await),
        }
    }

    /// Runs a query; returns its rows.
    async fn query_rows(&self, statement: &str) -> Result<Vec<Vec<taos::Value>>> {
        let conn = self.connection();
        let result = match conn.query(statement).await {
            Ok(mut rs) => rs.to_records().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(rows) => Ok(rows),
            Err(e) => Err(self.fail(&conn, e).await),
        }
    }

    /// The device's keys with child tables, ascending, restricted to `only` when given.
    async fn keys(&self, device: DeviceId, only: &[String]) -> Result<Vec<String>> {
        let rows = self
            .query_rows(&sql::device_keys(self.db(), device))
            .await?;
        let mut keys = rows
            .iter()
            .map(|r| col_string("k", cell(r, 0)))
            .collect::<Result<Vec<_>>>()?;
        if !only.is_empty() {
            keys.retain(|k| only.contains(k));
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// The `i`-th cell of a row (a short row reads as NULL).
fn cell(row: &[taos::Value], i: usize) -> &taos::Value {
    const NULL: taos::Value = taos::Value::Null(taos::Ty::Null);
    row.get(i).unwrap_or(&NULL)
}

fn is_null(v: &taos::Value) -> bool {
    matches!(v, taos::Value::Null(_))
}

/// A timestamp or integer cell as `i64`.
fn col_i64(column: &'static str, v: &taos::Value) -> Result<i64> {
    use taos::Value as V;
    Ok(match v {
        V::Timestamp(t) => t.as_raw_i64(),
        V::BigInt(i) => *i,
        V::Int(i) => i64::from(*i),
        V::SmallInt(i) => i64::from(*i),
        V::TinyInt(i) => i64::from(*i),
        V::UTinyInt(i) => i64::from(*i),
        V::USmallInt(i) => i64::from(*i),
        V::UInt(i) => i64::from(*i),
        V::UBigInt(i) => i64::try_from(*i).map_err(|_| decode_err(column, v))?,
        other => return Err(decode_err(column, other)),
    })
}

fn col_f64(column: &'static str, v: &taos::Value) -> Result<f64> {
    match v {
        taos::Value::Double(f) => Ok(*f),
        taos::Value::Float(f) => Ok(f64::from(*f)),
        other => col_i64(column, other).map(|i| i as f64),
    }
}

fn col_bool(column: &'static str, v: &taos::Value) -> Result<bool> {
    match v {
        taos::Value::Bool(b) => Ok(*b),
        other => col_i64(column, other).map(|i| i != 0),
    }
}

fn col_string(column: &'static str, v: &taos::Value) -> Result<String> {
    match v {
        taos::Value::NChar(s) | taos::Value::VarChar(s) => Ok(s.clone()),
        taos::Value::Json(j) => Ok(j.to_string()),
        other => Err(decode_err(column, other)),
    }
}

/// Rebuilds a value from `vtype, bool_v, int_v, float_v, str_v` cells.
fn decode_value(cells: &[taos::Value]) -> Result<Value> {
    let tag = col_i64("vtype", cell(cells, 0))?;
    let typed = |i: usize, column: &'static str| {
        let v = cell(cells, i);
        if is_null(v) {
            Err(decode_err(column, v))
        } else {
            Ok(v)
        }
    };
    Ok(match tag {
        0 => Value::Bool(col_bool("bool_v", typed(1, "bool_v")?)?),
        1 => Value::Integer(col_i64("int_v", typed(2, "int_v")?)?),
        2 => Value::Float(col_f64("float_v", typed(3, "float_v")?)?),
        3 => Value::String(col_string("str_v", typed(4, "str_v")?)?),
        4 => {
            let text = col_string("str_v", typed(4, "str_v")?)?;
            Value::Json(serde_json::from_str(&text).map_err(|e| {
                Error::from(TdengineError::Decode {
                    column: "str_v",
                    found: format!("undecodable JSON: {e}"),
                })
            })?)
        }
        _ => return Err(decode_err("vtype", cell(cells, 0))),
    })
}

/// Keeps the last of duplicate `(device, key, ts)` points and groups them into child
/// tables (first appearance order), each table's rows by time.
fn telemetry_tables(db: &str, points: &[TelemetryPoint], max_chars: u32) -> Result<Vec<TableRows>> {
    let mut last: HashMap<(DeviceId, &str, Timestamp), usize> = HashMap::new();
    for (i, p) in points.iter().enumerate() {
        last.insert((p.device_id, p.key.as_str(), p.ts), i);
    }
    let mut order: Vec<(DeviceId, &str)> = Vec::new();
    let mut per_table: HashMap<(DeviceId, &str), Vec<&TelemetryPoint>> = HashMap::new();
    for (i, p) in points.iter().enumerate() {
        if last[&(p.device_id, p.key.as_str(), p.ts)] != i {
            continue;
        }
        let id = (p.device_id, p.key.as_str());
        per_table
            .entry(id)
            .or_insert_with(|| {
                order.push(id);
                Vec::new()
            })
            .push(p);
    }
    order
        .into_iter()
        .map(|(device, key)| {
            let mut rows = per_table.remove(&(device, key)).unwrap_or_default();
            rows.sort_by_key(|p| p.ts);
            Ok(TableRows {
                target: sql::telemetry_target(db, device, key)?,
                rows: rows
                    .iter()
                    .map(|p| sql::value_row(p.ts, &p.value, max_chars))
                    .collect::<Result<_>>()?,
            })
        })
        .collect()
}

fn check_key(key: &str, max: u32) -> Result<()> {
    if key.is_empty() || key.chars().count() > max as usize {
        return Err(Error::invalid(
            "key",
            format!("telemetry keys must have 1 to {max} characters"),
        ));
    }
    Ok(())
}

#[async_trait]
impl TimeSeriesStore for TdengineTimeSeriesStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn healthcheck(&self) -> Result<()> {
        self.query_rows("SELECT SERVER_VERSION()").await.map(drop)
    }

    async fn write(&self, points: &[TelemetryPoint]) -> Result<()> {
        for p in points {
            check_key(&p.key, self.options.max_key_chars)?;
        }
        let tables = telemetry_tables(self.db(), points, self.options.max_string_chars)?;
        for statement in sql::pack_inserts(&tables, sql::MAX_SQL_BYTES) {
            self.exec(&statement).await?;
        }
        Ok(())
    }

    async fn latest(&self, device: DeviceId, keys: Option<&[String]>) -> Result<Vec<KeyValue>> {
        if keys.is_some_and(<[String]>::is_empty) {
            return Ok(Vec::new());
        }
        let rows = self
            .query_rows(&sql::latest(self.db(), device, keys)?)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if is_null(cell(&row, 1)) {
                continue; // a child table without rows
            }
            out.push(KeyValue {
                key: col_string("k", cell(&row, 0))?,
                ts: col_i64("ts", cell(&row, 1))?,
                value: decode_value(row.get(2..).unwrap_or_default())?,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn query(&self, q: &TsQuery) -> Result<Vec<KeyValue>> {
        if q.start >= q.end || q.limit == Some(0) {
            return Ok(Vec::new());
        }
        if let Some((_, interval)) = q.aggregation
            && interval <= 0
        {
            return Err(Error::invalid(
                "interval",
                "must be a positive number of ms",
            ));
        }
        let mut out = Vec::new();
        for key in self.keys(q.device_id, &q.keys).await? {
            match q.aggregation {
                None => {
                    let statement = sql::history(
                        self.db(),
                        q.device_id,
                        &key,
                        q.start,
                        q.end,
                        q.order,
                        q.limit,
                    );
                    for row in self.query_rows(&statement).await? {
                        out.push(KeyValue {
                            key: key.clone(),
                            ts: col_i64("ts", cell(&row, 0))?,
                            value: decode_value(row.get(1..).unwrap_or_default())?,
                        });
                    }
                }
                Some((agg, interval)) => {
                    let statement = sql::aggregate(
                        self.db(),
                        q.device_id,
                        &key,
                        q.start,
                        q.end,
                        agg,
                        interval,
                        q.order,
                        q.limit,
                    );
                    for row in self.query_rows(&statement).await? {
                        let v = cell(&row, 1);
                        if is_null(v) {
                            continue;
                        }
                        let value = match agg {
                            tp_core::Aggregation::Count => Value::Integer(col_i64("count", v)?),
                            _ => Value::Float(col_f64("aggregate", v)?),
                        };
                        out.push(KeyValue {
                            key: key.clone(),
                            ts: col_i64("_wstart", cell(&row, 0))?,
                            value,
                        });
                    }
                }
            }
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
        if start >= end || keys.is_some_and(<[String]>::is_empty) {
            return Ok(0);
        }
        let mut deleted = 0u64;
        for key in self.keys(device, keys.unwrap_or_default()).await? {
            let rows = self
                .query_rows(&sql::count_range(self.db(), device, &key, start, end))
                .await?;
            let n = rows
                .first()
                .map(|r| col_i64("count", cell(r, 0)))
                .transpose()?
                .unwrap_or(0);
            if n > 0 {
                self.exec(&sql::delete_range(self.db(), device, &key, start, end))
                    .await?;
                deleted += u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(deleted)
    }

    async fn write_events(&self, events: &[DeviceEvent]) -> Result<()> {
        let mut order: Vec<DeviceId> = Vec::new();
        let mut per_device: HashMap<DeviceId, Vec<String>> = HashMap::new();
        for e in events {
            let row = sql::event_row(e, self.options.max_string_chars)?;
            per_device
                .entry(e.device_id)
                .or_insert_with(|| {
                    order.push(e.device_id);
                    Vec::new()
                })
                .push(row);
        }
        let tables: Vec<TableRows> = order
            .into_iter()
            .map(|d| TableRows {
                target: sql::events_target(self.db(), d),
                rows: per_device.remove(&d).unwrap_or_default(),
            })
            .collect();
        for statement in sql::pack_inserts(&tables, sql::MAX_SQL_BYTES) {
            self.exec(&statement).await?;
        }
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
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let statement = sql::query_events(self.db(), device, start, end, limit, order);
        self.query_rows(&statement)
            .await?
            .iter()
            .map(|row| {
                let params = col_string("params", cell(row, 3))?;
                Ok(DeviceEvent {
                    device_id: device,
                    ts: col_i64("ts", cell(row, 0))?,
                    message_id: col_string("message_id", cell(row, 1))?,
                    method: col_string("method", cell(row, 2))?,
                    params: serde_json::from_str(&params).map_err(|e| {
                        Error::from(TdengineError::Decode {
                            column: "params",
                            found: format!("undecodable JSON: {e}"),
                        })
                    })?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use taos::Value as V;

    use super::*;

    #[test]
    fn values_decode_by_type_tag() {
        let null = || V::Null(taos::Ty::Null);
        let row = |tag: i8, b: V, i: V, f: V, s: V| vec![V::TinyInt(tag), b, i, f, s];
        assert_eq!(
            decode_value(&row(0, V::Bool(true), null(), null(), null())).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            decode_value(&row(1, null(), V::BigInt(i64::MIN), null(), null())).unwrap(),
            Value::Integer(i64::MIN)
        );
        assert_eq!(
            decode_value(&row(2, null(), null(), V::Double(3.0), null())).unwrap(),
            Value::Float(3.0)
        );
        assert_eq!(
            decode_value(&row(3, null(), null(), null(), V::NChar("42".into()))).unwrap(),
            Value::String("42".into())
        );
        assert_eq!(
            decode_value(&row(
                4,
                null(),
                null(),
                null(),
                V::NChar(r#"[1,"x",null]"#.into())
            ))
            .unwrap(),
            Value::Json(json!([1, "x", null]))
        );
        // A stale column of another type (left by an overwrite) is ignored.
        assert_eq!(
            decode_value(&row(3, null(), V::BigInt(7), null(), V::NChar("s".into()))).unwrap(),
            Value::String("s".into())
        );
        assert!(decode_value(&row(1, null(), null(), null(), null())).is_err());
        assert!(decode_value(&row(9, null(), null(), null(), null())).is_err());
        assert_eq!(
            col_i64(
                "ts",
                &V::Timestamp(taos::taos_query::common::Timestamp::Milliseconds(
                    1_700_000_000_000
                ))
            )
            .unwrap(),
            1_700_000_000_000
        );
    }

    #[test]
    fn writes_keep_the_last_duplicate_and_group_by_table() {
        let d = DeviceId::new();
        let p = |key: &str, ts, v| TelemetryPoint {
            device_id: d,
            key: key.into(),
            ts,
            value: Value::Integer(v),
        };
        let tables = telemetry_tables(
            "db",
            &[p("b", 2, 1), p("a", 1, 1), p("b", 1, 2), p("b", 2, 3)],
            16,
        )
        .unwrap();
        // Tables in order of their first kept point: the first `b` point was superseded.
        assert_eq!(tables.len(), 2);
        assert_eq!(
            tables[0].target,
            sql::telemetry_target("db", d, "a").unwrap()
        );
        assert_eq!(tables[0].rows.len(), 1);
        assert_eq!(
            tables[1].target,
            sql::telemetry_target("db", d, "b").unwrap()
        );
        assert_eq!(
            tables[1].rows,
            vec![
                "(1, 1, NULL, 2, NULL, 2.0, NULL)".to_owned(),
                "(2, 1, NULL, 3, NULL, 3.0, NULL)".to_owned()
            ]
        );
        assert!(check_key("", 10).is_err());
        assert!(check_key("k".repeat(11).as_str(), 10).is_err());
        assert!(check_key("ok", 10).is_ok());
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable_and_names_the_address() {
        let err = TdengineTimeSeriesStore::connect(
            "taos+ws://root:pw-secret@127.0.0.1:1",
            TdengineOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Unavailable {
                    backend: "tdengine",
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("pw-secret"), "{text}");
    }

    /// A store on `TP_TEST_TDENGINE_DSN`, or `None` to skip.
    ///
    /// Deliberately not `tp_core::testing::service_url`: no TDengine server can be
    /// installed on the CI machines, so a missing DSN skips even when
    /// `TP_REQUIRE_SERVICES` is set. The database is `TP_TEST_TDENGINE_DB` or `tp_test`;
    /// cases use fresh device ids, so they share it.
    async fn test_store() -> Option<Arc<dyn TimeSeriesStore>> {
        let dsn = std::env::var("TP_TEST_TDENGINE_DSN")
            .ok()
            .filter(|v| !v.is_empty());
        let Some(dsn) = dsn else {
            eprintln!("skipping: TP_TEST_TDENGINE_DSN is not set");
            return None;
        };
        let database = std::env::var("TP_TEST_TDENGINE_DB").unwrap_or_else(|_| "tp_test".into());
        let options = TdengineOptions {
            database,
            keep_days: 36_500,
            ..TdengineOptions::default()
        };
        let store = TdengineTimeSeriesStore::connect(&dsn, options)
            .await
            .expect("connect to TP_TEST_TDENGINE_DSN");
        Some(Arc::new(store))
    }

    mod conformance {
        tp_core::timeseries_conformance!(super::test_store());
    }
}
