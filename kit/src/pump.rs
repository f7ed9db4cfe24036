//! The stream engine both ends of an exchange run, ingress and client: outgoing bytes under the
//! credit the other end grants, incoming bytes handed on as the consumer takes them (credit going
//! back), resets both ways, and optionally pings and an idle timeout.
//!
//! The pump owns no transport: frames leave through a [`FrameOut`] (NATS at ingress, the
//! WebSocket at the client) and arrive on a channel fed by the caller's demultiplexer.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tunnel_schemas::ErrorCode;
use tunnel_schemas::stream::{IDLE_TIMEOUT, PING_INTERVAL, ReceiveWindow, SendWindow, StreamFrame};

/// Bytes to send: a body, or the read half of an upgraded connection.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;
/// Where received bytes go: a body, or the write half of an upgraded connection. An error
/// item ends it as broken, so a truncated body never looks complete.
pub type ByteSink = mpsc::Sender<Result<Bytes, io::Error>>;

/// Where a pump's frames go.
pub trait FrameOut: Send {
    /// What arrives with each incoming frame: the sender's reply subject on NATS, nothing on the
    /// WebSocket.
    type Origin: Send;
    /// Notes where an incoming frame came from.
    fn learn(&mut self, origin: Self::Origin);
    /// Whether frames can be sent yet (the other end's address is known).
    fn ready(&self) -> bool;
    /// Sends `frame`.
    fn send(&mut self, frame: StreamFrame) -> impl Future<Output = ()> + Send;
    /// Sends `frame` from a destructor, without waiting.
    fn send_detached(&mut self, frame: StreamFrame);
}

/// Which direction's end completes the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completes {
    /// The incoming direction (ingress: the response body).
    OnIncoming,
    /// The outgoing direction (client: the response body).
    OnOutgoing,
}

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The completing direction ended cleanly.
    Complete,
    /// The stream was reset, by either side or by a timeout.
    Reset(ErrorCode),
}

/// What a pump carried.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// How it ended.
    pub ended: Ended,
    /// Bytes sent as `Data`.
    pub sent: u64,
    /// Bytes received as `Data` and handed on.
    pub received: u64,
}

/// How often liveness is checked.
const LIVENESS_TICK: Duration = Duration::from_secs(1);

/// What woke the pump.
enum Event {
    Frame(Option<StreamFrame>),
    Outgoing(Option<Result<Bytes, io::Error>>),
    Delivered(usize),
    SinkGone,
    Tick,
}

/// One exchange's streams.
pub struct Pump<O: FrameOut> {
    out: O,
    frames: mpsc::Receiver<(StreamFrame, O::Origin)>,
    completes: Completes,
    outgoing: Option<ByteStream>,
    /// Bytes read but not yet covered by credit.
    unsent: Bytes,
    send: SendWindow,
    outgoing_limit: Option<u64>,
    sent: u64,
    incoming: Option<ByteSink>,
    queued: VecDeque<Bytes>,
    receive: ReceiveWindow,
    incoming_ended: bool,
    received: u64,
    /// Whether a vanished consumer resets the stream (ingress: the public client left) or only
    /// discards what still arrives (client: the local service did not read the whole body).
    sink_loss_resets: bool,
    liveness: Option<Liveness>,
    /// Nothing is left to tell the other end.
    finished: bool,
}

/// Pings while idle and a timeout when the other end falls silent.
struct Liveness {
    last_heard: Instant,
    last_sent: Instant,
    /// Last `Data` either way, for the optional data idle timeout.
    last_data: Instant,
    /// Reset after this long without body bytes either way; `None`: never (pings alone keep a
    /// quiet stream, such as a long poll or a silent SSE feed, alive).
    data_idle: Option<Duration>,
    tick: Interval,
}

impl<O: FrameOut> Pump<O> {
    /// A pump sending through `out` and receiving from `frames`.
    pub fn new(out: O, frames: mpsc::Receiver<(StreamFrame, O::Origin)>, completes: Completes) -> Self {
        Self {
            out,
            frames,
            completes,
            outgoing: None,
            unsent: Bytes::new(),
            send: SendWindow::default(),
            outgoing_limit: None,
            sent: 0,
            incoming: None,
            queued: VecDeque::new(),
            receive: ReceiveWindow::default(),
            incoming_ended: false,
            received: 0,
            sink_loss_resets: true,
            liveness: None,
            finished: false,
        }
    }

