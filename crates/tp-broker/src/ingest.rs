//! The ingest loop: decodes what devices published and hands it to the stores.
//!
//! Decoding and storing is [`Uplinks`] ([`crate::uplink`]), shared with the HTTP
//! ([`crate::http`]) and CoAP ([`crate::coap`]) device APIs and the external-broker
//! consumer, so every transport stores a payload the same way.
//!
//! Server-time values are stamped with the time the node *received* the message
//! (carried in the ingest envelope and in the write-ahead log), not the time ingest
//! gets to it, so a message replayed from the log after a crash
//! ([`Ingest::replay`]) writes exactly the rows its first pass did.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::mpsc;
use tp_core::DeviceId;
use tp_core::protocol::{UplinkKind, UplinkTopic, decode_event};

use crate::session::{Shared, decode_envelope, ingest_size};
use crate::uplink::{Ack, Uplinks};
use crate::wal::{Leftover, Wal, read_leftover};

/// Everything the ingest loop needs.
pub(crate) struct Ingest {
    pub(crate) uplinks: Uplinks,
    pub(crate) shared: Arc<Shared>,
}

/// Ingest workers. A device's messages always go to the same worker, so they are
/// processed in the order they arrived; devices on different workers never wait for
/// each other (an attribute write to the metadata store, the first message of a
/// device reading its stored keys, or a registration only hold up the devices that
/// share its worker).
const INGEST_WORKERS: usize = 16;

/// Records each replay worker may have queued.
const REPLAY_QUEUE: usize = 1024;

