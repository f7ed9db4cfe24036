//! Log lines while the view holds the terminal: written to stderr they would tear the screen,
//! so they go to the view instead, which shows the last few.

use std::io;

use tokio::sync::mpsc;

/// Log lines queued for the view; more are dropped until it catches up.
const LOG_QUEUE: usize = 64;
/// The longest log line kept, in bytes; the rest is cut.
pub const MAX_LINE_BYTES: usize = 1024;

/// A `tracing_subscriber` writer factory sending each log line to the view.
#[derive(Debug, Clone)]
pub struct LogLines(mpsc::Sender<String>);

impl LogLines {
    /// The writer factory, and the queue the view reads (give it to [`super::run`]).
    pub fn new() -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(LOG_QUEUE);
        (Self(tx), rx)
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogLines {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { line: Vec::new(), to: self.0.clone() }
    }
}

/// Collects one formatted event; sends it as a line when dropped.
#[derive(Debug)]
pub struct LineWriter {
    line: Vec<u8>,
    to: mpsc::Sender<String>,
}

impl io::Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        let line = line.trim();
        if !line.is_empty() {
            let _ = self.to.try_send(line.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[test]
    fn one_bounded_line_per_event() {
        let (lines, mut received) = LogLines::new();
        let mut writer = lines.make_writer();
        writeln!(writer, " WARN tunnel not saved").expect("written");
        drop(writer);
        assert_eq!(received.try_recv().ok().as_deref(), Some("WARN tunnel not saved"));
        let mut writer = lines.make_writer();
        writer.write_all(&vec![b'x'; 3 * MAX_LINE_BYTES]).expect("written");
        drop(writer);
        assert_eq!(received.try_recv().map(|l| l.len()).ok(), Some(MAX_LINE_BYTES));
        for _ in 0..2 * LOG_QUEUE {
            write!(lines.make_writer(), "more").expect("written");
        }
        assert_eq!(std::iter::from_fn(|| received.try_recv().ok()).count(), LOG_QUEUE, "bounded");
    }
}
