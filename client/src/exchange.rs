//! One exchange at the client: the request goes to the local service, its body streaming in from
//! the tunnel; the response head goes back as the reply, its body streaming out under credit;
//! an upgrade (WebSocket) turns both directions into the raw connection.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tunnel_kit::pump::{Completes, Ended, FrameOut, Pump};
use tunnel_kit::traces::{SpanKind, pass_on, traceparent_in};
use tunnel_schemas::events::{Failure, TunnelReply, TunnelRequest, TunnelResponse};
use tunnel_schemas::frames::{ClientFrame, StreamId};
use tunnel_schemas::http::{Header, ResponseHead};
use tunnel_schemas::stream::{INLINE_BYTES, StreamFrame};
use tunnel_schemas::{ErrorCode, MAX_FRAME_BYTES, PROTOCOL_VERSION, encode};

use crate::events::Event;
use crate::forward::{Forwarder, LocalBody};
use crate::inspector::Capture;

/// Room left in a relayed message for framing and headers.
const HEADROOM_BYTES: usize = 4 << 10;
/// Request-body chunks queued for the local service beyond what the pump holds.
const BODY_QUEUE: usize = 2;

/// Frames of one stream into the WebSocket writer.
pub struct WsOut {
    stream: StreamId,
    out: mpsc::Sender<Message>,
}

impl FrameOut for WsOut {
    type Origin = ();

    fn learn(&mut self, (): ()) {}

    fn ready(&self) -> bool {
        true
    }

    async fn send(&mut self, frame: StreamFrame) {
        let frame = ClientFrame::Stream { stream: self.stream, frame };
        let _ = self.out.send(Message::Binary(encode(&frame).into())).await;
    }

    /// An unfinished client exchange is dropped only with its connection (every other path ends
    /// it explicitly); the session-host then fails the exchange with `tunnel_disconnected`, which
    /// is what the public client should see, so nothing is sent here.
    fn send_detached(&mut self, _frame: StreamFrame) {}
}

/// What an exchange needs from its connection.
pub struct Link {
    /// The exchange's stream id.
    pub stream: StreamId,
    /// Stream frames from the host for this exchange.
    pub frames: mpsc::Receiver<(StreamFrame, ())>,
    /// The WebSocket writer.
    pub out: mpsc::Sender<Message>,
    /// Request events for the terminal.
    pub events: mpsc::Sender<Event>,
    /// Largest encoded reply the host relays.
    pub max_reply: usize,
}

