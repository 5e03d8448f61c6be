//! [`TenantTraffic`]: messages per tenant per minute and per device per hour over
//! the last 24 hours, counted on ingest, for the home page's trends.
//!
//! Why counters and not a query: a day of 1,000 devices at 1 msg/s is 86.4 million
//! stored points; counting them per minute on every page view cannot answer in
//! milliseconds on any of our time-series backends, while a counter bumped per
//! message costs one short lock and answers from memory. The counts are this node's
//! ingest since it started (a node restart starts them again; in a cluster of
//! broker nodes each node counts the devices connected to it), which the API says
//! in its `counted_since` field.

use std::collections::HashMap;
use std::sync::Mutex;

use tp_core::rules::{RuleInput, UplinkObserver};
use tp_core::{DeviceId, TenantId, Timestamp};

/// Minutes of the per-tenant series (24 hours).
pub const MINUTES: usize = 24 * 60;
/// Hours of the per-device counts (24).
pub const HOURS: usize = 24;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// A ring of counters, one slot per period, each stamped with the period it
/// counts (a slot of an older period reads as 0 and is reset when reused).
#[derive(Debug, Clone)]
struct Ring<const N: usize> {
    period: [i64; N],
    count: [u32; N],
}

impl<const N: usize> Ring<N> {
    fn new() -> Self {
        Self {
            period: [i64::MIN; N],
            count: [0; N],
        }
    }

    fn bump(&mut self, period: i64) {
        let slot = period.rem_euclid(N as i64) as usize;
        if self.period[slot] != period {
            self.period[slot] = period;
            self.count[slot] = 0;
        }
        self.count[slot] = self.count[slot].saturating_add(1);
    }

    fn get(&self, period: i64) -> u32 {
        let slot = period.rem_euclid(N as i64) as usize;
        if self.period[slot] == period {
            self.count[slot]
        } else {
            0
        }
    }

    /// The sum of the `N` periods ending with `last`.
    fn total(&self, last: i64) -> u64 {
        (0..N as i64).map(|k| u64::from(self.get(last - k))).sum()
    }
}

#[derive(Debug)]
struct TenantCounts {
    minutes: Box<Ring<MINUTES>>,
    devices: HashMap<DeviceId, Ring<HOURS>>,
}

/// Per-tenant message counters fed by the ingest path (see the module docs).
#[derive(Debug)]
pub struct TenantTraffic {
    tenants: Mutex<HashMap<TenantId, TenantCounts>>,
    started_at: Timestamp,
}

impl Default for TenantTraffic {
    fn default() -> Self {
        Self::new()
    }
}

impl TenantTraffic {
    /// Empty counters, counting from now.
    pub fn new() -> Self {
        Self {
            tenants: Mutex::default(),
            started_at: tp_core::now_ms(),
        }
    }

    /// When counting started (ms).
    pub fn started_at(&self) -> Timestamp {
        self.started_at
    }

    /// Counts one message of `device` of `tenant` received at `at` (ms).
    pub fn record(&self, tenant: TenantId, device: DeviceId, at: Timestamp) {
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let counts = tenants.entry(tenant).or_insert_with(|| TenantCounts {
            minutes: Box::new(Ring::new()),
            devices: HashMap::new(),
        });
        counts.minutes.bump(at.div_euclid(MINUTE_MS));
        counts
            .devices
            .entry(device)
            .or_insert_with(Ring::new)
            .bump(at.div_euclid(HOUR_MS));
    }

    /// Messages of `tenant` per minute for the 1440 minutes ending with the minute
    /// of `now`, oldest first, with the start of the first minute (ms).
    pub fn per_minute(&self, tenant: TenantId, now: Timestamp) -> (Timestamp, Vec<u32>) {
        let last = now.div_euclid(MINUTE_MS);
        let first = last - MINUTES as i64 + 1;
        let tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let series = match tenants.get(&tenant) {
            Some(c) => (first..=last).map(|m| c.minutes.get(m)).collect(),
            None => vec![0; MINUTES],
        };
        (first * MINUTE_MS, series)
    }

    /// The `limit` devices of `tenant` with the most messages in the 24 hours
    /// ending with the hour of `now`, most first (ties by id). Devices without a
    /// message in that window are forgotten here.
    pub fn top_devices(
        &self,
        tenant: TenantId,
        now: Timestamp,
        limit: usize,
    ) -> Vec<(DeviceId, u64)> {
        let last = now.div_euclid(HOUR_MS);
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(counts) = tenants.get_mut(&tenant) else {
            return Vec::new();
        };
        let mut totals: Vec<(DeviceId, u64)> = Vec::with_capacity(counts.devices.len());
        counts.devices.retain(|device, ring| {
            let total = ring.total(last);
            if total > 0 {
                totals.push((*device, total));
            }
            total > 0
        });
        totals.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        totals.truncate(limit);
        totals
    }
}

impl UplinkObserver for TenantTraffic {
    fn observe(&self, input: RuleInput) {
        self.record(input.tenant_id, input.device_id, input.ts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_minute_and_top_devices_over_a_day() {
        let t = TenantTraffic::new();
        let (tenant, other) = (TenantId::new(), TenantId::new());
        let (a, b) = (DeviceId::new(), DeviceId::new());
        let now = 1_700_000_000_000;
        for _ in 0..3 {
            t.record(tenant, a, now);
        }
        t.record(tenant, b, now - MINUTE_MS);
        t.record(tenant, b, now - 23 * HOUR_MS);
        // older than the window: not counted (and its slot is reused)
        t.record(tenant, b, now - 25 * HOUR_MS);
        t.record(other, a, now);
        let (start, series) = t.per_minute(tenant, now);
        assert_eq!(series.len(), MINUTES);
        assert_eq!(series[MINUTES - 1], 3);
        assert_eq!(series[MINUTES - 2], 1);
        assert_eq!(series.iter().map(|&n| u64::from(n)).sum::<u64>(), 5);
        assert_eq!(start, (now / MINUTE_MS - MINUTES as i64 + 1) * MINUTE_MS);
        assert_eq!(t.top_devices(tenant, now, 10), vec![(a, 3), (b, 2)]);
        assert_eq!(t.top_devices(tenant, now, 1), vec![(a, 3)]);
        assert_eq!(t.per_minute(TenantId::new(), now).1, vec![0; MINUTES]);
        // a day later every count has left the window
        assert!(t.top_devices(tenant, now + 25 * HOUR_MS, 10).is_empty());
    }
}
