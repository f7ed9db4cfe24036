//! One connection to a session-host: the handshake, then serving requests until the connection
//! ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tunnel_schemas::events::{Failure, TunnelReply, TunnelRequest};
use tunnel_schemas::frames::{ClientFrame, Hello, HostFrame, StreamId, Welcome};
use tunnel_schemas::{ErrorCode, MAX_FRAME_BYTES, PROTOCOL_VERSION, encode};

use crate::events::Event;
use crate::forward::Forwarder;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Time the server has to complete the connection and the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence from the server after which the connection is presumed dead (the server pings every
/// 15 s by default).
const SERVER_SILENCE: Duration = Duration::from_secs(60);
/// Frames queued for the WebSocket writer.
const WRITE_QUEUE: usize = 1024;

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

/// Connects to `server`, says hello and waits for the welcome.
pub async fn open(
    server: &str,
    name: Option<&str>,
    resume: Option<&Resume>,
) -> Result<(Welcome, Socket), OpenError> {
    let hello = Hello {
        v: PROTOCOL_VERSION,
        name: resume
            .map(|r| r.name.clone())
            .or_else(|| name.map(str::to_owned)),
        resume_secret: resume.map(|r| r.secret.clone()),
        agent: concat!("tunnel/", env!("CARGO_PKG_VERSION")).to_owned(),
    };
    let handshake = async {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(server, Some(config), true)
                .await
                .map_err(|e| OpenError::Transient(format!("cannot connect to {server}: {e}")))?;
        let hello = encode(&ClientFrame::Hello(hello));
        socket
            .send(Message::Binary(hello.into()))
            .await
            .map_err(|e| OpenError::Transient(e.to_string()))?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    return match tunnel_schemas::decode::<HostFrame>(&bytes, MAX_FRAME_BYTES) {
                        Ok(HostFrame::Welcome(welcome)) => Ok((welcome, socket)),
                        Ok(HostFrame::Refused(failure)) => Err(classify(failure)),
                        Ok(HostFrame::Request { .. }) => {
                            Err(OpenError::Transient("request before welcome".into()))
                        }
                        Err(e) => Err(OpenError::Transient(format!(
                            "undecodable frame from the server: {e}"
                        ))),
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
        | ErrorCode::HandshakeTimeout => {
            OpenError::Transient(format!("{}: {}", failure.code, failure.detail))
        }
        _ => OpenError::Fatal(failure),
    }
}

/// Serves requests on `socket` until it ends or `shutdown` is cancelled.
pub async fn serve(
    socket: Socket,
    welcome: &Welcome,
    forwarder: &Arc<Forwarder>,
    events: &mpsc::Sender<Event>,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let (sink, mut stream) = socket.split();
    let (out, out_rx) = mpsc::channel(WRITE_QUEUE);
    let writer = tokio::spawn(tunnel_kit::sink::write_batched(sink, out_rx));
    let max_body = usize::try_from(welcome.max_reply_bytes).unwrap_or(usize::MAX);
    // Aborted on drop: requests of a lost session are not answered on another one.
    let mut requests = JoinSet::new();
    let mut last_heard = Instant::now();
    let end = loop {
        let silence = tokio::time::sleep_until((last_heard + SERVER_SILENCE).into());
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = out.send(Message::Binary(encode(&ClientFrame::Bye).into())).await;
                let _ = out.send(Message::Close(None)).await;
                break SessionEnd::Shutdown;
            }
            message = stream.next() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Binary(bytes))) => match tunnel_schemas::decode::<HostFrame>(&bytes, MAX_FRAME_BYTES) {
                        Ok(HostFrame::Request { stream, request }) => {
                            requests.spawn(answer(stream, request, forwarder.clone(), out.clone(), events.clone(), max_body));
                        }
                        Ok(HostFrame::Refused(failure)) if failure.code == ErrorCode::GoingAway => break SessionEnd::GoingAway,
                        Ok(HostFrame::Refused(failure)) => match classify(failure) {
                            OpenError::Fatal(failure) => break SessionEnd::Fatal(failure),
                            OpenError::Transient(reason) => break SessionEnd::Lost(reason),
                        },
                        Ok(HostFrame::Welcome(_)) => break SessionEnd::Lost("unexpected welcome".into()),
                        Err(e) => break SessionEnd::Lost(format!("undecodable frame from the server: {e}")),
                    },
                    Some(Ok(Message::Close(_))) | None => break SessionEnd::Lost("server closed the connection".into()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                }
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            () = silence => break SessionEnd::Lost("server stopped answering".into()),
        }
    };
    drop(out);
    if matches!(end, SessionEnd::Shutdown) {
        // Let the goodbye reach the server before the socket goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
    end
}

/// Forwards one request and sends its reply.
async fn answer(
    stream: StreamId,
    request: Bytes,
    forwarder: Arc<Forwarder>,
    out: mpsc::Sender<Message>,
    events: mpsc::Sender<Event>,
    max_body: usize,
) {
    let started = Instant::now();
    let request = match tunnel_schemas::decode::<TunnelRequest>(&request, MAX_FRAME_BYTES) {
        Ok(request) if request.v == PROTOCOL_VERSION => request,
        Ok(request) => {
            let detail = format!(
                "request event version {} is not {PROTOCOL_VERSION}",
                request.v
            );
            return reply(
                &out,
                stream,
                &TunnelReply::Failure(Failure::new(ErrorCode::ProtocolVersion, detail)),
            )
            .await;
        }
        Err(e) => {
            return reply(
                &out,
                stream,
                &TunnelReply::Failure(Failure::new(ErrorCode::BadFrame, e.to_string())),
            )
            .await;
        }
    };
    let request_id = request.request_id.clone();
    let method = request.head.method.clone();
    let target = request.head.target.clone();
    let span = tracing::info_span!("request", request_id = %request_id);
    let answer = forwarder.forward(request, max_body).instrument(span).await;
    let (status, error) = match &answer {
        TunnelReply::Response(response) => (response.head.status, None),
        TunnelReply::Failure(failure) => (
            failure.code.http_status(),
            Some(failure.code.as_str().to_owned()),
        ),
    };
    reply(&out, stream, &answer).await;
    let event = Event::Request {
        request_id,
        method,
        target,
        status,
        error,
        duration_ms: Event::millis(started.elapsed()),
    };
    // Request events are best effort: a reader that falls behind loses some, never slows the tunnel.
    let _ = events.try_send(event);
}

async fn reply(out: &mpsc::Sender<Message>, stream: StreamId, reply: &TunnelReply) {
    let frame = ClientFrame::Reply {
        stream,
        reply: encode(reply).into(),
    };
    if out
        .send(Message::Binary(encode(&frame).into()))
        .await
        .is_err()
    {
        tracing::debug!(stream, "session ended before the reply was sent");
    }
}
