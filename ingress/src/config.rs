//! Ingress configuration.

use serde::{Deserialize, Serialize};
use tunnel_kit::config::{self, ConfigError, Validate};

/// Settings of one ingress node. Keys are the TOML keys; `TUNNEL_<KEY>` overrides them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IngressConfig {
    /// Public HTTP listen address.
    pub listen: String,
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// TLS to NATS: `nats_ca_file`, and `nats_cert_file` with `nats_key_file` for mutual TLS.
    #[serde(flatten)]
    pub nats_tls: tunnel_kit::nats::NatsTls,
    /// Traces: `otlp_endpoint` (empty: off) and `trace_sample_ratio`.
    #[serde(flatten)]
    pub traces: tunnel_kit::traces::TraceSettings,
    /// Public domain: requests for `<name>.<domain>` go to tunnel `<name>`.
    pub domain: String,
    /// Scheme sent as `X-Forwarded-Proto` (`https` behind a TLS-terminating load balancer).
    pub public_scheme: String,
    /// Seconds the tunnel has to produce the response head before 504 (long polls wait this
    /// long; a response that has started is bounded by the stream idle timeout instead).
    pub request_timeout_secs: u64,
    /// Seconds a streaming exchange may go without body bytes either way before it is cut
    /// (504 before the head, a broken body after it); 0 never cuts a quiet stream (long polls,
    /// silent SSE feeds), which pings keep alive as long as both ends are.
    pub stream_idle_timeout_secs: u64,
    /// Milliseconds a session-host may stay silent on a request before it is presumed frozen or
    /// cut off and the request is answered `host_unresponsive` (504): silent before it
    /// acknowledged the request, or not answering liveness probes while it holds one. A host
    /// that is gone (its NATS connection closed) fails its requests at the next probe instead,
    /// within a second. See ADR 0004.
    pub host_timeout_ms: u64,
    /// Milliseconds a request waits for a tunnel that has no responder but still has a lease
    /// (its client is reconnecting, after its session-host died) before it is answered
    /// `tunnel_offline`; 0 answers at once. A tunnel without a lease is answered at once.
    pub offline_grace_ms: u64,
    /// Largest request body carried, in bytes (413 above); 0 for no limit.
    pub max_body_bytes: u64,
    /// Largest total size of request header names and values, in bytes (431 above).
    pub max_header_bytes: usize,
    /// Longest request target (path and query), in bytes (414 above).
    pub max_uri_bytes: usize,
    /// Seconds a client has for the TLS handshake, its first bytes and each request head before
    /// its connection is closed (slowloris guard).
    pub header_read_timeout_secs: u64,
    /// Connections open at once; beyond it the ingress stops accepting until one closes.
    pub max_connections: usize,
    /// Requests per second one tunnel may receive through this node (0: no limit); more get 429.
    pub rate_limit_per_tunnel: u32,
    /// Burst of requests one tunnel may receive at once (at least the rate).
    pub rate_burst_per_tunnel: u32,
    /// Requests per second one client address may send through this node (0: no limit).
    pub rate_limit_per_ip: u32,
    /// Burst of requests one client address may send at once (at least the rate).
    pub rate_burst_per_ip: u32,
    /// PEM certificate chain to serve HTTPS with (a wildcard for `*.<domain>`); empty for HTTP.
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// With TLS on: an address also listening for plain HTTP, answering every request with a
    /// permanent redirect to HTTPS; empty for none.
    pub redirect_listen: String,
    /// The public HTTPS port redirects point to (443 is left out of the URL).
    pub redirect_https_port: u16,
    /// Networks or addresses of proxies in front of this node (comma-separated); only from them
    /// is `X-Forwarded-For` believed, for policies, rate limits and audit. Empty: the
    /// connection's own address counts.
    pub trusted_proxies: String,
    /// Keep only the network of a public client's address in audit records (IPv4 /24, IPv6
    /// /48), for deployments that must not store full addresses.
    pub audit_truncate_addresses: bool,
    /// Seconds `/readyz` fails after SIGTERM while requests are still served, so that load
    /// balancers take the node out before it stops accepting (0: stop at once).
    pub unready_before_stop_secs: u64,
    /// Publish an audit event per request to the `AUDIT` stream.
    pub audit: bool,
    /// Identifier of this node in NATS inboxes and logs.
    pub node_id: String,
    /// `text` or `json` logs.
    pub log_format: String,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_tls: tunnel_kit::nats::NatsTls::default(),
            traces: tunnel_kit::traces::TraceSettings::default(),
            domain: "localhost".into(),
            public_scheme: "http".into(),
            request_timeout_secs: 900,
            stream_idle_timeout_secs: 0,
            host_timeout_ms: 3000,
            offline_grace_ms: 3000,
            max_body_bytes: 0,
            max_header_bytes: 64 << 10,
            max_uri_bytes: 8 << 10,
            header_read_timeout_secs: tunnel_kit::serve::DEFAULT_HEADER_READ_TIMEOUT.as_secs(),
            max_connections: tunnel_kit::serve::DEFAULT_MAX_CONNECTIONS,
            rate_limit_per_tunnel: 0,
            rate_burst_per_tunnel: 0,
            rate_limit_per_ip: 0,
            rate_burst_per_ip: 0,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            redirect_listen: String::new(),
            redirect_https_port: 443,
            trusted_proxies: String::new(),
            audit_truncate_addresses: false,
            unready_before_stop_secs: 5,
            audit: true,
            node_id: "ing1".into(),
            log_format: "text".into(),
        }
    }
}

