//! Raw protocol access for the scenarios that must control every byte: HTTP requests written by
//! hand (odd query strings, non-UTF-8 headers) and WebSocket sessions that misbehave.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tunnel_schemas::frames::{ClientFrame, Hello, HostFrame};

use crate::{DEADLINE, within};

/// A response read off the socket.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Every value of header `name` (lowercase), in order.
    pub fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_slice()).collect()
    }
}

/// Sends `request` (which should say `Connection: close`) to `addr` and reads the response to EOF.
///
/// # Panics
/// On socket errors, a malformed response or the deadline.
pub async fn http(addr: SocketAddr, request: &[u8]) -> RawResponse {
    within(DEADLINE, "a raw http response", async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("write request");
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.expect("read response");
        parse(&bytes)
    })
    .await
}

/// Sends `request` to `addr` from `source` (another loopback address, for per-address limits;
/// `None` for the default) while reading whatever comes back until the server closes; the
/// response when one came, `None` when the server closed (or reset) without a status.
/// Write errors are ignored: a server may answer and close before a hostile request is sent.
///
/// # Panics
/// When the server neither answers nor closes within the deadline.
pub async fn exchange(addr: SocketAddr, source: Option<std::net::IpAddr>, request: Vec<u8>) -> Option<RawResponse> {
    within(DEADLINE, "the server to answer or close", async {
        let stream = connect_from(addr, source).await;
        let (mut read, mut write) = stream.into_split();
        let writing = tokio::spawn(async move {
            let _ = write.write_all(&request).await;
            write // kept open until the reading ends: a half-close could end a request early
        });
        let mut bytes = Vec::new();
        let mut chunk = vec![0; 64 << 10];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
        drop(writing.await);
        bytes.windows(4).any(|w| w == b"\r\n\r\n").then(|| parse(&bytes))
    })
    .await
}

/// A TCP connection to `addr`, from the loopback address `source` when given.
///
/// # Panics
/// When it cannot connect.
pub async fn connect_from(addr: SocketAddr, source: Option<std::net::IpAddr>) -> TcpStream {
    let Some(source) = source else { return TcpStream::connect(addr).await.expect("connect") };
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind the source address");
    socket.connect(addr).await.expect("connect")
}

fn parse(bytes: &[u8]) -> RawResponse {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("complete response head");
    let head = &bytes[..split];
    let rest = &bytes[split + 4..];
    let mut lines = head.split(|b| *b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let status_line = String::from_utf8_lossy(lines.next().expect("status line")).into_owned();
    let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("status code");
    let headers: Vec<(String, Vec<u8>)> = lines
        .map(|line| {
            let colon = line.iter().position(|b| *b == b':').expect("header colon");
            let value = line[colon + 1..].trim_ascii();
            (String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase(), value.to_vec())
        })
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    RawResponse { status, headers, body }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16).expect("chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A raw WebSocket session with a session-host.
pub type WsSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to the session-host at `server` (`ws://host:port`).
///
/// # Panics
/// When the upgrade fails.
pub async fn ws_connect(server: &str) -> WsSocket {
    let url = format!("{server}{}", tunnel_schemas::frames::CONNECT_PATH);
    within(DEADLINE, "the websocket upgrade", tokio_tungstenite::connect_async(url)).await.expect("upgrade").0
}

/// Sends a hello of protocol version `v` and returns the host's first frame.
///
/// # Panics
/// On socket errors or the deadline.
pub async fn ws_hello(socket: &mut WsSocket, v: u16, name: Option<&str>, resume_secret: Option<&str>) -> HostFrame {
    let hello = Hello {
        v,
        name: name.map(str::to_owned),
        resume_secret: resume_secret.map(str::to_owned),
        agent: "raw-test".into(),
        record: false,
        token: None,
        policy: tunnel_schemas::policy::PublicPolicy::default(),
        shared: false,
    };
    socket.send(Message::Binary(tunnel_schemas::encode(&ClientFrame::Hello(hello)).into())).await.expect("send hello");
    ws_next_frame(socket).await.expect("a frame after hello")
}

/// The host's next protocol frame; `None` when the socket closed (the close reason is skipped).
///
/// # Panics
/// On an undecodable frame or the deadline.
pub async fn ws_next_frame(socket: &mut WsSocket) -> Option<HostFrame> {
    within(DEADLINE, "a host frame", async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    return Some(tunnel_schemas::decode(&bytes, usize::MAX).expect("decodable host frame"));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
}

/// Waits until the host closes `socket`, returning the close code when one was sent.
///
/// # Panics
/// When the socket stays open past the deadline.
pub async fn ws_closed(socket: &mut WsSocket) -> Option<u16> {
    within(DEADLINE, "the host to close the socket", async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
}
