//! The client's own settings file, for what is tedious to pass every time: the token, the
//! server, a CA file. Flags and environment variables win over it.
//!
//! It is TOML at `$TUNNEL_CONFIG`, or `$XDG_CONFIG_HOME/http-tunnel/config.toml`, or
//! `~/.config/http-tunnel/config.toml`; a missing file is no error:
//!
//! ```toml
//! token = "tt_…"
//! server = "wss://connect.example.com"
//! ca_file = "/etc/ssl/private-ca.pem"
//! ```

use std::path::PathBuf;

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
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("server", &self.server)
            .field("ca_file", &self.ca_file)
            .finish()
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
        let Some(path) = path() else { return Ok(Self::default()) };
        if !path.exists() {
            return Ok(Self::default());
        }
        Figment::from(Toml::file_exact(&path))
            .extract()
            .map_err(|e| ConfigError { path: path.display().to_string(), problem: e.to_string() })
    }
}

/// Where the settings file is.
pub fn path() -> Option<PathBuf> {
    let env = |key: &str| std::env::var_os(key).filter(|value| !value.is_empty()).map(PathBuf::from);
    env("TUNNEL_CONFIG")
        .or_else(|| env("XDG_CONFIG_HOME").map(|dir| dir.join("http-tunnel/config.toml")))
        .or_else(|| env("HOME").map(|home| home.join(".config/http-tunnel/config.toml")))
}
