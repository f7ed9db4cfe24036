//! Usage counters are exact: 10,000 requests of known sizes are counted once each, in every
//! period, while the auditor is killed with SIGKILL three times (alone, or beside a second
//! auditor); quota limits changed at run time with `tunnel admin quota` reach the quota state
//! within 2 s; and the auditor's throughput is measured.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tokio::sync::watch;
use tunnel_auditor::AuditorConfig;
use tunnel_auditor::lease::LEADER_KEY;
use tunnel_schemas::audit::{AuditBatch, RequestAudit};
use tunnel_schemas::usage::{Period, QUOTA_STATE_BUCKET, QuotaLevel, QuotaState, Scope, UsageCounter, usage_key};
use tunnel_tests::ledger::{audit_records, counters_reach, sums};
use tunnel_tests::{AuditorProcess, DEADLINE, EnvOptions, TestEnv, Upstream, run_tunnel, within};

/// Requests sent in the exactness scenarios.
const TOTAL: u64 = 10_000;
/// Requests in flight at once.
const CONCURRENCY: usize = 64;
/// Times the auditor is killed.
const KILLS: usize = 3;
/// Leader lease of the auditor processes, in seconds: how long a killed leader holds things up.
const LEASE_SECS: &str = "2";

async fn jetstream(env: &TestEnv) -> jetstream::Context {
    jetstream::new(async_nats::connect(env.nats.url()).await.expect("nats"))
}

/// The auditor's buckets, created as the auditor would (so the scenario can watch them before
/// it starts).
async fn buckets(js: &jetstream::Context) -> tunnel_auditor::buckets::Buckets {
    let config = AuditorConfig { leader_lease_secs: 2, ..AuditorConfig::default() };
    tunnel_auditor::buckets::Buckets::open(js, &config).await.expect("buckets")
}

/// Sends `TOTAL` POSTs of known sizes to tunnel `name`, `CONCURRENCY` at a time, reporting
/// progress on `progress`; returns the body bytes sent.
async fn send(env: Arc<TestEnv>, name: &'static str, progress: watch::Sender<u64>) -> u64 {
    let sizes = (0..TOTAL).map(|i| (i * 7919) % 4096);
    let requests = sizes.map(|size| {
        let env = env.clone();
        let name = name.to_owned();
        async move {
            let request = env.request(reqwest::Method::POST, &name, "/echo").body(vec![b'x'; size as usize]);
            let response = within(DEADLINE, "a response", request.send()).await.expect("response");
            assert_eq!(response.status(), 200);
            response.bytes().await.expect("body");
            size
        }
    });
    let mut sent = 0;
    let mut responses = futures_util::stream::iter(requests).buffer_unordered(CONCURRENCY);
    while let Some(size) = responses.next().await {
        sent += size;
        progress.send_modify(|done| *done += 1);
    }
    sent
}

