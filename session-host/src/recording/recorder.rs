//! The hand-off of finished records to the `RECORDINGS` stream.
//!
//! A record is encoded, split into parts that fit a NATS message, and queued whole or not at
//! all in a [`Journal`]: the session never waits. What cannot be queued, or is given up after
//! its retries, is counted (`host_recordings_dropped_total`), logged, and remembered per tunnel
//! as a gap, published with the tunnel's next record so that readers see the hole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::Semaphore;
use tunnel_kit::journal::{Entry, Journal, Outcomes};
use tunnel_schemas::events::TunnelRequest;
use tunnel_schemas::record::{self, KIND_EXCHANGE, KIND_GAP, RecordingGap, owner_key};
use tunnel_schemas::subjects::{RECORDING_STREAM, recording};
use tunnel_schemas::{MAX_FRAME_BYTES, PROTOCOL_VERSION};

use super::budget::TunnelBudgets;
use super::{Capture, Policy};

/// Records (or parts) waiting for the publisher; their memory is bounded by the policy's
/// buffer, this bounds their number.
const QUEUE: usize = 4096;
/// Room left in a NATS message for the headers of a part.
const PART_HEADROOM_BYTES: usize = 8 << 10;

/// Gaps not yet stored, per tunnel, each with whether it is being published.
type Gaps = Arc<Mutex<HashMap<String, (RecordingGap, bool)>>>;

/// The host's recorder.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    journal: Journal,
    policy: Policy,
    /// Memory of captures and queued records.
    budget: Arc<Semaphore>,
    gaps: Gaps,
    part_bytes: usize,
}

impl Recorder {
    /// Ensures the stream (a failure is logged: records are then dropped and counted until it
    /// exists) and starts the publisher on `nats`.
    pub async fn start(nats: &async_nats::Client, policy: Policy) -> Self {
        let js = jetstream::new(nats.clone());
        if let Err(e) = super::ensure_stream(&js, &policy).await {
            tracing::warn!(error = %e, "recording stream unavailable; recordings are dropped until it exists");
        }
        let gaps = Gaps::default();
        let outcomes =
            Stored { gaps: gaps.clone(), budgets: TunnelBudgets::new(policy.max_bytes_per_tunnel), js: js.clone() };
        let (journal, _) = Journal::start(js, QUEUE, outcomes);
        let part_bytes = nats.server_info().max_payload.saturating_sub(PART_HEADROOM_BYTES).max(4096);
        let budget = Arc::new(Semaphore::new(policy.buffer_bytes.min(Semaphore::MAX_PERMITS)));
        Self { inner: Arc::new(Inner { journal, policy, budget, gaps, part_bytes }) }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The recording of one session of `tunnel`, whose records belong to the holder of `secret`.
    pub fn session(&self, tunnel: &str, secret: &str) -> SessionRecording {
        SessionRecording { recorder: self.clone(), tunnel: tunnel.to_owned(), owner: owner_key(secret) }
    }

    fn publish(
        &self,
        tunnel: &str,
        record: &record::ExchangeRecord,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let subject = recording(tunnel, KIND_EXCHANGE);
        let parts = record::split(tunnel_schemas::encode(record).into(), self.inner.part_bytes);
        let count = parts.len();
        let mut entries = Vec::with_capacity(count + 1);
        if let Some((gap, publishing)) =
            self.inner.gaps.lock().unwrap_or_else(PoisonError::into_inner).get_mut(tunnel).filter(|(_, p)| !*p)
        {
            // Stays in the map until stored: a gap is never lost with the record it rides with.
            *publishing = true;
            let payload = tunnel_schemas::encode(&*gap).into();
            let id = uuid::Uuid::now_v7().simple().to_string();
            let count = usize::try_from(gap.dropped).unwrap_or(usize::MAX);
            entries.push(Entry::new(recording(tunnel, KIND_GAP), id, payload, count, tunnel.to_owned()));
        }
        for (index, payload) in parts.into_iter().enumerate() {
            let mut entry = Entry::new(subject.clone(), format!("{id}.{index}"), payload, 1, tunnel.to_owned());
            let mut headers = HeaderMap::new();
            headers.insert(record::RECORD_ID_HEADER, id.as_str());
            if count > 1 {
                headers.insert(record::PART_HEADER, record::part_header(index, count).as_str());
            }
            entry.headers = Some(headers);
            entries.push(entry);
        }
        if let Some(last) = entries.last_mut() {
            last.permit = permit;
        }
        if let Err(entries) = self.inner.journal.try_send(entries) {
            if entries.iter().any(is_gap) {
                gap_settled(&self.inner.gaps, tunnel, 0);
            }
            note_drop(&self.inner.gaps, tunnel);
            tracing::debug!(tunnel, "recording queue full; record dropped");
        }
    }
}

/// The recording of one session.
pub struct SessionRecording {
    recorder: Recorder,
    tunnel: String,
    owner: String,
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
        let (record, permit) = capture.seal(&self.tunnel, &self.owner, &self.recorder.policy().masked);
        self.recorder.publish(&self.tunnel, &record, permit);
    }
}

/// Counts one dropped record of `tunnel`.
fn note_drop(gaps: &Gaps, tunnel: &str) {
    metrics::counter!("host_recordings_dropped_total").increment(1);
    let now = tunnel_trail::filter::now_ms();
    let mut gaps = gaps.lock().unwrap_or_else(PoisonError::into_inner);
    let (gap, _) = gaps.entry(tunnel.to_owned()).or_insert_with(|| {
        let gap = RecordingGap { v: PROTOCOL_VERSION, tunnel: tunnel.to_owned(), dropped: 0, from_ms: now, to_ms: now };
        (gap, false)
    });
    gap.dropped += 1;
    gap.to_ms = now;
}

/// The gap of `tunnel` being published is done: `stored` drops of it are on record (0 when
/// its publish failed: it goes with a later record).
fn gap_settled(gaps: &Gaps, tunnel: &str, stored: u64) {
    let mut gaps = gaps.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((gap, publishing)) = gaps.get_mut(tunnel) {
        *publishing = false;
        gap.dropped = gap.dropped.saturating_sub(stored);
        if gap.dropped == 0 {
            gaps.remove(tunnel);
        }
    }
}

/// Whether `entry` is a gap event rather than (a part of) a record.
fn is_gap(entry: &Entry) -> bool {
    entry.headers.is_none()
}

/// What the publisher reports: stored records count against their tunnel's budget, given-up
/// ones become gaps.
struct Stored {
    gaps: Gaps,
    budgets: TunnelBudgets,
    js: jetstream::Context,
}

impl Outcomes for Stored {
    fn stored(&mut self, entry: &Entry, sequence: u64) {
        if is_gap(entry) {
            gap_settled(&self.gaps, &entry.tag, entry.events as u64);
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
            gap_settled(&self.gaps, &entry.tag, 0);
            return;
        }
        tracing::warn!(tunnel = %entry.tag, error, "record given up");
        // Only the last part of a record counts it (every part of a failed record fails alike).
        if entry.permit.is_some() || entry.headers.as_ref().is_none_or(|h| h.get(record::PART_HEADER).is_none()) {
            note_drop(&self.gaps, &entry.tag);
        }
    }
}
