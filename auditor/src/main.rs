//! `tunnel-auditor`: consumes the audit stream.

use clap::Parser;
use tunnel_auditor::AuditorConfig;
use tunnel_kit::config::CommonArgs;

/// Consumes the http-tunnel audit stream.
#[derive(Debug, Parser)]
#[command(name = "tunnel-auditor", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started =
        tunnel_kit::service::start::<AuditorConfig, _>("tunnel-auditor", args.common.config.as_deref(), &args.common)
            .await?;
    tunnel_auditor::run(started.listener, started.nats.clone(), started.config, started.metrics, started.shutdown)
        .await?;
    tunnel_kit::service::stop(started.nats).await
}
