//! A whole system per test: nats-server, ingress, session-host and auditor on port 0, clients on
//! demand.

use std::net::SocketAddr;
use std::sync::Once;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunnel_client::{ClientError, Event, Options, Target};
use tunnel_ingress::IngressConfig;
use tunnel_schemas::policy::PublicPolicy;
use tunnel_session_host::HostConfig;

use crate::process::ServiceProcess;
use crate::{DEADLINE, NatsServer, within};

/// The public domain of test environments.
pub const DOMAIN: &str = "tunnel.test";

/// Settings that scenarios vary.
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// Ingress: seconds before 504.
    pub request_timeout_secs: u64,
    /// Ingress: seconds without body bytes before a stream is cut (0: never).
    pub stream_idle_timeout_secs: u64,
    /// Ingress: largest request body (0: no limit).
    pub max_body_bytes: u64,
    /// Session-host: seconds a client has to say hello.
    pub handshake_timeout_secs: u64,
    /// Session-host: lease TTL.
    pub lease_ttl_secs: u64,
    /// Extra nats-server configuration.
    pub nats_config: String,
    /// Session-host: name patterns of the tunnels recorded whatever their clients ask.
    pub record_tunnels: String,
    /// Session-host: largest body kept per direction in a recording.
    pub record_body_bytes: u64,
    /// Session-host: bytes of recordings one tunnel keeps.
    pub record_max_bytes_per_tunnel: u64,
    /// Ingress: requests per second per tunnel (0: no limit), bursts of the same size.
    pub rate_limit_per_tunnel: u32,
    /// Ingress: requests per second per client address (0: no limit), bursts of the same size.
    pub rate_limit_per_ip: u32,
    /// Ingress: seconds `/readyz` fails after a stop while requests are still served.
    pub unready_before_stop_secs: u64,
    /// Session-host: requests one session may have in flight before it sheds the excess.
    pub max_inflight_per_session: usize,
    /// Ingress: proxies whose `X-Forwarded-For` is believed (comma-separated networks).
    pub trusted_proxies: String,
    /// Ingress: keep only the network of public client addresses in audit records.
    pub audit_truncate_addresses: bool,
    /// Ingress and session-host: serve HTTPS and `wss://` with this certificate and key (PEM
    /// files), the ingress also redirecting plain HTTP from [`TestEnv::redirect_addr`].
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Session-host: `anonymous`, `tokens` (the token bucket is created first, empty), `jwt`
    /// or `tokens,jwt`.
    pub auth: &'static str,
    /// Ingress and session-host: seconds a client has for each request head (and its first
    /// bytes).
    pub header_read_timeout_secs: u64,
    /// Session-host: new connections per second and burst per client address (0: no limit).
    pub connections_per_ip: (u32, u32),
    /// Session-host: pending handshakes per client address.
    pub max_pending_handshakes_per_ip: usize,
    /// Session-host: how JWTs are checked when `auth` includes `jwt`.
    pub jwt: tunnel_session_host::config::JwtConfig,
    /// Run NATS with the users and subject permissions of `nats/accounts.conf`, each component
    /// connecting as its own user (passwords: [`password_of`]).
    pub permissions: bool,
    /// Run the auditor in the test process; `false` when the scenario runs `tunnel-auditor`
    /// processes itself ([`crate::AuditorProcess`]). The `AUDIT` stream is created either way.
    pub in_process_auditor: bool,
    /// Auditor: length of its "minute", in seconds.
    pub usage_minute_secs: u64,
    /// The NATS servers the components connect to (comma-separated client URLs, e.g.
    /// [`crate::NatsCluster::urls`]) instead of a server of the environment's own; `nats_config`
    /// and `permissions` are then the scenario's business.
    pub nats_urls: Option<String>,
    /// Replicas of the streams and buckets the components create (3 on a three-node cluster).
    pub replicas: usize,
    /// Run the environment's own nats-server with JetStream's encryption at rest on, with this
    /// key (passed in the server's environment, never written in its configuration).
    pub nats_encryption_key: Option<String>,
    /// How every component (and `tunnel admin`) secures its connection to NATS: the CA file,
    /// and a client certificate for servers that verify clients. The server's own `tls {}`
    /// block goes into `nats_config`.
    pub nats_tls: tunnel_kit::nats::NatsTls,
    /// Ingress and session-hosts export their spans to this OTLP/HTTP endpoint (empty: off).
    pub otlp_endpoint: String,
}

