//! Audit records turned into counter increments, and increments applied exactly once.
//!
//! A [`Tally`] gathers the messages of one pull: for every counter they touch (a scope, a
//! period, its start) it keeps one increment per stream sequence. [`apply`] adds to a stored
//! counter only the increments of sequences after its `last_seq`, so a message applied before
//! (a redelivery, or a batch a crashed leader stored in part) is never counted twice.
//!
//! What a record counts as:
//! - a **request** (with its bytes, heads included) when it reached the tunnel's client: no
//!   error, or an error of the service path after it was forwarded ([`reached_tunnel`]);
//! - in **refused**, by code, whenever it carries an error (so an `upstream_timeout` counts as a
//!   request and in `refused`, a `quota_exceeded` only in `refused`);
//! - a **replay** (`replay: true`) counts only in `replay_requests` and `replay_bytes`.

use std::collections::BTreeMap;

use tunnel_schemas::ErrorCode;
use tunnel_schemas::audit::{AuditBatch, KIND_REQUEST, RequestAudit};
use tunnel_schemas::usage::{Period, Scope, UsageCounter, usage_key};

/// Largest audit message decoded.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Whether a record with `error` reached the tunnel's client, and so counts as a request: no
/// error, or one that arose after the ingress forwarded it (the client or its local service
/// failed, or the public client hung up). Refusals by the ingress (no tunnel, rate limits,
/// policies, quotas, bad requests) do not count.
pub fn reached_tunnel(error: Option<ErrorCode>) -> bool {
    match error {
        None => true,
        Some(code) => matches!(
            code,
            ErrorCode::TunnelDisconnected
                | ErrorCode::HostUnresponsive
                | ErrorCode::UpstreamUnreachable
                | ErrorCode::UpstreamBadResponse
                | ErrorCode::UpstreamTimeout
                | ErrorCode::ResponseTooLarge
                | ErrorCode::Cancelled
        ),
    }
}

/// What one record adds to each of its counters.
pub fn increment(record: &RequestAudit) -> UsageCounter {
    let bytes = (record.head_in.saturating_add(record.bytes_in), record.head_out.saturating_add(record.bytes_out));
    let mut counter = UsageCounter::default();
    if record.replay {
        counter.replay_requests = 1;
        counter.replay_bytes = bytes.0.saturating_add(bytes.1);
        return counter;
    }
    if let Some(code) = record.error {
        counter.refused.insert(code.as_str().to_owned(), 1);
    }
    if reached_tunnel(record.error) {
        counter.requests = 1;
        (counter.bytes_in, counter.bytes_out) = bytes;
    }
    counter
}

/// Adds `more` to `counter` (not its `last_seq`), saturating: a record claiming absurd sizes
/// pins a counter at its maximum rather than panicking or wrapping.
pub fn add(counter: &mut UsageCounter, more: &UsageCounter) {
    let sum = |a: &mut u64, b: u64| *a = a.saturating_add(b);
    sum(&mut counter.requests, more.requests);
    sum(&mut counter.bytes_in, more.bytes_in);
    sum(&mut counter.bytes_out, more.bytes_out);
    for (code, n) in &more.refused {
        sum(counter.refused.entry(code.clone()).or_default(), *n);
    }
    sum(&mut counter.replay_requests, more.replay_requests);
    sum(&mut counter.replay_bytes, more.replay_bytes);
}

/// One message's increment of one counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Increment {
    /// Records of the message counted in it.
    pub records: u64,
    /// What they add.
    pub counter: UsageCounter,
}

/// The increments of one counter, by stream sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Whose counter.
    pub scope: Scope,
    /// Its period.
    pub period: Period,
    /// Start of the period, Unix milliseconds.
    pub start_ms: u64,
    /// Increments by stream sequence (a redelivered message replaces its first copy).
    pub increments: BTreeMap<u64, Increment>,
}

