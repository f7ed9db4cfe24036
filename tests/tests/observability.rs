//! The operator's view: every metric the alert rules (`deploy/prometheus/alerts.yaml`) and the
//! dashboard (`deploy/grafana/http-tunnel.json`) name is exported by the running services, and
//! every alert has a runbook section in `docs/operations.md`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use tunnel_tests::{DEADLINE, TestEnv, Upstream, within};

fn repository_file(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The metric names a PromQL expression uses: words of the project's prefixes outside quoted
/// label values, histogram suffixes removed.
fn metrics_in(expr: &str) -> Vec<String> {
    let unquoted: String = expr.split('"').step_by(2).collect::<Vec<_>>().join(" ");
    unquoted
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| ["ingress_", "host_", "auditor_", "nats_", "jetstream_"].iter().any(|p| word.starts_with(p)))
        .map(|word| word.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count").to_owned())
        .collect()
}

/// The expressions of the alert rules, and the alerts' names.
fn alerts() -> (Vec<String>, Vec<String>) {
    let rules = repository_file("deploy/prometheus/alerts.yaml");
    let field = |key: &str| -> Vec<String> {
        rules.lines().filter_map(|line| line.trim().strip_prefix(key)).map(|rest| rest.trim().to_owned()).collect()
    };
    (field("expr:"), field("- alert:"))
}

fn dashboard_exprs() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&repository_file("deploy/grafana/http-tunnel.json")).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn every_metric_of_the_rules_and_the_dashboard_is_exported() {
    let (exprs, _) = alerts();
    let named: BTreeSet<String> = exprs.iter().chain(&dashboard_exprs()).flat_map(|expr| metrics_in(expr)).collect();
    assert!(named.len() >= 10, "the rules and dashboard name the metrics: {named:?}");

    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let _tunnel = env.tunnel(upstream.port(), Some("seen")).await;
    assert_eq!(env.get("seen", "/").await.status(), 200);
    let missing = within(DEADLINE, "every named metric", async {
        loop {
            let text = env.metrics_text();
            let exported: BTreeSet<&str> = text
                .lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| line.split(['{', ' ']).next())
                .collect();
            let missing: Vec<&String> = named
                .iter()
                .filter(|name| {
                    !exported.contains(name.as_str()) && !exported.contains(format!("{name}_bucket").as_str())
                })
                .collect();
            if missing.is_empty() {
                return missing;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(missing.is_empty());
}

#[test]
fn every_alert_has_a_runbook() {
    let (_, names) = alerts();
    assert!(!names.is_empty());
    let operations = repository_file("docs/operations.md").to_lowercase();
    for name in names {
        let anchor = format!("### runbook: {}", name.to_lowercase());
        assert!(operations.contains(&anchor), "docs/operations.md has no `### Runbook: {name}`");
    }
}

#[test]
fn label_values_are_not_taken_for_metrics() {
    assert_eq!(
        metrics_in(r#"sum(rate(ingress_requests_total{result="host_unresponsive"}[5m]))"#),
        ["ingress_requests_total"]
    );
    assert_eq!(metrics_in("rate(ingress_request_seconds_bucket[5m])"), ["ingress_request_seconds"]);
}
