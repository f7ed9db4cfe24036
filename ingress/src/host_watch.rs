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
//! - `Open` with some of the exchanges `gone`: the session ended them, and what it sent last (the
//!   head, or the end of a body) was lost on the way, with a NATS node that went down —
//!   `unavailable`, once two probes in a row say so (the first may cross an answer in flight);
//! - silence for `host_timeout`: the host is frozen or cut off — `host_unresponsive`.
//!
//! See [ADR 0004](../../docs/adr/0004-bounded-waits-on-silent-faults.md).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tunnel_schemas::stream::{Probe, ProbeAnswer, StreamFrame};
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
    /// The exchanges it holds for this ingress, by this ingress's stream id.
    streams: HashMap<u64, Watching>,
    /// Last sign of life: a probe answered, or the frame that started the watch.
    last_answer: Instant,
}

/// One exchange at a probed session.
struct Watching {
    /// The session's own id of the stream (the last token of its stream subject).
    host_stream: u32,
    /// Where a reset of the exchange goes.
    frames: mpsc::Sender<Incoming>,
    /// The last probe found the session no longer holding it.
    suspected: bool,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The session is open; it no longer holds these of its streams.
    Open(Vec<u32>),
    /// The session or its host is gone; its exchanges fail with this code.
    Gone(ErrorCode),
    /// No answer in time.
    Silent,
}