/// Applies to `counter` the increments of sequences after its `last_seq`, in order, and moves
/// `last_seq` to the last one; returns what was applied (nothing when all were applied before).
pub fn apply(counter: &mut UsageCounter, increments: &BTreeMap<u64, Increment>) -> Increment {
    let mut applied = Increment::default();
    for (&seq, increment) in increments.range(counter.last_seq + 1..) {
        add(counter, &increment.counter);
        applied.records += increment.records;
        add(&mut applied.counter, &increment.counter);
        counter.last_seq = seq;
    }
    applied
}

/// How a message arrived relative to the ones before it in this leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// After every message seen so far: the normal case.
    InOrder,
    /// Again (its acknowledgement was lost or late): already stored, skipped by `last_seq`.
    Redelivered,
    /// A first delivery behind a later message. The consumer is rewound to its
    /// acknowledgement floor when a leadership starts and a message is acknowledged only after
    /// it was stored, so this never happens; it is counted (`auditor_out_of_order_total`) and
    /// logged should it ever.
    OutOfOrder,
    /// Beyond the next sequence: the delivery of a message before it was lost (with a NATS node
    /// that went down). Counting it would make the missing one look already applied when it
    /// comes again, so the leadership ends before it and starts over from the consumer's
    /// acknowledgement floor. The consumer reads every subject of the stream, so its sequences
    /// have no holes but those an operator deleted (each costs one such restart).
    Gap,
}

/// The highest stream sequence seen in a leadership.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sequencer {
    high: u64,
}

impl Sequencer {
    /// Classifies the message with stream sequence `seq`, delivered `delivered` times.
    pub fn see(&mut self, seq: u64, delivered: i64) -> Arrival {
        if self.high > 0 && seq > self.high + 1 {
            Arrival::Gap
        } else if seq > self.high {
            self.high = seq;
            Arrival::InOrder
        } else if delivered > 1 {
            Arrival::Redelivered
        } else {
            Arrival::OutOfOrder
        }
    }
}

/// What a pull of audit messages adds to which counters.
#[derive(Debug, Default)]
pub struct Tally {
    /// Counters touched, by KV key.
    pub counters: BTreeMap<String, Pending>,
    /// Messages that were not audit batches of requests (access events, gaps) or could not
    /// be decoded; acknowledged without counting.
    pub ignored: u64,
    /// Sequences added: a message delivered twice within one pull is added once.
    seqs: std::collections::HashSet<u64>,
}

/// Why a message was not counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TallyError {
    /// Not an audit batch nor a single record.
    #[error("undecodable audit batch: {0}")]
    Undecodable(String),
}

impl Tally {
    /// Adds the message stored at `seq` on `subject`: an [`AuditBatch`] of requests (or a
    /// single [`RequestAudit`] from an ingress older than batching). Access events and gaps
    /// count nothing. `minute_ms` is the length of the "minute".
    ///
    /// Returns the number of records read.
    ///
    /// # Errors
    /// [`TallyError::Undecodable`]; the message counts nothing.
    pub fn add_message(
        &mut self,
        seq: u64,
        subject: &str,
        payload: &[u8],
        minute_ms: u64,
    ) -> Result<usize, TallyError> {
        if !self.seqs.insert(seq) {
            return Ok(0);
        }
        if subject.rsplit('.').next() != Some(KIND_REQUEST) {
            self.ignored += 1;
            return Ok(0);
        }
        let batch = tunnel_schemas::decode::<AuditBatch>(payload, MAX_MESSAGE_BYTES).or_else(|e| {
            tunnel_schemas::decode::<RequestAudit>(payload, MAX_MESSAGE_BYTES)
                .map(|record| AuditBatch { v: record.v, records: vec![record] })
                .map_err(|_| TallyError::Undecodable(e.to_string()))
        });
        let batch = batch.inspect_err(|_| self.ignored += 1)?;
        for record in &batch.records {
            tracing::debug!(
                tunnel = %record.tunnel,
                request_id = %record.request_id,
                method = %record.method,
                path = %record.path,
                status = record.status,
                error = record.error.map(|code| code.as_str()),
                bytes_in = record.bytes_in,
                bytes_out = record.bytes_out,
                duration_us = record.duration_us,
                "audit"
            );
            self.add_record(seq, record, minute_ms);
        }
        Ok(batch.records.len())
    }