impl Validate for IngressConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        config::check_socket_addr("listen", &self.listen)?;
        config::check_range("request_timeout_secs", self.request_timeout_secs, 1..=86_400)?;
        config::check_range("stream_idle_timeout_secs", self.stream_idle_timeout_secs, 0..=86_400)?;
        config::check_range("host_timeout_ms", self.host_timeout_ms, 500..=600_000)?;
        config::check_range("offline_grace_ms", self.offline_grace_ms, 0..=60_000)?;
        config::check_range("unready_before_stop_secs", self.unready_before_stop_secs, 0..=300)?;
        config::check_range("max_header_bytes", self.max_header_bytes, 1024..=(256 << 10))?;
        config::check_range("max_uri_bytes", self.max_uri_bytes, 256..=(64 << 10))?;
        config::check_range("header_read_timeout_secs", self.header_read_timeout_secs, 1..=300)?;
        config::check_range("max_connections", self.max_connections, 1..=10_000_000)?;
        config::check_log_format(&self.log_format)?;
        self.traces.check()?;
        crate::client_addr::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| ConfigError::invalid("trusted_proxies", e))?;
        if !self.redirect_listen.is_empty() {
            config::check_socket_addr("redirect_listen", &self.redirect_listen)?;
            if self.tls_cert_file.is_empty() {
                return Err(ConfigError::invalid(
                    "redirect_listen",
                    "redirects to HTTPS need tls_cert_file and tls_key_file",
                ));
            }
        }
        if self.domain.is_empty() || self.domain.starts_with('.') || self.domain.contains(['/', ':', ' ']) {
            return Err(ConfigError::invalid("domain", "must be a host name such as tunnel.example.com"));
        }
        if !matches!(self.public_scheme.as_str(), "http" | "https") {
            return Err(ConfigError::invalid("public_scheme", "must be \"http\" or \"https\""));
        }
        if self.node_id.is_empty() || !self.node_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ConfigError::invalid("node_id", "must be letters, digits and '-'"));
        }
        Ok(())
    }
}

tunnel_kit::service_config!(IngressConfig, |config|
    name: format!("ingress-{}", config.node_id),
    inbox: tunnel_schemas::subjects::inbox_prefix("ing", &config.node_id),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        IngressConfig::default().validate().expect("defaults validate");
    }

    #[test]
    fn bad_domain_is_named() {
        let config = IngressConfig { domain: "http://x".into(), ..IngressConfig::default() };
        let err = config.validate().expect_err("invalid");
        assert!(err.to_string().contains("`domain`"), "{err}");
    }
}
