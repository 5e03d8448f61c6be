//! [`SqliteTimeSeriesStore`].
//!
//! # Layout and why (write throughput)
//!
//! The ingest path writes batches of a few thousand points where nearly every point
//! belongs to a different `(device, key)` series, so each point costs one B-tree
//! insert at a distinct place in the history table. What this module does to make
//! that insert cheap:
//!
//! - **Integer series ids.** `ts_series` maps `(device_id, key)` to an integer
//!   `series_id` and history is `ts_kv(series_id, ts, ..)` `WITHOUT ROWID`. Seeks
//!   compare two small integers instead of a 16-byte blob and a text key, and rows are
//!   half the size (more per page, shallower tree, less to `memmove` on splits).
//!   The mapping is resolved through an in-memory cache ([`SeriesCache`]); series
//!   rows are never deleted, so a committed id never goes stale, even with several
//!   stores on one file. New series are inserted inside the write transaction and
//!   published to the cache only after it commits.
//! - **No latest table.** The newest point of a series is the last row of its
//!   `(series_id, ts)` range, one index seek, so `latest` reads it from history and
//!   `delete_range` is consistent for free. Maintaining a latest row per point
//!   doubled the B-tree work of a write.
//! - **One value column.** `v` has no declared type and keeps the storage class it is
//!   bound with; with the `vtype` tag that is 4 binds per point instead of 6.
//! - **Sorted, chunked inserts.** A batch is inserted in `(series_id, ts)` order
//!   (stable, so the last of duplicate points still wins), keeping consecutive
//!   inserts on neighbouring pages, through multi-row `INSERT`s whose row counts are
//!   powers of two up to [`MAX_ROWS`]: every statement text comes from a fixed set
//!   and stays prepared in the connection's statement cache.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite, SqliteConnection};
use tp_core::{
    Aggregation, DeviceEvent, DeviceId, Error, KeyValue, Order, Result, TelemetryPoint,
    TimeSeriesStore, Timestamp, TsQuery, Value,
};

use super::error::{self, SqliteError, db};
use super::{Pools, ROWS_PER_INSERT, migrator, to_i64};
use crate::series_cache::{MISSING, SeriesCache};

/// [`TimeSeriesStore`] on SQLite.
///
/// History lives in `ts_kv`, a `WITHOUT ROWID` table keyed by `(series_id, ts)` with a
/// type tag and one dynamically typed value column; `ts_series` names the series
/// (`device_id`, `key`); events go to `ts_events`. A `write` is one transaction of
/// multi-row inserts; `latest` is the last history row of each series; queries run
/// per series on the primary-key index, and aggregation is done in SQL (`GROUP BY`
/// bucket). Writing a `(device, key, ts)` again replaces its value.
#[derive(Debug)]
pub struct SqliteTimeSeriesStore {
    pools: Pools,
    series: SeriesCache,
}

/// Largest number of rows in one history `INSERT` (4 binds per row: 16 384 variables,
/// below SQLite's limit of 32 766). Must be a power of two.
const MAX_ROWS: usize = 2048;

/// `INSERT` statements for `2^i` history rows, `i = 0..=log2(MAX_ROWS)`.
fn insert_sql(rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        (0..=MAX_ROWS.trailing_zeros())
            .map(|i| {
                let n = 1usize << i;
                let mut sql = String::with_capacity(80 + n * 14);
                sql.push_str("INSERT INTO ts_kv (series_id, ts, vtype, v) VALUES ");
                for r in 0..n {
                    if r > 0 {
                        sql.push(',');
                    }
                    sql.push_str("(?,?,?,?)");
                }
                sql.push_str(
                    " ON CONFLICT (series_id, ts) DO UPDATE \
                     SET vtype = excluded.vtype, v = excluded.v",
                );
                sql
            })
            .collect()
    });
    debug_assert!(rows.is_power_of_two() && rows <= MAX_ROWS);
    &all[rows.trailing_zeros() as usize]
}

