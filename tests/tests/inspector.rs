//! The local inspector of `tunnel http`, as a developer uses it: the real binary against a real
//! system, its JSON API (list, filters, bodies and their cap, the ring's bound, errors, the Host
//! guard, replay with changes and the comparison, the server's recordings), and its page driven
//! in a headless Chromium.

use std::process::Stdio;
use std::time::Duration;

use axum::response::IntoResponse;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tunnel_tests::cdp::Browser;
use tunnel_tests::{DEADLINE, TestEnv, Versioned, binary, within};

/// The local service: `/item` (see [`Versioned::item`]), `/seen` (what it was sent, and its
/// version), `/big?N` (N bytes), `/missing` (404), anything else echoed.
async fn answer(service: Versioned, request: axum::extract::Request) -> axum::response::Response {
    let (method, uri) = (request.method().to_string(), request.uri().clone());
    let test_header = request.headers().get("x-test").map(|v| v.to_str().unwrap_or_default().to_owned());
    let body = axum::body::to_bytes(request.into_body(), 16 << 20).await.unwrap_or_default();
    match uri.path() {
        "/item" => service.item(),
        "/seen" => {
            let json = json!({
                "method": method, "path": uri.to_string(), "x_test": test_header,
                "body": String::from_utf8_lossy(&body), "version": if service.changed() { 2 } else { 1 },
            });
            ([("content-type", "application/json")], json.to_string()).into_response()
        }
        "/big" => {
            let size: usize = uri.query().and_then(|q| q.parse().ok()).unwrap_or(0);
            vec![b'b'; size].into_response()
        }
        "/missing" => (axum::http::StatusCode::NOT_FOUND, "no such thing").into_response(),
        _ => body.into_response(),
    }
}

/// A running `tunnel http` with its inspector on a free port; killed on drop.
struct Inspected {
    _child: Child,
    _lines: Lines<BufReader<ChildStdout>>,
    _state: tempfile::TempDir,
    /// The ready event.
    ready: Value,
    /// The inspector's base URL (`http://127.0.0.1:<port>`).
    base: String,
    http: reqwest::Client,
}

