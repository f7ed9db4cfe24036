//! The exchanges of one session: the relay between each request's NATS side (reply inbox and
//! ingress stream subject) and its WebSocket stream id.
//!
//! The host relays; it holds no body bytes. Flow control is end to end between ingress and
//! client, so what is in flight per stream is bounded by the window whatever this host does.
//! The host watches the ingress side of each stream: it pings an idle ingress and resets a stream
//! whose ingress went silent. The first ping of a request still awaiting its head is its
//! acknowledgement ([ADR 0004](../../docs/adr/0004-bounded-waits-on-silent-faults.md)). On a recorded tunnel each exchange also feeds a [`Capture`], handed
//! to the recorder when the exchange ends.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::Subject;
use bytes::Bytes;
use tunnel_schemas::events::{Failure, TunnelReply};
use tunnel_schemas::frames::{HostFrame, StreamId};
use tunnel_schemas::stream::{IDLE_TIMEOUT, PING_INTERVAL, Probe, ProbeAnswer, StreamFrame};
use tunnel_schemas::{ErrorCode, MAX_FRAME_BYTES, encode, subjects};

use tunnel_kit::traces::StageSpan;

use crate::recording::{Capture, SessionRecording};

/// One request relayed to the client and not finished.
struct Exchange {
    /// Inbox awaiting the response head; `None` once answered.
    reply: Option<Subject>,
    /// Ingress stream subject, from the request's `Tun-Stream` header.
    ingress: Option<Subject>,
    /// This host's subject for the stream, the reply subject of everything sent to ingress.
    host: Subject,
    last_heard: Instant,
    /// When the request was relayed to the client.
    opened: Instant,
    /// Last frame or reply sent to ingress; the arrival time until then.
    last_sent: Instant,
    /// Something was sent to ingress, which tells it this host took the request.
    acked: bool,
    /// The exchange as recorded so far, on a recorded tunnel.
    capture: Option<Box<Capture>>,
    /// This host's span of the exchange, ended with it.
    trace: StageSpan,
}

/// What an ingress message on one of the session's stream subjects calls for.
pub enum Relayed {
    /// This frame, to the client.
    Frame(HostFrame),
    /// An answer to the liveness probe ([`Exchanges::answer_probe`]).
    Probe,
    /// Nothing (a ping, a frame of a finished exchange, an undecodable frame).
    Nothing,
}

/// The exchanges of one session.
pub struct Exchanges {
    nats: async_nats::Client,
    /// Prefix of this session's stream subjects (`_INBOX.host.<node>.<session>`).
    prefix: String,
    open: HashMap<StreamId, Exchange>,
    max_reply_bytes: u64,
    /// Set when the session's exchanges are recorded.
    recording: Option<SessionRecording>,
    /// Relaying a request to the client to its reply: the client and the local service.
    client_seconds: metrics::Histogram,
}

impl Exchanges {
    /// No exchanges yet; stream subjects under `prefix`; recorded with `recording`.
    pub fn new(
        nats: async_nats::Client,
        prefix: String,
        max_reply_bytes: u64,
        recording: Option<SessionRecording>,
    ) -> Self {
        let client_seconds = metrics::histogram!("host_client_seconds");
        Self { nats, prefix, open: HashMap::new(), max_reply_bytes, recording, client_seconds }
    }

    /// Number of open exchanges.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Registers the request `payload` relayed on `stream`, arrived now, traced by `trace`.
    pub fn open(
        &mut self,
        stream: StreamId,
        (reply, ingress): (Subject, Option<Subject>),
        payload: &Bytes,
        trace: StageSpan,
    ) {
        let now = Instant::now();
        let host = self.subject(stream);
        let capture = self
            .recording
            .as_ref()
            .and_then(|recording| recording.capture(payload, tunnel_schemas::now_ms()))
            .map(Box::new);
        let exchange = Exchange {
            reply: Some(reply),
            ingress,
            host,
            last_heard: now,
            opened: now,
            last_sent: now,
            acked: false,
            capture,
            trace,
        };
        self.open.insert(stream, exchange);
    }

