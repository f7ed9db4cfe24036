//! Rate limits at the ingress: a tunnel or a client address over its rate gets 429
//! `rate_limited` with `Retry-After`, before anything reaches NATS, and nothing else is slowed.

use futures_util::future::join_all;
use tunnel_tests::{EnvOptions, TestEnv, Upstream};

/// Sends `count` requests to `name` at once; returns how many were admitted and the refusals'
/// `Retry-After` values.
async fn burst(env: &TestEnv, name: &str, count: usize) -> (usize, Vec<String>) {
    let responses = join_all((0..count).map(|_| env.get(name, "/echo"))).await;
    let mut retry_after = Vec::new();
    let mut admitted = 0;
    for response in responses {
        match response.status().as_u16() {
            200 => admitted += 1,
            429 => {
                assert_eq!(response.headers()["x-tunnel-error"], "rate_limited");
                retry_after.push(response.headers()["retry-after"].to_str().expect("ascii").to_owned());
            }
            other => panic!("unexpected status {other}"),
        }
    }
    (admitted, retry_after)
}

#[tokio::test]
async fn a_tunnel_over_its_rate_gets_429_and_other_tunnels_do_not() {
    let env = TestEnv::start_with(EnvOptions { rate_limit_per_tunnel: 5, ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let _busy = env.tunnel(upstream.port(), Some("busy")).await;
    let _calm = env.tunnel(upstream.port(), Some("calm")).await;
    let (admitted, refused) = burst(&env, "busy", 30).await;
    assert!((5..=8).contains(&admitted), "a burst of 5 at 5/s: {admitted} admitted");
    assert!(!refused.is_empty() && refused.iter().all(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)), "{refused:?}");
    let (admitted, refused) = burst(&env, "calm", 5).await;
    assert_eq!((admitted, refused.len()), (5, 0), "the other tunnel has its own bucket");
}

#[tokio::test]
async fn an_address_over_its_rate_gets_429_on_every_tunnel() {
    let env = TestEnv::start_with(EnvOptions { rate_limit_per_ip: 4, ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let _a = env.tunnel(upstream.port(), Some("first")).await;
    let _b = env.tunnel(upstream.port(), Some("second")).await;
    let (first, _) = burst(&env, "first", 4).await;
    let (second, refused) = burst(&env, "second", 4).await;
    assert_eq!(first, 4);
    assert!(second <= 1 && refused.len() >= 3, "one address shares one bucket: {second} admitted");
}
