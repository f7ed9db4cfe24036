//! The http-tunnel end-to-end harness.
//!
//! Scenarios in `tests/tests/` read like a story:
//!
//! ```ignore
//! let env = TestEnv::start().await;
//! let upstream = Upstream::start().await;
//! let tunnel = env.tunnel(upstream.port(), Some("demo")).await;
//! let response = env.get("demo", "/echo").await;
//! ```
//!
//! Everything is real: [`NatsServer`] runs a `nats-server` process (random port, its own store
//! directory, killed on drop), [`NatsCluster`] three of them routed into a cluster, to kill,
//! restart or freeze ([`EnvOptions::nats_urls`] puts an environment on it); ingress and
//! session-host run in the test process on port 0 with their own NATS connections; the client is
//! the `tunnel` library (or its binary); the local service is a real HTTP server ([`Upstream`]);
//! [`CutProxy`] cuts connections on demand.

mod auditor;
pub mod cdp;
mod cli;
mod cluster;
mod env;
pub mod ledger;
mod nats;
mod otlp;
mod process;
mod proxy;
pub mod raw;
mod tls;
mod upstream;
mod versioned;

pub use auditor::AuditorProcess;
pub use cli::Cli;
pub use cluster::NatsCluster;
pub use env::{EnvNats, EnvOptions, HostProcess, TestEnv, Tunnel, password_of};
pub use nats::{JS_KEY_VAR, NatsServer};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use process::ServiceProcess;
pub use proxy::CutProxy;
pub use tls::TestCertificates;
pub use upstream::{Recorded, Upstream, pattern, sha256_hex};
pub use versioned::Versioned;

use std::time::Duration;

/// Deadline of every wait in the scenarios unless they say otherwise.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Awaits `future` for at most `deadline`, failing the test with `what` when it takes longer.
///
/// # Panics
/// When the deadline passes.
pub async fn within<T>(deadline: Duration, what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(deadline, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}

/// Serves every request with `answer` on a random port of 127.0.0.1, for the life of the test's
/// runtime: a local service written as one function. Returns the port.
///
/// # Panics
/// When no port can be bound.
pub async fn serve_fn<F, R>(answer: F) -> u16
where
    F: Fn(axum::extract::Request) -> R + Clone + Send + Sync + 'static,
    R: std::future::Future<Output = axum::response::Response> + Send + 'static,
{
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| answer(request));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Runs the `tunnel` binary with `args` to its end, with `state_dir` as its state directory and
/// `<state_dir>/config.toml` as its settings file; returns its exit code, stdout and stderr.
///
/// # Panics
/// When it cannot start or does not finish within [`DEADLINE`].
pub async fn run_tunnel(state_dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(binary("tunnel"))
        .args(args)
        .env("TUNNEL_STATE_DIR", state_dir)
        .env("TUNNEL_CONFIG", state_dir.join("config.toml"))
        .env_remove("TUNNEL_SECRET")
        .env_remove("TUNNEL_NATS_URL")
        .env_remove("NATS_CA_FILE")
        .env_remove("NATS_CERT_FILE")
        .env_remove("NATS_KEY_FILE")
        .kill_on_drop(true)
        .output();
    let output = within(DEADLINE, "tunnel to finish", output).await.expect("tunnel runs");
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (output.status.code(), text(output.stdout), text(output.stderr))
}

/// Path of a binary of this workspace, built next to the test executable; built on demand when
/// missing (`cargo test -p tunnel-tests` alone does not build other packages' binaries).
///
/// # Panics
/// When the binary cannot be built.
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(std::path::Path::parent).expect("target profile directory");
    let path = dir.join(name);
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status =
            std::process::Command::new(cargo).args(["build", "--workspace", "--bins"]).status().expect("cargo runs");
        assert!(status.success(), "building the workspace binaries failed");
    }
    path
}
