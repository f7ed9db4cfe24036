//! Session-host configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tunnel_kit::config::{self, ConfigError, Validate};

/// Settings of one session-host. Keys are the TOML keys; `TUNNEL_<KEY>` overrides them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostConfig {
    /// Listen address of the WebSocket endpoint and the operational routes.
    pub listen: String,
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// Public URL of a tunnel, `{name}` replaced by its name.
    pub public_url: String,
    /// Seconds a lease outlives its last renewal: how long a crashed host or a vanished client
    /// keeps its name (the window in which the client may resume it).
    pub lease_ttl_secs: u64,
    /// Replicas of the lease bucket when this host creates it (1 on a single server, 3 on a
    /// cluster).
    pub lease_replicas: usize,
    /// Seconds a client has to send its hello.
    pub handshake_timeout_secs: u64,
    /// Seconds between WebSocket pings; a client silent for three intervals is dropped.
    pub ping_interval_secs: u64,
    /// Seconds a session keeps serving after the host starts shutting down or another session
    /// takes its tunnel over, so requests in flight finish and the client can move.
    pub drain_grace_secs: u64,
    /// Most unanswered requests per session; more get `unavailable` at once.
    pub max_inflight_per_session: usize,
    /// Identifier of this node in NATS inboxes, leases and logs.
    pub node_id: String,
    /// `text` or `json` logs.
    pub log_format: String,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            public_url: "http://{name}.localhost:8080".into(),
            lease_ttl_secs: 30,
            lease_replicas: 1,
            handshake_timeout_secs: 10,
            ping_interval_secs: 15,
            drain_grace_secs: 10,
            max_inflight_per_session: 4096,
            node_id: "host1".into(),
            log_format: "text".into(),
        }
    }
}

impl Validate for HostConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        config::check_socket_addr("listen", &self.listen)?;
        config::check_range("lease_ttl_secs", self.lease_ttl_secs, 3..=3600)?;
        config::check_range("handshake_timeout_secs", self.handshake_timeout_secs, 1..=300)?;
        config::check_range("ping_interval_secs", self.ping_interval_secs, 1..=3600)?;
        config::check_range("drain_grace_secs", self.drain_grace_secs, 1..=3600)?;
        config::check_range("lease_replicas", self.lease_replicas, 1..=5)?;
        config::check_range("max_inflight_per_session", self.max_inflight_per_session, 1..=1_000_000)?;
        config::check_log_format(&self.log_format)?;
        if !self.public_url.contains("{name}") {
            return Err(ConfigError::invalid(
                "public_url",
                "must contain {name}, e.g. https://{name}.tunnel.example.com",
            ));
        }
        if self.node_id.is_empty() || !self.node_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ConfigError::invalid("node_id", "must be letters, digits and '-'"));
        }
        Ok(())
    }
}

impl HostConfig {
    /// The public URL of tunnel `name`.
    pub fn url_of(&self, name: &str) -> String {
        self.public_url.replace("{name}", name)
    }

    /// How long a lease lives without renewal.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }

    /// How often a session renews its lease: three times per TTL, so one lost renewal is harmless.
    pub fn renew_interval(&self) -> Duration {
        self.lease_ttl() / 3
    }

    /// Time a client has to send its hello.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// Time a session keeps serving while it drains.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_secs(self.drain_grace_secs)
    }

    /// Interval between WebSocket pings.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }
}

tunnel_kit::service_config!(HostConfig, |config|
    name: format!("session-host-{}", config.node_id),
    inbox: tunnel_schemas::subjects::inbox_prefix("host", &config.node_id),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_render_urls() {
        let config = HostConfig::default();
        config.validate().expect("defaults validate");
        assert_eq!(config.url_of("demo"), "http://demo.localhost:8080");
    }

    #[test]
    fn url_template_needs_name() {
        let config = HostConfig { public_url: "http://x".into(), ..HostConfig::default() };
        assert!(config.validate().expect_err("invalid").to_string().contains("`public_url`"));
    }
}