impl Ingest {
    /// Consumes accepted publishes until every connection and the broker are gone:
    /// routes each to its device's worker ([`INGEST_WORKERS`]), then waits for the
    /// workers to finish what they were given.
    pub(crate) async fn run(self, mut rx: mpsc::UnboundedReceiver<Bytes>) {
        let this = Arc::new(self);
        let (mut workers, mut tasks) = (Vec::new(), Vec::new());
        for _ in 0..INGEST_WORKERS {
            // Unbounded like the queue feeding it: what the workers hold together is
            // still bounded by the broker's ingest backlog (`Shared::admit` counts a
            // message until a worker has consumed it).
            let (tx, rx) = mpsc::unbounded_channel();
            workers.push(tx);
            tasks.push(tokio::spawn(this.clone().work(rx)));
        }
        while let Some(envelope) = rx.recv().await {
            let worker = decode_envelope(&envelope).map_or(0, |e| worker_of(e.device_id));
            if let Err(e) = workers[worker].send(envelope) {
                // The worker panicked; account for the message so a drain ends.
                tracing::error!("ingest worker is gone; message not processed");
                this.done(&e.0, 0);
            }
        }
        drop(workers);
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "ingest worker failed");
            }
        }
    }

    /// One worker: its devices' messages, in order.
    async fn work(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Bytes>) {
        while let Some(envelope) = rx.recv().await {
            let segment = self.handle(&envelope).await;
            self.done(&envelope, segment);
        }
    }

    /// Handed to the writer (or rejected): the log may drop it once the writer has
    /// committed what is queued.
    fn done(&self, envelope: &Bytes, segment: u64) {
        if let Some(wal) = &self.shared.wal {
            wal.consumed(segment);
        }
        self.shared.consumed(ingest_size(envelope));
    }

    /// Processes one envelope; returns its write-ahead log segment (0 = none).
    async fn handle(&self, envelope: &Bytes) -> u64 {
        let Some(e) = decode_envelope(envelope) else {
            tracing::error!("malformed internal ingest envelope");
            return 0;
        };
        self.process(e.device_id, e.topic, &e.payload, e.ts).await;
        e.segment
    }

    /// Decodes and stores one device message received at `ts`.
    async fn process(&self, device_id: DeviceId, topic: &str, payload: &[u8], ts: i64) {
        // A sign of life only while the device still has a session here: ingest
        // runs behind the connections under load, and a message processed after its
        // session closed would bring the device back online with no connection,
        // until the inactivity window ran out (minutes of a wrong "online"). The
        // close already recorded the device's state. It travels with the session's
        // open and close, so it is never seen before the open either.
        self.shared.session_activity(device_id);
        let Ok(uplink) = UplinkTopic::parse(topic) else {
            return;
        };
        metrics::counter!("tp_ingest_messages_total", "kind" => kind_name(uplink.kind))
            .increment(1);
        let (result, ack) = self.uplinks.dispatch(device_id, &uplink, payload, ts).await;
        if let Some(ack) = ack {
            self.ack(ack).await;
        }
        if let Err(e) = result {
            self.shared.rejected.fetch_add(1, Ordering::AcqRel);
            metrics::counter!("tp_ingest_rejected_total", "kind" => kind_name(uplink.kind))
                .increment(1);
            tracing::warn!(device_id = %device_id, topic, error = %e, "Rejected device message; nothing stored");
        }
    }

    /// Replays the records a previous run left in the write-ahead log, through the
    /// same path as live messages, waits until the writer has committed them, and
    /// deletes the segments. Runs before any listener accepts devices.
    /// `progress` counts the records (a first pass reads the segments for the total).
    pub(crate) async fn replay(
        self: &Arc<Self>,
        wal: &Wal,
        leftovers: &[Leftover],
        progress: &Arc<crate::ReplayProgress>,
    ) {
        if leftovers.is_empty() {
            return;
        }
        let total: usize = leftovers
            .iter()
            .map(|l| read_leftover(l).records.len())
            .sum();
        progress.begin(total as u64);
        let started = std::time::Instant::now();
        tracing::info!(
            segments = leftovers.len(),
            messages = total,
            "replaying the write-ahead log"
        );
        self.replay_records(wal, leftovers, progress).await;
        progress.end();
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            messages = total,
            seconds = format!("{secs:.1}"),
            per_second = (total as f64 / secs.max(1e-3)) as u64,
            "write-ahead log replay finished (stored and committed)"
        );
    }

    /// Replays on [`INGEST_WORKERS`] tasks, a device's records always on the same
    /// one (so in their logged order), like live ingest: one task processing the log
    /// message by message kept the writer's batches small and replayed at a third
    /// of the rate the node acknowledges.
    async fn replay_records(
        self: &Arc<Self>,
        wal: &Wal,
        leftovers: &[Leftover],
        progress: &Arc<crate::ReplayProgress>,
    ) {
        let (mut workers, mut tasks) = (Vec::new(), Vec::new());
        for _ in 0..INGEST_WORKERS {
            // Bounded: the log is read segment by segment, and a slow store holds the
            // reader back instead of the whole log landing in memory.
            let (tx, rx) = mpsc::channel::<crate::wal::Record>(REPLAY_QUEUE);
            workers.push(tx);
            tasks.push(tokio::spawn(
                self.clone().replay_worker(rx, progress.clone()),
            ));
        }
        let mut bad_tails = 0u64;
        for leftover in leftovers {
            let decoded = read_leftover(leftover);
            if decoded.bad_tail_bytes > 0 {
                bad_tails += 1;
                tracing::warn!(path = %leftover.path.display(), valid_records = decoded.records.len(),
                    ignored_bytes = decoded.bad_tail_bytes,
                    "write-ahead log segment ends in a torn or corrupt record; replaying the records before it");
            }
            for r in decoded.records {
                if workers[worker_of(r.device_id)].send(r).await.is_err() {
                    tracing::error!("replay worker is gone; record not replayed");
                }
            }
        }
        drop(workers);
        let (mut replayed, mut skipped) = (0u64, 0u64);
        for task in tasks {
            match task.await {
                Ok((r, s)) => {
                    replayed += r;
                    skipped += s;
                }
                Err(e) => tracing::error!(error = %e, "replay worker failed"),
            }
        }
        match wal.finish_replay(&self.uplinks.writer, leftovers).await {
            Ok(()) => tracing::info!(
                segments = leftovers.len(),
                skipped_duplicate_events = skipped,
                torn_segments = bad_tails,
                "replayed {replayed} messages from the write-ahead log"
            ),
            Err(e) => tracing::error!(error = %e, replayed,
                "replayed the write-ahead log but the store did not commit all of it; keeping the segments for the next start"),
        }
    }

    /// One replay worker: its devices' records in order; returns (replayed, skipped
    /// as already stored).
    async fn replay_worker(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<crate::wal::Record>,
        progress: Arc<crate::ReplayProgress>,
    ) -> (u64, u64) {
        let (mut replayed, mut skipped) = (0u64, 0u64);
        while let Some(r) = rx.recv().await {
            progress.advance();
            if self.event_already_stored(&r).await {
                skipped += 1;
                continue;
            }
            self.process(r.device_id, &r.topic, &r.payload, r.ts).await;
            replayed += 1;
        }
        (replayed, skipped)
    }

    /// Whether `record` is a device event (or OTA progress report) the store already
    /// holds: events are plain inserts, so replaying one committed before the crash
    /// would store it twice. Gateway envelopes are not checked.
    async fn event_already_stored(&self, record: &crate::wal::Record) -> bool {
        let Ok(uplink) = UplinkTopic::parse(&record.topic) else {
            return false;
        };
        let (mid, method) = match uplink.kind {
            _ if uplink.gateway => return false,
            UplinkKind::Event => match decode_event(&record.payload) {
                Ok(call) => (uplink.message_id.unwrap_or_default(), call.method),
                Err(_) => return false,
            },
            UplinkKind::OtaProgress => (String::new(), "ota_progress".to_owned()),
            _ => return false,
        };
        match self
            .uplinks
            .writer
            .has_event(record.device_id, record.ts, &mid, &method)
            .await
        {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check for a replayed event; storing it again");
                false
            }
        }
    }

    /// ThingsPanel acknowledges attribute and event reports on the device's response topic.
    async fn ack(&self, ack: Ack) {
        let device_id = ack.device_id;
        let Some(device) = self.uplinks.device(device_id).await else {
            return;
        };
        let (topic, payload) = ack.message(&device.device_number);
        // A device that did not subscribe to its response topic does not want it.
        if let Err(crate::session::Undelivered::Full) =
            self.shared.publish(device_id, &topic, payload.into())
        {
            tracing::warn!(device_id = %device_id, "cannot send acknowledgement: the device's queue is full");
        }
    }
}

