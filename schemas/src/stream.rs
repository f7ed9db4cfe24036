//! Body streaming: the part of an exchange's bodies that does not travel inside its head events.
//!
//! Each exchange is a pair of byte streams: request body (ingress → client) and response body
//! (client → ingress); after a protocol upgrade (WebSocket) both carry the raw connection bytes.
//! The same [`StreamFrame`]s travel on NATS (one per message, on the receiver's stream subject)
//! and on the client's WebSocket (inside `Stream` frames, keyed by stream id); the session-host
//! relays them.
//!
//! Flow control is by credit, per stream and direction, end to end: a sender starts with
//! [`WINDOW_BYTES`] of credit, spends it on `Data`, and may send only while it has credit; the
//! receiver returns `Credit` as its consumer takes data. So a slow reader slows the writer, and
//! no hop holds more than one window per stream.
//!
//! Liveness: a side that has sent nothing on a stream for [`PING_INTERVAL`] sends `Ping`; a side
//! that has heard nothing for [`IDLE_TIMEOUT`] resets the stream.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// Largest `Data` payload: 63 KiB, so that a data message with its envelope fits the 64 KiB
/// read buffers of the NATS client and server (measured in docs/benchmarks.md).
pub const CHUNK_BYTES: usize = 63 << 10;
/// Credit each direction of a stream starts with.
pub const WINDOW_BYTES: u32 = 512 << 10;
/// Least credit a `Data` frame costs, however small: so a window also bounds the number of
/// frames in flight (SSE sends many tiny ones).
pub const MIN_FRAME_COST: u32 = 4 << 10;
/// Most `Data` frames of one stream direction in flight.
pub const MAX_FRAMES_IN_FLIGHT: usize = (WINDOW_BYTES / MIN_FRAME_COST) as usize;

/// Credit a `Data` frame of `len` bytes costs.
pub fn frame_cost(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX).max(MIN_FRAME_COST)
}

/// Bodies up to this size travel inside the head events when their length is known.
pub const INLINE_BYTES: usize = 64 << 10;
/// A side silent this long on a stream sends a `Ping`.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A stream silent this long is reset.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// An ingress's liveness probe of a session, sent as a NATS request to the session's probe
/// subject (`subjects::probe_subject`): the session's stream ids whose exchanges the ingress still
/// awaits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// Stream ids of the session (the last token of its stream subjects).
    #[serde(default)]
    pub streams: Vec<u32>,
}

/// The answer to a [`Probe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeAnswer {
    /// The session is open; of the streams asked about, it no longer holds `gone` (their
    /// exchanges ended at the session, and what it sent last was lost on the way).
    Open {
        /// The streams asked about that the session no longer holds.
        #[serde(default)]
        gone: Vec<u32>,
    },
}

/// One frame of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamFrame {
    /// Body bytes; `seq` counts the sender's `Data` frames from 0, so a lost frame is noticed.
    Data {
        /// Position of this frame among the sender's `Data` frames.
        seq: u32,
        /// The bytes, at most [`CHUNK_BYTES`].
        #[serde(deserialize_with = "crate::shared::body")]
        bytes: Bytes,
    },
    /// The sender's body is complete.
    End,
    /// The receiver consumed `bytes`; the sender may send that much more.
    Credit {
        /// Bytes of credit returned.
        bytes: u32,
    },
    /// The stream is abandoned in both directions.
    Reset {
        /// Why.
        code: ErrorCode,
    },
    /// Nothing to say, but still here.
    Ping,
}

/// The sending side's credit of one stream direction.
#[derive(Debug)]
pub struct SendWindow {
    credit: u32,
    seq: u32,
    /// Largest `Data` payload this sender emits.
    chunk: usize,
}

impl Default for SendWindow {
    fn default() -> Self {
        Self { credit: WINDOW_BYTES, seq: 0, chunk: CHUNK_BYTES }
    }
}

impl SendWindow {
    /// A window whose `Data` frames carry at most `chunk` bytes (at least 1 KiB), for transports
    /// whose messages are smaller than [`CHUNK_BYTES`] allows.
    pub fn with_chunk(chunk: usize) -> Self {
        Self { chunk: chunk.clamp(1024, CHUNK_BYTES), ..Self::default() }
    }

    /// Whether a frame may be sent now.
    pub fn open(&self) -> bool {
        self.credit >= MIN_FRAME_COST
    }

    /// Adds credit returned by the receiver.
    pub fn grant(&mut self, bytes: u32) {
        self.credit = self.credit.saturating_add(bytes);
    }

    /// Takes as much of `pending` as the credit and the chunk size allow, as a `Data` frame;
    /// `None` when there is not enough credit or nothing pending.
    pub fn take(&mut self, pending: &mut Bytes) -> Option<StreamFrame> {
        if !self.open() {
            return None;
        }
        let allowed = usize::try_from(self.credit).unwrap_or(usize::MAX).min(self.chunk).min(pending.len());
        if allowed == 0 {
            return None;
        }
        let bytes = pending.split_to(allowed);
        // The credit covers the cost: it is at least MIN_FRAME_COST and at least `allowed`.
        self.credit -= frame_cost(allowed);
        let frame = StreamFrame::Data { seq: self.seq, bytes };
        self.seq = self.seq.wrapping_add(1);
        Some(frame)
    }
}

