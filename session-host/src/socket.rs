//! The sessions' WebSockets (RFC 6455, server side, no extensions), framed here rather than by
//! tungstenite so that a session holds no buffer while its socket is quiet.
//!
//! tungstenite keeps a read buffer per socket for the socket's life, and it grows to the largest
//! frame ever read (a data chunk, 63 KiB): ten thousand idle sessions paid 80 MiB for read buffers
//! alone. Here a [`Reader`] waits for the next message with a few hundred bytes on its own stack
//! and allocates only once bytes arrive; the writer ([`write_frames`]) hands each batch of
//! frames to one vectored write, headers from its stack and payloads as they are.

use std::io::{self, IoSlice};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Bytes a quiet socket's first read takes, into a buffer on the reader's stack.
const FIRST_READ_BYTES: usize = 512;
/// Room a socket's reads get once it wakes up: several small frames fit in one read. A larger
/// frame gets room for the rest of it once its header is read, up to what has already arrived
/// (at least [`READ_BYTES`]): a buffer grows with the bytes received, not with a length claimed.
const WAKE_READ_BYTES: usize = 4 << 10;
/// Room a busy socket's reads get: a data chunk and its framing fit in one read.
const READ_BYTES: usize = 80 << 10;
/// Longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
const MAX_HEADER_BYTES: usize = 14;
/// Longest payload of a control frame (ping, pong, close).
const MAX_CONTROL_BYTES: usize = 125;
/// Most payload bytes of queued frames the writer takes into one write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// Most frames in one write: two slices each, well within the kernel's 1,024 per `writev`.
const WRITE_BATCH_FRAMES: usize = 256;

/// Close codes the host sends (RFC 6455 §7.4.1).
pub mod close_code {
    /// The session ended normally.
    pub const NORMAL: u16 = 1000;
    /// The host is going away.
    pub const AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL: u16 = 1002;
    /// The peer broke a rule of the host.
    pub const POLICY: u16 = 1008;
    /// A message was too large.
    pub const SIZE: u16 = 1009;
    /// The host failed.
    pub const ERROR: u16 = 1011;
}

/// The upgrade a client asked for: the `101` response to send and the socket to come.
pub struct Upgrade {
    /// Resolves to the socket once the `101` response is sent.
    pub socket: OnUpgrade,
    /// The `101 Switching Protocols` response.
    pub response: Response,
}

/// Checks a WebSocket upgrade request (HTTP/1.1 `GET` with `Upgrade: websocket`, version 13 and
/// a key) and prepares the answer.
///
/// # Errors
/// [`Refusal`]: `426` for a missing or foreign upgrade or version, `400` for a missing key.
pub fn accept(mut request: Request) -> Result<Upgrade, Refusal> {
    let headers = request.headers();
    if !has_token(headers, header::CONNECTION, "upgrade") || !has_token(headers, header::UPGRADE, "websocket") {
        return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this endpoint takes a WebSocket upgrade"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        return Err(refuse(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 is required"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing"));
    };
    let Ok(accept) = HeaderValue::try_from(derive_accept_key(key.as_bytes())) else {
        return Err(refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is not valid"));
    };
    let Some(socket) = request.extensions_mut().remove::<OnUpgrade>() else {
        return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
    };
    let response = (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response();
    Ok(Upgrade { socket, response })
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Why an upgrade request was refused; answered with its status and a one-line reason.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    detail: &'static str,
}

fn refuse(status: StatusCode, detail: &'static str) -> Refusal {
    Refusal { status, detail }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, [(header::SEC_WEBSOCKET_VERSION, "13")], self.detail).into_response()
    }
}

/// What the client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole binary message.
    Binary(Bytes),
    /// A whole text message (not part of the tunnel protocol).
    Text,
    /// A ping, to be answered with a pong carrying the same bytes.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame, or the end of the connection between messages.
    Closed,
}

