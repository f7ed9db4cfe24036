//! Recordings: full exchanges of recorded tunnels, stored in the `RECORDINGS` stream on
//! `rec.<name>.<kind>` (see [`crate::subjects::recording`]).
//!
//! A session-host records the exchanges of a tunnel whose client asked for it (`--record`) or
//! that the operator's policy names. One [`ExchangeRecord`] holds the request and the response
//! as exchanged: heads with headers in order and raw bytes, bodies up to a cap per direction
//! (a cut body is marked, never cut silently), sizes and timings. Credential headers are masked
//! with their length kept ([`mask`]).
//!
//! An encoded record larger than a NATS message is split into parts ([`split`]): each part is
//! one message on the same subject with the headers [`RECORD_ID_HEADER`] and [`PART_HEADER`],
//! and a message id `<record id>.<part>` so that a retried publish is stored once. Readers put
//! the parts back together with [`Parts`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::http::Header;

/// Subject kind of an exchange record (`rec.<name>.ex`).
pub const KIND_EXCHANGE: &str = "ex";
/// Subject kind of a [`Gap`](crate::gap::Gap) in the recordings (`rec.<name>.gap`).
pub const KIND_GAP: &str = crate::gap::KIND_GAP;

/// NATS header naming the batch a message belongs to, on every message of recorded exchanges.
pub const RECORD_ID_HEADER: &str = "Rec-Id";
/// NATS header of a split record's part: `<index>/<count>`, index from 0. Absent on a record
/// stored whole.
pub const PART_HEADER: &str = "Rec-Part";

/// HTTP header a replayed request carries, naming the request it replays.
pub const REPLAY_OF_HEADER: &str = "x-replay-of";

/// Headers masked by default: credentials must not be stored.
pub const DEFAULT_MASKED: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "set-cookie"];

/// Byte a masked value is made of.
pub const MASK_BYTE: u8 = b'*';

/// The records of one tunnel stored as one message (or as parts of one, when larger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBatch {
    /// Protocol version of the recorder.
    pub v: u16,
    /// The records, in the order their exchanges ended.
    pub records: Vec<ExchangeRecord>,
}

/// One recorded exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeRecord {
    /// Protocol version of the recorder.
    pub v: u16,
    /// Request id (`X-Request-Id`).
    pub request_id: String,
    /// Tunnel name.
    pub tunnel: String,
    /// Who may read this record without NATS credentials: [`owner_key`] of the resume secret of
    /// the session that recorded it.
    pub owner: String,
    /// The account the recording session was admitted for (none in anonymous mode, and in
    /// records made before accounts were recorded), for erasure by account.
    #[serde(default)]
    pub account: Option<String>,
    /// Unix time of arrival at the session-host, in milliseconds.
    pub at_ms: u64,
    /// Time from the request's arrival to the response head, in microseconds.
    pub head_us: u64,
    /// Time from the request's arrival to the end of the exchange, in microseconds.
    pub duration_us: u64,
    /// The request as the local service received it.
    pub request: RecordedMessage,
    /// The response; `None` when the exchange failed before one.
    #[serde(default)]
    pub response: Option<RecordedResponse>,
    /// Why the exchange failed, when it did.
    #[serde(default)]
    pub error: Option<ErrorCode>,
    /// The exchange upgraded (WebSocket): only the handshake and the byte counts are recorded.
    #[serde(default)]
    pub upgraded: bool,
    /// Names of the headers whose values were masked.
    #[serde(default)]
    pub masked: Vec<String>,
    /// The request id this exchange replays (from [`REPLAY_OF_HEADER`]).
    #[serde(default)]
    pub replay_of: Option<String>,
}

/// A recorded request: head and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedMessage {
    /// Method token.
    pub method: String,
    /// Raw path and query, as the local service received it.
    pub target: String,
    /// Headers in order, values as raw bytes (masked ones replaced by [`MASK_BYTE`]s).
    pub headers: Vec<Header>,
    /// The body, whole or up to the cap.
    #[serde(deserialize_with = "crate::shared::body")]
    pub body: Bytes,
    /// Size of the whole body as exchanged (after an upgrade: bytes carried this way).
    pub size: u64,
    /// The body is longer than what was kept.
    pub cut: bool,
}

/// A recorded response: status, headers and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedResponse {
    /// HTTP status code.
    pub status: u16,
    /// Headers in order, values as raw bytes (masked ones replaced by [`MASK_BYTE`]s).
    pub headers: Vec<Header>,
    /// The body, whole or up to the cap.
    #[serde(deserialize_with = "crate::shared::body")]
    pub body: Bytes,
    /// Size of the whole body as exchanged (after an upgrade: bytes carried this way).
    pub size: u64,
    /// The body is longer than what was kept.
    pub cut: bool,
}