/// Splits `n` rows into statement sizes from [`insert_sql`]'s fixed set: full
/// [`MAX_ROWS`] chunks, then the binary digits of the remainder, largest first.
fn chunk_sizes(n: usize) -> impl Iterator<Item = usize> {
    let full = n / MAX_ROWS;
    let rest = n % MAX_ROWS;
    std::iter::repeat_n(MAX_ROWS, full).chain(
        (0..MAX_ROWS.trailing_zeros())
            .rev()
            .map(|i| 1usize << i)
            .filter(move |bit| rest & bit != 0),
    )
}

impl SqliteTimeSeriesStore {
    /// Opens (creating if missing, with parent directories) the database file at
    /// `path` and applies pending migrations. The file may be shared with
    /// [`super::SqliteMetadataStore`] and with other stores of this type.
    ///
    /// # Errors
    /// [`Error::Backend`] when the file cannot be created or opened or a migration fails.
    pub async fn open(path: &Path) -> Result<Self> {
        let m = migrator(sqlx::migrate!("./migrations/sqlite_ts"));
        Ok(Self {
            pools: Pools::open_file(path, &m).await?,
            series: SeriesCache::default(),
        })
    }

    /// A private in-memory database, dropped with the store (tests, demos).
    ///
    /// # Errors
    /// [`Error::Backend`] when SQLite cannot be initialised.
    pub async fn in_memory() -> Result<Self> {
        let m = migrator(sqlx::migrate!("./migrations/sqlite_ts"));
        Ok(Self {
            pools: Pools::open_memory(&m).await?,
            series: SeriesCache::default(),
        })
    }
}

/// Reading a whole store back, in chunks, for `crate::migrate`.
#[cfg(feature = "fjall")]
impl SqliteTimeSeriesStore {
    /// Whether any history row or event is stored.
    pub(crate) async fn has_data(&self) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM ts_kv) OR EXISTS (SELECT 1 FROM ts_events)",
        )
        .fetch_one(&self.pools.reader)
        .await
        .map_err(db)
    }

    /// Every series as `(series_id, device, key)`, ids ascending.
    pub(crate) async fn export_series(&self) -> Result<Vec<(i64, DeviceId, String)>> {
        let rows: Vec<(i64, Vec<u8>, String)> =
            sqlx::query_as("SELECT series_id, device_id, key FROM ts_series ORDER BY series_id")
                .fetch_all(&self.pools.reader)
                .await
                .map_err(db)?;
        rows.into_iter()
            .map(|(id, device, key)| {
                let device = uuid::Uuid::from_slice(&device)
                    .map_err(|e| SqliteError::decode("device_id", e))?;
                Ok((id, DeviceId(device), key))
            })
            .collect()
    }

    /// Up to `limit` history rows of a series after `after` (exclusive), ts ascending.
    pub(crate) async fn export_points(
        &self,
        series_id: i64,
        after: Timestamp,
        limit: i64,
    ) -> Result<Vec<(Timestamp, Value)>> {
        let rows = sqlx::query(
            "SELECT ts, vtype, v FROM ts_kv WHERE series_id = ? AND ts > ? \
             ORDER BY ts LIMIT ?",
        )
        .bind(series_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pools.reader)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| Ok((r.try_get("ts").map_err(db)?, decode_value(r)?)))
            .collect()
    }

    /// Up to `limit` events with a rowid above `after`, in rowid (insertion) order.
    pub(crate) async fn export_events(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, DeviceEvent)>> {
        let rows = sqlx::query(
            "SELECT rowid, device_id, ts, message_id, method, params FROM ts_events \
             WHERE rowid > ? ORDER BY rowid LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pools.reader)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let device: Vec<u8> = r.try_get("device_id").map_err(db)?;
                let device = uuid::Uuid::from_slice(&device)
                    .map_err(|e| SqliteError::decode("device_id", e))?;
                let rowid: i64 = r.try_get("rowid").map_err(db)?;
                Ok((rowid, event_from_row(r, DeviceId(device))?))
            })
            .collect()
    }
}

fn device_blob(d: DeviceId) -> [u8; 16] {
    *d.0.as_bytes()
}

fn order_sql(order: Order) -> &'static str {
    match order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    }
}

/// The numeric view of a stored value: integers and booleans as REAL, floats as is,
/// strings and JSON as NULL (ignored by aggregate functions).
const NUMERIC: &str = "CASE WHEN vtype < 3 THEN CAST(v AS REAL) END";

