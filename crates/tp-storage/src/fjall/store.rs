//! [`FjallTimeSeriesStore`]: the keyspaces, the write path and the scans.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, Weak};

use ::fjall::config::CompressionPolicy;
use ::fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use async_trait::async_trait;
use tp_core::{
    Aggregation, DeviceEvent, DeviceId, Error, KeyValue, Order, Result, TelemetryPoint,
    TimeSeriesStore, Timestamp, TsQuery, Value,
};

use super::FjallOptions;
use super::codec;
use super::error::{BACKEND, FjallError, fj};

/// Prefix of the name of a time partition keyspace; the rest is the partition number
/// (`ts.div_euclid(partition_ms)`).
const PARTITION_PREFIX: &str = "ts.";
/// `meta` keys.
const META_PARTITION_MS: &str = "partition_ms";
const META_EVENT_SEQ: &str = "event_seq";
/// The newest head record a flush wrote into chunks (chunk generations never repeat,
/// even after the head records are gone).
const META_FLUSHED_RECORD: &str = "flushed_record";

/// A chunk holds points of one series less than this far apart (and never crosses a
/// partition), so a range read starts at most this far before the range (and skips,
/// by their header, chunks that end before it). Long enough that a series reporting
/// every 15 minutes still gets ~24 points per chunk.
const CHUNK_SPAN_MS: i64 = 6 * 3_600_000;
/// At most this many points per chunk (bounds what a narrow read decodes).
const CHUNK_MAX_POINTS: usize = 1_024;
/// When the active head holds this many times `flush_points` (the background flush
/// is behind), a write flushes before it returns.
const HEAD_HARD_LIMIT: usize = 4;

/// Which copy of a timestamp wins when several exist: rows of the older per-point
/// layout lose to chunks, chunks to a later generation, every chunk to the head.
const OLD_ROW: u64 = 0;
const FLUSHING: u64 = u64::MAX - 1;
const ACTIVE: u64 = u64::MAX;

/// A point found by a read, with its precedence.
type Candidate = (Timestamp, u64, Value);

type FjallResult<T> = std::result::Result<T, FjallError>;

/// Bytes on disk of a [`FjallTimeSeriesStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Tables of every keyspace: the stored data after compression.
    pub tables: u64,
    /// Journal files.
    pub journal: u64,
}

/// [`TimeSeriesStore`] on the fjall LSM tree; see [the module docs](super).
#[derive(Debug, Clone)]
pub struct FjallTimeSeriesStore {
    inner: Arc<Inner>,
    /// `fsync` per write or not.
    persist: PersistMode,
    retention_ms: Option<i64>,
}

/// Databases open in this process by canonical path: fjall locks its directory, so a
/// second store on the same directory in one process (a node restarted in place while
/// tasks of the old one still hold the store, several stores in tests) shares the
/// open database instead of failing.
static OPEN: Mutex<Vec<(PathBuf, Weak<Inner>)>> = Mutex::new(Vec::new());

/// How long an open waits for this process to release a database it is closing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn shared(path: &Path, partition_ms: i64, flush_points: usize) -> FjallResult<Arc<Inner>> {
    std::fs::create_dir_all(path).map_err(|source| FjallError::CreateDir {
        path: path.display().to_string(),
        source,
    })?;
    let key = path
        .canonicalize()
        .map_err(|source| FjallError::CreateDir {
            path: path.display().to_string(),
            source,
        })?;
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    open.retain(|(_, w)| w.strong_count() > 0);
    if let Some(inner) = open
        .iter()
        .find(|(p, _)| *p == key)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(inner);
    }
    // The last handle of an earlier open may still be closing (its drop stops
    // fjall's threads, then unlocks): wait for that, boundedly.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let inner = loop {
        match Inner::open(&key, false, partition_ms, flush_points) {
            Err(FjallError::Fjall(::fjall::Error::Locked))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break Arc::new(other?),
        }
    };
    open.push((key, Arc::downgrade(&inner)));
    Ok(inner)
}

