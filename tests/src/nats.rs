//! A real `nats-server` process per test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` with JetStream on a random port and its own store directory; killed on drop.
pub struct NatsServer {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
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
        // The ping settings of nats/dev.conf, on which the bounds of ADR 0004 rest.
        let defaults = format!("jetstream {{ store_dir: {store:?} }}\nping_interval: \"1s\"\nping_max: 2\n");
        std::fs::write(&config, format!("{defaults}{extra_config}\n")).expect("config written");
        let child = spawn(dir.path(), "-1");
        let url = wait_for_ports_file(dir.path());
        Self { child, url, dir }
    }

    /// Kills the server with SIGKILL, as a crash would.
    ///
    /// # Panics
    /// When it cannot be killed.
    pub fn kill(&mut self) {
        self.child.kill().expect("nats-server killed");
        self.child.wait().expect("nats-server reaped");
    }

    /// Starts the server again after [`NatsServer::kill`], on the same port with the same store
    /// directory, and waits until it listens.
    ///
    /// # Panics
    /// When it cannot be started or does not report its port within the deadline.
    pub fn restart(&mut self) {
        let port = self.url.rsplit(':').next().expect("a port in the URL").to_owned();
        for entry in std::fs::read_dir(self.dir.path()).expect("server directory").filter_map(Result::ok) {
            if entry.path().extension().is_some_and(|ext| ext == "ports") {
                std::fs::remove_file(entry.path()).expect("old ports file removed");
            }
        }
        self.child = spawn(self.dir.path(), &port);
        wait_for_ports_file(self.dir.path());
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

/// Starts `nats-server` with the configuration in `dir` on `port` (`-1`: a random one), writing
/// its ports file into `dir`.
fn spawn(dir: &std::path::Path, port: &str) -> Child {
    let binary = std::env::var_os("NATS_SERVER_BIN").map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
    Command::new(&binary)
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .args(["-a", "127.0.0.1", "-p", port, "--ports_file_dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {}: {e} (set NATS_SERVER_BIN or run scripts/test.sh)", binary.display())
        })
}

/// The client URL, once the server in `dir` has written its ports file.
fn wait_for_ports_file(dir: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(url) = read_ports_file(dir) {
            return url;
        }
        assert!(Instant::now() < deadline, "nats-server did not report its port");
        std::thread::sleep(Duration::from_millis(10));
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
