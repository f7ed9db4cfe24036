//! The usage counters in KV: read once, then kept in memory by the leader, written with
//! compare-and-set.
//!
//! Only the leader writes, so the revision it remembers is normally the stored one. When it is
//! not (a former leader still finishing a write), the update fails with `WrongLastRevision`;
//! the counter is read again and the increments re-applied after its new `last_seq`.

use std::collections::HashMap;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use tunnel_schemas::usage::{Period, Scope, UsageCounter};

use crate::tally::{Increment, Pending, Tally, apply};

/// Counters written at once.
const WRITES_IN_FLIGHT: usize = 64;
/// Counters kept in memory; past it the memory is cleared (and counters read again when used).
const MAX_CACHED: usize = 100_000;
/// Largest stored counter read back.
const MAX_COUNTER_BYTES: usize = 64 << 10;

/// Why counters could not be read or stored.
#[derive(Debug, thiserror::Error)]
#[error("usage counter {key}: {reason}")]
pub struct StoreError {
    /// The counter's key.
    pub key: String,
    /// What failed.
    pub reason: String,
}

/// A counter as stored, with the revision of its key (0: never written).
#[derive(Debug, Clone, Default)]
struct Stored {
    counter: UsageCounter,
    revision: u64,
}

/// What a store added to one counter.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The counter's key.
    pub key: String,
    /// Whose counter.
    pub scope: Scope,
    /// Its period.
    pub period: Period,
    /// What was added (nothing when every increment was applied before).
    pub added: Increment,
}

/// The usage bucket and the counters the leader knows.
pub struct Counters {
    kv: kv::Store,
    known: HashMap<String, Stored>,
}

impl Counters {
    /// Counters of the bucket `kv`, none known yet.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv, known: HashMap::new() }
    }

    /// The counter under `key` (zero when absent).
    ///
    /// # Errors
    /// [`StoreError`] when it cannot be read.
    pub async fn get(&mut self, key: &str) -> Result<UsageCounter, StoreError> {
        if let Some(stored) = self.known.get(key) {
            return Ok(stored.counter.clone());
        }
        let stored = read(&self.kv, key).await?;
        let counter = stored.counter.clone();
        self.remember(key.to_owned(), stored);
        Ok(counter)
    }

    /// Applies every counter of `tally` (the increments after its stored `last_seq`), writing
    /// the changed ones concurrently, each with compare-and-set; returns what each one gained.
    /// Call it again after an error: what was stored is not applied twice.
    ///
    /// # Errors
    /// The first [`StoreError`]; the counters stored meanwhile stay stored.
    pub async fn store(&mut self, tally: &Tally) -> Result<Vec<Applied>, StoreError> {
        // A loop rather than `buffer_unordered` over a closure: futures made by a closure that
        // borrow trip a compiler limitation (the task would not be `Send`).
        let kv = self.kv.clone();
        let mut todo = tally.counters.iter();
        let mut writes = futures_util::stream::FuturesUnordered::new();
        let mut results = Vec::with_capacity(tally.counters.len());
        loop {
            while writes.len() < WRITES_IN_FLIGHT {
                let Some((key, pending)) = todo.next() else { break };
                let known = self.known.get(key).cloned();
                writes.push(write_one(&kv, key, pending, known));
            }
            match writes.next().await {
                Some(result) => results.push(result),
                None => break,
            }
        }
        drop(writes);
        let mut applied = Vec::with_capacity(results.len());
        let mut failure = None;
        for (key, result) in results {
            match result {
                Ok((stored, added)) => {
                    self.remember(key.clone(), stored);
                    if added.records > 0 {
                        let pending = &tally.counters[key];
                        let (scope, period) = (pending.scope.clone(), pending.period);
                        applied.push(Applied { key: key.clone(), scope, period, added });
                    }
                }
                Err(e) => {
                    self.known.remove(key);
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(applied),
        }
    }

    fn remember(&mut self, key: String, stored: Stored) {
        if self.known.len() >= MAX_CACHED {
            self.known.clear();
        }
        self.known.insert(key, stored);
    }
}

/// Reads the counter under `key` and its revision.
async fn read(kv: &kv::Store, key: &str) -> Result<Stored, StoreError> {
    let failed = |reason: String| StoreError { key: key.to_owned(), reason };
    let Some(entry) = kv.entry(key).await.map_err(|e| failed(e.to_string()))? else {
        return Ok(Stored::default());
    };
    if entry.operation != kv::Operation::Put {
        return Ok(Stored { counter: UsageCounter::default(), revision: entry.revision });
    }
    let counter = tunnel_schemas::decode(&entry.value, MAX_COUNTER_BYTES).map_err(|e| failed(e.to_string()))?;
    Ok(Stored { counter, revision: entry.revision })
}

/// [`write`], with its key.
async fn write_one<'a>(
    kv: &kv::Store,
    key: &'a String,
    pending: &Pending,
    known: Option<Stored>,
) -> (&'a String, Result<(Stored, Increment), StoreError>) {
    (key, write(kv, key, pending, known).await)
}

/// Applies `pending` to the counter under `key` (as `known`, or read) and writes it when it
/// changed, reading it again after a conflict.
async fn write(
    kv: &kv::Store,
    key: &str,
    pending: &Pending,
    mut known: Option<Stored>,
) -> Result<(Stored, Increment), StoreError> {
    loop {
        let mut stored = match known.take() {
            Some(stored) => stored,
            None => read(kv, key).await?,
        };
        let added = apply(&mut stored.counter, &pending.increments);
        if added.records == 0 {
            return Ok((stored, added));
        }
        let value = tunnel_schemas::encode(&stored.counter);
        match kv.update(key, value.into(), stored.revision).await {
            Ok(revision) => {
                metrics::counter!("auditor_counters_written_total").increment(1);
                return Ok((Stored { revision, ..stored }, added));
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                metrics::counter!("auditor_counter_conflicts_total").increment(1);
            }
            Err(e) => return Err(StoreError { key: key.to_owned(), reason: e.to_string() }),
        }
    }
}
