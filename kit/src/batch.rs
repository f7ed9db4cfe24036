//! Batching in front of the [`Journal`]: events of one key (a tunnel) gathered for a short
//! window into one stored message, which is what keeps the log cheap under load (one JetStream
//! write, one acknowledgement, per batch instead of per event).
//!
//! Producers hand events with [`Batcher::try_add`], which never waits: a full queue gives the
//! event back, for the producer to count as dropped. The batcher task seals a key's batch when
//! it reaches [`Limits::max_items`] events or [`Limits::max_bytes`] estimated bytes, or when
//! [`Limits::window`] has passed, turns it into journal entries with the producer's `seal`, and
//! hands them to the journal, waiting while the journal is full (so the queue, bounded, fills
//! instead).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::journal::{Entry, Journal};

/// When a batch is sealed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest an event waits for its batch to fill.
    pub window: Duration,
    /// Most events in one batch.
    pub max_items: usize,
    /// Most estimated bytes in one batch; an event alone over it is sealed at once.
    pub max_bytes: usize,
}

/// The sending side of a batcher of `T`s.
pub struct Batcher<T> {
    queue: mpsc::Sender<(String, T)>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone() }
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts a batcher with a queue of `capacity` events, in front of `journal`. `weigh`
    /// estimates an event's encoded size; `seal` turns a key's events into journal entries.
    pub fn start(
        journal: Journal,
        limits: Limits,
        capacity: usize,
        weigh: fn(&T) -> usize,
        seal: impl FnMut(String, Vec<T>) -> Vec<Entry> + Send + 'static,
    ) -> Self {
        let (queue, events) = mpsc::channel(capacity);
        tokio::spawn(run(events, journal, Open { limits, weigh, open: HashMap::new() }, seal));
        Self { queue }
    }

    /// Queues `event` under `key`.
    ///
    /// # Errors
    /// Gives the event back when the queue is full or the batcher has ended.
    pub fn try_add(&self, key: String, event: T) -> Result<(), T> {
        self.queue.try_send((key, event)).map_err(|e| match e {
            mpsc::error::TrySendError::Full((_, event)) | mpsc::error::TrySendError::Closed((_, event)) => event,
        })
    }
}

/// The batches being filled, one per key.
struct Open<T> {
    limits: Limits,
    weigh: fn(&T) -> usize,
    open: HashMap<String, (Vec<T>, usize)>,
}

impl<T> Open<T> {
    /// Adds `event`; returns its key's events when that filled the batch.
    fn add(&mut self, key: String, event: T) -> Option<(String, Vec<T>)> {
        let (events, bytes) = self.open.entry(key.clone()).or_default();
        *bytes += (self.weigh)(&event);
        events.push(event);
        if events.len() < self.limits.max_items && *bytes < self.limits.max_bytes {
            return None;
        }
        let (events, _) = self.open.remove(&key)?;
        Some((key, events))
    }

    /// Every open batch.
    fn take_all(&mut self) -> Vec<(String, Vec<T>)> {
        self.open.drain().map(|(key, (events, _))| (key, events)).collect()
    }
}

async fn run<T>(
    mut events: mpsc::Receiver<(String, T)>,
    journal: Journal,
    mut open: Open<T>,
    mut seal: impl FnMut(String, Vec<T>) -> Vec<Entry>,
) {
    let mut window = tokio::time::interval(open.limits.window);
    window.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let full = tokio::select! {
            event = events.recv() => match event {
                Some((key, event)) => open.add(key, event).into_iter().collect(),
                None => open.take_all(),
            },
            _ = window.tick(), if !open.open.is_empty() => open.take_all(),
        };
        for (key, batch) in full {
            for entry in seal(key, batch) {
                if journal.send(entry).await.is_err() {
                    return;
                }
            }
        }
        if events.is_closed() && events.is_empty() && open.open.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Open<usize> {
        let limits = Limits { window: Duration::from_millis(10), max_items: 4, max_bytes: 100 };
        Open { limits, weigh: |size| *size, open: HashMap::new() }
    }

    #[test]
    fn batches_seal_by_count_by_size_and_alone_when_large() {
        let mut open = open();
        let sealed: Vec<_> = (0..4).filter_map(|_| open.add("a".into(), 1)).collect();
        assert_eq!(sealed, [("a".to_owned(), vec![1, 1, 1, 1])], "by count");
        assert!(open.add("b".into(), 60).is_none());
        assert_eq!(open.add("b".into(), 60), Some(("b".to_owned(), vec![60, 60])), "by size");
        assert_eq!(open.add("c".into(), 500), Some(("c".to_owned(), vec![500])), "a large event alone");
        assert!(open.add("d".into(), 1).is_none());
        assert_eq!(open.take_all(), [("d".to_owned(), vec![1])]);
        assert!(open.open.is_empty());
    }
}
