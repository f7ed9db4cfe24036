//! Every exchange a direct connection carries, the tunnel carries: bodies of any size, responses
//! that flow before they are finished, long polls, WebSockets, cancellation both ways, and small
//! requests next to a big transfer.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Upstream, pattern, sha256_hex, within};

fn pattern_bytes(length: u64) -> Vec<u8> {
    (0..length).map(pattern).collect()
}

#[tokio::test]
async fn large_bodies_stream_both_ways_intact() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let body = pattern_bytes(24 << 20);
    let response = env.request(Method::POST, &tunnel.name, "/echo").body(body.clone()).send().await.expect("response");
    assert_eq!(response.status(), 200);
    let echoed = response.bytes().await.expect("whole body");
    assert_eq!(echoed.len(), body.len());
    assert_eq!(sha256_hex(&echoed), sha256_hex(&body));

    let length = 40 << 20;
    let download = env.get(&tunnel.name, &format!("/stream/{length}")).await.bytes().await.expect("whole body");
    assert_eq!(download.len() as u64, length);
    assert_eq!(sha256_hex(&download), sha256_hex(&pattern_bytes(length)));
}

#[tokio::test]
async fn chunked_uploads_of_unknown_length_stream() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..64).map(|i| Ok(vec![i as u8; 100_000])).collect();
    let expected: Vec<u8> = (0..64).flat_map(|i| vec![i as u8; 100_000]).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = env.request(Method::POST, &tunnel.name, "/sha256").body(body).send().await.expect("response");
    assert_eq!(response.text().await.expect("body"), format!("{} {}", expected.len(), sha256_hex(&expected)));
}

