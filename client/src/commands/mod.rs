//! The commands of the `tunnel` CLI beside `http`: the log commands `trail`, `replay` and
//! `export`, and the operator's `admin`. They share how the
//! tunnel and its log are found ([`LogArgs`]) and what is selected ([`FilterArgs`]).

pub mod admin;
pub mod config;
pub mod erase;
pub mod export;
pub mod inspect;
pub mod policy;
pub mod quota;
pub mod replay;
pub mod status;
pub mod trail;
pub mod usage;

use std::process::ExitCode;

use tunnel_trail::filter::{Filter, Glob, StatusFilter, now_ms, parse_time};
use tunnel_trail::query::{Query, Source};

use crate::state;
use crate::trail::Access;

/// Which tunnel, and how its log is reached.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Tunnel name; the tunnel opened last from this machine when absent.
    pub name: Option<String>,
    /// WebSocket URL of the session-host the log is read through (default: the one the tunnel
    /// used).
    #[arg(long, value_name = "WS_URL")]
    pub server: Option<String>,
    /// The tunnel's resume secret (default: the one saved when the tunnel opened).
    #[arg(long, env = "TUNNEL_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Read the log straight from NATS instead (operators; any tunnel, no secret).
    #[arg(long, value_name = "NATS_URL", env = "TUNNEL_NATS_URL")]
    pub nats: Option<String>,
    /// TLS to NATS, with `--nats`.
    #[command(flatten)]
    pub nats_tls: tunnel_kit::nats::NatsTls,
}

/// What to select.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Events from this time: RFC 3339 (2026-11-30T10:00:00Z), a duration ago (10m) or unix ms.
    #[arg(long)]
    pub since: Option<String>,
    /// Events up to this time (same forms).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this method.
    #[arg(long)]
    pub method: Option<String>,
    /// Only this status (404) or class (5xx).
    #[arg(long)]
    pub status: Option<StatusFilter>,
    /// Only paths matching this pattern (`*` any run, `?` one character): /hooks/*.
    #[arg(long)]
    pub path: Option<String>,
    /// Only this request id (repeat for several).
    #[arg(long = "request-id", value_name = "ID")]
    pub request_ids: Vec<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl FilterArgs {
    /// The filter these flags describe.
    ///
    /// # Errors
    /// The message of a time that cannot be read.
    pub fn filter(&self) -> Result<Filter, String> {
        let now = now_ms();
        let time = |text: &Option<String>| text.as_deref().map(|t| parse_time(t, now)).transpose();
        Ok(Filter {
            since_ms: time(&self.since).map_err(|e| e.to_string())?,
            until_ms: time(&self.until).map_err(|e| e.to_string())?,
            method: self.method.clone(),
            status: self.status,
            path: self.path.clone().map(Glob),
            request_ids: self.request_ids.clone(),
        })
    }
}

/// A resolved tunnel: its name, how to read its log, and its public URL when known.
pub struct Resolved {
    /// The tunnel name.
    pub name: String,
    /// How its log is read.
    pub access: Access,
    /// Its public URL, when this machine opened it.
    pub url: Option<String>,
}

impl LogArgs {
    /// Finds the tunnel and its log from the flags and the saved state.
    ///
    /// # Errors
    /// The message when neither the flags nor the saved state say enough.
    pub fn resolve(&self) -> Result<Resolved, String> {
        let saved = state::default_dir().and_then(|dir| state::load(&dir, self.name.as_deref()).ok());
        let name = self
            .name
            .clone()
            .or_else(|| saved.as_ref().map(|s| s.name.clone()))
            .ok_or("no tunnel name given and none opened from this machine")?;
        let url = saved.as_ref().map(|s| s.url.clone());
        if let Some(nats) = &self.nats {
            return Ok(Resolved { name, access: Access::Nats { url: nats.clone(), tls: self.nats_tls.clone() }, url });
        }
        let server = self.server.clone().or_else(|| saved.as_ref().map(|s| s.server.clone()));
        let secret = self.secret.clone().or_else(|| saved.as_ref().map(|s| s.secret.clone()));
        let (Some(server), Some(secret)) = (server, secret) else {
            return Err(format!(
                "tunnel {name} was not opened from this machine: pass --server and --secret (or --nats as an operator)"
            ));
        };
        let base = crate::trail::host_base(&server).map_err(|e| e.to_string())?;
        Ok(Resolved { name, access: Access::Host { base, secret }, url })
    }
}

/// The tunnel and the filter of a log command, or the exit code of its refusal.
///
/// # Errors
/// The exit code after reporting flags that do not resolve.
pub fn resolve(log: &LogArgs, filter: &FilterArgs, json: bool) -> Result<(Resolved, Filter), ExitCode> {
    let resolved = log.resolve().map_err(|message| fail(json, "invalid_arguments", &message))?;
    let filter = filter.filter().map_err(|message| fail(json, "invalid_arguments", &message))?;
    Ok((resolved, filter))
}

/// A query of `name`'s `source` with `filter`.
pub fn query(name: &str, source: Source, filter: Filter, follow: bool, limit: Option<usize>) -> Query {
    Query { tunnel: name.to_owned(), source, filter, follow, owner: None, limit }
}

/// Reports a failure: a JSON line on `json`, a message on stderr otherwise.
pub fn fail(json: bool, code: &str, message: &str) -> ExitCode {
    fail_with_hint(json, code, message, None)
}

/// Reports a failure and what to do about it: a JSON line on `json` (the hint as `hint`), a
/// message and a `hint:` line on stderr otherwise.
pub fn fail_with_hint(json: bool, code: &str, message: &str, hint: Option<&str>) -> ExitCode {
    if json {
        let mut line = serde_json::json!({ "event": "error", "code": code, "message": message });
        if let Some(hint) = hint {
            line["hint"] = hint.into();
        }
        println!("{line}");
    } else {
        eprintln!("error: {message} ({code})");
        if let Some(hint) = hint {
            eprintln!("hint: {hint}");
        }
    }
    ExitCode::FAILURE
}
