//! The HTTP accept loop shared by ingress and session-host: HTTP/1.1 and h2c on one port (or
//! HTTPS, HTTP/2 by ALPN, when given a TLS configuration), upgrades (WebSocket) allowed, the peer
//! address available as [`ConnectInfo`], graceful drain on shutdown. TLS handshakes run in the
//! connection's own task under the header timeout, so a slow one never holds the accept loop.
//!
//! `axum::serve` hides hyper's limits; this loop sets them (header count, header read timeout).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Limits and timeouts of the accept loop.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Serve HTTPS with this configuration instead of plain HTTP.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Most header fields hyper parses in one request head (more → 431 from hyper).
    pub max_headers: usize,
    /// Time a client has to send a complete request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Time open connections get to finish after shutdown starts.
    pub grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            max_headers: 1024,
            header_read_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits up to
/// [`ServeOptions::grace`] for open connections to finish.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken, options: ServeOptions) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_headers(options.max_headers)
        .header_read_timeout(options.header_read_timeout)
        .timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let tls = options.tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        match &tls {
            None => {
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
                let handshake_timeout = options.header_read_timeout;
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "tls handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "tls handshake timed out"),
                    };
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(connection.into_owned()).await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(options.grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?options.grace, "connections still open after the grace period; closing them");
    }
}