    /// Pings after [`PING_INTERVAL`] of silence and resets after [`IDLE_TIMEOUT`] without a frame.
    #[must_use]
    /// With `data_idle`, also resets once no body bytes moved either way for that long.
    pub fn with_liveness(mut self, data_idle: Option<Duration>) -> Self {
        let now = Instant::now();
        // The first tick a second from now: a short exchange ends before it and never wakes for it.
        let mut tick = tokio::time::interval_at((now + LIVENESS_TICK).into(), LIVENESS_TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.liveness = Some(Liveness { last_heard: now, last_sent: now, last_data: now, data_idle, tick });
        self
    }

    /// Sends `Data` frames of at most `chunk` bytes (the transport's message limit).
    #[must_use]
    pub fn with_chunk(mut self, chunk: usize) -> Self {
        self.send = SendWindow::with_chunk(chunk);
        self
    }

    /// When the consumer of incoming bytes goes away, discard the rest instead of resetting.
    #[must_use]
    pub fn tolerating_sink_loss(mut self) -> Self {
        self.sink_loss_resets = false;
        self
    }

    /// The transport.
    pub fn out(&mut self) -> &mut O {
        &mut self.out
    }

    /// Sends `outgoing`, refusing more than `limit` bytes with `body_too_large`.
    pub fn send_from(&mut self, outgoing: ByteStream, limit: Option<u64>) {
        self.outgoing = Some(outgoing);
        self.outgoing_limit = limit;
    }

    /// Hands incoming bytes to `sink`.
    pub fn deliver_to(&mut self, sink: ByteSink) {
        self.incoming = Some(sink);
    }

    /// Bytes sent as `Data` so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Whether outgoing bytes are still being sent.
    pub fn sending(&self) -> bool {
        self.outgoing.is_some()
    }

    /// Marks the exchange over without telling the other end (it ended it).
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Runs to the end.
    pub async fn run(mut self) -> Summary {
        loop {
            if let Some(ended) = self.step().await {
                return Summary { ended, sent: self.sent, received: self.received };
            }
        }
    }

    /// Handles the next event; `Some` when the pump ended.
    pub async fn step(&mut self) -> Option<Ended> {
        let can_read = self.outgoing.is_some() && self.unsent.is_empty() && self.send.open() && self.out.ready();
        let can_deliver = self.incoming.is_some() && !self.queued.is_empty();
        let event = tokio::select! {
            incoming = self.frames.recv() => Event::Frame(incoming.map(|(frame, origin)| {
                self.out.learn(origin);
                frame
            })),
            chunk = next_chunk(&mut self.outgoing), if can_read => Event::Outgoing(chunk),
            permit = reserve(self.incoming.as_ref()), if can_deliver => match permit {
                Some(permit) => {
                    let bytes = self.queued.pop_front().unwrap_or_default();
                    let len = bytes.len();
                    permit.send(Ok(bytes));
                    Event::Delivered(len)
                }
                None => Event::SinkGone,
            },
            () = tick(self.liveness.as_mut()) => Event::Tick,
        };
        match event {
            Event::Frame(Some(frame)) => {
                if let Some(liveness) = &mut self.liveness {
                    liveness.last_heard = Instant::now();
                }
                self.on_frame(frame).await
            }
            Event::Frame(None) => Some(self.reset(ErrorCode::Internal).await),
            Event::Outgoing(chunk) => self.on_outgoing(chunk).await,
            Event::Delivered(len) => self.delivered(len).await,
            Event::SinkGone if self.sink_loss_resets => Some(self.reset(ErrorCode::Cancelled).await),
            Event::SinkGone => {
                self.incoming = None;
                self.discard_queued().await;
                None
            }
            Event::Tick => self.on_tick().await,
        }
    }

    async fn on_frame(&mut self, frame: StreamFrame) -> Option<Ended> {
        match frame {
            StreamFrame::Data { seq, bytes } => {
                self.data_moved();
                if let Err(violation) = self.receive.receive(seq, bytes.len()) {
                    tracing::debug!(%violation, "stream broken");
                    return Some(self.reset(ErrorCode::BadFrame).await);
                }
                if !bytes.is_empty() {
                    self.queued.push_back(bytes);
                }
                if self.incoming.is_none() && !self.sink_loss_resets {
                    self.discard_queued().await;
                }
                None
            }
            StreamFrame::End => {
                self.incoming_ended = true;
                self.incoming_done()
            }
            StreamFrame::Credit { bytes } => {
                self.send.grant(bytes);
                self.flush_outgoing().await;
                None
            }
            StreamFrame::Reset { code } => {
                self.finished = true;
                self.fail_incoming(code);
                Some(Ended::Reset(code))
            }
            StreamFrame::Ping => None,
        }
    }

    async fn on_outgoing(&mut self, chunk: Option<Result<Bytes, io::Error>>) -> Option<Ended> {
        match chunk {
            Some(Ok(bytes)) => {
                self.data_moved();
                self.sent += bytes.len() as u64;
                if self.outgoing_limit.is_some_and(|limit| self.sent > limit) {
                    return Some(self.reset(ErrorCode::BodyTooLarge).await);
                }
                self.unsent = bytes;
                self.flush_outgoing().await;
                None
            }
            None => {
                self.outgoing = None;
                self.emit(StreamFrame::End).await;
                if self.completes == Completes::OnOutgoing {
                    self.finished = true;
                    return Some(Ended::Complete);
                }
                None
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "outgoing bytes failed");
                let code = match self.completes {
                    Completes::OnIncoming => ErrorCode::Cancelled,
                    Completes::OnOutgoing => ErrorCode::UpstreamUnreachable,
                };
                Some(self.reset(code).await)
            }
        }
    }

