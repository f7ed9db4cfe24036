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
pub mod replay;
pub mod session;
pub mod state;
pub mod target;
pub mod trail;
pub mod trust;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunnel_schemas::events::Failure;

pub use events::Event;
pub use target::Target;

use crate::backoff::Backoff;
use crate::forward::Forwarder;
use crate::session::{OpenError, Resume, SessionEnd};

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
    /// The local inspector capturing this tunnel's exchanges; none with `--no-inspect`.
    pub inspector: Option<inspector::Handle>,
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
    let forwarder = Arc::new(Forwarder::new(options.target.clone()).inspected(options.inspector.clone()));
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
                session::serve(socket, &welcome, &forwarder, &events, &shutdown).await
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