/// Runs the exchange of the encoded `request` to its end; `trace` is the session-host's span of
/// it, when the host traces.
pub async fn run((request, trace): (Bytes, Option<String>), link: Link, forwarder: Arc<Forwarder>) {
    let started = Instant::now();
    let Link { stream, frames, out, events, max_reply } = link;
    let request = match tunnel_schemas::decode_shared::<TunnelRequest>(&request, MAX_FRAME_BYTES) {
        Ok(request) if request.v == PROTOCOL_VERSION => request,
        Ok(request) => {
            let detail = format!("request event version {} is not {PROTOCOL_VERSION}", request.v);
            return reply(&out, stream, &TunnelReply::Failure(Failure::new(ErrorCode::ProtocolVersion, detail)), true)
                .await;
        }
        Err(e) => {
            let failure = Failure::new(ErrorCode::BadFrame, e.to_string());
            return reply(&out, stream, &TunnelReply::Failure(failure), true).await;
        }
    };
    let chunk = max_reply.saturating_sub(HEADROOM_BYTES);
    let mut pump = Pump::new(WsOut { stream, out: out.clone() }, frames, Completes::OnOutgoing)
        .tolerating_sink_loss()
        .with_chunk(chunk);
    let TunnelRequest { request_id, mut head, body, end, upgrade, .. } = request;
    // The local service sees this client's span as the parent, in place of the host's.
    let parent = trace.as_deref().or_else(|| traceparent_in(&head.headers));
    let mut trace = forwarder.traces().span("client forward", SpanKind::Client, parent);
    pass_on(&trace, &mut head.headers);
    if trace.recording() {
        trace.set("http.request.method", head.method.clone());
        trace.set("request.id", request_id.clone());
    }
    let (method, target) = (head.method.clone(), head.target.clone());
    // The inspector's copy is teed off as bytes pass; it never holds them back.
    let mut capture = forwarder.inspector().map(|inspector| inspector.capture(&request_id, &head));
    let tap = capture.as_ref().map(Capture::request_tap);
    let body = if upgrade || end {
        if let Some(tap) = &tap {
            tap.push(&body);
        }
        LocalBody::whole(body)
    } else {
        let (sink, rest) = tunnel_kit::pump::body_channel(body, BODY_QUEUE);
        pump.deliver_to(sink);
        match tap {
            Some(tap) => LocalBody::streamed(rest.inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    tap.push(chunk);
                }
            })),
            None => LocalBody::streamed(rest),
        }
    };
    let span = tracing::debug_span!("request", request_id = %request_id);
    let local = tracing::Instrument::instrument(forwarder.send(head, body), span);
    tokio::pin!(local);
    let response = loop {
        tokio::select! {
            response = &mut local => break response,
            ended = pump.step() => if let Some(Ended::Reset(_) | Ended::Complete) = ended {
                // The public side gave up: dropping the local request aborts it.
                return;
            },
        }
    };
    let (status, error) = match &response {
        Ok(response) => (response.status().as_u16(), None),
        Err(failure) => {
            trace.fail(failure.code.as_str());
            (failure.code.http_status(), Some(failure.code.as_str().to_owned()))
        }
    };
    trace.set("http.response.status_code", i64::from(status));
    let event =
        Event::Request { request_id, method, target, status, error, duration_ms: Event::millis(started.elapsed()) };
    // Request events are best effort: a reader that falls behind loses some, never slows the tunnel.
    let _ = events.try_send(event);
    let response = match response {
        Ok(response) => response,
        Err(failure) => {
            if let Some(capture) = capture.as_mut() {
                capture.failed(failure.code);
            }
            pump.finish();
            return reply(&out, stream, &TunnelReply::Failure(failure), true).await;
        }
    };
    let (mut parts, body) = response.into_parts();
    let head = ResponseHead {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| Header(name.as_str().to_owned(), Bytes::copy_from_slice(value.as_bytes())))
            .collect(),
    };
    let upgraded = upgrade && parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
    if let Some(capture) = capture.as_mut() {
        capture.responded(head.status, &head.headers, upgraded);
    }
    let response_tap = capture.as_ref().map(Capture::response_tap);
    if let Some(tap) = &response_tap {
        tap.expect(hyper::body::Body::size_hint(&body).lower());
    }
    if upgraded {
        // Only the heads of an upgraded exchange are kept.
        if let Some(mut capture) = capture.take() {
            capture.finish();
        }
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            let failure = Failure::new(ErrorCode::UpstreamBadResponse, "local 101 without an upgradable connection");
            pump.finish();
            return reply(&out, stream, &TunnelReply::Failure(failure), true).await;
        };
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                let failure = Failure::new(ErrorCode::UpstreamBadResponse, format!("local upgrade failed: {e}"));
                pump.finish();
                return reply(&out, stream, &TunnelReply::Failure(failure), true).await;
            }
        };
        reply(&out, stream, &response_event(head, Bytes::new(), false), false).await;
        let (read, write) = tokio::io::split(TokioIo::new(upgraded));
        pump.send_from(tunnel_kit::pump::stream_from(read), None);
        let (sink, writer) = tunnel_kit::pump::sink_into(write);
        pump.deliver_to(sink);
        pump.run().await;
        let _ = writer.await;
        return;
    }
    let inline_limit = INLINE_BYTES.min(chunk);
    let known_small = hyper::body::Body::size_hint(&body).exact().is_some_and(|size| size <= inline_limit as u64);
    if hyper::body::Body::is_end_stream(&body) || known_small {
        match body.collect().await {
            Ok(collected) => {
                pump.finish();
                let bytes = collected.to_bytes();
                if let (Some(tap), Some(capture)) = (&response_tap, capture.as_mut()) {
                    tap.push(&bytes);
                    capture.finish();
                }
                reply(&out, stream, &response_event(head, bytes, true), true).await;
            }
            Err(e) => {
                let failure = Failure::new(ErrorCode::UpstreamUnreachable, format!("response body failed: {e}"));
                if let Some(capture) = capture.as_mut() {
                    capture.failed(failure.code);
                }
                pump.finish();
                reply(&out, stream, &TunnelReply::Failure(failure), true).await;
            }
        }
        return;
    }
    if let Some(capture) = capture.as_mut() {
        capture.streaming();
    }
    reply(&out, stream, &response_event(head, Bytes::new(), false), false).await;
    let chunks = body.into_data_stream().map(|chunk| chunk.map_err(io::Error::other));
    match response_tap {
        Some(tap) => pump.send_from(
            Box::pin(chunks.inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    tap.push(chunk);
                }
            })),
            None,
        ),
        None => pump.send_from(Box::pin(chunks), None),
    }
    pump.run().await;
    if let Some(mut capture) = capture {
        capture.finish();
    }
}

fn response_event(head: ResponseHead, body: Bytes, end: bool) -> TunnelReply {
    TunnelReply::Response(TunnelResponse { head, body, end })
}

async fn reply(out: &mpsc::Sender<Message>, stream: StreamId, reply: &TunnelReply, end: bool) {
    let frame = ClientFrame::Reply { stream, reply: encode(reply).into(), end };
    if out.send(Message::Binary(encode(&frame).into())).await.is_err() {
        tracing::debug!(stream, "session ended before the reply was sent");
    }
}
