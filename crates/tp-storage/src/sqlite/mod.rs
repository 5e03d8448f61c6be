//! SQLite backends: the embedded default of a single-node installation.
//!
//! - [`SqliteMetadataStore`]: tenants, users, devices, attributes, downlink log; it is
//!   also the [`tp_core::AccessStore`] (roles, API keys, device groups, profiles, audit
//!   log) on the same database and pools, and the [`tp_core::rules::RuleStore`] (rules,
//!   scenes, alarms, notification channels and history, rule state).
//! - [`SqliteTimeSeriesStore`]: telemetry history (`ts_kv`, a `WITHOUT ROWID` table keyed
//!   by `(series_id, ts)`, with `(device_id, key)` -> `series_id` in `ts_series`); latest
//!   values are the last history row of each series; events in `ts_events`.
//!
//! Both open a database file in WAL mode with `synchronous = NORMAL` and a busy
//! timeout, write through a single-connection pool (SQLite has one writer) and read
//! through a small pool of readers. Both may use the same file: their migrations use
//! disjoint version ranges. `in_memory()` keeps a private in-memory database alive for
//! the life of the store and serves reads and writes through one connection.

mod dialect;
mod error;
mod meta;
mod timeseries;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::Mutex;

pub use dialect::SqliteDialect;
pub use meta::SqliteMetadataStore;
pub use timeseries::SqliteTimeSeriesStore;

use error::SqliteError;

/// How long a statement waits for the write lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the read pool of a file database.
const READERS: u32 = 4;

/// The connections of one SQLite database.
#[derive(Debug)]
struct Pools {
    /// The only connection that writes.
    writer: SqlitePool,
    /// Connections for reads (the writer pool itself for in-memory databases).
    reader: SqlitePool,
    /// Keeps an in-memory database alive while the store exists.
    _anchor: Option<Mutex<SqliteConnection>>,
}

impl Pools {
    async fn open_file(path: &Path, migrator: &Migrator) -> tp_core::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| SqliteError::CreateDir {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // A 64 MiB page cache per connection keeps the hot B-tree pages of a
            // batch in memory; SQLite's 2 MiB default thrashes with many devices.
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory")
            // Time-series batches touch one leaf page per series (a series' newest rows),
            // and WAL mode writes every dirty page whole at each commit, so the WAL
            // volume of a batch is ~ series x page size: 2 KiB pages halve it against
            // the 4 KiB default (storage_write bench: ~2x at 500-point batches). Only
            // takes effect when the file is created.
            .page_size(2048)
            // The same hot pages are rewritten by every batch: checkpointing every
            // 32 768 frames (64 MiB of WAL) instead of SQLite's 1 000 copies each page
            // to the database once per many commits instead of after nearly every one.
            .pragma("wal_autocheckpoint", "32768");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(SqliteError::from)?;
        migrator.run(&writer).await.map_err(SqliteError::from)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options)
            .await
            .map_err(SqliteError::from)?;
        Ok(Self {
            writer,
            reader,
            _anchor: None,
        })
    }

    async fn open_memory(migrator: &Migrator) -> tp_core::Result<Self> {
        // `sqlite::memory:` names a fresh shared-cache in-memory database; it lives as
        // long as one connection to it is open, so the anchor holds one.
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(SqliteError::from)?
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let anchor = options.connect().await.map_err(SqliteError::from)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(SqliteError::from)?;
        migrator.run(&pool).await.map_err(SqliteError::from)?;
        Ok(Self {
            writer: pool.clone(),
            reader: pool,
            _anchor: Some(Mutex::new(anchor)),
        })
    }

    /// A write transaction that takes the write lock up front (`BEGIN IMMEDIATE`), so
    /// another connection holding it makes this wait (busy timeout) instead of failing
    /// a read-then-write transaction with `SQLITE_BUSY`.
    async fn begin_write(&self) -> tp_core::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(error::db)
    }

    async fn healthcheck(&self) -> tp_core::Result<()> {
        for pool in [&self.reader, &self.writer] {
            sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map_err(error::db)?;
        }
        Ok(())
    }
}

/// A migrator that tolerates the other store's migrations in a shared file.
fn migrator(mut m: Migrator) -> Migrator {
    m.set_ignore_missing(true);
    m
}

/// Rows per multi-row `INSERT`: 7 bound values per row stays far below SQLite's
/// variable limit (32 766), and full chunks reuse one prepared statement.
const ROWS_PER_INSERT: usize = 1000;

/// Clamps a `u64` count to SQLite's `INTEGER`.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_clamp_to_sql_integers() {
        assert_eq!(to_i64(u64::MAX), i64::MAX);
    }
}
