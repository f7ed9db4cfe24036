//! `tunnel usage`: the auditor's usage counters of a tunnel, an account, or all, per period,
//! read straight from JetStream KV (NATS credentials needed), with the quota limits and state.

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use tunnel_schemas::usage::{
    Period, QUOTA_STATE_BUCKET, QUOTAS_BUCKET, QuotaLimits, QuotaState, USAGE_BUCKET, UsageCounter,
};
use tunnel_trail::filter::{format_ms, now_ms, parse_time};

use super::admin::{Refusal, print};
use super::fail;
use super::quota::{ScopeArgs, limits_json, limits_text, state_json, state_text};

/// Largest stored record read back.
const MAX_RECORD_BYTES: usize = 64 << 10;
/// Wait for each counter of the listing.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `tunnel usage`.
#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// The tunnel (or --account); every tunnel and account when neither is given.
    tunnel: Option<String>,
    /// An account: all its tunnels together.
    #[arg(long, value_name = "NAME", conflicts_with = "tunnel")]
    account: Option<String>,
    /// minute, hour, day or month (UTC).
    #[arg(long, default_value = "day", value_parser = parse_period)]
    period: Period,
    /// Periods starting from this time: RFC 3339, a duration ago (7d) or unix ms [default: the
    /// last hour of minutes, day of hours, 31 days, or every month kept].
    #[arg(long)]
    since: Option<String>,
    /// NATS URL with the operator's credentials.
    #[arg(long, value_name = "NATS_URL", env = "TUNNEL_NATS_URL", hide_env_values = true)]
    nats: String,
    /// TLS to NATS.
    #[command(flatten)]
    nats_tls: tunnel_kit::nats::NatsTls,
}

fn parse_period(name: &str) -> Result<Period, String> {
    Period::parse(name).ok_or_else(|| format!("{name:?}: use minute, hour, day or month"))
}

/// Runs `tunnel usage`.
pub async fn run(args: UsageArgs, json: bool) -> ExitCode {
    match usage(args, json).await {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => fail(json, code, &message),
    }
}

async fn usage(args: UsageArgs, json: bool) -> Result<(), Refusal> {
    let scope = match (&args.tunnel, &args.account) {
        (None, None) => None,
        (tunnel, account) => Some(ScopeArgs::new(tunnel.clone(), account.clone()).scope()?),
    };
    let now = now_ms();
    let since = match &args.since {
        Some(text) => parse_time(text, now).map_err(|e| ("invalid_arguments", e.to_string()))?,
        None => default_since(args.period, now),
    };
    let since = match args.period {
        // The auditor's minute may be shortened; its length is not known here.
        Period::Minute => since,
        period => period.start(since, 60_000),
    };
    let nats = crate::trail::operator_nats(&args.nats, &args.nats_tls, "tunnel-usage")
        .await
        .map_err(|e| ("unavailable", e.to_string()))?;
    let js = jetstream::new(nats);
    let pattern = scope.as_ref().map_or_else(|| "*.*".to_owned(), tunnel_schemas::usage::Scope::key);
    let mut rows = counters(&js, &format!("{pattern}.{}.*", args.period.as_str())).await?;
    rows.retain(|row| row.start_ms >= since);
    rows.sort_by(|a, b| (&a.scope, a.start_ms).cmp(&(&b.scope, b.start_ms)));
    if !json && !rows.is_empty() {
        println!(
            "{:<24} {:<20} {:>10} {:>14} {:>14} {:>8}  REFUSED",
            "PERIOD START (UTC)", "SCOPE", "REQUESTS", "BYTES IN", "BYTES OUT", "REPLAYS"
        );
    }
    for row in &rows {
        let counter = &row.counter;
        let refused: Vec<String> = counter.refused.iter().map(|(code, n)| format!("{code}={n}")).collect();
        let value = serde_json::json!({
            "scope": row.scope, "period": args.period.as_str(), "start": format_ms(row.start_ms), "start_ms": row.start_ms,
            "requests": counter.requests, "bytes_in": counter.bytes_in, "bytes_out": counter.bytes_out,
            "refused": counter.refused, "replay_requests": counter.replay_requests, "replay_bytes": counter.replay_bytes,
        });
        let text = format!(
            "{:<24} {:<20} {:>10} {:>14} {:>14} {:>8}  {}",
            format_ms(row.start_ms),
            row.scope,
            counter.requests,
            counter.bytes_in,
            counter.bytes_out,
            counter.replay_requests,
            refused.join(",")
        );
        print(json, &value, &text);
    }
    if let Some(scope) = scope {
        quota(&js, &scope.key(), json).await?;
    }
    Ok(())
}

