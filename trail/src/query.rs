//! Reading a tunnel's trail from JetStream.
//!
//! A query starts where its time range starts, through an ordered consumer with JetStream's
//! start-time option (the server finds the first message; nothing before it is read), and ends
//! at the end of the log as it was when the query began, or goes on live (`follow`). A live
//! reader says when it falls behind, and the recorder's gap events pass through, so a hole in
//! the trail is never silent.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, consumer::Consumer};
use futures_util::{Stream, StreamExt};
use tunnel_schemas::audit::{AuditBatch, KIND_ACCESS, KIND_DATA};
use tunnel_schemas::gap::{Gap, KIND_GAP};
use tunnel_schemas::record::{self, Parts, RecordBatch};
use tunnel_schemas::subjects::{AUDIT_STREAM, RECORDING_STREAM, audit_all, recording};

use crate::event::TrailEvent;
use crate::filter::Filter;
use crate::json::ExchangeJson;

/// Largest stored message a reader decodes.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// A live reader this many events behind the log says so ...
const BEHIND_EVENTS: u64 = 1000;
/// ... at most this often.
const BEHIND_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Which log a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The audit records: one per public request, for every tunnel.
    Audit,
    /// The recorded exchanges, for recorded tunnels.
    Exchanges,
}

impl Source {
    /// The name used on the command line and in query strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Exchanges => "exchanges",
        }
    }
}

/// A trail query.
#[derive(Debug, Clone)]
pub struct Query {
    /// The tunnel.
    pub tunnel: String,
    /// Which log.
    pub source: Source,
    /// What to select.
    pub filter: Filter,
    /// Go on with new events once the end is reached.
    pub follow: bool,
    /// Only exchanges recorded for this owner key (access through the session-host).
    pub owner: Option<String>,
    /// Stop after this many events.
    pub limit: Option<usize>,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The stream is missing or JetStream did not answer.
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
}

/// Reads `query` from the log behind `js`.
///
/// # Errors
/// [`QueryError::Unavailable`] when the stream is missing or the consumer cannot be made.
pub async fn read(
    js: &jetstream::Context,
    query: Query,
) -> Result<impl Stream<Item = Result<TrailEvent, QueryError>> + Send + use<>, QueryError> {
    let (stream_name, subject) = match query.source {
        Source::Audit => (AUDIT_STREAM, audit_all(&query.tunnel)),
        Source::Exchanges => (RECORDING_STREAM, recording(&query.tunnel, "*")),
    };
    let stream = js.get_stream(stream_name).await.map_err(|e| {
        QueryError::Unavailable(format!("stream {stream_name}: {e} (nothing has been logged there yet?)"))
    })?;
    let deliver_policy = match query.filter.since_ms {
        Some(ms) => DeliverPolicy::ByStartTime { start_time: datetime(ms) },
        None if query.follow => DeliverPolicy::New,
        None => DeliverPolicy::All,
    };
    let consumer: Consumer<pull::OrderedConfig> = stream
        .create_consumer(pull::OrderedConfig { filter_subject: subject, deliver_policy, ..Default::default() })
        .await
        .map_err(|e| QueryError::Unavailable(e.to_string()))?;
    let at_end = !query.follow && consumer.cached_info().num_pending == 0;
    let messages = consumer.messages().await.map_err(|e| QueryError::Unavailable(e.to_string()))?;
    let reader = Reader {
        messages: Box::pin(messages),
        query,
        parts: Parts::default(),
        ready: VecDeque::new(),
        at_end,
        emitted: 0,
        last_behind: None,
    };
    Ok(futures_util::stream::unfold(reader, |mut reader| async move { reader.next().await.map(|e| (e, reader)) }))
}

type Messages =
    std::pin::Pin<Box<dyn Stream<Item = Result<jetstream::Message, jetstream::consumer::pull::OrderedError>> + Send>>;

