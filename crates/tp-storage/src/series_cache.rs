//! Series ids by device and key, for the SQL time-series stores that key history by
//! an integer series id (`ts_series`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tp_core::{DeviceId, TelemetryPoint};

/// Committed series ids by device and key. Only ever grows: series rows are never
/// deleted, so an entry cannot go stale. A lookup miss is resolved in the database.
///
/// One entry costs about a hundred bytes, so a node writing a million series holds
/// ~100 MB here; the stores' latest-value tables hold the same rows on disk.
#[derive(Debug, Default)]
pub(crate) struct SeriesCache(Mutex<HashMap<DeviceId, HashMap<Box<str>, i64>>>);

/// No series has this id (both stores number series from 1): marks a cache miss.
pub(crate) const MISSING: i64 = 0;

impl SeriesCache {
    fn map(&self) -> MutexGuard<'_, HashMap<DeviceId, HashMap<Box<str>, i64>>> {
        // The map is only ever extended with committed ids: a panic elsewhere cannot
        // leave it inconsistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The id of each point's series ([`MISSING`] for a miss) and the distinct
    /// `(device, key)` pairs that missed, sorted.
    pub(crate) fn ids<'a>(
        &self,
        points: impl ExactSizeIterator<Item = &'a TelemetryPoint>,
    ) -> (Vec<i64>, Vec<(DeviceId, &'a str)>) {
        let mut ids = Vec::with_capacity(points.len());
        let mut missing = Vec::new();
        {
            let map = self.map();
            let mut previous: Option<(&TelemetryPoint, i64)> = None;
            for p in points {
                // Batches come sorted by series (or in runs of a device's keys): a
                // point of the same series as the one before needs no lookup.
                let id = match previous {
                    Some((q, id)) if q.device_id == p.device_id && q.key == p.key => id,
                    _ => map
                        .get(&p.device_id)
                        .and_then(|keys| keys.get(p.key.as_str()))
                        .copied()
                        .unwrap_or_else(|| {
                            missing.push((p.device_id, p.key.as_str()));
                            MISSING
                        }),
                };
                previous = Some((p, id));
                ids.push(id);
            }
        }
        missing.sort_unstable();
        missing.dedup();
        (ids, missing)
    }

    /// Adds committed ids of `device`'s series.
    pub(crate) fn extend(&self, device: DeviceId, keys: impl IntoIterator<Item = (Box<str>, i64)>) {
        self.map().entry(device).or_default().extend(keys);
    }
}
