//! Quota decisions: the limits in force per scope, and the [`QuotaState`] the leader keeps in
//! the bucket every ingress watches.
//!
//! A scope's limits are the configured defaults (per tunnel, per account), each replaced by the
//! operator's value in [`QUOTAS_BUCKET`](tunnel_schemas::usage::QUOTAS_BUCKET) when one is set there (0 there: no limit).
//!
//! The crossing rule: a limit of N is *used up* once N requests (or N bytes) are counted in
//! the period. From then on the scope is [`QuotaLevel::Exceeded`] until the period ends, and
//! every ingress refuses its new requests. The request that used it up was served; so were any
//! that arrived while the block travelled (the enforcement latency), and they are counted. At
//! [`WARN_PERCENT`] of a limit the scope is [`QuotaLevel::Warning`].

use std::collections::{HashMap, HashSet};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use tunnel_schemas::usage::{
    Period, Quota, QuotaLevel, QuotaLimits, QuotaState, Scope, UsageCounter, WARN_PERCENT, usage_key,
};

use crate::counters::{Counters, StoreError};

/// Largest stored limits or state read back.
const MAX_RECORD_BYTES: usize = 64 << 10;

/// The state of `scope` given its `limits` and what it `used` of each quota in the current
/// period of that quota (ending at the given time): exceeded when a limit is used up (the one
/// whose period ends last, the block lasting longest), else warning at [`WARN_PERCENT`] of one
/// (the nearest), else none.
pub fn decide(scope: &Scope, limits: &QuotaLimits, used: impl Fn(Quota) -> (u64, u64)) -> Option<QuotaState> {
    let mut exceeded: Option<QuotaState> = None;
    let mut warning: Option<QuotaState> = None;
    for quota in Quota::ALL {
        let Some(limit) = quota.limit(limits).filter(|&limit| limit > 0) else { continue };
        let (used, until_ms) = used(quota);
        let state = |level| QuotaState { scope: scope.clone(), quota, level, used, limit, until_ms };
        if used >= limit {
            if exceeded.as_ref().is_none_or(|other| until_ms > other.until_ms) {
                exceeded = Some(state(QuotaLevel::Exceeded));
            }
        } else if u128::from(used) * 100 >= u128::from(limit) * u128::from(WARN_PERCENT)
            && warning.as_ref().is_none_or(|other| {
                u128::from(used) * u128::from(other.limit) > u128::from(other.used) * u128::from(limit)
            })
        {
            warning = Some(state(QuotaLevel::Warning));
        }
    }
    exceeded.or(warning)
}

/// The limits in force: each of `set` (the operator's) that is given, else the default; 0 is no
/// limit.
pub fn effective(defaults: QuotaLimits, set: Option<&QuotaLimits>) -> QuotaLimits {
    let set = set.copied().unwrap_or_default();
    let pick = |set: Option<u64>, default: Option<u64>| set.or(default).filter(|&n| n > 0);
    QuotaLimits {
        requests_per_minute: pick(set.requests_per_minute, defaults.requests_per_minute),
        requests_per_day: pick(set.requests_per_day, defaults.requests_per_day),
        bytes_per_day: pick(set.bytes_per_day, defaults.bytes_per_day),
        bytes_per_month: pick(set.bytes_per_month, defaults.bytes_per_month),
    }
}

/// Whether two states say the same to a reader (what was used may differ).
fn same(a: Option<&QuotaState>, b: Option<&QuotaState>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a.quota, a.level, a.limit, a.until_ms) == (b.quota, b.level, b.limit, b.until_ms),
        _ => false,
    }
}

/// The limits in force and the states written, kept by the leader.
pub struct Quotas {
    tunnel_defaults: QuotaLimits,
    account_defaults: QuotaLimits,
    /// The operator's limits per scope.
    overrides: HashMap<Scope, QuotaLimits>,
    /// The states in the bucket, as this leader wrote or found them.
    states: HashMap<Scope, QuotaState>,
    /// Scopes to evaluate again at the next tick (a write failed, or just loaded).
    dirty: HashSet<Scope>,
    store: kv::Store,
    minute_ms: u64,
}

