//! Recording, trail, tail and replay, as a developer uses them: `tunnel http --record` (the
//! library with a state directory), then the real `tunnel trail`, `tunnel replay` and
//! `tunnel export` binaries against a real nats-server.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Tunnel, Versioned, binary, run_tunnel as tunnel, within};

/// The local service: `/item` (see [`Versioned::item`]), `/bin` (the body back with a non-UTF-8
/// header, two cookies and whether it saw an `Authorization`), `/text` (three lines, the second
/// changed in the new version), anything else echoed.
async fn answer(service: Versioned, request: axum::extract::Request) -> axum::response::Response {
    let headers = request.headers().clone();
    let path = request.uri().path().to_owned();
    let body = axum::body::to_bytes(request.into_body(), 16 << 20).await.unwrap_or_default();
    match path.as_str() {
        "/item" => service.item(),
        "/bin" => {
            let mut response = body.into_response();
            let out = response.headers_mut();
            out.insert("x-raw", HeaderValue::from_bytes(b"\xff\xfe raw").expect("obs-text"));
            out.append("set-cookie", HeaderValue::from_static("a=1"));
            out.append("set-cookie", HeaderValue::from_static("b=2"));
            let auth = headers.get("authorization").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
            out.insert("x-saw-auth", HeaderValue::from_static(if auth.is_empty() { "no" } else { "yes" }));
            response
        }
        "/text" => {
            let second = if service.changed() { "line 2" } else { "line two" };
            format!("line one\n{second}\nline three\n").into_response()
        }
        _ => body.into_response(),
    }
}

/// The JSON lines of `stdout`.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
}

/// A running `tunnel trail --follow`, read line by line.
struct Tail {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Tail {
    fn start(state: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(binary("tunnel"))
            .arg("trail")
            .args(args)
            .arg("--follow")
            .env("TUNNEL_STATE_DIR", state)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tail starts");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        Self { _child: child, lines }
    }

    /// The next `count` events.
    async fn take(&mut self, count: usize) -> Vec<Value> {
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            events.push(self.next(DEADLINE).await);
        }
        events
    }

