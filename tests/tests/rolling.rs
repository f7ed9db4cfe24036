//! A session-host shutting down moves its clients to another host without losing a request; an
//! ingress shutting down behind a health-checking balancer loses none either.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Method;
use tunnel_client::Event;
use tunnel_tests::{CutProxy, DEADLINE, EnvOptions, TestEnv, Tunnel, Upstream, within};

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

#[tokio::test]
async fn an_ingress_restart_behind_a_balancer_loses_nothing() {
    let mut env = TestEnv::start_with(EnvOptions { unready_before_stop_secs: 1, ..EnvOptions::default() }).await;
    let (leaving, staying) = (env.add_ingress().await, env.add_ingress().await);
    let balancer = Arc::new(CutProxy::start(leaving).await);
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    // A new connection per request, so that each one goes where the balancer says at the time.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let request = |path: &str| {
        http.get(format!("http://{}{path}", balancer.addr()))
            .header(reqwest::header::HOST, env.public_host(&tunnel.name))
    };
    // The balancer's health check: the leaving ingress out as soon as its /readyz fails.
    let health_check = {
        let (balancer, http, readyz) = (balancer.clone(), http.clone(), format!("http://{leaving}/readyz"));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                if !http.get(&readyz).send().await.is_ok_and(|r| r.status().is_success()) {
                    balancer.retarget(staying);
                    return;
                }
            }
        })
    };
    let in_flight = tokio::spawn(request("/delay/1500").send());
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, request) = (stop.clone(), request("/"));
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = request.try_clone().expect("cloneable").send().await;
                statuses.push(response.map(|r| r.status().as_u16()).map_err(|e| e.to_string()));
            }
            statuses
        })
    };

    env.stop_ingress(leaving);
    within(DEADLINE, "the balancer to take the ingress out", health_check).await.expect("health check");
    let response = within(DEADLINE, "the request in flight", in_flight).await.expect("task").expect("response");
    assert_eq!(response.status(), 200, "the request in flight on the leaving ingress finished");
    for _ in 0..20 {
        assert_eq!(request("/").send().await.expect("response").status(), 200, "the staying ingress serves");
    }
    stop.store(true, Ordering::Relaxed);
    let statuses = traffic.await.expect("traffic task");
    let failed: Vec<_> = statuses.iter().filter(|status| **status != Ok(200)).collect();
    assert!(statuses.len() > 20, "traffic kept flowing: {} requests", statuses.len());
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), statuses.len());
    println!("| ingress restarted behind a balancer | 0 of {} failed |", statuses.len());
}
