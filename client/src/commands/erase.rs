//! `tunnel admin erase`: removes recorded exchanges from the stream, for a deletion request, and
//! puts the erasure on record in the audit log: who asked, what, and how many records.

use async_nats::jetstream;
use tunnel_schemas::audit::{DataAction, NO_TUNNEL};
use tunnel_trail::erase::{Selection, erase};
use tunnel_trail::filter::{now_ms, parse_time};
use tunnel_trail::record::put_on_record;

use super::admin::{Refusal, print};
use crate::trail::operator_event;

/// What to erase; every given criterion must hold, and at least one must be given.
#[derive(Debug, clap::Args)]
pub struct EraseArgs {
    /// Only this tunnel's recordings (repeat for several); alone, its subjects are purged.
    #[arg(long = "tunnel", value_name = "NAME")]
    tunnels: Vec<String>,
    /// Only recordings of sessions admitted for this account.
    #[arg(long)]
    account: Option<String>,
    /// Only this request (repeat for several).
    #[arg(long = "request-id", value_name = "ID")]
    request_ids: Vec<String>,
    /// Only recordings from this time: RFC 3339, a duration ago (10m) or unix ms.
    #[arg(long)]
    since: Option<String>,
    /// Only recordings up to this time (same forms).
    #[arg(long)]
    until: Option<String>,
}

impl EraseArgs {
    fn selection(self) -> Result<Selection, Refusal> {
        let now = now_ms();
        let time = |text: Option<String>| {
            text.map(|t| parse_time(&t, now)).transpose().map_err(|e| ("invalid_arguments", e.to_string()))
        };
        let selection = Selection {
            tunnels: self.tunnels,
            account: self.account,
            request_ids: self.request_ids,
            since_ms: time(self.since)?,
            until_ms: time(self.until)?,
        };
        if selection.is_empty() {
            return Err((
                "invalid_arguments",
                "say what to erase: --tunnel, --account, --request-id, --since or --until".into(),
            ));
        }
        Ok(selection)
    }
}

/// Runs `tunnel admin erase` with the operator's JetStream `js`, reached at `nats_url`.
///
/// # Errors
/// The refusal when the flags say nothing, or the stream or the audit log cannot be reached.
pub async fn admin(js: &jetstream::Context, nats_url: &str, args: EraseArgs, json: bool) -> Result<(), Refusal> {
    let selection = args.selection()?;
    let erased = erase(js, &selection).await.map_err(|e| ("unavailable", e.to_string()))?;
    let total: u64 = erased.values().sum();
    let selector = selection.describe();
    let tunnels: Vec<(&str, u64)> = if erased.is_empty() {
        vec![(NO_TUNNEL, 0)]
    } else {
        erased.iter().map(|(tunnel, count)| (tunnel.as_str(), *count)).collect()
    };
    for (tunnel, count) in tunnels {
        let event = operator_event(nats_url, tunnel, DataAction::Erase, selector.clone(), Some(count));
        put_on_record(js, &event).await.map_err(|e| ("unavailable", format!("erased, but {e}")))?;
    }
    let text = format!("{total} recorded exchanges erased ({selector})");
    print(
        json,
        &serde_json::json!({ "event": "erased", "records": total, "tunnels": erased, "selector": selector }),
        &text,
    );
    Ok(())
}
