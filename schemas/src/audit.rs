//! Audit events: one [`RequestAudit`] per public request, published to the `AUDIT` stream in
//! [`AuditBatch`]es (one stored message per batch, on the subject of the batch's tunnel).
//!
//! They hold no header values, query strings or bodies, so no secret (token, cookie,
//! `Authorization`) ever lands in the audit trail by default.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// Subject kind of a completed public request (`audit.<name>.req`).
pub const KIND_REQUEST: &str = "req";

/// Subject kind of audit records dropped before they reached the stream (`audit.<name>.gap`).
pub const KIND_GAP: &str = crate::gap::KIND_GAP;

/// The record of one public request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAudit {
    /// Protocol version of the publisher.
    pub v: u16,
    /// Request id (`X-Request-Id`).
    pub request_id: String,
    /// Tunnel name.
    pub tunnel: String,
    /// Method token.
    pub method: String,
    /// Path without the query string (queries often carry tokens).
    pub path: String,
    /// Status returned to the public client.
    pub status: u16,
    /// Error code when the tunnel, not the local service, produced the status.
    #[serde(default)]
    pub error: Option<ErrorCode>,
    /// Request body bytes received from the public client.
    pub bytes_in: u64,
    /// Response body bytes sent to the public client.
    pub bytes_out: u64,
    /// Time from request head received to response head ready, in microseconds.
    pub duration_us: u64,
    /// Public client address.
    pub remote_addr: String,
    /// Unix time of arrival in milliseconds.
    pub at_ms: u64,
    /// The account the tunnel's session was admitted for (none in anonymous mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// A replay of a recorded exchange (`X-Replay-Of`), counted apart from public traffic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
    /// Bytes of the request head (request line and header fields) received.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub head_in: u64,
    /// Bytes of the response head (status line and header fields) sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub head_out: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Audit records of one tunnel, stored as one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBatch {
    /// Protocol version of the publisher.
    pub v: u16,
    /// The records, in the order their requests completed.
    pub records: Vec<RequestAudit>,
}

/// Subject kind of an [`AccessEvent`] (`audit.<name>.access`).
pub const KIND_ACCESS: &str = "access";

/// What happened to a client's access to a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// A session bound the name.
    Bound,
    /// A session took the name back (resume secret, or its account owns the name).
    Resumed,
    /// A client was refused the name (the code says why).
    Refused,
    /// A session was closed because its token was revoked.
    Revoked,
    /// A session ended (the code says why, when it was not the client's goodbye).
    Closed,
}

/// One access event of a tunnel, published by the session-host: who bound, was refused, or lost
/// the name. Token ids and account names only: never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEvent {
    /// Protocol version of the publisher.
    pub v: u16,
    /// Tunnel name.
    pub tunnel: String,
    /// What happened.
    pub access: Access,
    /// Session id (empty for a refusal before a session existed).
    #[serde(default)]
    pub session: String,
    /// The account, when the client presented a valid token.
    #[serde(default)]
    pub account: Option<String>,
    /// The token's public id, when one was presented and parsed.
    #[serde(default)]
    pub token: Option<String>,
    /// Why (refusals, revocations, closes).
    #[serde(default)]
    pub code: Option<ErrorCode>,
    /// The client's address.
    pub remote_addr: String,
    /// Unix time in milliseconds.
    pub at_ms: u64,
}

/// Subject kind of a [`DataEvent`] (`audit.<name>.data`).
pub const KIND_DATA: &str = "data";

/// Subject token standing for "no one tunnel" in `audit.<token>.data`: an erasure that matched no
/// recording. Not a valid tunnel name, so it names none.
pub const NO_TUNNEL: &str = "_none";

/// What was done with a tunnel's recordings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataAction {
    /// Read up to the end of the log (`tunnel trail --recorded`).
    Query,
    /// Read live (`--follow`).
    Tail,
    /// Read to send again (`tunnel replay`).
    Replay,
    /// Read to write to a file (`tunnel export`).
    Export,
    /// Read for the client's local inspector.
    Inspect,
    /// Removed from the stream (`tunnel admin erase`).
    Erase,
}

impl DataAction {
    /// The name in query strings and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Tail => "tail",
            Self::Replay => "replay",
            Self::Export => "export",
            Self::Inspect => "inspect",
            Self::Erase => "erase",
        }
    }

    /// The action named `text` (a read's purpose), if any.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Query, Self::Tail, Self::Replay, Self::Export, Self::Inspect, Self::Erase]
            .into_iter()
            .find(|action| action.as_str() == text)
    }
}

/// A read or an erasure of a tunnel's recordings, published to the `AUDIT` stream by whoever
/// did it: the session-host serving a tunnel's client, or the `tunnel` command of an operator
/// reading or erasing with NATS credentials. It names who, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataEvent {
    /// Protocol version of the publisher.
    pub v: u16,
    /// The tunnel whose recordings ([`NO_TUNNEL`] for an erasure that matched none).
    pub tunnel: String,
    /// What was done.
    pub action: DataAction,
    /// Who did it: `owner:<first 12 hex of the owner key>` (the tunnel's client, through a
    /// session-host), `nats:<user>` (an operator, through NATS).
    pub actor: String,
    /// The client's address, when it came through a session-host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    /// What was selected: the filter as a query string (`status=5xx&since=…`).
    #[serde(default)]
    pub selector: String,
    /// Records removed (erasures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Unix time in milliseconds.
    pub at_ms: u64,
}