#[tokio::test]
async fn small_nats_messages_still_carry_large_bodies() {
    let env =
        TestEnv::start_with(EnvOptions { nats_config: "max_payload: 65536".into(), ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let body = pattern_bytes(3 << 20);
    let response = env.request(Method::POST, &tunnel.name, "/echo").body(body.clone()).send().await.expect("response");
    assert_eq!(sha256_hex(&response.bytes().await.expect("body")), sha256_hex(&body));
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let response = env.get(&tunnel.name, "/sse").await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    // The second event comes 30 s later: a tunnel that buffered would deliver nothing before that.
    let first = within(Duration::from_secs(5), "the first event", body.next()).await.expect("a chunk").expect("data");
    assert_eq!(first.as_ref(), b"data: first\n\n");
}

#[tokio::test]
async fn a_public_client_hanging_up_aborts_the_local_request() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let response = env.get(&tunnel.name, "/endless").await;
    let mut body = response.bytes_stream();
    for _ in 0..4 {
        within(DEADLINE, "a chunk", body.next()).await.expect("a chunk").expect("data");
    }
    drop(body);
    upstream.hang_dropped(Duration::from_secs(1)).await;
    assert_eq!(env.get(&tunnel.name, "/").await.status(), 200, "the tunnel keeps serving");
}

#[tokio::test]
async fn a_tunnel_client_dropping_mid_download_breaks_the_public_body() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let response = env.get(&tunnel.name, "/endless").await;
    let mut body = response.bytes_stream();
    within(DEADLINE, "a chunk", body.next()).await.expect("a chunk").expect("data");
    tunnel.kill();
    let ended = within(Duration::from_secs(5), "the body to end", async {
        loop {
            match body.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    })
    .await;
    assert!(ended.is_err(), "a truncated body must end with an error, never cleanly");
}

#[tokio::test]
async fn a_configured_data_idle_timeout_cuts_a_silent_stream() {
    let env = TestEnv::start_with(EnvOptions { stream_idle_timeout_secs: 2, ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let mut body = env.get(&tunnel.name, "/sse").await.bytes_stream();
    within(DEADLINE, "the first event", body.next()).await.expect("a chunk").expect("data");
    // The second event is 30 s away; with 2 s allowed between bytes the stream is cut, broken.
    let next = within(Duration::from_secs(10), "the cut", body.next()).await;
    assert!(matches!(next, Some(Err(_))), "a cut stream ends with an error, never cleanly: {next:?}");
}

#[tokio::test]
async fn a_long_poll_outlives_the_stream_idle_timeout() {
    let env = TestEnv::start_with(EnvOptions { request_timeout_secs: 60, ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    // Longer than IDLE_TIMEOUT (20 s): pings keep the waiting exchange alive.
    let response =
        within(Duration::from_secs(40), "the long poll", env.request(Method::GET, &tunnel.name, "/delay/24000").send())
            .await
            .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "ok");
}

#[tokio::test]
async fn websockets_pass_through_untouched() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let url = format!("ws://{}/t/{}/ws", env.ingress_addr(), tunnel.name);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().max_message_size(Some(64 << 20));
    let (mut socket, response) =
        within(DEADLINE, "the upgrade", tokio_tungstenite::connect_async_with_config(url, Some(config), true))
            .await
            .expect("upgraded");
    assert_eq!(response.status(), 101);

    socket.send(Message::Text("hello".into())).await.expect("send");
    assert_eq!(next_message(&mut socket).await, Message::Text("hello".into()));
    let binary: Vec<u8> = (0..=255).collect();
    socket.send(Message::Binary(binary.clone().into())).await.expect("send");
    assert_eq!(next_message(&mut socket).await, Message::Binary(binary.into()));
    socket.send(Message::Ping(b"are you there".to_vec().into())).await.expect("send");
    assert_eq!(next_message_or_pong(&mut socket).await, Message::Pong(b"are you there".to_vec().into()));
    let big = pattern_bytes(16 << 20);
    socket.send(Message::Binary(big.clone().into())).await.expect("send");
    match next_message(&mut socket).await {
        Message::Binary(echoed) => assert_eq!(sha256_hex(&echoed), sha256_hex(&big)),
        other => panic!("expected the 16 MiB message back, got {:?}", other.len()),
    }
    socket
        .send(Message::Close(Some(CloseFrame { code: CloseCode::Library(4321), reason: "bye".into() })))
        .await
        .expect("send");
    match next_message(&mut socket).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4321);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the close echoed, got {other:?}"),
    }
}

#[tokio::test]
async fn fragmented_websocket_messages_are_reassembled_by_the_local_server() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let host = env.public_host(&tunnel.name);
    let mut stream = tokio::net::TcpStream::connect(env.ingress_addr()).await.expect("connect");
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(handshake.as_bytes()).await.expect("handshake");
    let mut head = vec![0_u8; 4096];
    let n = within(DEADLINE, "the 101", stream.read(&mut head)).await.expect("read");
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    // "Hello" in two masked fragments: text frame without FIN, then a final continuation frame.
    let mask = [1_u8, 2, 3, 4];
    let fragment = |opcode: u8, fin: bool, payload: &[u8]| {
        let mut frame = vec![opcode | if fin { 0x80 } else { 0 }, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    };
    stream.write_all(&fragment(0x1, false, b"Hel")).await.expect("fragment");
    stream.write_all(&fragment(0x0, true, b"lo")).await.expect("fragment");
    let mut echoed = [0_u8; 7];
    within(DEADLINE, "the echo", stream.read_exact(&mut echoed)).await.expect("read");
    assert_eq!(echoed, [0x81, 5, b'H', b'e', b'l', b'l', b'o'], "the server saw one message");
}

async fn next_message(socket: &mut tunnel_tests::raw::WsSocket) -> Message {
    within(DEADLINE, "a websocket message", socket.next()).await.expect("open").expect("message")
}

async fn next_message_or_pong(socket: &mut tunnel_tests::raw::WsSocket) -> Message {
    loop {
        match next_message(socket).await {
            Message::Ping(_) => {}
            other => return other,
        }
    }
}

#[tokio::test]
async fn small_requests_are_not_stuck_behind_a_big_transfer() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    // A 1 GiB download nobody reads: its window fills and it stalls, holding its share only.
    let stalled = env.get(&tunnel.name, &format!("/stream/{}", 1_u64 << 30)).await;
    let mut fast = 0;
    for i in 0..50 {
        let response = within(
            Duration::from_secs(2),
            "a small request",
            env.request(Method::POST, &tunnel.name, "/echo").body(format!("{i}")).send(),
        )
        .await
        .expect("response");
        assert_eq!(response.text().await.expect("body"), format!("{i}"));
        fast += 1;
    }
    assert_eq!(fast, 50);
    drop(stalled);
}

#[tokio::test]
async fn expect_continue_keep_alive_and_h2c_work() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let host = env.public_host(&tunnel.name);

    let mut stream = tokio::net::TcpStream::connect(env.ingress_addr()).await.expect("connect");
    let head = format!("POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut interim = vec![0_u8; 25];
    within(DEADLINE, "100 Continue", stream.read_exact(&mut interim)).await.expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.expect("body");
    let mut response = Vec::new();
    while !response.ends_with(b"hello") {
        let mut buf = [0_u8; 1024];
        let n = within(DEADLINE, "the response", stream.read(&mut buf)).await.expect("read");
        assert!(n > 0, "connection closed early: {}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"));
    assert!(upstream.next_request().await.header_values("expect").is_empty());

    // The same connection serves a second request (keep-alive).
    stream.write_all(format!("GET /echo?again HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.expect("second");
    let mut buf = [0_u8; 1024];
    let n = within(DEADLINE, "the second response", stream.read(&mut buf)).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));

    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
    let response = h2
        .post(format!("http://{}/t/{}/echo", env.ingress_addr(), tunnel.name))
        .body("over h2c")
        .send()
        .await
        .expect("h2c response");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.text().await.expect("body"), "over h2c");
}
