//! The HTTP accept loop shared by ingress and session-host: HTTP/1.1 and h2c on one port (or
//! HTTPS, HTTP/2 by ALPN, when given a TLS configuration), upgrades (WebSocket) allowed, the peer
//! address available as [`ConnectInfo`], graceful drain on shutdown.
//!
//! `axum::serve` hides hyper's limits; this loop sets them, so a slow or silent client cannot
//! hold the server:
//! - at most [`ServeOptions::max_connections`] connections at once: beyond it the loop stops
//!   accepting until one closes (the kernel's backlog holds the rest);
//! - the TLS handshake, the first bytes (hyper's HTTP/1-or-HTTP/2 detection, which has no timer
//!   of its own) and every HTTP/1 request head must arrive within
//!   [`ServeOptions::header_read_timeout`];
//! - a [`Gate`] may refuse a connection (per-address rates, pending handshakes) before anything
//!   is read from it; the refused connection gets the gate's status to its first request.
//!
//! The loop only accepts and spawns: the gate, the TLS handshake and HTTP run in the
//! connection's own task.

use std::any::Any;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Default of [`ServeOptions::max_headers`].
pub const DEFAULT_MAX_HEADERS: usize = 1024;
/// Default of [`ServeOptions::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`ServeOptions::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Bytes of the HTTP/2 connection preface: hyper reads this many (or until they differ from the
/// preface) to choose HTTP/1 or HTTP/2, with no timer of its own.
const PREFACE_BYTES: usize = 24;

/// Limits and timeouts of the accept loop.
#[derive(Clone)]
pub struct ServeOptions {
    /// Serve HTTPS with this configuration instead of plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Most header fields hyper parses in one request head (more → 431 from hyper).
    pub max_headers: usize,
    /// Time a client has for the TLS handshake, its first bytes and each complete request head
    /// (slowloris guard); the connection is closed when it runs out.
    pub header_read_timeout: Duration,
    /// Most connections open at once; the loop stops accepting while this many are open.
    pub max_connections: usize,
    /// Decides on each new connection before anything is read from it; none admits all.
    pub gate: Option<Arc<dyn Gate>>,
    /// Time open connections get to finish after shutdown starts.
    pub grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            max_headers: DEFAULT_MAX_HEADERS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            gate: None,
            grace: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("tls", &self.tls.is_some())
            .field("max_headers", &self.max_headers)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_connections", &self.max_connections)
            .field("gate", &self.gate.is_some())
            .field("grace", &self.grace)
            .finish()
    }
}

/// Admission of new connections, decided in each connection's own task before anything is read
/// from it. The gate counts its refusals itself.
pub trait Gate: Send + Sync {
    /// Admits a connection from `peer`, with a ticket its requests carry as an extension; or
    /// refuses it with a status (429, 503), the answer to its first request, after which it is
    /// closed.
    ///
    /// # Errors
    /// The status of the refusal.
    fn admit(&self, peer: SocketAddr) -> Result<Ticket, StatusCode>;
}

/// What a [`Gate`] attaches to an admitted connection: an extension of each of its requests,
/// dropped when the connection ends.
#[derive(Clone)]
pub struct Ticket(Arc<dyn Any + Send + Sync>);

impl Ticket {
    /// A ticket holding `value`.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self(Arc::new(value))
    }

    /// The value, when it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits up to
/// [`ServeOptions::grace`] for open connections to finish.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken, options: ServeOptions) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_headers(options.max_headers)
        .header_read_timeout(options.header_read_timeout)
        .timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let shared = Arc::new(Shared {
        builder,
        router,
        tls: options.tls.map(tokio_rustls::TlsAcceptor::from),
        gate: options.gate,
        timeout: options.header_read_timeout,
    });
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        tokio::spawn(shared.clone().connection(stream, peer, graceful.watcher(), permit));
    }
    drop(listener);
    if tokio::time::timeout(options.grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?options.grace, "connections still open after the grace period; closing them");
    }
}

/// What every connection of one listener shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    gate: Option<Arc<dyn Gate>>,
    /// The header read timeout, also for the TLS handshake and the first bytes.
    timeout: Duration,
}

