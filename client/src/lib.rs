//! The `tunnel` client: exposes a local HTTP service through an http-tunnel server.
//!
//! [`run`] connects to a session-host over WebSocket ([`session`]), announces the public URL,
//! forwards each request to the local service through one pooled HTTP client ([`forward`]) and
//! sends the response back. When the connection drops it reconnects with capped, jittered
//! exponential backoff ([`backoff`]) and takes its name back with the resume secret the server
//! gave it. What happens is reported as [`Event`]s.

pub mod backoff;
pub mod commands;
pub mod config;
pub mod events;
pub mod exchange;
pub mod forward;
pub mod inspector;
pub mod plan;
pub mod private_file;
pub mod replay;
pub mod session;
pub mod state;
pub mod stats;
pub mod status;
pub mod target;
pub mod trail;
pub mod trust;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunnel_schemas::events::Failure;

pub use events::{Event, Tagged};
pub use target::Target;

use crate::backoff::Backoff;
use crate::forward::Forwarder;
use crate::session::{OpenError, Resume, SessionEnd};

/// The session-host when neither a flag, the environment nor the settings file names one.
pub const DEFAULT_SERVER: &str = "ws://127.0.0.1:7070";

/// What to expose and where.
#[derive(Clone)]
pub struct Options {
    /// WebSocket URL of the session-host (`ws://host:7070`; the connect path is added when absent).
    pub server: String,
    /// The local service.
    pub target: Target,
    /// Requested tunnel name; random when absent.
    pub name: Option<String>,
    /// Ask the server to record the tunnel's exchanges.
    pub record: bool,
    /// Where to save the tunnel's name, URL and resume secret for later `trail` and `replay`
    /// commands ([`state`]); nothing is saved when absent.
    pub state_dir: Option<std::path::PathBuf>,
    /// The account token; never printed.
    pub token: Option<String>,
    /// Who on the public side may reach the tunnel; its secrets are already hashed.
    pub policy: tunnel_schemas::policy::PublicPolicy,
    /// Serve the name together with the other clients of the same account that say so.
    pub shared: bool,
    /// The `Host` header the local service gets.
    pub host_header: forward::HostHeader,
    /// Where the tunnel's sessions count their traffic, for a live view ([`stats`]); nothing is
    /// counted when absent.
    pub stats: Option<Arc<stats::Stats>>,
    /// The local inspector capturing this tunnel's exchanges; none with `--no-inspect`.
    pub inspector: Option<inspector::Handle>,
    /// Where the spans of forwarded requests go (off by default).
    pub traces: tunnel_kit::traces::Traces,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("server", &self.server)
            .field("target", &self.target)
            .field("name", &self.name)
            .field("record", &self.record)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("policy", &self.policy)
            .field("shared", &self.shared)
            .field("host_header", &self.host_header)
            .field("inspector", &self.inspector)
            .finish_non_exhaustive()
    }
}

/// Why the client stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the tunnel in a way retrying cannot fix.
    #[error("{}: {}", .0.code.message(), .0.detail)]
    Refused(Failure),
    /// The server URL is not a `ws://` or `wss://` URL.
    #[error("invalid server URL {0:?}: expected ws://host[:port] or wss://host[:port]")]
    InvalidServer(String),
}

impl ClientError {
    /// What the user can do about it, when there is something.
    pub fn hint(&self) -> Option<&'static str> {
        use tunnel_schemas::ErrorCode;
        let Self::Refused(failure) = self else {
            return Some(
                "pass --server ws://host:7070 or wss://host, or set it once: tunnel config set server wss://host",
            );
        };
        Some(match failure.code {
            ErrorCode::NameInUse => {
                "another client holds this name: pick another with --name, or stop the other client first"
            }
            ErrorCode::InvalidName => "a name is 1 to 63 of a-z, 0-9 and -, neither starting nor ending with -",
            ErrorCode::ReservedName => "the operator reserved this name: pick another with --name",
            ErrorCode::NameOwned => "another account owns this name: pick another with --name",
            ErrorCode::NameNotAllowed => "your token may not bind this name: pick one it allows, or ask the operator",
            ErrorCode::Unauthorized => {
                "check the token (tunnel config show says which one is used), store a new one with \
                 tunnel login <token>, or ask the operator for one"
            }
            ErrorCode::ProtocolVersion => "the client and the server differ in version: update the client",
            ErrorCode::InvalidPolicy => "check --basic-auth, --allow-cidr, --deny-cidr and --require-header",
            ErrorCode::SessionReplaced => "another client resumed this tunnel with its secret",
            _ => return None,
        })
    }

    /// The typed code of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused(failure) => failure.code.as_str(),
            Self::InvalidServer(_) => "invalid_server",
        }
    }
}

