//! A request and its response cross the tunnel intact: every method, every byte value, repeated
//! and non-UTF-8 headers, raw query strings, proxy headers.

use reqwest::Method;
use tunnel_tests::{TestEnv, Upstream, raw};

#[tokio::test]
async fn every_method_reaches_the_local_service() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), Some("methods")).await;
    let methods =
        ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "PURGE", "MKCOL", "X-CUSTOM-VERB"];
    for method in methods {
        let method = Method::from_bytes(method.as_bytes()).expect("valid token");
        let response =
            env.request(method.clone(), &tunnel.name, "/echo/m").body("payload").send().await.expect("response");
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(response.headers()["x-echo-method"], method.as_str());
        assert_eq!(response.text().await.expect("body"), "payload", "{method}");
        let seen = upstream.next_request().await;
        assert_eq!(seen.method, method.as_str());
        assert_eq!(seen.body, "payload");
    }
}

#[tokio::test]
async fn head_keeps_content_length_without_a_body() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let host = env.public_host(&tunnel.name);
    let request = format!("HEAD /head HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let response = raw::http(env.ingress_addr(), request.as_bytes()).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header_values("content-length"), [b"1234".as_slice()]);
    assert!(response.body.is_empty());
}

#[tokio::test]
async fn status_codes_pass_through() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    for code in [201, 204, 301, 304, 400, 404, 418, 500, 502, 503] {
        let response = env.get(&tunnel.name, &format!("/status/{code}")).await;
        assert_eq!(response.status().as_u16(), code);
        assert!(response.headers().get("x-tunnel-error").is_none(), "a local status is not a tunnel error");
    }
    let redirect = env.get(&tunnel.name, "/status/302").await;
    assert_eq!(redirect.status(), 302, "redirects are returned, not followed");
}

#[tokio::test]
async fn binary_bodies_with_every_byte_value_round_trip() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let body: Vec<u8> = (0..=255_u8).cycle().take(256 * 1000).collect();
    let response = env
        .request(Method::POST, &tunnel.name, "/echo")
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("body").as_ref(), body.as_slice());
    assert_eq!(upstream.next_request().await.body.as_ref(), body.as_slice());
}

#[tokio::test]
async fn empty_and_chunked_request_bodies_arrive_whole() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let host = env.public_host(&tunnel.name);
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
    let response = raw::http(env.ingress_addr(), chunked.as_bytes()).await;
    assert_eq!(response.body, b"hello world");
    let seen = upstream.next_request().await;
    assert_eq!(seen.body, "hello world");
    assert!(seen.header_values("transfer-encoding").is_empty() || seen.header_values("content-length").is_empty());

    let response = env.request(Method::POST, &tunnel.name, "/echo").send().await.expect("response");
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.expect("body").is_empty());
    assert!(upstream.next_request().await.body.is_empty());
}

#[tokio::test]
async fn a_header_repeated_100_times_and_three_cookies_survive() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let mut request = env.request(Method::GET, &tunnel.name, "/cookies");
    for i in 0..100 {
        request = request.header("x-repeat", format!("value-{i}"));
    }
    let response = request.send().await.expect("response");
    let cookies: Vec<&[u8]> = response.headers().get_all("set-cookie").iter().map(|v| v.as_bytes()).collect();
    assert_eq!(cookies, [b"a=1; Path=/".as_slice(), b"b=2; HttpOnly", b"c=3; Secure"]);
    assert_eq!(response.headers()["x-raw"].as_bytes(), b"\xff\xfe raw");
    let seen = upstream.next_request().await;
    let expected: Vec<Vec<u8>> = (0..100).map(|i| format!("value-{i}").into_bytes()).collect();
    let repeated: Vec<Vec<u8>> = seen.header_values("x-repeat").into_iter().map(<[u8]>::to_vec).collect();
    assert_eq!(repeated, expected);
}

#[tokio::test]
async fn non_utf8_request_header_values_arrive_byte_for_byte() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let host = env.public_host(&tunnel.name);
    let mut request = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nX-Latin: caf").into_bytes();
    request.extend_from_slice(b"\xe9 \xff\x80\r\n\r\n");
    let response = raw::http(env.ingress_addr(), &request).await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.next_request().await.header_values("x-latin"), [b"caf\xe9 \xff\x80".as_slice()]);
}

#[tokio::test]
async fn query_strings_are_carried_raw() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let host = env.public_host(&tunnel.name);
    let targets = [
        "/echo?a=1&a=2&a=3",
        "/echo?b=%2F%2f%zz%&c=%E2%82%AC&d=+&e=%20&&f==",
        "/echo/%2E%2E/odd%2Fpath;param?q=a%26b&q=%3D",
        "/echo?",
        "/echo?x=[1]&y={2}&z=|'!*()",
    ];
    for target in targets {
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let response = raw::http(env.ingress_addr(), request.as_bytes()).await;
        assert_eq!(response.status, 200, "{target}");
        assert_eq!(response.header_values("x-echo-target"), [target.as_bytes()]);
        assert_eq!(upstream.next_request().await.target, target);
    }
}

#[tokio::test]
async fn path_routing_strips_the_prefix() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), Some("pathrouted")).await;
    for (public, local) in
        [("/t/pathrouted/echo/a?b=%20", "/echo/a?b=%20"), ("/t/pathrouted", "/"), ("/t/PathRouted?x", "/?x")]
    {
        let request = format!("GET {public} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let response = raw::http(env.ingress_addr(), request.as_bytes()).await;
        assert_eq!(response.status, 200, "{public}");
        assert_eq!(upstream.next_request().await.target, local);
    }
    drop(tunnel);
}

#[tokio::test]
async fn proxy_headers_are_set_and_hop_by_hop_headers_dropped() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let response = env
        .request(Method::GET, &tunnel.name, "/x")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic eA==")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-request-id", "trace-me-123")
        .header("x-end-to-end", "kept")
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let seen = upstream.next_request().await;
    for hop in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(seen.header_values(hop).is_empty(), "{hop} must not be forwarded");
    }
    assert_eq!(seen.header("x-end-to-end"), "kept");
    assert_eq!(seen.header("x-forwarded-for"), "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.header("x-forwarded-proto"), "http");
    assert_eq!(seen.header("x-forwarded-host"), env.public_host(&tunnel.name));
    assert_eq!(seen.header("host"), env.public_host(&tunnel.name));
    assert_eq!(seen.header("x-request-id"), "trace-me-123");

    env.get(&tunnel.name, "/x").await;
    let generated = upstream.next_request().await.header("x-request-id");
    assert_eq!(generated.len(), 36, "a UUID is generated when the client sends none: {generated}");
}

#[tokio::test]
async fn five_hundred_concurrent_requests_each_get_their_own_response() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..500 {
        let request = env.request(Method::POST, &tunnel.name, &format!("/echo/{i}")).body(format!("body-{i}"));
        requests.spawn(async move {
            let response = request.send().await.expect("response");
            let target = response.headers()["x-echo-target"].to_str().expect("ascii").to_owned();
            (i, response.status(), target, response.text().await.expect("body"))
        });
    }
    let mut seen = 0;
    while let Some(result) = requests.join_next().await {
        let (i, status, target, body) = result.expect("task");
        assert_eq!(status, 200);
        assert_eq!(target, format!("/echo/{i}"));
        assert_eq!(body, format!("body-{i}"));
        seen += 1;
    }
    assert_eq!(seen, 500);
}
