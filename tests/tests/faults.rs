//! Faults that announce nothing: a session-host frozen (SIGSTOP) or killed (SIGKILL), a tunnel
//! client frozen, a network that drops everything without a FIN. No public request waits beyond
//! a bound, and every tunnel comes back under its name (ADR 0004, docs/reliability.md).
//!
//! Each scenario prints a line of the table in docs/reliability.md: failed requests, the
//! longest request, and the recovery time.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::Method;
use tunnel_client::Event;
use tunnel_tests::{Cli, CutProxy, DEADLINE, TestEnv, Tunnel, Upstream, within};

/// Longest a public request may take during a fault: the bound, by default 10 s.
const BOUND: Duration = Duration::from_secs(10);
/// A request still unanswered after this long hangs, and fails the test.
const HANG: Duration = Duration::from_secs(30);
/// Consecutive answers of the local service that show a tunnel recovered.
const RECOVERED_AFTER: usize = 10;

/// One public request sent during a fault.
#[derive(Debug)]
struct Answer {
    /// When it was sent, since the fault.
    sent: Duration,
    status: u16,
    /// Its `x-tunnel-error`, for an error of the tunnel itself.
    error: Option<String>,
    took: Duration,
}

impl Answer {
    fn ok(&self) -> bool {
        self.status == 200 && self.error.is_none()
    }
}

/// Sends `GET path` to `name`, noting when relative to `fault`.
async fn ask(env: &TestEnv, name: &str, path: &str, fault: Instant) -> Answer {
    let sent = fault.elapsed();
    let started = Instant::now();
    let response = within(HANG, "a public request during a fault", env.request(Method::GET, name, path).send())
        .await
        .expect("an HTTP response");
    let error = response.headers().get("x-tunnel-error").map(|v| v.to_str().unwrap_or("?").to_owned());
    Answer { sent, status: response.status().as_u16(), error, took: started.elapsed() }
}

/// Requests to `name`, one after another from the `fault` on, until [`RECOVERED_AFTER`] in a row
/// are answered by the local service.
async fn until_recovered(env: &TestEnv, name: &str, fault: Instant) -> Vec<Answer> {
    let mut answers: Vec<Answer> = Vec::new();
    while answers.iter().rev().take_while(|answer| answer.ok()).count() < RECOVERED_AFTER {
        assert!(fault.elapsed() < DEADLINE * 3, "{name} did not recover: {:?}", answers.last());
        answers.push(ask(env, name, "/", fault).await);
    }
    answers
}

/// Waits for `tunnel` to come back after losing its session; returns the name it resumed.
async fn resumed(tunnel: &mut Tunnel) -> String {
    loop {
        match tunnel.next_event().await {
            Some(Event::Resumed { name, .. }) => return name,
            Some(Event::Disconnected { .. } | Event::Reconnecting { .. }) => {}
            other => panic!("while reconnecting: {other:?}"),
        }
    }
}

/// The time from the fault to the first answer of the final run of good ones.
fn recovery(answers: &[Answer]) -> Duration {
    let good = answers.iter().rev().take_while(|answer| answer.ok()).count();
    answers[answers.len() - good].sent
}

/// Checks that every failure was a clean, typed 502/503/504 within [`BOUND`], and prints the
/// scenario's line of the table.
fn check_and_report(scenario: &str, answers: &[Answer], recovered: Duration) {
    let failed: Vec<&Answer> = answers.iter().filter(|answer| !answer.ok()).collect();
    for answer in &failed {
        assert!(matches!(answer.status, 502..=504), "not a clean gateway error: {answer:?}");
        assert!(answer.error.is_some(), "a failure without its code: {answer:?}");
    }
    let longest = answers.iter().map(|answer| answer.took).max().unwrap_or_default();
    assert!(longest <= BOUND, "{scenario}: a request took {longest:?}");
    let mut codes: Vec<&str> = failed.iter().filter_map(|answer| answer.error.as_deref()).collect();
    codes.sort_unstable();
    codes.dedup();
    println!(
        "| {scenario} | {} of {} failed ({}) | longest {:.2} s | recovered after {:.2} s |",
        failed.len(),
        answers.len(),
        codes.join(", "),
        longest.as_secs_f64(),
        recovered.as_secs_f64()
    );
}

