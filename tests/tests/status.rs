//! `tunnel admin status`: the system as NATS sees it, with the users of `nats/accounts.conf`.

use std::time::Duration;

use tunnel_tests::{EnvOptions, TestEnv, Upstream, within};

/// A presence record is rewritten every 10 s: a change shows within one interval and a margin.
const PRESENCE_DEADLINE: Duration = Duration::from_secs(25);

#[tokio::test]
async fn status_lists_servers_streams_consumers_nodes_and_tunnels() {
    let env = TestEnv::start_with(EnvOptions { permissions: true, ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let _tunnel = env.tunnel(upstream.port(), Some("seen")).await;
    let status = within(PRESENCE_DEADLINE, "the session in the host's presence record", async {
        loop {
            let status = env.admin(&["status"]).await;
            let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
            let host = nodes.iter().find(|node| node["role"] == "session-host");
            if host.is_some_and(|host| host["sessions"] == 1) {
                return status;
            }
        }
    })
    .await;
    let roles: Vec<&str> =
        status["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["role"].as_str()).collect();
    assert!(roles.contains(&"ingress") && roles.contains(&"auditor"), "every role announces itself: {roles:?}");
    assert!(status["server"]["version"].as_str().is_some_and(|v| v.starts_with('2')), "{status}");
    let streams = status["streams"].as_array().expect("streams");
    let audit = streams.iter().find(|s| s["name"] == "AUDIT").expect("AUDIT listed");
    let consumers = audit["consumers"].as_array().expect("consumers");
    assert!(consumers.iter().any(|c| c["name"] == "auditor" && c["pending"].is_u64()), "{audit}");
    assert!(streams.iter().any(|s| s["name"] == "KV_tunnel_leases"), "buckets are listed as their streams");
    assert_eq!(status["tunnels"], 1);

    let (code, text, stderr) = tunnel_tests::run_tunnel(
        std::path::Path::new("/nonexistent"),
        &["admin", "--nats", &env.nats_url_as("admin"), "status", "--json"],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(text.contains("\"nodes\""), "{text}");
}
