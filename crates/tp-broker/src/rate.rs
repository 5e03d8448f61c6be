//! Per-device publish rate limit: one token bucket per device, shared by all of the
//! device's connections (see `BrokerConfig::max_messages_per_second`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tp_core::DeviceId;

/// Buckets beyond this many trigger a sweep of the ones that are full again.
const SWEEP_AT: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by device: `rate` tokens per second, at most `burst` (2 x rate).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<DeviceId, Bucket>>,
    sweep_at: Mutex<usize>,
}

impl RateLimiter {
    /// `per_second` publishes per second and device, bursts of twice that.
    pub(crate) fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            rate,
            burst: rate * 2.0,
            buckets: Mutex::new(HashMap::new()),
            sweep_at: Mutex::new(SWEEP_AT),
        }
    }

    /// Takes one token of `device`'s bucket at `now`; `false` when it is empty.
    pub(crate) fn try_acquire(&self, device: DeviceId, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (rate, burst) = (self.rate, self.burst);
        let bucket = buckets.entry(device).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        // A missing bucket means a full one, so buckets that refilled completely can
        // go: the map holds only recently active devices.
        let mut sweep_at = self.sweep_at.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= *sweep_at {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
            *sweep_at = (buckets.len() * 2).max(SWEEP_AT);
        }
        allowed
    }

    /// Devices with a bucket that is not known to be full.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_to_twice_the_rate_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(5);
        let (a, b) = (DeviceId::new(), DeviceId::new());
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| limiter.try_acquire(a, t0)).count(), 10);
        // another device has its own bucket
        assert_eq!((0..20).filter(|_| limiter.try_acquire(b, t0)).count(), 10);
        // 1 s later: 5 more tokens, never more than the burst
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| limiter.try_acquire(a, t1)).count(), 5);
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| limiter.try_acquire(a, t2)).count(), 10);
    }

    #[test]
    fn full_buckets_are_swept() {
        let limiter = RateLimiter::new(1);
        let t0 = Instant::now();
        for _ in 0..SWEEP_AT - 1 {
            limiter.try_acquire(DeviceId::new(), t0);
        }
        assert_eq!(limiter.tracked(), SWEEP_AT - 1);
        // all of those are full again 2 s later; the sweep keeps only the newest
        limiter.try_acquire(DeviceId::new(), t0 + Duration::from_secs(2));
        assert_eq!(limiter.tracked(), 1);
    }
}
