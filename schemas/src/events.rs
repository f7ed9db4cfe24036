//! Events exchanged over NATS between ingress and session-host.
//!
//! Ingress sends a [`TunnelRequest`] as a NATS request on
//! [`crate::subjects::tunnel_requests`]; the session-host holding the tunnel answers with a
//! [`TunnelReply`]. Bodies up to the inline limit travel inside these events.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::http::{RequestHead, ResponseHead};

/// NATS header carrying the request id, for tracing without decoding the payload.
pub const REQUEST_ID_HEADER: &str = "Tun-Request-Id";

/// A public request on its way to a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRequest {
    /// Protocol version of the sender ([`crate::PROTOCOL_VERSION`]).
    pub v: u16,
    /// Request id, also sent to the local service as `X-Request-Id`.
    pub request_id: String,
    /// Method, target and headers.
    pub head: RequestHead,
    /// The whole request body.
    pub body: Bytes,
}

/// The answer to a [`TunnelRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelReply {
    /// The local service answered.
    Response(TunnelResponse),
    /// The request failed before or instead of a response.
    Failure(Failure),
}

/// A complete response of the local service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelResponse {
    /// Status and headers.
    pub head: ResponseHead,
    /// The whole response body.
    pub body: Bytes,
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
        Self {
            code,
            detail: detail.into(),
        }
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