/// Runs the tunnel until `shutdown` is cancelled (then says goodbye, releasing the name) or the
/// server refuses it for good.
///
/// # Errors
/// [`ClientError::Refused`] when the name is in use, invalid or reserved, the protocol versions
/// differ, or another session took the tunnel over; [`ClientError::InvalidServer`] for a server
/// URL that is not `ws://` or `wss://`.
pub async fn run(
    options: Options,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let server = connect_url(&options.server);
    let valid = server
        .parse::<http::Uri>()
        .is_ok_and(|uri| matches!(uri.scheme_str(), Some("ws" | "wss")) && uri.authority().is_some());
    if !valid {
        return Err(ClientError::InvalidServer(options.server));
    }
    let forwarder = Arc::new(
        Forwarder::new(options.target.clone())
            .with_host_header(options.host_header.clone())
            .inspected(options.inspector.clone())
            .traced(options.traces.clone()),
    );
    let mut resume: Option<Resume> = None;
    let mut backoff = Backoff::default();
    loop {
        let opened = tokio::select! {
            opened = session::open(&server, &options, resume.as_ref()) => opened,
            () = shutdown.cancelled() => return Ok(()),
        };
        let end = match opened {
            Ok((welcome, socket)) => {
                backoff.reset();
                let event = if resume.is_some() {
                    Event::Resumed { url: welcome.url.clone(), name: welcome.name.clone() }
                } else {
                    Event::Ready {
                        url: welcome.url.clone(),
                        name: welcome.name.clone(),
                        target: options.target.to_string(),
                        recording: welcome.recording,
                        inspector: options.inspector.as_ref().map(inspector::Handle::url),
                    }
                };
                if let Some(inspector) = &options.inspector {
                    inspector.online(&welcome.name, &options.server, &welcome.resume_secret, welcome.recording);
                }
                if let Some(dir) = &options.state_dir {
                    let saved = state::SavedTunnel {
                        name: welcome.name.clone(),
                        url: welcome.url.clone(),
                        server: options.server.clone(),
                        secret: welcome.resume_secret.clone(),
                    };
                    if let Err(e) = state::save(dir, &saved) {
                        tracing::warn!(error = %e, "tunnel not saved for later trail and replay commands");
                    }
                }
                let _ = events.send(event).await;
                resume = Some(Resume { name: welcome.name.clone(), secret: welcome.resume_secret.clone() });
                session::serve(socket, &welcome, &forwarder, &events, options.stats.as_ref(), &shutdown).await
            }
            Err(OpenError::Fatal(failure)) => return Err(ClientError::Refused(failure)),
            Err(OpenError::Transient(reason)) => SessionEnd::Lost(reason),
        };
        match end {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Fatal(failure) => return Err(ClientError::Refused(failure)),
            SessionEnd::GoingAway => {
                let _ = events.send(Event::Disconnected { reason: "server going away".into() }).await;
                continue;
            }
            SessionEnd::Lost(reason) => {
                let _ = events.send(Event::Disconnected { reason }).await;
            }
        }
        let delay = backoff.next_delay();
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let _ = events.send(Event::Reconnecting { attempt: backoff.attempts(), delay_ms }).await;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Runs several tunnels at once, each with its own connection and its own event channel, until
/// `shutdown` is cancelled or every one has stopped. With several tunnels, one refused for good
/// is reported on its channel ([`Event::Failed`]) and the others keep serving.
///
/// # Errors
/// The first error of a tunnel refused for good; `Ok` when all stopped on `shutdown`.
pub async fn run_all(
    tunnels: Vec<(Options, mpsc::Sender<Event>)>,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let several = tunnels.len() > 1;
    let mut running = tokio::task::JoinSet::new();
    for (options, events) in tunnels {
        let shutdown = shutdown.clone();
        running.spawn(async move {
            let result = run(options, events.clone(), shutdown).await;
            if several && let Err(error) = &result {
                let _ = events.send(Event::Failed { code: error.code().to_owned(), message: error.to_string() }).await;
            }
            result
        });
    }
    let mut first_error = None;
    while let Some(joined) = running.join_next().await {
        if let Ok(Err(error)) = joined {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `server` with the connect path appended when it has no path of its own.
fn connect_url(server: &str) -> String {
    let trimmed = server.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        trimmed.to_owned()
    } else {
        format!("{trimmed}{}", tunnel_schemas::frames::CONNECT_PATH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_connect_path_only_when_missing() {
        assert_eq!(connect_url("ws://h:7070"), "ws://h:7070/v1/connect");
        assert_eq!(connect_url("ws://h:7070/"), "ws://h:7070/v1/connect");
        assert_eq!(connect_url("wss://h/custom/path"), "wss://h/custom/path");
    }
}
