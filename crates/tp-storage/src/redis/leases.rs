//! Device ownership leases in Redis ([`DeviceLeases`]): which broker node serves
//! which device, so that when a node dies another one marks its devices offline,
//! exactly once.
//!
//! Keys (after the cache URL's `prefix`, like the backplane channel, so clusters
//! sharing a Redis stay apart):
//!
//! | key | type | what |
//! |---|---|---|
//! | `tp:lease:node:{node}` | string with a TTL | the node's lease, renewed every third of the lease time |
//! | `tp:lease:nodes` | set | nodes that own (or owned) devices |
//! | `tp:lease:owner` | hash | device id → the node serving it |
//! | `tp:lease:devices:{node}` | set | the devices a node claimed |
//!
//! Every change is one Lua script, so it is atomic: a device that moves to another
//! node leaves its old node's set in the same step, and reaping a lost node (its
//! lease key gone) removes its sets in the same step that returns them; a second
//! node running the same script afterwards finds nothing. That is the "exactly
//! once": no separate "reaped" marker is needed.
//!
//! The scripts build key names from the prefix, so they need a single Redis server
//! (as the backplane does), not a Redis Cluster.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script};
use async_trait::async_trait;
use tp_core::cluster::DeviceLeases;
use tp_core::{DeviceId, Error, Result};

use super::cache_url::{self, ParsedUrl, Target, URL_FIELD};
use super::{CONNECT_TIMEOUT, RECONNECT_RETRIES, RESPONSE_TIMEOUT};

/// Moves devices to (`1`) or off (`0`) this node: ARGV = prefix, node, then pairs.
const RECORD: &str = r"
local p, node = ARGV[1], ARGV[2]
local owner = p .. 'tp:lease:owner'
local mine = p .. 'tp:lease:devices:' .. node
redis.call('SADD', p .. 'tp:lease:nodes', node)
for i = 3, #ARGV, 2 do
  local d, on = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', owner, d)
  if on == '1' then
    if cur and cur ~= node then
      redis.call('SREM', p .. 'tp:lease:devices:' .. cur, d)
    end
    redis.call('HSET', owner, d, node)
    redis.call('SADD', mine, d)
  else
    if cur == node then
      redis.call('HDEL', owner, d)
    end
    redis.call('SREM', mine, d)
  end
end
return 0
";

/// Takes every device a node still owns: ARGV = prefix, node, `lost` (only if its
/// lease is gone; then the node is forgotten too) or `own`. Returns the devices, or
/// nil when the node's lease is alive (`lost`).
const TAKE: &str = r"
local p, node, mode = ARGV[1], ARGV[2], ARGV[3]
if mode == 'lost' and redis.call('EXISTS', p .. 'tp:lease:node:' .. node) == 1 then
  return false
end
local owner = p .. 'tp:lease:owner'
local set = p .. 'tp:lease:devices:' .. node
local out = {}
for _, d in ipairs(redis.call('SMEMBERS', set)) do
  if redis.call('HGET', owner, d) == node then
    redis.call('HDEL', owner, d)
    table.insert(out, d)
  end
end
redis.call('DEL', set)
if mode == 'lost' then
  redis.call('SREM', p .. 'tp:lease:nodes', node)
end
return out
";

/// Renews a lease: ARGV = prefix, node, lease ms. Returns 1 when it was still held.
const RENEW: &str = r"
local p, node, ms = ARGV[1], ARGV[2], ARGV[3]
local held = redis.call('SET', p .. 'tp:lease:node:' .. node, '1', 'PX', ms, 'GET')
redis.call('SADD', p .. 'tp:lease:nodes', node)
if held then return 1 else return 0 end
";

#[derive(Debug, thiserror::Error)]
#[error("redis device leases at {addr}: {source}")]
struct LeaseError {
    addr: String,
    source: RedisError,
}

/// [`DeviceLeases`] in Redis. See the [module docs](self).
pub struct RedisLeases {
    node_id: String,
    prefix: String,
    lease: Duration,
    addr: String,
    conn: ConnectionManager,
    record: Script,
    take: Script,
    renew: Script,
}

