//! The session-host's recordings of a recorded tunnel (`--record`), read live through the host
//! with the tunnel's resume secret and merged into the list by request id, marked "server".

use std::sync::Arc;
use tunnel_schemas::audit::DataAction;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tunnel_schemas::record::ExchangeRecord;
use tunnel_trail::event::TrailEvent;
use tunnel_trail::filter::Filter;
use tunnel_trail::query::{Query, Source};

use super::ring::{Entry, Sources};
use super::{Shared, capped, now_ms};
use crate::backoff::Backoff;
use crate::trail::Access;

/// Follows the recordings of `tunnel` from now on until `stop`, reading again (from the last
/// one seen) after an error.
pub(crate) async fn follow(shared: Arc<Shared>, tunnel: String, access: Access, stop: CancellationToken) {
    let mut since_ms = now_ms();
    let mut backoff = Backoff::default();
    loop {
        let query = Query {
            tunnel: tunnel.clone(),
            source: Source::Exchanges,
            filter: Filter { since_ms: Some(since_ms), ..Filter::default() },
            follow: true,
            owner: None,
            limit: None,
        };
        let read = tokio::select! {
            read = crate::trail::read(&access, query, DataAction::Inspect) => read,
            () = stop.cancelled() => return,
        };
        match read {
            Ok(mut events) => loop {
                let event = tokio::select! {
                    event = events.next() => event,
                    () = stop.cancelled() => return,
                };
                match event {
                    Some(Ok(TrailEvent::Exchange(json))) => match ExchangeRecord::try_from(*json) {
                        Ok(record) => {
                            backoff.reset();
                            since_ms = since_ms.max(record.at_ms);
                            merge(&shared, record);
                        }
                        Err(e) => tracing::debug!(error = %e, "unreadable recording skipped"),
                    },
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "recordings unavailable");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => tracing::debug!(error = %e, "recordings unavailable"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Puts the server's `record` in the list: a new row, or the mark "server" on the client's row.
fn merge(shared: &Shared, record: ExchangeRecord) {
    let record = capped(record, shared.body_cap);
    let sources = Sources { server: true, ..Sources::default() };
    shared.insert(Entry { seq: 0, record, sources, open: false, comparison: None });
}
