//! `tunnel export`: recorded exchanges to a file, as JSON lines or HAR 1.2.

use std::process::ExitCode;
use tunnel_schemas::audit::DataAction;

use tunnel_trail::event::TrailEvent;
use tunnel_trail::json::ExchangeJson;
use tunnel_trail::query::Source;

use super::{FilterArgs, LogArgs, fail, query};

/// File formats of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One exchange per line, the form `tunnel trail --recorded --json` prints.
    Jsonl,
    /// HAR 1.2, which browsers and HTTP tools open.
    Har,
}

/// Flags of `tunnel export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// File format.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<std::path::PathBuf>,
}

/// Runs `tunnel export`.
pub async fn run(args: ExportArgs, json: bool) -> ExitCode {
    let (resolved, filter) = match super::resolve(&args.log, &args.filter, json) {
        Ok(resolved) => resolved,
        Err(code) => return code,
    };
    let query = query(&resolved.name, Source::Exchanges, filter, false, args.filter.limit);
    let records = match super::replay::collect(&resolved.access, query, DataAction::Export).await {
        Ok(records) => records,
        Err((code, message)) => return fail(json, code, &message),
    };
    let text = match args.format {
        Format::Har => tunnel_trail::har::to_har(&records).to_string(),
        Format::Jsonl => records
            .iter()
            .map(|record| {
                let event = TrailEvent::Exchange(Box::new(ExchangeJson::from(record)));
                serde_json::to_string(&event).unwrap_or_default() + "\n"
            })
            .collect(),
    };
    let written = match &args.output {
        Some(path) => std::fs::write(path, text),
        None => std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()),
    };
    match written {
        Ok(()) => {
            if args.output.is_some() {
                eprintln!("exported {} exchanges", records.len());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(json, "io", &e.to_string()),
    }
}
