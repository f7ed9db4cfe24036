//! Services as real processes, for scenarios that kill or freeze them: a SIGKILL runs no
//! shutdown script, a SIGSTOP leaves every socket open and silent.

use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::binary;

/// A running service binary of this workspace; killed on drop.
pub struct ServiceProcess {
    child: Child,
}

impl ServiceProcess {
    /// Starts the binary `name` with `args` and extra `settings` (configuration keys and values,
    /// passed as `TUNNEL_<KEY>`), ignoring any NATS URL of the test's own environment. Its logs
    /// go to stderr when `RUST_LOG` is set.
    ///
    /// # Panics
    /// When it cannot start.
    pub fn start(name: &str, args: &[&str], settings: &[(&str, &str)]) -> Self {
        let logs = if std::env::var_os("RUST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() };
        let child = Command::new(binary(name))
            .args(args)
            .envs(settings.iter().map(|(key, value)| (format!("TUNNEL_{}", key.to_uppercase()), *value)))
            .env_remove("NATS_URL")
            .env_remove("TUNNEL_NATS_URL")
            .env_remove("NATS_CA_FILE")
            .env_remove("NATS_CERT_FILE")
            .env_remove("NATS_KEY_FILE")
            .stdout(Stdio::null())
            .stderr(logs)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
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

    /// Freezes it with SIGSTOP: its connections stay open and fall silent, as on a VM pause.
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a frozen process run again (SIGCONT).
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn thaw(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("the process runs");
        kill(Pid::from_raw(i32::try_from(pid).expect("a pid")), signal).expect("signal sent");
    }
}
