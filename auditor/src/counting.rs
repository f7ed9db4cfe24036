//! The leader's loop: pull a batch of audit messages, store what they count, decide the touched
//! quotas, acknowledge; follow the operator's limits; evaluate lapsed states.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tunnel_schemas::now_ms;
use tunnel_schemas::pattern::Glob;
use tunnel_schemas::usage::{Period, Scope};

use crate::buckets::Buckets;
use crate::config::AuditorConfig;
use crate::counters::{Applied, Counters};
use crate::lease::Lease;
use crate::quotas::Quotas;
use crate::tally::{Arrival, Sequencer, Tally};

/// Messages one pull request asks for.
const PULL_BATCH: usize = 512;
/// Messages counted and stored together, at most (fewer when fewer have arrived).
const CHUNK: usize = 1024;
/// How often lapsed quota states and failed evaluations are looked at.
const TICK: Duration = Duration::from_millis(500);
/// Wait before storing again after a failure.
const RETRY: Duration = Duration::from_millis(200);
/// Wait before asking for the lease again after a leadership ended in an error.
const PAUSE_AFTER_ERROR: Duration = Duration::from_secs(1);

/// What the leader needs.
pub struct Counting {
    audit: Stream,
    buckets: Buckets,
    minute_ms: u64,
    defaults: (tunnel_schemas::usage::QuotaLimits, tunnel_schemas::usage::QuotaLimits),
    exported_tunnels: Vec<Glob>,
    exported_accounts: Vec<Glob>,
}

impl Counting {
    /// The counting of `audit` into `buckets` with the settings of `config`.
    pub fn new(audit: Stream, buckets: Buckets, config: &AuditorConfig) -> Self {
        let patterns =
            |list: &str| list.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| Glob(p.to_owned())).collect();
        Self {
            audit,
            buckets,
            minute_ms: config.minute_ms(),
            defaults: (config.tunnel_limits(), config.account_limits()),
            exported_tunnels: patterns(&config.usage_metrics_tunnels),
            exported_accounts: patterns(&config.usage_metrics_accounts),
        }
    }
}

/// Stands by for the lease, counts while holding it, and again, until `shutdown`.
pub async fn serve(counting: Counting, holder: &str, shutdown: &CancellationToken) {
    loop {
        let Some(lease) = Lease::acquire(&counting.buckets.leader, holder, shutdown).await else { return };
        tracing::info!(holder, "leading: counting usage");
        metrics::gauge!("auditor_leader").set(1.0);
        metrics::counter!("auditor_leader_terms_total").increment(1);
        let outcome = lead(&counting, &lease, shutdown).await;
        metrics::gauge!("auditor_leader").set(0.0);
        lease.release().await;
        if shutdown.is_cancelled() {
            return;
        }
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "leadership ended; standing by");
            tokio::select! {
                () = tokio::time::sleep(PAUSE_AFTER_ERROR) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// One leadership: until the lease is lost, `shutdown`, or an error.
async fn lead(counting: &Counting, lease: &Lease, shutdown: &CancellationToken) -> Result<(), String> {
    let consumer = crate::stream::rewind(&counting.audit).await.map_err(|e| e.to_string())?;
    let mut counters = Counters::new(counting.buckets.usage.clone());
    let state = counting.buckets.quota_state.clone();
    let mut quotas = Quotas::load(state, counting.defaults, counting.minute_ms).await?;
    let mut limits = counting.buckets.quotas.watch_with_history(">").await.map_err(|e| e.to_string())?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut chunks = messages.ready_chunks(CHUNK);
    let mut sequencer = Sequencer::default();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            biased;
            () = lease.lost() => return Ok(()),
            () = shutdown.cancelled() => return Ok(()),
            entry = limits.next() => {
                let entry = entry.ok_or("the quota watch ended")?.map_err(|e| e.to_string())?;
                if let Some(scope) = quotas.apply_limits(&entry) {
                    quotas.evaluate(&scope, &mut counters, now_ms()).await;
                }
            }
            chunk = chunks.next() => {
                let chunk = chunk.ok_or("the audit pull ended")?;
                let mut batch = Batch { counting, lease, counters: &mut counters, quotas: &mut quotas };
                batch.count(chunk, &mut sequencer).await?;
            }
            _ = tick.tick() => quotas.tick(&mut counters, now_ms()).await,
        }
    }
}

/// The handling of one chunk of messages.
struct Batch<'a> {
    counting: &'a Counting,
    lease: &'a Lease,
    counters: &'a mut Counters,
    quotas: &'a mut Quotas,
}

