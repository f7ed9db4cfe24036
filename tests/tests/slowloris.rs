//! Slow and silent clients cannot hold the ingress or the session-host: hundreds of connections
//! that trickle their request heads, send nothing, or upgrade and never say hello are closed by
//! the timeouts, while a live tunnel keeps serving and a new tunnel client gets in. Floods from
//! one address are refused with 429 without touching other addresses.
//!
//! Attackers connect from other loopback addresses (127.0.0.2 and up) than the real clients
//! (127.0.0.1), as they would from other hosts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tunnel_tests::raw::{self, connect_from};
use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Tunnel, Upstream, within};

/// Slow connections per scenario.
const SLOW: usize = 320;
/// Interval between the bytes of a trickled head.
const TRICKLE: Duration = Duration::from_millis(100);

/// The `n`-th attacker address: 127.0.0.2 and up, `per_address` connections each.
fn attacker(n: usize, per_address: usize) -> IpAddr {
    let last = u8::try_from(2 + n / per_address).expect("few addresses");
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Waits until the server closes `stream`, trickling `head` a byte per [`TRICKLE`] meanwhile
/// (nothing when empty); returns when it was closed.
async fn trickle_until_closed(mut stream: TcpStream, head: Vec<u8>) -> Instant {
    let mut next = 0;
    let mut buf = [0; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {} // a 408, a refusal frame: the close follows
            },
            () = tokio::time::sleep(TRICKLE), if next < head.len() => {
                if stream.write_all(&head[next..=next]).await.is_err() {
                    return Instant::now();
                }
                next += 1;
            }
        }
    }
}

/// Opens [`SLOW`] slow connections to `addr`: `kinds` heads in turn (an empty one sends nothing).
async fn open_slow(addr: SocketAddr, kinds: &[Vec<u8>], per_address: usize) -> Vec<JoinHandle<Instant>> {
    let mut slow = Vec::with_capacity(SLOW);
    for n in 0..SLOW {
        let stream = connect_from(addr, Some(attacker(n, per_address))).await;
        slow.push(tokio::spawn(trickle_until_closed(stream, kinds[n % kinds.len()].clone())));
    }
    slow
}

/// Waits for every slow connection to be closed by the server, within `deadline` of `since`.
async fn all_closed(slow: Vec<JoinHandle<Instant>>, since: Instant, deadline: Duration) {
    let closed = within(deadline + Duration::from_secs(2), "every slow connection to be closed", join_all(slow)).await;
    let last = closed.into_iter().map(|c| c.expect("slow task")).max().expect("some");
    assert!(last.duration_since(since) <= deadline, "the last slow connection closed after {:?}", last - since);
}

