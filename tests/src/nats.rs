//! A real `nats-server` process per test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` with JetStream on a random port and its own store directory; killed on drop.
pub struct NatsServer {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
    /// The environment of the process (the encryption key, when there is one).
    env: Vec<(String, String)>,
    /// The configuration appended to the defaults.
    extra_config: String,
}

/// The environment variable the JetStream encryption key reaches the server through, as in
/// `nats/dev.conf` (the key is never written into a configuration file).
pub const JS_KEY_VAR: &str = "JS_KEY";

/// The environment variable of the previous key while the store is re-encrypted with a new one
/// (`prev_encryption_key`, docs/privacy.md).
const JS_PREVIOUS_KEY_VAR: &str = "JS_PREVIOUS_KEY";

impl NatsServer {
    /// Starts a server with `extra_config` (nats-server config syntax) appended to the defaults.
    ///
    /// The binary is `$NATS_SERVER_BIN`, or `nats-server` on the `PATH` (`scripts/test.sh`
    /// installs one).
    ///
    /// # Panics
    /// When the server cannot be started or does not report its port within the deadline.
    pub fn start_with(extra_config: &str) -> Self {
        Self::start_encrypted(extra_config, None)
    }

    /// Starts a server with `extra_config` appended to the defaults and, with an
    /// `encryption_key`, JetStream's encryption at rest on (`cipher: chachapoly`, the key passed
    /// in the process's environment as `$JS_KEY`, as `nats/dev.conf` does).
    ///
    /// # Panics
    /// When the server cannot be started or does not report its port within the deadline.
    pub fn start_encrypted(extra_config: &str, encryption_key: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let env = write_config(dir.path(), extra_config, encryption_key, None);
        let child = spawn(dir.path(), "-1", &env);
        let url = wait_for_ports_file(dir.path());
        Self { child, url, dir, env, extra_config: extra_config.to_owned() }
    }

    /// Stops the server as an operator would (SIGTERM: it flushes its store and exits) and waits
    /// until it is gone.
    ///
    /// # Panics
    /// When it cannot be signalled, or is not gone within the deadline.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM sent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().expect("nats-server state").is_none() {
            assert!(Instant::now() < deadline, "nats-server did not stop within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again after [`NatsServer::stop`] or [`NatsServer::kill`], with `key` as
    /// its encryption key and `previous` as `prev_encryption_key` (the key its store was written
    /// with, while it re-encrypts the store with the new one), and waits until it listens.
    ///
    /// # Panics
    /// When it cannot be started or does not report its port within the deadline.
    pub fn restart_with_key(&mut self, key: &str, previous: Option<&str>) {
        self.env = write_config(self.dir.path(), &self.extra_config, Some(key), previous);
        self.restart();
    }

    /// The monitoring URL (`http://127.0.0.1:<port>`), when the configuration turns monitoring
    /// on (`http_port: -1` picks a free port).
    pub fn monitoring_url(&self) -> Option<String> {
        let ports = ports_file(self.dir.path())?;
        ports.get("monitoring")?.get(0)?.as_str().map(str::to_owned)
    }

    /// The JetStream store directory: every file the server keeps.
    pub fn store_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
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
        self.child = spawn(self.dir.path(), &port, &self.env);
        wait_for_ports_file(self.dir.path());
    }

    /// Starts a server with the defaults.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// The client URL (`nats://127.0.0.1:<port>`, `tls://…` when the server requires TLS).
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Writes the configuration of a server in `dir`: JetStream with its store in `dir`, encrypted
/// with `key` (and re-encrypted from `previous`) when given, the ping settings of
/// `nats/dev.conf` (on which the bounds of ADR 0004 rest), then `extra_config`. Returns the
/// environment the keys reach the server through.
fn write_config(
    dir: &std::path::Path,
    extra_config: &str,
    key: Option<&str>,
    previous: Option<&str>,
) -> Vec<(String, String)> {
    let store = dir.join("store");
    let mut env = Vec::new();
    let mut cipher = String::new();
    if let Some(key) = key {
        cipher.push_str(&format!(", cipher: chachapoly, key: ${JS_KEY_VAR}"));
        env.push((JS_KEY_VAR.to_owned(), key.to_owned()));
    }
    if let Some(previous) = previous {
        cipher.push_str(&format!(", prev_encryption_key: ${JS_PREVIOUS_KEY_VAR}"));
        env.push((JS_PREVIOUS_KEY_VAR.to_owned(), previous.to_owned()));
    }
    let defaults = format!("jetstream {{ store_dir: {store:?}{cipher} }}\nping_interval: \"1s\"\nping_max: 2\n");
    std::fs::write(dir.join("nats.conf"), format!("{defaults}{extra_config}\n")).expect("config written");
    env
}

/// Starts `nats-server` with the configuration in `dir` on `port` (`-1`: a random one) and `env`
/// added to its environment, writing its ports file into `dir`.
fn spawn(dir: &std::path::Path, port: &str, env: &[(String, String)]) -> Child {
    let binary = std::env::var_os("NATS_SERVER_BIN").map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
    Command::new(&binary)
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .args(["-a", "127.0.0.1", "-p", port, "--ports_file_dir"])
        .arg(dir)
        .envs(env.iter().map(|(key, value)| (key, value)))
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
    ports_file(dir)?.get("nats")?.get(0)?.as_str().map(str::to_owned)
}

/// The `*.ports` file the server in `dir` writes once it listens (client and monitoring URLs).
fn ports_file(dir: &std::path::Path) -> Option<serde_json::Value> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "ports"))
        .find_map(|entry| serde_json::from_str(&std::fs::read_to_string(entry.path()).ok()?).ok())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
