//! Frames on the WebSocket between the `tunnel` client and a session-host.
//!
//! Each WebSocket binary message holds exactly one frame. The client opens with [`Hello`]; the
//! host answers [`Welcome`] or [`HostFrame::Refused`] and closes. Afterwards the host sends
//! [`HostFrame::Request`]s, each on a fresh stream id, and the client answers each stream once,
//! with [`ClientFrame::Response`] or [`ClientFrame::Failure`]. Streams are independent: answers
//! may come in any order.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::events::Failure;
use crate::stream::StreamFrame;

/// Identifies one request/response exchange on a WebSocket, chosen by the host.
pub type StreamId = u32;

/// Path of the session-host's WebSocket endpoint.
pub const CONNECT_PATH: &str = "/v1/connect";

/// The client's opening frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the client speaks ([`crate::PROTOCOL_VERSION`]).
    pub v: u16,
    /// Requested tunnel name; a random one is allocated when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Secret from an earlier [`Welcome`], to take the name back on reconnect.
    #[serde(default)]
    pub resume_secret: Option<String>,
    /// Client software and version, for logs (`tunnel/0.1.0`).
    #[serde(default)]
    pub agent: String,
    /// Record this tunnel's exchanges in the `RECORDINGS` stream (`tunnel http --record`).
    #[serde(default)]
    pub record: bool,
    /// The account token (`tt_<id>_<secret>`), required unless the host runs anonymously.
    #[serde(default)]
    pub token: Option<String>,
    /// Who on the public side may reach the tunnel (`--basic-auth`, `--allow-cidr`, …); empty
    /// for everyone. Its secrets are already hashed. Left off the wire when empty.
    #[serde(default, skip_serializing_if = "crate::policy::PublicPolicy::is_empty")]
    pub policy: crate::policy::PublicPolicy,
    /// Serve the name together with the other clients of the same account that say so
    /// (`tunnel http --shared`); needs a token and a name. Left off the wire when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// The host's acceptance of a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version the host speaks.
    pub v: u16,
    /// The tunnel name granted.
    pub name: String,
    /// The public URL of the tunnel.
    pub url: String,
    /// Session id, for logs and support.
    pub session: String,
    /// Secret to present in a later [`Hello`] to resume this name.
    pub resume_secret: String,
    /// Largest encoded reply the host can relay; larger replies must fail with
    /// [`ErrorCode::ResponseTooLarge`](crate::ErrorCode::ResponseTooLarge).
    pub max_reply_bytes: u64,
    /// Whether the session's exchanges are recorded (asked for, or the operator's policy).
    #[serde(default)]
    pub recording: bool,
    /// The node id of the session-host holding the session, for the client to show; empty from
    /// hosts older than this field.
    #[serde(default)]
    pub host: String,
}

/// Frames the client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Opens the session.
    Hello(Hello),
    /// The answer on `stream`: an encoded [`TunnelReply`](crate::events::TunnelReply), relayed
    /// to the requester as is.
    Reply {
        /// Stream being answered.
        stream: StreamId,
        /// The encoded reply event.
        #[serde(deserialize_with = "crate::shared::body")]
        reply: Bytes,
        /// Whether the exchange ends with this reply (a failure, or a response whose body was
        /// carried whole); otherwise stream frames follow.
        end: bool,
    },
    /// A stream frame of `stream` for ingress (response body, credit for the request body, …).
    Stream {
        /// The exchange.
        stream: StreamId,
        /// The frame.
        frame: StreamFrame,
    },
    /// The client is leaving for good: release the name now instead of keeping it for a resume.
    Bye,
}

/// Frames the host sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostFrame {
    /// The session is open.
    Welcome(Welcome),
    /// The session is refused or ended; the host closes the socket after this frame.
    Refused(Failure),
    /// The host is shutting down: open a new session now (it resumes the name on another host)
    /// and keep answering on this one until the host closes it.
    GoAway,
    /// A public request to forward: an encoded [`TunnelRequest`](crate::events::TunnelRequest),
    /// relayed from NATS as is, so the host never re-encodes bodies.
    Request {
        /// Stream to answer on.
        stream: StreamId,
        /// The encoded request event.
        #[serde(deserialize_with = "crate::shared::body")]
        request: Bytes,
        /// The host's span of the request (a W3C `traceparent`), when the host traces: the
        /// parent of the client's, in place of the one in the request head.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<String>,
    },
    /// A stream frame of `stream` from ingress (request body, credit for the response body, …).
    Stream {
        /// The exchange.
        stream: StreamId,
        /// The frame.
        frame: StreamFrame,
    },
    /// The tunnel, or its account, nears a quota (a warning at 80 %) or is over it (new public
    /// requests are refused until the period ends).
    Quota(crate::usage::QuotaState),
}
