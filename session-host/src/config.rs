//! Session-host configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tunnel_kit::config::{self, ConfigError, Validate};

/// Default of [`HostConfig::header_read_timeout_secs`].
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Default of [`HostConfig::connections_per_ip_per_sec`]: a client reconnects far less often;
/// an office of clients behind one address restarting together fits in the burst.
pub const DEFAULT_CONNECTIONS_PER_IP_PER_SEC: u32 = 10;
/// Default of [`HostConfig::connection_burst_per_ip`].
pub const DEFAULT_CONNECTION_BURST_PER_IP: u32 = 100;
/// Default of [`HostConfig::max_pending_handshakes`].
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1024;
/// Default of [`HostConfig::max_pending_handshakes_per_ip`]: a handshake takes milliseconds, so a
/// legitimate address rarely has more than a few pending.
pub const DEFAULT_MAX_PENDING_HANDSHAKES_PER_IP: usize = 32;
/// Default of [`HostConfig::max_connections`]: sessions are connections, and an idle session
/// costs a few KiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Settings of one session-host. Keys are the TOML keys; `TUNNEL_<KEY>` overrides them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostConfig {
    /// Listen address of the WebSocket endpoint and the operational routes.
    pub listen: String,
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// TLS to NATS: `nats_ca_file`, and `nats_cert_file` with `nats_key_file` for mutual TLS.
    #[serde(flatten)]
    pub nats_tls: tunnel_kit::nats::NatsTls,
    /// Traces: `otlp_endpoint` (empty: off) and `trace_sample_ratio`.
    #[serde(flatten)]
    pub traces: tunnel_kit::traces::TraceSettings,
    /// Public URL of a tunnel, `{name}` replaced by its name.
    pub public_url: String,
    /// Seconds a lease outlives its last renewal: how long a crashed host or a vanished client
    /// keeps its name (the window in which the client may resume it).
    pub lease_ttl_secs: u64,
    /// Replicas of the lease bucket when this host creates it (1 on a single server, 3 on a
    /// cluster).
    pub lease_replicas: usize,
    /// Seconds a client has from its TCP accept to the hello: the request head, the upgrade and
    /// the hello itself. A client out of time gets `handshake_timeout` and is closed.
    pub handshake_timeout_secs: u64,
    /// Seconds a client has for the TLS handshake, its first bytes and each request head; also
    /// bounded by `handshake_timeout_secs` (slowloris guard).
    pub header_read_timeout_secs: u64,
    /// New connections one client address may open per second (a token bucket); more get 429
    /// and are closed. 0: no limit.
    pub connections_per_ip_per_sec: u32,
    /// Burst of new connections one client address may open at once (at least the rate).
    pub connection_burst_per_ip: u32,
    /// Connections between their accept and their hello's answer, at most, overall; more get
    /// 503 and are closed.
    pub max_pending_handshakes: usize,
    /// The same per client address; more get 429 and are closed.
    pub max_pending_handshakes_per_ip: usize,
    /// Connections open at once, sessions included; beyond it the host stops accepting until one
    /// closes.
    pub max_connections: usize,
    /// Seconds between WebSocket pings; a client silent for three intervals is dropped.
    pub ping_interval_secs: u64,
    /// Milliseconds a request may wait for its response head before the host acknowledges it to
    /// ingress (a `Ping` on the exchange's stream); 0 acknowledges every request at once, which
    /// costs a NATS message per request (bench workload (k): 0.93x of the throughput of small
    /// requests).
    /// Ingress answers a request nobody acknowledged within its `host_timeout_ms` with
    /// `host_unresponsive`, so this must stay well below that.
    pub ack_after_ms: u64,
    /// Seconds a client with requests in flight may stay silent after a ping before its session
    /// is ended and those requests fail with `tunnel_disconnected` (a frozen or cut-off client).
    pub client_timeout_secs: u64,
    /// Seconds a session keeps serving after the host starts shutting down or another session
    /// takes its tunnel over, so requests in flight finish and the client can move.
    pub drain_grace_secs: u64,
    /// Most unanswered requests per session; more get `unavailable` at once.
    pub max_inflight_per_session: usize,
    /// PEM certificate chain to serve `wss://` with; empty for plain `ws://` (behind a
    /// TLS-terminating load balancer).
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// How clients are admitted: `tokens` (an account token from `tunnel admin` is required),
    /// `jwt` (a JWT checked against [`JwtConfig::jwt_jwks_url`]), `tokens,jwt` (either: a `tt_`
    /// token takes the token path, anything else the JWT path) or `anonymous` (anyone may open
    /// any free name; local development only, logged loudly).
    pub auth: String,
    /// How JWTs are checked when `auth` includes `jwt`.
    #[serde(flatten)]
    pub jwt: JwtConfig,
    /// Tunnels recorded whatever their clients ask, as comma-separated name patterns (`*` for
    /// every tunnel, `shop-*`); empty records only the tunnels whose clients ask (`--record`).
    pub record_tunnels: String,
    /// Largest body kept per direction in a recorded exchange, in bytes; a longer body is cut
    /// and marked as cut.
    pub record_body_bytes: u64,
    /// Headers masked in recordings besides `Authorization`, `Proxy-Authorization`, `Cookie`
    /// and `Set-Cookie` (comma-separated).
    pub record_mask_headers: String,
    /// Default-masked headers the operator keeps in clear (comma-separated).
    pub record_keep_headers: String,
    /// Hours a recorded exchange is kept.
    pub record_max_age_hours: u64,
    /// Bytes the `RECORDINGS` stream holds; beyond it the oldest recordings go.
    pub record_max_bytes: u64,
    /// Bytes of recordings one tunnel keeps; beyond it that tunnel's oldest go.
    pub record_max_bytes_per_tunnel: u64,
    /// Replicas of the `RECORDINGS` stream when this host creates it.
    pub record_replicas: usize,
    /// Memory for recordings being captured or waiting for the stream, in bytes; beyond it
    /// bodies are cut and records dropped (counted).
    pub record_buffer_bytes: u64,
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
            nats_tls: tunnel_kit::nats::NatsTls::default(),
            traces: tunnel_kit::traces::TraceSettings::default(),
            public_url: "http://{name}.localhost:8080".into(),
            lease_ttl_secs: 30,
            lease_replicas: 1,
            handshake_timeout_secs: 10,
            header_read_timeout_secs: DEFAULT_HEADER_READ_TIMEOUT_SECS,
            connections_per_ip_per_sec: DEFAULT_CONNECTIONS_PER_IP_PER_SEC,
            connection_burst_per_ip: DEFAULT_CONNECTION_BURST_PER_IP,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_pending_handshakes_per_ip: DEFAULT_MAX_PENDING_HANDSHAKES_PER_IP,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            ping_interval_secs: 15,
            ack_after_ms: 250,
            client_timeout_secs: 5,
            drain_grace_secs: 10,
            max_inflight_per_session: 4096,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            auth: "tokens".into(),
            jwt: JwtConfig::default(),
            record_tunnels: String::new(),
            record_body_bytes: 1 << 20,
            record_mask_headers: String::new(),
            record_keep_headers: String::new(),
            record_max_age_hours: 24,
            record_max_bytes: 2 << 30,
            record_max_bytes_per_tunnel: 256 << 20,
            record_replicas: 1,
            record_buffer_bytes: 256 << 20,
            node_id: "host1".into(),
            log_format: "text".into(),
        }
    }
}

