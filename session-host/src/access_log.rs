//! Access events (`audit.<name>.access`): every bind, resume, refusal, revocation and close of a
//! tunnel's sessions, published to the `AUDIT` stream through a bounded [`Journal`], so the
//! trail and the live tail show who held a name and who was turned away. The session never
//! waits; what cannot be queued is counted in `host_access_events_dropped_total`.

use async_nats::jetstream;
use tunnel_kit::journal::{Entry, Journal, Outcomes};
use tunnel_schemas::audit::{Access, AccessEvent, KIND_ACCESS};
use tunnel_schemas::names::TunnelName;
use tunnel_schemas::{ErrorCode, PROTOCOL_VERSION, subjects};

/// Access events waiting for the publisher.
const QUEUE: usize = 4096;

/// Where sessions report their access events.
#[derive(Clone)]
pub struct AccessLog {
    journal: Journal,
}

/// Who a client is, for its access events.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// The client's address.
    pub remote_addr: String,
    /// The account of its valid token.
    pub account: Option<String>,
    /// The id of the token it presented.
    pub token: Option<String>,
}

struct Dropped;

impl Outcomes for Dropped {
    fn dropped(&mut self, entry: &Entry, error: &str) {
        metrics::counter!("host_access_events_dropped_total").increment(1);
        tracing::warn!(error, subject = %entry.subject, "access event given up");
    }
}

impl AccessLog {
    /// Starts the publisher on `nats`.
    pub fn start(nats: &async_nats::Client) -> Self {
        let (journal, _) = Journal::start(jetstream::new(nats.clone()), QUEUE, Dropped);
        Self { journal }
    }

    /// Publishes that `access` happened to `tunnel` (by `session`, for `who`, because of `code`).
    pub fn record(&self, tunnel: &TunnelName, access: Access, session: &str, who: &Who, code: Option<ErrorCode>) {
        let event = AccessEvent {
            v: PROTOCOL_VERSION,
            tunnel: tunnel.to_string(),
            access,
            session: session.to_owned(),
            account: who.account.clone(),
            token: who.token.clone(),
            code,
            remote_addr: who.remote_addr.clone(),
            at_ms: tunnel_trail::filter::now_ms(),
        };
        let subject = subjects::audit(tunnel, KIND_ACCESS);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let entry = Entry::new(subject, id, tunnel_schemas::encode(&event).into(), 1, tunnel.to_string());
        if self.journal.try_send(vec![entry]).is_err() {
            metrics::counter!("host_access_events_dropped_total").increment(1);
        }
    }
}
