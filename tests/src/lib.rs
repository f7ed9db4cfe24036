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
//! directory, killed on drop); ingress and session-host run in the test process on port 0 with
//! their own NATS connections; the client is the `tunnel` library (or its binary); the local
//! service is a real HTTP server ([`Upstream`]); [`CutProxy`] cuts connections on demand.

mod env;
mod nats;
mod proxy;
pub mod raw;
mod upstream;

pub use env::{EnvOptions, TestEnv, Tunnel};
pub use nats::NatsServer;
pub use proxy::CutProxy;
pub use upstream::{Recorded, Upstream, pattern, sha256_hex};

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
