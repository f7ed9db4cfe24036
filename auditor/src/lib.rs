//! The auditor: turns the `AUDIT` stream, which ingress publishes one record per public
//! request to, into exact usage counters and quota decisions.
//!
//! - [`stream`]: the stream (created when absent) and the durable pull consumer `auditor`,
//!   with explicit acks: a message is acknowledged only after everything it counts is stored.
//! - [`lease`]: of several auditors, the one holding the leader lease consumes; the others
//!   stand by and take over when it stops renewing.
//! - [`tally`]: records become increments of counters (per tunnel and per account, per
//!   minute, hour, day and month, UTC), one per stream sequence.
//! - [`counters`]: the counters in KV, each with the sequence of the last message applied to
//!   it, written with compare-and-set: a message is never counted twice nor skipped.
//! - [`quotas`]: after each store, the touched scopes are compared with their limits and the
//!   state every ingress enforces is written when it changes; a change of limits is evaluated
//!   at once.
//!
//! See `docs/usage.md`.

pub mod buckets;
pub mod config;
pub mod counters;
mod counting;
pub mod lease;
pub mod quotas;
pub mod stream;
pub mod tally;

use std::time::Duration;
use tunnel_kit::presence::{self, Node};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tunnel_kit::telemetry::PrometheusHandle;

pub use config::AuditorConfig;

/// How often the consumer's backlog is read for `auditor_consumer_pending`.
const PENDING_POLL: Duration = Duration::from_secs(2);

/// Counts usage (while this auditor leads) until `shutdown` is cancelled, serving the
/// operational routes on `listener`.
///
/// # Errors
/// [`stream::SetupError`] when the stream, the consumer or the buckets cannot be set up.
pub async fn run(
    listener: TcpListener,
    nats: async_nats::Client,
    config: AuditorConfig,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), stream::SetupError> {
    let js = async_nats::jetstream::new(nats.clone());
    let audit = stream::ensure_stream(&js, &config).await?;
    stream::ensure_consumer(&audit).await?;
    let buckets = buckets::Buckets::open(&js, &config).await.map_err(stream::SetupError)?;
    let node = Node { role: "auditor", id: config.node_id.clone(), version: env!("CARGO_PKG_VERSION") };
    tokio::spawn(presence::announce(nats.clone(), node, || None, shutdown.clone()));
    tunnel_kit::telemetry::register_counters(&[
        "auditor_out_of_order_total",
        "auditor_delivery_gaps_total",
        "auditor_undecodable_total",
        "auditor_store_failures_total",
        "nats_slow_consumer_total",
    ]);
    let ops = tunnel_kit::ops::router(metrics, nats);
    let server = tokio::spawn(tunnel_kit::serve::serve(listener, ops, shutdown.clone(), Default::default()));
    tokio::spawn(report_pending(audit.clone(), shutdown.clone()));
    let holder = format!("{}-{}", config.node_id, uuid::Uuid::new_v4().simple());
    counting::serve(counting::Counting::new(audit, buckets, &config), &holder, &shutdown).await;
    let _ = server.await;
    Ok(())
}

/// Sets `auditor_consumer_pending` (messages not yet delivered) and
/// `auditor_consumer_ack_pending` (delivered, not yet acknowledged) from the consumer's info,
/// on every auditor, leader or not: the backlog shows even when none consumes.
async fn report_pending(audit: async_nats::jetstream::stream::Stream, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(PENDING_POLL);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match audit.consumer_info(stream::CONSUMER).await {
            Ok(info) => {
                metrics::gauge!("auditor_consumer_pending").set(info.num_pending as f64);
                metrics::gauge!("auditor_consumer_ack_pending").set(info.num_ack_pending as f64);
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the audit consumer's backlog"),
        }
    }
}
