//! Auditor configuration.

use serde::{Deserialize, Serialize};
use tunnel_kit::config::{self, ConfigError, Validate};

/// Settings of the auditor. Keys are the TOML keys; `TUNNEL_<KEY>` overrides them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditorConfig {
    /// Listen address of the operational routes.
    pub listen: String,
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// Days audit events are kept.
    pub retention_days: u64,
    /// Replicas of the audit stream (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// `text` or `json` logs.
    pub log_format: String,
}

impl Default for AuditorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7090".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            retention_days: 30,
            replicas: 1,
            log_format: "text".into(),
        }
    }
}

impl Validate for AuditorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        config::check_socket_addr("listen", &self.listen)?;
        config::check_range("retention_days", self.retention_days, 1..=3650)?;
        config::check_range("replicas", self.replicas, 1..=5)?;
        config::check_log_format(&self.log_format)
    }
}

tunnel_kit::service_config!(AuditorConfig, |_| name: "auditor".into(), inbox: tunnel_schemas::subjects::inbox_prefix("aud", "1"));
