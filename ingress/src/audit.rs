//! Audit events leave through a bounded queue to one JetStream publisher, so a request never
//! waits for the audit stream. Each event has its own message id: a publish retried after a
//! failed acknowledgement is stored once. What cannot be queued (the stream has been unreachable
//! for long) is counted as dropped, never buffered without bound.

use std::collections::VecDeque;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tunnel_schemas::audit::RequestAudit;

/// Events waiting to be published.
const QUEUE: usize = 16_384;
/// Publishes awaiting their acknowledgement.
const MAX_UNACKED: usize = 512;
/// Publishes of one event before it is given up.
const ATTEMPTS: u8 = 3;

/// Where the proxy hands audit events.
#[derive(Clone)]
pub struct AuditSink {
    queue: mpsc::Sender<Pending>,
}

/// An event on its way.
struct Pending {
    subject: String,
    id: String,
    payload: Bytes,
    attempts: u8,
}

impl AuditSink {
    /// Starts the publisher on `nats`.
    pub fn start(nats: async_nats::Client) -> Self {
        let (queue, events) = mpsc::channel(QUEUE);
        tokio::spawn(publish(jetstream::new(nats), events));
        Self { queue }
    }

    /// Queues `record` for `subject`; drops it (counted) when the queue is full.
    pub fn record(&self, subject: String, record: &RequestAudit) {
        let pending = Pending {
            subject,
            id: uuid::Uuid::now_v7().simple().to_string(),
            payload: tunnel_schemas::encode(record).into(),
            attempts: 0,
        };
        if self.queue.try_send(pending).is_err() {
            metrics::counter!("ingress_audit_dropped_total").increment(1);
        }
    }
}

async fn publish(js: jetstream::Context, mut events: mpsc::Receiver<Pending>) {
    let mut unacked = FuturesUnordered::new();
    let mut retries = VecDeque::new();
    loop {
        let next = tokio::select! {
            Some((acked, pending)) = unacked.next(), if !unacked.is_empty() => {
                if let Err(e) = acked {
                    retry(&mut retries, pending, &e);
                }
                continue;
            }
            pending = events.recv(), if unacked.len() < MAX_UNACKED && retries.is_empty() => match pending {
                Some(pending) => pending,
                None if unacked.is_empty() => return,
                None => continue,
            },
            () = std::future::ready(()), if unacked.len() < MAX_UNACKED && !retries.is_empty() => match retries.pop_front() {
                Some(pending) => pending,
                None => continue,
            },
        };
        match send(&js, &next).await {
            Ok(ack) => unacked.push(async move { (ack.await.map(|_| ()), next) }),
            Err(e) => retry(&mut retries, next, &e),
        }
    }
}

async fn send(
    js: &jetstream::Context,
    pending: &Pending,
) -> Result<PublishAckFuture, jetstream::context::PublishError> {
    let message = PublishMessage::build().message_id(&pending.id).payload(pending.payload.clone());
    js.send_publish(pending.subject.clone(), message).await
}

fn retry(retries: &mut VecDeque<Pending>, mut pending: Pending, error: &dyn std::fmt::Display) {
    pending.attempts += 1;
    if pending.attempts < ATTEMPTS {
        retries.push_back(pending);
    } else {
        metrics::counter!("ingress_audit_dropped_total").increment(1);
        tracing::warn!(error = %error, subject = %pending.subject, "audit event given up");
    }
}
