//! `tunnel replay`: recorded exchanges sent again, to the tunnel itself, another tunnel or any
//! URL, optionally compared with what was recorded; exits non-zero on any mismatch.

use std::process::ExitCode;
use tunnel_schemas::audit::DataAction;

use bytes::Bytes;
use futures_util::StreamExt;
use tunnel_schemas::http::Header;
use tunnel_schemas::record::ExchangeRecord;
use tunnel_trail::compare::{CompareOptions, validate_json_path};
use tunnel_trail::event::TrailEvent;
use tunnel_trail::query::Query;

use super::{FilterArgs, LogArgs, fail, query};
use crate::replay::{ReplayOptions, Replayed, replay};
use crate::target::Target;
use crate::trail::Access;

/// Flags of `tunnel replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// Replay the exchanges of this file (from `tunnel export`, JSON lines or HAR) instead of
    /// the log; the filters apply to it too.
    #[arg(long, value_name = "FILE")]
    from: Option<std::path::PathBuf>,
    /// Send to this URL (http://localhost:3000) instead of the tunnel's public URL.
    #[arg(long, value_name = "URL", conflicts_with = "to_tunnel")]
    to: Option<String>,
    /// Send to this other tunnel's public URL.
    #[arg(long, value_name = "NAME")]
    to_tunnel: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Pace: 1 is the recorded timing, 2 twice as fast, 0 as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    speed: f64,
    /// Do not send the X-Replay-Of header naming the original request.
    #[arg(long)]
    no_replay_header: bool,
    /// A header to send, replacing recorded or masked values of that name ("Authorization: Bearer x").
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Compare each response with the recorded one; exit non-zero on any difference.
    #[arg(long)]
    compare: bool,
    /// A response header not to compare (besides Date, X-Request-Id, trace headers…).
    #[arg(long = "ignore-header", value_name = "NAME")]
    ignore_headers: Vec<String>,
    /// A JSON path not to compare in JSON bodies: $.id, $.items[*].created_at.
    #[arg(long = "ignore-json-path", value_name = "PATH")]
    ignore_json_paths: Vec<String>,
    /// Send requests whose recorded body was cut with the part that was kept.
    #[arg(long)]
    send_cut: bool,
}

/// Runs `tunnel replay`.
pub async fn run(args: ReplayArgs, json: bool) -> ExitCode {
    match prepare(&args).await {
        Ok((records, options)) => report(records, options, json).await,
        Err((code, message)) => fail(json, code, &message),
    }
}

type Failure = (&'static str, String);

async fn prepare(args: &ReplayArgs) -> Result<(Vec<ExchangeRecord>, ReplayOptions), Failure> {
    let invalid = |message: String| ("invalid_arguments", message);
    let filter = args.filter.filter().map_err(invalid)?;
    for path in &args.ignore_json_paths {
        validate_json_path(path).map_err(|e| invalid(e.to_string()))?;
    }
    let headers = args.headers.iter().map(|h| parse_header(h)).collect::<Result<Vec<_>, _>>().map_err(invalid)?;
    let resolved =
        if args.from.is_none() || (args.to.is_none()) { Some(args.log.resolve().map_err(invalid)?) } else { None };
    let records = match &args.from {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ("io", format!("{}: {e}", path.display())))?;
            let records = tunnel_trail::file::read_exchanges(&text).map_err(|e| ("invalid_file", e.to_string()))?;
            let selected = records.into_iter().filter(|r| filter.matches_exchange(r) && filter.in_range(r.at_ms));
            selected.take(args.filter.limit.unwrap_or(usize::MAX)).collect()
        }
        None => {
            let resolved = resolved.as_ref().ok_or_else(|| invalid("no tunnel".into()))?;
            collect(
                &resolved.access,
                query(&resolved.name, tunnel_trail::query::Source::Exchanges, filter, false, args.filter.limit),
                DataAction::Replay,
            )
            .await?
        }
    };
    let url = match (&args.to, &args.to_tunnel, resolved.as_ref()) {
        (Some(url), _, _) => url.clone(),
        (None, Some(other), Some(resolved)) => {
            let own =
                resolved.url.as_deref().ok_or_else(|| invalid("the tunnel's URL is unknown here: use --to".into()))?;
            own.replacen(&format!("//{}.", resolved.name), &format!("//{other}."), 1)
        }
        (None, None, Some(resolved)) => {
            resolved.url.clone().ok_or_else(|| invalid("the tunnel's URL is unknown here: use --to URL".into()))?
        }
        (None, _, None) => return Err(invalid("give --to URL".into())),
    };
    let target = Target::parse(&url).map_err(|e| invalid(e.to_string()))?;
    let compare = args.compare.then(|| CompareOptions {
        ignore_headers: args.ignore_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
        ignore_json_paths: args.ignore_json_paths.clone(),
    });
    let options = ReplayOptions {
        target,
        concurrency: args.concurrency,
        speed: args.speed,
        replay_header: !args.no_replay_header,
        headers,
        compare,
        send_cut: args.send_cut,
    };
    Ok((records, options))
}

