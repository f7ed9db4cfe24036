//! The system on a three-node NATS cluster, with every stream and bucket at three replicas,
//! under steady load across 20 tunnels with auditing and recording on, while one node is killed
//! with SIGKILL and started again, then another: the tunnels stay reachable, no request hangs,
//! the requests that fail are those in flight on the killed node's connections and fail with an
//! error code (`x-tunnel-error`; 502/503, or 504 `host_unresponsive` where the node carried the
//! session-host's connection, see [`check_requests`]), and no audit record, usage count or
//! recording is lost or doubled. A second scenario cuts every NATS connection while a request awaits its answer.
//!
//! The figures (failed requests, longest request, recovery time per kill) are printed; run
//! `cargo test -p tunnel-tests --test cluster -- --nocapture` to see them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tunnel_client::Event;
use tunnel_schemas::audit::{AuditBatch, RequestAudit};
use tunnel_schemas::subjects::{AUDIT_STREAM, RECORDING_STREAM};
use tunnel_schemas::usage::{Period, USAGE_BUCKET, UsageCounter};
use tunnel_tests::{
    CutProxy, DEADLINE, EnvOptions, NatsCluster, NatsServer, TestEnv, Tunnel, Upstream, run_tunnel, within,
};
use tunnel_trail::event::TrailEvent;

/// Tunnels under load.
const TUNNELS: usize = 20;
/// Replicas of every stream and bucket.
const REPLICAS: usize = 3;
/// Time between the starts of two requests of one tunnel (10 requests per second each).
const PACE: Duration = Duration::from_millis(100);
/// Every other request waits this long at the local service: requests are in flight when a
/// node dies.
const SLOW_PATH: &str = "/delay/150";
/// Deadline of every public request: one that takes longer has hung.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// The ingress's `request_timeout_secs`, as deployed: a request whose answer is lost inside a
/// dying node must be failed by the ingress's probes of the session (ADR 0004), long before.
const INGRESS_TIMEOUT_SECS: u64 = 900;
/// Requests completed before the first kill, while a node is down, and after each recovery.
const PHASE_REQUESTS: u64 = 300;
/// Requests sent, one every [`PACE`], while a node is frozen.
const FROZEN_REQUESTS: usize = 40;
/// Deadline for the cluster to be healthy again after a restart.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
/// The streams every replica count is checked on (buckets are streams `KV_<bucket>`).
const STREAMS: [&str; 8] = [
    AUDIT_STREAM,
    RECORDING_STREAM,
    "KV_tunnel_leases",
    "KV_tunnel_policies",
    "KV_tunnel_usage",
    "KV_tunnel_quotas",
    "KV_tunnel_quota_state",
    "KV_tunnel_auditor_leader",
];

/// What became of one public request.
#[derive(Debug)]
struct Outcome {
    tunnel: usize,
    request_id: String,
    started: Instant,
    took: Duration,
    /// The status and `x-tunnel-error`, or why no response came.
    answer: Result<(u16, Option<String>), String>,
}

/// One kill of a node: which, what it did for the system, when, how long the cluster took to be
/// healthy after the restart.
#[derive(Debug)]
struct Kill {
    node: String,
    roles: Vec<&'static str>,
    /// Just before the SIGKILL.
    at: Instant,
    /// Once the process was gone.
    dead: Instant,
    restarted: Instant,
    recovery: Duration,
}

impl Kill {
    /// Whether `outcome` was in flight while the node died.
    fn caught(&self, outcome: &Outcome) -> bool {
        outcome.started <= self.dead && self.at <= outcome.started + outcome.took
    }
}

