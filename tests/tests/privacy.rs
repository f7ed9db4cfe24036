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

/// The request ids of `tunnel`'s recorded exchanges, read straight from the stream (no audit
/// event: the harness reads as NATS, not as a user of the system).
async fn recorded_ids(js: &jetstream::Context, tunnel: &str) -> Vec<String> {
    use futures_util::StreamExt;
    use tunnel_trail::event::TrailEvent;
    use tunnel_trail::query::{Query, Source, read};
    let query = Query {
        tunnel: tunnel.into(),
        source: Source::Exchanges,
        filter: tunnel_trail::filter::Filter::default(),
        follow: false,
        owner: None,
        limit: None,
    };
    let events: Vec<_> = read(js, query).await.expect("readable").collect().await;
    events
        .into_iter()
        .filter_map(|event| match event.expect("event") {
            TrailEvent::Exchange(exchange) => Some(exchange.request_id),
            _ => None,
        })
        .collect()
}

/// Waits until `tunnel` has `count` recorded exchanges.
async fn recorded_count(js: &jetstream::Context, tunnel: &str, count: usize) {
    within(DEADLINE, "the recordings", async {
        while recorded_ids(js, tunnel).await.len() < count {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// The JSON lines `tunnel <args>` prints, with `state` as its state directory.
async fn lines(state: &std::path::Path, args: &[&str]) -> Vec<serde_json::Value> {
    let (code, stdout, stderr) = tunnel_tests::run_tunnel(state, args).await;
    assert_eq!(code, Some(0), "tunnel {args:?}: {stdout}{stderr}");
    stdout.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
}

#[tokio::test]
async fn erasure_removes_recordings_from_the_stream_and_every_read_and_erasure_is_on_record() {
    let mut env = TestEnv::start_with(EnvOptions { auth: "tokens", ..EnvOptions::default() }).await;
    env.admin(&["account", "create", "acme"]).await;
    env.admin(&["account", "create", "other"]).await;
    let acme = env.admin(&["token", "create", "acme"]).await["token"].as_str().expect("token").to_owned();
    let other = env.admin(&["token", "create", "other"]).await["token"].as_str().expect("token").to_owned();
    let upstream = Upstream::start().await;
    let (state, other_state) = (tempfile::tempdir().expect("state"), tempfile::tempdir().expect("state"));
    env.use_token(&acme);
    let _era = env.recorded_tunnel(upstream.port(), "era", state.path()).await;
    env.use_token(&other);
    let _kept = env.recorded_tunnel(upstream.port(), "kept", other_state.path()).await;
    for id in ["e1", "e2", "e3"] {
        let body = format!("personal data of {id}");
        let sent = env.request(reqwest::Method::POST, "era", "/echo").header("x-request-id", id).body(body).send();
        assert_eq!(sent.await.expect("response").status(), 200);
    }
    assert_eq!(env.get("kept", "/").await.status(), 200);
    let js = jetstream::new(async_nats::connect(env.nats_url_as("admin")).await.expect("connects"));
    recorded_count(&js, "era", 3).await;
    recorded_count(&js, "kept", 1).await;

    // One request: the others of its batch stay, readable.
    let erased = env.admin(&["erase", "--tunnel", "era", "--request-id", "e2"]).await;
    assert_eq!(erased["records"], 1);
    let mut left = recorded_ids(&js, "era").await;
    left.sort();
    assert_eq!(left, ["e1", "e3"]);
    let stream = js.get_stream(RECORDING_STREAM).await.expect("stream");
    let last = stream.get_info().await.expect("info").state.last_sequence;
    for sequence in 1..=last {
        if let Ok(message) = stream.direct_get(sequence).await {
            let text = String::from_utf8_lossy(&message.payload).into_owned();
            assert!(!text.contains("personal data of e2"), "message {sequence} still holds e2");
        }
    }
    let trail = lines(state.path(), &["trail", "era", "--recorded"]).await;
    let ids: Vec<&str> = trail.iter().filter_map(|line| line["request_id"].as_str()).collect();
    assert!(ids.contains(&"e1") && !ids.contains(&"e2"), "the trail no longer returns it: {ids:?}");

    // A whole account: its tunnel's records go, another account's stay.
    let erased = env.admin(&["erase", "--account", "acme"]).await;
    assert_eq!((erased["records"].as_u64(), erased["tunnels"]["era"].as_u64()), (Some(2), Some(2)));
    assert!(recorded_ids(&js, "era").await.is_empty());
    assert_eq!(recorded_ids(&js, "kept").await.len(), 1, "another account's recordings are kept");
    let nats = env.nats_url_as("admin");
    let export = lines(state.path(), &["export", "era", "--nats", &nats]).await;
    assert!(export.is_empty(), "export returns nothing: {export:?}");
    let refused = tunnel_tests::run_tunnel(state.path(), &["admin", "--nats", &nats, "erase"]).await;
    assert_eq!(refused.0, Some(1), "an erasure must say what: {}", refused.1);

    // The audit trail holds who read and who erased what, and how much.
    let audit = lines(state.path(), &["trail", "era", "--nats", &nats]).await;
    let data: Vec<&serde_json::Value> = audit.iter().filter(|line| line["kind"] == "data").collect();
    let find = |action: &str| data.iter().find(|event| event["action"] == action).copied();
    let query = find("query").expect("the read through the host is on record");
    assert!(query["actor"].as_str().is_some_and(|actor| actor.starts_with("owner:")), "{query}");
    assert_eq!(query["remote_addr"], "127.0.0.1");
    assert_eq!(find("export").expect("the export is on record")["actor"], "nats");
    let erasures: Vec<u64> =
        data.iter().filter(|event| event["action"] == "erase").filter_map(|event| event["records"].as_u64()).collect();
    assert_eq!(erasures, [1, 2], "each erasure with its count");
}

#[tokio::test]
async fn public_addresses_in_audit_records_can_be_cut_to_their_network() {
    for (truncate, expected) in [(false, "127.0.0.1"), (true, "127.0.0.0/24")] {
        let env = TestEnv::start_with(EnvOptions { audit_truncate_addresses: truncate, ..EnvOptions::default() }).await;
        let upstream = Upstream::start().await;
        let _tunnel = env.tunnel(upstream.port(), Some("addr")).await;
        assert_eq!(env.get("addr", "/").await.status(), 200);
        let state = tempfile::tempdir().expect("state");
        let nats = env.nats_url_as("admin");
        let audit = within(DEADLINE, "the audit record", async {
            loop {
                let lines = lines(state.path(), &["trail", "addr", "--nats", &nats]).await;
                if let Some(record) = lines.into_iter().find(|line| line["kind"] == "audit") {
                    return record;
                }
            }
        })
        .await;
        assert_eq!(audit["remote_addr"], expected, "truncate = {truncate}");
    }
}
