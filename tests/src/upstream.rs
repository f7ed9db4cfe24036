//! The local service behind the tunnel: a real HTTP server that records what reaches it.
//!
//! Routes, by path prefix:
//! - `/echo…`: 200 with the request body, `x-echo-method` and `x-echo-target` headers;
//! - `/cookies`: three `Set-Cookie`s and a non-UTF-8 `x-raw` value;
//! - `/status/<code>`: that status, no body;
//! - `/head`: `content-length: 1234` and that many bytes (none for HEAD);
//! - `/slow`: answers after 30 seconds;
//! - `/stream/<n>`: `n` bytes of [`pattern`], chunked, without a length;
//! - `/sse`: one server-sent event, then nothing for 30 seconds, then a second one;
//! - `/endless`: 16 KiB chunks forever; the drop of the body is reported (the connection closed);
//! - `/flood`: 64 KiB chunks forever, as fast as they are taken; the bytes handed to the
//!   connection are counted ([`Upstream::flooded`]);
//! - `/sha256`: reads the body as it streams and answers its length and SHA-256;
//! - `/ws`: a WebSocket echo server (messages echoed whole; a close echoed with its code);
//! - `/delay/<ms>`: answers `ok` after that many milliseconds;
//! - `/hang`: never answers; the handler's drop is reported (the connection closed);
//! - anything else: 200 `ok`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// A request as the local service received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method token.
    pub method: String,
    /// Raw path and query.
    pub target: String,
    /// Header fields in order, values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Bytes,
}

impl Recorded {
    /// Every value of header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_slice()).collect()
    }

    /// The single value of header `name` as text.
    ///
    /// # Panics
    /// When the header is absent, repeated or not UTF-8.
    pub fn header(&self, name: &str) -> String {
        let values = self.header_values(name);
        assert_eq!(values.len(), 1, "header {name}: {values:?}");
        String::from_utf8(values[0].to_vec()).expect("utf-8 header")
    }
}

/// The running local service.
pub struct Upstream {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Recorded>,
    hangs_dropped: mpsc::UnboundedReceiver<()>,
    flooded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Recorder {
    requests: mpsc::UnboundedSender<Recorded>,
    hangs_dropped: mpsc::UnboundedSender<()>,
    flooded: Arc<AtomicU64>,
}

impl Upstream {
    /// Starts the service on a random port.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (hangs_tx, hangs_dropped) = mpsc::unbounded_channel();
        let flooded = Arc::new(AtomicU64::new(0));
        let recorder = Recorder { requests: requests_tx, hangs_dropped: hangs_tx, flooded: flooded.clone() };
        let app = Router::new().route("/ws", axum::routing::get(websocket_echo)).fallback(handle).with_state(recorder);
        // The same accept loop as the services: it accepts more than hyper's default of 100 headers.
        let task = tokio::spawn(tunnel_kit::serve::serve(listener, app, Default::default(), Default::default()));
        Self { addr, requests, hangs_dropped, flooded, task }
    }

