//! A headless Chromium driven over the Chrome DevTools Protocol, for the inspector's page test.
//!
//! A minimal client over `tokio-tungstenite` (already a dependency) rather than `chromiumoxide`:
//! the test needs five commands (navigate, evaluate, screenshot), and chromiumoxide compiles the
//! whole generated protocol (its `chromiumoxide_cdp` crate is hundreds of thousands of lines),
//! which would cost every CI build minutes on its two cores for those five calls.
//!
//! The browser is `$CHROMIUM_BIN`, else `chromium`, started with its own temporary profile and
//! killed on drop.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::{DEADLINE, within};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Time between two looks at the page while waiting for it.
const POLL: Duration = Duration::from_millis(50);

/// A running headless Chromium with one page.
pub struct Browser {
    _child: Child,
    _profile: tempfile::TempDir,
    page: Socket,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium and connects to its first page.
    ///
    /// # Panics
    /// When Chromium cannot start (install it: `apt-get install chromium`, or set
    /// `CHROMIUM_BIN`) or does not open its DevTools endpoint within [`DEADLINE`].
    pub async fn launch() -> Self {
        let bin = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--window-size=1400,860",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} ({e}): install chromium or set CHROMIUM_BIN"));
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let endpoint = within(DEADLINE, "chromium's DevTools endpoint", async {
            while let Some(line) = stderr.next_line().await.expect("chromium stderr") {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium exited before opening DevTools");
        })
        .await;
        // Chromium keeps writing to stderr; a full pipe would stall it.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let authority = endpoint.trim_start_matches("ws://").split('/').next().expect("authority").to_owned();
        let page_url = within(DEADLINE, "chromium's page", async {
            loop {
                let targets: Vec<Value> = match reqwest::get(format!("http://{authority}/json/list")).await {
                    Ok(response) => response.json().await.unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                if let Some(url) =
                    targets.iter().find(|t| t["type"] == "page").and_then(|t| t["webSocketDebuggerUrl"].as_str())
                {
                    return url.to_owned();
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        let (page, _) = within(DEADLINE, "the page socket", tokio_tungstenite::connect_async(&page_url))
            .await
            .expect("page socket");
        Self { _child: child, _profile: profile, page, next_id: 0 }
    }

    /// Sends the command `method` with `params` and returns its result.
    ///
    /// # Panics
    /// When the browser answers with an error or not within [`DEADLINE`].
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.page.send(Message::Text(command.to_string().into())).await.expect("command sent");
        let page = &mut self.page;
        within(DEADLINE, method, async move {
            loop {
                let message = page.next().await.expect("page socket open").expect("page message");
                let Message::Text(text) = message else { continue };
                let answer: Value = serde_json::from_str(&text).expect("CDP JSON");
                if answer["id"] == id {
                    assert!(answer.get("error").is_none(), "{method}: {}", answer["error"]);
                    return answer["result"].clone();
                }
            }
        })
        .await
    }

    /// Loads `url`.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// The value of the JavaScript `expression` in the page (promises awaited).
    ///
    /// # Panics
    /// When the expression throws.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let result = self.call("Runtime.evaluate", params).await;
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {}", result["exceptionDetails"]);
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page, looking every [`POLL`], and returns
    /// its value.
    ///
    /// # Panics
    /// When it is not within [`DEADLINE`].
    pub async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let guarded = format!("(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let value = self.eval(&guarded).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out after {DEADLINE:?} waiting for {what}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Clicks the first element `selector` matches.
    ///
    /// # Panics
    /// When nothing matches.
    pub async fn click(&mut self, selector: &str) {
        let expression = format!(
            "(() => {{ const e = document.querySelector({selector:?}); if (!e) return false; e.click(); return true; }})()"
        );
        assert_eq!(self.eval(&expression).await, Value::Bool(true), "nothing to click at {selector}");
    }

    /// A PNG of the page as it is shown, written to `path`.
    ///
    /// # Panics
    /// When it cannot be taken or written.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png =
            base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().expect("data")).expect("base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}
