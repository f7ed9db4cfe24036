//! Audit events leave through a bounded queue to a batcher and the [`Journal`], so a request
//! never waits for the audit stream. Events are batched per subject (one tunnel) for up to
//! [`BATCH_WINDOW`] or [`MAX_BATCH`] events: one stored message per batch instead of one per
//! request is what keeps auditing cheap under load. Each batch has its own message id, so a
//! publish retried after a failed acknowledgement is stored once. What cannot be queued (the
//! stream has been unreachable for long) is counted as dropped, never buffered without bound.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tunnel_kit::journal::{Entry, Journal, Outcomes};
use tunnel_schemas::PROTOCOL_VERSION;
use tunnel_schemas::audit::{AuditBatch, RequestAudit};

/// Events waiting to be batched.
const QUEUE: usize = 16_384;
/// Longest an event waits for its batch to fill.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Most events in one batch.
const MAX_BATCH: usize = 256;
/// Most estimated bytes in one batch, well under the stream's 256 KiB message limit.
const MAX_BATCH_BYTES: usize = 128 << 10;
/// Encoded size of a record beyond its variable fields (names, numbers, framing).
const RECORD_OVERHEAD_BYTES: usize = 192;
/// Sealed batches waiting for the publisher.
const SEALED_QUEUE: usize = 64;

/// Where the proxy hands audit events.
#[derive(Clone)]
pub struct AuditSink {
    queue: mpsc::Sender<(String, RequestAudit)>,
}

impl AuditSink {
    /// Starts the publisher on `nats`.
    pub fn start(nats: async_nats::Client) -> Self {
        let (queue, events) = mpsc::channel(QUEUE);
        let (journal, _) = Journal::start(jetstream::new(nats), SEALED_QUEUE, Dropped);
        tokio::spawn(batch(events, journal));
        Self { queue }
    }

    /// Queues `record` for `subject`; drops it (counted) when the queue is full.
    pub fn record(&self, subject: String, record: RequestAudit) {
        if self.queue.try_send((subject, record)).is_err() {
            metrics::counter!("ingress_audit_dropped_total").increment(1);
        }
    }
}

/// Counts the batches the journal gave up.
struct Dropped;

impl Outcomes for Dropped {
    fn dropped(&mut self, entry: &Entry, error: &str) {
        metrics::counter!("ingress_audit_dropped_total").increment(entry.events as u64);
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

/// The batches being filled, one per subject.
#[derive(Default)]
struct Batches {
    open: HashMap<String, (Vec<RequestAudit>, usize)>,
}

impl Batches {
    /// Adds `record`; returns its batch sealed when that filled it (by count or by size).
    fn add(&mut self, subject: String, record: RequestAudit) -> Option<Entry> {
        let (records, bytes) = self.open.entry(subject.clone()).or_default();
        *bytes += estimated_size(&record);
        records.push(record);
        if records.len() < MAX_BATCH && *bytes < MAX_BATCH_BYTES {
            return None;
        }
        let (records, _) = self.open.remove(&subject)?;
        Some(seal(subject, records))
    }

    /// Seals every open batch.
    fn seal_all(&mut self) -> Vec<Entry> {
        self.open.drain().map(|(subject, (records, _))| seal(subject, records)).collect()
    }

    fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// Batches events until the queue closes; a full journal makes it wait, and the event queue
/// then fills and drops (counted) instead.
async fn batch(mut events: mpsc::Receiver<(String, RequestAudit)>, journal: Journal) {
    let mut open = Batches::default();
    let mut window = tokio::time::interval(BATCH_WINDOW);
    window.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let sealed = tokio::select! {
            event = events.recv() => match event {
                Some((subject, record)) => open.add(subject, record).into_iter().collect(),
                None => open.seal_all(),
            },
            _ = window.tick(), if !open.is_empty() => open.seal_all(),
        };
        for entry in sealed {
            if journal.send(entry).await.is_err() {
                return;
            }
        }
        if events.is_closed() && events.is_empty() && open.is_empty() {
            return;
        }
    }
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

    fn record(path_len: usize) -> RequestAudit {
        RequestAudit {
            v: PROTOCOL_VERSION,
            request_id: uuid::Uuid::now_v7().to_string(),
            tunnel: "demo".into(),
            method: "GET".into(),
            path: format!("/{}", "p".repeat(path_len)),
            status: 200,
            error: None,
            bytes_in: u64::MAX,
            bytes_out: u64::MAX,
            duration_us: u64::MAX,
            remote_addr: "2001:db8::1".into(),
            at_ms: u64::MAX,
        }
    }

    #[test]
    fn batches_seal_by_count_and_by_size_within_the_stream_limit() {
        let mut batches = Batches::default();
        let sealed: Vec<Entry> = (0..MAX_BATCH).filter_map(|_| batches.add("audit.a.req".into(), record(10))).collect();
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].events, MAX_BATCH);
        assert!(batches.is_empty());

        let mut sealed = Vec::new();
        for _ in 0..200 {
            sealed.extend(batches.add("audit.b.req".into(), record(7000)));
        }
        sealed.extend(batches.seal_all());
        assert!(sealed.len() > 1, "long records seal before the count limit");
        assert_eq!(sealed.iter().map(|p| p.events).sum::<usize>(), 200);
        for pending in &sealed {
            assert!(
                pending.payload.len() < 256 << 10,
                "{} bytes would be refused by the stream",
                pending.payload.len()
            );
        }
    }
}
