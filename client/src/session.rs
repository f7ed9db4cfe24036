//! One connection to a session-host: the handshake, then serving requests until the connection
//! ends.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::SplitStream;
use futures_util::{Sink, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use tunnel_schemas::events::Failure;
use tunnel_schemas::frames::{ClientFrame, Hello, HostFrame, StreamId, Welcome};
use tunnel_schemas::stream::{MAX_FRAMES_IN_FLIGHT, StreamFrame};
use tunnel_schemas::{ErrorCode, MAX_FRAME_BYTES, PROTOCOL_VERSION, encode};

use crate::Options;
use crate::events::Event;
use crate::exchange::{self, Link};
use crate::forward::Forwarder;
use crate::stats::Stats;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Time the server has to complete the connection and the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence from the server after which the client pings it.
const PING_AFTER: Duration = Duration::from_secs(2);
/// Silence from the server after which the connection is presumed dead (frozen, or cut off
/// without a FIN) and the client moves: the ping sent after [`PING_AFTER`] went unanswered.
const SERVER_SILENCE: Duration = Duration::from_secs(4);
/// Frames queued for the WebSocket writer.
const WRITE_QUEUE: usize = 1024;
/// Frames an exchange may have queued: a window of data frames plus control frames.
const STREAM_QUEUE: usize = MAX_FRAMES_IN_FLIGHT + 32;
/// Bytes the WebSocket reads at a time. The reader zero-fills this much before every read, so
/// the default 128 KiB cost more in `memset` than small frames did in parsing; larger frames
/// still arrive whole, over several reads.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// How often a client that keeps [`Stats`] pings the host to measure the round trip, even when
/// the connection is busy (the silence ping of [`PING_AFTER`] measures it too).
const RTT_PROBE_EVERY: Duration = Duration::from_secs(5);

/// What a previous session granted, to take the name back.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The name held.
    pub name: String,
    /// Its resume secret.
    pub secret: String,
}

/// How a served session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested; the server was told goodbye.
    Shutdown,
    /// The server is going away: reconnect at once.
    GoingAway,
    /// The connection was lost: reconnect with backoff.
    Lost(String),
    /// The server ended the session for good.
    Fatal(Failure),
}

/// Why a session could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The server refused the session in a way retrying cannot fix.
    Fatal(Failure),
    /// The server could not be reached or failed; retry with backoff.
    Transient(String),
}

/// Connects to `server`, says hello with `options` (the name or `resume`, the token, the
/// recording wish, the public policy) and waits for the welcome.
pub async fn open(server: &str, options: &Options, resume: Option<&Resume>) -> Result<(Welcome, Socket), OpenError> {
    let hello = Hello {
        v: PROTOCOL_VERSION,
        name: resume.map(|r| r.name.clone()).or_else(|| options.name.clone()),
        resume_secret: resume.map(|r| r.secret.clone()),
        agent: concat!("tunnel/", env!("CARGO_PKG_VERSION")).to_owned(),
        record: options.record,
        token: options.token.clone(),
        policy: options.policy.clone(),
        shared: options.shared,
    };
    let handshake = async {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES))
            .read_buffer_size(READ_BUFFER_BYTES);
        let tls = tokio_tungstenite::Connector::Rustls(crate::trust::client_config());
        let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(server, Some(config), true, Some(tls))
            .await
            .map_err(|e| OpenError::Transient(format!("cannot connect to {server}: {e}")))?;
        let hello = encode(&ClientFrame::Hello(hello));
        socket.send(Message::Binary(hello.into())).await.map_err(|e| OpenError::Transient(e.to_string()))?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    return match tunnel_schemas::decode::<HostFrame>(&bytes, MAX_FRAME_BYTES) {
                        Ok(HostFrame::Welcome(welcome)) => Ok((welcome, socket)),
                        Ok(HostFrame::Refused(failure)) => Err(classify(failure)),
                        Ok(
                            HostFrame::Request { .. }
                            | HostFrame::Stream { .. }
                            | HostFrame::GoAway
                            | HostFrame::Quota(_),
                        ) => Err(OpenError::Transient("unexpected frame before welcome".into())),
                        Err(e) => Err(OpenError::Transient(format!("undecodable frame from the server: {e}"))),
                    };
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(OpenError::Transient("server closed the connection".into()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(OpenError::Transient(e.to_string())),
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| Err(OpenError::Transient("handshake timed out".into())))
}

/// Whether a refusal is worth retrying.
fn classify(failure: Failure) -> OpenError {
    match failure.code {
        ErrorCode::Unavailable
        | ErrorCode::GoingAway
        | ErrorCode::Internal
        | ErrorCode::HandshakeTimeout
        | ErrorCode::TunnelDisconnected => OpenError::Transient(format!("{}: {}", failure.code, failure.detail)),
        _ => OpenError::Fatal(failure),
    }
}

