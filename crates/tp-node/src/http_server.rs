//! The node's HTTP accept loop: the REST API, device API and hooks on one listener,
//! with the limits a public endpoint needs and `axum::serve` does not have: a
//! deadline for a request's headers (slow-header clients, "slowloris"), a deadline
//! for its body, and a cap on open connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Limits of the HTTP listener (the `http.*` settings of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HttpLimits {
    /// Seconds a client has to send a request's headers (each request of a
    /// keep-alive connection too); then the connection is closed.
    pub(crate) header_read_timeout_secs: u64,
    /// Seconds a client has to send a request's body; then the request fails (408).
    pub(crate) body_read_timeout_secs: u64,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub(crate) max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_connections: 10_000,
        }
    }
}

/// Serves `app` on `listener` until `stop`, then lets open requests finish (up to
/// `drain`). Handlers see the peer as `ConnectInfo<SocketAddr>`.
pub(crate) async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: HttpLimits,
    stop: CancellationToken,
    drain: Duration,
) where
    L: Listener<Addr = SocketAddr>,
    L::Io: Unpin,
{
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        Duration::from_secs(limits.body_read_timeout_secs.max(1)),
    ));
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs.max(1)));
    builder.http2().timer(TokioTimer::new());
    loop {
        let (io, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Dropping the stream closes it: the client learns at once instead of
            // waiting in a queue, and the node's memory stays bounded.
            metrics::counter!("tp_http_connections_refused_total").increment(1);
            tracing::debug!(%peer, "HTTP connection refused: http.max_connections reached");
            continue;
        };
        let service = app.clone().map_request(move |req: Request<Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the drain timeout");
    }
}