/// The owner key of a resume secret: a hash, so the stream never holds the secret itself.
pub fn owner_key(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(b"http-tunnel record owner\0").chain_update(secret.as_bytes()).finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Masks the values of `headers` named in `names` (lowercase), keeping their length; returns the
/// names masked, each once, in order of first appearance.
pub fn mask(headers: &mut [Header], names: &[String]) -> Vec<String> {
    let mut masked: Vec<String> = Vec::new();
    for Header(name, value) in headers.iter_mut() {
        if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            *value = Bytes::from(vec![MASK_BYTE; value.len()]);
            if !masked.iter().any(|m| m == name) {
                masked.push(name.clone());
            }
        }
    }
    masked
}

/// Splits an encoded record into parts of at most `part_bytes` (at least one part).
pub fn split(encoded: Bytes, part_bytes: usize) -> Vec<Bytes> {
    let part_bytes = part_bytes.max(1);
    if encoded.len() <= part_bytes {
        return vec![encoded];
    }
    (0..encoded.len()).step_by(part_bytes).map(|at| encoded.slice(at..encoded.len().min(at + part_bytes))).collect()
}

/// The value of [`PART_HEADER`] for part `index` of `count`.
pub fn part_header(index: usize, count: usize) -> String {
    format!("{index}/{count}")
}

/// Parses a [`PART_HEADER`] value into `(index, count)`.
pub fn parse_part_header(value: &str) -> Option<(usize, usize)> {
    let (index, count) = value.split_once('/')?;
    let (index, count) = (index.parse().ok()?, count.parse().ok()?);
    (index < count).then_some((index, count))
}

/// Most split records being put together at once; an older incomplete one is dropped.
pub const MAX_OPEN_PARTS: usize = 64;

/// Puts split records back together, in the order their last part arrives.
#[derive(Debug, Default)]
pub struct Parts {
    open: Vec<(String, usize, Vec<Bytes>)>,
}

impl Parts {
    /// Adds the message `payload` of record `id` (part `part`, or whole when `None`); returns the
    /// whole encoded record once complete. Parts must arrive in order, as the stream keeps them.
    pub fn add(&mut self, id: &str, part: Option<(usize, usize)>, payload: Bytes) -> Option<Bytes> {
        let Some((index, count)) = part else { return Some(payload) };
        let at = self.open.iter().position(|(open, _, _)| open == id);
        let at = match (at, index) {
            (Some(at), _) => at,
            (None, 0) => {
                if self.open.len() >= MAX_OPEN_PARTS {
                    self.open.remove(0);
                }
                self.open.push((id.to_owned(), count, Vec::with_capacity(count)));
                self.open.len() - 1
            }
            // A part whose beginning expired or was never read.
            (None, _) => return None,
        };
        let (_, expected, parts) = &mut self.open[at];
        if index != parts.len() || count != *expected {
            self.open.remove(at);
            return None;
        }
        parts.push(payload);
        if parts.len() < count {
            return None;
        }
        let (_, _, parts) = self.open.remove(at);
        let mut whole = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
        for part in parts {
            whole.extend_from_slice(&part);
        }
        Some(whole.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_length_and_names_each_header_once() {
        let mut headers = vec![
            Header("authorization".into(), Bytes::from_static(b"Bearer abc")),
            Header("x-other".into(), Bytes::from_static(b"keep")),
            Header("cookie".into(), Bytes::from_static(b"a=1")),
            Header("cookie".into(), Bytes::from_static(b"b=22")),
        ];
        let names: Vec<String> = DEFAULT_MASKED.iter().map(|s| (*s).to_owned()).collect();
        let masked = mask(&mut headers, &names);
        assert_eq!(masked, ["authorization", "cookie"]);
        assert_eq!(&headers[0].1[..], b"**********");
        assert_eq!(&headers[1].1[..], b"keep");
        assert_eq!(&headers[3].1[..], b"****");
    }

    #[test]
    fn split_parts_join_back_and_bad_order_is_refused() {
        let whole = Bytes::from((0..=255_u8).cycle().take(10_000).collect::<Vec<_>>());
        let parts = split(whole.clone(), 3000);
        assert_eq!(parts.len(), 4);
        let mut joiner = Parts::default();
        let mut joined = None;
        for (i, part) in parts.iter().enumerate() {
            let header = part_header(i, parts.len());
            joined = joiner.add("r1", parse_part_header(&header), part.clone());
        }
        assert_eq!(joined, Some(whole));
        assert_eq!(joiner.add("r2", Some((1, 2)), Bytes::new()), None, "no beginning");
        assert_eq!(joiner.add("r3", Some((0, 2)), Bytes::new()), None);
        assert_eq!(joiner.add("r3", Some((0, 2)), Bytes::new()), None, "a repeated part resets");
        assert_eq!(parse_part_header("2/2"), None);
        assert_eq!(split(Bytes::from_static(b"ab"), 10).len(), 1);
    }

    #[test]
    fn owner_key_is_stable_and_not_the_secret() {
        assert_eq!(owner_key("s"), owner_key("s"));
        assert_ne!(owner_key("s"), owner_key("t"));
        assert_eq!(owner_key("s").len(), 32);
    }
}