impl Validate for HostConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        config::check_socket_addr("listen", &self.listen)?;
        self.traces.check()?;
        config::check_range("lease_ttl_secs", self.lease_ttl_secs, 3..=3600)?;
        config::check_range("handshake_timeout_secs", self.handshake_timeout_secs, 1..=300)?;
        config::check_range("header_read_timeout_secs", self.header_read_timeout_secs, 1..=300)?;
        config::check_range("max_pending_handshakes", self.max_pending_handshakes, 1..=1_000_000)?;
        config::check_range("max_pending_handshakes_per_ip", self.max_pending_handshakes_per_ip, 1..=1_000_000)?;
        config::check_range("max_connections", self.max_connections, 1..=10_000_000)?;
        config::check_range("ping_interval_secs", self.ping_interval_secs, 1..=3600)?;
        config::check_range("ack_after_ms", self.ack_after_ms, 0..=2000)?;
        config::check_range("client_timeout_secs", self.client_timeout_secs, 1..=600)?;
        config::check_range("drain_grace_secs", self.drain_grace_secs, 1..=3600)?;
        config::check_range("lease_replicas", self.lease_replicas, 1..=5)?;
        config::check_range("max_inflight_per_session", self.max_inflight_per_session, 1..=1_000_000)?;
        config::check_log_format(&self.log_format)?;
        if self.auth_modes()?.jwt {
            self.jwt.settings()?;
        }
        config::check_range("record_body_bytes", self.record_body_bytes, 0..=(64 << 20))?;
        config::check_range("record_max_age_hours", self.record_max_age_hours, 1..=24 * 3650)?;
        config::check_range("record_max_bytes", self.record_max_bytes, 1 << 20..=u64::MAX)?;
        config::check_range("record_max_bytes_per_tunnel", self.record_max_bytes_per_tunnel, 1 << 20..=u64::MAX)?;
        config::check_range("record_replicas", self.record_replicas, 1..=5)?;
        config::check_range("record_buffer_bytes", self.record_buffer_bytes, 4 << 20..=(64 << 30))?;
        if let Some(bad) = list(&self.record_tunnels)
            .find(|p| !p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-*?".contains(&b)))
        {
            return Err(ConfigError::invalid("record_tunnels", format!("{bad:?} is not a name pattern")));
        }
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
    /// The ways clients are admitted that `auth` names.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an unknown mode, none, or `anonymous` with another.
    pub fn auth_modes(&self) -> Result<AuthModes, ConfigError> {
        let mut modes = AuthModes::default();
        let mut anonymous = false;
        for mode in list(&self.auth) {
            match mode {
                "tokens" => modes.tokens = true,
                "jwt" => modes.jwt = true,
                "anonymous" => anonymous = true,
                other => return Err(ConfigError::invalid("auth", format!("has {other:?}; {AUTH_MODES}"))),
            }
        }
        if anonymous == (modes.tokens || modes.jwt) {
            return Err(ConfigError::invalid("auth", AUTH_MODES));
        }
        Ok(modes)
    }

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

    /// Time a client has for each request head, never more than its whole handshake.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs.min(self.handshake_timeout_secs))
    }

    /// Time a session keeps serving while it drains.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_secs(self.drain_grace_secs)
    }

    /// The recording policy these settings describe.
    pub fn record_policy(&self) -> crate::recording::Policy {
        crate::recording::Policy {
            tunnels: list(&self.record_tunnels).map(str::to_owned).collect(),
            body_bytes: usize::try_from(self.record_body_bytes).unwrap_or(usize::MAX),
            masked: tunnel_schemas::record::DEFAULT_MASKED
                .iter()
                .map(|name| (*name).to_owned())
                .filter(|name| !list(&self.record_keep_headers).any(|keep| keep.eq_ignore_ascii_case(name)))
                .chain(list(&self.record_mask_headers).map(str::to_ascii_lowercase))
                .collect(),
            max_age: Duration::from_secs(self.record_max_age_hours * 3600),
            max_bytes: self.record_max_bytes,
            max_bytes_per_tunnel: self.record_max_bytes_per_tunnel,
            replicas: self.record_replicas,
            buffer_bytes: usize::try_from(self.record_buffer_bytes).unwrap_or(usize::MAX),
        }
    }

    /// Interval between WebSocket pings.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }

    /// Time a request waits for its response head before the host acknowledges it.
    pub fn ack_after(&self) -> Duration {
        Duration::from_millis(self.ack_after_ms)
    }

    /// Silence after a ping that ends a session with requests in flight.
    pub fn client_timeout(&self) -> Duration {
        Duration::from_secs(self.client_timeout_secs)
    }
}

