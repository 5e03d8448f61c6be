//! The cluster backplane over Redis pub/sub: how the nodes of an embedded-broker
//! cluster tell each other what they cannot do alone.
//!
//! rumqttd has no clustering, so the broker nodes share nothing but Redis and the
//! databases. Three things need the other nodes:
//! - **downlink**: an API node logs a command for a device connected to another
//!   node; it publishes [`ClusterEvent::Downlink`] and the node holding the
//!   connection delivers the device's pending log rows;
//! - **cache invalidation**: a node that deleted a cache key (a device's cached
//!   credentials after it was deleted, disabled or re-keyed) publishes
//!   [`ClusterEvent::CacheInvalidated`]; every node deletes the key again, which
//!   also removes an entry another node re-cached from the old row between the
//!   metadata write and the first delete;
//! - **rules**: [`ClusterEvent::RulesChanged`] makes every node's rule engine
//!   reload a tenant's rules.
//!
//! Pub/sub is fire-and-forget, and that is enough because none of these messages
//! carries state: the command log is the source of truth for downlink (a lost
//! message only delays delivery to the device's next subscribe), cached credentials
//! expire with their TTL, and rule engines reload on a timer too. So a node whose
//! subscription drops reconnects with backoff and simply carries on.
//!
//! All events travel on one channel, `{prefix}tp:cluster` (the `prefix` of the cache
//! URL, so installations and test runs sharing a Redis stay apart), as JSON with the
//! publishing node's id; a node does not hand its own events to its subscribers.
//! Only single-server URLs are supported (`redis://`, `redis+unix://`): pub/sub of
//! a Redis Cluster is not wired up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::{Client, RedisError};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tp_core::cluster::{Backplane, ClusterEvent};
use tp_core::{Error, Result};

use super::cache_url::{self, ParsedUrl, Target, URL_FIELD};
use super::{CONNECT_TIMEOUT, RECONNECT_RETRIES, RESPONSE_TIMEOUT};

/// The channel name (after the URL's prefix).
pub const CHANNEL: &str = "tp:cluster";
/// Events buffered per local subscriber before a slow one misses the oldest.
const LOCAL_BUFFER: usize = 4096;
/// Longest wait between two reconnect attempts of the subscription.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What goes over the wire.
#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: String,
    #[serde(flatten)]
    event: ClusterEvent,
}

#[derive(Debug, thiserror::Error)]
#[error("redis backplane at {addr}: {source}")]
struct BackplaneError {
    addr: String,
    source: RedisError,
}

fn unavailable(addr: &str, source: RedisError) -> Error {
    Error::Unavailable {
        backend: "redis",
        source: Box::new(BackplaneError {
            addr: addr.to_owned(),
            source,
        }),
    }
}

