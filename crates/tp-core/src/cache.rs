//! The [`Cache`] contract: a shared key/value cache with TTLs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// A key/value cache shared by every node of a deployment (in-process on one node,
/// Redis in a cluster). Holds hot lookups (credentials -> device), sessions, locks.
///
/// # Contract
/// - `get` after `set` returns the value until the TTL passes or it is deleted.
/// - `set_nx` stores only when the key is absent and says whether it stored.
/// - `delete` says whether a key was removed.
/// - Implementations must pass every case of `tp_core::testing::cache`.
#[async_trait]
pub trait Cache: std::fmt::Debug + Send + Sync + 'static {
    /// Stable backend name.
    fn backend(&self) -> &'static str;
    /// Cheap round trip proving the cache is usable.
    async fn healthcheck(&self) -> Result<()>;
    /// Reads a key.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Writes a key, optionally expiring after `ttl`.
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()>;
    /// Writes a key only if absent; returns whether it was written.
    async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool>;
    /// Removes a key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
}

/// Shared handle to a cache.
pub type CacheRef = Arc<dyn Cache>;

/// JSON helpers over any [`Cache`].
#[async_trait]
pub trait CacheExt: Cache {
    /// Reads and decodes a JSON value; an undecodable entry counts as a miss.
    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        Ok(self
            .get(key)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Encodes and writes a JSON value.
    async fn set_json<T: Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::backend(self.backend(), e))?;
        self.set(key, &bytes, ttl).await
    }
}

impl<T: Cache + ?Sized> CacheExt for T {}
