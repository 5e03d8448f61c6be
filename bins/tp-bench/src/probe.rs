//! Publish-to-stored latency, per message, for a sample of the messages published.
//!
//! How "stored" is detected: every message of a run carries a device timestamp that
//! is unique per device (strictly increasing) and is taken the moment the payload
//! is built, right before the publish. The publisher hands every `every`-th
//! message it sends (device, timestamp, the [`Instant`] it was built) to the
//! prober, which polls that device's latest value of `k0` through the REST API
//! until its timestamp reaches the message's: then that message (and everything
//! the device sent before it) is in the store, because the platform commits a
//! device's messages in order and a message's points in one write. The latency
//! is the monotonic time from building the payload to the first poll that saw it.
//!
//! Why not the old probe: it picked a device and took the timestamp of that
//! device's *last* message, which could have been published (and stored) up to one
//! publishing period earlier (1 s at 1,000 devices x 1 msg/s), so it measured the
//! sampling delay as latency and took one sample at a time (~70 per run). Why not
//! the live stream (SSE): it shows a message once it is queued for the writer,
//! before it is committed, so it would measure something else.
//!
//! Cost and precision: polls start at once and are spaced 2 ms apart for the first
//! 20 ms, then 10% of the time waited so far (at most 100 ms), so a sample is at
//! most 2 ms or 10% late; a 500 ms sample costs ~45 requests. At most
//! [`MAX_IN_FLIGHT`] messages are watched at once; a sample that would exceed it is
//! skipped and counted (so is one not seen within [`GIVE_UP`]; it is recorded as
//! [`GIVE_UP`], which keeps the tail honest). The report states the polls per
//! second the prober added to the server's load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use crate::common::{Api, BenchDevice, Latency};

/// Messages watched at once.
pub(crate) const MAX_IN_FLIGHT: usize = 512;
/// A message not seen stored within this is recorded at this value.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(30);

/// One published message to watch.
#[derive(Debug)]
pub(crate) struct Sample {
    /// Index of the device in the run's device list.
    pub(crate) device: usize,
    /// The message's device timestamp (ms): unique per device.
    pub(crate) ts: i64,
    /// When its payload was built.
    pub(crate) at: Instant,
}

/// The publishers' side: picks every `every`-th message sent by any publisher.
#[derive(Debug)]
pub(crate) struct Sampler {
    every: u64,
    seen: AtomicU64,
    tx: mpsc::UnboundedSender<Sample>,
}

impl Sampler {
    /// Offers one sent message; cheap when it is not picked.
    pub(crate) fn offer(&self, device: usize, ts: i64, at: Instant) {
        if self
            .seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.every)
        {
            let _ = self.tx.send(Sample { device, ts, at });
        }
    }
}

/// What the prober measured.
pub(crate) struct Outcome {
    pub(crate) latency: Latency,
    pub(crate) skipped: u64,
    pub(crate) timed_out: u64,
    pub(crate) polls: u64,
}

/// Every how many messages one is sampled so a run of `messages` yields about
/// `samples` (at least every message).
pub(crate) fn stride(messages: u64, samples: u64) -> u64 {
    (messages / samples.max(1)).max(1)
}

/// Starts the prober; returns the publishers' sampler and the task that ends (with
/// the outcome) once every sampler clone is dropped and every sample is settled.
pub(crate) fn start(
    api: Api,
    devices: Arc<Vec<BenchDevice>>,
    every: u64,
) -> (Arc<Sampler>, tokio::task::JoinHandle<Outcome>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let sampler = Arc::new(Sampler {
        every: every.max(1),
        seen: AtomicU64::new(0),
        tx,
    });
    let task = tokio::spawn(async move {
        let latency = Arc::new(Latency::new());
        let polls = Arc::new(AtomicU64::new(0));
        let timed_out = Arc::new(AtomicU64::new(0));
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut skipped = 0;
        let mut watching = tokio::task::JoinSet::new();
        while let Some(sample) = rx.recv().await {
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                skipped += 1;
                continue;
            };
            let (api, device) = (api.clone(), devices[sample.device].id.clone());
            let (latency, polls, timed_out) = (latency.clone(), polls.clone(), timed_out.clone());
            watching.spawn(async move {
                let _slot = slot;
                let waited = watch(&api, &device, &sample, &polls).await;
                if waited.is_none() {
                    timed_out.fetch_add(1, Ordering::Relaxed);
                }
                latency.record_us(waited.unwrap_or(GIVE_UP).as_micros() as u64);
            });
        }
        while watching.join_next().await.is_some() {}
        Outcome {
            latency: Arc::into_inner(latency).unwrap_or_else(Latency::new),
            skipped,
            timed_out: timed_out.load(Ordering::Relaxed),
            polls: polls.load(Ordering::Relaxed),
        }
    });
    (sampler, task)
}

/// Polls until `sample` is stored; the time since it was built, or `None` after
/// [`GIVE_UP`].
async fn watch(api: &Api, device: &str, sample: &Sample, polls: &AtomicU64) -> Option<Duration> {
    loop {
        polls.fetch_add(1, Ordering::Relaxed);
        let seen = matches!(api.latest_ts(device, "k0").await, Ok(Some(ts)) if ts >= sample.ts);
        let waited = sample.at.elapsed();
        if seen {
            return Some(waited);
        }
        if waited >= GIVE_UP {
            return None;
        }
        tokio::time::sleep(next_poll(waited)).await;
    }
}

/// Wait before the next poll, `waited` after the message was built.
fn next_poll(waited: Duration) -> Duration {
    if waited < Duration::from_millis(20) {
        Duration::from_millis(2)
    } else {
        (waited / 10).min(Duration::from_millis(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_are_dense_early_and_proportional_later() {
        assert_eq!(next_poll(Duration::ZERO), Duration::from_millis(2));
        assert_eq!(
            next_poll(Duration::from_millis(19)),
            Duration::from_millis(2)
        );
        assert_eq!(
            next_poll(Duration::from_millis(300)),
            Duration::from_millis(30)
        );
        assert_eq!(
            next_poll(Duration::from_secs(20)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn stride_gives_the_asked_samples() {
        assert_eq!(stride(30_000, 1_200), 25);
        assert_eq!(stride(300_000, 1_200), 250);
        assert_eq!(stride(500, 1_200), 1);
        assert_eq!(stride(0, 0), 1);
    }

    #[tokio::test]
    async fn every_nth_message_is_offered() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = Sampler {
            every: 3,
            seen: AtomicU64::new(0),
            tx,
        };
        let at = Instant::now();
        for i in 0..10 {
            s.offer(i, i as i64, at);
        }
        drop(s);
        let mut got = Vec::new();
        while let Some(sample) = rx.recv().await {
            got.push(sample.device);
        }
        assert_eq!(got, vec![0, 3, 6, 9]);
    }
}
