//! [`TemplateCache`]: the template of each profile, as the ingest and downlink paths
//! need it, without a store query per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{DeviceTemplate, ThingModelStoreRef};
use crate::Result;
use crate::model::{ProfileId, TenantId};

/// Most profiles remembered before the cache starts over.
const MAX_ENTRIES: usize = 100_000;

/// The template of each profile (or that it has none), remembered for a while.
///
/// The API calls [`TemplateCache::invalidate`] on every template or profile change,
/// so a node that runs the API and the broker sees a change at once; other nodes of
/// a cluster see it when their entry expires (`ttl`).
#[derive(Debug)]
pub struct TemplateCache {
    store: ThingModelStoreRef,
    ttl: Duration,
    entries: Mutex<HashMap<(TenantId, ProfileId), Entry>>,
    /// Bumped by every invalidation, so a load that raced one is not kept.
    generation: AtomicU64,
}

#[derive(Debug, Clone)]
struct Entry {
    template: Option<Arc<DeviceTemplate>>,
    at: Instant,
}

impl TemplateCache {
    /// A cache over `store` whose entries live `ttl`.
    pub fn new(store: ThingModelStoreRef, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            entries: Mutex::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// The store behind the cache.
    pub fn store(&self) -> &ThingModelStoreRef {
        &self.store
    }

    /// The template `profile` refers to, from the cache or the store.
    ///
    /// # Errors
    /// The store's error when the entry had to be loaded and could not be.
    pub async fn for_profile(
        &self,
        tenant: TenantId,
        profile: ProfileId,
    ) -> Result<Option<Arc<DeviceTemplate>>> {
        let generation = {
            let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = map.get(&(tenant, profile))
                && e.at.elapsed() < self.ttl
            {
                return Ok(e.template.clone());
            }
            self.generation.load(Ordering::Acquire)
        };
        let template = self
            .store
            .template_of_profile(tenant, profile)
            .await?
            .map(Arc::new);
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // An invalidation while the store was read makes this answer stale: use it
        // once, do not keep it.
        if self.generation.load(Ordering::Acquire) == generation {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(
                (tenant, profile),
                Entry {
                    template: template.clone(),
                    at: Instant::now(),
                },
            );
        }
        Ok(template)
    }

    /// Forgets every entry (a template or a profile changed).
    pub fn invalidate(&self) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
    }
}
