//! Audit events leave through a bounded queue to a batcher and the [`Journal`], so a request
//! never waits for the audit stream. Events are batched per subject (one tunnel) for up to
//! [`BATCH_WINDOW`] or [`MAX_BATCH`] events: one stored message per batch instead of one per
//! request is what keeps auditing cheap under load. Each batch has its own message id, so a
//! publish retried after a failed acknowledgement is stored once. What cannot be queued (the
//! stream has been unreachable for long) is counted as dropped, never buffered without bound.

use std::time::Duration;

use async_nats::jetstream;
use tunnel_kit::batch::{Batcher, Limits};
use tunnel_kit::gaps::{GapLedger, is_gap};
use tunnel_kit::journal::{Entry, Journal, Outcomes};
use tunnel_schemas::PROTOCOL_VERSION;
use tunnel_schemas::audit::{AuditBatch, KIND_GAP, RequestAudit};
use tunnel_schemas::subjects;

/// Events waiting to be batched.
const QUEUE: usize = 16_384;
/// When a batch is sealed: after 10 ms, at 256 records, or at an estimated 128 KiB, well under
/// the stream's 256 KiB message limit.
const LIMITS: Limits = Limits { window: Duration::from_millis(10), max_items: 256, max_bytes: 128 << 10 };
/// Encoded size of a record beyond its variable fields (names, numbers, framing).
const RECORD_OVERHEAD_BYTES: usize = 192;
/// Sealed batches waiting for the publisher.
const SEALED_QUEUE: usize = 64;

/// Where the proxy hands audit events.
#[derive(Clone)]
pub struct AuditSink {
    batcher: Batcher<RequestAudit>,
    gaps: GapLedger,
}

impl AuditSink {
    /// Starts the publisher on `nats`.
    pub fn start(nats: async_nats::Client) -> Self {
        let gaps = GapLedger::new("ingress_audit_dropped_total");
        let (journal, _) = Journal::start(jetstream::new(nats), SEALED_QUEUE, Dropped { gaps: gaps.clone() });
        let sealing = gaps.clone();
        let seal = move |subject: String, records: Vec<RequestAudit>| {
            let tunnel = records.first().map(|record| record.tunnel.clone()).unwrap_or_default();
            let gap = sealing.entry(&tunnel, subjects::audit_of(&tunnel, KIND_GAP));
            gap.into_iter().chain([seal(subject, records)]).collect()
        };
        Self { batcher: Batcher::start(journal, LIMITS, QUEUE, estimated_size, seal), gaps }
    }

    /// Queues `record` for `subject`; drops it (counted, and reported as a gap) when the queue
    /// is full.
    pub fn record(&self, subject: String, record: RequestAudit) {
        let tunnel = record.tunnel.clone();
        if self.batcher.try_add(subject, record).is_err() {
            self.gaps.note(&tunnel, 1);
        }
    }
}

/// Settles gaps as they are stored, and counts the batches the journal tried again or gave up.
struct Dropped {
    gaps: GapLedger,
}

impl Outcomes for Dropped {
    fn stored(&mut self, entry: &Entry, _sequence: u64) {
        if is_gap(entry) {
            self.gaps.settled(&entry.tag, entry.events as u64);
        }
    }

    fn retrying(&mut self, entry: &Entry, error: &str, wait: Duration) {
        metrics::counter!("ingress_audit_retried_total").increment(1);
        tracing::debug!(error, subject = %entry.subject, ?wait, "audit batch not stored; trying again");
    }

    fn dropped(&mut self, entry: &Entry, error: &str) {
        if is_gap(entry) {
            self.gaps.settled(&entry.tag, 0);
            return;
        }
        self.gaps.note(&entry.tag, entry.events as u64);
        tracing::warn!(error, subject = %entry.subject, events = entry.events, "audit batch given up");
    }
}

/// The journal entry of one batch.
fn seal(subject: String, records: Vec<RequestAudit>) -> Entry {
    let events = records.len();
    let tunnel = records.first().map(|record| record.tunnel.clone()).unwrap_or_default();
    let payload = tunnel_schemas::encode(&AuditBatch { v: PROTOCOL_VERSION, records }).into();
    Entry::new(subject, uuid::Uuid::now_v7().simple().to_string(), payload, events, tunnel)
}

/// An upper estimate of a record's encoded size.
fn estimated_size(record: &RequestAudit) -> usize {
    RECORD_OVERHEAD_BYTES
        + record.request_id.len()
        + record.tunnel.len()
        + record.method.len()
        + record.path.len()
        + record.remote_addr.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RequestAudit {
        RequestAudit {
            v: PROTOCOL_VERSION,
            request_id: uuid::Uuid::now_v7().to_string(),
            tunnel: "demo".into(),
            method: "GET".into(),
            path: format!("/{}", "p".repeat(400)),
            status: 200,
            error: None,
            bytes_in: u64::MAX,
            bytes_out: u64::MAX,
            duration_us: u64::MAX,
            remote_addr: "2001:db8::1".into(),
            at_ms: u64::MAX,
            account: None,
            replay: false,
            head_in: 0,
            head_out: 0,
        }
    }

    #[test]
    fn the_largest_batch_fits_the_stream_limit() {
        let count = (LIMITS.max_bytes / estimated_size(&record())).min(LIMITS.max_items) + 1;
        let entry = seal("audit.demo.req".into(), vec![record(); count]);
        assert!(entry.payload.len() < 256 << 10, "{} bytes would be refused by the stream", entry.payload.len());
        assert!(entry.payload.len() <= count * estimated_size(&record()), "the estimate is an upper bound");
    }
}
