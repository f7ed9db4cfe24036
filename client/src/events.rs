//! What the client reports while it runs, for the terminal or for scripts.

use std::time::Duration;

use serde::Serialize;

/// A client event. In JSON mode each is printed as one object per line, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The tunnel is online; the first event of a run.
    Ready {
        /// The public URL.
        url: String,
        /// The tunnel name.
        name: String,
        /// The local service.
        target: String,
        /// Whether the server records the tunnel's exchanges.
        recording: bool,
        /// The local inspector's page, when it runs.
        #[serde(skip_serializing_if = "Option::is_none")]
        inspector: Option<String>,
    },
    /// A request was answered (by the local service or with a tunnel error).
    Request {
        /// The request id (`X-Request-Id`).
        request_id: String,
        /// Method token.
        method: String,
        /// Path and query as forwarded.
        target: String,
        /// Status returned, or 502/504 for a failure.
        status: u16,
        /// The error code when the local service was not reached.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Time spent in the local exchange, in milliseconds.
        duration_ms: f64,
    },
    /// The session to the server was lost.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The next connection attempt is scheduled.
    Reconnecting {
        /// Attempts since the last working session.
        attempt: u32,
        /// Delay before the attempt, in milliseconds.
        delay_ms: u64,
    },
    /// The session is back with the same name.
    Resumed {
        /// The public URL.
        url: String,
        /// The tunnel name.
        name: String,
    },
    /// The tunnel, or its account, nears a quota (`warning`, at 80 %) or is over it (`exceeded`:
    /// public requests are refused until `until_ms`).
    Quota {
        /// `warning` or `exceeded`.
        level: String,
        /// `tunnel` or `account`.
        scope: String,
        /// The limit concerned (`requests_per_minute`, `bytes_per_day`, …).
        quota: String,
        /// Used in the period so far.
        used: u64,
        /// The limit.
        limit: u64,
        /// End of the period, Unix milliseconds.
        until_ms: u64,
    },
    /// One of several tunnels was refused for good; the others keep serving.
    Failed {
        /// The typed code.
        code: String,
        /// What happened and what to do.
        message: String,
    },
}

/// An event and, when the client runs several tunnels, the name of the one it is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tagged {
    /// The tunnel's name (absent with one tunnel, so a single tunnel's lines are as before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

impl Tagged {
    /// The event as one line of human-readable text, prefixed with the tunnel's name.
    pub fn human(&self) -> String {
        match &self.tunnel {
            Some(name) => {
                self.event.human().lines().map(|line| format!("[{name}] {line}")).collect::<Vec<_>>().join("\n")
            }
            None => self.event.human(),
        }
    }
}

impl Event {
    /// The event telling about `state`.
    pub fn quota(state: &tunnel_schemas::usage::QuotaState) -> Self {
        use tunnel_schemas::usage::{QuotaLevel, Scope};
        Self::Quota {
            level: match state.level {
                QuotaLevel::Warning => "warning",
                QuotaLevel::Exceeded => "exceeded",
            }
            .to_owned(),
            scope: match state.scope {
                Scope::Tunnel(_) => "tunnel",
                Scope::Account(_) => "account",
            }
            .to_owned(),
            quota: state.quota.as_str().to_owned(),
            used: state.used,
            limit: state.limit,
            until_ms: state.until_ms,
        }
    }

    /// The event as one line of human-readable text.
    pub fn human(&self) -> String {
        match self {
            Self::Ready { url, target, recording, inspector, .. } => {
                let recording =
                    if *recording { "\nRecording   on (tunnel trail --recorded, tunnel replay)" } else { "" };
                let inspector = inspector.as_ref().map(|page| format!("\nInspector   {page}")).unwrap_or_default();
                format!("Forwarding  {url} -> {target}{recording}{inspector}\n(Ctrl-C to stop)")
            }
            Self::Request { method, target, status, error, duration_ms, .. } => {
                let error = error.as_deref().map(|code| format!("  [{code}]")).unwrap_or_default();
                format!("{method:<7} {target:<40} {status}  {duration_ms:>8.1} ms{error}")
            }
            Self::Disconnected { reason } => format!("disconnected: {reason}"),
            Self::Reconnecting { attempt, delay_ms } => {
                format!("reconnecting in {delay_ms} ms (attempt {attempt})")
            }
            Self::Resumed { url, .. } => format!("reconnected  {url}"),
            Self::Quota { level, scope, quota, used, limit, until_ms } => {
                let until = tunnel_trail::filter::format_ms(*until_ms);
                let what = if level == "exceeded" { "quota exceeded" } else { "quota warning" };
                format!("{what}: {scope} {quota} {used}/{limit} until {until}")
            }
            Self::Failed { code, message } => format!("error: {message} ({code})"),
        }
    }

    /// Milliseconds of `duration`, with sub-millisecond precision.
    pub fn millis(duration: Duration) -> f64 {
        duration.as_secs_f64() * 1000.0
    }
}
