//! What the event log holds, read back the way an operator would: the audit records of a tunnel
//! in the `AUDIT` stream and its usage counters in the `tunnel_usage` bucket.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tunnel_schemas::audit::{AuditBatch, RequestAudit};
use tunnel_schemas::usage::{Period, UsageCounter};

use crate::{DEADLINE, within};

/// The audit records of tunnel `name`, as the ingress stored them, read until `enough` says so.
///
/// # Panics
/// When `enough` is not satisfied within [`DEADLINE`].
pub async fn audit_records(
    js: &jetstream::Context,
    name: &str,
    enough: impl Fn(&[RequestAudit]) -> bool,
) -> Vec<RequestAudit> {
    let stream = js.get_stream("AUDIT").await.expect("audit stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("audit.{name}.req"),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut records = Vec::new();
    while !enough(&records) {
        let message = within(DEADLINE, "audit records", messages.next()).await.expect("a message").expect("ok");
        let batch: AuditBatch = tunnel_schemas::decode(&message.payload, usize::MAX).expect("a batch");
        records.extend(batch.records);
    }
    records
}

/// Sums of `counters` per period: (requests, bytes in, bytes out).
pub fn sums(counters: &BTreeMap<String, UsageCounter>) -> BTreeMap<&'static str, (u64, u64, u64)> {
    let mut sums = BTreeMap::new();
    for (key, counter) in counters {
        let period = Period::ALL.into_iter().find(|p| key.contains(&format!(".{}.", p.as_str()))).expect("a period");
        let sum: &mut (u64, u64, u64) = sums.entry(period.as_str()).or_default();
        sum.0 += counter.requests;
        sum.1 += counter.bytes_in;
        sum.2 += counter.bytes_out;
    }
    sums
}

/// Follows the counters of tunnel `name` until every period sums to `requests`; returns them.
///
/// # Panics
/// When they do not within 60 s.
pub async fn counters_reach(usage: &kv::Store, name: &str, requests: u64) -> BTreeMap<String, UsageCounter> {
    let mut watch = usage.watch_with_history(format!("t.{name}.>")).await.expect("watch");
    let mut counters = BTreeMap::new();
    within(Duration::from_secs(60), "the counters to reach the total", async {
        while let Some(entry) = watch.next().await {
            let entry = entry.expect("entry");
            counters.insert(entry.key.clone(), tunnel_schemas::decode(&entry.value, usize::MAX).expect("a counter"));
            let sums = sums(&counters);
            if sums.len() == 4 && sums.values().all(|sum| sum.0 >= requests) {
                return;
            }
        }
    })
    .await;
    counters
}
