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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;

    use super::*;
    use crate::model::{Page, Paged};
    use crate::thing_model::{TemplateId, ThingModelStore};

    /// A store with one template for every profile, counting the lookups.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    #[async_trait]
    impl ThingModelStore for Counting {
        async fn create_template(&self, _: &DeviceTemplate) -> Result<()> {
            Ok(())
        }
        async fn get_template(&self, _: TenantId, _: TemplateId) -> Result<Option<DeviceTemplate>> {
            Ok(None)
        }
        async fn list_templates(&self, _: TenantId, _: Page) -> Result<Paged<DeviceTemplate>> {
            Ok(Paged {
                items: Vec::new(),
                total: 0,
            })
        }
        async fn update_template(&self, _: &DeviceTemplate) -> Result<()> {
            Ok(())
        }
        async fn delete_template(&self, _: TenantId, _: TemplateId) -> Result<()> {
            Ok(())
        }
        async fn template_of_profile(
            &self,
            tenant: TenantId,
            _: ProfileId,
        ) -> Result<Option<DeviceTemplate>> {
            let n = self.0.fetch_add(1, Ordering::AcqRel);
            Ok(Some(DeviceTemplate::new(tenant, &format!("v{n}"))))
        }
    }

    #[tokio::test]
    async fn answers_from_memory_until_invalidated() {
        let store = Arc::new(Counting::default());
        let cache = TemplateCache::new(store.clone(), Duration::from_secs(3600));
        let (tenant, profile) = (TenantId::new(), ProfileId::new());
        let first = cache.for_profile(tenant, profile).await.unwrap().unwrap();
        let again = cache.for_profile(tenant, profile).await.unwrap().unwrap();
        assert_eq!((first.name.as_str(), again.name.as_str()), ("v0", "v0"));
        assert_eq!(store.0.load(Ordering::Acquire), 1, "one store lookup");
        cache.invalidate();
        let fresh = cache.for_profile(tenant, profile).await.unwrap().unwrap();
        assert_eq!(fresh.name, "v1");
        // Another profile is its own entry.
        cache.for_profile(tenant, ProfileId::new()).await.unwrap();
        assert_eq!(store.0.load(Ordering::Acquire), 3);
    }

    #[tokio::test]
    async fn entries_expire() {
        let store = Arc::new(Counting::default());
        let cache = TemplateCache::new(store.clone(), Duration::ZERO);
        let (tenant, profile) = (TenantId::new(), ProfileId::new());
        cache.for_profile(tenant, profile).await.unwrap();
        cache.for_profile(tenant, profile).await.unwrap();
        assert_eq!(store.0.load(Ordering::Acquire), 2);
    }
}
