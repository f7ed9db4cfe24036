//! What every session of a host shares.

use tokio_util::sync::CancellationToken;

use crate::access_log::AccessLog;
use crate::auth::Auth;
use crate::config::HostConfig;
use crate::leases::Leases;
use crate::policies::Policies;
use crate::recording::Recorder;
use crate::registry::Registry;

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
    /// The open sessions, for the host-wide subscriptions to deliver to.
    pub registry: Registry,
    /// Where recorded exchanges go.
    pub recorder: Recorder,
    /// Who may open sessions.
    pub auth: Auth,
    /// Where access events go.
    pub access_log: AccessLog,
    /// The owners' public-side policies, enforced by the ingresses.
    pub policies: Policies,
    /// This host's spans, one per relayed request.
    pub traces: tunnel_kit::traces::Traces,
}

/// Room left in a NATS message for the headers of a reply.
const REPLY_HEADROOM_BYTES: usize = 4 << 10;

impl Hub {
    /// Largest encoded reply this host can publish: the server's `max_payload` minus headroom.
    pub fn max_reply_bytes(&self) -> u64 {
        self.nats.server_info().max_payload.saturating_sub(REPLY_HEADROOM_BYTES) as u64
    }
}