/// Serves requests on `socket` until it ends or `shutdown` is cancelled, counting its traffic in
/// `stats` when given.
///
/// When the host announces it is going away, the connection keeps answering in a background
/// task until the host closes it, while the caller opens the next session at once.
pub async fn serve(
    socket: Socket,
    welcome: &Welcome,
    forwarder: &Arc<Forwarder>,
    events: &mpsc::Sender<Event>,
    stats: Option<&Arc<Stats>>,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let (sink, stream) = socket.split();
    let (out, out_rx) = mpsc::channel(WRITE_QUEUE);
    if let Some(stats) = stats {
        stats.landed_on(&welcome.host);
    }
    let sink = Counted { inner: sink, stats: stats.cloned() };
    let now = Instant::now();
    let mut connection = Connection {
        stream,
        out,
        writer: tokio::spawn(tunnel_kit::sink::write_batched(sink, out_rx)),
        exchanges: JoinSet::new(),
        routes: HashMap::new(),
        forwarder: forwarder.clone(),
        events: events.clone(),
        max_reply: usize::try_from(welcome.max_reply_bytes).unwrap_or(usize::MAX),
        last_heard: now,
        pinged: false,
        stats: stats.cloned(),
        epoch: now,
        next_probe: now,
    };
    let end = tokio::select! {
        end = connection.serve() => end,
        () = shutdown.cancelled() => {
            let _ = connection.out.send(Message::Binary(encode(&ClientFrame::Bye).into())).await;
            let _ = connection.out.send(Message::Close(None)).await;
            SessionEnd::Shutdown
        }
    };
    match end {
        SessionEnd::GoingAway => {
            tokio::spawn(connection.finish());
        }
        SessionEnd::Shutdown => {
            // Let the goodbye reach the server before the socket goes.
            let Connection { out, writer, .. } = connection;
            drop(out);
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        }
        SessionEnd::Lost(_) | SessionEnd::Fatal(_) => {}
    }
    end
}

/// One WebSocket to a host and the requests it carries.
struct Connection {
    stream: SplitStream<Socket>,
    /// Frames for the writer task.
    out: mpsc::Sender<Message>,
    writer: JoinHandle<()>,
    /// Exchanges in progress, each yielding its stream id at the end; aborted when the
    /// connection is dropped, so requests of a lost session are never answered on another one.
    exchanges: JoinSet<StreamId>,
    /// Where each open exchange's stream frames go.
    routes: HashMap<StreamId, mpsc::Sender<(StreamFrame, ())>>,
    forwarder: Arc<Forwarder>,
    events: mpsc::Sender<Event>,
    max_reply: usize,
    last_heard: Instant,
    /// A ping went out after [`PING_AFTER`] of silence and nothing was heard since.
    pinged: bool,
    /// Where the connection's traffic is counted, if anywhere.
    stats: Option<Arc<Stats>>,
    /// The origin of the send times carried in pings, to measure the round trip on their pongs.
    epoch: Instant,
    /// When the next round-trip ping goes out (only with `stats`).
    next_probe: Instant,
}

impl Connection {
    /// Serves until the session ends.
    async fn serve(&mut self) -> SessionEnd {
        loop {
            if let Some(end) = self.step().await {
                return end;
            }
        }
    }

    /// After a go-away: answers until the host closes the socket, then lets the last answers out.
    async fn finish(mut self) {
        while !matches!(self.step().await, Some(SessionEnd::Lost(_) | SessionEnd::Fatal(_) | SessionEnd::Shutdown)) {}
        while self.exchanges.join_next().await.is_some() {}
        drop(self.out);
        let _ = self.writer.await;
    }

    /// Handles one event of the connection; `Some` when the session ends.
    async fn step(&mut self) -> Option<SessionEnd> {
        let wait = if self.pinged { SERVER_SILENCE } else { PING_AFTER };
        let silence = tokio::time::sleep_until((self.last_heard + wait).into());
        let probe = tokio::time::sleep_until(self.next_probe.into());
        tokio::select! {
            message = self.stream.next() => {
                self.last_heard = Instant::now();
                self.pinged = false;
                if let (Some(stats), Some(Ok(message))) = (&self.stats, &message) {
                    stats.read(message.len());
                    if let Message::Pong(payload) = message {
                        self.on_pong(stats, payload);
                    }
                }
                self.on_message(message)
            }
            Some(finished) = self.exchanges.join_next(), if !self.exchanges.is_empty() => {
                if let Ok(stream) = finished {
                    self.routes.remove(&stream);
                }
                None
            }
            () = silence => {
                if self.pinged {
                    return Some(SessionEnd::Lost("server stopped answering".into()));
                }
                self.pinged = true;
                self.ping();
                None
            }
            () = probe, if self.stats.is_some() => {
                self.ping();
                None
            }
        }
    }

