//! TLS served by the ingress (HTTPS, a wildcard for `*.<domain>`, plain HTTP redirected) and by
//! the session-host (`wss://`), with certificates made at test time; a client refuses a
//! certificate it cannot verify.

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::Lines;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tunnel_tests::{DEADLINE, EnvOptions, TestCertificates, TestEnv, Upstream, binary, within};

/// A raw HTTP/1.1 GET over TLS to the ingress for `host`; the response head and body as text.
async fn https_get(
    env: &TestEnv,
    config: Arc<rustls::ClientConfig>,
    host: &str,
    path: &str,
) -> std::io::Result<String> {
    let tcp = TcpStream::connect(env.ingress_addr()).await?;
    let server_name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await?;
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok(response)
}

/// The `tunnel` binary exposing `port` as `secure`, set up by `setup` (the server, a CA); its
/// stdout lines (JSON).
fn client_with(port: u16, setup: impl FnOnce(&mut Command)) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut command = Command::new(binary("tunnel"));
    command.args(["http", &port.to_string(), "--name", "secure"]).env("TUNNEL_CONFIG", "/nonexistent/config.toml");
    setup(&mut command);
    let mut child = command
        .env("TUNNEL_STATE_DIR", tempfile::tempdir().expect("dir").path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tunnel starts");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

/// The `tunnel` binary exposing `port` through the session-host at `wss://localhost:<host port>`,
/// trusting `ca_file` (`--ca-file`); its stdout lines (JSON).
fn wss_client(env: &TestEnv, port: u16, ca_file: &std::path::Path) -> (Child, Lines<BufReader<ChildStdout>>) {
    let server = format!("wss://localhost:{}", env.host_addr().port());
    client_with(port, |command| {
        command.args(["--server", &server]).arg("--ca-file").arg(ca_file);
    })
}

fn environment(certificates: &TestCertificates) -> EnvOptions {
    EnvOptions { tls: Some((certificates.cert_file.clone(), certificates.key_file.clone())), ..EnvOptions::default() }
}

#[tokio::test]
async fn the_ingress_serves_https_for_every_tunnel_and_redirects_plain_http() {
    let certificates = TestCertificates::issue(&["*.tunnel.test", "localhost"]);
    let env = TestEnv::start_with(environment(&certificates)).await;
    let upstream = Upstream::start().await;
    // The real client over wss://, trusting the test CA through --ca-file.
    let (_client, mut lines) = wss_client(&env, upstream.port(), &certificates.ca_file);
    let ready = within(DEADLINE, "ready", lines.next_line()).await.expect("read").expect("a line");
    assert!(ready.contains("\"ready\""), "the client trusts the host through --ca-file: {ready}");
    let response = https_get(&env, certificates.client_config(), "secure.tunnel.test", "/echo").await.expect("https");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let untrusted = TestCertificates::issue(&["*.tunnel.test"]).client_config();
    assert!(https_get(&env, untrusted, "secure.tunnel.test", "/echo").await.is_err(), "another CA is refused");

    let mut plain = TcpStream::connect(env.redirect_addr()).await.expect("connect");
    plain
        .write_all(b"GET /a?b=1 HTTP/1.1\r\nHost: secure.tunnel.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("sent");
    let mut response = String::new();
    plain.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 308"), "{response}");
    let location = format!("location: https://secure.tunnel.test:{}/a?b=1", env.ingress_addr().port());
    assert!(response.to_ascii_lowercase().contains(&location), "{response}");
}

#[tokio::test]
async fn a_client_refuses_a_session_host_certificate_it_cannot_verify() {
    let certificates = TestCertificates::issue(&["localhost"]);
    let env = TestEnv::start_with(environment(&certificates)).await;
    let upstream = Upstream::start().await;
    let other_ca = TestCertificates::issue(&["localhost"]);
    let (_client, mut lines) = wss_client(&env, upstream.port(), &other_ca.ca_file);
    let first = within(DEADLINE, "a line", lines.next_line()).await.expect("read").expect("a line");
    assert!(first.contains("\"disconnected\"") && first.contains("certificate"), "{first}");
}

#[tokio::test]
async fn the_settings_file_gives_the_client_its_server_token_and_ca() {
    let certificates = TestCertificates::issue(&["*.tunnel.test", "localhost"]);
    let env = TestEnv::start_with(EnvOptions { auth: "tokens", ..environment(&certificates) }).await;
    let upstream = Upstream::start().await;
    let state = tempfile::tempdir().expect("dir");
    let admin = |args: &'static [&'static str]| {
        let nats = env.nats.url().to_owned();
        let state = state.path().to_owned();
        async move {
            let args = [&["admin", "--nats", nats.as_str()][..], args].concat();
            tunnel_tests::run_tunnel(&state, &args).await
        }
    };
    assert_eq!(admin(&["account", "create", "acme"]).await.0, Some(0));
    let (_, created, _) = admin(&["token", "create", "acme"]).await;
    let created: serde_json::Value = serde_json::from_str(created.trim()).expect("json");
    let token = created["token"].as_str().expect("token");
    let settings = state.path().join("config.toml");
    let text = format!(
        "token = {token:?}\nserver = \"wss://localhost:{}\"\nca_file = {:?}\n",
        env.host_addr().port(),
        certificates.ca_file
    );
    std::fs::write(&settings, text).expect("settings written");
    let (_child, mut lines) = client_with(upstream.port(), |command| {
        command.env("TUNNEL_CONFIG", &settings);
    });
    let ready = within(DEADLINE, "ready", lines.next_line()).await.expect("read").expect("a line");
    assert!(ready.contains("\"ready\""), "server, token and CA from the settings file: {ready}");

    std::fs::write(&settings, "tokn = 1\n").expect("settings written");
    let (code, stdout, _) = tunnel_tests::run_tunnel(state.path(), &["http", "1", "--json"]).await;
    assert_eq!(code, Some(1));
    assert!(stdout.contains("invalid_settings"), "an unknown key is named, not ignored: {stdout}");
}
