//! MQTT load: connected publishers at a fixed rate, and counting subscribers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::oneshot;

use crate::common::{Latency, now_us};

/// Counters shared by every client of a run.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// One connected MQTT client and its event-loop task.
pub(crate) struct Client {
    pub(crate) client: AsyncClient,
    /// Device timestamp (ms) of the last publish, for latency probes.
    pub(crate) last_ts: Arc<AtomicI64>,
}

pub(crate) struct ConnectSpec {
    pub(crate) addr: SocketAddr,
    pub(crate) client_id: String,
    pub(crate) credentials: Option<(String, String)>,
    /// Subscribers record the latency carried in the first 8 payload bytes.
    pub(crate) latency: Option<Arc<Latency>>,
}

/// Connects and waits for the CONNACK.
pub(crate) async fn connect(spec: ConnectSpec, counters: Arc<Counters>) -> anyhow::Result<Client> {
    let mut opts = MqttOptions::new(spec.client_id, spec.addr.ip().to_string(), spec.addr.port());
    opts.set_keep_alive(Duration::from_secs(60));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(100);
    if let Some((u, p)) = spec.credentials {
        opts.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 128);
    let (ready_tx, ready_rx) = oneshot::channel();
    let latency = spec.latency;
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    if let (Some(lat), Some(b)) = (&latency, p.payload.get(..8)) {
                        let sent = u64::from_be_bytes(b.try_into().unwrap_or_default());
                        lat.record_us(now_us().saturating_sub(sent));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Err(e.to_string()));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(30), ready_rx).await {
        Ok(Ok(Ok(()))) => Ok(Client {
            client,
            last_ts: Arc::new(AtomicI64::new(0)),
        }),
        Ok(Ok(Err(e))) => bail!("connect refused: {e}"),
        _ => bail!("no CONNACK within 30 s"),
    }
}

pub(crate) fn qos(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// When and how one client publishes.
#[derive(Clone)]
pub(crate) struct Schedule {
    pub(crate) qos: QoS,
    /// Time between two publishes of one client.
    pub(crate) period: Duration,
    /// Delay before the first publish, to spread clients over the period.
    pub(crate) offset: Duration,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) counters: Arc<Counters>,
    /// Offers each sent message to the publish-to-stored prober, as the device
    /// with this index (`None`: no latency sampling).
    pub(crate) probe: Option<(usize, Arc<crate::probe::Sampler>)>,
}

/// Publishes `make_payload(seq)` on `topic` by `schedule` until it is stopped; a
/// `{seq}` in `topic` is replaced by the sequence number (a new topic per message,
/// e.g. a ThingsPanel message id).
pub(crate) async fn publish_loop(
    client: Arc<Client>,
    topic: String,
    schedule: Schedule,
    make_payload: impl Fn(&Client, u64) -> Vec<u8>,
) {
    let Schedule {
        qos,
        period,
        offset,
        stop,
        counters,
        probe,
    } = schedule;
    tokio::time::sleep(offset).await;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let built = Instant::now();
        let payload = make_payload(&client, seq);
        let this_topic = if topic.contains("{seq}") {
            topic.replace("{seq}", &seq.to_string())
        } else {
            topic.clone()
        };
        seq += 1;
        if client
            .client
            .publish(this_topic, qos, false, payload)
            .await
            .is_err()
        {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        counters.sent.fetch_add(1, Ordering::Relaxed);
        if let Some((device, sampler)) = &probe {
            sampler.offer(*device, client.last_ts.load(Ordering::Relaxed), built);
        }
        if qos == QoS::AtMostOnce {
            counters.acked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Waits until every publish is acknowledged, no acknowledgement has arrived for 2 s
/// (publishes a broker refused by closing the connection are never acknowledged),
/// or `timeout` passes.
pub(crate) async fn wait_acked(counters: &Counters, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = (counters.acked.load(Ordering::Relaxed), Instant::now());
    loop {
        let acked = counters.acked.load(Ordering::Relaxed);
        if acked >= counters.sent.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return;
        }
        if acked > last.0 {
            last = (acked, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
