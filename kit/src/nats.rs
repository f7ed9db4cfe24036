//! Connecting to NATS, and telling when a connection was lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

/// How often [`Reconnects`] looks at a client's count of connections made.
pub const RECONNECT_POLL: Duration = Duration::from_millis(20);

/// Why NATS could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No server answered, refused the credentials, or failed the TLS handshake (an unknown
    /// CA, a name mismatch, a client certificate the server wants and did not get).
    #[error("cannot connect to NATS at {url}: {source}")]
    Unreachable {
        /// The URL(s), credentials redacted.
        url: String,
        /// What async-nats reported.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The TLS settings are incomplete or name files that cannot be read.
    #[error("cannot connect to NATS at {url}: {problem}")]
    Settings {
        /// The URL(s), credentials redacted.
        url: String,
        /// Which setting is wrong and why.
        problem: String,
    },
}

/// How a component secures its connection to NATS: the CA its servers' certificates are checked
/// against, and the client certificate it presents to servers that verify clients
/// (`tls { verify: true }`). Every service flattens it into its configuration
/// (`nats_ca_file`, ...; `TUNNEL_NATS_CA_FILE` or `NATS_CA_FILE`), and the operator commands
/// take it as flags (`--nats-ca-file`, ...).
///
/// TLS is required when `nats_ca_file` is set or a URL is `tls://`; without a CA file the
/// system's trusted roots check the servers. A `nats://` URL to a server that requires TLS
/// upgrades too, checked the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::Args)]
#[serde(default)]
pub struct NatsTls {
    /// PEM file of the CA that signed the NATS servers' certificates (turns TLS on).
    #[arg(long, value_name = "FILE", env = "NATS_CA_FILE", default_value_t, hide_default_value = true)]
    pub nats_ca_file: String,
    /// PEM client certificate chain, for servers that verify clients (mutual TLS).
    #[arg(long, value_name = "FILE", env = "NATS_CERT_FILE", default_value_t, hide_default_value = true)]
    pub nats_cert_file: String,
    /// PEM private key of `nats_cert_file`.
    #[arg(long, value_name = "FILE", env = "NATS_KEY_FILE", default_value_t, hide_default_value = true)]
    pub nats_key_file: String,
}

impl NatsTls {
    /// Checks that the certificate and key go together and that every file named is readable.
    ///
    /// # Errors
    /// The problem, naming the setting and the file.
    pub fn check(&self) -> Result<(), String> {
        if self.nats_cert_file.is_empty() != self.nats_key_file.is_empty() {
            return Err("nats_cert_file and nats_key_file go together (mutual TLS needs both)".into());
        }
        let files = [
            ("nats_ca_file", &self.nats_ca_file),
            ("nats_cert_file", &self.nats_cert_file),
            ("nats_key_file", &self.nats_key_file),
        ];
        for (key, path) in files.into_iter().filter(|(_, path)| !path.is_empty()) {
            std::fs::File::open(path).map_err(|e| format!("{key} {path}: {e}"))?;
        }
        Ok(())
    }

    /// Whether TLS is required to reach `servers`: a CA file is given or a URL is `tls://`.
    fn required(&self, servers: &[&str]) -> bool {
        !self.nats_ca_file.is_empty() || servers.iter().any(|server| server.starts_with("tls://"))
    }

    /// `options` with these settings applied.
    fn apply(&self, mut options: async_nats::ConnectOptions, servers: &[&str]) -> async_nats::ConnectOptions {
        if !self.nats_ca_file.is_empty() {
            // Replaces the system's roots: only this CA is trusted.
            options = options.add_root_certificates(self.nats_ca_file.clone().into());
        }
        if !self.nats_cert_file.is_empty() {
            options =
                options.add_client_certificate(self.nats_cert_file.clone().into(), self.nats_key_file.clone().into());
        }
        options.require_tls(self.required(servers))
    }
}

/// Connects to `url` (comma-separated list) as `name`, with replies under `inbox_prefix`, and
/// logs connection events; in the clear unless a URL is `tls://` or the server requires TLS
/// (see [`connect_with`]).
///
/// # Errors
/// [`ConnectError`] when no server answers within the connection timeout.
pub async fn connect(url: &str, name: &str, inbox_prefix: &str) -> Result<async_nats::Client, ConnectError> {
    connect_with(url, name, inbox_prefix, &NatsTls::default()).await
}