/// What `auth` may be, for error messages.
const AUTH_MODES: &str = "must be \"tokens\", \"jwt\", \"tokens,jwt\" or \"anonymous\"";

/// The ways clients are admitted, from `auth`; none means anonymous.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthModes {
    /// Account tokens from `tunnel admin` are accepted.
    pub tokens: bool,
    /// JWTs signed by a key of the configured JWKS are accepted.
    pub jwt: bool,
}

/// How JWTs are checked (`auth` including `jwt`); see docs/security.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtConfig {
    /// URL of the issuer's JSON Web Key Set: `https://`, or `http://` to a loopback address.
    pub jwt_jwks_url: String,
    /// The one accepted `iss` claim.
    pub jwt_issuer: String,
    /// The accepted `aud` claim (a JWT's `aud` must contain it).
    pub jwt_audience: String,
    /// Accepted signature algorithms, comma-separated: `RS256`, `RS384`, `RS512`, `PS256`,
    /// `PS384`, `PS512`, `ES256`, `ES384`, `EdDSA`. Symmetric (`HS*`) and `none` never are.
    pub jwt_algorithms: String,
    /// Seconds fetched keys are used before the key set is fetched again.
    pub jwt_jwks_ttl_secs: u64,
    /// Least seconds between two fetches of the key set: a JWT naming an unknown key waits
    /// for the next allowed fetch, so junk key ids cannot make the host hammer the JWKS URL.
    pub jwt_jwks_refetch_secs: u64,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub jwt_leeway_secs: u64,
    /// The claim naming the account a JWT acts for (its reservations count for it).
    pub jwt_account_claim: String,
    /// The claim listing the tunnel names a JWT may bind (exact names or `*` patterns).
    pub jwt_names_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            jwt_jwks_url: String::new(),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_algorithms: "RS256,ES256".into(),
            jwt_jwks_ttl_secs: 300,
            jwt_jwks_refetch_secs: 5,
            jwt_leeway_secs: 30,
            jwt_account_claim: "sub".into(),
            jwt_names_claim: "tunnel_names".into(),
        }
    }
}

