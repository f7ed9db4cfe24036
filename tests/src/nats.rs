//! A real `nats-server` process per test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` with JetStream on a random port and its own store directory; killed on drop.
pub struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with `extra_config` (nats-server config syntax) appended to the defaults.
    ///
    /// The binary is `$NATS_SERVER_BIN`, or `nats-server` on the `PATH` (`scripts/test.sh`
    /// installs one).
    ///
    /// # Panics
    /// When the server cannot be started or does not report its port within the deadline.
    pub fn start_with(extra_config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("nats.conf");
        let store = dir.path().join("store");
        std::fs::write(&config, format!("jetstream {{ store_dir: {store:?} }}\n{extra_config}\n"))
            .expect("config written");
        let binary = std::env::var_os("NATS_SERVER_BIN").map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {}: {e} (set NATS_SERVER_BIN or run scripts/test.sh)", binary.display())
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = loop {
            if let Some(url) = read_ports_file(dir.path()) {
                break url;
            }
            assert!(Instant::now() < deadline, "nats-server did not report its port");
            std::thread::sleep(Duration::from_millis(10));
        };
        Self { child, url, _dir: dir }
    }

    /// Starts a server with the defaults.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// The client URL (`nats://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The client URL from the `*.ports` file the server writes once it listens.
fn read_ports_file(dir: &std::path::Path) -> Option<String> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "ports"))
        .find_map(|entry| client_url(&std::fs::read_to_string(entry.path()).ok()?))
}

fn client_url(ports_json: &str) -> Option<String> {
    let ports: serde_json::Value = serde_json::from_str(ports_json).ok()?;
    ports.get("nats")?.get(0)?.as_str().map(str::to_owned)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