struct Inner {
    db: Database,
    /// Settings fixed at creation (`partition_ms`), counters (`event_seq`), import
    /// progress.
    meta: Keyspace,
    /// `device ‖ key` → series id.
    series: Keyspace,
    /// series id → `ts ‖ value` of its newest flushed point.
    latest: Keyspace,
    /// record number → one write's points (the head's journal until they are flushed).
    head_records: Keyspace,
    partition_ms: i64,
    /// Flush the head when it holds this many points.
    flush_points: usize,
    /// What readers need: series ids and open partitions.
    catalog: RwLock<Catalog>,
    /// Points written but not yet in chunks (see the module docs).
    head: RwLock<Head>,
    /// Flushes one at a time; taken before `writer` by those that need both.
    flusher: Mutex<FlushState>,
    /// Writers (`write`, `write_events`, `delete_range`, retention) one at a time.
    writer: Mutex<WriterState>,
    /// Where the database lives (for logs and the size report).
    path: PathBuf,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallTimeSeriesStore")
            .field("path", &self.path)
            .field("partition_ms", &self.partition_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Catalog {
    /// Series of each device, keys ascending.
    series: HashMap<DeviceId, BTreeMap<Box<str>, u64>>,
    /// Partition number → its keyspace.
    partitions: BTreeMap<i64, Keyspace>,
}

struct WriterState {
    next_series: u64,
    next_event: u64,
    /// Number of the next head record.
    next_record: u64,
}

struct FlushState {
    /// Newest timestamp per series (the `latest` keyspace's, in memory), so a flush
    /// decides without a read whether a point replaces the stored latest value.
    stored_latest: HashMap<u64, Timestamp>,
}

/// Points of some writes, by series.
#[derive(Default)]
struct Layer {
    /// Each series' points.
    series: HashMap<u64, SeriesHead>,
    points: usize,
    /// The head records holding these points, ascending.
    records: Vec<u64>,
}

impl Layer {
    fn push(&mut self, series: u64, ts: Timestamp, value: Value) {
        let head = self.series.entry(series).or_default();
        if head.points.get(head.newest).is_none_or(|n| ts >= n.0) {
            head.newest = head.points.len();
        }
        head.points.push((ts, value));
        self.points += 1;
    }

    /// The newest point of a series (the last written of equal timestamps).
    fn newest(&self, series: u64) -> Option<&(Timestamp, Value)> {
        let head = self.series.get(&series)?;
        head.points.get(head.newest)
    }

    fn points_in(
        &self,
        series: u64,
        start: Timestamp,
        end: Timestamp,
        rank: u64,
        out: &mut Vec<Candidate>,
    ) {
        if let Some(head) = self.series.get(&series) {
            out.extend(
                head.points
                    .iter()
                    .filter(|p| (start..end).contains(&p.0))
                    .map(|(ts, v)| (*ts, rank, v.clone())),
            );
        }
    }
}

/// One series' points in a [`Layer`].
#[derive(Default)]
struct SeriesHead {
    /// In write order (of equal timestamps the last one wins).
    points: Vec<(Timestamp, Value)>,
    /// Index of the newest point (kept on push: latest-value reads are frequent).
    newest: usize,
}

/// The head: what the last writes added, kept in memory and in `head_records` until a
/// flush writes it into chunks.
#[derive(Default)]
struct Head {
    /// Where writes go.
    active: Layer,
    /// What a flush is writing (or failed to write, to be retried).
    flushing: Option<Arc<Layer>>,
}

impl Head {
    fn newest(&self, series: u64) -> Option<(Timestamp, Value)> {
        let active = self.active.newest(series);
        let flushing = self.flushing.as_ref().and_then(|l| l.newest(series));
        match (active, flushing) {
            (Some(a), Some(f)) if f.0 > a.0 => Some(f.clone()),
            (a, f) => a.or(f).cloned(),
        }
    }
}

/// Sorts candidates by timestamp and keeps, of equal timestamps, the one that wins.
fn settle(items: &mut Vec<Candidate>) {
    // Stable: of equal rank, the later written stays later.
    items.sort_by_key(|c| (c.0, c.1));
    let mut kept = 0;
    for i in 0..items.len() {
        if i + 1 < items.len() && items[i + 1].0 == items[i].0 {
            continue;
        }
        items.swap(kept, i);
        kept += 1;
    }
    items.truncate(kept);
}

/// `[start, end)` of partition `bucket`, clamped to the timestamps that exist.
fn bucket_bounds(bucket: i64, partition_ms: i64) -> (Timestamp, Timestamp) {
    let at = |b: i64| {
        (i128::from(b) * i128::from(partition_ms)).clamp(i128::from(i64::MIN), i128::from(i64::MAX))
            as Timestamp
    };
    (at(bucket), at(bucket.saturating_add(1)))
}

fn partition_options() -> KeyspaceCreateOptions {
    // LZ4 on every level (fjall's default leaves L0 and L1 uncompressed).
    KeyspaceCreateOptions::default()
        .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
}

fn read_i64(bytes: &[u8], what: &'static str) -> FjallResult<i64> {
    Ok(codec::u64_from(bytes, what)? as i64)
}

/// The first and last partition numbers covering `[start, end)` (`start < end`).
fn bucket_span(start: Timestamp, end: Timestamp, partition_ms: i64) -> (i64, i64) {
    (
        start.div_euclid(partition_ms),
        (end - 1).div_euclid(partition_ms),
    )
}

impl Inner {
    fn open(
        path: &Path,
        temporary: bool,
        requested_partition_ms: i64,
        flush_points: usize,
    ) -> FjallResult<Self> {
        std::fs::create_dir_all(path).map_err(|source| FjallError::CreateDir {
            path: path.display().to_string(),
            source,
        })?;
        let db = Database::builder(path)
            .temporary(temporary)
            .open()
            .map_err(fj)?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(fj)?;
        let series = db.keyspace("series", partition_options).map_err(fj)?;
        let latest = db.keyspace("latest", partition_options).map_err(fj)?;
        let head_records = db
            .keyspace("head", KeyspaceCreateOptions::default)
            .map_err(fj)?;

        // The partition width is part of the layout: the stored one wins.
        let partition_ms = match meta.get(META_PARTITION_MS).map_err(fj)? {
            Some(v) => read_i64(&v, META_PARTITION_MS)?,
            None => {
                meta.insert(META_PARTITION_MS, requested_partition_ms.to_be_bytes())
                    .map_err(fj)?;
                requested_partition_ms
            }
        };
        if partition_ms != requested_partition_ms {
            tracing::warn!(
                path = %path.display(),
                stored = partition_ms,
                requested = requested_partition_ms,
                "partition_ms is fixed when the store is created; keeping the stored value"
            );
        }
        let next_event = match meta.get(META_EVENT_SEQ).map_err(fj)? {
            Some(v) => codec::u64_from(&v, META_EVENT_SEQ)?,
            None => 0,
        };

        let mut catalog = Catalog::default();
        let mut next_series = 1;
        for kv in series.iter() {
            let (name, id) = kv.into_inner().map_err(fj)?;
            let (device, key) = codec::series_from_name(&name)?;
            let id = codec::u64_from(&id, "series id")?;
            next_series = next_series.max(id + 1);
            catalog
                .series
                .entry(device)
                .or_default()
                .insert(key.into(), id);
        }
        // The head: every record not yet flushed, in write order.
        let mut active = Layer::default();
        let mut next_record = match meta.get(META_FLUSHED_RECORD).map_err(fj)? {
            Some(v) => codec::u64_from(&v, META_FLUSHED_RECORD)? + 1,
            None => 1,
        };
        for kv in head_records.iter() {
            let (number, record) = kv.into_inner().map_err(fj)?;
            let number = codec::u64_from(&number, "head record number")?;
            codec::decode_head(&record, |series, ts, value| {
                active.push(series, ts, value);
            })?;
            active.records.push(number);
            next_record = next_record.max(number + 1);
        }
        let mut latest_ts = HashMap::new();
        for kv in latest.iter() {
            let (id, value) = kv.into_inner().map_err(fj)?;
            latest_ts.insert(
                codec::u64_from(&id, "series id")?,
                codec::latest_ts(&value)?,
            );
        }
        for name in db.list_keyspace_names() {
            let Some(bucket) = name.strip_prefix(PARTITION_PREFIX) else {
                continue;
            };
            let bucket: i64 = bucket
                .parse()
                .map_err(|_| FjallError::corrupt("partition name", &*name))?;
            let ks = db.keyspace(&name, partition_options).map_err(fj)?;
            catalog.partitions.insert(bucket, ks);
        }
        Ok(Self {
            db,
            meta,
            series,
            latest,
            head_records,
            partition_ms,
            flush_points: flush_points.max(1),
            catalog: RwLock::new(catalog),
            head: RwLock::new(Head {
                active,
                flushing: None,
            }),
            flusher: Mutex::new(FlushState {
                stored_latest: latest_ts,
            }),
            writer: Mutex::new(WriterState {
                next_series,
                next_event,
                next_record,
            }),
            path: path.to_owned(),
        })
    }

    fn writer(&self) -> MutexGuard<'_, WriterState> {
        // Writer state is only updated after a successful commit.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn flusher(&self) -> MutexGuard<'_, FlushState> {
        // Flush state is only updated after a successful commit.
        self.flusher.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn head(&self) -> RwLockReadGuard<'_, Head> {
        self.head.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn catalog(&self) -> RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The partition holding `ts`, created if missing (by a flush or an event write;
    /// opening a keyspace twice gives the same one).
    fn partition(&self, ts: Timestamp) -> FjallResult<(i64, Keyspace)> {
        let bucket = ts.div_euclid(self.partition_ms);
        if let Some(ks) = self.catalog().partitions.get(&bucket) {
            return Ok((bucket, ks.clone()));
        }
        let ks = self
            .db
            .keyspace(&format!("{PARTITION_PREFIX}{bucket}"), partition_options)
            .map_err(fj)?;
        self.catalog
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .partitions
            .insert(bucket, ks.clone());
        Ok((bucket, ks))
    }

    /// The partitions overlapping `[start, end)`, oldest first.
    fn partitions_in(&self, start: Timestamp, end: Timestamp) -> Vec<(i64, Keyspace)> {
        if start >= end {
            return Vec::new();
        }
        let (first, last) = bucket_span(start, end, self.partition_ms);
        self.catalog()
            .partitions
            .range(first..=last)
            .map(|(b, ks)| (*b, ks.clone()))
            .collect()
    }

    /// `(key, series id)` of a device, keys ascending: all, or those in `keys`.
    fn device_series(&self, device: DeviceId, keys: Option<&[String]>) -> Vec<(String, u64)> {
        let catalog = self.catalog();
        let Some(all) = catalog.series.get(&device) else {
            return Vec::new();
        };
        match keys {
            None => all.iter().map(|(k, id)| (k.to_string(), *id)).collect(),
            Some(keys) => {
                let mut out: Vec<(String, u64)> = keys
                    .iter()
                    .filter_map(|k| all.get(k.as_str()).map(|id| (k.clone(), *id)))
                    .collect();
                out.sort_unstable();
                out.dedup();
                out
            }
        }
    }

    /// Stores one write: a head record (one journal entry for the whole batch) and the
    /// points in the in-memory head. Returns whether a background flush should start.
    fn write(
        &self,
        points: Vec<TelemetryPoint>,
        persist: PersistMode,
        retention_ms: Option<i64>,
    ) -> FjallResult<bool> {
        // Retention drops whole partitions that ended before `now - retention_ms`;
        // points that would land in one are dropped here rather than stored and
        // dropped on the next pass.
        let cutoff = retention_ms.map(|keep| tp_core::now_ms().saturating_sub(keep));
        let kept_from = cutoff.map_or(Timestamp::MIN, |c| {
            bucket_bounds(c.div_euclid(self.partition_ms), self.partition_ms).0
        });
        let points: Vec<TelemetryPoint> = if kept_from == Timestamp::MIN {
            points
        } else {
            points.into_iter().filter(|p| p.ts >= kept_from).collect()
        };
        if points.is_empty() {
            return Ok(false);
        }
        let mut w = self.writer();
        let state = &mut *w;

        // Series ids; new series get the next ids and are stored with the record.
        let mut ids = Vec::with_capacity(points.len());
        let mut created: Vec<(DeviceId, String, u64)> = Vec::new();
        {
            let catalog = self.catalog();
            let mut fresh: HashMap<(DeviceId, &str), u64> = HashMap::new();
            for p in &points {
                let known = catalog
                    .series
                    .get(&p.device_id)
                    .and_then(|keys| keys.get(p.key.as_str()));
                let id = match known {
                    Some(id) => *id,
                    None => *fresh
                        .entry((p.device_id, p.key.as_str()))
                        .or_insert_with(|| {
                            let id = state.next_series;
                            state.next_series += 1;
                            created.push((p.device_id, p.key.clone(), id));
                            id
                        }),
                };
                ids.push(id);
            }
        }

        let mut record = Vec::with_capacity(points.len() * 20);
        for (p, id) in points.iter().zip(&ids) {
            codec::put_head_point(*id, p.ts, &p.value, &mut record);
        }
        let number = state.next_record;
        let mut batch = self.db.batch().durability(Some(persist));
        batch.insert(&self.head_records, number.to_be_bytes(), record);
        for (device, key, id) in &created {
            batch.insert(
                &self.series,
                codec::series_name(*device, key),
                id.to_be_bytes(),
            );
        }
        batch.commit().map_err(fj)?;

        // Only now: a failed commit must not leave state that claims otherwise.
        state.next_record += 1;
        if !created.is_empty() {
            let mut catalog = self.catalog.write().unwrap_or_else(PoisonError::into_inner);
            for (device, key, id) in created {
                catalog
                    .series
                    .entry(device)
                    .or_default()
                    .insert(key.into(), id);
            }
        }
        let (held, flushing) = {
            let mut head = self.head.write().unwrap_or_else(PoisonError::into_inner);
            for (p, id) in points.into_iter().zip(ids) {
                head.active.push(id, p.ts, p.value);
            }
            head.active.records.push(number);
            (head.active.points, head.flushing.is_some())
        };
        if let Some(cutoff) = cutoff {
            // A flush may be writing into a partition retention would drop: then the
            // drop waits for the next write.
            if let Ok(_flush) = self.flusher.try_lock() {
                self.drop_before_locked(cutoff)?;
            }
        }
        drop(w);
        if held >= self.flush_points.saturating_mul(HEAD_HARD_LIMIT) {
            // The background flush is behind: this write waits for it.
            let mut flush = self.flusher();
            while self.head().active.points >= self.flush_points {
                self.flush_once(&mut flush)?;
            }
            return Ok(false);
        }
        Ok(held >= self.flush_points && !flushing)
    }

    /// Writes one layer of the head into chunks: the one a failed flush left, or else
    /// the active one. Returns false when the head was empty.
    fn flush_once(&self, flush: &mut FlushState) -> FjallResult<bool> {
        let layer = {
            let mut head = self.head.write().unwrap_or_else(PoisonError::into_inner);
            match &head.flushing {
                Some(layer) => layer.clone(),
                None if head.active.points == 0 => return Ok(false),
                None => {
                    let layer = Arc::new(std::mem::take(&mut head.active));
                    head.flushing = Some(layer.clone());
                    layer
                }
            }
        };
        let Some(&generation) = layer.records.last() else {
            return Ok(false);
        };
        // The head records are durable already; the flush batch replaces them
        // atomically, so it needs no fsync of its own.
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        let mut latest_updates = Vec::new();
        let mut current: Option<(i64, Keyspace)> = None;
        let mut chunk = Vec::new();
        let mut order: Vec<usize> = Vec::new();
        for (&id, SeriesHead { points, .. }) in &layer.series {
            // Timestamp order, stable: of equal ones the last written comes last and wins.
            order.clear();
            order.extend(0..points.len());
            order.sort_by_key(|&i| points[i].0);
            order.dedup_by(|later, earlier| {
                let same = points[*later].0 == points[*earlier].0;
                if same {
                    *earlier = *later;
                }
                same
            });
            let mut rest = order.as_slice();
            while let Some(&first) = rest.first() {
                let first_ts = points[first].0;
                let bucket = first_ts.div_euclid(self.partition_ms);
                let len = rest
                    .iter()
                    .take(CHUNK_MAX_POINTS)
                    .take_while(|&&i| {
                        let ts = points[i].0;
                        ts.div_euclid(self.partition_ms) == bucket
                            && i128::from(ts) - i128::from(first_ts) < i128::from(CHUNK_SPAN_MS)
                    })
                    .count();
                let (these, later) = rest.split_at(len);
                rest = later;
                chunk.clear();
                codec::encode_chunk(
                    first_ts,
                    these.iter().map(|&i| (points[i].0, &points[i].1)),
                    &mut chunk,
                );
                let ks = match &current {
                    Some((b, ks)) if *b == bucket => ks,
                    _ => &current.insert(self.partition(first_ts)?).1,
                };
                batch.insert(
                    ks,
                    codec::chunk_key(id, first_ts, generation),
                    chunk.as_slice(),
                );
            }
            if let Some(&newest) = order.last() {
                let (ts, value) = &points[newest];
                if flush.stored_latest.get(&id).is_none_or(|&t| *ts >= t) {
                    batch.insert(
                        &self.latest,
                        id.to_be_bytes(),
                        codec::encode_latest(*ts, value),
                    );
                    latest_updates.push((id, *ts));
                }
            }
        }
        for number in &layer.records {
            batch.remove(&self.head_records, number.to_be_bytes());
        }
        batch.insert(&self.meta, META_FLUSHED_RECORD, generation.to_be_bytes());
        batch.commit().map_err(fj)?;
        flush.stored_latest.extend(latest_updates);
        // After the commit: a reader that copied the head before this line has these
        // points from the head, one after it finds them in the chunks.
        self.head
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .flushing = None;
        Ok(true)
    }

    /// Flushes the whole head. Callers hold the flusher and writer locks, so nothing
    /// is added meanwhile.
    fn flush_all(&self, flush: &mut FlushState) -> FjallResult<()> {
        while self.flush_once(flush)? {}
        Ok(())
    }

    /// The background flush a write asked for; skipped when one is running already.
    fn flush_in_background(&self) {
        let mut flush = match self.flusher.try_lock() {
            Ok(flush) => flush,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        loop {
            match self.flush_once(&mut flush) {
                Ok(true) if self.head().active.points >= self.flush_points => {}
                Ok(_) => return,
                Err(error) => {
                    // The points stay in the head (memory and head records) and the
                    // next flush retries them.
                    tracing::error!(path = %self.path.display(), %error, "flushing the time-series head failed");
                    return;
                }
            }
        }
    }

    fn latest(&self, device: DeviceId, keys: Option<&[String]>) -> FjallResult<Vec<KeyValue>> {
        let series = self.device_series(device, keys);
        // The head first, then the table: a flush finishing in between moves a value
        // from the head into the table, never out of both.
        let head: Vec<Option<(Timestamp, Value)>> = {
            let head = self.head();
            series.iter().map(|(_, id)| head.newest(*id)).collect()
        };
        let mut out = Vec::new();
        for ((key, id), in_head) in series.into_iter().zip(head) {
            let stored = match self.latest.get(id.to_be_bytes()).map_err(fj)? {
                Some(v) => Some(codec::decode_latest(&v)?),
                None => None,
            };
            let newest = match (stored, in_head) {
                (Some(s), Some(h)) => Some(if h.0 >= s.0 { h } else { s }),
                (s, h) => s.or(h),
            };
            if let Some((ts, value)) = newest {
                out.push(KeyValue { key, ts, value });
            }
        }
        Ok(out)
    }

    /// Each chunk of series `id` in partition `ks` (which starts at `bucket_start`)
    /// that may hold points in `[lo, hi)`: `f` gets its key, value, first
    /// timestamp and generation. Chunks ending before `lo` are skipped by their header.
    fn for_each_chunk(
        ks: &Keyspace,
        id: u64,
        (lo, hi): (Timestamp, Timestamp),
        bucket_start: Timestamp,
        mut f: impl FnMut(::fjall::Slice, &[u8], Timestamp, u64) -> FjallResult<()>,
    ) -> FjallResult<()> {
        let from = lo.saturating_sub(CHUNK_SPAN_MS - 1).max(bucket_start);
        for row in ks.range(codec::chunk_key(id, from, 0)..codec::chunk_key(id, hi, 0)) {
            let (key, value) = row.into_inner().map_err(fj)?;
            let (first_ts, generation) = codec::chunk_key_parts(&key)?;
            if codec::chunk_last_ts(first_ts, &value)? >= lo {
                f(key, &value, first_ts, generation)?;
            }
        }
        Ok(())
    }

    /// The points of series `id` in `[lo, hi)` (within partition `ks`, which starts at
    /// `bucket_start`), from chunks and rows of the older per-point layout.
    fn read_partition(
        &self,
        ks: &Keyspace,
        id: u64,
        (lo, hi): (Timestamp, Timestamp),
        bucket_start: Timestamp,
        out: &mut Vec<Candidate>,
    ) -> FjallResult<()> {
        Self::for_each_chunk(
            ks,
            id,
            (lo, hi),
            bucket_start,
            |_, value, first_ts, generation| {
                codec::decode_chunk(first_ts, value, |ts, v| {
                    if (lo..hi).contains(&ts) {
                        out.push((ts, generation, v));
                    }
                })
            },
        )?;
        for row in ks.range(codec::point_key(id, lo)..codec::point_key(id, hi)) {
            let (key, value) = row.into_inner().map_err(fj)?;
            out.push((
                codec::point_key_ts(&key)?,
                OLD_ROW,
                codec::decode_value(&value)?,
            ));
        }
        Ok(())
    }

    /// Each point of series `id` in `[start, end)` in `order`, until `f` returns false.
    /// Works partition by partition: what one partition holds of the series in the
    /// range is collected, merged (the winning copy of each timestamp) and handed out.
    fn scan(
        &self,
        id: u64,
        start: Timestamp,
        end: Timestamp,
        order: Order,
        mut f: impl FnMut(Timestamp, &Value) -> FjallResult<bool>,
    ) -> FjallResult<()> {
        if start >= end {
            return Ok(());
        }
        // The head before the partitions (see `latest`).
        let mut head = Vec::new();
        {
            let h = self.head();
            if let Some(layer) = &h.flushing {
                layer.points_in(id, start, end, FLUSHING, &mut head);
            }
            h.active.points_in(id, start, end, ACTIVE, &mut head);
        }
        head.sort_by_key(|c| c.0);
        let mut buckets: BTreeMap<i64, Option<Keyspace>> = self
            .partitions_in(start, end)
            .into_iter()
            .map(|(b, ks)| (b, Some(ks)))
            .collect();
        for c in &head {
            buckets
                .entry(c.0.div_euclid(self.partition_ms))
                .or_insert(None);
        }
        let mut buckets: Vec<(i64, Option<Keyspace>)> = buckets.into_iter().collect();
        if order == Order::Desc {
            buckets.reverse();
        }
        let mut items = Vec::new();
        for (bucket, ks) in buckets {
            let (bucket_start, bucket_end) = bucket_bounds(bucket, self.partition_ms);
            let (lo, hi) = (start.max(bucket_start), end.min(bucket_end));
            items.clear();
            if let Some(ks) = &ks {
                self.read_partition(ks, id, (lo, hi), bucket_start, &mut items)?;
            }
            let from = head.partition_point(|c| c.0 < lo);
            let to = head.partition_point(|c| c.0 < hi);
            items.extend(head[from..to].iter().cloned());
            settle(&mut items);
            let points: Box<dyn Iterator<Item = &Candidate>> = match order {
                Order::Asc => Box::new(items.iter()),
                Order::Desc => Box::new(items.iter().rev()),
            };
            for (ts, _, value) in points {
                if !f(*ts, value)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn query(&self, q: &TsQuery) -> FjallResult<Vec<KeyValue>> {
        let keys = (!q.keys.is_empty()).then_some(q.keys.as_slice());
        let limit = q.limit.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        if q.start >= q.end || limit == 0 {
            return Ok(out);
        }
        for (key, id) in self.device_series(q.device_id, keys) {
            let mut rows = 0u64;
            match q.aggregation {
                None => self.scan(id, q.start, q.end, q.order, |ts, value| {
                    out.push(KeyValue {
                        key: key.clone(),
                        ts,
                        value: value.clone(),
                    });
                    rows += 1;
                    Ok(rows < limit)
                })?,
                Some((agg, interval)) => {
                    let mut acc = Bucket::default();
                    let mut emit = |acc: &Bucket, out: &mut Vec<KeyValue>| {
                        if let Some(value) = acc.result(agg) {
                            out.push(KeyValue {
                                key: key.clone(),
                                ts: acc.start,
                                value,
                            });
                            rows += 1;
                        }
                        rows < limit
                    };
                    let mut more = true;
                    self.scan(id, q.start, q.end, q.order, |ts, value| {
                        let bucket = bucket_start(q.start, interval, ts);
                        if acc.count > 0 && acc.start != bucket {
                            more = emit(&acc, &mut out);
                            if !more {
                                return Ok(false);
                            }
                            acc = Bucket::default();
                        }
                        acc.start = bucket;
                        acc.add(codec::numeric(value));
                        Ok(true)
                    })?;
                    if more && acc.count > 0 {
                        emit(&acc, &mut out);
                    }
                }
            }
        }
        Ok(out)
    }

    fn delete_range(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
        start: Timestamp,
        end: Timestamp,
        persist: PersistMode,
    ) -> FjallResult<u64> {
        if start >= end {
            return Ok(0);
        }
        let mut flush = self.flusher();
        let _w = self.writer();
        // Deletes are rare: flushing first leaves every point in a partition.
        self.flush_all(&mut flush)?;
        let partitions = self.partitions_in(start, end);
        let mut batch = self.db.batch().durability(Some(persist));
        let mut deleted = 0;
        let mut latest_changes = Vec::new();
        let mut kept: Vec<(Timestamp, Value)> = Vec::new();
        let mut chunk = Vec::new();
        for (_, id) in self.device_series(device, keys) {
            // Timestamps removed; a timestamp in several chunks is one point.
            let mut gone = BTreeSet::new();
            for (bucket, ks) in &partitions {
                let (bucket_start, bucket_end) = bucket_bounds(*bucket, self.partition_ms);
                let (lo, hi) = (start.max(bucket_start), end.min(bucket_end));
                Self::for_each_chunk(ks, id, (lo, hi), bucket_start, |key, value, first_ts, _| {
                    kept.clear();
                    let mut hit = false;
                    codec::decode_chunk(first_ts, value, |ts, v| {
                        if (lo..hi).contains(&ts) {
                            gone.insert(ts);
                            hit = true;
                        } else {
                            kept.push((ts, v));
                        }
                    })?;
                    if !hit {
                        return Ok(());
                    }
                    if kept.is_empty() {
                        batch.remove(ks, key);
                    } else {
                        // Same key: the rest keeps its generation (its precedence).
                        chunk.clear();
                        codec::encode_chunk(
                            first_ts,
                            kept.iter().map(|(t, v)| (*t, v)),
                            &mut chunk,
                        );
                        batch.insert(ks, key, chunk.as_slice());
                    }
                    Ok(())
                })?;
                for row in ks.range(codec::point_key(id, lo)..codec::point_key(id, hi)) {
                    let key = row.key().map_err(fj)?;
                    gone.insert(codec::point_key_ts(&key)?);
                    batch.remove(ks, key);
                }
            }
            deleted += gone.len() as u64;
            // Nothing newer than the latest point exists, so when it is deleted the
            // new latest is the newest point before `start`.
            if flush
                .stored_latest
                .get(&id)
                .is_some_and(|t| (start..end).contains(t))
            {
                match self.newest_before(id, start)? {
                    Some((ts, value)) => {
                        batch.insert(
                            &self.latest,
                            id.to_be_bytes(),
                            codec::encode_latest(ts, &value),
                        );
                        latest_changes.push((id, Some(ts)));
                    }
                    None => {
                        batch.remove(&self.latest, id.to_be_bytes());
                        latest_changes.push((id, None));
                    }
                }
            }
        }
        batch.commit().map_err(fj)?;
        for (id, ts) in latest_changes {
            match ts {
                Some(ts) => flush.stored_latest.insert(id, ts),
                None => flush.stored_latest.remove(&id),
            };
        }
        Ok(deleted)
    }

    /// The newest point of series `id` before `end`.
    fn newest_before(&self, id: u64, end: Timestamp) -> FjallResult<Option<(Timestamp, Value)>> {
        let mut found = None;
        self.scan(id, Timestamp::MIN, end, Order::Desc, |ts, value| {
            found = Some((ts, value.clone()));
            Ok(false)
        })?;
        Ok(found)
    }

    fn write_events(
        &self,
        events: &[DeviceEvent],
        progress: Option<(&str, &[u8])>,
        persist: PersistMode,
    ) -> FjallResult<()> {
        if events.is_empty() && progress.is_none() {
            return Ok(());
        }
        let mut w = self.writer();
        let mut batch = self.db.batch().durability(Some(persist));
        let mut seq = w.next_event;
        let mut current: Option<(i64, Keyspace)> = None;
        for e in events {
            let bucket = e.ts.div_euclid(self.partition_ms);
            let ks = match &current {
                Some((b, ks)) if *b == bucket => ks,
                _ => &current.insert(self.partition(e.ts)?).1,
            };
            batch.insert(
                ks,
                codec::event_key(e.device_id, e.ts, seq),
                codec::encode_event(e),
            );
            seq += 1;
        }
        batch.insert(&self.meta, META_EVENT_SEQ, seq.to_be_bytes());
        if let Some((key, value)) = progress {
            batch.insert(&self.meta, key, value);
        }
        batch.commit().map_err(fj)?;
        w.next_event = seq;
        Ok(())
    }

    fn query_events(
        &self,
        device: DeviceId,
        start: Timestamp,
        end: Timestamp,
        limit: u64,
        order: Order,
    ) -> FjallResult<Vec<DeviceEvent>> {
        let mut out = Vec::new();
        if start >= end || limit == 0 {
            return Ok(out);
        }
        let mut partitions = self.partitions_in(start, end);
        if order == Order::Desc {
            partitions.reverse();
        }
        let range = codec::event_key(device, start, 0)..codec::event_key(device, end, 0);
        for (_, ks) in partitions {
            let rows = ks.range(range.clone());
            let rows: Box<dyn Iterator<Item = ::fjall::Guard>> = match order {
                Order::Asc => Box::new(rows),
                Order::Desc => Box::new(rows.rev()),
            };
            for row in rows {
                let (key, value) = row.into_inner().map_err(fj)?;
                out.push(codec::decode_event(
                    device,
                    codec::event_key_ts(&key)?,
                    &value,
                )?);
                if out.len() as u64 >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Drops every partition that ends at or before `cutoff`. Callers hold the writer lock.
    fn drop_before_locked(&self, cutoff: Timestamp) -> FjallResult<u64> {
        let doomed: Vec<(i64, Keyspace)> = {
            let catalog = self.catalog();
            catalog
                .partitions
                .iter()
                .take_while(|(b, _)| (**b + 1).saturating_mul(self.partition_ms) <= cutoff)
                .map(|(b, ks)| (*b, ks.clone()))
                .collect()
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut catalog = self.catalog.write().unwrap_or_else(PoisonError::into_inner);
        for (bucket, ks) in &doomed {
            catalog.partitions.remove(bucket);
            self.db.delete_keyspace(ks.clone()).map_err(fj)?;
        }
        tracing::info!(
            path = %self.path.display(),
            partitions = doomed.len(),
            before = cutoff,
            "retention: dropped time partitions"
        );
        Ok(doomed.len() as u64)
    }
}

/// `start + k*interval` for the `k` that puts `ts` (≥ `start`) in the bucket.
fn bucket_start(start: Timestamp, interval: i64, ts: Timestamp) -> Timestamp {
    let offset = (i128::from(ts) - i128::from(start)) / i128::from(interval);
    (i128::from(start) + offset * i128::from(interval)) as Timestamp
}

/// One aggregation bucket, folded row by row during the scan.
#[derive(Debug, Default)]
struct Bucket {
    start: Timestamp,
    /// Every sample (what `count` reports).
    count: u64,
    /// Numeric samples.
    numeric: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Bucket {
    fn add(&mut self, v: Option<f64>) {
        self.count += 1;
        if let Some(v) = v {
            if self.numeric == 0 {
                (self.min, self.max) = (v, v);
            } else {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
            }
            self.numeric += 1;
            self.sum += v;
        }
    }

    fn result(&self, agg: Aggregation) -> Option<Value> {
        if agg == Aggregation::Count {
            return (self.count > 0).then_some(Value::Integer(self.count as i64));
        }
        if self.numeric == 0 {
            return None;
        }
        Some(Value::Float(match agg {
            Aggregation::Avg => self.sum / self.numeric as f64,
            Aggregation::Min => self.min,
            Aggregation::Max => self.max,
            Aggregation::Sum => self.sum,
            Aggregation::Count => unreachable!("handled above"),
        }))
    }
}

impl FjallTimeSeriesStore {
    /// Opens (creating if missing, with parent directories) the database directory
    /// `path`.
    ///
    /// # Errors
    /// [`Error::Backend`] when the directory cannot be created, is locked by another
    /// process, or holds unreadable data.
    pub async fn open(path: &Path, options: FjallOptions) -> Result<Self> {
        Self::open_at(path.to_owned(), false, options).await
    }

    /// A store in a fresh directory under the system temporary directory, removed
    /// when the store is dropped (fjall's `temporary` mode): the "memory" mode for
    /// tests and demos. Data goes through the page cache like a file store's.
    ///
    /// # Errors
    /// [`Error::Backend`] when the directory cannot be created.
    pub async fn temporary(options: FjallOptions) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("tp-fjall-{}", uuid::Uuid::new_v4().simple()));
        Self::open_at(dir, true, options).await
    }

    async fn open_at(path: PathBuf, temporary: bool, options: FjallOptions) -> Result<Self> {
        options.validate()?;
        let (partition_ms, flush_points) = (options.partition_ms, options.flush_points);
        let inner = tokio::task::spawn_blocking(move || {
            if temporary {
                Inner::open(&path, true, partition_ms, flush_points).map(Arc::new)
            } else {
                shared(&path, partition_ms, flush_points)
            }
        })
        .await
        .map_err(FjallError::from)??;
        Ok(Self {
            inner,
            persist: if options.fsync {
                PersistMode::SyncData
            } else {
                PersistMode::Buffer
            },
            retention_ms: options.retention_ms,
        })
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The width of a time partition (ms), fixed when the store was created.
    pub fn partition_ms(&self) -> i64 {
        self.inner.partition_ms
    }

    /// Retention: drops every time partition (history and events) that ends at or
    /// before `ts`, whole, without reading it; returns the number dropped. Latest values
    /// stay (they are current state, not history). With `retention_ms` set this runs
    /// after every write with `now - retention_ms`.
    ///
    /// # Errors
    /// [`Error::Backend`] when a keyspace cannot be removed.
    pub async fn drop_partitions_before(&self, ts: Timestamp) -> Result<u64> {
        self.blocking(move |inner| {
            let mut flush = inner.flusher();
            let _w = inner.writer();
            // Points still in the head belong to their partitions too.
            inner.flush_all(&mut flush)?;
            inner.drop_before_locked(ts)
        })
        .await
    }

    /// Bytes on disk, split into the tables (the stored data, compressed) and the
    /// journal (a write-ahead buffer fjall preallocates in 64 MiB files and deletes
    /// once its contents are flushed to tables).
    ///
    /// # Errors
    /// [`Error::Backend`] when the journal cannot be measured.
    pub fn disk_space(&self) -> Result<DiskSpace> {
        let journal = self.inner.db.journal_disk_space().map_err(fj)?;
        let total = self.inner.db.disk_space().map_err(fj)?;
        Ok(DiskSpace {
            tables: total.saturating_sub(journal),
            journal,
        })
    }

    /// Flushes every memtable to a table and compacts each keyspace fully, so
    /// [`Self::disk_space`] reports the compacted, compressed size (used to measure
    /// bytes per point). Blocks writers of this store while it runs.
    ///
    /// # Errors
    /// [`Error::Backend`] on I/O errors.
    pub async fn compact(&self) -> Result<()> {
        self.blocking(|inner| {
            let mut flush = inner.flusher();
            let _w = inner.writer();
            inner.flush_all(&mut flush)?;
            let mut all = vec![
                inner.series.clone(),
                inner.latest.clone(),
                inner.head_records.clone(),
            ];
            all.extend(inner.catalog().partitions.values().cloned());
            for ks in all {
                ks.rotate_memtable_and_wait().map_err(fj)?;
                ks.major_compact().map_err(fj)?;
            }
            inner.db.persist(PersistMode::SyncAll).map_err(fj)
        })
        .await
    }

    /// A value of the `meta` keyspace (import progress and similar).
    #[cfg(feature = "sqlite")] // used by `crate::migrate` only
    pub(crate) async fn meta_get(&self, key: &'static str) -> Result<Option<Vec<u8>>> {
        self.blocking(move |inner| Ok(inner.meta.get(key).map_err(fj)?.map(|v| v.to_vec())))
            .await
    }

    /// Sets a value of the `meta` keyspace, durably.
    #[cfg(feature = "sqlite")] // used by `crate::migrate` only
    pub(crate) async fn meta_set(&self, key: &'static str, value: Vec<u8>) -> Result<()> {
        self.blocking(move |inner| {
            let _w = inner.writer();
            let mut batch = inner.db.batch().durability(Some(PersistMode::Buffer));
            batch.insert(&inner.meta, key, value);
            batch.commit().map_err(fj)
        })
        .await
    }

    /// Stores events and sets a `meta` value in the same atomic batch (resumable
    /// imports: progress is recorded with the data it describes).
    #[cfg(feature = "sqlite")] // used by `crate::migrate` only
    pub(crate) async fn write_events_with_progress(
        &self,
        events: Vec<DeviceEvent>,
        key: &'static str,
        value: Vec<u8>,
    ) -> Result<()> {
        let persist = self.persist;
        self.blocking(move |inner| inner.write_events(&events, Some((key, &value)), persist))
            .await
    }

    /// Persists the journal with `fsync` (imports call this before recording that
    /// they are done).
    #[cfg(feature = "sqlite")] // used by `crate::migrate` only
    pub(crate) async fn sync(&self) -> Result<()> {
        self.blocking(|inner| inner.db.persist(PersistMode::SyncAll).map_err(fj))
            .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> FjallResult<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        Ok(tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(FjallError::from)??)
    }
}

#[async_trait]
impl TimeSeriesStore for FjallTimeSeriesStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn healthcheck(&self) -> Result<()> {
        self.inner.meta.get(META_PARTITION_MS).map_err(fj)?;
        Ok(())
    }

    async fn write(&self, points: &[TelemetryPoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let points = points.to_vec();
        let (persist, retention) = (self.persist, self.retention_ms);
        let flush = self
            .blocking(move |inner| inner.write(points, persist, retention))
            .await?;
        if flush {
            let inner = self.inner.clone();
            // Not awaited: the write is durable in the head already.
            tokio::task::spawn_blocking(move || inner.flush_in_background());
        }
        Ok(())
    }

    async fn latest(&self, device: DeviceId, keys: Option<&[String]>) -> Result<Vec<KeyValue>> {
        // A few point reads: cheap enough for the calling task.
        Ok(self.inner.latest(device, keys)?)
    }

    async fn query(&self, query: &TsQuery) -> Result<Vec<KeyValue>> {
        if let Some((_, interval)) = query.aggregation
            && interval <= 0
        {
            return Err(Error::invalid(
                "interval",
                format!("must be a positive number of milliseconds, got {interval}"),
            ));
        }
        let query = query.clone();
        self.blocking(move |inner| inner.query(&query)).await
    }

    async fn delete_range(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<u64> {
        if keys.is_some_and(|k| k.is_empty()) {
            return Ok(0);
        }
        let keys = keys.map(<[String]>::to_vec);
        let persist = self.persist;
        self.blocking(move |inner| inner.delete_range(device, keys.as_deref(), start, end, persist))
            .await
    }

    async fn write_events(&self, events: &[DeviceEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let events = events.to_vec();
        let persist = self.persist;
        self.blocking(move |inner| inner.write_events(&events, None, persist))
            .await
    }

    async fn query_events(
        &self,
        device: DeviceId,
        start: Timestamp,
        end: Timestamp,
        limit: u64,
        order: Order,
    ) -> Result<Vec<DeviceEvent>> {
        self.blocking(move |inner| inner.query_events(device, start, end, limit, order))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn point(d: DeviceId, key: &str, ts: Timestamp, v: f64) -> TelemetryPoint {
        TelemetryPoint {
            device_id: d,
            key: key.into(),
            ts,
            value: Value::Float(v),
        }
    }

    pub(super) fn all(d: DeviceId) -> TsQuery {
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

    #[test]
    fn buckets_start_at_the_query_start() {
        assert_eq!(bucket_start(5, 10, 5), 5);
        assert_eq!(bucket_start(5, 10, 14), 5);
        assert_eq!(bucket_start(5, 10, 15), 15);
        assert_eq!(bucket_start(i64::MIN, i64::MAX, i64::MAX), i64::MAX - 1);
        assert_eq!(bucket_span(0, DAY, DAY), (0, 0));
        assert_eq!(bucket_span(-1, 1, DAY), (-1, 0));
    }

    /// Reopening restores series ids, latest values, partitions and the event
    /// sequence; nothing is duplicated or lost.
    #[tokio::test]
    async fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ts");
        let d = DeviceId::new();
        let e = |ts, n: u32| DeviceEvent {
            device_id: d,
            ts,
            message_id: format!("m{n}"),
            method: "alarm".into(),
            params: serde_json::json!({"n": n}),
        };
        {
            let store = FjallTimeSeriesStore::open(&path, FjallOptions::default())
                .await
                .expect("open");
            store
                .write(&[point(d, "a", 10, 1.0), point(d, "b", DAY + 10, 2.0)])
                .await
                .expect("write");
            store.write_events(&[e(10, 1)]).await.expect("events");
        }
        let store = FjallTimeSeriesStore::open(&path, FjallOptions::default())
            .await
            .expect("reopen");
        store
            .write(&[point(d, "a", 20, 3.0), point(d, "c", 5, 4.0)])
            .await
            .expect("write");
        store.write_events(&[e(10, 2)]).await.expect("events");
        let latest: Vec<(String, i64)> = store
            .latest(d, None)
            .await
            .expect("latest")
            .into_iter()
            .map(|kv| (kv.key, kv.ts))
            .collect();
        assert_eq!(
            latest,
            vec![("a".into(), 20), ("b".into(), DAY + 10), ("c".into(), 5)]
        );
        assert_eq!(store.query(&all(d)).await.expect("query").len(), 4);
        let events = store
            .query_events(d, 0, 100, 10, Order::Asc)
            .await
            .expect("events");
        assert_eq!(
            events
                .iter()
                .map(|e| e.message_id.as_str())
                .collect::<Vec<_>>(),
            ["m1", "m2"]
        );
    }

    /// Two stores on one directory in one process share the open database (fjall
    /// locks its directory); after both are dropped it opens again.
    #[tokio::test]
    async fn stores_on_one_directory_share_the_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ts");
        let d = DeviceId::new();
        let a = FjallTimeSeriesStore::open(&path, FjallOptions::default())
            .await
            .expect("a");
        let b = FjallTimeSeriesStore::open(&path, FjallOptions::default())
            .await
            .expect("b");
        a.write(&[point(d, "x", 1, 1.0)]).await.expect("a writes");
        b.write(&[point(d, "y", 2, 2.0)]).await.expect("b writes");
        for s in [&a, &b] {
            assert_eq!(s.latest(d, None).await.expect("latest").len(), 2);
        }
        drop((a, b));
        let c = FjallTimeSeriesStore::open(&path, FjallOptions::default())
            .await
            .expect("reopen");
        assert_eq!(c.query(&all(d)).await.expect("query").len(), 2);
    }

    /// Retention drops whole partitions (history and events), keeps latest values,
    /// and a partition that straddles the cut stays.
    #[tokio::test]
    async fn retention_drops_whole_partitions() {
        let store = FjallTimeSeriesStore::temporary(FjallOptions::default())
            .await
            .expect("open");
        assert_eq!(store.partition_ms(), DAY);
        let d = DeviceId::new();
        let day0 = 19_675 * DAY;
        let points: Vec<TelemetryPoint> = (0..3)
            .flat_map(|day| {
                [
                    point(d, "t", day0 + day * DAY, day as f64),
                    point(d, "t", day0 + day * DAY + 5, day as f64),
                ]
            })
            .collect();
        store.write(&points).await.expect("write");
        store
            .write_events(&[DeviceEvent {
                device_id: d,
                ts: day0 + 1,
                message_id: "m".into(),
                method: "x".into(),
                params: serde_json::json!(null),
            }])
            .await
            .expect("events");
        assert_eq!(
            store
                .drop_partitions_before(day0 + DAY + 1)
                .await
                .expect("drop"),
            1
        );
        let ts: Vec<i64> = store
            .query(&all(d))
            .await
            .expect("query")
            .iter()
            .map(|r| r.ts)
            .collect();
        assert_eq!(
            ts,
            vec![
                day0 + DAY,
                day0 + DAY + 5,
                day0 + 2 * DAY,
                day0 + 2 * DAY + 5
            ]
        );
        assert!(
            store
                .query_events(d, 0, i64::MAX, 10, Order::Asc)
                .await
                .expect("events")
                .is_empty()
        );
        assert_eq!(
            store.drop_partitions_before(day0 + DAY + 1).await.unwrap(),
            0
        );
        // Writing into the dropped day again recreates its partition.
        store
            .write(&[point(d, "t", day0 + 1, 7.0)])
            .await
            .expect("write");
        assert_eq!(store.query(&all(d)).await.expect("query").len(), 5);
        // Latest survives retention.
        assert_eq!(
            store.drop_partitions_before(day0 + 3 * DAY).await.unwrap(),
            3
        );
        assert!(store.query(&all(d)).await.expect("query").is_empty());
        let latest = store.latest(d, None).await.expect("latest");
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].ts, day0 + 2 * DAY + 5);
    }

    /// `retention_ms` applies on write: partitions older than now - retention go.
    #[tokio::test]
    async fn retention_option_applies_on_write() {
        let store = FjallTimeSeriesStore::temporary(FjallOptions {
            retention_ms: Some(7 * DAY),
            ..FjallOptions::default()
        })
        .await
        .expect("open");
        let d = DeviceId::new();
        let now = tp_core::now_ms();
        store
            .write(&[point(d, "t", now - 30 * DAY, 1.0), point(d, "t", now, 2.0)])
            .await
            .expect("write");
        let rows = store.query(&all(d)).await.expect("query");
        assert_eq!(rows.iter().map(|r| r.ts).collect::<Vec<_>>(), vec![now]);
    }

    /// Aggregates fold inside the scan across partitions: a bucket spanning a
    /// partition boundary is one bucket.
    #[tokio::test]
    async fn aggregation_spans_partitions() {
        let store = FjallTimeSeriesStore::temporary(FjallOptions {
            partition_ms: 100,
            ..FjallOptions::default()
        })
        .await
        .expect("open");
        let d = DeviceId::new();
        let points: Vec<TelemetryPoint> = (0..1000).map(|i| point(d, "t", i, i as f64)).collect();
        store.write(&points).await.expect("write");
        let q = TsQuery {
            aggregation: Some((Aggregation::Sum, 250)),
            start: 0,
            end: 1000,
            ..all(d)
        };
        let sums: Vec<(i64, Value)> = store
            .query(&q)
            .await
            .expect("query")
            .into_iter()
            .map(|kv| (kv.ts, kv.value))
            .collect();
        let want = |a: i64| Value::Float(((a..a + 250).sum::<i64>()) as f64);
        assert_eq!(
            sums,
            vec![
                (0, want(0)),
                (250, want(250)),
                (500, want(500)),
                (750, want(750))
            ]
        );
        let q = TsQuery {
            order: Order::Desc,
            limit: Some(3),
            start: 5,
            end: 995,
            ..all(d)
        };
        let ts: Vec<i64> = store
            .query(&q)
            .await
            .unwrap()
            .iter()
            .map(|r| r.ts)
            .collect();
        assert_eq!(ts, vec![994, 993, 992]);
    }
}

/// The store against a model (a sorted map) under random writes, rewrites, deletes,
/// flushes and reopens: history, ranges, order and latest values always match.
#[cfg(test)]
mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// (key, timestamp index, value)
        Write(Vec<(u8, i64, i32)>),
        Delete {
            key: Option<u8>,
            from: i64,
            len: i64,
        },
        Flush,
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => proptest::collection::vec((0u8..3, 0i64..40, any::<i32>()), 1..12).prop_map(Op::Write),
            2 => (proptest::option::of(0u8..3), 0i64..40, 0i64..15)
                .prop_map(|(key, from, len)| Op::Delete { key, from, len }),
            1 => Just(Op::Flush),
            1 => Just(Op::Reopen),
        ]
    }

    type Model = BTreeMap<(String, Timestamp), f64>;

    async fn check(store: &FjallTimeSeriesStore, d: DeviceId, model: &Model, step: i64) {
        let rows = store.query(&super::tests::all(d)).await.expect("query");
        let got: Vec<(String, Timestamp, Value)> =
            rows.into_iter().map(|r| (r.key, r.ts, r.value)).collect();
        let want: Vec<(String, Timestamp, Value)> = model
            .iter()
            .map(|((k, t), v)| (k.clone(), *t, Value::Float(*v)))
            .collect();
        assert_eq!(got, want, "history");
        // A middle range, newest first, two per key.
        let (start, end) = (10 * step, 30 * step);
        let rows = store
            .query(&TsQuery {
                start,
                end,
                limit: Some(2),
                order: Order::Desc,
                ..super::tests::all(d)
            })
            .await
            .expect("query");
        let mut want = Vec::new();
        for key in ["k0", "k1", "k2"] {
            want.extend(
                model
                    .range((key.to_owned(), start)..(key.to_owned(), end))
                    .rev()
                    .take(2)
                    .map(|((k, t), _)| (k.clone(), *t)),
            );
        }
        let got: Vec<(String, Timestamp)> = rows.into_iter().map(|r| (r.key, r.ts)).collect();
        assert_eq!(got, want, "range");
        let latest: Vec<(String, Timestamp, Value)> = store
            .latest(d, None)
            .await
            .expect("latest")
            .into_iter()
            .map(|kv| (kv.key, kv.ts, kv.value))
            .collect();
        let mut want = Vec::new();
        for key in ["k0", "k1", "k2"] {
            if let Some(((k, t), v)) = model
                .range((key.to_owned(), i64::MIN)..=(key.to_owned(), i64::MAX))
                .next_back()
            {
                want.push((k.clone(), *t, Value::Float(*v)));
            }
        }
        assert_eq!(latest, want, "latest");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn the_store_matches_a_model(
            ops in proptest::collection::vec(op(), 1..25),
            flush_points in 1usize..20,
            small_partitions in any::<bool>(),
            step in prop_oneof![Just(1i64), Just(250_000i64), Just(1_000_000i64)],
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("ts");
                let options = FjallOptions {
                    partition_ms: if small_partitions { 16 * step } else { 86_400_000 },
                    flush_points,
                    ..FjallOptions::default()
                };
                let mut store = FjallTimeSeriesStore::open(&path, options.clone()).await.expect("open");
                let d = DeviceId::new();
                let mut model = Model::new();
                for op in ops {
                    match op {
                        Op::Write(points) => {
                            let batch: Vec<TelemetryPoint> = points
                                .iter()
                                .map(|(k, t, v)| TelemetryPoint {
                                    device_id: d,
                                    key: format!("k{k}"),
                                    ts: t * step,
                                    value: Value::Float(f64::from(*v)),
                                })
                                .collect();
                            store.write(&batch).await.expect("write");
                            for p in batch {
                                let Value::Float(v) = p.value else { unreachable!() };
                                model.insert((p.key, p.ts), v);
                            }
                        }
                        Op::Delete { key, from, len } => {
                            let keys = key.map(|k| vec![format!("k{k}")]);
                            let (start, end) = (from * step, (from + len) * step);
                            let n = store
                                .delete_range(d, keys.as_deref(), start, end)
                                .await
                                .expect("delete");
                            let doomed: Vec<(String, Timestamp)> = model
                                .keys()
                                .filter(|(k, t)| {
                                    (start..end).contains(t)
                                        && keys.as_ref().is_none_or(|ks| ks.contains(k))
                                })
                                .cloned()
                                .collect();
                            assert_eq!(n, doomed.len() as u64, "deleted count");
                            for k in doomed {
                                model.remove(&k);
                            }
                        }
                        Op::Flush => store.compact().await.expect("flush"),
                        Op::Reopen => {
                            drop(store);
                            store = FjallTimeSeriesStore::open(&path, options.clone()).await.expect("reopen");
                        }
                    }
                    check(&store, d, &model, step).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod speed_probe {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "diagnostic"]
    async fn probe() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallTimeSeriesStore::open(&dir.path().join("ts"), FjallOptions::default())
            .await
            .unwrap();
        let devices: Vec<DeviceId> = (0..1000).map(|_| DeviceId::new()).collect();
        let mk = |step: i64| -> Vec<TelemetryPoint> {
            (0..10_000usize)
                .map(|s| TelemetryPoint {
                    device_id: devices[s % 1000],
                    key: format!("k{}", s / 1000),
                    ts: 1_700_000_000_000 + step * 1000,
                    value: Value::Float(20.0 + (s % 7) as f64 / 100.0),
                })
                .collect()
        };
        let batches: Vec<_> = (0..100).map(mk).collect();
        let t0 = std::time::Instant::now();
        for b in &batches {
            store.write(b).await.unwrap();
        }
        let e = t0.elapsed();
        eprintln!(
            "store.write: {:?} = {:.0} points/s",
            e,
            1e6 / e.as_secs_f64()
        );
        let inner = &store.inner;
        let t0 = std::time::Instant::now();
        for (n, b) in batches.iter().enumerate() {
            let t = std::time::Instant::now();
            inner.write(b.clone(), PersistMode::Buffer, None).unwrap();
            if n % 20 == 0 {
                eprintln!("  one batch: {:?}", t.elapsed());
            }
        }
        let e = t0.elapsed();
        eprintln!(
            "inner.write (rewrite): {:?} = {:.0} points/s",
            e,
            1e6 / e.as_secs_f64()
        );
        for series in [100u64, 10_000] {
            let ks = inner
                .db
                .keyspace(&format!("raw{series}"), partition_options)
                .unwrap();
            let t0 = std::time::Instant::now();
            for step in 0..100u64 {
                let mut batch = inner.db.batch().durability(Some(PersistMode::Buffer));
                for s in 0..10_000u64 {
                    let ts = (step * 10_000 + s) / series;
                    batch.insert(
                        &ks,
                        codec::point_key(s % series, ts as i64),
                        [2u8; 9].as_slice(),
                    );
                }
                batch.commit().unwrap();
            }
            let e = t0.elapsed();
            eprintln!(
                "raw fjall 1 insert/point, {series} series: {:?} = {:.0} points/s",
                e,
                1e6 / e.as_secs_f64()
            );
        }
    }
}
