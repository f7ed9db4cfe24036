//! The live status view as a user sees it: the real `tunnel` binary on a terminal, a detached
//! tmux pane of 120×40, read back with `capture-pane` while requests go through the tunnel.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use tunnel_tests::{Cli, DEADLINE, TestEnv, Upstream, binary};

/// How often the pane is read while waiting for something to show.
const POLL: Duration = Duration::from_millis(50);

/// A tmux server of its own (its own socket, so tests never share one) with one 120×40 pane
/// running a plain `sh`; killed on drop.
struct Pane {
    socket: String,
}

impl Pane {
    /// Starts the server and the pane's shell, with `env` set for it.
    fn start(env: &[(&str, &Path)]) -> Self {
        let socket = format!("tunnel-status-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let pane = Self { socket };
        let status = Command::new("tmux")
            .args(["-L", &pane.socket, "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40", "-s", "view"])
            .arg("sh")
            .envs(env.iter().copied())
            .env("PS1", "$ ")
            .env_remove("TUNNEL_NO_TUI")
            .env_remove("TUNNEL_TOKEN")
            .env_remove("TUNNEL_NAME")
            .env_remove("TUNNEL_SERVER")
            .env_remove("TMUX")
            .status()
            .expect("tmux runs (install it: apt-get install tmux)");
        assert!(status.success(), "tmux new-session");
        pane
    }

    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("tmux runs");
        assert!(output.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Types `text` into the pane, then Enter.
    fn type_line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "view", "-l", text]);
        self.tmux(&["send-keys", "-t", "view", "Enter"]);
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "view"])
    }

    /// A tmux format of the pane (`#{alternate_on}`, …).
    fn format(&self, format: &str) -> String {
        self.tmux(&["display-message", "-p", "-t", "view", format]).trim().to_owned()
    }

    /// Reads the pane until `shows` holds, or fails with `what` and the last screen after
    /// [`DEADLINE`].
    async fn wait_for(&self, what: &str, shows: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let screen = self.screen();
            if shows(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the pane shows:\n{screen}");
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

/// The value under `column` in the traffic block (`requests`, `open`, …).
fn traffic(screen: &str, column: &str) -> Option<String> {
    let mut lines = screen.lines();
    let heading = lines.find(|line| line.starts_with("Traffic"))?;
    let values = lines.next()?;
    let at = heading.find(column)?;
    values.get(at..)?.split_whitespace().next().map(str::to_owned)
}

/// The line of the last-requests list for `path`, if listed.
fn request_line<'a>(screen: &'a str, path: &str) -> Option<&'a str> {
    screen.lines().find(|line| line.starts_with("GET") && line.split_whitespace().nth(1) == Some(path))
}