/// The receiving side's accounting of one stream direction.
#[derive(Debug, Default)]
pub struct ReceiveWindow {
    next_seq: u32,
    /// Bytes received and not yet consumed, plus consumed bytes whose credit is not yet returned.
    outstanding: u32,
    /// Consumed bytes whose credit is not yet returned.
    unreturned: u32,
}

/// A `Data` frame broke the stream's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamViolation {
    /// A frame was lost or reordered.
    #[error("data frame {got} arrived where {expected} was due")]
    Gap {
        /// Sequence number due.
        expected: u32,
        /// Sequence number received.
        got: u32,
    },
    /// The sender sent more than its credit.
    #[error("the sender exceeded its credit")]
    Overrun,
}

impl ReceiveWindow {
    /// Accounts for a received `Data` frame.
    ///
    /// # Errors
    /// [`StreamViolation`] when a frame is missing or the credit was exceeded.
    pub fn receive(&mut self, seq: u32, len: usize) -> Result<(), StreamViolation> {
        if seq != self.next_seq {
            return Err(StreamViolation::Gap { expected: self.next_seq, got: seq });
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        self.outstanding = self
            .outstanding
            .checked_add(frame_cost(len))
            .filter(|n| *n <= WINDOW_BYTES)
            .ok_or(StreamViolation::Overrun)?;
        Ok(())
    }

    /// Accounts for a `Data` frame of `len` bytes handed to the consumer; returns the credit to
    /// send back, batched to a quarter window so credits cost few frames.
    pub fn consumed(&mut self, len: usize) -> Option<u32> {
        self.unreturned = self.unreturned.saturating_add(frame_cost(len));
        if self.unreturned >= WINDOW_BYTES / 4 {
            let credit = std::mem::take(&mut self.unreturned);
            self.outstanding = self.outstanding.saturating_sub(credit);
            Some(credit)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_stops_at_its_credit_and_resumes_when_granted() {
        let mut window = SendWindow::default();
        let mut pending = Bytes::from(vec![7_u8; WINDOW_BYTES as usize + 10]);
        let mut sent = 0;
        while let Some(StreamFrame::Data { bytes, .. }) = window.take(&mut pending) {
            assert!(bytes.len() <= CHUNK_BYTES);
            sent += bytes.len();
        }
        assert_eq!(sent, WINDOW_BYTES as usize);
        assert!(!window.open());
        window.grant(MIN_FRAME_COST - 1);
        assert_eq!(window.take(&mut pending), None, "less credit than a frame costs");
        window.grant(1);
        match window.take(&mut pending) {
            Some(StreamFrame::Data { bytes, seq }) => {
                assert_eq!(bytes.len(), 10);
                assert_eq!(seq, WINDOW_BYTES.div_ceil(CHUNK_BYTES as u32), "a window's worth of frames came first");
            }
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn a_receiver_returns_credit_in_batches_and_catches_gaps_and_overruns() {
        let chunk = CHUNK_BYTES as u32;
        // Credit goes back once a quarter window is consumed, not per frame.
        let batch = (WINDOW_BYTES / 4).div_ceil(chunk);
        let mut window = ReceiveWindow::default();
        for seq in 0..batch {
            window.receive(seq, CHUNK_BYTES).expect("in order");
            let expected = (seq + 1 == batch).then_some(batch * chunk);
            assert_eq!(window.consumed(CHUNK_BYTES), expected, "after frame {seq}");
        }
        assert_eq!(window.receive(batch + 3, 1), Err(StreamViolation::Gap { expected: batch, got: batch + 3 }));
        // A full window is accepted; one byte more is an overrun.
        let mut window = ReceiveWindow::default();
        let whole = WINDOW_BYTES / chunk;
        for seq in 0..whole {
            window.receive(seq, CHUNK_BYTES).expect("within the window");
        }
        let rest = (WINDOW_BYTES - whole * chunk) as usize;
        let mut next = whole;
        if rest > 0 {
            window.receive(next, rest).expect("the rest of the window");
            next += 1;
        }
        assert_eq!(window.receive(next, 1), Err(StreamViolation::Overrun));
    }

    #[test]
    fn tiny_frames_cost_a_minimum_so_the_frame_count_is_bounded() {
        let mut sender = SendWindow::default();
        let mut receiver = ReceiveWindow::default();
        let mut frames = 0;
        loop {
            let mut one_byte = Bytes::from_static(b"x");
            let Some(StreamFrame::Data { seq, bytes }) = sender.take(&mut one_byte) else { break };
            receiver.receive(seq, bytes.len()).expect("the sender kept to its credit");
            frames += 1;
        }
        assert_eq!(frames, MAX_FRAMES_IN_FLIGHT);
    }
}
