//! What the status view shows, as plain state: updated from the client's [`Event`]s and from
//! [`Sample`]s of its counters, read by [`super::draw`]. No terminal here, so all of it is tested
//! directly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::events::Event;
use crate::stats::Sample;

/// Requests kept for the list of last requests (a screen shows fewer).
pub const MAX_REQUESTS: usize = 100;
/// Request durations kept per tunnel for its percentiles.
pub const DURATION_WINDOW: usize = 1000;
/// Quota notices kept per tunnel (one per scope and quota; there are few of those).
pub const MAX_QUOTA_NOTES: usize = 8;
/// Log lines kept for the bottom of the screen.
pub const MAX_LOG_LINES: usize = 3;
/// The error code of a request whose local service could not be reached.
pub const UNREACHABLE: &str = "upstream_unreachable";

/// Everything on the screen.
#[derive(Debug, Default)]
pub struct Model {
    /// The tunnels, in the order they were given.
    pub tunnels: Vec<TunnelState>,
    /// The last requests of all tunnels, newest first.
    pub requests: VecDeque<RequestLine>,
    /// The client's last log lines (warnings and errors by default), oldest first.
    pub log: VecDeque<String>,
    /// Ctrl-C was pressed: the client is saying goodbye.
    pub stopping: bool,
    /// Something shown changed since the last [`Model::take_dirty`].
    dirty: bool,
}

/// One tunnel's state.
#[derive(Debug)]
pub struct TunnelState {
    /// Who keys the tunnel (the caller's label; its name once granted may differ).
    pub key: String,
    /// The granted name, once online.
    pub name: Option<String>,
    /// The public URL, once online.
    pub url: Option<String>,
    /// The local service.
    pub target: String,
    /// Whether the server records the exchanges.
    pub recording: bool,
    /// The local inspector's page, when it runs.
    pub inspector: Option<String>,
    /// The connection to the session-host.
    pub connection: Connection,
    /// The counters, as last sampled.
    pub sample: Sample,
    /// The last request durations, in milliseconds, oldest first.
    durations: VecDeque<f64>,
    /// Why the local service is unreachable, while its last request could not reach it; the
    /// reason is empty until known.
    pub unreachable: Option<String>,
    /// Quota warnings and refusals in force.
    pub quotas: Vec<QuotaNote>,
}

/// The connection state of a tunnel.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    /// Opening the first session.
    Connecting,
    /// A session is open.
    Online,
    /// The session was lost.
    Offline {
        /// Why.
        reason: String,
    },
    /// The next attempt is scheduled.
    Reconnecting {
        /// When it starts.
        at: Instant,
        /// Attempts since the last working session.
        attempt: u32,
    },
}

/// A quota warning or refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaNote {
    /// The quota is exceeded (requests refused), not only near.
    pub exceeded: bool,
    /// `tunnel` or `account`.
    pub scope: String,
    /// The quota's name.
    pub quota: String,
    /// Used so far in the period.
    pub used: u64,
    /// The limit.
    pub limit: u64,
    /// End of the period, Unix milliseconds.
    pub until_ms: u64,
}

/// One answered request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLine {
    /// Index of its tunnel in [`Model::tunnels`].
    pub tunnel: usize,
    /// Method token.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Status sent to the public client.
    pub status: u16,
    /// The tunnel error code, when the local service did not answer.
    pub error: Option<String>,
    /// Time spent in the local exchange, in milliseconds.
    pub duration_ms: f64,
}

/// Request time percentiles of a tunnel, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// The median.
    pub p50: f64,
    /// The 90th percentile.
    pub p90: f64,
}

impl Model {
    /// A model of the tunnels given as `(key, local service)`, all connecting.
    pub fn new<K: Into<String>, T: Into<String>>(tunnels: impl IntoIterator<Item = (K, T)>) -> Self {
        let tunnels = tunnels
            .into_iter()
            .map(|(key, target)| TunnelState {
                key: key.into(),
                name: None,
                url: None,
                target: target.into(),
                recording: false,
                inspector: None,
                connection: Connection::Connecting,
                sample: Sample::default(),
                durations: VecDeque::new(),
                unreachable: None,
                quotas: Vec::new(),
            })
            .collect();
        Self { tunnels, dirty: true, ..Self::default() }
    }