fn aggregate_sql(agg: Aggregation, order: Order) -> String {
    let (select, having) = match agg {
        Aggregation::Avg => ("AVG(num)", "HAVING COUNT(num) > 0"),
        Aggregation::Min => ("MIN(num)", "HAVING COUNT(num) > 0"),
        Aggregation::Max => ("MAX(num)", "HAVING COUNT(num) > 0"),
        Aggregation::Sum => ("SUM(num)", "HAVING COUNT(num) > 0"),
        Aggregation::Count => ("COUNT(*)", ""),
    };
    // Binds: start, interval, series, end, limit, bucket phase (see
    // `tp_core::bucket_phase`: no overflow for any start).
    format!(
        "SELECT bucket, {select} AS v FROM (\
           SELECT ?6 + (ts / ?2) * ?2 + CASE WHEN ts % ?2 >= ?2 + ?6 THEN ?2 ELSE 0 END \
           AS bucket, {NUMERIC} AS num FROM ts_kv \
           WHERE series_id = ?3 AND ts >= ?1 AND ts < ?4) \
         GROUP BY bucket {having} ORDER BY bucket {} LIMIT ?5",
        order_sql(order)
    )
}

/// Decodes the `vtype, v` columns of a history row.
fn decode_value(row: &SqliteRow) -> std::result::Result<Value, SqliteError> {
    let tag: i64 = row.try_get("vtype")?;
    let missing = || SqliteError::decode("v", format!("NULL for type tag {tag}"));
    Ok(match tag {
        0 => Value::Bool(row.try_get::<Option<i64>, _>("v")?.ok_or_else(missing)? != 0),
        1 => Value::Integer(row.try_get::<Option<i64>, _>("v")?.ok_or_else(missing)?),
        // SQLite stores NaN as NULL.
        2 => Value::Float(row.try_get::<Option<f64>, _>("v")?.unwrap_or(f64::NAN)),
        3 => Value::String(row.try_get::<Option<String>, _>("v")?.ok_or_else(missing)?),
        4 => {
            let text: String = row.try_get::<Option<String>, _>("v")?.ok_or_else(missing)?;
            Value::Json(serde_json::from_str(&text).map_err(|e| SqliteError::decode("v", e))?)
        }
        other => {
            return Err(SqliteError::decode(
                "vtype",
                format!("unknown type tag {other}"),
            ));
        }
    })
}

fn kv_from_row(row: &SqliteRow, key: &str) -> std::result::Result<KeyValue, SqliteError> {
    Ok(KeyValue {
        key: key.to_owned(),
        ts: row.try_get("ts")?,
        value: decode_value(row)?,
    })
}

fn event_from_row(
    row: &SqliteRow,
    device: DeviceId,
) -> std::result::Result<DeviceEvent, SqliteError> {
    let params: String = row.try_get("params")?;
    Ok(DeviceEvent {
        device_id: device,
        ts: row.try_get("ts")?,
        message_id: row.try_get("message_id")?,
        method: row.try_get("method")?,
        params: serde_json::from_str(&params).map_err(|e| SqliteError::decode("params", e))?,
    })
}

/// The series of `device` as `(series_id, key)`, keys ascending: all of them, or those
/// named in `keys` (unknown keys are skipped).
async fn device_series(
    conn: &mut SqliteConnection,
    device: DeviceId,
    keys: Option<&[String]>,
) -> Result<Vec<(i64, String)>> {
    let mut qb =
        QueryBuilder::<Sqlite>::new("SELECT series_id, key FROM ts_series WHERE device_id = ");
    qb.push_bind(device_blob(device).to_vec());
    if let Some(keys) = keys {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        qb.push(" AND key IN (");
        let mut list = qb.separated(", ");
        for k in keys {
            list.push_bind(k.as_str());
        }
        list.push_unseparated(")");
    }
    qb.push(" ORDER BY key");
    qb.build_query_as().fetch_all(&mut *conn).await.map_err(db)
}

