//! Erasing recorded exchanges from the `RECORDINGS` stream, for a deletion request: by tunnel, by
//! account, by request id, by time, or any combination.
//!
//! The records are removed from the stream, not hidden: the messages holding them are erased
//! (JetStream overwrites a deleted message's bytes on disk) or, for whole tunnels, the tunnel's
//! subjects are purged. A stored message holds a batch of one tunnel's records; when only some
//! of a batch are selected, the others are stored again as a new batch first, then the old
//! message is erased (their own arrival times are kept; their place in the stream is the
//! erasure's).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tunnel_schemas::record::{self, ExchangeRecord, KIND_EXCHANGE, Parts, RecordBatch};
use tunnel_schemas::subjects::{RECORDING_STREAM, RECORDING_SUBJECTS, recording};

/// Largest stored message decoded.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Room left in a message for headers when a batch is stored again.
const PART_HEADROOM_BYTES: usize = 4 << 10;
/// Time a message of the scan may take to arrive.
const SCAN_WAIT: Duration = Duration::from_secs(5);

/// Which recordings to erase; every given criterion must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these tunnels.
    pub tunnels: Vec<String>,
    /// Only records of sessions admitted for this account.
    pub account: Option<String>,
    /// Only these request ids.
    pub request_ids: Vec<String>,
    /// Only records that arrived at or after this time (Unix ms).
    pub since_ms: Option<u64>,
    /// Only records that arrived at or before this time (Unix ms).
    pub until_ms: Option<u64>,
}

impl Selection {
    /// Whether no criterion is given (which would select everything: refused).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Whether `record` is selected.
    pub fn matches(&self, record: &ExchangeRecord) -> bool {
        (self.tunnels.is_empty() || self.tunnels.contains(&record.tunnel))
            && self.account.as_ref().is_none_or(|account| record.account.as_ref() == Some(account))
            && (self.request_ids.is_empty() || self.request_ids.contains(&record.request_id))
            && self.since_ms.is_none_or(|since| record.at_ms >= since)
            && self.until_ms.is_none_or(|until| record.at_ms <= until)
    }

    /// Whether whole tunnels are selected: their subjects can be purged.
    fn whole_tunnels(&self) -> bool {
        !self.tunnels.is_empty() && Self { tunnels: Vec::new(), ..self.clone() }.is_empty()
    }

    /// The selection as `key=value` pairs joined by `&`, for the audit event.
    pub fn describe(&self) -> String {
        let mut pairs: Vec<String> = self.tunnels.iter().map(|t| format!("tunnel={t}")).collect();
        pairs.extend(self.account.iter().map(|a| format!("account={a}")));
        pairs.extend(self.request_ids.iter().map(|id| format!("request_id={id}")));
        pairs.extend(self.since_ms.map(|ms| format!("since={ms}")));
        pairs.extend(self.until_ms.map(|ms| format!("until={ms}")));
        pairs.join("&")
    }
}

/// Why an erasure stopped.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// The stream cannot be read or changed.
    #[error("the recordings cannot be erased: {0}")]
    Unavailable(String),
}

fn unavailable(error: impl std::fmt::Display) -> EraseError {
    EraseError::Unavailable(error.to_string())
}

/// One stored batch: the sequences of its messages (several when split) and its records.
struct Stored {
    subject: String,
    sequences: Vec<u64>,
    records: Vec<ExchangeRecord>,
}

/// Erases the recordings `selection` selects; the records erased, per tunnel.
///
/// # Errors
/// [`EraseError`] when the stream cannot be read or changed; what was erased before stays erased.
pub async fn erase(js: &jetstream::Context, selection: &Selection) -> Result<BTreeMap<String, u64>, EraseError> {
    let stream = match js.get_stream(RECORDING_STREAM).await {
        Ok(stream) => stream,
        // No stream: nothing was ever recorded.
        Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(_)) => {
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(unavailable(e)),
    };
    let mut erased = BTreeMap::new();
    let filters: Vec<String> = if selection.tunnels.is_empty() {
        vec![RECORDING_SUBJECTS.to_owned()]
    } else {
        selection.tunnels.iter().map(|tunnel| recording(tunnel, KIND_EXCHANGE)).collect()
    };
    for filter in filters {
        let mut last_sequence = None;
        let mut scanner = Scanner::start(&stream, filter.clone(), selection.since_ms).await?;
        while let Some(batch) = scanner.next().await? {
            last_sequence = batch.sequences.last().copied().max(last_sequence);
            let (selected, kept): (Vec<_>, Vec<_>) = batch.records.into_iter().partition(|r| selection.matches(r));
            for record in &selected {
                *erased.entry(record.tunnel.clone()).or_insert(0) += 1;
            }
            if selected.is_empty() || selection.whole_tunnels() {
                continue;
            }
            if !kept.is_empty() {
                store_again(js, &batch.subject, kept).await?;
            }
            for sequence in batch.sequences {
                stream.delete_message(sequence).await.map_err(unavailable)?;
            }
        }
        if selection.whole_tunnels()
            && let Some(last) = last_sequence
        {
            // The tunnel's gaps go with its records: `rec.<name>.>` up to the last record read.
            let subjects = format!("{}.>", filter.trim_end_matches(&format!(".{KIND_EXCHANGE}")));
            stream.purge().filter(subjects).sequence(last + 1).await.map_err(unavailable)?;
        }
    }
    Ok(erased)
}

