//! `tunnel config` and `tunnel login`: show and change the settings file, keeping its comments
//! and layout. Every change is checked by reading the whole file back as settings before it is
//! written, so a typo never leaves a file the client refuses; the file is written with mode 0600
//! since it may hold the token.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;
use toml_edit::{DocumentMut, Item, Table, Value};

use super::fail;
use crate::config::{self, ClientConfig};

/// `tunnel config`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Shows the settings in effect and where each comes from (flag, environment, file); the
    /// token is never printed.
    Show,
    /// Sets a value: `server`, `token`, `ca_file`, `defaults.<flag>` or `tunnels.<name>.<flag>`
    /// (flags: port, to, name, record, shared, host_header, basic_auth, allow_cidr, deny_cidr,
    /// require_header). Values are TOML when they read as TOML (true, 3000, ["a", "b"]), text
    /// otherwise.
    Set {
        /// Dotted key: `server`, `defaults.record`, `tunnels.web.port`.
        key: String,
        /// The value.
        value: String,
    },
    /// Removes a value, or a whole `tunnels.<name>` table.
    Unset {
        /// Dotted key.
        key: String,
    },
    /// Prints the settings file's path.
    Path,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
enum ChangeError {
    #[error("no settings file location: set TUNNEL_CONFIG or HOME")]
    NoPath,
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, String),
    #[error("{0} is not valid TOML: {1}")]
    Parse(PathBuf, String),
    #[error("invalid key {0:?}: expected names separated by dots")]
    Key(String),
    #[error("{0} is not a table")]
    NotATable(String),
    #[error("refused, the file would not be valid settings: {0}")]
    Invalid(String),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, String),
}

impl ChangeError {
    fn code(&self) -> &'static str {
        match self {
            Self::NoPath | Self::Read(..) | Self::Write(..) => "settings_unwritable",
            Self::Parse(..) => "invalid_settings",
            Self::Key(_) | Self::NotATable(_) | Self::Invalid(_) => "invalid_arguments",
        }
    }
}

/// Runs `tunnel config`.
pub fn run(command: ConfigCommand, json: bool) -> ExitCode {
    let outcome = match command {
        ConfigCommand::Show => return show(json),
        ConfigCommand::Path => {
            return match config::path() {
                Some(path) => report(json, json!({ "path": path }), &path.display().to_string()),
                None => fail(json, "settings_unwritable", &ChangeError::NoPath.to_string()),
            };
        }
        ConfigCommand::Set { key, value } => change(&key, Some(&value)).map(|path| (path, format!("set {key}"))),
        ConfigCommand::Unset { key } => change(&key, None).map(|path| (path, format!("removed {key}"))),
    };
    match outcome {
        Ok((path, what)) => {
            report(json, json!({ "path": path, "changed": what }), &format!("{what} in {}", path.display()))
        }
        Err(e) => fail(json, e.code(), &e.to_string()),
    }
}

/// Runs `tunnel login <token>`: stores the token in the settings file.
pub fn login(token: &str, json: bool) -> ExitCode {
    if token.trim().is_empty() || token.chars().any(char::is_whitespace) {
        return fail(json, "invalid_arguments", "a token has no spaces: copy it whole from your operator");
    }
    match change("token", Some(&Value::from(token).to_string())) {
        Ok(path) => report(
            json,
            json!({ "path": path, "changed": "token" }),
            &format!("token saved in {} (readable by you alone); tunnel http <port> now uses it", path.display()),
        ),
        Err(e) => fail(json, e.code(), &e.to_string()),
    }
}

fn report(json: bool, object: serde_json::Value, line: &str) -> ExitCode {
    if json {
        println!("{object}");
    } else {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// Sets `key` to `value` (or removes it) in the settings file; the file's path.
fn change(key: &str, value: Option<&str>) -> Result<PathBuf, ChangeError> {
    let path = config::path().ok_or(ChangeError::NoPath)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ChangeError::Read(path, e.to_string())),
    };
    let changed = edit(&path, &text, key, value)?;
    crate::private_file::write(&path, changed.as_bytes())
        .map_err(|e| ChangeError::Write(path.clone(), e.to_string()))?;
    Ok(path)
}

/// `text` with `key` set to `value`, or removed; checked to be valid settings.
fn edit(path: &Path, text: &str, key: &str, value: Option<&str>) -> Result<String, ChangeError> {
    let mut document: DocumentMut = text.parse().map_err(|e| ChangeError::Parse(path.to_owned(), format!("{e}")))?;
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|part| part.is_empty()) {
        return Err(ChangeError::Key(key.to_owned()));
    }
    let (last, tables) = parts.split_last().ok_or_else(|| ChangeError::Key(key.to_owned()))?;
    let mut table: &mut Table = document.as_table_mut();
    for (depth, part) in tables.iter().enumerate() {
        let entry = table.entry(part).or_insert_with(|| {
            let mut table = Table::new();
            table.set_implicit(true);
            Item::Table(table)
        });
        table = entry.as_table_mut().ok_or_else(|| ChangeError::NotATable(parts[..=depth].join(".")))?;
    }
    match value {
        Some(value) => {
            let mut value = value.parse::<Value>().unwrap_or_else(|_| Value::from(value));
            match table.get_mut(last) {
                // In place: the key's comments and the value's trailing comment stay.
                Some(Item::Value(old)) => {
                    *value.decor_mut() = old.decor().clone();
                    *old = value;
                }
                _ => {
                    table.insert(last, Item::Value(value.decorated(" ", "")));
                }
            }
        }
        None => {
            table.remove(last);
        }
    }
    let changed = document.to_string();
    ClientConfig::parse(&changed).map_err(ChangeError::Invalid)?;
    Ok(changed)
}