/// Why a socket cannot be read further.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A frame or message is larger than the limit.
    #[error("message of {size} bytes is too long (at most {limit})")]
    TooLarge {
        /// The size the frame announced, or the message reached.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// The client broke RFC 6455.
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A frame header, parsed.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Bytes the header takes.
    size: usize,
    /// Bytes of payload that follow it.
    len: u64,
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

impl Header {
    /// Parses the header at the start of `bytes`; `None` while it is incomplete.
    fn parse(bytes: &[u8]) -> Result<Option<Self>, ReadError> {
        let [first, second, ..] = *bytes else { return Ok(None) };
        if first & 0x70 != 0 {
            return Err(ReadError::Protocol("reserved bits set without an extension"));
        }
        if second & 0x80 == 0 {
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let (len, at) = match second & 0x7f {
            126 => match bytes.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match bytes.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or_default()), 10),
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        let Some(mask) = bytes.get(at..at + 4) else { return Ok(None) };
        let header = Self {
            fin: first & 0x80 != 0,
            opcode: first & 0x0f,
            mask: mask.try_into().unwrap_or_default(),
            size: at + 4,
            len,
        };
        match header.opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => Ok(Some(header)),
            OP_CLOSE | OP_PING | OP_PONG if !header.fin => Err(ReadError::Protocol("fragmented control frame")),
            OP_CLOSE | OP_PING | OP_PONG if header.len > MAX_CONTROL_BYTES as u64 => {
                Err(ReadError::Protocol("control frame longer than 125 bytes"))
            }
            OP_CLOSE | OP_PING | OP_PONG => Ok(Some(header)),
            _ => Err(ReadError::Protocol("unknown opcode")),
        }
    }
}

