//! Typed configuration of the embedded MQTT broker.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Settings of the embedded broker and its connection layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// MQTT 3.1.1 listen address (flag `--mqtt-listen`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// MQTT 5 listen address (rumqttd serves each protocol version on its own
    /// port); unset = no MQTT 5 listener.
    pub v5_listen: Option<SocketAddr>,
    /// MQTT 3.1.1 over WebSocket listen address; unset = none.
    pub ws_listen: Option<SocketAddr>,
    /// CoAP (UDP) device API listen address, conventionally port 5683 (e.g.
    /// `0.0.0.0:5683`); unset = no CoAP. See [`crate::coap`].
    pub coap_listen: Option<SocketAddr>,
    /// MQTT over TLS: 3.1.1 (conventionally port 8883), 5 and WebSocket (WSS), each
    /// relayed to its plain listener so the same auth, ACL and limits apply; unset =
    /// no TLS. See [`crate::TlsSettings`].
    pub tls: Option<crate::TlsSettings>,
    /// Most device connections this node accepts; further CONNECTs are refused.
    pub max_connections: usize,
    /// Largest accepted PUBLISH payload in bytes; larger ones close the connection.
    pub max_payload_size: usize,
    /// Most MQTT publishes per second one device may send, over all of its
    /// connections (token bucket, bursts of up to twice this). A publish over the
    /// limit is refused before it is acknowledged: the connection is closed and the
    /// device resends after reconnecting. Unset (the default) = unlimited.
    pub max_messages_per_second: Option<u32>,
    /// How long a new TCP connection may take to send CONNECT (ms, at most 65535).
    pub connection_timeout_ms: u16,
    /// Unacknowledged QoS 1/2 messages in flight per connection.
    pub max_inflight_count: usize,
    /// How long a resolved credential stays in the cache (seconds).
    pub credential_cache_ttl_secs: u64,
    /// Size of one segment of the broker's in-memory ingest log (bytes). The log holds
    /// `segment_size * segment_count` bytes of acknowledged messages not yet consumed.
    pub segment_size: usize,
    /// Number of segments of the in-memory ingest log.
    pub segment_count: usize,
    /// The write-ahead log of acknowledged messages (`[mqtt.wal]`), so a killed node
    /// loses nothing it acknowledged. See [`crate::WalConfig`].
    pub wal: crate::WalConfig,
    /// How long a device whose profile sets neither `heartbeat_secs` nor
    /// `online_timeout_secs` stays online after a message when it holds no MQTT
    /// connection (HTTP and CoAP devices, gateway sub-devices). See [`crate::presence`].
    pub http_online_secs: u32,
}

impl BrokerConfig {
    /// Unread bytes the router's ingest log may hold before publishes are refused:
    /// all segments but two, so the segment being written and the one being read are
    /// never the one the router drops when it needs room.
    pub fn max_ingest_backlog_bytes(&self) -> u64 {
        (self.segment_size as u64) * (self.segment_count.max(3) as u64 - 2)
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            v5_listen: None,
            ws_listen: None,
            coap_listen: None,
            tls: None,
            max_connections: 100_000,
            max_payload_size: 256 * 1024,
            max_messages_per_second: None,
            connection_timeout_ms: 10_000,
            max_inflight_count: 100,
            credential_cache_ttl_secs: 300,
            segment_size: 16 * 1024 * 1024,
            segment_count: 8,
            wal: crate::WalConfig::default(),
            http_online_secs: 300,
        }
    }
}
