//! MQTT over TLS (`mqtt.tls`): TLS is terminated here with rustls (ring provider) and
//! each connection is relayed to the plain MQTT 3.1.1 listener, so devices go through
//! the same connection layer (authentication, ACL, limits) as on the plain port.
//!
//! Not rumqttd's own TLS (`use-rustls`): its accept loop runs every TLS handshake
//! inline, without a timeout, so one client that connects and stays silent stalls
//! every later TLS connection; it also pulls a second rustls (0.22). Here each
//! handshake runs in its own task, bounded by `connection_timeout_ms`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::pem::PemObject};

use crate::BrokerError;

/// MQTT over TLS settings (`mqtt.tls`), conventionally on port 8883.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// TLS listen address, e.g. `0.0.0.0:8883`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// PEM file with the server certificate chain (leaf first).
    pub cert_path: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// Loads the certificate and key into a TLS acceptor.
pub(crate) fn acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, BrokerError> {
    let tls_error =
        |path: &Path, what: String| BrokerError::Tls(format!("{}: {what}", path.display()));
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&settings.cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error(&settings.cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_error(
            &settings.cert_path,
            "no certificate in the file".into(),
        ));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&settings.key_path)
        .map_err(|e| tls_error(&settings.key_path, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| BrokerError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| tls_error(&settings.cert_path, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds the TLS listen address.
pub(crate) fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let bind_error = |source| BrokerError::Bind {
        addr,
        setting: "mqtt.tls.listen",
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok((TcpListener::from_std(listener).map_err(bind_error)?, bound))
}

/// Where to relay decrypted connections: the plain listener, over loopback when it
/// listens on all addresses.
pub(crate) fn relay_target(plain: SocketAddr) -> SocketAddr {
    match plain.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, plain.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, plain.port()).into(),
        _ => plain,
    }
}

/// Accepts TLS connections and relays each to `upstream` until either side closes.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    handshake_timeout: Duration,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "MQTT TLS accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut tls =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "MQTT TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "MQTT TLS handshake timed out");
                        return;
                    }
                };
            let mut plain = match TcpStream::connect(upstream).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(%upstream, error = %e, "cannot reach the MQTT listener for a TLS connection");
                    return;
                }
            };
            let _ = plain.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        });
    }
}
