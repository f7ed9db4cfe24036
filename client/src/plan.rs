//! From settings to tunnels: a [`TunnelSpec`] whose layers (flags, environment, the settings
//! file's tables) are merged becomes the [`Options`] of one tunnel.

use std::path::PathBuf;

use tunnel_schemas::policy::{PolicyError, PolicySpec};

use crate::Options;
use crate::config::TunnelSpec;
use crate::forward::{HostHeader, InvalidHostHeader};
use crate::target::{Target, TargetError};

/// What every tunnel of one client shares.
#[derive(Clone)]
pub struct Common {
    /// WebSocket URL of the session-host.
    pub server: String,
    /// The account token; never printed.
    pub token: Option<String>,
    /// Where opened tunnels are saved for later `trail` and `replay` commands.
    pub state_dir: Option<PathBuf>,
}

/// Why a tunnel cannot be opened as described.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Neither a port nor a URL.
    #[error("no local service given: pass a port (tunnel http 3000) or --to URL{0}")]
    NoTarget(String),
    /// Both a port and a URL.
    #[error("both a port and a URL given{0}: keep one")]
    TwoTargets(String),
    /// The local URL cannot be used.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A policy flag cannot be used.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The host header cannot be used.
    #[error(transparent)]
    HostHeader(#[from] InvalidHostHeader),
    /// `--shared` without a name.
    #[error("a shared tunnel needs a name{0}")]
    SharedWithoutName(String),
}

impl PlanError {
    /// The typed code reported for it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoTarget(_) | Self::TwoTargets(_) | Self::Target(_) => "invalid_target",
            Self::Policy(_) => "invalid_policy",
            Self::HostHeader(_) => "invalid_host_header",
            Self::SharedWithoutName(_) => "invalid_arguments",
        }
    }
}

/// The options of the tunnel `spec` describes; `key` names its table in the settings file, for
/// messages and as its default name.
///
/// # Errors
/// [`PlanError`] naming the first field that cannot be used.
pub fn options(spec: TunnelSpec, key: Option<&str>, common: &Common) -> Result<Options, PlanError> {
    let place = key.map(|key| format!(" in [tunnels.{key}]")).unwrap_or_default();
    let target = match (spec.port, spec.to) {
        (Some(port), None) => Target::port(port),
        (None, Some(url)) => Target::parse(&url)?,
        (None, None) => return Err(PlanError::NoTarget(place)),
        (Some(_), Some(_)) => return Err(PlanError::TwoTargets(place)),
    };
    let name = spec.name.or_else(|| key.map(str::to_owned));
    let shared = spec.shared.unwrap_or(false);
    if shared && name.is_none() {
        return Err(PlanError::SharedWithoutName(place));
    }
    let policy = PolicySpec {
        basic_auth: spec.basic_auth,
        allow_cidrs: spec.allow_cidr,
        deny_cidrs: spec.deny_cidr,
        require_headers: spec.require_header,
    }
    .build()?;
    Ok(Options {
        server: common.server.clone(),
        target,
        name,
        record: spec.record.unwrap_or(false),
        state_dir: common.state_dir.clone(),
        token: common.token.clone(),
        policy,
        shared,
        host_header: spec.host_header.as_deref().map(str::parse).transpose()?.unwrap_or(HostHeader::Preserve),
        stats: None,
        inspector: None,
        traces: Default::default(),
    })
}

/// Parses `--also`: `PORT`, `PORT:NAME`, `URL` or `URL:NAME` (a name is a DNS label, never all
/// digits, so `http://host:8080` is a URL with a port, not a name).
///
/// # Errors
/// The message when the text is none of these.
pub fn parse_also(text: &str) -> Result<TunnelSpec, String> {
    let (local, name) = match text.rsplit_once(':') {
        Some((local, name)) if !name.is_empty() && !name.bytes().all(|b| b.is_ascii_digit()) && !name.contains('/') => {
            (local, Some(name.to_owned()))
        }
        _ => (text, None),
    };
    let spec = if let Ok(port) = local.parse::<u16>() {
        TunnelSpec { port: Some(port), name, ..TunnelSpec::default() }
    } else if local.contains("://") {
        Target::parse(local).map_err(|e| e.to_string())?;
        TunnelSpec { to: Some(local.to_owned()), name, ..TunnelSpec::default() }
    } else {
        return Err(format!("{text:?}: expected PORT, PORT:NAME, URL or URL:NAME"));
    };
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common() -> Common {
        Common { server: "ws://h:7070".into(), token: None, state_dir: None }
    }

    #[test]
    fn also_takes_ports_urls_and_names() {
        let spec = parse_also("3001:api").expect("valid");
        assert_eq!((spec.port, spec.name.as_deref()), (Some(3001), Some("api")));
        assert_eq!(parse_also("3001").expect("valid").name, None);
        let url = parse_also("http://127.0.0.1:8080:web").expect("valid");
        assert_eq!((url.to.as_deref(), url.name.as_deref()), (Some("http://127.0.0.1:8080"), Some("web")));
        let url = parse_also("http://127.0.0.1:8080").expect("valid");
        assert_eq!((url.to.as_deref(), url.name), (Some("http://127.0.0.1:8080"), None));
        for bad in ["", "api", "70000", "ftp://x:api", ":api"] {
            assert!(parse_also(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_table_key_names_its_tunnel() {
        let spec = TunnelSpec { port: Some(3000), ..TunnelSpec::default() };
        let options = options(spec, Some("web"), &common()).expect("valid");
        assert_eq!(options.name.as_deref(), Some("web"));
        assert_eq!(options.target.to_string(), "http://localhost:3000");
    }

    #[test]
    fn refusals_say_where() {
        let error = options(TunnelSpec::default(), Some("web"), &common()).expect_err("no target");
        assert!(error.to_string().contains("[tunnels.web]"), "{error}");
        let both = TunnelSpec { port: Some(1), to: Some("http://x".into()), ..TunnelSpec::default() };
        assert_eq!(options(both, None, &common()).expect_err("two targets").code(), "invalid_target");
        let bad = TunnelSpec { port: Some(1), host_header: Some("a b".into()), ..TunnelSpec::default() };
        assert_eq!(options(bad, None, &common()).expect_err("bad host").code(), "invalid_host_header");
        let shared = TunnelSpec { port: Some(1), shared: Some(true), ..TunnelSpec::default() };
        assert_eq!(options(shared, None, &common()).expect_err("no name").code(), "invalid_arguments");
    }
}