    /// Removes `stream`, handing its capture to the recorder.
    fn close(&mut self, stream: StreamId) {
        if let Some(Exchange { capture: Some(capture), .. }) = self.open.remove(&stream)
            && let Some(recording) = &self.recording
        {
            recording.finish(*capture);
        }
    }

    /// Publishes the client's reply (the response head) to the requester; the exchange ends
    /// with it when `end`.
    pub async fn reply(&mut self, stream: StreamId, reply: Bytes, end: bool) {
        let Some(exchange) = self.open.get_mut(&stream) else {
            tracing::debug!(stream, "reply for an unknown or finished stream");
            return;
        };
        let Some(inbox) = exchange.reply.take() else {
            tracing::debug!(stream, "second reply on a stream");
            return;
        };
        exchange.last_sent = Instant::now();
        exchange.acked = true;
        self.client_seconds.record(exchange.opened.elapsed().as_secs_f64());
        if let Some(capture) = &mut exchange.capture {
            match tunnel_schemas::decode_shared::<TunnelReply>(&reply, usize::MAX) {
                Ok(TunnelReply::Response(response)) => capture.response(&response.head, &response.body),
                Ok(TunnelReply::Failure(failure)) => capture.fail(failure.code),
                Err(_) => capture.fail(ErrorCode::UpstreamBadResponse),
            }
        }
        if reply.len() as u64 > self.max_reply_bytes {
            let failure =
                TunnelReply::Failure(Failure::new(ErrorCode::ResponseTooLarge, "reply exceeds the nats payload limit"));
            self.publish(inbox, encode(&failure).into()).await;
            self.finish(stream, ErrorCode::ResponseTooLarge).await;
            return;
        }
        let host = exchange.host.clone();
        if let Err(e) = self.nats.publish_with_reply(inbox, host, reply).await {
            tracing::warn!(error = %e, "reply not published");
        }
        if end {
            self.close(stream);
        }
    }

    /// Relays a client stream frame to ingress; the exchange ends with an `End` or `Reset`.
    pub async fn relay_to_ingress(&mut self, stream: StreamId, frame: StreamFrame) {
        let Some(exchange) = self.open.get_mut(&stream) else { return };
        let Some(ingress) = exchange.ingress.clone() else { return };
        exchange.last_sent = Instant::now();
        exchange.acked = true;
        if let Some(capture) = &mut exchange.capture {
            match &frame {
                StreamFrame::Data { bytes, .. } => capture.response_data(bytes),
                StreamFrame::Reset { code } => capture.fail(*code),
                _ => {}
            }
        }
        let ends = matches!(frame, StreamFrame::End | StreamFrame::Reset { .. });
        let host = exchange.host.clone();
        if let Err(e) = self.nats.publish_with_reply(ingress, host, encode(&frame).into()).await {
            tracing::debug!(error = %e, "stream frame not published");
        }
        if ends {
            self.close(stream);
        }
    }

    /// What an ingress message on a stream subject asks of the session: a frame for the client,
    /// when it belongs to an open exchange (a `Reset` ends the exchange, a `Ping` only proves the
    /// ingress alive), or an answer to a liveness probe.
    pub fn relay_from_ingress(&mut self, message: &async_nats::Message) -> Relayed {
        match message.subject.rsplit('.').next() {
            Some(subjects::PROBE_TOKEN) => Relayed::Probe,
            Some(stream) => stream
                .parse()
                .ok()
                .and_then(|stream| self.frame_from_ingress(stream, message))
                .map_or(Relayed::Nothing, Relayed::Frame),
            None => Relayed::Nothing,
        }
    }

    /// Answers an ingress's [`Probe`]: which of the streams it asks about this session no longer
    /// holds.
    pub async fn answer_probe(&self, message: &async_nats::Message) {
        let Some(reply) = message.reply.clone() else { return };
        let probe = tunnel_schemas::decode::<Probe>(&message.payload, MAX_FRAME_BYTES).unwrap_or_default();
        let gone = probe.streams.into_iter().filter(|stream| !self.open.contains_key(stream)).collect();
        self.publish(reply, encode(&ProbeAnswer::Open { gone }).into()).await;
    }

