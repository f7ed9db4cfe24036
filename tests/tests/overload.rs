//! Overload sheds load instead of queueing: a tunnel whose local service is slow answers the
//! requests beyond its session's in-flight limit at once, 503 `tunnel_busy` with `Retry-After`,
//! while another tunnel keeps answering.

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
