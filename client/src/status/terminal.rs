//! The terminal while the view runs: raw mode, the alternate screen and a hidden cursor, given
//! back on every way out (the view's end, an error, a panic); keys and resizes are read on a
//! thread of their own.

use std::io::{self, Stdout};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::cursor::{Hide, Show};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode};
use ratatui::{Frame, Terminal};
use tokio::sync::mpsc;

/// Input events queued for the view; keys typed faster than it reads them are dropped.
const INPUT_QUEUE: usize = 16;

/// Whether the terminal is in the view's state, so that it is given back exactly once.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The terminal, in the view's state until dropped.
pub struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

/// What the user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Ctrl-C: stop the client.
    Quit,
    /// The window changed size.
    Resize,
}

impl Screen {
    /// Puts the terminal in raw mode on the alternate screen, cursor hidden, making sure a panic
    /// gives it back first.
    ///
    /// # Errors
    /// When the terminal refuses; it is given back before returning.
    pub fn take() -> io::Result<Self> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                give_back();
                previous(info);
            }));
        });
        TAKEN.store(true, Ordering::SeqCst);
        let taken = enable_raw_mode()
            .and_then(|()| execute!(io::stdout(), EnterAlternateScreen, Hide))
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        match taken {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                give_back();
                Err(e)
            }
        }
    }

    /// Draws one frame; only cells that changed since the last one are written.
    ///
    /// # Errors
    /// When the terminal cannot be written.
    pub fn draw(&mut self, render: impl FnOnce(&mut Frame)) -> io::Result<()> {
        self.terminal.draw(render).map(drop)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        give_back();
    }
}

/// Raw mode off, main screen back, cursor shown; once, whoever calls first.
fn give_back() {
    if TAKEN.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    }
}

/// Starts reading the terminal's input on a thread, which ends with the process (or when the
/// receiver is gone and a key comes).
pub fn input() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    let spawned = std::thread::Builder::new().name("tunnel-input".into()).spawn(move || {
        while let Ok(event) = event::read() {
            let input = match event {
                Event::Key(key)
                    if key.kind == KeyEventKind::Press
                        && key.modifiers.contains(KeyModifiers::CONTROL)
                        && matches!(key.code, KeyCode::Char('c' | 'C')) =>
                {
                    Input::Quit
                }
                Event::Resize(..) => Input::Resize,
                _ => continue,
            };
            if tx.blocking_send(input).is_err() {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no keyboard input for the status view");
    }
    rx
}
