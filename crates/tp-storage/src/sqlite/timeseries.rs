//! [`SqliteTimeSeriesStore`].

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite, SqliteConnection};
use tp_core::{
    Aggregation, DeviceEvent, DeviceId, Error, KeyValue, Order, Result, TelemetryPoint,
    TimeSeriesStore, Timestamp, TsQuery, Value,
};

use super::error::{self, SqliteError, db};
use super::{Pools, ROWS_PER_INSERT, migrator, to_i64, value};

/// [`TimeSeriesStore`] on SQLite.
///
/// History lives in `ts_kv`, a `WITHOUT ROWID` table keyed by `(device_id, key, ts)`
/// with a type tag and typed value columns; `ts_latest` keeps the newest point per
/// key; events go to `ts_events`. A `write` is one transaction of multi-row inserts;
/// queries run per key on the primary-key index, and aggregation is done in SQL
/// (`GROUP BY` bucket). Writing a `(device, key, ts)` again replaces its value.
#[derive(Debug)]
pub struct SqliteTimeSeriesStore {
    pools: Pools,
}

impl SqliteTimeSeriesStore {
    /// Opens (creating if missing, with parent directories) the database file at
    /// `path` and applies pending migrations. The file may be shared with
    /// [`super::SqliteMetadataStore`].
    ///
    /// # Errors
    /// [`Error::Backend`] when the file cannot be created or opened or a migration fails.
    pub async fn open(path: &Path) -> Result<Self> {
        let m = migrator(sqlx::migrate!("./migrations/sqlite_ts"));
        Ok(Self {
            pools: Pools::open_file(path, &m).await?,
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
        })
    }

