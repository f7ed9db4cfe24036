//! `tunnel trail`: a tunnel's audit trail or recorded exchanges, to the end of the log or live.

use std::io::Write;
use std::process::ExitCode;
use tunnel_schemas::audit::DataAction;

use futures_util::StreamExt;
use tunnel_trail::event::{TABLE_HEADER, TrailEvent};
use tunnel_trail::query::Source;

use super::{FilterArgs, LogArgs, fail, query};

/// Flags of `tunnel trail`.
#[derive(Debug, clap::Args)]
pub struct TrailArgs {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// Full recorded exchanges (recorded tunnels) instead of the audit records of every request.
    #[arg(long)]
    recorded: bool,
    /// Keep printing new events as they are logged (resume later with --since).
    #[arg(long, short = 'f')]
    follow: bool,
}

/// Runs `tunnel trail`, printing a table (`json` false) or JSON lines.
pub async fn run(args: TrailArgs, json: bool) -> ExitCode {
    let (resolved, filter) = match super::resolve(&args.log, &args.filter, json) {
        Ok(resolved) => resolved,
        Err(code) => return code,
    };
    let source = if args.recorded { Source::Exchanges } else { Source::Audit };
    let query = query(&resolved.name, source, filter, args.follow, args.filter.limit);
    let mut events = match crate::trail::read(&resolved.access, query, DataAction::Query).await {
        Ok(events) => events,
        Err(e) => return fail(json, e.code(), &e.to_string()),
    };
    if !json {
        println!("{TABLE_HEADER}");
    }
    let shutdown = tunnel_kit::shutdown::on_signal();
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = shutdown.cancelled() => return ExitCode::SUCCESS,
        };
        let Some(event) = event else { return ExitCode::SUCCESS };
        let event = match event {
            Ok(event) => event,
            Err(e) => return fail(json, e.code(), &e.to_string()),
        };
        if let TrailEvent::Error { message } = &event {
            return fail(json, "unavailable", message);
        }
        let line = if json { serde_json::to_string(&event).unwrap_or_default() } else { event.row() };
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
    }
}
