//! The embedded time-series engine: [`FjallTimeSeriesStore`], a [`TimeSeriesStore`]
//! on [fjall](https://docs.rs/fjall) (a pure-Rust LSM tree), the default time-series
//! store of a node's data directory.
//!
//! # Why an LSM tree, and why chunks
//!
//! Ingest writes batches in which nearly every point belongs to a different series.
//! A B-tree keyed by `(series, ts)` (SQLite) rewrites about one page per series per
//! commit; an LSM tree appends to its journal and a memtable and sorts into tables in
//! the background. Even so, one LSM entry per point costs about a microsecond (a
//! skip-list insert among 10,000 series), so the engine does not write points one
//! by one: a write is **one** journal entry, and points reach the tables in
//! **chunks**, many points of one series per entry, as time-series databases do.
//! `cargo bench -p tp-benches --bench storage_write` measures it (benches/RESULTS.md).
//!
//! # Layout
//!
//! One fjall database (a directory) with these keyspaces:
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `head` | record number | the points of one write (series id, ts, value each) |
//! | `series` | device id (16 bytes) ‖ key (UTF-8) | series id (u64) |
//! | `latest` | series id | ts ‖ value of the series' newest flushed point |
//! | `ts.<n>` (one per time partition) | `3` ‖ series id ‖ first ts ‖ generation | a chunk: the series' points from first ts on |
//! | | `2` ‖ device id ‖ ts ‖ sequence | event |
//! | | `1` ‖ series id ‖ ts | one point (the layout before chunks; still read and deleted) |
//! | `meta` | name | partition width, event sequence, last flushed record, import progress |
//!
//! Integers in keys are big-endian and timestamps have their sign bit flipped, so key
//! order is `(series, ts)` order: one series' time range inside a partition is one
//! contiguous range scan. Series ids are interned: the `device ‖ key` → id map is
//! loaded into memory when the store opens.
//!
//! - **The head.** A write stores its points as one `head` record and adds them to
//!   an in-memory map by series. When the head holds `flush_points` points, a
//!   background task writes it into chunks and removes its records, in one atomic
//!   batch, while new writes go to a fresh head; if the flush falls 4× behind, writes
//!   wait for it. Reads merge the head with the chunks. On open, the records not yet
//!   flushed are read back into the head.
//! - **Chunks.** A chunk holds points of one series less than 6 hours apart (at
//!   most 1,024), inside one partition: a header with the count and the time span
//!   (a read skips chunks that end before its range), then per point the distance to
//!   the previous timestamp as a varint and the value (tag and payload; a float is 9 bytes). Its key carries the
//!   flush's *generation*: when two chunks hold the same timestamp (a point written
//!   again, or late), the later generation wins, and the head wins over every chunk.
//! - **Time partitions.** `ts.<n>` holds `[n·partition_ms, (n+1)·partition_ms)`
//!   (default one day). Queries scan only the partitions they overlap; retention
//!   ([`FjallTimeSeriesStore::drop_partitions_before`], or `retention_ms` applied on
//!   every write) deletes whole partition keyspaces, history and events together,
//!   without reading them. Latest values are kept.
//! - **Aggregation** (`avg/min/max/sum/count` per interval) is folded bucket by bucket
//!   while one partition's points of a series are handed out; rows are never
//!   collected across partitions.
//! - **Compression**: chunks store timestamps as small deltas; LZ4 on the data blocks
//!   of every level (fjall's default leaves the first two levels uncompressed).
//! - **Idempotence**: writing a point again (same series and timestamp) replaces it,
//!   in the head or through a later generation; of equal points within one batch the
//!   last wins. Events are appended with a sequence number (the write-ahead log's
//!   replay checks events itself).
//! - **Deletes** flush the head first, then rewrite the chunks they touch.
//!
//! # Durability
//!
//! Every `write` is one atomic journal entry. By default the journal is flushed to the
//! operating system when `write` returns (`PersistMode::Buffer`): the data survives
//! the process being killed, which is the guarantee of the node's write-ahead log
//! without `wal.fsync` (the log deletes a segment only after the writer stored what it
//! holds, so nothing acknowledged is lost). With `fsync=true` (the node sets it when
//! `mqtt.wal.fsync` is on) every write is `fdatasync`ed before it returns, so a
//! deleted log segment never covers data only in the page cache. A flush replaces
//! head records with chunks in one batch, so a crash leaves one or the other.
//!
//! # URLs
//!
//! `fjall://<dir>` (the directory, created if missing; `fjall:///abs/dir` for an
//! absolute path), or `fjall::memory:` for a store in a fresh temporary directory that
//! is deleted when the store is dropped (fjall's `temporary` mode; tests and demos).
//! Query parameters, see [`FjallOptions`]: `partition_ms`, `retention_ms`, `fsync`,
//! `flush_points`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tp_core::Result<()> {
//! use tp_core::{DeviceId, TelemetryPoint, Value};
//!
//! let ts = tp_storage::open_timeseries("fjall::memory:?retention_ms=2592000000").await?;
//! let device = DeviceId::new();
//! ts.write(&[TelemetryPoint { device_id: device, key: "temp".into(), ts: tp_core::now_ms(), value: Value::Float(21.5) }])
//!     .await?;
//! assert_eq!(ts.latest(device, None).await?[0].value, Value::Float(21.5));
//! # Ok(())
//! # }
//! ```
//!
//! [`TimeSeriesStore`]: tp_core::TimeSeriesStore

mod codec;
mod error;
mod store;

use std::path::PathBuf;

use tp_core::{Error, Result};

pub use store::{DiskSpace, FjallTimeSeriesStore};

