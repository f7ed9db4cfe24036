//! `bench-upstream`: the local HTTP service every benchmark configuration forwards to.
//!
//! Small and fast on purpose, so the measurements show the tunnels, not the upstream:
//!
//! - `GET /small`: a 100-byte body;
//! - `GET /1m`: a 1 MiB body;
//! - `GET /1g`: a 1 GiB body, streamed from one shared 1 MiB buffer;
//! - `GET /bytes/<n>`: an `n`-byte body, streamed the same way;
//! - `GET /sse/<ms>`: server-sent events every `ms` milliseconds, without end, each
//!   `id: <n>` and `data: <n>` counting from 0 (for long-lived streams in `bench/soak`);
//! - `GET /ws` with a WebSocket upgrade: echoes every text and binary message (`bench/soak`);
//! - `POST` or `PUT` anywhere: the body is read and dropped, the answer says how many bytes came;
//! - anything else: the small body.
//!
//! Usage: `bench-upstream [--listen ADDR] [--threads N]`. The first line on stdout is
//! `listening <addr>`, so a driver can bind port 0 and learn the port.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Either};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{
    CONNECTION, CONTENT_TYPE, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Size of the `/small` body.
const SMALL_BYTES: usize = 100;
/// Size of one streamed chunk, and of the `/1m` body.
const CHUNK_BYTES: usize = 1 << 20;
/// Size of the `/1g` body.
const HUGE_BYTES: u64 = 1 << 30;
/// Largest body `/bytes/<n>` serves.
const MAX_BYTES: u64 = 64 << 30;
/// Shortest interval between two events of `/sse/<ms>`.
const MIN_SSE_INTERVAL_MS: u64 = 10;

/// A body of `remaining` bytes cut from one shared buffer, with an exact length (so hyper sends
/// `Content-Length`, as most real services do for static content).
struct Payload {
    chunk: Bytes,
    remaining: u64,
}

impl Body for Payload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(self.chunk.len());
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// An endless event stream: one `id: <n>` / `data: <n>` event per tick, from 0.
struct Events {
    ticks: tokio::time::Interval,
    next: u64,
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.ticks.poll_tick(cx).is_pending() {
            return Poll::Pending;
        }
        let n = self.next;
        self.next += 1;
        let event = format!("id: {n}\ndata: {n}\n\n");
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}

/// What `handle` answers with: a sized body or an event stream.
type Answer = Response<Either<Payload, Events>>;

#[derive(Clone)]
struct Bodies {
    small: Bytes,
    big: Bytes,
}

impl Bodies {
    fn new() -> Self {
        let mut small = b"hello from bench-upstream ".repeat(4);
        small.resize(SMALL_BYTES - 1, b'.');
        small.push(b'\n');
        let big: Vec<u8> = (0..CHUNK_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
        Self {
            small: small.into(),
            big: big.into(),
        }
    }

    fn of(&self, len: u64) -> Payload {
        let chunk = if len <= self.small.len() as u64 {
            self.small.clone()
        } else {
            self.big.clone()
        };
        Payload {
            chunk,
            remaining: len,
        }
    }
}

/// A response with `body` and `status`.
fn sized(status: StatusCode, body: Payload) -> Answer {
    let mut response = Response::new(Either::Left(body));
    *response.status_mut() = status;
    response
}

async fn handle(bodies: Bodies, mut request: Request<Incoming>) -> Result<Answer, hyper::Error> {
    if request.uri().path() == "/ws" {
        return Ok(upgrade_to_echo(&bodies, &mut request));
    }
    if matches!(*request.method(), Method::POST | Method::PUT) {
        let mut body = request.into_body();
        let mut received: u64 = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                received += data.len() as u64;
            }
        }
        let text = Bytes::from(format!("received {received}\n"));
        let len = text.len() as u64;
        let body = Payload {
            chunk: text,
            remaining: len,
        };
        return Ok(sized(StatusCode::OK, body));
    }
    let path = request.uri().path();
    if let Some(ms) = path.strip_prefix("/sse/") {
        return Ok(match ms.parse::<u64>() {
            Ok(ms) => event_stream(ms.max(MIN_SSE_INTERVAL_MS)),
            Err(_) => sized(StatusCode::BAD_REQUEST, bodies.of(0)),
        });
    }
    let len = match path {
        "/1m" => CHUNK_BYTES as u64,
        "/1g" => HUGE_BYTES,
        _ => match path.strip_prefix("/bytes/").map(str::parse::<u64>) {
            Some(Ok(n)) if n <= MAX_BYTES => n,
            Some(_) => return Ok(sized(StatusCode::BAD_REQUEST, bodies.of(0))),
            None => SMALL_BYTES as u64,
        },
    };
    Ok(sized(StatusCode::OK, bodies.of(len)))
}

/// `/sse/<ms>`: an event every `interval_ms`, the first at once.
fn event_stream(interval_ms: u64) -> Answer {
    let ticks = tokio::time::interval(std::time::Duration::from_millis(interval_ms));
    let mut response = Response::new(Either::Right(Events { ticks, next: 0 }));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// `/ws`: answers a WebSocket upgrade with 101 and echoes the messages in a spawned task;
/// anything else gets 400.
fn upgrade_to_echo(bodies: &Bodies, request: &mut Request<Incoming>) -> Answer {
    let wants_websocket = request
        .headers()
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = request
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .filter(|_| wants_websocket)
    else {
        return sized(StatusCode::BAD_REQUEST, bodies.of(0));
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        echo(socket).await;
    });
    let mut response = sized(StatusCode::SWITCHING_PROTOCOLS, bodies.of(0));
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        accept.parse().expect("base64 is a valid header value"),
    );
    response
}

/// Sends every text and binary message back until the peer closes or the socket fails.
async fn echo<S>(mut socket: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(message)) = socket.next().await {
        if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err() {
            return;
        }
        // Pings are answered and a close is returned by tungstenite itself.
    }
}

fn main() -> std::io::Result<()> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut threads = 2usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--listen", Some(v)) => listen = v.parse().map_err(std::io::Error::other)?,
            ("--threads", Some(v)) => threads = v.parse().map_err(std::io::Error::other)?,
            _ => {
                eprintln!("usage: bench-upstream [--listen ADDR] [--threads N]");
                std::process::exit(2);
            }
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?
        .block_on(serve(listen))
}

async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening {}", listener.local_addr()?)?;
        stdout.flush()?;
    }
    let bodies = Bodies::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(bodies.clone(), request));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}
