//! Live counters of one tunnel, shared between its sessions and whoever shows them (the status
//! view samples them a few times a second).
//!
//! The data path only does relaxed atomic adds here, one or two per WebSocket frame; nothing on
//! it waits, allocates or takes a lock. The lock in [`Stats`] guards what changes once per
//! session (the host a session landed on).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one tunnel across its sessions. Share it as an `Arc` through
/// [`Options::stats`](crate::Options::stats).
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests the host handed to this client (every one, unlike the best-effort request events).
    requests: AtomicU64,
    /// Exchanges in progress (requests, streaming bodies, upgraded connections).
    open_streams: AtomicU64,
    /// Bytes of WebSocket messages read from the host.
    bytes_in: AtomicU64,
    /// Bytes of WebSocket messages written to the host.
    bytes_out: AtomicU64,
    /// The last WebSocket ping's round trip, in microseconds; 0 until one was measured.
    rtt_micros: AtomicU64,
    /// The session-host's node id of the current or last session; empty before the first.
    host: Mutex<String>,
}

/// A copy of [`Stats`] at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Requests handed to the client so far.
    pub requests: u64,
    /// Exchanges in progress.
    pub open_streams: u64,
    /// Bytes read from the host so far.
    pub bytes_in: u64,
    /// Bytes written to the host so far.
    pub bytes_out: u64,
    /// The last measured round trip to the host.
    pub rtt: Option<Duration>,
    /// The node id of the session-host; empty when unknown (before the first session, or a host
    /// too old to say).
    pub host: String,
}

impl Stats {
    /// Counts a request handed over by the host; the returned guard counts it as an open stream
    /// until it is dropped (when the exchange ends, or is aborted with its connection).
    pub fn request_started(self: &std::sync::Arc<Self>) -> OpenStream {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.clone())
    }

    /// Counts `bytes` read from the host.
    pub fn read(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts `bytes` written to the host.
    pub fn written(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records a measured round trip to the host.
    pub fn round_trip(&self, rtt: Duration) {
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        self.rtt_micros.store(micros, Ordering::Relaxed);
    }

    /// Records the session-host a new session landed on; its old round trip no longer applies.
    pub fn landed_on(&self, host: &str) {
        let mut current = self.host.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != host {
            host.clone_into(&mut current);
            self.rtt_micros.store(0, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn sample(&self) -> Sample {
        let rtt = self.rtt_micros.load(Ordering::Relaxed);
        Sample {
            requests: self.requests.load(Ordering::Relaxed),
            open_streams: self.open_streams.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            rtt: (rtt > 0).then(|| Duration::from_micros(rtt)),
            host: self.host.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
        }
    }
}

/// An exchange in progress, counted in [`Stats`] until dropped.
#[derive(Debug)]
pub struct OpenStream(std::sync::Arc<Stats>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn counts_and_samples() {
        let stats = Arc::new(Stats::default());
        assert_eq!(stats.sample(), Sample::default());
        let open = stats.request_started();
        let other = stats.request_started();
        stats.read(100);
        stats.written(40);
        stats.round_trip(Duration::from_micros(1500));
        stats.landed_on("host1");
        drop(other);
        let sample = stats.sample();
        assert_eq!((sample.requests, sample.open_streams), (2, 1));
        assert_eq!((sample.bytes_in, sample.bytes_out), (100, 40));
        assert_eq!(sample.rtt, None, "a new host forgets the old round trip");
        assert_eq!(sample.host, "host1");
        stats.round_trip(Duration::ZERO);
        assert_eq!(stats.sample().rtt, Some(Duration::from_micros(1)), "a measured round trip is never unknown");
        drop(open);
        assert_eq!(stats.sample().open_streams, 0);
    }
}
