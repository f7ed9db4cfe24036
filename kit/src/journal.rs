//! A bounded, asynchronous JetStream publisher: what the request path hands to the log.
//!
//! Entries wait in a bounded queue for one publisher task, which keeps at most
//! [`MAX_UNACKED`] entries awaiting their acknowledgement or a retry. A failed publish is tried
//! again after [`RETRY_FIRST`], the wait doubling up to [`RETRY_CEILING`], [`ATTEMPTS`] times in
//! all (about 11 s): long enough to ride out the election of a stream's new leader when a
//! node of a NATS cluster is lost, which takes seconds. Each entry carries a message id, so a
//! publish retried after a lost acknowledgement is stored once. The caller never waits for the
//! log: it hands entries with [`Journal::try_send`] (or, off the request path,
//! [`Journal::send`]), and what cannot be kept is reported to the [`Outcomes`] of the journal,
//! which count it.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;

/// Entries awaiting their acknowledgement or their next attempt.
pub const MAX_UNACKED: usize = 64;
/// Publishes of one entry before it is given up.
pub const ATTEMPTS: u8 = 10;
/// Wait before the second attempt of an entry; it doubles before each later one.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two attempts of an entry.
pub const RETRY_CEILING: Duration = Duration::from_secs(2);

/// One message for the log.
#[derive(Debug)]
pub struct Entry {
    /// Subject, captured by the stream.
    pub subject: String,
    /// Message id (`Nats-Msg-Id`): the stream stores a retried publish once.
    pub id: String,
    /// Extra NATS headers.
    pub headers: Option<HeaderMap>,
    /// The message.
    pub payload: Bytes,
    /// Events the message holds, for the counts of what was dropped.
    pub events: usize,
    /// Whom the entry is about (a tunnel name), for the outcomes.
    pub tag: String,
    /// Memory the entry holds in a budget of its producer, given back when it is done.
    pub permit: Option<OwnedSemaphorePermit>,
    attempts: u8,
}

impl Entry {
    /// An entry of `events` events about `tag`.
    pub fn new(subject: String, id: String, payload: Bytes, events: usize, tag: String) -> Self {
        Self { subject, id, headers: None, payload, events, tag, permit: None, attempts: 0 }
    }
}

/// What became of the entries, told by the publisher task as it happens.
pub trait Outcomes: Send + 'static {
    /// `entry` is stored at stream sequence `sequence`.
    fn stored(&mut self, entry: &Entry, sequence: u64) {
        let _ = (entry, sequence);
    }

    /// An attempt of `entry` failed with `error`; it is tried again after `wait`.
    fn retrying(&mut self, entry: &Entry, error: &str, wait: Duration) {
        let _ = (entry, error, wait);
    }

    /// `entry` was given up after its last attempt failed with `error`.
    fn dropped(&mut self, entry: &Entry, error: &str);
}

/// The sending side of a journal.
#[derive(Clone)]
pub struct Journal {
    queue: mpsc::Sender<Entry>,
}

impl Journal {
    /// Starts a publisher task on `js` with a queue of `capacity` entries; it ends once every
    /// [`Journal`] is dropped and what was queued is published or given up.
    pub fn start(js: jetstream::Context, capacity: usize, outcomes: impl Outcomes) -> (Self, JoinHandle<()>) {
        let (queue, entries) = mpsc::channel(capacity);
        (Self { queue }, tokio::spawn(publish(js, entries, outcomes)))
    }

    /// Queues `entries` all together, or none of them when the queue has no room for all.
    ///
    /// # Errors
    /// Gives the entries back when the queue is full or the publisher has ended.
    pub fn try_send(&self, entries: Vec<Entry>) -> Result<(), Vec<Entry>> {
        let Ok(permits) = self.queue.try_reserve_many(entries.len()) else { return Err(entries) };
        for (permit, entry) in permits.zip(entries) {
            permit.send(entry);
        }
        Ok(())
    }

    /// Queues `entry`, waiting while the queue is full (for producers off the request path).
    ///
    /// # Errors
    /// Gives the entry back when the publisher has ended.
    pub async fn send(&self, entry: Entry) -> Result<(), Entry> {
        self.queue.send(entry).await.map_err(|e| e.0)
    }
}

async fn publish(js: jetstream::Context, mut entries: mpsc::Receiver<Entry>, mut outcomes: impl Outcomes) {
    let mut ready: VecDeque<Entry> = VecDeque::new();
    let mut unacked = FuturesUnordered::new();
    let mut waiting = FuturesUnordered::new();
    let mut closed = false;
    loop {
        if closed && ready.is_empty() && unacked.is_empty() && waiting.is_empty() {
            return;
        }
        if unacked.len() + waiting.len() < MAX_UNACKED
            && let Some(entry) = ready.pop_front()
        {
            let mut message = PublishMessage::build().message_id(&entry.id).payload(entry.payload.clone());
            if let Some(headers) = &entry.headers {
                for (name, values) in headers.iter() {
                    for value in values {
                        message = message.header(name.clone(), value.clone());
                    }
                }
            }
            match js.send_publish(entry.subject.clone(), message).await {
                Ok(ack) => unacked.push(async move { (ack.await, entry) }),
                Err(e) => retry(&mut waiting, entry, &e.to_string(), &mut outcomes),
            }
            continue;
        }
        tokio::select! {
            Some((acked, entry)) = unacked.next(), if !unacked.is_empty() => match acked {
                Ok(ack) => outcomes.stored(&entry, ack.sequence),
                Err(e) => retry(&mut waiting, entry, &e.to_string(), &mut outcomes),
            },
            Some(entry) = waiting.next(), if !waiting.is_empty() => ready.push_front(entry),
            entry = entries.recv(), if !closed && ready.is_empty() => match entry {
                Some(entry) => ready.push_back(entry),
                None => closed = true,
            },
        }
    }
}

/// An entry waiting for its next attempt.
type Waiting = std::pin::Pin<Box<dyn std::future::Future<Output = Entry> + Send>>;

/// Schedules the next attempt of `entry`, whose last one failed with `error`, or gives it up
/// after [`ATTEMPTS`].
fn retry(waiting: &mut FuturesUnordered<Waiting>, mut entry: Entry, error: &str, outcomes: &mut impl Outcomes) {
    entry.attempts += 1;
    let Some(wait) = backoff(entry.attempts) else {
        outcomes.dropped(&entry, error);
        return;
    };
    outcomes.retrying(&entry, error, wait);
    waiting.push(Box::pin(async move {
        tokio::time::sleep(wait).await;
        entry
    }));
}

/// The wait before the next attempt of an entry that failed `failed` times; `None` when it is
/// to be given up.
fn backoff(failed: u8) -> Option<Duration> {
    (failed < ATTEMPTS).then(|| RETRY_FIRST.saturating_mul(1 << (failed - 1).min(16)).min(RETRY_CEILING))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_spread_over_seconds_then_given_up() {
        let waits: Vec<Duration> = (1..).map_while(backoff).collect();
        assert_eq!(waits.len(), usize::from(ATTEMPTS) - 1);
        assert_eq!(waits[..3], [RETRY_FIRST, RETRY_FIRST * 2, RETRY_FIRST * 4]);
        assert_eq!(waits.last(), Some(&RETRY_CEILING));
        let total: Duration = waits.iter().sum();
        assert!(total > Duration::from_secs(10), "a stream leader election is ridden out: {total:?}");
    }
}
