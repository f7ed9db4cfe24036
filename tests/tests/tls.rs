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

/// The `tunnel` binary exposing `port` through the session-host at `wss://localhost:<host port>`,
/// trusting `ca_file`; its stdout lines (JSON).
fn wss_client(env: &TestEnv, port: u16, ca_file: &std::path::Path) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(binary("tunnel"))
        .args(["http", &port.to_string(), "--name", "secure"])
        .args(["--server", &format!("wss://localhost:{}", env.host_addr().port())])
        .env("SSL_CERT_FILE", ca_file)
        .env("TUNNEL_STATE_DIR", tempfile::tempdir().expect("dir").path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tunnel starts");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

fn environment(certificates: &TestCertificates) -> EnvOptions {
    EnvOptions { tls: Some((certificates.cert_file.clone(), certificates.key_file.clone())), ..EnvOptions::default() }
}

#[tokio::test]
async fn the_ingress_serves_https_for_every_tunnel_and_redirects_plain_http() {
    let certificates = TestCertificates::issue(&["*.tunnel.test", "localhost"]);
    let env = TestEnv::start_with(environment(&certificates)).await;
    let upstream = Upstream::start().await;
    // The real client over wss://, trusting the test CA through SSL_CERT_FILE.
    let (_client, mut lines) = wss_client(&env, upstream.port(), &certificates.ca_file);
    let ready = within(DEADLINE, "ready", lines.next_line()).await.expect("read").expect("a line");
    assert!(ready.contains("\"ready\""), "the client trusts the host through SSL_CERT_FILE: {ready}");
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