/// Connects to `url` (comma-separated list) as `name`, with replies under `inbox_prefix`, over
/// TLS as `tls` says, and logs connection events. A `user:password@` in the first URL
/// authenticates (async-nats does not read it from the URL by itself).
///
/// # Errors
/// [`ConnectError::Settings`] when the TLS settings are unusable, [`ConnectError::Unreachable`]
/// when no server answers within the connection timeout, refuses the credentials or fails the
/// TLS handshake.
pub async fn connect_with(
    url: &str,
    name: &str,
    inbox_prefix: &str,
    tls: &NatsTls,
) -> Result<async_nats::Client, ConnectError> {
    let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    tls.check().map_err(|problem| ConnectError::Settings { url: crate::config::redact_url(url), problem })?;
    let mut options = tls.apply(async_nats::ConnectOptions::new(), &servers);
    let first = servers.first().and_then(|server| server.parse::<async_nats::ServerAddr>().ok());
    if let Some((user, password)) = first.as_ref().and_then(|addr| Some((addr.username()?, addr.password()?))) {
        options = options.user_and_password(user.to_owned(), password.to_owned());
    }
    options
        .name(name)
        .custom_inbox_prefix(inbox_prefix)
        .ping_interval(Duration::from_secs(10))
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(|event| async move {
            metrics::counter!("nats_events_total", "event" => event_label(&event)).increment(1);
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::SlowConsumer(_) => metrics::counter!("nats_slow_consumer_total").increment(1),
                async_nats::Event::Draining | async_nats::Event::Closed => tracing::info!(event = %event, "nats event"),
                other => tracing::warn!(event = %other, "nats event"),
            }
        })
        .connect(servers)
        .await
        .map_err(|source| ConnectError::Unreachable { url: crate::config::redact_url(url), source })
}

/// The `event` label of `nats_events_total`: one of a fixed few.
fn event_label(event: &async_nats::Event) -> &'static str {
    match event {
        async_nats::Event::Connected => "connected",
        async_nats::Event::Disconnected => "disconnected",
        async_nats::Event::LameDuckMode => "lame_duck",
        async_nats::Event::Draining => "draining",
        async_nats::Event::Closed => "closed",
        async_nats::Event::SlowConsumer(_) => "slow_consumer",
        async_nats::Event::ServerError(_) => "server_error",
        async_nats::Event::ClientError(_) => "client_error",
    }
}

/// Longest delay between reconnection attempts: a server that comes back is reached within it
/// (async-nats waits up to 4 s by default).
const MOST_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Delay before reconnection attempt `attempts`: none for the first, then 10 ms doubling up to
/// [`MOST_RECONNECT_DELAY`]. async-nats adds no jitter of its own; a few services per node
/// reconnecting in step cost the server little.
fn reconnect_delay(attempts: usize) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX).min(16);
    if attempts <= 1 {
        Duration::ZERO
    } else {
        (Duration::from_millis(10) * (1 << doublings)).min(MOST_RECONNECT_DELAY)
    }
}

/// Tells whether the connection something was sent on is still the client's, to stop waiting
/// for an answer that may have been lost with it.
///
/// A client reconnects on its own within milliseconds when its server goes away, resubscribing
/// everything, so most answers in flight still arrive; but one sent while its recipient had
/// no subscription anywhere (the old server gone, the new one not yet told) is lost, and its
/// waiter would wait until its timeout. The connection state barely shows such a loss; the
/// count of connections made does. One task per watch looks at both every [`RECONNECT_POLL`]
/// (it ends with the last clone).
#[derive(Clone)]
pub struct Reconnects {
    statistics: Arc<async_nats::Statistics>,
    link: watch::Receiver<Link>,
}

/// What the watch last saw of the client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    /// Connections made so far: the number of the current one.
    connects: u64,
    /// Whether the client is connected.
    connected: bool,
}

/// A connection was lost while an answer was awaited on it, and the answer did not come within
/// the grace given.
#[derive(Debug, thiserror::Error)]
#[error("the nats connection was lost while an answer was awaited")]
pub struct ConnectionLost;

