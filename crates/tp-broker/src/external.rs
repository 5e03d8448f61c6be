//! The `tp-storage` role (feature `external`): consumes device messages from an
//! external MQTT cluster (VerneMQ, EMQX, Mosquitto) with a shared subscription and
//! stores them, the seed's "time-series plugin service".
//!
//! # Where identity comes from
//! A plain MQTT subscriber does not learn who published a message, so the consumer
//! reads only topics whose *broker* established the device:
//! - `tp/ingest/{device_id}/{uplink topic}` (always): what the VerneMQ hook rewrites
//!   device publishes to ([`crate::hooks::vernemq`]) and what the EMQX rule
//!   republishes ([`crate::hooks::emqx`]). Trust assumption: only the broker (or a
//!   trusted bridge/protocol plugin) can publish under `tp/ingest/`; our hooks deny
//!   devices, and a Mosquitto deployment must deny it in its own ACL file
//!   (configuring Mosquitto's auth is outside this service).
//! - ThingsPanel's wrapped form, with [`ExternalConfig::thingspanel_wrapped`]: the
//!   uplink topics themselves (`devices/telemetry`, ...) carrying
//!   `{"device_id":"<uuid>","values":"<base64 of the device payload>"}`, as
//!   ThingsPanel's gmqtt plugin and protocol plugins publish them. Only turn this on
//!   when the broker rewrites every device publish that way, otherwise any device
//!   could claim another's id.
//!
//! Every filter is subscribed as `$share/{share_group}/{filter}`, so N consumers
//! in one group split the stream and each message is stored by one of them.
//!
//! # Nothing acknowledged is lost
//! The client uses manual acknowledgements and a persistent session
//! (`clean_session = false`). Received messages are decoded and stored by the same
//! code as the embedded broker's ingest (telemetry and events queued to the
//! ingest sink (tp-storage's batching writer in the `tp-storage` role), attributes, command responses, gateway envelopes with their
//! sub-devices); every `commit_interval` (or `commit_max_messages` messages) the
//! writer is flushed and only when the flush committed everything (no dropped
//! batch) are the PUBACKs sent. If a commit fails the messages stay unacknowledged and the consumer
//! reconnects, so the broker delivers them again. Delivery is at least once: a
//! message redelivered after a crash between commit and PUBACK is stored again
//! (telemetry with device timestamps overwrites the same rows; server-time
//! telemetry and events get a second row).
//!
//! Payloads that cannot be decoded, unknown or disabled devices, and command
//! responses without a matching command are logged, counted as rejected and
//! acknowledged: sending them again would not change the outcome.
//!
//! Attribute and event reports are acknowledged to the device on its response
//! topic, as ThingsPanel does ([`ExternalConfig::ack_reports`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tp_core::ingest::IngestSinkRef;
use tp_core::protocol::{INGEST_PREFIX, UplinkTopic};
use tp_core::{Device, DeviceId, MetadataStoreRef, now_ms};

use crate::uplink::{Ack, Uplinks};

/// Settings of an [`ExternalConsumer`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalConfig {
    /// The external broker: `host:port`, `mqtt://host:port` or `tcp://host:port`.
    pub broker: String,
    /// MQTT client id; unique per consumer (the broker keeps its session).
    pub client_id: String,
    /// The service account ([`crate::hooks::HooksConfig::service_username`]).
    pub username: Option<String>,
    /// Its password.
    pub password: Option<String>,
    /// Shared-subscription group: consumers of one group split the messages.
    pub share_group: String,
    /// Also consume ThingsPanel's wrapped uplink topics (see the module docs).
    pub thingspanel_wrapped: bool,
    /// Commit (flush the writer, then acknowledge) after this many messages.
    pub commit_max_messages: usize,
    /// ... or this long after the first unacknowledged message (ms).
    pub commit_interval_ms: u64,
    /// Answer attribute and event reports on the device's response topic.
    pub ack_reports: bool,
    /// MQTT keep-alive (s).
    pub keep_alive_secs: u64,
}

impl std::fmt::Debug for ExternalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalConfig")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("share_group", &self.share_group)
            .field("thingspanel_wrapped", &self.thingspanel_wrapped)
            .field("commit_max_messages", &self.commit_max_messages)
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field("ack_reports", &self.ack_reports)
            .field("keep_alive_secs", &self.keep_alive_secs)
            .finish()
    }
}

