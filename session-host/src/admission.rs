//! Admission of new connections, before anything is read from them: new connections per client
//! address (a token bucket per address, the `governor` crate), and unauthenticated handshakes,
//! bounded in number (overall and per address) and in time (from the TCP accept until the hello
//! is answered).
//!
//! A connection is a *pending handshake* from its accept until its hello is answered, or until
//! its first request turns out not to be a WebSocket connect (`/healthz`, the trail), or until it
//! closes. Excess connections get `429` (this address) or `503` (the host) to their first request
//! and are closed; each refusal is counted in `host_connections_refused_total{reason}`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
use governor::{DefaultKeyedRateLimiter, Quota};
use tunnel_kit::serve::{Gate, Ticket};

use crate::config::HostConfig;

/// How often the per-address buckets of addresses not seen for a while are dropped.
const RETAIN_INTERVAL: Duration = Duration::from_secs(60);

/// The admission rules of one host.
pub struct Admission {
    /// New connections per address; `None` without a limit.
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    pending: Arc<Mutex<Counts>>,
    max_pending: usize,
    max_pending_per_ip: usize,
    handshake_timeout: Duration,
}

/// The handshakes pending now.
#[derive(Default)]
struct Counts {
    total: usize,
    /// Per address; an address leaves the map when its count drops to zero.
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection's place among the pending handshakes, given back when dropped.
pub struct Slot {
    pending: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.total = pending.total.saturating_sub(1);
        if let Some(count) = pending.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                pending.per_ip.remove(&self.ip);
            }
        }
    }
}

/// The handshake of an admitted connection: its deadline, counted from the TCP accept, and its
/// place among the pending handshakes. Carried by the connection's requests (as a [`Ticket`]);
/// the WebSocket connect takes it.
pub struct Handshake {
    /// When the hello must have been received.
    pub deadline: Instant,
    slot: Mutex<Option<Slot>>,
}

impl Handshake {
    /// A handshake not counted anywhere, for a connection that came without a ticket.
    pub fn uncounted(timeout: Duration) -> Self {
        Self { deadline: Instant::now() + timeout, slot: Mutex::new(None) }
    }

    /// Takes the place among the pending handshakes, to be dropped once the hello is answered.
    pub fn take_slot(&self) -> Option<Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// What a session's handshake still holds once upgraded: its deadline and its place among the
/// pending handshakes, given back once the hello is answered.
pub struct Pending {
    /// When the hello must have been received (from the TCP accept).
    pub deadline: Instant,
    /// The place, dropped once the hello is answered; none for an uncounted connection.
    pub slot: Option<Slot>,
}

/// Why a connection was refused, as the `reason` label of the metric.
fn refuse(reason: &'static str, status: StatusCode) -> StatusCode {
    metrics::counter!("host_connections_refused_total", "reason" => reason).increment(1);
    tracing::debug!(reason, "connection refused");
    status
}

impl Admission {
    /// The rules of `config`; starts the task that drops idle per-address buckets.
    pub fn new(config: &HostConfig) -> Arc<Self> {
        let quota = NonZeroU32::new(config.connections_per_ip_per_sec).map(|rate| {
            let burst = NonZeroU32::new(config.connection_burst_per_ip.max(rate.get())).unwrap_or(rate);
            Quota::per_second(rate).allow_burst(burst)
        });
        let admission = Arc::new(Self {
            per_ip: quota.map(governor::RateLimiter::keyed),
            pending: Arc::default(),
            max_pending: config.max_pending_handshakes,
            max_pending_per_ip: config.max_pending_handshakes_per_ip,
            handshake_timeout: config.handshake_timeout(),
        });
        if admission.per_ip.is_some() {
            let weak = Arc::downgrade(&admission);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RETAIN_INTERVAL);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(admission) = weak.upgrade() else { return };
                    if let Some(limiter) = &admission.per_ip {
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                }
            });
        }
        admission
    }
}

impl Gate for Admission {
    fn admit(&self, peer: SocketAddr) -> Result<Ticket, StatusCode> {
        let deadline = Instant::now() + self.handshake_timeout;
        let ip = peer.ip();
        if let Some(limiter) = &self.per_ip
            && limiter.check_key(&ip).is_err()
        {
            return Err(refuse("rate_per_ip", StatusCode::TOO_MANY_REQUESTS));
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.total >= self.max_pending {
            return Err(refuse("pending", StatusCode::SERVICE_UNAVAILABLE));
        }
        let count = pending.per_ip.entry(ip).or_default();
        if *count >= self.max_pending_per_ip {
            return Err(refuse("pending_per_ip", StatusCode::TOO_MANY_REQUESTS));
        }
        *count += 1;
        pending.total += 1;
        drop(pending);
        let slot = Slot { pending: self.pending.clone(), ip };
        Ok(Ticket::new(Handshake { deadline, slot: Mutex::new(Some(slot)) }))
    }
}

/// Middleware: a request other than the WebSocket connect ends its connection's pending
/// handshake (a health check or a trail reader is not one).
pub async fn release_unless_connect(request: Request) -> Request {
    if request.uri().path() != tunnel_schemas::frames::CONNECT_PATH
        && let Some(handshake) = request.extensions().get::<Ticket>().and_then(Ticket::get::<Handshake>)
    {
        drop(handshake.take_slot());
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(rate: u32, max_pending: usize, per_ip: usize) -> Arc<Admission> {
        Admission::new(&HostConfig {
            connections_per_ip_per_sec: rate,
            connection_burst_per_ip: rate,
            max_pending_handshakes: max_pending,
            max_pending_handshakes_per_ip: per_ip,
            ..HostConfig::default()
        })
    }

    fn peer(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 5000))
    }

    #[tokio::test]
    async fn new_connections_per_address_follow_the_bucket() {
        let gate = admission(3, 100, 100);
        let tickets: Vec<_> = (0..3).map(|_| gate.admit(peer(1)).expect("within the burst")).collect();
        assert_eq!(gate.admit(peer(1)).err(), Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(gate.admit(peer(2)).is_ok(), "another address has its own bucket");
        drop(tickets);
        assert!(gate.admit(peer(1)).is_err(), "closing connections gives no new ones: it is a rate");
    }

    #[tokio::test]
    async fn pending_handshakes_are_capped_per_address_and_overall_until_answered() {
        let gate = admission(0, 3, 2);
        let a1 = gate.admit(peer(1)).expect("first");
        let _a2 = gate.admit(peer(1)).expect("second");
        assert_eq!(gate.admit(peer(1)).err(), Some(StatusCode::TOO_MANY_REQUESTS), "per address");
        let _b1 = gate.admit(peer(2)).expect("another address");
        assert_eq!(gate.admit(peer(3)).err(), Some(StatusCode::SERVICE_UNAVAILABLE), "overall");
        let slot = a1.get::<Handshake>().expect("a handshake").take_slot();
        assert!(gate.admit(peer(3)).is_err(), "a taken slot still counts while the hello is pending");
        drop(slot);
        let c1 = gate.admit(peer(3)).expect("an answered hello frees its place");
        assert_eq!(gate.pending.lock().expect("lock").per_ip.len(), 3);
        drop((a1, c1));
        assert_eq!(gate.pending.lock().expect("lock").total, 2, "closed connections free theirs");
    }
}
