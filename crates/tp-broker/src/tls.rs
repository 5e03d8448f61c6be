//! TLS for device and user connections: MQTT over TLS (3.1.1 and 5) and MQTT over
//! WebSocket over TLS (WSS) from `mqtt.tls`, and HTTPS for the node's API server
//! ([`HttpsListener`], used by `http.tls`). rustls with the ring provider throughout.
//!
//! MQTT: TLS is terminated in each connection's own task, bounded by the connect
//! timeout, and the decrypted stream goes to the same connection driver as the plain
//! ports ([`crate::connection`]: authentication, ACL, limits), with no relay.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::pem::PemObject};

use crate::BrokerError;
#[cfg(feature = "http")]
pub use crate::https::HttpsListener;

/// MQTT over TLS settings (`mqtt.tls`). At least one of the three listen addresses
/// must be set; they share one certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// MQTT over TLS, conventionally `0.0.0.0:8883` (3.1, 3.1.1 and 5: the level is
    /// read from CONNECT). Port 0 picks a free port. Unset = none.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// A second MQTT-over-TLS port, e.g. `0.0.0.0:8885`, for deployments that give
    /// MQTT 5 its own port (any level is accepted on either). Unset = none.
    #[serde(default)]
    pub v5_listen: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS (`wss://host:port/mqtt`), e.g. `0.0.0.0:8084`.
    /// Unset = none.
    #[serde(default)]
    pub wss_listen: Option<SocketAddr>,
    /// PEM file with the server certificate chain (leaf first).
    pub cert_path: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_path: PathBuf,
}

/// A server certificate and its key as PEM files (`http.tls`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM file with the server certificate chain (leaf first).
    pub cert_path: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_path: PathBuf,
}

/// The names of the settings that hold the certificate and the key, so load errors
/// tell the operator what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingNames {
    /// E.g. `mqtt.tls.cert_path`.
    pub cert_path: &'static str,
    /// E.g. `mqtt.tls.key_path`.
    pub key_path: &'static str,
}

impl SettingNames {
    /// `mqtt.tls.cert_path` / `mqtt.tls.key_path`.
    pub const MQTT: Self = Self {
        cert_path: "mqtt.tls.cert_path",
        key_path: "mqtt.tls.key_path",
    };
    /// `http.tls.cert_path` / `http.tls.key_path`.
    pub const HTTP: Self = Self {
        cert_path: "http.tls.cert_path",
        key_path: "http.tls.key_path",
    };
}

/// A TLS setting that cannot work: unreadable or malformed files, a key that does not
/// belong to the certificate, no listener. Displayed as `<setting>: <problem>`.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct TlsConfigError {
    /// The setting to fix, e.g. `mqtt.tls.cert_path`.
    pub setting: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// Reads and checks the certificate chain and key; `alpn` are the application
/// protocols offered, most preferred first (empty = no ALPN).
pub(crate) fn server_config(
    cert_path: &Path,
    key_path: &Path,
    names: SettingNames,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let read = |path: &Path, setting| {
        std::fs::read(path).map_err(|e| TlsConfigError {
            setting,
            message: format!("cannot read {}: {e}", path.display()),
        })
    };
    let cert_error = |message: String| TlsConfigError {
        setting: names.cert_path,
        message,
    };
    let key_error = |message: String| TlsConfigError {
        setting: names.key_path,
        message,
    };
    let cert_pem = read(cert_path, names.cert_path)?;
    let key_pem = read(key_path, names.key_path)?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("{}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(cert_error(format!(
            "no PEM certificate (\"BEGIN CERTIFICATE\") in {}",
            cert_path.display()
        )));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        key_error(match e {
            rustls::pki_types::pem::Error::NoItemsFound => format!(
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) in {}",
                key_path.display()
            ),
            e => format!("{}: {e}", key_path.display()),
        })
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| cert_error(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => key_error(format!(
            "the key in {} does not belong to the certificate in {}",
            key_path.display(),
            cert_path.display()
        )),
        e => key_error(format!(
            "cannot use {} with {}: {e}",
            key_path.display(),
            cert_path.display()
        )),
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Which kind of TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsPort {
    /// MQTT over TLS (`mqtt.tls.listen`).
    V4,
    /// The second MQTT-over-TLS port (`mqtt.tls.v5_listen`).
    V5,
    /// MQTT over WebSocket over TLS (`mqtt.tls.wss_listen`).
    Ws,
}

/// The listeners of `mqtt.tls`, bound at startup so a taken port or a bad certificate
/// is a startup error, before anything else runs.
pub(crate) struct MqttTlsListeners {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) bound: Vec<(TlsPort, TcpListener, SocketAddr)>,
}

impl MqttTlsListeners {
    /// Loads the certificate and binds every configured TLS listen address.
    pub(crate) fn bind(settings: &TlsSettings) -> Result<Self, BrokerError> {
        let configured = [
            (TlsPort::V4, settings.listen, "mqtt.tls.listen"),
            (TlsPort::V5, settings.v5_listen, "mqtt.tls.v5_listen"),
            (TlsPort::Ws, settings.wss_listen, "mqtt.tls.wss_listen"),
        ];
        if configured.iter().all(|(_, addr, _)| addr.is_none()) {
            return Err(TlsConfigError {
                setting: "mqtt.tls",
                message: "set at least one of listen, v5_listen and wss_listen".into(),
            }
            .into());
        }
        let config = server_config(
            &settings.cert_path,
            &settings.key_path,
            SettingNames::MQTT,
            &[],
        )?;
        let mut bound = Vec::new();
        for (port, addr, setting) in configured {
            if let Some(addr) = addr {
                let (listener, local) = crate::listener::bind(addr, setting)?;
                bound.push((port, listener, local));
            }
        }
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            bound,
        })
    }

    /// The bound address of the TLS listener of kind `port`, if configured.
    pub(crate) fn addr(&self, port: TlsPort) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|(r, _, _)| *r == port)
            .map(|(_, _, addr)| *addr)
    }
}
