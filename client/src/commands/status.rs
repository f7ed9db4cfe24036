//! `tunnel admin status`: the system as NATS sees it. The servers of the cluster, every stream
//! with its replicas and how far each lags, the durable consumers and their backlogs, the running
//! nodes (from their presence records) with the sessions each session-host holds, and the leases.

use std::time::Duration;

use async_nats::jetstream;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tunnel_schemas::presence::{NODES_BUCKET, NodeRecord};
use tunnel_schemas::subjects::LEASES_BUCKET;

use super::admin::Refusal;

/// Prints the status of the system behind `js` (`nats`: the same connection).
///
/// # Errors
/// The refusal when JetStream does not answer.
pub async fn show(nats: &async_nats::Client, js: &jetstream::Context, json_lines: bool) -> Result<(), Refusal> {
    let unavailable = |e: &dyn std::fmt::Display| ("unavailable", e.to_string());
    let server = nats.server_info();
    let streams: Vec<jetstream::stream::Info> = js.streams().try_collect().await.map_err(|e| unavailable(&e))?;
    let mut stream_rows = Vec::new();
    for info in &streams {
        let stream = js.get_stream(&info.config.name).await.map_err(|e| unavailable(&e))?;
        let consumers: Vec<_> = stream.consumers().try_collect().await.map_err(|e| unavailable(&e))?;
        let durable: Vec<Value> = consumers
            .iter()
            .filter(|consumer| consumer.config.durable_name.is_some())
            .map(|consumer| {
                json!({ "name": consumer.name, "pending": consumer.num_pending, "unacknowledged": consumer.num_ack_pending })
            })
            .collect();
        let replicas: Vec<Value> = info.cluster.iter().flat_map(|cluster| &cluster.replicas).map(|peer| {
            json!({ "server": peer.name, "current": peer.current, "offline": peer.offline, "lag": peer.lag.unwrap_or(0) })
        }).collect();
        stream_rows.push(json!({
            "name": info.config.name,
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "replicas": info.config.num_replicas,
            "leader": info.cluster.as_ref().and_then(|cluster| cluster.leader.clone()),
            "followers": replicas,
            "consumers": durable,
        }));
    }
    let nodes = nodes(js).await;
    let leases = match js.get_key_value(LEASES_BUCKET).await {
        Ok(store) => store.keys().await.map_err(|e| unavailable(&e))?.count().await,
        Err(_) => 0,
    };
    let status = json!({
        "server": { "name": server.server_name, "version": server.version, "others": server.connect_urls },
        "streams": stream_rows,
        "nodes": nodes,
        "tunnels": leases,
    });
    if json_lines {
        println!("{status}");
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}

/// The running nodes, by role and id.
async fn nodes(js: &jetstream::Context) -> Vec<Value> {
    let Ok(store) = js.get_key_value(NODES_BUCKET).await else { return Vec::new() };
    let Ok(keys) = store.keys().await else { return Vec::new() };
    let mut keys: Vec<String> = keys.filter_map(|key| async move { key.ok() }).collect().await;
    keys.sort();
    let now = tunnel_schemas::now_ms();
    let mut nodes = Vec::new();
    for key in keys {
        let Ok(Some(value)) = store.get(&key).await else { continue };
        let Ok(record) = tunnel_schemas::decode::<NodeRecord>(&value, 64 << 10) else { continue };
        nodes.push(json!({
            "role": record.role,
            "node": record.node,
            "version": record.version,
            "up_secs": now.saturating_sub(record.started_ms) / 1000,
            "seen_secs_ago": now.saturating_sub(record.at_ms) / 1000,
            "sessions": record.sessions,
        }));
    }
    nodes
}

/// The status as text tables.
fn table(status: &Value) -> String {
    let mut out = String::new();
    let server = &status["server"];
    let others = server["others"].as_array().map_or(0, Vec::len);
    out += &format!(
        "NATS     connected to {} (nats-server {}), {} other server(s) in its cluster\n\n",
        server["name"].as_str().unwrap_or("?"),
        server["version"].as_str().unwrap_or("?"),
        others
    );
    out +=
        &format!("{:<28} {:>10} {:>12} {:>8}  {:<10} LAGGING\n", "STREAM", "MESSAGES", "BYTES", "REPLICAS", "LEADER");
    for stream in status["streams"].as_array().into_iter().flatten() {
        let lagging: Vec<String> = stream["followers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|peer| peer["current"] != true || peer["offline"] == true)
            .map(|peer| format!("{} ({} behind)", peer["server"].as_str().unwrap_or("?"), peer["lag"]))
            .collect();
        out += &format!(
            "{:<28} {:>10} {:>12} {:>8}  {:<10} {}\n",
            stream["name"].as_str().unwrap_or("?"),
            stream["messages"],
            stream["bytes"],
            stream["replicas"],
            stream["leader"].as_str().unwrap_or("-"),
            if lagging.is_empty() { "-".to_owned() } else { lagging.join(", ") }
        );
        for consumer in stream["consumers"].as_array().into_iter().flatten() {
            out += &format!(
                "  consumer {}: {} pending, {} unacknowledged\n",
                consumer["name"].as_str().unwrap_or("?"),
                consumer["pending"],
                consumer["unacknowledged"]
            );
        }
    }
    out +=
        &format!("\n{:<14} {:<24} {:<10} {:>10} {:>10} {:>9}\n", "ROLE", "NODE", "VERSION", "UP", "SEEN", "SESSIONS");
    let nodes = status["nodes"].as_array().map_or(&[][..], Vec::as_slice);
    if nodes.is_empty() {
        out += "(no node has announced itself in the last 30 s)\n";
    }
    for node in nodes {
        let secs =
            |key: &str| humantime::format_duration(Duration::from_secs(node[key].as_u64().unwrap_or(0))).to_string();
        out += &format!(
            "{:<14} {:<24} {:<10} {:>10} {:>10} {:>9}\n",
            node["role"].as_str().unwrap_or("?"),
            node["node"].as_str().unwrap_or("?"),
            node["version"].as_str().unwrap_or("?"),
            secs("up_secs"),
            format!("{} ago", secs("seen_secs_ago")),
            node["sessions"].as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string())
        );
    }
    out += &format!("\nTUNNELS  {} leased\n", status["tunnels"]);
    out
}
