//! Self-signed certificates made at test time (rcgen), for the TLS listeners of the
//! broker (MQTT over TLS) and of a node (HTTPS).

use std::path::{Path, PathBuf};

/// A certificate for `127.0.0.1` and `localhost` with its private key, written to a
/// directory as PEM files.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The certificate (`cert.pem`).
    pub cert_path: PathBuf,
    /// Its private key (`key.pem`).
    pub key_path: PathBuf,
    /// The certificate's PEM, for a client to trust (it is its own CA).
    pub cert_pem: String,
}

/// A fresh self-signed certificate for `127.0.0.1` and `localhost`, written to
/// `dir/cert.pem` and `dir/key.pem`. Each call makes a new key pair, so two
/// certificates never trust each other.
pub fn self_signed(dir: &Path) -> SelfSigned {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_pem = certified.cert.pem();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    SelfSigned {
        cert_path,
        key_path,
        cert_pem,
    }
}
