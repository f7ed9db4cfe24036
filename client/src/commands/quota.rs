//! `tunnel admin quota`: the operator's limits per tunnel or account, in the bucket the auditor
//! watches (a change is in force within 2 s). What is not set here comes from the auditor's
//! configuration; 0 here means no limit.

use async_nats::jetstream::kv;
use tunnel_schemas::usage::{Quota, QuotaLimits, QuotaState, Scope};

use super::admin::{Refusal, keys, print};

/// Largest stored limits or state read back.
const MAX_RECORD_BYTES: usize = 64 << 10;

/// Whose quota: a tunnel, or `--account`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScopeArgs {
    /// The tunnel.
    #[arg(required_unless_present = "account", conflicts_with = "account")]
    tunnel: Option<String>,
    /// An account instead: all its tunnels together.
    #[arg(long, value_name = "NAME")]
    account: Option<String>,
}

impl ScopeArgs {
    /// The tunnel, or else the account.
    pub fn new(tunnel: Option<String>, account: Option<String>) -> Self {
        Self { tunnel, account }
    }

    /// The scope named.
    ///
    /// # Errors
    /// `invalid_arguments` for a name that cannot be a key.
    pub fn scope(&self) -> Result<Scope, Refusal> {
        let scope = match (&self.tunnel, &self.account) {
            (_, Some(account)) => Scope::Account(account.clone()),
            (Some(tunnel), None) => Scope::Tunnel(tunnel.clone()),
            (None, None) => return Err(("invalid_arguments", "name a tunnel or --account".into())),
        };
        match Scope::from_key(&scope.key()) {
            Some(_) if scope.key().bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) => Ok(scope),
            _ => Err(("invalid_arguments", format!("{scope:?} is not a tunnel or account name"))),
        }
    }
}

