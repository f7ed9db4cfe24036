//! The status screen drawn from a [`Model`] with ratatui: banners, one block per tunnel, then
//! the last requests, newest first.

use std::time::Instant;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::model::{Connection, Model, RequestLine, TunnelState};

/// Width of the label column of the tunnel blocks.
const LABEL: usize = 16;
/// Width of the method column.
const METHOD: usize = 8;
/// Width of the status column (`503 Service Unavailable` fits).
const STATUS: usize = 26;
/// Width of the duration column.
const DURATION: usize = 11;

/// Draws `model` as it is at `now` on the whole of `frame`.
pub fn draw(frame: &mut Frame, model: &Model, now: Instant) {
    let mut top = vec![title(model), Line::default()];
    top.extend(banners(model));
    for state in &model.tunnels {
        if top.last().is_some_and(|line| line.width() != 0) {
            top.push(Line::default());
        }
        top.extend(tunnel_block(state, model.tunnels.len() > 1, now));
    }
    top.push(Line::default());
    let height = u16::try_from(top.len()).unwrap_or(u16::MAX);
    let log_height = u16::try_from(model.log.len()).unwrap_or(u16::MAX);
    let [head, requests, log] =
        Layout::vertical([Constraint::Length(height), Constraint::Fill(1), Constraint::Length(log_height)])
            .areas(frame.area());
    frame.render_widget(Paragraph::new(top), head);
    frame.render_widget(Paragraph::new(request_lines(model, requests)), requests);
    let log_lines: Vec<Line> =
        model.log.iter().map(|line| Line::styled(line.clone(), Style::new().fg(Color::DarkGray))).collect();
    frame.render_widget(Paragraph::new(log_lines), log);
}

fn title(model: &Model) -> Line<'static> {
    let hint = if model.stopping {
        Span::styled("stopping: releasing the name…", Style::new().fg(Color::Yellow))
    } else {
        Span::styled("(Ctrl-C to quit)", Style::new().add_modifier(Modifier::DIM))
    };
    Line::from(vec![
        Span::styled("tunnel", Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)),
        "  ".into(),
        hint,
    ])
}

/// One line per problem to act on: a local service that cannot be reached, quotas.
fn banners(model: &Model) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    for state in &model.tunnels {
        if let Some(reason) = &state.unreachable {
            let reason = if reason.is_empty() { String::new() } else { format!(": {reason}") };
            let text = format!(" local service {} unreachable{reason} ", state.target);
            lines.push(Line::from(Span::styled(text, Style::new().fg(Color::White).bg(Color::Red).bold())));
        }
        for note in &state.quotas {
            let until = tunnel_trail::filter::format_ms(note.until_ms);
            let (what, style) = if note.exceeded {
                ("quota exceeded, requests refused", Style::new().fg(Color::White).bg(Color::Red))
            } else {
                ("quota warning", Style::new().fg(Color::Black).bg(Color::Yellow))
            };
            let text = format!(" {what}: {} {} {}/{} until {until} ", note.scope, note.quota, note.used, note.limit);
            lines.push(Line::from(Span::styled(text, style)));
        }
    }
    lines
}

fn tunnel_block(state: &TunnelState, several: bool, now: Instant) -> Vec<Line<'static>> {
    let sample = &state.sample;
    let mut lines = Vec::new();
    if several {
        lines.push(row("Tunnel", vec![Span::styled(state.label().to_owned(), Style::new().bold())]));
    }
    lines.push(row("Session Status", vec![connection(&state.connection, now)]));
    let host = if sample.host.is_empty() { "-".to_owned() } else { sample.host.clone() };
    lines.push(row("Host", vec![host.into()]));
    let rtt = sample.rtt.map_or_else(|| "-".to_owned(), |rtt| format!("{:.2} ms", rtt.as_secs_f64() * 1000.0));
    lines.push(row("Latency", vec![rtt.into()]));
    let url = state.url.clone().unwrap_or_else(|| "…".to_owned());
    let recording = if state.recording { "  (recording)" } else { "" };
    lines.push(row("Forwarding", vec![url.into(), format!(" -> {}{recording}", state.target).into()]));
    if let Some(page) = &state.inspector {
        lines.push(row("Inspector", vec![page.clone().into()]));
    }
    let (p50, p90) = state.percentiles().map_or(("-".to_owned(), "-".to_owned()), |p| (millis(p.p50), millis(p.p90)));
    let counters = format!("{:<10}{:<8}{:<12}{:<12}{:<11}{}", "requests", "open", "in", "out", "p50", "p90");
    lines.push(row("Traffic", vec![Span::styled(counters, Style::new().add_modifier(Modifier::DIM))]));
    let values = format!(
        "{:<10}{:<8}{:<12}{:<12}{:<11}{}",
        sample.requests,
        sample.open_streams,
        bytes(sample.bytes_in),
        bytes(sample.bytes_out),
        p50,
        p90
    );
    lines.push(row("", vec![values.into()]));
    lines
}

