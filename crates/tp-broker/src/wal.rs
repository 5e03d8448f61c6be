//! The write-ahead log that makes an acknowledgement mean "survives a crash".
//!
//! A QoS 1 publish is acknowledged (PUBACK; PUBREC for QoS 2) once it is queued for
//! ingest, before the ingest loop and the batching writer have committed it. So the
//! connection driver appends every QoS >= 1 publish to this log *before* it
//! acknowledges it (the `connection` module); the HTTP and CoAP device APIs append
//! telemetry and events before they answer. A node killed with acknowledged but
//! uncommitted messages replays them at its next start ([`crate::EmbeddedBroker::start`]).
//!
//! # Durability
//!
//! Each record is one `write(2)` to a file opened with `O_APPEND`, with no buffering
//! in the process: once the call returns, the bytes are in the OS page cache, which
//! survives the process being killed (SIGKILL, OOM kill, panic). Surviving power loss
//! or a kernel crash also needs the page cache on disk: `wal.fsync = true` calls
//! `fdatasync` after every record, which caps a node at the disk's sync rate
//! (there is no group commit).
//!
//! # Replay is idempotent
//!
//! A record keeps the time the node received the message, and ingest stamps
//! server-timestamped values with it, so replaying a record writes the same
//! (device, key, ts) rows the first pass did; telemetry and attribute stores upsert on
//! that key. Events are plain inserts, so replay skips an event record whose
//! (device, ts, message id, method) is already stored; events inside a gateway
//! envelope are not checked and may be stored twice if the node died just after
//! committing them.
//!
//! # Segments
//!
//! The log is a directory of segment files `{id:020}.wal`. The current segment is
//! replaced every `rotate_interval_ms` (when it holds anything). The log counts the
//! records written to each segment, ingest counts the ones it has handed to the
//! stores, and a closed segment whose records are all handed over is deleted after a
//! writer flush (a barrier: everything queued before it is committed). A record
//! that never reaches ingest (a shutdown between the append and the queue) leaves
//! its segment incomplete: it is given up once a segment opened [`GIVE_UP_AFTER`] after it closed
//! is complete. If the writer dropped a batch (the store kept failing), the segments
//! are kept for the next start to replay.
//!
//! # Record format
//!
//! `[u32 LE body length][u32 LE CRC-32 of body][body]`, body =
//! `[u8 version = 1][16-byte device id][i64 LE receive time ms][u16 LE topic length][topic][payload]`.
//! Reading stops at the first record that is cut short or fails its CRC (a write torn
//! by power loss or a full disk).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tp_core::DeviceId;
use tp_core::ingest::IngestSinkRef;

/// Settings of the write-ahead log (`[mqtt.wal]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// Log acknowledged device messages before acknowledging them, so a killed node
    /// loses nothing it acknowledged. Takes effect only with a `dir`; the all-in-one
    /// node sets `{data_dir}/wal`. Turn off when the stores are purely in memory
    /// (nothing survives a restart anyway).
    pub enabled: bool,
    /// Directory of the segment files (created if missing). Unset = no log. One node
    /// per directory: a second node on the same directory refuses to start.
    pub dir: Option<PathBuf>,
    /// Start a new segment this often (milliseconds), so committed messages are
    /// deleted from disk: the log holds about this much traffic plus what the store
    /// has not committed yet.
    pub rotate_interval_ms: u64,
    /// `fdatasync` every record, so acknowledged messages also survive power loss
    /// and kernel crashes. Off by default: without it the log survives the process
    /// being killed, and syncing every message limits a node to the disk's sync rate.
    pub fsync: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            rotate_interval_ms: 1000,
            fsync: false,
        }
    }
}

