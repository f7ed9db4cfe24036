//! Operational endpoints: health, readiness and Prometheus metrics on ingress and session-host.

use std::time::Duration;

use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Upstream, raw, within};

async fn get(addr: std::net::SocketAddr, path: &str) -> raw::RawResponse {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    raw::http(addr, request.as_bytes()).await
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    assert_eq!(env.get(&tunnel.name, "/").await.status(), 200);
    assert_eq!(env.get("nobody-home", "/").await.status(), 502);
    for addr in [env.ingress_addr(), env.host_addr()] {
        assert_eq!(get(addr, "/healthz").await.status, 200);
        assert_eq!(get(addr, "/readyz").await.status, 200);
    }
    let metrics = String::from_utf8(get(env.ingress_addr(), "/metrics").await.body).expect("text");
    assert!(metrics.contains("ingress_requests_total{result=\"ok\"}"), "{metrics}");
    assert!(metrics.contains("ingress_requests_total{result=\"tunnel_offline\"}"), "{metrics}");
    assert!(metrics.contains("ingress_request_seconds_bucket"), "{metrics}");
    let metrics = String::from_utf8(get(env.host_addr(), "/metrics").await.body).expect("text");
    assert!(metrics.contains("host_sessions"), "{metrics}");
}

#[tokio::test]
async fn tunnel_paths_are_never_shadowed_by_ops_routes() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let response = env.get(&tunnel.name, "/metrics").await;
    assert_eq!(response.text().await.expect("body"), "ok", "tunnel paths are never shadowed by ops routes");
    assert_eq!(upstream.next_request().await.target, "/metrics");
}

#[tokio::test]
async fn a_stopping_ingress_turns_unready_first_and_finishes_what_it_serves() {
    let mut env = TestEnv::start_with(EnvOptions { unready_before_stop_secs: 2, ..EnvOptions::default() }).await;
    let leaving = env.add_ingress().await;
    let mut upstream = Upstream::start().await;
    let _tunnel = env.tunnel(upstream.port(), Some("steady")).await;

    let in_flight = async { env.get_via(leaving, "steady", "/delay/2500").await.status() };
    let stopping = async {
        assert_eq!(upstream.next_request().await.target, "/delay/2500", "the long request reached the service");
        env.stop_ingress(leaving);
        within(Duration::from_secs(1), "/readyz failing first", async {
            while get(leaving, "/readyz").await.status != 503 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert_eq!(env.get_via(leaving, "steady", "/echo").await.status(), 200, "still serving while unready");
        within(DEADLINE, "the listener closed after the unready time", async {
            while tokio::net::TcpStream::connect(leaving).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await;
    };
    let (status, ()) = tokio::join!(in_flight, stopping);
    assert_eq!(status, 200, "the request in flight finished");
    assert_eq!(env.get("steady", "/echo").await.status(), 200, "the other ingress serves on");
}
