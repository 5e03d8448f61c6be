//! Redis [`Cache`]: the shared cache of a multi-node deployment.
//!
//! [`RedisCache::connect`] takes a URL:
//!
//! | URL | Connection |
//! | --- | --- |
//! | `redis://[user:pass@]host[:port][/db]` | one server through a [`ConnectionManager`] (multiplexed, reconnects with backoff) |
//! | `redis+unix:///path/redis.sock` | the same over a Unix socket |
//! | `redis+cluster://[user:pass@]host1:port,host2:port` | a Redis Cluster through [`ClusterConnection`] (seed nodes; slots are discovered) |
//! | `rediss://`, `rediss+cluster://` | TLS; needs a TLS feature of the `redis` crate, which this build does not enable, so such URLs are rejected as invalid |
//!
//! A `prefix` query parameter (`redis://127.0.0.1:6379/?prefix=tp:`) is prepended to
//! every key, so several installations or test runs can share one Redis. It is removed
//! before the URL reaches the `redis` crate; other parameters (`protocol=resp3`, ...)
//! pass through.
//!
//! Commands: `GET`, `SET key value [PX ms]`, `SET key value NX [PX ms]`, `DEL`, `PING`.
//! TTLs are in milliseconds, rounded up to at least 1 ms.
//!
//! Errors: a bad URL is [`Error::Invalid`] on `"redis url"`; a server that cannot be
//! reached (refused, timed out, dropped, cluster down) is [`Error::Unavailable`] naming
//! the address; anything else is [`Error::Backend`]. Passwords never appear in errors or
//! `Debug` output.

pub mod backplane;
mod cache_url;
pub mod leases;

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Client, Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind};
use async_trait::async_trait;
use tp_core::{Cache, Error, Result};

use cache_url::{ParsedUrl, Target, URL_FIELD};

/// Backend name used in errors.
const BACKEND: &str = "redis";
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command may wait for its reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect attempts of the connection manager before a command fails.
const RECONNECT_RETRIES: usize = 3;

/// What went wrong talking to Redis; mapped into [`tp_core::Error`].
#[derive(Debug, thiserror::Error)]
enum RedisCacheError {
    #[error("cannot connect to redis at {addr}: {source}")]
    Connect { addr: String, source: RedisError },
    #[error("redis at {addr}: {source}")]
    Command { addr: String, source: RedisError },
}

/// Whether an error means "the server cannot be reached right now".
fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
            ) | ErrorKind::ClusterConnectionNotFound
        )
}

impl From<RedisCacheError> for Error {
    fn from(e: RedisCacheError) -> Self {
        let (RedisCacheError::Connect { source, .. } | RedisCacheError::Command { source, .. }) =
            &e;
        if is_unavailable(source) {
            Error::Unavailable {
                backend: BACKEND,
                source: Box::new(e),
            }
        } else {
            Error::backend(BACKEND, e)
        }
    }
}

/// The connection behind a [`RedisCache`]; both variants are cheap to clone and
/// multiplex concurrent commands.
#[derive(Clone)]
enum Connection {
    /// One server, reconnecting automatically.
    Single(ConnectionManager),
    /// A cluster; routes each key to its slot's node and follows redirects.
    Cluster(ClusterConnection),
}

/// A [`Cache`] in Redis (single server or cluster). See the [module docs](self).
#[derive(Clone)]
pub struct RedisCache {
    conn: Connection,
    prefix: String,
    addr: String,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("addr", &self.addr)
            .field(
                "mode",
                &match self.conn {
                    Connection::Single(_) => "single",
                    Connection::Cluster(_) => "cluster",
                },
            )
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisCache {
    /// Connects to the Redis server or cluster named by `url` (see the
    /// [module docs](self) for the URL forms) and checks it answers.
    ///
    /// # Errors
    /// [`Error::Invalid`] (field `"redis url"`) for a malformed URL;
    /// [`Error::Unavailable`] naming the address when the server cannot be reached;
    /// [`Error::Backend`] when it refuses the connection (for example bad credentials).
    pub async fn connect(url: &str) -> Result<Self> {
        let ParsedUrl {
            target,
            prefix,
            display,
        } = cache_url::parse(url)?;
        let connect_err = |source| RedisCacheError::Connect {
            addr: display.clone(),
            source,
        };
        let conn = match target {
            Target::Single(url) => {
                let client =
                    Client::open(url).map_err(|e| Error::invalid(URL_FIELD, e.to_string()))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(RECONNECT_RETRIES);
                let manager = ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(connect_err)?;
                Connection::Single(manager)
            }
            Target::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .build()
                    .map_err(|e| Error::invalid(URL_FIELD, e.to_string()))?;
                let conn = client.get_async_connection().await.map_err(connect_err)?;
                Connection::Cluster(conn)
            }
        };
        let cache = Self {
            conn,
            prefix,
            addr: display,
        };
        cache.healthcheck().await?;
        Ok(cache)
    }

