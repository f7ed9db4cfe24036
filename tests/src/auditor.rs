//! The auditor as a real `tunnel-auditor` process, for scenarios that kill it with SIGKILL.

use crate::process::ServiceProcess;

/// A running `tunnel-auditor`; killed on drop.
pub struct AuditorProcess {
    process: ServiceProcess,
}

impl AuditorProcess {
    /// Starts `tunnel-auditor` on `nats_url` with extra `settings` (configuration keys and
    /// values, passed as `TUNNEL_<KEY>`). Its logs go to stderr when `RUST_LOG` is set.
    ///
    /// # Panics
    /// When it cannot start.
    pub fn start(nats_url: &str, settings: &[(&str, &str)]) -> Self {
        let args = ["--nats", nats_url, "--listen", "127.0.0.1:0"];
        Self { process: ServiceProcess::start("tunnel-auditor", &args, settings) }
    }

    /// Kills it with SIGKILL (no shutdown script runs: nothing is released or acknowledged)
    /// and waits until it is gone.
    ///
    /// # Panics
    /// When it cannot be killed.
    pub async fn kill(self) {
        self.process.kill().await;
    }
}