/// Where a setting in effect comes from.
fn source(env: &str, in_file: bool) -> &'static str {
    if std::env::var_os(env).is_some_and(|value| !value.is_empty()) {
        "environment"
    } else if in_file {
        "file"
    } else {
        "default"
    }
}

fn show(json: bool) -> ExitCode {
    let path = config::path();
    let settings = match ClientConfig::load() {
        Ok(settings) => settings,
        Err(e) => return fail(json, "invalid_settings", &e.to_string()),
    };
    let env = |key: &str| std::env::var(key).ok().filter(|value| !value.is_empty());
    let server = env("TUNNEL_SERVER").or(settings.server.clone()).unwrap_or_else(|| crate::DEFAULT_SERVER.to_owned());
    let token_set = env("TUNNEL_TOKEN").is_some() || settings.token.is_some();
    let ca_file = env("TUNNEL_CA_FILE").map(PathBuf::from).or(settings.ca_file.clone());
    let rows = [
        ("file", path.as_ref().map_or_else(|| "(none)".to_owned(), |p| p.display().to_string()), ""),
        ("server", server.clone(), source("TUNNEL_SERVER", settings.server.is_some())),
        (
            "token",
            if token_set { "set (hidden)" } else { "not set: tunnel login <token>" }.to_owned(),
            source("TUNNEL_TOKEN", settings.token.is_some()),
        ),
        (
            "ca_file",
            ca_file.as_ref().map_or_else(|| "(system roots only)".to_owned(), |p| p.display().to_string()),
            source("TUNNEL_CA_FILE", settings.ca_file.is_some()),
        ),
    ];
    let tunnels: Vec<&String> = settings.tunnels.keys().collect();
    if json {
        let object = json!({
            "file": path,
            "server": { "value": server, "source": rows[1].2 },
            "token": { "set": token_set, "source": rows[2].2 },
            "ca_file": { "value": ca_file, "source": rows[3].2 },
            "tunnels": tunnels,
        });
        println!("{object}");
        return ExitCode::SUCCESS;
    }
    for (key, value, from) in rows {
        let from = if from.is_empty() { String::new() } else { format!("  ({from})") };
        println!("{key:<9} {value}{from}");
    }
    let list = if tunnels.is_empty() {
        "(none)".to_owned()
    } else {
        tunnels.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
    };
    println!("{:<9} {list}", "tunnels");
    println!("\nPrecedence: flags, then environment (TUNNEL_SERVER, TUNNEL_TOKEN, TUNNEL_CA_FILE), then the file.");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edited(text: &str, key: &str, value: Option<&str>) -> Result<String, ChangeError> {
        edit(Path::new("config.toml"), text, key, value)
    }

    #[test]
    fn sets_values_keeping_comments() {
        let text = "# my settings\nserver = \"ws://a:7070\" # the lab\n";
        let changed = edited(text, "server", Some("wss://b")).expect("valid");
        assert!(changed.starts_with("# my settings\n"), "{changed}");
        assert_eq!(ClientConfig::parse(&changed).expect("valid").server.as_deref(), Some("wss://b"));
        let changed = edited(&changed, "tunnels.web.port", Some("3000")).expect("valid");
        let changed = edited(&changed, "defaults.record", Some("true")).expect("valid");
        let changed = edited(&changed, "tunnels.web.basic_auth", Some("[\"ann:correct horse\"]")).expect("valid");
        let settings = ClientConfig::parse(&changed).expect("valid");
        assert_eq!(settings.tunnels["web"].port, Some(3000));
        assert_eq!(settings.tunnels["web"].basic_auth, vec!["ann:correct horse".to_owned()]);
        assert_eq!(settings.defaults.record, Some(true));
        let removed = edited(&changed, "tunnels.web", None).expect("valid");
        assert!(ClientConfig::parse(&removed).expect("valid").tunnels.is_empty());
    }

    #[test]
    fn refuses_what_the_client_would_refuse() {
        assert!(matches!(edited("", "sever", Some("x")), Err(ChangeError::Invalid(_))));
        assert!(matches!(edited("", "tunnels.web.port", Some("lots")), Err(ChangeError::Invalid(_))));
        assert!(matches!(edited("", "defaults..record", Some("true")), Err(ChangeError::Key(_))));
        assert!(matches!(edited("server = \"x\"", "server.port", Some("1")), Err(ChangeError::NotATable(_))));
        assert!(matches!(edited("server = ", "server", Some("x")), Err(ChangeError::Parse(..))));
    }
}
