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

mod access;
mod access_log;
mod admission;
pub mod auth;
pub mod config;
mod dispatch;
mod exchanges;
mod hub;
pub mod jwt;
pub mod leases;
mod policies;
mod quota_notices;
pub mod recording;
mod registry;
mod session;
mod socket;

use std::sync::Arc;
use tunnel_kit::presence::{self, Node};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tunnel_kit::service::ServiceConfig;
use tunnel_kit::telemetry::PrometheusHandle;
use tunnel_schemas::frames::CONNECT_PATH;

pub use config::HostConfig;

/// Time sessions get to close beyond their drain grace after shutdown starts.
const CLOSE_MARGIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The lease bucket could not be opened.
    #[error(transparent)]
    Leases(#[from] leases::LeaseError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tunnel_kit::tls::TlsError),
    /// Clients cannot be admitted as configured.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// The policy bucket could not be opened.
    #[error("cannot open the policy bucket: {0}")]
    Policies(String),
    /// The trace exporter cannot be built.
    #[error(transparent)]
    Traces(#[from] tunnel_kit::traces::TraceError),
    /// NATS refused the host-wide subscriptions.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// Serves clients on `listener` until `shutdown` is cancelled, then closes every session with
/// `going_away` and waits for them.
///
/// # Errors
/// [`HostError`] when the lease or policy bucket cannot be opened or NATS refuses a subscription.
pub async fn run(
    listener: TcpListener,
    nats: async_nats::Client,
    config: HostConfig,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), HostError> {
    let tls = tunnel_kit::tls::from_settings(&config.tls_cert_file, &config.tls_key_file)?;
    let traces = tunnel_kit::traces::Traces::start("session-host", &config.traces)?;
    let registry = registry::Registry::default();
    // Subscribed before the lease bucket is opened: the server has the subscriptions once
    // JetStream answers on the same connection.
    let dispatch = dispatch::Dispatch::start(&nats, &config.inbox_prefix(), &registry).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let leases = leases::Leases::open(&js, config.lease_ttl(), config.lease_replicas).await?;
    let policies = policies::Policies::open(&js, config.lease_replicas).await.map_err(HostError::Policies)?;
    let auth = auth::Auth::open(&js, &config).await?;
    let revocations = tokio::spawn(auth.clone().watch_revocations(registry.clone()));
    let notices = tokio::spawn(quota_notices::relay(js.clone(), registry.clone()));
    let recorder = recording::Recorder::start(&nats, config.record_policy()).await;
    let access_log = access_log::AccessLog::start(&nats);
    tunnel_kit::telemetry::register_counters(&[
        "host_recordings_dropped_total",
        "host_recordings_stored_bytes_total",
        "host_access_events_dropped_total",
        "host_stream_frames_dropped_total",
        "host_requests_refused_total",
        "nats_slow_consumer_total",
    ]);
    let node = Node { role: "session-host", id: config.node_id.clone(), version: env!("CARGO_PKG_VERSION") };
    let counted = registry.clone();
    tokio::spawn(presence::announce(nats.clone(), node, move || Some(counted.sessions()), shutdown.clone()));
    let session_grace = config.drain_grace() + CLOSE_MARGIN;
    let serve_options = tunnel_kit::serve::ServeOptions {
        tls,
        header_read_timeout: config.header_read_timeout(),
        max_connections: config.max_connections,
        gate: Some(admission::Admission::new(&config)),
        ..Default::default()
    };
    let hub = Arc::new(hub::Hub {
        nats: nats.clone(),
        leases,
        config,
        shutdown: shutdown.clone(),
        registry,
        recorder,
        auth,
        access_log,
        policies,
        traces: traces.clone(),
    });
    let sessions = TaskTracker::new();
    let access =
        access::Access { hub: hub.clone(), readers: Arc::new(tokio::sync::Semaphore::new(access::MAX_READERS)) };
    let app = Router::new()
        .route(CONNECT_PATH, get(connect))
        .with_state((hub, sessions.clone()))
        .merge(Router::new().route(access::TRAIL_PATH, get(access::trail)).with_state(access))
        .merge(tunnel_kit::ops::router(metrics, nats))
        .layer(axum::middleware::map_request(admission::release_unless_connect));
    tunnel_kit::serve::serve(listener, app, shutdown, serve_options).await;
    sessions.close();
    if tokio::time::timeout(session_grace, sessions.wait()).await.is_err() {
        tracing::warn!("sessions still open after the grace period");
    }
    dispatch.stop().await;
    revocations.abort();
    notices.abort();
    traces.shutdown().await;
    Ok(())
}

async fn connect(State((hub, sessions)): State<(Arc<hub::Hub>, TaskTracker)>, mut request: Request) -> Response {
    let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0.ip());
    let remote_addr = peer.map(|ip| ip.to_string()).unwrap_or_default();
    let handshake = request.extensions_mut().remove::<tunnel_kit::serve::Ticket>();
    let (deadline, slot) = match handshake.as_ref().and_then(tunnel_kit::serve::Ticket::get::<admission::Handshake>) {
        Some(handshake) => (handshake.deadline, handshake.take_slot()),
        None => (admission::Handshake::uncounted(hub.config.handshake_timeout()).deadline, None),
    };
    let upgrade = match socket::accept(request) {
        Ok(upgrade) => upgrade,
        Err(refusal) => return axum::response::IntoResponse::into_response(refusal),
    };
    sessions.spawn(async move {
        match upgrade.socket.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                session::run(hub, io, remote_addr, admission::Pending { deadline, slot }).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    upgrade.response
}
