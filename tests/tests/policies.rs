//! Public-side policies: basic auth, required headers, allowed and denied networks, chosen by
//! a tunnel's owner or by the operator, enforced at the ingress before anything reaches NATS.

use base64::Engine;
use futures_util::StreamExt;
use tunnel_client::Options;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::events::{REQUEST_ID_HEADER, TunnelReply, TunnelRequest};
use tunnel_schemas::http::RequestHead;
use tunnel_schemas::policy::{POLICY_REVISION_HEADER, PolicySpec, PublicPolicy};
use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Tunnel, Upstream, run_tunnel, within};

const PASSWORD: &str = "correct horse battery";

fn basic(user_password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_password))
}

fn policy(spec: PolicySpec) -> PublicPolicy {
    spec.build().expect("valid policy")
}

async fn open(env: &TestEnv, upstream: &Upstream, name: &str, policy: PublicPolicy) -> Tunnel {
    Tunnel::ready_with(Tunnel::spawn_with(Options { policy, ..env.client_options(upstream.port(), name) })).await
}

/// The status and error code of a request to `name` with `headers`.
async fn status(env: &TestEnv, name: &str, headers: &[(&str, &str)]) -> (u16, String, reqwest::header::HeaderMap) {
    let mut request = env.request(reqwest::Method::GET, name, "/echo");
    for (header, value) in headers {
        request = request.header(*header, *value);
    }
    let response = within(DEADLINE, "a response", request.send()).await.expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let code = headers.get(tunnel_ingress::ERROR_HEADER).map(|v| v.to_str().unwrap_or("").to_owned());
    (status, code.unwrap_or_default(), headers)
}

#[tokio::test]
async fn owner_policies_refuse_at_the_ingress_and_nothing_refused_reaches_nats() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let spec = PolicySpec {
        basic_auth: vec![format!("ann:{PASSWORD}")],
        require_headers: vec!["X-Team: blue".into()],
        ..PolicySpec::default()
    };
    let _tunnel = open(&env, &upstream, "guarded", policy(spec)).await;
    // A request this early may reach an ingress that has not applied the new policy yet: it
    // is refused all the same (the host sends it back, the ingress waits for the policy and
    // checks again). Once it is answered the ingress holds the policy.
    let (code, error, headers) = status(&env, "guarded", &[("x-team", "blue")]).await;
    assert_eq!((code, error.as_str()), (401, "auth_required"));
    let challenge = headers.get("www-authenticate").expect("a challenge").to_str().expect("ascii");
    assert!(challenge.starts_with("Basic realm=\"guarded\""), "{challenge}");
    let watcher = async_nats::connect(env.nats.url()).await.expect("nats");
    let mut published = watcher.subscribe("tun.guarded.>").await.expect("subscribe");
    // A probe on the same connection comes back once the server has the subscription.
    watcher.publish("tun.guarded.probe", "probe".into()).await.expect("probe");
    let probe = within(DEADLINE, "the probe", published.next()).await.expect("the probe");
    assert_eq!(probe.subject.as_str(), "tun.guarded.probe");
    let good = basic(&format!("ann:{PASSWORD}"));
    assert_eq!(status(&env, "guarded", &[("x-team", "blue")]).await.0, 401);
    let wrong = basic("ann:correct horse battery!");
    assert_eq!(status(&env, "guarded", &[("x-team", "blue"), ("authorization", &wrong)]).await.0, 401);
    let stranger = basic(&format!("bob:{PASSWORD}"));
    assert_eq!(status(&env, "guarded", &[("x-team", "blue"), ("authorization", &stranger)]).await.0, 401);
    let (code, error, _) = status(&env, "guarded", &[("authorization", &good)]).await;
    assert_eq!((code, error.as_str()), (403, "policy_denied"), "the required header is missing");
    assert_eq!(status(&env, "guarded", &[("x-team", "red"), ("authorization", &good)]).await.0, 403);

    let response = env
        .request(reqwest::Method::GET, "guarded", "/echo")
        .header("x-team", "blue")
        .header("authorization", &good)
        .header("x-request-id", "the-admitted-one")
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let seen = upstream.next_request().await;
    assert!(seen.header_values("authorization").is_empty(), "the tunnel's own credentials are not forwarded");
    assert_eq!(seen.header("x-team"), "blue");
    let first = within(DEADLINE, "the admitted request on NATS", published.next()).await.expect("a message");
    let id = first.headers.as_ref().and_then(|h| h.get(REQUEST_ID_HEADER)).map(|v| v.as_str().to_owned());
    assert_eq!(id.as_deref(), Some("the-admitted-one"), "the refused requests never reached NATS");
}

