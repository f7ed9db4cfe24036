//! A hostile or broken client is closed with a typed error; every other tunnel keeps working.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::frames::{ClientFrame, HostFrame};
use tunnel_tests::{EnvOptions, TestEnv, Upstream, raw};

/// Sends `message` as the first thing on a fresh socket and expects a refusal with `code`.
async fn refused_after(env: &TestEnv, message: Message, code: ErrorCode) {
    let mut socket = raw::ws_connect(&env.server_url()).await;
    socket.send(message).await.expect("send");
    match raw::ws_next_frame(&mut socket).await {
        Some(HostFrame::Refused(failure)) => assert_eq!(failure.code, code),
        other => panic!("expected a {code} refusal, got {other:?}"),
    }
    raw::ws_closed(&mut socket).await;
}

#[tokio::test]
async fn garbage_oversized_and_wrong_version_clients_are_closed_while_others_work() {
    let env = TestEnv::start_with(EnvOptions { handshake_timeout_secs: 1, ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let healthy = env.tunnel(upstream.port(), Some("healthy")).await;
    assert_eq!(env.get(&healthy.name, "/").await.status(), 200);

    refused_after(&env, Message::Binary(vec![0xc1, 0xff, 0x00, 0x13].into()), ErrorCode::BadFrame).await;
    refused_after(&env, Message::Binary(tunnel_schemas::encode(&"just a string").into()), ErrorCode::BadFrame).await;
    refused_after(&env, Message::Text("hello?".into()), ErrorCode::BadFrame).await;
    refused_after(&env, Message::Binary(tunnel_schemas::encode(&ClientFrame::Bye).into()), ErrorCode::BadFrame).await;

    let mut wrong_version = raw::ws_connect(&env.server_url()).await;
    match raw::ws_hello(&mut wrong_version, 99, None, None).await {
        HostFrame::Refused(failure) => {
            assert_eq!(failure.code, ErrorCode::ProtocolVersion);
            assert!(failure.detail.contains("99"), "{}", failure.detail);
        }
        other => panic!("expected a version refusal, got {other:?}"),
    }

    let mut oversized = raw::ws_connect(&env.server_url()).await;
    let _ = oversized.send(Message::Binary(vec![0_u8; 17 << 20].into())).await;
    raw::ws_closed(&mut oversized).await;

    let mut silent = raw::ws_connect(&env.server_url()).await;
    match raw::ws_next_frame(&mut silent).await {
        Some(HostFrame::Refused(failure)) => assert_eq!(failure.code, ErrorCode::HandshakeTimeout),
        other => panic!("expected a handshake timeout, got {other:?}"),
    }

    assert_eq!(env.get(&healthy.name, "/").await.status(), 200, "the healthy tunnel still serves");
}

#[tokio::test]
async fn garbage_after_the_handshake_closes_only_that_session() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let healthy = env.tunnel(upstream.port(), None).await;

    let mut rogue = raw::ws_connect(&env.server_url()).await;
    assert!(matches!(raw::ws_hello(&mut rogue, 1, Some("rogue"), None).await, HostFrame::Welcome(_)));
    // A reply for a stream that does not exist is ignored.
    let stray = ClientFrame::Reply { stream: 4242, reply: vec![1, 2, 3].into(), end: true };
    rogue.send(Message::Binary(tunnel_schemas::encode(&stray).into())).await.expect("send");
    rogue.send(Message::Binary(vec![0x92, 0xff].into())).await.expect("send");
    match raw::ws_next_frame(&mut rogue).await {
        Some(HostFrame::Refused(failure)) => assert_eq!(failure.code, ErrorCode::BadFrame),
        other => panic!("expected a bad-frame refusal, got {other:?}"),
    }
    raw::ws_closed(&mut rogue).await;
    assert_eq!(env.get("rogue", "/").await.headers()["x-tunnel-error"], "tunnel_offline");
    assert_eq!(env.get(&healthy.name, "/").await.status(), 200);
}

#[tokio::test]
async fn an_undecodable_reply_fails_only_its_own_request() {
    let env = TestEnv::start().await;
    let mut rogue = raw::ws_connect(&env.server_url()).await;
    assert!(matches!(raw::ws_hello(&mut rogue, 1, Some("liar"), None).await, HostFrame::Welcome(_)));
    let pending = tokio::spawn(env.request(reqwest::Method::GET, "liar", "/").send());
    let Some(HostFrame::Request { stream, .. }) = raw::ws_next_frame(&mut rogue).await else {
        panic!("expected a request frame");
    };
    let lie = ClientFrame::Reply { stream, reply: b"\xc1 not msgpack".to_vec().into(), end: true };
    rogue.send(Message::Binary(tunnel_schemas::encode(&lie).into())).await.expect("send");
    let response = pending.await.expect("task").expect("response");
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-tunnel-error"], "upstream_bad_response");
}

#[tokio::test]
async fn the_connect_endpoint_refuses_what_is_not_a_websocket_upgrade_and_answers_pings() {
    let env = TestEnv::start().await;
    let path = tunnel_schemas::frames::CONNECT_PATH;
    let plain =
        raw::http(env.host_addr(), format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").as_bytes())
            .await;
    assert_eq!(plain.status, 426, "a plain GET asks for the upgrade");
    let keyless = format!(
        "GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    assert_eq!(raw::http(env.host_addr(), keyless.as_bytes()).await.status, 400, "an upgrade needs a key");
    let old = format!(
        "GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let old = raw::http(env.host_addr(), old.as_bytes()).await;
    assert_eq!((old.status, old.header_values("sec-websocket-version")), (426, vec![&b"13"[..]]));

    let mut socket = raw::ws_connect(&env.server_url()).await;
    socket.send(Message::Ping(b"are you there".to_vec().into())).await.expect("send a ping");
    let pong = tunnel_tests::within(tunnel_tests::DEADLINE, "the pong", async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Pong(payload))) => return payload,
                Some(Ok(_)) => {}
                other => panic!("socket ended before the pong: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(&pong[..], b"are you there");
    assert!(matches!(raw::ws_hello(&mut socket, 1, None, None).await, HostFrame::Welcome(_)), "the session goes on");
}
