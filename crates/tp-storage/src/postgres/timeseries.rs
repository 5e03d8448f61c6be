//! [`PostgresTimeSeriesStore`].

use std::collections::{BTreeSet, HashSet};
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use tp_core::{
    Aggregation, DeviceEvent, DeviceId, Error, KeyValue, Order, Result, TelemetryPoint,
    TimeSeriesStore, Timestamp, TsQuery, Value,
};
use uuid::Uuid;

use super::copy::CopyBuffer;
use super::error::{self, PgError, db, is_missing_partition, is_unique_violation};
use super::timescale::{self, TimescaleSettings};
use super::value::{self, BindValues, ValueArrays};
use super::{Target, healthcheck, invalid_url, migrator, to_i64, upgrade};
use crate::series_cache::SeriesCache;

/// One day in milliseconds.
const DAY_MS: i64 = 86_400_000;
/// Rows per `INSERT .. SELECT FROM UNNEST` statement.
const ROWS_PER_STATEMENT: usize = 10_000;

/// Options of [`PostgresTimeSeriesStore`]; each can also be set by a URL query
/// parameter of the same name (`partition_ms`, `timescale=auto|off`,
/// `compress_after_ms` (`0` = off), `retention_ms` (`0` = off),
/// `write_method=copy|insert`, `copy_min_rows`, `write_connections`).
///
/// The layout options take effect when the store first creates `ts_kv` in a schema;
/// later connections use the layout and partition width recorded then.
/// `write_method` applies to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgTsOptions {
    /// Width of a history partition (TimescaleDB: chunk) in milliseconds. Default: 1 day.
    pub partition_ms: i64,
    /// Use a TimescaleDB hypertable when the extension is available. Default: `true`.
    pub timescale: bool,
    /// TimescaleDB only: compress chunks older than this. Default: 7 days.
    pub compress_after_ms: Option<i64>,
    /// TimescaleDB only: a retention policy dropping chunks older than this.
    /// Default: none (use [`PostgresTimeSeriesStore::drop_partitions_before`] from a
    /// scheduler, which works on both layouts).
    pub retention_ms: Option<i64>,
    /// How a batch of points reaches the tables. Default: [`WriteMethod::Copy`].
    pub write_method: WriteMethod,
    /// [`WriteMethod::Copy`] only: batches with fewer (deduplicated) points fill the
    /// staging table with one `INSERT .. SELECT FROM UNNEST` instead of `COPY`, and
    /// only batches of at least this many points (and at least 1) with several
    /// points per series are copied straight into history.
    /// `COPY` sends its data and its end as two writes, and sqlx 0.9.0 leaves
    /// Nagle's algorithm on (sqlx issue #4335, fixed after 0.9.0), so the end waits
    /// for the server's delayed ACK, ~40 ms on Linux: a constant that only large
    /// batches amortize (in the storage_write bench it hit 500-point batches, not 2,000-point ones). Default: 2,000. `0` = always `COPY`.
    pub copy_min_rows: usize,
    /// Connections one batch is written over: a batch is split by device into at
    /// most this many parts of at least `copy_min_rows` points (at least 1), each
    /// written in its own transaction at the same time. One PostgreSQL backend uses
    /// one core, so a single transaction leaves the others idle. The parts touch
    /// disjoint rows (a device's points stay in one part, so its latest values are
    /// decided in one place); when one fails the batch is reported failed and
    /// written again whole, which the merge makes harmless. Default: 2. `1` = one
    /// transaction per batch.
    pub write_connections: usize,
}

/// How a batch part reached history in [`WriteMethod::Copy`].
#[derive(Debug, Clone, Copy)]
enum HistoryPath {
    /// Copied straight into `ts_kv`.
    Direct = 0,
    /// Staged, then inserted.
    Staged = 1,
    /// Staged, then merged (`ON CONFLICT DO UPDATE`).
    Merged = 2,
}

/// How [`PostgresTimeSeriesStore`] writes a batch (URL: `write_method=copy|insert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMethod {
    /// Binary `COPY` into a session-temporary staging table, then one
    /// `INSERT .. SELECT .. ON CONFLICT DO UPDATE` into history and one into latest
    /// values, in one transaction. The fastest; works through transaction-pooling
    /// proxies too (the staging table is created, if missing, in every transaction).
    #[default]
    Copy,
    /// `INSERT .. SELECT FROM UNNEST($1::uuid[], ..)` with array parameters, 10,000
    /// rows per statement: the previous method, kept as a fallback and as the
    /// reference the `COPY` path is tested against.
    Insert,
}

impl Default for PgTsOptions {
    fn default() -> Self {
        Self {
            partition_ms: DAY_MS,
            timescale: true,
            compress_after_ms: Some(7 * DAY_MS),
            retention_ms: None,
            write_method: WriteMethod::Copy,
            copy_min_rows: DEFAULT_COPY_MIN_ROWS,
            write_connections: DEFAULT_WRITE_CONNECTIONS,
        }
    }
}

/// Default of [`PgTsOptions::write_connections`].
const DEFAULT_WRITE_CONNECTIONS: usize = 2;

/// Default of [`PgTsOptions::copy_min_rows`].
const DEFAULT_COPY_MIN_ROWS: usize = 2_000;

impl PgTsOptions {
    /// Applies the URL query parameters the module parsed.
    fn apply(mut self, params: &[(String, String)]) -> Result<Self> {
        let ms = |k: &str, v: &str| {
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| invalid_url(format!("{k} must be a non-negative integer (ms)")))
        };
        for (k, v) in params {
            match k.as_str() {
                "partition_ms" => self.partition_ms = ms(k, v)?,
                "compress_after_ms" => self.compress_after_ms = Some(ms(k, v)?).filter(|n| *n > 0),
                "retention_ms" => self.retention_ms = Some(ms(k, v)?).filter(|n| *n > 0),
                "write_connections" => {
                    self.write_connections =
                        v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            invalid_url("write_connections must be a positive integer")
                        })?;
                }
                "copy_min_rows" => {
                    self.copy_min_rows = v
                        .parse()
                        .map_err(|_| invalid_url("copy_min_rows must be a non-negative integer"))?;
                }
                "write_method" => {
                    self.write_method = match v.as_str() {
                        "copy" => WriteMethod::Copy,
                        "insert" => WriteMethod::Insert,
                        _ => return Err(invalid_url("write_method must be copy or insert")),
                    }
                }
                "timescale" => {
                    self.timescale = match v.as_str() {
                        "auto" | "on" | "true" => true,
                        "off" | "false" => false,
                        _ => return Err(invalid_url("timescale must be auto or off")),
                    }
                }
                _ => {}
            }
        }
        if self.partition_ms <= 0 {
            return Err(invalid_url("partition_ms must be positive"));
        }
        Ok(self)
    }
}

/// How history is stored in a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsLayout {
    /// `ts_kv` is range-partitioned on `ts`; partition `ts_kv_p{k}` (`ts_kv_m{k}` for
    /// negative `k`) holds `[k * partition_ms, (k + 1) * partition_ms)`.
    Partitioned {
        /// Partition width in milliseconds.
        partition_ms: i64,
    },
    /// `ts_kv` is a TimescaleDB hypertable.
    Timescale {
        /// Chunk width in milliseconds.
        chunk_ms: i64,
    },
}

