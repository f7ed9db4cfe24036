//! Who may open a tunnel: account tokens from `tunnel admin`, their name rules, revocation that
//! closes live sessions on every host, and no token ever printed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tunnel_client::{Options, Target};
use tunnel_schemas::ErrorCode;
use tunnel_schemas::policy::PublicPolicy;
use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Tunnel, Upstream, binary, run_tunnel, within};

/// `tunnel admin … --json` against the environment's NATS; its single JSON line.
async fn admin(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let nats = env.nats_url_as("admin");
    let args = [&["admin", "--nats", nats.as_str()][..], args].concat();
    let (code, stdout, stderr) = run_tunnel(std::path::Path::new("/nonexistent"), &args).await;
    assert_eq!(code, Some(0), "tunnel {args:?}: {stdout}{stderr}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn client(env: &TestEnv, port: u16, name: Option<&str>, token: Option<&str>) -> Tunnel {
    env.client_with_token(port, name, token)
}

async fn refused(tunnel: Tunnel) -> ErrorCode {
    tunnel.refusal().await.code
}

#[tokio::test]
async fn a_host_requiring_tokens_refuses_to_start_without_a_token_store() {
    let nats = tunnel_tests::NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = tunnel_session_host::HostConfig { nats_url: nats.url().into(), ..Default::default() };
    assert_eq!(config.auth, "tokens", "tokens are the default");
    let metrics = tunnel_kit::telemetry::init_metrics();
    let run = tunnel_session_host::run(listener, client, config, metrics, tokio_util::sync::CancellationToken::new());
    let result = within(DEADLINE, "the host to give up", run).await;
    let error = result.expect_err("no token store: no start");
    assert!(error.to_string().contains("tunnel admin"), "the error says what to do: {error}");
}

#[tokio::test]
async fn tokens_admit_their_names_only_and_a_revocation_closes_sessions_within_two_seconds() {
    let mut env = TestEnv::start_with(EnvOptions { auth: "tokens", ..EnvOptions::default() }).await;
    let second_host = env.add_host().await;
    let upstream = Upstream::start().await;
    admin(&env, &["account", "create", "acme"]).await;
    let created = admin(&env, &["token", "create", "acme", "--name", "*-acme"]).await;
    let (token, id) = (created["token"].as_str().expect("token"), created["id"].as_str().expect("id"));

    assert_eq!(refused(client(&env, upstream.port(), Some("shop-acme"), None)).await, ErrorCode::Unauthorized);
    let wrong = format!("{}{}", &token[..token.len() - 4], "0000");
    assert_eq!(refused(client(&env, upstream.port(), Some("shop-acme"), Some(&wrong))).await, ErrorCode::Unauthorized);
    let other = client(&env, upstream.port(), Some("shop-other"), Some(token));
    assert_eq!(refused(other).await, ErrorCode::NameNotAllowed);
    assert_eq!(refused(client(&env, upstream.port(), None, Some(token))).await, ErrorCode::NameNotAllowed);

    // The real binary, logging at debug level: it serves, and never prints the token.
    let mut child = Command::new(binary("tunnel"))
        .args(["http", &upstream.port().to_string(), "--server", &env.server_url(), "--name", "shop-acme"])
        .env("TUNNEL_TOKEN", token)
        .env("RUST_LOG", "debug")
        .env("TUNNEL_STATE_DIR", tempfile::tempdir().expect("dir").path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tunnel starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = within(DEADLINE, "ready", stdout.next_line()).await.expect("read").expect("a line");
    assert!(ready.contains("\"ready\""), "{ready}");
    assert_eq!(env.get("shop-acme", "/echo").await.status(), 200);

    let listed = run_tunnel(
        std::path::Path::new("/nonexistent"),
        &["admin", "--nats", &env.nats_url_as("admin"), "token", "list"],
    )
    .await;
    assert!(listed.1.contains(id) && !listed.1.contains(&token[20..]), "list shows ids, never secrets: {}", listed.1);

    // The same token on another host.
    let elsewhere = Tunnel::spawn_with(Options {
        server: format!("ws://{second_host}"),
        target: Target::port(upstream.port()),
        name: Some("api-acme".into()),
        record: false,
        state_dir: None,
        token: Some(token.to_owned()),
        policy: PublicPolicy::default(),
        shared: false,
        inspector: None,
    });
    let mut elsewhere = elsewhere;
    assert!(matches!(elsewhere.next_event().await, Some(tunnel_client::Event::Ready { .. })));

    let revoked_at = Instant::now();
    admin(&env, &["token", "revoke", id]).await;
    let exit = within(DEADLINE, "the client to be closed", child.wait()).await.expect("wait");
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(2), "closed {took:?} after the revocation");
    assert_eq!(exit.code(), Some(1), "a revoked token is final");
    assert_eq!(env.get("shop-acme", "/echo").await.status(), 502, "the tunnel is gone");
    assert_eq!(refused(elsewhere).await, ErrorCode::Unauthorized, "on every host");
    assert!(revoked_at.elapsed() < Duration::from_secs(2), "on every host within 2 s: {:?}", revoked_at.elapsed());
    let mut rest = String::new();
    while let Ok(Some(line)) = stdout.next_line().await {
        rest.push_str(&line);
    }
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).await.expect("stderr");
    let secret = &token[20..];
    assert!(rest.contains("unauthorized"), "the client says why: {rest}");
    assert!(
        !ready.contains(secret) && !rest.contains(secret) && !stderr.contains(secret),
        "the token is never printed"
    );
    assert_eq!(refused(client(&env, upstream.port(), Some("shop-acme"), Some(token))).await, ErrorCode::Unauthorized);

    // Every bind, refusal and revocation is in the trail: 3 refusals, the bind, the revocation,
    // and the audit records of the two requests.
    let nats = env.nats_url_as("admin");
    let args = ["trail", "shop-acme", "--nats", &nats, "--since", "0", "--follow", "--limit", "7"];
    let (code, trail, _) = run_tunnel(std::path::Path::new("/nonexistent"), &args).await;
    assert_eq!(code, Some(0), "{trail}");
    let access: Vec<(String, String)> = trail
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("json"))
        .filter(|event| event["kind"] == "access")
        .map(|event| {
            (event["access"].as_str().unwrap_or("").to_owned(), event["code"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    let count = |what: &str, code: &str| access.iter().filter(|(a, c)| a == what && c == code).count();
    assert_eq!(count("refused", "unauthorized"), 3, "{access:?}");
    assert_eq!((count("bound", ""), count("revoked", "unauthorized")), (1, 1), "{access:?}");
    assert!(!trail.contains(secret), "access events carry token ids, never secrets");
}

#[tokio::test]
async fn a_reserved_name_belongs_to_its_account_and_its_owner_takes_it_back_after_a_crash() {
    let options = EnvOptions { auth: "tokens", lease_ttl_secs: 3, ..EnvOptions::default() };
    let env = TestEnv::start_with(options).await;
    let upstream = Upstream::start().await;
    for account in ["acme", "rival"] {
        admin(&env, &["account", "create", account]).await;
    }
    let acme = admin(&env, &["token", "create", "acme"]).await["token"].as_str().expect("token").to_owned();
    let rival = admin(&env, &["token", "create", "rival"]).await["token"].as_str().expect("token").to_owned();
    admin(&env, &["name", "reserve", "shop", "acme"]).await;

    let stranger = client(&env, upstream.port(), Some("shop"), Some(&rival));
    assert_eq!(refused(stranger).await, ErrorCode::NameOwned, "free, but reserved");
    let crashed = Tunnel::ready_with(client(&env, upstream.port(), Some("shop"), Some(&acme))).await;
    crashed.kill();
    let back = Instant::now();
    let _owner = Tunnel::ready_with(client(&env, upstream.port(), Some("shop"), Some(&acme))).await;
    assert!(back.elapsed() < Duration::from_secs(2), "the owner binds at once, without a resume secret");
    assert_eq!(env.get("shop", "/echo").await.status(), 200);

    // A name reserved while someone else holds it: their session ends at its next renewal.
    let mut holder = Tunnel::ready_with(client(&env, upstream.port(), Some("market"), Some(&rival))).await;
    admin(&env, &["name", "reserve", "market", "acme"]).await;
    loop {
        match holder.next_event().await {
            None => break,
            Some(tunnel_client::Event::Request { .. }) => {}
            Some(other) => panic!("expected the session to end, got {other:?}"),
        }
    }
    assert_eq!(refused(holder).await, ErrorCode::NameOwned);
}
