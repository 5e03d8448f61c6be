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
    /// A TLS setting cannot work (`mqtt.tls`): unreadable or malformed certificate or
    /// key, a key that does not match, no TLS listener. Names the setting.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    /// The write-ahead log cannot be opened (`mqtt.wal`).
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    /// A store or cache failed.
    #[error(transparent)]
    Core(#[from] tp_core::Error),
}
