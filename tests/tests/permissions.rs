//! The users and subject permissions of `nats/accounts.conf` carry the whole system: every
//! component connects as its own user, and a token check, a request, a streamed download, its
//! audit record, its recording, the trail through the session-host, a replay, a tunnel's
//! public-side policy, its usage counters and a quota decision all work within them.

use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Upstream, run_tunnel, within};

#[tokio::test]
async fn every_component_works_within_its_permissions() {
    let mut env = TestEnv::start_with(EnvOptions { permissions: true, auth: "tokens", ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let admin = env.nats_url_as("admin");
    let (code, _, stderr) = run_tunnel(state.path(), &["admin", "--nats", &admin, "account", "create", "perm"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, _) = run_tunnel(state.path(), &["admin", "--nats", &admin, "token", "create", "perm"]).await;
    assert_eq!(code, Some(0));
    let created: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    env.use_token(created["token"].as_str().expect("token"));
    let tunnel = env.recorded_tunnel(upstream.port(), "perm-demo", state.path()).await;
    let since = tunnel_trail::filter::now_ms().to_string();
    assert_eq!(env.get("perm-demo", "/echo").await.status(), 200);
    let download = within(DEADLINE, "the download", env.get("perm-demo", "/stream/2097152").await.bytes()).await;
    assert_eq!(download.expect("body").len(), 2 << 20, "streamed bodies cross under the ingress and host users");

    let trail = |recorded: bool| {
        let mut args = vec!["trail", "perm-demo", "--follow", "--limit", "2", "--since", since.as_str()];
        if recorded {
            args.push("--recorded");
        }
        let state = state.path().to_owned();
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move { run_tunnel(&state, &args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    for recorded in [false, true] {
        let (code, stdout, stderr) = trail(recorded).await;
        assert_eq!(code, Some(0), "the session-host reads the log under its user: {stdout}{stderr}");
        assert_eq!(stdout.lines().count(), 2, "{stdout}");
    }
    let to = format!("http://{}/t/perm-demo", env.ingress_addr());
    let (code, stdout, stderr) =
        run_tunnel(state.path(), &["replay", "perm-demo", "--since", &since, "--limit", "1", "--to", &to, "--compare"])
            .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (code, stdout, _) =
        run_tunnel(state.path(), &["trail", "perm-demo", "--nats", &admin, "--since", &since, "--recorded"]).await;
    assert_eq!((code, stdout.lines().count()), (Some(0), 3), "the operator reads it all, the replay included");
    let fenced =
        tunnel_schemas::policy::PolicySpec { basic_auth: vec!["ann:long enough".into()], ..Default::default() };
    let options = tunnel_client::Options {
        policy: fenced.build().expect("valid"),
        ..env.client_options(upstream.port(), "perm-fenced")
    };
    let _fenced = tunnel_tests::Tunnel::ready_with(tunnel_tests::Tunnel::spawn_with(options)).await;
    assert_eq!(env.get("perm-fenced", "/echo").await.status(), 401, "the host stores the policy, the ingress reads it");
    let admitted = env.request(reqwest::Method::GET, "perm-fenced", "/echo").basic_auth("ann", Some("long enough"));
    assert_eq!(within(DEADLINE, "a response", admitted.send()).await.expect("response").status(), 200);
    usage_is_counted_and_quotas_decided(&env, state.path()).await;
    let id = created["id"].as_str().expect("id");
    let (code, _, _) = run_tunnel(state.path(), &["admin", "--nats", &admin, "token", "revoke", id]).await;
    assert_eq!(code, Some(0));
    match tunnel.finish().await {
        Err(tunnel_client::ClientError::Refused(failure)) => {
            assert_eq!(failure.code, tunnel_schemas::ErrorCode::Unauthorized, "the host's watch sees the revocation");
        }
        other => panic!("expected the session closed, got {other:?}"),
    }
}

/// The auditor, under its user, counted perm-demo's requests (3 so far, the replay apart) and
/// writes the quota state of a limit the operator sets.
async fn usage_is_counted_and_quotas_decided(env: &TestEnv, state: &std::path::Path) {
    use futures_util::StreamExt;
    use tunnel_schemas::usage::{Period, QUOTA_STATE_BUCKET, Scope, USAGE_BUCKET, UsageCounter, usage_key};
    let admin = env.nats_url_as("admin");
    let nats = tunnel_kit::nats::connect(&admin, "test-admin", "_INBOX.test").await.expect("nats");
    let js = async_nats::jetstream::new(nats);
    let scope = Scope::Tunnel("perm-demo".into());
    let day = usage_key(&scope, Period::Day, Period::Day.start(tunnel_schemas::now_ms(), 60_000));
    let usage = js.get_key_value(USAGE_BUCKET).await.expect("the auditor created the usage bucket");
    let mut counters = usage.watch_with_history(&day).await.expect("watch");
    within(DEADLINE, "the counters", async {
        while let Some(entry) = counters.next().await {
            let counter: UsageCounter = tunnel_schemas::decode(&entry.expect("ok").value, usize::MAX).expect("counter");
            if counter.requests == 2 && counter.replay_requests == 1 {
                return;
            }
        }
    })
    .await;
    let args = ["admin", "--nats", &admin, "quota", "set", "perm-demo", "--requests-per-day", "1"];
    assert_eq!(run_tunnel(state, &args).await.0, Some(0));
    let states = js.get_key_value(QUOTA_STATE_BUCKET).await.expect("state bucket");
    let mut watch = states.watch_with_history(scope.key()).await.expect("watch");
    let written = within(DEADLINE, "the quota state", watch.next()).await.expect("a state").expect("ok");
    assert_eq!(written.operation, async_nats::jetstream::kv::Operation::Put);
    let args = ["admin", "--nats", &admin, "quota", "remove", "perm-demo"];
    assert_eq!(run_tunnel(state, &args).await.0, Some(0));
}

/// The server's next permission violation for a client connected as `user`, after `act`.
async fn violation_after<F, Fut>(env: &TestEnv, user: &str, act: F) -> String
where
    F: FnOnce(async_nats::Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (events, mut violations) = tokio::sync::mpsc::unbounded_channel();
    let url = env.nats_url_as(user);
    let address: async_nats::ServerAddr = url.parse().expect("url");
    let (name, password) = (address.username().expect("user"), address.password().expect("password"));
    let client = async_nats::ConnectOptions::with_user_and_password(name.into(), password.into())
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = events.send(e.to_string());
                }
            }
        })
        .connect(url.as_str())
        .await
        .expect("connects");
    act(client.clone()).await;
    let violation = within(DEADLINE, "a permission violation", violations.recv()).await.expect("an error");
    drop(client);
    violation
}

#[tokio::test]
async fn components_are_refused_what_they_do_not_need() {
    let env = TestEnv::start_with(EnvOptions { permissions: true, ..EnvOptions::default() }).await;
    let denied = violation_after(&env, "ingress", |nats| async move {
        let _requests = nats.subscribe("tun.someone.req").await.expect("sent");
        nats.flush().await.expect("flushed");
    })
    .await;
    assert!(
        denied.to_ascii_lowercase().contains("permissions violation"),
        "ingress reads no tunnel's requests: {denied}"
    );
    let denied = violation_after(&env, "session-host", |nats| async move {
        nats.publish("_INBOX.host.other-host.session.st.1", "forged".into()).await.expect("sent");
        nats.flush().await.expect("flushed");
    })
    .await;
    assert!(
        denied.to_ascii_lowercase().contains("permissions violation"),
        "no host writes into another's inbox: {denied}"
    );
    let denied = violation_after(&env, "session-host", |nats| async move {
        nats.publish("$KV.tunnel_tokens.t.forged", "x".into()).await.expect("sent");
        nats.flush().await.expect("flushed");
    })
    .await;
    assert!(denied.to_ascii_lowercase().contains("permissions violation"), "hosts cannot write tokens: {denied}");
}
