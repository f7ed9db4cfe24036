//! One entry of a trail, as the reader yields it and as JSON lines carry it.

use serde::{Deserialize, Serialize};
use tunnel_schemas::audit::{AccessEvent, DataEvent, RequestAudit};
use tunnel_schemas::gap::Gap;

use crate::filter::format_ms;
use crate::json::ExchangeJson;

/// One entry of a trail. On JSON lines each is an object with a `kind` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrailEvent {
    /// The audit record of one public request (every tunnel).
    Audit(RequestAudit),
    /// A full recorded exchange (recorded tunnels).
    Exchange(Box<ExchangeJson>),
    /// A session bound, resumed, was refused, revoked or closed (`audit.<name>.access`).
    Access(AccessEvent),
    /// The tunnel's recordings were read or erased (`audit.<name>.data`).
    Data(DataEvent),
    /// Events dropped before they reached the log: the trail has a hole here.
    Gap(Gap),
    /// A live tail fell this many events behind the end of the log.
    Behind {
        /// Events logged and not yet read.
        pending: u64,
    },
    /// Reading stopped: the log became unavailable.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Column titles of [`TrailEvent::row`].
pub const TABLE_HEADER: &str =
    "TIME                      METHOD   STATUS     MS       IN      OUT  PATH                              REQUEST ID";

impl TrailEvent {
    /// The event as one line of a terminal table.
    pub fn row(&self) -> String {
        match self {
            Self::Audit(record) => {
                let status = match record.error {
                    Some(code) => format!("{} {}", record.status, code.as_str()),
                    None => record.status.to_string(),
                };
                line(
                    record.at_ms,
                    &record.method,
                    &status,
                    record.duration_us,
                    (record.bytes_in, record.bytes_out),
                    &record.path,
                    &record.request_id,
                )
            }
            Self::Exchange(record) => {
                let mut status = record.response.as_ref().map_or_else(|| "-".to_owned(), |r| r.status.to_string());
                if let Some(code) = record.error {
                    status = format!("{status} {}", code.as_str());
                }
                let out = record.response.as_ref().map_or(0, |r| r.size);
                let mut id = record.request_id.clone();
                if record.request.cut || record.response.as_ref().is_some_and(|r| r.cut) {
                    id.push_str(" (body cut)");
                }
                if let Some(original) = &record.replay_of {
                    id.push_str(&format!(" (replay of {original})"));
                }
                line(
                    record.at_ms,
                    &record.request.method,
                    &status,
                    record.duration_us,
                    (record.request.size, out),
                    &record.request.target,
                    &id,
                )
            }
            Self::Gap(gap) => format!(
                "{:<25} -- {} events not logged between {} and {} (publisher overloaded or log unreachable)",
                format_ms(gap.to_ms),
                gap.dropped,
                format_ms(gap.from_ms),
                format_ms(gap.to_ms)
            ),
            Self::Access(event) => {
                let who = match (&event.account, &event.token) {
                    (Some(account), _) => format!("account {account}"),
                    (None, Some(token)) => format!("token {token}"),
                    (None, None) => "anonymous".to_owned(),
                };
                let code = event.code.map(|code| format!(" ({})", code.as_str())).unwrap_or_default();
                format!(
                    "{:<25} -- {:?}{code}: {who} from {} {}",
                    format_ms(event.at_ms),
                    event.access,
                    event.remote_addr,
                    event.session
                )
            }
            Self::Data(event) => {
                let records = event.records.map(|n| format!(" {n} records")).unwrap_or_default();
                let from = event.remote_addr.as_deref().map(|addr| format!(" from {addr}")).unwrap_or_default();
                let selector = if event.selector.is_empty() { String::new() } else { format!(" [{}]", event.selector) };
                format!(
                    "{:<25} -- recordings {}{records} by {}{from}{selector}",
                    format_ms(event.at_ms),
                    event.action.as_str(),
                    event.actor
                )
            }
            Self::Behind { pending } => format!("-- the tail is {pending} events behind the log"),
            Self::Error { message } => format!("-- reading stopped: {message}"),
        }
    }
}

fn line(at_ms: u64, method: &str, status: &str, duration_us: u64, bytes: (u64, u64), path: &str, id: &str) -> String {
    format!(
        "{:<25} {:<8} {:<8} {:>6} {:>8} {:>8}  {:<33} {}",
        format_ms(at_ms),
        method,
        status,
        duration_us / 1000,
        bytes.0,
        bytes.1,
        path,
        id
    )
}