/// The password of `user` in an environment with [`EnvOptions::permissions`].
pub fn password_of(user: &str) -> String {
    format!("test-{user}")
}

/// The NATS configuration of `nats/accounts.conf`, its passwords defined as variables.
fn accounts_config() -> String {
    let users = [
        ("ADMIN", "admin"),
        ("INGRESS", "ingress"),
        ("SESSION_HOST", "session-host"),
        ("AUDITOR", "auditor"),
        ("SYS", "sys"),
    ];
    let variables: String =
        users.iter().map(|(var, user)| format!("NATS_{var}_PASSWORD: \"{}\"\n", password_of(user))).collect();
    format!("{variables}{}", include_str!("../../nats/accounts.conf"))
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            request_timeout_secs: 10,
            stream_idle_timeout_secs: 0,
            max_body_bytes: 0,
            handshake_timeout_secs: 5,
            lease_ttl_secs: 30,
            nats_config: String::new(),
            record_tunnels: String::new(),
            record_body_bytes: HostConfig::default().record_body_bytes,
            record_max_bytes_per_tunnel: HostConfig::default().record_max_bytes_per_tunnel,
            permissions: false,
            rate_limit_per_tunnel: 0,
            rate_limit_per_ip: 0,
            trusted_proxies: String::new(),
            audit_truncate_addresses: false,
            max_inflight_per_session: HostConfig::default().max_inflight_per_session,
            unready_before_stop_secs: 0,
            tls: None,
            auth: "anonymous",
            header_read_timeout_secs: HostConfig::default().header_read_timeout_secs,
            connections_per_ip: (
                HostConfig::default().connections_per_ip_per_sec,
                HostConfig::default().connection_burst_per_ip,
            ),
            max_pending_handshakes_per_ip: HostConfig::default().max_pending_handshakes_per_ip,
            jwt: tunnel_session_host::config::JwtConfig::default(),
            in_process_auditor: true,
            usage_minute_secs: 60,
            nats_urls: None,
            replicas: 1,
            nats_encryption_key: None,
            nats_tls: tunnel_kit::nats::NatsTls::default(),
            otlp_endpoint: String::new(),
        }
    }
}

/// The NATS a [`TestEnv`] runs on: a server of its own, or servers the scenario runs
/// ([`EnvOptions::nats_urls`]).
pub struct EnvNats {
    url: String,
    server: Option<NatsServer>,
}

impl EnvNats {
    /// The client URL (`nats://127.0.0.1:<port>`), or the comma-separated URLs of
    /// [`EnvOptions::nats_urls`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The environment's own server, to kill and restart.
    ///
    /// # Panics
    /// On an environment started on [`EnvOptions::nats_urls`].
    pub fn server(&mut self) -> &mut NatsServer {
        self.server.as_mut().expect("an environment with its own nats-server")
    }
}

/// A running system; everything stops when it is dropped.
pub struct TestEnv {
    /// The NATS server(s).
    pub nats: EnvNats,
    options: EnvOptions,
    ingress: SocketAddr,
    /// Session-hosts by address, each with its own shutdown token.
    hosts: Vec<(SocketAddr, CancellationToken)>,
    /// Ingresses started by [`TestEnv::add_ingress`], each with its own shutdown token.
    ingresses: Vec<(SocketAddr, CancellationToken)>,
    metrics: tunnel_kit::telemetry::PrometheusHandle,
    shutdown: CancellationToken,
    services: Vec<JoinHandle<()>>,
    http: reqwest::Client,
    /// The token clients of [`TestEnv::recorded_tunnel`] present.
    client_token: Option<String>,
    /// Where the ingress redirects plain HTTP to HTTPS (with [`EnvOptions::tls`]).
    redirect: SocketAddr,
}