/// The exchanges `query` selects, read to the end of the log for `purpose`.
///
/// # Errors
/// The typed code and message when the log cannot be read or holds an unreadable exchange.
pub async fn collect(access: &Access, query: Query, purpose: DataAction) -> Result<Vec<ExchangeRecord>, Failure> {
    let mut events = crate::trail::read(access, query, purpose).await.map_err(|e| ("unavailable", e.to_string()))?;
    let mut records = Vec::new();
    while let Some(event) = events.next().await {
        match event.map_err(|e| ("unavailable", e.to_string()))? {
            TrailEvent::Exchange(exchange) => {
                records.push(ExchangeRecord::try_from(*exchange).map_err(|e| ("invalid_record", e.to_string()))?);
            }
            TrailEvent::Gap(gap) => eprintln!("note: {}", TrailEvent::Gap(gap).row()),
            TrailEvent::Error { message } => return Err(("unavailable", message)),
            TrailEvent::Audit(_) | TrailEvent::Access(_) | TrailEvent::Data(_) | TrailEvent::Behind { .. } => {}
        }
    }
    Ok(records)
}

async fn report(records: Vec<ExchangeRecord>, options: ReplayOptions, json: bool) -> ExitCode {
    let comparing = options.compare.is_some();
    let total = records.len();
    let started = std::time::Instant::now();
    let mut results = std::pin::pin!(replay(records, options));
    let (mut bad, mut matched) = (0_usize, 0_usize);
    while let Some(result) = results.next().await {
        if result.is_bad(comparing) {
            bad += 1;
        } else {
            matched += 1;
        }
        print(&result, json);
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = if seconds > 0.0 { total as f64 / seconds } else { 0.0 };
    let verdict = if comparing { "matched" } else { "answered" };
    if json {
        println!(
            "{}",
            serde_json::json!({ "event": "summary", "replayed": total, verdict: matched, "failed": bad, "seconds": seconds, "per_second": rate })
        );
    } else {
        println!("replayed {total} exchanges in {seconds:.2} s ({rate:.0}/s): {matched} {verdict}, {bad} not");
    }
    if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn print(result: &Replayed, json: bool) {
    if json {
        println!("{}", serde_json::to_string(result).unwrap_or_default());
    } else {
        println!("{}", result.human());
    }
}

/// Reads `Name: value`.
fn parse_header(text: &str) -> Result<Header, String> {
    let (name, value) = text.split_once(':').ok_or_else(|| format!("header {text:?}: expected \"Name: value\""))?;
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b)) {
        return Err(format!("header {text:?}: invalid name"));
    }
    Ok(Header(name, Bytes::copy_from_slice(value.trim().as_bytes())))
}