    /// Takes `event` of tunnel `tunnel` in, at `now`. Returns `true` when the tunnel's local
    /// service has just become unreachable (the caller may find out why, [`Model::unreachable_because`]).
    pub fn on_event(&mut self, tunnel: usize, event: &Event, now: Instant) -> bool {
        let Some(state) = self.tunnels.get_mut(tunnel) else { return false };
        self.dirty = true;
        match event {
            Event::Ready { url, name, target, recording, inspector } => {
                state.inspector.clone_from(inspector);
                state.url = Some(url.clone());
                state.name = Some(name.clone());
                target.clone_into(&mut state.target);
                state.recording = *recording;
                state.connection = Connection::Online;
            }
            Event::Resumed { url, name } => {
                state.url = Some(url.clone());
                state.name = Some(name.clone());
                state.connection = Connection::Online;
            }
            Event::Disconnected { reason } => state.connection = Connection::Offline { reason: reason.clone() },
            Event::Failed { code, message } => {
                state.connection = Connection::Offline { reason: format!("refused: {message} ({code})") };
            }
            Event::Reconnecting { attempt, delay_ms } => {
                let at = now + Duration::from_millis(*delay_ms);
                state.connection = Connection::Reconnecting { at, attempt: *attempt };
            }
            Event::Quota { level, scope, quota, used, limit, until_ms } => {
                let note = QuotaNote {
                    exceeded: level == "exceeded",
                    scope: scope.clone(),
                    quota: quota.clone(),
                    used: *used,
                    limit: *limit,
                    until_ms: *until_ms,
                };
                state.quotas.retain(|n| (n.scope.as_str(), n.quota.as_str()) != (scope.as_str(), quota.as_str()));
                if state.quotas.len() >= MAX_QUOTA_NOTES {
                    state.quotas.remove(0);
                }
                state.quotas.push(note);
            }
            Event::Request { method, target, status, error, duration_ms, .. } => {
                if state.durations.len() >= DURATION_WINDOW {
                    state.durations.pop_front();
                }
                state.durations.push_back(*duration_ms);
                if self.requests.len() >= MAX_REQUESTS {
                    self.requests.pop_back();
                }
                self.requests.push_front(RequestLine {
                    tunnel,
                    method: method.clone(),
                    target: target.clone(),
                    status: *status,
                    error: error.clone(),
                    duration_ms: *duration_ms,
                });
                let was = state.unreachable.is_some();
                if error.as_deref() == Some(UNREACHABLE) {
                    state.unreachable.get_or_insert_with(String::new);
                    return !was;
                }
                // Any other answer, even a tunnel error, means the service was reached.
                state.unreachable = None;
            }
        }
        false
    }

    /// Takes in a log line of the client.
    pub fn on_log(&mut self, line: String) {
        if self.log.len() >= MAX_LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(line);
        self.dirty = true;
    }

    /// Records why tunnel `tunnel`'s local service is unreachable, if it still is.
    pub fn unreachable_because(&mut self, tunnel: usize, reason: String) {
        if let Some(unreachable) = self.tunnels.get_mut(tunnel).and_then(|t| t.unreachable.as_mut()) {
            *unreachable = reason;
            self.dirty = true;
        }
    }

    /// Takes in a fresh sample of tunnel `tunnel`'s counters.
    pub fn on_sample(&mut self, tunnel: usize, sample: Sample) {
        if let Some(state) = self.tunnels.get_mut(tunnel)
            && state.sample != sample
        {
            state.sample = sample;
            self.dirty = true;
        }
    }

    /// Lets time pass: a reconnect countdown moves on, quota periods that ended are dropped.
    pub fn tick(&mut self, now_ms: u64) {
        for state in &mut self.tunnels {
            if matches!(state.connection, Connection::Reconnecting { .. }) {
                self.dirty = true;
            }
            let before = state.quotas.len();
            state.quotas.retain(|note| note.until_ms > now_ms);
            self.dirty |= state.quotas.len() != before;
        }
    }

    /// Marks the screen as needing a redraw (it was resized, or Ctrl-C was pressed).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Whether the screen must be redrawn; resets the flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }
}

