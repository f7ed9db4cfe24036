//! `tunnel http`'s inspector flags, and starting the inspector from them.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::inspector::{DEFAULT_BODY_CAP, DEFAULT_CAPACITY, Inspector, InspectorConfig, MAX_CAPACITY};

/// The inspector's flags.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Where the local inspector (a page and a JSON API) listens; when the port is taken the
    /// next ones are tried.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4040", env = "TUNNEL_INSPECT_ADDR")]
    pub inspect_addr: SocketAddr,
    /// Do not run the inspector.
    #[arg(long)]
    pub no_inspect: bool,
    /// Exchanges the inspector keeps in memory (oldest dropped first).
    #[arg(long, value_name = "COUNT", default_value_t = DEFAULT_CAPACITY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_CAPACITY as u64))]
    pub inspect_capacity: usize,
    /// Body bytes the inspector keeps per direction of an exchange; longer ones are marked cut.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BODY_CAP)]
    pub inspect_body_cap: usize,
}

impl InspectArgs {
    /// Starts the inspector as the flags say, or not: a port that cannot be bound is reported on
    /// stderr and the tunnel runs without it.
    pub async fn start(&self, shutdown: &CancellationToken) -> Option<Inspector> {
        if self.no_inspect {
            return None;
        }
        let config = InspectorConfig {
            addr: self.inspect_addr,
            capacity: self.inspect_capacity,
            body_cap: self.inspect_body_cap,
        };
        match Inspector::start(config, shutdown.clone()).await {
            Ok(inspector) => {
                if inspector.addr() != self.inspect_addr && self.inspect_addr.port() != 0 {
                    eprintln!("inspector: {} is in use; the inspector is at {}", self.inspect_addr, inspector.url());
                }
                Some(inspector)
            }
            Err(e) => {
                eprintln!("inspector off: {e} (choose another with --inspect-addr, or --no-inspect)");
                None
            }
        }
    }
}
