//! Quotas, enforced before anything is published to NATS.
//!
//! The auditor counts usage from the audit stream and writes a [`QuotaState`] into the KV bucket
//! [`QUOTA_STATE_BUCKET`] when a tunnel or an account nears or passes one of its limits. Every
//! ingress mirrors the bucket ([`Mirror`]), so a request to an exceeded tunnel, or to a tunnel of
//! an exceeded account, is answered 429 `quota_exceeded` with `Retry-After` set to the end of the
//! period, with no NATS round trip per request. A state lapses by itself at its period's end.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use tunnel_kit::mirror::Mirror;
use tunnel_schemas::usage::{QUOTA_STATE_BUCKET, QuotaState, Scope};

/// Largest stored state read.
const MAX_STATE_BYTES: usize = 64 << 10;

/// The quota states of tunnels and accounts, as last read from the bucket.
pub struct QuotaBook {
    mirror: Arc<Mirror<States>>,
}

/// States by scope.
#[derive(Default)]
struct States {
    tunnels: HashMap<String, QuotaState>,
    accounts: HashMap<String, QuotaState>,
}

/// A request refused for a quota: whole seconds until its period ends (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// For `Retry-After`.
    pub retry_after_secs: u64,
}

impl QuotaBook {
    /// A book filled and kept current from the bucket over `nats`.
    pub fn start(nats: &async_nats::Client) -> Self {
        Self { mirror: Mirror::start(nats, QUOTA_STATE_BUCKET, States::apply) }
    }

    /// Checks a request to `tunnel` of `account` at `now_ms`.
    ///
    /// # Errors
    /// [`Exceeded`] when the tunnel or its account is over a limit for the current period.
    pub fn check(&self, tunnel: &str, account: Option<&str>, now_ms: u64) -> Result<(), Exceeded> {
        let states = self.mirror.read();
        if states.tunnels.is_empty() && states.accounts.is_empty() {
            return Ok(());
        }
        let by_account = account.and_then(|account| states.accounts.get(account));
        let blocking = states.tunnels.get(tunnel).into_iter().chain(by_account).filter(|state| state.blocks(now_ms));
        match blocking.map(|state| state.until_ms).max() {
            None => Ok(()),
            Some(until_ms) => Err(Exceeded { retry_after_secs: (until_ms - now_ms).div_ceil(1000).max(1) }),
        }
    }
}

impl States {
    /// Applies one bucket change: a put sets the scope's state, a delete or purge clears it.
    fn apply(&mut self, entry: &kv::Entry) {
        let Some(scope) = Scope::from_key(&entry.key) else { return };
        let state = (entry.operation == kv::Operation::Put)
            .then(|| tunnel_schemas::decode::<QuotaState>(&entry.value, MAX_STATE_BYTES))
            .and_then(|decoded| {
                decoded.map_err(|e| tracing::warn!(key = %entry.key, error = %e, "undecodable quota state")).ok()
            });
        let (map, id) = match scope {
            Scope::Tunnel(name) => (&mut self.tunnels, name),
            Scope::Account(account) => (&mut self.accounts, account),
        };
        match state {
            Some(state) => map.insert(id, state),
            None => map.remove(&id),
        };
    }
}

#[cfg(test)]
mod tests {
    use tunnel_schemas::usage::{Quota, QuotaLevel};

    use super::*;

    fn state(scope: Scope, level: QuotaLevel, until_ms: u64) -> QuotaState {
        QuotaState { scope, quota: Quota::RequestsPerMinute, level, used: 11, limit: 10, until_ms }
    }

    #[test]
    fn exceeded_tunnels_and_accounts_refuse_until_their_period_ends() {
        let mut states = States::default();
        states.tunnels.insert("busy".into(), state(Scope::Tunnel("busy".into()), QuotaLevel::Exceeded, 60_000));
        states.tunnels.insert("near".into(), state(Scope::Tunnel("near".into()), QuotaLevel::Warning, 60_000));
        states.accounts.insert("acme".into(), state(Scope::Account("acme".into()), QuotaLevel::Exceeded, 90_500));
        let book = QuotaBook { mirror: Arc::new(Mirror::loaded_with(states, 1)) };
        assert_eq!(book.check("busy", None, 10_000), Err(Exceeded { retry_after_secs: 50 }));
        assert_eq!(book.check("busy", None, 60_000), Ok(()), "the block lifts at the period's end");
        assert_eq!(book.check("near", None, 10_000), Ok(()), "a warning refuses nothing");
        assert_eq!(book.check("other", Some("acme"), 90_000), Err(Exceeded { retry_after_secs: 1 }));
        assert_eq!(book.check("other", Some("globex"), 10_000), Ok(()));
        assert_eq!(book.check("busy", Some("acme"), 10_000), Err(Exceeded { retry_after_secs: 81 }), "the later end");
    }

    /// The cost of the quota check: `cargo test --release -p tunnel-ingress check_costs --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand in release mode"]
    fn check_costs() {
        let mut states = States::default();
        for i in 0..1000 {
            let name = format!("t{i}");
            states.tunnels.insert(name.clone(), state(Scope::Tunnel(name), QuotaLevel::Exceeded, u64::MAX));
        }
        let some = QuotaBook { mirror: Arc::new(Mirror::loaded_with(states, 1)) };
        let none = QuotaBook { mirror: Arc::new(Mirror::loaded_with(States::default(), 1)) };
        for (name, book) in [("1000 states", &some), ("no state", &none)] {
            let started = std::time::Instant::now();
            let rounds = 1_000_000;
            for _ in 0..rounds {
                assert!(book.check("calm", Some("acme"), 1).is_ok());
            }
            println!("{name}: {:.0} ns per check", started.elapsed().as_nanos() as f64 / f64::from(rounds));
        }
    }
}