impl TestEnv {
    /// Starts a system with the default options.
    pub async fn start() -> Self {
        Self::start_with(EnvOptions::default()).await
    }

    /// Starts nats-server, ingress and one session-host.
    ///
    /// # Panics
    /// When any part fails to start.
    pub async fn start_with(options: EnvOptions) -> Self {
        init_tracing();
        let config = if options.permissions {
            format!("{}\n{}", accounts_config(), options.nats_config)
        } else {
            options.nats_config.clone()
        };
        let nats = match &options.nats_urls {
            Some(urls) => EnvNats { url: urls.clone(), server: None },
            None => {
                let server = NatsServer::start_encrypted(&config, options.nats_encryption_key.as_deref());
                EnvNats { url: server.url().to_owned(), server: Some(server) }
            }
        };
        let shutdown = CancellationToken::new();
        let mut services = Vec::new();

        let ingress_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ingress");
        let ingress = ingress_listener.local_addr().expect("ingress address");
        let redirect = free_addr().await;
        let ingress_config = IngressConfig {
            tls_cert_file: tls_setting(&options, |(cert, _)| cert),
            tls_key_file: tls_setting(&options, |(_, key)| key),
            redirect_listen: if options.tls.is_some() { redirect.to_string() } else { String::new() },
            redirect_https_port: ingress.port(),
            ..ingress_config(&options, nats.url())
        };
        let as_user = |user: &str| nats_url_as(nats.url(), options.permissions.then_some(user));
        let ingress_nats = connect(&as_user("ingress"), "ing", &options.nats_tls).await;
        let metrics = tunnel_kit::telemetry::init_metrics();
        let (metrics_for_ingress, shutdown_for_ingress) = (metrics.clone(), shutdown.clone());
        services.push(tokio::spawn(async move {
            tunnel_ingress::run(
                ingress_listener,
                ingress_nats,
                ingress_config,
                metrics_for_ingress,
                shutdown_for_ingress,
            )
            .await
            .expect("ingress runs");
        }));

        let auditor_config = tunnel_auditor::AuditorConfig {
            nats_url: nats.url().to_owned(),
            nats_tls: options.nats_tls.clone(),
            usage_minute_secs: options.usage_minute_secs,
            replicas: options.replicas,
            ..Default::default()
        };
        let auditor_nats = connect(&as_user("auditor"), "aud", &options.nats_tls).await;
        // The stream exists before the first request, so no audit event finds it missing.
        tunnel_auditor::stream::ensure_stream(&async_nats::jetstream::new(auditor_nats.clone()), &auditor_config)
            .await
            .expect("audit stream");
        if options.in_process_auditor {
            let auditor_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind auditor");
            let (metrics_for_auditor, shutdown_for_auditor) = (metrics.clone(), shutdown.clone());
            services.push(tokio::spawn(async move {
                tunnel_auditor::run(
                    auditor_listener,
                    auditor_nats,
                    auditor_config,
                    metrics_for_auditor,
                    shutdown_for_auditor,
                )
                .await
                .expect("auditor runs");
            }));
        }

        if options.auth.contains("tokens") {
            let admin = connect(&as_user("admin"), "admin", &options.nats_tls).await;
            let js = async_nats::jetstream::new(admin);
            let bucket = async_nats::jetstream::kv::Config {
                bucket: tunnel_schemas::tokens::TOKENS_BUCKET.into(),
                history: 1,
                num_replicas: options.replicas,
                ..Default::default()
            };
            js.create_key_value(bucket).await.expect("token bucket");
        }
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("http client");
        let hosts = Vec::new();
        let mut env = Self {
            nats,
            options,
            ingress,
            hosts,
            ingresses: Vec::new(),
            metrics,
            shutdown,
            services,
            http,
            client_token: None,
            redirect,
        };
        env.add_host().await;
        env.ingress_ready().await;
        env
    }

