//! The hand-off of finished records to the `RECORDINGS` stream.
//!
//! A finished record is queued for the tunnel's batch (a [`Batcher`]), never waiting: records
//! that end within 10 ms of each other are stored as one message, so a busy tunnel of small
//! exchanges costs the stream one write per batch. A sealed batch is encoded, split into parts
//! that fit a NATS message, and handed to a [`Journal`]. What cannot be queued, or is given up
//! after its retries, is counted (`host_recordings_dropped_total`), logged, and remembered per
//! tunnel as a gap, published with the tunnel's next batch so that readers see the hole.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tunnel_kit::batch::{Batcher, Limits};
use tunnel_kit::gaps::{GapLedger, is_gap};
use tunnel_kit::journal::{Entry, Journal, Outcomes};
use tunnel_schemas::events::TunnelRequest;
use tunnel_schemas::record::{self, ExchangeRecord, KIND_EXCHANGE, KIND_GAP, RecordBatch, owner_key};
use tunnel_schemas::subjects::{RECORDING_STREAM, recording};
use tunnel_schemas::{MAX_FRAME_BYTES, PROTOCOL_VERSION};

use super::budget::TunnelBudgets;
use super::{Capture, Policy};

/// Records waiting to be batched; their memory is bounded by the policy's buffer, this bounds
/// their number.
const QUEUE: usize = 16_384;
/// Sealed parts waiting for the publisher.
const SEALED_QUEUE: usize = 256;
/// When a tunnel's batch is sealed: after 10 ms, at 256 records, or at an estimated 256 KiB (a
/// record larger than that goes alone).
const LIMITS: Limits = Limits { window: Duration::from_millis(10), max_items: 256, max_bytes: 256 << 10 };
/// Encoded size of a record beyond its bodies and header values (names, numbers, framing).
const RECORD_OVERHEAD_BYTES: usize = 512;
/// Room left in a NATS message for the headers of a part.
const PART_HEADROOM_BYTES: usize = 8 << 10;

/// A finished record and the memory it holds.
type Finished = (ExchangeRecord, Option<OwnedSemaphorePermit>);

/// The host's recorder.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    batcher: Batcher<Finished>,
    policy: Policy,
    /// Memory of captures and queued records.
    budget: Arc<Semaphore>,
    gaps: GapLedger,
}

