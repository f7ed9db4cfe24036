//! Auditor configuration.

use serde::{Deserialize, Serialize};
use tunnel_kit::config::{self, ConfigError, Validate};
use tunnel_schemas::usage::QuotaLimits;

/// Settings of the auditor. Keys are the TOML keys; `TUNNEL_<KEY>` overrides them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditorConfig {
    /// Listen address of the operational routes.
    pub listen: String,
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// TLS to NATS: `nats_ca_file`, and `nats_cert_file` with `nats_key_file` for mutual TLS.
    #[serde(flatten)]
    pub nats_tls: tunnel_kit::nats::NatsTls,
    /// Days audit events are kept.
    pub retention_days: u64,
    /// Replicas of the audit stream and of the usage buckets (1 on a single server, 3 on a
    /// cluster).
    pub replicas: usize,
    /// `text` or `json` logs.
    pub log_format: String,
    /// This auditor's id: its NATS inbox `_INBOX.aud.<node_id>`, and the start of the value
    /// it writes in the leader lease (so `nats kv get tunnel_auditor_leader leader` names the
    /// leader); letters, digits, `-`.
    pub node_id: String,
    /// Length of the shortest counting period, the "minute", in seconds (shorter in tests).
    pub usage_minute_secs: u64,
    /// Days usage counters are kept (`max_age` of the usage bucket, applied at every start).
    pub usage_retention_days: u64,
    /// Seconds the leader lease lasts without renewal: how long a crashed leader holds up the
    /// counting (`max_age` of the leader bucket when the auditor creates it).
    pub leader_lease_secs: u64,
    /// Default limit of every tunnel: requests per minute (0: none).
    pub quota_requests_per_minute: u64,
    /// Default limit of every tunnel: requests per day (0: none).
    pub quota_requests_per_day: u64,
    /// Default limit of every tunnel: bytes in and out per day (0: none).
    pub quota_bytes_per_day: u64,
    /// Default limit of every tunnel: bytes in and out per month (0: none).
    pub quota_bytes_per_month: u64,
    /// Default limit of every account (all its tunnels together): requests per minute (0: none).
    pub account_quota_requests_per_minute: u64,
    /// Default limit of every account: requests per day (0: none).
    pub account_quota_requests_per_day: u64,
    /// Default limit of every account: bytes in and out per day (0: none).
    pub account_quota_bytes_per_day: u64,
    /// Default limit of every account: bytes in and out per month (0: none).
    pub account_quota_bytes_per_month: u64,
    /// Tunnel name patterns (`*`, `shop-*`; comma-separated) whose totals are exported as
    /// metrics labelled by tunnel; none by default, so the labels stay bounded.
    pub usage_metrics_tunnels: String,
    /// Account name patterns whose totals are exported as metrics labelled by account.
    pub usage_metrics_accounts: String,
}

impl Default for AuditorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7090".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_tls: tunnel_kit::nats::NatsTls::default(),
            retention_days: 30,
            replicas: 1,
            log_format: "text".into(),
            node_id: "aud1".into(),
            usage_minute_secs: 60,
            usage_retention_days: 400,
            leader_lease_secs: 10,
            quota_requests_per_minute: 0,
            quota_requests_per_day: 0,
            quota_bytes_per_day: 0,
            quota_bytes_per_month: 0,
            account_quota_requests_per_minute: 0,
            account_quota_requests_per_day: 0,
            account_quota_bytes_per_day: 0,
            account_quota_bytes_per_month: 0,
            usage_metrics_tunnels: String::new(),
            usage_metrics_accounts: String::new(),
        }
    }
}

impl AuditorConfig {
    /// The default limits of a tunnel (`None`: no limit).
    pub fn tunnel_limits(&self) -> QuotaLimits {
        limits([
            self.quota_requests_per_minute,
            self.quota_requests_per_day,
            self.quota_bytes_per_day,
            self.quota_bytes_per_month,
        ])
    }

    /// The default limits of an account.
    pub fn account_limits(&self) -> QuotaLimits {
        limits([
            self.account_quota_requests_per_minute,
            self.account_quota_requests_per_day,
            self.account_quota_bytes_per_day,
            self.account_quota_bytes_per_month,
        ])
    }

    /// Length of the "minute" in milliseconds.
    pub fn minute_ms(&self) -> u64 {
        self.usage_minute_secs * 1000
    }
}

/// Limits from four values in [`tunnel_schemas::usage::Quota::ALL`] order, 0 meaning none.
fn limits([per_minute, per_day, bytes_per_day, bytes_per_month]: [u64; 4]) -> QuotaLimits {
    let some = |n: u64| (n > 0).then_some(n);
    QuotaLimits {
        requests_per_minute: some(per_minute),
        requests_per_day: some(per_day),
        bytes_per_day: some(bytes_per_day),
        bytes_per_month: some(bytes_per_month),
    }
}

impl Validate for AuditorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        config::check_socket_addr("listen", &self.listen)?;
        config::check_range("retention_days", self.retention_days, 1..=3650)?;
        config::check_range("replicas", self.replicas, 1..=5)?;
        config::check_range("usage_minute_secs", self.usage_minute_secs, 1..=60)?;
        config::check_range("usage_retention_days", self.usage_retention_days, 1..=3650)?;
        config::check_range("leader_lease_secs", self.leader_lease_secs, 1..=300)?;
        if self.node_id.is_empty() || !self.node_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ConfigError::invalid("node_id", "must be letters, digits and `-`"));
        }
        config::check_log_format(&self.log_format)
    }
}

tunnel_kit::service_config!(AuditorConfig, |config| name: format!("auditor-{}", config.node_id),
    inbox: tunnel_schemas::subjects::inbox_prefix("aud", &config.node_id));
