//! The live status view of `tunnel http` on a terminal, in the manner of ngrok's agent: the
//! public URLs, each tunnel's connection state, host and round trip, its counters and request
//! times, the last requests coloured by status class, and banners for what needs acting on (a
//! local service that cannot be reached, quotas).
//!
//! [`model`] is the state, fed by the client's [`Event`]s and by samples of its [`Stats`];
//! [`draw`] renders it with ratatui; [`run`] owns the terminal, redrawing at most every
//! [`FRAME`] and only when something changed; an idle view wakes up once per [`IDLE_FRAME`] to
//! load a few atomics. Off a terminal, with `--json` or `--plain`, `TUNNEL_NO_TUI` or `TERM=dumb`,
//! the client prints lines instead ([`wanted`]).

pub mod draw;
pub mod log;
pub mod model;
pub mod probe;
mod terminal;

use std::io::{self, IsTerminal};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::events::Event;
use crate::stats::Stats;
use model::Model;
use terminal::{Input, Screen};

/// The view redraws at most this often (and only when something changed).
pub const FRAME: Duration = Duration::from_millis(200);
/// How often an idle view samples the counters: once nothing changed in a frame, the view
/// wakes up this rarely until an event or a changed sample makes it busy again.
pub const IDLE_FRAME: Duration = Duration::from_secs(1);
/// Events queued between the tunnels and the view.
const EVENT_QUEUE: usize = 1024;
/// Probes of unreachable services whose answers wait for the view.
const PROBE_QUEUE: usize = 8;

/// One tunnel the view shows.
pub struct Source {
    /// What keys the tunnel (its configured name, or any label); shown until a name is granted.
    pub key: String,
    /// The local service.
    pub target: String,
    /// The tunnel's counters, also given to it in [`Options::stats`](crate::Options::stats).
    pub stats: Arc<Stats>,
    /// The tunnel's events; the view ends once every tunnel's have ended.
    pub events: mpsc::Receiver<Event>,
}

/// Whether the status view should run instead of printing lines: stdout is a terminal, neither
/// `--json` nor `--plain` was given, `TUNNEL_NO_TUI` is unset (or empty) and `TERM` is not `dumb`.
pub fn wanted(json: bool, plain: bool) -> bool {
    let no_tui = std::env::var_os("TUNNEL_NO_TUI").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|term| term == "dumb");
    !json && !plain && !no_tui && !dumb && io::stdout().is_terminal()
}

/// Shows `sources` on the terminal, and the last lines of `logs` if given ([`log::LogLines`]),
/// until all their event streams end (the tunnels stopped).
/// Ctrl-C cancels `shutdown`; the view stays up, saying so, while the tunnels say goodbye.
/// The terminal is given back on return and on panic; when it cannot be set up or written, the
/// view gives it back and prints the remaining events as lines, so the tunnels never wait on it.
pub async fn run(sources: Vec<Source>, logs: Option<mpsc::Receiver<String>>, shutdown: CancellationToken) {
    let mut model = Model::new(sources.iter().map(|s| (s.key.clone(), s.target.clone())));
    let stats: Vec<Arc<Stats>> = sources.iter().map(|s| s.stats.clone()).collect();
    let mut events = merge(sources);
    let screen = match Screen::take() {
        Ok(screen) => screen,
        Err(e) => return print_lines(events, &e).await,
    };
    let logs = logs.unwrap_or_else(|| mpsc::channel(1).1);
    if let Err(e) = show(screen, &mut model, (&mut events, logs), &stats, &shutdown).await {
        print_lines(events, &e).await;
    }
}

/// The view's loop, until the events end or the terminal fails.
async fn show(
    mut screen: Screen,
    model: &mut Model,
    (events, mut logs): (&mut mpsc::Receiver<(usize, Event)>, mpsc::Receiver<String>),
    stats: &[Arc<Stats>],
    shutdown: &CancellationToken,
) -> io::Result<()> {
    let mut input = terminal::input();
    let (probed_tx, mut probed) = mpsc::channel(PROBE_QUEUE);
    let mut last_draw = Instant::now();
    let mut next_frame = last_draw;
    loop {
        let frame = tokio::time::sleep_until(next_frame.into());
        tokio::select! {
            event = events.recv() => {
                let Some((tunnel, event)) = event else { break };
                if model.on_event(tunnel, &event, Instant::now()) {
                    let (target, probed) = (model.tunnels[tunnel].target.clone(), probed_tx.clone());
                    tokio::spawn(async move {
                        let _ = probed.try_send((tunnel, probe::reason(&target).await));
                    });
                }
            }
            Some(input) = input.recv() => {
                if input == Input::Quit {
                    shutdown.cancel();
                }
                model.touch();
            }
            () = shutdown.cancelled(), if !model.stopping => {
                model.stopping = true;
                model.touch();
            }
            Some((tunnel, reason)) = probed.recv() => model.unreachable_because(tunnel, reason),
            Some(line) = logs.recv() => model.on_log(line),
            () = frame => {
                for (tunnel, stats) in stats.iter().enumerate() {
                    model.on_sample(tunnel, stats.sample());
                }
                model.tick(tunnel_trail::filter::now_ms());
                let now = Instant::now();
                if model.take_dirty() {
                    screen.draw(|frame| draw::draw(frame, model, now))?;
                    last_draw = now;
                    next_frame = now + FRAME;
                } else {
                    next_frame = now + IDLE_FRAME;
                }
                continue;
            }
        }
        // Something happened: show it within a frame of the last drawing.
        next_frame = next_frame.min((last_draw + FRAME).max(Instant::now()));
    }
    Ok(())
}

/// After the view failed: says why, then prints every further event as a line.
async fn print_lines(mut events: mpsc::Receiver<(usize, Event)>, error: &io::Error) {
    use std::io::Write;
    eprintln!("status view unavailable ({error}); printing lines instead");
    while let Some((_, event)) = events.recv().await {
        let mut stdout = io::stdout().lock();
        let _ = writeln!(stdout, "{}", event.human());
        let _ = stdout.flush();
    }
}

/// One queue of `(tunnel index, event)` from the sources' queues; it ends when they all have.
fn merge(sources: Vec<Source>) -> mpsc::Receiver<(usize, Event)> {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    for (tunnel, mut source) in sources.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = source.events.recv().await {
                if tx.send((tunnel, event)).await.is_err() {
                    return;
                }
            }
        });
    }
    rx
}