    /// Bytes `/flood` responses have had taken from them so far.
    pub fn flooded(&self) -> u64 {
        self.flooded.load(Ordering::Relaxed)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next request it received.
    ///
    /// # Panics
    /// When none arrives within [`crate::DEADLINE`].
    pub async fn next_request(&mut self) -> Recorded {
        crate::within(crate::DEADLINE, "a request at the upstream", self.requests.recv())
            .await
            .expect("upstream running")
    }

    /// How many requests arrived since the last call (or [`Upstream::next_request`]), without
    /// waiting: a request is counted before its response is sent.
    pub fn take_count(&mut self) -> usize {
        std::iter::from_fn(|| self.requests.try_recv().ok()).count()
    }

    /// Waits until a `/hang` request's connection was closed by the client side.
    ///
    /// # Panics
    /// When that does not happen within `deadline`.
    pub async fn hang_dropped(&mut self, deadline: Duration) {
        crate::within(deadline, "the hanging request to be dropped", self.hangs_dropped.recv()).await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reports its drop: the hanging handler future is dropped when its connection closes.
struct DropReporter(mpsc::UnboundedSender<()>);

impl Drop for DropReporter {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Byte `i` of the `/stream` bodies.
pub fn pattern(i: u64) -> u8 {
    // Truncation is the point: a cheap, position-dependent byte.
    #[allow(clippy::cast_possible_truncation)]
    let byte = (i.wrapping_mul(31).wrapping_add(i >> 11) % 251) as u8;
    byte
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `length` bytes of [`pattern`] in 64 KiB chunks.
fn pattern_stream(length: u64) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    const CHUNK: u64 = 64 << 10;
    futures_util::stream::unfold(0_u64, move |offset| async move {
        (offset < length).then(|| {
            let end = (offset + CHUNK).min(length);
            let chunk: Vec<u8> = (offset..end).map(pattern).collect();
            (Ok(Bytes::from(chunk)), end)
        })
    })
}

async fn websocket_echo(upgrade: axum::extract::ws::WebSocketUpgrade) -> Response {
    use axum::extract::ws::Message;
    upgrade.max_message_size(64 << 20).on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            let echo = match message {
                // The WebSocket library answers a close with the same code; reading on sends it.
                Message::Close(_) | Message::Ping(_) | Message::Pong(_) => continue,
                other => other,
            };
            if socket.send(echo).await.is_err() {
                return;
            }
        }
    })
}

async fn handle(State(recorder): State<Recorder>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 256 << 20).await.unwrap_or_default();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    let recorded = Recorded {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect(),
        body: body.clone(),
    };
    let _ = recorder.requests.send(recorded);
    let path = parts.uri.path();
    let mut response = Response::new(Body::empty());
    if path.starts_with("/echo") {
        *response.body_mut() = Body::from(body);
        let headers = response.headers_mut();
        headers.insert("x-echo-method", HeaderValue::from_str(parts.method.as_str()).expect("method is a token"));
        headers.insert("x-echo-target", HeaderValue::from_str(&target).expect("target is visible ascii"));
    } else if path == "/cookies" {
        let headers = response.headers_mut();
        for cookie in ["a=1; Path=/", "b=2; HttpOnly", "c=3; Secure"] {
            headers.append("set-cookie", HeaderValue::from_static(cookie));
        }
        headers.insert("x-raw", HeaderValue::from_bytes(b"\xff\xfe raw").expect("obs-text is valid"));
    } else if let Some(code) = path.strip_prefix("/status/") {
        *response.status_mut() =
            code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::BAD_REQUEST);
    } else if path == "/head" {
        let body = vec![b'x'; 1234];
        response.headers_mut().insert("content-length", HeaderValue::from_static("1234"));
        *response.body_mut() = Body::from(body);
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        *response.body_mut() = Body::from("ok");
    } else if let Some(length) = path.strip_prefix("/stream/") {
        let length: u64 = length.parse().unwrap_or(0);
        *response.body_mut() = Body::from_stream(pattern_stream(length));
    } else if path == "/sse" {
        response.headers_mut().insert("content-type", HeaderValue::from_static("text/event-stream"));
        let events =
            futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"data: first\n\n")) })
                .chain(futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(Bytes::from_static(b"data: second\n\n"))
                }));
        *response.body_mut() = Body::from_stream(events);
    } else if path == "/endless" {
        let reporter = DropReporter(recorder.hangs_dropped.clone());
        let chunks = futures_util::stream::unfold(reporter, |reporter| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from(vec![b'e'; 16 << 10])), reporter))
        });
        *response.body_mut() = Body::from_stream(chunks);
    } else if path == "/flood" {
        let chunks = futures_util::stream::repeat_with(move || {
            recorder.flooded.fetch_add(64 << 10, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from(vec![b'f'; 64 << 10]))
        });
        *response.body_mut() = Body::from_stream(chunks);
    } else if path == "/sha256" {
        *response.body_mut() = Body::from(format!("{} {}", body.len(), sha256_hex(&body)));
    } else if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(30)).await;
    } else if path == "/hang" {
        let _reporter = DropReporter(recorder.hangs_dropped.clone());
        std::future::pending::<()>().await;
    } else {
        *response.body_mut() = Body::from("ok");
    }
    response
}
