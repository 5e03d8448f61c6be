//! Typed configuration of the embedded MQTT broker.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Settings of the embedded broker and its connection layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// MQTT listen address (flag `--mqtt-listen`): 3.1, 3.1.1 and 5, the level read
    /// from each CONNECT. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// A second MQTT port, for deployments that give MQTT 5 its own (any level is
    /// accepted on either); unset = none.
    pub v5_listen: Option<SocketAddr>,
    /// MQTT over WebSocket listen address (`ws://host:port/mqtt`); unset = none.
    pub ws_listen: Option<SocketAddr>,
    /// CoAP (UDP) device API listen address, conventionally port 5683 (e.g.
    /// `0.0.0.0:5683`); unset = no CoAP. See [`crate::coap`].
    pub coap_listen: Option<SocketAddr>,
    /// MQTT over TLS (conventionally port 8883) and over WebSocket over TLS (WSS),
    /// served by the same connection driver as the plain ports, so the same auth,
    /// ACL and limits apply; unset = no TLS. See [`crate::TlsSettings`].
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
    /// Most distinct telemetry keys one device may use (the keys the store already
    /// holds for it, read when a node first sees the device, plus new ones); a
    /// message that would exceed it is rejected (nothing of it stored) and counted in
    /// `tp_ingest_key_limit_refused_total`.
    pub max_telemetry_keys_per_device: usize,
    /// How long a new TCP connection may take to send CONNECT, TLS and WebSocket
    /// handshakes included (ms, at most 65535).
    pub connection_timeout_ms: u16,
    /// Most sockets that have not sent CONNECT yet (a pool across all listeners);
    /// further sockets are closed at accept.
    pub max_pending_connections: usize,
    /// Unacknowledged QoS 1 downlink messages in flight per connection; more wait.
    pub max_inflight_count: usize,
    /// How long a persistent session (MQTT 3.1.1 clean_session=0) is kept while its
    /// device is away, and the cap on what MQTT 5 clients ask for (seconds).
    pub session_expiry_secs: u64,
    /// How long a resolved credential stays in the cache (seconds).
    pub credential_cache_ttl_secs: u64,
    /// With `segment_count`, the most bytes of acknowledged messages waiting for the
    /// stores: `segment_size * (segment_count - 2)`; beyond it publishes are refused
    /// before they are acknowledged (backpressure). Consumed messages are freed at once.
    pub segment_size: usize,
    /// See `segment_size`.
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
    /// Unread bytes the ingest queue may hold before publishes are refused (kept as
    /// `segment_size * (segment_count - 2)` so existing settings mean what they did).
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
            max_telemetry_keys_per_device: 1_000,
            connection_timeout_ms: 10_000,
            max_pending_connections: 10_000,
            max_inflight_count: 100,
            session_expiry_secs: 86_400,
            credential_cache_ttl_secs: 300,
            segment_size: 16 * 1024 * 1024,
            segment_count: 8,
            wal: crate::WalConfig::default(),
            http_online_secs: 300,
        }
    }
}