/// What can go wrong with the write-ahead log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// A file of the log cannot be created, written, read or removed.
    #[error("write-ahead log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another node holds the directory.
    #[error("write-ahead log directory {0} is in use by another node (set mqtt.wal.dir)")]
    Locked(PathBuf),
    /// A write stored only part of a record (disk full?).
    #[error("write-ahead log {path}: short write ({written} of {len} bytes)")]
    ShortWrite {
        /// The segment.
        path: PathBuf,
        /// Bytes written.
        written: usize,
        /// Bytes of the record.
        len: usize,
    },
    /// The log was closed by a drain.
    #[error("the write-ahead log is closed (the node is shutting down)")]
    Closed,
}

/// An incomplete segment is given up once a segment opened this long after it
/// closed is complete: by then every record of it that was queued has been
/// consumed, so the missing ones were never forwarded (and never acknowledged).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

const VERSION: u8 = 1;
/// Length and CRC.
const FRAME: usize = 8;
/// Version, device id, timestamp, topic length.
const BODY_HEADER: usize = 1 + 16 + 8 + 2;
/// Longer bodies are corruption: payloads are limited far below this.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One logged device message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The device that sent it.
    pub device_id: DeviceId,
    /// When the node received it (ms since the epoch).
    pub ts: i64,
    /// The uplink topic it was published on.
    pub topic: String,
    /// The payload as sent.
    pub payload: Bytes,
}