    async fn next(&mut self, deadline: Duration) -> Value {
        let line = within(deadline, "a trail line", self.lines.next_line()).await.expect("read").expect("a line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }
}

fn now_ms() -> String {
    tunnel_trail::filter::now_ms().to_string()
}

/// A system with one recorded tunnel `name` to the local service of [`answer`], its state in a temporary
/// directory, and a live tail of its recorded exchanges from now on.
struct Scene {
    env: TestEnv,
    service: Versioned,
    port: u16,
    state: tempfile::TempDir,
    _tunnel: Tunnel,
    since: String,
    tail: Tail,
}

impl Scene {
    async fn start(name: &str, options: EnvOptions) -> Self {
        let env = TestEnv::start_with(options).await;
        let service = Versioned::default();
        let port = service.start(answer).await;
        let state = tempfile::tempdir().expect("state dir");
        let tunnel = env.recorded_tunnel(port, name, state.path()).await;
        let since = now_ms();
        let tail = Tail::start(state.path(), &[name, "--recorded", "--since", &since]);
        Self { env, service, port, state, _tunnel: tunnel, since, tail }
    }
}

/// The three exchanges of the round trip: an odd query, a binary upload with repeated and
/// non-UTF-8 headers and a credential, a text page.
async fn exchange_three(env: &TestEnv, name: &str) -> Vec<Bytes> {
    let binary: Vec<u8> = (0..=255_u8).cycle().take(70_000).collect();
    let item = env.get(name, "/item?x=%ZZ&x=2&y=a%2Fb").await;
    assert_eq!(item.status(), 200);
    let upload = env
        .request(Method::POST, name, "/bin")
        .header("x-multi", "1")
        .header("x-multi", "2")
        .header("x-raw-in", HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"))
        .header("authorization", "Bearer secret-token-123")
        .body(binary.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(upload.headers()["x-saw-auth"], "yes");
    assert_eq!(upload.bytes().await.expect("body"), binary);
    let text = env.get(name, "/text").await;
    vec![item.bytes().await.expect("body"), Bytes::from(binary), text.bytes().await.expect("body")]
}

#[tokio::test]
async fn recorded_exchanges_replay_through_the_tunnel_and_compare() {
    let mut scene = Scene::start("rec-demo", EnvOptions::default()).await;
    let (env, state, since) = (&scene.env, scene.state.path().to_owned(), scene.since.clone());
    exchange_three(env, "rec-demo").await;
    let originals = scene.tail.take(3).await;
    assert!(originals.iter().all(|event| event["kind"] == "exchange"));
    let upload = &originals[1];
    assert_eq!(upload["request"]["method"], "POST");
    assert_eq!(upload["request"]["size"], 70_000);
    assert_eq!(upload["request"]["cut"], false);
    assert_eq!(originals[0]["request"]["target"], "/item?x=%ZZ&x=2&y=a%2Fb", "the raw query is kept");
    let header = |name: &str| {
        upload["request"]["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .filter(|h| h["name"] == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(header("x-multi").len(), 2, "repeated headers are kept in order");
    assert_eq!(header("x-raw-in")[0]["value_base64"], "Y2Fm6Q==", "non-UTF-8 values are kept as bytes");
    assert_eq!(header("authorization")[0]["value"], "*".repeat("Bearer secret-token-123".len()));

    let via_tunnel = format!("http://{}/t/rec-demo", env.ingress_addr());
    let replay = |extra: &'static [&'static str]| {
        let mut args = vec!["replay", "rec-demo", "--since", &since, "--to", &via_tunnel, "--compare"];
        args.extend(["--ignore-json-path", "$.id", "--header", "Authorization: Bearer secret-token-123"]);
        args.extend(extra);
        let state = state.clone();
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move { tunnel(&state, &args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let (code, stdout, stderr) = replay(&["--limit", "3"]).await;
    assert_eq!(code, Some(0), "everything matches: {stdout}{stderr}");
    let results = json_lines(&stdout);
    assert_eq!(results.len(), 4, "three results and a summary: {stdout}");
    for (result, original) in results.iter().zip(&originals) {
        assert_eq!(result["outcome"], "answered");
        assert_eq!(result["original"], original["request_id"]);
    }

    for (original, replayed) in originals.iter().zip(scene.tail.take(3).await) {
        assert_eq!(replayed["replay_of"], original["request_id"], "replays are recorded, linked to their originals");
        assert_ne!(replayed["request_id"], original["request_id"]);
    }

    scene.service.change();
    let (code, stdout, _) = replay(&["--limit", "3"]).await;
    assert_eq!(code, Some(1), "a changed service fails the comparison: {stdout}");
    let results = json_lines(&stdout);
    let item = &results[0]["comparison"]["mismatches"][0];
    assert_eq!(item["what"], "json_body");
    assert_eq!(item["paths"][0]["path"], "$.price");
    assert_eq!(results[1]["comparison"]["mismatches"], serde_json::json!([]), "the upload still matches");
    let mismatches = results[2]["comparison"]["mismatches"].as_array().expect("mismatches");
    let text = mismatches.iter().find_map(|m| m["diff"].as_str()).expect("a unified diff");
    assert!(text.contains("-line two") && text.contains("+line 2"), "{text}");
}

#[tokio::test]
async fn exports_replay_from_a_file_without_nats() {
    let mut scene = Scene::start("rec-export", EnvOptions::default()).await;
    exchange_three(&scene.env, "rec-export").await;
    scene.tail.take(3).await;
    let (state, port) = (&scene.state, scene.port);
    for format in ["har", "jsonl"] {
        let file = state.path().join(format!("export.{format}"));
        let file = file.to_str().expect("utf-8 path");
        let (code, _, stderr) = tunnel(state.path(), &["export", "rec-export", "--format", format, "-o", file]).await;
        assert_eq!(code, Some(0), "{stderr}");
        if format == "har" {
            let har: Value = serde_json::from_str(&std::fs::read_to_string(file).expect("file")).expect("json");
            assert_eq!(har["log"]["version"], "1.2");
            assert_eq!(har["log"]["entries"].as_array().expect("entries").len(), 3);
        }
        let direct = format!("http://127.0.0.1:{port}");
        let args = ["replay", "--from", file, "--to", &direct, "--compare", "--ignore-json-path", "$.id", "-H"];
        let args = [&args[..], &["Authorization: Bearer secret-token-123"]].concat();
        let (code, stdout, stderr) = tunnel(state.path(), &args).await;
        assert_eq!(code, Some(0), "{format}: {stdout}{stderr}");
        assert_eq!(json_lines(&stdout).len(), 4);
    }
}

#[tokio::test]
async fn cut_bodies_are_marked_and_replay_says_so() {
    let mut scene = Scene::start("rec-cut", EnvOptions { record_body_bytes: 1024, ..EnvOptions::default() }).await;
    let response =
        scene.env.request(Method::POST, "rec-cut", "/echo").body(vec![7_u8; 5000]).send().await.expect("sent");
    assert_eq!(response.bytes().await.expect("body").len(), 5000, "the exchange itself is whole");
    let event = scene.tail.next(DEADLINE).await;
    assert_eq!((event["request"]["cut"].clone(), event["request"]["size"].clone()), (true.into(), 5000.into()));
    assert_eq!(event["response"]["cut"], true);
    let to = format!("http://127.0.0.1:{}", scene.port);
    let (code, stdout, _) = tunnel(scene.state.path(), &["replay", "rec-cut", "--to", &to, "--compare"]).await;
    assert_eq!(code, Some(1), "a request that cannot be replayed whole fails a comparison run");
    let result = &json_lines(&stdout)[0];
    assert_eq!(result["outcome"], "skipped");
    assert!(result["reason"].as_str().expect("reason").contains("cut at 1024 of 5000"), "{result}");
}

#[tokio::test]
async fn masked_headers_stay_masked_in_the_stream() {
    let mut scene = Scene::start("rec-mask", EnvOptions::default()).await;
    exchange_three(&scene.env, "rec-mask").await;
    scene.tail.take(3).await;
    let nats = async_nats::connect(scene.env.nats.url()).await.expect("nats");
    let stream = async_nats::jetstream::new(nats).get_stream("RECORDINGS").await.expect("stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "rec.rec-mask.>".into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let (mut stored, mut records) = (Vec::new(), 0);
    while records < 3 {
        let message = within(DEADLINE, "a stored batch", messages.next()).await.expect("one").expect("ok");
        let batch: tunnel_schemas::record::RecordBatch =
            tunnel_schemas::decode(&message.payload, usize::MAX).expect("a batch of records");
        records += batch.records.len();
        stored.extend_from_slice(&message.payload);
    }
    let find = |needle: &[u8]| stored.windows(needle.len()).any(|w| w == needle);
    assert!(!find(b"secret-token-123"), "the credential is not stored");
    assert!(!find(b"a=1"), "set-cookie values are not stored");
    assert!(find(&[b'*'; 23]), "the masked value keeps its length");
}

#[tokio::test]
async fn tail_sees_new_events_within_a_second_and_resumes_with_since() {
    let env = TestEnv::start().await;
    let service = Versioned::default();
    let port = service.start(answer).await;
    let state = tempfile::tempdir().expect("state dir");
    let _tunnel = env.recorded_tunnel(port, "tail-demo", state.path()).await;
    // Requests only (--method): the session's own access events are left out.
    let mut tail = Tail::start(state.path(), &["tail-demo", "--method", "GET", "--since", &now_ms()]);
    env.get("tail-demo", "/warm-up").await;
    tail.next(DEADLINE).await;
    let sent = Instant::now();
    env.get("tail-demo", "/one").await;
    let event = tail.next(DEADLINE).await;
    assert_eq!(event["kind"], "audit");
    assert_eq!(event["path"], "/one");
    assert!(sent.elapsed() < Duration::from_secs(1), "seen after {:?}", sent.elapsed());

    drop(tail);
    let resume_from = now_ms();
    for path in ["/a", "/b", "/c"] {
        env.get("tail-demo", path).await;
    }
    let mut resumed = Tail::start(state.path(), &["tail-demo", "--method", "GET", "--since", &resume_from]);
    // An event logged in the very millisecond the tail stopped may be printed again.
    let mut seen = Vec::new();
    while seen.last().is_none_or(|path| path != "/c") {
        seen.push(resumed.next(DEADLINE).await["path"].as_str().expect("path").to_owned());
    }
    let new: Vec<&String> = seen.iter().filter(|path| *path != "/one").collect();
    assert_eq!(new, ["/a", "/b", "/c"], "nothing missed while no tail ran: {seen:?}");
    env.get("tail-demo", "/d").await;
    assert_eq!(resumed.next(DEADLINE).await["path"], "/d", "and it goes on live");
}

#[tokio::test]
async fn a_client_reads_only_its_own_tunnels_trail() {
    let env = TestEnv::start().await;
    let service = Versioned::default();
    let port = service.start(answer).await;
    let (mine, theirs) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let _a = env.recorded_tunnel(port, "own-a", mine.path()).await;
    let _b = env.recorded_tunnel(port, "own-b", theirs.path()).await;
    let since = now_ms();
    let mut tail_b = Tail::start(theirs.path(), &["own-b", "--recorded", "--since", &since]);
    env.get("own-b", "/private").await;
    assert_eq!(tail_b.next(DEADLINE).await["request"]["target"], "/private", "b reads its own records");

    let secret_a: Value =
        serde_json::from_str(&std::fs::read_to_string(mine.path().join("own-a.json")).expect("state")).expect("json");
    let secret_a = secret_a["secret"].as_str().expect("secret");
    let server = env.server_url();
    let as_a = ["--server", server.as_str(), "--secret", secret_a, "--since", since.as_str()];
    let (code, stdout, _) = tunnel(mine.path(), &[&["trail", "own-b"][..], &as_a].concat()).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(json_lines(&stdout)[0]["code"], "forbidden", "a's secret does not open b's audit trail");
    let (code, stdout, _) = tunnel(mine.path(), &[&["trail", "own-b", "--recorded"][..], &as_a].concat()).await;
    assert_eq!(code, Some(0));
    assert!(stdout.is_empty(), "a's secret finds none of b's records: {stdout}");
    let (code, _, _) = tunnel(mine.path(), &["trail", "own-b", "--server", &server, "--secret", "guess"]).await;
    assert_eq!(code, Some(1), "a guessed secret is refused");
}

#[tokio::test]
async fn requests_flow_while_recordings_cannot_be_stored_and_the_gap_is_reported() {
    let scene = Scene::start("rec-gap", EnvOptions::default()).await;
    let env = &scene.env;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    js.delete_stream("RECORDINGS").await.expect("deleted");
    for i in 0..20 {
        assert_eq!(env.get("rec-gap", &format!("/lost-{i}")).await.status(), 200, "the path never waits for the log");
    }
    env.counter_reaches("host_recordings_dropped_total", 20.0).await;
    let policy = tunnel_session_host::HostConfig::default().record_policy();
    tunnel_session_host::recording::ensure_stream(&js, &policy).await.expect("stream back");
    // The tail started with the scene ended with the stream; a new one picks up from the start.
    let mut tail = Tail::start(scene.state.path(), &["rec-gap", "--recorded", "--since", &scene.since]);
    env.get("rec-gap", "/after").await;
    let gap = tail.next(DEADLINE).await;
    assert_eq!(gap["kind"], "gap", "the hole is reported before the next record: {gap}");
    assert_eq!(gap["dropped"], 20);
    assert_eq!(tail.next(DEADLINE).await["request"]["target"], "/after");
}

#[tokio::test]
async fn a_tunnel_over_its_recording_limit_loses_its_oldest_records_only() {
    let options = EnvOptions { record_max_bytes_per_tunnel: 1 << 20, ..EnvOptions::default() };
    let scene = Scene::start("rec-big", options).await;
    let _small = scene.env.recorded_tunnel(scene.port, "rec-small", scene.state.path()).await;
    assert_eq!(scene.env.get("rec-small", "/text").await.status(), 200);
    for i in 0..32 {
        let path = format!("/echo?i={i}");
        let response = scene.env.request(Method::POST, "rec-big", &path).body(vec![b'x'; 64 << 10]).send().await;
        assert_eq!(response.expect("sent").status(), 200);
    }
    let js = async_nats::jetstream::new(async_nats::connect(scene.env.nats.url()).await.expect("nats"));
    let mut stream = js.get_stream("RECORDINGS").await.expect("stream");
    // Purges run after the acknowledgements, with no event to wait on: poll, with a deadline.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let last = stream.get_last_raw_message_by_subject("rec.rec-big.ex").await.expect("the last record");
        let last: tunnel_schemas::record::RecordBatch =
            tunnel_schemas::decode(&last.payload, usize::MAX).expect("a batch");
        let last = last.records.last().map(|record| record.request.target.clone()).unwrap_or_default();
        let bytes = stream.info().await.expect("info").state.bytes;
        if last == "/echo?i=31" && bytes <= (1 << 20) + (100 << 10) {
            break;
        }
        assert!(Instant::now() < deadline, "rec-big still holds {bytes} bytes (last {last})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = stream.info_with_subjects("rec.>").await.expect("subjects");
    let counts: std::collections::HashMap<String, usize> =
        info.collect::<Vec<_>>().await.into_iter().map(|s| s.expect("subject")).collect();
    assert_eq!(counts.get("rec.rec-small.ex"), Some(&1), "the other tunnel keeps its record");
    let kept = counts.get("rec.rec-big.ex").copied().unwrap_or(0);
    assert!((2..16).contains(&kept), "the big tunnel keeps its most recent batches: {kept}");
}

#[tokio::test]
async fn an_upgraded_exchange_records_its_handshake_and_byte_counts() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let env = TestEnv::start().await;
    let upstream = tunnel_tests::Upstream::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let _tunnel = env.recorded_tunnel(upstream.port(), "rec-ws", state.path()).await;
    let mut tail = Tail::start(state.path(), &["rec-ws", "--recorded", "--since", &now_ms()]);
    let url = format!("ws://{}/t/rec-ws/ws", env.ingress_addr());
    let (mut socket, _) =
        within(DEADLINE, "the upgrade", tokio_tungstenite::connect_async(url)).await.expect("upgraded");
    socket.send(Message::Binary(vec![1_u8; 5000].into())).await.expect("sent");
    let echoed = within(DEADLINE, "the echo", socket.next()).await.expect("a message").expect("ok");
    assert_eq!(echoed.len(), 5000);
    socket.close(None).await.expect("closed");
    while let Some(Ok(_)) = within(DEADLINE, "the close", socket.next()).await {}
    let event = tail.next(DEADLINE).await;
    assert_eq!(event["upgraded"], true);
    assert_eq!(event["response"]["status"], 101);
    assert_eq!(event["request"]["body"], "", "frames are not kept");
    assert!(event["request"]["size"].as_u64().expect("size") >= 5000, "{event}");
    assert!(event["response"]["size"].as_u64().expect("size") >= 5000, "{event}");
}

#[tokio::test]
async fn replay_keeps_the_recorded_pace_at_speed_one() {
    use tunnel_schemas::record::{ExchangeRecord, RecordedMessage};
    let service = Versioned::default();
    let port = service.start(answer).await;
    let record = |i: u64| ExchangeRecord {
        v: 1,
        request_id: format!("paced-{i}"),
        tunnel: "paced".into(),
        owner: String::new(),
        account: None,
        at_ms: 1_000_000 + i * 300,
        head_us: 0,
        duration_us: 0,
        request: RecordedMessage {
            method: "GET".into(),
            target: format!("/text?i={i}"),
            headers: Vec::new(),
            body: Bytes::new(),
            size: 0,
            cut: false,
        },
        response: None,
        error: None,
        upgraded: false,
        masked: Vec::new(),
        replay_of: None,
    };
    let state = tempfile::tempdir().expect("dir");
    let file = state.path().join("paced.jsonl");
    let lines: String = (0..3)
        .map(|i| serde_json::to_string(&tunnel_trail::json::ExchangeJson::from(&record(i))).expect("json") + "\n")
        .collect();
    std::fs::write(&file, lines).expect("written");
    let to = format!("http://127.0.0.1:{port}");
    let replay = |speed: &'static str| {
        let (state, file, to) = (state.path().to_owned(), file.clone(), to.clone());
        async move {
            let started = Instant::now();
            let file = file.to_str().expect("utf-8").to_owned();
            let (code, stdout, _) = tunnel(&state, &["replay", "--from", &file, "--to", &to, "--speed", speed]).await;
            assert_eq!(code, Some(0), "{stdout}");
            assert_eq!(json_lines(&stdout).len(), 4, "{stdout}");
            started.elapsed()
        }
    };
    let paced = replay("1").await;
    assert!(paced >= Duration::from_millis(600), "three requests 300 ms apart took {paced:?}");
    let doubled = replay("2").await;
    assert!(doubled >= Duration::from_millis(300), "twice as fast still waits: {doubled:?}");
    assert!(doubled < paced, "speed 2 is faster than speed 1: {doubled:?} against {paced:?}");
}

/// An `https://` service with a certificate for `localhost` from a fresh CA; returns its port and
/// the certificates (the CA to be trusted through `SSL_CERT_FILE`).
async fn https_service() -> (u16, tunnel_tests::TestCertificates) {
    let certificates = tunnel_tests::TestCertificates::issue(&["localhost"]);
    let tls = tunnel_kit::tls::server_config(&certificates.cert_file, &certificates.key_file).expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let app = axum::Router::new().fallback(|| async { "secure ok" });
    let options = tunnel_kit::serve::ServeOptions { tls: Some(tls), ..Default::default() };
    tokio::spawn(tunnel_kit::serve::serve(listener, app, Default::default(), options));
    (port, certificates)
}

#[tokio::test]
async fn replay_sends_to_https_targets_checked_against_the_trusted_roots() {
    let (port, certificates) = https_service().await;
    let dir = tempfile::tempdir().expect("dir");
    let exchange = serde_json::json!({
        "v": 1, "request_id": "tls-1", "tunnel": "tls", "owner": "", "at_ms": 1, "head_us": 0, "duration_us": 0,
        "request": { "method": "GET", "target": "/", "headers": [], "body": "", "size": 0, "cut": false },
        "response": {
            "status": 200,
            "headers": [
                { "name": "content-type", "value": "text/plain; charset=utf-8" },
                { "name": "content-length", "value": "9" },
            ],
            "body": "secure ok", "size": 9, "cut": false,
        },
        "upgraded": false, "masked": [],
    });
    let file = dir.path().join("tls.jsonl");
    std::fs::write(&file, format!("{exchange}\n")).expect("written");
    let roots = certificates.ca_file.clone();
    let replay = |trusted: bool| {
        let mut command = Command::new(binary("tunnel"));
        command.args(["replay", "--from", file.to_str().expect("utf-8"), "--compare", "--to"]);
        command.arg(format!("https://localhost:{port}")).env("TUNNEL_STATE_DIR", dir.path()).kill_on_drop(true);
        if trusted {
            command.env("SSL_CERT_FILE", &roots);
        } else {
            command.env("SSL_CERT_FILE", dir.path().join("none.pem"));
        }
        async move { within(DEADLINE, "replay", command.output()).await.expect("runs") }
    };
    let output = replay(true).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert_eq!(json_lines(&stdout)[0]["status"], 200);
    let output = replay(false).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "an untrusted certificate is refused: {stdout}");
    assert_eq!(json_lines(&stdout)[0]["outcome"], "failed");
}