impl JwtConfig {
    /// The validated settings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first missing or bad `jwt_*` key.
    pub fn settings(&self) -> Result<crate::jwt::JwtSettings, ConfigError> {
        let required = |key: &'static str, value: &str| {
            if value.trim().is_empty() {
                Err(ConfigError::invalid(key, "must be set when auth includes jwt"))
            } else {
                Ok(value.trim().to_owned())
            }
        };
        let jwks_url = crate::jwt::jwks_uri(&required("jwt_jwks_url", &self.jwt_jwks_url)?)
            .map_err(|problem| ConfigError::invalid("jwt_jwks_url", problem))?;
        let issuer = required("jwt_issuer", &self.jwt_issuer)?;
        let audience = required("jwt_audience", &self.jwt_audience)?;
        let algorithms = list(&self.jwt_algorithms)
            .map(crate::jwt::algorithm)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|problem| ConfigError::invalid("jwt_algorithms", problem))?;
        if algorithms.is_empty() {
            return Err(ConfigError::invalid("jwt_algorithms", "must name at least one algorithm"));
        }
        config::check_range("jwt_jwks_ttl_secs", self.jwt_jwks_ttl_secs, 10..=86_400)?;
        config::check_range("jwt_jwks_refetch_secs", self.jwt_jwks_refetch_secs, 1..=300)?;
        config::check_range("jwt_leeway_secs", self.jwt_leeway_secs, 0..=600)?;
        Ok(crate::jwt::JwtSettings {
            jwks_url,
            issuer,
            audience,
            algorithms,
            jwks_ttl: Duration::from_secs(self.jwt_jwks_ttl_secs),
            refetch_interval: Duration::from_secs(self.jwt_jwks_refetch_secs),
            leeway_secs: self.jwt_leeway_secs,
            account_claim: required("jwt_account_claim", &self.jwt_account_claim)?,
            names_claim: required("jwt_names_claim", &self.jwt_names_claim)?,
        })
    }
}