    /// Waits until the ingress says it is ready (it has read the tunnels' policies; before that
    /// it answers 503). Over TLS the ingress is not probed here.
    async fn ingress_ready(&self) {
        if self.options.tls.is_some() {
            return;
        }
        self.wait_ready(self.ingress, "the ingress to be ready").await;
    }

    /// Polls `/readyz` at `addr` until it succeeds, at most [`DEADLINE`].
    async fn wait_ready(&self, addr: SocketAddr, what: &str) {
        let ready = format!("http://{addr}/readyz");
        within(DEADLINE, what, async {
            while !self.http.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Starts one more session-host on the same NATS and returns its address.
    ///
    /// # Panics
    /// When it cannot bind.
    pub async fn add_host(&mut self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind session-host");
        let addr = listener.local_addr().expect("host address");
        let config = HostConfig {
            nats_url: self.nats.url().to_owned(),
            nats_tls: self.options.nats_tls.clone(),
            public_url: format!("http://{{name}}.{DOMAIN}:{}", self.ingress.port()),
            handshake_timeout_secs: self.options.handshake_timeout_secs,
            lease_ttl_secs: self.options.lease_ttl_secs,
            node_id: format!("host{}", self.hosts.len() + 1),
            auth: self.options.auth.into(),
            jwt: self.options.jwt.clone(),
            tls_cert_file: tls_setting(&self.options, |(cert, _)| cert),
            tls_key_file: tls_setting(&self.options, |(_, key)| key),
            record_tunnels: self.options.record_tunnels.clone(),
            record_body_bytes: self.options.record_body_bytes,
            record_max_bytes_per_tunnel: self.options.record_max_bytes_per_tunnel,
            header_read_timeout_secs: self.options.header_read_timeout_secs,
            connections_per_ip_per_sec: self.options.connections_per_ip.0,
            connection_burst_per_ip: self.options.connections_per_ip.1,
            max_pending_handshakes_per_ip: self.options.max_pending_handshakes_per_ip,
            max_inflight_per_session: self.options.max_inflight_per_session,
            lease_replicas: self.options.replicas,
            record_replicas: self.options.replicas,
            traces: trace_settings(&self.options),
            ..HostConfig::default()
        };
        let nats = self.nats_as("session-host", "host").await;
        let shutdown = self.shutdown.child_token();
        let (metrics, stop) = (self.metrics.clone(), shutdown.clone());
        self.services.push(tokio::spawn(async move {
            tunnel_session_host::run(listener, nats, config, metrics, stop).await.expect("session-host runs");
        }));
        self.hosts.push((addr, shutdown));
        addr
    }

    /// Starts a session-host as a real `tunnel-session-host` process (to kill or freeze it), with
    /// this environment's settings and extra `settings` (keys as in its configuration), and
    /// waits until it is ready.
    ///
    /// # Panics
    /// When it does not become ready within [`DEADLINE`].
    pub async fn start_host_process(&mut self, settings: &[(&str, &str)]) -> HostProcess {
        let addr = free_addr().await;
        let (nats_url, listen) = (self.nats_url_as("session-host"), addr.to_string());
        let public_url = format!("http://{{name}}.{DOMAIN}:{}", self.ingress.port());
        let node_id = format!("host-process-{}", addr.port());
        let numbers = [self.options.lease_ttl_secs, self.options.handshake_timeout_secs].map(|n| n.to_string());
        let tls = &self.options.nats_tls;
        let tls_files = [
            ("nats_ca_file", tls.nats_ca_file.as_str()),
            ("nats_cert_file", tls.nats_cert_file.as_str()),
            ("nats_key_file", tls.nats_key_file.as_str()),
        ];
        let mut all: Vec<(&str, &str)> = tls_files.into_iter().filter(|(_, file)| !file.is_empty()).collect();
        all.extend_from_slice(&[
            ("node_id", node_id.as_str()),
            ("auth", self.options.auth),
            ("lease_ttl_secs", numbers[0].as_str()),
            ("handshake_timeout_secs", numbers[1].as_str()),
        ]);
        all.extend_from_slice(settings);
        let args = ["--nats", &nats_url, "--listen", &listen, "--public-url", &public_url];
        let process = ServiceProcess::start("tunnel-session-host", &args, &all);
        self.wait_ready(addr, "the session-host process to be ready").await;
        HostProcess { process, addr }
    }

    /// Starts one more ingress (plain HTTP) on the same NATS, waits until it is ready and
    /// returns its address.
    ///
    /// # Panics
    /// When it cannot bind.
    pub async fn add_ingress(&mut self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ingress");
        let addr = listener.local_addr().expect("ingress address");
        let config =
            IngressConfig { node_id: format!("ing-{}", addr.port()), ..ingress_config(&self.options, self.nats.url()) };
        let nats = self.nats_as("ingress", "ing").await;
        let shutdown = self.shutdown.child_token();
        let (metrics, stop) = (self.metrics.clone(), shutdown.clone());
        self.services.push(tokio::spawn(async move {
            tunnel_ingress::run(listener, nats, config, metrics, stop).await.expect("ingress runs");
        }));
        self.ingresses.push((addr, shutdown));
        self.wait_ready(addr, "the added ingress to be ready").await;
        addr
    }

    /// Shuts down the ingress at `addr`, one of [`TestEnv::add_ingress`]'s (as SIGTERM would).
    ///
    /// # Panics
    /// When there is no such ingress.
    pub fn stop_ingress(&self, addr: SocketAddr) {
        let (_, shutdown) = self.ingresses.iter().find(|(a, _)| *a == addr).expect("an added ingress");
        shutdown.cancel();
    }

    /// `GET path` on tunnel `name` through the ingress at `ingress`.
    ///
    /// # Panics
    /// When the request fails at the HTTP level.
    pub async fn get_via(&self, ingress: SocketAddr, name: &str, path: &str) -> reqwest::Response {
        let request =
            self.http.get(format!("http://{ingress}{path}")).header(reqwest::header::HOST, self.public_host(name));
        within(DEADLINE, "a response", request.send()).await.expect("response")
    }

    /// Shuts down the session-host at `addr` (as SIGTERM would).
    ///
    /// # Panics
    /// When there is no such host.
    pub fn stop_host(&self, addr: SocketAddr) {
        let (_, shutdown) = self.hosts.iter().find(|(a, _)| *a == addr).expect("a host of this environment");
        shutdown.cancel();
    }

    /// The NATS URL with the credentials of `user` when the environment runs with permissions
    /// (`admin` for provisioning and inspection), the plain URL otherwise.
    pub fn nats_url_as(&self, user: &str) -> String {
        nats_url_as(self.nats.url(), self.options.permissions.then_some(user))
    }

    /// A connection to the environment's NATS as `user` (with [`EnvOptions::permissions`]) over
    /// the environment's TLS settings, replies under `_INBOX.<component>.<random>`.
    ///
    /// # Panics
    /// When it cannot connect.
    pub async fn nats_as(&self, user: &str, component: &str) -> async_nats::Client {
        connect(&self.nats_url_as(user), component, &self.options.nats_tls).await
    }

    /// The `--nats-ca-file`, `--nats-cert-file`, `--nats-key-file` flags of the environment's TLS
    /// settings, for the operator commands (`tunnel admin`, `usage`, `trail --nats`).
    pub fn nats_tls_flags(&self) -> Vec<String> {
        let tls = &self.options.nats_tls;
        [
            ("--nats-ca-file", &tls.nats_ca_file),
            ("--nats-cert-file", &tls.nats_cert_file),
            ("--nats-key-file", &tls.nats_key_file),
        ]
        .into_iter()
        .filter(|(_, file)| !file.is_empty())
        .flat_map(|(flag, file)| [flag.to_owned(), file.clone()])
        .collect()
    }

    /// Runs `tunnel admin --nats <admin URL> <args>` to its end, as the operator (over the
    /// environment's TLS settings); its last JSON line.
    ///
    /// # Panics
    /// When it fails or prints no JSON.
    pub async fn admin(&self, args: &[&str]) -> serde_json::Value {
        let nats = self.nats_url_as("admin");
        let tls = self.nats_tls_flags();
        let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
        let args = [&["admin", "--nats", nats.as_str()][..], &tls, args].concat();
        let (code, stdout, stderr) = crate::run_tunnel(std::path::Path::new("/nonexistent"), &args).await;
        assert_eq!(code, Some(0), "tunnel {args:?}: {stdout}{stderr}");
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    /// Waits until the unlabelled counter `name` of this process's metrics reaches `at_least`.
    /// A counter has no event to wait on, so this polls, with [`DEADLINE`].
    ///
    /// # Panics
    /// When it does not within the deadline.
    pub async fn counter_reaches(&self, name: &str, at_least: f64) {
        let deadline = std::time::Instant::now() + DEADLINE;
        while self.counter(name) < at_least {
            let value = self.counter(name);
            assert!(std::time::Instant::now() < deadline, "{name} is {value} after {DEADLINE:?}, not {at_least}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// This process's metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// The unlabelled counter `name` of this process's metrics (shared by the environments of
    /// one test binary), 0 when it was never incremented.
    pub fn counter(&self, name: &str) -> f64 {
        counter_in(&self.metrics.render(), name)
    }

    /// The address where the ingress redirects plain HTTP to HTTPS (with [`EnvOptions::tls`]).
    pub fn redirect_addr(&self) -> SocketAddr {
        self.redirect
    }

    /// The ingress address.
    pub fn ingress_addr(&self) -> SocketAddr {
        self.ingress
    }

    /// The first session-host's address.
    pub fn host_addr(&self) -> SocketAddr {
        self.hosts[0].0
    }

    /// The first session-host's WebSocket URL.
    pub fn server_url(&self) -> String {
        format!("ws://{}", self.host_addr())
    }

    /// The public host name of tunnel `name`.
    pub fn public_host(&self, name: &str) -> String {
        format!("{name}.{DOMAIN}:{}", self.ingress.port())
    }

    /// A request to `path` of tunnel `name`, routed by Host.
    pub fn request(&self, method: reqwest::Method, name: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://{}{path}", self.ingress))
            .header(reqwest::header::HOST, self.public_host(name))
    }

    /// `GET path` on tunnel `name`.
    ///
    /// # Panics
    /// When the request fails at the HTTP level.
    pub async fn get(&self, name: &str, path: &str) -> reqwest::Response {
        within(DEADLINE, "a response", self.request(reqwest::Method::GET, name, path).send()).await.expect("response")
    }

    /// Opens a tunnel to the local `port`, through the session-host, and waits until it is ready.
    pub async fn tunnel(&self, port: u16, name: Option<&str>) -> Tunnel {
        Tunnel::open(&self.server_url(), port, name).await
    }

    /// What a client of this system needs to serve the local `port` as `name`, with the token of
    /// [`TestEnv::use_token`]; change fields before [`Tunnel::spawn_with`].
    pub fn client_options(&self, port: u16, name: &str) -> Options {
        Options {
            server: self.server_url(),
            target: Target::port(port),
            name: Some(name.to_owned()),
            record: false,
            state_dir: None,
            token: self.client_token.clone(),
            policy: PublicPolicy::default(),
            shared: false,
            host_header: tunnel_client::forward::HostHeader::Preserve,
            stats: None,
            inspector: None,
            traces: Default::default(),
        }
    }

    /// Opens a tunnel that asks to be recorded and saves its name, URL and secret in
    /// `state_dir` (as `tunnel http --record` does), and waits until it is ready.
    pub async fn recorded_tunnel(&self, port: u16, name: &str, state_dir: &std::path::Path) -> Tunnel {
        let options =
            Options { record: true, state_dir: Some(state_dir.to_owned()), ..self.client_options(port, name) };
        Tunnel::ready(Tunnel::spawn_with(options)).await
    }

    /// Makes [`TestEnv::recorded_tunnel`]'s clients present `token`.
    pub fn use_token(&mut self, token: &str) {
        self.client_token = Some(token.to_owned());
    }

    /// Starts a client of the local `port` presenting `token` (a token or a JWT), asking for
    /// `name` (a random one when `None`), without waiting for it to be ready.
    pub fn client_with_token(&self, port: u16, name: Option<&str>, token: Option<&str>) -> Tunnel {
        let options = self.client_options(port, name.unwrap_or_default());
        Tunnel::spawn_with(Options { name: name.map(str::to_owned), token: token.map(str::to_owned), ..options })
    }

    /// Starts a tunnel client without waiting for it to be ready.
    pub fn spawn_client(&self, server: &str, port: u16, name: Option<&str>) -> Tunnel {
        Tunnel::spawn(server, port, name)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for service in &self.services {
            service.abort();
        }
    }
}

/// A running `tunnel` client (the library, in this process).
pub struct Tunnel {
    /// The granted name (empty until ready).
    pub name: String,
    /// The public URL (empty until ready).
    pub url: String,
    events: mpsc::Receiver<Event>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ClientError>>,
}

impl Tunnel {
    /// Starts a client and waits for its ready event.
    ///
    /// # Panics
    /// When the client fails or is not ready within [`DEADLINE`].
    pub async fn open(server: &str, port: u16, name: Option<&str>) -> Self {
        Self::ready(Self::spawn(server, port, name)).await
    }

    /// Waits for the ready event of a started client.
    ///
    /// # Panics
    /// When the client fails or is not ready within [`DEADLINE`].
    pub async fn ready_with(tunnel: Self) -> Self {
        Self::ready(tunnel).await
    }

    async fn ready(mut tunnel: Self) -> Self {
        match tunnel.next_event().await {
            Some(Event::Ready { name, url, .. }) => {
                tunnel.name = name;
                tunnel.url = url;
                tunnel
            }
            other => panic!("expected ready, got {other:?}; client ended with {:?}", tunnel.finish().await),
        }
    }

    /// Starts a client without waiting.
    pub fn spawn(server: &str, port: u16, name: Option<&str>) -> Self {
        let options = Options {
            server: server.to_owned(),
            target: Target::port(port),
            name: name.map(str::to_owned),
            record: false,
            state_dir: None,
            token: None,
            policy: PublicPolicy::default(),
            shared: false,
            host_header: tunnel_client::forward::HostHeader::Preserve,
            stats: None,
            inspector: None,
            traces: Default::default(),
        };
        Self::spawn_with(options)
    }

    /// Starts a client with `options` without waiting.
    pub fn spawn_with(options: Options) -> Self {
        let (events_tx, events) = mpsc::channel(1024);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tunnel_client::run(options, events_tx, shutdown.clone()));
        Self { name: String::new(), url: String::new(), events, shutdown, task }
    }

    /// The next lifecycle event (request events are skipped); `None` once the client ended.
    ///
    /// # Panics
    /// When nothing happens within [`DEADLINE`].
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            match within(DEADLINE, "a client event", self.events.recv()).await {
                Some(Event::Request { .. }) => {}
                other => return other,
            }
        }
    }

    /// Waits for the client to end and returns its result.
    ///
    /// # Panics
    /// When it does not end within [`DEADLINE`].
    pub async fn finish(self) -> Result<(), ClientError> {
        within(DEADLINE, "the client to end", self.task).await.expect("client task not panicked")
    }

    /// Waits for the client to end with a final refusal and returns it.
    ///
    /// # Panics
    /// When it ends otherwise, or not within [`DEADLINE`].
    pub async fn refusal(self) -> tunnel_schemas::events::Failure {
        match self.finish().await {
            Err(ClientError::Refused(failure)) => failure,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Stops the client cleanly (it says goodbye, releasing its name).
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.finish().await;
    }

    /// Kills the client: its connection drops without a goodbye.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// One of the TLS file settings of `options`, empty without TLS.
fn tls_setting(
    options: &EnvOptions,
    pick: fn(&(std::path::PathBuf, std::path::PathBuf)) -> &std::path::PathBuf,
) -> String {
    options.tls.as_ref().map(|files| pick(files).display().to_string()).unwrap_or_default()
}

/// A free local address (bound, then released) for a listener the service binds itself.
/// The settings every ingress of an environment shares.
fn ingress_config(options: &EnvOptions, nats_url: &str) -> IngressConfig {
    IngressConfig {
        nats_url: nats_url.to_owned(),
        nats_tls: options.nats_tls.clone(),
        domain: DOMAIN.into(),
        request_timeout_secs: options.request_timeout_secs,
        max_body_bytes: options.max_body_bytes,
        stream_idle_timeout_secs: options.stream_idle_timeout_secs,
        rate_limit_per_tunnel: options.rate_limit_per_tunnel,
        rate_burst_per_tunnel: options.rate_limit_per_tunnel,
        rate_limit_per_ip: options.rate_limit_per_ip,
        rate_burst_per_ip: options.rate_limit_per_ip,
        trusted_proxies: options.trusted_proxies.clone(),
        audit_truncate_addresses: options.audit_truncate_addresses,
        header_read_timeout_secs: options.header_read_timeout_secs,
        unready_before_stop_secs: options.unready_before_stop_secs,
        traces: trace_settings(options),
        ..IngressConfig::default()
    }
}

fn trace_settings(options: &EnvOptions) -> tunnel_kit::traces::TraceSettings {
    tunnel_kit::traces::TraceSettings {
        otlp_endpoint: options.otlp_endpoint.clone(),
        ..tunnel_kit::traces::TraceSettings::default()
    }
}

async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}

/// `url` (`nats://` or `tls://`) with the credentials of `user`, when there is one.
fn nats_url_as(url: &str, user: Option<&str>) -> String {
    match user {
        Some(user) => url.replacen("://", &format!("://{user}:{}@", password_of(user)), 1),
        None => url.to_owned(),
    }
}

async fn connect(url: &str, component: &str, tls: &tunnel_kit::nats::NatsTls) -> async_nats::Client {
    let inbox = tunnel_schemas::subjects::inbox_prefix(component, &uuid::Uuid::new_v4().simple().to_string());
    tunnel_kit::nats::connect_with(url, component, &inbox, tls).await.unwrap_or_else(|e| panic!("nats connects: {e}"))
}

fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber_init();
    });
}

/// Logs of the services in the test's own output (shown when it fails): warnings and errors,
/// or what `RUST_LOG` asks for.
fn tracing_subscriber_init() -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_test_writer().with_env_filter(filter).try_init().map_err(|e| e.to_string())
}

/// A session-host running as its own process ([`TestEnv::start_host_process`]).
pub struct HostProcess {
    /// The process, to kill or freeze.
    pub process: ServiceProcess,
    /// Where clients connect.
    pub addr: SocketAddr,
}

impl HostProcess {
    /// Waits until the unlabelled counter `name` of the process's `/metrics` is at least
    /// `at_least`, polling (a counter has no event to wait on), with [`DEADLINE`].
    ///
    /// # Panics
    /// When it does not within the deadline.
    pub async fn counter_reaches(&self, name: &str, at_least: f64) {
        let url = format!("http://{}/metrics", self.addr);
        within(DEADLINE, &format!("{name} to reach {at_least}"), async {
            loop {
                let text = match reqwest::get(&url).await {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                if counter_in(&text, name) >= at_least {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await;
    }
}

/// The unlabelled counter `name` in Prometheus text, 0 when absent.
fn counter_in(text: &str, name: &str) -> f64 {
    let prefix = format!("{name} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)?.parse::<f64>().ok()).unwrap_or(0.0)
}