#[tokio::test]
async fn networks_count_the_connection_unless_it_is_a_trusted_proxy() {
    let options = EnvOptions { trusted_proxies: "127.0.0.1".into(), ..EnvOptions::default() };
    let env = TestEnv::start_with(options).await;
    let upstream = Upstream::start().await;
    let spec = PolicySpec {
        allow_cidrs: vec!["203.0.113.0/24".into()],
        deny_cidrs: vec!["203.0.113.66".into()],
        ..PolicySpec::default()
    };
    let _tunnel = open(&env, &upstream, "office", policy(spec)).await;
    let via = |chain: &'static str| [("x-forwarded-for", chain)];
    assert_eq!(status(&env, "office", &[]).await.0, 403, "the proxy itself is not in the office");
    assert_eq!(status(&env, "office", &via("203.0.113.7")).await.0, 200);
    assert_eq!(status(&env, "office", &via("203.0.113.66")).await.0, 403, "denied inside the allowed network");
    assert_eq!(status(&env, "office", &via("203.0.113.7, 198.51.100.1")).await.0, 403, "the last hop is the client");
    assert_eq!(status(&env, "office", &via("198.51.100.1, 203.0.113.7")).await.0, 200);

    let untrusting = TestEnv::start().await;
    let _tunnel = open(
        &untrusting,
        &upstream,
        "office",
        policy(PolicySpec { allow_cidrs: vec!["203.0.113.0/24".into()], ..PolicySpec::default() }),
    )
    .await;
    let (code, error, _) = status(&untrusting, "office", &via("203.0.113.7")).await;
    assert_eq!((code, error.as_str()), (403, "policy_denied"), "X-Forwarded-For from anyone else is ignored");
    let _own = open(
        &untrusting,
        &upstream,
        "local",
        policy(PolicySpec { deny_cidrs: vec!["10.0.0.0/8".into()], ..PolicySpec::default() }),
    )
    .await;
    assert_eq!(status(&untrusting, "local", &[]).await.0, 200, "only the networks named are denied");
}