/// A node's connection to the backplane: publishes events and hands the other
/// nodes' events to local subscribers. Dropping it ends the subscription.
pub struct RedisBackplane {
    node_id: String,
    channel: String,
    addr: String,
    publisher: ConnectionManager,
    events: broadcast::Sender<ClusterEvent>,
    subscribed: Arc<AtomicBool>,
    listener: JoinHandle<()>,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("node_id", &self.node_id)
            .field("addr", &self.addr)
            .field("channel", &self.channel)
            .field("subscribed", &self.is_subscribed())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBackplane {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl RedisBackplane {
    /// Connects to the Redis server of the cache URL `url` and subscribes before
    /// returning, so no event published after a node started is missed.
    /// `node_id` must be unique per node (events of the same id are not handed to
    /// local subscribers).
    ///
    /// # Errors
    /// [`Error::Invalid`] (field `"redis url"`) for a malformed or cluster URL;
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn connect(url: &str, node_id: impl Into<String>) -> Result<Self> {
        let ParsedUrl {
            target,
            prefix,
            display: addr,
        } = cache_url::parse(url)?;
        let Target::Single(url) = target else {
            return Err(Error::invalid(
                URL_FIELD,
                "the cluster backplane needs a single Redis server (redis://); \
                 Redis Cluster pub/sub is not supported",
            ));
        };
        let client = Client::open(url).map_err(|e| Error::invalid(URL_FIELD, e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES);
        let publisher = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| unavailable(&addr, e))?;
        let channel = format!("{prefix}{CHANNEL}");
        let pubsub = subscribe(&client, &channel)
            .await
            .map_err(|e| unavailable(&addr, e))?;
        let node_id = node_id.into();
        let (events, _) = broadcast::channel(LOCAL_BUFFER);
        let subscribed = Arc::new(AtomicBool::new(true));
        let listener = tokio::spawn(listen(
            pubsub,
            Listener {
                client,
                channel: channel.clone(),
                addr: addr.clone(),
                node_id: node_id.clone(),
                events: events.clone(),
                subscribed: subscribed.clone(),
            },
        ));
        tracing::info!(addr = %addr, channel = %channel, node_id = %node_id, "cluster backplane subscribed");
        Ok(Self {
            node_id,
            channel,
            addr,
            publisher,
            events,
            subscribed,
            listener,
        })
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    /// This node's id.
    fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Sends `event` to every other node.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when Redis cannot be reached.
    async fn publish(&self, event: &ClusterEvent) -> Result<()> {
        let payload = serde_json::to_vec(&Envelope {
            origin: self.node_id.clone(),
            event: event.clone(),
        })
        .map_err(|e| Error::backend("redis", e))?;
        let _receivers: i64 = ::redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(payload)
            .query_async(&mut self.publisher.clone())
            .await
            .map_err(|e| unavailable(&self.addr, e))?;
        metrics::counter!("tp_backplane_published_total").increment(1);
        Ok(())
    }

    /// The other nodes' events from now on. A receiver more than 4096 events
    /// behind gets `RecvError::Lagged` and misses the oldest.
    fn subscribe(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }

    /// Whether the subscription is currently up (for readiness checks).
    fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }
}

async fn subscribe(client: &Client, channel: &str) -> std::result::Result<PubSub, RedisError> {
    let connect = client.get_async_pubsub();
    let mut pubsub = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
    };
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

struct Listener {
    client: Client,
    channel: String,
    addr: String,
    node_id: String,
    events: broadcast::Sender<ClusterEvent>,
    subscribed: Arc<AtomicBool>,
}

impl Listener {
    fn handle(&self, payload: &[u8]) {
        match serde_json::from_slice::<Envelope>(payload) {
            Ok(env) if env.origin == self.node_id => {}
            Ok(env) => {
                metrics::counter!("tp_backplane_received_total").increment(1);
                // No local subscriber is fine (e.g. before the node wired its handlers).
                let _ = self.events.send(env.event);
            }
            // A newer node may send events this one does not know: skip them.
            Err(e) => tracing::debug!(error = %e, "ignoring unreadable backplane message"),
        }
    }
}

/// Forwards messages until the connection drops, then resubscribes with backoff,
/// forever (the task is aborted when the backplane is dropped).
async fn listen(mut pubsub: PubSub, l: Listener) {
    loop {
        {
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                l.handle(msg.get_payload_bytes());
            }
        }
        l.subscribed.store(false, Ordering::Release);
        tracing::warn!(addr = %l.addr, "cluster backplane subscription lost; reconnecting");
        let mut delay = Duration::from_millis(100);
        pubsub = loop {
            tokio::time::sleep(delay).await;
            match subscribe(&l.client, &l.channel).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(addr = %l.addr, error = %e, "cluster backplane reconnect failed");
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        };
        l.subscribed.store(true, Ordering::Release);
        tracing::info!(addr = %l.addr, "cluster backplane resubscribed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tp_core::{DeviceId, TenantId};

    #[test]
    fn events_have_a_stable_wire_form() {
        let device_id = DeviceId::new();
        let env = Envelope {
            origin: "n1".into(),
            event: ClusterEvent::Downlink {
                device_id,
                message_id: Some("ab12cd34".into()),
            },
        };
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"origin": "n1", "type": "downlink",
                "device_id": device_id.to_string(), "message_id": "ab12cd34"})
        );
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(back.event, env.event);
        let unknown = br#"{"origin":"n2","type":"from_the_future"}"#;
        assert!(serde_json::from_slice::<Envelope>(unknown).is_err());
    }

    #[tokio::test]
    async fn cluster_urls_are_refused() {
        let err = RedisBackplane::connect("redis+cluster://127.0.0.1:1,127.0.0.1:2", "n")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
    }

    /// Two nodes on one Redis: each gets the other's events, not its own, and a
    /// node under another prefix hears nothing.
    #[tokio::test]
    async fn nodes_hear_each_other() {
        let Some(url) = tp_core::testing::service_url("TP_TEST_REDIS_URL") else {
            return;
        };
        let run = uuid::Uuid::new_v4().simple().to_string();
        let sep = if url.contains('?') { '&' } else { '?' };
        let at = |p: &str| format!("{url}{sep}prefix=bp-{p}-{run}:");
        let a = RedisBackplane::connect(&at("x"), "a").await.unwrap();
        let b = RedisBackplane::connect(&at("x"), "b").await.unwrap();
        let other = RedisBackplane::connect(&at("y"), "c").await.unwrap();
        let (mut from_b, mut at_b, mut at_other) =
            (a.subscribe(), b.subscribe(), other.subscribe());
        let tenant_id = TenantId::new();
        a.publish(&ClusterEvent::RulesChanged { tenant_id })
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), at_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, ClusterEvent::RulesChanged { tenant_id });
        let key = "device:cred:u1".to_owned();
        b.publish(&ClusterEvent::CacheInvalidated { key: key.clone() })
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), from_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, ClusterEvent::CacheInvalidated { key });
        // Redis delivers in publish order: had b heard its own event, it would come
        // before this marker.
        let marker = ClusterEvent::RulesChanged {
            tenant_id: TenantId::new(),
        };
        a.publish(&marker).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), at_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next, marker);
        // The other prefix heard none of it: its first event is its neighbour's.
        let neighbour = RedisBackplane::connect(&at("y"), "d").await.unwrap();
        neighbour.publish(&marker).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), at_other.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first, marker);
        assert!(a.is_subscribed() && b.is_subscribed());
    }
}
