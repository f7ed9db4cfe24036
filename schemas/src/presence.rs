//! Presence of the running nodes: each ingress, session-host and auditor keeps a record in the
//! KV bucket [`NODES_BUCKET`] under `<role>.<node id>`, written every
//! [`ANNOUNCE_INTERVAL_SECS`] seconds and gone [`NODE_TTL_SECS`] seconds after the last write,
//! so `tunnel admin status` lists what runs now.

use serde::{Deserialize, Serialize};

/// Name of the KV bucket of node records.
pub const NODES_BUCKET: &str = "tunnel_nodes";
/// Seconds between two writes of a node's record.
pub const ANNOUNCE_INTERVAL_SECS: u64 = 10;
/// Seconds a record lives after its last write (the bucket's `max_age`).
pub const NODE_TTL_SECS: u64 = 30;

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `ingress`, `session-host` or `auditor`.
    pub role: String,
    /// Its node id.
    pub node: String,
    /// The version of its binary.
    pub version: String,
    /// Unix time it started, in milliseconds.
    pub started_ms: u64,
    /// Unix time of this record, in milliseconds.
    pub at_ms: u64,
    /// Sessions it holds (session-hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
}

/// The key of a node's record: `<role>.<node id>`.
pub fn node_key(role: &str, node: &str) -> String {
    format!("{role}.{node}")
}