impl Default for ExternalConfig {
    fn default() -> Self {
        Self {
            broker: "127.0.0.1:1883".to_owned(),
            client_id: format!(
                "tp-storage-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            username: None,
            password: None,
            share_group: "tp-storage".to_owned(),
            thingspanel_wrapped: false,
            commit_max_messages: 500,
            commit_interval_ms: 50,
            ack_reports: true,
            keep_alive_secs: 30,
        }
    }
}

impl ExternalConfig {
    /// The subscribed filters, with the share prefix.
    pub fn filters(&self) -> Vec<String> {
        let mut topics = vec![format!("{INGEST_PREFIX}#")];
        if self.thingspanel_wrapped {
            topics.extend(
                [
                    "devices/telemetry",
                    "devices/attributes/+",
                    "devices/event/+",
                    "devices/command/response/+",
                    "devices/attributes/set/response/+",
                    "gateway/telemetry",
                    "gateway/attributes/+",
                    "gateway/event/+",
                    "gateway/command/response/+",
                    "gateway/attributes/set/response/+",
                    "ota/devices/progress",
                ]
                .map(str::to_owned),
            );
        }
        topics
            .into_iter()
            .map(|t| format!("$share/{}/{t}", self.share_group))
            .collect()
    }

    fn host_port(&self) -> Result<(String, u16), ExternalError> {
        let bad = || ExternalError::Broker(self.broker.clone());
        let rest = self
            .broker
            .strip_prefix("mqtt://")
            .or_else(|| self.broker.strip_prefix("tcp://"))
            .unwrap_or(&self.broker);
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port = port.trim_end_matches('/').parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok((host.to_owned(), port))
    }
}

/// What can stop an [`ExternalConsumer`] from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExternalError {
    /// `broker` is not `host:port`.
    #[error("external.broker {0:?} is not host:port (optionally mqtt:// or tcp://)")]
    Broker(String),
    /// The share group or client id cannot appear in a topic filter / MQTT client id.
    #[error("{0} must be non-empty and contain none of + # /")]
    Name(&'static str),
}

/// What the consumer stores into.
#[derive(Debug, Clone)]
pub struct ConsumerDeps {
    /// Devices (identity), attributes and the command log.
    pub metadata: MetadataStoreRef,
    /// Telemetry and events.
    pub writer: IngestSinkRef,
}

/// Counters of a running consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsumerStats {
    /// Messages received from the broker (redeliveries included).
    pub received: u64,
    /// Messages stored and acknowledged.
    pub committed: u64,
    /// Messages acknowledged without storing anything (see the module docs).
    pub rejected: u64,
    /// Commits that failed (their messages were left for redelivery).
    pub failed_commits: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    committed: AtomicU64,
    rejected: AtomicU64,
    failed_commits: AtomicU64,
}

/// A running consumer: an MQTT session with the external broker and the task
/// storing what it receives.
#[derive(Debug)]
pub struct ExternalConsumer {
    counters: Arc<Counters>,
    subscribed: watch::Receiver<bool>,
    stop: CancellationToken,
    network: JoinHandle<()>,
    storing: JoinHandle<()>,
}

impl ExternalConsumer {
    /// Starts connecting (and reconnecting, with the broker keeping the session)
    /// and storing. Returns at once; [`Self::subscribed`] waits for the first SUBACK.
    ///
    /// # Errors
    /// [`ExternalError`] for a malformed broker address, share group or client id.
    pub fn start(config: &ExternalConfig, deps: ConsumerDeps) -> Result<Self, ExternalError> {
        let (host, port) = config.host_port()?;
        let bad_name = |s: &str| s.is_empty() || s.contains(['+', '#', '/']);
        if bad_name(&config.share_group) {
            return Err(ExternalError::Name("external.share_group"));
        }
        if bad_name(&config.client_id) {
            return Err(ExternalError::Name("external.client_id"));
        }
        let mut opts = MqttOptions::new(&config.client_id, host, port);
        opts.set_clean_session(false);
        opts.set_manual_acks(true);
        opts.set_keep_alive(Duration::from_secs(config.keep_alive_secs.max(5)));
        opts.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        if let Some(user) = &config.username {
            opts.set_credentials(user, config.password.as_deref().unwrap_or_default());
        }
        let (client, eventloop) = AsyncClient::new(opts, 1024);
        let counters = Arc::new(Counters::default());
        let (subscribed_tx, subscribed) = watch::channel(false);
        let stop = CancellationToken::new();
        // Bounded: a slow store stops the network task from reading, so the broker
        // holds the backlog (its inflight window), not our memory.
        let (tx, rx) = mpsc::channel(1024);
        let store_done = CancellationToken::new();
        let filters = config
            .filters()
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
            .collect();
        let network = tokio::spawn(network_loop(
            eventloop,
            client.clone(),
            filters,
            tx,
            subscribed_tx,
            stop.clone(),
            store_done.clone(),
        ));
        let store = Store {
            uplinks: Uplinks {
                metadata: deps.metadata,
                writer: deps.writer,
                sessions: None,
                presence: None,
                observer: None,
                caches: Default::default(),
                ota: None,
                // The thing model is checked by embedded brokers only.
                thing_models: None,
                // data scripts run where devices connect (the embedded broker)
                #[cfg(feature = "lua")]
                scripts: None,
            },
            client,
            counters: counters.clone(),
            devices: HashMap::new(),
            ack_reports: config.ack_reports,
            wrapped: config.thingspanel_wrapped,
            done: store_done,
        };
        let storing = tokio::spawn(store.run(
            rx,
            config.commit_max_messages.max(1),
            Duration::from_millis(config.commit_interval_ms.max(1)),
        ));
        Ok(Self {
            counters,
            subscribed,
            stop,
            network,
            storing,
        })
    }

