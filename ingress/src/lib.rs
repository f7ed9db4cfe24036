//! The ingress: the public HTTP front of http-tunnel.
//!
//! A public request is routed to a tunnel by its Host (`<name>.<domain>`) or its path
//! (`/t/<name>/…`), checked against the limits, turned into a MessagePack
//! [`TunnelRequest`](tunnel_schemas::events::TunnelRequest) and sent as a NATS request on the
//! tunnel's subject. The session-host holding the tunnel answers; ingress turns the answer back
//! into an HTTP response. Ingress keeps no state: run as many as the load needs.
//!
//! Requests that name no tunnel reach the operational routes (`/healthz`, `/readyz`,
//! `/metrics`) or get a 404 `no_tunnel_name` page.

mod audit;
mod client_addr;
pub mod config;
mod error_page;
mod exchange;
mod headers;
mod host_watch;
mod limits;
mod policies;
mod proxy;
mod quotas;
mod redirect;
mod request_id;
mod resume;
mod routing;
mod streams;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tunnel_kit::presence::{self, Node};

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tunnel_kit::service::ServiceConfig;
use tunnel_kit::telemetry::PrometheusHandle;

pub use config::IngressConfig;
pub use error_page::ERROR_HEADER;

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// NATS refused the stream subscription.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tunnel_kit::tls::TlsError),
    /// The redirect listener cannot be bound.
    #[error("cannot listen on {0}: {1}")]
    Redirect(String, std::io::Error),
    /// The trace exporter cannot be built.
    #[error(transparent)]
    Traces(#[from] tunnel_kit::traces::TraceError),
}

/// Serves public requests on `listener` (HTTPS when the configuration names a certificate)
/// until `shutdown` is cancelled; then `/readyz` fails for `unready_before_stop_secs` while
/// requests are still served, and the node stops accepting and drains open connections.
///
/// # Errors
/// [`IngressError`] when the stream subscription cannot be made, the certificate cannot be used
/// or the redirect listener cannot be bound.
pub async fn run(
    listener: TcpListener,
    nats: async_nats::Client,
    config: IngressConfig,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), IngressError> {
    let tls = tunnel_kit::tls::from_settings(&config.tls_cert_file, &config.tls_key_file)?;
    let redirect = if config.redirect_listen.is_empty() {
        None
    } else {
        let listen = config.redirect_listen.clone();
        let listener = TcpListener::bind(&listen).await.map_err(|e| IngressError::Redirect(listen, e))?;
        let options = tunnel_kit::serve::ServeOptions::default();
        Some(tokio::spawn(tunnel_kit::serve::serve(
            listener,
            redirect::router(config.redirect_https_port),
            shutdown.clone(),
            options,
        )))
    };
    let traces = tunnel_kit::traces::Traces::start("ingress", &config.traces)?;
    let policies = policies::PolicyBook::start(&nats);
    tunnel_kit::telemetry::register_counters(&[
        "ingress_audit_dropped_total",
        "ingress_audit_retried_total",
        "ingress_requests_unacknowledged_total",
        "ingress_requests_awaiting_tunnel_total",
        "ingress_answers_lost_total",
        "ingress_stream_frames_dropped_total",
        "nats_slow_consumer_total",
    ]);
    for code in [tunnel_schemas::ErrorCode::TunnelDisconnected, tunnel_schemas::ErrorCode::HostUnresponsive] {
        metrics::counter!("ingress_hosts_lost_total", "code" => code.as_str()).increment(0);
    }
    let node = Node { role: "ingress", id: config.node_id.clone(), version: env!("CARGO_PKG_VERSION") };
    tokio::spawn(presence::announce(nats.clone(), node, || None, shutdown.clone()));
    let loaded = policies.clone();
    // On shutdown, /readyz fails first, so that load balancers stop sending new requests while
    // this node still serves them; only then does it stop accepting and drain.
    let stop_accepting = CancellationToken::new();
    let leaving = Arc::new(AtomicBool::new(false));
    tokio::spawn(unready_then_stop(
        shutdown.clone(),
        leaving.clone(),
        Duration::from_secs(config.unready_before_stop_secs),
        stop_accepting.clone(),
    ));
    let ready = move || {
        if leaving.load(Ordering::Relaxed) {
            return Err("shutting down");
        }
        loaded.applied().map(|_| ()).ok_or("tunnel policies not loaded yet")
    };
    let ops = tunnel_kit::ops::router_with(metrics, nats.clone(), ready).fallback(no_tunnel_name);
    let host_timeout = Duration::from_millis(config.host_timeout_ms);
    let streams = streams::StreamHub::start(&nats, &config.inbox_prefix(), host_timeout).await?;
    let header_read_timeout = Duration::from_secs(config.header_read_timeout_secs);
    let max_connections = config.max_connections;
    let proxy = proxy::Proxy::new(nats, config, ops, streams, policies, traces.clone());
    let app = Router::new().fallback(proxy::handle).with_state(proxy);
    let options = tunnel_kit::serve::ServeOptions { tls, header_read_timeout, max_connections, ..Default::default() };
    tunnel_kit::serve::serve(listener, app, stop_accepting, options).await;
    if let Some(redirect) = redirect {
        let _ = redirect.await;
    }
    traces.shutdown().await;
    Ok(())
}

/// On `shutdown`: marks the node `leaving` (its `/readyz` fails), waits `unready`, then stops
/// accepting.
async fn unready_then_stop(
    shutdown: CancellationToken,
    leaving: Arc<AtomicBool>,
    unready: Duration,
    stop_accepting: CancellationToken,
) {
    shutdown.cancelled().await;
    leaving.store(true, Ordering::Relaxed);
    tracing::info!(?unready, "unready; still serving until load balancers have noticed");
    tokio::time::sleep(unready).await;
    stop_accepting.cancel();
}

async fn no_tunnel_name(headers: axum::http::HeaderMap) -> axum::response::Response {
    let id = request_id::request_id(&headers);
    error_page::error_response(tunnel_schemas::ErrorCode::NoTunnelName, &id, error_page::wants_json(&headers))
}
