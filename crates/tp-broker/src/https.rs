//! HTTPS for the node's API server (feature `http`): an axum listener that runs each
//! TLS handshake in its own task, so a slow or silent client blocks nobody.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::tls::{CertificateFiles, SettingNames, TlsConfigError, server_config};

/// How many completed handshakes may wait for the HTTP server to take them.
const HTTPS_BACKLOG: usize = 256;

/// An HTTPS listener for `axum::serve`: accepts TCP, runs each TLS handshake in its
/// own task (bounded by a timeout, so silent clients block nobody) and hands over the
/// finished TLS streams. A plain-HTTP request on the port gets a `400` saying to use
/// HTTPS instead of an unexplained closed connection. Dropping it stops accepting.
#[derive(Debug)]
pub struct HttpsListener {
    local_addr: SocketAddr,
    accepted: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    accept_loop: JoinHandle<()>,
}

impl HttpsListener {
    /// Loads `files` (errors name the settings in `names`) and starts accepting on
    /// `listener`, offering HTTP/1.1 over ALPN.
    ///
    /// # Errors
    /// [`TlsConfigError`] when a file cannot be read or parsed, or the key does not
    /// belong to the certificate.
    pub fn new(
        listener: TcpListener,
        files: &CertificateFiles,
        names: SettingNames,
        handshake_timeout: Duration,
    ) -> Result<Self, TlsConfigError> {
        let config = server_config(&files.cert_path, &files.key_path, names, &[b"http/1.1"])?;
        let local_addr = listener.local_addr().map_err(|e| TlsConfigError {
            setting: names.cert_path,
            message: format!("listener has no address: {e}"),
        })?;
        let (tx, accepted) = mpsc::channel(HTTPS_BACKLOG);
        let accept_loop = tokio::spawn(accept_https(
            listener,
            TlsAcceptor::from(Arc::new(config)),
            tx,
            handshake_timeout,
        ));
        Ok(Self {
            local_addr,
            accepted,
            accept_loop,
        })
    }
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    handshake_timeout: Duration,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let handshake = async {
                let mut first = [0u8; 1];
                match stream.peek(&mut first).await {
                    // A TLS connection starts with a handshake record (type 22).
                    Ok(1) if first[0] != 0x16 => {
                        if first[0].is_ascii_uppercase() {
                            refuse_plain_http(stream).await;
                        }
                        return None;
                    }
                    Ok(1) => {}
                    _ => return None,
                }
                match acceptor.accept(stream).await {
                    Ok(tls) => Some(tls),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                        None
                    }
                }
            };
            match tokio::time::timeout(handshake_timeout, handshake).await {
                Ok(Some(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(None) => {}
                Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
            }
        });
    }
}

/// Answers a plain-HTTP request on the HTTPS port with a `400`, as nginx does.
async fn refuse_plain_http(mut stream: TcpStream) {
    const BODY: &str = "This port speaks HTTPS; use an https:// URL.\n";
    // Read the request head first: closing with unread data would reset the
    // connection and the client might never see the answer.
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf).await;
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    if stream.write_all(response.as_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
        // Drain until the client closes (bounded by the caller's timeout).
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    }
}