fn row(label: &str, mut value: Vec<Span<'static>>) -> Line<'static> {
    let mut spans = vec![Span::styled(format!("{label:<LABEL$}"), Style::new().add_modifier(Modifier::DIM))];
    spans.append(&mut value);
    Line::from(spans)
}

fn connection(connection: &Connection, now: Instant) -> Span<'static> {
    match connection {
        Connection::Connecting => Span::styled("connecting…", Style::new().fg(Color::Yellow)),
        Connection::Online => Span::styled("online", Style::new().fg(Color::Green).bold()),
        Connection::Offline { reason } => Span::styled(format!("offline: {reason}"), Style::new().fg(Color::Red)),
        Connection::Reconnecting { at, attempt } => {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            Span::styled(format!("reconnecting in {secs}s (attempt {attempt})"), Style::new().fg(Color::Yellow))
        }
    }
}

/// The heading and as many of the last requests as fit in `area`.
fn request_lines(model: &Model, area: Rect) -> Vec<Line<'static>> {
    let several = model.tunnels.len() > 1;
    let mut lines = vec![
        Line::styled("HTTP Requests", Style::new().bold()),
        Line::styled("─".repeat(13), Style::new().add_modifier(Modifier::DIM)),
    ];
    let name_width = if several { model.tunnels.iter().map(|t| t.label().len()).max().unwrap_or(0) + 2 } else { 0 };
    let fixed = name_width + METHOD + STATUS + DURATION;
    let target_width = usize::from(area.width).saturating_sub(fixed).max(10);
    let room = usize::from(area.height).saturating_sub(lines.len());
    for request in model.requests.iter().take(room) {
        let name = if several {
            model.tunnels.get(request.tunnel).map(|t| format!("{:<name_width$}", t.label())).unwrap_or_default()
        } else {
            String::new()
        };
        lines.push(request_line(request, name, target_width));
    }
    lines
}

fn request_line(request: &RequestLine, name: String, target_width: usize) -> Line<'static> {
    let target = fit(&request.target, target_width.saturating_sub(1));
    let reason = http::StatusCode::from_u16(request.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let status = match &request.error {
        Some(code) => format!("{} {code}", request.status),
        None => format!("{} {reason}", request.status),
    };
    Line::from(vec![
        Span::styled(name, Style::new().add_modifier(Modifier::DIM)),
        format!("{:<METHOD$}", fit(&request.method, METHOD - 1)).into(),
        format!("{target:<target_width$}").into(),
        Span::styled(format!("{:<STATUS$}", fit(&status, STATUS - 1)), Style::new().fg(status_colour(request.status))),
        format!("{:>DURATION$}", millis(request.duration_ms)).into(),
    ])
}

/// The colour of a status class: 2xx green, 3xx cyan, 4xx yellow, 5xx red.
pub fn status_colour(status: u16) -> Color {
    match status / 100 {
        2 => Color::Green,
        3 => Color::Cyan,
        4 => Color::Yellow,
        5 => Color::Red,
        _ => Color::Reset,
    }
}

/// `text` cut to `width` characters, an ellipsis marking the cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn millis(ms: f64) -> String {
    if ms < 1000.0 { format!("{ms:.1} ms") } else { format!("{:.2} s", ms / 1000.0) }
}