/// [`TimeSeriesStore`] on PostgreSQL (optionally TimescaleDB).
///
/// - History is keyed by `(series, ts)`: `ts_series` names each `(device_id, key)`
///   once with an integer id, which the store caches. An 8-byte key instead of a
///   uuid and a text in every row and index entry halves the table and its primary
///   key and nearly doubles the insert rate (benches/RESULTS.md). Reads join
///   `ts_series` first, so a device's query is one index range scan per series.
///   A schema written by an earlier release, keyed by `(device_id, key, ts)`, is
///   converted on connect (see `upgrade.rs`).
/// - A batch is deduplicated first (the last occurrence of a `(device, key, ts)`
///   wins, so a batch holding one point twice stores its later value) and sorted;
///   series it is the first to write are created in `ts_series`. Then, in one
///   transaction ([`WriteMethod::Copy`], the default): binary `COPY` into the
///   session's temporary staging table `tp_stage_series` (`ON COMMIT DELETE ROWS`),
///   `INSERT INTO ts_kv .. SELECT` (on a conflict, the same with `ON CONFLICT
///   (series, ts) DO UPDATE`: a replayed point overwrites itself, idempotent) and an
///   update of `ts_latest` for the rows flagged newest of their series, guarded by
///   `ts >= ts_latest.ts`. [`WriteMethod::Insert`] sends the same rows as `UNNEST`
///   arrays instead.
/// - In the partitioned layout, partitions are created on demand before a write
///   (known ones are cached; creation is serialized by an advisory lock). A batch with
///   timestamps spread over many partition widths creates that many partitions.
/// - Retention: [`Self::drop_partitions_before`] drops whole partitions (chunks) and
///   [`Self::delete_events_before`] trims events. Latest values are kept: they are the
///   device's current state, not history.
/// - Aggregation runs in SQL; `query` with a `limit` reads each key through its index.
#[derive(Debug)]
pub struct PostgresTimeSeriesStore {
    pool: PgPool,
    layout: TsLayout,
    /// Schema of the timescaledb extension (Timescale layout only).
    ext_schema: Option<String>,
    /// Partition indexes `k` known to exist (partitioned layout only).
    partitions: Mutex<HashSet<i64>>,
    write_method: WriteMethod,
    copy_min_rows: usize,
    write_connections: usize,
    /// Ids of the series this store has written (`ts_series`).
    series: SeriesCache,
    /// Batch parts committed per [`HistoryPath`].
    history_paths: [AtomicU64; 3],
}

/// The partitions of `ts_kv` (partitioned layout), by name.
pub(super) const PARTITIONS_SQL: &str = "SELECT c.relname::text FROM pg_inherits i \
     JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'ts_kv'::regclass";

/// Serializes DDL on this schema's `ts_kv` across processes.
const DDL_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.ts_kv'))";

/// The history table's columns and key, on both layouts: a row names its series by
/// the id in `ts_series`.
pub(super) const TS_KV_COLUMNS: &str = "series bigint NOT NULL, ts bigint NOT NULL, \
     vtype smallint NOT NULL, v_int bigint, v_real double precision, v_text text, \
     PRIMARY KEY (series, ts)";

/// The partitioned parent table.
pub(super) fn create_partitioned_sql() -> String {
    format!("CREATE TABLE IF NOT EXISTS ts_kv ({TS_KV_COLUMNS}) PARTITION BY RANGE (ts)")
}