/// A message in the write-ahead log that a device API is handing to the stores;
/// dropping it (once the message is queued, or refused) tells the log.
#[derive(Debug)]
pub(crate) struct Logged {
    wal: Option<Arc<Wal>>,
    segment: u64,
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(wal) = &self.wal {
            wal.consumed(self.segment);
        }
    }
}

impl Uplinks {
    /// Logs a message received over the HTTP or CoAP device API at `ts` as if it had
    /// been published on `topic`, before it is queued to the batching writer: the
    /// API answers success once it is queued, so a crash before the commit must not
    /// lose it. Keep the returned guard until the message is queued.
    ///
    /// # Errors
    /// [`tp_core::Error::Unavailable`] when the log cannot be written (answer 503:
    /// the device retries).
    pub(crate) fn log(
        &self,
        device_id: DeviceId,
        topic: &str,
        payload: &[u8],
        ts: i64,
    ) -> tp_core::Result<Logged> {
        let Some(wal) = self.sessions.as_ref().and_then(|s| s.wal.as_ref()) else {
            return Ok(Logged {
                wal: None,
                segment: 0,
            });
        };
        match wal.append(device_id, ts, topic, payload) {
            Ok(segment) => Ok(Logged {
                wal: Some(wal.clone()),
                segment,
            }),
            Err(e) => {
                tracing::error!(device_id = %device_id, error = %e, "cannot log a device API message to the write-ahead log; refusing it");
                Err(tp_core::Error::Unavailable {
                    backend: "wal",
                    source: Box::new(e),
                })
            }
        }
    }
}

/// The worker of `device`: a stable spread of device ids (random UUIDs).
fn worker_of(device: DeviceId) -> usize {
    let bytes = device.0.as_bytes();
    let mut h = 0u64;
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h ^= u64::from_le_bytes(word);
    }
    // Fibonacci hashing: the top bits of the product are well mixed.
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % INGEST_WORKERS
}

fn kind_name(kind: UplinkKind) -> &'static str {
    match kind {
        UplinkKind::Telemetry => "telemetry",
        UplinkKind::Attributes => "attributes",
        UplinkKind::Event => "event",
        UplinkKind::CommandResponse => "command_response",
        UplinkKind::AttributeSetResponse => "attribute_set_response",
        UplinkKind::OtaProgress => "ota_progress",
        UplinkKind::Register => "register",
    }
}
