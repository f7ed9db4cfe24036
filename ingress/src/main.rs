//! `tunnel-ingress`: the public HTTP front of http-tunnel.

use clap::Parser;
use serde::Serialize;
use tunnel_ingress::IngressConfig;
use tunnel_kit::config::CommonArgs;

/// The public HTTP front of http-tunnel: routes requests to tunnels over NATS.
#[derive(Debug, Parser, Serialize)]
#[command(name = "tunnel-ingress", version)]
struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    common: CommonArgs,
    /// Public domain; `<name>.<domain>` reaches tunnel `<name>` (overrides `domain`).
    #[arg(long, value_name = "DOMAIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started =
        tunnel_kit::service::start::<IngressConfig, _>("tunnel-ingress", args.common.config.as_deref(), &args).await?;
    tunnel_ingress::run(started.listener, started.nats.clone(), started.config, started.metrics, started.shutdown)
        .await?;
    tunnel_kit::service::stop(started.nats).await
}
