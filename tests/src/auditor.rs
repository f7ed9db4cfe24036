//! The auditor as a real `tunnel-auditor` process, for scenarios that kill it with SIGKILL.

use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::binary;

/// A running `tunnel-auditor`; killed on drop.
pub struct AuditorProcess {
    child: Child,
}

impl AuditorProcess {
    /// Starts `tunnel-auditor` on `nats_url` with extra `settings` (configuration keys and
    /// values, passed as `TUNNEL_<KEY>`). Its logs go to stderr when `RUST_LOG` is set.
    ///
    /// # Panics
    /// When it cannot start.
    pub fn start(nats_url: &str, settings: &[(&str, &str)]) -> Self {
        let logs = if std::env::var_os("RUST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() };
        let child = Command::new(binary("tunnel-auditor"))
            .args(["--nats", nats_url, "--listen", "127.0.0.1:0"])
            .envs(settings.iter().map(|(key, value)| (format!("TUNNEL_{}", key.to_uppercase()), *value)))
            .env_remove("NATS_URL")
            .env_remove("TUNNEL_NATS_URL")
            .stdout(Stdio::null())
            .stderr(logs)
            .kill_on_drop(true)
            .spawn()
            .expect("tunnel-auditor starts");
        Self { child }
    }

    /// Kills it with SIGKILL (no shutdown script runs: nothing is released or acknowledged)
    /// and waits until it is gone.
    ///
    /// # Panics
    /// When it cannot be killed.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("killed");
    }
}
