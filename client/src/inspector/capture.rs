//! Capturing one exchange as it goes: the heads when they pass, the bodies teed into capped
//! buffers as they stream (never held back from the data path), the row put in the ring at the
//! response head and completed when the response body ends.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tunnel_schemas::ErrorCode;
use tunnel_schemas::http::{Header, RequestHead};
use tunnel_schemas::record::{ExchangeRecord, RecordedMessage, RecordedResponse};

use super::ring::{Entry, Sources};
use super::{Shared, TunnelSlot, new_record};

/// A capped copy of a body: the first `cap` bytes, and the size of the whole.
#[derive(Debug, Clone, Default)]
pub struct Tap(Arc<Mutex<Teed>>);

#[derive(Debug, Default)]
struct Teed {
    kept: BytesMut,
    size: u64,
    cap: usize,
}

impl Tap {
    fn new(cap: usize) -> Self {
        Self(Arc::new(Mutex::new(Teed { kept: BytesMut::new(), size: 0, cap })))
    }

    /// Makes room at once for a body of about `size` bytes (up to the cap), so that a body of a
    /// known length is copied once, with no reallocation.
    pub fn expect(&self, size: u64) {
        let mut teed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let want = usize::try_from(size).unwrap_or(usize::MAX).min(teed.cap).saturating_sub(teed.kept.len());
        teed.kept.reserve(want);
    }

    /// Copies what fits of `chunk` and counts all of it.
    pub fn push(&self, chunk: &[u8]) {
        let mut teed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        teed.size += chunk.len() as u64;
        let room = teed.cap.saturating_sub(teed.kept.len());
        if room > 0 {
            teed.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }

    /// Takes the kept bytes (the tap is empty afterwards), with the whole size and whether bytes
    /// were cut.
    fn take(&self) -> (Bytes, u64, bool) {
        let mut teed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = std::mem::take(&mut teed.kept);
        // Kept as is when it fills its buffer (a known length): the ring then holds no more than
        // it counts; otherwise copied to its exact size.
        let kept =
            if kept.capacity() - kept.len() <= kept.len() / 8 { kept.freeze() } else { Bytes::copy_from_slice(&kept) };
        let cut = teed.size > kept.len() as u64;
        (kept, teed.size, cut)
    }
}

/// The capture of one exchange, from its request head to the end of its response.
///
/// Dropped before [`Capture::finish`] (the public side gave up, the session ended), it
/// completes the row with what it has.
pub struct Capture {
    shared: Arc<Shared>,
    slot: Arc<TunnelSlot>,
    request_id: String,
    record: Option<ExchangeRecord>,
    started: Instant,
    request_body: Tap,
    response_body: Tap,
    /// The row is in the ring (the response head has passed).
    listed: bool,
}

impl Capture {
    pub(super) fn new(shared: Arc<Shared>, slot: Arc<TunnelSlot>, request_id: &str, head: &RequestHead) -> Self {
        let request = RecordedMessage {
            method: head.method.clone(),
            target: head.target.clone(),
            headers: head.headers.clone(),
            body: Bytes::new(),
            size: 0,
            cut: false,
        };
        let record = new_record(request_id, slot.name(), request);
        let cap = shared.body_cap;
        Self {
            shared,
            slot,
            request_id: request_id.to_owned(),
            record: Some(record),
            started: Instant::now(),
            request_body: Tap::new(cap),
            response_body: Tap::new(cap),
            listed: false,
        }
    }

    /// Where the request body's bytes are teed.
    pub fn request_tap(&self) -> Tap {
        self.request_body.clone()
    }

    /// Where the response body's bytes are teed.
    pub fn response_tap(&self) -> Tap {
        self.response_body.clone()
    }

    /// The response head has arrived.
    pub fn responded(&mut self, status: u16, headers: &[Header], upgraded: bool) {
        let Some(record) = self.record.as_mut() else { return };
        record.head_us = micros(self.started);
        record.upgraded = upgraded;
        record.response =
            Some(RecordedResponse { status, headers: headers.to_vec(), body: Bytes::new(), size: 0, cut: false });
    }

    /// The response body streams: the row appears in the list now, open until
    /// [`Capture::finish`]. (An exchange that ends at once is listed once, when it ends.)
    pub fn streaming(&mut self) {
        let Some(mut record) = self.record.take() else { return };
        self.fill(&mut record);
        let sources = Sources { client: true, ..Sources::default() };
        self.shared.insert(Entry { seq: 0, record, sources, open: true, comparison: None });
        self.listed = true;
    }

    /// The local service was not reached, or failed before a response head.
    pub fn failed(&mut self, code: ErrorCode) {
        if let Some(record) = self.record.as_mut() {
            record.error = Some(code);
        }
        self.finish();
    }

    /// The exchange is over: the row gets its bodies and times, and closes.
    pub fn finish(&mut self) {
        let (request_body, response_body) = (self.request_body.clone(), self.response_body.clone());
        let duration_us = micros(self.started);
        let complete = move |record: &mut ExchangeRecord| {
            let (body, size, cut) = request_body.take();
            (record.request.body, record.request.size, record.request.cut) = (body, size, cut);
            if let Some(response) = record.response.as_mut() {
                let (body, size, cut) = response_body.take();
                (response.body, response.size, response.cut) = (body, size, cut);
            }
            record.duration_us = duration_us;
        };
        if let Some(mut record) = self.record.take() {
            // Not listed yet: an exchange that ended at once, or failed.
            complete(&mut record);
            self.fill(&mut record);
            let sources = Sources { client: true, ..Sources::default() };
            self.shared.insert(Entry { seq: 0, record, sources, open: false, comparison: None });
        } else if std::mem::take(&mut self.listed) {
            self.shared.update(&self.request_id, |entry| {
                complete(&mut entry.record);
                entry.open = false;
            });
        }
    }

    fn fill(&self, record: &mut ExchangeRecord) {
        if record.tunnel.is_empty() {
            record.tunnel = self.slot.name();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.record.is_some() || self.listed {
            // No response yet: the public client gave up waiting.
            if let Some(record) = self.record.as_mut().filter(|record| record.response.is_none()) {
                record.error.get_or_insert(ErrorCode::Cancelled);
            }
            self.finish();
        }
    }
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}
