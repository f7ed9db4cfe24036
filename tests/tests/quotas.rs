//! Quota enforcement at the ingress: a tunnel, or an account, whose quota state says exceeded is
//! refused 429 `quota_exceeded` with `Retry-After` until its period ends, at once and with no
//! NATS round trip per request; other tunnels are untouched. The tunnel's client is told.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use tunnel_schemas::usage::{QUOTA_STATE_BUCKET, Quota, QuotaLevel, QuotaState, Scope};
use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Upstream, run_tunnel, within};

/// A system without an auditor: the test writes the quota states, as the auditor would.
fn without_auditor() -> EnvOptions {
    EnvOptions { in_process_auditor: false, ..EnvOptions::default() }
}

/// The quota-state bucket, made as the auditor makes it.
async fn states(env: &TestEnv) -> kv::Store {
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    let config = kv::Config { bucket: QUOTA_STATE_BUCKET.into(), history: 1, ..Default::default() };
    js.create_key_value(config).await.expect("bucket")
}

async fn put(bucket: &kv::Store, scope: Scope, level: QuotaLevel, lasting: Duration) {
    let until_ms = tunnel_schemas::now_ms() + u64::try_from(lasting.as_millis()).expect("ms");
    let state =
        QuotaState { scope: scope.clone(), quota: Quota::RequestsPerMinute, level, used: 11, limit: 10, until_ms };
    bucket.put(scope.key(), tunnel_schemas::encode(&state).into()).await.expect("put");
}

/// The status, error code and `Retry-After` of a request to `name`.
async fn answer(env: &TestEnv, name: &str) -> (u16, String, Option<u64>) {
    let response = env.get(name, "/echo").await;
    let header = |key: &str| response.headers().get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let retry = header("retry-after").and_then(|v| v.parse().ok());
    (response.status().as_u16(), header(tunnel_ingress::ERROR_HEADER).unwrap_or_default(), retry)
}

/// Waits until requests to `name` get `status`; how long that took.
async fn until_status(env: &TestEnv, name: &str, status: u16, within_time: Duration) -> Duration {
    let started = Instant::now();
    within(within_time, &format!("{name} answering {status}"), async {
        while answer(env, name).await.0 != status {
            tokio::task::yield_now().await;
        }
    })
    .await;
    started.elapsed()
}

#[tokio::test]
async fn an_exceeded_tunnel_is_refused_until_its_period_ends_and_others_are_untouched() {
    let env = TestEnv::start_with(without_auditor()).await;
    let upstream = Upstream::start().await;
    let mut busy = env.tunnel(upstream.port(), Some("busy")).await;
    let _calm = env.tunnel(upstream.port(), Some("calm")).await;
    let bucket = states(&env).await;
    assert_eq!(answer(&env, "busy").await.0, 200);
    // The ingress looks for a bucket it did not find every second; once it mirrors it, a state
    // reaches it as fast as the watch delivers.
    put(&bucket, Scope::Tunnel("warm-up".into()), QuotaLevel::Exceeded, Duration::from_secs(30)).await;
    until_status(&env, "warm-up", 429, Duration::from_secs(3)).await;

    put(&bucket, Scope::Tunnel("busy".into()), QuotaLevel::Warning, Duration::from_secs(30)).await;
    let told = within(DEADLINE, "the client told of the warning", async {
        loop {
            match busy.next_event().await {
                Some(tunnel_client::Event::Quota { level, .. }) => return level,
                Some(_) => {}
                None => panic!("the client ended"),
            }
        }
    })
    .await;
    assert_eq!(told, "warning", "the session-host relays the warning to the tunnel's client");
    put(&bucket, Scope::Tunnel("busy".into()), QuotaLevel::Exceeded, Duration::from_secs(30)).await;
    let took = until_status(&env, "busy", 429, Duration::from_secs(2)).await;
    let (status, code, retry) = answer(&env, "busy").await;
    assert_eq!((status, code.as_str()), (429, "quota_exceeded"));
    assert!(retry.is_some_and(|secs| (28..=30).contains(&secs)), "Retry-After is the period's end: {retry:?}");
    assert_eq!(answer(&env, "calm").await.0, 200, "other tunnels are untouched");
    eprintln!("enforced {took:?} after the state was stored");

    put(&bucket, Scope::Tunnel("busy".into()), QuotaLevel::Warning, Duration::from_secs(30)).await;
    until_status(&env, "busy", 200, Duration::from_secs(2)).await;

    put(&bucket, Scope::Tunnel("busy".into()), QuotaLevel::Exceeded, Duration::from_millis(1500)).await;
    until_status(&env, "busy", 429, Duration::from_secs(2)).await;
    until_status(&env, "busy", 200, DEADLINE).await;
    assert!(
        bucket.entry(Scope::Tunnel("busy".into()).key()).await.expect("entry").is_some(),
        "the block lifted at the period's end by itself, the state still stored"
    );
}