    fn data_moved(&mut self) {
        if let Some(liveness) = &mut self.liveness {
            liveness.last_data = Instant::now();
        }
    }

    async fn flush_outgoing(&mut self) {
        while let Some(frame) = self.send.take(&mut self.unsent) {
            self.emit(frame).await;
        }
    }

    async fn delivered(&mut self, len: usize) -> Option<Ended> {
        self.received += len as u64;
        self.return_credit(len).await;
        self.incoming_done()
    }

    async fn discard_queued(&mut self) {
        while let Some(bytes) = self.queued.pop_front() {
            self.return_credit(bytes.len()).await;
        }
    }

    async fn return_credit(&mut self, len: usize) {
        if let Some(credit) = self.receive.consumed(len) {
            self.emit(StreamFrame::Credit { bytes: credit }).await;
        }
    }

    /// Closes the sink cleanly once the incoming direction ended and everything was handed on.
    fn incoming_done(&mut self) -> Option<Ended> {
        if !self.incoming_ended || !self.queued.is_empty() {
            return None;
        }
        self.incoming = None;
        if self.completes == Completes::OnIncoming {
            self.finished = true;
            return Some(Ended::Complete);
        }
        None
    }

    async fn on_tick(&mut self) -> Option<Ended> {
        let liveness = self.liveness.as_ref()?;
        let data_idle = liveness.data_idle.is_some_and(|limit| liveness.last_data.elapsed() >= limit);
        if liveness.last_heard.elapsed() >= IDLE_TIMEOUT || data_idle {
            return Some(self.reset(ErrorCode::UpstreamTimeout).await);
        }
        if liveness.last_sent.elapsed() >= PING_INTERVAL {
            self.emit(StreamFrame::Ping).await;
        }
        None
    }

    /// Abandons the exchange: tells the other end and fails the consumer.
    async fn reset(&mut self, code: ErrorCode) -> Ended {
        if !self.finished {
            self.finished = true;
            self.emit(StreamFrame::Reset { code }).await;
        }
        self.fail_incoming(code);
        Ended::Reset(code)
    }

    fn fail_incoming(&mut self, code: ErrorCode) {
        if let Some(sink) = self.incoming.take() {
            tokio::spawn(async move {
                let _ = sink.send(Err(io::Error::other(code.as_str()))).await;
            });
        }
    }

    async fn emit(&mut self, frame: StreamFrame) {
        if !self.out.ready() {
            return;
        }
        if let Some(liveness) = &mut self.liveness {
            liveness.last_sent = Instant::now();
        }
        self.out.send(frame).await;
    }
}

impl<O: FrameOut> Drop for Pump<O> {
    fn drop(&mut self) {
        if !self.finished && self.out.ready() {
            self.out.send_detached(StreamFrame::Reset { code: ErrorCode::Cancelled });
        }
    }
}

async fn next_chunk(outgoing: &mut Option<ByteStream>) -> Option<Result<Bytes, io::Error>> {
    match outgoing {
        Some(outgoing) => outgoing.next().await,
        None => std::future::pending().await,
    }
}

async fn reserve(sink: Option<&ByteSink>) -> Option<mpsc::Permit<'_, Result<Bytes, io::Error>>> {
    match sink {
        Some(sink) => sink.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

async fn tick(liveness: Option<&mut Liveness>) {
    match liveness {
        Some(liveness) => {
            liveness.tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A sink that writes what it receives to `write` and shuts it down at the end; for upgraded
/// connections.
pub fn sink_into<W>(mut write: W) -> (ByteSink, tokio::task::JoinHandle<()>)
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (sink, mut received) = mpsc::channel::<Result<Bytes, io::Error>>(2);
    let writer = tokio::spawn(async move {
        while let Some(Ok(bytes)) = received.recv().await {
            if write.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    });
    (sink, writer)
}

/// A stream of the chunks read from `read`; for upgraded connections.
pub fn stream_from<R>(read: R) -> ByteStream
where
    R: tokio::io::AsyncRead + Send + 'static,
{
    Box::pin(tokio_util::io::ReaderStream::with_capacity(read, tunnel_schemas::stream::CHUNK_BYTES))
}

/// A body stream of what arrives through a new sink, after `first` when it is not empty.
pub fn body_channel(
    first: Bytes,
    capacity: usize,
) -> (ByteSink, impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static) {
    let (sink, received) = mpsc::channel(capacity);
    let first = (!first.is_empty()).then_some(Ok(first));
    let rest = futures_util::stream::unfold(received, |mut received| async move {
        received.recv().await.map(|chunk| (chunk, received))
    });
    (sink, futures_util::stream::iter(first).chain(rest))
}