impl Recorder {
    /// Ensures the stream (a failure is logged: records are then dropped and counted until it
    /// exists) and starts the publisher on `nats`.
    pub async fn start(nats: &async_nats::Client, policy: Policy) -> Self {
        let js = jetstream::new(nats.clone());
        if let Err(e) = super::ensure_stream(&js, &policy).await {
            tracing::error!(error = %e, "recording stream unavailable; recordings are dropped until it exists");
            tokio::spawn(super::stream::retry(js.clone(), policy.clone()));
        }
        let gaps = GapLedger::new("host_recordings_dropped_total");
        let outcomes =
            Stored { gaps: gaps.clone(), budgets: TunnelBudgets::new(policy.max_bytes_per_tunnel), js: js.clone() };
        let (journal, _) = Journal::start(js, SEALED_QUEUE, outcomes);
        let part_bytes = nats.server_info().max_payload.saturating_sub(PART_HEADROOM_BYTES).max(4096);
        let sealing = gaps.clone();
        let seal = move |tunnel: String, finished: Vec<Finished>| seal(&sealing, part_bytes, &tunnel, finished);
        let batcher = Batcher::start(journal, LIMITS, QUEUE, weigh, seal);
        let budget = Arc::new(Semaphore::new(policy.buffer_bytes.min(Semaphore::MAX_PERMITS)));
        Self { inner: Arc::new(Inner { batcher, policy, budget, gaps }) }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The recording of one session of `tunnel` admitted for `account`, whose records belong to
    /// the holder of `secret`; the `secret_headers` of its public-side policy (required header
    /// values) are masked on top of the recording policy's.
    pub fn session(
        &self,
        tunnel: &str,
        secret: &str,
        account: Option<&str>,
        secret_headers: &[String],
    ) -> SessionRecording {
        let mut masked = self.policy().masked.clone();
        masked.extend(secret_headers.iter().filter(|name| !masked.contains(name)).cloned().collect::<Vec<_>>());
        let owner = Owner { tunnel: tunnel.to_owned(), key: owner_key(secret), account: account.map(str::to_owned) };
        SessionRecording { recorder: self.clone(), owner, masked }
    }

    fn publish(&self, tunnel: &str, record: ExchangeRecord, permit: Option<OwnedSemaphorePermit>) {
        if self.inner.batcher.try_add(tunnel.to_owned(), (record, permit)).is_err() {
            self.inner.gaps.note(tunnel, 1);
            tracing::debug!(tunnel, "recording queue full; record dropped");
        }
    }
}

/// An estimate of a finished record's encoded size.
fn weigh((record, _): &Finished) -> usize {
    let headers =
        |headers: &[tunnel_schemas::http::Header]| headers.iter().map(|h| h.0.len() + h.1.len() + 4).sum::<usize>();
    let response = record.response.as_ref().map_or(0, |r| r.body.len() + headers(&r.headers));
    RECORD_OVERHEAD_BYTES
        + record.request.target.len()
        + record.request.body.len()
        + headers(&record.request.headers)
        + response
}

/// The journal entries of a tunnel's batch: its pending gap (when not already being published),
/// then the batch's parts, the last carrying the count of records and the memory they hold.
fn seal(gaps: &GapLedger, part_bytes: usize, tunnel: &str, finished: Vec<Finished>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = gaps.entry(tunnel, recording(tunnel, KIND_GAP)).into_iter().collect();
    let count = finished.len();
    let estimate = finished.iter().map(weigh).sum::<usize>();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut records = Vec::with_capacity(count);
    for (record, permit) in finished {
        records.push(record);
        match (&mut held, permit) {
            (Some(held), Some(permit)) => held.merge(permit),
            (None, permit) => held = permit,
            (Some(_), None) => {}
        }
    }
    let encoded: Bytes = tunnel_schemas::encode_sized(&RecordBatch { v: PROTOCOL_VERSION, records }, estimate).into();
    let parts = record::split(encoded, part_bytes);
    let (id, subject, total) =
        (uuid::Uuid::now_v7().simple().to_string(), recording(tunnel, KIND_EXCHANGE), parts.len());
    for (index, payload) in parts.into_iter().enumerate() {
        let last = index + 1 == total;
        let mut entry = Entry::new(
            subject.clone(),
            format!("{id}.{index}"),
            payload,
            if last { count } else { 0 },
            tunnel.to_owned(),
        );
        let mut headers = HeaderMap::new();
        headers.insert(record::RECORD_ID_HEADER, id.as_str());
        if total > 1 {
            headers.insert(record::PART_HEADER, record::part_header(index, total).as_str());
        }
        entry.headers = Some(headers);
        if last {
            entry.permit = held.take();
        }
        entries.push(entry);
    }
    entries
}

/// Whose records a session's are.
pub struct Owner {
    /// The tunnel name.
    pub tunnel: String,
    /// The owner key of the session's resume secret.
    pub key: String,
    /// The account the session was admitted for.
    pub account: Option<String>,
}

/// The recording of one session.
pub struct SessionRecording {
    recorder: Recorder,
    owner: Owner,
    /// Header names masked in its records.
    masked: Vec<String>,
}

impl SessionRecording {
    /// Starts capturing the request in `payload` (an encoded [`TunnelRequest`]).
    pub fn capture(&self, payload: &Bytes, at_ms: u64) -> Option<Capture> {
        match tunnel_schemas::decode_shared::<TunnelRequest>(payload, MAX_FRAME_BYTES) {
            Ok(request) => {
                let policy = self.recorder.policy();
                Some(Capture::start(request, at_ms, policy.body_bytes, self.recorder.inner.budget.clone()))
            }
            Err(e) => {
                tracing::debug!(error = %e, "request not recorded: undecodable");
                None
            }
        }
    }

    /// Seals `capture` and hands it to the stream.
    pub fn finish(&self, capture: Capture) {
        let (record, permit) = capture.seal(&self.owner, &self.masked);
        self.recorder.publish(&self.owner.tunnel, record, permit);
    }
}

/// What the publisher reports: stored records count against their tunnel's budget, given-up
/// ones become gaps.
struct Stored {
    gaps: GapLedger,
    budgets: TunnelBudgets,
    js: jetstream::Context,
}

impl Outcomes for Stored {
    fn stored(&mut self, entry: &Entry, sequence: u64) {
        if is_gap(entry) {
            self.gaps.settled(&entry.tag, entry.events as u64);
            return;
        }
        metrics::counter!("host_recordings_stored_bytes_total").increment(entry.payload.len() as u64);
        if let Some(below) = self.budgets.stored(&entry.tag, sequence, entry.payload.len() as u64) {
            let (js, subject) = (self.js.clone(), recording(&entry.tag, KIND_EXCHANGE));
            tokio::spawn(async move {
                let purged = match js.get_stream(RECORDING_STREAM).await {
                    Ok(stream) => stream
                        .purge()
                        .filter(subject.clone())
                        .sequence(below)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = purged {
                    tracing::warn!(subject, error = %e, "tunnel over its recording limit not purged");
                }
            });
        }
    }

    fn dropped(&mut self, entry: &Entry, error: &str) {
        if is_gap(entry) {
            self.gaps.settled(&entry.tag, 0);
            return;
        }
        tracing::warn!(tunnel = %entry.tag, error, "recording batch given up");
        // The last part of a batch carries its count of records.
        if entry.events > 0 {
            self.gaps.note(&entry.tag, entry.events as u64);
        }
    }
}
