//! The start and stop script every server's `main` follows: tune the allocator, parse the layered configuration,
//! start tracing and metrics, log the redacted configuration, connect to NATS, bind the listener,
//! arm the signal handler; at the end, drain NATS.

use std::fmt::Debug;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Validate};
use crate::telemetry::{self, PrometheusHandle};

/// A server configuration the start script can use.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default + Validate + Debug + Clone {
    /// NATS server URL(s).
    fn nats_url(&self) -> &str;
    /// How the NATS connection is secured.
    fn nats_tls(&self) -> &crate::nats::NatsTls;
    /// Listen address.
    fn listen(&self) -> &str;
    /// `text` or `json`.
    fn log_format(&self) -> &str;
    /// Connection name shown by the NATS server.
    fn nats_name(&self) -> String;
    /// Inbox prefix of this instance (`_INBOX.<component>.<node>`).
    fn inbox_prefix(&self) -> String;
    /// A copy fit for the log: secrets replaced by `***`.
    fn redacted(&self) -> Self;
}

/// Implements [`ServiceConfig`] for a configuration struct with `nats_url`, `nats_tls` (a
/// flattened [`crate::nats::NatsTls`]), `listen` and `log_format` fields, given the NATS connection name and inbox prefix as expressions of the
/// configuration:
///
/// ```ignore
/// tunnel_kit::service_config!(IngressConfig, |config| name: format!("ingress-{}", config.node_id),
///     inbox: tunnel_schemas::subjects::inbox_prefix("ing", &config.node_id));
/// ```
#[macro_export]
macro_rules! service_config {
    ($type:ty, |$config:pat_param| name: $name:expr, inbox: $inbox:expr $(,)?) => {
        impl $crate::service::ServiceConfig for $type {
            fn nats_url(&self) -> &str {
                &self.nats_url
            }

            fn nats_tls(&self) -> &$crate::nats::NatsTls {
                &self.nats_tls
            }

            fn listen(&self) -> &str {
                &self.listen
            }

            fn log_format(&self) -> &str {
                &self.log_format
            }

            fn nats_name(&self) -> String {
                let $config = self;
                $name
            }

            fn inbox_prefix(&self) -> String {
                let $config = self;
                $inbox
            }

            fn redacted(&self) -> Self {
                Self { nats_url: $crate::config::redact_url(&self.nats_url), ..self.clone() }
            }
        }
    };
}

/// What a started server runs with.
pub struct Started<C> {
    /// The validated configuration.
    pub config: C,
    /// The NATS connection.
    pub nats: async_nats::Client,
    /// The bound listener.
    pub listener: TcpListener,
    /// The Prometheus handle for `/metrics`.
    pub metrics: PrometheusHandle,
    /// Cancelled on SIGINT or SIGTERM.
    pub shutdown: CancellationToken,
}

/// Runs the start script of server `name`: configuration from `file` and `flags`, tracing,
/// metrics, NATS, listener, signals.
///
/// # Errors
/// A configuration, NATS or bind error, with the bad key or address named.
pub async fn start<C: ServiceConfig, F: Serialize>(
    name: &str,
    file: Option<&Path>,
    flags: &F,
) -> anyhow::Result<Started<C>> {
    crate::alloc::tune();
    let config: C = config::load(file, flags)?;
    telemetry::init_tracing(config.log_format());
    tracing::info!(config = ?config.redacted(), "starting {name}");
    let metrics = telemetry::init_metrics();
    let nats =
        crate::nats::connect_with(config.nats_url(), &config.nats_name(), &config.inbox_prefix(), config.nats_tls())
            .await?;
    let listener = TcpListener::bind(config.listen())
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen()))?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let shutdown = crate::shutdown::on_signal();
    Ok(Started { config, nats, listener, metrics, shutdown })
}

/// Drains the NATS connection: buffered publishes go out before the process exits.
///
/// # Errors
/// When the drain cannot be started.
pub async fn stop(nats: async_nats::Client) -> anyhow::Result<()> {
    nats.drain().await?;
    tracing::info!("stopped");
    Ok(())
}
