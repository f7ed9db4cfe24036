//! The client's settings file: the server, the token, a CA file, default flags for every tunnel,
//! and named tunnels for `tunnel start`. Flags win over environment variables, which win over
//! the file.
//!
//! It is TOML at `$TUNNEL_CONFIG`, or `$XDG_CONFIG_HOME/http-tunnel/config.toml`, or
//! `~/.config/http-tunnel/config.toml`; a missing file is no error:
//!
//! ```toml
//! token = "tt_…"                       # tunnel login tt_… writes it (mode 0600)
//! server = "wss://connect.example.com"
//! ca_file = "/etc/ssl/private-ca.pem"
//!
//! [defaults]                           # flags every tunnel gets unless it says otherwise
//! record = true
//! host_header = "rewrite"
//!
//! [tunnels.web]                        # tunnel start web: port 3000 as "web"
//! port = 3000
//!
//! [tunnels.api]
//! to = "http://127.0.0.1:8080/api"
//! name = "acme-api"
//! basic_auth = ["ann:correct horse"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

/// The settings of the file.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The account token; never printed.
    pub token: Option<String>,
    /// WebSocket URL of the session-host.
    pub server: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Flags every tunnel gets unless its own flags or table say otherwise.
    #[serde(default)]
    pub defaults: TunnelSpec,
    /// Named tunnels, for `tunnel start`.
    #[serde(default)]
    pub tunnels: BTreeMap<String, TunnelSpec>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("server", &self.server)
            .field("ca_file", &self.ca_file)
            .field("defaults", &self.defaults)
            .field("tunnels", &self.tunnels)
            .finish()
    }
}

/// One tunnel as flags, a `[tunnels.<key>]` table or the `[defaults]` table describe it; each
/// field unset falls back to the next layer.
#[derive(Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSpec {
    /// Local port (`http://localhost:<port>`).
    pub port: Option<u16>,
    /// Local URL, instead of a port.
    pub to: Option<String>,
    /// Tunnel name to ask for.
    pub name: Option<String>,
    /// Ask the server to record the exchanges.
    pub record: Option<bool>,
    /// Serve the name together with the other clients of the account.
    pub shared: Option<bool>,
    /// `rewrite`, or the value of the `Host` header the local service gets.
    pub host_header: Option<String>,
    /// Basic-auth `user:password` pairs visitors need.
    #[serde(default)]
    pub basic_auth: Vec<String>,
    /// Networks admitted.
    #[serde(default)]
    pub allow_cidr: Vec<String>,
    /// Networks refused.
    #[serde(default)]
    pub deny_cidr: Vec<String>,
    /// `Name:value` headers required.
    #[serde(default)]
    pub require_header: Vec<String>,
}

impl std::fmt::Debug for TunnelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelSpec")
            .field("port", &self.port)
            .field("to", &self.to)
            .field("name", &self.name)
            .field("record", &self.record)
            .field("shared", &self.shared)
            .field("host_header", &self.host_header)
            .field("basic_auth", &self.basic_auth.iter().map(|_| "***").collect::<Vec<_>>())
            .field("allow_cidr", &self.allow_cidr)
            .field("deny_cidr", &self.deny_cidr)
            .field("require_header", &self.require_header)
            .finish()
    }
}

impl TunnelSpec {
    /// This spec, its unset fields taken from `fallback` (lists: this spec's when it has any).
    #[must_use]
    pub fn or(self, fallback: &TunnelSpec) -> TunnelSpec {
        let list = |own: Vec<String>, other: &Vec<String>| if own.is_empty() { other.clone() } else { own };
        let has_target = self.port.is_some() || self.to.is_some();
        TunnelSpec {
            port: if has_target { self.port } else { fallback.port },
            to: if has_target { self.to } else { fallback.to.clone() },
            name: self.name.or_else(|| fallback.name.clone()),
            record: self.record.or(fallback.record),
            shared: self.shared.or(fallback.shared),
            host_header: self.host_header.or_else(|| fallback.host_header.clone()),
            basic_auth: list(self.basic_auth, &fallback.basic_auth),
            allow_cidr: list(self.allow_cidr, &fallback.allow_cidr),
            deny_cidr: list(self.deny_cidr, &fallback.deny_cidr),
            require_header: list(self.require_header, &fallback.require_header),
        }
    }
}

