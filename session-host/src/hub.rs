//! What every session of a host shares.

use tokio_util::sync::CancellationToken;

use crate::config::HostConfig;
use crate::leases::Leases;

/// Resources shared by the sessions of one host.
pub struct Hub {
    /// The host's NATS connection: subscriptions and replies of all its sessions.
    pub nats: async_nats::Client,
    /// The lease store.
    pub leases: Leases,
    /// Validated settings.
    pub config: HostConfig,
    /// Cancelled when the host shuts down; sessions then close with `going_away`.
    pub shutdown: CancellationToken,
}
