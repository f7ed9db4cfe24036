//! Typed error codes shared by every component.
//!
//! The wire carries an [`ErrorCode`], never free text alone; the public HTTP error page shows the
//! code's [`ErrorCode::as_str`] and [`ErrorCode::message`].

use serde::{Deserialize, Serialize};

/// What went wrong, as seen by the public client or by the tunnel client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request's host or path names no tunnel.
    NoTunnelName,
    /// No tunnel client is connected under that name.
    TunnelOffline,
    /// The tunnel client disconnected while the request was in flight.
    TunnelDisconnected,
    /// The local service refused or reset the connection, or could not be resolved.
    UpstreamUnreachable,
    /// The local service answered with something that is not valid HTTP.
    UpstreamBadResponse,
    /// No answer arrived within the configured time.
    UpstreamTimeout,
    /// The local service's response is larger than one message may carry.
    ResponseTooLarge,
    /// The request body exceeds the configured limit.
    BodyTooLarge,
    /// The request headers exceed the configured limit.
    HeadersTooLarge,
    /// The session-host holding the tunnel neither acknowledged the request nor answered a
    /// liveness probe in time: it is frozen or cut off.
    HostUnresponsive,
    /// The request URI exceeds the configured limit.
    UriTooLong,
    /// The request cannot be carried (a malformed header, an unsupported upgrade).
    BadRequest,
    /// The requested tunnel name is held by another client.
    NameInUse,
    /// The requested tunnel name is not a valid DNS label.
    InvalidName,
    /// The requested tunnel name is reserved by the operator.
    ReservedName,
    /// The peer speaks another protocol version.
    ProtocolVersion,
    /// A frame could not be decoded or came out of order.
    BadFrame,
    /// A frame exceeds [`crate::MAX_FRAME_BYTES`].
    FrameTooLarge,
    /// The peer did not complete the handshake in time.
    HandshakeTimeout,
    /// Another session resumed this tunnel; this one is closed.
    SessionReplaced,
    /// The server is shutting down; reconnect to another one.
    GoingAway,
    /// The other end of a stream gave up on it (the public client hung up).
    Cancelled,
    /// The message bus or a dependency is unavailable.
    Unavailable,
    /// The credentials do not give access to what was asked (another tunnel's trail).
    Forbidden,
    /// No token, or a token that is not valid (unknown, wrong secret, revoked).
    Unauthorized,
    /// The token may not bind the tunnel name asked for.
    NameNotAllowed,
    /// The tunnel name is reserved by another account.
    NameOwned,
    /// Too many requests: a rate limit of the tunnel or of the client address was reached.
    RateLimited,
    /// The tunnel requires HTTP basic auth and the request has no valid user and password.
    AuthRequired,
    /// The tunnel's policy refuses the request: its client address or a required header.
    PolicyDenied,
    /// A tunnel client asked for a public-side policy that cannot be used.
    InvalidPolicy,
    /// The request reached an ingress that had not yet applied the tunnel's policy; the
    /// ingress waits for it and retries once, so a public client sees this only when it did
    /// not arrive in time.
    PolicyPending,
    /// The tunnel, or its account, used up a quota for the period (`Retry-After`: its end).
    QuotaExceeded,
    /// The tunnel's session has as many requests in flight as it may (`max_inflight_per_session`):
    /// the excess is shed at once instead of queueing (`Retry-After: 1`).
    TunnelBusy,
    /// An unexpected internal failure (details are in the server log).
    Internal,
}

impl ErrorCode {
    /// Every code, for exhaustive tests and documentation.
    pub const ALL: [ErrorCode; 35] = [
        Self::NoTunnelName,
        Self::TunnelOffline,
        Self::TunnelDisconnected,
        Self::UpstreamUnreachable,
        Self::UpstreamBadResponse,
        Self::UpstreamTimeout,
        Self::ResponseTooLarge,
        Self::BodyTooLarge,
        Self::HeadersTooLarge,
        Self::HostUnresponsive,
        Self::UriTooLong,
        Self::BadRequest,
        Self::NameInUse,
        Self::InvalidName,
        Self::ReservedName,
        Self::ProtocolVersion,
        Self::BadFrame,
        Self::FrameTooLarge,
        Self::HandshakeTimeout,
        Self::SessionReplaced,
        Self::GoingAway,
        Self::Cancelled,
        Self::Unavailable,
        Self::Forbidden,
        Self::Unauthorized,
        Self::NameNotAllowed,
        Self::NameOwned,
        Self::RateLimited,
        Self::AuthRequired,
        Self::PolicyDenied,
        Self::InvalidPolicy,
        Self::PolicyPending,
        Self::QuotaExceeded,
        Self::TunnelBusy,
        Self::Internal,
    ];