/// Why the settings file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the settings file {path}: {problem}")]
pub struct ConfigError {
    path: String,
    problem: String,
}

impl ClientConfig {
    /// Reads the settings file, if there is one.
    ///
    /// # Errors
    /// [`ConfigError`] when the file exists and is not valid TOML of the keys above.
    pub fn load() -> Result<Self, ConfigError> {
        match path() {
            Some(path) if path.exists() => Self::load_from(&path),
            _ => Ok(Self::default()),
        }
    }

    /// Reads the settings file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] when it cannot be read or is not valid TOML of the keys above.
    pub fn load_from(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&std::fs::read_to_string(path).map_err(|e| error(path, &e))?).map_err(|e| error(path, &e))
    }

    /// Reads settings from TOML `text`.
    ///
    /// # Errors
    /// The parser's message when `text` is not valid TOML of the keys above.
    pub fn parse(text: &str) -> Result<Self, String> {
        Figment::from(Toml::string(text)).extract().map_err(|e| e.to_string())
    }
}

fn error(path: &Path, problem: &dyn std::fmt::Display) -> ConfigError {
    ConfigError { path: path.display().to_string(), problem: problem.to_string() }
}

/// Where the settings file is.
pub fn path() -> Option<PathBuf> {
    let env = |key: &str| std::env::var_os(key).filter(|value| !value.is_empty()).map(PathBuf::from);
    env("TUNNEL_CONFIG")
        .or_else(|| env("XDG_CONFIG_HOME").map(|dir| dir.join("http-tunnel/config.toml")))
        .or_else(|| env("HOME").map(|home| home.join(".config/http-tunnel/config.toml")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_defaults_and_named_tunnels() {
        let config = ClientConfig::parse(
            "token = \"tt_x\"\n[defaults]\nrecord = true\n[tunnels.web]\nport = 3000\n\
             [tunnels.api]\nto = \"http://127.0.0.1:8080\"\nname = \"acme\"\nbasic_auth = [\"ann:correct horse\"]\n",
        )
        .expect("valid");
        assert_eq!(config.defaults.record, Some(true));
        assert_eq!(config.tunnels["web"].port, Some(3000));
        assert_eq!(config.tunnels["api"].name.as_deref(), Some("acme"));
        assert!(!format!("{config:?}").contains("tt_x"));
        assert!(!format!("{config:?}").contains("correct horse"));
    }

    #[test]
    fn refuses_unknown_keys() {
        assert!(ClientConfig::parse("sever = \"ws://x\"").is_err());
        assert!(ClientConfig::parse("[tunnels.web]\nprot = 3000").is_err());
        assert!(ClientConfig::parse("[defaults]\nrecord = \"yes\"").is_err());
    }

    #[test]
    fn layers_fall_back_field_by_field() {
        let flags = TunnelSpec { port: Some(3000), record: Some(false), ..TunnelSpec::default() };
        let defaults = TunnelSpec {
            to: Some("http://elsewhere".into()),
            record: Some(true),
            host_header: Some("rewrite".into()),
            allow_cidr: vec!["10.0.0.0/8".into()],
            ..TunnelSpec::default()
        };
        let merged = flags.or(&defaults);
        assert_eq!((merged.port, merged.to.as_deref()), (Some(3000), None), "a target is taken whole");
        assert_eq!(merged.record, Some(false), "an explicit false wins over the default");
        assert_eq!(merged.host_header.as_deref(), Some("rewrite"));
        assert_eq!(merged.allow_cidr, vec!["10.0.0.0/8".to_owned()]);
    }
}