    /// Adds one record of the message at `seq` to the counters of its tunnel and account.
    fn add_record(&mut self, seq: u64, record: &RequestAudit, minute_ms: u64) {
        let increment = increment(record);
        let account = record.account.as_deref().filter(|account| valid_key_token(account));
        let scopes = [
            valid_key_token(&record.tunnel).then(|| Scope::Tunnel(record.tunnel.clone())),
            account.map(|account| Scope::Account(account.to_owned())),
        ];
        for scope in scopes.into_iter().flatten() {
            for period in Period::ALL {
                let start_ms = period.start(record.at_ms, minute_ms);
                let key = usage_key(&scope, period, start_ms);
                let pending = self.counters.entry(key).or_insert_with(|| Pending {
                    scope: scope.clone(),
                    period,
                    start_ms,
                    increments: BTreeMap::new(),
                });
                let slot = pending.increments.entry(seq).or_default();
                slot.records += 1;
                add(&mut slot.counter, &increment);
            }
        }
    }

    /// Whether it counts nothing.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }
}

/// Whether `text` can be one token of a KV key: not empty, of `[-_=a-zA-Z0-9]`.
fn valid_key_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;
    /// 2026-11-30T19:05:31.250Z.
    const AT: u64 = 1_796_065_531_250;

    fn record(tunnel: &str, error: Option<ErrorCode>, sizes: (u64, u64, u64, u64)) -> RequestAudit {
        RequestAudit {
            v: 1,
            request_id: "r".into(),
            tunnel: tunnel.into(),
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            error,
            bytes_in: sizes.0,
            bytes_out: sizes.1,
            duration_us: 1,
            remote_addr: "127.0.0.1".into(),
            at_ms: AT,
            account: Some("acme".into()),
            replay: false,
            head_in: sizes.2,
            head_out: sizes.3,
        }
    }

    fn message(records: Vec<RequestAudit>) -> Vec<u8> {
        tunnel_schemas::encode(&AuditBatch { v: 1, records })
    }

    fn minute_key() -> String {
        usage_key(&Scope::Tunnel("demo".into()), Period::Minute, Period::Minute.start(AT, MINUTE))
    }

    #[test]
    fn a_record_counts_for_its_tunnel_and_account_in_every_period_with_heads() {
        let mut tally = Tally::default();
        let payload = message(vec![record("demo", None, (10, 20, 100, 200))]);
        tally.add_message(7, "audit.demo.req", &payload, MINUTE).expect("decodes");
        assert_eq!(tally.counters.len(), 8, "two scopes, four periods: {:?}", tally.counters.keys());
        let mut counter = UsageCounter::default();
        let applied = apply(&mut counter, &tally.counters[&minute_key()].increments);
        assert_eq!((counter.requests, counter.bytes_in, counter.bytes_out, counter.last_seq), (1, 110, 220, 7));
        assert_eq!(applied.records, 1);
        assert!(tally.counters.contains_key(&usage_key(
            &Scope::Account("acme".into()),
            Period::Month,
            1_793_491_200_000
        )));
    }

    #[test]
    fn a_redelivered_message_is_not_counted_twice() {
        let mut counter = UsageCounter::default();
        let mut first = Tally::default();
        for seq in 1..=3 {
            let payload = message(vec![record("demo", None, (1, 1, 0, 0)); 2]);
            first.add_message(seq, "audit.demo.req", &payload, MINUTE).expect("decodes");
        }
        assert_eq!(apply(&mut counter, &first.counters[&minute_key()].increments).records, 6);
        // The acknowledgements were lost: 2 and 3 come again, with 4 new.
        let mut again = Tally::default();
        for seq in [2, 3, 4, 4] {
            let payload = message(vec![record("demo", None, (1, 1, 0, 0)); 2]);
            again.add_message(seq, "audit.demo.req", &payload, MINUTE).expect("decodes");
        }
        let applied = apply(&mut counter, &again.counters[&minute_key()].increments);
        assert_eq!(applied.records, 2, "only message 4, once");
        assert_eq!((counter.requests, counter.bytes_in, counter.last_seq), (8, 8, 4));
        assert_eq!(apply(&mut counter, &again.counters[&minute_key()].increments), Increment::default());
    }

    #[test]
    fn a_batch_stored_in_part_by_a_crashed_leader_is_completed_exactly() {
        // The crashed leader stored the tunnel's minute counter up to 5 but not its hour counter.
        let mut tally = Tally::default();
        for seq in 3..=8 {
            tally
                .add_message(seq, "audit.demo.req", &message(vec![record("demo", None, (0, 0, 0, 0))]), MINUTE)
                .expect("ok");
        }
        let mut minute = UsageCounter { requests: 5, last_seq: 5, ..Default::default() };
        let mut hour = UsageCounter { requests: 2, last_seq: 2, ..Default::default() };
        apply(&mut minute, &tally.counters[&minute_key()].increments);
        let hour_key = usage_key(&Scope::Tunnel("demo".into()), Period::Hour, Period::Hour.start(AT, MINUTE));
        apply(&mut hour, &tally.counters[&hour_key].increments);
        assert_eq!((minute.requests, hour.requests), (8, 8));
    }

    #[test]
    fn refusals_count_by_code_and_only_requests_that_reached_the_tunnel_count_bytes() {
        let refused = increment(&record("demo", Some(ErrorCode::QuotaExceeded), (5, 50, 10, 100)));
        assert_eq!((refused.requests, refused.bytes_in, refused.bytes_out), (0, 0, 0));
        assert_eq!(refused.refused.get("quota_exceeded"), Some(&1));
        let failed = increment(&record("demo", Some(ErrorCode::UpstreamTimeout), (5, 50, 10, 100)));
        assert_eq!((failed.requests, failed.bytes_in, failed.bytes_out), (1, 15, 150));
        assert_eq!(failed.refused.get("upstream_timeout"), Some(&1));
        let replay = increment(&RequestAudit { replay: true, ..record("demo", None, (5, 50, 10, 100)) });
        assert_eq!((replay.requests, replay.replay_requests, replay.replay_bytes), (0, 1, 165));
        assert!(replay.refused.is_empty());
    }

    #[test]
    fn messages_other_than_request_batches_count_nothing() {
        let mut tally = Tally::default();
        tally.add_message(1, "audit.demo.access", b"whatever", MINUTE).expect("ignored");
        assert!(tally.add_message(2, "audit.demo.req", b"\xc1garbage", MINUTE).is_err());
        let odd = record("bad.name", None, (0, 0, 0, 0));
        tally.add_message(3, "audit.x.req", &message(vec![RequestAudit { account: None, ..odd }]), MINUTE).expect("ok");
        assert!(tally.is_empty(), "{:?}", tally.counters.keys());
        assert_eq!(tally.ignored, 2);
    }

    #[test]
    fn absurd_sizes_and_times_do_not_panic() {
        let mut tally = Tally::default();
        let huge = RequestAudit { at_ms: u64::MAX, ..record("demo", None, (u64::MAX, u64::MAX, u64::MAX, u64::MAX)) };
        tally.add_message(1, "audit.demo.req", &message(vec![huge.clone(), huge]), MINUTE).expect("decodes");
        let mut counter = UsageCounter::default();
        let pending = tally.counters.values().next().expect("a counter");
        apply(&mut counter, &pending.increments);
        assert_eq!((counter.requests, counter.bytes_in), (2, u64::MAX));
    }

    #[test]
    fn deliveries_arrive_in_stream_order() {
        let mut sequencer = Sequencer::default();
        assert_eq!(sequencer.see(5, 1), Arrival::InOrder, "a leadership starts anywhere");
        assert_eq!(sequencer.see(6, 1), Arrival::InOrder);
        assert_eq!(sequencer.see(9, 1), Arrival::Gap, "7 and 8 were not delivered");
        assert_eq!(sequencer.see(7, 1), Arrival::InOrder, "the gap is not taken as seen");
        assert_eq!(sequencer.see(5, 2), Arrival::Redelivered);
        assert_eq!(sequencer.see(4, 1), Arrival::OutOfOrder);
    }
}
