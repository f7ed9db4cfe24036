//! The `tunnel` binary as a user runs it, its stdout piped so it prints JSON lines.

use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::{DEADLINE, binary, within};

/// A running `tunnel http …`; killed on drop.
pub struct Cli {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Cli {
    /// Starts `tunnel http <args> --server <server>`.
    ///
    /// # Panics
    /// When it cannot start.
    pub fn start(server: &str, args: &[&str]) -> Self {
        let mut command = Command::new(binary("tunnel"));
        command.arg("http").args(args).args(["--server", server]).env("TUNNEL_CONFIG", "/nonexistent/config.toml");
        Self::spawn(command.stderr(Stdio::null()))
    }

    /// Starts `tunnel <args>` with `<dir>/config.toml` as its settings file, `dir` as its state
    /// directory and its stderr written to `<dir>/stderr`; `env` is set, and the variables a
    /// developer's shell may hold are not.
    ///
    /// # Panics
    /// When it cannot start.
    pub fn start_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let stderr = std::fs::File::create(dir.join("stderr")).expect("stderr file");
        let mut command = Command::new(binary("tunnel"));
        command
            .args(args)
            .env("TUNNEL_CONFIG", dir.join("config.toml"))
            .env("TUNNEL_STATE_DIR", dir)
            .envs(env.iter().copied())
            .stderr(stderr);
        for key in ["TUNNEL_SERVER", "TUNNEL_TOKEN", "TUNNEL_NAME"] {
            if !env.iter().any(|(set, _)| *set == key) {
                command.env_remove(key);
            }
        }
        Self::spawn(&mut command)
    }

    fn spawn(command: &mut Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).kill_on_drop(true).spawn().expect("tunnel starts");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Self { child, lines }
    }

    /// The next JSON line it prints.
    ///
    /// # Panics
    /// When none comes within [`DEADLINE`] or it is not JSON.
    pub async fn next_json(&mut self) -> serde_json::Value {
        let line = within(DEADLINE, "a line from tunnel", self.lines.next_line()).await.expect("read").expect("a line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The next JSON line whose `event` is `event`, skipping the others (requests, …).
    ///
    /// # Panics
    /// As [`Cli::next_json`].
    pub async fn next_event(&mut self, event: &str) -> serde_json::Value {
        loop {
            let line = self.next_json().await;
            if line["event"] == event {
                return line;
            }
        }
    }

    /// Sends it `signal`.
    ///
    /// # Panics
    /// When it is not running.
    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id().expect("running")).expect("pid fits");
        kill(Pid::from_raw(pid), signal).expect("signal sent");
    }

    /// Its exit code, once it exits.
    ///
    /// # Panics
    /// When it does not exit within [`DEADLINE`].
    pub async fn exit_code(&mut self) -> Option<i32> {
        within(DEADLINE, "tunnel to exit", self.child.wait()).await.expect("wait").code()
    }
}