/// `tunnel admin quota`.
#[derive(Debug, clap::Subcommand)]
pub enum QuotaCommand {
    /// Sets limits of a tunnel or an account; the others stay as they were.
    Set {
        /// Whose.
        #[command(flatten)]
        scope: ScopeArgs,
        /// Requests per minute (0: none).
        #[arg(long, value_name = "N")]
        requests_per_minute: Option<u64>,
        /// Requests per day, UTC (0: none).
        #[arg(long, value_name = "N")]
        requests_per_day: Option<u64>,
        /// Bytes in and out per day, heads and bodies (0: none).
        #[arg(long, value_name = "N")]
        bytes_per_day: Option<u64>,
        /// Bytes in and out per calendar month, UTC (0: none).
        #[arg(long, value_name = "N")]
        bytes_per_month: Option<u64>,
    },
    /// Lists the limits set, with each scope's state when near or over one.
    List,
    /// Removes the limits set for a tunnel or an account: the configured defaults apply again.
    Remove {
        /// Whose.
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

/// Runs `command` on the limits bucket `quotas` (states read from `states`).
///
/// # Errors
/// `invalid_arguments`, `unknown_quota` or `unavailable`.
pub async fn admin(quotas: &kv::Store, states: &kv::Store, command: QuotaCommand, json: bool) -> Result<(), Refusal> {
    let unavailable = |e: &dyn std::fmt::Display| ("unavailable", e.to_string());
    match command {
        QuotaCommand::Set { scope, requests_per_minute, requests_per_day, bytes_per_day, bytes_per_month } => {
            let scope = scope.scope()?;
            let given = QuotaLimits { requests_per_minute, requests_per_day, bytes_per_day, bytes_per_month };
            if given == QuotaLimits::default() {
                return Err(("invalid_arguments", "give at least one limit (--requests-per-minute, …)".into()));
            }
            let limits = loop {
                let entry = quotas.entry(scope.key()).await.map_err(|e| unavailable(&e))?;
                let (mut limits, revision) = match entry {
                    Some(entry) if entry.operation == kv::Operation::Put => {
                        (decode::<QuotaLimits>(&entry.value)?, entry.revision)
                    }
                    Some(entry) => (QuotaLimits::default(), entry.revision),
                    None => (QuotaLimits::default(), 0),
                };
                merge(&mut limits, &given);
                match quotas.update(scope.key(), tunnel_schemas::encode(&limits).into(), revision).await {
                    Ok(_) => break limits,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(unavailable(&e)),
                }
            };
            let value =
                serde_json::json!({ "event": "quota_set", "scope": scope.key(), "limits": limits_json(&limits) });
            print(json, &value, &format!("{}  {}", scope.key(), limits_text(&limits)));
        }
        QuotaCommand::List => {
            for key in keys(quotas, "").await? {
                let Some(bytes) = quotas.get(&key).await.map_err(|e| unavailable(&e))? else { continue };
                let limits = decode::<QuotaLimits>(&bytes)?;
                let state = states.get(&key).await.map_err(|e| unavailable(&e))?;
                let state = state.and_then(|bytes| tunnel_schemas::decode::<QuotaState>(&bytes, MAX_RECORD_BYTES).ok());
                let value = serde_json::json!({ "scope": key, "limits": limits_json(&limits), "state": state.as_ref().map(state_json) });
                let text = match &state {
                    Some(state) => format!("{key}  {}  {}", limits_text(&limits), state_text(state)),
                    None => format!("{key}  {}", limits_text(&limits)),
                };
                print(json, &value, &text);
            }
        }
        QuotaCommand::Remove { scope } => {
            let key = scope.scope()?.key();
            if quotas.get(&key).await.map_err(|e| unavailable(&e))?.is_none() {
                return Err(("unknown_quota", format!("no limits set for {key}")));
            }
            quotas.delete(&key).await.map_err(|e| unavailable(&e))?;
            print(
                json,
                &serde_json::json!({ "event": "quota_removed", "scope": key }),
                &format!("{key}: defaults apply"),
            );
        }
    }
    Ok(())
}

/// Sets in `limits` every limit `given` names.
fn merge(limits: &mut QuotaLimits, given: &QuotaLimits) {
    let slots = [
        (&mut limits.requests_per_minute, given.requests_per_minute),
        (&mut limits.requests_per_day, given.requests_per_day),
        (&mut limits.bytes_per_day, given.bytes_per_day),
        (&mut limits.bytes_per_month, given.bytes_per_month),
    ];
    for (slot, value) in slots {
        if value.is_some() {
            *slot = value;
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    tunnel_schemas::decode(bytes, MAX_RECORD_BYTES).map_err(|e| ("invalid_record", e.to_string()))
}

/// The limits set, as JSON: `{"requests_per_minute": 100, …}` (0: none; absent: the default).
pub fn limits_json(limits: &QuotaLimits) -> serde_json::Value {
    let set = Quota::ALL.into_iter().filter_map(|quota| Some((quota.as_str().to_owned(), quota.limit(limits)?.into())));
    serde_json::Value::Object(set.collect())
}

/// The limits set, as text: `requests_per_minute=100 bytes_per_day=0`.
pub fn limits_text(limits: &QuotaLimits) -> String {
    let set: Vec<String> = Quota::ALL
        .into_iter()
        .filter_map(|quota| Some(format!("{}={}", quota.as_str(), quota.limit(limits)?)))
        .collect();
    if set.is_empty() { "defaults".into() } else { set.join(" ") }
}

/// A quota state as JSON.
pub fn state_json(state: &QuotaState) -> serde_json::Value {
    serde_json::json!({
        "level": state.level, "quota": state.quota.as_str(), "used": state.used, "limit": state.limit,
        "until_ms": state.until_ms, "blocks": state.blocks(tunnel_schemas::now_ms()),
    })
}

/// A quota state as text: `exceeded requests_per_minute 12/10 until 2026-11-30T19:06:00Z`.
pub fn state_text(state: &QuotaState) -> String {
    let level = match state.level {
        tunnel_schemas::usage::QuotaLevel::Warning => "warning",
        tunnel_schemas::usage::QuotaLevel::Exceeded => "exceeded",
    };
    let until = tunnel_trail::filter::format_ms(state.until_ms);
    format!("{level} {} {}/{} until {until}", state.quota.as_str(), state.used, state.limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_changes_only_the_limits_named() {
        let mut limits = QuotaLimits { requests_per_minute: Some(10), bytes_per_day: Some(5), ..Default::default() };
        merge(&mut limits, &QuotaLimits { bytes_per_day: Some(0), requests_per_day: Some(7), ..Default::default() });
        assert_eq!(
            limits,
            QuotaLimits {
                requests_per_minute: Some(10),
                requests_per_day: Some(7),
                bytes_per_day: Some(0),
                bytes_per_month: None
            }
        );
        assert_eq!(limits_text(&limits), "requests_per_minute=10 requests_per_day=7 bytes_per_day=0");
        assert_eq!(limits_json(&limits)["bytes_per_day"], 0);
    }
}
