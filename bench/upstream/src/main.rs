//! `bench-upstream`: the local HTTP service every benchmark configuration forwards to.
//!
//! Small and fast on purpose, so the measurements show the tunnels, not the upstream:
//!
//! - `GET /small`: a 100-byte body;
//! - `GET /1m`: a 1 MiB body;
//! - `GET /1g`: a 1 GiB body, streamed from one shared 1 MiB buffer;
//! - `GET /bytes/<n>`: an `n`-byte body, streamed the same way;
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
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Size of the `/small` body.
const SMALL_BYTES: usize = 100;
/// Size of one streamed chunk, and of the `/1m` body.
const CHUNK_BYTES: usize = 1 << 20;
/// Size of the `/1g` body.
const HUGE_BYTES: u64 = 1 << 30;
/// Largest body `/bytes/<n>` serves.
const MAX_BYTES: u64 = 64 << 30;

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

async fn handle(
    bodies: Bodies,
    request: Request<Incoming>,
) -> Result<Response<Payload>, hyper::Error> {
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
        return Ok(Response::new(Payload {
            chunk: text,
            remaining: len,
        }));
    }
    let path = request.uri().path();
    let len = match path {
        "/1m" => CHUNK_BYTES as u64,
        "/1g" => HUGE_BYTES,
        _ => match path.strip_prefix("/bytes/").map(str::parse::<u64>) {
            Some(Ok(n)) if n <= MAX_BYTES => n,
            Some(_) => {
                let mut response = Response::new(bodies.of(0));
                *response.status_mut() = hyper::StatusCode::BAD_REQUEST;
                return Ok(response);
            }
            None => SMALL_BYTES as u64,
        },
    };
    Ok(Response::new(bodies.of(len)))
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
                .await;
        });
    }
}