/// Creates the series among `missing` that do not exist yet and returns the complete
/// `key -> series_id` map of every device involved, for the cache.
///
/// Runs inside the write transaction. `ON CONFLICT DO NOTHING` covers series another
/// store on the same file created since this one cached the device.
async fn create_series(
    conn: &mut SqliteConnection,
    missing: &[(DeviceId, &str)],
) -> Result<HashMap<DeviceId, HashMap<Box<str>, i64>>> {
    for chunk in missing.chunks(ROWS_PER_INSERT) {
        let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO ts_series (device_id, key) ");
        qb.push_values(chunk, |mut row, (device, key)| {
            row.push_bind(&device.0.as_bytes()[..]).push_bind(*key);
        });
        qb.push(" ON CONFLICT (device_id, key) DO NOTHING");
        qb.build().execute(&mut *conn).await.map_err(db)?;
    }
    let mut devices: Vec<DeviceId> = missing.iter().map(|(d, _)| *d).collect();
    devices.sort_unstable();
    devices.dedup();
    let mut out = HashMap::with_capacity(devices.len());
    for device in devices {
        let rows = device_series(conn, device, None).await?;
        out.insert(
            device,
            rows.into_iter().map(|(id, key)| (key.into(), id)).collect(),
        );
    }
    Ok(out)
}

