//! Property tests of the host's own WebSocket framing, the first decoder every client's bytes
//! meet: arbitrary bytes in arbitrary read sizes never panic and always end (a message, an
//! error or the close), and any sequence of valid messages, fragmented, masked with any key and
//! read in any sizes, comes out whole and in order.

use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;

use super::*;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;
/// Largest message the reader under test accepts.
const LIMIT: usize = 4096;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

/// A socket that hands out its bytes in the given read sizes (cycled).
struct Chunked {
    bytes: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    reads: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self.sizes[self.reads % self.sizes.len()].max(1);
        self.reads += 1;
        let end = (self.at + size).min(self.bytes.len()).min(self.at + buf.remaining());
        let at = self.at;
        buf.put_slice(&self.bytes[at..end]);
        self.at = end;
        Poll::Ready(Ok(()))
    }
}

/// Everything the reader makes of `bytes` read in `sizes`, up to its end.
fn read_everything(bytes: Vec<u8>, sizes: Vec<usize>) -> Vec<Result<Incoming, String>> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async move {
        let total = bytes.len();
        let mut reader = Reader::new(Chunked { bytes, at: 0, sizes, reads: 0 }, LIMIT);
        let mut seen = Vec::new();
        // Every message takes at least two bytes, so more steps than bytes would mean a loop.
        for _ in 0..=total {
            match reader.next().await {
                Ok(Incoming::Closed) => return seen,
                Ok(incoming) => seen.push(Ok(incoming)),
                Err(e) => {
                    seen.push(Err(e.to_string()));
                    return seen;
                }
            }
        }
        panic!("the reader did not end after {total} bytes: {seen:?}");
    })
}

/// One client message of the model.
#[derive(Debug, Clone)]
enum Message {
    Binary(Vec<u8>, usize),
    Text(String),
    Ping(Vec<u8>),
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (proptest::collection::vec(any::<u8>(), 0..600), 1..4_usize).prop_map(|(b, parts)| Message::Binary(b, parts)),
        "[a-z ]{0,40}".prop_map(Message::Text),
        proptest::collection::vec(any::<u8>(), 0..=MAX_CONTROL_BYTES).prop_map(Message::Ping),
    ]
}

/// A masked client frame (`opcode` may carry reserved bits).
pub(super) fn frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | u8::try_from(len).unwrap_or(0)),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&u16::try_from(len).unwrap_or(0).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn encode(messages: &[Message], mask: [u8; 4]) -> Vec<u8> {
    let mut wire = Vec::new();
    for message in messages {
        match message {
            Message::Binary(bytes, parts) => {
                let size = bytes.len().div_ceil(*parts).max(1);
                let pieces: Vec<&[u8]> = if bytes.is_empty() { vec![&[]] } else { bytes.chunks(size).collect() };
                for (i, piece) in pieces.iter().enumerate() {
                    let opcode = if i == 0 { OP_BINARY } else { OP_CONTINUATION };
                    wire.extend(frame(i + 1 == pieces.len(), opcode, piece, mask));
                }
            }
            Message::Text(text) => wire.extend(frame(true, OP_TEXT, text.as_bytes(), mask)),
            Message::Ping(bytes) => wire.extend(frame(true, OP_PING, bytes, mask)),
        }
    }
    wire.extend(frame(true, OP_CLOSE, &1000_u16.to_be_bytes(), mask));
    wire
}

fn expected(message: &Message) -> Incoming {
    match message {
        Message::Binary(bytes, _) => Incoming::Binary(Bytes::from(bytes.clone())),
        Message::Text(_) => Incoming::Text,
        Message::Ping(bytes) => Incoming::Ping(Bytes::from(bytes.clone())),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_and_always_end(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        sizes in proptest::collection::vec(1..300_usize, 1..5),
    ) {
        read_everything(bytes, sizes);
    }

    #[test]
    fn valid_messages_come_out_whole_and_in_order(
        messages in proptest::collection::vec(message(), 0..6),
        mask in any::<[u8; 4]>(),
        sizes in proptest::collection::vec(1..700_usize, 1..5),
    ) {
        let seen = read_everything(encode(&messages, mask), sizes);
        let expected: Vec<_> = messages.iter().map(|m| Ok(expected(m))).collect();
        prop_assert_eq!(seen, expected);
    }

    #[test]
    fn mutated_streams_never_panic(
        messages in proptest::collection::vec(message(), 1..4),
        flips in proptest::collection::vec((any::<usize>(), 1..=255_u8), 1..4),
        sizes in proptest::collection::vec(1..300_usize, 1..5),
    ) {
        let mut wire = encode(&messages, [9, 8, 7, 6]);
        for (at, bits) in flips {
            let len = wire.len();
            wire[at % len] ^= bits;
        }
        read_everything(wire, sizes);
    }
}
