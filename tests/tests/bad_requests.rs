//! Hostile public requests, byte for byte: each gets its proper answer (a 4xx, or a clean close
//! where HTTP gives no status), nothing reaches a local service for a refused request, and
//! another live tunnel keeps serving after every case.

use std::net::SocketAddr;

use tunnel_tests::raw::{self, RawResponse};
use tunnel_tests::{DEADLINE, TestEnv, Upstream, within};

/// What a case must get.
#[derive(Debug)]
enum Expect {
    /// This status from the server itself (hyper or the ingress), with the ingress's error code
    /// when given; nothing reaches a local service.
    Refused(u16, Option<&'static str>),
    /// The request reaches tunnel `live` (or `other`) with this method and target, and its
    /// answer comes back.
    Reaches(&'static str, &'static str),
}

struct Case {
    what: &'static str,
    request: Vec<u8>,
    expect: Expect,
}

const LIVE: &str = "live.tunnel.test";

fn case(what: &'static str, request: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case { what, request: request.into(), expect }
}

fn get(target: &str, headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n").into_bytes()
}

fn cases() -> Vec<Case> {
    use Expect::{Reaches, Refused};
    let host = format!("Host: {LIVE}\r\n");
    let many_headers: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big_value = |bytes: usize| format!("{host}X-Big: {}\r\n", "v".repeat(bytes));
    let mut raw_path = b"GET /t/live/\xff\xfe HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec();
    let raw_host = b"GET / HTTP/1.1\r\nHost: live\xff.tunnel.test\r\nConnection: close\r\n\r\n".to_vec();
    let mut raw_value = format!("GET /echo HTTP/1.1\r\n{host}X-Raw: ").into_bytes();
    raw_value.extend_from_slice(b"\xff\xfe\x80\r\nConnection: close\r\n\r\n");
    vec![
        // Framing: hyper drops the Content-Length, reads by Transfer-Encoding and closes after
        // (RFC 9112 §6.3); the local service sees the chunked body only.
        case(
            "content-length and transfer-encoding",
            format!(
                "POST /echo HTTP/1.1\r\n{host}Content-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            ),
            Reaches("POST", "/echo"),
        ),
        case(
            "transfer-encoding then content-length",
            format!(
                "POST /echo HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            ),
            Reaches("POST", "/echo"),
        ),
        case(
            "two different content-lengths",
            format!("POST /echo HTTP/1.1\r\n{host}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
            Refused(400, None),
        ),
        case(
            "a transfer-encoding that does not end in chunked",
            format!("POST /echo HTTP/1.1\r\n{host}Transfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            Refused(400, None),
        ),
        case(
            "transfer-encoding in HTTP/1.0",
            format!("POST /echo HTTP/1.0\r\n{host}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Refused(400, None),
        ),
        case("10,000 headers", get("/", &format!("{host}{many_headers}")), Refused(431, None)),
        case("a 100 KiB header value", get("/", &big_value(100 << 10)), Refused(431, Some("headers_too_large"))),
        case("a 1 MiB header value", get("/", &big_value(1 << 20)), Refused(431, None)),
        // Methods: what is not a token is refused by the parser; extension methods are carried.
        case(
            "a control byte in the method",
            b"G\x01T / HTTP/1.1\r\nHost: live.tunnel.test\r\n\r\n".to_vec(),
            Refused(400, None),
        ),
        case("a method of delimiters", format!("(GET) / HTTP/1.1\r\n{host}\r\n"), Refused(400, None)),
        case("no method", format!(" / HTTP/1.1\r\n{host}\r\n"), Refused(400, None)),
        case(
            "an extension method",
            format!("BREW /pot HTTP/1.1\r\n{host}Connection: close\r\n\r\n"),
            Reaches("BREW", "/pot"),
        ),
        // Paths: never decoded, so nothing escapes the tunnel the path names.
        case("dot segments as the name", get("/t/../live/x", ""), Refused(404, Some("no_tunnel_name"))),
        case("dot segments after the name", get("/t/live/../other/x", ""), Reaches("GET", "/../other/x")),
        case("an encoded slash in the name", get("/t/live%2Fx/", ""), Refused(404, Some("no_tunnel_name"))),
        case("a lowercase encoded slash", get("/t/live%2f..%2fother/", ""), Refused(404, Some("no_tunnel_name"))),
        case("an encoded name", get("/t/%6Cive/", ""), Refused(404, Some("no_tunnel_name"))),
        case("invalid UTF-8 in the path", std::mem::take(&mut raw_path), Refused(400, None)),
        // Hosts.
        case(
            "two Host fields",
            get("/", &format!("{host}Host: other.tunnel.test\r\n")),
            Refused(400, Some("bad_request")),
        ),
        case("the same Host twice", get("/", &format!("{host}{host}")), Refused(400, Some("bad_request"))),
        case("userinfo in the Host", get("/", "Host: a@live.tunnel.test\r\n"), Refused(400, Some("bad_request"))),
        case("invalid UTF-8 in the Host", raw_host, Refused(400, Some("bad_request"))),
        case("a Host with a port", get("/p", "Host: live.tunnel.test:1234\r\n"), Reaches("GET", "/p")),
        case("an uppercase Host", get("/u", "Host: LIVE.Tunnel.TEST\r\n"), Reaches("GET", "/u")),
        case("a Host with a trailing dot", get("/d", "Host: live.tunnel.test.\r\n"), Reaches("GET", "/d")),
        case(
            "a Host naming another tunnel than the path",
            get("/t/live/x", "Host: other.tunnel.test\r\n"),
            Expect::Reaches("GET", "other:/t/live/x"),
        ),
        case(
            "an absolute-form target naming another host",
            get("http://other.tunnel.test/x", &host),
            Refused(400, Some("bad_request")),
        ),
        case("an absolute-form target naming the Host", get("http://live.tunnel.test/a", &host), Reaches("GET", "/a")),
        case(
            "a userinfo absolute-form target",
            get("http://a@live.tunnel.test/x", ""),
            Refused(400, Some("bad_request")),
        ),
        // Header values: raw bytes are carried as they are.
        case("invalid UTF-8 in a header value", raw_value, Reaches("GET", "/echo")),
    ]
}

/// The answer to a case: its response, or `None` when the server closed without one.
async fn send(addr: SocketAddr, request: Vec<u8>) -> Option<RawResponse> {
    raw::exchange(addr, None, request).await
}

#[tokio::test]
async fn bad_requests_get_their_4xx_and_a_live_tunnel_keeps_serving() {
    let env = TestEnv::start().await;
    let (mut live_upstream, mut other_upstream) = (Upstream::start().await, Upstream::start().await);
    let _live = env.tunnel(live_upstream.port(), Some("live")).await;
    let _other = env.tunnel(other_upstream.port(), Some("other")).await;
    for (i, Case { what, request, expect }) in cases().into_iter().enumerate() {
        let answer = send(env.ingress_addr(), request).await;
        match expect {
            Expect::Refused(status, code) => {
                let answer = answer.unwrap_or_else(|| panic!("{what}: closed without a status"));
                assert_eq!(answer.status, status, "{what}: {:?}", String::from_utf8_lossy(&answer.body));
                if let Some(code) = code {
                    assert_eq!(answer.header_values("x-tunnel-error"), [code.as_bytes()], "{what}");
                }
            }
            Expect::Reaches(method, target) => {
                let answer = answer.unwrap_or_else(|| panic!("{what}: closed without a status"));
                assert_eq!(answer.status, 200, "{what}: {:?}", String::from_utf8_lossy(&answer.body));
                let (upstream, target) = match target.strip_prefix("other:") {
                    Some(target) => (&mut other_upstream, target),
                    None => (&mut live_upstream, target),
                };
                let seen = upstream.next_request().await;
                assert_eq!((seen.method.as_str(), seen.target.as_str()), (method, target), "{what}");
                check_carried(what, &seen, &answer);
            }
        }
        // The live tunnel serves the next request, and it is the next thing its service sees.
        let probe = format!("/probe/{i}");
        assert_eq!(env.get("live", &probe).await.status(), 200, "after {what}");
        assert_eq!(live_upstream.next_request().await.target, probe, "after {what}: nothing else reached live");
    }
}

/// What the local service must have seen of the cases that reach it.
fn check_carried(what: &str, seen: &tunnel_tests::Recorded, answer: &RawResponse) {
    if what.contains("content-length") && what.contains("transfer-encoding") {
        assert!(seen.header_values("content-length").is_empty(), "{what}: the length was dropped");
        assert_eq!(&seen.body[..], b"abc", "{what}: the body is the chunked one");
        assert_eq!(answer.body, b"abc");
    }
    if what.starts_with("invalid UTF-8 in a header") {
        assert_eq!(seen.header_values("x-raw"), [&b"\xff\xfe\x80"[..]], "{what}");
    }
}

#[tokio::test]
async fn bytes_sent_after_an_upgrade_request_before_its_101_are_delivered_after_it() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let _live = env.tunnel(upstream.port(), Some("live")).await;
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {LIVE}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    // A masked text frame "early", sent at once, before the 101 (RFC 6455 says to wait).
    let mask = [1_u8, 2, 3, 4];
    request.extend([0x81, 0x80 | 5]);
    request.extend(mask);
    request.extend(b"early".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut stream = raw::connect_from(env.ingress_addr(), None).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&request).await.expect("write");
    let echoed = within(DEADLINE, "the 101 and the echo", async {
        let mut bytes = Vec::new();
        let mut chunk = [0; 4096];
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&bytes));
            bytes.extend_from_slice(&chunk[..n]);
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let (head, frames) = bytes.split_at(end + 4);
                assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(head));
                if frames.len() >= 7 {
                    return frames[..7].to_vec();
                }
            }
        }
    })
    .await;
    assert_eq!(echoed, [&[0x81, 5][..], b"early"].concat(), "the early frame went through, once, in order");
}