    /// The keys to read for a device: the requested ones (sorted, deduplicated) or all
    /// keys that have a latest value (every key with history has one).
    async fn resolve_keys(&self, device: &[u8], keys: &[String]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return sqlx::query_scalar(
                "SELECT key FROM ts_latest WHERE device_id = ? ORDER BY key",
            )
            .bind(device.to_vec())
            .fetch_all(&self.pools.reader)
            .await
            .map_err(db);
        }
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
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
const NUMERIC: &str = "CASE vtype WHEN 2 THEN v_real WHEN 1 THEN CAST(v_int AS REAL) \
                       WHEN 0 THEN CAST(v_int AS REAL) END";

fn aggregate_sql(agg: Aggregation, order: Order) -> String {
    let (select, having) = match agg {
        Aggregation::Avg => ("AVG(num)", "HAVING COUNT(num) > 0"),
        Aggregation::Min => ("MIN(num)", "HAVING COUNT(num) > 0"),
        Aggregation::Max => ("MAX(num)", "HAVING COUNT(num) > 0"),
        Aggregation::Sum => ("SUM(num)", "HAVING COUNT(num) > 0"),
        Aggregation::Count => ("COUNT(*)", ""),
    };
    // Binds: start, interval, device, key, start, end, limit.
    format!(
        "SELECT bucket, {select} AS v FROM (\
           SELECT ?1 + ((ts - ?1) / ?2) * ?2 AS bucket, {NUMERIC} AS num FROM ts_kv \
           WHERE device_id = ?3 AND key = ?4 AND ts >= ?1 AND ts < ?5) \
         GROUP BY bucket {having} ORDER BY bucket {} LIMIT ?6",
        order_sql(order)
    )
}

fn kv_from_row(row: &SqliteRow, key: &str) -> std::result::Result<KeyValue, SqliteError> {
    Ok(KeyValue {
        key: key.to_owned(),
        ts: row.try_get("ts")?,
        value: value::decode(row)?,
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

/// Inserts `points` into `table` (`ts_kv` or `ts_latest`) with the given conflict clause.
async fn insert_points(
    conn: &mut SqliteConnection,
    table: &str,
    points: &[&TelemetryPoint],
    on_conflict: &str,
) -> Result<()> {
    for chunk in points.chunks(ROWS_PER_INSERT) {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO {table} (device_id, key, ts, vtype, v_int, v_real, v_text) "
        ));
        qb.push_values(chunk, |mut row, p| {
            let v = value::encode(&p.value);
            row.push_bind(&p.device_id.0.as_bytes()[..])
                .push_bind(p.key.as_str())
                .push_bind(p.ts)
                .push_bind(v.tag)
                .push_bind(v.int)
                .push_bind(v.real)
                .push_bind(v.text);
        });
        qb.push(on_conflict);
        qb.build().execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

const VALUE_UPDATE: &str = "vtype = excluded.vtype, v_int = excluded.v_int, \
                            v_real = excluded.v_real, v_text = excluded.v_text";

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
        // The newest point per (device, key) of the batch; on equal ts the later one,
        // matching the history upsert.
        let mut newest: HashMap<(DeviceId, &str), &TelemetryPoint> = HashMap::new();
        for p in points {
            newest
                .entry((p.device_id, p.key.as_str()))
                .and_modify(|cur| {
                    if p.ts >= cur.ts {
                        *cur = p;
                    }
                })
                .or_insert(p);
        }
        let all: Vec<&TelemetryPoint> = points.iter().collect();
        let latest: Vec<&TelemetryPoint> = newest.into_values().collect();

        let mut tx = self.pools.begin_write().await?;
        insert_points(
            &mut tx,
            "ts_kv",
            &all,
            &format!(" ON CONFLICT (device_id, key, ts) DO UPDATE SET {VALUE_UPDATE}"),
        )
        .await?;
        insert_points(
            &mut tx,
            "ts_latest",
            &latest,
            &format!(
                " ON CONFLICT (device_id, key) DO UPDATE SET ts = excluded.ts, {VALUE_UPDATE} \
                 WHERE excluded.ts >= ts_latest.ts"
            ),
        )
        .await?;
        tx.commit().await.map_err(db)
    }

    async fn latest(&self, device: DeviceId, keys: Option<&[String]>) -> Result<Vec<KeyValue>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT key, ts, vtype, v_int, v_real, v_text FROM ts_latest WHERE device_id = ",
        );
        qb.push_bind(device_blob(device).to_vec());
        if let Some(keys) = keys {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            qb.push(" AND key IN (");
            let mut list = qb.separated(", ");
            for k in keys {
                list.push_bind(k.clone());
            }
            list.push_unseparated(")");
        }
        qb.push(" ORDER BY key");
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
        let device = device_blob(q.device_id);
        let keys = self.resolve_keys(&device, &q.keys).await?;
        // SQLite: a negative LIMIT means no limit.
        let limit = q.limit.map(to_i64).unwrap_or(-1);
        let mut out = Vec::new();
        match q.aggregation {
            None => {
                let sql = match q.order {
                    Order::Asc => {
                        "SELECT ts, vtype, v_int, v_real, v_text FROM ts_kv \
                         WHERE device_id = ? AND key = ? AND ts >= ? AND ts < ? \
                         ORDER BY ts ASC LIMIT ?"
                    }
                    Order::Desc => {
                        "SELECT ts, vtype, v_int, v_real, v_text FROM ts_kv \
                         WHERE device_id = ? AND key = ? AND ts >= ? AND ts < ? \
                         ORDER BY ts DESC LIMIT ?"
                    }
                };
                for key in &keys {
                    let rows = sqlx::query(sql)
                        .bind(device.to_vec())
                        .bind(key.as_str())
                        .bind(q.start)
                        .bind(q.end)
                        .bind(limit)
                        .fetch_all(&self.pools.reader)
                        .await
                        .map_err(db)?;
                    for r in &rows {
                        out.push(kv_from_row(r, key)?);
                    }
                }
            }
            Some((agg, interval)) => {
                let sql = aggregate_sql(agg, q.order);
                for key in &keys {
                    let rows = sqlx::query(AssertSqlSafe(sql.clone()))
                        .bind(q.start)
                        .bind(interval)
                        .bind(device.to_vec())
                        .bind(key.as_str())
                        .bind(q.end)
                        .bind(limit)
                        .fetch_all(&self.pools.reader)
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
        let blob = device_blob(device).to_vec();
        let mut tx = self.pools.begin_write().await?;
        let keys: Vec<String> = match keys {
            Some(keys) => keys.to_vec(),
            None => sqlx::query_scalar("SELECT key FROM ts_latest WHERE device_id = ?")
                .bind(blob.clone())
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?,
        };
        let mut deleted = 0;
        for key in &keys {
            deleted += sqlx::query(
                "DELETE FROM ts_kv WHERE device_id = ? AND key = ? AND ts >= ? AND ts < ?",
            )
            .bind(blob.clone())
            .bind(key.as_str())
            .bind(start)
            .bind(end)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            // If the latest value was deleted, fall back to the newest that remains.
            let stale = sqlx::query(
                "DELETE FROM ts_latest WHERE device_id = ? AND key = ? AND ts >= ? AND ts < ?",
            )
            .bind(blob.clone())
            .bind(key.as_str())
            .bind(start)
            .bind(end)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            if stale > 0 {
                sqlx::query(
                    "INSERT INTO ts_latest (device_id, key, ts, vtype, v_int, v_real, v_text) \
                     SELECT device_id, key, ts, vtype, v_int, v_real, v_text FROM ts_kv \
                     WHERE device_id = ? AND key = ? ORDER BY ts DESC LIMIT 1",
                )
                .bind(blob.clone())
                .bind(key.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
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