/// Waits until the auditor's consumer has every message acknowledged. The consumer has no
/// event for it, so this polls (the last resort), within the deadline.
async fn consumer_caught_up(js: &jetstream::Context) {
    let stream = js.get_stream("AUDIT").await.expect("audit stream");
    within(DEADLINE, "the consumer to catch up", async {
        loop {
            let info = stream.consumer_info("auditor").await.expect("consumer info");
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// The holder of the leader lease once it is not `not`.
async fn leader_other_than(leader: &kv::Store, not: Option<&str>) -> String {
    let mut watch = leader.watch_with_history(LEADER_KEY).await.expect("watch");
    within(DEADLINE, "a new leader", async {
        while let Some(entry) = watch.next().await {
            let entry = entry.expect("entry");
            let holder = String::from_utf8_lossy(&entry.value).into_owned();
            if entry.operation == kv::Operation::Put && Some(holder.as_str()) != not {
                return holder;
            }
        }
        panic!("the leader watch ended");
    })
    .await
}

/// Random points of progress in `0..=TOTAL`, sorted: when to kill.
fn kill_points() -> Vec<u64> {
    let mut points: Vec<u64> =
        (0..KILLS).map(|_| (uuid::Uuid::new_v4().as_u128() % u128::from(TOTAL + 1)) as u64).collect();
    points.sort_unstable();
    points
}

/// Sends `TOTAL` requests through a tunnel while `auditors` auditor processes run, killing the
/// leader with SIGKILL at `KILLS` random moments and starting it again; then checks that the
/// counters equal what the ingress recorded, exactly.
async fn exact_under_crashes(name: &'static str, auditors: usize) {
    let started = Instant::now();
    let env = Arc::new(TestEnv::start_with(EnvOptions { in_process_auditor: false, ..EnvOptions::default() }).await);
    let js = jetstream(&env).await;
    let buckets = buckets(&js).await;
    let upstream = Upstream::start().await;
    let _tunnel = env.tunnel(upstream.port(), Some(name)).await;
    let start =
        |node: &str| AuditorProcess::start(env.nats.url(), &[("leader_lease_secs", LEASE_SECS), ("node_id", node)]);
    let nodes: Vec<String> = (1..=auditors).map(|i| format!("aud{i}")).collect();
    let mut processes: BTreeMap<String, AuditorProcess> =
        nodes.iter().map(|node| (node.clone(), start(node))).collect();
    let mut holder = leader_other_than(&buckets.leader, None).await;

    let (progress, mut seen) = watch::channel(0);
    let sender = tokio::spawn(send(env.clone(), name, progress));
    let points = kill_points();
    for &point in &points {
        seen.wait_for(|&done| done >= point).await.expect("progress");
        let node = nodes.iter().find(|node| holder.starts_with(&format!("{node}-"))).expect("a node leads").clone();
        processes.remove(&node).expect("running").kill().await;
        processes.insert(node.clone(), start(&node));
        holder = leader_other_than(&buckets.leader, Some(&holder)).await;
    }
    let sent = within(Duration::from_secs(60), "the requests", sender).await.expect("sender");
    println!("{name}: {TOTAL} requests sent in {:?}; leader killed at {points:?}", started.elapsed());

    let records = audit_records(&js, name, |records| records.len() as u64 >= TOTAL).await;
    assert_eq!(records.len() as u64, TOTAL, "one audit record per request");
    assert_eq!(records.iter().map(|r| r.bytes_in).sum::<u64>(), sent, "the ingress recorded the bodies sent");
    let bytes_in: u64 = records.iter().map(|r| r.head_in + r.bytes_in).sum();
    let bytes_out: u64 = records.iter().map(|r| r.head_out + r.bytes_out).sum();
    assert!(records.iter().all(|r| r.head_in > 0 && r.head_out > 0), "heads are counted");

    counters_reach(&buckets.usage, name, TOTAL).await;
    consumer_caught_up(&js).await;
    let counters = counters_reach(&buckets.usage, name, TOTAL).await;
    let expected = (TOTAL, bytes_in, bytes_out);
    for (period, sum) in sums(&counters) {
        assert_eq!(sum, expected, "{period}: (requests, bytes in, bytes out) counted exactly");
    }
    println!(
        "{name}: counted exactly {TOTAL} requests, {bytes_in} bytes in, {bytes_out} bytes out in every period; \
         {:?} in all",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_exact_when_the_auditor_is_killed_three_times() {
    exact_under_crashes("exact-one", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_exact_with_two_auditors_and_the_leader_killed_three_times() {
    exact_under_crashes("exact-two", 2).await;
}

/// The quota state of `scope` after the next change that `accept`s it (a deletion is `None`).
async fn next_state(
    watch: &mut kv::Watch,
    scope: &Scope,
    accept: impl Fn(Option<&QuotaState>) -> bool,
) -> Option<QuotaState> {
    loop {
        let entry = watch.next().await.expect("a state").expect("ok");
        if entry.key != scope.key() {
            continue;
        }
        let state = (entry.operation == kv::Operation::Put)
            .then(|| tunnel_schemas::decode::<QuotaState>(&entry.value, usize::MAX).expect("a state"));
        if accept(state.as_ref()) {
            return state;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_set_at_run_time_is_in_the_quota_state_within_two_seconds() {
    let env = TestEnv::start().await;
    let js = jetstream(&env).await;
    let buckets = buckets(&js).await;
    let upstream = Upstream::start().await;
    let _tunnel = env.tunnel(upstream.port(), Some("quota-run")).await;
    let scope = Scope::Tunnel("quota-run".into());
    for _ in 0..5 {
        assert_eq!(env.get("quota-run", "/echo").await.status(), 200);
    }
    let now = tunnel_schemas::now_ms();
    let day = usage_key(&scope, Period::Day, Period::Day.start(now, 60_000));
    let mut day_watch = buckets.usage.watch_with_history(&day).await.expect("watch");
    within(DEADLINE, "5 requests counted", async {
        while let Some(entry) = day_watch.next().await {
            let counter: UsageCounter = tunnel_schemas::decode(&entry.expect("ok").value, usize::MAX).expect("counter");
            if counter.requests == 5 {
                return;
            }
        }
    })
    .await;

    let state = tempfile::tempdir().expect("state dir");
    let states = js.get_key_value(QUOTA_STATE_BUCKET).await.expect("state bucket");
    let mut watch = states.watch_with_history(scope.key()).await.expect("watch");
    let set = |limit: u64| {
        let (url, limit, dir) = (env.nats.url().to_owned(), limit.to_string(), state.path().to_owned());
        async move {
            let args = ["admin", "--nats", &url, "quota", "set", "quota-run", "--requests-per-day", &limit];
            let (code, stdout, stderr) = run_tunnel(&dir, &args).await;
            assert_eq!(code, Some(0), "{stdout}{stderr}");
        }
    };
    for (limit, expected) in [(5, Some(QuotaLevel::Exceeded)), (6, Some(QuotaLevel::Warning)), (100, None)] {
        let asked = Instant::now();
        set(limit).await;
        let state = within(Duration::from_secs(2), "the state", async {
            next_state(&mut watch, &scope, |state| state.map(|s| (s.level, s.limit)) == expected.map(|l| (l, limit)))
                .await
        })
        .await;
        println!("requests_per_day={limit}: {:?} within {:?}", state.map(|s| s.level), asked.elapsed());
    }
    let args = ["usage", "quota-run", "--nats", env.nats.url(), "--json"];
    let (code, stdout, stderr) = run_tunnel(state.path(), &args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(lines[0]["requests"], 5, "{stdout}");
    assert_eq!(lines.last().expect("a line")["limits"]["requests_per_day"], 100, "{stdout}");
    let args = ["admin", "--nats", env.nats.url(), "quota", "list"];
    let (_, stdout, _) = run_tunnel(state.path(), &args).await;
    assert!(stdout.contains("t.quota-run"), "{stdout}");
    let args = ["admin", "--nats", env.nats.url(), "quota", "remove", "quota-run"];
    assert_eq!(run_tunnel(state.path(), &args).await.0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_that_uses_up_a_quota_blocks_the_tunnel_at_once() {
    let env = TestEnv::start().await;
    let js = jetstream(&env).await;
    let buckets = buckets(&js).await;
    let state = tempfile::tempdir().expect("state dir");
    let args = ["admin", "--nats", env.nats.url(), "quota", "set", "quota-cross", "--requests-per-day", "10"];
    assert_eq!(run_tunnel(state.path(), &args).await.0, Some(0));
    let upstream = Upstream::start().await;
    let _tunnel = env.tunnel(upstream.port(), Some("quota-cross")).await;
    let scope = Scope::Tunnel("quota-cross".into());
    let mut watch = buckets.quota_state.watch_with_history(scope.key()).await.expect("watch");
    for _ in 0..9 {
        assert_eq!(env.get("quota-cross", "/echo").await.status(), 200);
    }
    let warned =
        within(DEADLINE, "a warning", next_state(&mut watch, &scope, |s| s.is_some_and(|s| s.used >= 8))).await;
    assert_eq!(warned.map(|s| s.level), Some(QuotaLevel::Warning), "80 % of 10");
    assert_eq!(env.get("quota-cross", "/echo").await.status(), 200, "the 10th is served");
    let crossed = Instant::now();
    let exceeded = within(Duration::from_secs(2), "the block", async {
        next_state(&mut watch, &scope, |s| s.is_some_and(|s| s.level == QuotaLevel::Exceeded)).await
    })
    .await
    .expect("a state");
    println!("blocked {:?} after the 10th request's response", crossed.elapsed());
    assert_eq!((exceeded.used, exceeded.limit), (10, 10));
    let day_end = Period::Day.end(Period::Day.start(tunnel_schemas::now_ms(), 60_000), 60_000);
    assert_eq!(exceeded.until_ms, day_end, "until the end of the UTC day");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_counts_a_large_backlog_quickly() {
    const RECORDS: u64 = 100_000;
    const PER_BATCH: u64 = 256;
    let env = TestEnv::start_with(EnvOptions { in_process_auditor: false, ..EnvOptions::default() }).await;
    let js = jetstream(&env).await;
    let buckets = buckets(&js).await;
    let now = tunnel_schemas::now_ms();
    let record = |i: u64| RequestAudit {
        v: 1,
        request_id: format!("bench-{i}"),
        tunnel: format!("bench-{}", i % 4),
        method: "GET".into(),
        path: "/".into(),
        status: 200,
        error: None,
        bytes_in: i % 100,
        bytes_out: 1000,
        duration_us: 100,
        remote_addr: "127.0.0.1".into(),
        at_ms: now,
        account: Some("bench".into()),
        replay: false,
        head_in: 80,
        head_out: 60,
    };
    let mut acks = futures_util::stream::FuturesUnordered::new();
    for batch in 0..RECORDS / PER_BATCH + 1 {
        let records: Vec<_> = (batch * PER_BATCH..((batch + 1) * PER_BATCH).min(RECORDS)).map(record).collect();
        let tunnel = records.first().map(|r| r.tunnel.clone()).unwrap_or_default();
        if records.is_empty() {
            break;
        }
        let payload = tunnel_schemas::encode(&AuditBatch { v: 1, records });
        acks.push(js.publish(format!("audit.{tunnel}.req"), payload.into()).await.expect("published").into_future());
    }
    while let Some(ack) = acks.next().await {
        ack.expect("stored");
    }
    let month = usage_key(&Scope::Account("bench".into()), Period::Month, Period::Month.start(now, 60_000));
    let mut watch = buckets.usage.watch_with_history(&month).await.expect("watch");
    let started = Instant::now();
    let auditor = AuditorProcess::start(env.nats.url(), &[]);
    within(Duration::from_secs(60), "the backlog counted", async {
        while let Some(entry) = watch.next().await {
            let counter: UsageCounter = tunnel_schemas::decode(&entry.expect("ok").value, usize::MAX).expect("counter");
            if counter.requests == RECORDS {
                return;
            }
        }
    })
    .await;
    let took = started.elapsed();
    println!(
        "auditor throughput: {RECORDS} records ({} messages) in {took:?} from its start: {:.0} records/s",
        RECORDS.div_ceil(PER_BATCH),
        RECORDS as f64 / took.as_secs_f64()
    );
    auditor.kill().await;
}
