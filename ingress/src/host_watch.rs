//! Liveness of the session-hosts that hold this ingress's exchanges.
//!
//! A host that is killed or frozen, or cut off without a FIN, sends nothing more: its exchanges
//! would wait for the head timeout (15 minutes, so long polls work). Instead, once an exchange
//! knows the session that took it (from the session's acknowledgement or any frame), the watch
//! probes that session about once a second, one NATS request per session however many
//! exchanges it holds, and fails the session's exchanges as soon as the answer says so:
//!
//! - no responders: the host's NATS connection is gone (killed, crashed) — `tunnel_disconnected`,
//!   within a probe interval;
//! - a `Reset`: the host runs but the session ended — its code;
//! - silence for `host_timeout`: the host is frozen or cut off — `host_unresponsive`.
//!
//! See [ADR 0004](../../docs/adr/0004-bounded-waits-on-silent-faults.md).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tunnel_schemas::stream::StreamFrame;
use tunnel_schemas::{ErrorCode, MAX_FRAME_BYTES, subjects};

use crate::streams::{Incoming, StreamHub};

/// Interval between probes of a session that holds exchanges.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The sessions probed, by stream-subject prefix (`_INBOX.host.<node>.<session>`).
#[derive(Default)]
pub struct HostWatch {
    sessions: Mutex<HashMap<String, Watched>>,
}

/// One probed session.
struct Watched {
    /// The exchanges it holds here, by stream id, each with the queue a reset goes into.
    streams: HashMap<u64, mpsc::Sender<Incoming>>,
    /// Last sign of life: a probe answered, or the frame that started the watch.
    last_answer: Instant,
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The session is open.
    Alive,
    /// The session or its host is gone; its exchanges fail with this code.
    Gone(ErrorCode),
    /// No answer in time.
    Silent,
}

impl HostWatch {
    /// Watches the session whose stream subject `host_subject` is, for stream `id`; returns the
    /// session's prefix, to [`HostWatch::forget`] it by.
    pub fn watch(&self, host_subject: &str, id: u64, frames: mpsc::Sender<Incoming>) -> Option<String> {
        let (prefix, _) = host_subject.rsplit_once(".st.")?;
        let mut sessions = self.lock();
        let watched = sessions
            .entry(prefix.to_owned())
            .or_insert_with(|| Watched { streams: HashMap::new(), last_answer: Instant::now() });
        watched.streams.insert(id, frames);
        Some(prefix.to_owned())
    }

    /// Stops watching stream `id` of session `prefix`.
    pub fn forget(&self, prefix: &str, id: u64) {
        let mut sessions = self.lock();
        if let Some(watched) = sessions.get_mut(prefix) {
            watched.streams.remove(&id);
            if watched.streams.is_empty() {
                sessions.remove(prefix);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Acts on a probe's `verdict` for session `prefix`.
    fn judge(&self, prefix: &str, verdict: Verdict, host_timeout: Duration) {
        let mut sessions = self.lock();
        let Some(watched) = sessions.get_mut(prefix) else { return };
        let code = match verdict {
            Verdict::Alive => {
                watched.last_answer = Instant::now();
                return;
            }
            Verdict::Silent if watched.last_answer.elapsed() < host_timeout => return,
            Verdict::Silent => ErrorCode::HostUnresponsive,
            Verdict::Gone(code) => code,
        };
        let Some(watched) = sessions.remove(prefix) else { return };
        drop(sessions);
        tracing::info!(session = prefix, code = %code, exchanges = watched.streams.len(), "session-host lost; failing its exchanges");
        metrics::counter!("ingress_hosts_lost_total", "code" => code.as_str()).increment(1);
        for frames in watched.streams.into_values() {
            let _ = frames.try_send((StreamFrame::Reset { code }, None));
        }
    }

    /// Counts the time this ingress could not probe (its own NATS connection was down) as
    /// answered: a host is not blamed for the ingress's outage.
    fn excuse_all(&self) {
        for watched in self.lock().values_mut() {
            watched.last_answer = Instant::now();
        }
    }

    fn prefixes(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

/// Probes the sessions `hub` watches until the hub is dropped.
pub async fn run(nats: async_nats::Client, hub: Weak<StreamHub>, host_timeout: Duration) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(watch) = hub.upgrade().map(|hub| hub.watch()) else { return };
        if nats.connection_state() != async_nats::connection::State::Connected {
            watch.excuse_all();
            continue;
        }
        let prefixes = watch.prefixes();
        if prefixes.is_empty() {
            continue;
        }
        let verdicts = futures_util::future::join_all(prefixes.iter().map(|prefix| probe(&nats, prefix))).await;
        for (prefix, verdict) in prefixes.iter().zip(verdicts) {
            watch.judge(prefix, verdict, host_timeout);
        }
    }
}

/// Asks session `prefix` whether it is open.
async fn probe(nats: &async_nats::Client, prefix: &str) -> Verdict {
    let request = async_nats::Request::new().payload(Bytes::new()).timeout(Some(PROBE_INTERVAL));
    match nats.send_request(subjects::probe_subject(prefix), request).await {
        Ok(answer) if answer.payload.is_empty() => Verdict::Alive,
        Ok(answer) => match tunnel_schemas::decode::<StreamFrame>(&answer.payload, MAX_FRAME_BYTES) {
            Ok(StreamFrame::Reset { code }) => Verdict::Gone(code),
            _ => Verdict::Alive,
        },
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            Verdict::Gone(ErrorCode::TunnelDisconnected)
        }
        Err(_) => Verdict::Silent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(watch: &HostWatch) -> (mpsc::Receiver<Incoming>, String) {
        let (frames, receiver) = mpsc::channel(4);
        let prefix = watch.watch("_INBOX.host.n1.s1.st.7", 7, frames).expect("a stream subject");
        (receiver, prefix)
    }

    #[test]
    fn a_gone_session_fails_its_exchanges_with_the_code() {
        let watch = HostWatch::default();
        let (mut frames, prefix) = watched(&watch);
        assert_eq!(prefix, "_INBOX.host.n1.s1");
        watch.judge(&prefix, Verdict::Alive, Duration::ZERO);
        assert!(frames.try_recv().is_err(), "an open session's exchanges go on");
        watch.judge(&prefix, Verdict::Gone(ErrorCode::TunnelDisconnected), Duration::ZERO);
        let (frame, _) = frames.try_recv().expect("a reset");
        assert_eq!(frame, StreamFrame::Reset { code: ErrorCode::TunnelDisconnected });
        assert!(watch.prefixes().is_empty(), "the session is no longer probed");
    }

    #[test]
    fn silence_fails_only_after_the_host_timeout() {
        let watch = HostWatch::default();
        let (mut frames, prefix) = watched(&watch);
        watch.judge(&prefix, Verdict::Silent, Duration::from_secs(60));
        assert!(frames.try_recv().is_err(), "silence within the timeout is tolerated");
        watch.judge(&prefix, Verdict::Silent, Duration::ZERO);
        let (frame, _) = frames.try_recv().expect("a reset");
        assert_eq!(frame, StreamFrame::Reset { code: ErrorCode::HostUnresponsive });
    }

    #[test]
    fn a_session_is_probed_while_it_holds_an_exchange() {
        let watch = HostWatch::default();
        let (_frames, prefix) = watched(&watch);
        assert_eq!(watch.prefixes(), vec![prefix.clone()]);
        watch.forget(&prefix, 7);
        assert!(watch.prefixes().is_empty());
        assert_eq!(watch.watch("not-a-stream-subject", 1, mpsc::channel(1).0), None);
    }
}
