//! A cache whose health check can be switched off, for readiness tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tp_core::{Cache, Error, Result};
use tp_storage::memory::MemoryCache;

#[derive(Debug)]
pub(crate) struct SwitchableCache {
    inner: MemoryCache,
    pub(crate) down: AtomicBool,
}

impl SwitchableCache {
    pub(crate) fn new() -> Self {
        Self {
            inner: MemoryCache::new(1000),
            down: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl Cache for SwitchableCache {
    fn backend(&self) -> &'static str {
        "switchable"
    }
    async fn healthcheck(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                backend: "switchable",
                source: "switched off by the test".into(),
            });
        }
        self.inner.healthcheck().await
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.inner.set(key, value, ttl).await
    }
    async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        self.inner.set_nx(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(key).await
    }
}
