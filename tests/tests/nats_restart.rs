//! The development topology's single NATS server crashes and comes back: every component
//! reconnects on its own, the JetStream state survives (leases, audit, recordings, usage
//! counters), and tunnels serve again within 5 s of the server's return.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tunnel_auditor::AuditorConfig;
use tunnel_schemas::audit::RequestAudit;
use tunnel_schemas::names::TunnelName;
use tunnel_schemas::subjects::{LEASES_BUCKET, lease_key};
use tunnel_tests::ledger::{audit_records, counters_reach, sums};
use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Upstream, within};

/// Requests before the crash, and again after the return.
const REQUESTS: usize = 20;
/// How soon tunnels must serve again once the server is back.
const BACK_WITHIN: Duration = Duration::from_secs(5);

async fn serve(env: &TestEnv, name: &str, ids: &mut Vec<String>) {
    for _ in 0..REQUESTS {
        let id = format!("restart-{}", ids.len());
        let request = env.request(reqwest::Method::GET, name, "/echo").header("x-request-id", &id);
        let response = within(DEADLINE, "a response", request.send()).await.expect("response");
        assert_eq!(response.status(), 200);
        ids.push(id);
    }
}

/// The stored lease of tunnel `name`.
async fn lease(js: &jetstream::Context, name: &str) -> bytes::Bytes {
    let leases = js.get_key_value(LEASES_BUCKET).await.expect("lease bucket");
    let name = TunnelName::parse(name).expect("a tunnel name");
    leases.get(lease_key(&name)).await.expect("lease read").expect("a lease")
}

async fn stream_messages(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.expect("stream").info().await.expect("info").state.messages
}

#[tokio::test]
async fn after_a_nats_crash_everything_reconnects_and_the_log_is_whole() {
    let mut env = TestEnv::start_with(EnvOptions { record_tunnels: "*".into(), ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), Some("restart-demo")).await;
    let name = tunnel.name.clone();
    let mut served = Vec::new();
    serve(&env, &name, &mut served).await;
    let js = jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    audit_records(&js, &name, |records| records.len() >= REQUESTS).await;
    let recorded_before = stream_messages(&js, "RECORDINGS").await;
    let lease_before = lease(&js, &name).await;

    env.nats.server().kill();
    let down = env.get(&name, "/echo").await;
    assert_eq!(down.status(), 503, "without NATS a request is refused at once");
    assert_eq!(down.headers()["x-tunnel-error"], "unavailable");
    env.nats.server().restart();
    let back = Instant::now();
    let mut refused = 0;
    within(DEADLINE, "the tunnel to serve again", async {
        while env.get(&name, "/echo").await.status() != 200 {
            refused += 1;
        }
    })
    .await;
    let serving_after = back.elapsed();
    assert!(serving_after <= BACK_WITHIN, "the tunnel served again {serving_after:?} after the server's return");
    serve(&env, &name, &mut served).await;

    // The log is whole: every served request audited once, counted once, recorded.
    let js = jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    let has_all = |records: &[RequestAudit]| {
        let audited: HashSet<&str> = records.iter().map(|record| record.request_id.as_str()).collect();
        served.iter().all(|id| audited.contains(id.as_str()))
    };
    let records = audit_records(&js, &name, has_all).await;
    let audited: HashSet<&str> = records.iter().map(|record| record.request_id.as_str()).collect();
    assert_eq!(audited.len(), records.len(), "no request audited twice");
    let buckets = tunnel_auditor::buckets::Buckets::open(&js, &AuditorConfig::default()).await.expect("buckets");
    let reached = records.iter().filter(|record| tunnel_auditor::tally::reached_tunnel(record.error)).count() as u64;
    let counters = counters_reach(&buckets.usage, &name, reached).await;
    for (period, (requests, ..)) in sums(&counters) {
        assert_eq!(requests, reached, "every request that reached the tunnel counted once per {period}");
    }
    let mut codes: Vec<String> =
        records.iter().filter_map(|record| record.error.map(|code| code.to_string())).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(lease(&js, &name).await, lease_before, "the lease survived: the same session holds the name");
    assert!(stream_messages(&js, "RECORDINGS").await > recorded_before, "recording went on");
    println!(
        "| NATS server killed and restarted | {} refused while it was down or reconnecting ({}) | serving again {:.2} s after its return |",
        refused + 1,
        codes.join(", "),
        serving_after.as_secs_f64()
    );
}
