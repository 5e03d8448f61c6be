//! [`MemoryCache`]: an in-process [`Cache`] for single-node installations and tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::ops::compute::{CompResult, Op};
use tp_core::{Cache, Result};

/// Backend name used in errors and metrics.
const BACKEND: &str = "memory";

/// A cached value with its own TTL.
#[derive(Clone)]
struct Entry {
    value: Arc<[u8]>,
    ttl: Option<Duration>,
    /// Checked on reads as well, so an entry is never served past its TTL even before
    /// moka evicts it.
    expires_at: Option<Instant>,
}

impl Entry {
    fn new(value: &[u8], ttl: Option<Duration>) -> Self {
        Self {
            value: Arc::from(value),
            ttl,
            expires_at: ttl.and_then(|t| Instant::now().checked_add(t)),
        }
    }

    fn is_live(&self) -> bool {
        self.expires_at.is_none_or(|at| Instant::now() < at)
    }
}

/// Per-entry expiry: every `set` (re)starts the entry's own TTL, or clears it.
struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Entry,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        value.ttl
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        value.ttl
    }
}

/// [`Cache`] in process memory, built on `moka`'s concurrent cache.
///
/// Entries expire individually after the TTL given to `set`; when more than
/// `max_capacity` entries are stored, the least useful ones (TinyLFU) are evicted.
/// `set_nx` is atomic per key. Cloning shares the same cache.
#[derive(Clone)]
pub struct MemoryCache {
    inner: moka::future::Cache<String, Entry>,
}

impl MemoryCache {
    /// A cache holding at most `max_capacity` entries.
    pub fn new(max_capacity: u64) -> Self {
        Self {
            inner: moka::future::Cache::builder()
                .max_capacity(max_capacity)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("entries", &self.inner.entry_count())
            .field("max_capacity", &self.inner.policy().max_capacity())
            .finish()
    }
}

#[async_trait]
impl Cache for MemoryCache {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn healthcheck(&self) -> Result<()> {
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .inner
            .get(key)
            .await
            .filter(Entry::is_live)
            .map(|e| e.value.to_vec()))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.inner
            .insert(key.to_owned(), Entry::new(value, ttl))
            .await;
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        let fresh = Entry::new(value, ttl);
        let result = self
            .inner
            .entry(key.to_owned())
            .and_compute_with(|current| async move {
                match current {
                    Some(e) if e.value().is_live() => Op::Nop,
                    _ => Op::Put(fresh),
                }
            })
            .await;
        Ok(matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        ))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.inner.remove(key).await.is_some_and(|e| e.is_live()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    tp_core::cache_conformance!(async { Some(Arc::new(MemoryCache::new(10_000))) });

    #[tokio::test]
    async fn capacity_bounds_the_entry_count() {
        let cache = MemoryCache::new(10);
        for i in 0..1000 {
            cache.set(&format!("k{i}"), b"v", None).await.expect("set");
        }
        cache.inner.run_pending_tasks().await;
        assert!(cache.inner.entry_count() <= 10);
    }
}