/// Steady load: one loop per tunnel, each starting a request every [`PACE`].
struct Load {
    stop: CancellationToken,
    done: watch::Receiver<u64>,
    loops: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// Starts a loop for each tunnel of `names`.
    fn start(env: &Arc<TestEnv>, names: &[String]) -> Self {
        let stop = CancellationToken::new();
        let (progress, done) = watch::channel(0);
        let progress = Arc::new(progress);
        let loops = names
            .iter()
            .enumerate()
            .map(|(tunnel, name)| {
                let (env, name, stop, progress) = (env.clone(), name.clone(), stop.clone(), progress.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    // The loops take turns, so that requests are in flight at every moment.
                    let offset = PACE * u32::try_from(tunnel).unwrap_or_default() / TUNNELS as u32;
                    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, PACE);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    for n in 0.. {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            _ = tick.tick() => {}
                        }
                        outcomes.push(request(&env, tunnel, &name, n).await);
                        progress.send_modify(|done| *done += 1);
                    }
                    outcomes
                })
            })
            .collect();
        Self { stop, done, loops }
    }

    /// Waits until `count` more requests have completed (whatever their outcome).
    async fn completes(&mut self, count: u64) {
        let target = *self.done.borrow() + count;
        within(REQUEST_DEADLINE * 3, "requests to complete", self.done.wait_for(|&done| done >= target))
            .await
            .expect("load running");
    }

    /// Stops the loops and returns what became of every request.
    async fn finish(self) -> Vec<Outcome> {
        self.stop.cancel();
        let mut outcomes = Vec::new();
        for handle in self.loops {
            outcomes.extend(within(REQUEST_DEADLINE * 2, "the load to stop", handle).await.expect("load loop"));
        }
        outcomes
    }
}

