//! Errors of the broker crate.

/// What can go wrong starting or running the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The listen address cannot be bound.
    #[error("cannot listen for devices on {addr}: {source} (change it with {setting})")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The setting or flag that chose it.
        setting: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be loaded (`mqtt.tls`).
    #[error("MQTT TLS: {0}")]
    Tls(String),
    /// The embedded router refused our internal link.
    #[error("embedded MQTT router: {0}")]
    Router(String),
    /// A store or cache failed.
    #[error(transparent)]
    Core(#[from] tp_core::Error),
}
