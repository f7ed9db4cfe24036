//! A session-host routes takeover notices and ingress stream frames to its sessions through one
//! host-wide subscription each: a takeover from another host still evicts the old session, and
//! the uploads of several tunnels on one host each reach their own tunnel.

use reqwest::Method;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::frames::{HostFrame, Welcome};
use tunnel_tests::raw::{self, WsSocket};
use tunnel_tests::{TestEnv, Upstream, sha256_hex};

/// Opens a session on the host at `server` for `name`, resuming it with `secret` if given.
async fn open_session(server: &str, name: &str, secret: Option<&str>) -> (WsSocket, Welcome) {
    let mut socket = raw::ws_connect(server).await;
    match raw::ws_hello(&mut socket, 1, Some(name), secret).await {
        HostFrame::Welcome(welcome) => (socket, welcome),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn resuming_on_another_host_evicts_the_old_session() {
    let mut env = TestEnv::start().await;
    let second = env.add_host().await;
    let (mut old, welcome) = open_session(&env.server_url(), "wanderer", None).await;
    let (_new, resumed) = open_session(&format!("ws://{second}"), "wanderer", Some(&welcome.resume_secret)).await;
    assert_eq!(resumed.name, "wanderer");
    let evicted = raw::ws_next_frame(&mut old).await;
    assert!(
        matches!(&evicted, Some(HostFrame::Refused(failure)) if failure.code == ErrorCode::SessionReplaced),
        "expected the old session to be replaced, got {evicted:?}"
    );
    raw::ws_closed(&mut old).await;
}

#[tokio::test]
async fn concurrent_uploads_through_tunnels_of_one_host_reach_their_own_tunnel() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnels = [env.tunnel(upstream.port(), None).await, env.tunnel(upstream.port(), None).await];
    let bodies: Vec<Vec<u8>> = (0..2_u8).map(|i| vec![i + 1; 3 << 20]).collect();
    let uploads = tunnels
        .iter()
        .zip(&bodies)
        .map(|(tunnel, body)| env.request(Method::POST, &tunnel.name, "/sha256").body(body.clone()).send());
    let responses = futures_util::future::join_all(uploads).await;
    for (response, body) in responses.into_iter().zip(&bodies) {
        let text = response.expect("response").text().await.expect("body");
        assert_eq!(text, format!("{} {}", body.len(), sha256_hex(body)));
    }
}
