//! Recording: the full exchanges of recorded tunnels, captured as they pass the host and
//! published to the `RECORDINGS` stream without ever holding a request up.
//!
//! - [`Policy`]: which tunnels are recorded, the body cap, the masked headers, the retention;
//! - `capture`: one exchange being captured;
//! - `recorder`: the bounded hand-off to the stream, drops counted and reported as gaps;
//! - `budget`: the per-tunnel byte limit, kept by purging a tunnel's oldest records;
//! - `stream`: the stream itself, created at start when absent.

mod budget;
mod capture;
mod recorder;
mod stream;

use std::time::Duration;

use tunnel_trail::filter::Glob;

pub use capture::Capture;
pub use recorder::{Recorder, SessionRecording};
pub use stream::ensure_stream;

/// What the operator decided about recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Name patterns of the tunnels recorded whatever their clients ask.
    pub tunnels: Vec<String>,
    /// Largest body kept per direction.
    pub body_bytes: usize,
    /// Headers masked (lowercase).
    pub masked: Vec<String>,
    /// How long a recording is kept.
    pub max_age: Duration,
    /// Bytes the stream holds.
    pub max_bytes: u64,
    /// Bytes one tunnel's recordings hold.
    pub max_bytes_per_tunnel: u64,
    /// Replicas of the stream when this host creates it.
    pub replicas: usize,
    /// Memory for captures and records waiting for the stream.
    pub buffer_bytes: usize,
}

impl Policy {
    /// Whether the exchanges of tunnel `name` are recorded, its client having `asked` or not.
    pub fn records(&self, name: &str, asked: bool) -> bool {
        asked || self.tunnels.iter().any(|pattern| Glob(pattern.clone()).matches(name))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn policy_records_asked_and_matching_tunnels() {
        let config = crate::HostConfig { record_tunnels: "shop-*".into(), ..crate::HostConfig::default() };
        let policy = config.record_policy();
        assert!(policy.records("shop-1", false));
        assert!(policy.records("blog", true));
        assert!(!policy.records("blog", false));
    }
}
