//! The http-tunnel wire contract.
//!
//! Everything that crosses a process boundary is defined here and nowhere else:
//!
//! - [`names`]: tunnel names (DNS labels), validation and random generation;
//! - [`pattern`]: name and path patterns (`*`, `?`);
//! - [`subjects`]: every NATS subject and queue group, built by a function;
//! - [`http`]: the HTTP request and response heads carried through the tunnel;
//! - [`events`]: the MessagePack events exchanged over NATS between ingress and session-host;
//! - [`frames`]: the MessagePack frames exchanged over the client's WebSocket;
//! - [`stream`]: body streaming with credit-based flow control, the same on NATS and WebSocket;
//! - [`audit`]: the audit events published to the `AUDIT` stream;
//! - [`gap`]: events dropped before they reached the log, reported to readers;
//! - [`record`]: the recorded exchanges published to the `RECORDINGS` stream;
//! - [`tokens`]: accounts and tokens as stored in JetStream KV;
//! - [`policy`]: public-side access policies of tunnels (networks, headers, basic auth);
//! - [`usage`]: usage counters, quota limits and quota states kept from the audit stream;
//! - [`error`]: the typed error codes every component reports.
//!
//! Every message is encoded with [`encode`] as a MessagePack *map* (field names on the wire), so a
//! field added later with `#[serde(default)]` is read by old and new peers alike, and bodies are
//! MessagePack `bin`, never arrays of integers.

pub mod audit;
pub mod error;
pub mod events;
pub mod frames;
pub mod gap;
pub mod http;
pub mod names;
pub mod pattern;
pub mod policy;
pub mod presence;
pub mod record;
mod shared;
pub mod stream;
pub mod subjects;
pub mod tokens;
pub mod usage;

pub use error::ErrorCode;

/// Version of the client↔session-host protocol and of the NATS events.
///
/// A peer that speaks another version is refused with [`ErrorCode::ProtocolVersion`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest WebSocket frame a peer may send (16 MiB); larger frames close the connection.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Deepest nesting of MessagePack arrays and maps a decoder follows. The contract's messages nest
/// five levels at most; without a tight limit, a hostile message of nested maps under an unknown
/// field (skipped recursively) overflows the stack of the decoding thread before rmp-serde's own
/// limit of 1,024 levels is reached, aborting the whole process.
pub const MAX_DEPTH: usize = 32;

/// The current unix time in milliseconds: the clock of every timestamp in events and records.
pub fn now_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid MessagePack encoding of the expected message.
    #[error("malformed message: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    /// The message is larger than the receiver accepts.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the refused message.
        size: usize,
        /// Limit it exceeded.
        limit: usize,
    },
}

/// Encodes a message as a MessagePack map.
///
/// Serializing the contract's own types cannot fail: they hold no maps with non-string keys and
/// no types that refuse serialization.
pub fn encode<T: serde::Serialize>(message: &T) -> Vec<u8> {
    encode_sized(message, 256)
}

/// Encodes a message like [`encode`] into a buffer of `capacity` bytes to begin with: for large
/// messages whose size is known roughly, so the buffer is not regrown and copied on the way.
pub fn encode_sized<T: serde::Serialize>(message: &T, capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(capacity);
    // Writing into a Vec is infallible and every type in this crate serializes.
    message
        .serialize(&mut rmp_serde::Serializer::new(&mut buf).with_struct_map())
        .unwrap_or_else(|e| unreachable!("wire types always serialize: {e}"));
    buf
}

/// Decodes a message, refusing input larger than `limit` bytes before parsing it.
///
/// # Errors
/// [`DecodeError::TooLarge`] when `bytes` exceeds `limit`, [`DecodeError::Malformed`] when the bytes
/// are not the expected message.
pub fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge { size: bytes.len(), limit });
    }
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(MAX_DEPTH);
    Ok(T::deserialize(&mut deserializer)?)
}

/// Decodes a message like [`decode`], but its byte fields (bodies, stream data, relayed events,
/// header values) share `bytes`' buffer instead of being copied out of it.
///
/// # Errors
/// As [`decode`].
pub fn decode_shared<T: serde::de::DeserializeOwned>(bytes: &bytes::Bytes, limit: usize) -> Result<T, DecodeError> {
    shared::with_source(bytes, || decode(bytes, limit))
}