#[tokio::test]
async fn operator_policies_cover_names_by_pattern_and_come_off_again() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let _shop = open(&env, &upstream, "shop-1", PublicPolicy::default()).await;
    let _blog = open(&env, &upstream, "blog-1", PublicPolicy::default()).await;
    assert_eq!(status(&env, "shop-1", &[]).await.0, 200);
    let state = tempfile::tempdir().expect("state dir");
    let nats = env.nats.url().to_owned();
    let admin = |args: &'static [&'static str]| {
        let mut all = vec!["admin", "--nats", nats.as_str(), "policy"];
        all.extend_from_slice(args);
        let state = state.path().to_owned();
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        async move { run_tunnel(&state, &all.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let (code, _, stderr) =
        admin(&["set", "shops", "--pattern", "shop-*", "--require-header", "X-Shop-Key: k-42"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    within(DEADLINE, "the ingress applying the operator policy", async {
        while status(&env, "shop-1", &[]).await.0 != 403 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(status(&env, "shop-1", &[("x-shop-key", "k-42")]).await.0, 200);
    assert_eq!(status(&env, "blog-1", &[]).await.0, 200, "names outside the pattern are not covered");
    let (code, stdout, _) = admin(&["list"]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("shops") && stdout.contains("x-shop-key") && !stdout.contains("k-42"), "{stdout}");
    let (code, _, _) = admin(&["remove", "shops"]).await;
    assert_eq!(code, Some(0));
    within(DEADLINE, "the ingress dropping the operator policy", async {
        while status(&env, "shop-1", &[]).await.0 != 200 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (code, _, stderr) = admin(&["set", "bad", "--allow-cidr", "10.0.0.0/33"]).await;
    assert_eq!(code, Some(1), "{stderr}");
}

#[tokio::test]
async fn a_host_refuses_requests_from_an_ingress_that_has_not_applied_the_policy() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let spec = PolicySpec { basic_auth: vec![format!("ann:{PASSWORD}")], ..PolicySpec::default() };
    let _tunnel = open(&env, &upstream, "fenced", policy(spec)).await;
    let nats = async_nats::connect(env.nats.url()).await.expect("nats");
    let event = TunnelRequest {
        v: tunnel_schemas::PROTOCOL_VERSION,
        request_id: "r1".into(),
        head: RequestHead { method: "GET".into(), target: "/echo".into(), headers: Vec::new() },
        body: bytes::Bytes::new(),
        end: true,
        upgrade: false,
    };
    let ask = |revision: Option<&str>| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, "r1");
        if let Some(revision) = revision {
            headers.insert(POLICY_REVISION_HEADER, revision);
        }
        let nats = nats.clone();
        let payload = tunnel_schemas::encode(&event);
        async move {
            let reply = within(
                DEADLINE,
                "a reply",
                nats.request_with_headers("tun.fenced.req".to_owned(), headers, payload.into()),
            )
            .await
            .expect("reply");
            tunnel_schemas::decode::<TunnelReply>(&reply.payload, usize::MAX).expect("a reply event")
        }
    };
    for stale in [None, Some("0"), Some("junk")] {
        match ask(stale).await {
            TunnelReply::Failure(failure) => assert_eq!(failure.code, ErrorCode::PolicyPending, "{stale:?}"),
            TunnelReply::Response(_) => panic!("a request that skipped the policy was served ({stale:?})"),
        }
    }
    assert!(matches!(ask(Some("999999")).await, TunnelReply::Response(_)), "an ingress up to date is served");
    assert_eq!(upstream.next_request().await.target, "/echo");
}

#[tokio::test]
async fn unusable_policies_are_refused_by_the_client_and_by_the_host() {
    let env = TestEnv::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let server = env.server_url();
    let (code, stdout, _) =
        run_tunnel(state.path(), &["http", "1", "--server", &server, "--json", "--allow-cidr", "10.0.0.0/40"]).await;
    assert_eq!(code, Some(1));
    assert!(stdout.contains("invalid_policy"), "{stdout}");
    let (code, stdout, _) =
        run_tunnel(state.path(), &["http", "1", "--server", &server, "--json", "--basic-auth", "ann:short"]).await;
    assert_eq!(code, Some(1));
    assert!(stdout.contains("invalid_policy"), "{stdout}");

    let mut forged = policy(PolicySpec { allow_cidrs: vec!["10.0.0.0/8".into()], ..PolicySpec::default() });
    forged.allow_cidrs.push("not a network".into());
    let upstream = Upstream::start().await;
    let refused = Tunnel::spawn_with(Options { policy: forged, ..env.client_options(upstream.port(), "forged") });
    match refused.finish().await {
        Err(tunnel_client::ClientError::Refused(failure)) => assert_eq!(failure.code, ErrorCode::InvalidPolicy),
        other => panic!("expected invalid_policy, got {other:?}"),
    }
    assert_eq!(status(&env, "forged", &[]).await.0, 502, "the name was not bound");
}