#[tokio::test]
async fn an_exceeded_account_blocks_all_its_tunnels() {
    let env = TestEnv::start_with(EnvOptions { auth: "tokens", ..without_auditor() }).await;
    let state = tempfile::tempdir().expect("state");
    let nats = env.nats.url().to_owned();
    for args in [&["account", "create", "acme"][..], &["account", "create", "globex"][..]] {
        let args = [&["admin", "--nats", nats.as_str()][..], args].concat();
        assert_eq!(run_tunnel(state.path(), &args).await.0, Some(0));
    }
    let mut tokens = Vec::new();
    for account in ["acme", "acme", "globex"] {
        let (_, out, _) = run_tunnel(state.path(), &["admin", "--nats", &nats, "token", "create", account]).await;
        let created: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        tokens.push(created["token"].as_str().expect("token").to_owned());
    }
    let upstream = Upstream::start().await;
    let mut open = Vec::new();
    for (name, token) in ["acme-one", "acme-two", "globex-one"].into_iter().zip(&tokens) {
        let options =
            tunnel_client::Options { token: Some(token.clone()), ..env.client_options(upstream.port(), name) };
        open.push(tunnel_tests::Tunnel::ready_with(tunnel_tests::Tunnel::spawn_with(options)).await);
    }
    let bucket = states(&env).await;
    put(&bucket, Scope::Account("acme".into()), QuotaLevel::Exceeded, Duration::from_secs(30)).await;
    until_status(&env, "acme-one", 429, Duration::from_secs(2)).await;
    assert_eq!(answer(&env, "acme-two").await.1, "quota_exceeded", "every tunnel of the account");
    assert_eq!(answer(&env, "globex-one").await.0, 200, "another account's tunnel is untouched");
    bucket.delete(Scope::Account("acme".into()).key()).await.expect("delete");
    until_status(&env, "acme-two", 200, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_crossed_quota_blocks_the_tunnel_on_every_ingress_within_two_seconds_and_lifts_at_the_next_minute() {
    let minute_secs = 6;
    let options = EnvOptions { usage_minute_secs: minute_secs, ..EnvOptions::default() };
    let mut env = TestEnv::start_with(options).await;
    let ingresses = [env.ingress_addr(), env.add_ingress().await];
    let upstream = Upstream::start().await;
    let _busy = env.tunnel(upstream.port(), Some("busy")).await;
    let _calm = env.tunnel(upstream.port(), Some("calm")).await;
    let state = tempfile::tempdir().expect("state");
    let args = ["admin", "--nats", env.nats.url(), "quota", "set", "busy", "--requests-per-minute", "10"];
    assert_eq!(run_tunnel(state.path(), &args).await.0, Some(0));

    // The ten requests fit in one (shortened) minute: start at the beginning of one.
    let minute_ms = minute_secs * 1000;
    let into_minute = tunnel_schemas::now_ms() % minute_ms;
    tokio::time::sleep(Duration::from_millis(minute_ms - into_minute + 50)).await;
    let period_end_ms = tunnel_schemas::now_ms() - tunnel_schemas::now_ms() % minute_ms + minute_ms;
    for i in 0..10 {
        let response = env.get_via(ingresses[i % 2], "busy", "/echo").await;
        assert_eq!(response.status(), 200, "request {} of a limit of 10 is served", i + 1);
    }
    let crossed = Instant::now();
    let mut latencies = Vec::new();
    for ingress in ingresses {
        within(Duration::from_secs(2), "the block on every ingress", async {
            while env.get_via(ingress, "busy", "/echo").await.status() != 429 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        latencies.push(crossed.elapsed());
        let refused = env.get_via(ingress, "busy", "/echo").await;
        let code = refused.headers().get(tunnel_ingress::ERROR_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(code.as_deref(), Some("quota_exceeded"));
        assert_eq!(env.get_via(ingress, "calm", "/echo").await.status(), 200, "the other tunnel keeps working");
    }
    eprintln!("blocked on both ingresses {latencies:?} after the crossing request");

    within(Duration::from_secs(minute_secs + 3), "the block to lift at the next minute", async {
        while env.get_via(ingresses[0], "busy", "/echo").await.status() != 200 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(tunnel_schemas::now_ms() >= period_end_ms, "not before the period ended");
}
