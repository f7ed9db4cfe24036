//! `tunnel-ingress`: the public HTTP front of http-tunnel.

use clap::Parser;
use serde::Serialize;
use tunnel_ingress::IngressConfig;
use tunnel_kit::config::CommonArgs;

/// The public HTTP front of http-tunnel: routes requests to tunnels over NATS.
#[derive(Debug, Parser)]
#[command(name = "tunnel-ingress", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Public domain; `<name>.<domain>` reaches tunnel `<name>` (overrides `domain`).
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
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
    domain: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let flags = Flags {
        nats_url: args.common.nats_url,
        listen: args.common.listen,
        log_format: args.common.log_format,
        domain: args.domain,
    };
    let config: IngressConfig = tunnel_kit::config::load(args.common.config.as_deref(), &flags)?;
    tunnel_kit::telemetry::init_tracing(&config.log_format);
    tracing::info!(config = ?redacted(&config), "starting tunnel-ingress");
    let metrics = tunnel_kit::telemetry::init_metrics();
    let inbox = tunnel_schemas::subjects::inbox_prefix("ing", &config.node_id);
    let nats = tunnel_kit::nats::connect(&config.nats_url, &format!("ingress-{}", config.node_id), &inbox).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, domain = %config.domain, "listening");
    let shutdown = tunnel_kit::shutdown::on_signal();
    tunnel_ingress::run(listener, nats.clone(), config, metrics, shutdown).await;
    nats.drain().await?;
    tracing::info!("stopped");
    Ok(())
}

fn redacted(config: &IngressConfig) -> IngressConfig {
    IngressConfig { nats_url: tunnel_kit::config::redact_url(&config.nats_url), ..config.clone() }
}
