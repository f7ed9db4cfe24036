//! The HTTP request and response heads carried through the tunnel.
//!
//! Headers are an ordered list of (name, value) pairs: repeated headers keep their order and
//! values are raw bytes, so non-UTF-8 values survive. The request target is the raw path and
//! query exactly as the public client sent it, never re-encoded.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One header field: lowercase name and raw value bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header(pub String, #[serde(deserialize_with = "crate::shared::body")] pub Bytes);

/// The head of a request forwarded to the local service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHead {
    /// Method token, any case and any extension method (`PROPFIND`, `PURGE`, …).
    pub method: String,
    /// Raw path and query (`/a%2Fb?x=1&x=2`), as received, with any `/t/<name>` prefix removed.
    pub target: String,
    /// End-to-end headers in the order received, proxy headers appended.
    pub headers: Vec<Header>,
}

/// The head of a response from the local service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    /// HTTP status code.
    pub status: u16,
    /// End-to-end headers in the order the local service sent them.
    pub headers: Vec<Header>,
}
