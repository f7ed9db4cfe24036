//! Waiting out a tunnel's reconnect. A request that finds no responder for a tunnel whose lease
//! is still held (its client lost its session-host and is coming back, on another host, within
//! a second or so), or whose lease cannot be read right now, is sent again for up to
//! `offline_grace_ms` instead of failing at once. A tunnel with no lease is offline for good:
//! its requests fail at once, as before.
//!
//! "No responders" proves nobody received the request, so sending it again never runs it twice.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::sync::OnceCell;
use tunnel_schemas::names::TunnelName;
use tunnel_schemas::subjects::{LEASES_BUCKET, lease_key};

/// Longest wait for the lease lookup; beyond it the tunnel is presumed to be coming back.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// First delay between attempts; each next one doubles, up to [`LONGEST_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(20);
/// Longest delay between attempts.
const LONGEST_DELAY: Duration = Duration::from_millis(400);

/// Read access to the lease bucket, bound on first use (the session-hosts create it).
pub struct Leases {
    js: jetstream::Context,
    store: OnceCell<kv::Store>,
}

impl Leases {
    /// Leases read over `nats`.
    pub fn new(nats: async_nats::Client) -> Self {
        Self { js: jetstream::new(nats), store: OnceCell::new() }
    }

    /// Whether `name` may come back: it is leased (a client holds it, or held it and may resume
    /// it), or the lease cannot be read in time (JetStream electing a leader after a node loss,
    /// when clients are most likely moving: better wait the grace than refuse). Not when the
    /// lease bucket does not exist: then nothing was ever leased.
    pub async fn may_return(&self, name: &TunnelName) -> bool {
        let lookup = async {
            let Ok(store) = self.store.get_or_try_init(|| self.js.get_key_value(LEASES_BUCKET)).await else {
                return false;
            };
            !matches!(store.get(lease_key(name)).await, Ok(None))
        };
        tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await.unwrap_or(true)
    }
}

/// Delays between the attempts at a tunnel that is coming back: 20 ms doubling to 400 ms.
pub fn delays() -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(FIRST_DELAY), |delay| Some((*delay * 2).min(LONGEST_DELAY)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_a_ceiling() {
        let delays: Vec<u64> = delays().take(7).map(|d| u64::try_from(d.as_millis()).expect("small")).collect();
        assert_eq!(delays, [20, 40, 80, 160, 320, 400, 400]);
    }
}
