//! `tunnel-session-host`: holds tunnel clients' WebSockets and answers their NATS requests.

use clap::Parser;
use serde::Serialize;
use tunnel_kit::config::CommonArgs;
use tunnel_session_host::HostConfig;

/// Holds tunnel clients' WebSockets and relays their tunnels' requests from NATS.
#[derive(Debug, Parser, Serialize)]
#[command(name = "tunnel-session-host", version)]
struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    common: CommonArgs,
    /// Public URL of a tunnel, `{name}` replaced by its name (overrides `public_url`).
    #[arg(long, value_name = "TEMPLATE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    public_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started =
        tunnel_kit::service::start::<HostConfig, _>("tunnel-session-host", args.common.config.as_deref(), &args)
            .await?;
    tunnel_session_host::run(started.listener, started.nats.clone(), started.config, started.metrics, started.shutdown)
        .await?;
    tunnel_kit::service::stop(started.nats).await
}