    fn frame_from_ingress(&mut self, stream: StreamId, message: &async_nats::Message) -> Option<HostFrame> {
        // Copied, not shared, to keep the NATS client's read buffer reusable (see ingress streams).
        let frame = match tunnel_schemas::decode::<StreamFrame>(&message.payload, MAX_FRAME_BYTES) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(error = %e, "undecodable stream frame from ingress");
                return None;
            }
        };
        let exchange = self.open.get_mut(&stream)?;
        exchange.last_heard = Instant::now();
        if let Some(capture) = &mut exchange.capture {
            match &frame {
                StreamFrame::Data { bytes, .. } => capture.request_data(bytes),
                StreamFrame::Reset { code } => capture.fail(*code),
                _ => {}
            }
        }
        match frame {
            StreamFrame::Ping => None,
            StreamFrame::Reset { .. } => {
                self.close(stream);
                Some(HostFrame::Stream { stream, frame })
            }
            frame => Some(HostFrame::Stream { stream, frame }),
        }
    }

    /// Acknowledges requests unanswered for `ack_after` (a `Ping`, which tells ingress that this
    /// host took the request and where to probe it), pings idle ingress ends and resets streams
    /// whose ingress went silent; returns the resets to send to the client.
    pub async fn sweep(&mut self, ack_after: Duration) -> Vec<HostFrame> {
        let mut silent = Vec::new();
        let mut idle = Vec::new();
        for (stream, exchange) in &self.open {
            if exchange.ingress.is_none() {
                continue;
            }
            let quiet_for = if exchange.acked { PING_INTERVAL } else { ack_after };
            if exchange.last_heard.elapsed() >= IDLE_TIMEOUT {
                silent.push(*stream);
            } else if exchange.last_sent.elapsed() >= quiet_for {
                idle.push(*stream);
                if !exchange.acked {
                    metrics::counter!("host_requests_acknowledged_total").increment(1);
                }
            }
        }
        for stream in idle {
            self.relay_to_ingress(stream, StreamFrame::Ping).await;
        }
        let mut resets = Vec::with_capacity(silent.len());
        for stream in silent {
            self.finish(stream, ErrorCode::UpstreamTimeout).await;
            resets.push(HostFrame::Stream { stream, frame: StreamFrame::Reset { code: ErrorCode::UpstreamTimeout } });
        }
        resets
    }

    /// Fails every exchange: a failure reply where the head is still awaited, a reset otherwise.
    pub async fn fail_all(&mut self, code: ErrorCode, detail: &str) {
        let streams: Vec<StreamId> = self.open.keys().copied().collect();
        for stream in streams {
            if let Some(inbox) = self.open.get_mut(&stream).and_then(|exchange| exchange.reply.take()) {
                self.publish(inbox, encode(&TunnelReply::Failure(Failure::new(code, detail))).into()).await;
            }
            self.finish(stream, code).await;
        }
    }

    /// Ends `stream`, telling ingress if its head was already answered.
    async fn finish(&mut self, stream: StreamId, code: ErrorCode) {
        if let Some(exchange) = self.open.get_mut(&stream) {
            if let Some(capture) = &mut exchange.capture {
                capture.fail(code);
            }
            exchange.trace.fail(code.as_str());
            if exchange.reply.is_none() {
                self.relay_to_ingress(stream, StreamFrame::Reset { code }).await;
            }
        }
        self.close(stream);
    }

    /// Answers a request that never became an exchange.
    pub async fn refuse(&self, inbox: Subject, code: ErrorCode, detail: &str) {
        self.publish(inbox, encode(&TunnelReply::Failure(Failure::new(code, detail))).into()).await;
    }

    fn subject(&self, stream: StreamId) -> Subject {
        subjects::stream_subject(&self.prefix, stream).into()
    }

    async fn publish(&self, subject: Subject, payload: Bytes) {
        if let Err(e) = self.nats.publish(subject, payload).await {
            tracing::warn!(error = %e, "reply not published");
        }
    }
}
