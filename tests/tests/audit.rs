//! Every public request leaves an audit record in the `AUDIT` stream, bodies counted whole
//! whether they travelled inline or streamed, and no header value or query string in it.

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;
use reqwest::Method;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::audit::{AuditBatch, RequestAudit};
use tunnel_tests::{DEADLINE, TestEnv, Upstream, within};

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
    let query = tunnel_trail::query::Query {
        tunnel: "gone-log".into(),
        source: tunnel_trail::query::Source::Audit,
        filter: tunnel_trail::filter::Filter { since_ms: Some(0), ..Default::default() },
        follow: true,
        owner: None,
        limit: Some(2),
    };
    let events: Vec<_> = within(DEADLINE, "the gap and the record", async {
        tunnel_trail::query::read(&js, query).await.expect("reads").collect::<Vec<_>>().await
    })
    .await;
    match &events[0] {
        Ok(tunnel_trail::event::TrailEvent::Gap(gap)) => assert_eq!(gap.dropped, 10, "{gap:?}"),
        other => panic!("expected the gap first, got {other:?}"),
    }
    match &events[1] {
        Ok(tunnel_trail::event::TrailEvent::Audit(record)) => assert_eq!(record.path, "/after"),
        other => panic!("expected the new record, got {other:?}"),
    }
}

#[tokio::test]
async fn a_tail_far_behind_the_log_says_so() {
    let env = TestEnv::start().await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"));
    let record = RequestAudit {
        v: 1,
        request_id: "old".into(),
        tunnel: "behind".into(),
        method: "GET".into(),
        path: "/old".into(),
        status: 200,
        error: None,
        bytes_in: 0,
        bytes_out: 0,
        duration_us: 1,
        remote_addr: "127.0.0.1".into(),
        at_ms: 0,
    };
    let mut acks = Vec::with_capacity(3000);
    for _ in 0..3000 {
        let batch = AuditBatch { v: 1, records: vec![record.clone()] };
        acks.push(js.publish("audit.behind.req", tunnel_schemas::encode(&batch).into()).await.expect("published"));
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    let query = tunnel_trail::query::Query {
        tunnel: "behind".into(),
        source: tunnel_trail::query::Source::Audit,
        filter: tunnel_trail::filter::Filter { since_ms: Some(0), ..Default::default() },
        follow: true,
        owner: None,
        limit: Some(10),
    };
    let events: Vec<_> = within(DEADLINE, "the first events", async {
        tunnel_trail::query::read(&js, query).await.expect("reads").collect::<Vec<_>>().await
    })
    .await;
    let behind = events.iter().find_map(|event| match event {
        Ok(tunnel_trail::event::TrailEvent::Behind { pending }) => Some(*pending),
        _ => None,
    });
    assert!(behind.is_some_and(|pending| pending >= 1000), "a live tail 3000 events back says so: {events:?}");
}
