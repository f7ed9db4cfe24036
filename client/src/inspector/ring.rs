//! The inspector's memory: the most recent exchanges in a ring bounded by count and by body
//! bytes, oldest dropped first, each found by its request id.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;
use tunnel_schemas::record::ExchangeRecord;
use tunnel_trail::compare::Comparison;

/// Body bytes the whole ring may hold; beyond it the oldest exchanges go even when the count
/// allows more (10,000 exchanges with 1 MiB bodies each way would otherwise take 20 GiB).
pub const MAX_RING_BODY_BYTES: usize = 128 << 20;

/// Who saw an exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sources {
    /// This client forwarded it.
    pub client: bool,
    /// The session-host recorded it (`--record`).
    pub server: bool,
    /// The inspector sent it again (a replay).
    pub replay: bool,
}

/// One exchange of the ring.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the ring's history: grows by one for each new exchange.
    pub seq: u64,
    /// The exchange, its bodies up to the inspector's cap.
    pub record: ExchangeRecord,
    /// Who saw it.
    pub sources: Sources,
    /// Still streaming (the response body has not ended).
    pub open: bool,
    /// For a replay: its response against the original's.
    pub comparison: Option<Comparison>,
}

impl Entry {
    fn body_bytes(&self) -> usize {
        self.record.request.body.len() + self.record.response.as_ref().map_or(0, |r| r.body.len())
    }
}

/// The ring itself; callers hold it behind a lock and keep their critical sections short.
#[derive(Debug)]
pub struct Ring {
    entries: VecDeque<Arc<Entry>>,
    /// Request id → seq of the entries in the ring.
    by_id: HashMap<String, u64>,
    next_seq: u64,
    capacity: usize,
    max_body_bytes: usize,
    body_bytes: usize,
}

impl Ring {
    /// A ring of at most `capacity` exchanges (at least one) and `max_body_bytes` of bodies.
    pub fn new(capacity: usize, max_body_bytes: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            entries: VecDeque::with_capacity(capacity.min(1024)),
            by_id: HashMap::new(),
            next_seq: 0,
            capacity,
            max_body_bytes,
            body_bytes: 0,
        }
    }

    /// Exchanges held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds an exchange (a new seq is given to it) and returns it, dropping the oldest ones
    /// beyond the bounds.
    pub fn push(&mut self, mut entry: Entry) -> Arc<Entry> {
        entry.seq = self.next_seq;
        self.next_seq += 1;
        let entry = Arc::new(entry);
        self.body_bytes += entry.body_bytes();
        self.by_id.insert(entry.record.request_id.clone(), entry.seq);
        self.entries.push_back(entry.clone());
        self.evict();
        entry
    }

    /// The exchange with `request_id`.
    pub fn get(&self, request_id: &str) -> Option<Arc<Entry>> {
        let seq = *self.by_id.get(request_id)?;
        self.index(seq).map(|at| self.entries[at].clone())
    }

    /// Changes the exchange with `request_id` with `change`; returns it as changed, or `None`
    /// when it is no longer in the ring.
    pub fn update(&mut self, request_id: &str, change: impl FnOnce(&mut Entry)) -> Option<Arc<Entry>> {
        let at = self.index(*self.by_id.get(request_id)?)?;
        let mut entry = (*self.entries[at]).clone();
        change(&mut entry);
        let entry = Arc::new(entry);
        self.body_bytes = self.body_bytes - self.entries[at].body_bytes() + entry.body_bytes();
        self.entries[at] = entry.clone();
        self.evict();
        Some(entry)
    }

    /// The exchanges, newest first, that `keep` selects, at most `limit` of them.
    pub fn select(&self, limit: usize, keep: impl Fn(&Entry) -> bool) -> Vec<Arc<Entry>> {
        self.entries.iter().rev().filter(|entry| keep(entry)).take(limit).cloned().collect()
    }

    /// Where `seq` sits: seqs in the ring are consecutive, oldest at the front.
    fn index(&self, seq: u64) -> Option<usize> {
        let first = self.entries.front()?.seq;
        let at = usize::try_from(seq.checked_sub(first)?).ok()?;
        (at < self.entries.len()).then_some(at)
    }

    fn evict(&mut self) {
        while self.entries.len() > self.capacity || (self.body_bytes > self.max_body_bytes && self.entries.len() > 1) {
            let Some(oldest) = self.entries.pop_front() else { break };
            self.body_bytes -= oldest.body_bytes();
            if self.by_id.get(&oldest.record.request_id) == Some(&oldest.seq) {
                self.by_id.remove(&oldest.record.request_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tunnel_schemas::record::RecordedMessage;

    use super::*;

    fn entry(id: &str, body: usize) -> Entry {
        let request = RecordedMessage {
            method: "GET".into(),
            target: "/".into(),
            headers: Vec::new(),
            body: Bytes::from(vec![b'x'; body]),
            size: body as u64,
            cut: false,
        };
        let record = super::super::new_record(id, "t".into(), request);
        Entry { seq: 0, record, sources: Sources::default(), open: false, comparison: None }
    }

    #[test]
    fn keeps_the_newest_within_the_count() {
        let mut ring = Ring::new(3, usize::MAX);
        for i in 0..10 {
            ring.push(entry(&i.to_string(), 1));
        }
        assert_eq!(ring.len(), 3);
        assert!(ring.get("6").is_none());
        let ids: Vec<_> = ring.select(10, |_| true).iter().map(|e| e.record.request_id.clone()).collect();
        assert_eq!(ids, ["9", "8", "7"]);
        assert!(ring.update("8", |e| e.open = true).is_some_and(|e| e.open));
        assert!(ring.update("1", |e| e.open = true).is_none());
    }

    #[test]
    fn drops_the_oldest_beyond_the_body_budget() {
        let mut ring = Ring::new(100, 10);
        ring.push(entry("a", 4));
        ring.push(entry("b", 4));
        ring.push(entry("c", 4));
        assert!(ring.get("a").is_none());
        assert_eq!(ring.len(), 2);
        ring.update("c", |e| e.record.request.body = Bytes::from_static(b"0123456789"));
        assert_eq!(ring.len(), 1);
        assert!(ring.get("c").is_some());
    }
}
