//! The gap ledger of a publisher: events of each tunnel dropped before they reached the log,
//! kept until a [`Gap`] event saying so is stored. A gap rides with the tunnel's next batch and
//! stays in the ledger until the stream acknowledges it, so a gap is never lost with the batch
//! it went with; while one is being published no second one is sent for the same tunnel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tunnel_schemas::PROTOCOL_VERSION;
use tunnel_schemas::gap::{Gap, KIND_GAP};

use crate::journal::Entry;

/// Tunnels with pending gaps tracked at once; beyond it, drops are still counted in metrics but
/// new tunnels' gaps are not tracked (a bound on memory under a flood of names).
const MAX_TUNNELS: usize = 10_000;

/// Pending gaps per tunnel, shared by a publisher's producers and its outcomes.
#[derive(Clone)]
pub struct GapLedger {
    gaps: Arc<Mutex<HashMap<String, (Gap, bool)>>>,
    /// Counter of the events dropped.
    metric: &'static str,
}

impl GapLedger {
    /// A ledger counting drops in the counter `metric`.
    pub fn new(metric: &'static str) -> Self {
        Self { gaps: Arc::default(), metric }
    }

    /// Counts `count` events of `tunnel` dropped now, and keeps them as a gap to report.
    pub fn note(&self, tunnel: &str, count: u64) {
        metrics::counter!(self.metric).increment(count);
        let now_ms = tunnel_schemas::now_ms();
        let mut gaps = self.gaps.lock().unwrap_or_else(PoisonError::into_inner);
        if !gaps.contains_key(tunnel) && gaps.len() >= MAX_TUNNELS {
            return;
        }
        let (gap, _) = gaps.entry(tunnel.to_owned()).or_insert_with(|| {
            let gap =
                Gap { v: PROTOCOL_VERSION, tunnel: tunnel.to_owned(), dropped: 0, from_ms: now_ms, to_ms: now_ms };
            (gap, false)
        });
        gap.dropped += count;
        gap.to_ms = now_ms;
    }

    /// The journal entry of `tunnel`'s pending gap on `subject`, unless there is none or one is
    /// being published already. Its `events` is the count of drops it reports.
    pub fn entry(&self, tunnel: &str, subject: String) -> Option<Entry> {
        let mut gaps = self.gaps.lock().unwrap_or_else(PoisonError::into_inner);
        let (gap, publishing) = gaps.get_mut(tunnel).filter(|(_, publishing)| !*publishing)?;
        *publishing = true;
        let payload = tunnel_schemas::encode(&*gap).into();
        let count = usize::try_from(gap.dropped).unwrap_or(usize::MAX);
        Some(Entry::new(subject, uuid::Uuid::now_v7().simple().to_string(), payload, count, tunnel.to_owned()))
    }

    /// The gap entry of `tunnel` is done: `stored` of its drops are on record (0 when its
    /// publish failed; it goes again with a later batch).
    pub fn settled(&self, tunnel: &str, stored: u64) {
        let mut gaps = self.gaps.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((gap, publishing)) = gaps.get_mut(tunnel) {
            *publishing = false;
            gap.dropped = gap.dropped.saturating_sub(stored);
            if gap.dropped == 0 {
                gaps.remove(tunnel);
            }
        }
    }
}

/// Whether `entry` is a gap event.
pub fn is_gap(entry: &Entry) -> bool {
    entry.subject.rsplit('.').next() == Some(KIND_GAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_stays_until_stored_and_is_published_once_at_a_time() {
        let ledger = GapLedger::new("test_dropped_total");
        ledger.note("t", 2);
        let entry = ledger.entry("t", "rec.t.gap".into()).expect("a pending gap");
        assert!(is_gap(&entry));
        assert_eq!(entry.events, 2);
        assert!(ledger.entry("t", "rec.t.gap".into()).is_none(), "one at a time");
        ledger.note("t", 1);
        ledger.settled("t", 0);
        let again = ledger.entry("t", "rec.t.gap".into()).expect("failed: sent again");
        assert_eq!(again.events, 3);
        ledger.settled("t", 3);
        assert!(ledger.entry("t", "rec.t.gap".into()).is_none(), "stored: gone");
    }
}
