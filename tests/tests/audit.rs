//! Every public request leaves an audit record in the `AUDIT` stream, bodies counted whole
//! whether they travelled inline or streamed, and no header value or query string in it; the
//! trail reads it by start time, says when a tail falls behind, and reports records that never
//! reached the stream.

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::{StreamExt, TryStreamExt};
use reqwest::Method;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::audit::{AuditBatch, RequestAudit};
use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Upstream, run_tunnel, within};
use tunnel_trail::event::TrailEvent;

/// The audit records of tunnel `name`, as they are stored.
async fn records(env: &TestEnv, name: &str) -> impl futures_util::Stream<Item = RequestAudit> {
    let nats = async_nats::connect(env.nats.url()).await.expect("nats");
    let stream = async_nats::jetstream::new(nats).get_stream("AUDIT").await.expect("audit stream");
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("audit.{name}.req"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer");
    consumer.messages().await.expect("messages").flat_map(|message| {
        let message = message.expect("message");
        let batch: AuditBatch = tunnel_schemas::decode(&message.payload, usize::MAX).expect("an audit batch");
        futures_util::stream::iter(batch.records)
    })
}

#[tokio::test]
async fn requests_are_audited_with_whole_body_sizes_and_no_secrets() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let tunnel = env.tunnel(upstream.port(), None).await;
    let upload = vec![7_u8; 3 << 20];
    let response = env
        .request(Method::POST, &tunnel.name, "/sha256?token=secret-in-query")
        .header("authorization", "Bearer secret-token")
        .body(upload)
        .send()
        .await
        .expect("response");
    let answer = response.text().await.expect("body");
    env.get(&tunnel.name, "/stream/2097152").await.bytes().await.expect("download");

    let mut records = Box::pin(records(&env, &tunnel.name).await);
    let upload = within(DEADLINE, "the upload's record", records.next()).await.expect("a record");
    assert_eq!((upload.method.as_str(), upload.path.as_str(), upload.status), ("POST", "/sha256", 200));
    assert_eq!(upload.bytes_in, 3 << 20, "a streamed upload counts whole");
    assert_eq!(upload.bytes_out, answer.len() as u64);
    let download = within(DEADLINE, "the download's record", records.next()).await.expect("a record");
    assert_eq!(download.bytes_out, 2 << 20, "a streamed download counts whole");
    assert_eq!(download.error, None);
    for record in [&upload, &download] {
        let bytes = tunnel_schemas::encode(record);
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("secret"), "no query string or header value in the audit trail: {text}");
    }
}

#[tokio::test]
async fn failed_requests_are_audited_with_their_error_code() {
    let env = TestEnv::start().await;
    assert_eq!(env.get("nobody-here", "/x").await.status(), 502);
    let mut records = Box::pin(records(&env, "nobody-here").await);
    let record = within(DEADLINE, "the record", records.next()).await.expect("a record");
    assert_eq!(record.status, 502);
    assert_eq!(record.error, Some(ErrorCode::TunnelOffline));
}

#[tokio::test]
async fn records_dropped_while_the_stream_is_gone_are_reported_as_a_gap() {
    let env = TestEnv::start().await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    js.delete_stream("AUDIT").await.expect("deleted");
    for i in 0..10 {
        assert_eq!(env.get("gone-log", &format!("/lost-{i}")).await.status(), 502, "requests flow without the log");
    }
    env.counter_reaches("ingress_audit_dropped_total", 10.0).await;
    let config = tunnel_auditor::AuditorConfig::default();
    tunnel_auditor::stream::ensure_stream(&js, &config).await.expect("the stream is back");
    env.get("gone-log", "/after").await;
    let events = first_events(&js, "gone-log", 0, 2).await;
    match &events[0] {
        Ok(TrailEvent::Gap(gap)) => assert_eq!(gap.dropped, 10, "{gap:?}"),
        other => panic!("expected the gap first, got {other:?}"),
    }
    match &events[1] {
        Ok(TrailEvent::Audit(record)) => assert_eq!(record.path, "/after"),
        other => panic!("expected the new record, got {other:?}"),
    }
}

