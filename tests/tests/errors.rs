//! Every failure has its own status, error code and short body, and arrives promptly.

use std::time::{Duration, Instant};

use reqwest::Method;
use tunnel_tests::{EnvOptions, TestEnv, Upstream, raw};

async fn error_code(response: reqwest::Response) -> (u16, String, serde_json::Value) {
    let status = response.status().as_u16();
    let code =
        response.headers().get("x-tunnel-error").map(|v| v.to_str().expect("ascii").to_owned()).unwrap_or_default();
    let body = response.json().await.expect("a JSON error body");
    (status, code, body)
}

#[tokio::test]
async fn an_unknown_tunnel_fails_fast_with_502() {
    let env = TestEnv::start().await;
    let started = Instant::now();
    let response = env
        .request(Method::GET, "nobody-here", "/")
        .header("accept", "application/json")
        .send()
        .await
        .expect("response");
    let elapsed = started.elapsed();
    let (status, code, body) = error_code(response).await;
    assert_eq!((status, code.as_str()), (502, "tunnel_offline"));
    assert_eq!(body["error"]["code"], "tunnel_offline");
    assert!(body["error"]["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    // NATS answers "no responders" at once; a wait for the request timeout would take 10 s.
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
}

#[tokio::test]
async fn error_pages_are_html_unless_json_is_accepted() {
    let env = TestEnv::start().await;
    let response = env.get("nobody-here", "/").await;
    assert_eq!(response.status(), 502);
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"));
    let page = response.text().await.expect("body");
    assert!(page.contains("tunnel_offline") && page.contains("<html"), "{page}");
}

#[tokio::test]
async fn a_host_naming_no_tunnel_gets_404() {
    let env = TestEnv::start().await;
    let request =
        b"GET /somewhere HTTP/1.1\r\nHost: example.org\r\nAccept: application/json\r\nConnection: close\r\n\r\n";
    let response = raw::http(env.ingress_addr(), request).await;
    assert_eq!(response.status, 404);
    assert_eq!(response.header_values("x-tunnel-error"), [b"no_tunnel_name".as_slice()]);
    let health =
        raw::http(env.ingress_addr(), b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(health.status, 200, "operational routes answer on hosts that name no tunnel");
}

#[tokio::test]
async fn a_local_service_that_is_down_gives_502_upstream_unreachable() {
    let env = TestEnv::start().await;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let tunnel = env.tunnel(closed_port, None).await;
    let response = env
        .request(Method::GET, &tunnel.name, "/")
        .header("accept", "application/json")
        .send()
        .await
        .expect("response");
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (502, "upstream_unreachable"));
}

#[tokio::test]
async fn a_slow_local_service_gives_504_after_the_configured_time() {
    let env = TestEnv::start_with(EnvOptions { request_timeout_secs: 1, ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let started = Instant::now();
    let response = env
        .request(Method::GET, &tunnel.name, "/slow")
        .header("accept", "application/json")
        .send()
        .await
        .expect("response");
    let elapsed = started.elapsed();
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (504, "upstream_timeout"));
    assert!(elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[tokio::test]
async fn oversized_bodies_headers_and_uris_are_refused_with_their_own_status() {
    let env = TestEnv::start_with(EnvOptions { max_body_bytes: 64 << 10, ..EnvOptions::default() }).await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let json = |request: reqwest::RequestBuilder| request.header("accept", "application/json");

    let declared = json(env.request(Method::POST, &tunnel.name, "/echo")).body(vec![0_u8; (64 << 10) + 1]).send().await;
    let (status, code, _) = error_code(declared.expect("response")).await;
    assert_eq!((status, code.as_str()), (413, "body_too_large"));

    let host = env.public_host(&tunnel.name);
    let chunk = "x".repeat(40 << 10);
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let response = raw::http(env.ingress_addr(), chunked.as_bytes()).await;
    assert_eq!(response.status, 413, "an undeclared body is cut at the limit too");

    let big_header =
        json(env.request(Method::GET, &tunnel.name, "/")).header("x-big", "y".repeat(70 << 10)).send().await;
    let (status, code, _) = error_code(big_header.expect("response")).await;
    assert_eq!((status, code.as_str()), (431, "headers_too_large"));

    let long_uri = format!("/{}", "u".repeat(9 << 10));
    let (status, code, _) =
        error_code(json(env.request(Method::GET, &tunnel.name, &long_uri)).send().await.expect("response")).await;
    assert_eq!((status, code.as_str()), (414, "uri_too_long"));

    let fine =
        env.request(Method::POST, &tunnel.name, "/echo").body(vec![7_u8; 64 << 10]).send().await.expect("response");
    assert_eq!(fine.status(), 200, "a body at the limit passes");
    // The cut chunked upload reached the local service as an aborted request; skip it.
    while upstream.next_request().await.body.len() != 64 << 10 {}
}
