//! Events exchanged over NATS between ingress and session-host.
//!
//! Ingress sends a [`TunnelRequest`] as a NATS request on
//! [`crate::subjects::tunnel_requests`]; the session-host holding the tunnel answers with a
//! [`TunnelReply`] once the local service's response head is known. Small bodies travel inside
//! these events (`end: true`); the rest of a larger or open-ended body follows as
//! [`StreamFrame`](crate::stream::StreamFrame)s on the exchange's stream subjects.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::http::{RequestHead, ResponseHead};

/// NATS header carrying the request id, for tracing without decoding the payload.
pub const REQUEST_ID_HEADER: &str = "Tun-Request-Id";

/// NATS header of a [`TunnelRequest`] naming the subject on which ingress receives the
/// exchange's stream frames (routing metadata, so the session-host relays without decoding).
pub const STREAM_HEADER: &str = "Tun-Stream";

/// NATS header of a [`TunnelRequest`] whose body (or upgraded connection) follows as stream
/// frames: the session-host answers at once with a `Ping` from its own stream subject, so
/// ingress learns where to send them.
pub const UPLOAD_HEADER: &str = "Tun-Upload";

/// A public request on its way to a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRequest {
    /// Protocol version of the sender ([`crate::PROTOCOL_VERSION`]).
    pub v: u16,
    /// Request id, also sent to the local service as `X-Request-Id`.
    pub request_id: String,
    /// Method, target and headers.
    pub head: RequestHead,
    /// The body, or its first part when `end` is false.
    #[serde(deserialize_with = "crate::shared::body")]
    pub body: Bytes,
    /// Whether `body` is the whole body; when false the rest follows as stream frames.
    #[serde(default = "complete")]
    pub end: bool,
    /// The public client asked for a protocol upgrade (WebSocket): after a `101` both directions
    /// carry raw bytes as stream frames.
    #[serde(default)]
    pub upgrade: bool,
}

fn complete() -> bool {
    true
}

/// The answer to a [`TunnelRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelReply {
    /// The local service answered.
    Response(TunnelResponse),
    /// The request failed before or instead of a response.
    Failure(Failure),
}

/// The response of the local service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelResponse {
    /// Status and headers.
    pub head: ResponseHead,
    /// The body, or its first part when `end` is false.
    #[serde(deserialize_with = "crate::shared::body")]
    pub body: Bytes,
    /// Whether `body` is the whole body; when false the rest follows as stream frames.
    #[serde(default = "complete")]
    pub end: bool,
}

/// A typed failure with a detail for logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human detail for operators; never shown to public clients.
    #[serde(default)]
    pub detail: String,
}

impl Failure {
    /// A failure with `code` and a detail for the log.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into() }
    }
}

/// Session-control messages on [`crate::subjects::tunnel_control`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// A session resumed the tunnel; every other session of it must close.
    Takeover {
        /// The new session's id.
        session: String,
    },
}