impl Shared {
    /// Runs one connection to its end; `_permit` holds its place under the connection cap.
    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: Watcher,
        _permit: OwnedSemaphorePermit,
    ) {
        let _ = stream.set_nodelay(true);
        let admission = self.gate.as_ref().map_or(Ok(None), |gate| gate.admit(peer).map(Some));
        match &self.tls {
            None => self.http(FirstBytes::new(stream, self.timeout), peer, admission, watcher).await,
            Some(acceptor) => {
                let stream = match tokio::time::timeout(self.timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "tls handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "tls handshake timed out"),
                };
                self.http(FirstBytes::new(stream, self.timeout), peer, admission, watcher).await;
            }
        }
    }

    async fn http<I>(&self, io: I, peer: SocketAddr, admission: Result<Option<Ticket>, StatusCode>, watcher: Watcher)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let (router, admission) = (router.clone(), admission.clone());
            async move {
                let ticket = match admission {
                    Ok(ticket) => ticket,
                    Err(status) => return Ok::<_, Infallible>(refusal(status)),
                };
                request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                if let Some(ticket) = ticket {
                    request.extensions_mut().insert(ticket);
                }
                router.oneshot(request.map(axum::body::Body::new)).await
            }
        });
        let connection = self.builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        if let Err(e) = watcher.watch(connection).await {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    }
}

/// The answer to every request of a connection the gate refused; the connection then closes.
fn refusal(status: StatusCode) -> Response {
    let mut response = (status, "too many connections from this address or pending handshakes\n").into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// A connection whose first [`PREFACE_BYTES`] must arrive before a deadline: hyper's protocol
/// detection waits for them without a timer, so a client that connects and sends nothing (or a
/// few bytes of the HTTP/2 preface) would hold the connection forever. Past those bytes, hyper's
/// own header read timeout takes over.
struct FirstBytes<T> {
    io: T,
    /// Armed until the first bytes arrived.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    remaining: usize,
}

impl<T> FirstBytes<T> {
    fn new(io: T, timeout: Duration) -> Self {
        Self { io, deadline: Some(Box::pin(tokio::time::sleep(timeout))), remaining: PREFACE_BYTES }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstBytes<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.remaining = this.remaining.saturating_sub(buf.filled().len() - before);
                if this.remaining == 0 {
                    this.deadline = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstBytes<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(options: ServeOptions) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let router = Router::new().fallback(|| async { "ok" });
        tokio::spawn(serve(listener, router, CancellationToken::new(), options));
        addr
    }

    /// Reads until the server closes; what it sent.
    async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut bytes));
        match read.await {
            Ok(_) => bytes,
            Err(_) => panic!("the server kept the connection open; it sent {:?}", String::from_utf8_lossy(&bytes)),
        }
    }

    fn short_timeout() -> ServeOptions {
        ServeOptions { header_read_timeout: Duration::from_millis(300), ..ServeOptions::default() }
    }

    #[tokio::test]
    async fn a_silent_connection_or_a_partial_http2_preface_is_closed_at_the_header_timeout() {
        let addr = start(short_timeout()).await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut preface = TcpStream::connect(addr).await.expect("connect");
        preface.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
        assert!(until_closed(&mut silent).await.is_empty());
        assert!(until_closed(&mut preface).await.is_empty());
    }

    #[tokio::test]
    async fn a_trickled_request_head_is_cut_at_the_header_timeout() {
        let addr = start(short_timeout()).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        let trickle = async {
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1234567890" {
                if slow.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await; // pacing the trickle
            }
        };
        trickle.await;
        let answer = until_closed(&mut slow).await;
        assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&answer));
    }

    #[tokio::test]
    async fn beyond_the_connection_cap_new_connections_wait_for_a_free_place() {
        let addr = start(ServeOptions { max_connections: 1, ..ServeOptions::default() }).await;
        let mut first = TcpStream::connect(addr).await.expect("connect");
        first.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut answer = [0; 12];
        first.read_exact(&mut answer).await.expect("first is served");
        let mut second = TcpStream::connect(addr).await.expect("the kernel backlog takes it");
        second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let waiting = tokio::time::timeout(Duration::from_millis(300), second.read(&mut answer)).await;
        assert!(waiting.is_err(), "the second connection is not served while the first is open");
        drop(first);
        assert!(until_closed(&mut second).await.starts_with(b"HTTP/1.1 200"));
    }

    struct Refuse;
    impl Gate for Refuse {
        fn admit(&self, _peer: SocketAddr) -> Result<Ticket, StatusCode> {
            Err(StatusCode::TOO_MANY_REQUESTS)
        }
    }

    #[tokio::test]
    async fn a_refused_connection_gets_the_gates_status_and_is_closed() {
        let addr = start(ServeOptions { gate: Some(Arc::new(Refuse)), ..ServeOptions::default() }).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let answer = until_closed(&mut stream).await;
        assert!(answer.starts_with(b"HTTP/1.1 429"), "{}", String::from_utf8_lossy(&answer));
    }
}
