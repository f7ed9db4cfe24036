//! The tunnels this machine opened, saved so that later commands (`tunnel trail`,
//! `tunnel replay`, `tunnel export`) find their server and resume secret without flags.
//!
//! One JSON file per tunnel name in `$TUNNEL_STATE_DIR`, else `$XDG_STATE_HOME/http-tunnel`,
//! else `~/.local/state/http-tunnel`; readable by the user alone, since the resume secret is
//! what gives access to the tunnel's trail.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A tunnel opened from this machine.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTunnel {
    /// The tunnel name.
    pub name: String,
    /// Its public URL.
    pub url: String,
    /// The session-host it connected to (`ws://host:7070`).
    pub server: String,
    /// Its resume secret.
    pub secret: String,
}

impl std::fmt::Debug for SavedTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedTunnel").field("name", &self.name).field("url", &self.url).field("secret", &"***").finish()
    }
}

/// Why no saved tunnel was found.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Nothing saved under that name, or nothing at all.
    #[error(
        "no tunnel {0} was opened from this machine (or its state directory is elsewhere); pass --server and --secret"
    )]
    Missing(String),
    /// The state file cannot be read.
    #[error("cannot read {0}: {1}")]
    Unreadable(PathBuf, String),
}

/// The state directory of this user.
pub fn default_dir() -> Option<PathBuf> {
    let env = |key: &str| std::env::var_os(key).filter(|value| !value.is_empty()).map(PathBuf::from);
    env("TUNNEL_STATE_DIR")
        .or_else(|| env("XDG_STATE_HOME").map(|dir| dir.join("http-tunnel")))
        .or_else(|| env("HOME").map(|home| home.join(".local/state/http-tunnel")))
}

/// Saves `tunnel` in `dir` (created when missing), readable by the user alone.
///
/// # Errors
/// The I/O error when the directory or file cannot be written.
pub fn save(dir: &Path, tunnel: &SavedTunnel) -> io::Result<()> {
    let contents = serde_json::to_vec_pretty(tunnel).map_err(io::Error::other)?;
    crate::private_file::write(&dir.join(format!("{}.json", tunnel.name)), &contents)
}

/// The tunnel `name` saved in `dir`, or the one saved last when `name` is `None`.
///
/// # Errors
/// [`StateError`] when there is none or it cannot be read.
pub fn load(dir: &Path, name: Option<&str>) -> Result<SavedTunnel, StateError> {
    let path = match name {
        Some(name) => dir.join(format!("{name}.json")),
        None => latest(dir).ok_or_else(|| StateError::Missing(String::new()))?,
    };
    let missing = || StateError::Missing(name.map(|n| format!("{n:?}")).unwrap_or_default());
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(StateError::Unreadable(path, e.to_string())),
    };
    serde_json::from_slice(&text).map_err(|e| StateError::Unreadable(path, e.to_string()))
}

fn latest(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "json"))
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .max()
        .map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_tunnels_load_by_name_or_latest_and_hide_their_secret() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tunnel = SavedTunnel { name: "demo".into(), url: "u".into(), server: "ws://h".into(), secret: "s3".into() };
        save(dir.path(), &tunnel).expect("saved");
        assert_eq!(load(dir.path(), Some("demo")).expect("loaded"), tunnel);
        assert_eq!(load(dir.path(), None).expect("latest"), tunnel);
        assert!(matches!(load(dir.path(), Some("other")), Err(StateError::Missing(_))));
        assert!(!format!("{tunnel:?}").contains("s3"));
    }
}