/// The first period shown by default.
fn default_since(period: Period, now: u64) -> u64 {
    let back = match period {
        Period::Minute => 3_600_000,
        Period::Hour => 86_400_000,
        Period::Day => 31 * 86_400_000,
        Period::Month => return 0,
    };
    now.saturating_sub(back)
}

/// One counter of the listing.
struct Row {
    scope: String,
    start_ms: u64,
    counter: UsageCounter,
}

/// The counters whose keys match `pattern` (KV key tokens, `*` for any one).
async fn counters(js: &jetstream::Context, pattern: &str) -> Result<Vec<Row>, Refusal> {
    let Ok(stream) = js.get_stream(format!("KV_{USAGE_BUCKET}")).await else {
        return Err(("unavailable", "no usage counters yet: is the auditor running?".into()));
    };
    let prefix = format!("$KV.{USAGE_BUCKET}.");
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{prefix}{pattern}"),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| ("unavailable", e.to_string()))?;
    let count = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(|e| ("unavailable", e.to_string()))?;
    let mut rows = Vec::new();
    for _ in 0..count {
        let message = tokio::time::timeout(READ_TIMEOUT, messages.next())
            .await
            .map_err(|_| ("unavailable", "the usage counters stopped arriving".to_owned()))?
            .ok_or(("unavailable", "the usage listing ended early".to_owned()))?
            .map_err(|e| ("unavailable", e.to_string()))?;
        let Some(key) = message.subject.strip_prefix(&prefix) else { continue };
        let mut tokens = key.rsplitn(3, '.');
        let (Some(start), Some(_period), Some(scope)) = (tokens.next(), tokens.next(), tokens.next()) else { continue };
        let (Ok(start_ms), Ok(counter)) =
            (start.parse(), tunnel_schemas::decode::<UsageCounter>(&message.payload, MAX_RECORD_BYTES))
        else {
            continue;
        };
        rows.push(Row { scope: scope.to_owned(), start_ms, counter });
    }
    Ok(rows)
}

/// Prints the limits set for the scope `key` and its quota state, when there are any.
async fn quota(js: &jetstream::Context, key: &str, json: bool) -> Result<(), Refusal> {
    let read = |bucket: &'static str| async move {
        let Ok(store) = js.get_key_value(bucket).await else { return Ok(None) };
        store.get(key).await.map_err(|e| ("unavailable", e.to_string()))
    };
    let limits =
        read(QUOTAS_BUCKET).await?.and_then(|b| tunnel_schemas::decode::<QuotaLimits>(&b, MAX_RECORD_BYTES).ok());
    let state =
        read(QUOTA_STATE_BUCKET).await?.and_then(|b| tunnel_schemas::decode::<QuotaState>(&b, MAX_RECORD_BYTES).ok());
    if limits.is_none() && state.is_none() {
        return Ok(());
    }
    let value = serde_json::json!({
        "event": "quota", "scope": key, "limits": limits.as_ref().map(limits_json), "state": state.as_ref().map(state_json),
    });
    let limits = limits.as_ref().map_or_else(|| "defaults".to_owned(), limits_text);
    let text = match &state {
        Some(state) => format!("quota: {limits}; {}", state_text(state)),
        None => format!("quota: {limits}"),
    };
    print(json, &value, &text);
    Ok(())
}