/// One POST of a known body to tunnel `name` with its own request id, within
/// [`REQUEST_DEADLINE`]: every other one echoed at once, the others answered after a while ([`SLOW_PATH`]).
async fn request(env: &TestEnv, tunnel: usize, name: &str, n: usize) -> Outcome {
    let request_id = format!("cl-{tunnel}-{n}");
    let body = vec![b'c'; (n * 61) % 2048];
    let (path, expected) =
        if n.is_multiple_of(2) { ("/echo".to_owned(), body.clone()) } else { (SLOW_PATH.to_owned(), b"ok".to_vec()) };
    let started = Instant::now();
    let sent = env
        .request(reqwest::Method::POST, name, &path)
        .header("x-request-id", &request_id)
        .body(body)
        .timeout(REQUEST_DEADLINE)
        .send();
    let answer = async {
        let response = sent.await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let error = response.headers().get("x-tunnel-error").map(|v| String::from_utf8_lossy(v.as_bytes()).into());
        let answered = response.bytes().await.map_err(|e| format!("body after {status}: {e}"))?;
        if status == 200 && answered != expected {
            return Err(format!("{path} answered {} bytes, not {}", answered.len(), expected.len()));
        }
        Ok((status, error))
    }
    .await;
    Outcome { tunnel, request_id, started, took: started.elapsed(), answer }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_rides_out_the_loss_of_a_nats_node_twice() {
    let began = Instant::now();
    let mut cluster = NatsCluster::start(3, "", RECOVERY_DEADLINE).await;
    places_replicated_streams(&cluster.urls()).await;
    let options = EnvOptions {
        nats_urls: Some(cluster.urls()),
        replicas: REPLICAS,
        record_tunnels: "*".into(),
        request_timeout_secs: INGRESS_TIMEOUT_SECS,
        ..EnvOptions::default()
    };
    let env = Arc::new(TestEnv::start_with(options).await);
    let js =
        jetstream::new(tunnel_kit::nats::connect(&cluster.urls(), "observer", "_INBOX.observer").await.expect("nats"));
    replicated(&js).await;
    let upstream = Upstream::start().await;
    let names: Vec<String> = (0..TUNNELS).map(|i| format!("cluster-{i:02}")).collect();
    let mut tunnels: Vec<Tunnel> = Vec::new();
    for name in &names {
        tunnels.push(open(&env, upstream.port(), name).await);
    }
    println!("cluster of 3 up, {TUNNELS} tunnels open, every stream at {REPLICAS} replicas: {:?}", began.elapsed());

    let state = tempfile::tempdir().expect("state dir");
    let mut load = Load::start(&env, &names);
    load.completes(PHASE_REQUESTS).await;
    let mut kills = Vec::new();
    // First the node the ingress is connected to, then the one the session-host is on (or, when
    // that is the same, the one leading the audit stream, else any other).
    for connection in ["ing", "host"] {
        let node = victim(&cluster, connection, kills.last().map(|k: &Kill| k.node.as_str())).await;
        let roles = roles(&cluster, node).await;
        let at = Instant::now();
        cluster.kill(node);
        let dead = Instant::now();
        load.completes(PHASE_REQUESTS).await;
        if kills.is_empty() {
            // Once every stream has a leader again (the ones the node led elect new ones), the
            // operator's commands read the log through the nodes still up.
            replicated(&js).await;
            operator_reads_usage(&cluster, &names[0], state.path()).await;
        }
        cluster.restart(node);
        let restarted = Instant::now();
        let recovery = cluster.wait_healthy(RECOVERY_DEADLINE).await;
        kills.push(Kill { node: cluster.name(node).to_owned(), roles, at, dead, restarted, recovery });
        load.completes(PHASE_REQUESTS).await;
    }
    let outcomes = load.finish().await;
    report(&outcomes, &kills);
    check_requests(&outcomes, &kills);
    let records = audit_records(&js, outcomes.len()).await;
    check_audit(&outcomes, &records, &names);
    check_usage(&js, &records, &names).await;
    check_recordings(&js, &outcomes, &names).await;
    println!("cluster scenario done in {:?}", began.elapsed());
    drop(tunnels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_nats_connection_drops_fails_fast_and_the_next_is_served() {
    let nats = NatsServer::start();
    let server = nats.url().trim_start_matches("nats://").parse().expect("a socket address");
    let link = CutProxy::start(server).await;
    let options = EnvOptions { nats_urls: Some(format!("nats://{}", link.addr())), ..EnvOptions::default() };
    let env = TestEnv::start_with(options).await;
    let mut upstream = Upstream::start().await;
    let _tunnel = env.tunnel(upstream.port(), Some("lost-answer")).await;
    let pending = tokio::spawn(env.request(reqwest::Method::GET, "lost-answer", "/hang").send());
    upstream.next_request().await;
    // Every NATS connection drops (the services reconnect through the proxy at once): whatever
    // answer was in flight on them would be lost, and this one never comes.
    let cut = Instant::now();
    link.cut();
    let response = within(DEADLINE, "the answer", pending).await.expect("task").expect("response");
    let took = cut.elapsed();
    let error = response.headers().get("x-tunnel-error").map(|v| v.to_str().unwrap_or_default().to_owned());
    assert_eq!((response.status().as_u16(), error.as_deref()), (503, Some("unavailable")));
    assert!(took < Duration::from_secs(3), "503 within the grace, not at the 10 s timeout: {took:?}");
    assert_eq!(env.get("lost-answer", "/echo").await.status(), 200, "the next request is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_flow_while_lease_renewals_wait_on_a_frozen_node() {
    let cluster = NatsCluster::start(3, "", RECOVERY_DEADLINE).await;
    // The components reach n1 and n2 only; n3 leads the lease bucket, then freezes, and the
    // renewals (every second with a 3 s lease) wait for a leader that does not answer.
    let urls = format!("{},{}", cluster.url(0), cluster.url(1));
    places_replicated_streams(&urls).await;
    let options =
        EnvOptions { nats_urls: Some(urls.clone()), replicas: REPLICAS, lease_ttl_secs: 3, ..EnvOptions::default() };
    let env = TestEnv::start_with(options).await;
    let js = jetstream::new(tunnel_kit::nats::connect(&urls, "observer", "_INBOX.observer").await.expect("nats"));
    replicated(&js).await;
    lead(&js, "KV_tunnel_leases", cluster.name(2)).await;
    let upstream = Upstream::start().await;
    let _tunnel = open(&env, upstream.port(), "frozen-lease").await;
    cluster.freeze(2);
    let mut slowest = Duration::ZERO;
    let mut pace = tokio::time::interval(PACE);
    for _ in 0..FROZEN_REQUESTS {
        pace.tick().await;
        let started = Instant::now();
        let request = env.request(reqwest::Method::GET, "frozen-lease", "/echo").timeout(REQUEST_DEADLINE);
        let status = request.send().await.map(|response| response.status().as_u16());
        slowest = slowest.max(started.elapsed());
        assert_eq!(status.ok(), Some(200), "served while n3 is frozen");
    }
    cluster.thaw(2);
    println!("n3 frozen while leading the lease bucket: slowest of {FROZEN_REQUESTS} requests {slowest:?}");
    assert!(slowest < Duration::from_millis(2500), "a renewal held the session's requests up for {slowest:?}");
}

/// Waits until JetStream places a stream of [`REPLICAS`] replicas (a fresh cluster may take
/// seconds, and the components give up on a creation after 5 s): makes one and deletes it.
async fn places_replicated_streams(urls: &str) {
    let js = jetstream::new(tunnel_kit::nats::connect(urls, "probe", "_INBOX.probe").await.expect("nats"));
    let config = jetstream::stream::Config {
        name: "PROBE".into(),
        subjects: vec!["probe".into()],
        num_replicas: REPLICAS,
        ..Default::default()
    };
    within(RECOVERY_DEADLINE, "JetStream to place a replicated stream", async {
        while js.get_or_create_stream(config.clone()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    js.delete_stream("PROBE").await.expect("probe deleted");
}

/// Makes `node` the leader of `stream`, asking the current leader to step down in its favour.
async fn lead(js: &jetstream::Context, stream: &str, node: &str) {
    let request = serde_json::json!({ "placement": { "preferred": node } });
    within(DEADLINE, "the stream leader to move", async {
        loop {
            let mut found = js.get_stream(stream).await.expect("stream");
            let info = found.info().await.expect("stream info");
            if info.cluster.as_ref().and_then(|c| c.leader.as_deref()) == Some(node) {
                return;
            }
            let subject = format!("STREAM.LEADER.STEPDOWN.{stream}");
            let _: Result<serde_json::Value, _> = js.request(subject, &request).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

/// `tunnel usage` with the list of every node, one of them down, reads `name`'s counters: the
/// operator's commands reach the nodes still up. While the counters' bucket is without a leader
/// the command says `unavailable` (after 10 s), so this tries again, within [`DEADLINE`].
async fn operator_reads_usage(cluster: &NatsCluster, name: &str, state: &std::path::Path) {
    let args = ["usage", name, "--nats", &cluster.urls(), "--json"];
    let started = Instant::now();
    loop {
        let (code, stdout, stderr) = run_tunnel(state, &args).await;
        if code == Some(0) {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "tunnel usage with a node down: {stdout}{stderr}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Opens tunnel `name` to the local `port` and waits until it is ready. On a cluster just
/// formed, the session-host may refuse a first hello with `unavailable` while the lease bucket's
/// new leader settles; the client then connects again on its own, as it would in production.
async fn open(env: &TestEnv, port: u16, name: &str) -> Tunnel {
    let mut tunnel = env.spawn_client(&env.server_url(), port, Some(name));
    loop {
        match tunnel.next_event().await {
            Some(Event::Ready { .. }) => return tunnel,
            Some(Event::Disconnected { .. } | Event::Reconnecting { .. }) => {}
            other => panic!("{name}: expected ready, got {other:?}"),
        }
    }
}

/// Every stream and bucket the components make has [`REPLICAS`] replicas and a leader. The
/// components make them as they start, in the background of the environment, so this looks
/// until they are there.
async fn replicated(js: &jetstream::Context) {
    for name in STREAMS {
        let info = within(DEADLINE, name, async {
            loop {
                if let Ok(mut stream) = js.get_stream(name).await
                    && let Ok(info) = stream.info().await
                    && info.cluster.as_ref().is_some_and(|cluster| cluster.leader.is_some())
                {
                    return info.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert_eq!(info.config.num_replicas, REPLICAS, "{name} replicas");
    }
}

/// The node to kill: the one `connection` is on, unless that is `not`; then the audit stream's
/// leader, unless that is `not`; else any other.
async fn victim(cluster: &NatsCluster, connection: &str, not: Option<&str>) -> usize {
    let on = cluster.node_of(connection).await;
    let leader = cluster.stream_leader(AUDIT_STREAM).await.and_then(|name| cluster.index_of(&name));
    let other = (0..3).find(|&i| Some(cluster.name(i)) != not);
    [on, leader, other].into_iter().flatten().find(|&i| Some(cluster.name(i)) != not).expect("a node to kill")
}

/// What node `node` does for the system: the components connected to it, the leaders on it.
async fn roles(cluster: &NatsCluster, node: usize) -> Vec<&'static str> {
    let name = cluster.name(node);
    let mut roles = Vec::new();
    for (connection, role) in [("ing", "ingress"), ("host", "session-host"), ("aud", "auditor")] {
        if cluster.node_of(connection).await == Some(node) {
            roles.push(role);
        }
    }
    if cluster.meta_leader().await.as_deref() == Some(name) {
        roles.push("meta leader");
    }
    if cluster.stream_leader(AUDIT_STREAM).await.as_deref() == Some(name) {
        roles.push("AUDIT leader");
    }
    roles
}

/// Whether `outcome` failed: no response, or one other than 200.
fn failed(outcome: &Outcome) -> bool {
    !matches!(outcome.answer, Ok((200, _)))
}

/// Prints the figures: requests, failures per kill by status and code, the longest request,
/// the recovery times.
fn report(outcomes: &[Outcome], kills: &[Kill]) {
    let longest = outcomes.iter().max_by_key(|o| o.took).expect("requests were sent");
    let failures = outcomes.iter().filter(|o| failed(o)).count();
    println!(
        "{} requests over 20 tunnels, {failures} failed, longest {:?} ({})",
        outcomes.len(),
        longest.took,
        longest.request_id
    );
    let first = outcomes.iter().map(|o| o.started).min().expect("requests were sent");
    let kill_times: Vec<String> = kills.iter().map(|k| format!("{:?}", k.at - first)).collect();
    for o in outcomes.iter().filter(|o| failed(o)) {
        let at = o.started - first;
        println!(
            "  failed {} sent at +{at:?} (kills at +{kill_times:?}) after {:?}: {:?}",
            o.request_id, o.took, o.answer
        );
    }
    for (i, kill) in kills.iter().enumerate() {
        let caught: Vec<&Outcome> = outcomes.iter().filter(|o| kill.caught(o)).collect();
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for o in caught.iter().filter(|o| failed(o)) {
            let kind = match &o.answer {
                Ok((status, code)) => format!("{status} {}", code.as_deref().unwrap_or("-")),
                Err(e) => e.clone(),
            };
            *kinds.entry(kind).or_default() += 1;
        }
        println!(
            "kill {}: {} ({}); {} requests in flight, failed: {kinds:?}; every tunnel answered again within {:?}; \
             down {:?}, cluster healthy {:?} after its restart",
            i + 1,
            kill.node,
            kill.roles.join(", "),
            caught.len(),
            served_again(outcomes, kill),
            kill.restarted - kill.at,
            kill.recovery
        );
    }
}

/// How long after `kill` it took until every tunnel had answered a request sent after it.
fn served_again(outcomes: &[Outcome], kill: &Kill) -> Duration {
    (0..TUNNELS)
        .filter_map(|tunnel| {
            let after = outcomes.iter().filter(|o| o.tunnel == tunnel && o.started >= kill.at && !failed(o));
            after.map(|o| o.started + o.took - kill.at).min()
        })
        .max()
        .unwrap_or_default()
}

/// Whether `outcome` found no responder for its tunnel: 502 `tunnel_offline`, given at once.
/// This happens, rarely, to a request sent in the milliseconds after a kill, before the
/// session-host that lost its node has subscribed again through another: the ingress does not
/// wait for the tunnel's subscription to show up again.
fn no_responder(outcome: &Outcome) -> bool {
    matches!(&outcome.answer, Ok((502, Some(code))) if code == "tunnel_offline")
}

/// No request hung; every failure is of a request in flight while a node died, with an error
/// code: 502/503 at once or within the ingress's grace for its lost connection (503
/// `unavailable` also for an answer lost inside the dead node, which the probes of the session
/// tell the ingress of), or, where the killed node carried the session-host's connection, 504
/// `host_unresponsive` (a request lost on its way to the host: nobody acknowledged it);
/// or else a [`no_responder`].
fn check_requests(outcomes: &[Outcome], kills: &[Kill]) {
    let longest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    assert!(longest < REQUEST_DEADLINE, "a request hung: {longest:?}");
    for o in outcomes.iter().filter(|o| failed(o)) {
        let Some(kill) = kills.iter().find(|k| k.caught(o)) else {
            assert!(
                no_responder(o),
                "{} failed ({:?}) but was not in flight while a node died",
                o.request_id,
                o.answer
            );
            continue;
        };
        let host_lost = kill.roles.contains(&"session-host");
        let clean = match &o.answer {
            Ok((502 | 503, Some(_))) => true,
            Ok((504, Some(code))) => host_lost && code == "host_unresponsive",
            _ => false,
        };
        assert!(clean, "{} failed without a clean error at the kill of {}: {:?}", o.request_id, kill.node, o.answer);
    }
    for kill in kills {
        for tunnel in 0..TUNNELS {
            let served = outcomes.iter().any(|o| o.tunnel == tunnel && o.started > kill.restarted && !failed(o));
            assert!(served, "tunnel {tunnel} not served after {} came back", kill.node);
        }
    }
}

/// Every audit record stored, read until there are at least `expected` and none pending.
async fn audit_records(js: &jetstream::Context, expected: usize) -> Vec<RequestAudit> {
    let stream = js.get_stream(AUDIT_STREAM).await.expect("audit stream");
    let config = OrderedConfig { filter_subject: "audit.*.req".into(), ..Default::default() };
    let mut messages = stream.create_consumer(config).await.expect("consumer").messages().await.expect("messages");
    let mut records = Vec::new();
    within(DEADLINE, "the audit records", async {
        while let Some(message) = messages.next().await {
            let message = message.expect("an audit message");
            let batch: AuditBatch = tunnel_schemas::decode(&message.payload, usize::MAX).expect("an audit batch");
            records.extend(batch.records);
            if records.len() >= expected && message.info().expect("info").pending == 0 {
                return;
            }
        }
    })
    .await;
    let gaps = stream.info_with_subjects("audit.*.gap").await.expect("info").try_collect::<Vec<_>>().await;
    assert_eq!(gaps.expect("subjects"), vec![], "audit records reported lost");
    records
}

/// One audit record per request sent, none missing, none twice, each with the status the public
/// client saw.
fn check_audit(outcomes: &[Outcome], records: &[RequestAudit], names: &[String]) {
    let mut stored: HashMap<&str, Vec<&RequestAudit>> = HashMap::new();
    for record in records {
        stored.entry(record.request_id.as_str()).or_default().push(record);
    }
    let doubled: Vec<_> = stored.iter().filter(|(_, r)| r.len() > 1).map(|(id, _)| *id).collect();
    assert!(doubled.is_empty(), "audit records stored twice: {doubled:?}");
    let missing: Vec<_> = outcomes.iter().filter(|o| !stored.contains_key(o.request_id.as_str())).collect();
    assert!(missing.is_empty(), "{} requests without an audit record: {missing:?}", missing.len());
    assert_eq!(records.len(), outcomes.len(), "no audit record of a request not sent");
    for o in outcomes {
        let record = stored[o.request_id.as_str()][0];
        assert_eq!(record.tunnel, names[o.tunnel], "{}", o.request_id);
        if let Ok((status, _)) = &o.answer {
            assert_eq!(record.status, *status, "{}: the audit record's status", o.request_id);
        }
    }
    println!("audit: {} records, one per request, none twice, no gap", records.len());
}

/// The sum of what `records` add to a counter, as the auditor adds them.
fn total<'a>(records: impl Iterator<Item = &'a RequestAudit>) -> UsageCounter {
    let mut total = UsageCounter::default();
    for record in records {
        tunnel_auditor::tally::add(&mut total, &tunnel_auditor::tally::increment(record));
    }
    total
}

/// The counters of every tunnel, in every period, add up to its audit records: each counted
/// once. The auditor catches up on its own time, so this looks until they do.
async fn check_usage(js: &jetstream::Context, records: &[RequestAudit], names: &[String]) {
    let usage = js.get_key_value(USAGE_BUCKET).await.expect("usage bucket");
    let expected: BTreeMap<&str, UsageCounter> =
        names.iter().map(|name| (name.as_str(), total(records.iter().filter(|r| &r.tunnel == name)))).collect();
    let started = Instant::now();
    loop {
        let counted = counters(&usage).await;
        let differing: Vec<String> = names
            .iter()
            .flat_map(|name| Period::ALL.iter().map(move |period| (name, period.as_str())))
            .filter_map(|(name, period)| {
                let wanted = &expected[name.as_str()];
                let got = counted.get(&(name.clone(), period));
                (got != Some(wanted)).then(|| format!("{name} {period}: counted {got:?}, records {wanted:?}"))
            })
            .collect();
        if differing.is_empty() {
            break;
        }
        let shown = differing.iter().take(4).cloned().collect::<Vec<_>>().join("\n");
        assert!(started.elapsed() < DEADLINE, "{} counters differ from the audit records:\n{shown}", differing.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("usage: every tunnel's counters equal its audit records in every period");
}

/// The tunnels' counters summed per (tunnel, period), without their `last_seq`.
async fn counters(usage: &jetstream::kv::Store) -> BTreeMap<(String, &'static str), UsageCounter> {
    let keys: Vec<String> = usage.keys().await.expect("keys").try_collect().await.expect("keys");
    let mut counted = BTreeMap::new();
    for key in keys {
        let mut parts = key.split('.');
        let (Some("t"), Some(tunnel), Some(period)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let Some(period) = Period::parse(period) else { continue };
        let Some(value) = usage.get(&key).await.expect("counter") else { continue };
        let counter: UsageCounter = tunnel_schemas::decode(&value, usize::MAX).expect("a counter");
        let sum: &mut UsageCounter = counted.entry((tunnel.to_owned(), period.as_str())).or_default();
        tunnel_auditor::tally::add(sum, &counter);
    }
    counted
}

/// Every exchange answered with 200 is recorded once, no recording is reported lost, and
/// nothing else is recorded than what was sent. The host stores recordings on its own time
/// (retrying through a leader election), so this looks until they are all there.
async fn check_recordings(js: &jetstream::Context, outcomes: &[Outcome], names: &[String]) {
    let started = Instant::now();
    loop {
        let mut recorded: HashMap<String, usize> = HashMap::new();
        let mut gaps = 0;
        for name in names {
            let query = tunnel_trail::query::Query {
                tunnel: name.clone(),
                source: tunnel_trail::query::Source::Exchanges,
                filter: tunnel_trail::filter::Filter::default(),
                follow: false,
                owner: None,
                limit: None,
            };
            let events: Vec<_> = tunnel_trail::query::read(js, query).await.expect("recordings").collect().await;
            for event in events {
                match event.expect("a recording") {
                    TrailEvent::Exchange(exchange) => *recorded.entry(exchange.request_id).or_default() += 1,
                    TrailEvent::Gap(_) => gaps += 1,
                    _ => {}
                }
            }
        }
        assert_eq!(gaps, 0, "recordings reported lost");
        let twice: Vec<_> = recorded.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
        assert!(twice.is_empty(), "exchanges recorded twice: {twice:?}");
        let sent: HashSet<&str> = outcomes.iter().map(|o| o.request_id.as_str()).collect();
        assert!(recorded.keys().all(|id| sent.contains(id.as_str())), "a recording of a request not sent");
        let answered = outcomes.iter().filter(|o| !failed(o));
        let missing: Vec<&str> =
            answered.filter(|o| !recorded.contains_key(&o.request_id)).map(|o| o.request_id.as_str()).collect();
        if missing.is_empty() {
            println!(
                "recordings: {} exchanges recorded once each, every answered one among them, no gap",
                recorded.len()
            );
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{} answered exchanges not recorded: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