    /// The stable snake_case identifier shown to users and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoTunnelName => "no_tunnel_name",
            Self::TunnelOffline => "tunnel_offline",
            Self::TunnelDisconnected => "tunnel_disconnected",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamBadResponse => "upstream_bad_response",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::ResponseTooLarge => "response_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::HostUnresponsive => "host_unresponsive",
            Self::UriTooLong => "uri_too_long",
            Self::BadRequest => "bad_request",
            Self::NameInUse => "name_in_use",
            Self::InvalidName => "invalid_name",
            Self::ReservedName => "reserved_name",
            Self::ProtocolVersion => "protocol_version",
            Self::BadFrame => "bad_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::SessionReplaced => "session_replaced",
            Self::GoingAway => "going_away",
            Self::Cancelled => "cancelled",
            Self::Unavailable => "unavailable",
            Self::Forbidden => "forbidden",
            Self::Unauthorized => "unauthorized",
            Self::NameNotAllowed => "name_not_allowed",
            Self::NameOwned => "name_owned",
            Self::RateLimited => "rate_limited",
            Self::AuthRequired => "auth_required",
            Self::PolicyDenied => "policy_denied",
            Self::InvalidPolicy => "invalid_policy",
            Self::PolicyPending => "policy_pending",
            Self::QuotaExceeded => "quota_exceeded",
            Self::TunnelBusy => "tunnel_busy",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status a public client receives for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::NoTunnelName => 404,
            Self::TunnelOffline
            | Self::TunnelDisconnected
            | Self::UpstreamUnreachable
            | Self::UpstreamBadResponse
            | Self::ResponseTooLarge => 502,
            Self::UpstreamTimeout | Self::HostUnresponsive => 504,
            Self::BodyTooLarge => 413,
            Self::HeadersTooLarge => 431,
            Self::UriTooLong => 414,
            Self::BadRequest | Self::InvalidName | Self::BadFrame | Self::FrameTooLarge | Self::InvalidPolicy => 400,
            Self::NameInUse | Self::ReservedName => 409,
            Self::ProtocolVersion => 426,
            Self::HandshakeTimeout => 408,
            Self::SessionReplaced => 409,
            Self::Cancelled => 499,
            Self::GoingAway | Self::Unavailable | Self::PolicyPending | Self::TunnelBusy => 503,
            Self::Forbidden | Self::NameNotAllowed | Self::NameOwned | Self::PolicyDenied => 403,
            Self::Unauthorized | Self::AuthRequired => 401,
            Self::RateLimited | Self::QuotaExceeded => 429,
            Self::Internal => 500,
        }
    }

    /// A short human explanation, safe to show to anyone.
    pub fn message(self) -> &'static str {
        match self {
            Self::NoTunnelName => "This address does not name a tunnel.",
            Self::TunnelOffline => "No tunnel is online under this name.",
            Self::TunnelDisconnected => "The tunnel client disconnected before it answered.",
            Self::UpstreamUnreachable => "The tunnel client could not reach its local service.",
            Self::UpstreamBadResponse => "The local service sent an invalid HTTP response.",
            Self::UpstreamTimeout => "The local service did not answer in time.",
            Self::ResponseTooLarge => "The local service's response is too large to carry.",
            Self::BodyTooLarge => "The request body is too large.",
            Self::HeadersTooLarge => "The request headers are too large.",
            Self::HostUnresponsive => "The tunnel's server stopped answering; retry in a few seconds.",
            Self::UriTooLong => "The request URI is too long.",
            Self::BadRequest => "The request cannot be carried through the tunnel.",
            Self::NameInUse => "The tunnel name is in use by another client.",
            Self::InvalidName => {
                "Tunnel names are 3-63 characters of a-z, 0-9 and '-', not starting or ending with '-'."
            }
            Self::ReservedName => "The tunnel name is reserved.",
            Self::ProtocolVersion => {
                "The client and server speak different protocol versions; upgrade the tunnel client."
            }
            Self::BadFrame => "A protocol frame could not be decoded.",
            Self::FrameTooLarge => "A protocol frame is too large.",
            Self::HandshakeTimeout => "The handshake did not complete in time.",
            Self::SessionReplaced => "Another session resumed this tunnel.",
            Self::GoingAway => "The server is shutting down; reconnect.",
            Self::Cancelled => "The request was cancelled.",
            Self::Unavailable => "The service is temporarily unavailable.",
            Self::Forbidden => "These credentials do not give access to this tunnel.",
            Self::Unauthorized => "A valid token is required: pass --token or set TUNNEL_TOKEN.",
            Self::NameNotAllowed => "This token may not bind that tunnel name.",
            Self::NameOwned => "This tunnel name is reserved by another account.",
            Self::RateLimited => "Too many requests; retry after the time in Retry-After.",
            Self::AuthRequired => "This tunnel requires a user name and password.",
            Self::PolicyDenied => "This tunnel does not admit this request.",
            Self::InvalidPolicy => "The tunnel's access policy cannot be used.",
            Self::PolicyPending => "The tunnel's access policy is being applied; retry in a moment.",
            Self::QuotaExceeded => "This tunnel has used up its quota for now; retry after the time in Retry-After.",
            Self::TunnelBusy => "This tunnel has too many requests in flight; retry after the time in Retry-After.",
            Self::Internal => "An internal error occurred.",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_name_matches_as_str() {
        for code in ErrorCode::ALL {
            let encoded = crate::encode(&code);
            let name: String = crate::decode(&encoded, 64).expect("decodes as a string");
            assert_eq!(name, code.as_str());
        }
    }

    #[test]
    fn statuses_are_errors() {
        for code in ErrorCode::ALL {
            assert!((400..600).contains(&code.http_status()), "{code}");
        }
    }
}
