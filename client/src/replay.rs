//! Replaying recorded exchanges against a URL (a tunnel's public URL, so through the tunnel,
//! or any service), in recorded order, with bounded concurrency and the original pacing scaled
//! by a speed, each response optionally compared with the recorded one.
//!
//! A replayed request is the recorded one: method, raw target, headers in order with their
//! bytes, body. Proxy fields the tunnel added (`X-Forwarded-*`, `X-Request-Id`) are dropped
//! since the next hop adds its own, `Host` names the target, and the request gets a new
//! `X-Request-Id` and an `X-Replay-Of` naming the original (unless turned off). Masked headers
//! are filled from `--header`, or left out: a row of `*` is not a credential.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use serde::Serialize;
use tunnel_schemas::http::{Header, RequestHead};
use tunnel_schemas::record::{ExchangeRecord, REPLAY_OF_HEADER, RecordedResponse};
use tunnel_trail::compare::{CompareOptions, Comparison, compare};

use crate::forward::{Forwarder, LocalBody};
use crate::target::Target;

/// Request fields a hop adds itself, never replayed as recorded.
const HOP_FIELDS: [&str; 8] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    REPLAY_OF_HEADER,
    "content-length",
    "transfer-encoding",
];
/// Replayed response bytes kept for comparison beyond the recorded size.
const KEEP_BEYOND_RECORDED: usize = 1 << 20;

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Where requests go.
    pub target: Target,
    /// Requests in flight at once (at least 1).
    pub concurrency: usize,
    /// 1 replays at the recorded pace, 2 twice as fast, 0 as fast as possible.
    pub speed: f64,
    /// Send `X-Replay-Of` with the original request id.
    pub replay_header: bool,
    /// Headers set on every request, replacing recorded (or masked) values of the same name.
    pub headers: Vec<Header>,
    /// Compare each response with the recorded one.
    pub compare: Option<CompareOptions>,
    /// Send requests whose recorded body was cut with the part that was kept.
    pub send_cut: bool,
}

/// What became of one replayed exchange.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// The original request id.
    pub original: String,
    /// The replay's request id.
    pub request_id: String,
    /// Method.
    pub method: String,
    /// Raw target.
    pub target: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The outcome of one replay.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A response came back.
    Answered {
        /// Its status.
        status: u16,
        /// Time to the whole response, in milliseconds.
        duration_ms: f64,
        /// The comparison with the recorded response, when asked for and one was recorded.
        #[serde(skip_serializing_if = "Option::is_none")]
        comparison: Option<Comparison>,
        /// Masked headers that went out without a value (no `--header` for them).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        unfilled: Vec<String>,
    },
    /// Not sent.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Sent, but no response.
    Failed {
        /// Why.
        error: String,
    },
}

impl Replayed {
    /// Whether this replay counts against the run: a failure, a skip under `--compare`, or a
    /// mismatch.
    pub fn is_bad(&self, comparing: bool) -> bool {
        match &self.outcome {
            Outcome::Answered { comparison, .. } => comparison.as_ref().is_some_and(|c| !c.matches()),
            Outcome::Skipped { .. } => comparing,
            Outcome::Failed { .. } => true,
        }
    }

    /// The result for a terminal: one line, then the differences when there are any.
    pub fn human(&self) -> String {
        let what = format!("{} {} (replay of {} as {})", self.method, self.target, self.original, self.request_id);
        match &self.outcome {
            Outcome::Answered { status, duration_ms, comparison, unfilled } => {
                let mark = match comparison {
                    Some(c) if c.matches() => "match   ",
                    Some(_) => "MISMATCH",
                    None => "sent    ",
                };
                let mut text = format!("{mark} {status} {duration_ms:>8.1} ms  {what}");
                if !unfilled.is_empty() {
                    text.push_str(&format!(
                        "\n         masked in the recording and sent without: {} (use --header)",
                        unfilled.join(", ")
                    ));
                }
                if let Some(c) = comparison.as_ref().filter(|c| !c.matches() || !c.notes.is_empty()) {
                    for line in c.render().lines() {
                        text.push_str("\n         ");
                        text.push_str(line);
                    }
                }
                text
            }
            Outcome::Skipped { reason } => format!("skipped  {what}: {reason}"),
            Outcome::Failed { error } => format!("FAILED   {what}: {error}"),
        }
    }
}