    /// Pings the host, the ping carrying its send time so that its pong tells the round trip.
    fn ping(&mut self) {
        let now = Instant::now();
        self.next_probe = now + RTT_PROBE_EVERY;
        let sent = u64::try_from(now.duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX);
        // A full queue means frames are waiting for the socket: no ping is needed to learn
        // whether it moves.
        let _ = self.out.try_send(Message::Ping(sent.to_be_bytes().to_vec().into()));
    }

    /// Records the round trip of the ping `payload` answers (the host echoes the send time).
    fn on_pong(&self, stats: &Stats, payload: &[u8]) {
        if let Some(rtt) = round_trip(self.epoch, payload, Instant::now()) {
            stats.round_trip(rtt);
        }
    }

    fn on_message(&mut self, message: Option<Result<Message, WsError>>) -> Option<SessionEnd> {
        let bytes = match message {
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Close(_))) | None => {
                return Some(SessionEnd::Lost("server closed the connection".into()));
            }
            Some(Ok(_)) => return None,
            Some(Err(e)) => return Some(SessionEnd::Lost(e.to_string())),
        };
        match tunnel_schemas::decode_shared::<HostFrame>(&bytes, MAX_FRAME_BYTES) {
            Ok(HostFrame::Request { stream, request, trace }) => {
                let (route, frames) = mpsc::channel(STREAM_QUEUE);
                self.routes.insert(stream, route);
                let link = Link {
                    stream,
                    frames,
                    out: self.out.clone(),
                    events: self.events.clone(),
                    max_reply: self.max_reply,
                };
                let forwarder = self.forwarder.clone();
                let open = self.stats.as_ref().map(Stats::request_started);
                self.exchanges.spawn(async move {
                    exchange::run((request, trace), link, forwarder).await;
                    drop(open);
                    stream
                });
                None
            }
            Ok(HostFrame::Stream { stream, frame }) => {
                if let Some(route) = self.routes.get(&stream)
                    && route.try_send((frame, ())).is_err()
                {
                    tracing::debug!(stream, "stream frame dropped: the exchange is not keeping up");
                }
                None
            }
            Ok(HostFrame::GoAway) => Some(SessionEnd::GoingAway),
            Ok(HostFrame::Refused(failure)) if failure.code == ErrorCode::GoingAway => Some(SessionEnd::GoingAway),
            Ok(HostFrame::Refused(failure)) => Some(match classify(failure) {
                OpenError::Fatal(failure) => SessionEnd::Fatal(failure),
                OpenError::Transient(reason) => SessionEnd::Lost(reason),
            }),
            Ok(HostFrame::Quota(state)) => {
                let _ = self.events.try_send(Event::quota(&state));
                None
            }
            Ok(HostFrame::Welcome(_)) => Some(SessionEnd::Lost("unexpected welcome".into())),
            Err(e) => Some(SessionEnd::Lost(format!("undecodable frame from the server: {e}"))),
        }
    }
}

/// The round trip told at `now` by a pong's `payload`: the send time of [`Connection::ping`],
/// in microseconds after `epoch`. `None` for a pong that carries no such time (another length,
/// a time in the future or out of range).
fn round_trip(epoch: Instant, payload: &[u8], now: Instant) -> Option<Duration> {
    let sent = <[u8; 8]>::try_from(payload).ok()?;
    let sent = epoch.checked_add(Duration::from_micros(u64::from_be_bytes(sent)))?;
    now.checked_duration_since(sent)
}

/// The WebSocket sink, counting the bytes written into [`Stats`] when given.
struct Counted<S> {
    inner: S,
    stats: Option<Arc<Stats>>,
}

impl<S: Sink<Message> + Unpin> Sink<Message> for Counted<S> {
    type Error = S::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
        if let Some(stats) = &self.stats {
            stats.written(message.len());
        }
        Pin::new(&mut self.inner).start_send(message)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_from_pong_payloads() {
        let epoch = Instant::now();
        let sent = 1500_u64.to_be_bytes();
        let now = epoch + Duration::from_micros(2000);
        assert_eq!(round_trip(epoch, &sent, now), Some(Duration::from_micros(500)));
        assert_eq!(round_trip(epoch, b"", now), None, "a pong of someone else's ping");
        assert_eq!(round_trip(epoch, &u64::MAX.to_be_bytes(), now), None, "out of range");
        assert_eq!(round_trip(epoch, &5000_u64.to_be_bytes(), now), None, "in the future");
    }
}