    /// The key prefix taken from the URL (empty when none was given).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full Redis key of a cache key.
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs one command on the connection.
    async fn run<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let result = match &self.conn {
            Connection::Single(c) => cmd.query_async(&mut c.clone()).await,
            Connection::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        };
        result.map_err(|source| {
            RedisCacheError::Command {
                addr: self.addr.clone(),
                source,
            }
            .into()
        })
    }
}

/// A TTL as the `PX` argument: whole milliseconds, at least 1.
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `SET key value [NX] [PX ms]`.
fn set_cmd(key: &str, value: &[u8], nx: bool, ttl: Option<Duration>) -> Cmd {
    let mut cmd = ::redis::cmd("SET");
    cmd.arg(key).arg(value);
    if nx {
        cmd.arg("NX");
    }
    if let Some(ttl) = ttl {
        cmd.arg("PX").arg(ttl_millis(ttl));
    }
    cmd
}

#[async_trait]
impl Cache for RedisCache {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn healthcheck(&self) -> Result<()> {
        let _pong: String = self.run(&::redis::cmd("PING")).await?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.run(::redis::cmd("GET").arg(self.key(key))).await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let _ok: Option<String> = self
            .run(&set_cmd(&self.key(key), value, false, ttl))
            .await?;
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        // `OK` when stored, nil when the key exists.
        let reply: Option<String> = self.run(&set_cmd(&self.key(key), value, true, ttl)).await?;
        Ok(reply.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let removed: i64 = self.run(::redis::cmd("DEL").arg(self.key(key))).await?;
        Ok(removed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_commands_use_px_and_nx() {
        let packed = |c: &Cmd| String::from_utf8_lossy(&c.get_packed_command()).into_owned();
        let plain = packed(&set_cmd("k", b"v", false, None));
        assert_eq!(plain, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
        let px = packed(&set_cmd(
            "k",
            b"v",
            false,
            Some(Duration::from_millis(1500)),
        ));
        assert!(px.ends_with("$2\r\nPX\r\n$4\r\n1500\r\n"), "{px}");
        let nx = packed(&set_cmd("k", b"v", true, Some(Duration::from_micros(10))));
        assert!(nx.ends_with("$2\r\nNX\r\n$2\r\nPX\r\n$1\r\n1\r\n"), "{nx}");
    }

    #[tokio::test]
    async fn refused_connection_is_unavailable_and_names_the_address() {
        // Port 1 on loopback: nothing listens there.
        let err = RedisCache::connect("redis://:pw-secret@127.0.0.1:1/?prefix=x:")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Unavailable {
                    backend: "redis",
                    ..
                }
            ),
            "{err:?}"
        );
        let text = format!("{err} {:?}", std::error::Error::source(&err));
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("pw-secret"), "{text}");
    }

    #[tokio::test]
    async fn bad_url_is_invalid() {
        let err = RedisCache::connect("redis//nope").await.unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { field, .. } if field == URL_FIELD),
            "{err:?}"
        );
    }

    /// A cache on `TP_TEST_REDIS_URL` under a fresh key prefix, or `None` to skip.
    async fn test_cache() -> Option<std::sync::Arc<dyn Cache>> {
        let base = tp_core::testing::service_url("TP_TEST_REDIS_URL")?;
        let prefix = format!("tp-test:{}:", uuid::Uuid::new_v4().simple());
        let sep = if base.contains('?') { '&' } else { '?' };
        let cache = RedisCache::connect(&format!("{base}{sep}prefix={prefix}"))
            .await
            .expect("connect to TP_TEST_REDIS_URL");
        assert_eq!(cache.prefix(), prefix);
        Some(std::sync::Arc::new(cache))
    }

    #[tokio::test]
    async fn prefix_isolates_keys() {
        let Some(base) = tp_core::testing::service_url("TP_TEST_REDIS_URL") else {
            return;
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let a = RedisCache::connect(&format!("{base}{sep}prefix={tag}:a:"))
            .await
            .unwrap();
        let b = RedisCache::connect(&format!("{base}{sep}prefix={tag}:b:"))
            .await
            .unwrap();
        a.set("k", b"from-a", None).await.unwrap();
        assert_eq!(b.get("k").await.unwrap(), None);
        assert_eq!(a.get("k").await.unwrap(), Some(b"from-a".to_vec()));
        assert!(a.delete("k").await.unwrap());
    }

    mod conformance {
        tp_core::cache_conformance!(super::test_cache());
    }
}
