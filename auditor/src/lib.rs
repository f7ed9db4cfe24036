//! The auditor: consumes the `AUDIT` stream that ingress publishes one event per public request
//! to.
//!
//! It creates the stream when absent, reads it through a durable pull consumer with explicit
//! acks (so an event is acknowledged only after it was handled, and nothing is lost across
//! restarts), and counts the records of each batch (logged one by one at debug level). Usage counters, quotas and replay build on this consumer.

pub mod config;
pub mod stream;

use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tunnel_kit::telemetry::PrometheusHandle;
use tunnel_schemas::audit::{AuditBatch, RequestAudit};

pub use config::AuditorConfig;

/// Consumes audit events until `shutdown` is cancelled, serving the operational routes on
/// `listener`.
///
/// # Errors
/// [`stream::SetupError`] when the stream or consumer cannot be set up.
pub async fn run(
    listener: TcpListener,
    nats: async_nats::Client,
    config: AuditorConfig,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), stream::SetupError> {
    let js = async_nats::jetstream::new(nats.clone());
    let audit = stream::ensure_stream(&js, &config).await?;
    let consumer = stream::ensure_consumer(&audit).await?;
    let ops = tunnel_kit::ops::router(metrics, nats);
    let server = tokio::spawn(tunnel_kit::serve::serve(listener, ops, shutdown.clone(), Default::default()));
    tokio::select! {
        () = consume(&consumer) => {}
        () = shutdown.cancelled() => {}
    }
    let _ = server.await;
    Ok(())
}

/// Reads, handles and acknowledges events; reconnects the pull after errors.
async fn consume(consumer: &async_nats::jetstream::consumer::PullConsumer) {
    loop {
        let mut messages = match consumer.stream().heartbeat(Duration::from_secs(5)).messages().await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull audit events; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "audit pull failed");
                    break;
                }
            };
            record(&message.subject, &message.payload);
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %e, "audit event not acknowledged; it will be redelivered");
            }
        }
    }
}

fn record(subject: &str, payload: &[u8]) {
    if subject.rsplit('.').next() == Some(tunnel_schemas::audit::KIND_ACCESS) {
        // Session events (bind, refusal, revocation): read by the trail, nothing to count here.
        return;
    }
    if subject.rsplit('.').next() == Some(tunnel_schemas::audit::KIND_GAP) {
        // Records that never reached the stream: counted by the ingress that dropped them.
        match tunnel_schemas::decode::<tunnel_schemas::gap::Gap>(payload, usize::MAX) {
            Ok(gap) => tracing::warn!(tunnel = %gap.tunnel, dropped = gap.dropped, "audit records were dropped"),
            Err(e) => tracing::warn!(subject, error = %e, "undecodable audit gap"),
        }
        return;
    }
    // Single records come from ingress nodes older than batching; they may still be in the stream.
    let batch = tunnel_schemas::decode::<AuditBatch>(payload, usize::MAX).or_else(|e| {
        tunnel_schemas::decode::<RequestAudit>(payload, usize::MAX)
            .map(|record| AuditBatch { v: record.v, records: vec![record] })
            .map_err(|_| e)
    });
    match batch {
        Ok(batch) => {
            metrics::counter!("auditor_events_total").increment(batch.records.len() as u64);
            for event in &batch.records {
                tracing::debug!(
                    tunnel = %event.tunnel,
                    request_id = %event.request_id,
                    method = %event.method,
                    path = %event.path,
                    status = event.status,
                    error = event.error.map(|code| code.as_str()),
                    bytes_in = event.bytes_in,
                    bytes_out = event.bytes_out,
                    duration_us = event.duration_us,
                    "audit"
                );
            }
        }
        Err(e) => {
            metrics::counter!("auditor_undecodable_total").increment(1);
            tracing::warn!(subject, error = %e, "undecodable audit batch");
        }
    }
}