/// The stored batches on one subject filter, one at a time, from a time up to the end of the
/// stream as it was when the scan began (a batch stored again meanwhile may come too: it holds
/// no selected record).
struct Scanner {
    messages: Option<pull::Ordered>,
    parts: Parts,
    sequences: Vec<u64>,
}

impl Scanner {
    async fn start(stream: &stream::Stream, filter: String, since_ms: Option<u64>) -> Result<Self, EraseError> {
        let deliver_policy = match since_ms {
            // A record is stored after it arrived: nothing earlier can hold one from `since_ms` on.
            Some(ms) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            },
            None => DeliverPolicy::All,
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig { filter_subject: filter, deliver_policy, ..Default::default() })
            .await
            .map_err(unavailable)?;
        let messages = if consumer.cached_info().num_pending == 0 {
            None
        } else {
            Some(consumer.messages().await.map_err(unavailable)?)
        };
        Ok(Self { messages, parts: Parts::default(), sequences: Vec::new() })
    }

    async fn next(&mut self) -> Result<Option<Stored>, EraseError> {
        loop {
            let Some(messages) = self.messages.as_mut() else { return Ok(None) };
            let message = match tokio::time::timeout(SCAN_WAIT, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(unavailable(e)),
                Ok(None) => return Ok(None),
                Err(_) => return Err(unavailable("the stream stopped delivering")),
            };
            let info = message.info().map_err(unavailable)?;
            let sequence = info.stream_sequence;
            if info.pending == 0 {
                self.messages = None;
            }
            let headers = message.headers.as_ref();
            let id = headers.and_then(|h| h.get(record::RECORD_ID_HEADER)).map_or("", |v| v.as_str());
            let part =
                headers.and_then(|h| h.get(record::PART_HEADER)).and_then(|v| record::parse_part_header(v.as_str()));
            self.sequences.push(sequence);
            let Some(whole) = self.parts.add(id, part, message.payload.clone()) else { continue };
            let sequences = std::mem::take(&mut self.sequences);
            match tunnel_schemas::decode::<RecordBatch>(&whole, MAX_MESSAGE_BYTES) {
                Ok(batch) => {
                    let subject = message.subject.to_string();
                    return Ok(Some(Stored { subject, sequences, records: batch.records }));
                }
                Err(e) => tracing::warn!(error = %e, "undecodable recording batch left as it is"),
            }
        }
    }
}

/// Stores `records` on `subject` as a new batch (in parts when larger than a message).
async fn store_again(js: &jetstream::Context, subject: &str, records: Vec<ExchangeRecord>) -> Result<(), EraseError> {
    let encoded: Bytes = tunnel_schemas::encode(&RecordBatch { v: tunnel_schemas::PROTOCOL_VERSION, records }).into();
    let part_bytes = js.client().server_info().max_payload.saturating_sub(PART_HEADROOM_BYTES).max(4096);
    let parts = record::split(encoded, part_bytes);
    let (id, count) = (uuid::Uuid::now_v7().simple().to_string(), parts.len());
    for (index, payload) in parts.into_iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert(record::RECORD_ID_HEADER, id.as_str());
        if count > 1 {
            headers.insert(record::PART_HEADER, record::part_header(index, count).as_str());
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .message_id(format!("{id}.{index}"));
        let ack = js.send_publish(subject.to_owned(), message).await.map_err(unavailable)?;
        ack.await.map_err(unavailable)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tunnel: &str, account: Option<&str>, id: &str, at_ms: u64) -> ExchangeRecord {
        let mut record = crate::json::samples::full();
        record.tunnel = tunnel.into();
        record.account = account.map(str::to_owned);
        record.request_id = id.into();
        record.at_ms = at_ms;
        record
    }

    #[test]
    fn every_criterion_must_hold() {
        let selection = Selection {
            account: Some("acme".into()),
            since_ms: Some(100),
            until_ms: Some(200),
            ..Selection::default()
        };
        assert!(selection.matches(&record("a", Some("acme"), "r1", 150)));
        assert!(!selection.matches(&record("a", Some("other"), "r1", 150)));
        assert!(!selection.matches(&record("a", None, "r1", 150)), "a record without account is not the account's");
        assert!(!selection.matches(&record("a", Some("acme"), "r1", 201)));
        let ids = Selection { request_ids: vec!["r2".into()], ..Selection::default() };
        assert!(ids.matches(&record("a", None, "r2", 1)) && !ids.matches(&record("a", None, "r1", 1)));
        assert!(Selection::default().is_empty());
    }

    #[test]
    fn only_tunnels_alone_purge_whole_tunnels() {
        let whole = Selection { tunnels: vec!["a".into()], ..Selection::default() };
        assert!(whole.whole_tunnels());
        let part = Selection { tunnels: vec!["a".into()], since_ms: Some(1), ..Selection::default() };
        assert!(!part.whole_tunnels());
        assert_eq!(part.describe(), "tunnel=a&since=1");
    }
}