#[tokio::test]
async fn a_frozen_session_host_bounds_every_request_and_its_tunnel_moves() {
    let mut env = TestEnv::start().await;
    let healthy = env.host_addr();
    let frozen = env.start_host_process(&[]).await;
    let balancer = CutProxy::start(frozen.addr).await;
    let mut upstream = Upstream::start().await;
    let mut tunnel = Tunnel::open(&format!("ws://{}", balancer.addr()), upstream.port(), None).await;
    let name = tunnel.name.clone();
    assert_eq!(env.get(&name, "/").await.status(), 200);
    let long_poll = tokio::spawn(env.request(Method::GET, &name, "/hang").send());
    upstream.next_request().await;

    // A health-checking balancer takes the frozen host out; its open connections stay.
    balancer.retarget(healthy);
    let fault = Instant::now();
    frozen.process.freeze();
    let answers = until_recovered(&env, &name, fault).await;

    let long_poll = within(HANG, "the long poll", long_poll).await.expect("task").expect("response");
    assert_eq!(long_poll.status(), 504, "the request held by the frozen host");
    assert_eq!(long_poll.headers()["x-tunnel-error"], "host_unresponsive");
    assert!(matches!(tunnel.next_event().await, Some(Event::Disconnected { .. })));
    assert_eq!(resumed(&mut tunnel).await, name);
    let recovered = recovery(&answers);
    assert!(recovered <= BOUND, "requests flowed again only after {recovered:?}");
    check_and_report("session-host frozen (SIGSTOP)", &answers, recovered);

    // Thawed, the stale session gives way to the one its client moved to.
    frozen.process.thaw();
    let after = until_recovered(&env, &name, Instant::now()).await;
    assert!(after.iter().all(Answer::ok), "a request failed after the thaw: {after:?}");
}

#[tokio::test]
async fn a_killed_session_host_fails_only_its_requests_in_flight_and_clients_resume_at_once() {
    const TUNNELS: usize = 8;
    let mut env = TestEnv::start().await;
    let healthy = env.host_addr();
    let victim = env.start_host_process(&[]).await;
    let balancer = CutProxy::start(victim.addr).await;
    let mut upstream = Upstream::start().await;
    let mut tunnels = Vec::new();
    for _ in 0..TUNNELS {
        tunnels.push(Tunnel::open(&format!("ws://{}", balancer.addr()), upstream.port(), None).await);
    }
    // One request held by each tunnel's local service when the host dies, acknowledged by it
    // (open for ack_after_ms).
    let mut held = Vec::new();
    for tunnel in &tunnels {
        held.push(tokio::spawn(env.request(Method::GET, &tunnel.name, "/hang").send()));
        upstream.next_request().await;
    }
    victim.counter_reaches("host_requests_acknowledged_total", TUNNELS as f64).await;

    balancer.retarget(healthy);
    let fault = Instant::now();
    victim.process.kill().await;
    let names: Vec<String> = tunnels.iter().map(|tunnel| tunnel.name.clone()).collect();
    let traffic = futures_util::future::join_all(names.iter().map(|name| until_recovered(&env, name, fault)));
    let resumes = futures_util::future::join_all(tunnels.iter_mut().map(|tunnel| async move {
        assert_eq!(resumed(tunnel).await, tunnel.name);
        fault.elapsed()
    }));
    let (answers, mut resumed) = tokio::join!(traffic, resumes);

    // An acknowledged request fails at the next probe of its session.
    for request in held {
        let response = within(HANG, "a held request", request).await.expect("task").expect("response");
        assert_eq!(response.status(), 502, "a request in flight on the killed host");
        assert_eq!(response.headers()["x-tunnel-error"], "tunnel_disconnected");
    }
    let failures_took_at_most = fault.elapsed();
    assert!(
        failures_took_at_most <= Duration::from_millis(1500),
        "held requests failed after {failures_took_at_most:?}"
    );
    resumed.sort_unstable();
    let slowest = *resumed.last().expect("resumed");
    assert!(slowest <= Duration::from_secs(3), "clients resumed after {resumed:?}");
    let all: Vec<Answer> = answers.into_iter().flatten().collect();
    let recovered = all.iter().map(|answer| answer.sent).max().unwrap_or_default().min(slowest);
    check_and_report("session-host killed (SIGKILL), 8 tunnels", &all, recovered);
    let failed = all.iter().filter(|answer| !answer.ok()).count();
    assert_eq!(failed, 0, "only the requests in flight fail; the others wait for their tunnel to come back");
    println!(
        "held requests failed within {:.2} s; slowest resume {:.2} s",
        failures_took_at_most.as_secs_f64(),
        slowest.as_secs_f64()
    );
}

