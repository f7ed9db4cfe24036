//! Tunnel sessions: names are owned atomically, a dropped client fails its requests at once and
//! loses its subscription, a reconnecting client gets its name back.

use std::time::{Duration, Instant};

use reqwest::Method;
use tunnel_client::Event;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::frames::HostFrame;
use tunnel_tests::{CutProxy, TestEnv, Tunnel, Upstream, raw};

#[tokio::test]
async fn a_client_killed_mid_request_fails_the_request_within_a_second() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let name = tunnel.name.clone();
    let request = env.request(Method::GET, &name, "/hang").header("accept", "application/json").send();
    let pending = tokio::spawn(request);
    upstream.next_request().await; // the request reached the local service
    let killed_at = Instant::now();
    tunnel.kill();
    let response = pending.await.expect("task").expect("response");
    let elapsed = killed_at.elapsed();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-tunnel-error"], "tunnel_disconnected");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    // The subscription went with the session: the next request fails as offline, not as a
    // timeout, once the client has not come back within the ingress's grace (3 s; the lease is
    // kept for a resume: ADR 0004).
    let started = Instant::now();
    let next = env.get(&name, "/").await;
    assert_eq!(next.headers()["x-tunnel-error"], "tunnel_offline");
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_reconnecting_client_keeps_its_url() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let proxy = CutProxy::start(env.host_addr()).await;
    let mut tunnel = Tunnel::open(&format!("ws://{}", proxy.addr()), upstream.port(), None).await;
    let (name, url) = (tunnel.name.clone(), tunnel.url.clone());
    assert_eq!(env.get(&name, "/").await.status(), 200);
    for _ in 0..3 {
        proxy.cut();
        assert!(matches!(tunnel.next_event().await, Some(Event::Disconnected { .. })));
        let resumed = loop {
            match tunnel.next_event().await {
                Some(Event::Reconnecting { .. }) => {}
                other => break other,
            }
        };
        assert_eq!(resumed, Some(Event::Resumed { url: url.clone(), name: name.clone() }));
        assert_eq!(env.get(&name, "/").await.status(), 200);
    }
}

#[tokio::test]
async fn two_clients_racing_for_one_name_exactly_one_wins() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    for round in 0..5 {
        let name = format!("contested-{round}");
        let mut first = env.spawn_client(&env.server_url(), upstream.port(), Some(&name));
        let mut second = env.spawn_client(&env.server_url(), upstream.port(), Some(&name));
        let (a, b) = tokio::join!(first.next_event(), second.next_event());
        let (winner, loser) = match (a, b) {
            (Some(Event::Ready { .. }), None) => (first, second),
            (None, Some(Event::Ready { .. })) => (second, first),
            other => panic!("expected exactly one ready client, got {other:?}"),
        };
        let error = loser.finish().await.expect_err("the loser is refused");
        assert_eq!(error.code(), ErrorCode::NameInUse.as_str());
        assert_eq!(env.get(&name, "/").await.status(), 200, "the winner serves");
        winner.stop().await;
    }
}

#[tokio::test]
async fn a_name_held_by_a_vanished_client_is_kept_for_its_resume_but_released_by_a_goodbye() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), Some("keepsake")).await;
    tunnel.kill();
    let intruder = env.spawn_client(&env.server_url(), upstream.port(), Some("keepsake"));
    assert_eq!(intruder.finish().await.expect_err("refused").code(), ErrorCode::NameInUse.as_str());

    let polite = env.tunnel(upstream.port(), Some("polite")).await;
    polite.stop().await;
    let next = env.tunnel(upstream.port(), Some("polite")).await;
    assert_eq!(next.name, "polite", "a goodbye releases the name at once");
}

#[tokio::test]
async fn resuming_evicts_the_stale_session_and_a_wrong_secret_is_refused() {
    let env = TestEnv::start().await;
    let mut old = raw::ws_connect(&env.server_url()).await;
    let HostFrame::Welcome(welcome) = raw::ws_hello(&mut old, 1, Some("evictee"), None).await else {
        panic!("expected a welcome");
    };
    let mut thief = raw::ws_connect(&env.server_url()).await;
    match raw::ws_hello(&mut thief, 1, Some("evictee"), Some("not-the-secret")).await {
        HostFrame::Refused(failure) => assert_eq!(failure.code, ErrorCode::NameInUse),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut new = raw::ws_connect(&env.server_url()).await;
    match raw::ws_hello(&mut new, 1, Some("evictee"), Some(&welcome.resume_secret)).await {
        HostFrame::Welcome(resumed) => assert_eq!(resumed.name, "evictee"),
        other => panic!("expected a welcome, got {other:?}"),
    }
    match raw::ws_next_frame(&mut old).await {
        Some(HostFrame::Refused(failure)) => assert_eq!(failure.code, ErrorCode::SessionReplaced),
        other => panic!("expected the old session to be replaced, got {other:?}"),
    }
    raw::ws_closed(&mut old).await;
}

#[tokio::test]
async fn random_names_are_distinct_valid_labels() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let a = env.tunnel(upstream.port(), None).await;
    let b = env.tunnel(upstream.port(), None).await;
    assert_ne!(a.name, b.name);
    for tunnel in [&a, &b] {
        assert!(tunnel_schemas::names::TunnelName::parse(&tunnel.name).is_ok(), "{}", tunnel.name);
        assert!(tunnel.url.contains(&tunnel.name));
        assert_eq!(env.get(&tunnel.name, "/").await.status(), 200);
    }
}

#[tokio::test]
async fn invalid_and_reserved_names_are_refused_with_their_codes() {
    let env = TestEnv::start().await;
    for (name, code) in
        [("Bad_Name", ErrorCode::InvalidName), ("-x-", ErrorCode::InvalidName), ("www", ErrorCode::ReservedName)]
    {
        let client = env.spawn_client(&env.server_url(), 9, Some(name));
        assert_eq!(client.finish().await.expect_err("refused").code(), code.as_str(), "{name}");
    }
}