impl Quotas {
    /// Loads the states of `store` (the state bucket); every one is evaluated again at the
    /// first [`Quotas::tick`].
    ///
    /// # Errors
    /// When the bucket cannot be read.
    pub async fn load(
        store: kv::Store,
        (tunnel_defaults, account_defaults): (QuotaLimits, QuotaLimits),
        minute_ms: u64,
    ) -> Result<Self, String> {
        let mut states = HashMap::new();
        let mut keys = store.keys().await.map_err(|e| e.to_string())?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|e| e.to_string())?);
        }
        for key in names {
            let (Some(scope), Some(bytes)) = (Scope::from_key(&key), store.get(&key).await.map_err(|e| e.to_string())?)
            else {
                continue;
            };
            if let Ok(state) = tunnel_schemas::decode::<QuotaState>(&bytes, MAX_RECORD_BYTES) {
                states.insert(scope, state);
            }
        }
        let dirty = states.keys().cloned().collect();
        let overrides = HashMap::new();
        Ok(Self { tunnel_defaults, account_defaults, overrides, states, dirty, store, minute_ms })
    }

    /// Applies a change of the operator's limits (an entry of [`QUOTAS_BUCKET`](tunnel_schemas::usage::QUOTAS_BUCKET)); returns the
    /// scope to evaluate again.
    pub fn apply_limits(&mut self, entry: &kv::Entry) -> Option<Scope> {
        let scope = Scope::from_key(&entry.key)?;
        match entry.operation {
            kv::Operation::Put => match tunnel_schemas::decode::<QuotaLimits>(&entry.value, MAX_RECORD_BYTES) {
                Ok(limits) => {
                    self.overrides.insert(scope.clone(), limits);
                }
                Err(e) => {
                    tracing::warn!(key = %entry.key, error = %e, "undecodable quota limits; the defaults apply");
                    self.overrides.remove(&scope);
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                self.overrides.remove(&scope);
            }
        }
        Some(scope)
    }

    /// The limits in force for `scope`.
    pub fn limits(&self, scope: &Scope) -> QuotaLimits {
        let defaults = match scope {
            Scope::Tunnel(_) => self.tunnel_defaults,
            Scope::Account(_) => self.account_defaults,
        };
        effective(defaults, self.overrides.get(scope))
    }

    /// Evaluates `scope` at `now_ms` against its counters of the current periods, and writes its
    /// state when it changed (deletes it when there is none). A failed write is retried at the
    /// next [`Quotas::tick`].
    pub async fn evaluate(&mut self, scope: &Scope, counters: &mut Counters, now_ms: u64) {
        let limits = self.limits(scope);
        if limits == QuotaLimits::default() && !self.states.contains_key(scope) {
            return;
        }
        let state = match self.current(scope, &limits, counters, now_ms).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the counters of a quota; trying again");
                self.dirty.insert(scope.clone());
                return;
            }
        };
        if same(self.states.get(scope), state.as_ref()) {
            return;
        }
        let key = scope.key();
        let written = match &state {
            Some(state) => {
                self.store.put(&key, tunnel_schemas::encode(state).into()).await.map(|_| ()).map_err(|e| e.to_string())
            }
            None => self.store.delete(&key).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = written {
            tracing::warn!(scope = %key, error = %e, "quota state not written; trying again");
            self.dirty.insert(scope.clone());
            return;
        }
        let level = state.as_ref().map_or("cleared", |state| match state.level {
            QuotaLevel::Warning => "warning",
            QuotaLevel::Exceeded => "exceeded",
        });
        tracing::info!(scope = %key, level, quota = state.as_ref().map(|s| s.quota.as_str()), "quota state");
        metrics::counter!("auditor_quota_states_written_total", "level" => level).increment(1);
        match state {
            Some(state) => self.states.insert(scope.clone(), state),
            None => self.states.remove(scope),
        };
    }

    /// The state `scope` should have now.
    async fn current(
        &self,
        scope: &Scope,
        limits: &QuotaLimits,
        counters: &mut Counters,
        now_ms: u64,
    ) -> Result<Option<QuotaState>, StoreError> {
        let mut used: HashMap<Period, (UsageCounter, u64)> = HashMap::new();
        for quota in Quota::ALL {
            if quota.limit(limits).is_none() || used.contains_key(&quota.period()) {
                continue;
            }
            let period = quota.period();
            let start = period.start(now_ms, self.minute_ms);
            let counter = counters.get(&usage_key(scope, period, start)).await?;
            used.insert(period, (counter, period.end(start, self.minute_ms)));
        }
        Ok(decide(scope, limits, |quota| {
            used.get(&quota.period()).map_or((0, 0), |(counter, until)| (quota.used(counter), *until))
        }))
    }

    /// Evaluates again the scopes whose state's period has ended and those whose last
    /// evaluation failed.
    pub async fn tick(&mut self, counters: &mut Counters, now_ms: u64) {
        let lapsed = self.states.values().filter(|state| state.until_ms <= now_ms).map(|state| state.scope.clone());
        let mut scopes: HashSet<Scope> = lapsed.collect();
        scopes.extend(self.dirty.drain());
        for scope in scopes {
            self.evaluate(&scope, counters, now_ms).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_minute: Option<u64>, bytes_per_day: Option<u64>) -> QuotaLimits {
        QuotaLimits { requests_per_minute: per_minute, bytes_per_day, ..Default::default() }
    }

    #[test]
    fn a_limit_of_n_is_exceeded_once_n_are_counted() {
        let scope = Scope::Tunnel("demo".into());
        let at = |requests: u64| decide(&scope, &limits(Some(10), None), |_| (requests, 60_000));
        assert_eq!(at(7), None);
        assert_eq!(at(8).map(|s| s.level), Some(QuotaLevel::Warning), "80 %");
        assert_eq!(at(9).map(|s| s.level), Some(QuotaLevel::Warning));
        let exceeded = at(10).expect("a state");
        assert_eq!((exceeded.level, exceeded.limit, exceeded.until_ms), (QuotaLevel::Exceeded, 10, 60_000));
        assert!(exceeded.blocks(59_999) && !exceeded.blocks(60_000), "it lapses at the end of the period");
    }

    #[test]
    fn the_longest_block_wins_and_the_nearest_warning() {
        let scope = Scope::Account("acme".into());
        let both = decide(&scope, &limits(Some(10), Some(1000)), |quota| match quota {
            Quota::RequestsPerMinute => (10, 60_000),
            _ => (1000, 86_400_000),
        });
        assert_eq!(both.map(|s| s.quota), Some(Quota::BytesPerDay), "the day's block outlasts the minute's");
        let warned = decide(&scope, &limits(Some(10), Some(1000)), |quota| match quota {
            Quota::RequestsPerMinute => (8, 60_000),
            _ => (950, 86_400_000),
        });
        assert_eq!(warned.map(|s| (s.quota, s.level)), Some((Quota::BytesPerDay, QuotaLevel::Warning)));
        assert_eq!(decide(&scope, &limits(Some(0), None), |_| (5, 1)), None, "0 is no limit");
    }

    #[test]
    fn the_operators_limits_replace_the_defaults_one_by_one() {
        let defaults = limits(Some(100), Some(1 << 30));
        let set = QuotaLimits { requests_per_minute: Some(5), bytes_per_day: Some(0), ..Default::default() };
        let limits = effective(defaults, Some(&set));
        assert_eq!((limits.requests_per_minute, limits.bytes_per_day), (Some(5), None), "0 lifts a default");
        assert_eq!(effective(defaults, None), defaults);
    }

    #[test]
    fn states_differing_only_in_use_are_the_same() {
        let state = |used, level| QuotaState {
            scope: Scope::Tunnel("demo".into()),
            quota: Quota::RequestsPerMinute,
            level,
            used,
            limit: 10,
            until_ms: 60_000,
        };
        assert!(same(Some(&state(10, QuotaLevel::Exceeded)), Some(&state(12, QuotaLevel::Exceeded))));
        assert!(!same(Some(&state(9, QuotaLevel::Warning)), Some(&state(10, QuotaLevel::Exceeded))));
        assert!(!same(None, Some(&state(9, QuotaLevel::Warning))));
    }
}