/// Inserts the history rows `points[order[..]]` with their `ids`, in `order`.
async fn insert_history(
    conn: &mut SqliteConnection,
    points: &[TelemetryPoint],
    ids: &[i64],
    order: &[usize],
) -> Result<()> {
    let mut rest = order;
    for rows in chunk_sizes(order.len()) {
        let (chunk, tail) = rest.split_at(rows);
        rest = tail;
        let mut q = sqlx::query(insert_sql(rows));
        for &i in chunk {
            let p = &points[i];
            q = q.bind(ids[i]).bind(p.ts).bind(p.value.type_tag());
            q = match &p.value {
                Value::Bool(b) => q.bind(i64::from(*b)),
                Value::Integer(v) => q.bind(*v),
                Value::Float(v) => q.bind(*v),
                Value::String(s) => q.bind(s.as_str()),
                Value::Json(j) => q.bind(j.to_string()),
            };
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

#[async_trait]
impl TimeSeriesStore for SqliteTimeSeriesStore {
    fn backend(&self) -> &'static str {
        error::BACKEND
    }

    async fn healthcheck(&self) -> Result<()> {
        self.pools.healthcheck().await
    }

    async fn write(&self, points: &[TelemetryPoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        // Series ids from the cache (SQLite numbers rowids from 1, so `MISSING` is
        // never one).
        let (mut ids, missing) = self.series.ids(points.iter());

        let mut tx = self.pools.begin_write().await?;
        let created = if missing.is_empty() {
            HashMap::new()
        } else {
            let created = create_series(&mut tx, &missing).await?;
            for (id, p) in ids.iter_mut().zip(points) {
                if *id == MISSING {
                    *id = created
                        .get(&p.device_id)
                        .and_then(|keys| keys.get(p.key.as_str()))
                        .copied()
                        .ok_or_else(|| {
                            SqliteError::decode("series_id", "series missing after insert")
                        })?;
                }
            }
            created
        };

        // Stable: of equal (series, ts) points the last one is inserted last and wins.
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| (ids[i], points[i].ts));
        insert_history(&mut tx, points, &ids, &order).await?;
        tx.commit().await.map_err(db)?;

        // Only now: a rolled-back transaction must not leave ids in the cache.
        for (device, keys) in created {
            self.series.extend(device, keys);
        }
        Ok(())
    }

    async fn latest(&self, device: DeviceId, keys: Option<&[String]>) -> Result<Vec<KeyValue>> {
        // Per series: the newest ts (one seek to the end of its range), then that row.
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT s.key, k.ts, k.vtype, k.v FROM ts_series s \
             JOIN ts_kv k ON k.series_id = s.series_id AND k.ts = \
               (SELECT ts FROM ts_kv WHERE series_id = s.series_id ORDER BY ts DESC LIMIT 1) \
             WHERE s.device_id = ",
        );
        qb.push_bind(device_blob(device).to_vec());
        if let Some(keys) = keys {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            qb.push(" AND s.key IN (");
            let mut list = qb.separated(", ");
            for k in keys {
                list.push_bind(k.as_str());
            }
            list.push_unseparated(")");
        }
        qb.push(" ORDER BY s.key");
        let rows = qb.build().fetch_all(&self.pools.reader).await.map_err(db)?;
        rows.iter()
            .map(|r| {
                let key: String = r.try_get("key").map_err(db)?;
                kv_from_row(r, &key).map_err(Error::from)
            })
            .collect()
    }

    async fn query(&self, q: &TsQuery) -> Result<Vec<KeyValue>> {
        if let Some((_, interval)) = q.aggregation
            && interval <= 0
        {
            return Err(Error::invalid(
                "interval",
                format!("must be a positive number of milliseconds, got {interval}"),
            ));
        }
        if q.start >= q.end {
            return Ok(Vec::new());
        }
        let mut conn = self.pools.reader.acquire().await.map_err(db)?;
        let keys = (!q.keys.is_empty()).then_some(q.keys.as_slice());
        let series = device_series(&mut conn, q.device_id, keys).await?;
        // SQLite: a negative LIMIT means no limit.
        let limit = q.limit.map(to_i64).unwrap_or(-1);
        let mut out = Vec::new();
        match q.aggregation {
            None => {
                let sql = match q.order {
                    Order::Asc => {
                        "SELECT ts, vtype, v FROM ts_kv \
                         WHERE series_id = ? AND ts >= ? AND ts < ? ORDER BY ts ASC LIMIT ?"
                    }
                    Order::Desc => {
                        "SELECT ts, vtype, v FROM ts_kv \
                         WHERE series_id = ? AND ts >= ? AND ts < ? ORDER BY ts DESC LIMIT ?"
                    }
                };
                for (id, key) in &series {
                    let rows = sqlx::query(sql)
                        .bind(*id)
                        .bind(q.start)
                        .bind(q.end)
                        .bind(limit)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(db)?;
                    for r in &rows {
                        out.push(kv_from_row(r, key)?);
                    }
                }
            }
            Some((agg, interval)) => {
                let sql = aggregate_sql(agg, q.order);
                for (id, key) in &series {
                    let rows = sqlx::query(AssertSqlSafe(sql.clone()))
                        .bind(q.start)
                        .bind(interval)
                        .bind(*id)
                        .bind(q.end)
                        .bind(limit)
                        .bind(tp_core::bucket_phase(q.start, interval))
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(db)?;
                    for r in &rows {
                        let ts: Timestamp = r.try_get("bucket").map_err(db)?;
                        let value = match agg {
                            Aggregation::Count => Value::Integer(r.try_get("v").map_err(db)?),
                            _ => Value::Float(r.try_get("v").map_err(db)?),
                        };
                        out.push(KeyValue {
                            key: key.clone(),
                            ts,
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
        if start >= end || keys.is_some_and(|k| k.is_empty()) {
            return Ok(0);
        }
        let mut tx = self.pools.begin_write().await?;
        // The series rows stay (cached ids remain valid); `latest` is derived from the
        // history that remains, so there is nothing else to update.
        let series = device_series(&mut tx, device, keys).await?;
        let mut deleted = 0;
        for (id, _) in &series {
            deleted += sqlx::query("DELETE FROM ts_kv WHERE series_id = ? AND ts >= ? AND ts < ?")
                .bind(*id)
                .bind(start)
                .bind(end)
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected();
        }
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }

    async fn write_events(&self, events: &[DeviceEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pools.begin_write().await?;
        for chunk in events.chunks(ROWS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO ts_events (device_id, ts, message_id, method, params) ",
            );
            qb.push_values(chunk, |mut row, e| {
                row.push_bind(&e.device_id.0.as_bytes()[..])
                    .push_bind(e.ts)
                    .push_bind(e.message_id.as_str())
                    .push_bind(e.method.as_str())
                    .push_bind(e.params.to_string());
            });
            qb.build().execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn query_events(
        &self,
        device: DeviceId,
        start: Timestamp,
        end: Timestamp,
        limit: u64,
        order: Order,
    ) -> Result<Vec<DeviceEvent>> {
        let sql = match order {
            Order::Asc => {
                "SELECT ts, message_id, method, params FROM ts_events \
                 WHERE device_id = ? AND ts >= ? AND ts < ? ORDER BY ts ASC, rowid ASC LIMIT ?"
            }
            Order::Desc => {
                "SELECT ts, message_id, method, params FROM ts_events \
                 WHERE device_id = ? AND ts >= ? AND ts < ? ORDER BY ts DESC, rowid DESC LIMIT ?"
            }
        };
        let rows = sqlx::query(sql)
            .bind(device_blob(device).to_vec())
            .bind(start)
            .bind(end)
            .bind(to_i64(limit))
            .fetch_all(&self.pools.reader)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| event_from_row(r, device).map_err(Error::from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn non_positive_interval_is_invalid() {
        let store = SqliteTimeSeriesStore::in_memory().await.expect("open");
        let q = TsQuery {
            device_id: DeviceId::new(),
            keys: vec![],
            start: 0,
            end: 10,
            aggregation: Some((Aggregation::Avg, 0)),
            limit: None,
            order: Order::Asc,
        };
        assert!(matches!(store.query(&q).await, Err(Error::Invalid { .. })));
    }

    #[test]
    fn chunk_sizes_cover_every_row_with_cached_statement_sizes() {
        for n in [
            0,
            1,
            7,
            MAX_ROWS - 1,
            MAX_ROWS,
            MAX_ROWS + 1,
            5000,
            3 * MAX_ROWS + 77,
        ] {
            let sizes: Vec<usize> = chunk_sizes(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n}: {sizes:?}");
            assert!(sizes.iter().all(|s| s.is_power_of_two() && *s <= MAX_ROWS));
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]));
        }
        assert!(insert_sql(1).contains("VALUES (?,?,?,?) ON CONFLICT"));
        assert_eq!(insert_sql(MAX_ROWS).matches('?').count(), 4 * MAX_ROWS);
    }

    /// Two stores on one file: each caches series ids on its own; a series the other
    /// store created meanwhile is found (not duplicated) on a cache miss.
    #[tokio::test]
    async fn series_created_by_another_store_are_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ts.db");
        let a = SqliteTimeSeriesStore::open(&path).await.expect("a");
        let b = SqliteTimeSeriesStore::open(&path).await.expect("b");
        let d = DeviceId::new();
        let p = |key: &str, ts, v| TelemetryPoint {
            device_id: d,
            key: key.into(),
            ts,
            value: Value::Integer(v),
        };
        a.write(&[p("x", 1, 1)]).await.expect("a writes x");
        b.write(&[p("y", 1, 10)]).await.expect("b writes y");
        // b's cache knows y only; a's knows x only.
        b.write(&[p("x", 2, 2), p("y", 2, 20)]).await.expect("b");
        a.write(&[p("y", 3, 30), p("x", 2, 3)]).await.expect("a");
        let series: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ts_series")
            .fetch_one(&a.pools.reader)
            .await
            .expect("count");
        assert_eq!(series, 2);
        for store in [&a, &b] {
            let latest = store.latest(d, None).await.expect("latest");
            let got: Vec<(String, i64, Value)> = latest
                .into_iter()
                .map(|kv| (kv.key, kv.ts, kv.value))
                .collect();
            assert_eq!(
                got,
                vec![
                    ("x".into(), 2, Value::Integer(3)),
                    ("y".into(), 3, Value::Integer(30)),
                ]
            );
        }
    }

    #[tokio::test]
    async fn metadata_and_timeseries_share_one_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/dir/tp.db");
        let meta = super::super::SqliteMetadataStore::open(&path)
            .await
            .expect("meta");
        let ts = SqliteTimeSeriesStore::open(&path).await.expect("ts");
        // Reopening applies no migration twice and tolerates the other store's.
        let ts2 = SqliteTimeSeriesStore::open(&path).await.expect("ts again");
        let meta2 = super::super::SqliteMetadataStore::open(&path)
            .await
            .expect("meta again");
        for h in [
            tp_core::MetadataStore::healthcheck(&meta).await,
            tp_core::MetadataStore::healthcheck(&meta2).await,
            ts.healthcheck().await,
            ts2.healthcheck().await,
        ] {
            h.expect("healthy");
        }
    }
}