impl TunnelState {
    /// The request time percentiles over the last [`DURATION_WINDOW`] requests; `None` before
    /// the first.
    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.durations.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.durations.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            // Nearest rank: the smallest value with at least q of the values at or below it.
            let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
            sorted[rank.min(sorted.len()) - 1]
        };
        Some(Percentiles { p50: at(0.5), p90: at(0.9) })
    }

    /// The name to show: the granted one, else the caller's key.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(status: u16, error: Option<&str>, duration_ms: f64) -> Event {
        Event::Request {
            request_id: "r".into(),
            method: "GET".into(),
            target: "/x".into(),
            status,
            error: error.map(str::to_owned),
            duration_ms,
        }
    }

    fn ready() -> Event {
        Event::Ready {
            url: "http://demo.t".into(),
            name: "demo".into(),
            target: "http://localhost:3000".into(),
            recording: false,
            inspector: None,
        }
    }

    #[test]
    fn follows_the_connection_state() {
        let now = Instant::now();
        let mut model = Model::new([("demo", "http://localhost:3000")]);
        assert_eq!(model.tunnels[0].connection, Connection::Connecting);
        model.on_event(0, &ready(), now);
        assert_eq!(model.tunnels[0].connection, Connection::Online);
        assert_eq!(model.tunnels[0].label(), "demo");
        model.on_event(0, &Event::Disconnected { reason: "gone".into() }, now);
        assert_eq!(model.tunnels[0].connection, Connection::Offline { reason: "gone".into() });
        model.on_event(0, &Event::Reconnecting { attempt: 3, delay_ms: 2000 }, now);
        let at = now + Duration::from_secs(2);
        assert_eq!(model.tunnels[0].connection, Connection::Reconnecting { at, attempt: 3 });
        model.on_event(0, &Event::Resumed { url: "http://demo.t".into(), name: "demo".into() }, now);
        assert_eq!(model.tunnels[0].connection, Connection::Online);
        assert!(!model.on_event(7, &ready(), now), "an unknown tunnel is ignored");
    }

    #[test]
    fn keeps_the_last_requests_newest_first_and_bounded() {
        let mut model = Model::new([("a", "t"), ("b", "t")]);
        for i in 0..(MAX_REQUESTS + 5) {
            model.on_event(i % 2, &request(200, None, i as f64), Instant::now());
        }
        assert_eq!(model.requests.len(), MAX_REQUESTS);
        assert_eq!(model.requests[0].duration_ms, (MAX_REQUESTS + 4) as f64);
        assert_eq!(model.requests[0].tunnel, 0);
        assert_eq!(model.requests[1].tunnel, 1);
    }

    #[test]
    fn percentiles_over_a_bounded_window() {
        let mut model = Model::new([("a", "t")]);
        assert_eq!(model.tunnels[0].percentiles(), None);
        for ms in 1..=10 {
            model.on_event(0, &request(200, None, f64::from(ms)), Instant::now());
        }
        assert_eq!(model.tunnels[0].percentiles(), Some(Percentiles { p50: 5.0, p90: 9.0 }));
        for _ in 0..DURATION_WINDOW {
            model.on_event(0, &request(200, None, 100.0), Instant::now());
        }
        assert_eq!(model.tunnels[0].percentiles(), Some(Percentiles { p50: 100.0, p90: 100.0 }));
    }

    #[test]
    fn unreachable_until_the_next_answer() {
        let mut model = Model::new([("a", "t")]);
        assert!(model.on_event(0, &request(502, Some(UNREACHABLE), 1.0), Instant::now()), "newly unreachable");
        assert!(!model.on_event(0, &request(502, Some(UNREACHABLE), 1.0), Instant::now()), "still unreachable");
        model.unreachable_because(0, "connection refused".into());
        assert_eq!(model.tunnels[0].unreachable.as_deref(), Some("connection refused"));
        model.on_event(0, &request(404, None, 1.0), Instant::now());
        assert_eq!(model.tunnels[0].unreachable, None);
        model.unreachable_because(0, "late".into());
        assert_eq!(model.tunnels[0].unreachable, None, "a late reason does not bring the banner back");
    }

    #[test]
    fn quota_notes_replace_each_other_and_expire() {
        let mut model = Model::new([("a", "t")]);
        let quota = |level: &str, until_ms| Event::Quota {
            level: level.into(),
            scope: "tunnel".into(),
            quota: "requests_per_minute".into(),
            used: 80,
            limit: 100,
            until_ms,
        };
        model.on_event(0, &quota("warning", 1000), Instant::now());
        model.on_event(0, &quota("exceeded", 2000), Instant::now());
        assert_eq!(model.tunnels[0].quotas.len(), 1);
        assert!(model.tunnels[0].quotas[0].exceeded);
        model.take_dirty();
        model.tick(1500);
        assert!(!model.take_dirty(), "nothing changed");
        model.tick(2000);
        assert!(model.take_dirty());
        assert!(model.tunnels[0].quotas.is_empty());
    }

    #[test]
    fn keeps_the_last_log_lines() {
        let mut model = Model::new([("a", "t")]);
        for i in 0..5 {
            model.on_log(format!("line {i}"));
        }
        assert_eq!(model.log, ["line 2", "line 3", "line 4"]);
    }

    #[test]
    fn redraws_only_on_change() {
        let mut model = Model::new([("a", "t")]);
        assert!(model.take_dirty(), "the first frame");
        assert!(!model.take_dirty());
        model.on_sample(0, Sample::default());
        assert!(!model.take_dirty(), "the same sample");
        model.on_sample(0, Sample { requests: 1, ..Sample::default() });
        assert!(model.take_dirty());
    }
}
