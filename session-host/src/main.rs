//! `tunnel-session-host`: holds tunnel clients' WebSockets and answers their NATS requests.

use clap::Parser;
use serde::Serialize;
use tunnel_kit::config::CommonArgs;
use tunnel_session_host::HostConfig;

/// Holds tunnel clients' WebSockets and relays their tunnels' requests from NATS.
#[derive(Debug, Parser)]
#[command(name = "tunnel-session-host", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Public URL of a tunnel, `{name}` replaced by its name (overrides `public_url`).
    #[arg(long, value_name = "TEMPLATE")]
    public_url: Option<String>,
}

/// The flags as a configuration layer; unset flags leave lower layers alone.
#[derive(Serialize)]
struct Flags {
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let flags = Flags {
        nats_url: args.common.nats_url,
        listen: args.common.listen,
        log_format: args.common.log_format,
        public_url: args.public_url,
    };
    let config: HostConfig = tunnel_kit::config::load(args.common.config.as_deref(), &flags)?;
    tunnel_kit::telemetry::init_tracing(&config.log_format);
    let redacted = HostConfig { nats_url: tunnel_kit::config::redact_url(&config.nats_url), ..config.clone() };
    tracing::info!(config = ?redacted, "starting tunnel-session-host");
    let metrics = tunnel_kit::telemetry::init_metrics();
    let inbox = tunnel_schemas::subjects::inbox_prefix("host", &config.node_id);
    let nats = tunnel_kit::nats::connect(&config.nats_url, &format!("session-host-{}", config.node_id), &inbox).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let shutdown = tunnel_kit::shutdown::on_signal();
    tunnel_session_host::run(listener, nats.clone(), config, metrics, shutdown).await?;
    nats.drain().await?;
    tracing::info!("stopped");
    Ok(())
}