struct Reader {
    messages: Messages,
    query: Query,
    parts: Parts,
    /// Events decoded and not yet yielded (an audit batch holds many).
    ready: VecDeque<TrailEvent>,
    /// The last message of a bounded query was read.
    at_end: bool,
    emitted: usize,
    last_behind: Option<Instant>,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<TrailEvent, QueryError>> {
        loop {
            if self.query.limit.is_some_and(|limit| self.emitted >= limit) {
                return None;
            }
            if let Some(event) = self.ready.pop_front() {
                self.emitted += 1;
                return Some(Ok(event));
            }
            if self.at_end {
                return None;
            }
            let message = match self.messages.next().await? {
                Ok(message) => message,
                Err(e) => return Some(Err(QueryError::Unavailable(e.to_string()))),
            };
            let Ok(info) = message.info() else { continue };
            let logged_ms = unix_ms(info.published);
            let pending = info.pending;
            if !self.query.follow && (pending == 0 || self.query.filter.until_ms.is_some_and(|until| logged_ms > until))
            {
                self.at_end = true;
            }
            if self.query.follow
                && pending >= BEHIND_EVENTS
                && self.last_behind.is_none_or(|at| at.elapsed() >= BEHIND_REPORT_INTERVAL)
            {
                self.last_behind = Some(Instant::now());
                self.ready.push_back(TrailEvent::Behind { pending });
            }
            if self.query.filter.in_range(logged_ms) {
                self.decode(&message);
            }
        }
    }

    fn decode(&mut self, message: &jetstream::Message) {
        let filter = &self.query.filter;
        let kind = message.subject.rsplit('.').next();
        if kind == Some(KIND_GAP) {
            match tunnel_schemas::decode::<Gap>(&message.payload, MAX_MESSAGE_BYTES) {
                Ok(gap) => self.ready.push_back(TrailEvent::Gap(gap)),
                Err(e) => tracing::warn!(error = %e, "undecodable gap event skipped"),
            }
            return;
        }
        if kind == Some(KIND_ACCESS) {
            self.push_event(message, TrailEvent::Access, "access");
            return;
        }
        if kind == Some(KIND_DATA) {
            self.push_event(message, TrailEvent::Data, "data");
            return;
        }
        match self.query.source {
            Source::Audit => match tunnel_schemas::decode::<AuditBatch>(&message.payload, MAX_MESSAGE_BYTES) {
                Ok(batch) => self
                    .ready
                    .extend(batch.records.into_iter().filter(|r| filter.matches_audit(r)).map(TrailEvent::Audit)),
                Err(e) => tracing::warn!(subject = %message.subject, error = %e, "undecodable audit batch skipped"),
            },
            Source::Exchanges => {
                let headers = message.headers.as_ref();
                let id = headers.and_then(|h| h.get(record::RECORD_ID_HEADER)).map_or("", |v| v.as_str());
                let part = headers
                    .and_then(|h| h.get(record::PART_HEADER))
                    .and_then(|v| record::parse_part_header(v.as_str()));
                let Some(whole) = self.parts.add(id, part, message.payload.clone()) else { return };
                match tunnel_schemas::decode::<RecordBatch>(&whole, MAX_MESSAGE_BYTES) {
                    Ok(batch) => {
                        let owner = self.query.owner.as_ref();
                        let selected = batch.records.iter().filter(|record| {
                            owner.is_none_or(|owner| *owner == record.owner) && filter.matches_exchange(record)
                        });
                        let events = selected.map(|record| TrailEvent::Exchange(Box::new(ExchangeJson::from(record))));
                        self.ready.extend(events);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable recording batch skipped"),
                }
            }
        }
    }
}

impl Reader {
    /// Queues the event `message` holds, unless the filter selects requests only.
    fn push_event<T: serde::de::DeserializeOwned>(
        &mut self,
        message: &jetstream::Message,
        wrap: fn(T) -> TrailEvent,
        what: &str,
    ) {
        if self.query.filter.selects_requests() {
            return;
        }
        match tunnel_schemas::decode::<T>(&message.payload, MAX_MESSAGE_BYTES) {
            Ok(event) => self.ready.push_back(wrap(event)),
            Err(e) => tracing::warn!(error = %e, kind = what, "undecodable event skipped"),
        }
    }
}

fn datetime(ms: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn unix_ms(at: time::OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}
