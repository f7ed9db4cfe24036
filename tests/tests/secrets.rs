//! A full run of the real binaries at debug level — token, basic auth, a required header, a
//! cookie, recording, trail, metrics, a revocation — and then every log line, trail line and
//! metric is searched for the secrets it used: none may appear.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tunnel_tests::{DEADLINE, NatsServer, Upstream, binary, run_tunnel, within};

/// A running binary whose output lines are kept, and can be waited for.
struct Process {
    child: Child,
    output: Arc<Mutex<String>>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Process {
    fn spawn(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary(name));
        command.args(args).env("RUST_LOG", "debug").env("NO_COLOR", "1").env("TUNNEL_CONFIG", "/nonexistent");
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let (sender, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>, Box::new(stderr)] {
            let (output, sender) = (output.clone(), sender.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    output.lock().expect("output").push_str(&line);
                    output.lock().expect("output").push('\n');
                    let _ = sender.send(line);
                }
            });
        }
        Self { child, output, lines }
    }

    /// The next line containing `text`.
    async fn line_with(&mut self, text: &str) -> String {
        within(DEADLINE, text, async {
            loop {
                let line = self.lines.recv().await.unwrap_or_else(|| panic!("ended before {text:?}"));
                if line.contains(text) {
                    return line;
                }
            }
        })
        .await
    }

    /// The port it logged it listens on.
    async fn port(&mut self) -> u16 {
        let line = self.line_with("listening").await;
        let addr = line.split("addr=").nth(1).expect("an address").split_whitespace().next().expect("address");
        addr.rsplit(':').next().expect("port").parse().expect("a port")
    }

    async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        // The readers end with the pipes.
        let _ = within(DEADLINE, "the output to end", async { while self.lines.recv().await.is_some() {} }).await;
        self.output.lock().expect("output").clone()
    }
}

#[tokio::test]
async fn no_secret_reaches_a_log_line_a_metric_the_trail_or_an_error() {
    let nats = NatsServer::start();
    let state = tempfile::tempdir().expect("state");
    let url = nats.url().to_owned();
    let admin = |args: &[&str]| {
        let args = [&["admin", "--nats", url.as_str()][..], args].concat();
        let state = state.path().to_owned();
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move { run_tunnel(&state, &args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    assert_eq!(admin(&["account", "create", "sec"]).await.0, Some(0));
    let (_, created, _) = admin(&["token", "create", "sec"]).await;
    let created: serde_json::Value = serde_json::from_str(created.trim()).expect("json");
    let token = created["token"].as_str().expect("token").to_owned();
    let token_secret = token.rsplit('_').next().expect("secret").to_owned();

    let mut auditor = Process::spawn("tunnel-auditor", &["--nats", &url, "--listen", "127.0.0.1:0"], &[]);
    auditor.port().await;
    let mut host = Process::spawn("tunnel-session-host", &["--nats", &url, "--listen", "127.0.0.1:0"], &[]);
    let host_port = host.port().await;
    let mut ingress =
        Process::spawn("tunnel-ingress", &["--nats", &url, "--listen", "127.0.0.1:0", "--domain", "localhost"], &[]);
    let ingress_port = ingress.port().await;

    let upstream = Upstream::start().await;
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let wrong_password = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let header_value = format!("hv-{}", uuid::Uuid::new_v4().simple());
    let cookie = format!("cv-{}", uuid::Uuid::new_v4().simple());
    let state_dir = state.path().to_str().expect("utf-8").to_owned();
    let mut client = Process::spawn(
        "tunnel",
        &[
            "http",
            &upstream.port().to_string(),
            "--server",
            &format!("ws://127.0.0.1:{host_port}"),
            "--name",
            "sec-demo",
            "--record",
            "--json",
            "--basic-auth",
            &format!("ann:{password}"),
            "--require-header",
            &format!("X-Key: {header_value}"),
        ],
        &[("TUNNEL_TOKEN", &token), ("TUNNEL_STATE_DIR", &state_dir)],
    );
    client.line_with("\"ready\"").await;

    let http = reqwest::Client::new();
    let url_of = |path: &str| format!("http://127.0.0.1:{ingress_port}/t/sec-demo{path}");
    let send = |password: &str| {
        http.get(url_of("/echo"))
            .basic_auth("ann", Some(password))
            .header("x-key", &header_value)
            .header("cookie", format!("session={cookie}"))
            .send()
    };
    assert_eq!(within(DEADLINE, "a response", send(&password)).await.expect("response").status(), 200);
    let refused = within(DEADLINE, "a response", send(&wrong_password)).await.expect("response");
    assert_eq!(refused.status(), 401);
    let refused_body = refused.text().await.expect("body");
    let (code, trail, trail_errors) =
        run_tunnel(state.path(), &["trail", "sec-demo", "--recorded", "--limit", "1", "--json"]).await;
    assert_eq!(code, Some(0), "{trail}{trail_errors}");
    assert!(trail.contains(r#""masked":["x-key","cookie"]"#), "the recorded exchange is there, masked: {trail}");
    let (_, audit, _) = run_tunnel(state.path(), &["trail", "sec-demo", "--nats", &url, "--json"]).await;
    let metrics_of = |port: u16| {
        let http = http.clone();
        async move { http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.expect("metrics").text().await }
    };
    let metrics =
        format!("{}{}", metrics_of(ingress_port).await.expect("text"), metrics_of(host_port).await.expect("text"));
    assert_eq!(admin(&["token", "revoke", created["id"].as_str().expect("id")]).await.0, Some(0));
    client.line_with("unauthorized").await;

    let saved = std::fs::read_to_string(state.path().join("sec-demo.json")).expect("saved tunnel");
    let saved: serde_json::Value = serde_json::from_str(&saved).expect("json");
    let resume_secret = saved["secret"].as_str().expect("the resume secret").to_owned();
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("ann:{password}"));
    let secrets = [
        ("the token's secret", token_secret.as_str()),
        ("the basic-auth password", password.as_str()),
        ("a wrong password", wrong_password.as_str()),
        ("the encoded credentials", credentials.as_str()),
        ("the required header's value", header_value.as_str()),
        ("the cookie", cookie.as_str()),
        ("the resume secret", resume_secret.as_str()),
    ];
    let host_log = host.stop().await;
    assert!(host_log.contains("sec-demo") && host_log.contains("DEBUG"), "the host logged at debug level");
    let outputs = [
        ("the session-host's log", host_log),
        ("the ingress's log", ingress.stop().await),
        ("the auditor's log", auditor.stop().await),
        ("the client's output", client.stop().await),
        ("the recorded trail", trail),
        ("the audit trail", audit),
        ("the metrics", metrics),
        ("the refusal", refused_body),
    ];
    for (what, text) in &outputs {
        for (secret_name, secret) in &secrets {
            assert!(!text.contains(secret), "{secret_name} appears in {what}");
        }
    }
}
