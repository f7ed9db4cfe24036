//! Layered configuration: defaults < TOML file (`--config`) < environment (`TUNNEL_…`, and
//! the NATS conventions `NATS_URL`, `NATS_CA_FILE`, `NATS_CERT_FILE`, `NATS_KEY_FILE`) <
//! command-line flags.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Environment prefix of every setting (`TUNNEL_LISTEN`, `TUNNEL_REQUEST_TIMEOUT_SECS`, …).
pub const ENV_PREFIX: &str = "TUNNEL_";

/// The NATS conventions read from the environment without the `TUNNEL_` prefix (which wins
/// over them); each names the key of its lowercase name.
const NATS_ENV: [&str; 4] = ["NATS_URL", "NATS_CA_FILE", "NATS_CERT_FILE", "NATS_KEY_FILE"];

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
        Self::Invalid { key, problem: problem.into() }
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
        .merge(Env::raw().only(&NATS_ENV).map(|key| key.as_str().to_ascii_lowercase().into()))
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
        .map_err(|e| ConfigError::invalid(key, format!("must be an address like 127.0.0.1:8080 ({e})")))
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
        Err(ConfigError::invalid(key, format!("is {value}, must be between {} and {}", range.start(), range.end())))
    }
}

/// Checks a log format name.
///
/// # Errors
/// [`ConfigError::Invalid`] for `log_format`.
pub fn check_log_format(value: &str) -> Result<(), ConfigError> {
    match value {
        "text" | "json" => Ok(()),
        other => Err(ConfigError::invalid("log_format", format!("is {other:?}, must be \"text\" or \"json\""))),
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
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(default)]
    struct Sample {
        nats_url: String,
        nats_ca_file: String,
        listen: String,
        timeout_secs: u64,
        domain: String,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                nats_url: "nats://default".into(),
                nats_ca_file: String::new(),
                listen: "127.0.0.1:1".into(),
                timeout_secs: 30,
                domain: "d".into(),
            }
        }
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            check_range("timeout_secs", self.timeout_secs, 1..=60)
        }
    }

    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        listen: Option<String>,
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail closures return figment's own error type")]
    fn layers_defaults_file_env_and_flags_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "listen = \"file:1\"\ntimeout_secs = 5\ndomain = \"from-file\"")?;
            jail.set_env("TUNNEL_TIMEOUT_SECS", "7");
            jail.set_env("NATS_URL", "nats://from-env");
            jail.set_env("NATS_CA_FILE", "/from-env/ca.pem");
            let flags = Flags { listen: Some("flag:1".into()) };
            let config: Sample = load(Some(Path::new("c.toml")), &flags).map_err(|e| e.to_string())?;
            assert_eq!(config.listen, "flag:1", "flags beat everything");
            assert_eq!(config.timeout_secs, 7, "environment beats the file");
            assert_eq!(config.domain, "from-file", "the file beats defaults");
            assert_eq!(config.nats_url, "nats://from-env", "NATS_URL is honoured");
            assert_eq!(config.nats_ca_file, "/from-env/ca.pem", "NATS_CA_FILE is honoured");
            jail.set_env("TUNNEL_NATS_URL", "nats://tunnel-env");
            let config: Sample = load(None, &Flags { listen: None }).map_err(|e| e.to_string())?;
            assert_eq!(config.nats_url, "nats://tunnel-env", "TUNNEL_NATS_URL beats NATS_URL");
            assert_eq!(config.listen, "127.0.0.1:1");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail closures return figment's own error type")]
    fn errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TUNNEL_TIMEOUT_SECS", "soon");
            let err = load::<Sample, _>(None, &Flags { listen: None }).expect_err("a type error");
            assert!(err.to_string().to_lowercase().contains("timeout_secs"), "{err}");
            jail.set_env("TUNNEL_TIMEOUT_SECS", "99");
            let err = load::<Sample, _>(None, &Flags { listen: None }).expect_err("a range error");
            assert!(err.to_string().contains("`timeout_secs`"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = load::<Sample, _>(Some(Path::new("/nonexistent/tunnel.toml")), &Flags { listen: None });
        assert!(err.is_err());
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact_url("nats://a:b@h:4222,nats://h2"), "nats://***@h:4222,nats://h2");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn range_error_names_key() {
        let err = check_range("request_timeout_secs", 0, 1..=10).expect_err("out of range");
        assert!(err.to_string().contains("`request_timeout_secs`"), "{err}");
    }
}
