//! The per-tunnel byte limit of recordings.
//!
//! JetStream limits a stream's bytes, and a subject's message count, but not a subject's bytes.
//! So the host counts what it stores per tunnel, in checkpoints of a sixty-fourth of the limit,
//! and once a tunnel's bytes pass the limit it purges that tunnel's records older than the
//! oldest checkpoint it keeps, down to seven eighths of the limit: the tunnel keeps its most
//! recent recordings, and other tunnels keep theirs. Purging an eighth at a time keeps purges
//! rare (one per eighth of the limit recorded) however fast a tunnel records. The count covers what this host
//! stored since it started; a tunnel that moves between hosts is counted by each.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Checkpoints per limit: the precision of the limit.
const CHECKPOINTS: u64 = 64;
/// A purge brings a tunnel down to this many eighths of its limit.
const PURGE_TO_EIGHTHS: u64 = 7;
/// Most tunnels counted at once; the least recently recorded is forgotten beyond it.
const MAX_TUNNELS: usize = 10_000;

/// Bytes stored since a stream sequence.
#[derive(Debug)]
struct Checkpoint {
    first_sequence: u64,
    bytes: u64,
}

#[derive(Debug)]
struct Usage {
    checkpoints: VecDeque<Checkpoint>,
    total: u64,
    last: Instant,
}

/// What each tunnel has stored.
#[derive(Debug)]
pub struct TunnelBudgets {
    limit: u64,
    tunnels: HashMap<String, Usage>,
}

impl TunnelBudgets {
    /// Budgets of `limit` bytes per tunnel.
    pub fn new(limit: u64) -> Self {
        Self { limit, tunnels: HashMap::new() }
    }

    /// Counts `bytes` stored for `tunnel` at `sequence`; returns the sequence below which the
    /// tunnel's records must be purged, when it passed its limit.
    pub fn stored(&mut self, tunnel: &str, sequence: u64, bytes: u64) -> Option<u64> {
        if !self.tunnels.contains_key(tunnel) && self.tunnels.len() >= MAX_TUNNELS {
            self.forget_oldest();
        }
        let step = (self.limit / CHECKPOINTS).max(1);
        let usage = self.tunnels.entry(tunnel.to_owned()).or_insert_with(|| Usage {
            checkpoints: VecDeque::new(),
            total: 0,
            last: Instant::now(),
        });
        usage.last = Instant::now();
        usage.total += bytes;
        match usage.checkpoints.back_mut() {
            Some(last) if last.bytes < step => last.bytes += bytes,
            _ => usage.checkpoints.push_back(Checkpoint { first_sequence: sequence, bytes }),
        }
        if usage.total <= self.limit {
            return None;
        }
        let target = self.limit / 8 * PURGE_TO_EIGHTHS;
        let mut purge_below = None;
        while usage.total > target && usage.checkpoints.len() > 1 {
            if let Some(oldest) = usage.checkpoints.pop_front() {
                usage.total -= oldest.bytes;
            }
            purge_below = usage.checkpoints.front().map(|next| next.first_sequence);
        }
        purge_below
    }

    fn forget_oldest(&mut self) {
        let oldest = self.tunnels.iter().min_by_key(|(_, usage)| usage.last).map(|(name, _)| name.clone());
        if let Some(name) = oldest {
            self.tunnels.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_over_its_limit_purges_its_oldest_and_others_are_untouched() {
        let mut budgets = TunnelBudgets::new(64 * 100);
        let mut purges = Vec::new();
        for sequence in 1..=200 {
            purges.extend(budgets.stored("big", sequence, 100));
        }
        assert!(budgets.stored("small", 1000, 100).is_none());
        assert!((10..=20).contains(&purges.len()), "an eighth at a time: {} purges", purges.len());
        let last = *purges.last().expect("the big tunnel purged");
        assert!(last > 136 && last <= 150, "keeps between 7/8 of the limit and the limit, purges below {last}");
        let kept = budgets.tunnels["big"].total;
        assert!((5600..=6400).contains(&kept), "{kept}");
    }

    #[test]
    fn the_number_of_tunnels_counted_is_bounded() {
        let mut budgets = TunnelBudgets::new(1 << 20);
        for i in 0..MAX_TUNNELS + 10 {
            budgets.stored(&format!("t{i}"), i as u64, 1);
        }
        assert_eq!(budgets.tunnels.len(), MAX_TUNNELS);
    }
}
