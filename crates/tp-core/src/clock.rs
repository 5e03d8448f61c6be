//! The one clock every time-driven part runs on (the rule engine's windows and
//! schedules, the broker's online/offline windows): the system's in production, a
//! [`ManualClock`] in tests, so a "held for 60 s" window, a cron rule or a heartbeat
//! timeout is passed by advancing time instead of sleeping through it.
//!
//! ```
//! use std::time::Duration;
//! use tp_core::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(1_000);
//! clock.advance(Duration::from_secs(60));
//! assert_eq!(clock.now_ms(), 61_000);
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::Timestamp;
use async_trait::async_trait;
use tokio::sync::watch;

/// A clock the engine reads and waits on.
#[async_trait]
pub trait Clock: std::fmt::Debug + Send + Sync + 'static {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> Timestamp;
    /// Resolves once [`Self::now_ms`] has reached `deadline`.
    async fn sleep_until(&self, deadline: Timestamp);
}

/// Shared handle to a clock.
pub type ClockRef = Arc<dyn Clock>;

/// Wall-clock time; waits are re-checked at least every minute so a clock step does
/// not leave a timer far off.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now_ms(&self) -> Timestamp {
        crate::now_ms()
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        loop {
            let left = deadline.saturating_sub(crate::now_ms());
            if left <= 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(left.min(60_000) as u64)).await;
        }
    }
}

/// Wall-clock milliseconds that never go backwards: the wall time at creation plus
/// monotonic time since, so an NTP step cannot time out every device at once (the
/// broker's presence windows run on it).
#[derive(Debug)]
pub struct MonotonicClock {
    base_ms: Timestamp,
    start: std::time::Instant,
}

impl MonotonicClock {
    /// A clock starting at the current wall time.
    pub fn new() -> Self {
        Self {
            base_ms: crate::now_ms(),
            start: std::time::Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Clock for MonotonicClock {
    fn now_ms(&self) -> Timestamp {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.base_ms.saturating_add(elapsed)
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        let left = deadline.saturating_sub(self.now_ms());
        if left > 0 {
            tokio::time::sleep(Duration::from_millis(left as u64)).await;
        }
    }
}

/// A clock that only moves when told to; waiters wake as soon as an advance reaches
/// their deadline.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<Timestamp>,
}

impl ManualClock {
    /// A clock standing at `start` (Unix ms).
    pub fn new(start: Timestamp) -> Arc<Self> {
        Arc::new(Self {
            now: watch::Sender::new(start),
        })
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now.send_modify(|t| *t = t.saturating_add(by));
    }

    /// Sets the clock to `to` (never backwards).
    pub fn set(&self, to: Timestamp) {
        self.now.send_modify(|t| *t = (*t).max(to));
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now_ms(&self) -> Timestamp {
        *self.now.borrow()
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        let mut rx = self.now.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|t| *t >= deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_waiters_on_advance() {
        let clock = ManualClock::new(1_000);
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(61_000).await })
        };
        clock.advance(Duration::from_secs(30));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        clock.advance(Duration::from_secs(30));
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(clock.now_ms(), 61_000);
        clock.set(0);
        assert_eq!(clock.now_ms(), 61_000, "never backwards");
        // Past deadlines resolve at once.
        tokio::time::timeout(Duration::from_secs(10), SystemClock.sleep_until(0))
            .await
            .expect("immediate");
        let monotonic = MonotonicClock::new();
        assert!(monotonic.now_ms() <= monotonic.now_ms());
        tokio::time::timeout(Duration::from_secs(10), monotonic.sleep_until(0))
            .await
            .expect("immediate");
    }
}
