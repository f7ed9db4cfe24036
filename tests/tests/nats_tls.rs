//! Encryption in transit to NATS: the whole system (ingress, session-host, auditor, and the
//! operator's `tunnel admin` and `tunnel trail --nats`) on a nats-server that speaks TLS only and
//! verifies its clients' certificates, every component as its own user; and a component that
//! does not trust the server's CA, or has no client certificate, is refused.

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tunnel_kit::nats::{ConnectError, NatsTls, connect_with};
use tunnel_schemas::audit::AuditBatch;
use tunnel_tests::{DEADLINE, EnvOptions, NatsServer, TestCertificates, TestEnv, Upstream, binary, run_tunnel, within};

/// The server's `tls {}` block: its certificate for 127.0.0.1, clients checked against the same
/// CA when `verify`. The handshake timeout is generous: test machines are busy.
fn server_tls(certs: &TestCertificates, verify: bool) -> String {
    format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: {verify}, timeout: 5 }}",
        certs.cert_file, certs.key_file, certs.ca_file
    )
}

/// The client settings trusting `certs`' CA, presenting its client certificate when `mutual`.
fn client_tls(certs: &TestCertificates, mutual: bool) -> NatsTls {
    let file = |path: &std::path::Path| path.display().to_string();
    NatsTls {
        nats_ca_file: file(&certs.ca_file),
        nats_cert_file: if mutual { file(&certs.client_cert_file) } else { String::new() },
        nats_key_file: if mutual { file(&certs.client_key_file) } else { String::new() },
    }
}

/// The `INFO` line a client is greeted with on the server's port.
async fn greeting(url: &str) -> String {
    let address = url.rsplit("://").next().expect("an address");
    let stream = tokio::net::TcpStream::connect(address).await.expect("tcp");
    let mut line = String::new();
    within(DEADLINE, "the INFO line", BufReader::new(stream).read_line(&mut line)).await.expect("read");
    line
}

#[tokio::test]
async fn the_whole_system_runs_over_mutual_tls_to_nats() {
    let certs = TestCertificates::issue(&["127.0.0.1", "localhost"]);
    let mut env = TestEnv::start_with(EnvOptions {
        permissions: true,
        auth: "tokens",
        nats_config: format!("{}\nhttp_port: -1", server_tls(&certs, true)),
        nats_tls: client_tls(&certs, true),
        ..EnvOptions::default()
    })
    .await;
    assert!(env.nats.url().starts_with("tls://"), "the server announces TLS: {}", env.nats.url());
    let info = greeting(env.nats.url()).await;
    assert!(info.contains("\"tls_required\":true"), "no plain-text client port: {info}");

    env.admin(&["account", "create", "crypt"]).await;
    let created = env.admin(&["token", "create", "crypt"]).await;
    env.use_token(created["token"].as_str().expect("a token"));
    let upstream = Upstream::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let _tunnel = env.recorded_tunnel(upstream.port(), "tls-demo", state.path()).await;
    let response = env.request(reqwest::Method::POST, "tls-demo", "/echo").body("over tls").send();
    let response = within(DEADLINE, "a response", response).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "over tls");

    // The audit record came through the ingress's TLS connection into the stream.
    let admin = env.nats_as("admin", "test").await;
    let audit = async_nats::jetstream::new(admin).get_stream("AUDIT").await.expect("audit stream");
    let consumer = audit
        .create_consumer(pull::OrderedConfig {
            filter_subject: "audit.tls-demo.req".into(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let message = within(DEADLINE, "the audit record", messages.next()).await.expect("a record").expect("message");
    let batch: AuditBatch = tunnel_schemas::decode(&message.payload, usize::MAX).expect("an audit batch");
    assert_eq!((batch.records[0].method.as_str(), batch.records[0].path.as_str()), ("POST", "/echo"));

    // The binaries read the same settings: a session-host process (TUNNEL_NATS_CA_FILE, ...)
    // becomes ready, and the operator reads the recording with --nats-ca-file and friends.
    let _process = env.start_host_process(&[]).await;
    // What an operator checks: every connection the server has is TLS (its monitoring says
    // which version), the ingress's, the session-hosts', the auditor's and this test's.
    let monitoring = env.nats.server().monitoring_url().expect("monitoring on");
    let connz: serde_json::Value =
        reqwest::get(format!("{monitoring}/connz")).await.expect("connz").json().await.expect("json");
    let connections = connz["connections"].as_array().expect("connections");
    assert!(connections.len() >= 5, "{connz}");
    for connection in connections {
        assert!(connection["tls_version"].as_str().is_some_and(|v| v.starts_with("1.")), "{connection}");
    }
    let admin_url = env.nats_url_as("admin");
    let mut args = vec!["trail".to_owned(), "tls-demo".into(), "--recorded".into(), "--nats".into(), admin_url];
    args.extend(env.nats_tls_flags());
    let (code, stdout, stderr) = run_tunnel(state.path(), &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("/echo"), "the recorded exchange: {stdout}");
}

/// Connects to `url` with `tls`, as a service would.
async fn connect(url: &str, tls: &NatsTls) -> Result<async_nats::Client, ConnectError> {
    within(DEADLINE, "the connection attempt", connect_with(url, "probe", "_INBOX.probe", tls)).await
}

#[tokio::test]
async fn a_component_that_cannot_verify_the_server_or_be_verified_is_refused() {
    let certs = TestCertificates::issue(&["127.0.0.1"]);
    let stranger = TestCertificates::issue(&["127.0.0.1"]);
    let server = NatsServer::start_with(&server_tls(&certs, false));
    let url = server.url();

    connect(url, &client_tls(&certs, false)).await.expect("the right CA connects");
    // No CA file: the system's roots, which never signed the server's certificate.
    let refused = connect(url, &NatsTls::default()).await.expect_err("an unknown issuer is refused");
    assert!(refused.to_string().contains("invalid peer certificate: UnknownIssuer"), "{refused}");
    let plain = url.replacen("tls://", "nats://", 1);
    connect(&plain, &NatsTls::default()).await.expect_err("a nats:// URL upgrades to TLS and is refused the same");
    let refused = connect(url, &client_tls(&stranger, false)).await.expect_err("another CA is refused");
    // Both test CAs have the same (empty) name: the other one's signature does not check out.
    assert!(refused.to_string().contains("invalid peer certificate: BadSignature"), "{refused}");

    // A server that verifies clients refuses one without a certificate, or with one from
    // another CA.
    let verifying = NatsServer::start_with(&server_tls(&certs, true));
    connect(verifying.url(), &client_tls(&certs, true)).await.expect("a client certificate of the CA connects");
    connect(verifying.url(), &client_tls(&certs, false)).await.expect_err("no client certificate is refused");
    let foreign = NatsTls { nats_ca_file: client_tls(&certs, false).nats_ca_file, ..client_tls(&stranger, true) };
    connect(verifying.url(), &foreign).await.expect_err("a client certificate of another CA is refused");

    // A service given the wrong CA stops at start-up and says why.
    let output = tokio::process::Command::new(binary("tunnel-auditor"))
        .args(["--nats", url, "--listen", "127.0.0.1:0"])
        .env("TUNNEL_NATS_CA_FILE", &stranger.ca_file)
        .env_remove("NATS_URL")
        .env_remove("TUNNEL_NATS_URL")
        .kill_on_drop(true)
        .output();
    let output = within(DEADLINE, "the auditor to give up", output).await.expect("auditor runs");
    assert!(!output.status.success(), "the auditor refuses to run without a trusted NATS");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect to NATS") && stderr.contains("invalid peer certificate"), "{stderr}");
}