#[tokio::test]
async fn a_batch_is_stored_when_the_stream_is_back_within_seconds() {
    // As while a NATS cluster elects a new leader for the stream after losing a node: the
    // publish finds no stream, is tried again later, and is stored once, not dropped. (No
    // auditor: it would make the stream again as it starts.)
    let env = TestEnv::start_with(EnvOptions { in_process_auditor: false, ..EnvOptions::default() }).await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    js.delete_stream("AUDIT").await.expect("deleted");
    let retried = env.counter("ingress_audit_retried_total");
    assert_eq!(env.get("brief-gap", "/meanwhile").await.status(), 502);
    env.counter_reaches("ingress_audit_retried_total", retried + 1.0).await;
    let config = tunnel_auditor::AuditorConfig::default();
    tunnel_auditor::stream::ensure_stream(&js, &config).await.expect("the stream is back");
    let mut records = Box::pin(records(&env, "brief-gap").await);
    let record = within(DEADLINE, "the record", records.next()).await.expect("a record");
    assert_eq!(record.path, "/meanwhile", "the batch was kept, not dropped");
    let subjects = js.get_stream("AUDIT").await.expect("stream").info_with_subjects("audit.brief-gap.>").await;
    let subjects: Vec<(String, usize)> = subjects.expect("info").try_collect().await.expect("subjects");
    assert_eq!(subjects, [("audit.brief-gap.req".to_owned(), 1)], "stored once, and no gap reported");
}

/// An old audit record of `tunnel`.
fn old_record(tunnel: &str, i: u64) -> RequestAudit {
    RequestAudit {
        v: 1,
        request_id: format!("old-{i}"),
        tunnel: tunnel.into(),
        method: "GET".into(),
        path: "/old".into(),
        status: 200,
        error: None,
        bytes_in: 0,
        bytes_out: 0,
        duration_us: 1,
        remote_addr: "127.0.0.1".into(),
        at_ms: 0,
        account: None,
        replay: false,
        head_in: 0,
        head_out: 0,
    }
}

/// Publishes `count` audit records of `tunnel`, one per message, and waits until all are stored.
async fn publish_old(js: &async_nats::jetstream::Context, tunnel: &str, count: u64) {
    let mut acks = futures_util::stream::FuturesUnordered::new();
    for i in 0..count {
        let batch = AuditBatch { v: 1, records: vec![old_record(tunnel, i)] };
        let ack = js.publish(format!("audit.{tunnel}.req"), tunnel_schemas::encode(&batch).into()).await;
        acks.push(ack.expect("published").into_future());
        if acks.len() >= 4096 {
            acks.next().await.expect("an ack").expect("stored");
        }
    }
    while let Some(ack) = acks.next().await {
        ack.expect("stored");
    }
}

/// A trail query of `tunnel`'s audit records logged since `since_ms`.
fn audit_query(tunnel: &str, since_ms: u64, follow: bool, limit: Option<usize>) -> tunnel_trail::query::Query {
    tunnel_trail::query::Query {
        tunnel: tunnel.into(),
        source: tunnel_trail::query::Source::Audit,
        filter: tunnel_trail::filter::Filter { since_ms: Some(since_ms), ..Default::default() },
        follow,
        owner: None,
        limit,
    }
}

/// The first `count` events of a live tail of `tunnel` from `since_ms`.
async fn first_events(
    js: &async_nats::jetstream::Context,
    tunnel: &str,
    since_ms: u64,
    count: usize,
) -> Vec<Result<TrailEvent, tunnel_trail::query::QueryError>> {
    let query = audit_query(tunnel, since_ms, true, Some(count));
    within(DEADLINE, "the first events", async {
        tunnel_trail::query::read(js, query).await.expect("reads").collect::<Vec<_>>().await
    })
    .await
}

#[tokio::test]
async fn a_tail_far_behind_the_log_says_so() {
    let env = TestEnv::start().await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    publish_old(&js, "behind", 3000).await;
    let events = first_events(&js, "behind", 0, 10).await;
    let behind = events.iter().find_map(|event| match event {
        Ok(TrailEvent::Behind { pending }) => Some(*pending),
        _ => None,
    });
    assert!(behind.is_some_and(|pending| pending >= 1000), "a live tail 3000 events back says so: {events:?}");
}

#[tokio::test]
async fn a_time_query_skips_a_large_log_by_start_time() {
    let env = TestEnv::start().await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    publish_old(&js, "big-log", 100_000).await;
    let since = tunnel_trail::filter::now_ms();
    for i in 0..3 {
        assert_eq!(env.get("big-log", &format!("/new-{i}")).await.status(), 502, "no tunnel online: audited anyway");
    }
    first_events(&js, "big-log", since, 3).await;
    let started = std::time::Instant::now();
    let query = audit_query("big-log", since, false, None);
    let events: Vec<_> = tunnel_trail::query::read(&js, query).await.expect("reads").collect().await;
    let took = started.elapsed();
    assert_eq!(events.len(), 3, "only the new records: {events:?}");
    assert!(took < std::time::Duration::from_secs(1), "the query took {took:?} over 100,000 records");
    let args = ["trail", "big-log", "--nats", env.nats.url(), "--since", &since.to_string()];
    let (code, stdout, _) = run_tunnel(std::path::Path::new("/nonexistent"), &args).await;
    assert_eq!(code, Some(0));
    assert_eq!(stdout.lines().count(), 3, "an operator reads any tunnel's trail with NATS credentials");
}
