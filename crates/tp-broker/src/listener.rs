//! MQTT listeners: sockets bound by us (so port 0 is resolved once, with no probe),
//! an accept loop with our own backlog and no per-accept delay, and per connection
//! TLS and WebSocket terminated in the connection's own task before it is handed to
//! the driver ([`crate::connection`]).
//!
//! Sockets that have not sent CONNECT yet hold a slot of a bounded pool
//! (`max_pending_connections`): a flood of silent sockets is refused at accept
//! instead of growing without bound, and each waits at most `connection_timeout_ms`
//! (TLS and WebSocket handshakes included).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use async_tungstenite::tungstenite::http::HeaderValue;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use ws_stream_tungstenite::WsStream;

use crate::BrokerError;
use crate::connection::{self, Limits};
use crate::session::Shared;

/// Pending connections the kernel queues before we accept them.
const BACKLOG: u32 = 4096;

/// Binds `addr` with our backlog and returns the listener with the address it
/// holds (port 0 resolved); a failure names `setting`.
pub(crate) fn bind(
    addr: SocketAddr,
    setting: &'static str,
) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let bind_error = |source| BrokerError::Bind {
        addr,
        setting,
        source,
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(bind_error)?;
    // As every server does: a restarted node can bind while old connections linger
    // in TIME_WAIT. It does not let two listeners share the port.
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    let listener = socket.listen(BACKLOG).map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

/// What the bytes on a listener's connections are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// MQTT directly on the stream.
    Mqtt,
    /// MQTT in WebSocket binary messages (`ws://host:port/mqtt`).
    WebSocket,
}

/// What every connection of the broker's listeners shares.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) shared: Arc<Shared>,
    pub(crate) limits: Arc<Limits>,
    /// Slots for connections that have not sent CONNECT yet.
    pub(crate) pending: Arc<Semaphore>,
}

/// Starts accepting on `listener`: TLS first when `tls` is set, then `framing`.
pub(crate) fn spawn(
    listener: TcpListener,
    context: Context,
    framing: Framing,
    tls: Option<TlsAcceptor>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for some to close.
                    metrics::counter!("tp_mqtt_accept_errors_total").increment(1);
                    tracing::warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = context.pending.clone().try_acquire_owned() else {
                metrics::counter!("tp_mqtt_pending_refused_total").increment(1);
                tracing::debug!(%peer, "too many connections without CONNECT; refusing one");
                continue;
            };
            let _ = stream.set_nodelay(true);
            // A task holds its future inline for the connection's whole life: a plain
            // connection gets just the driver; the TLS and WebSocket handshakes (large
            // futures) live in their own boxed task so they do not size every task.
            match (&tls, framing) {
                (None, Framing::Mqtt) => {
                    let Context { shared, limits, .. } = context.clone();
                    tokio::spawn(connection::serve(stream, peer, shared, limits, permit));
                }
                _ => {
                    let open = open(stream, peer, context.clone(), framing, tls.clone(), permit);
                    tokio::spawn(Box::pin(open));
                }
            }
        }
    })
}

/// Terminates TLS and WebSocket (within the connect timeout) and runs the driver.
/// Each stage is boxed, so a handshake's space is freed once it is done instead of
/// staying in the connection's task for its whole life.
async fn open(
    stream: TcpStream,
    peer: SocketAddr,
    context: Context,
    framing: Framing,
    tls: Option<TlsAcceptor>,
    permit: OwnedSemaphorePermit,
) {
    let Context { shared, limits, .. } = context;
    let timeout = limits.connect_timeout;
    match (tls, framing) {
        (None, Framing::Mqtt) => connection::serve(stream, peer, shared, limits, permit).await,
        (None, Framing::WebSocket) => {
            if let Some(ws) = Box::pin(websocket(stream, peer, timeout)).await {
                Box::pin(connection::serve(ws, peer, shared, limits, permit)).await;
            }
        }
        (Some(acceptor), framing) => {
            let tls = match tokio::time::timeout(timeout, Box::pin(acceptor.accept(stream))).await {
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
            match framing {
                Framing::Mqtt => {
                    Box::pin(connection::serve(tls, peer, shared, limits, permit)).await
                }
                Framing::WebSocket => {
                    if let Some(ws) = Box::pin(websocket(tls, peer, timeout)).await {
                        Box::pin(connection::serve(ws, peer, shared, limits, permit)).await;
                    }
                }
            }
        }
    }
}

/// The WebSocket upgrade, answering with the `mqtt` subprotocol clients ask for.
async fn websocket<S>(
    stream: S,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<WsStream<async_tungstenite::tokio::TokioAdapter<S>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    match tokio::time::timeout(
        timeout,
        async_tungstenite::tokio::accept_hdr_async(stream, MqttSubprotocol),
    )
    .await
    {
        Ok(Ok(ws)) => Some(WsStream::new(ws)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebSocket handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket handshake timed out");
            None
        }
    }
}

/// MQTT over WebSocket clients ask for the `mqtt` subprotocol and many refuse a
/// handshake that does not name it.
struct MqttSubprotocol;

impl Callback for MqttSubprotocol {
    fn on_request(
        self,
        _request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        Ok(response)
    }
}