    /// Waits until the broker granted the subscriptions (at least once).
    pub async fn subscribed(&self) {
        let mut rx = self.subscribed.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Current counters.
    pub fn stats(&self) -> ConsumerStats {
        let c = &self.counters;
        ConsumerStats {
            received: c.received.load(Ordering::Acquire),
            committed: c.committed.load(Ordering::Acquire),
            rejected: c.rejected.load(Ordering::Acquire),
            failed_commits: c.failed_commits.load(Ordering::Acquire),
        }
    }

    /// Healthy while both tasks run.
    pub fn is_healthy(&self) -> bool {
        !self.network.is_finished() && !self.storing.is_finished()
    }

    /// Stops reading, commits and acknowledges what was received, and disconnects.
    /// What is received but not committed stays with the broker's session.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.storing.await;
        let _ = self.network.await;
    }
}

async fn network_loop(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filters: Vec<SubscribeFilter>,
    tx: mpsc::Sender<Publish>,
    subscribed: watch::Sender<bool>,
    stop: CancellationToken,
    store_done: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                failures = 0;
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the external broker"
                );
                // A resumed session still holds the subscriptions.
                if !ack.session_present
                    && let Err(e) = client.try_subscribe_many(filters.clone())
                {
                    tracing::error!(error = %e, "cannot subscribe on the external broker");
                }
                if ack.session_present {
                    subscribed.send_replace(true);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    .count();
                if refused > 0 {
                    tracing::error!(
                        refused,
                        "the external broker refused subscriptions (check its ACL for the service account)"
                    );
                }
                subscribed.send_replace(true);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if tx.send(publish).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = Duration::from_millis(200 * u64::from(failures.min(25)));
                tracing::warn!(error = %e, retry_in = ?wait, "external broker connection failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    // Dropping `tx` lets the store task commit what it has and finish; keep polling
    // meanwhile so its PUBACKs go out, then disconnect once they are written.
    drop(tx);
    let drain = async {
        loop {
            tokio::select! {
                _ = store_done.cancelled() => break,
                event = eventloop.poll() => if event.is_err() { return },
            }
        }
        let _ = client.try_disconnect();
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, drain).await;
}

/// Longest wait on shutdown for the last acknowledgements to be written.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How one message went.
enum Outcome {
    /// Queued or written; acknowledge after the commit.
    Stored,
    /// Nothing to store, ever (bad payload, unknown device): acknowledge.
    Rejected,
    /// A store failed: leave unacknowledged for redelivery.
    Failed,
}

/// How long a resolved device is trusted.
const DEVICE_TTL: Duration = Duration::from_secs(60);
/// Devices remembered before the map is emptied.
const DEVICE_CACHE_MAX: usize = 100_000;

struct Store {
    uplinks: Uplinks,
    client: AsyncClient,
    counters: Arc<Counters>,
    devices: HashMap<DeviceId, (Option<Arc<Device>>, Instant)>,
    ack_reports: bool,
    wrapped: bool,
    /// Cancelled when the task has sent its last acknowledgement.
    done: CancellationToken,
}

impl Store {
    async fn run(mut self, mut rx: mpsc::Receiver<Publish>, max: usize, interval: Duration) {
        // Received and not yet acknowledged, with whether each stored something.
        let mut pending: Vec<(Publish, bool)> = Vec::new();
        let mut failed = false;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let received = tokio::select! {
                p = rx.recv() => p,
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                    if deadline.is_some() => {
                    self.commit(&mut pending, &mut failed).await;
                    deadline = None;
                    continue;
                }
            };
            let Some(publish) = received else { break };
            self.counters.received.fetch_add(1, Ordering::AcqRel);
            match self.handle(&publish).await {
                Outcome::Stored => pending.push((publish, true)),
                // Acknowledged with the batch, so acknowledgements stay in order.
                Outcome::Rejected => pending.push((publish, false)),
                Outcome::Failed => {
                    failed = true;
                    pending.push((publish, true));
                }
            }
            if pending.len() >= max {
                self.commit(&mut pending, &mut failed).await;
                deadline = None;
            } else if deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + interval);
            }
        }
        self.commit(&mut pending, &mut failed).await;
        self.done.cancel();
    }

    /// Flushes the writer and acknowledges `pending` if everything is committed;
    /// otherwise leaves them unacknowledged and reconnects for redelivery.
    async fn commit(&mut self, pending: &mut Vec<(Publish, bool)>, failed: &mut bool) {
        if pending.is_empty() {
            return;
        }
        let writer = &self.uplinks.writer;
        let dropped = writer.dropped_batches();
        let flushed = writer.flush().await;
        if flushed.is_ok() && !*failed && writer.dropped_batches() == dropped {
            let (mut stored, mut rejected) = (0u64, 0u64);
            for (publish, was_stored) in pending.drain(..) {
                if was_stored {
                    stored += 1;
                } else {
                    rejected += 1;
                }
                if publish.qos != QoS::AtMostOnce
                    && let Err(e) = self.client.ack(&publish).await
                {
                    tracing::warn!(error = %e, "cannot acknowledge a stored message");
                }
            }
            self.counters.committed.fetch_add(stored, Ordering::AcqRel);
            self.counters.rejected.fetch_add(rejected, Ordering::AcqRel);
            metrics::counter!("tp_external_committed_total").increment(stored);
            metrics::counter!("tp_external_rejected_total").increment(rejected);
            return;
        }
        let n = pending.len();
        pending.clear();
        *failed = false;
        self.counters.failed_commits.fetch_add(1, Ordering::AcqRel);
        metrics::counter!("tp_external_failed_commits_total").increment(1);
        tracing::error!(messages = n, error = ?flushed.err(),
            "store did not commit; leaving the messages unacknowledged and reconnecting so the broker delivers them again");
        // MQTT redelivers unacknowledged messages of a persistent session when the
        // client reconnects.
        let _ = self.client.try_disconnect();
    }

    async fn handle(&mut self, publish: &Publish) -> Outcome {
        let topic = publish.topic.as_str();
        let (device_id, uplink_topic, payload) = match topic.strip_prefix(INGEST_PREFIX) {
            Some(rest) => {
                let Some((id, uplink)) = rest.split_once('/') else {
                    return reject(topic, "no device id level");
                };
                let Ok(id) = id.parse::<uuid::Uuid>() else {
                    return reject(topic, "device id is not a UUID");
                };
                (DeviceId(id), uplink, publish.payload.to_vec())
            }
            None if self.wrapped => match unwrap_thingspanel(&publish.payload) {
                Some((id, payload)) => (id, topic, payload),
                None => return reject(topic, "not a {\"device_id\",\"values\"} payload"),
            },
            None => return reject(topic, "not an ingest topic"),
        };
        let Ok(uplink) = UplinkTopic::parse(uplink_topic) else {
            return reject(topic, "not an uplink topic");
        };
        let device = match self.device(device_id).await {
            Ok(Some(d)) => d,
            Ok(None) => return reject(topic, "unknown or disabled device"),
            Err(e) => {
                tracing::warn!(error = %e, "device lookup failed");
                return Outcome::Failed;
            }
        };
        let now = now_ms();
        let (result, ack) = self
            .uplinks
            .dispatch(device.id, &uplink, &payload, now)
            .await;
        if let Some(ack) = ack {
            self.ack(&device, ack).await;
        }
        match result {
            Ok(()) => Outcome::Stored,
            Err(e) if is_transient(&e) => {
                tracing::warn!(device_id = %device.id, error = %e, "storing a message failed");
                Outcome::Failed
            }
            Err(e) => {
                tracing::warn!(device_id = %device.id, topic, error = %e, "rejected device message; nothing stored");
                Outcome::Rejected
            }
        }
    }

    async fn device(&mut self, id: DeviceId) -> tp_core::Result<Option<Arc<Device>>> {
        if let Some((d, at)) = self.devices.get(&id)
            && at.elapsed() < DEVICE_TTL
        {
            return Ok(d.clone());
        }
        let device = self
            .uplinks
            .metadata
            .get_device_by_id(id)
            .await?
            .filter(|d| d.enabled)
            .map(Arc::new);
        if self.devices.len() >= DEVICE_CACHE_MAX {
            self.devices.clear();
        }
        self.devices.insert(id, (device.clone(), Instant::now()));
        Ok(device)
    }

    /// ThingsPanel's acknowledgement of an attribute or event report, to `device`
    /// (the sender of the report).
    async fn ack(&self, device: &Device, ack: Ack) {
        if !self.ack_reports {
            return;
        }
        let (topic, payload) = ack.message(&device.device_number);
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!(device_id = %device.id, error = %e, "cannot send acknowledgement");
        }
    }
}