/// A byte count in binary units.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;

    use std::time::Duration;

    use super::*;
    use crate::events::Event;
    use crate::stats::Sample;

    fn screen(model: &Model, width: u16, height: u16) -> Buffer {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
        terminal.draw(|frame| draw(frame, model, Instant::now())).expect("draws");
        terminal.backend().buffer().clone()
    }

    fn text(buffer: &Buffer) -> Vec<String> {
        let area = buffer.area;
        (0..area.height).map(|y| (0..area.width).map(|x| buffer[(x, y)].symbol()).collect()).collect()
    }

    /// The colour of the first cell of `needle` on the screen.
    fn colour_of(buffer: &Buffer, needle: &str) -> Color {
        let lines = text(buffer);
        let (y, line) = lines.iter().enumerate().find(|(_, l)| l.contains(needle)).expect(needle);
        let x = line[..line.find(needle).expect(needle)].chars().count();
        buffer[(u16::try_from(x).expect("x"), u16::try_from(y).expect("y"))].fg
    }

    fn request(target: &str, status: u16, error: Option<&str>) -> Event {
        Event::Request {
            request_id: "r".into(),
            method: "GET".into(),
            target: target.into(),
            status,
            error: error.map(str::to_owned),
            duration_ms: 1.5,
        }
    }

    fn online() -> Model {
        let mut model = Model::new([("demo", "http://localhost:3000")]);
        let ready = Event::Ready {
            url: "http://demo.tunnel.test:8080".into(),
            name: "demo".into(),
            target: "http://localhost:3000".into(),
            recording: false,
            inspector: Some("http://127.0.0.1:4040".into()),
        };
        model.on_event(0, &ready, Instant::now());
        let sample = Sample {
            requests: 4,
            open_streams: 1,
            bytes_in: 2048,
            bytes_out: 100,
            rtt: Some(Duration::from_micros(1250)),
            host: "host7".into(),
        };
        model.on_sample(0, sample);
        model
    }

    #[test]
    fn shows_the_tunnel_and_its_counters() {
        let screen = text(&screen(&online(), 120, 40)).join("\n");
        for needle in [
            "online",
            "host7",
            "1.25 ms",
            "http://demo.tunnel.test:8080 -> http://localhost:3000",
            "Inspector",
            "http://127.0.0.1:4040",
            "2.0 KiB",
            "100 B",
        ] {
            assert!(screen.contains(needle), "{needle} in\n{screen}");
        }
    }

    #[test]
    fn colours_requests_by_status_class() {
        let mut model = online();
        for (path, status) in [("/ok", 200), ("/moved", 301), ("/missing", 404), ("/broken", 500)] {
            model.on_event(0, &request(path, status, None), Instant::now());
        }
        let buffer = screen(&model, 120, 40);
        assert_eq!(colour_of(&buffer, "200 OK"), Color::Green);
        assert_eq!(colour_of(&buffer, "301 Moved Permanently"), Color::Cyan);
        assert_eq!(colour_of(&buffer, "404 Not Found"), Color::Yellow);
        assert_eq!(colour_of(&buffer, "500 Internal Server Error"), Color::Red);
        let lines = text(&buffer);
        let first = lines.iter().position(|l| l.contains("/broken")).expect("listed");
        assert!(first < lines.iter().position(|l| l.contains("/ok")).expect("listed"), "newest first");
    }

    #[test]
    fn an_unreachable_service_gets_a_red_banner() {
        let mut model = online();
        model.on_event(0, &request("/", 502, Some("upstream_unreachable")), Instant::now());
        model.unreachable_because(0, "connection refused".into());
        let buffer = screen(&model, 120, 40);
        let banner = "local service http://localhost:3000 unreachable: connection refused";
        assert!(text(&buffer).iter().any(|l| l.contains(banner)));
        assert_eq!(buffer[(0, 2)].bg, Color::Red);
        assert_eq!(colour_of(&buffer, "502 upstream_unreachable"), Color::Red);
    }

    #[test]
    fn fits_a_small_terminal_and_several_tunnels() {
        let mut model = Model::new([("web", "http://localhost:3000"), ("api", "http://localhost:4000")]);
        for i in 0..50 {
            model.on_event(i % 2, &request(&"/long".repeat(40), 200, None), Instant::now());
        }
        let lines = text(&screen(&model, 40, 12));
        assert_eq!(lines.len(), 12);
        assert!(lines.iter().any(|l| l.contains("web")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains("api")), "{lines:#?}");
    }

    #[test]
    fn quota_banners_warn_in_yellow_and_refuse_in_red() {
        let mut model = online();
        let quota = |level: &str, quota: &str| Event::Quota {
            level: level.into(),
            scope: "tunnel".into(),
            quota: quota.into(),
            used: 85,
            limit: 100,
            until_ms: u64::MAX / 2,
        };
        model.on_event(0, &quota("warning", "requests_per_minute"), Instant::now());
        model.on_event(0, &quota("exceeded", "bytes_per_day"), Instant::now());
        let buffer = screen(&model, 120, 40);
        let lines = text(&buffer);
        let warning = lines.iter().position(|l| l.contains("quota warning: tunnel requests_per_minute 85/100"));
        let exceeded = lines.iter().position(|l| l.contains("quota exceeded, requests refused: tunnel bytes_per_day"));
        let (Some(warning), Some(exceeded)) = (warning, exceeded) else { panic!("both banners: {lines:#?}") };
        assert_eq!(buffer[(0, u16::try_from(warning).expect("y"))].bg, Color::Yellow);
        assert_eq!(buffer[(0, u16::try_from(exceeded).expect("y"))].bg, Color::Red);
    }

    #[test]
    fn log_lines_at_the_bottom() {
        let mut model = online();
        model.on_log("WARN tunnel not saved".into());
        let lines = text(&screen(&model, 120, 40));
        assert!(lines[39].starts_with("WARN tunnel not saved"), "{lines:#?}");
    }

    #[test]
    fn formats_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(millis(12.34), "12.3 ms");
        assert_eq!(millis(2500.0), "2.50 s");
        assert_eq!(fit("abcdef", 4), "abc…");
    }
}