impl HostWatch {
    /// Watches the session whose stream subject `host_subject` is, for stream `id`; returns the
    /// session's prefix, to [`HostWatch::forget`] it by.
    pub fn watch(&self, host_subject: &str, id: u64, frames: mpsc::Sender<Incoming>) -> Option<String> {
        let (prefix, host_stream) = host_subject.rsplit_once(".st.")?;
        let host_stream = host_stream.parse().ok()?;
        let mut sessions = self.lock();
        let watched = sessions
            .entry(prefix.to_owned())
            .or_insert_with(|| Watched { streams: HashMap::new(), last_answer: Instant::now() });
        watched.streams.insert(id, Watching { host_stream, frames, suspected: false });
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
            Verdict::Open(gone) => {
                watched.last_answer = Instant::now();
                let lost = lost_exchanges(watched, &gone);
                if watched.streams.is_empty() {
                    sessions.remove(prefix);
                }
                drop(sessions);
                if !lost.is_empty() {
                    tracing::info!(
                        session = prefix,
                        exchanges = lost.len(),
                        "answers lost on the way; failing their exchanges"
                    );
                    metrics::counter!("ingress_answers_lost_total").increment(lost.len() as u64);
                }
                reset(lost, ErrorCode::Unavailable);
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
        reset(watched.streams.into_values(), code);
    }

    /// Counts the time this ingress could not probe (its own NATS connection was down) as
    /// answered: a host is not blamed for the ingress's outage.
    fn excuse_all(&self) {
        for watched in self.lock().values_mut() {
            watched.last_answer = Instant::now();
        }
    }

    /// The probes to send: each watched session and the streams awaited there.
    fn probes(&self) -> Vec<(String, Probe)> {
        let sessions = self.lock();
        let probe = |watched: &Watched| Probe { streams: watched.streams.values().map(|w| w.host_stream).collect() };
        sessions.iter().map(|(prefix, watched)| (prefix.clone(), probe(watched))).collect()
    }
}

/// Takes out of `watched` the exchanges a second probe in a row found `gone` from the session,
/// and marks those found gone once.
fn lost_exchanges(watched: &mut Watched, gone: &[u32]) -> Vec<Watching> {
    let mut lost = Vec::new();
    watched.streams.retain(|_, watching| {
        let missing = gone.contains(&watching.host_stream);
        if missing && watching.suspected {
            lost.push(Watching { host_stream: watching.host_stream, frames: watching.frames.clone(), suspected: true });
            return false;
        }
        watching.suspected = missing;
        true
    });
    lost
}

/// Resets the exchanges `watching` with `code`.
fn reset(watching: impl IntoIterator<Item = Watching>, code: ErrorCode) {
    for watching in watching {
        let _ = watching.frames.try_send((StreamFrame::Reset { code }, None));
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
        let probes = watch.probes();
        if probes.is_empty() {
            continue;
        }
        let verdicts =
            futures_util::future::join_all(probes.iter().map(|(prefix, asked)| probe(&nats, prefix, asked))).await;
        for ((prefix, _), verdict) in probes.iter().zip(verdicts) {
            watch.judge(prefix, verdict, host_timeout);
        }
    }
}

/// Asks session `prefix` whether it is open and still holds the streams `asked` about.
async fn probe(nats: &async_nats::Client, prefix: &str, asked: &Probe) -> Verdict {
    let payload = Bytes::from(tunnel_schemas::encode(asked));
    let request = async_nats::Request::new().payload(payload).timeout(Some(PROBE_INTERVAL));
    match nats.send_request(subjects::probe_subject(prefix), request).await {
        Ok(answer) => match tunnel_schemas::decode::<ProbeAnswer>(&answer.payload, MAX_FRAME_BYTES) {
            Ok(ProbeAnswer::Open { gone }) => Verdict::Open(gone),
            Err(_) => Verdict::Open(Vec::new()),
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

    fn next_reset(frames: &mut mpsc::Receiver<Incoming>) -> Option<StreamFrame> {
        frames.try_recv().ok().map(|(frame, _)| frame)
    }

    #[test]
    fn a_gone_session_fails_its_exchanges_with_the_code() {
        let watch = HostWatch::default();
        let (mut frames, prefix) = watched(&watch);
        assert_eq!(prefix, "_INBOX.host.n1.s1");
        watch.judge(&prefix, Verdict::Open(Vec::new()), Duration::ZERO);
        assert_eq!(next_reset(&mut frames), None, "an open session's exchanges go on");
        watch.judge(&prefix, Verdict::Gone(ErrorCode::TunnelDisconnected), Duration::ZERO);
        assert_eq!(next_reset(&mut frames), Some(StreamFrame::Reset { code: ErrorCode::TunnelDisconnected }));
        assert!(watch.probes().is_empty(), "the session is no longer probed");
    }

    #[test]
    fn silence_fails_only_after_the_host_timeout() {
        let watch = HostWatch::default();
        let (mut frames, prefix) = watched(&watch);
        watch.judge(&prefix, Verdict::Silent, Duration::from_secs(60));
        assert_eq!(next_reset(&mut frames), None, "silence within the timeout is tolerated");
        watch.judge(&prefix, Verdict::Silent, Duration::ZERO);
        assert_eq!(next_reset(&mut frames), Some(StreamFrame::Reset { code: ErrorCode::HostUnresponsive }));
    }

    #[test]
    fn an_exchange_the_session_no_longer_holds_fails_at_the_second_probe_in_a_row() {
        let watch = HostWatch::default();
        let (mut frames, prefix) = watched(&watch);
        assert_eq!(watch.probes(), vec![(prefix.clone(), Probe { streams: vec![7] })]);
        watch.judge(&prefix, Verdict::Open(vec![7]), Duration::ZERO);
        assert_eq!(next_reset(&mut frames), None, "the first may cross the answer on its way");
        watch.judge(&prefix, Verdict::Open(Vec::new()), Duration::ZERO);
        watch.judge(&prefix, Verdict::Open(vec![7]), Duration::ZERO);
        assert_eq!(next_reset(&mut frames), None, "not twice in a row");
        watch.judge(&prefix, Verdict::Open(vec![7]), Duration::ZERO);
        assert_eq!(next_reset(&mut frames), Some(StreamFrame::Reset { code: ErrorCode::Unavailable }));
        assert!(watch.probes().is_empty(), "nothing left to ask about");
    }

    #[test]
    fn a_session_is_probed_while_it_holds_an_exchange() {
        let watch = HostWatch::default();
        let (_frames, prefix) = watched(&watch);
        watch.forget(&prefix, 7);
        assert!(watch.probes().is_empty());
        assert_eq!(watch.watch("not-a-stream-subject", 1, mpsc::channel(1).0), None);
    }
}