/// XORs `payload` with the frame's masking key.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut words = payload.chunks_exact_mut(8);
    for word in &mut words {
        let value = u64::from_ne_bytes((&*word).try_into().unwrap_or_default()) ^ wide;
        word.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// A message being assembled from fragments.
struct Fragments {
    text: bool,
    bytes: BytesMut,
}

/// Reads messages from a client's socket.
pub struct Reader<R> {
    io: R,
    /// Bytes read and not yet framed; no allocation between messages.
    buf: BytesMut,
    fragments: Option<Fragments>,
    limit: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader of `io` that refuses frames and messages over `limit` bytes.
    pub fn new(io: R, limit: usize) -> Self {
        Self { io, buf: BytesMut::new(), fragments: None, limit }
    }

    /// The next message, ping, pong or close.
    ///
    /// # Errors
    /// [`ReadError`]: the socket is then unusable.
    pub async fn next(&mut self) -> Result<Incoming, ReadError> {
        loop {
            if let Some(incoming) = self.parse()? {
                return Ok(incoming);
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() && self.fragments.is_none() {
                    Ok(Incoming::Closed)
                } else {
                    Err(ReadError::Protocol("connection closed within a message"))
                };
            }
        }
    }

    /// Frames what is buffered; `None` when more bytes are needed.
    fn parse(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let Some(header) = Header::parse(&self.buf)? else { return Ok(None) };
            let assembled = self.fragments.as_ref().map_or(0, |f| f.bytes.len() as u64);
            if header.len.saturating_add(assembled) > self.limit as u64 {
                return Err(ReadError::TooLarge { size: header.len.saturating_add(assembled), limit: self.limit });
            }
            let frame_len = header.size + header.len as usize;
            if self.buf.len() < frame_len {
                // Room for the rest of the frame, but never much more than has arrived: a client
                // announcing 16 MiB and sending nothing costs no 16 MiB.
                self.buf.reserve((frame_len - self.buf.len()).min(READ_BYTES.max(self.buf.len())));
                return Ok(None);
            }
            self.buf.advance(header.size);
            let mut payload = self.buf.split_to(header.len as usize);
            unmask(&mut payload, header.mask);
            if let Some(incoming) = self.on_frame(&header, payload)? {
                return Ok(Some(incoming));
            }
        }
    }

    fn on_frame(&mut self, header: &Header, payload: BytesMut) -> Result<Option<Incoming>, ReadError> {
        let message =
            |text: bool, bytes: BytesMut| if text { Incoming::Text } else { Incoming::Binary(bytes.freeze()) };
        match (header.opcode, self.fragments.as_mut()) {
            (OP_PING, _) => Ok(Some(Incoming::Ping(payload.freeze()))),
            (OP_PONG, _) => Ok(Some(Incoming::Pong)),
            (OP_CLOSE, _) => Ok(Some(Incoming::Closed)),
            (OP_TEXT | OP_BINARY, Some(_)) => Err(ReadError::Protocol("new message within a fragmented one")),
            (OP_TEXT | OP_BINARY, None) if header.fin => Ok(Some(message(header.opcode == OP_TEXT, payload))),
            (OP_TEXT | OP_BINARY, None) => {
                self.fragments = Some(Fragments { text: header.opcode == OP_TEXT, bytes: payload });
                Ok(None)
            }
            (_, None) => Err(ReadError::Protocol("continuation without a message")),
            (_, Some(fragments)) => {
                fragments.bytes.extend_from_slice(&payload);
                if !header.fin {
                    return Ok(None);
                }
                Ok(self.fragments.take().map(|f| message(f.text, f.bytes)))
            }
        }
    }

    /// Reads more bytes; 0 at the end of the connection.
    async fn fill(&mut self) -> io::Result<usize> {
        if !self.buf.is_empty() || self.fragments.is_some() {
            if self.buf.len() == self.buf.capacity() {
                self.buf.reserve(READ_BYTES);
            }
            return self.io.read_buf(&mut self.buf).await;
        }
        // Between messages. Bytes already waiting go into what is left of the buffer; otherwise
        // the buffer goes, and the wait for the next message holds only a small one.
        if self.buf.capacity() > MAX_HEADER_BYTES
            && let Some(read) = self.io.read_buf(&mut self.buf).now_or_never()
        {
            return read;
        }
        self.buf = BytesMut::new();
        let mut first = [0; FIRST_READ_BYTES];
        let n = self.io.read(&mut first).await?;
        if n > 0 {
            self.buf.reserve(WAKE_READ_BYTES);
            self.buf.put_slice(&first[..n]);
        }
        Ok(n)
    }
}

/// A frame for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A binary message.
    Binary(Bytes),
    /// A ping (the client answers with a pong).
    Ping,
    /// The answer to the client's ping.
    Pong(Bytes),
    /// The close frame: code and reason.
    Close(u16, &'static str),
}