impl Reconnects {
    /// Starts watching `client`.
    pub fn watch(client: &async_nats::Client) -> Self {
        let statistics = client.statistics();
        let look = {
            let (client, statistics) = (client.clone(), statistics.clone());
            move || Link {
                connects: statistics.connects.load(Ordering::Relaxed),
                connected: client.connection_state() == async_nats::connection::State::Connected,
            }
        };
        let (tell, link) = watch::channel(look());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RECONNECT_POLL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !tell.is_closed() {
                every.tick().await;
                let now = look();
                tell.send_if_modified(|seen| std::mem::replace(seen, now) != now);
            }
        });
        Self { statistics, link }
    }

    /// Whether the client is connected, or connects within `wait` (a client whose server went
    /// away is usually connected to another one within milliseconds). As of the last look.
    pub async fn connected_within(&self, wait: Duration) -> bool {
        let mut link = self.link.clone();
        let connected = async { link.wait_for(|link| link.connected).await.is_ok() };
        tokio::time::timeout(wait, connected).await.unwrap_or(false)
    }

    /// The number of the current connection, to give [`Reconnects::unless_lost`] for what is sent
    /// now.
    pub fn current(&self) -> u64 {
        self.statistics.connects.load(Ordering::Relaxed)
    }

    /// Awaits `answer`, awaited on connection number `connection`. Once that connection is lost
    /// (disconnected, or replaced by another), the answer has `grace` more to come: one sent
    /// after the new connection's subscriptions reached the cluster still arrives.
    ///
    /// # Errors
    /// [`ConnectionLost`] when the answer did not come within the grace.
    pub async fn unless_lost<F: Future>(
        &self,
        connection: u64,
        grace: Duration,
        answer: F,
    ) -> Result<F::Output, ConnectionLost> {
        let mut answer = std::pin::pin!(answer);
        let mut link = self.link.clone();
        let lost = async { link.wait_for(|link| link.connects > connection || !link.connected).await.is_ok() };
        tokio::select! {
            output = &mut answer => return Ok(output),
            watched = lost => {
                if !watched {
                    // Nobody watches any more: nothing is known to be lost.
                    return Ok(answer.await);
                }
            }
        }
        tokio::time::timeout(grace, answer).await.map_err(|_| ConnectionLost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_required_by_a_ca_file_or_a_tls_url() {
        let none = NatsTls::default();
        assert!(!none.required(&["nats://h:4222"]));
        assert!(none.required(&["nats://h:4222", "tls://h2:4222"]));
        let ca = NatsTls { nats_ca_file: "/ca.pem".into(), ..NatsTls::default() };
        assert!(ca.required(&["nats://h:4222"]));
    }

    #[test]
    fn incomplete_or_unreadable_tls_settings_are_named() {
        let half = NatsTls { nats_cert_file: "/c.pem".into(), ..NatsTls::default() };
        assert!(half.check().expect_err("no key").contains("nats_key_file"));
        let missing = NatsTls { nats_ca_file: "/nonexistent/ca.pem".into(), ..NatsTls::default() };
        let problem = missing.check().expect_err("unreadable");
        assert!(problem.contains("nats_ca_file /nonexistent/ca.pem"), "{problem}");
        assert!(NatsTls::default().check().is_ok());
    }

    #[test]
    fn reconnects_at_once_then_at_most_every_half_second() {
        let delays: Vec<u128> = [1, 2, 3, 6, 7, 100, usize::MAX].map(|a| reconnect_delay(a).as_millis()).to_vec();
        assert_eq!(delays, [0, 20, 40, 320, 500, 500, 500]);
    }

    /// A watch whose links the test sets.
    fn reconnects() -> (Reconnects, watch::Sender<Link>) {
        let (tell, link) = watch::channel(Link { connects: 1, connected: true });
        let statistics = Arc::new(async_nats::Statistics::default());
        statistics.connects.store(1, Ordering::Relaxed);
        (Reconnects { statistics, link }, tell)
    }

    const GRACE: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn an_answer_on_a_kept_connection_is_awaited_as_long_as_it_takes() {
        let (reconnects, _tell) = reconnects();
        let slow = tokio::time::sleep(Duration::from_secs(600));
        assert!(reconnects.unless_lost(reconnects.current(), GRACE, slow).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_lost_with_its_connection_is_given_up_after_the_grace() {
        let (reconnects, tell) = reconnects();
        let connection = reconnects.current();
        let started = tokio::time::Instant::now();
        let waiting = reconnects.unless_lost(connection, GRACE, std::future::pending::<()>());
        let lose = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            tell.send_replace(Link { connects: 2, connected: true });
        };
        let (outcome, ()) = tokio::join!(waiting, lose);
        assert!(outcome.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(3) + GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_within_the_grace_still_counts() {
        let (reconnects, tell) = reconnects();
        tell.send_replace(Link { connects: 1, connected: false });
        let answer = async {
            tokio::time::sleep(GRACE / 2).await;
            "answer"
        };
        assert_eq!(reconnects.unless_lost(1, GRACE, answer).await.ok(), Some("answer"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_a_moment_for_the_client_to_reconnect() {
        let (reconnects, tell) = reconnects();
        assert!(reconnects.connected_within(Duration::ZERO).await, "connected");
        tell.send_replace(Link { connects: 1, connected: false });
        let reconnect = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            tell.send_replace(Link { connects: 2, connected: true });
        };
        let (connected, ()) = tokio::join!(reconnects.connected_within(GRACE), reconnect);
        assert!(connected, "connected again within the wait");
        tell.send_replace(Link { connects: 2, connected: false });
        assert!(!reconnects.connected_within(GRACE).await, "still disconnected after the wait");
    }
}
