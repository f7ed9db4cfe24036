//! Layered configuration: defaults < TOML file (`--config`) < environment (`TUNNEL_…`, and
//! `NATS_URL`) < command-line flags.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Environment prefix of every setting (`TUNNEL_LISTEN`, `TUNNEL_REQUEST_TIMEOUT_SECS`, …).
pub const ENV_PREFIX: &str = "TUNNEL_";

/// Why the configuration was refused; the message names the bad key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value has the wrong type or shape, or the file is unreadable.
    #[error("configuration error: {0}")]
    Parse(#[from] Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("configuration error: `{key}` {problem}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] for `key`.
    pub fn invalid(key: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            problem: problem.into(),
        }
    }
}

/// A configuration with semantic checks beyond types.
pub trait Validate {
    /// Checks the values against each other and against their allowed ranges.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T` from its defaults, the optional TOML `file`, the environment and `flags` (a
/// serializable struct whose `None` fields are skipped), then validates it.
///
/// # Errors
/// [`ConfigError`] naming the key that failed to parse or validate.
pub fn load<T, F>(file: Option<&Path>, flags: &F) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default + Validate,
    F: Serialize,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    let config: T = figment
        .merge(Env::raw().only(&["NATS_URL"]).map(|_| "nats_url".into()))
        .merge(Env::prefixed(ENV_PREFIX))
        .merge(Serialized::defaults(flags))
        .extract()
        .map_err(Box::new)?;
    config.validate()?;
    Ok(config)
}

/// Flags every server takes. As a configuration layer (serialized), unset flags leave the lower
/// layers alone.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated (overrides `nats_url`).
    #[arg(long = "nats", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// Address to listen on (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Log format: `text` or `json` (overrides `log_format`).
    #[arg(long, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

/// Checks that `value` parses as a socket address.
///
/// # Errors
/// [`ConfigError::Invalid`] for `key`.
pub fn check_socket_addr(key: &'static str, value: &str) -> Result<(), ConfigError> {
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|e| {
            ConfigError::invalid(key, format!("must be an address like 127.0.0.1:8080 ({e})"))
        })
}

/// Checks that `value` is within `range`.
///
/// # Errors
/// [`ConfigError::Invalid`] for `key`.
pub fn check_range<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!(
                "is {value}, must be between {} and {}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// Checks a log format name.
///
/// # Errors
/// [`ConfigError::Invalid`] for `log_format`.
pub fn check_log_format(value: &str) -> Result<(), ConfigError> {
    match value {
        "text" | "json" => Ok(()),
        other => Err(ConfigError::invalid(
            "log_format",
            format!("is {other:?}, must be \"text\" or \"json\""),
        )),
    }
}

/// Replaces the password or token in a URL such as `nats://user:pass@host` with `***`.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &one[..scheme + 3], &one[at..])
            }
            _ => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("nats://a:b@h:4222,nats://h2"),
            "nats://***@h:4222,nats://h2"
        );
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn range_error_names_key() {
        let err = check_range("request_timeout_secs", 0, 1..=10).expect_err("out of range");
        assert!(err.to_string().contains("`request_timeout_secs`"), "{err}");
    }
}