impl Outgoing {
    /// Writes the frame's header into `head` (with a close frame's code, the start of its
    /// payload) and returns the bytes it takes; the rest of the frame is [`Self::payload`].
    fn encode_head(&self, head: &mut [u8; MAX_HEADER_BYTES]) -> usize {
        let (opcode, code) = match self {
            Self::Binary(_) => (OP_BINARY, None),
            Self::Ping => (OP_PING, None),
            Self::Pong(_) => (OP_PONG, None),
            Self::Close(code, _) => (OP_CLOSE, Some(code.to_be_bytes())),
        };
        let len = self.payload().len() + code.map_or(0, |c| c.len());
        head[0] = 0x80 | opcode;
        let mut at = match len {
            0..=125 => {
                head[1] = len as u8;
                2
            }
            126..=0xffff => {
                head[1] = 126;
                head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            _ => {
                head[1] = 127;
                head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            }
        };
        if let Some(code) = code {
            head[at..at + 2].copy_from_slice(&code);
            at += 2;
        }
        at
    }

    /// The bytes after the header.
    fn payload(&self) -> &[u8] {
        match self {
            Self::Binary(bytes) | Self::Pong(bytes) => bytes,
            Self::Ping => &[],
            Self::Close(_, reason) => &reason.as_bytes()[..reason.len().min(MAX_CONTROL_BYTES - 2)],
        }
    }
}

/// Writes the frames from `frames` to `io`, each batch of queued frames in one vectored write
/// (payloads are not copied), until `frames` closes (then shuts `io` down) or a write fails.
pub async fn write_frames<W: AsyncWrite + Unpin>(mut io: W, mut frames: mpsc::Receiver<Outgoing>) {
    while let Some(frame) = frames.recv().await {
        let mut bytes = frame.payload().len();
        let mut batch = vec![frame];
        while batch.len() < WRITE_BATCH_FRAMES
            && bytes < WRITE_BATCH_BYTES
            && let Ok(frame) = frames.try_recv()
        {
            bytes += frame.payload().len();
            batch.push(frame);
        }
        if write_batch(&mut io, &batch).await.is_err() {
            return;
        }
    }
    let _ = io.shutdown().await;
}

async fn write_batch<W: AsyncWrite + Unpin>(io: &mut W, batch: &[Outgoing]) -> io::Result<()> {
    let heads: Vec<_> = batch
        .iter()
        .map(|frame| {
            let mut head = [0; MAX_HEADER_BYTES];
            let len = frame.encode_head(&mut head);
            (head, len)
        })
        .collect();
    let mut slices: Vec<IoSlice<'_>> = heads
        .iter()
        .zip(batch)
        .flat_map(|((head, len), frame)| [IoSlice::new(&head[..*len]), IoSlice::new(frame.payload())])
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let written = io.write_vectored(rest).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, written);
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame with first byte `first` (FIN, reserved bits, opcode): masked with a fixed key.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        super::props::frame(first & 0x80 != 0, first & 0x7f, payload, [1, 2, 3, 4])
    }

    async fn read_all(wire: Vec<u8>, limit: usize) -> Vec<Result<Incoming, String>> {
        let mut reader = Reader::new(wire.as_slice(), limit);
        let mut seen = Vec::new();
        loop {
            match reader.next().await {
                Ok(Incoming::Closed) => return seen,
                Ok(incoming) => seen.push(Ok(incoming)),
                Err(e) => {
                    seen.push(Err(e.to_string()));
                    return seen;
                }
            }
        }
    }

    #[tokio::test]
    async fn reads_messages_of_every_length_class() {
        let long: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let mut wire = client_frame(0x82, b"hi");
        wire.extend(client_frame(0x82, &long[..300]));
        wire.extend(client_frame(0x82, &long));
        let seen = read_all(wire, 1 << 20).await;
        assert_eq!(
            seen,
            [
                Ok(Incoming::Binary(Bytes::from_static(b"hi"))),
                Ok(Incoming::Binary(Bytes::copy_from_slice(&long[..300]))),
                Ok(Incoming::Binary(Bytes::from(long))),
            ]
        );
    }

    #[tokio::test]
    async fn joins_fragments_around_control_frames() {
        let mut wire = client_frame(0x02, b"ab");
        wire.extend(client_frame(0x89, b"p"));
        wire.extend(client_frame(0x00, b"cd"));
        wire.extend(client_frame(0x80, b"e"));
        wire.extend(client_frame(0x88, &1000u16.to_be_bytes()));
        wire.extend(client_frame(0x82, b"after close"));
        let seen = read_all(wire, 1 << 20).await;
        assert_eq!(
            seen,
            [Ok(Incoming::Ping(Bytes::from_static(b"p"))), Ok(Incoming::Binary(Bytes::from_static(b"abcde")))]
        );
    }

    #[tokio::test]
    async fn refuses_what_breaks_the_protocol() {
        let cases: [(&str, Vec<u8>, &str); 6] = [
            ("unmasked", vec![0x82, 0x01, b'x'], "masked"),
            ("reserved bit", client_frame(0xc2, b"x"), "reserved"),
            ("unknown opcode", client_frame(0x83, b"x"), "opcode"),
            ("stray continuation", client_frame(0x80, b"x"), "continuation"),
            ("long ping", client_frame(0x89, &[0; 126]), "125"),
            ("cut short", client_frame(0x82, b"hello")[..5].to_vec(), "closed within"),
        ];
        for (case, wire, expected) in cases {
            let seen = read_all(wire, 1 << 20).await;
            assert!(
                matches!(seen.last(), Some(Err(e)) if e.contains(expected)),
                "{case}: {seen:?} should end with an error about {expected}"
            );
        }
    }

    #[tokio::test]
    async fn refuses_frames_and_fragmented_messages_over_the_limit() {
        let seen = read_all(client_frame(0x82, &[0; 101]), 100).await;
        assert!(matches!(seen.last(), Some(Err(e)) if e.contains("too long")), "{seen:?}");
        let mut wire = client_frame(0x02, &[0; 60]);
        wire.extend(client_frame(0x80, &[0; 60]));
        let seen = read_all(wire, 100).await;
        assert!(matches!(seen.last(), Some(Err(e)) if e.contains("too long")), "{seen:?}");
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut reader = Reader::new(server, 1 << 20);
        let mut client = client;
        client.write_all(&client_frame(0x82, &[7; 70_000])).await.expect("write");
        assert_eq!(reader.next().await.expect("message"), Incoming::Binary(Bytes::from(vec![7; 70_000])));
        {
            let waiting = reader.next();
            tokio::pin!(waiting);
            assert!(futures_util::poll!(&mut waiting).is_pending(), "no second message was sent");
        }
        assert_eq!(reader.buf.capacity(), 0, "the buffer is freed while the socket is quiet");
    }

    #[tokio::test]
    async fn a_claimed_length_does_not_reserve_memory_before_the_bytes_arrive() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut reader = Reader::new(server, 16 << 20);
        let frame = client_frame(0x82, &vec![1; 10 << 20]);
        client.write_all(&frame[..1000]).await.expect("write");
        {
            let waiting = reader.next();
            tokio::pin!(waiting);
            assert!(futures_util::poll!(&mut waiting).is_pending(), "the frame is incomplete");
        }
        assert!(reader.buf.capacity() < 1 << 20, "{} bytes reserved for 1000 received", reader.buf.capacity());
    }

    #[tokio::test]
    async fn writes_frames_a_client_can_read() {
        let (tx, rx) = mpsc::channel(8);
        let long = Bytes::from(vec![9; 70_000]);
        for frame in [
            Outgoing::Binary(Bytes::from_static(b"hi")),
            Outgoing::Binary(Bytes::from(vec![5; 300])),
            Outgoing::Binary(long.clone()),
            Outgoing::Ping,
            Outgoing::Close(close_code::POLICY, "name_in_use"),
        ] {
            tx.send(frame).await.expect("queue");
        }
        drop(tx);
        // A pipe of 1,000 bytes: the writer sees short writes and must carry on where they end.
        let (client, server) = tokio::io::duplex(1000);
        let reading = tokio::spawn(async move {
            let mut wire = Vec::new();
            let mut client = client;
            client.read_to_end(&mut wire).await.expect("read");
            wire
        });
        write_frames(server, rx).await;
        let wire = reading.await.expect("reader");
        let mut expected = vec![0x82, 2, b'h', b'i', 0x82, 126, 1, 44];
        expected.extend([5; 300]);
        expected.extend([0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        expected.extend(&long[..]);
        expected.extend([0x89, 0, 0x88, 13, 0x03, 0xf0]);
        expected.extend(b"name_in_use");
        assert_eq!(wire, expected);
    }

    #[test]
    fn unmasks_any_length_and_alignment() {
        let plain: Vec<u8> = (0..37u8).collect();
        let mask = [0xa1, 0xb2, 0xc3, 0xd4];
        let mut bytes: Vec<u8> = plain.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        unmask(&mut bytes, mask);
        assert_eq!(bytes, plain);
    }
}

#[cfg(test)]
mod props;