#[tokio::test]
async fn the_status_view_shows_the_tunnel_live_and_gives_the_terminal_back() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let port = upstream.port().to_string();
    let state = tempfile::tempdir().expect("temp dir");
    let config = state.path().join("config.toml");
    let pane = Pane::start(&[("TUNNEL_STATE_DIR", state.path()), ("TUNNEL_CONFIG", &config)]);
    let tunnel = binary("tunnel");
    let command = format!(
        "{} http {port} --name status-view --server {}; echo \"tunnel exited with status $?\"",
        tunnel.display(),
        env.server_url()
    );
    pane.type_line(&command);

    let url = format!("http://{}", env.public_host("status-view"));
    let screen = pane.wait_for("the public URL, online", |s| s.contains(&url) && s.contains("online")).await;
    assert!(screen.contains(&format!("{url} -> http://localhost:{port}")), "{screen}");
    assert_eq!(pane.format("#{alternate_on}"), "1", "the view is on the alternate screen");
    assert!(screen.lines().any(|l| l.starts_with("Host") && l.contains("host1")), "the host's node id:\n{screen}");

    for path in ["/echo", "/status/404", "/status/503"] {
        let response = env.request(Method::GET, "status-view", path).send().await.expect("response");
        assert_eq!(response.status(), path.strip_prefix("/status/").map_or(200, |s| s.parse().expect("code")));
    }
    let screen = pane
        .wait_for("the three requests", |s| {
            request_line(s, "/status/503").is_some() && traffic(s, "requests").as_deref() == Some("3")
        })
        .await;
    let listed = |path: &str| request_line(&screen, path).unwrap_or_else(|| panic!("{path} listed:\n{screen}"));
    assert!(listed("/echo").contains("200 OK"), "{screen}");
    assert!(listed("/status/404").contains("404 Not Found"), "{screen}");
    assert!(listed("/status/503").contains("503 Service Unavailable"), "{screen}");
    let row = |path: &str| screen.lines().position(|l| request_line(l, path).is_some());
    assert!(row("/status/503") < row("/echo"), "newest first:\n{screen}");
    assert!(screen.lines().any(|l| l.starts_with("Latency") && l.contains(" ms")), "a round trip:\n{screen}");
    assert_ne!(traffic(&screen, "in").as_deref(), Some("0"), "bytes in:\n{screen}");
    assert_ne!(traffic(&screen, "out").as_deref(), Some("0"), "bytes out:\n{screen}");

    // A narrower window: the list is laid out again, its status column moving left.
    let status_column = |screen: &str| request_line(screen, "/echo").and_then(|line| line.find("200 OK"));
    let wide = status_column(&screen).expect("the status column");
    pane.tmux(&["resize-window", "-t", "view", "-x", "90", "-y", "30"]);
    let screen = pane.wait_for("the view laid out again", |s| status_column(s).is_some_and(|c| c < wide)).await;
    assert!(screen.lines().all(|line| line.chars().count() <= 90), "fits 90 columns:\n{screen}");

    drop(upstream);
    // A kept-alive connection to the stopped service may still answer one last request.
    let deadline = Instant::now() + DEADLINE;
    while env
        .get("status-view", "/echo")
        .await
        .headers()
        .get("x-tunnel-error")
        .is_none_or(|e| e != "upstream_unreachable")
    {
        assert!(Instant::now() < deadline, "the stopped service is still reached");
    }
    let banner = format!("local service http://localhost:{port} unreachable: connection refused");
    let screen = pane.wait_for("the unreachable banner", |s| s.contains(&banner)).await;
    // The screen of docs/client.md: STATUS_VIEW_CAPTURE=<file> saves it.
    if let Some(file) = std::env::var_os("STATUS_VIEW_CAPTURE") {
        std::fs::write(file, &screen).expect("capture saved");
    }

    pane.tmux(&["send-keys", "-t", "view", "C-c"]);
    // The typed command holds the words too, followed by `$?`: wait for them followed by a number.
    let exited = |s: &str| {
        s.match_indices("tunnel exited with status ")
            .any(|(at, phrase)| s[at + phrase.len()..].starts_with(|c: char| c.is_ascii_digit()))
    };
    let screen = pane.wait_for("the client to exit", exited).await;
    assert!(screen.contains("tunnel exited with status 0"), "a clean exit:\n{screen}");
    assert!(!screen.contains("HTTP Requests"), "the view's screen is gone:\n{screen}");
    assert_eq!(pane.format("#{alternate_on}"), "0", "the alternate screen was left");
    assert_eq!(pane.format("#{cursor_flag}"), "1", "the cursor is shown");
    pane.type_line("stty -a | tr ' ;' '\\n\\n' | grep -x -e -icanon -e icanon -e -echo -e echo");
    let mode = |screen: &str, name: &str| {
        screen.lines().map(str::trim).find(|line| line.trim_start_matches('-') == name).map(str::to_owned)
    };
    let screen =
        pane.wait_for("the terminal modes", |s| mode(s, "icanon").is_some() && mode(s, "echo").is_some()).await;
    assert_eq!(mode(&screen, "icanon").as_deref(), Some("icanon"), "raw mode is off:\n{screen}");
    assert_eq!(mode(&screen, "echo").as_deref(), Some("echo"), "raw mode is off:\n{screen}");

    let mut again = Cli::start(&env.server_url(), &[&port, "--name", "status-view"]);
    assert_eq!(again.next_json().await["event"], "ready", "the goodbye released the name");
}

#[tokio::test]
async fn plain_lines_on_a_terminal_when_asked() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let state = tempfile::tempdir().expect("temp dir");
    let config = state.path().join("config.toml");
    let pane = Pane::start(&[("TUNNEL_STATE_DIR", state.path()), ("TUNNEL_CONFIG", &config)]);
    let command = format!(
        "{} http {} --name status-plain --server {} --plain; echo \"tunnel exited with status $?\"",
        binary("tunnel").display(),
        upstream.port(),
        env.server_url()
    );
    pane.type_line(&command);
    let url = format!("http://{}", env.public_host("status-plain"));
    pane.wait_for("the forwarding line", |s| s.contains(&format!("Forwarding  {url} ->"))).await;
    assert_eq!(pane.format("#{alternate_on}"), "0", "no view");
    env.get("status-plain", "/echo").await;
    pane.wait_for("the request line", |s| s.lines().any(|l| l.starts_with("GET     /echo") && l.contains("200"))).await;
    pane.tmux(&["send-keys", "-t", "view", "C-c"]);
    pane.wait_for("the client to exit", |s| s.contains("tunnel exited with status 0")).await;
}