/// Encodes one record with its frame.
pub fn encode_record(device_id: DeviceId, ts: i64, topic: &str, payload: &[u8]) -> Vec<u8> {
    let topic = &topic.as_bytes()[..topic.len().min(u16::MAX as usize)];
    let body_len = BODY_HEADER + topic.len() + payload.len();
    let mut b = Vec::with_capacity(FRAME + body_len);
    b.extend_from_slice(&(body_len as u32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.push(VERSION);
    b.extend_from_slice(device_id.0.as_bytes());
    b.extend_from_slice(&ts.to_le_bytes());
    b.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    b.extend_from_slice(topic);
    b.extend_from_slice(payload);
    let crc = crc32fast::hash(&b[FRAME..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The records of a segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The valid records, in order.
    pub records: Vec<Record>,
    /// Bytes after the last valid record (a torn or corrupt tail); 0 when clean.
    pub bad_tail_bytes: usize,
}

/// Decodes records until the end or the first torn or corrupt one. Never panics.
pub fn decode_records(buf: &Bytes) -> Decoded {
    let mut records = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match decode_one(buf, at) {
            Some((record, next)) => {
                records.push(record);
                at = next;
            }
            None => break,
        }
    }
    Decoded {
        records,
        bad_tail_bytes: buf.len() - at,
    }
}

fn decode_one(buf: &Bytes, at: usize) -> Option<(Record, usize)> {
    let frame = buf.get(at..at.checked_add(FRAME)?)?;
    let len = u32::from_le_bytes(frame[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(frame[4..8].try_into().ok()?);
    if !(BODY_HEADER..=MAX_BODY).contains(&len) {
        return None;
    }
    let start = at + FRAME;
    let end = start.checked_add(len)?;
    let body = buf.get(start..end)?;
    if crc32fast::hash(body) != crc || body[0] != VERSION {
        return None;
    }
    let device_id = DeviceId(uuid::Uuid::from_slice(&body[1..17]).ok()?);
    let ts = i64::from_le_bytes(body[17..25].try_into().ok()?);
    let topic_len = u16::from_le_bytes(body[25..27].try_into().ok()?) as usize;
    let topic = body.get(BODY_HEADER..BODY_HEADER.checked_add(topic_len)?)?;
    let topic = std::str::from_utf8(topic).ok()?.to_owned();
    let payload = buf.slice(start + BODY_HEADER + topic_len..end);
    Some((
        Record {
            device_id,
            ts,
            topic,
            payload,
        },
        end,
    ))
}

/// Records written to and consumed from one segment.
#[derive(Debug, Default)]
struct Counts {
    written: AtomicU64,
    consumed: AtomicU64,
}

#[derive(Debug)]
struct Segment {
    counts: Arc<Counts>,
    opened_at: Instant,
    closed_at: Option<Instant>,
    /// Keep the file for the next start (the writer dropped a batch).
    retain: bool,
}

#[derive(Debug)]
struct Current {
    id: u64,
    file: File,
    counts: Arc<Counts>,
}

/// A segment left by a previous run, to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leftover {
    pub(crate) id: u64,
    pub(crate) path: PathBuf,
}

/// An opened log and the segments a previous run left for replay.
pub(crate) type Opened = (Arc<Wal>, Vec<Leftover>);

/// The open log of a running broker.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    fsync: bool,
    rotate_interval: Duration,
    /// The segment appends go to; `None` once closed. Appends hold this lock for
    /// their one write, so a segment's written count is final once it is replaced.
    current: Mutex<Option<Current>>,
    segments: Mutex<BTreeMap<u64, Segment>>,
    next_id: AtomicU64,
    /// Open complete segments up to the newest that was found complete.
    newest_complete_opened: Mutex<Option<Instant>>,
    /// Writer batches dropped as of the last check (see [`tp_core::ingest::IngestSink::dropped_batches`]).
    seen_drops: AtomicU64,
    closed: AtomicBool,
    /// Held (locked) while the log is open; released on close.
    lock: Mutex<Option<File>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn segment_id(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".wal")?.parse().ok()
}

impl Wal {
    /// Opens the log configured by `cfg` (`None` when it is off): locks the
    /// directory, lists the segments a previous run left and opens a new current
    /// segment after them.
    pub(crate) fn open(
        cfg: &WalConfig,
        writer: &IngestSinkRef,
    ) -> Result<Option<Opened>, WalError> {
        let Some(dir) = cfg.dir.as_ref().filter(|_| cfg.enabled) else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(WalError::Locked(dir.clone())),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let mut leftovers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if let Some(id) = segment_id(&path) {
                leftovers.push(Leftover { id, path });
            }
        }
        leftovers.sort_by_key(|l| l.id);
        let wal = Arc::new(Self {
            dir: dir.clone(),
            fsync: cfg.fsync,
            rotate_interval: Duration::from_millis(cfg.rotate_interval_ms.max(1)),
            current: Mutex::new(None),
            segments: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(leftovers.last().map_or(1, |l| l.id + 1)),
            newest_complete_opened: Mutex::new(None),
            seen_drops: AtomicU64::new(writer.dropped_batches()),
            closed: AtomicBool::new(false),
            lock: Mutex::new(Some(lock)),
        });
        let first = wal.new_segment()?;
        *wal.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(first);
        Ok(Some((wal, leftovers)))
    }

    /// Creates the next segment file and starts counting it.
    fn new_segment(&self) -> Result<Current, WalError> {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let counts = Arc::new(Counts::default());
        self.segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Segment {
                    counts: counts.clone(),
                    opened_at: Instant::now(),
                    closed_at: None,
                    retain: false,
                },
            );
        Ok(Current { id, file, counts })
    }

    /// Marks segment `id` closed (its written count is final).
    fn closed_segment(&self, id: u64) {
        if let Some(s) = self
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            s.closed_at = Some(Instant::now());
        }
    }

    /// Appends one record in a single `write` and returns its segment id. On failure
    /// the message must not be acknowledged.
    pub(crate) fn append(
        &self,
        device_id: DeviceId,
        ts: i64,
        topic: &str,
        payload: &[u8],
    ) -> Result<u64, WalError> {
        let record = encode_record(device_id, ts, topic, payload);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cur) = current.as_mut() else {
            return Err(WalError::Closed);
        };
        let path = || segment_path(&self.dir, cur.id);
        let result = match (&cur.file).write(&record) {
            Ok(n) if n == record.len() => match self.fsync {
                true => cur.file.sync_data().map_err(io(&path())),
                false => Ok(()),
            },
            Ok(n) => Err(WalError::ShortWrite {
                path: path(),
                written: n,
                len: record.len(),
            }),
            Err(e) => Err(io(&path())(e)),
        };
        match result {
            Ok(()) => {
                cur.counts.written.fetch_add(1, Ordering::AcqRel);
                Ok(cur.id)
            }
            Err(e) => {
                // A partial record would hide every later one of this segment from
                // replay: continue in a fresh segment.
                if let Ok(next) = self.new_segment() {
                    let old = std::mem::replace(cur, next);
                    self.closed_segment(old.id);
                }
                metrics::counter!("tp_wal_append_errors_total").increment(1);
                Err(e)
            }
        }
    }

    /// Ingest has handed a record of segment `id` to the stores (or rejected it).
    pub(crate) fn consumed(&self, id: u64) {
        if id == 0 {
            return;
        }
        if let Some(s) = self
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            s.counts.consumed.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Replaces the current segment if it holds records.
    fn rotate(&self) -> Result<(), WalError> {
        {
            let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            match current.as_ref() {
                Some(cur) if cur.counts.written.load(Ordering::Acquire) > 0 => {}
                _ => return Ok(()),
            }
        }
        // The file is created outside the lock, so appends do not wait for it.
        let next = self.new_segment()?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_mut() {
            Some(cur) => {
                let old = std::mem::replace(cur, next);
                drop(current);
                self.closed_segment(old.id);
            }
            None => {
                // Closed meanwhile: the new segment is empty and unused.
                drop(current);
                self.forget_unused(next.id);
            }
        }
        Ok(())
    }

    fn forget_unused(&self, id: u64) {
        self.segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let _ = std::fs::remove_file(segment_path(&self.dir, id));
    }

    /// Closed segments that can go: complete ones, and incomplete ones given up.
    fn removable(&self) -> Vec<u64> {
        let mut segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        let mut newest = self
            .newest_complete_opened
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Segments kept for replay are no longer tracked; their files stay.
        segments.retain(|_, s| !(s.retain && s.closed_at.is_some()));
        let mut out = Vec::new();
        for (id, s) in segments.iter() {
            if s.closed_at.is_none() || s.retain {
                continue;
            }
            let written = s.counts.written.load(Ordering::Acquire);
            if s.counts.consumed.load(Ordering::Acquire) >= written {
                *newest = Some(newest.map_or(s.opened_at, |n| n.max(s.opened_at)));
                out.push(*id);
            }
        }
        for (id, s) in segments.iter() {
            let Some(closed_at) = s.closed_at else {
                continue;
            };
            if s.retain || out.contains(id) {
                continue;
            }
            if newest.is_some_and(|n| n >= closed_at + GIVE_UP_AFTER) {
                let missing = s
                    .counts
                    .written
                    .load(Ordering::Acquire)
                    .saturating_sub(s.counts.consumed.load(Ordering::Acquire));
                metrics::counter!("tp_wal_records_never_forwarded_total").increment(missing);
                tracing::warn!(
                    segment = id,
                    missing,
                    "write-ahead log: records that never reached ingest (not acknowledged)"
                );
                out.push(*id);
            }
        }
        out
    }

    /// Keeps every tracked segment's file for the next start to replay.
    fn retain_all(&self) {
        for s in self
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values_mut()
        {
            s.retain = true;
        }
    }

    /// Deletes the removable segments once the writer has committed what was queued
    /// before (a flush); keeps everything if the writer dropped a batch.
    async fn collect(&self, writer: &IngestSinkRef) {
        let removable = self.removable();
        if removable.is_empty() {
            return;
        }
        let flushed = writer.flush().await;
        let drops = writer.dropped_batches();
        if flushed.is_err() || drops != self.seen_drops.swap(drops, Ordering::AcqRel) {
            // Some batch never reached the store; which segments it came from is
            // unknown, so every segment is kept and replayed at the next start.
            tracing::error!(error = ?flushed.err(), "the batch writer dropped data; keeping the write-ahead log for replay at the next start");
            self.retain_all();
            return;
        }
        let mut segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        for id in removable {
            segments.remove(&id);
            let path = segment_path(&self.dir, id);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete a write-ahead log segment");
            }
        }
        metrics::gauge!("tp_wal_segments").set(segments.len() as f64);
    }

    /// Rotates and collects every `rotate_interval` until the log is closed.
    pub(crate) async fn maintain(self: Arc<Self>, writer: IngestSinkRef) {
        loop {
            tokio::time::sleep(self.rotate_interval).await;
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            if let Err(e) = self.rotate() {
                tracing::error!(error = %e, "cannot start a new write-ahead log segment");
            }
            self.collect(&writer).await;
        }
    }

    /// Closes the log at the end of a drain: no more appends; complete segments are
    /// deleted (after a writer flush), incomplete ones stay for the next start; the
    /// directory is unlocked.
    pub(crate) async fn close(&self, writer: &IngestSinkRef) {
        self.closed.store(true, Ordering::Release);
        let last = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(last) = last {
            self.closed_segment(last.id);
        }
        self.collect(writer).await;
        let kept = self
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        if kept > 0 {
            tracing::warn!(
                segments = kept,
                "write-ahead log segments with unprocessed records kept for the next start"
            );
        }
        if let Some(lock) = self.lock.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = lock.unlock();
        }
    }

    /// Deletes replayed segments (after the writer committed their records).
    pub(crate) async fn finish_replay(
        &self,
        writer: &IngestSinkRef,
        leftovers: &[Leftover],
    ) -> Result<(), tp_core::Error> {
        writer.flush().await?;
        let drops = writer.dropped_batches();
        if drops != self.seen_drops.swap(drops, Ordering::AcqRel) {
            return Err(tp_core::Error::backend(
                writer.backend(),
                "the batch writer dropped replayed data",
            ));
        }
        for l in leftovers {
            if let Err(e) = std::fs::remove_file(&l.path) {
                tracing::warn!(path = %l.path.display(), error = %e, "cannot delete a replayed write-ahead log segment");
            }
        }
        Ok(())
    }
}

