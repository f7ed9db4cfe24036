//! Rate limits at the ingress, before anything is published to NATS: requests per second per
//! tunnel and per client address, as token buckets (GCRA, the `governor` crate), answered 429
//! `rate_limited` with `Retry-After`.
//!
//! The limits are per ingress node: a cluster of N ingresses admits up to N times each limit.
//! The client address is the connection's own (an `X-Forwarded-For` is not trusted). The state
//! of addresses and tunnels not seen for a while is dropped every [`RETAIN_INTERVAL`], so it
//! stays bounded by the traffic of the last interval.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// How often idle keys are dropped.
pub const RETAIN_INTERVAL: Duration = Duration::from_secs(60);

/// The rate limits of one ingress node.
pub struct Limits {
    per_tunnel: Option<DefaultKeyedRateLimiter<String>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

/// A request refused by a limit: when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until a request would be admitted (at least 1).
    pub retry_after_secs: u64,
}

/// A quota of `per_second` with bursts of `burst` (at least `per_second`); `None` when 0.
fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl Limits {
    /// Limits of `per_tunnel` and `per_ip` requests per second (0: no limit), with bursts.
    pub fn new(per_tunnel: (u32, u32), per_ip: (u32, u32)) -> Arc<Self> {
        let limits = Arc::new(Self {
            per_tunnel: quota(per_tunnel.0, per_tunnel.1).map(governor::RateLimiter::keyed),
            per_ip: quota(per_ip.0, per_ip.1).map(governor::RateLimiter::keyed),
            clock: DefaultClock::default(),
        });
        if limits.per_tunnel.is_some() || limits.per_ip.is_some() {
            let weak = Arc::downgrade(&limits);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RETAIN_INTERVAL);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(limits) = weak.upgrade() else { return };
                    limits.retain_recent();
                }
            });
        }
        limits
    }

    /// Admits a request for `tunnel` from `ip`, or says when to retry.
    pub fn check(&self, tunnel: &str, ip: IpAddr) -> Result<(), Limited> {
        if let Some(limiter) = &self.per_ip {
            limiter.check_key(&ip).map_err(|until| self.limited(&until))?;
        }
        if let Some(limiter) = &self.per_tunnel {
            // Keyed by an owned name only once a limit is on: the path without limits allocates nothing.
            limiter.check_key(&tunnel.to_owned()).map_err(|until| self.limited(&until))?;
        }
        Ok(())
    }

    fn limited(&self, until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> Limited {
        let wait = until.wait_time_from(self.clock.now());
        Limited { retry_after_secs: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1) }
    }

    fn retain_recent(&self) {
        if let Some(limiter) = &self.per_tunnel {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tunnel_over_its_rate_is_refused_and_others_are_not() {
        let limits = Limits::new((3, 3), (0, 0));
        let ip = IpAddr::from([127, 0, 0, 1]);
        let admitted = (0..10).filter(|_| limits.check("busy", ip).is_ok()).count();
        assert_eq!(admitted, 3, "a burst of 3, then refusals");
        let refused = limits.check("busy", ip).expect_err("over the rate");
        assert!(refused.retry_after_secs >= 1);
        assert!(limits.check("quiet", ip).is_ok(), "another tunnel has its own bucket");
    }

    #[tokio::test]
    async fn an_address_over_its_rate_is_refused_on_every_tunnel() {
        let limits = Limits::new((0, 0), (2, 2));
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        assert!(limits.check("t1", a).is_ok() && limits.check("t2", a).is_ok());
        assert!(limits.check("t3", a).is_err(), "the address's bucket is shared by its tunnels");
        assert!(limits.check("t1", b).is_ok(), "another address is not affected");
        let unlimited = Limits::new((0, 0), (0, 0));
        assert!((0..1000).all(|_| unlimited.check("t", a).is_ok()));
    }
}