/// `count` requests through tunnel `name`, each answered 200 within `deadline`.
async fn served(env: &TestEnv, name: &str, count: usize, deadline: Duration) {
    for i in 0..count {
        let response = within(deadline, "a request through the live tunnel", env.get(name, &format!("/r{i}"))).await;
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn slow_and_silent_headers_do_not_hold_the_ingress() {
    let env = TestEnv::start_with(EnvOptions { header_read_timeout_secs: 1, ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let live = env.tunnel(upstream.port(), Some("live")).await;
    let trickled = b"GET / HTTP/1.1\r\nHost: live.tunnel.test\r\nX-Slow: 0123456789abcdefghij".to_vec();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM".to_vec();
    let started = Instant::now();
    let slow = open_slow(env.ingress_addr(), &[trickled, Vec::new(), preface], SLOW).await;
    served(&env, &live.name, 20, Duration::from_secs(2)).await;
    all_closed(slow, started, Duration::from_secs(3)).await;
    served(&env, &live.name, 1, Duration::from_secs(2)).await;
}

/// An upgrade request to the session-host, cut after its head: no hello ever follows.
fn upgrade_head() -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        tunnel_schemas::frames::CONNECT_PATH
    )
    .into_bytes()
}

#[tokio::test]
async fn unfinished_handshakes_do_not_hold_the_session_host() {
    let options = EnvOptions { handshake_timeout_secs: 1, ..EnvOptions::default() };
    let env = TestEnv::start_with(options).await;
    let upstream = Upstream::start().await;
    let live = env.tunnel(upstream.port(), Some("live")).await;
    let started = Instant::now();
    // Whole upgrades without a hello, trickled upgrade heads and silent connections; 20 per
    // address, within the default per-address limits.
    let mut whole = Vec::with_capacity(SLOW / 3);
    for n in 0..SLOW / 3 {
        let mut stream = connect_from(env.host_addr(), Some(attacker(SLOW + n, 20))).await;
        stream.write_all(&upgrade_head()).await.expect("write the upgrade");
        whole.push(tokio::spawn(trickle_until_closed(stream, Vec::new())));
    }
    let mut slow = open_slow(env.host_addr(), &[upgrade_head(), Vec::new()], 20).await;
    slow.extend(whole);

    let newcomer =
        within(Duration::from_secs(3), "a new tunnel client to get in", env.tunnel(upstream.port(), None)).await;
    served(&env, &newcomer.name, 5, Duration::from_secs(2)).await;
    served(&env, &live.name, 5, Duration::from_secs(2)).await;
    all_closed(slow, started, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn the_handshake_deadline_counts_from_the_accept() {
    let env = TestEnv::start_with(EnvOptions { handshake_timeout_secs: 2, ..EnvOptions::default() }).await;
    let stream = connect_from(env.host_addr(), Some(attacker(0, 1))).await;
    let accepted = Instant::now();
    // The head takes about 1.6 s to arrive; the hello never does.
    let head = upgrade_head();
    let pace = Duration::from_millis(1600) / u32::try_from(head.len()).expect("short head");
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in head {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(pace).await; // pacing the trickle
        }
        std::future::pending::<()>().await;
    });
    let mut sink = Vec::new();
    within(DEADLINE, "the host to close the socket", read.read_to_end(&mut sink)).await.ok();
    trickle.abort();
    let held = accepted.elapsed();
    assert!(
        held < Duration::from_millis(3000),
        "closed {held:?} after the accept: the deadline must count from the accept, not the upgrade"
    );
    assert!(sink.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&sink));
}

#[tokio::test]
async fn floods_from_one_address_are_refused_with_429_and_others_get_in() {
    let options = EnvOptions { connections_per_ip: (5, 40), max_pending_handshakes_per_ip: 8, ..EnvOptions::default() };
    let env = TestEnv::start_with(options).await;
    let upstream = Upstream::start().await;
    let flooder = attacker(0, 1);

    // Pending handshakes: upgrades that never say hello; beyond eight, 429 at once.
    let mut pending = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        let mut stream = connect_from(env.host_addr(), Some(flooder)).await;
        stream.write_all(&upgrade_head()).await.expect("write");
        let mut head = [0; 12];
        within(DEADLINE, "an answer to the upgrade", stream.read_exact(&mut head)).await.expect("an answer");
        match &head {
            b"HTTP/1.1 101" => pending.push(stream),
            b"HTTP/1.1 429" => refused += 1,
            other => panic!("unexpected answer {:?}", String::from_utf8_lossy(other)),
        }
    }
    assert_eq!((pending.len(), refused), (8, 4), "eight pending handshakes per address, the rest refused");
    let tunnel =
        within(Duration::from_secs(3), "a client from another address", env.tunnel(upstream.port(), None)).await;
    served(&env, &tunnel.name, 1, Duration::from_secs(2)).await;
    drop(pending);

    // New connections: a burst of 40, then 5 a second; the flood is refused, others are not.
    let health = b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".to_vec();
    let mut statuses = Vec::new();
    for _ in 0..60 {
        let answer = raw::exchange(env.host_addr(), Some(flooder), health.clone()).await;
        statuses.push(answer.map_or(0, |a| a.status));
    }
    let too_many = statuses.iter().filter(|s| **s == 429).count();
    assert!(too_many >= 10, "the flood is refused: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    let other = raw::exchange(env.host_addr(), None, health).await.expect("an answer");
    assert_eq!(other.status, 200, "another address is not limited");
    let _: Tunnel = Tunnel::open(&env.server_url(), upstream.port(), None).await;
}