/// One day in milliseconds: the default partition width.
const DAY_MS: i64 = 86_400_000;
/// Default [`FjallOptions::flush_points`].
const DEFAULT_FLUSH_POINTS: usize = 262_144;

/// Settings of a [`FjallTimeSeriesStore`] (the query parameters of its URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FjallOptions {
    /// Width of a time partition in ms (`partition_ms`, default one day). Fixed when
    /// the store is created; a different value later is ignored with a warning.
    pub partition_ms: i64,
    /// Keep this much history (`retention_ms`, `0` = forever, the default): after each
    /// write, partitions that ended before `now - retention_ms` are dropped.
    pub retention_ms: Option<i64>,
    /// `fdatasync` the journal before `write` returns (`fsync=true`); default off:
    /// flushed to the OS, which survives the process being killed.
    pub fsync: bool,
    /// Flush the head into chunks when it holds this many points (`flush_points`,
    /// default 262,144). More makes larger chunks and fewer flushes at the cost of
    /// memory: a point in the head takes about 50 bytes.
    pub flush_points: usize,
}

impl Default for FjallOptions {
    fn default() -> Self {
        Self {
            partition_ms: DAY_MS,
            retention_ms: None,
            fsync: false,
            flush_points: DEFAULT_FLUSH_POINTS,
        }
    }
}

impl FjallOptions {
    fn validate(&self) -> Result<()> {
        if self.partition_ms <= 0 {
            return Err(Error::invalid(
                "partition_ms",
                format!("must be a positive number of ms, got {}", self.partition_ms),
            ));
        }
        Ok(())
    }
}

/// Where a `fjall` URL points.
#[derive(Debug, PartialEq, Eq)]
pub enum FjallTarget {
    /// A temporary directory removed with the store.
    Memory,
    /// A database directory.
    Dir(PathBuf),
}

/// Parses `fjall://<dir>[?..]` or `fjall::memory:[?..]`.
///
/// # Errors
/// [`Error::Invalid`] (field `field`) for a malformed URL or parameter.
pub fn parse_url(url: &str, field: &str) -> Result<(FjallTarget, FjallOptions)> {
    let url = url.trim();
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let target = if matches!(base, "fjall::memory:" | "fjall://:memory:") {
        FjallTarget::Memory
    } else {
        match base.strip_prefix("fjall://") {
            Some(path) if !path.is_empty() => FjallTarget::Dir(PathBuf::from(path)),
            _ => {
                return Err(Error::invalid(
                    field,
                    format!("{url:?}: expected fjall://<dir> or fjall::memory:"),
                ));
            }
        }
    };
    let mut options = FjallOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let ms = || {
            v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                Error::invalid(
                    field,
                    format!("{url:?}: {k} must be a whole number of ms, got {v:?}"),
                )
            })
        };
        match k {
            "partition_ms" => {
                options.partition_ms = ms()?;
                if options.partition_ms == 0 {
                    return Err(Error::invalid(
                        field,
                        format!("{url:?}: partition_ms must be > 0"),
                    ));
                }
            }
            "retention_ms" => options.retention_ms = Some(ms()?).filter(|n| *n > 0),
            "flush_points" => {
                options.flush_points = v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Error::invalid(
                        field,
                        format!("{url:?}: flush_points must be a positive number of points, got {v:?}"),
                    )
                })?;
            }
            "fsync" => {
                options.fsync = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(Error::invalid(
                            field,
                            format!("{url:?}: fsync must be true or false, got {v:?}"),
                        ));
                    }
                }
            }
            _ => {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{url:?}: unknown parameter {k:?} (supported: partition_ms, retention_ms, fsync, flush_points)"
                    ),
                ));
            }
        }
    }
    Ok((target, options))
}

/// Opens the store a parsed URL names.
///
/// # Errors
/// As [`FjallTimeSeriesStore::open`].
pub async fn open(target: FjallTarget, options: FjallOptions) -> Result<FjallTimeSeriesStore> {
    match target {
        FjallTarget::Memory => FjallTimeSeriesStore::temporary(options).await,
        FjallTarget::Dir(dir) => FjallTimeSeriesStore::open(&dir, options).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (t, o) = parse_url("fjall:///var/lib/tp/ts", "f").expect("ok");
        assert_eq!(t, FjallTarget::Dir("/var/lib/tp/ts".into()));
        assert_eq!(o, FjallOptions::default());
        let (t, o) = parse_url(
            "fjall://data/ts?partition_ms=3600000&retention_ms=86400000&fsync=true&flush_points=10",
            "f",
        )
        .expect("ok");
        assert_eq!(t, FjallTarget::Dir("data/ts".into()));
        assert_eq!(
            o,
            FjallOptions {
                partition_ms: 3_600_000,
                retention_ms: Some(86_400_000),
                fsync: true,
                flush_points: 10,
            }
        );
        assert_eq!(
            parse_url("fjall::memory:", "f").expect("ok").0,
            FjallTarget::Memory
        );
        assert_eq!(
            parse_url("fjall://:memory:?retention_ms=0", "f").expect("ok"),
            (FjallTarget::Memory, FjallOptions::default())
        );
        for bad in [
            "fjall://",
            "fjall:dir",
            "fjall://d?partition_ms=0",
            "fjall://d?partition_ms=-5",
            "fjall://d?retention_ms=x",
            "fjall://d?fsync=maybe",
            "fjall://d?flush_points=0",
            "fjall://d?flush_points=-1",
            "fjall://d?size=1",
        ] {
            assert!(
                matches!(parse_url(bad, "f"), Err(Error::Invalid { field, .. }) if field == "f"),
                "{bad}"
            );
        }
    }
}
