//! The session-host: holds the `tunnel` clients' WebSockets and answers the tunnels' NATS
//! requests by relaying them over those sockets.
//!
//! A client connects to [`CONNECT_PATH`](tunnel_schemas::frames::CONNECT_PATH) and sends a hello;
//! the host reserves the tunnel name with a lease in JetStream KV ([`leases`]), subscribes to the
//! tunnel's request subject in the tunnel's queue group and welcomes the client ([`session`]).
//! Each NATS request is relayed as a frame on a fresh stream id, each reply frame published to
//! the request's reply subject. Takeover notices and stream frames from ingress arrive on two
//! host-wide subscriptions (`dispatch`) that hand them to the sessions (`registry`). Apart from
//! its sockets the host keeps no state: clients may land on any host.

pub mod config;
mod dispatch;
mod exchanges;
mod hub;
pub mod leases;
mod registry;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tunnel_kit::service::ServiceConfig;
use tunnel_kit::telemetry::PrometheusHandle;
use tunnel_schemas::MAX_FRAME_BYTES;
use tunnel_schemas::frames::CONNECT_PATH;

pub use config::HostConfig;

/// WebSocket read and write buffer per session. The read buffer is kept for the session's life
/// and is also the most read from the socket in one call: 1 KiB would save 7 KiB per idle session
/// but made a 1 GiB download through the tunnel take about half again as much CPU (one read call
/// per KiB), 4 KiB about 13% more. The write buffer starts empty and grows on demand.
const SOCKET_BUFFER_BYTES: usize = 8 << 10;
/// Time sessions get to close beyond their drain grace after shutdown starts.
const CLOSE_MARGIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The lease bucket could not be opened.
    #[error(transparent)]
    Leases(#[from] leases::LeaseError),
    /// NATS refused the host-wide subscriptions.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// Serves clients on `listener` until `shutdown` is cancelled, then closes every session with
/// `going_away` and waits for them.
///
/// # Errors
/// [`HostError`] when the lease bucket cannot be opened or NATS refuses a subscription.
pub async fn run(
    listener: TcpListener,
    nats: async_nats::Client,
    config: HostConfig,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), HostError> {
    let registry = registry::Registry::default();
    // Subscribed before the lease bucket is opened: the server has the subscriptions once
    // JetStream answers on the same connection.
    let dispatch = dispatch::Dispatch::start(&nats, &config.inbox_prefix(), &registry).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let leases = leases::Leases::open(&js, config.lease_ttl(), config.lease_replicas).await?;
    let session_grace = config.drain_grace() + CLOSE_MARGIN;
    let hub = Arc::new(hub::Hub { nats: nats.clone(), leases, config, shutdown: shutdown.clone(), registry });
    let sessions = TaskTracker::new();
    let app = Router::new()
        .route(CONNECT_PATH, get(connect))
        .with_state((hub, sessions.clone()))
        .merge(tunnel_kit::ops::router(metrics, nats));
    tunnel_kit::serve::serve(listener, app, shutdown, tunnel_kit::serve::ServeOptions::default()).await;
    sessions.close();
    if tokio::time::timeout(session_grace, sessions.wait()).await.is_err() {
        tracing::warn!("sessions still open after the grace period");
    }
    dispatch.stop().await;
    Ok(())
}

async fn connect(State((hub, sessions)): State<(Arc<hub::Hub>, TaskTracker)>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        // A task of its own, so that axum's upgrade task, larger than the session, ends at once.
        .on_upgrade(move |socket| {
            sessions.spawn(session::run(hub, socket));
            std::future::ready(())
        })
}