/// Reads one leftover segment; a missing or unreadable file is logged and yields nothing.
pub(crate) fn read_leftover(leftover: &Leftover) -> Decoded {
    match std::fs::read(&leftover.path) {
        Ok(bytes) => decode_records(&Bytes::from(bytes)),
        Err(e) => {
            tracing::error!(path = %leftover.path.display(), error = %e, "cannot read a write-ahead log segment");
            Decoded {
                records: Vec::new(),
                bad_tail_bytes: 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record(i: u8) -> (DeviceId, i64, String, Vec<u8>) {
        (
            DeviceId(uuid::Uuid::from_bytes([i; 16])),
            1_700_000_000_000 + i64::from(i),
            format!("devices/event/m{i}"),
            vec![i; usize::from(i) * 3],
        )
    }

    fn file(records: &[(DeviceId, i64, String, Vec<u8>)]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|(d, ts, t, p)| encode_record(*d, *ts, t, p))
            .collect()
    }

    #[test]
    fn records_round_trip() {
        let input: Vec<_> = (0..20).map(record).collect();
        let decoded = decode_records(&Bytes::from(file(&input)));
        assert_eq!(decoded.bad_tail_bytes, 0);
        let got: Vec<_> = decoded
            .records
            .into_iter()
            .map(|r| (r.device_id, r.ts, r.topic, r.payload.to_vec()))
            .collect();
        assert_eq!(got, input);
    }

    #[test]
    fn a_flipped_bit_ends_the_valid_prefix() {
        let input: Vec<_> = (1..4).map(record).collect();
        let mut bytes = file(&input);
        let second = encode_record(input[0].0, input[0].1, &input[0].2, &input[0].3).len();
        bytes[second + FRAME + 5] ^= 1;
        let decoded = decode_records(&Bytes::from(bytes.clone()));
        assert_eq!(decoded.records.len(), 1);
        assert_eq!(decoded.bad_tail_bytes, bytes.len() - second);
    }

    async fn temp_wal(dir: &Path) -> (Arc<Wal>, Vec<Leftover>, IngestSinkRef) {
        let store = tp_storage::open_timeseries("sqlite::memory:")
            .await
            .unwrap();
        let writer: IngestSinkRef = Arc::new(tp_storage::writer::BatchWriter::spawn(
            store,
            Default::default(),
        ));
        let cfg = WalConfig {
            dir: Some(dir.to_owned()),
            ..Default::default()
        };
        let (wal, leftovers) = Wal::open(&cfg, &writer).unwrap().unwrap();
        (wal, leftovers, writer)
    }

    #[tokio::test]
    async fn segments_are_deleted_once_consumed_and_a_second_node_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, leftovers, writer) = temp_wal(dir.path()).await;
        assert!(leftovers.is_empty());
        let cfg = WalConfig {
            dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        assert!(matches!(Wal::open(&cfg, &writer), Err(WalError::Locked(_))));
        let (d, ts, t, p) = record(7);
        let seg = wal.append(d, ts, &t, &p).unwrap();
        wal.append(d, ts, &t, &p).unwrap();
        wal.rotate().unwrap();
        let path = segment_path(dir.path(), seg);
        // one of two records consumed: the segment stays
        wal.consumed(seg);
        wal.collect(&writer).await;
        assert!(path.exists());
        wal.consumed(seg);
        wal.collect(&writer).await;
        assert!(!path.exists(), "a fully consumed closed segment is deleted");
        // a record still unconsumed at close stays for the next start
        let seg2 = wal.append(d, ts, &t, &p).unwrap();
        wal.close(&writer).await;
        assert!(matches!(wal.append(d, ts, &t, &p), Err(WalError::Closed)));
        let (_again, leftovers, _) = temp_wal(dir.path()).await;
        assert_eq!(
            leftovers,
            vec![Leftover {
                id: seg2,
                path: segment_path(dir.path(), seg2)
            }]
        );
        let decoded = read_leftover(&leftovers[0]);
        assert_eq!(decoded.records.len(), 1);
        assert_eq!(decoded.records[0].payload, Bytes::from(p));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let decoded = decode_records(&Bytes::from(bytes.clone()));
            let used: usize = decoded
                .records
                .iter()
                .map(|r| encode_record(r.device_id, r.ts, &r.topic, &r.payload).len())
                .sum();
            prop_assert_eq!(used + decoded.bad_tail_bytes, bytes.len());
        }

        #[test]
        fn a_truncated_file_yields_a_prefix(n in 1u8..12, cut in any::<prop::sample::Index>()) {
            let input: Vec<_> = (0..n).map(record).collect();
            let bytes = file(&input);
            let cut = cut.index(bytes.len() + 1);
            let decoded = decode_records(&Bytes::from(bytes[..cut].to_vec()));
            prop_assert!(decoded.records.len() <= input.len());
            for (got, want) in decoded.records.iter().zip(&input) {
                prop_assert_eq!(
                    (got.device_id, got.ts, got.topic.as_str(), &got.payload[..]),
                    (want.0, want.1, want.2.as_str(), &want.3[..])
                );
            }
            let whole = file(&input[..decoded.records.len()]).len();
            prop_assert_eq!(whole + decoded.bad_tail_bytes, cut);
        }

        #[test]
        fn corruption_anywhere_yields_a_prefix(n in 1u8..8, at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let input: Vec<_> = (0..n).map(record).collect();
            let mut bytes = file(&input);
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
            let decoded = decode_records(&Bytes::from(bytes));
            prop_assert!(decoded.records.len() < input.len());
            for (got, want) in decoded.records.iter().zip(&input) {
                prop_assert_eq!((got.device_id, got.ts), (want.0, want.1));
            }
        }
    }
}