fn reject(topic: &str, why: &'static str) -> Outcome {
    tracing::warn!(
        topic,
        reason = why,
        "message from the external broker dropped"
    );
    Outcome::Rejected
}

/// Failures worth a redelivery (the store or network), as opposed to a message
/// that will never store (bad payload, unknown command).
fn is_transient(e: &tp_core::Error) -> bool {
    matches!(
        e,
        tp_core::Error::Unavailable { .. } | tp_core::Error::Backend { .. }
    )
}

/// ThingsPanel's `{"device_id":"<uuid>","values":<base64 string or JSON>}`.
fn unwrap_thingspanel(payload: &[u8]) -> Option<(DeviceId, Vec<u8>)> {
    #[derive(Deserialize)]
    struct Wrapped {
        device_id: uuid::Uuid,
        values: serde_json::Value,
    }
    let w: Wrapped = serde_json::from_slice(payload).ok()?;
    let bytes = match w.values {
        serde_json::Value::String(s) => base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .ok()?,
        other => serde_json::to_vec(&other).ok()?,
    };
    Some((DeviceId(w.device_id), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        let with = |b: &str| ExternalConfig {
            broker: b.to_owned(),
            ..Default::default()
        };
        assert_eq!(
            with("10.0.0.1:1883").host_port().unwrap(),
            ("10.0.0.1".into(), 1883)
        );
        assert_eq!(
            with("mqtt://vmq:1884").host_port().unwrap(),
            ("vmq".into(), 1884)
        );
        assert_eq!(
            with("tcp://[::1]:1883").host_port().unwrap(),
            ("::1".into(), 1883)
        );
        assert!(with("vmq").host_port().is_err());
        assert!(with(":1883").host_port().is_err());
        assert!(with("vmq:x").host_port().is_err());
    }

    #[test]
    fn filters_are_shared() {
        let c = ExternalConfig {
            share_group: "g1".into(),
            ..Default::default()
        };
        assert_eq!(c.filters(), vec!["$share/g1/tp/ingest/#".to_owned()]);
        let wrapped = ExternalConfig {
            thingspanel_wrapped: true,
            ..c
        };
        assert!(
            wrapped
                .filters()
                .contains(&"$share/g1/devices/telemetry".to_owned())
        );
    }

    #[test]
    fn thingspanel_wrapped_payloads() {
        let id = uuid::Uuid::new_v4();
        let b64 = base64::engine::general_purpose::STANDARD.encode(br#"{"t":1}"#);
        let p = format!(r#"{{"device_id":"{id}","values":"{b64}"}}"#);
        assert_eq!(
            unwrap_thingspanel(p.as_bytes()),
            Some((DeviceId(id), br#"{"t":1}"#.to_vec()))
        );
        let p = format!(r#"{{"device_id":"{id}","values":{{"t":1}}}}"#);
        assert_eq!(
            unwrap_thingspanel(p.as_bytes()).unwrap().1,
            br#"{"t":1}"#.to_vec()
        );
        assert!(unwrap_thingspanel(br#"{"t":1}"#).is_none());
        assert!(unwrap_thingspanel(br#"{"device_id":"x","values":"e30="}"#).is_none());
    }
}
