//! Several clients of one account serve one name together, each saying so (`--shared`); a
//! client of another account, or one that does not say so, never joins.

use futures_util::StreamExt;
use tunnel_client::{ClientError, Options};
use tunnel_schemas::ErrorCode;
use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Tunnel, Upstream, within};

async fn token(env: &TestEnv, account: &str) -> String {
    env.admin(&["token", "create", account]).await["token"].as_str().expect("token").to_owned()
}

fn client(env: &TestEnv, upstream: &Upstream, token: &str, shared: bool) -> Tunnel {
    let options = Options { token: Some(token.to_owned()), shared, ..env.client_options(upstream.port(), "team") };
    Tunnel::spawn_with(options)
}

async fn refusal(tunnel: Tunnel) -> ErrorCode {
    match tunnel.finish().await {
        Err(ClientError::Refused(failure)) => failure.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_accounts_clients_share_a_name_and_strangers_never_join() {
    let env = TestEnv::start_with(EnvOptions { auth: "tokens", lease_ttl_secs: 3, ..EnvOptions::default() }).await;
    env.admin(&["account", "create", "acme"]).await;
    env.admin(&["account", "create", "other"]).await;
    let (laptop, server, stranger) = (token(&env, "acme").await, token(&env, "acme").await, token(&env, "other").await);
    let (mut first_upstream, mut second_upstream) = (Upstream::start().await, Upstream::start().await);

    let first = Tunnel::ready_with(client(&env, &first_upstream, &laptop, true)).await;
    let _second = Tunnel::ready_with(client(&env, &second_upstream, &server, true)).await;
    let lone = client(&env, &first_upstream, &server, false);
    assert_eq!(refusal(lone).await, ErrorCode::NameInUse, "a client that does not say it shares does not join");
    let intruder = client(&env, &first_upstream, &stranger, true);
    assert_eq!(refusal(intruder).await, ErrorCode::NameInUse, "another account never joins");
    let anonymous = Options { token: None, shared: true, ..env.client_options(first_upstream.port(), "team") };
    assert_eq!(refusal(Tunnel::spawn_with(anonymous)).await, ErrorCode::Unauthorized);

    for _ in 0..40 {
        assert_eq!(env.get("team", "/echo").await.status(), 200);
    }
    let (to_first, to_second) = (first_upstream.take_count(), second_upstream.take_count());
    assert_eq!(to_first + to_second, 40, "each request is served once");
    assert!(to_first > 0 && to_second > 0, "both members serve: {to_first} and {to_second}");

    // The member that created the lease crashes; the other keeps the name alive by itself.
    first.kill();
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    let leases = js.get_key_value(tunnel_schemas::subjects::LEASES_BUCKET).await.expect("lease bucket");
    let key = tunnel_schemas::subjects::lease_key(&tunnel_schemas::names::TunnelName::parse("team").expect("name"));
    let mut renewals = leases.watch(&key).await.expect("watch");
    within(DEADLINE, "two renewals by the remaining member", async {
        for _ in 0..2 {
            let entry = renewals.next().await.expect("a change").expect("an entry");
            assert_eq!(entry.operation, async_nats::jetstream::kv::Operation::Put, "the lease is renewed, not dropped");
        }
    })
    .await;
    for _ in 0..5 {
        assert_eq!(env.get("team", "/echo").await.status(), 200);
    }
    assert_eq!(second_upstream.take_count(), 5, "the remaining member serves everything");
    let intruder = client(&env, &first_upstream, &stranger, true);
    assert_eq!(refusal(intruder).await, ErrorCode::NameInUse, "the name stays with the account");
}
