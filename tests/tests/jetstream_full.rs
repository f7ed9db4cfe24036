//! JetStream full: the `AUDIT` and `RECORDINGS` streams refuse every new message (their byte
//! limit reached, new messages discarded). Requests keep flowing, the records that cannot be
//! stored are counted as dropped, and once there is room again the log resumes by itself, the
//! hole reported as a gap.

use async_nats::jetstream::{self, stream};
use tunnel_schemas::gap::Gap;
use tunnel_tests::ledger::audit_records;
use tunnel_tests::{EnvOptions, TestEnv, Upstream};

/// Requests sent while the streams are full.
const WHILE_FULL: usize = 30;

/// Makes `name` refuse new messages (as a stream at its byte limit with `discard: new` does);
/// returns its settings before, to give the room back.
async fn fill(js: &jetstream::Context, name: &str) -> stream::Config {
    let mut stream = js.get_stream(name).await.expect("stream");
    let info = stream.info().await.expect("info").clone();
    let full = stream::Config {
        max_bytes: i64::try_from(info.state.bytes).expect("bytes"),
        discard: stream::DiscardPolicy::New,
        ..info.config.clone()
    };
    js.update_stream(full).await.expect("limit set");
    info.config
}

/// The last gap message stored on `subject`.
async fn last_gap(js: &jetstream::Context, stream: &str, subject: &str) -> Gap {
    let stream = js.get_stream(stream).await.expect("stream");
    let message = stream.get_last_raw_message_by_subject(subject).await.expect("a gap message");
    tunnel_schemas::decode(&message.payload, usize::MAX).expect("a gap")
}

#[tokio::test]
async fn requests_flow_while_jetstream_is_full_and_the_log_resumes_when_room_returns() {
    let env = TestEnv::start_with(EnvOptions { record_tunnels: "*".into(), ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), Some("js-full")).await;
    assert_eq!(env.get(&tunnel.name, "/before").await.status(), 200);
    let js = jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    audit_records(&js, &tunnel.name, |records| !records.is_empty()).await;
    env.counter_reaches("host_recordings_stored_bytes_total", 1.0).await;

    let audit = fill(&js, "AUDIT").await;
    let recordings = fill(&js, "RECORDINGS").await;
    for i in 0..WHILE_FULL {
        assert_eq!(
            env.get(&tunnel.name, &format!("/full-{i}")).await.status(),
            200,
            "the path never waits for the log"
        );
    }
    env.counter_reaches("ingress_audit_dropped_total", WHILE_FULL as f64).await;
    env.counter_reaches("host_recordings_dropped_total", WHILE_FULL as f64).await;

    // Room again: nothing to restart, the next records are stored after their gap.
    js.update_stream(audit).await.expect("audit room back");
    js.update_stream(recordings).await.expect("recording room back");
    assert_eq!(env.get(&tunnel.name, "/after").await.status(), 200);
    let records = audit_records(&js, &tunnel.name, |records| records.iter().any(|r| r.path == "/after")).await;
    assert!(records.iter().all(|record| !record.path.starts_with("/full-")), "nothing stored while full");
    let gap = last_gap(&js, "AUDIT", "audit.js-full.gap").await;
    assert!(gap.dropped >= WHILE_FULL as u64, "the audit gap counts the lost records: {gap:?}");
    let gap = last_gap(&js, "RECORDINGS", "rec.js-full.gap").await;
    assert!(gap.dropped >= WHILE_FULL as u64, "the recording gap counts the lost records: {gap:?}");
    println!(
        "| JetStream full (AUDIT and RECORDINGS refuse writes) | 0 of {WHILE_FULL} requests failed | log resumed at the next request once room returned |"
    );
}