impl Inspected {
    async fn start(env: &TestEnv, port: u16, name: &str, extra: &[&str]) -> Self {
        let state = tempfile::tempdir().expect("state dir");
        let mut child = Command::new(binary("tunnel"))
            .args(["http", &port.to_string(), "--name", name, "--server", &env.server_url()])
            .args(if extra.contains(&"--inspect-addr") { &[][..] } else { &["--inspect-addr", "127.0.0.1:0"][..] })
            .args(extra)
            .env("TUNNEL_STATE_DIR", state.path())
            .env("TUNNEL_CONFIG", state.path().join("config.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("tunnel starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let ready = loop {
            let line = within(DEADLINE, "the ready event", lines.next_line()).await.expect("read").expect("a line");
            let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if event["event"] == "ready" {
                break event;
            }
        };
        let base = ready["inspector"].as_str().unwrap_or_else(|| panic!("no inspector in {ready}")).to_owned();
        Self { _child: child, _lines: lines, _state: state, ready, base, http: reqwest::Client::new() }
    }

    fn port(&self) -> u16 {
        self.base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in the inspector URL")
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = within(DEADLINE, "the inspector", self.http.get(format!("{}{path}", self.base)).send())
            .await
            .expect("inspector answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn replay(&self, body: Value) -> (u16, Value) {
        let request = self.http.post(format!("{}/api/replay", self.base)).json(&body).send();
        let response = within(DEADLINE, "a replay", request).await.expect("inspector answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The targets of the rows `/api/requests?<query>` selects, newest first.
    async fn targets(&self, query: &str) -> Vec<String> {
        let (status, list) = self.get(&format!("/api/requests?{query}")).await;
        assert_eq!(status, 200, "{list}");
        ids(list["requests"].as_array().map_or(&[][..], Vec::as_slice))
    }

    /// The rows of `/api/requests?<query>` once `done` holds for them.
    async fn rows_until(&self, query: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let poll = async {
            loop {
                let (status, list) = self.get(&format!("/api/requests?{query}")).await;
                assert_eq!(status, 200, "{list}");
                let rows = list["requests"].as_array().cloned().unwrap_or_default();
                if done(&rows) {
                    return rows;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        within(DEADLINE, what, poll).await
    }

    /// The request id of the newest exchange to `target`, once it is listed.
    async fn id_of(&self, target: &str) -> String {
        let rows = self.rows_until("", target, |rows| rows.iter().any(|row| row["target"] == target)).await;
        let row = rows.iter().find(|row| row["target"] == target).expect("listed");
        row["id"].as_str().expect("id").to_owned()
    }

    /// The exchange `id` once it is closed (its response body ended).
    async fn closed(&self, id: &str) -> Value {
        let poll = async {
            loop {
                let (status, detail) = self.get(&format!("/api/requests/{id}")).await;
                if status == 200 && detail["open"] == false {
                    return detail;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        within(DEADLINE, "the exchange to close", poll).await
    }
}

async fn send(env: &TestEnv, method: Method, name: &str, path: &str, body: &'static str) -> reqwest::Response {
    let request = env.request(method, name, path).body(body).send();
    within(DEADLINE, "a response", request).await.expect("response")
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter().map(|row| row["target"].as_str().unwrap_or_default().to_owned()).collect()
}

#[tokio::test]
async fn lists_exchanges_with_filters_bodies_and_typed_errors() {
    let env = TestEnv::start().await;
    let port = Versioned::default().start(answer).await;
    let inspector = Inspected::start(&env, port, "insp-list", &[]).await;
    assert!(inspector.ready["url"].is_string(), "the ready event keeps its fields: {}", inspector.ready);
    send(&env, Method::GET, "insp-list", "/item?x=1", "").await;
    send(&env, Method::POST, "insp-list", "/seen", r#"{"hello":"world"}"#).await;
    let request_id = inspector.id_of("/seen").await;
    assert_eq!(send(&env, Method::GET, "insp-list", "/missing", "").await.status(), 404);
    let rows = inspector.rows_until("", "three rows", |rows| rows.len() == 3).await;
    assert_eq!(ids(&rows), ["/missing", "/seen", "/item?x=1"], "newest first");
    assert!(rows.iter().all(|row| row["sources"]["client"] == true && row["sources"]["server"] == false));

    assert_eq!(inspector.targets("method=post").await, ["/seen"]);
    assert_eq!(inspector.targets("status=2xx").await, ["/seen", "/item?x=1"]);
    assert_eq!(inspector.targets("status=404").await, ["/missing"]);
    assert_eq!(inspector.targets("path=/it").await, ["/item?x=1"]);
    assert_eq!(inspector.targets("path=/s*n").await, ["/seen"]);

    let detail = inspector.closed(&request_id).await;
    assert_eq!(detail["exchange"]["request"]["body"], r#"{"hello":"world"}"#);
    assert_eq!(detail["exchange"]["request"]["cut"], false);
    let answer: Value =
        serde_json::from_str(detail["exchange"]["response"]["body"].as_str().expect("text")).expect("json");
    assert_eq!(answer["body"], r#"{"hello":"world"}"#);
    let raw = inspector.http.get(format!("{}/api/requests/{request_id}/body/response", inspector.base)).send().await;
    let raw = raw.expect("raw body");
    assert_eq!(raw.headers()["content-type"], "application/json");

    let (status, error) = inspector.get("/api/requests/no-such-id").await;
    assert_eq!((status, error["error"].as_str()), (404, Some("not_found")));
    let (status, error) = inspector.get("/api/requests?status=abc").await;
    assert_eq!((status, error["error"].as_str()), (400, Some("bad_filter")));
    let (status, error) = inspector.replay(json!({ "id": "no-such-id" })).await;
    assert_eq!((status, error["error"].as_str()), (404, Some("not_found")));
    let (status, error) = inspector.replay(json!({ "identity": 1 })).await;
    assert_eq!((status, error["error"].as_str()), (400, Some("bad_request")));
    let (status, error) = inspector.replay(json!({ "id": request_id, "ignore_json_paths": ["$..["] })).await;
    assert_eq!((status, error["error"].as_str()), (400, Some("invalid_json_path")));
    let form = inspector.http.post(format!("{}/api/replay", inspector.base)).body(format!("id={request_id}")).send();
    assert_eq!(form.await.expect("answer").status(), 415, "a form post (no preflight) is refused");
}

#[tokio::test]
async fn the_ring_keeps_the_newest_exchanges_only() {
    let env = TestEnv::start().await;
    let port = Versioned::default().start(answer).await;
    let inspector = Inspected::start(&env, port, "insp-ring", &["--inspect-capacity", "5"]).await;
    send(&env, Method::GET, "insp-ring", "/n/0", "").await;
    let first_id = inspector.id_of("/n/0").await;
    for i in 1..8 {
        send(&env, Method::GET, "insp-ring", &format!("/n/{i}"), "").await;
    }
    let rows = inspector
        .rows_until("", "the last request listed", |rows| rows.first().is_some_and(|r| r["target"] == "/n/7"))
        .await;
    assert_eq!(ids(&rows), ["/n/7", "/n/6", "/n/5", "/n/4", "/n/3"]);
    assert_eq!(inspector.get(&format!("/api/requests/{first_id}")).await.0, 404, "the oldest left the ring");
}

#[tokio::test]
async fn bodies_are_kept_up_to_the_cap_and_marked_cut() {
    let env = TestEnv::start().await;
    let port = Versioned::default().start(answer).await;
    let inspector = Inspected::start(&env, port, "insp-cap", &["--inspect-body-cap", "1000"]).await;
    let upload = "u".repeat(5000);
    let request = env.request(Method::POST, "insp-cap", "/echo").body(upload.clone()).send();
    let echoed = within(DEADLINE, "an echo", request).await.expect("response");
    assert_eq!(echoed.text().await.expect("body"), upload, "the tunnel carries every byte");
    let id = inspector.id_of("/echo").await;
    let detail = inspector.closed(&id).await;
    for side in ["request", "response"] {
        let message = &detail["exchange"][side];
        assert_eq!((message["size"].as_u64(), message["cut"].as_bool()), (Some(5000), Some(true)), "{side}");
        assert_eq!(message["body"].as_str().map(str::len), Some(1000), "{side}");
    }
    // A streamed response (larger than a message) is teed, not buffered.
    let big = env.get("insp-cap", "/big?3000000").await;
    assert_eq!(big.bytes().await.expect("body").len(), 3_000_000);
    let id = inspector.id_of("/big?3000000").await;
    let detail = inspector.closed(&id).await;
    let response = &detail["exchange"]["response"];
    assert_eq!((response["size"].as_u64(), response["cut"].as_bool()), (Some(3_000_000), Some(true)));
    assert_eq!(response["body"].as_str().map(str::len), Some(1000));
}

#[tokio::test]
async fn the_guard_refuses_other_hosts_and_origins() {
    let env = TestEnv::start().await;
    let port = Versioned::default().start(answer).await;
    let inspector = Inspected::start(&env, port, "insp-guard", &[]).await;
    let at = |host: String| inspector.http.get(format!("{}/api/requests", inspector.base)).header("host", host).send();
    let rebound = at(format!("evil.example:{}", inspector.port())).await.expect("answer");
    assert_eq!(rebound.status(), 403);
    assert_eq!(rebound.json::<Value>().await.expect("json")["error"], "forbidden_host");
    assert_eq!(at(format!("localhost:{}", inspector.port())).await.expect("answer").status(), 200);
    let page = inspector.http.get(&inspector.base).header("host", "attacker.test").send().await.expect("answer");
    assert_eq!(page.status(), 403, "the page too");
    let posted = inspector
        .http
        .post(format!("{}/api/replay", inspector.base))
        .header("origin", "http://evil.example")
        .json(&json!({ "id": "x" }))
        .send()
        .await
        .expect("answer");
    assert_eq!(posted.status(), 403);
    assert_eq!(posted.json::<Value>().await.expect("json")["error"], "forbidden_origin");
}

#[tokio::test]
async fn replays_compare_with_the_original_and_take_changes() {
    let env = TestEnv::start().await;
    let service = Versioned::default();
    let port = service.start(answer).await;
    let inspector = Inspected::start(&env, port, "insp-replay", &[]).await;
    assert_eq!(env.get("insp-replay", "/item").await.status(), 200);
    let id = inspector.id_of("/item").await;
    inspector.closed(&id).await;

    let (status, same) = inspector.replay(json!({ "id": id, "ignore_json_paths": ["$.id"] })).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same["comparison"]["mismatches"], json!([]), "{same}");
    assert_eq!(same["exchange"]["replay_of"], id.as_str());
    assert_eq!(same["exchange"]["sources"]["replay"], true);
    let (_, differs) = inspector.replay(json!({ "id": id })).await;
    assert_eq!(differs["comparison"]["mismatches"][0]["paths"][0]["path"], "$.id", "{differs}");

    service.change();
    let (_, changed) = inspector.replay(json!({ "id": id, "ignore_json_paths": ["$.id"] })).await;
    let paths = &changed["comparison"]["mismatches"][0]["paths"];
    assert_eq!(paths, &json!([{ "path": "$.price", "recorded": 10, "replayed": 12 }]), "{changed}");

    let changes = json!({
        "method": "PUT", "path": "/seen?v=2", "headers": [["x-test", "yes"]], "body": "new body",
    });
    let (status, sent) = inspector.replay(json!({ "id": id, "changes": changes })).await;
    assert_eq!(status, 200, "{sent}");
    let seen: Value =
        serde_json::from_str(sent["exchange"]["exchange"]["response"]["body"].as_str().expect("text")).expect("json");
    assert_eq!(
        seen,
        json!({ "method": "PUT", "path": "/seen?v=2", "x_test": "yes", "body": "new body", "version": 2 })
    );
    let replays = inspector.rows_until("source=replay", "four replays", |rows| rows.len() == 4).await;
    assert!(replays.iter().all(|row| row["replay_of"] == id.as_str()));
    let (status, error) = inspector.replay(json!({ "id": id, "changes": { "path": "no-slash" } })).await;
    assert_eq!((status, error["error"].as_str()), (400, Some("bad_request")));
}

#[tokio::test]
async fn recorded_exchanges_of_the_server_are_merged_in() {
    let env = TestEnv::start().await;
    let port = Versioned::default().start(answer).await;
    let inspector = Inspected::start(&env, port, "insp-rec", &["--record"]).await;
    assert_eq!(inspector.ready["recording"], true);
    assert_eq!(env.get("insp-rec", "/item").await.status(), 200);
    let id = inspector.id_of("/item").await;
    let rows = inspector
        .rows_until("source=server", "the server's recording", |rows| rows.iter().any(|r| r["id"] == id.as_str()))
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["sources"], json!({ "client": true, "server": true, "replay": false }), "one row, both sides");
    // The inspector's read of the server's recordings is on record in the tunnel's audit trail.
    let state = tempfile::tempdir().expect("state dir");
    let (code, trail, stderr) =
        tunnel_tests::run_tunnel(state.path(), &["trail", "insp-rec", "--nats", &env.nats_url_as("admin")]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let read = trail.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()).find(|e| e["kind"] == "data");
    let read = read.expect("a data event");
    assert_eq!(read["action"], "inspect");
    assert!(read["actor"].as_str().is_some_and(|actor| actor.starts_with("owner:")), "{read}");
}

#[tokio::test]
async fn a_taken_port_moves_the_inspector_and_the_tunnel_runs() {
    let env = TestEnv::start().await;
    let port = Versioned::default().start(answer).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("address").port();
    let addr = format!("127.0.0.1:{taken_port}");
    let inspector = Inspected::start(&env, port, "insp-taken", &["--inspect-addr", &addr]).await;
    assert_ne!(inspector.port(), taken_port, "another port");
    assert_eq!(env.get("insp-taken", "/item").await.status(), 200);
    inspector.rows_until("", "the request", |rows| rows.len() == 1).await;
    let mut off = Command::new(binary("tunnel"))
        .args(["http", &port.to_string(), "--name", "insp-off", "--server", &env.server_url(), "--no-inspect"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tunnel starts");
    let mut lines = BufReader::new(off.stdout.take().expect("piped")).lines();
    let line = within(DEADLINE, "the ready event", lines.next_line()).await.expect("read").expect("line");
    let ready: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(ready["event"], "ready");
    assert!(ready.get("inspector").is_none(), "no inspector field without an inspector: {ready}");
}

/// Where the page test puts its screenshots: `$INSPECTOR_SCREENSHOTS` (the committed ones are
/// made with `INSPECTOR_SCREENSHOTS=docs/img`), else a temporary directory.
fn screenshot_dir() -> (std::path::PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("INSPECTOR_SCREENSHOTS") {
        Some(dir) => {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
            std::fs::create_dir_all(&dir).expect("screenshot dir");
            (dir, None)
        }
        None => {
            let temporary = tempfile::tempdir().expect("temporary dir");
            (temporary.path().to_owned(), Some(temporary))
        }
    }
}

#[tokio::test]
async fn the_page_shows_requests_live_and_replays_them_with_a_diff() {
    let env = TestEnv::start().await;
    let service = Versioned::default();
    let port = service.start(answer).await;
    let inspector = Inspected::start(&env, port, "insp-page", &[]).await;
    let (shots, _temporary) = screenshot_dir();
    let mut browser = Browser::launch().await;
    browser.navigate(&inspector.base).await;
    browser.wait_for("the live feed", "document.getElementById('live').textContent === 'live'").await;

    send(&env, Method::GET, "insp-page", "/item?color=blue", "").await;
    let posted = env
        .request(Method::POST, "insp-page", "/seen?order=42")
        .header("content-type", "application/json")
        .body(r#"{"hello":"world","items":[1,2,3]}"#)
        .send();
    within(DEADLINE, "a response", posted).await.expect("response");
    browser.wait_for("two rows, live", "document.querySelectorAll('tr.row').length === 2").await;
    let first = browser.eval("document.querySelector('tr.row td.path').textContent").await;
    assert_eq!(first, "/seen?order=42", "newest first");
    browser.screenshot(&shots.join("inspector-list.png")).await;

    browser.click("tr.row").await;
    let body = browser.wait_for("the request body", "document.getElementById('req-body').textContent").await;
    assert!(body.as_str().is_some_and(|b| b.contains("\"hello\": \"world\"")), "pretty-printed JSON: {body}");
    browser
        .wait_for("the response body", "document.getElementById('resp-body').textContent.includes('\"version\": 1')")
        .await;
    browser.screenshot(&shots.join("inspector-detail.png")).await;
    let original = browser.eval("document.querySelector('tr.row.selected').dataset.id").await;
    let original = original.as_str().expect("id").to_owned();

    browser.click("#replay").await;
    browser.wait_for("the replay's row", "document.querySelectorAll('tr.row').length === 3").await;
    browser.wait_for("an empty diff", "document.querySelector('#diff').dataset.matches === 'true'").await;
    browser.screenshot(&shots.join("inspector-replay-same.png")).await;

    service.change();
    browser.click(&format!("tr.row[data-id='{original}']")).await;
    browser
        .wait_for("the original again", "!document.getElementById('diff') && document.getElementById('replay')")
        .await;
    browser.click("#replay").await;
    browser.wait_for("the second replay's row", "document.querySelectorAll('tr.row').length === 4").await;
    let diff = browser.wait_for("a diff", "document.querySelector('#diff[data-matches=false]').textContent").await;
    assert!(diff.as_str().is_some_and(|d| d.contains("$.version: 1 → 2")), "{diff}");
    browser.screenshot(&shots.join("inspector-replay-diff.png")).await;

    let replays = inspector.rows_until("source=replay", "two replays", |rows| rows.len() == 2).await;
    assert!(replays.iter().all(|row| row["replay_of"] == original.as_str()), "linked to the original");
    browser.eval("document.getElementById('f-status').value = '4xx'; document.getElementById('f-status').dispatchEvent(new Event('input'));").await;
    browser.wait_for("the filter", "document.querySelectorAll('tr.row').length === 0").await;
}

#[tokio::test]
async fn a_websocket_keeps_its_heads_only_and_is_not_replayed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let env = TestEnv::start().await;
    let upstream = tunnel_tests::Upstream::start().await;
    let inspector = Inspected::start(&env, upstream.port(), "insp-ws", &[]).await;
    let url = format!("ws://{}/t/insp-ws/ws", env.ingress_addr());
    let (mut socket, _) =
        within(DEADLINE, "the upgrade", tokio_tungstenite::connect_async(url)).await.expect("upgraded");
    socket.send(Message::Text("hello".into())).await.expect("send");
    let echoed = within(DEADLINE, "the echo", socket.next()).await.expect("open").expect("message");
    assert_eq!(echoed, Message::Text("hello".into()), "the socket works with the inspector on");
    let id = inspector.id_of("/ws").await;
    let detail = inspector.closed(&id).await;
    assert_eq!((detail["upgraded"].as_bool(), detail["status"].as_u64()), (Some(true), Some(101)));
    assert_eq!(detail["exchange"]["response"]["size"], 0, "no frames kept");
    let (status, error) = inspector.replay(json!({ "id": id })).await;
    assert_eq!((status, error["error"].as_str()), (400, Some("not_replayable")));
}
