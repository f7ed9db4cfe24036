//! Overload sheds load instead of queueing: a tunnel whose local service is slow answers the
//! requests beyond its session's in-flight limit at once, 503 `tunnel_busy` with `Retry-After`,
//! while another tunnel keeps answering; a public client that stops reading holds only its
//! stream's window, not the whole download.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tunnel_tests::{EnvOptions, TestEnv, Upstream};

/// How long the slow local service takes per request: longer than anything the test does
/// meanwhile, so the requests in flight are exactly the first ones.
const SLOW_MS: u64 = 3000;

#[tokio::test]
async fn a_slow_tunnel_sheds_the_excess_at_once_and_other_tunnels_are_unaffected() {
    let env = TestEnv::start_with(EnvOptions { max_inflight_per_session: 4, ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let _slow = env.tunnel(upstream.port(), Some("slow")).await;
    let _quick = env.tunnel(upstream.port(), Some("quick")).await;

    let path = format!("/delay/{SLOW_MS}");
    let sent = Instant::now();
    let requests = (0..40).map(|_| {
        let request = env.request(reqwest::Method::GET, "slow", &path);
        async move {
            let response = request.send().await.expect("a response");
            let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let code =
                response.headers().get(tunnel_ingress::ERROR_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
            (response.status().as_u16(), code, retry, sent.elapsed())
        }
    });
    let quick = async {
        let started = Instant::now();
        let status = env.get("quick", "/echo").await.status();
        (status, started.elapsed())
    };
    let (answers, (quick_status, quick_took)) = tokio::join!(join_all(requests), quick);

    let served: Vec<_> = answers.iter().filter(|(status, ..)| *status == 200).collect();
    let shed: Vec<_> = answers.iter().filter(|(status, ..)| *status == 503).collect();
    assert_eq!((served.len(), shed.len()), (4, 36), "four in flight, the rest shed: {answers:?}");
    for (_, code, retry, took) in &shed {
        assert_eq!(code.as_deref(), Some("tunnel_busy"));
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(*took < Duration::from_millis(SLOW_MS), "shed at once, not queued behind the slow ones: {took:?}");
    }
    assert_eq!(quick_status, 200);
    assert!(quick_took < Duration::from_millis(SLOW_MS), "another tunnel is not held up: {quick_took:?}");
}

/// How far a download may run ahead of a public client that stopped reading: the stream's
/// credit window (512 KiB) and the ingress's queue, plus the kernel's socket buffers on the two
/// TCP hops around the tunnel (loopback grows them to a few MiB each). A download that did not
/// wait for credit would be gigabytes ahead within seconds.
const AHEAD_AT_MOST: u64 = 32 << 20;

#[tokio::test]
async fn a_public_client_that_stops_reading_holds_only_its_window() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let mut socket = tokio::net::TcpStream::connect(env.ingress_addr()).await.expect("connect");
    let request = format!("GET /flood HTTP/1.1\r\nhost: {}\r\n\r\n", env.public_host(&tunnel.name));
    socket.write_all(request.as_bytes()).await.expect("request sent");
    let mut head = [0; 4096];
    let read = socket.read(&mut head).await.expect("a response");
    assert!(head[..read].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..read]));

    // The client reads no more. The producer must come to a stop: sample it until it has not
    // moved for a second (a stop has no event to wait on), within a deadline.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut samples = vec![upstream.flooded()];
    while samples.len() < 6 || samples[samples.len() - 6] != upstream.flooded() {
        assert!(Instant::now() < deadline, "the download never stopped: {samples:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        samples.push(upstream.flooded());
    }
    let ahead = upstream.flooded();
    assert!(ahead <= AHEAD_AT_MOST, "the download ran {ahead} bytes ahead of its reader");
    assert_eq!(env.get(&tunnel.name, "/echo").await.status(), 200, "the tunnel serves others meanwhile");
    println!(
        "| public client stops reading an endless download | stopped {:.1} MiB ahead of it |",
        ahead as f64 / f64::from(1 << 20)
    );
}