impl std::fmt::Debug for RedisLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLeases")
            .field("node_id", &self.node_id)
            .field("addr", &self.addr)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl RedisLeases {
    /// Connects to the Redis server of the cache URL `url` (its `prefix` applies)
    /// for node `node_id`, whose lease lasts `lease` without renewal.
    ///
    /// # Errors
    /// [`Error::Invalid`] (field `"redis url"`) for a malformed or cluster URL;
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn connect(url: &str, node_id: impl Into<String>, lease: Duration) -> Result<Self> {
        let ParsedUrl {
            target,
            prefix,
            display: addr,
        } = cache_url::parse(url)?;
        let Target::Single(url) = target else {
            return Err(Error::invalid(
                URL_FIELD,
                "device leases need a single Redis server (redis://); Redis Cluster is not supported",
            ));
        };
        let client = Client::open(url).map_err(|e| Error::invalid(URL_FIELD, e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| unavailable(&addr, e))?;
        Ok(Self {
            node_id: node_id.into(),
            prefix,
            lease: lease.max(Duration::from_millis(100)),
            addr,
            conn,
            record: Script::new(RECORD),
            take: Script::new(TAKE),
            renew: Script::new(RENEW),
        })
    }

    fn unavailable(&self, e: RedisError) -> Error {
        unavailable(&self.addr, e)
    }

    async fn take(&self, node: &str, mode: &str) -> Result<Option<Vec<DeviceId>>> {
        let ids: Option<Vec<String>> = self
            .take
            .arg(&self.prefix)
            .arg(node)
            .arg(mode)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(ids.map(|ids| ids.iter().filter_map(|s| s.parse().ok()).collect()))
    }
}

fn unavailable(addr: &str, source: RedisError) -> Error {
    Error::Unavailable {
        backend: "redis",
        source: Box::new(LeaseError {
            addr: addr.to_owned(),
            source,
        }),
    }
}

#[async_trait]
impl DeviceLeases for RedisLeases {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    async fn renew(&self) -> Result<bool> {
        let ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let held: i64 = self
            .renew
            .arg(&self.prefix)
            .arg(&self.node_id)
            .arg(ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(held == 1)
    }

    async fn record(&self, changes: &[(DeviceId, bool)]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut invocation = self.record.arg(&self.prefix);
        invocation.arg(&self.node_id);
        for (id, online) in changes {
            invocation
                .arg(id.to_string())
                .arg(if *online { "1" } else { "0" });
        }
        let _: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(())
    }

    async fn reap_lost(&self) -> Result<Vec<(String, Vec<DeviceId>)>> {
        let nodes: Vec<String> = ::redis::cmd("SMEMBERS")
            .arg(format!("{}tp:lease:nodes", self.prefix))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut lost = Vec::new();
        for node in nodes.into_iter().filter(|n| *n != self.node_id) {
            if let Some(devices) = self.take(&node, "lost").await? {
                lost.push((node, devices));
            }
        }
        Ok(lost)
    }

    async fn take_own(&self) -> Result<Vec<DeviceId>> {
        Ok(self.take(&self.node_id, "own").await?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(lease: Duration) -> Option<(RedisLeases, RedisLeases)> {
        let url = tp_core::testing::service_url("TP_TEST_REDIS_URL")?;
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{url}{sep}prefix=tp-lease-test-{}:",
            tp_core::random_token(6)
        );
        Some((
            RedisLeases::connect(&url, "a", lease).await.unwrap(),
            RedisLeases::connect(&url, "b", lease).await.unwrap(),
        ))
    }

    #[tokio::test]
    async fn a_lost_node_is_reaped_once_and_moved_devices_are_not_in_it() {
        let Some((a, b)) = pair(Duration::from_millis(300)).await else {
            return;
        };
        let (d1, d2, d3) = (DeviceId::new(), DeviceId::new(), DeviceId::new());
        assert!(
            !a.renew().await.unwrap(),
            "no lease before the first renewal"
        );
        assert!(a.renew().await.unwrap());
        b.renew().await.unwrap();
        a.record(&[(d1, true), (d2, true), (d3, true)])
            .await
            .unwrap();
        a.record(&[(d3, false)]).await.unwrap();
        // d2 moves to b.
        b.record(&[(d2, true)]).await.unwrap();
        assert!(
            b.reap_lost().await.unwrap().is_empty(),
            "a's lease is alive"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        b.renew().await.unwrap();
        let reaped = b.reap_lost().await.unwrap();
        assert_eq!(reaped, vec![("a".to_owned(), vec![d1])]);
        assert!(b.reap_lost().await.unwrap().is_empty(), "only once");
        // A restarted b takes back what its previous run owned.
        assert_eq!(b.take_own().await.unwrap(), vec![d2]);
        assert!(b.take_own().await.unwrap().is_empty());
    }
}