/// Replays `records` as `options` say; results come in recorded order.
pub fn replay(records: Vec<ExchangeRecord>, options: ReplayOptions) -> impl Stream<Item = Replayed> {
    let forwarder = Forwarder::new(options.target.clone());
    let started = Instant::now();
    let first_ms = records.iter().map(|r| r.at_ms).min().unwrap_or(0);
    let concurrency = options.concurrency.max(1);
    let options = std::sync::Arc::new(options);
    futures_util::stream::iter(records)
        .map(move |record| {
            let (forwarder, options) = (forwarder.clone(), options.clone());
            let due = (options.speed > 0.0)
                .then(|| started + Duration::from_secs_f64((record.at_ms - first_ms) as f64 / 1000.0 / options.speed));
            async move {
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
                replay_one(&forwarder, record, &options).await
            }
        })
        .buffered(concurrency)
}

async fn replay_one(forwarder: &Forwarder, record: ExchangeRecord, options: &ReplayOptions) -> Replayed {
    let request_id = uuid::Uuid::now_v7().to_string();
    let mut replayed = Replayed {
        original: record.request_id.clone(),
        request_id: request_id.clone(),
        method: record.request.method.clone(),
        target: record.request.target.clone(),
        outcome: Outcome::Skipped { reason: String::new() },
    };
    if record.upgraded {
        replayed.outcome = Outcome::Skipped { reason: "an upgraded exchange (WebSocket) is not replayable".into() };
        return replayed;
    }
    if record.request.cut && !options.send_cut {
        let reason = format!(
            "the recorded request body was cut at {} of {} bytes (--send-cut sends the kept part)",
            record.request.body.len(),
            record.request.size
        );
        replayed.outcome = Outcome::Skipped { reason };
        return replayed;
    }
    let (head, unfilled) = request_head(&record, &request_id, options);
    let started = Instant::now();
    let response = match forwarder.send(head, LocalBody::whole(record.request.body.clone())).await {
        Ok(response) => response,
        Err(failure) => {
            replayed.outcome = Outcome::Failed { error: format!("{}: {}", failure.code, failure.detail) };
            return replayed;
        }
    };
    let keep = record.response.as_ref().map_or(0, |r| r.body.len()) + KEEP_BEYOND_RECORDED;
    let observed = match read_response(response, keep).await {
        Ok(observed) => observed,
        Err(e) => {
            replayed.outcome = Outcome::Failed { error: format!("response body: {e}") };
            return replayed;
        }
    };
    let comparison = options.compare.as_ref().and_then(|compare_options| {
        let recorded = record.response.as_ref()?;
        Some(compare(recorded, &record.masked, &observed, compare_options))
    });
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    replayed.outcome = Outcome::Answered { status: observed.status, duration_ms, comparison, unfilled };
    replayed
}

/// The head to send for `record`, and the masked headers left out for want of a value.
pub(crate) fn request_head(
    record: &ExchangeRecord,
    request_id: &str,
    options: &ReplayOptions,
) -> (RequestHead, Vec<String>) {
    let overridden = |name: &str| options.headers.iter().any(|Header(n, _)| n.eq_ignore_ascii_case(name));
    let mut unfilled: Vec<String> = Vec::new();
    let mut headers: Vec<Header> = Vec::with_capacity(record.request.headers.len() + 4);
    for Header(name, value) in &record.request.headers {
        if HOP_FIELDS.contains(&name.as_str()) || overridden(name) {
            continue;
        }
        if record.masked.iter().any(|m| m.eq_ignore_ascii_case(name)) {
            if !unfilled.contains(name) {
                unfilled.push(name.clone());
            }
            continue;
        }
        headers.push(Header(name.clone(), value.clone()));
    }
    headers.extend(options.headers.iter().cloned());
    headers.push(Header("x-request-id".into(), Bytes::copy_from_slice(request_id.as_bytes())));
    if options.replay_header {
        headers.push(Header(REPLAY_OF_HEADER.into(), Bytes::copy_from_slice(record.request_id.as_bytes())));
    }
    let head = RequestHead { method: record.request.method.clone(), target: record.request.target.clone(), headers };
    (head, unfilled)
}

/// Reads a response, keeping up to `keep` body bytes and counting the rest.
pub(crate) async fn read_response(
    response: http::Response<hyper::body::Incoming>,
    keep: usize,
) -> Result<RecordedResponse, hyper::Error> {
    let (parts, mut body) = response.into_parts();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| Header(name.as_str().to_owned(), Bytes::copy_from_slice(value.as_bytes())))
        .collect();
    let (mut kept, mut size) = (Vec::new(), 0_u64);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            size += data.len() as u64;
            let room = keep.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    let cut = size > kept.len() as u64;
    Ok(RecordedResponse { status: parts.status.as_u16(), headers, body: kept.into(), size, cut })
}