#[tokio::test]
async fn a_frozen_client_fails_its_requests_in_time_and_keeps_its_name_when_it_wakes() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let port = upstream.port().to_string();
    let mut cli = Cli::start(&env.server_url(), &[&port]);
    let name = cli.next_event("ready").await["name"].as_str().expect("name").to_owned();
    let held = tokio::spawn(env.request(Method::GET, &name, "/hang").send());
    upstream.next_request().await;

    // The laptop sleeps for a minute.
    let fault = Instant::now();
    cli.signal(Signal::SIGSTOP);
    let held = within(HANG, "the held request", held).await.expect("task").expect("response");
    assert_eq!(held.status(), 502);
    assert_eq!(held.headers()["x-tunnel-error"], "tunnel_disconnected");
    assert!(fault.elapsed() <= BOUND, "the held request failed after {:?}", fault.elapsed());
    let asleep = ask(&env, &name, "/", fault).await;
    assert!(matches!(asleep.status, 502..=504) && asleep.took <= BOUND, "while asleep: {asleep:?}");
    let wake_at = fault + Duration::from_secs(60);
    let mut during = vec![asleep];
    while Instant::now() < wake_at {
        during.push(ask(&env, &name, "/", fault).await);
        tokio::time::sleep_until(wake_at.min(Instant::now() + Duration::from_secs(5)).into()).await;
    }
    cli.signal(Signal::SIGCONT);
    let woke = Instant::now();
    let resumed = cli.next_event("resumed").await;
    assert_eq!(resumed["name"], name.as_str(), "the name is kept");
    let answers = until_recovered(&env, &name, woke).await;
    during.extend(answers);
    check_and_report("client frozen 60 s (SIGSTOP)", &during, recovery(&during[during.len() - RECOVERED_AFTER..]));
}

#[tokio::test]
async fn a_network_cut_without_a_fin_for_30_s_is_survived_under_the_same_name() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let network = CutProxy::start(env.host_addr()).await;
    let mut tunnel = Tunnel::open(&format!("ws://{}", network.addr()), upstream.port(), None).await;
    let name = tunnel.name.clone();

    let fault = Instant::now();
    network.blackhole(true);
    assert!(matches!(tunnel.next_event().await, Some(Event::Disconnected { .. })));
    let noticed = fault.elapsed();
    assert!(noticed <= BOUND, "the client noticed the cut after {noticed:?}");
    let cut = ask(&env, &name, "/", fault).await;
    assert!(matches!(cut.status, 502..=504) && cut.took <= BOUND, "during the cut: {cut:?}");
    // Reconnecting, with backoff, into the blackhole.
    let heal_at = fault + Duration::from_secs(30);
    let mut attempts = 0;
    while let Ok(event) = tokio::time::timeout_at(heal_at.into(), tunnel.next_event()).await {
        match event {
            Some(Event::Reconnecting { .. }) => attempts += 1,
            Some(Event::Disconnected { .. }) => {}
            other => panic!("while cut off: {other:?}"),
        }
    }
    assert!(attempts >= 1, "the client kept trying");
    network.blackhole(false);
    let healed = Instant::now();
    assert_eq!(resumed(&mut tunnel).await, name, "the name is kept");
    let resumed_after = healed.elapsed();
    let mut all = vec![cut];
    all.extend(until_recovered(&env, &name, healed).await);
    check_and_report("network cut 30 s without a FIN", &all, resumed_after);
    println!("client noticed the cut after {:.2} s, {attempts} attempts during it", noticed.as_secs_f64());
}
