//! A node's presence record ([`tunnel_schemas::presence`]), written every few seconds while the
//! node runs and deleted when it stops, so `tunnel admin status` sees what runs. Failures are
//! logged and retried at the next interval: presence never stops a service.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio_util::sync::CancellationToken;
use tunnel_schemas::presence::{ANNOUNCE_INTERVAL_SECS, NODE_TTL_SECS, NODES_BUCKET, NodeRecord, node_key};

/// Who a node is, for its presence record.
#[derive(Debug, Clone)]
pub struct Node {
    /// `ingress`, `session-host` or `auditor`.
    pub role: &'static str,
    /// Its node id.
    pub id: String,
    /// The version of its binary.
    pub version: &'static str,
}

/// Writes `node`'s record every [`ANNOUNCE_INTERVAL_SECS`] until `shutdown`, then deletes it;
/// `sessions` says how many sessions it holds, for the roles that hold some. Run it as a task.
pub async fn announce(
    nats: async_nats::Client,
    node: Node,
    sessions: impl Fn() -> Option<u64>,
    shutdown: CancellationToken,
) {
    let js = jetstream::new(nats.clone());
    let key = node_key(node.role, &node.id);
    let started_ms = tunnel_schemas::now_ms();
    let mut bucket = None;
    let mut every = tokio::time::interval(Duration::from_secs(ANNOUNCE_INTERVAL_SECS));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => break,
        }
        if bucket.is_none() {
            bucket = open(&js, &nats).await;
        }
        let Some(store) = &bucket else { continue };
        let record = NodeRecord {
            role: node.role.to_owned(),
            node: node.id.clone(),
            version: node.version.to_owned(),
            started_ms,
            at_ms: tunnel_schemas::now_ms(),
            sessions: sessions(),
        };
        if let Err(e) = store.put(&key, tunnel_schemas::encode(&record).into()).await {
            tracing::debug!(error = %e, "presence record not written");
        }
    }
    if let Some(store) = bucket {
        let _ = store.delete(&key).await;
    }
}

/// The bucket, created when missing with as many replicas as the cluster has servers, up to 3.
async fn open(js: &jetstream::Context, nats: &async_nats::Client) -> Option<kv::Store> {
    if let Ok(store) = js.get_key_value(NODES_BUCKET).await {
        return Some(store);
    }
    let servers = nats.server_info().connect_urls.len() + 1;
    let config = kv::Config {
        bucket: NODES_BUCKET.into(),
        description: "running http-tunnel nodes".into(),
        history: 1,
        max_age: Duration::from_secs(NODE_TTL_SECS),
        num_replicas: servers.min(3),
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Some(store),
        Err(e) => match js.get_key_value(NODES_BUCKET).await {
            Ok(store) => Some(store),
            Err(_) => {
                tracing::debug!(error = %e, "presence bucket unavailable");
                None
            }
        },
    }
}
