//! A session-host shutting down moves its clients to another host without losing a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::Method;
use tunnel_client::Event;
use tunnel_tests::{CutProxy, TestEnv, Tunnel, Upstream};

#[tokio::test]
async fn a_rolling_restart_of_session_hosts_loses_nothing() {
    let mut env = TestEnv::start().await;
    let first = env.host_addr();
    let second = env.add_host().await;
    let mut upstream = Upstream::start().await;
    let balancer = CutProxy::start(first).await;
    let mut tunnel = Tunnel::open(&format!("ws://{}", balancer.addr()), upstream.port(), None).await;
    let name = tunnel.name.clone();

    // A request in flight on the first host while it shuts down.
    let in_flight = tokio::spawn(env.request(Method::GET, &name, "/delay/700").send());
    upstream.next_request().await;
    // Steady traffic throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, request) = (stop.clone(), env.request(Method::GET, &name, "/"));
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = request.try_clone().expect("cloneable").send().await.expect("response");
                let error = response.headers().get("x-tunnel-error").map(|v| v.to_str().unwrap_or("?").to_owned());
                statuses.push((response.status().as_u16(), error));
            }
            statuses
        })
    };

    balancer.retarget(second);
    env.stop_host(first);
    assert!(matches!(tunnel.next_event().await, Some(Event::Disconnected { .. })));
    assert_eq!(tunnel.next_event().await, Some(Event::Resumed { url: tunnel.url.clone(), name: name.clone() }));

    let response = in_flight.await.expect("task").expect("response");
    assert_eq!(response.status(), 200, "the request in flight on the old host finished");
    assert_eq!(response.text().await.expect("body"), "ok");
    for _ in 0..20 {
        assert_eq!(env.get(&name, "/").await.status(), 200, "the new host serves");
    }
    stop.store(true, Ordering::Relaxed);
    let statuses = traffic.await.expect("traffic task");
    assert!(statuses.len() > 20, "traffic kept flowing: {} requests", statuses.len());
    let failed: Vec<_> = statuses.iter().filter(|(status, _)| *status != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), statuses.len());
}