/// The non-empty, trimmed items of a comma-separated setting.
fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|item| !item.is_empty())
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
    fn record_policy_masks_defaults_unless_kept() {
        let config = HostConfig {
            record_tunnels: "shop-*, demo".into(),
            record_mask_headers: "X-Api-Key".into(),
            record_keep_headers: "cookie".into(),
            ..HostConfig::default()
        };
        config.validate().expect("valid");
        let policy = config.record_policy();
        assert_eq!(policy.tunnels, ["shop-*", "demo"]);
        assert!(policy.masked.iter().any(|h| h == "x-api-key"));
        assert!(policy.masked.iter().any(|h| h == "authorization"));
        assert!(!policy.masked.iter().any(|h| h == "cookie"));
        let bad = HostConfig { record_tunnels: "Shop/*".into(), ..HostConfig::default() };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn auth_modes_combine_tokens_and_jwt_but_not_anonymous() {
        let modes = |auth: &str| HostConfig { auth: auth.into(), ..HostConfig::default() }.auth_modes();
        assert_eq!(modes("tokens").expect("valid"), AuthModes { tokens: true, jwt: false });
        assert_eq!(modes("tokens, jwt").expect("valid"), AuthModes { tokens: true, jwt: true });
        assert_eq!(modes("anonymous").expect("valid"), AuthModes::default());
        for bad in ["", "anonymous,jwt", "oauth", "tokens,ldap"] {
            assert!(modes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jwt_needs_its_jwks_url_issuer_and_audience_and_refuses_weak_settings() {
        let good = JwtConfig {
            jwt_jwks_url: "https://id.example.com/.well-known/jwks.json".into(),
            jwt_issuer: "https://id.example.com/".into(),
            jwt_audience: "tunnel".into(),
            ..JwtConfig::default()
        };
        let config = |jwt: JwtConfig| HostConfig { auth: "tokens,jwt".into(), jwt, ..HostConfig::default() };
        config(good.clone()).validate().expect("valid");
        let error = |jwt: JwtConfig| config(jwt).validate().expect_err("invalid").to_string();
        assert!(error(JwtConfig::default()).contains("`jwt_jwks_url` must be set"));
        assert!(error(JwtConfig { jwt_issuer: String::new(), ..good.clone() }).contains("`jwt_issuer`"));
        assert!(error(JwtConfig { jwt_audience: " ".into(), ..good.clone() }).contains("`jwt_audience`"));
        let plain = JwtConfig { jwt_jwks_url: "http://id.example.com/jwks".into(), ..good.clone() };
        assert!(error(plain).contains("https"), "keys are never fetched in clear from another machine");
        let local = JwtConfig { jwt_jwks_url: "http://127.0.0.1:9000/jwks".into(), ..good.clone() };
        config(local).validate().expect("loopback may be plain http");
        for bad in ["HS256", "none", "RS256,XX1", ""] {
            let algorithms = JwtConfig { jwt_algorithms: bad.into(), ..good.clone() };
            assert!(error(algorithms).contains("`jwt_algorithms`"), "{bad:?}");
        }
        let settings = good.settings().expect("valid");
        assert_eq!(settings.algorithms, [jsonwebtoken::Algorithm::RS256, jsonwebtoken::Algorithm::ES256]);
        assert_eq!((settings.account_claim.as_str(), settings.names_claim.as_str()), ("sub", "tunnel_names"));
        // The JWT keys sit at the top level of the file and the environment, like every other.
        let toml = "jwt_jwks_url = \"https://x/jwks\"\njwt_jwks_ttl_secs = 60";
        let loaded: HostConfig =
            figment::Figment::from(figment::providers::Serialized::defaults(HostConfig::default()))
                .merge(<figment::providers::Toml as figment::providers::Format>::string(toml))
                .extract()
                .expect("loads");
        assert_eq!((loaded.jwt.jwt_jwks_url.as_str(), loaded.jwt.jwt_jwks_ttl_secs), ("https://x/jwks", 60));
    }

    #[test]
    fn url_template_needs_name() {
        let config = HostConfig { public_url: "http://x".into(), ..HostConfig::default() };
        assert!(config.validate().expect_err("invalid").to_string().contains("`public_url`"));
    }
}