type Pulled = Result<jetstream::Message, async_nats::jetstream::consumer::pull::MessagesError>;

impl Batch<'_> {
    /// Counts the messages of `chunk` up to the first error, stores the counters, evaluates the
    /// touched scopes' quotas, then acknowledges the messages; returns the error, if any, after.
    async fn count(&mut self, chunk: Vec<Pulled>, sequencer: &mut Sequencer) -> Result<(), String> {
        let mut tally = Tally::default();
        let mut received = Vec::with_capacity(chunk.len());
        let mut failure = None;
        for message in chunk {
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    failure = Some(format!("audit pull failed: {e}"));
                    break;
                }
            };
            let Ok(info) = message.info().map(|info| (info.stream_sequence, info.delivered)) else {
                metrics::counter!("auditor_undecodable_total").increment(1);
                continue;
            };
            if let Err(gap) = arrival(sequencer.see(info.0, info.1), info.0) {
                failure = Some(gap);
                break;
            }
            match tally.add_message(info.0, &message.subject, &message.payload, self.counting.minute_ms) {
                Ok(records) => metrics::counter!("auditor_events_total").increment(records as u64),
                Err(e) => {
                    metrics::counter!("auditor_undecodable_total").increment(1);
                    tracing::warn!(subject = %message.subject, seq = info.0, error = %e, "audit message skipped");
                }
            }
            received.push(message);
        }
        let applied = self.store(&tally).await?;
        self.export(&applied);
        let scopes: BTreeSet<&Scope> = tally.counters.values().map(|pending| &pending.scope).collect();
        let now = now_ms();
        for scope in scopes {
            self.quotas.evaluate(scope, self.counters, now).await;
        }
        for message in received {
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %e, "audit message not acknowledged; it will come again and be skipped");
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Stores `tally`, trying again until it is stored or the lease is lost.
    async fn store(&mut self, tally: &Tally) -> Result<Vec<Applied>, String> {
        loop {
            if !self.lease.valid() {
                return Err("the leader lease lapsed before the counters were stored".into());
            }
            match self.counters.store(tally).await {
                Ok(applied) => return Ok(applied),
                Err(e) => {
                    metrics::counter!("auditor_store_failures_total").increment(1);
                    tracing::warn!(error = %e, "usage counters not stored; trying again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Counts the applied records in the metrics: every record once (its tunnel's minute
    /// counter), and the totals of the exported tunnels and accounts.
    fn export(&self, applied: &[Applied]) {
        for applied in applied.iter().filter(|applied| applied.period == Period::Minute) {
            let added = &applied.added;
            let (label, name, exported) = match &applied.scope {
                Scope::Tunnel(name) => {
                    metrics::counter!("auditor_records_total").increment(added.records);
                    ("tunnel", name, &self.counting.exported_tunnels)
                }
                Scope::Account(name) => ("account", name, &self.counting.exported_accounts),
            };
            if !exported.iter().any(|glob| glob.matches(name)) {
                continue;
            }
            let counter = &added.counter;
            let name = name.clone();
            metrics::counter!("auditor_usage_requests_total", label => name.clone()).increment(counter.requests);
            metrics::counter!("auditor_usage_bytes_total", label => name.clone(), "direction" => "in")
                .increment(counter.bytes_in);
            metrics::counter!("auditor_usage_bytes_total", label => name.clone(), "direction" => "out")
                .increment(counter.bytes_out);
            metrics::counter!("auditor_usage_replay_requests_total", label => name.clone())
                .increment(counter.replay_requests);
            for (code, n) in &counter.refused {
                metrics::counter!("auditor_usage_refused_total", label => name.clone(), "code" => code.clone())
                    .increment(*n);
            }
        }
    }
}

/// Counts a redelivery, and logs a delivery out of stream order (which the design rules out);
/// a message delivered past a lost one is an error that ends the leadership before it is counted.
fn arrival(arrival: Arrival, seq: u64) -> Result<(), String> {
    match arrival {
        Arrival::InOrder => {}
        Arrival::Redelivered => metrics::counter!("auditor_redelivered_total").increment(1),
        Arrival::OutOfOrder => {
            metrics::counter!("auditor_out_of_order_total").increment(1);
            tracing::error!(seq, "audit message delivered out of stream order");
        }
        Arrival::Gap => {
            metrics::counter!("auditor_delivery_gaps_total").increment(1);
            return Err(format!(
                "audit message {seq} arrived before an earlier one; counting again from the acknowledgement floor"
            ));
        }
    }
    Ok(())
}
