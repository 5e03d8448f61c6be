//! Tenant trends for the home page: devices online over time (from the status
//! history) and alarms raised and cleared per bucket (from the alarm table), as
//! aggregates the metadata database computes, so an answer costs a few indexed
//! `GROUP BY` queries whatever the number of devices.
//!
//! Messages per minute and the busiest devices are not stored data: the REST API
//! counts them on ingest (`tp_api::TenantTraffic`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{TenantId, Timestamp};

/// Alarms raised and cleared in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlarmBucket {
    /// Bucket number: `[since + k * bucket_ms, since + (k + 1) * bucket_ms)`.
    pub bucket: i64,
    /// Alarms raised in it.
    pub raised: u64,
    /// Alarms cleared in it.
    pub cleared: u64,
}

/// The aggregates behind the home page's trends; every call is scoped to a tenant.
#[async_trait]
pub trait TrendStore: Send + Sync + fmt::Debug {
    /// How many of the tenant's devices are online now.
    async fn online_now(&self, tenant: TenantId) -> Result<u64>;

    /// The net change of the tenant's online devices per bucket since `since`
    /// (`+1` per online transition, `-1` per offline one), as `(bucket, change)` for
    /// the buckets that have transitions, ascending.
    async fn online_changes(
        &self,
        tenant: TenantId,
        since: Timestamp,
        bucket_ms: i64,
    ) -> Result<Vec<(i64, i64)>>;

    /// Alarms raised and cleared per bucket since `since`, for the buckets that have
    /// any, ascending.
    async fn alarm_buckets(
        &self,
        tenant: TenantId,
        since: Timestamp,
        bucket_ms: i64,
    ) -> Result<Vec<AlarmBucket>>;
}

/// Shared handle to a [`TrendStore`].
pub type TrendStoreRef = Arc<dyn TrendStore>;

/// Devices online at the end of each of `buckets` buckets, from the count now and
/// the changes per bucket ([`TrendStore::online_changes`]): walking back from now,
/// each bucket's end count is the next one's minus that next bucket's change.
/// Counts are clamped at 0 (a history trimmed by retention can under-count).
pub fn online_series(now: u64, changes: &[(i64, i64)], buckets: usize) -> Vec<u64> {
    let mut change = vec![0i64; buckets];
    for &(bucket, delta) in changes {
        if let Ok(i) = usize::try_from(bucket)
            && i < buckets
        {
            change[i] += delta;
        }
    }
    let mut out = vec![0u64; buckets];
    let mut count = i64::try_from(now).unwrap_or(i64::MAX);
    for i in (0..buckets).rev() {
        out[i] = u64::try_from(count).unwrap_or(0);
        count -= change[i];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_walks_back_from_now() {
        // 3 online now; bucket 2 saw two come online, bucket 0 one go offline.
        assert_eq!(online_series(3, &[(0, -1), (2, 2)], 4), vec![1, 1, 3, 3]);
        assert_eq!(online_series(0, &[], 3), vec![0, 0, 0]);
        // out-of-range buckets are ignored; negative counts clamp to 0
        assert_eq!(online_series(1, &[(9, 5), (1, 4)], 2), vec![0, 1]);
    }
}
