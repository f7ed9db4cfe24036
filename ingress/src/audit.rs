//! Audit events leave through a bounded queue to one JetStream publisher, so a request never
//! waits for the audit stream. Events are batched per subject (one tunnel) for up to
//! [`BATCH_WINDOW`] or [`MAX_BATCH`] events: one stored message per batch instead of one per
//! request is what keeps auditing cheap under load. Each batch has its own message id, so a
//! publish retried after a failed acknowledgement is stored once. What cannot be queued (the
//! stream has been unreachable for long) is counted as dropped, never buffered without bound.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
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
/// Batches awaiting their acknowledgement.
const MAX_UNACKED: usize = 64;
/// Publishes of one batch before it is given up.
const ATTEMPTS: u8 = 3;

/// Where the proxy hands audit events.
#[derive(Clone)]
pub struct AuditSink {
    queue: mpsc::Sender<(String, RequestAudit)>,
}

impl AuditSink {
    /// Starts the publisher on `nats`.
    pub fn start(nats: async_nats::Client) -> Self {
        let (queue, events) = mpsc::channel(QUEUE);
        tokio::spawn(publish(jetstream::new(nats), events));
        Self { queue }
    }

    /// Queues `record` for `subject`; drops it (counted) when the queue is full.
    pub fn record(&self, subject: String, record: RequestAudit) {
        if self.queue.try_send((subject, record)).is_err() {
            metrics::counter!("ingress_audit_dropped_total").increment(1);
        }
    }
}

/// A sealed batch on its way.
struct Pending {
    subject: String,
    id: String,
    payload: Bytes,
    events: usize,
    attempts: u8,
}

impl Pending {
    fn seal(subject: String, records: Vec<RequestAudit>) -> Self {
        let events = records.len();
        let payload = tunnel_schemas::encode(&AuditBatch { v: PROTOCOL_VERSION, records }).into();
        Self { subject, id: uuid::Uuid::now_v7().simple().to_string(), payload, events, attempts: 0 }
    }
}

/// The batches being filled, one per subject.
#[derive(Default)]
struct Batches {
    open: HashMap<String, (Vec<RequestAudit>, usize)>,
}

impl Batches {
    /// Adds `record`; returns its batch sealed when that filled it (by count or by size).
    fn add(&mut self, subject: String, record: RequestAudit) -> Option<Pending> {
        let (records, bytes) = self.open.entry(subject.clone()).or_default();
        *bytes += estimated_size(&record);
        records.push(record);
        if records.len() < MAX_BATCH && *bytes < MAX_BATCH_BYTES {
            return None;
        }
        let (records, _) = self.open.remove(&subject)?;
        Some(Pending::seal(subject, records))
    }

    /// Seals every open batch.
    fn seal_all(&mut self) -> Vec<Pending> {
        self.open.drain().map(|(subject, (records, _))| Pending::seal(subject, records)).collect()
    }

    fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

async fn publish(js: jetstream::Context, mut events: mpsc::Receiver<(String, RequestAudit)>) {
    let mut open = Batches::default();
    let mut ready: VecDeque<Pending> = VecDeque::new();
    let mut unacked = FuturesUnordered::new();
    let mut window = tokio::time::interval(BATCH_WINDOW);
    window.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut closed = false;
    loop {
        if closed && open.is_empty() && ready.is_empty() && unacked.is_empty() {
            return;
        }
        if unacked.len() < MAX_UNACKED
            && let Some(pending) = ready.pop_front()
        {
            match send(&js, &pending).await {
                Ok(ack) => unacked.push(async move { (ack.await.map(|_| ()), pending) }),
                Err(e) => retry(&mut ready, pending, &e),
            }
            continue;
        }
        tokio::select! {
            Some((acked, pending)) = unacked.next(), if !unacked.is_empty() => {
                if let Err(e) = acked {
                    retry(&mut ready, pending, &e);
                }
            }
            event = events.recv(), if !closed => match event {
                Some((subject, record)) => ready.extend(open.add(subject, record)),
                None => {
                    closed = true;
                    ready.extend(open.seal_all());
                }
            },
            _ = window.tick(), if !open.is_empty() => ready.extend(open.seal_all()),
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

async fn send(
    js: &jetstream::Context,
    pending: &Pending,
) -> Result<PublishAckFuture, jetstream::context::PublishError> {
    let message = PublishMessage::build().message_id(&pending.id).payload(pending.payload.clone());
    js.send_publish(pending.subject.clone(), message).await
}

fn retry(ready: &mut VecDeque<Pending>, mut pending: Pending, error: &dyn std::fmt::Display) {
    pending.attempts += 1;
    if pending.attempts < ATTEMPTS {
        ready.push_back(pending);
    } else {
        metrics::counter!("ingress_audit_dropped_total").increment(pending.events as u64);
        tracing::warn!(error = %error, subject = %pending.subject, events = pending.events, "audit batch given up");
    }
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
        let sealed: Vec<Pending> =
            (0..MAX_BATCH).filter_map(|_| batches.add("audit.a.req".into(), record(10))).collect();
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