impl PostgresTimeSeriesStore {
    /// Connects to `url` with [`PgTsOptions::default`] overridden by the URL's query
    /// parameters (see the [module docs](super)), creates the schema if missing,
    /// applies migrations and creates `ts_kv` in the layout the server supports.
    ///
    /// # Errors
    /// - [`Error::Invalid`] (`field = "postgres url"`) when the URL or an option is bad.
    /// - [`Error::Unavailable`] when the server cannot be reached; the message names
    ///   host and port.
    /// - [`Error::Backend`] when authentication, a migration or the DDL fails.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PgTsOptions::default()).await
    }

    /// Like [`Self::connect`] with explicit options (URL parameters still override).
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn connect_with(url: &str, options: PgTsOptions) -> Result<Self> {
        let target = Target::parse(url)?;
        let options = options.apply(&target.extra)?;
        let m = migrator(sqlx::migrate!("./migrations/postgres_ts"));
        let pool = target.open(&m).await?;
        let (layout, ext_schema) = init_layout(&pool, &options).await?;
        tracing::debug!(?layout, "postgres time-series layout");
        Ok(Self {
            pool,
            layout,
            ext_schema,
            partitions: Mutex::new(HashSet::new()),
            write_method: options.write_method,
            copy_min_rows: options.copy_min_rows,
            write_connections: options.write_connections,
            series: SeriesCache::default(),
            history_paths: Default::default(),
        })
    }

    /// How history is stored.
    pub fn layout(&self) -> TsLayout {
        self.layout
    }

    /// The connection pool (for administration and tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Retention: drops every history partition (TimescaleDB: chunk) whose whole range
    /// lies before `ts`, and returns how many were dropped. Rows of a partition that
    /// straddles `ts` are kept; latest values are kept.
    ///
    /// # Errors
    /// [`Error::Backend`] / [`Error::Unavailable`] from the database.
    pub async fn drop_partitions_before(&self, ts: Timestamp) -> Result<u64> {
        match self.layout {
            TsLayout::Timescale { .. } => {
                let ext = self.ext_schema.as_deref().unwrap_or("public");
                let n: i64 = sqlx::query_scalar(AssertSqlSafe(timescale::drop_chunks_sql(ext)))
                    .bind(ts)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db)?;
                Ok(n.unsigned_abs())
            }
            TsLayout::Partitioned { partition_ms } => {
                let mut tx = self.pool.begin().await.map_err(db)?;
                sqlx::query(DDL_LOCK_SQL)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                let names: Vec<String> = sqlx::query_scalar(PARTITIONS_SQL)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db)?;
                let mut dropped = Vec::new();
                for name in names {
                    let Some(k) = partition_index(&name) else {
                        continue;
                    };
                    let (_, hi) = partition_bounds(k, partition_ms);
                    if hi.is_some_and(|hi| hi <= ts) {
                        let sql = format!("DROP TABLE {}", partition_name(k));
                        sqlx::query(AssertSqlSafe(sql))
                            .execute(&mut *tx)
                            .await
                            .map_err(db)?;
                        dropped.push(k);
                    }
                }
                tx.commit().await.map_err(db)?;
                let mut known = self.known();
                for k in &dropped {
                    known.remove(k);
                }
                Ok(dropped.len() as u64)
            }
        }
    }

    /// Retention for events: deletes events before `ts`; returns how many.
    ///
    /// # Errors
    /// [`Error::Backend`] / [`Error::Unavailable`] from the database.
    pub async fn delete_events_before(&self, ts: Timestamp) -> Result<u64> {
        let done = sqlx::query("DELETE FROM ts_events WHERE ts < $1")
            .bind(ts)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        // The set is a cache: a panic while holding it leaves it valid.
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates the partitions `points` need that are not known to exist.
    async fn ensure_partitions(&self, points: &[&TelemetryPoint]) -> Result<()> {
        let TsLayout::Partitioned { partition_ms } = self.layout else {
            return Ok(());
        };
        let missing: BTreeSet<i64> = {
            let known = self.known();
            points
                .iter()
                .map(|p| p.ts.div_euclid(partition_ms))
                .filter(|k| !known.contains(k))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(DDL_LOCK_SQL)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for k in &missing {
            sqlx::query(AssertSqlSafe(create_partition_sql(*k, partition_ms)))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        self.known().extend(missing);
        Ok(())
    }

    /// The series id of each point of a deduplicated, sorted batch: from the cache,
    /// or, for series it does not hold, created if new and read from `ts_series`.
    async fn series_ids(&self, sorted: &[&TelemetryPoint]) -> Result<Vec<i64>> {
        let (ids, missing) = self.series.ids(sorted.iter().copied());
        if missing.is_empty() {
            return Ok(ids);
        }
        let (devices, keys): (Vec<Uuid>, Vec<&str>) =
            missing.iter().map(|(d, k)| (d.0, *k)).unzip();
        // Committed on its own before the read, which then sees the series another
        // writer created meanwhile as well (this insert skips those). Every writer
        // inserts in (device, key) order, so two cannot deadlock on each other's rows.
        sqlx::query(
            "INSERT INTO ts_series (device_id, key) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[]) ON CONFLICT (device_id, key) DO NOTHING",
        )
        .bind(&devices)
        .bind(&keys)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let rows: Vec<(i64, Uuid, String)> = sqlx::query_as(
            "SELECT s.id, s.device_id, s.key FROM ts_series AS s \
             JOIN UNNEST($1::uuid[], $2::text[]) AS u(d, k) ON s.device_id = u.d AND s.key = u.k",
        )
        .bind(&devices)
        .bind(&keys)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        for (id, device, key) in rows {
            self.series
                .extend(DeviceId(device), [(key.into_boxed_str(), id)]);
        }
        let (ids, missing) = self.series.ids(sorted.iter().copied());
        if let Some((device, key)) = missing.first() {
            return Err(PgError::decode(
                "series",
                format!("no ts_series row for device {device} key {key:?} after creating it"),
            )
            .into());
        }
        Ok(ids)
    }

    /// Writes one part of a batch (the whole batch when it is not split) with its
    /// series ids; a partition we cached but someone else dropped is created again,
    /// once.
    async fn write_part(&self, points: &[&TelemetryPoint], series: &[i64]) -> Result<()> {
        match self.write_once(points, series).await {
            Ok(()) => Ok(()),
            Err(e) if is_missing_partition(&e) => {
                self.known().clear();
                self.ensure_partitions(points).await?;
                self.write_once(points, series).await.map_err(db)
            }
            Err(e) => Err(db(e)),
        }
    }

    async fn write_once(
        &self,
        points: &[&TelemetryPoint],
        series: &[i64],
    ) -> std::result::Result<(), sqlx::Error> {
        match self.write_method {
            WriteMethod::Copy => self.write_copy(points, series).await,
            WriteMethod::Insert => self.write_unnest(points, series).await,
        }
    }

    /// [`WriteMethod::Copy`]: `points` deduplicated and sorted ([`dedupe`]), `series`
    /// their series ids.
    ///
    /// A batch of at least `copy_min_rows` points with several points per series
    /// (what a backlog or a replay brings) is copied straight into history, except
    /// for the points not newer than their series' latest value, which may be
    /// stored already: `COPY` inserts a page of rows at a time and logs one WAL
    /// record per heap page, against a row at a time for `INSERT .. SELECT`. Those
    /// older points and the newest row of each series (for the latest values) are
    /// staged; the older ones are then merged into history. Should a copied point
    /// be stored after all (another writer committed it meanwhile), the copy is
    /// rolled back and the whole batch is staged and merged. Other batches are
    /// staged whole and inserted, or merged when some of their points are stored.
    async fn write_copy(
        &self,
        points: &[&TelemetryPoint],
        series: &[i64],
    ) -> std::result::Result<(), sqlx::Error> {
        let newest = newest_count(points);
        let mut tx = self.pool.begin().await?;
        sqlx::raw_sql(CREATE_STAGE_SQL).execute(&mut *tx).await?;
        let all_rows = || (0..points.len()).map(|i| (i, true)).collect::<Vec<_>>();
        let copyable = points.len() >= self.copy_min_rows.max(1) && points.len() >= 2 * newest;
        let path = if copyable {
            let maybe_stored = not_newer_than_latest(&mut tx, points).await?;
            let to_copy = maybe_stored.iter().filter(|m| !**m).count();
            if to_copy == 0 {
                self.stage(&mut tx, points, series, all_rows()).await?;
                sqlx::raw_sql(MERGE_HISTORY_SQL).execute(&mut *tx).await?;
                HistoryPath::Merged
            } else {
                sqlx::raw_sql("SAVEPOINT tp_history")
                    .execute(&mut *tx)
                    .await?;
                let copy_rows = (0..points.len()).filter(|&i| !maybe_stored[i]);
                let payload = history_payload(points, series, copy_rows);
                match copy_in(&mut tx, COPY_HISTORY_SQL, payload).await {
                    Ok(()) => {
                        sqlx::raw_sql("RELEASE SAVEPOINT tp_history")
                            .execute(&mut *tx)
                            .await?;
                        let staged: Vec<(usize, bool)> = (0..points.len())
                            .filter(|&i| maybe_stored[i] || is_newest(points, i))
                            .map(|i| (i, maybe_stored[i]))
                            .collect();
                        self.stage(&mut tx, points, series, staged).await?;
                        if to_copy < points.len() {
                            sqlx::raw_sql(MERGE_HISTORY_SQL).execute(&mut *tx).await?;
                        }
                        HistoryPath::Direct
                    }
                    Err(e) if is_unique_violation(&e) => {
                        sqlx::raw_sql(ROLLBACK_HISTORY_SQL)
                            .execute(&mut *tx)
                            .await?;
                        self.stage(&mut tx, points, series, all_rows()).await?;
                        sqlx::raw_sql(MERGE_HISTORY_SQL).execute(&mut *tx).await?;
                        HistoryPath::Merged
                    }
                    Err(e) => return Err(e),
                }
            }
        } else {
            self.stage(&mut tx, points, series, all_rows()).await?;
            // New points are the rule and an upsert costs a third more than a plain
            // insert, so try the plain one; a point already stored (a replay, a
            // device resending) rolls it back and the batch merges instead.
            match sqlx::raw_sql(INSERT_HISTORY_SQL).execute(&mut *tx).await {
                Ok(_) => HistoryPath::Staged,
                Err(e) if is_unique_violation(&e) => {
                    sqlx::raw_sql(ROLLBACK_HISTORY_SQL)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::raw_sql(MERGE_HISTORY_SQL).execute(&mut *tx).await?;
                    HistoryPath::Merged
                }
                Err(e) => return Err(e),
            }
        };
        // Latest values: the series a node writes exist after their first batch, and
        // updating them in place (a join, HOT updates: `ts_latest` leaves room on
        // its pages) is twice as fast as an upsert per row. Only when some staged
        // newest row changed nothing (a new series, or an older point) do the rows
        // missing from `ts_latest` get inserted.
        let updated = sqlx::query(UPDATE_LATEST_SQL)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated < newest as u64 {
            sqlx::query(INSERT_LATEST_SQL).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.history_paths[path as usize].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many batch parts reached history copied straight in, staged and
    /// inserted, and merged ([`Self::write_copy`]).
    #[cfg(test)]
    pub(super) fn history_paths(&self) -> [u64; 3] {
        self.history_paths
            .each_ref()
            .map(|n| n.load(Ordering::Relaxed))
    }

    /// Fills the staging table with rows `rows` (ascending, each with whether it
    /// goes to history from there) of `points`: by `COPY` from `copy_min_rows` rows
    /// on, else by one `INSERT .. SELECT FROM UNNEST`.
    async fn stage(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        points: &[&TelemetryPoint],
        series: &[i64],
        rows: Vec<(usize, bool)>,
    ) -> std::result::Result<(), sqlx::Error> {
        if rows.len() >= self.copy_min_rows {
            return copy_in(tx, COPY_STAGE_SQL, stage_payload(points, series, &rows)).await;
        }
        // Small batches: one message instead of COPY's data-then-done pair, which
        // waits for the server's delayed ACK (~40 ms) on a connection without
        // TCP_NODELAY (see `PgTsOptions::copy_min_rows`).
        let newest: Vec<bool> = rows.iter().map(|&(i, _)| is_newest(points, i)).collect();
        let history: Vec<bool> = rows.iter().map(|&(_, h)| h).collect();
        let cols = Columns::of(points, series, rows.into_iter().map(|(i, _)| i));
        sqlx::query(STAGE_UNNEST_SQL)
            .bind(cols.series)
            .bind(cols.device)
            .bind(cols.key)
            .bind(cols.ts)
            .bind_values(cols.values)
            .bind(newest)
            .bind(history)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// [`WriteMethod::Insert`]: `points` deduplicated and sorted ([`dedupe`]), `series`
    /// their series ids.
    async fn write_unnest(
        &self,
        points: &[&TelemetryPoint],
        series: &[i64],
    ) -> std::result::Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for start in (0..points.len()).step_by(ROWS_PER_STATEMENT) {
            let rows = start..(start + ROWS_PER_STATEMENT).min(points.len());
            let cols = Columns::of(points, series, rows);
            sqlx::query(
                "INSERT INTO ts_kv (series, ts, vtype, v_int, v_real, v_text) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::smallint[], \
                 $4::bigint[], $5::float8[], $6::text[]) \
                 ON CONFLICT (series, ts) DO UPDATE SET vtype = excluded.vtype, \
                 v_int = excluded.v_int, v_real = excluded.v_real, v_text = excluded.v_text \
                 WHERE (ts_kv.vtype, ts_kv.v_int, float8send(ts_kv.v_real), ts_kv.v_text) \
                 IS DISTINCT FROM \
                 (excluded.vtype, excluded.v_int, float8send(excluded.v_real), excluded.v_text)",
            )
            .bind(cols.series)
            .bind(cols.ts)
            .bind_values(cols.values)
            .execute(&mut *tx)
            .await?;
        }
        let latest: Vec<usize> = (0..points.len())
            .filter(|&i| is_newest(points, i))
            .collect();
        for chunk in latest.chunks(ROWS_PER_STATEMENT) {
            let cols = Columns::of(points, series, chunk.iter().copied());
            sqlx::query(
                "INSERT INTO ts_latest (device_id, key, ts, vtype, v_int, v_real, v_text) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::smallint[], \
                 $5::bigint[], $6::float8[], $7::text[]) \
                 ON CONFLICT (device_id, key) DO UPDATE SET ts = excluded.ts, \
                 vtype = excluded.vtype, v_int = excluded.v_int, v_real = excluded.v_real, \
                 v_text = excluded.v_text WHERE excluded.ts >= ts_latest.ts",
            )
            .bind(cols.device)
            .bind(cols.key)
            .bind(cols.ts)
            .bind_values(cols.values)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
}

/// The session's staging table, created on first use in every transaction that
/// needs it (without a notice when it exists), emptied by every commit. Temporary
/// tables are private to a connection and are not WAL-logged. (Named for its
/// columns: a pooled server connection may still hold an older binary's table.)
/// `newest` flags the row of each series that moves its latest value, `history`
/// the rows that go to history from here (the others were copied there directly).
const CREATE_STAGE_SQL: &str = "DO $$ BEGIN \
     IF to_regclass('pg_temp.tp_stage_series') IS NULL THEN \
     CREATE TEMP TABLE tp_stage_series (series bigint NOT NULL, device_id uuid NOT NULL, \
     key text COLLATE \"C\" NOT NULL, ts bigint NOT NULL, vtype smallint NOT NULL, \
     v_int bigint, v_real double precision, v_text text, newest boolean NOT NULL, \
     history boolean NOT NULL) ON COMMIT DELETE ROWS; \
     END IF; END $$";

/// The staging rows as `UNNEST` arrays (small batches).
const STAGE_UNNEST_SQL: &str = "INSERT INTO tp_stage_series \
     (series, device_id, key, ts, vtype, v_int, v_real, v_text, newest, history) \
     SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], \
     $5::smallint[], $6::bigint[], $7::float8[], $8::text[], $9::bool[], $10::bool[])";

const COPY_STAGE_SQL: &str = "COPY tp_stage_series \
     (series, device_id, key, ts, vtype, v_int, v_real, v_text, newest, history) \
     FROM STDIN (FORMAT binary)";

/// History rows, when none of them is stored yet; in a savepoint, so a unique
/// violation leaves the transaction usable ([`MERGE_HISTORY_SQL`] then).
const INSERT_HISTORY_SQL: &str = "SAVEPOINT tp_history; \
     INSERT INTO ts_kv (series, ts, vtype, v_int, v_real, v_text) \
     SELECT series, ts, vtype, v_int, v_real, v_text FROM tp_stage_series WHERE history; \
     RELEASE SAVEPOINT tp_history";

/// History rows merged into what is stored: a point written again overwrites itself.
/// The staged rows are unique on `(series, ts)` ([`dedupe`]), as
/// `ON CONFLICT DO UPDATE` requires. A stored point whose value is the same (what
/// a replay brings) is left alone: that is 3-4x cheaper than writing a new row
/// version (100,000 rows: 0.18-0.23 s against 0.63-1.03 s in `psql`). `v_real` is
/// compared bit for bit, so -0.0 replaces 0.0.
const MERGE_HISTORY_SQL: &str = "INSERT INTO ts_kv (series, ts, vtype, v_int, v_real, v_text) \
     SELECT series, ts, vtype, v_int, v_real, v_text FROM tp_stage_series WHERE history \
     ON CONFLICT (series, ts) DO UPDATE SET vtype = excluded.vtype, \
     v_int = excluded.v_int, v_real = excluded.v_real, v_text = excluded.v_text \
     WHERE (ts_kv.vtype, ts_kv.v_int, float8send(ts_kv.v_real), ts_kv.v_text) \
     IS DISTINCT FROM (excluded.vtype, excluded.v_int, float8send(excluded.v_real), excluded.v_text)";

/// Undoes a failed history insert ([`MERGE_HISTORY_SQL`] follows).
const ROLLBACK_HISTORY_SQL: &str = "ROLLBACK TO SAVEPOINT tp_history; RELEASE SAVEPOINT tp_history";

/// History rows straight from the client ([`PostgresTimeSeriesStore::write_copy`]).
const COPY_HISTORY_SQL: &str = "COPY ts_kv (series, ts, vtype, v_int, v_real, v_text) \
     FROM STDIN (FORMAT binary)";

/// Moves each stored series whose staged newest row is at least as new. One staged
/// row per series is flagged `newest` ([`stage_payload`]).
const UPDATE_LATEST_SQL: &str = "UPDATE ts_latest AS l SET ts = s.ts, vtype = s.vtype, \
     v_int = s.v_int, v_real = s.v_real, v_text = s.v_text FROM tp_stage_series AS s \
     WHERE s.newest AND l.device_id = s.device_id AND l.key = s.key AND s.ts >= l.ts";

/// Series `ts_latest` does not have yet; the upsert covers another writer adding
/// the same series meanwhile.
const INSERT_LATEST_SQL: &str = "INSERT INTO ts_latest (device_id, key, ts, vtype, v_int, v_real, v_text) \
     SELECT device_id, key, ts, vtype, v_int, v_real, v_text FROM tp_stage_series AS s \
     WHERE s.newest AND NOT EXISTS \
     (SELECT 1 FROM ts_latest AS l WHERE l.device_id = s.device_id AND l.key = s.key) \
     ON CONFLICT (device_id, key) DO UPDATE SET ts = excluded.ts, \
     vtype = excluded.vtype, v_int = excluded.v_int, v_real = excluded.v_real, \
     v_text = excluded.v_text WHERE excluded.ts >= ts_latest.ts";

/// Whether row `i` of a deduplicated batch sorted by `(device, key, ts)` is the
/// newest of its series (the last of its `(device, key)` run).
fn is_newest(sorted: &[&TelemetryPoint], i: usize) -> bool {
    let p = sorted[i];
    sorted
        .get(i + 1)
        .is_none_or(|n| n.device_id != p.device_id || n.key != p.key)
}

/// Series in a deduplicated batch sorted by `(device, key, ts)`.
fn newest_count(sorted: &[&TelemetryPoint]) -> usize {
    sorted
        .windows(2)
        .filter(|w| w[0].device_id != w[1].device_id || w[0].key != w[1].key)
        .count()
        + usize::from(!sorted.is_empty())
}

/// For each point of a deduplicated, sorted batch: whether it is not newer than its
/// series' latest value, so that it may be stored already. One index probe of
/// `ts_latest` per series (its `ts` is the newest of the series' history).
async fn not_newer_than_latest(
    tx: &mut Transaction<'static, Postgres>,
    sorted: &[&TelemetryPoint],
) -> std::result::Result<Vec<bool>, sqlx::Error> {
    // Each series' run: its first row (the oldest point) and where it ends.
    let (mut device, mut key, mut oldest, mut runs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut start = 0;
    for (i, p) in sorted.iter().enumerate() {
        if is_newest(sorted, i) {
            device.push(p.device_id.0);
            key.push(p.key.as_str());
            oldest.push(sorted[start].ts);
            runs.push(start..i + 1);
            start = i + 1;
        }
    }
    let latest: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT u.n, l.ts FROM UNNEST($1::uuid[], $2::text[], $3::bigint[]) \
         WITH ORDINALITY AS u(d, k, t, n) \
         JOIN ts_latest AS l ON l.device_id = u.d AND l.key = u.k WHERE l.ts >= u.t",
    )
    .bind(device)
    .bind(key)
    .bind(oldest)
    .fetch_all(&mut **tx)
    .await?;
    let mut maybe_stored = vec![false; sorted.len()];
    for (n, ts) in latest {
        // `n` counts from 1.
        let run = usize::try_from(n - 1)
            .ok()
            .and_then(|n| runs.get(n))
            .cloned()
            .unwrap_or_default();
        for i in run {
            maybe_stored[i] = sorted[i].ts <= ts;
        }
    }
    Ok(maybe_stored)
}

/// Sends one binary `COPY .. FROM STDIN` payload.
async fn copy_in(
    tx: &mut Transaction<'static, Postgres>,
    sql: &'static str,
    payload: Vec<u8>,
) -> std::result::Result<(), sqlx::Error> {
    let mut copy = tx.copy_in_raw(sql).await?;
    if let Err(e) = copy.send(payload).await {
        // The connection may be unusable; the transaction is rolled back on drop.
        let _ = copy.abort("send failed").await;
        return Err(e);
    }
    copy.finish().await.map(drop)
}

/// The binary `COPY` payload of [`COPY_STAGE_SQL`]: rows `rows` of a deduplicated
/// batch sorted by `(device, key, ts)`, with their series ids and whether each goes
/// to history; the last row of each `(device, key)` run is flagged newest.
fn stage_payload(sorted: &[&TelemetryPoint], series: &[i64], rows: &[(usize, bool)]) -> Vec<u8> {
    // ~100 bytes a row for a float point with a short key.
    let mut c = CopyBuffer::new(10, 64 + rows.len() * 110);
    for &(i, history) in rows {
        let p = sorted[i];
        let (int, real, text) = value::columns(&p.value);
        c.row()
            .int8(series[i])
            .uuid(&p.device_id.0)
            .text(&p.key)
            .int8(p.ts)
            .int2(p.value.type_tag() as i16)
            .opt(int, CopyBuffer::int8)
            .opt(real, CopyBuffer::float8)
            .opt(text.as_deref(), CopyBuffer::text)
            .bool(is_newest(sorted, i))
            .bool(history);
    }
    c.finish()
}

/// The binary `COPY` payload of [`COPY_HISTORY_SQL`]: rows `rows` of a batch.
fn history_payload(
    points: &[&TelemetryPoint],
    series: &[i64],
    rows: impl Iterator<Item = usize>,
) -> Vec<u8> {
    // ~60 bytes a row for a float point.
    let mut c = CopyBuffer::new(6, 64 + points.len() * 64);
    for i in rows {
        let p = points[i];
        let (int, real, text) = value::columns(&p.value);
        c.row()
            .int8(series[i])
            .int8(p.ts)
            .int2(p.value.type_tag() as i16)
            .opt(int, CopyBuffer::int8)
            .opt(real, CopyBuffer::float8)
            .opt(text.as_deref(), CopyBuffer::text);
    }
    c.finish()
}

/// Reads the recorded layout or creates `ts_kv` and records it.
async fn init_layout(pool: &PgPool, options: &PgTsOptions) -> Result<(TsLayout, Option<String>)> {
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query(DDL_LOCK_SQL)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let row: Option<(String, i64)> = sqlx::query_as("SELECT kind, partition_ms FROM ts_layout")
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    let existing = match row {
        Some((kind, width)) if kind == "timescale" => {
            let ext: Option<String> = sqlx::query_scalar(timescale::EXTENSION_SCHEMA_SQL)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
            Some((TsLayout::Timescale { chunk_ms: width }, ext))
        }
        Some((_, width)) => Some((
            TsLayout::Partitioned {
                partition_ms: width,
            },
            None,
        )),
        None => None,
    };
    let (layout, ext) = match existing {
        Some((layout, ext)) => {
            upgrade::to_series_key(&mut tx, layout, ext.as_deref(), options).await?;
            (layout, ext)
        }
        None => {
            let ext = if options.timescale {
                try_timescale(&mut tx, options).await?
            } else {
                None
            };
            let (layout, kind) = match &ext {
                Some(_) => (
                    TsLayout::Timescale {
                        chunk_ms: options.partition_ms,
                    },
                    "timescale",
                ),
                None => {
                    sqlx::query(AssertSqlSafe(create_partitioned_sql()))
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                    (
                        TsLayout::Partitioned {
                            partition_ms: options.partition_ms,
                        },
                        "partitioned",
                    )
                }
            };
            sqlx::query("INSERT INTO ts_layout (kind, partition_ms) VALUES ($1, $2)")
                .bind(kind)
                .bind(options.partition_ms)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            (layout, ext)
        }
    };
    tx.commit().await.map_err(db)?;
    Ok((layout, ext))
}

/// Creates the hypertable when TimescaleDB is available and loads; returns the
/// extension's schema, or `None` (nothing changed) to fall back to partitions.
async fn try_timescale(
    tx: &mut Transaction<'static, Postgres>,
    options: &PgTsOptions,
) -> Result<Option<String>> {
    let available: bool = sqlx::query_scalar(timescale::AVAILABLE_SQL)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    if !available {
        return Ok(None);
    }
    // A savepoint: the extension may be installable but not preloaded.
    let mut sp = sqlx::Connection::begin(&mut **tx).await.map_err(db)?;
    let attempt: std::result::Result<String, sqlx::Error> = async {
        sqlx::query(timescale::CREATE_EXTENSION_SQL)
            .execute(&mut *sp)
            .await?;
        let ext: String = sqlx::query_scalar(timescale::EXTENSION_SCHEMA_SQL)
            .fetch_one(&mut *sp)
            .await?;
        let settings = TimescaleSettings {
            chunk_ms: options.partition_ms,
            compress_after_ms: options.compress_after_ms,
            retention_ms: options.retention_ms,
        };
        for sql in timescale::setup_sql(&ext, &settings) {
            sqlx::query(AssertSqlSafe(sql)).execute(&mut *sp).await?;
        }
        Ok(ext)
    }
    .await;
    match attempt {
        Ok(ext) => {
            sp.commit().await.map_err(db)?;
            Ok(Some(ext))
        }
        Err(e) => {
            tracing::warn!(error = %e, "TimescaleDB is available but unusable; using partitions");
            sp.rollback().await.map_err(db)?;
            Ok(None)
        }
    }
}

/// `ts_kv_p{k}` / `ts_kv_m{-k}`.
fn partition_name(k: i64) -> String {
    if k >= 0 {
        format!("ts_kv_p{k}")
    } else {
        format!("ts_kv_m{}", k.unsigned_abs())
    }
}

/// Inverse of [`partition_name`]; `None` for other tables.
pub(super) fn partition_index(name: &str) -> Option<i64> {
    if let Some(n) = name.strip_prefix("ts_kv_p") {
        n.parse::<i64>().ok().filter(|k| *k >= 0)
    } else if let Some(n) = name.strip_prefix("ts_kv_m") {
        n.parse::<u64>()
            .ok()
            .and_then(|k| 0i64.checked_sub_unsigned(k))
            .filter(|k| *k < 0)
    } else {
        None
    }
}

/// `[lo, hi)` of partition `k`; `None` is `MINVALUE` / `MAXVALUE` at the ends of `i64`.
fn partition_bounds(k: i64, width: i64) -> (Option<i64>, Option<i64>) {
    (
        k.checked_mul(width),
        k.checked_add(1).and_then(|k1| k1.checked_mul(width)),
    )
}

pub(super) fn create_partition_sql(k: i64, width: i64) -> String {
    let (lo, hi) = partition_bounds(k, width);
    let lo = lo.map_or_else(|| "MINVALUE".to_owned(), |v| v.to_string());
    let hi = hi.map_or_else(|| "MAXVALUE".to_owned(), |v| v.to_string());
    format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF ts_kv FOR VALUES FROM ({lo}) TO ({hi})",
        partition_name(k)
    )
}

/// Rows of a batch as `UNNEST`-ready arrays.
struct Columns {
    series: Vec<i64>,
    device: Vec<Uuid>,
    key: Vec<String>,
    ts: Vec<i64>,
    values: ValueArrays,
}

impl Columns {
    /// Rows `rows` of `points`, whose series ids are `series`.
    fn of(
        points: &[&TelemetryPoint],
        series: &[i64],
        rows: impl ExactSizeIterator<Item = usize>,
    ) -> Self {
        let n = rows.len();
        let mut c = Columns {
            series: Vec::with_capacity(n),
            device: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            values: ValueArrays::with_capacity(n),
        };
        for i in rows {
            let p = points[i];
            c.series.push(series[i]);
            c.device.push(p.device_id.0);
            c.key.push(p.key.clone());
            c.ts.push(p.ts);
            c.values.push(&p.value);
        }
        c
    }
}

/// The batch without repeated `(device, key, ts)` (the last occurrence wins), sorted
/// by `(device, key, ts)` so concurrent writers lock rows in one order. Postgres
/// rejects an `INSERT .. ON CONFLICT DO UPDATE` that touches one row twice.
fn dedupe(points: &[TelemetryPoint]) -> Vec<&TelemetryPoint> {
    // A stable sort keeps repeated points in batch order: the last of each run of
    // equal keys is the last occurrence. (Cheaper than hashing every point.)
    let mut sorted: Vec<&TelemetryPoint> = points.iter().collect();
    sorted.sort_by(|a, b| {
        (a.device_id, a.key.as_str(), a.ts).cmp(&(b.device_id, b.key.as_str(), b.ts))
    });
    let mut out: Vec<&TelemetryPoint> = Vec::with_capacity(sorted.len());
    for p in sorted {
        match out.last_mut() {
            Some(last) if last.ts == p.ts && last.device_id == p.device_id && last.key == p.key => {
                *last = p;
            }
            _ => out.push(p),
        }
    }
    out
}

/// Splits a deduplicated, sorted batch into at most `parts` runs of about equal size,
/// each at least `min_rows` points long, never cutting through a device's points;
/// yields the runs' index ranges.
fn split_by_device(sorted: &[&TelemetryPoint], parts: usize, min_rows: usize) -> Vec<Range<usize>> {
    let parts = parts.min(sorted.len() / min_rows.max(1)).max(1);
    let target = sorted.len().div_ceil(parts);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    while out.len() + 1 < parts && sorted.len() - start > target {
        let mut cut = start + target;
        while cut < sorted.len() && sorted[cut].device_id == sorted[cut - 1].device_id {
            cut += 1;
        }
        if sorted.len() - cut < min_rows {
            break;
        }
        out.push(start..cut);
        start = cut;
    }
    if start < sorted.len() || out.is_empty() {
        out.push(start..sorted.len());
    }
    out
}

fn direction(order: Order) -> &'static str {
    match order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    }
}

/// `None` for "all keys", else the requested keys.
fn key_filter(keys: &[String]) -> Option<Vec<String>> {
    (!keys.is_empty()).then(|| keys.to_vec())
}

/// Selects the device's series (`$1`): all of them, or those of the keys `$4`.
const DEVICE_SERIES: &str = "s.device_id = $1 AND ($4::text[] IS NULL OR s.key = ANY($4))";

/// History rows without a limit: an index range scan per series.
fn history_sql(order: Order) -> String {
    format!(
        "SELECT s.key, t.ts, t.vtype, t.v_int, t.v_real, t.v_text FROM ts_series AS s \
         JOIN ts_kv AS t ON t.series = s.id AND t.ts >= $2 AND t.ts < $3 \
         WHERE {DEVICE_SERIES} ORDER BY s.key, t.ts {}",
        direction(order)
    )
}

/// History rows, at most `$5` per key: an index range scan per series.
fn history_limited_sql(order: Order) -> String {
    let dir = direction(order);
    format!(
        "SELECT s.key, t.ts, t.vtype, t.v_int, t.v_real, t.v_text FROM ts_series AS s \
         CROSS JOIN LATERAL (SELECT ts, vtype, v_int, v_real, v_text FROM ts_kv \
         WHERE series = s.id AND ts >= $2 AND ts < $3 ORDER BY ts {dir} LIMIT $5) AS t \
         WHERE {DEVICE_SERIES} ORDER BY s.key, t.ts {dir}"
    )
}

/// Buckets `[start + n*interval, start + (n+1)*interval)` of one aggregate; `$5` is the
/// interval, `$6` the optional per-key limit. Booleans count as 0/1 (`v_int`),
/// strings and JSON (`v_int` and `v_real` NULL) are ignored except by `count`.
fn aggregate_sql(agg: Aggregation, order: Order) -> String {
    let dir = direction(order);
    let (expr, having) = match agg {
        Aggregation::Avg => ("avg(num)", "HAVING count(num) > 0"),
        Aggregation::Min => ("min(num)", "HAVING count(num) > 0"),
        Aggregation::Max => ("max(num)", "HAVING count(num) > 0"),
        Aggregation::Sum => ("sum(num)", "HAVING count(num) > 0"),
        Aggregation::Count => ("count(*)", ""),
    };
    format!(
        "WITH b AS (SELECT key, $7::bigint + (ts / $5::bigint) * $5::bigint \
         + CASE WHEN ts % $5::bigint >= $5::bigint + $7::bigint THEN $5::bigint ELSE 0 END \
         AS bucket, {expr} AS v FROM (SELECT s.key, t.ts, CASE WHEN t.vtype IN (0, 1) \
         THEN t.v_int::float8 WHEN t.vtype = 2 THEN t.v_real END AS num \
         FROM ts_series AS s JOIN ts_kv AS t ON t.series = s.id \
         AND t.ts >= $2 AND t.ts < $3 WHERE {DEVICE_SERIES}) AS s GROUP BY 1, 2 {having}), \
         r AS (SELECT key, bucket, v, \
         row_number() OVER (PARTITION BY key ORDER BY bucket {dir}) AS rn FROM b) \
         SELECT key, bucket, v FROM r WHERE ($6::bigint IS NULL OR rn <= $6) \
         ORDER BY key, bucket {dir}"
    )
}

fn events_sql(order: Order) -> String {
    let dir = direction(order);
    format!(
        "SELECT device_id, ts, message_id, method, params::text AS params FROM ts_events \
         WHERE device_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts {dir}, id {dir} LIMIT $4"
    )
}

fn kv_from_row(row: &PgRow) -> std::result::Result<KeyValue, PgError> {
    Ok(KeyValue {
        key: row.try_get("key")?,
        ts: row.try_get("ts")?,
        value: value::decode(row)?,
    })
}

fn decode_kvs(rows: &[PgRow]) -> Result<Vec<KeyValue>> {
    rows.iter()
        .map(|r| kv_from_row(r).map_err(Error::from))
        .collect()
}

#[async_trait]
impl TimeSeriesStore for PostgresTimeSeriesStore {
    fn backend(&self) -> &'static str {
        error::BACKEND
    }

    async fn healthcheck(&self) -> Result<()> {
        healthcheck(&self.pool).await
    }

    async fn write(&self, points: &[TelemetryPoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let points = dedupe(points);
        let series = self.series_ids(&points).await?;
        self.ensure_partitions(&points).await?;
        let parts = split_by_device(&points, self.write_connections, self.copy_min_rows);
        if parts.len() == 1 {
            return self.write_part(&points, &series).await;
        }
        // Every part runs to its end (no cancellation mid-transaction); the first
        // error is the batch's.
        let results = futures_util::future::join_all(
            parts
                .iter()
                .map(|r| self.write_part(&points[r.clone()], &series[r.clone()])),
        )
        .await;
        results.into_iter().collect()
    }

    async fn latest(&self, device: DeviceId, keys: Option<&[String]>) -> Result<Vec<KeyValue>> {
        if keys.is_some_and(<[String]>::is_empty) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT key, ts, vtype, v_int, v_real, v_text FROM ts_latest \
             WHERE device_id = $1 AND ($2::text[] IS NULL OR key = ANY($2)) ORDER BY key",
        )
        .bind(device.0)
        .bind(keys.map(<[String]>::to_vec))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        decode_kvs(&rows)
    }

    async fn query(&self, q: &TsQuery) -> Result<Vec<KeyValue>> {
        if q.start >= q.end || q.limit == Some(0) {
            return Ok(Vec::new());
        }
        let keys = key_filter(&q.keys);
        let limit = q.limit.map(to_i64);
        match q.aggregation {
            None => {
                let rows = match limit {
                    None => {
                        sqlx::query(AssertSqlSafe(history_sql(q.order)))
                            .bind(q.device_id.0)
                            .bind(q.start)
                            .bind(q.end)
                            .bind(keys)
                            .fetch_all(&self.pool)
                            .await
                    }
                    Some(n) => {
                        sqlx::query(AssertSqlSafe(history_limited_sql(q.order)))
                            .bind(q.device_id.0)
                            .bind(q.start)
                            .bind(q.end)
                            .bind(keys)
                            .bind(n)
                            .fetch_all(&self.pool)
                            .await
                    }
                }
                .map_err(db)?;
                decode_kvs(&rows)
            }
            Some((agg, interval)) => {
                if interval <= 0 {
                    return Err(Error::invalid(
                        "interval",
                        format!("must be a positive number of milliseconds, got {interval}"),
                    ));
                }
                let rows = sqlx::query(AssertSqlSafe(aggregate_sql(agg, q.order)))
                    .bind(q.device_id.0)
                    .bind(q.start)
                    .bind(q.end)
                    .bind(keys)
                    .bind(interval)
                    .bind(limit)
                    .bind(tp_core::bucket_phase(q.start, interval))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db)?;
                rows.iter()
                    .map(|row| {
                        let value = if agg == Aggregation::Count {
                            Value::Integer(row.try_get("v")?)
                        } else {
                            Value::Float(row.try_get("v")?)
                        };
                        Ok(KeyValue {
                            key: row.try_get("key")?,
                            ts: row.try_get("bucket")?,
                            value,
                        })
                    })
                    .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
                    .map_err(db)
            }
        }
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
        let keys = keys.map(<[String]>::to_vec);
        let mut tx = self.pool.begin().await.map_err(db)?;
        let deleted = sqlx::query(
            "DELETE FROM ts_kv AS t USING ts_series AS s \
             WHERE t.series = s.id AND t.ts >= $2 AND t.ts < $3 \
             AND s.device_id = $1 AND ($4::text[] IS NULL OR s.key = ANY($4))",
        )
        .bind(device.0)
        .bind(start)
        .bind(end)
        .bind(&keys)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        // Latest values inside the deleted range fall back to the newest remaining
        // point; those with none left go.
        sqlx::query(
            "UPDATE ts_latest AS l SET ts = n.ts, vtype = n.vtype, v_int = n.v_int, \
             v_real = n.v_real, v_text = n.v_text \
             FROM ts_latest AS s JOIN ts_series AS r ON r.device_id = s.device_id \
             AND r.key = s.key CROSS JOIN LATERAL (\
             SELECT ts, vtype, v_int, v_real, v_text FROM ts_kv \
             WHERE series = r.id ORDER BY ts DESC LIMIT 1) AS n \
             WHERE s.device_id = $1 AND s.ts >= $2 AND s.ts < $3 \
             AND ($4::text[] IS NULL OR s.key = ANY($4)) \
             AND l.device_id = s.device_id AND l.key = s.key",
        )
        .bind(device.0)
        .bind(start)
        .bind(end)
        .bind(&keys)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "DELETE FROM ts_latest WHERE device_id = $1 AND ts >= $2 AND ts < $3 \
             AND ($4::text[] IS NULL OR key = ANY($4))",
        )
        .bind(device.0)
        .bind(start)
        .bind(end)
        .bind(&keys)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }

    async fn write_events(&self, events: &[DeviceEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        if self.write_method == WriteMethod::Copy {
            // Straight into the table (events are plain inserts): ids follow the order
            // of the rows, as with the ordered `INSERT` below.
            let mut c = CopyBuffer::new(5, 64 + events.len() * 128);
            for e in events {
                c.row()
                    .uuid(&e.device_id.0)
                    .int8(e.ts)
                    .text(&e.message_id)
                    .text(&e.method)
                    .jsonb(&e.params.to_string());
            }
            let payload = c.finish();
            let mut conn = self.pool.acquire().await.map_err(db)?;
            let mut copy = conn
                .copy_in_raw(
                    "COPY ts_events (device_id, ts, message_id, method, params) \
                     FROM STDIN (FORMAT binary)",
                )
                .await
                .map_err(db)?;
            if let Err(e) = copy.send(payload).await {
                let _ = copy.abort("send failed").await;
                return Err(db(e));
            }
            copy.finish().await.map_err(db)?;
            return Ok(());
        }
        let n = events.len();
        let (mut device, mut ts, mut message_id, mut method, mut params) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for e in events {
            device.push(e.device_id.0);
            ts.push(e.ts);
            message_id.push(e.message_id.clone());
            method.push(e.method.clone());
            params.push(e.params.to_string());
        }
        sqlx::query(
            "INSERT INTO ts_events (device_id, ts, message_id, method, params) \
             SELECT d, t, m, f, p::jsonb FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], \
             $4::text[], $5::text[]) WITH ORDINALITY AS u(d, t, m, f, p, n) ORDER BY n",
        )
        .bind(device)
        .bind(ts)
        .bind(message_id)
        .bind(method)
        .bind(params)
        .execute(&self.pool)
        .await
        .map_err(db)?;
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
        let rows = sqlx::query(AssertSqlSafe(events_sql(order)))
            .bind(device.0)
            .bind(start)
            .bind(end)
            .bind(to_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                let params: String = row.try_get("params").map_err(PgError::from)?;
                Ok(DeviceEvent {
                    device_id: DeviceId(row.try_get("device_id").map_err(PgError::from)?),
                    ts: row.try_get("ts").map_err(PgError::from)?,
                    message_id: row.try_get("message_id").map_err(PgError::from)?,
                    method: row.try_get("method").map_err(PgError::from)?,
                    params: serde_json::from_str(&params)
                        .map_err(|e| PgError::decode("params", e))?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn pt(d: DeviceId, key: &str, ts: Timestamp, v: i64) -> TelemetryPoint {
        TelemetryPoint {
            device_id: d,
            key: key.into(),
            ts,
            value: Value::Integer(v),
        }
    }

    #[test]
    fn batches_are_deduplicated_last_wins_and_sorted() {
        let d = DeviceId(Uuid::from_u128(1));
        let e = DeviceId(Uuid::from_u128(2));
        let points = [
            pt(e, "a", 5, 1),
            pt(d, "b", 2, 2),
            pt(d, "a", 9, 3),
            pt(d, "b", 2, 4),
            pt(d, "a", 1, 5),
        ];
        let got: Vec<(DeviceId, &str, i64, Value)> = dedupe(&points)
            .into_iter()
            .map(|p| (p.device_id, p.key.as_str(), p.ts, p.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (d, "a", 1, Value::Integer(5)),
                (d, "a", 9, Value::Integer(3)),
                (d, "b", 2, Value::Integer(4)),
                (e, "a", 5, Value::Integer(1)),
            ]
        );
        let sorted = dedupe(&points);
        let newest: Vec<(DeviceId, &str, i64)> = (0..sorted.len())
            .filter(|&i| is_newest(&sorted, i))
            .map(|i| (sorted[i].device_id, sorted[i].key.as_str(), sorted[i].ts))
            .collect();
        assert_eq!(newest, vec![(d, "a", 9), (d, "b", 2), (e, "a", 5)]);
        assert_eq!(newest_count(&sorted), 3);
    }

    #[test]
    fn partitions_are_named_and_bounded() {
        for k in [0, 1, 19_675, -1, -19_675, i64::MAX, i64::MIN + 1] {
            assert_eq!(partition_index(&partition_name(k)), Some(k), "{k}");
        }
        assert_eq!(partition_index("ts_kv"), None);
        assert_eq!(partition_index("ts_kv_pfoo"), None);
        assert_eq!(partition_index("ts_kv_m0"), None);
        assert_eq!(
            create_partition_sql(19_675, DAY_MS),
            "CREATE TABLE IF NOT EXISTS ts_kv_p19675 PARTITION OF ts_kv \
             FOR VALUES FROM (1699920000000) TO (1700006400000)"
        );
        assert_eq!(
            create_partition_sql(-1, DAY_MS),
            "CREATE TABLE IF NOT EXISTS ts_kv_m1 PARTITION OF ts_kv \
             FOR VALUES FROM (-86400000) TO (0)"
        );
        let k = i64::MAX.div_euclid(DAY_MS);
        assert!(create_partition_sql(k, DAY_MS).ends_with("TO (MAXVALUE)"));
        let k = i64::MIN.div_euclid(DAY_MS);
        assert!(create_partition_sql(k, DAY_MS).contains("FROM (MINVALUE)"));
        // Timestamps map to the partition that holds them.
        for ts in [0, 1, DAY_MS - 1, DAY_MS, -1, -DAY_MS, 1_700_000_000_000] {
            let (lo, hi) = partition_bounds(ts.div_euclid(DAY_MS), DAY_MS);
            assert!(lo.unwrap() <= ts && ts < hi.unwrap(), "{ts}");
        }
    }

    #[test]
    fn url_options_override_defaults() {
        let params = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let o = PgTsOptions::default()
            .apply(&params(&[
                ("partition_ms", "3600000"),
                ("timescale", "off"),
                ("compress_after_ms", "0"),
                ("retention_ms", "86400000"),
            ]))
            .unwrap();
        assert_eq!(
            o,
            PgTsOptions {
                partition_ms: 3_600_000,
                timescale: false,
                compress_after_ms: None,
                retention_ms: Some(DAY_MS),
                write_method: WriteMethod::Copy,
                copy_min_rows: DEFAULT_COPY_MIN_ROWS,
                write_connections: DEFAULT_WRITE_CONNECTIONS,
            }
        );
        let o = PgTsOptions::default()
            .apply(&params(&[("write_method", "insert")]))
            .unwrap();
        assert_eq!(o.write_method, WriteMethod::Insert);
        for bad in [
            ("partition_ms", "0"),
            ("partition_ms", "x"),
            ("timescale", "maybe"),
            ("write_method", "bulk"),
            ("copy_min_rows", "-1"),
            ("write_connections", "0"),
            ("retention_ms", "-1"),
        ] {
            assert!(
                PgTsOptions::default().apply(&params(&[bad])).is_err(),
                "{bad:?}"
            );
        }
    }

    proptest::proptest! {
        /// Every point lands in exactly one part, in order; no device straddles two
        /// parts; there are at most `parts` parts, each at least `min_rows` long
        /// unless the batch is one part.
        #[test]
        fn a_split_keeps_devices_whole(
            devices in proptest::collection::vec(0u8..20, 0..300),
            parts in 1usize..6,
            min_rows in 1usize..50,
        ) {
            let ids: Vec<DeviceId> = (0..20u128).map(|i| DeviceId(uuid::Uuid::from_u128(i))).collect();
            let mut points: Vec<TelemetryPoint> = devices
                .iter()
                .enumerate()
                .map(|(i, d)| TelemetryPoint {
                    device_id: ids[usize::from(*d)],
                    key: "k".into(),
                    ts: i as i64,
                    value: Value::Integer(1),
                })
                .collect();
            points.sort_by_key(|p| (p.device_id, p.ts));
            let sorted: Vec<&TelemetryPoint> = points.iter().collect();
            let split = split_by_device(&sorted, parts, min_rows);
            proptest::prop_assert!(!split.is_empty() && split.len() <= parts);
            // Consecutive ranges covering the whole batch.
            proptest::prop_assert_eq!(split[0].start, 0);
            proptest::prop_assert_eq!(split.last().unwrap().end, sorted.len());
            for pair in split.windows(2) {
                proptest::prop_assert_eq!(pair[0].end, pair[1].start);
                proptest::prop_assert!(
                    sorted[pair[0].end - 1].device_id != sorted[pair[1].start].device_id
                );
            }
            if split.len() > 1 {
                proptest::prop_assert!(split.iter().all(|p| p.len() >= min_rows));
            }
        }
    }

    #[test]
    fn aggregate_sql_uses_numeric_values_and_per_key_limits() {
        let sql = aggregate_sql(Aggregation::Avg, Order::Desc);
        assert!(sql.contains("avg(num)") && sql.contains("HAVING count(num) > 0"));
        assert!(sql.contains("ORDER BY key, bucket DESC"));
        let sql = aggregate_sql(Aggregation::Count, Order::Asc);
        assert!(sql.contains("count(*)") && !sql.contains("HAVING"));
    }
}
