//! The real binaries, as a user runs them.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::Method;
use tokio::process::Command;
use tunnel_tests::{Cli, TestEnv, Upstream, binary};

#[tokio::test]
async fn prints_json_lines_when_piped_and_serves() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let port = upstream.port().to_string();
    let mut cli = Cli::start(&env.server_url(), &[&port, "--name", "cli-demo"]);
    let ready = cli.next_json().await;
    assert_eq!(ready["event"], "ready");
    assert_eq!(ready["name"], "cli-demo");
    assert_eq!(ready["url"], format!("http://{}", env.public_host("cli-demo")));
    let response = env
        .request(Method::GET, "cli-demo", "/echo?x=1")
        .header("x-request-id", "cli-req-1")
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let logged = cli.next_json().await;
    assert_eq!(logged["event"], "request");
    assert_eq!(logged["method"], "GET");
    assert_eq!(logged["target"], "/echo?x=1");
    assert_eq!(logged["status"], 200);
    assert_eq!(logged["request_id"], "cli-req-1");

    cli.signal(Signal::SIGTERM);
    assert_eq!(cli.exit_code().await, Some(0), "SIGTERM is a clean exit");
    let mut again = Cli::start(&env.server_url(), &[&port, "--name", "cli-demo"]);
    assert_eq!(again.next_json().await["event"], "ready", "the goodbye released the name");
}

#[tokio::test]
async fn sigkill_mid_request_gives_502_within_a_second() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let port = upstream.port().to_string();
    let mut cli = Cli::start(&env.server_url(), &[&port]);
    let name = cli.next_json().await["name"].as_str().expect("name").to_owned();
    let pending = tokio::spawn(env.request(Method::GET, &name, "/hang").send());
    upstream.next_request().await;
    let killed_at = Instant::now();
    cli.signal(Signal::SIGKILL);
    let response = pending.await.expect("task").expect("response");
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-tunnel-error"], "tunnel_disconnected");
    assert!(killed_at.elapsed() < Duration::from_secs(1), "took {:?}", killed_at.elapsed());
}

#[tokio::test]
async fn a_refused_name_exits_non_zero_with_a_json_error() {
    let env = TestEnv::start().await;
    let mut cli = Cli::start(&env.server_url(), &["3000", "--name", "Not_A_Label"]);
    let error = cli.next_json().await;
    assert_eq!(error["event"], "error");
    assert_eq!(error["code"], "invalid_name");
    assert_eq!(cli.exit_code().await, Some(1));
}

#[tokio::test]
async fn every_binary_has_help() {
    for (name, flag) in [
        ("tunnel", "http"),
        ("tunnel-ingress", "--domain"),
        ("tunnel-session-host", "--public-url"),
        ("tunnel-auditor", "--nats"),
    ] {
        let output = Command::new(binary(name)).arg("--help").output().await.expect("runs");
        assert!(output.status.success(), "{name} --help");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains(flag), "{name} --help mentions {flag}: {text}");
    }
}

/// Flags, environment, and the key the error must name.
type BadSetting<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn a_bad_setting_is_refused_naming_its_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ingress.toml");
    std::fs::write(&file, "request_timeout_secs = \"soon\"\n").expect("write");
    let cases: [BadSetting; 4] = [
        (&["--listen", "not-an-address"], &[], "listen"),
        (&[], &[("TUNNEL_REQUEST_TIMEOUT_SECS", "0")], "request_timeout_secs"),
        (&["--config", file.to_str().expect("utf-8 path")], &[], "request_timeout_secs"),
        (&["--domain", "http://bad"], &[], "domain"),
    ];
    for (args, vars, key) in cases {
        let output =
            Command::new(binary("tunnel-ingress")).args(args).envs(vars.iter().copied()).output().await.expect("runs");
        assert!(!output.status.success(), "{args:?} {vars:?} must be refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "the error names {key}: {stderr}");
    }
}

#[tokio::test]
async fn a_server_url_that_is_not_websocket_is_refused_at_once() {
    let output = Command::new(binary("tunnel"))
        .args(["http", "3000", "--server", "http://example.invalid"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let line = String::from_utf8_lossy(&output.stdout);
    let error: serde_json::Value = serde_json::from_str(line.trim()).expect("a JSON error line");
    assert_eq!(error["code"], "invalid_server");
}
