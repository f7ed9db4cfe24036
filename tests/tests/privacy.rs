//! What the operator can show about the data: an audit log nobody can rewrite, retention applied
//! to the streams and differences reported, recordings erased on request, every read of them on
//! record.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tunnel_kit::retention::{self, Retention};
use tunnel_schemas::subjects::{AUDIT_STREAM, RECORDING_STREAM};
use tunnel_tests::{DEADLINE, EnvOptions, NatsServer, TestEnv, Upstream, within};

/// A JetStream context as `user` (whose inbox is `_INBOX.<inbox>.…`), giving up on a request
/// after a second: a denied publish gets no answer.
async fn js_as(env: &TestEnv, user: &str, inbox: &str) -> jetstream::Context {
    let prefix = tunnel_schemas::subjects::inbox_prefix(inbox, "privacy-test");
    let client = tunnel_kit::nats::connect(&env.nats_url_as(user), user, &prefix).await.expect("connects");
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(1));
    js
}

/// Audit messages stored so far.
async fn audit_messages(js: &jetstream::Context) -> u64 {
    js.get_stream(AUDIT_STREAM).await.expect("stream").info().await.expect("info").state.messages
}

#[tokio::test]
async fn the_audit_log_cannot_be_rewritten_by_the_operator_nor_reconfigured_by_a_component() {
    let env = TestEnv::start_with(EnvOptions { permissions: true, ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let _tunnel = env.tunnel(upstream.port(), Some("kept")).await;
    assert_eq!(env.get("kept", "/").await.status(), 200);
    let admin = js_as(&env, "admin", "admin").await;
    within(DEADLINE, "the audit record", async {
        while audit_messages(&admin).await == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let stored = audit_messages(&admin).await;

    let audit = admin.get_stream(AUDIT_STREAM).await.expect("stream");
    assert!(audit.delete_message(1).await.is_err(), "erasing a record is refused, even to admin");
    assert!(audit.purge().await.is_err(), "purging is refused, even to admin");
    assert!(audit.purge().filter("audit.kept.>").await.is_err(), "purging a tunnel's records is refused");
    let mut lifted = audit.cached_info().config.clone();
    lifted.deny_delete = false;
    lifted.deny_purge = false;
    assert!(admin.update_stream(lifted).await.is_err(), "the server refuses to lift the denials");

    for (user, inbox) in [("ingress", "ing"), ("session-host", "host"), ("auditor", "aud")] {
        let js = js_as(&env, user, inbox).await;
        let mut shorter = audit.cached_info().config.clone();
        shorter.max_age = Duration::from_secs(1);
        assert!(js.update_stream(shorter).await.is_err(), "{user} may not change the audit stream");
        assert!(js.delete_stream(AUDIT_STREAM).await.is_err(), "{user} may not delete the audit stream");
    }
    let info = admin.get_stream(AUDIT_STREAM).await.expect("stream").info().await.expect("info").clone();
    assert_eq!(info.state.messages, stored, "every record is still there");
    assert_eq!(info.config.max_age, Duration::from_secs(30 * 86_400));
    assert!(info.config.deny_delete && info.config.deny_purge);
}

#[tokio::test]
async fn retention_is_applied_to_existing_streams_and_what_cannot_be_applied_is_reported() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connects"));
    // Streams left by an older version: recordings kept a week, an audit log that may be purged.
    let week = Duration::from_secs(7 * 86_400);
    let old = |name: &str, subjects: &str| stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        max_age: week,
        ..Default::default()
    };
    js.create_stream(old(RECORDING_STREAM, "rec.>")).await.expect("old recordings");
    js.create_stream(old(AUDIT_STREAM, "audit.>")).await.expect("old audit");

    let env = TestEnv::start_with(EnvOptions { nats_urls: Some(nats.url().to_owned()), ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let _recorded = env.recorded_tunnel(upstream.port(), "rec", state.path()).await;
    let config = |name: &str| {
        let js = js.clone();
        let name = name.to_owned();
        async move { js.get_stream(&name).await.expect("stream").info().await.expect("info").config.clone() }
    };
    let recordings = config(RECORDING_STREAM).await;
    assert_eq!(recordings.max_age, Duration::from_secs(24 * 3600), "recordings: 24 h by default");
    let audit = config(AUDIT_STREAM).await;
    assert_eq!(audit.max_age, Duration::from_secs(30 * 86_400), "audit: 30 days by default");
    assert!(audit.deny_delete && audit.deny_purge, "an existing audit stream is locked at start");
    let usage = config("KV_tunnel_usage").await;
    assert_eq!(usage.max_age, Duration::from_secs(400 * 86_400), "usage: 13 months and a margin");

    // A retention the server will not apply (lifting the audit log's denials) is reported.
    let unlocked = Retention { deny_delete: false, deny_purge: false, ..Retention::of(&audit) };
    assert!(!retention::reconcile(&js, AUDIT_STREAM, unlocked).await, "reported as differing");
    let gauge = format!("{}{{stream=\"{AUDIT_STREAM}\"}} 1", retention::DRIFT_GAUGE);
    assert!(env.metrics_text().contains(&gauge), "{gauge} in the metrics");
    assert!(retention::reconcile(&js, AUDIT_STREAM, Retention::of(&audit)).await);
    let cleared = format!("{}{{stream=\"{AUDIT_STREAM}\"}} 0", retention::DRIFT_GAUGE);
    assert!(env.metrics_text().contains(&cleared), "{cleared} in the metrics");
}
